#include "common/log.h"

#include <spdlog/pattern_formatter.h>
#include <spdlog/sinks/stdout_sinks.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <memory>

#include "common/redact.h"

namespace sag {

Expected<spdlog::level::level_enum> ParseLogLevel(std::string_view name) {
  static constexpr std::pair<std::string_view, spdlog::level::level_enum> kLevels[] = {
      {"trace", spdlog::level::trace}, {"debug", spdlog::level::debug},
      {"info", spdlog::level::info},   {"warn", spdlog::level::warn},
      {"error", spdlog::level::err},   {"critical", spdlog::level::critical},
      {"off", spdlog::level::off},
  };
  for (const auto& [n, level] : kLevels) {
    if (n == name) return level;
  }
  return Error(Errc::kConfigRange, "unknown log level '" + std::string(name) +
                                       "': use trace, debug, info, warn, error, critical or off");
}

namespace {

void AppendEscaped(std::string& out, char ch) {
  const auto c = static_cast<unsigned char>(ch);
  if (c == '\n') {
    out.append("\\n");
  } else if (c == '\r') {
    out.append("\\r");
  } else if (c == '\t') {
    out.append("\\t");
  } else if (c < 0x20 || c == 0x7f) {
    static constexpr char kHex[] = "0123456789abcdef";
    out.append("\\x");
    out.push_back(kHex[c >> 4U]);
    out.push_back(kHex[c & 0xfU]);
  } else {
    out.push_back(ch);
  }
}

bool NeedsScrubbing(std::string_view text) {
  if (text.find("://") != std::string_view::npos) return true;
  return std::any_of(text.begin(), text.end(), [](char ch) {
    const auto c = static_cast<unsigned char>(ch);
    return c < 0x20 || c == 0x7f;
  });
}

// Every message through ScrubLogText, then the style's own formatter.
class ScrubbingFormatter final : public spdlog::formatter {
 public:
  explicit ScrubbingFormatter(std::unique_ptr<spdlog::formatter> inner)
      : inner_(std::move(inner)) {}

  void format(const spdlog::details::log_msg& msg, spdlog::memory_buf_t& dest) override {
    const std::string_view payload(msg.payload.data(), msg.payload.size());
    if (!NeedsScrubbing(payload)) {
      inner_->format(msg, dest);
      return;
    }
    const std::string clean = ScrubLogText(payload);
    spdlog::details::log_msg copy = msg;
    copy.payload = spdlog::string_view_t(clean.data(), clean.size());
    inner_->format(copy, dest);
  }
  [[nodiscard]] std::unique_ptr<spdlog::formatter> clone() const override {
    return std::make_unique<ScrubbingFormatter>(inner_->clone());
  }

 private:
  std::unique_ptr<spdlog::formatter> inner_;
};

// sd-daemon(3) priority prefixes for each spdlog level.
class JournalFormatter final : public spdlog::formatter {
 public:
  void format(const spdlog::details::log_msg& msg, spdlog::memory_buf_t& dest) override {
    static constexpr const char* kPrio[] = {"<7>", "<7>", "<6>", "<4>", "<3>", "<2>", "<6>"};
    const char* prio = kPrio[static_cast<int>(msg.level)];
    dest.append(prio, prio + 3);
    dest.append(msg.payload.begin(), msg.payload.end());
    dest.push_back('\n');
  }
  [[nodiscard]] std::unique_ptr<spdlog::formatter> clone() const override {
    return std::make_unique<JournalFormatter>();
  }
};

}  // namespace

std::string ScrubLogText(std::string_view text) {
  // URLs end at white space and control characters, so redacting first and
  // escaping after is the same as doing both in one pass.
  const std::string redacted = RedactUrls(text);
  std::string out;
  out.reserve(redacted.size() + 16);
  for (const char ch : redacted) AppendEscaped(out, ch);
  return out;
}

std::unique_ptr<spdlog::formatter> MakeLogFormatter(LogStyle style) {
  if (style == LogStyle::kTerminal) {
    return std::make_unique<ScrubbingFormatter>(
        std::make_unique<spdlog::pattern_formatter>("%H:%M:%S.%e %^%-5l%$ %v"));
  }
  return std::make_unique<ScrubbingFormatter>(std::make_unique<JournalFormatter>());
}

void SetupLogging(spdlog::level::level_enum level, LogStyle style) {
  if (style == LogStyle::kAuto) {
    // SAG_LOG_STYLE=terminal|journal overrides the guess (the demo pipes the
    // agent's stderr but wants it readable).
    const char* forced = std::getenv("SAG_LOG_STYLE");              // NOLINT(concurrency-mt-unsafe)
    const bool journal = std::getenv("JOURNAL_STREAM") != nullptr;  // NOLINT(concurrency-mt-unsafe)
    if (forced != nullptr && std::string_view(forced) == "terminal") {
      style = LogStyle::kTerminal;
    } else if (forced != nullptr && std::string_view(forced) == "journal") {
      style = LogStyle::kJournal;
    } else {
      style = (journal || isatty(STDERR_FILENO) == 0) ? LogStyle::kJournal : LogStyle::kTerminal;
    }
  }
  auto sink = std::make_shared<spdlog::sinks::stderr_sink_mt>();
  auto logger = std::make_shared<spdlog::logger>("sag", sink);
  logger->set_formatter(MakeLogFormatter(style));
  logger->set_level(level);
  logger->flush_on(spdlog::level::trace);
  spdlog::set_default_logger(std::move(logger));
}

}  // namespace sag
