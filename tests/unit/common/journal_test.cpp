#include "common/journal.h"

#include <gtest/gtest.h>

#include "common/atomic_file.h"
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

}  // namespace
}  // namespace sag
