#include "common/log.h"

#include <spdlog/sinks/stdout_sinks.h>
#include <unistd.h>

#include <cstdlib>
#include <memory>

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
  if (style == LogStyle::kJournal) {
    logger->set_formatter(std::make_unique<JournalFormatter>());
  } else {
    logger->set_pattern("%H:%M:%S.%e %^%-5l%$ %v");
  }
  logger->set_level(level);
  logger->flush_on(spdlog::level::trace);
  spdlog::set_default_logger(std::move(logger));
}

}  // namespace sag
