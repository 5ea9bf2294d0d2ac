// Logging set-up: spdlog to stderr in a journald-friendly form.
//
// Under systemd, stderr goes to the journal; a "<N>" prefix on each line sets
// its syslog priority (sd-daemon(3)), and the journal adds its own timestamp,
// so lines carry only the priority, the logger and the message. On a terminal
// a timestamp is added instead.
//
// Every message, whoever wrote it, goes through one filter before any sink:
// it stays one line (a newline in a hook's output would start a journal entry
// without a priority; control characters are escaped), and URLs lose their
// userinfo and query string, where signed URLs carry their signature and
// credentials. Redacting where a URL is logged stays the caller's duty; this
// is the safety net.
#pragma once

#include <spdlog/spdlog.h>

#include <memory>
#include <string>
#include <string_view>

#include "common/error.h"

namespace sag {

// Accepted names: trace, debug, info, warn, error, critical, off.
Expected<spdlog::level::level_enum> ParseLogLevel(std::string_view name);

enum class LogStyle { kAuto, kJournal, kTerminal };

// Installs the default logger. kAuto picks kJournal when JOURNAL_STREAM is set
// (systemd connected stderr to the journal) or stderr is not a terminal.
void SetupLogging(spdlog::level::level_enum level, LogStyle style = LogStyle::kAuto);

// The formatter SetupLogging installs for a style (kJournal or kTerminal),
// filter included; for tests and for loggers with other sinks.
std::unique_ptr<spdlog::formatter> MakeLogFormatter(LogStyle style);

// The filter: every URL ("scheme://...") in `text` redacted by RedactUrls
// (common/redact.h: userinfo "<redacted>@", query and fragment
// "?<redacted>"); newlines, tabs and other control characters escaped ("\n",
// "\t", "\x1b"). Text without URLs or control characters is returned as is.
std::string ScrubLogText(std::string_view text);

}  // namespace sag
