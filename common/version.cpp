#include "common/version.h"

#include "common/parse_decimal.h"

namespace sag {

namespace {

Expected<unsigned long> ParseNumber(std::string_view part, std::string_view whole) {
  if (part.empty() || part.size() > 9) {
    return Error(Errc::kInvalidArgument, "bad version '" + std::string(whole) +
                                             "': each part is a number of 1 to 9 digits");
  }
  const auto value = ParseDecimal<unsigned long>(part);
  if (!value) {
    return Error(Errc::kInvalidArgument, "bad version '" + std::string(whole) + "': '" +
                                             std::string(part) + "' is not a number");
  }
  return *value;
}

std::vector<std::string_view> Split(std::string_view s, char sep) {
  std::vector<std::string_view> out;
  std::size_t start = 0;
  for (;;) {
    const auto pos = s.find(sep, start);
    out.push_back(
        s.substr(start, pos == std::string_view::npos ? std::string_view::npos : pos - start));
    if (pos == std::string_view::npos) break;
    start = pos + 1;
  }
  return out;
}

}  // namespace

Expected<Version> Version::Parse(VersionKind kind, std::string_view text) {
  Version v;
  v.kind_ = kind;
  v.text_ = std::string(text);
  if (kind == VersionKind::kDevice) {
    const auto parts = Split(text, '.');
    if (parts.size() < 2 || parts.size() > 4) {
      return Error(Errc::kInvalidArgument, "bad Device version '" + std::string(text) +
                                               "': expected 2 to 4 dotted numbers like 1.0.1");
    }
    for (auto p : parts) {
      SAG_TRY(auto n, ParseNumber(p, text));
      v.parts_.push_back(n);
    }
    v.parts_.resize(4, 0);
    return v;
  }
  // DPI: DATE_BUILD_ENGINEMAJOR-ENGINEVERSION, e.g. 20201117_1_0-0.0.1
  const auto dash = text.find('-');
  const auto head = text.substr(0, dash);
  const auto fields = Split(head, '_');
  if (dash == std::string_view::npos || fields.size() != 3 || fields[0].size() != 8) {
    return Error(Errc::kInvalidArgument,
                 "bad Dpi version '" + std::string(text) +
                     "': expected DATE_BUILD_ENGINE-ENGINEVERSION like 20201117_1_0-0.0.1");
  }
  for (auto f : fields) {
    SAG_TRY(auto n, ParseNumber(f, text));
    v.parts_.push_back(n);
  }
  const auto engine = Split(text.substr(dash + 1), '.');
  if (engine.empty() || engine.size() > 4) {
    return Error(Errc::kInvalidArgument, "bad Dpi version '" + std::string(text) +
                                             "': the engine version has 1 to 4 dotted numbers");
  }
  for (auto p : engine) {
    SAG_TRY(auto n, ParseNumber(p, text));
    v.parts_.push_back(n);
  }
  v.parts_.resize(7, 0);
  return v;
}

std::strong_ordering Version::operator<=>(const Version& other) const {
  if (kind_ != other.kind_) return kind_ <=> other.kind_;
  return parts_ <=> other.parts_;
}

}  // namespace sag
