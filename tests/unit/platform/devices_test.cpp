// Slot devices, system information and rebooters.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include "common/aligned_buffer.h"
#include "common/atomic_file.h"
#include "common/process.h"
#include "platform/file_slot_device.h"
#include "platform/linux_rebooter.h"
#include "platform/linux_system_info.h"
#include "tests/support/extents.h"
#include "tests/support/temp_dir.h"

namespace sag::platform {
namespace {

std::vector<std::uint8_t> Bytes(std::string_view s) { return {s.begin(), s.end()}; }

class SlotDeviceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ = dir_ / "slot-b.img";
    std::ofstream(path_, std::ios::binary) << std::string(4096, '\0');
  }
  sag::test::TempDir dir_;
  std::filesystem::path path_;
};

TEST_F(SlotDeviceTest, WritesWithinSizeSyncsAndReadsBack) {
  auto dev = OpenSlotDevice("B", path_, 4096);
  ASSERT_TRUE(dev) << dev.error().ToString();
  EXPECT_EQ(*(*dev)->Size(), 4096U);
  auto w = (*dev)->OpenWriter();
  ASSERT_TRUE(w) << w.error().ToString();
  ASSERT_TRUE((*w)->WriteAt(0, Bytes("hello")));
  ASSERT_TRUE((*w)->WriteAt(4091, Bytes("world")));  // exactly up to the end
  ASSERT_TRUE((*w)->Sync());
  std::vector<std::uint8_t> buf(5);
  EXPECT_EQ(*(*dev)->ReadAt(4091, buf), 5U);
  EXPECT_EQ(std::string(buf.begin(), buf.end()), "world");
  EXPECT_EQ(*(*dev)->ReadAt(4094, buf), 2U);  // short only at the end
  EXPECT_EQ(std::filesystem::file_size(path_), 4096U);
}

TEST_F(SlotDeviceTest, NeverWritesPastTheEnd) {
  FileSlotDevice dev(path_);
  auto w = dev.OpenWriter();
  ASSERT_TRUE(w);
  for (const std::uint64_t off : {std::uint64_t{4092}, std::uint64_t{4096}, ~std::uint64_t{0}}) {
    const auto st = (*w)->WriteAt(off, Bytes("12345"));
    ASSERT_FALSE(st);
    EXPECT_EQ(st.error().code(), Errc::kSlotSize);
    EXPECT_NE(st.error().message().find(path_.string()), std::string::npos);
  }
  EXPECT_EQ(std::filesystem::file_size(path_), 4096U);
  std::vector<std::uint8_t> buf(4);
  ASSERT_EQ(*dev.ReadAt(4092, buf), 4U);
  EXPECT_EQ(buf, std::vector<std::uint8_t>(4, 0));  // nothing written
}

TEST_F(SlotDeviceTest, ReadOnlySlotIsRefused) {
  ::chmod(path_.c_str(), 0444);
  FileSlotDevice dev(path_);
  auto w = dev.OpenWriter();
  ASSERT_FALSE(w);
  EXPECT_EQ(w.error().code(), Errc::kSlotReadOnly);
  EXPECT_NE(w.error().message().find(path_.string()), std::string::npos);
}

TEST_F(SlotDeviceTest, BadSlotsAreNamed) {
  auto wrong = OpenSlotDevice("B", path_, 8192);
  ASSERT_FALSE(wrong);
  EXPECT_EQ(wrong.error().code(), Errc::kSlotSize);
  EXPECT_NE(wrong.error().message().find("slot B"), std::string::npos);
  EXPECT_NE(wrong.error().message().find("4096"), std::string::npos);
  std::ofstream empty(dir_ / "empty.img");
  empty.close();
  EXPECT_EQ(OpenSlotDevice("A", dir_ / "empty.img").error().code(), Errc::kSlotSize);
  EXPECT_EQ(OpenSlotDevice("A", dir_ / "nope.img").error().code(), Errc::kNotFound);
  EXPECT_EQ(OpenSlotDevice("A", dir_.path()).error().code(), Errc::kSlotIo);  // a directory
  EXPECT_EQ(FileSlotDevice(dir_ / "nope.img").OpenWriter().error().code(), Errc::kNotFound);
}

constexpr std::size_t kPiece = 256U << 10U;

// Over a slot of four chunks of 0x5a: writes a chunk of zeros as chunk 1 and
// a chunk that is zero up to its last byte as chunk 2, syncs, and checks
// that the slot reads back both, through the page cache and from the medium.
void WriteZeroChunks(SlotDevice& dev) {
  auto w = dev.OpenWriter();
  ASSERT_TRUE(w) << w.error().ToString();
  AlignedBuffer zeros(kPiece);
  std::fill(zeros.data(), zeros.data() + kPiece, 0);
  AlignedBuffer late(kPiece);
  std::fill(late.data(), late.data() + kPiece, 0);
  late.data()[kPiece - 1] = 0x77;
  ASSERT_TRUE((*w)->WriteAt(kPiece, zeros.span()));
  ASSERT_TRUE((*w)->WriteAt(2 * kPiece, late.span()));
  ASSERT_TRUE((*w)->Sync());

  std::vector<std::uint8_t> want(4 * kPiece, 0x5a);
  std::fill(want.begin() + kPiece, want.begin() + 3 * kPiece, 0);
  want[3 * kPiece - 1] = 0x77;
  std::vector<std::uint8_t> got(4 * kPiece);
  ASSERT_EQ(*dev.ReadAt(0, got), got.size());
  EXPECT_TRUE(got == want) << "the slot does not read back what was written";
  AlignedBuffer medium(4 * kPiece);
  ASSERT_EQ(*dev.ReadMediumAt(0, medium.span()), medium.size());
  EXPECT_TRUE(std::equal(want.begin(), want.end(), medium.data()))
      << "the medium does not hold what was written";
}

// Where the file system holding `file` zeroes ranges (ext4, xfs; not tmpfs),
// WriteZeroChunks left chunk 1 unwritten (zeroed, not written as data) and
// wrote chunk 2.
void ExpectZeroedInPlace(const std::filesystem::path& file) {
  if (!sag::test::ZeroesRanges(file.parent_path())) {
    GTEST_SKIP() << "this file system cannot zero a range; the zeros were written";
  }
  EXPECT_EQ(sag::test::Unwritten(file, kPiece), std::optional<bool>(true))
      << "the chunk of zeros reached " << file << " as data";
  EXPECT_EQ(sag::test::Unwritten(file, 2 * kPiece), std::optional<bool>(false))
      << "a chunk that only starts with zeros was zeroed";
}

// A chunk of zeros over old data (the free space of a file system image) is
// zeroed in place instead of written: it reads back as zeros, through the
// page cache and from the medium, the slot file keeps its blocks (no holes:
// a later install must not run out of space), and a chunk that only starts
// with zeros is written as it is. Where the file system zeroes ranges
// (ext4, xfs), the range is left unwritten, which shows the zeroing was not
// a write of zeros.
TEST(SlotZeroing, ZeroChunksAreZeroedInPlaceAndKeepTheirBlocks) {
  const sag::test::TempDir dir;
  const auto path = dir / "slot-b.img";
  std::ofstream(path, std::ios::binary) << std::string(4 * kPiece, '\x5a');
  {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::fsync(fd), 0);  // allocated and written, as a slot is
    ::close(fd);
  }
  struct stat before {};
  ASSERT_EQ(::stat(path.c_str(), &before), 0);

  auto dev = OpenSlotDevice("B", path, 4 * kPiece);
  ASSERT_TRUE(dev) << dev.error().ToString();
  ASSERT_NO_FATAL_FAILURE(WriteZeroChunks(**dev));

  struct stat after {};
  ASSERT_EQ(::stat(path.c_str(), &after), 0);
  EXPECT_EQ(after.st_size, before.st_size);
  EXPECT_GE(after.st_blocks, before.st_blocks) << "zeroing left a hole in the slot file";

  ExpectZeroedInPlace(path);
}

// The same on a block device (BLKZEROOUT): a loop device over a slot file,
// which passes the zeroing on to its backing file. Needs root and losetup.
TEST(SlotZeroing, ZeroChunksAreZeroedInPlaceOnABlockDevice) {
  const sag::test::TempDir dir;
  const auto backing = dir / "slot-b.img";
  std::ofstream(backing, std::ios::binary) << std::string(4 * kPiece, '\x5a');
  const auto attach = sag::RunCommand({"losetup", "--find", "--show", backing.string()});
  if (!attach || attach->signal != 0 || attach->exit_code != 0) {
    GTEST_SKIP() << "no loop device here (needs root)";
  }
  std::string loop;
  std::istringstream(attach->output) >> loop;
  ASSERT_TRUE(loop.starts_with("/dev/loop")) << attach->output;
  struct Detach {
    std::string dev;
    ~Detach() { (void)sag::RunCommand({"losetup", "-d", dev}); }
  } detach{loop};

  auto dev = OpenSlotDevice("B", loop, 4 * kPiece);
  ASSERT_TRUE(dev) << dev.error().ToString();
  ASSERT_NO_FATAL_FAILURE(WriteZeroChunks(**dev));
  ExpectZeroedInPlace(backing);
}

TEST(SystemInfo, ValuesFilesBootIdAndFreeSpace) {
  sag::test::TempDir dir;
  ASSERT_TRUE(WriteFileAtomic(dir / "serial", std::string("sag233abcd\n\0", 12)));
  ASSERT_TRUE(WriteFileAtomic(dir / "boot_id", "0f6c8e4e-1111-2222-3333-444455556666\n"));
  SystemInfoOptions o;
  o.serial_file = dir / "serial";
  o.model = "sag-1000";
  o.model_file = dir / "missing";
  o.boot_id_file = dir / "boot_id";
  LinuxSystemInfo info(o);
  EXPECT_EQ(*info.SerialNumber(), "sag233abcd");
  EXPECT_EQ(*info.HardwareModel(), "sag-1000");
  EXPECT_EQ(*info.BootId(), "0f6c8e4e-1111-2222-3333-444455556666");
  auto free = info.FreeSpace(dir.path());
  ASSERT_TRUE(free);
  EXPECT_GT(*free, 0U);
  EXPECT_EQ(info.FreeSpace(dir / "missing").error().code(), Errc::kSystemInfo);
  o.model.clear();
  auto model = LinuxSystemInfo(o).HardwareModel();
  ASSERT_FALSE(model);
  EXPECT_EQ(model.error().code(), Errc::kSystemInfo);
  EXPECT_NE(model.error().message().find("missing"), std::string::npos);
  // The real boot id file exists on Linux and is a UUID.
  EXPECT_EQ(LinuxSystemInfo({}).BootId()->size(), 36U);
}

TEST(Rebooter, CommandAndFlagFile) {
  EXPECT_TRUE(CommandRebooter({"true"}).Reboot());
  const auto st = CommandRebooter({"false"}).Reboot();
  ASSERT_FALSE(st);
  EXPECT_EQ(st.error().code(), Errc::kRebootFailed);
  sag::test::TempDir dir;
  ASSERT_TRUE(FlagFileRebooter(dir / "reboot", false).Reboot());
  EXPECT_TRUE(std::filesystem::exists(dir / "reboot"));
  EXPECT_EQ(FlagFileRebooter(dir / "no/such/dir/reboot", false).Reboot().error().code(),
            Errc::kRebootFailed);
  EXPECT_NE(dynamic_cast<FlagFileRebooter*>(MakeRebooter(dir / "flag").get()), nullptr);
  EXPECT_NE(dynamic_cast<SystemdRebooter*>(MakeRebooter({}).get()), nullptr);
}

TEST(Rebooter, FlagFileTerminatesItselfLikeSystemdWould) {
  sag::test::TempDir dir;
  const auto flag = dir / "reboot";
  EXPECT_EXIT(
      {
        (void)FlagFileRebooter(flag).Reboot();
        ::pause();
      },
      ::testing::KilledBySignal(SIGTERM), "");
  EXPECT_TRUE(std::filesystem::exists(flag));
}

}  // namespace
}  // namespace sag::platform
