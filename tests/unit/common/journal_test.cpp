#include "common/journal.h"

#include <gtest/gtest.h>

#include "common/atomic_file.h"
#include "tests/support/powerloss_mount.h"
#include "tests/support/temp_dir.h"

namespace sag {
namespace {

TEST(Journal, AbsentMeansNoJob) {
  test::TempDir dir;
  const Journal j(dir / "job.json");
  auto r = j.Load();
  ASSERT_TRUE(r);
  EXPECT_FALSE(r->has_value());
}

TEST(Journal, SaveLoadArchive) {
  test::TempDir dir;
  const Journal j(dir / "job.json");
  ASSERT_TRUE(j.Save({{"id", "job-1"}, {"state", "Downloading"}, {"chunk", 7}}));
  auto r = j.Load();
  ASSERT_TRUE(r && r->has_value());
  EXPECT_EQ((**r)["state"], "Downloading");
  EXPECT_EQ((**r)["chunk"], 7);
  ASSERT_TRUE(j.Archive());
  EXPECT_FALSE(j.Load()->has_value());
  EXPECT_TRUE(std::filesystem::exists(dir / "job.json.last"));
  EXPECT_TRUE(j.Archive());  // nothing to archive is fine
}

TEST(Journal, CorruptIsReportedNotGuessed) {
  test::TempDir dir;
  ASSERT_TRUE(WriteFileAtomic(dir / "job.json", "{\"state\": \"Downl"));
  EXPECT_EQ(Journal(dir / "job.json").Load().error().code(), Errc::kJournalCorrupt);
  ASSERT_TRUE(WriteFileAtomic(dir / "job.json", "[1,2]"));
  EXPECT_EQ(Journal(dir / "job.json").Load().error().code(), Errc::kJournalCorrupt);
}

// Records carry the format they were written in; a record of a newer format
// (a newer agent wrote it, then the appliance fell back to this one) is
// refused with its own code and left exactly as it is.
TEST(Journal, RecordsCarryTheirFormatAndNewerOnesAreLeftAlone) {
  test::TempDir dir;
  const Journal j(dir / "job.json");  // format 1
  ASSERT_TRUE(j.Save({{"id", "job-1"}}));
  auto saved = ReadFile(dir / "job.json");
  ASSERT_TRUE(saved);
  EXPECT_NE(saved->find("\"format\": 1"), std::string::npos) << *saved;
  ASSERT_TRUE(j.Load());

  const std::string newer = R"({"format": 2, "id": "job-2", "state": "Teleporting"})";
  ASSERT_TRUE(WriteFileAtomic(dir / "job.json", newer));
  auto r = j.Load();
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code(), Errc::kJournalNewerFormat) << r.error().ToString();
  EXPECT_NE(r.error().message().find((dir / "job.json").string()), std::string::npos)
      << r.error().message();
  EXPECT_NE(r.error().message().find("newer sag-agent"), std::string::npos) << r.error().message();
  EXPECT_EQ(*ReadFile(dir / "job.json"), newer);

  // Written before records had a format: format 1.
  ASSERT_TRUE(WriteFileAtomic(dir / "job.json", R"({"id": "job-0"})"));
  ASSERT_TRUE(j.Load());

  for (const char* bad : {R"({"format": "two"})", R"({"format": 0})", R"({"format": -3})"}) {
    ASSERT_TRUE(WriteFileAtomic(dir / "job.json", bad));
    auto c = j.Load();
    ASSERT_FALSE(c) << bad;
    EXPECT_EQ(c.error().code(), Errc::kJournalCorrupt) << bad;
    EXPECT_NE(c.error().message().find("format"), std::string::npos) << c.error().message();
  }
}

// On sag-powerloss (docs/power-loss.md) a cut keeps only what was made
// durable: every saved record and the archive survive one (red with a Save
// that skips the fsyncs, or an Archive without the directory fsync).
TEST(Journal, SaveAndArchiveSurviveAPowerCut) {
  test::TempDir dir;
  std::filesystem::create_directories(dir / "mnt");
  const test::PowerLossMount mount(SAG_POWERLOSS_BIN, dir / "mnt", dir / "mnt");
  if (!mount.Available()) GTEST_SKIP() << "no FUSE here (needs /dev/fuse and root)";
  const Journal j(dir / "mnt" / "job.json");
  for (int chunk = 1; chunk <= 3; ++chunk) {
    ASSERT_TRUE(j.Save({{"id", "job-1"}, {"state", "Writing"}, {"chunk", chunk}}));
    ASSERT_FALSE(mount.Control("cut").empty());
    auto r = j.Load();
    ASSERT_TRUE(r) << r.error().ToString();
    ASSERT_TRUE(r->has_value()) << "the record saved before the cut is gone";
    EXPECT_EQ((**r)["chunk"], chunk) << "an older record came back after the cut";
  }
  ASSERT_TRUE(j.Archive());
  ASSERT_FALSE(mount.Control("cut").empty());
  EXPECT_FALSE(j.Load()->has_value()) << "the archived record came back after the cut";
  EXPECT_TRUE(std::filesystem::exists(dir / "mnt" / "job.json.last"));
}

}  // namespace
}  // namespace sag
