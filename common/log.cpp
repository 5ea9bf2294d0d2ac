#include "common/log.h"

#include <spdlog/pattern_formatter.h>
#include <spdlog/sinks/stdout_sinks.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
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

bool IsSchemeChar(char c) {
  return std::isalnum(static_cast<unsigned char>(c)) != 0 || c == '+' || c == '-' || c == '.';
}

// Where a URL that starts at `from` ends: at white space, a control
// character, or a character that cannot be in a URL and usually delimits one
// in prose or JSON. Everything else, ')' and ',' included, belongs to it: the
// query is cut from '?' to here, so erring long hides more, never less.
std::size_t UrlEnd(std::string_view text, std::size_t from) {
  std::size_t i = from;
  while (i < text.size()) {
    const auto c = static_cast<unsigned char>(text[i]);
    if (c <= 0x20 || c == 0x7f || c == '"' || c == '\'' || c == '<' || c == '>' || c == '`' ||
        c == '\\' || c == '{' || c == '}' || c == '|' || c == '^') {
      break;
    }
    ++i;
  }
  return i;
}

// Appends `url` ("scheme://...") without its userinfo and
// with its query and fragment replaced.
void AppendRedactedUrl(std::string& out, std::string_view url) {
  const std::size_t authority = url.find("://") + 3;
  std::size_t path = url.find_first_of("/?#", authority);
  if (path == std::string_view::npos) path = url.size();
  const std::size_t at = url.substr(0, path).rfind('@');
  if (at != std::string_view::npos && at >= authority) {
    out.append(url.substr(0, authority));
    out.append(url.substr(at + 1, path - at - 1));
  } else {
    out.append(url.substr(0, path));
  }
  const std::size_t query = url.find_first_of("?#", path);
  out.append(url.substr(path, query == std::string_view::npos ? url.size() - path : query - path));
  if (query != std::string_view::npos) out.append("?<redacted>");
}

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
  std::string out;
  out.reserve(text.size() + 16);
  std::size_t copied = 0;  // text before this is in `out`
  std::size_t search = 0;
  for (;;) {
    const std::size_t sep = text.find("://", search);
    if (sep == std::string_view::npos) break;
    // The scheme before "://": letters, digits, + - . starting with a letter.
    std::size_t begin = sep;
    while (begin > copied && IsSchemeChar(text[begin - 1])) --begin;
    while (begin < sep && std::isalpha(static_cast<unsigned char>(text[begin])) == 0) ++begin;
    if (begin == sep) {  // "://" without a scheme: not a URL
      search = sep + 3;
      continue;
    }
    for (std::size_t k = copied; k < begin; ++k) AppendEscaped(out, text[k]);
    const std::size_t end = UrlEnd(text, sep + 3);
    AppendRedactedUrl(out, text.substr(begin, end - begin));
    copied = search = end;
  }
  for (std::size_t k = copied; k < text.size(); ++k) AppendEscaped(out, text[k]);
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
