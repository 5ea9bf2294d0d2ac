// The gateway's store: persisted atomically, loaded with a checked decoder.
#include "cloud/store.h"

#include <gtest/gtest.h>

#include <fstream>

#include "tests/support/temp_dir.h"

namespace sag::cloud {
namespace {

TEST(GatewayStore, RoundTripsThroughItsFile) {
  test::TempDir dir;
  Store store(dir / "store.json");
  ASSERT_TRUE(store.Load());  // no file yet: empty
  ASSERT_TRUE(store.RegisterDevice("sag1", "sag-lab", "sag-1000"));
  JobRecord job;
  job.serial = "sag1";
  job.spec = {"j-1", "Device", "1.0.1", "https://r/x", 10, std::string(64, 'b'), "", false};
  ASSERT_TRUE(store.AddJob(job));
  store.MutableJob("j-1")->state = JobState::kRolledBack;
  store.MutableJob("j-1")->error = proto::ErrorInfo{406, "RolledBack", "fell back"};
  store.MutableDevice("sag1")->versions = {"1.0.0", "d1"};
  store.MutableDevice("sag1")->acked_seq = 12;
  store.AddReport({"sag1", "e", 12, "result", "j-1", "rolled_back", "t"});
  ASSERT_TRUE(store.Save());

  Store again(dir / "store.json");
  ASSERT_TRUE(again.Load());
  ASSERT_NE(again.FindDevice("sag1"), nullptr);
  EXPECT_EQ(again.FindDevice("sag1")->versions.dpi, "d1");
  EXPECT_EQ(again.FindDevice("sag1")->acked_seq, 12U);
  ASSERT_NE(again.FindJob("j-1"), nullptr);
  EXPECT_EQ(again.FindJob("j-1")->state, JobState::kRolledBack);
  EXPECT_EQ(again.FindJob("j-1")->error->code, 406);
  EXPECT_EQ(again.FindJob("j-1")->spec.sha256, std::string(64, 'b'));
  ASSERT_EQ(again.Reports().size(), 1U);
  EXPECT_EQ(again.Reports()[0].seq, 12U);

  EXPECT_EQ(again.AddJob(job).error().code(), Errc::kJobExists);
  job.spec.job_id = "j-2";
  job.serial = "nobody";
  EXPECT_EQ(again.AddJob(job).error().code(), Errc::kUnknownDevice);
}

TEST(GatewayStore, ADamagedFileIsStoreCorrupt) {
  test::TempDir dir;
  for (const char* text : {"{", "[]", R"({"format":1,"devices":[{"serial":5}],"jobs":[]})",
                           R"({"format":2,"devices":[],"jobs":[]})",
                           R"({"format":1,"devices":[],"jobs":[{"job_id":"j"}]})"}) {
    std::ofstream(dir / "store.json") << text;
    Store store(dir / "store.json");
    auto st = store.Load();
    ASSERT_FALSE(st) << text;
    EXPECT_EQ(st.error().code(), Errc::kStoreCorrupt) << text;
    EXPECT_TRUE(store.Devices().empty());
  }
}

}  // namespace
}  // namespace sag::cloud
