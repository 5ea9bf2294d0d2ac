#include "common/version.h"

#include <gtest/gtest.h>

namespace sag {
namespace {

Version Dev(const char* s) { return *Version::Parse(VersionKind::kDevice, s); }
Version Dpi(const char* s) { return *Version::Parse(VersionKind::kDpi, s); }

TEST(Version, DeviceComparesNumerically) {
  EXPECT_LT(Dev("1.0.0"), Dev("1.0.1"));
  EXPECT_LT(Dev("1.0.9"), Dev("1.0.10"));
  EXPECT_LT(Dev("1.9"), Dev("1.10.0"));
  EXPECT_EQ(Dev("2.3"), Dev("2.3.0.0"));
  EXPECT_GT(Dev("2.3.1.1"), Dev("2.3.1"));
}

TEST(Version, DeviceRejectsMalformed) {
  for (const char* bad :
       {"", "1", "1.2.3.4.5", "1..2", "1.a", "v1.0", "1.0-rc1", "1.0.1234567890"}) {
    auto v = Version::Parse(VersionKind::kDevice, bad);
    EXPECT_FALSE(v) << bad;
    if (!v) {
      EXPECT_EQ(v.error().code(), Errc::kInvalidArgument);
    }
  }
}

TEST(Version, DpiOrdersByDateBuildEngine) {
  EXPECT_LT(Dpi("20201117_1_0-0.0.1"), Dpi("20201118_1_0-0.0.1"));
  EXPECT_LT(Dpi("20201117_1_0-0.0.1"), Dpi("20201117_2_0-0.0.1"));
  EXPECT_LT(Dpi("20201117_2_0-0.0.1"), Dpi("20201117_10_0-0.0.1"));
  EXPECT_LT(Dpi("20201117_1_0-0.0.1"), Dpi("20201117_1_0-0.0.2"));
  EXPECT_EQ(Dpi("20201117_1_0-0.0.1"), Dpi("20201117_1_0-0.0.1"));
}

TEST(Version, DpiRejectsMalformed) {
  for (const char* bad : {"1.0.1", "20201117_1_0", "2020111_1_0-0.0.1", "20201117_x_0-0.0.1",
                          "20201117_1_0-", "20201117_1-0.0.1"}) {
    EXPECT_FALSE(Version::Parse(VersionKind::kDpi, bad)) << bad;
  }
}

}  // namespace
}  // namespace sag
