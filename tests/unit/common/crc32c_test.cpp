#include "common/crc32c.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <string_view>
#include <vector>

namespace sag {
namespace {

std::span<const std::uint8_t> Bytes(std::string_view s) {
  return {reinterpret_cast<const std::uint8_t*>(s.data()), s.size()};
}

// The check value of the CRC catalogue and RFC 3720's (iSCSI) examples.
TEST(Crc32c, KnownValues) {
  EXPECT_EQ(Crc32c(Bytes("123456789")), 0xE3069283U);
  EXPECT_EQ(Crc32c(std::vector<std::uint8_t>(32, 0x00)), 0x8A9136AAU);
  EXPECT_EQ(Crc32c(std::vector<std::uint8_t>(32, 0xFF)), 0x62A8AB43U);
  std::vector<std::uint8_t> up(32);
  for (std::size_t i = 0; i < up.size(); ++i) up[i] = static_cast<std::uint8_t>(i);
  EXPECT_EQ(Crc32c(up), 0x46DD794EU);
  EXPECT_EQ(Crc32c({}), 0U);
  for (const auto crc : {Crc32c(Bytes("123456789")), Crc32c(up)}) {
    EXPECT_EQ(detail::Crc32cPortable({}, crc), crc);
  }
}

// Any length, any alignment, any split: the instruction and the table agree,
// and a CRC continued over pieces is the CRC of the whole; one changed bit
// changes it.
TEST(Crc32c, PiecesLengthsAndBothPathsAgree) {
  std::mt19937 rng(3);
  std::vector<std::uint8_t> data(70'000);
  for (auto& b : data) b = static_cast<std::uint8_t>(rng());
  const std::span<const std::uint8_t> all(data);
  for (const std::size_t off : {0, 1, 3, 7, 8, 13}) {
    for (const std::size_t len : {0, 1, 7, 8, 9, 63, 4096, 65'537}) {
      const auto piece = all.subspan(off, len);
      const auto whole = Crc32c(piece);
      EXPECT_EQ(whole, detail::Crc32cPortable(piece, 0)) << off << "+" << len;
      const std::size_t cut = len / 3;
      EXPECT_EQ(Crc32c(piece.subspan(cut), Crc32c(piece.first(cut))), whole) << off << "+" << len;
    }
  }
  const auto before = Crc32c(all);
  data[12'345] ^= 0x04U;
  EXPECT_NE(Crc32c(all), before);
}

}  // namespace
}  // namespace sag
