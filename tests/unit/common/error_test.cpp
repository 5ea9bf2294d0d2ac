#include "common/error.h"

#include <gtest/gtest.h>

#include <cerrno>

namespace sag {
namespace {

Expected<int> Half(int v) {
  if (v % 2 != 0) return Error(Errc::kInvalidArgument, std::to_string(v) + " is odd");
  return v / 2;
}

Expected<int> Quarter(int v) {
  SAG_TRY(const int h, Half(v));
  SAG_TRY(const int q, Half(h));
  return q;
}

Status Check(int v) {
  SAG_TRY_STATUS(Quarter(v));
  return Ok();
}

TEST(Error, CarriesStableCodeAndNumber) {
  const Error e(Errc::kVersionTooOld, "1.0.0 is not newer than 1.0.1");
  EXPECT_EQ(e.code(), Errc::kVersionTooOld);
  EXPECT_EQ(e.number(), 400);
  EXPECT_EQ(e.ToString(), "E400 VersionTooOld: 1.0.0 is not newer than 1.0.1");
}

TEST(Error, WithContextPrefixesMessage) {
  const Error e(Errc::kIo, "disk full");
  const Error wrapped = e.WithContext("writing slot B").WithContext("installing 1.0.1");
  EXPECT_EQ(wrapped.message(), "installing 1.0.1: writing slot B: disk full");
  EXPECT_EQ(wrapped.code(), Errc::kIo);
  EXPECT_EQ(e.message(), "disk full");  // the original is untouched
}

TEST(Error, ErrnoMapsNoSpace) {
  const Error e = MakeErrno(Errc::kIo, "write /x", ENOSPC);
  EXPECT_EQ(e.code(), Errc::kNoSpace);
  EXPECT_NE(e.message().find("write /x: "), std::string::npos);
  EXPECT_EQ(MakeErrno(Errc::kIo, "open", ENOENT).code(), Errc::kIo);
}

TEST(Error, EveryCodeHasAName) {
  for (int n = 0; n < 1000; ++n) {
    const auto name = ErrcName(static_cast<Errc>(n));
    if (name != "Unknown") {
      EXPECT_NE(name.find_first_not_of("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"), 0U);
    }
  }
  EXPECT_EQ(ErrcName(Errc::kImageTruncated), "ImageTruncated");
  EXPECT_EQ(ErrcName(static_cast<Errc>(999)), "Unknown");
}

TEST(Expected, PropagatesFirstError) {
  EXPECT_EQ(*Quarter(8), 2);
  auto odd = Quarter(6);  // 6 -> 3 -> odd
  ASSERT_FALSE(odd);
  EXPECT_EQ(odd.error().message(), "3 is odd");
  EXPECT_TRUE(Check(4));
  EXPECT_EQ(Check(5).error().code(), Errc::kInvalidArgument);
}

TEST(Expected, HoldsMoveOnlyValues) {
  Expected<std::unique_ptr<int>> p(std::make_unique<int>(7));
  ASSERT_TRUE(p);
  std::unique_ptr<int> owned = std::move(p).value();
  EXPECT_EQ(*owned, 7);
}

}  // namespace
}  // namespace sag
