#include "cloud/http_types.h"

#include <gtest/gtest.h>

namespace sag::cloud {
namespace {

TEST(HttpRequest, HeaderLookupIgnoresCaseAndTakesTheFirst) {
  HttpRequest r;
  r.headers = {{"Host", "a"}, {"x-acs-date", "1"}, {"X-ACS-Date", "2"}};
  EXPECT_EQ(r.Header("host"), "a");
  EXPECT_EQ(r.Header("X-Acs-Date"), "1");
  EXPECT_EQ(r.HeaderCount("x-acs-date"), 2U);
  EXPECT_FALSE(r.Header("authorization"));
  EXPECT_EQ(r.HeaderCount("authorization"), 0U);
  EXPECT_FALSE(r.Header("hos"));
}

}  // namespace
}  // namespace sag::cloud
