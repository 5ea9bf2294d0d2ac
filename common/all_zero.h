// Whether a byte range is all zeros, at memory speed: the first 16 bytes,
// then the rest against the bytes 16 before it, so a range of data is told
// apart at its first non-zero byte and a range of zeros costs one memcmp.
#pragma once

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>

namespace sag {

inline bool AllZero(std::span<const std::uint8_t> data) {
  constexpr std::size_t kHead = 16;
  if (data.size() <= kHead) {
    return std::all_of(data.begin(), data.end(), [](std::uint8_t b) { return b == 0; });
  }
  static constexpr std::array<std::uint8_t, kHead> kZeros{};
  return std::memcmp(data.data(), kZeros.data(), kHead) == 0 &&
         std::memcmp(data.data(), data.data() + kHead, data.size() - kHead) == 0;
}

}  // namespace sag
