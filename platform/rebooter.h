// Asking for a reboot.
#pragma once

#include "common/error.h"

namespace sag::platform {

class Rebooter {
 public:
  virtual ~Rebooter() = default;
  // Requests a reboot and returns; the caller must not assume it happened
  // (the real one asks systemd; the simulator reboots the simulated device
  // after the agent exits). Everything durable must be written before.
  virtual Status Reboot() = 0;
};

}  // namespace sag::platform
