#include "common/redact.h"

#include <cctype>

namespace sag {

namespace {

constexpr std::string_view kRedacted = "<redacted>";

bool IsSchemeChar(char c) {
  return std::isalnum(static_cast<unsigned char>(c)) != 0 || c == '+' || c == '-' || c == '.';
}

// Where a URL that starts at `from` ends (see RedactUrls).
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

void AppendRedactedUrl(std::string& out, std::string_view url) {
  const std::size_t authority = url.find("://") + 3;
  std::size_t path = url.find_first_of("/?#", authority);
  if (path == std::string_view::npos) path = url.size();
  // An '@' after the authority (in the path) is not userinfo.
  const std::size_t at = url.substr(0, path).rfind('@');
  if (at != std::string_view::npos && at >= authority) {
    out.append(url.substr(0, authority)).append(kRedacted).append("@");
    out.append(url.substr(at + 1, path - at - 1));
  } else {
    out.append(url.substr(0, path));
  }
  const std::size_t query = url.find_first_of("?#", path);
  out.append(url.substr(path, query == std::string_view::npos ? url.size() - path : query - path));
  if (query != std::string_view::npos) out.append("?").append(kRedacted);
}

}  // namespace

std::string RedactUrl(std::string_view url) {
  if (url.find("://") == std::string_view::npos) return std::string(url);
  return RedactUrls(url);
}

std::string RedactUrls(std::string_view text) {
  if (text.find("://") == std::string_view::npos) return std::string(text);
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
    out.append(text.substr(copied, begin - copied));
    const std::size_t end = UrlEnd(text, sep + 3);
    AppendRedactedUrl(out, text.substr(begin, end - begin));
    copied = search = end;
  }
  out.append(text.substr(copied));
  return out;
}

}  // namespace sag
