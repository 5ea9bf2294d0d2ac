// The hostile-archive corpus: every archive is built here, each must be
// refused with its own code, leave nothing outside the staging directory and
// never follow a link while writing.
#include "dpi/extract.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <atomic>
#include <chrono>
#include <fstream>
#include <functional>
#include <set>
#include <thread>

#include "common/atomic_file.h"
#include "tests/support/temp_dir.h"
#include "tests/unit/dpi/dpi_test_support.h"

namespace sag::dpi {
namespace {

namespace fs = std::filesystem;
using test::BufferSource;
using test::TarBuilder;

// A sandbox: <tmp>/a/b/staging, with a sentinel file beside it, so that '..'
// escapes would land inside the test's own directory and be seen.
class ExtractTest : public ::testing::Test {
 protected:
  void SetUp() override {
    staging_ = dir_ / "a/b/staging";
    fs::create_directories(staging_);
    ASSERT_TRUE(WriteFileAtomic(dir_ / "a/sentinel", "untouched"));
    before_ = Outside();
  }

  // Every path under the temp dir that is not inside staging.
  std::set<std::string> Outside() const {
    std::set<std::string> out;
    for (auto it = fs::recursive_directory_iterator(dir_.path()); it != fs::end(it); ++it) {
      if (it->path() == staging_) it.disable_recursion_pending();
      out.insert(it->path().lexically_relative(dir_.path()).string());
    }
    return out;
  }

  void ExpectRefused(const std::string& archive, Errc code, ExtractLimits limits = {}) {
    BufferSource src(archive, 4096);
    auto r = ExtractPayload(src, staging_, limits);
    ASSERT_FALSE(r) << "accepted an archive that must be refused with " << ErrcName(code);
    EXPECT_EQ(r.error().code(), code) << r.error().ToString();
    EXPECT_EQ(Outside(), before_) << "something was written outside the staging directory";
    EXPECT_EQ(*ReadFile(dir_ / "a/sentinel"), "untouched");
  }

  sag::test::TempDir dir_;
  fs::path staging_;
  std::set<std::string> before_;
};

TEST_F(ExtractTest, ExtractsFilesDirsAndInnerLinks) {
  auto tar = TarBuilder()
                 .File("version", "20260101_1_0-1.0\n")
                 .Dir("rules")
                 .File("rules/a.dat", std::string(100000, 'a'), 0600)
                 .File("deep/er/b.dat", "bbb", 0755)
                 .Symlink("rules/latest", "a.dat")
                 .Symlink("up", "rules/../deep/er/b.dat")
                 .Hardlink("rules/a-copy.dat", "rules/a.dat")
                 .File("./dotted", "x")
                 .Finish();
  BufferSource src(tar, 1000);
  auto r = ExtractPayload(src, staging_, {});
  ASSERT_TRUE(r) << r.error().ToString();
  EXPECT_EQ(r->entries, 8U);
  EXPECT_EQ(r->files, 4U);
  EXPECT_FALSE(r->compressed);
  EXPECT_EQ(*ReadFile(staging_ / "rules/a.dat"), std::string(100000, 'a'));
  EXPECT_EQ(*ReadFile(staging_ / "rules/latest"), std::string(100000, 'a'));
  EXPECT_EQ(*ReadFile(staging_ / "up"), "bbb");
  EXPECT_EQ(fs::status(staging_ / "rules/a.dat").permissions() & fs::perms::all,
            fs::perms::owner_read | fs::perms::owner_write);
  EXPECT_EQ(fs::hard_link_count(staging_ / "rules/a.dat"), 2U);
  EXPECT_EQ(*ReadFile(staging_ / "dotted"), "x");
  EXPECT_EQ(Outside(), before_);
}

TEST_F(ExtractTest, ZstdPayloadInTinyChunks) {
  auto tar = TarBuilder(/*zstd=*/true)
                 .File("version", "v\n")
                 .File("rules/big.dat", std::string(300000, 'z'))
                 .Finish();
  ASSERT_LT(tar.size(), 10000U);
  BufferSource src(tar, 3);  // smaller than the zstd magic: the sniffing must cope
  auto r = ExtractPayload(src, staging_, {});
  ASSERT_TRUE(r) << r.error().ToString();
  EXPECT_TRUE(r->compressed);
  EXPECT_EQ(r->payload_bytes, tar.size());
  EXPECT_EQ(*ReadFile(staging_ / "rules/big.dat"), std::string(300000, 'z'));
}

struct HostileCase {
  std::string name;
  std::function<std::string()> archive;
  Errc code;
};

std::vector<HostileCase> HostileCorpus() {
  return {
      {"ParentTraversal",
       [] { return TarBuilder().File("../../etc/passwd", "root::0:0").Finish(); },
       Errc::kArchiveUnsafePath},
      {"ParentTraversalInside",
       [] { return TarBuilder().File("rules/../../../sentinel", "x").Finish(); },
       Errc::kArchiveUnsafePath},
      {"AbsolutePath", [] { return TarBuilder().File("/etc/passwd", "root::0:0").Finish(); },
       Errc::kArchiveUnsafePath},
      {"SymlinkEscapeThenWriteThrough",
       [] {
         return TarBuilder().Symlink("evil", "../../..").File("evil/sentinel", "pwned").Finish();
       },
       Errc::kArchiveUnsafeLink},
      {"SymlinkAbsoluteThenWriteThrough",
       [] { return TarBuilder().Symlink("etc", "/etc").File("etc/passwd", "pwned").Finish(); },
       Errc::kArchiveUnsafeLink},
      {"SymlinkInsideThenWriteThrough",
       [] { return TarBuilder().Dir("sub").Symlink("inner", "sub").File("inner/x", "x").Finish(); },
       Errc::kArchiveUnsafeLink},
      {"SymlinkDotDotInTheMiddle",
       [] { return TarBuilder().Symlink("d/l", "x/../../../y").Finish(); },
       Errc::kArchiveUnsafeLink},
      {"FileOverInnerSymlink",
       [] {
         return TarBuilder()
             .File("target", "t")
             .Symlink("link", "target")
             .File("link", "x")
             .Finish();
       },
       Errc::kArchiveMalformed},
      {"SymlinkChainEscape",
       [] {
         // Each link passes a lexical check; together they climb out.
         return TarBuilder().Symlink("d/up", "..").Symlink("e/esc", "../d/up/..").Finish();
       },
       Errc::kArchiveUnsafeLink},
      {"SymlinkLoop", [] { return TarBuilder().Symlink("a", "b").Symlink("b", "a").Finish(); },
       Errc::kArchiveUnsafeLink},
      {"HardlinkToEtcShadow",
       [] { return TarBuilder().Hardlink("shadow", "/etc/shadow").Finish(); },
       Errc::kArchiveUnsafeLink},
      {"HardlinkOutsideRelative",
       [] { return TarBuilder().Hardlink("s", "../../sentinel").Finish(); },
       Errc::kArchiveUnsafeLink},
      {"HardlinkToMissing", [] { return TarBuilder().Hardlink("s", "nothing").Finish(); },
       Errc::kArchiveUnsafeLink},
      {"HardlinkThroughSymlink",
       [] { return TarBuilder().Symlink("up", "..").Hardlink("s", "up/sentinel").Finish(); },
       Errc::kArchiveUnsafeLink},
      {"CharDevice", [] { return TarBuilder().Special("sda", AE_IFCHR).Finish(); },
       Errc::kArchiveSpecialFile},
      {"BlockDevice", [] { return TarBuilder().Special("sdb", AE_IFBLK).Finish(); },
       Errc::kArchiveSpecialFile},
      {"Fifo", [] { return TarBuilder().Special("fifo", AE_IFIFO).Finish(); },
       Errc::kArchiveSpecialFile},
      {"SetuidFile", [] { return TarBuilder().File("sh", "#!", 04755).Finish(); },
       Errc::kArchiveSetId},
      {"SetgidDir", [] { return TarBuilder().Dir("d", 02755).Finish(); }, Errc::kArchiveSetId},
      {"DuplicateFile", [] { return TarBuilder().File("a", "1").File("a", "2").Finish(); },
       Errc::kArchiveMalformed},
      {"NotATar", [] { return std::string(4096, 'x'); }, Errc::kArchiveMalformed},
      {"Empty", [] { return std::string(); }, Errc::kArchiveMalformed},
      {"TruncatedTar",
       [] {
         auto t = TarBuilder().File("version", "v").File("big", std::string(50000, 'b')).Finish();
         return t.substr(0, 512 * 3 + 20000);
       },
       Errc::kArchiveMalformed},
      {"TruncatedZstd",
       [] {
         auto t = TarBuilder(true).File("big", std::string(200000, 'b')).Finish();
         return t.substr(0, t.size() / 2);
       },
       Errc::kArchiveMalformed},
  };
}

class Hostile : public ExtractTest, public ::testing::WithParamInterface<HostileCase> {};

TEST_P(Hostile, IsRefusedWithItsOwnCode) { ExpectRefused(GetParam().archive(), GetParam().code); }

INSTANTIATE_TEST_SUITE_P(Corpus, Hostile, ::testing::ValuesIn(HostileCorpus()),
                         [](const auto& param_info) { return param_info.param.name; });

TEST_F(ExtractTest, DecompressionBombAboveTotalCap) {
  // 256 MiB of zeros in a few KiB: refused from the header's declared size,
  // before its data is decompressed.
  auto tar = TarBuilder(true).File("version", "v").Zeros("bomb", 256ULL << 20U).Finish();
  ASSERT_LT(tar.size(), 64U << 10U);
  ExtractLimits limits;
  limits.max_total_bytes = 16U << 20U;
  const auto start = std::chrono::steady_clock::now();
  ExpectRefused(tar, Errc::kArchiveTooLarge, limits);
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(5));
  EXPECT_FALSE(fs::exists(staging_ / "bomb"));
}

TEST_F(ExtractTest, DecompressionBombAboveRatio) {
  auto tar = TarBuilder(true).Zeros("bomb", 64ULL << 20U).Finish();
  ExtractLimits limits;
  limits.max_ratio = 20;
  limits.ratio_floor_bytes = 64U << 10U;
  ExpectRefused(tar, Errc::kArchiveRatio, limits);
  // Refused early: at most ratio x floor (plus one buffer) was written.
  std::error_code ec;
  EXPECT_LE(fs::file_size(staging_ / "bomb", ec), (20U * (64U << 10U)) + (1U << 20U));
}

TEST_F(ExtractTest, ZstdWindowAboveLimitIsRefused) {
  auto tar = TarBuilder(true).File("x", std::string(1000, 'x')).Finish();
  ExtractLimits limits;
  limits.zstd_window_log_max = 10;  // 1 KiB: the encoder's window is larger
  ExpectRefused(tar, Errc::kArchiveMalformed, limits);
}

TEST_F(ExtractTest, MillionsOfEmptyEntriesStopAtTheCap) {
  // 2 million entries, generated lazily and never held in memory: the same
  // empty directory over and over, so the entries below the cap cost no disk.
  test::ManyEntriesSource src(2000000);
  ExtractLimits limits;
  limits.max_entries = 10000;
  const auto start = std::chrono::steady_clock::now();
  auto r = ExtractPayload(src, staging_, limits);
  const auto took = std::chrono::steady_clock::now() - start;
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code(), Errc::kArchiveTooManyEntries) << r.error().ToString();
  EXPECT_LT(src.written(), 20000U) << "the reader went on after the cap";
  EXPECT_LT(took, std::chrono::seconds(30));
  EXPECT_EQ(Outside(), before_);
}

TEST_F(ExtractTest, SourceErrorWinsOverArchiveError) {
  auto tar = TarBuilder().File("big", std::string(200000, 'b')).Finish();
  BufferSource src(tar, 4096);
  src.FailAt(50000);
  auto r = ExtractPayload(src, staging_, {});
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code(), Errc::kChunkHashMismatch) << r.error().ToString();
}

TEST_F(ExtractTest, SourceIsReadToItsEnd) {
  // Bytes after the archive's end marker are still pulled, so that every
  // chunk of the image (and the container's end) gets checked.
  auto tar = TarBuilder().File("a", "1").Finish() + std::string(100000, '\0');
  BufferSource src(tar, 4096);
  src.FailAt(tar.size() - 10);
  auto r = ExtractPayload(src, staging_, {});
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code(), Errc::kChunkHashMismatch);
}

TEST_F(ExtractTest, LinksResolveWhileOtherProcessesRename) {
  // openat2(RESOLVE_BENEATH) answers EAGAIN when any rename on the system
  // (not only under the staging directory) races with a '..' it resolves;
  // the man page says to retry. A device renames files all the time (the
  // agent's own atomic writes), so a package with '..' in its links must not
  // fail with an I/O error because of them, and an escape must still be
  // refused as one.
  const fs::path churn = dir_ / "churn";
  fs::create_directories(churn);
  ASSERT_TRUE(WriteFileAtomic(churn / "x", "x"));
  std::atomic<bool> stop{false};
  std::thread renamer([&] {
    for (int i = 0; i < 50'000'000 && !stop.load(std::memory_order_relaxed); ++i) {
      fs::rename(churn / (i % 2 == 0 ? "x" : "y"), churn / (i % 2 == 0 ? "y" : "x"));
    }
  });
  const auto escape = TarBuilder().Symlink("d/up", "..").Symlink("e/esc", "../d/up/..").Finish();
  const auto inside = TarBuilder()
                          .File("deep/er/b.dat", "bbb")
                          .Symlink("d/up", "..")
                          .Symlink("e/in", "../d/up/deep/er/../er/b.dat")
                          .Finish();
  int refused = 0;
  int extracted = 0;
  std::string unexpected;
  for (int i = 0; i < 300 && unexpected.empty(); ++i) {
    const fs::path s1 = dir_ / "a/b" / ("esc" + std::to_string(i));
    const fs::path s2 = dir_ / "a/b" / ("in" + std::to_string(i));
    fs::create_directories(s1);
    fs::create_directories(s2);
    BufferSource bad(escape, 4096);
    auto r = ExtractPayload(bad, s1, {});
    if (!r && r.error().code() == Errc::kArchiveUnsafeLink) {
      ++refused;
    } else {
      unexpected = r ? "escape accepted" : r.error().ToString();
    }
    BufferSource good(inside, 4096);
    auto g = ExtractPayload(good, s2, {});
    if (g) {
      ++extracted;
    } else if (unexpected.empty()) {
      unexpected = g.error().ToString();
    }
    fs::remove_all(s1);
    fs::remove_all(s2);
  }
  stop = true;
  renamer.join();
  EXPECT_EQ(unexpected, "");
  EXPECT_EQ(refused, 300);
  EXPECT_EQ(extracted, 300);
}

TEST_F(ExtractTest, FilesAreWrittenWithoutFollowingPreexistingLinks) {
  // Even a symlink planted in the staging directory by someone else is not
  // followed: creation uses O_EXCL | O_NOFOLLOW.
  fs::create_symlink(dir_ / "a/sentinel", staging_ / "version");
  ExpectRefused(TarBuilder().File("version", "pwned").Finish(), Errc::kArchiveMalformed);
}

}  // namespace
}  // namespace sag::dpi
