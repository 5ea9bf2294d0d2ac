#include <gtest/gtest.h>

#include "cloud/rpc/percent.h"

namespace sag::cloud::rpc {
namespace {

TEST(PercentEncode, KeepsOnlyTheUnreservedSet) {
  EXPECT_EQ(PercentEncode("AZaz09-_.~"), "AZaz09-_.~");
  EXPECT_EQ(PercentEncode(" "), "%20");  // never '+'
  EXPECT_EQ(PercentEncode("*"), "%2A");
  EXPECT_EQ(PercentEncode("+"), "%2B");
  EXPECT_EQ(PercentEncode("/:=&"), "%2F%3A%3D%26");
}

TEST(PercentEncode, TheReferenceExampleValue) {
  // Reference section 5: how an SDK sends "1.0 *~'()!+/=&é中".
  EXPECT_EQ(PercentEncode("1.0 *~'()!+/=&\xC3\xA9\xE4\xB8\xAD"),
            "1.0%20%2A~%27%28%29%21%2B%2F%3D%26%C3%A9%E4%B8%AD");
}

TEST(PercentDecode, ReadsWhatClientsSend) {
  EXPECT_EQ(*PercentDecode("1.0%20%2A~%27%28%29%21%2B%2F%3D%26%C3%A9%E4%B8%AD"),
            "1.0 *~'()!+/=&\xC3\xA9\xE4\xB8\xAD");
  EXPECT_EQ(*PercentDecode("a+b"), "a b");    // form encoding: '+' is a space
  EXPECT_EQ(*PercentDecode("%7E%7e"), "~~");  // either hex case
  EXPECT_EQ(*PercentDecode("*()!"), "*()!");  // literal where the encoder would escape
  EXPECT_EQ(*PercentDecode(""), "");
}

TEST(PercentDecode, RefusesBrokenEscapes) {
  for (const char* bad : {"%", "%2", "a%zz", "%G0", "abc%4"}) {
    const auto r = PercentDecode(bad);
    ASSERT_FALSE(r) << bad;
    EXPECT_EQ(r.error().code(), Errc::kInvalidArgument);
  }
}

TEST(PercentEncode, RoundTripsEveryByte) {
  std::string all;
  for (int c = 0; c < 256; ++c) all.push_back(static_cast<char>(c));
  EXPECT_EQ(*PercentDecode(PercentEncode(all)), all);
}

TEST(ParseQueryString, SplitsDecodesAndKeepsDuplicates) {
  const auto r = ParseQueryString("a=1&b=&c&&d=x%20y+z&a=2");
  ASSERT_TRUE(r);
  const ParamList want{{"a", "1"}, {"b", ""}, {"c", ""}, {"d", "x y z"}, {"a", "2"}};
  EXPECT_EQ(*r, want);
  EXPECT_FALSE(ParseQueryString("=v"));
  EXPECT_FALSE(ParseQueryString("a=%"));
  EXPECT_FALSE(ParseQueryString("%zz=1"));
  EXPECT_TRUE(ParseQueryString("")->empty());
}

}  // namespace
}  // namespace sag::cloud::rpc
