// Logging set-up: spdlog to stderr in a journald-friendly form.
//
// Under systemd, stderr goes to the journal; a "<N>" prefix on each line sets
// its syslog priority (sd-daemon(3)), and the journal adds its own timestamp,
// so lines carry only the priority, the logger and the message. On a terminal
// a timestamp is added instead.
#pragma once

#include <spdlog/spdlog.h>

#include <string_view>

#include "common/error.h"

namespace sag {

// Accepted names: trace, debug, info, warn, error, critical, off.
Expected<spdlog::level::level_enum> ParseLogLevel(std::string_view name);

enum class LogStyle { kAuto, kJournal, kTerminal };

// Installs the default logger. kAuto picks kJournal when JOURNAL_STREAM is set
// (systemd connected stderr to the journal) or stderr is not a terminal.
void SetupLogging(spdlog::level::level_enum level, LogStyle style = LogStyle::kAuto);

}  // namespace sag
