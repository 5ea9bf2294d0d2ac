// A whole string as a decimal number: no sign for unsigned types, no spaces,
// nothing after the digits, in range for T; anything else is nullopt.
#pragma once

#include <charconv>
#include <optional>
#include <string_view>
#include <system_error>

namespace sag {

template <typename T>
std::optional<T> ParseDecimal(std::string_view s) {
  T value{};
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), value);
  if (ec != std::errc() || end != s.data() + s.size()) return std::nullopt;
  return value;
}

}  // namespace sag
