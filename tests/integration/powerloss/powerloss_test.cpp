// sag-powerloss (docs/power-loss.md): a cut keeps exactly what fsync and
// directory fsync made durable. The campaigns rely on it to notice a missing
// fsync, so each rule has a case that a model without it would pass.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <string>

#include "common/atomic_file.h"
#include "tests/support/powerloss_mount.h"
#include "tests/support/temp_dir.h"

namespace sag {
namespace {

namespace fs = std::filesystem;

class PowerLoss : public ::testing::Test {
 protected:
  void SetUp() override {
    fs::create_directories(dir_ / "backing");
    fs::create_directories(dir_ / "mnt");
    mount_ =
        std::make_unique<test::PowerLossMount>(SAG_POWERLOSS_BIN, dir_ / "backing", dir_ / "mnt");
    if (!mount_->Available()) GTEST_SKIP() << "no FUSE here (needs /dev/fuse and root)";
  }
  void TearDown() override { mount_.reset(); }

  fs::path P(const std::string& name) const { return dir_ / "mnt" / name; }

  // Writes `data` at `offset` (creating the file), fsyncing it when asked.
  static void Write(const fs::path& p, const std::string& data, off_t offset, bool sync) {
    const int fd = ::open(p.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    ASSERT_GE(fd, 0) << p;
    ASSERT_EQ(::pwrite(fd, data.data(), data.size(), offset), static_cast<ssize_t>(data.size()));
    if (sync) {
      ASSERT_EQ(::fsync(fd), 0);
    }
    ::close(fd);
  }
  std::string Content(const std::string& name) const {
    auto t = ReadFile(P(name));
    return t ? *t : std::string("<missing>");
  }
  std::string Cut(bool torn = false) const { return mount_->Control(torn ? "cut torn" : "cut"); }

  test::TempDir dir_;
  std::unique_ptr<test::PowerLossMount> mount_;
};

TEST_F(PowerLoss, DataNotFsyncedIsLost) {
  Write(P("f"), "durable!", 0, true);
  ASSERT_TRUE(FsyncDir(P("")));
  Write(P("f"), "VOLATILE and longer", 0, false);
  EXPECT_EQ(Content("f"), "VOLATILE and longer");  // before the cut, reads see it
  const std::string figures = Cut();
  EXPECT_NE(figures.find("bytes_lost=19 "), std::string::npos) << figures;
  EXPECT_EQ(Content("f"), "durable!");
}

TEST_F(PowerLoss, NewNameNeedsTheDirectoryFsync) {
  Write(P("synced-name"), "a", 0, true);
  ASSERT_TRUE(FsyncDir(P("")));
  fs::create_directories(P("sub"));
  Write(P("sub/x"), "c", 0, true);
  ASSERT_TRUE(FsyncDir(P("sub")));        // in order: the mkdir of sub before it too
  Write(P("no-dir-sync"), "b", 0, true);  // data durable, name not
  Cut();
  EXPECT_EQ(Content("synced-name"), "a");
  EXPECT_FALSE(fs::exists(P("no-dir-sync")));
  EXPECT_EQ(Content("sub/x"), "c");
}

TEST_F(PowerLoss, RenameAndUnlinkAreUndoneUntilTheDirectoryFsync) {
  Write(P("old"), "old content", 0, true);
  Write(P("new"), "new content", 0, true);
  Write(P("gone"), "still here", 0, true);
  ASSERT_TRUE(FsyncDir(P("")));
  fs::rename(P("new"), P("old"));
  fs::remove(P("gone"));
  EXPECT_FALSE(fs::exists(P("gone")));
  const std::string figures = Cut();
  EXPECT_NE(figures.find("entries_lost=2 "), std::string::npos) << figures;
  EXPECT_EQ(Content("old"), "old content");
  EXPECT_EQ(Content("new"), "new content");
  EXPECT_EQ(Content("gone"), "still here");
  // The same with the directory fsync: kept.
  fs::rename(P("new"), P("old"));
  fs::remove(P("gone"));
  ASSERT_TRUE(FsyncDir(P("")));
  Cut();
  EXPECT_EQ(Content("old"), "new content");
  EXPECT_FALSE(fs::exists(P("new")));
  EXPECT_FALSE(fs::exists(P("gone")));
}

// The AtomicFile pattern keeps the new content; a replace without fsyncs
// (ReplaceFile) keeps the old one: what a missing fsync costs.
TEST_F(PowerLoss, AtomicReplaceSurvivesAndUnsyncedReplaceDoesNot) {
  ASSERT_TRUE(WriteFileAtomic(P("journal"), "v1"));
  ASSERT_TRUE(WriteFileAtomic(P("journal"), "v2"));
  ASSERT_TRUE(WriteFileAtomic(P("other"), "v1"));
  ASSERT_TRUE(ReplaceFile(P("other"), "v2", 0644));
  Cut();
  EXPECT_EQ(Content("journal"), "v2");
  EXPECT_EQ(Content("other"), "v1");
  for (const auto& e : fs::directory_iterator(P(""))) {  // no temporary left behind
    EXPECT_FALSE(e.path().filename().string().starts_with(".")) << e.path();
  }
}

// The last unsynced write is torn at a sector boundary: a prefix of whole
// 512-byte sectors, neither none nor all of it.
TEST_F(PowerLoss, TornWriteKeepsAPrefixOfWholeSectors) {
  Write(P("env"), std::string(8192, '0'), 0, true);
  ASSERT_TRUE(FsyncDir(P("")));
  Write(P("env"), std::string(8192, 'x'), 0, false);
  const std::string figures = Cut(true);
  EXPECT_NE(figures.find("torn=1"), std::string::npos) << figures;
  const std::string c = Content("env");
  ASSERT_EQ(c.size(), 8192U);
  const auto kept = c.find('0');
  ASSERT_NE(kept, std::string::npos);
  EXPECT_GT(kept, 0U);
  EXPECT_EQ(kept % 512, 0U) << kept;
  EXPECT_EQ(c.substr(kept), std::string(8192 - kept, '0'));
}

TEST_F(PowerLoss, SyncMakesEverythingDurable) {
  Write(P("a"), "unsynced", 0, false);
  fs::create_directories(P("d"));
  EXPECT_FALSE(mount_->Control("sync").empty());
  Cut();
  EXPECT_EQ(Content("a"), "unsynced");
  EXPECT_TRUE(fs::is_directory(P("d")));
}

}  // namespace
}  // namespace sag
