// Delta installs of format 2 Device images (docs/delta.md) through
// DeviceInstaller, against file-backed slots and a loopback HTTPS server:
// what is fetched, what is assembled locally, bit rot, servers without Range,
// old-format images and a stopped job that resumes.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <functional>
#include <random>
#include <thread>

#include "common/atomic_file.h"
#include "common/image/image_writer.h"
#include "common/image/pki.h"
#include "firmware/installer.h"
#include "platform/fake_boot_control.h"
#include "platform/file_slot_device.h"
#include "tests/support/temp_dir.h"
#include "tests/support/test_http_server.h"

namespace sag::firmware {
namespace {

namespace fs = std::filesystem;
using platform::Slot;

constexpr std::uint64_t kSlotSize = 4U << 20U;
constexpr std::uint64_t kBlock = image::kReuseBlockSize;
constexpr std::uint64_t kFrame = 16U << 10U;  // 4 blocks

class FakeSystem final : public platform::SystemInfo {
 public:
  Expected<std::string> SerialNumber() override { return std::string("sag-test-1"); }
  Expected<std::string> HardwareModel() override { return std::string("sag-1000"); }
  Expected<std::string> BootId() override { return "boot-" + std::to_string(boot); }
  Expected<std::uint64_t> FreeSpace(const fs::path& /*dir*/) override { return 1U << 30U; }
  int boot = 1;
};

class FakeRebooter final : public platform::Rebooter {
 public:
  Status Reboot() override {
    ++requests;
    return Ok();
  }
  int requests = 0;
};

std::string RandomBlock(std::mt19937& rng) {
  std::string s(kBlock, '\0');
  for (auto& c : s) c = static_cast<char>(rng());
  return s;
}

// Three payloads of 4 KiB blocks, as a file system's minor updates look to a
// block device: v1 is random blocks and a run of zero blocks; v2 is v1 with
// 3 blocks inserted near the start (every later block moves by 3 blocks, so
// no frame of v2 is at the same offset in v1), a run of blocks moved, 2
// blocks changed and one removed; v3 is v2 with 2 more blocks changed.
struct Payloads {
  std::string v1, v2, v3;
  Payloads() {
    std::mt19937 rng(2020);
    std::vector<std::string> blocks;
    blocks.reserve(256);
    for (int i = 0; i < 256; ++i) {
      blocks.push_back(i >= 200 && i < 216 ? std::string(kBlock, '\0') : RandomBlock(rng));
    }
    for (const auto& b : blocks) v1 += b;
    auto b2 = blocks;
    b2.insert(b2.begin() + 10, {RandomBlock(rng), RandomBlock(rng), RandomBlock(rng)});
    std::rotate(b2.begin() + 100, b2.begin() + 120, b2.begin() + 140);
    b2[60] = RandomBlock(rng);
    b2[170] = RandomBlock(rng);
    b2.erase(b2.begin() + 230);
    for (const auto& b : b2) v2 += b;
    v2 += "a short tail";  // the last block is partial
    auto b3 = b2;
    b3[30] = RandomBlock(rng);
    b3[150] = RandomBlock(rng);
    for (const auto& b : b3) v3 += b;
    v3 += "a short tail";
  }
};

class Images {
 public:
  Images() {
    EXPECT_TRUE(image::pki::InitDevPki(dir_.path()));
    Make("1.0.1", payloads.v2, 2, "v2");
    Make("1.0.2", payloads.v3, 2, "v3");
    Make("1.0.1", payloads.v2, 1, "v2-format1");
    Make("1.0.1", payloads.v2, image::kFormatCompact, "v2-f3");
    Make("1.0.2", payloads.v3, image::kFormatCompact, "v3-f3");
    Make("1.0.1", payloads.v2, image::kFormatGrouped, "v2-f4");
    Make("1.0.2", payloads.v3, image::kFormatGrouped, "v3-f4");
  }
  void Make(const std::string& version, const std::string& payload, int format,
            const std::string& name) {
    const auto p = dir_ / (name + ".bin");
    std::ofstream(p, std::ios::binary) << payload;
    image::CreateParams cp;
    cp.version = version;
    cp.compatible = {"sag-1000"};
    cp.payload = p;
    cp.key = dir_ / "signer.key";
    cp.cert = dir_ / "signer.pem";
    cp.chain = dir_ / "signer-chain.pem";
    cp.format = format;
    cp.chunk_size = format >= 2 ? kFrame : 64U << 10U;
    if (format == image::kFormatGrouped) {
      // Format 4: 4 KiB frames in groups of 4 (a group is format 3's
      // 16 KiB frame), and a dictionary (a raw one: random blocks train
      // none).
      cp.chunk_size = kBlock;
      cp.group_frames = 4;
      cp.dict_bytes = 8192;
    }
    cp.output = dir_ / (name + ".sagimg");
    auto st = image::CreateImage(cp);
    EXPECT_TRUE(st) << st.error().ToString();
  }
  [[nodiscard]] std::string Bytes(const std::string& name) const {
    return *ReadFile(dir_ / (name + ".sagimg"), 64U << 20U);
  }
  [[nodiscard]] fs::path Root() const { return dir_ / "root-ca.pem"; }
  [[nodiscard]] fs::path Path(const std::string& name) const { return dir_ / (name + ".sagimg"); }
  [[nodiscard]] test::ServerTls Tls() const {
    return {dir_ / "server-chain.pem", dir_ / "server.key", {}};
  }
  Payloads payloads;

 private:
  test::TempDir dir_;
};

Images* g_images = nullptr;

// The compressed size of every frame of a format 2 image: what a full
// download of its payload fetches.
std::uint64_t FullBytes(const std::string& name) {
  const auto bytes = g_images->Bytes(name);
  // manifest.json is the first entry: its JSON runs from offset 512 to the
  // first NUL.
  const auto json = std::string_view(bytes).substr(512, bytes.find('\0', 512) - 512);
  auto m = image::ParseManifest(json);
  EXPECT_TRUE(m) << m.error().ToString();
  std::uint64_t sum = 0;
  for (const auto& c : m->chunks) sum += c.length;
  return sum;
}

class DeltaInstallTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { g_images = new Images(); }
  static void TearDownTestSuite() {
    delete g_images;
    g_images = nullptr;
  }

  void SetUp() override {
    // Slot A runs 1.0.0 (v1, no slot record: a factory image), B is empty.
    std::string a = g_images->payloads.v1;
    a.resize(kSlotSize, '\0');
    std::ofstream(dir_ / "slot-a", std::ios::binary) << a;
    std::ofstream(dir_ / "slot-b", std::ios::binary) << std::string(kSlotSize, '\0');
    ASSERT_TRUE(WriteFileAtomic(dir_ / "os-release", "NAME=SAG\nVERSION_ID=\"1.0.0\"\n"));
    fs::create_directories(dir_ / "state");
    slot_a_ = std::move(*platform::OpenSlotDevice("A", dir_ / "slot-a"));
    slot_b_ = std::move(*platform::OpenSlotDevice("B", dir_ / "slot-b"));
    boot_.Boot();  // power-on: A
  }

  std::unique_ptr<DeviceInstaller> MakeInstaller() {
    InstallerOptions o;
    o.download.ca_file = g_images->Root();
    o.download.stall_timeout = std::chrono::milliseconds(2000);
    o.download.initial_backoff = std::chrono::milliseconds(20);
    o.download.max_retries = 2;
    o.state_dir = dir_ / "state";
    o.model = "sag-1000";
    o.trust.root_ca = g_images->Root();
    o.checkpoint_bytes = 4 * kFrame;
    o.os_release = dir_ / "os-release";
    o.delta.full_fallback = full_fallback_;
    o.delta.parallel = parallel_;
    Platform p{
        &boot_, {{Slot::kA, slot_a_.get()}, {Slot::kB, slot_b_.get()}}, &rebooter_, &system_};
    return std::make_unique<DeviceInstaller>(
        std::move(o), p, [this](const JobRecord& r, const Progress& pr) {
          if (r.state != JobState::kWriting) return;
          last_progress_ = pr;
          // The first report after the delta plan (planned bytes known).
          if (on_first_writing_report_ && r.delta && r.delta->planned_bytes > 0) {
            auto hook = std::move(on_first_writing_report_);
            on_first_writing_report_ = nullptr;
            hook();
          }
          if (stop_after_reports_ > 0 && ++reports_ == stop_after_reports_ && current_ != nullptr) {
            current_->Cancel();
          }
        });
  }

  std::string SlotContent(const char* name, std::size_t n) {
    std::ifstream in(dir_ / name, std::ios::binary);
    std::string s(n, '\0');
    in.read(s.data(), static_cast<std::streamsize>(n));
    return s;
  }

  // Power cycle into whatever the bootloader picks, and let the agent finish
  // the job it finds (health checks: none, so a trial boot commits).
  Expected<std::optional<JobRecord>> RebootAndResume() {
    ++system_.boot;
    boot_.Boot();
    return MakeInstaller()->Resume();
  }

  // Installs image `name` (v2's payload) from a server that ignores Range,
  // with the full fallback configured.
  void InstallsInFull(const std::string& name) {
    test::TestHttpServer server(g_images->Bytes(name), g_images->Tls());
    test::Faults faults;
    faults.ignore_range = true;
    server.SetFaults(faults);
    auto r = MakeInstaller()->Start(JobSpec{"d-full", server.Url("/v2.sagimg"), false, true});
    ASSERT_TRUE(r) << r.error().ToString();
    ASSERT_EQ(r->state, JobState::kRebooting) << (r->error ? r->error->ToString() : "");
    ASSERT_TRUE(r->delta);
    EXPECT_TRUE(r->delta->full_fallback);
    EXPECT_EQ(SlotContent("slot-b", g_images->payloads.v2.size()), g_images->payloads.v2);
  }

  test::TempDir dir_;
  platform::FakeBootControl boot_;
  std::unique_ptr<platform::SlotDevice> slot_a_;
  std::unique_ptr<platform::SlotDevice> slot_b_;
  FakeRebooter rebooter_;
  FakeSystem system_;
  bool full_fallback_ = false;
  std::size_t parallel_ = 3;  // the default of download.delta_parallel
  Progress last_progress_{JobState::kPending};
  int stop_after_reports_ = 0;
  int reports_ = 0;
  DeviceInstaller* current_ = nullptr;
  std::function<void()> on_first_writing_report_;
};

// Every request after the header's is one closed range.
void ExpectOnlyClosedRanges(const test::TestHttpServer& server) {
  const auto ranges = server.ranges();
  ASSERT_GE(ranges.size(), 2U);
  EXPECT_EQ(ranges[0], "") << "the header is read from the start";
  for (std::size_t i = 1; i < ranges.size(); ++i) {
    const auto& r = ranges[i];
    EXPECT_TRUE(r.starts_with("bytes=") && r.back() != '-') << "request " << i << ": " << r;
  }
}

TEST_F(DeltaInstallTest, FetchesOnlyTheFramesNotFoundLocally) {
  test::TestHttpServer server(g_images->Bytes("v2"), g_images->Tls());
  auto inst = MakeInstaller();
  auto r = inst->Start(JobSpec{"d1", server.Url("/v2.sagimg"), false, true});
  ASSERT_TRUE(r) << r.error().ToString();
  ASSERT_EQ(r->state, JobState::kRebooting) << (r->error ? r->error->ToString() : "");
  EXPECT_EQ(SlotContent("slot-b", g_images->payloads.v2.size()), g_images->payloads.v2);
  ASSERT_TRUE(r->delta);
  const auto full = FullBytes("v2");
  // 7 frames of 65 hold a new block (3 inserted, 2 changed, the partial
  // tail, the one before the removed block's gap): index + those frames.
  EXPECT_GT(r->delta->fetched_bytes, 0U);
  EXPECT_LT(r->delta->fetched_bytes, full / 5) << "of " << full;
  EXPECT_EQ(r->delta->fetched_bytes, r->delta->planned_bytes);
  EXPECT_GT(r->delta->frames_local, 50U);
  EXPECT_EQ(r->delta->frames_rejected, 0U);
  EXPECT_FALSE(r->delta->full_fallback);
  ExpectOnlyClosedRanges(server);
  EXPECT_EQ(server.ranges().size(), 1 + r->delta->requests);
  // Progress counts bytes to download, not the image.
  EXPECT_EQ(last_progress_.total, r->delta->planned_bytes);
  EXPECT_EQ(last_progress_.done, r->delta->planned_bytes);
  // The index of what slot B holds now is kept for the next delta.
  EXPECT_TRUE(fs::exists(dir_ / "state" / "slot-B.blockhashes"));
}

// After the first delta commits, slot B runs v2 with its index kept beside
// it. Bits flipped in B since (bit rot, a writable root) are not in the
// index: the frames holding them fail their signed SHA-256 when assembled
// and are fetched instead, and slot A still ends up with exactly v3.
TEST_F(DeltaInstallTest, BitRotInTheActiveSlotIsFetchedInstead) {
  test::TestHttpServer server2(g_images->Bytes("v2"), g_images->Tls());
  ASSERT_EQ(MakeInstaller()->Start(JobSpec{"d1", server2.Url("/v2.sagimg"), false, true})->state,
            JobState::kRebooting);
  auto committed = RebootAndResume();
  ASSERT_TRUE(committed && *committed) << (committed ? "" : committed.error().ToString());
  ASSERT_EQ((*committed)->state, JobState::kCommitted);
  ASSERT_EQ(*boot_.BootedSlot(), Slot::kB);

  {
    std::fstream b(dir_ / "slot-b", std::ios::binary | std::ios::in | std::ios::out);
    for (const std::uint64_t at : {5 * kBlock + 100, 77 * kBlock + 1, 180 * kBlock + 4000}) {
      b.seekp(static_cast<std::streamoff>(at));
      b.put('\x5a');
    }
  }
  test::TestHttpServer server3(g_images->Bytes("v3"), g_images->Tls());
  auto r = MakeInstaller()->Start(JobSpec{"d2", server3.Url("/v3.sagimg"), false, true});
  ASSERT_TRUE(r) << r.error().ToString();
  ASSERT_EQ(r->state, JobState::kRebooting) << (r->error ? r->error->ToString() : "");
  ASSERT_EQ(r->target_slot, "A");
  EXPECT_EQ(SlotContent("slot-a", g_images->payloads.v3.size()), g_images->payloads.v3);
  ASSERT_TRUE(r->delta);
  EXPECT_EQ(r->delta->frames_rejected, 3U);
  EXPECT_LT(r->delta->fetched_bytes, FullBytes("v3") / 4);
}

// The target slot is a source and the destination: a block that only the
// target holds, at an offset the writer passes before the frame that needs
// it is assembled, is not used (it would read new data by then); that frame
// is planned as a download, not assembled and rejected at write time.
TEST_F(DeltaInstallTest, TargetBlocksOverwrittenBeforeUseAreNotUsed) {
  {
    // v2's block 60 is new (not in slot A); put it at block 0 of slot B,
    // which the first frame overwrites.
    std::fstream b(dir_ / "slot-b", std::ios::binary | std::ios::in | std::ios::out);
    b.write(g_images->payloads.v2.data() + 60 * kBlock, kBlock);
  }
  test::TestHttpServer server(g_images->Bytes("v2"), g_images->Tls());
  auto r = MakeInstaller()->Start(JobSpec{"d-t", server.Url("/v2.sagimg"), false, true});
  ASSERT_TRUE(r) << r.error().ToString();
  ASSERT_EQ(r->state, JobState::kRebooting) << (r->error ? r->error->ToString() : "");
  EXPECT_EQ(SlotContent("slot-b", g_images->payloads.v2.size()), g_images->payloads.v2);
  ASSERT_TRUE(r->delta);
  EXPECT_EQ(r->delta->frames_rejected, 0U) << "a frame was assembled from overwritten blocks";
  EXPECT_EQ(r->delta->fetched_bytes, r->delta->planned_bytes);
}

TEST_F(DeltaInstallTest, ServerWithoutRangeFailsClearlyByDefault) {
  test::TestHttpServer server(g_images->Bytes("v2"), g_images->Tls());
  test::Faults faults;
  faults.ignore_range = true;
  server.SetFaults(faults);
  auto r = MakeInstaller()->Start(JobSpec{"d-norange", server.Url("/v2.sagimg"), false, true});
  ASSERT_TRUE(r) << r.error().ToString();
  EXPECT_EQ(r->state, JobState::kFailed);
  ASSERT_TRUE(r->error);
  EXPECT_EQ(r->error->code(), Errc::kNetRangeUnsupported) << r->error->ToString();
  EXPECT_NE(r->error->message().find("delta_fallback: full"), std::string::npos)
      << r->error->message();
  EXPECT_EQ(rebooter_.requests, 0);
  EXPECT_EQ(*boot_.BootedSlot(), Slot::kA);
}

TEST_F(DeltaInstallTest, ServerWithoutRangeInstallsInFullWhenConfigured) {
  full_fallback_ = true;
  InstallsInFull("v2");
}

TEST_F(DeltaInstallTest, ServerWithoutRangeInstallsFormat3InFullWhenConfigured) {
  full_fallback_ = true;
  InstallsInFull("v2-f3");
}

// Format 3 (compact frame table, 5-byte index hashes): a delta from a slot
// whose kept index came from a format 2 image (8-byte hashes) finds its
// blocks without reading it, checks each frame by its content hash alone,
// and keeps a 5-byte index beside the new slot.
TEST_F(DeltaInstallTest, Format3DeltaUsesAKeptFormat2Index) {
  test::TestHttpServer server2(g_images->Bytes("v2"), g_images->Tls());
  ASSERT_EQ(MakeInstaller()->Start(JobSpec{"d1", server2.Url("/v2.sagimg"), false, true})->state,
            JobState::kRebooting);
  auto committed = RebootAndResume();
  ASSERT_TRUE(committed && *committed) << (committed ? "" : committed.error().ToString());
  ASSERT_EQ((*committed)->state, JobState::kCommitted);
  test::TestHttpServer server3(g_images->Bytes("v3-f3"), g_images->Tls());
  auto r = MakeInstaller()->Start(JobSpec{"d3", server3.Url("/v3.sagimg"), false, true});
  ASSERT_TRUE(r) << r.error().ToString();
  ASSERT_EQ(r->state, JobState::kRebooting) << (r->error ? r->error->ToString() : "");
  EXPECT_EQ(SlotContent("slot-a", g_images->payloads.v3.size()), g_images->payloads.v3);
  ASSERT_TRUE(r->delta);
  EXPECT_EQ(r->delta->frames_rejected, 0U);
  // v3 = v2 with 2 blocks changed: the index and 2 frames.
  EXPECT_EQ(r->delta->frames_download, 2U);
  EXPECT_LT(r->delta->fetched_bytes, FullBytes("v3-f3") / 10);
  ExpectOnlyClosedRanges(server3);
  const auto kept = ReadFile(dir_ / "state" / "slot-A.blockhashes", 1U << 20U);
  ASSERT_TRUE(kept);
  EXPECT_EQ(kept->substr(0, 8), "SAGBIX5\n") << "a 5-byte index";
}

// Format 3 signs no per-frame compressed hash: a frame altered on the server
// is decompressed into its bounded buffer and refused by its content hash;
// nothing of it reaches the slot as verified.
TEST_F(DeltaInstallTest, Format3FrameAlteredOnTheServerIsRefused) {
  auto bytes = g_images->Bytes("v2-f3");
  auto src = image::FileSource::Open(g_images->Path("v2-f3"));
  ASSERT_TRUE(src);
  const auto h = image::ReadUnverifiedHeader(**src);
  ASSERT_TRUE(h);
  const auto m = image::ParseManifest(h->manifest_json);
  ASSERT_TRUE(m);
  const auto& c = m->chunks[2];  // holds the blocks inserted at 10: fetched
  const std::size_t at = h->payload_offset + c.offset + c.length / 2;
  bytes[at] = static_cast<char>(bytes[at] ^ 0x10);
  test::TestHttpServer server(bytes, g_images->Tls());
  auto r = MakeInstaller()->Start(JobSpec{"d-bad", server.Url("/v2.sagimg"), false, true});
  const auto code = r ? (r->error ? r->error->code() : Errc::kOk) : r.error().code();
  EXPECT_TRUE(code == Errc::kChunkHashMismatch || code == Errc::kDecompress)
      << (r ? (r->error ? r->error->ToString() : "no error") : r.error().ToString());
  if (r) {
    EXPECT_NE(r->state, JobState::kRebooting);
  }
}

// Format 4: frames of one block are fetched, groups of 4 verified. Only the
// frames holding a new block are fetched (fewer bytes than format 3's 16 KiB
// frames), the dictionary once; the slot ends up exact.
TEST_F(DeltaInstallTest, Format4FetchesFramesAndVerifiesGroups) {
  test::TestHttpServer server(g_images->Bytes("v2-f4"), g_images->Tls());
  auto r = MakeInstaller()->Start(JobSpec{"d4", server.Url("/v2.sagimg"), false, true});
  ASSERT_TRUE(r) << r.error().ToString();
  ASSERT_EQ(r->state, JobState::kRebooting) << (r->error ? r->error->ToString() : "");
  EXPECT_EQ(SlotContent("slot-b", g_images->payloads.v2.size()), g_images->payloads.v2);
  ASSERT_TRUE(r->delta);
  EXPECT_EQ(r->delta->fetched_bytes, r->delta->planned_bytes);
  EXPECT_EQ(r->delta->frames_rejected, 0U);
  EXPECT_GT(r->delta->frames_local, 200U) << "frames of one block";
  EXPECT_LT(r->delta->frames_download, 20U);
  ExpectOnlyClosedRanges(server);
  EXPECT_EQ(server.ranges().size(), 1 + r->delta->requests);
  // Index + dictionary (8 KiB here) + the frames of one block that hold a
  // new block (format 3 fetches 16 KiB frames for them).
  EXPECT_LT(r->delta->fetched_bytes, FullBytes("v2-f4") / 5);
  const auto kept = ReadFile(dir_ / "state" / "slot-B.blockhashes", 1U << 20U);
  ASSERT_TRUE(kept);
  EXPECT_EQ(kept->substr(0, 8), "SAGBIX5\n");
}

// Bit rot in the running slot after its index was kept: each group holding a
// flipped byte fails its signed SHA-256 when assembled and is fetched whole;
// the slot is still exact.
TEST_F(DeltaInstallTest, Format4BitRotInTheActiveSlotIsFetchedInstead) {
  test::TestHttpServer server2(g_images->Bytes("v2-f4"), g_images->Tls());
  ASSERT_EQ(MakeInstaller()->Start(JobSpec{"d1", server2.Url("/v2.sagimg"), false, true})->state,
            JobState::kRebooting);
  auto committed = RebootAndResume();
  ASSERT_TRUE(committed && *committed) << (committed ? "" : committed.error().ToString());
  ASSERT_EQ((*committed)->state, JobState::kCommitted);
  ASSERT_EQ(*boot_.BootedSlot(), Slot::kB);
  {
    std::fstream b(dir_ / "slot-b", std::ios::binary | std::ios::in | std::ios::out);
    for (const std::uint64_t at : {5 * kBlock + 100, 77 * kBlock + 1, 180 * kBlock + 4000}) {
      b.seekp(static_cast<std::streamoff>(at));
      b.put('\x5a');
    }
  }
  test::TestHttpServer server3(g_images->Bytes("v3-f4"), g_images->Tls());
  auto r = MakeInstaller()->Start(JobSpec{"d2", server3.Url("/v3.sagimg"), false, true});
  ASSERT_TRUE(r) << r.error().ToString();
  ASSERT_EQ(r->state, JobState::kRebooting) << (r->error ? r->error->ToString() : "");
  ASSERT_EQ(r->target_slot, "A");
  EXPECT_EQ(SlotContent("slot-a", g_images->payloads.v3.size()), g_images->payloads.v3);
  ASSERT_TRUE(r->delta);
  EXPECT_EQ(r->delta->frames_rejected, 3U);
  EXPECT_LT(r->delta->fetched_bytes, FullBytes("v3-f4") / 4);
}

// A local block that changes between the plan and the write (a byte of the
// running slot flipped right after the plan read it): its group fails its
// signed SHA-256 when assembled, is fetched whole instead, and the install
// stays exact.
TEST_F(DeltaInstallTest, Format4GroupThatFailsAtWriteTimeIsFetchedWhole) {
  test::TestHttpServer server(g_images->Bytes("v2-f4"), g_images->Tls());
  // v1's block 150 is v2's block 153: group 38, assembled from slot A.
  on_first_writing_report_ = [this] {
    std::fstream a(dir_ / "slot-a", std::ios::binary | std::ios::in | std::ios::out);
    a.seekp(static_cast<std::streamoff>(150 * kBlock + 7));
    a.put('\x5a');
  };
  auto r = MakeInstaller()->Start(JobSpec{"d-late", server.Url("/v2.sagimg"), false, true});
  ASSERT_TRUE(r) << r.error().ToString();
  ASSERT_EQ(r->state, JobState::kRebooting) << (r->error ? r->error->ToString() : "");
  EXPECT_EQ(SlotContent("slot-b", g_images->payloads.v2.size()), g_images->payloads.v2);
  ASSERT_TRUE(r->delta);
  EXPECT_EQ(r->delta->frames_rejected, 1U);
}

TEST_F(DeltaInstallTest, Format4ServerWithoutRangeFailsClearlyByDefault) {
  test::TestHttpServer server(g_images->Bytes("v2-f4"), g_images->Tls());
  test::Faults faults;
  faults.ignore_range = true;
  server.SetFaults(faults);
  auto r = MakeInstaller()->Start(JobSpec{"d-norange", server.Url("/v2.sagimg"), false, true});
  ASSERT_TRUE(r) << r.error().ToString();
  EXPECT_EQ(r->state, JobState::kFailed);
  ASSERT_TRUE(r->error);
  EXPECT_EQ(r->error->code(), Errc::kNetRangeUnsupported) << r->error->ToString();
  EXPECT_EQ(*boot_.BootedSlot(), Slot::kA);
}

// A server that answers ranges with 200: the full install (StepWrite's
// pipeline) of a format 4 image, groups checked before they are written.
TEST_F(DeltaInstallTest, ServerWithoutRangeInstallsFormat4InFullWhenConfigured) {
  full_fallback_ = true;
  InstallsInFull("v2-f4");
}

// The image's dictionary altered on the server: refused by its signed
// SHA-256 before zstd sees it; nothing is written as verified.
TEST_F(DeltaInstallTest, Format4DictionaryAlteredOnTheServerIsRefused) {
  auto bytes = g_images->Bytes("v2-f4");
  auto src = image::FileSource::Open(g_images->Path("v2-f4"));
  ASSERT_TRUE(src);
  const auto h = image::ReadUnverifiedHeader(**src);
  ASSERT_TRUE(h);
  const auto m = image::ParseManifest(h->manifest_json);
  ASSERT_TRUE(m && m->dict);
  const std::size_t at = h->payload_offset + m->dict->offset + m->dict->length / 2;
  bytes[at] = static_cast<char>(bytes[at] ^ 0x10);
  test::TestHttpServer server(bytes, g_images->Tls());
  auto r = MakeInstaller()->Start(JobSpec{"d-dict", server.Url("/v2.sagimg"), false, true});
  ASSERT_TRUE(r) << r.error().ToString();
  EXPECT_EQ(r->state, JobState::kFailed);
  ASSERT_TRUE(r->error);
  EXPECT_EQ(r->error->code(), Errc::kChunkHashMismatch) << r->error->ToString();
  EXPECT_NE(r->error->message().find("dictionary"), std::string::npos) << r->error->message();
}

// A fetched frame altered on the server: its group fails, is fetched whole,
// fails again and the job fails; the group never reaches the slot.
TEST_F(DeltaInstallTest, Format4FrameAlteredOnTheServerIsRefused) {
  auto bytes = g_images->Bytes("v2-f4");
  auto src = image::FileSource::Open(g_images->Path("v2-f4"));
  ASSERT_TRUE(src);
  const auto h = image::ReadUnverifiedHeader(**src);
  ASSERT_TRUE(h);
  const auto m = image::ParseManifest(h->manifest_json);
  ASSERT_TRUE(m);
  // Frame 11 holds a block inserted at 10..12: fetched. Its group is 2.
  const auto f = image::FrameAt(*m, 11);
  const std::size_t at = h->payload_offset + f.offset + f.length / 2;
  bytes[at] = static_cast<char>(bytes[at] ^ 0x10);
  test::TestHttpServer server(bytes, g_images->Tls());
  auto r = MakeInstaller()->Start(JobSpec{"d-bad4", server.Url("/v2.sagimg"), false, true});
  const auto code = r ? (r->error ? r->error->code() : Errc::kOk) : r.error().code();
  EXPECT_TRUE(code == Errc::kChunkHashMismatch || code == Errc::kDecompress)
      << (r ? (r->error ? r->error->ToString() : "no error") : r.error().ToString());
  ASSERT_TRUE(r);
  EXPECT_NE(r->state, JobState::kRebooting);
  // Groups before the altered one were written and checkpointed at most;
  // nothing at or after group 2 counts as written.
  EXPECT_LE(r->next_chunk, 2U);
}

// A format 4 delta stopped mid-write resumes at its last checkpoint (a group
// boundary) with a new plan of the remaining frames.
TEST_F(DeltaInstallTest, Format4StoppedDeltaResumesFromItsCheckpoint) {
  test::TestHttpServer server(g_images->Bytes("v2-f4"), g_images->Tls());
  auto inst = MakeInstaller();
  current_ = inst.get();
  stop_after_reports_ = 40;  // of 65 groups
  auto r = inst->Start(JobSpec{"d-stop4", server.Url("/v2.sagimg"), false, true});
  current_ = nullptr;
  ASSERT_TRUE(r) << r.error().ToString();
  ASSERT_EQ(r->state, JobState::kWriting);
  ASSERT_GT(r->next_chunk, 0U);
  ASSERT_LT(r->next_chunk, r->chunks_total);
  const auto resumed_at = r->next_chunk;
  auto done = MakeInstaller()->Resume();
  ASSERT_TRUE(done && *done) << (done ? "" : done.error().ToString());
  EXPECT_EQ((*done)->state, JobState::kRebooting)
      << ((*done)->error ? (*done)->error->ToString() : "");
  EXPECT_EQ(SlotContent("slot-b", g_images->payloads.v2.size()), g_images->payloads.v2);
  ASSERT_TRUE((*done)->delta);
  // v2 is 259 blocks: 259 frames of one block in 65 groups of 4.
  EXPECT_EQ((*done)->delta->frames_local + (*done)->delta->frames_download, 259 - 4 * resumed_at)
      << "frames from the checkpoint's group on";
  ExpectOnlyClosedRanges(server);
}

// The full install of a format 4 image from a file (no delta), stopped and
// resumed: the resumed reader reads the dictionary alone, checks it and
// reads on from the checkpoint's group.
TEST_F(DeltaInstallTest, Format4FullInstallFromAFileResumes) {
  auto inst = MakeInstaller();
  current_ = inst.get();
  stop_after_reports_ = 30;
  auto r = inst->Start(JobSpec{"f4-file", g_images->Path("v2-f4").string(), false, true});
  current_ = nullptr;
  ASSERT_TRUE(r) << r.error().ToString();
  EXPECT_FALSE(r->delta);
  if (r->state == JobState::kWriting) {
    EXPECT_GT(r->next_chunk, 0U);
    auto done = MakeInstaller()->Resume();
    ASSERT_TRUE(done && *done) << (done ? "" : done.error().ToString());
    EXPECT_EQ((*done)->state, JobState::kRebooting)
        << ((*done)->error ? (*done)->error->ToString() : "");
  } else {
    ADD_FAILURE() << "the job was not stopped mid-write: " << JobStateName(r->state);
  }
  EXPECT_EQ(SlotContent("slot-b", g_images->payloads.v2.size()), g_images->payloads.v2);
}

// The full fallback from a server without Range, stopped mid-write and
// resumed: the resumed full install reads the dictionary from a stream (the
// server answers its range with 200) and goes on from its checkpoint.
TEST_F(DeltaInstallTest, Format4FullFallbackResumesFromAServerWithoutRange) {
  full_fallback_ = true;
  test::TestHttpServer server(g_images->Bytes("v2-f4"), g_images->Tls());
  test::Faults faults;
  faults.ignore_range = true;
  server.SetFaults(faults);
  auto inst = MakeInstaller();
  current_ = inst.get();
  stop_after_reports_ = 30;
  auto r = inst->Start(JobSpec{"f4-norange", server.Url("/v2.sagimg"), false, true});
  current_ = nullptr;
  ASSERT_TRUE(r) << r.error().ToString();
  ASSERT_EQ(r->state, JobState::kWriting) << (r->error ? r->error->ToString() : "");
  ASSERT_GT(r->next_chunk, 0U);
  auto done = MakeInstaller()->Resume();
  ASSERT_TRUE(done && *done) << (done ? "" : done.error().ToString());
  EXPECT_EQ((*done)->state, JobState::kRebooting)
      << ((*done)->error ? (*done)->error->ToString() : "");
  EXPECT_EQ(SlotContent("slot-b", g_images->payloads.v2.size()), g_images->payloads.v2);
}

TEST_F(DeltaInstallTest, OldFormatImageInstallsInFullAsBefore) {
  test::TestHttpServer server(g_images->Bytes("v2-format1"), g_images->Tls());
  auto r = MakeInstaller()->Start(JobSpec{"f1", server.Url("/v2.sagimg"), false, true});
  ASSERT_TRUE(r) << r.error().ToString();
  ASSERT_EQ(r->state, JobState::kRebooting) << (r->error ? r->error->ToString() : "");
  EXPECT_FALSE(r->delta);
  EXPECT_EQ(SlotContent("slot-b", g_images->payloads.v2.size()), g_images->payloads.v2);
  EXPECT_EQ(server.ranges(), std::vector<std::string>{""}) << "one plain GET";
  EXPECT_FALSE(fs::exists(dir_ / "state" / "slot-B.blockhashes"));
}

// A delta stopped mid-write (as SIGTERM does) resumes at its last checkpoint:
// the plan is made again and only frames from the checkpoint on are written;
// what the first run wrote into the target is itself a source.
TEST_F(DeltaInstallTest, StoppedDeltaResumesFromItsCheckpoint) {
  test::TestHttpServer server(g_images->Bytes("v2"), g_images->Tls());
  auto inst = MakeInstaller();
  current_ = inst.get();
  stop_after_reports_ = 40;  // of 65 frames
  auto r = inst->Start(JobSpec{"d-stop", server.Url("/v2.sagimg"), false, true});
  current_ = nullptr;
  ASSERT_TRUE(r) << r.error().ToString();
  ASSERT_EQ(r->state, JobState::kWriting);
  ASSERT_GT(r->next_chunk, 0U);
  ASSERT_LT(r->next_chunk, r->chunks_total);
  const auto resumed_at = r->next_chunk;
  auto done = MakeInstaller()->Resume();
  ASSERT_TRUE(done && *done) << (done ? "" : done.error().ToString());
  EXPECT_EQ((*done)->state, JobState::kRebooting)
      << ((*done)->error ? (*done)->error->ToString() : "");
  EXPECT_EQ(SlotContent("slot-b", g_images->payloads.v2.size()), g_images->payloads.v2);
  ASSERT_TRUE((*done)->delta);
  // The second plan counts only the frames from the checkpoint on.
  EXPECT_EQ((*done)->delta->frames_local + (*done)->delta->frames_download,
            (*done)->chunks_total - resumed_at);
  ExpectOnlyClosedRanges(server);
}

// Requests in flight (download.delta_parallel): K = 3 writes the same slot
// as K = 1, with requests overlapping in time at the server (each answer
// waits 30 ms, as on a link with latency); K = 1 never has two open.
class DeltaInFlightTest : public DeltaInstallTest {
 protected:
  void InstallsWith(const std::string& name, std::size_t parallel) {
    parallel_ = parallel;
    test::TestHttpServer server(g_images->Bytes(name), g_images->Tls());
    on_first_writing_report_ = [&] {
      test::Faults f;
      f.respond_after = std::chrono::milliseconds(30);
      server.SetFaults(f);
    };
    auto r = MakeInstaller()->Start(JobSpec{"d-k", server.Url("/v2.sagimg"), false, true});
    ASSERT_TRUE(r) << r.error().ToString();
    ASSERT_EQ(r->state, JobState::kRebooting) << (r->error ? r->error->ToString() : "");
    EXPECT_EQ(SlotContent("slot-b", g_images->payloads.v2.size()), g_images->payloads.v2);
    ASSERT_TRUE(r->delta);
    ASSERT_GE(r->delta->requests, 3U) << "too few requests to overlap";
    EXPECT_EQ(r->delta->fetched_bytes, r->delta->planned_bytes);
    EXPECT_EQ(server.ranges().size(), 1 + r->delta->requests);
    ExpectOnlyClosedRanges(server);
    if (parallel == 1) {
      EXPECT_EQ(server.max_concurrent(), 1);
    } else {
      EXPECT_GT(server.max_concurrent(), 1);
      EXPECT_LE(server.max_concurrent(), static_cast<int>(parallel) + 1);  // + the dictionary
    }
  }

  // Stops the job 300 ms into the write while every request waits 10 s for
  // its answer: Start returns promptly (the workers see the stop), and the
  // job resumes to the right bytes.
  void StopsPromptlyWhileRequestsWait(const std::string& name) {
    test::TestHttpServer server(g_images->Bytes(name), g_images->Tls());
    auto inst = MakeInstaller();
    std::thread stopper;
    std::chrono::steady_clock::time_point stopped_at;
    on_first_writing_report_ = [&] {
      test::Faults f;
      f.respond_after = std::chrono::milliseconds(10000);
      server.SetFaults(f);
      stopper = std::thread([&] {
        std::this_thread::sleep_for(std::chrono::milliseconds(300));
        stopped_at = std::chrono::steady_clock::now();
        inst->Cancel();
      });
    };
    auto r = inst->Start(JobSpec{"d-s", server.Url("/v2.sagimg"), false, true});
    const auto returned_at = std::chrono::steady_clock::now();
    ASSERT_TRUE(stopper.joinable());
    stopper.join();
    ASSERT_TRUE(r) << r.error().ToString();
    EXPECT_EQ(r->state, JobState::kWriting) << (r->error ? r->error->ToString() : "");
    // Well before the answers (10 s): a loaded machine still passes, a stop
    // that waits for the requests in flight does not.
    EXPECT_LT(returned_at - stopped_at, std::chrono::milliseconds(5000))
        << "the stop waited for the requests in flight";
    server.SetFaults({});
    auto done = MakeInstaller()->Resume();
    ASSERT_TRUE(done && *done) << (done ? "" : done.error().ToString());
    EXPECT_EQ((*done)->state, JobState::kRebooting)
        << ((*done)->error ? (*done)->error->ToString() : "");
    EXPECT_EQ(SlotContent("slot-b", g_images->payloads.v2.size()), g_images->payloads.v2);
  }

  // One request in the middle answered 500 twice, then served (retried by
  // its worker): the install completes with the right bytes.
  void SurvivesA500InTheMiddle(const std::string& name) {
    test::TestHttpServer server(g_images->Bytes(name), g_images->Tls());
    on_first_writing_report_ = [&] {
      test::Faults f;
      f.fail_status = 500;
      f.fail_skip = 2;
      f.fail_times = 2;
      f.respond_after = std::chrono::milliseconds(20);
      server.SetFaults(f);
    };
    auto r = MakeInstaller()->Start(JobSpec{"d-5", server.Url("/v2.sagimg"), false, true});
    ASSERT_TRUE(r) << r.error().ToString();
    ASSERT_EQ(r->state, JobState::kRebooting) << (r->error ? r->error->ToString() : "");
    EXPECT_EQ(SlotContent("slot-b", g_images->payloads.v2.size()), g_images->payloads.v2);
    ASSERT_TRUE(r->delta);
    EXPECT_EQ(server.ranges().size(), 1 + r->delta->requests + 2) << "two answers were 500s";
  }
};

TEST_F(DeltaInFlightTest, OneRequestAtATime) { InstallsWith("v2", 1); }
TEST_F(DeltaInFlightTest, ThreeRequestsInFlightWriteTheSameSlot) { InstallsWith("v2", 3); }
TEST_F(DeltaInFlightTest, Format4OneRequestAtATime) { InstallsWith("v2-f4", 1); }
TEST_F(DeltaInFlightTest, Format4ThreeRequestsInFlightWriteTheSameSlot) {
  InstallsWith("v2-f4", 3);
}
TEST_F(DeltaInFlightTest, StopWhileRequestsWaitReturnsPromptly) {
  StopsPromptlyWhileRequestsWait("v2");
}
TEST_F(DeltaInFlightTest, Format4StopWhileRequestsWaitReturnsPromptly) {
  StopsPromptlyWhileRequestsWait("v2-f4");
}
TEST_F(DeltaInFlightTest, A500InTheMiddleIsRetried) { SurvivesA500InTheMiddle("v2"); }
TEST_F(DeltaInFlightTest, Format4A500InTheMiddleIsRetried) { SurvivesA500InTheMiddle("v2-f4"); }

}  // namespace
}  // namespace sag::firmware
