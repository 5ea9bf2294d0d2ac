// Slot devices on a medium that fails or lies (tools/powerloss): every write
// error surfaces with its code, whichever call reports it, and ReadMediumAt
// reads what the device holds, not the page cache.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <span>

#include "common/aligned_buffer.h"
#include "platform/file_slot_device.h"
#include "tests/support/extents.h"
#include "tests/support/powerloss_mount.h"
#include "tests/support/temp_dir.h"

namespace sag::platform {
namespace {

namespace fs = std::filesystem;

class MediumTest : public ::testing::Test {
 protected:
  void Mount(const std::string& cache, std::uint64_t slot_size) {
    fs::create_directories(dir_ / "backing");
    fs::create_directories(dir_ / "mnt");
    { std::ofstream f(dir_ / "backing" / "slot-b.img", std::ios::binary); }
    fs::resize_file(dir_ / "backing" / "slot-b.img", slot_size);  // sparse
    mount_ = std::make_unique<sag::test::PowerLossMount>(SAG_POWERLOSS_BIN, dir_ / "backing",
                                                         dir_ / "mnt", cache);
    if (!mount_->Available()) GTEST_SKIP() << "no FUSE here (needs /dev/fuse and root)";
  }
  void TearDown() override { mount_.reset(); }

  fs::path Slot() const { return dir_ / "mnt" / "slot-b.img"; }

  sag::test::TempDir dir_;
  std::unique_ptr<sag::test::PowerLossMount> mount_;
};

// Finding 1 of issue 13: the kernel writes the slot back in the background,
// the medium fails it, and sync_file_range(WAIT_AFTER) in the writer's
// write-behind is the call that reports the error (marking it seen, so the
// later fsync returns 0). The slot must still fail, with EIO in the message.
TEST_F(MediumTest, WriteBackErrorReportedBySyncFileRangeFailsTheSlot) {
  constexpr std::uint64_t kMiB = 1U << 20U;
  constexpr std::uint64_t kSize = 300 * kMiB;
  Mount("writeback", kSize);
  if (IsSkipped()) return;
  ASSERT_FALSE(mount_
                   ->Control("fail slot-b.img " + std::to_string(9 * kMiB) + " " +
                             std::to_string(kMiB) + " 5")
                   .empty());
  auto dev = OpenSlotDevice("B", Slot(), kSize);
  ASSERT_TRUE(dev) << dev.error().ToString();
  auto w = (*dev)->OpenWriter();
  ASSERT_TRUE(w) << w.error().ToString();
  const std::vector<std::uint8_t> chunk(kMiB, 0x5a);
  Status result;
  for (std::uint64_t at = 0; at < kSize && result; at += kMiB) result = (*w)->WriteAt(at, chunk);
  if (result) result = (*w)->Sync();
  ASSERT_FALSE(result) << "a write-back error was lost: the slot looks written";
  EXPECT_EQ(result.error().code(), Errc::kSlotIo) << result.error().ToString();
  EXPECT_NE(result.error().ToString().find(std::strerror(EIO)), std::string::npos)
      << result.error().ToString();
  // Once failed, a later Sync() does not report success either.
  EXPECT_FALSE((*w)->Sync());
}

// A write the medium refuses at once: the code of the error (here ENOSPC,
// kNoSpace) is in the result of the write.
TEST_F(MediumTest, RefusedWriteSurfacesItsCode) {
  Mount("direct", 1U << 20U);
  if (IsSkipped()) return;
  ASSERT_FALSE(mount_->Control("fail slot-b.img 65536 4096 28").empty());
  auto dev = OpenSlotDevice("B", Slot());
  ASSERT_TRUE(dev) << dev.error().ToString();
  auto w = (*dev)->OpenWriter();
  ASSERT_TRUE(w) << w.error().ToString();
  const std::vector<std::uint8_t> data(8192, 1);
  ASSERT_TRUE((*w)->WriteAt(0, data));
  auto st = (*w)->WriteAt(64U << 10U, data);
  ASSERT_FALSE(st);
  EXPECT_EQ(st.error().code(), Errc::kNoSpace);
  EXPECT_NE(st.error().ToString().find(std::strerror(ENOSPC)), std::string::npos)
      << st.error().ToString();
}

// A medium that says "written" and keeps nothing: through the page cache the
// slot reads back right, from the medium it does not.
TEST_F(MediumTest, LyingMediumIsSeenFromTheMediumOnly) {
  Mount("kernel", 1U << 20U);
  if (IsSkipped()) return;
  ASSERT_FALSE(mount_->Control("lie slot-b.img 131072 65536").empty());
  auto dev = OpenSlotDevice("B", Slot());
  ASSERT_TRUE(dev) << dev.error().ToString();
  auto w = (*dev)->OpenWriter();
  ASSERT_TRUE(w) << w.error().ToString();
  const std::vector<std::uint8_t> data(256U << 10U, 0xa7);
  ASSERT_TRUE((*w)->WriteAt(0, data));
  ASSERT_TRUE((*w)->Sync());
  std::vector<std::uint8_t> got(4096);
  ASSERT_EQ(*(*dev)->ReadAt(131072 + 1000, got), got.size());
  EXPECT_EQ(got[0], 0xa7) << "the page cache should still hold the written data";
  ASSERT_EQ(*(*dev)->ReadMediumAt(131072 + 1000, got), got.size());
  EXPECT_EQ(got[0], 0) << "ReadMediumAt returned the page cache, not the medium";
  // Unaligned pieces outside the lie read what was written.
  std::vector<std::uint8_t> odd(777);
  ASSERT_EQ(*(*dev)->ReadMediumAt(4095, odd), odd.size());
  EXPECT_EQ(odd, std::vector<std::uint8_t>(777, 0xa7));
  // The end of the slot: a short read.
  ASSERT_EQ(*(*dev)->ReadMediumAt((1U << 20U) - 100, odd), 100U);
  // An aligned buffer is read into directly (no bounce buffer), its tail
  // shorter than a block through one: the same bytes, the same ends.
  auto* raw = static_cast<std::uint8_t*>(std::aligned_alloc(4096, 64U << 10U));
  ASSERT_NE(raw, nullptr);
  const std::unique_ptr<std::uint8_t, decltype(&std::free)> aligned(raw, &std::free);
  const std::span<std::uint8_t> buf(raw, 64U << 10U);
  ASSERT_EQ(*(*dev)->ReadMediumAt(131072, buf), buf.size());
  EXPECT_EQ(buf[1000], 0) << "the aligned read returned the page cache, not the medium";
  buf[3 * 4096 + 500] = 0x55;
  ASSERT_EQ(*(*dev)->ReadMediumAt(0, buf.first(3 * 4096 + 500)), 3 * 4096 + 500U);
  EXPECT_TRUE(
      std::all_of(raw, raw + (3U * 4096U + 500U), [](std::uint8_t b) { return b == 0xa7; }));
  EXPECT_EQ(buf[3 * 4096 + 500], 0x55) << "wrote past the span it was given";
  ASSERT_EQ(*(*dev)->ReadMediumAt((1U << 20U) - 8192, buf.first(8192 + 100)), 8192U);
}

// An aligned chunk (the image reader's buffers) is written with O_DIRECT:
// the medium gets it at once, not the page cache. So a lie over its range
// shows even through the page cache, while an unaligned write still goes
// through the cache (and reads back from there). Both read right where the
// medium keeps them, and a write error of a direct write is the write's.
TEST_F(MediumTest, AlignedWritesGoToTheMediumDirectly) {
  Mount("kernel", 1U << 20U);
  if (IsSkipped()) return;
  ASSERT_FALSE(mount_->Control("lie slot-b.img 131072 65536").empty());
  ASSERT_FALSE(mount_->Control("fail slot-b.img 524288 4096 5").empty());
  auto dev = OpenSlotDevice("B", Slot());
  ASSERT_TRUE(dev) << dev.error().ToString();
  auto w = (*dev)->OpenWriter();
  ASSERT_TRUE(w) << w.error().ToString();
  AlignedBuffer chunk(256U << 10U);
  std::fill(chunk.data(), chunk.data() + chunk.size(), 0xa7);
  ASSERT_TRUE((*w)->WriteAt(0, chunk.span()));
  std::vector<std::uint8_t> got(4096);
  ASSERT_EQ(*(*dev)->ReadAt(131072 + 4096, got), got.size());
  EXPECT_EQ(got[0], 0) << "an aligned write went through the page cache";
  ASSERT_EQ(*(*dev)->ReadAt(4096, got), got.size());
  EXPECT_EQ(got[0], 0xa7);
  // Unaligned (a tail, a delta frame in a vector): through the cache.
  const std::vector<std::uint8_t> odd(8192 + 100, 0x3c);
  ASSERT_TRUE((*w)->WriteAt(262144, odd));
  ASSERT_EQ(*(*dev)->ReadAt(262144 + 8192, std::span(got).first(100)), 100U);
  EXPECT_EQ(got[0], 0x3c);
  // The medium refuses a direct write: its error, at once.
  auto st = (*w)->WriteAt(524288, chunk.span().first(65536));
  ASSERT_FALSE(st) << "a direct write over a failing range succeeded";
  EXPECT_NE(st.error().ToString().find(std::strerror(EIO)), std::string::npos)
      << st.error().ToString();
  ASSERT_TRUE((*w)->Sync());
}

// A chunk of zeros is zeroed in place (fallocate, not a write): a cut before
// Sync() must bring the old data back, as it would for a written chunk that
// the device's cache lost, and after Sync() the zeros must survive a cut.
TEST_F(MediumTest, ZeroedChunkIsDurableOnlyAfterSync) {
  constexpr std::size_t kChunk = 256U << 10U;
  Mount("direct", 4 * kChunk);
  if (IsSkipped()) return;
  auto dev = OpenSlotDevice("B", Slot());
  ASSERT_TRUE(dev) << dev.error().ToString();
  auto w = (*dev)->OpenWriter();
  ASSERT_TRUE(w) << w.error().ToString();
  AlignedBuffer old(kChunk);
  std::fill(old.data(), old.data() + kChunk, 0xa7);
  ASSERT_TRUE((*w)->WriteAt(kChunk, old.span()));
  ASSERT_TRUE((*w)->Sync());
  AlignedBuffer zeros(kChunk);
  std::fill(zeros.data(), zeros.data() + kChunk, 0);
  std::vector<std::uint8_t> got(kChunk);
  const auto all = [&got](std::uint8_t v) {
    return std::all_of(got.begin(), got.end(), [v](std::uint8_t b) { return b == v; });
  };

  ASSERT_TRUE((*w)->WriteAt(kChunk, zeros.span()));
  ASSERT_EQ(*(*dev)->ReadAt(kChunk, got), got.size());
  EXPECT_TRUE(all(0)) << "the zeroed chunk does not read as zeros";
  if (sag::test::ZeroesRanges(dir_.path())) {  // the backing file shows how
    EXPECT_EQ(sag::test::Unwritten(dir_ / "backing" / "slot-b.img", kChunk),
              std::optional<bool>(true))
        << "the chunk of zeros was written as data, not zeroed";
  }
  ASSERT_FALSE(mount_->Control("cut").empty());
  ASSERT_EQ(*(*dev)->ReadAt(kChunk, got), got.size());
  EXPECT_TRUE(all(0xa7)) << "a zeroing that was never synced survived the cut";

  ASSERT_TRUE((*w)->WriteAt(kChunk, zeros.span()));
  ASSERT_TRUE((*w)->Sync());
  ASSERT_FALSE(mount_->Control("cut").empty());
  ASSERT_EQ(*(*dev)->ReadAt(kChunk, got), got.size());
  EXPECT_TRUE(all(0)) << "a synced zeroing was lost by the cut";
}

}  // namespace
}  // namespace sag::platform
