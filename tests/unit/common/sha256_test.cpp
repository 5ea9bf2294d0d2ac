#include "common/sha256.h"

#include <gtest/gtest.h>

#include <fstream>

#include "tests/support/temp_dir.h"

namespace sag {
namespace {

// FIPS 180-2 / NIST known answers.
TEST(Sha256, KnownAnswers) {
  EXPECT_EQ(ToHex(Sha256::Of("")),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(ToHex(Sha256::Of("abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(ToHex(Sha256::Of("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq")),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
}

TEST(Sha256, MillionAsInPiecesMatchesKnownAnswer) {
  Sha256 h;
  const std::string block(1000, 'a');
  for (int i = 0; i < 1000; ++i) h.Update(block);
  EXPECT_EQ(ToHex(h.Final()), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
  // Final resets: the object hashes a new message afterwards.
  h.Update("abc");
  EXPECT_EQ(ToHex(h.Final()), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

TEST(Sha256, SplitUpdatesEqualOneUpdate) {
  std::string data;
  for (int i = 0; i < 5000; ++i) data.push_back(static_cast<char>(i * 31));
  const auto whole = Sha256::Of(data);
  for (std::size_t split : {0UL, 1UL, 63UL, 64UL, 65UL, 4999UL}) {
    Sha256 h;
    h.Update(std::string_view(data).substr(0, split));
    h.Update(std::string_view(data).substr(split));
    EXPECT_EQ(h.Final(), whole) << split;
  }
}

TEST(Sha256, OfFile) {
  test::TempDir dir;
  { std::ofstream(dir / "f") << "abc"; }
  auto d = Sha256::OfFile(dir / "f");
  ASSERT_TRUE(d);
  EXPECT_EQ(ToHex(*d), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_FALSE(Sha256::OfFile(dir / "missing"));
}

TEST(Sha256, HexRoundTripAndRejects) {
  const auto d = Sha256::Of("abc");
  auto back = DigestFromHex(ToHex(d));
  ASSERT_TRUE(back);
  EXPECT_EQ(*back, d);
  EXPECT_TRUE(DigestFromHex("BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD"));
  EXPECT_EQ(DigestFromHex("abc").error().code(), Errc::kManifestMalformed);
  EXPECT_FALSE(DigestFromHex(std::string(63, 'a') + "g"));
}

}  // namespace
}  // namespace sag
