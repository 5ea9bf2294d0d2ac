#include "cloud/rpc/percent.h"

namespace sag::cloud::rpc {

namespace {

bool Unreserved(unsigned char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
         c == '_' || c == '.' || c == '~';
}

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

}  // namespace

std::string PercentEncode(std::string_view raw) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  out.reserve(raw.size() * 3);
  for (const char ch : raw) {
    const auto c = static_cast<unsigned char>(ch);
    if (Unreserved(c)) {
      out.push_back(ch);
    } else {
      out.push_back('%');
      out.push_back(kHex[c >> 4U]);
      out.push_back(kHex[c & 0x0FU]);
    }
  }
  return out;
}

Expected<std::string> PercentDecode(std::string_view encoded) {
  std::string out;
  out.reserve(encoded.size());
  for (std::size_t i = 0; i < encoded.size(); ++i) {
    const char c = encoded[i];
    if (c == '+') {
      out.push_back(' ');
    } else if (c == '%') {
      const bool complete = i + 2 < encoded.size();
      const int hi = complete ? HexValue(encoded[i + 1]) : -1;
      const int lo = complete ? HexValue(encoded[i + 2]) : -1;
      if (hi < 0 || lo < 0) {
        return Error(Errc::kInvalidArgument, "bad percent-escape at offset " + std::to_string(i) +
                                                 ": '%' must be followed by two hex digits");
      }
      out.push_back(static_cast<char>((hi << 4) | lo));
      i += 2;
    } else {
      out.push_back(c);
    }
  }
  return out;
}

Expected<ParamList> ParseQueryString(std::string_view query) {
  ParamList out;
  while (!query.empty()) {
    const auto amp = query.find('&');
    const std::string_view part = query.substr(0, amp);
    query = amp == std::string_view::npos ? std::string_view() : query.substr(amp + 1);
    if (part.empty()) continue;
    const auto eq = part.find('=');
    const std::string_view raw_name = part.substr(0, eq);
    const std::string_view raw_value =
        eq == std::string_view::npos ? std::string_view() : part.substr(eq + 1);
    auto name = PercentDecode(raw_name);
    if (!name) return std::move(name).error().WithContext("parameter name");
    if (name->empty()) {
      return Error(Errc::kInvalidArgument,
                   "a parameter without a name ('" + std::string(part.substr(0, 64)) + "')");
    }
    auto value = PercentDecode(raw_value);
    if (!value) return std::move(value).error().WithContext("parameter " + *name);
    out.emplace_back(std::move(*name), std::move(*value));
  }
  return out;
}

}  // namespace sag::cloud::rpc
