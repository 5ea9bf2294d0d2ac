// The systemd notify protocol (sd_notify(3)) without libsystemd: one datagram
// to $NOTIFY_SOCKET. A no-op when not started by systemd.
#pragma once

#include <string_view>

namespace sag::agent {

// "READY=1", "STOPPING=1", "WATCHDOG=1", "STATUS=..." (several joined by '\n').
void SdNotify(std::string_view state);

}  // namespace sag::agent
