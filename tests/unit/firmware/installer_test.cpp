// DeviceInstaller against the platform fakes: a FakeBootControl that runs the
// bootloader's algorithm on Boot(), file-backed slots, and signed images made
// with the development PKI.
#include "firmware/installer.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <fstream>
#include <functional>
#include <mutex>
#include <random>
#include <thread>

#include "common/atomic_file.h"
#include "common/image/image_writer.h"
#include "common/image/pki.h"
#include "common/job_cancel.h"
#include "common/net/probe.h"
#include "platform/fake_boot_control.h"
#include "platform/file_slot_device.h"
#include "tests/support/powerloss_mount.h"
#include "tests/support/temp_dir.h"
#include "tests/support/test_http_server.h"

namespace sag::firmware {
namespace {

namespace fs = std::filesystem;
using platform::Slot;

constexpr std::uint64_t kSlotSize = 4U << 20U;
constexpr std::uint64_t kChunk = 64U << 10U;

class FakeSystem final : public platform::SystemInfo {
 public:
  Expected<std::string> SerialNumber() override { return std::string("sag-test-1"); }
  Expected<std::string> HardwareModel() override { return std::string("sag-1000"); }
  Expected<std::string> BootId() override { return "boot-" + std::to_string(boot); }
  Expected<std::uint64_t> FreeSpace(const fs::path& /*dir*/) override { return free; }
  int boot = 1;
  std::uint64_t free = 1U << 30U;
};

// A slot that passes everything to another: the faulty slots below change
// only what they fault.
class ForwardingSlot : public platform::SlotDevice {
 public:
  explicit ForwardingSlot(platform::SlotDevice& inner) : inner_(inner) {}
  [[nodiscard]] const fs::path& path() const override { return inner_.path(); }
  Expected<std::uint64_t> Size() override { return inner_.Size(); }
  Expected<std::unique_ptr<platform::SlotWriter>> OpenWriter() override {
    return inner_.OpenWriter();
  }
  Expected<std::size_t> ReadAt(std::uint64_t offset, std::span<std::uint8_t> buf) override {
    return inner_.ReadAt(offset, buf);
  }

 protected:
  platform::SlotDevice& inner_;
};

// A slot whose storage returns one wrong bit in one place: what a failing
// flash chip or a wrong offset in the write path looks like to the read-back.
class BitRotSlot final : public ForwardingSlot {
 public:
  BitRotSlot(platform::SlotDevice& inner, std::uint64_t at) : ForwardingSlot(inner), at_(at) {}
  Expected<std::size_t> ReadAt(std::uint64_t offset, std::span<std::uint8_t> buf) override {
    SAG_TRY(const std::size_t n, inner_.ReadAt(offset, buf));
    if (at_ >= offset && at_ < offset + n) buf[at_ - offset] ^= 0x10U;
    return n;
  }

 private:
  std::uint64_t at_;
};

// Counts the slot's reads: from the page cache (ReadAt) and from the medium
// (ReadMediumAt), in bytes.
class CountingSlot final : public ForwardingSlot {
 public:
  explicit CountingSlot(platform::SlotDevice& inner) : ForwardingSlot(inner) {}
  Expected<std::size_t> ReadAt(std::uint64_t offset, std::span<std::uint8_t> buf) override {
    SAG_TRY(const std::size_t n, inner_.ReadAt(offset, buf));
    cache_bytes += n;
    return n;
  }
  Expected<std::size_t> ReadMediumAt(std::uint64_t offset, std::span<std::uint8_t> buf) override {
    SAG_TRY(const std::size_t n, inner_.ReadMediumAt(offset, buf));
    medium_bytes += n;
    return n;
  }
  std::atomic<std::uint64_t> cache_bytes{0};
  std::atomic<std::uint64_t> medium_bytes{0};
};

// A slot whose writes take 5 ms before they read the caller's data: a
// writer still busy with a chunk while the reader goes on decoding.
class SlowWriteSlot final : public ForwardingSlot {
 public:
  explicit SlowWriteSlot(platform::SlotDevice& inner) : ForwardingSlot(inner) {}
  Expected<std::unique_ptr<platform::SlotWriter>> OpenWriter() override {
    SAG_TRY(auto w, inner_.OpenWriter());
    return std::unique_ptr<platform::SlotWriter>(std::make_unique<Writer>(std::move(w)));
  }

 private:
  class Writer final : public platform::SlotWriter {
   public:
    explicit Writer(std::unique_ptr<platform::SlotWriter> inner) : inner_(std::move(inner)) {}
    Status WriteAt(std::uint64_t offset, std::span<const std::uint8_t> data) override {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
      return inner_->WriteAt(offset, data);
    }
    Status Sync() override { return inner_->Sync(); }

   private:
    std::unique_ptr<platform::SlotWriter> inner_;
  };
};

// A slot whose first flush takes until the writer has written `end` bytes
// (10 s at most): a disk busy with a large backlog. Says whether the writer
// got there while the flush was held.
class SlowFlushSlot final : public ForwardingSlot {
 public:
  SlowFlushSlot(platform::SlotDevice& inner, std::uint64_t end)
      : ForwardingSlot(inner), end_(end) {}
  Expected<std::unique_ptr<platform::SlotWriter>> OpenWriter() override {
    SAG_TRY(auto w, inner_.OpenWriter());
    return std::unique_ptr<platform::SlotWriter>(std::make_unique<Writer>(*this, std::move(w)));
  }
  bool writer_got_there = false;  // read after the job

 private:
  class Writer final : public platform::SlotWriter {
   public:
    Writer(SlowFlushSlot& slot, std::unique_ptr<platform::SlotWriter> inner)
        : slot_(slot), inner_(std::move(inner)) {}
    Status WriteAt(std::uint64_t offset, std::span<const std::uint8_t> data) override {
      SAG_TRY_STATUS(inner_->WriteAt(offset, data));
      {
        const std::lock_guard lock(slot_.mu_);
        slot_.written_ = std::max(slot_.written_, offset + data.size());
      }
      slot_.cv_.notify_all();
      return Ok();
    }
    Status Sync() override {
      {
        std::unique_lock lock(slot_.mu_);
        if (!slot_.held_) {
          slot_.held_ = true;
          slot_.writer_got_there = slot_.cv_.wait_for(lock, std::chrono::seconds(10),
                                                      [&] { return slot_.written_ >= slot_.end_; });
        }
      }
      return inner_->Sync();
    }

   private:
    SlowFlushSlot& slot_;
    std::unique_ptr<platform::SlotWriter> inner_;
  };

  std::uint64_t end_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::uint64_t written_ = 0;  // guarded by mu_
  bool held_ = false;          // guarded by mu_
};

// The fake bootloader with a hook run as SetTrial is entered, before it
// changes anything: a cancel arriving while the job crosses its point of no
// return.
class HookedBoot final : public platform::BootControl {
 public:
  explicit HookedBoot(platform::BootControl& inner) : inner_(inner) {}
  Expected<Slot> BootedSlot() override { return inner_.BootedSlot(); }
  Expected<platform::BootState> ReadState() override { return inner_.ReadState(); }
  Status SetTrial(Slot slot, int attempts) override {
    if (before_set_trial) before_set_trial();
    return inner_.SetTrial(slot, attempts);
  }
  Status MarkGood(Slot slot, int attempts) override { return inner_.MarkGood(slot, attempts); }
  Status MarkBad(Slot slot) override { return inner_.MarkBad(slot); }
  std::function<void()> before_set_trial;

 private:
  platform::BootControl& inner_;
};

class FakeRebooter final : public platform::Rebooter {
 public:
  Status Reboot() override {
    ++requests;
    return Ok();
  }
  int requests = 0;
};

std::string RandomBytes(std::size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::string s(n, '\0');
  for (auto& c : s) c = static_cast<char>(rng());
  return s;
}

// One PKI and a few images for the whole suite (signing is the slow part).
class Images {
 public:
  Images() {
    EXPECT_TRUE(image::pki::InitDevPki(dir_.path()));
    payload_101_ = RandomBytes(700'000, 101);
    payload_102_ = RandomBytes(300'000, 102);
    Make("1.0.1", payload_101_, image::ImageType::kDevice, {"sag-1000", "sag-100wm"}, "v101");
    Make("1.0.2", payload_102_, image::ImageType::kDevice, {"sag-1000"}, "v102");
    Make("0.9.0", payload_102_, image::ImageType::kDevice, {"sag-1000"}, "v090");
    Make("1.0.3", payload_102_, image::ImageType::kDevice, {"sag-100wm"}, "wrong-model");
    Make("20201117_1_0-0.0.1", payload_102_, image::ImageType::kDpi, {"sag-1000"}, "dpi");
    Make("1.1.0", RandomBytes(kSlotSize + 1, 7), image::ImageType::kDevice, {"sag-1000"}, "huge");
    // every chunk of it holds a compressed block
    for (int i = 0; text_.size() < 400'000; ++i) {
      text_ += "line " + std::to_string(i) + " of a compressible root file system\n";
    }
    Make("1.0.5", text_, image::ImageType::kDevice, {"sag-1000"}, "text");
    // v102 with another, intact tar header (mode 0755, checksum recomputed):
    // the same signed content in another file (ImageNonCanonical).
    std::string bytes = *ReadFile(Image("v102"));
    bytes.replace(100, 7, "000755 ");
    unsigned sum = 0;
    for (std::size_t i = 0; i < 512; ++i) {
      sum += (i >= 148 && i < 156) ? ' ' : static_cast<unsigned char>(bytes[i]);
    }
    char field[8];
    std::snprintf(field, sizeof field, "%06o", sum);
    bytes.replace(148, 6, field, 6);
    std::ofstream(Image("noncanon"), std::ios::binary) << bytes;
  }
  void Make(const std::string& version, const std::string& payload, image::ImageType type,
            std::vector<std::string> models, const std::string& name) {
    const auto p = dir_ / (name + ".bin");
    std::ofstream(p, std::ios::binary) << payload;
    image::CreateParams cp;
    cp.type = type;
    cp.version = version;
    cp.compatible = std::move(models);
    cp.payload = p;
    cp.key = dir_ / "signer.key";
    cp.cert = dir_ / "signer.pem";
    cp.chain = dir_ / "signer-chain.pem";
    cp.chunk_size = kChunk;
    cp.output = dir_ / (name + ".sagimg");
    auto st = image::CreateImage(cp);
    EXPECT_TRUE(st) << st.error().ToString();
  }
  [[nodiscard]] fs::path Image(const std::string& name) const { return dir_ / (name + ".sagimg"); }
  [[nodiscard]] fs::path Root() const { return dir_ / "root-ca.pem"; }
  [[nodiscard]] test::ServerTls Tls() const {
    return {dir_ / "server-chain.pem", dir_ / "server.key", {}};
  }
  const std::string& payload_101() const { return payload_101_; }
  const std::string& payload_102() const { return payload_102_; }
  const std::string& text() const { return text_; }

 private:
  test::TempDir dir_;
  std::string payload_101_;
  std::string payload_102_;
  std::string text_;
};

Images* g_images = nullptr;

class DeviceInstallerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { g_images = new Images(); }
  static void TearDownTestSuite() {
    delete g_images;
    g_images = nullptr;
  }

  void SetUp() override {
    for (const char* s : {"slot-a", "slot-b"}) {
      std::ofstream(dir_ / s, std::ios::binary) << std::string(kSlotSize, '\0');
    }
    ASSERT_TRUE(WriteFileAtomic(dir_ / "os-release", "NAME=SAG\nVERSION_ID=\"1.0.0\"\n"));
    fs::create_directories(dir_ / "state");
    slot_a_ = std::move(*platform::OpenSlotDevice("A", dir_ / "slot-a"));
    slot_b_ = std::move(*platform::OpenSlotDevice("B", dir_ / "slot-b"));
    boot_.Boot();  // power-on: A
  }

  std::unique_ptr<DeviceInstaller> MakeInstaller(std::vector<HealthCheckSpec> checks = {},
                                                 std::function<Status()> cloud_check = nullptr) {
    InstallerOptions o;
    o.cloud_check = std::move(cloud_check);
    o.download.ca_file = g_images->Root();
    o.download.stall_timeout = std::chrono::milliseconds(2000);
    o.download.initial_backoff = std::chrono::milliseconds(20);
    o.state_dir = dir_ / "state";
    o.model = "sag-1000";
    o.trust.root_ca = g_images->Root();
    o.trial_attempts = 3;
    o.health_checks = std::move(checks);
    o.checkpoint_bytes = 2 * kChunk;
    o.checkpoint_interval = checkpoint_interval_;
    o.os_release = dir_ / "os-release";
    o.read_back = read_back_;
    o.on_step = [this](const std::string& job, std::string_view step) {
      if (steps_ != nullptr) steps_->push_back(job + ":" + std::string(step));
      if (step_hook_) step_hook_(std::string(step));
    };
    platform::SlotDevice* b = slot_b_override_ != nullptr ? slot_b_override_ : slot_b_.get();
    platform::BootControl* boot = boot_override_ != nullptr ? boot_override_ : &boot_;
    Platform p{boot, {{Slot::kA, slot_a_.get()}, {Slot::kB, b}}, &rebooter_, &system_};
    return std::make_unique<DeviceInstaller>(
        std::move(o), p, [this](const JobRecord& r, const Progress& pr) {
          states_seen_.push_back(r.state);
          if (job_cancel_ != nullptr && r.state == cancel_in_ && pr.done >= cancel_at_ &&
              !cancel_answer_) {
            cancel_answer_ = job_cancel_->Request();
          }
          if (cancel_after_ > 0 && r.state == JobState::kWriting && pr.done >= cancel_after_ &&
              installer_ != nullptr) {
            installer_->Cancel();
          }
        });
  }

  // Starts a job and stops it once `chunks` chunks were written, as SIGTERM
  // would; the job stays in the journal for a resume.
  Expected<JobRecord> StartAndStop(const JobSpec& spec, std::uint64_t chunks) {
    auto inst = MakeInstaller();
    installer_ = inst.get();
    cancel_after_ = chunks;
    auto r = inst->Start(spec);
    installer_ = nullptr;
    cancel_after_ = 0;
    return r;
  }

  // Power cycle: the bootloader picks a slot; the agent starts in a new boot.
  std::optional<Slot> Reboot() {
    ++system_.boot;
    return boot_.Boot();
  }

  std::string SlotContent(const char* name, std::size_t n) {
    std::ifstream in(dir_ / name, std::ios::binary);
    std::string s(n, '\0');
    in.read(s.data(), static_cast<std::streamsize>(n));
    return s;
  }

  // Installs `image` into slot B behind a SlowWriteSlot; B holds `payload`.
  void InstallThroughSlowWrites(const std::string& image, const std::string& payload) {
    SlowWriteSlot slow(*slot_b_);
    slot_b_override_ = &slow;
    auto r = MakeInstaller()->Start(Spec("slow-" + image, image));
    slot_b_override_ = nullptr;
    ASSERT_TRUE(r) << r.error().ToString();
    EXPECT_EQ(r->state, JobState::kRebooting) << (r->error ? r->error->ToString() : "");
    EXPECT_TRUE(SlotContent("slot-b", payload.size()) == payload) << "slot B is not the payload";
  }

  JobSpec Spec(const std::string& id, const std::string& image) {
    return JobSpec{id, g_images->Image(image).string(), false, true};
  }

  void ExpectRefused(const std::string& image, Errc code, bool allow_downgrade = false) {
    auto inst = MakeInstaller();
    const auto before = boot_.env();
    auto spec = Spec("refuse-" + image, image);
    spec.allow_downgrade = allow_downgrade;
    auto r = inst->Start(spec);
    ASSERT_TRUE(r) << r.error().ToString();
    EXPECT_EQ(r->state, JobState::kFailed);
    ASSERT_TRUE(r->error);
    EXPECT_EQ(r->error->code(), code) << r->error->ToString();
    EXPECT_EQ(boot_.env(), before) << "the boot environment changed";
    EXPECT_EQ(SlotContent("slot-b", kSlotSize), std::string(kSlotSize, '\0')) << "slot B touched";
    EXPECT_EQ(rebooter_.requests, 0);
    EXPECT_EQ(*inst->CurrentVersion(), "1.0.0");
  }

  test::TempDir dir_;
  std::vector<std::string>* steps_ = nullptr;  // on_step calls, when set
  platform::FakeBootControl boot_;
  std::unique_ptr<platform::SlotDevice> slot_a_;
  std::unique_ptr<platform::SlotDevice> slot_b_;
  platform::SlotDevice* slot_b_override_ = nullptr;
  InstallerOptions::ReadBack read_back_ = InstallerOptions::ReadBack::kMedium;
  std::chrono::milliseconds checkpoint_interval_{};
  FakeRebooter rebooter_;
  FakeSystem system_;
  std::vector<JobState> states_seen_;
  std::uint64_t cancel_after_ = 0;
  DeviceInstaller* installer_ = nullptr;
  // A job's cancel point, requested once the job reports `cancel_in_` with
  // at least `cancel_at_` done.
  JobCancel* job_cancel_ = nullptr;
  JobState cancel_in_ = JobState::kWriting;
  std::uint64_t cancel_at_ = 0;
  std::optional<JobCancel::Answer> cancel_answer_;
  std::function<void(const std::string& step)> step_hook_;  // on_step, when set
  platform::BootControl* boot_override_ = nullptr;

  // Starts `image` as the dispatcher does: the header read and verified
  // first, the job given the reader and its cancel point.
  Expected<JobRecord> StartCancellable(const std::string& id, const std::string& image,
                                       JobCancel& cancel) {
    auto source = image::FileSource::Open(g_images->Image(image));
    if (!source) return source.error();
    image::Trust trust;
    trust.root_ca = g_images->Root();
    image::ImageReader reader(**source, trust);
    auto header = reader.ReadHeader();
    if (!header) return header.error();
    job_cancel_ = &cancel;
    auto r = MakeInstaller()->Start(Spec(id, image), reader, **header, &cancel);
    job_cancel_ = nullptr;
    return r;
  }

  // Cancelled before the trial boot: Failed with Cancelled, slot B not
  // bootable, A first with its tries full, no reboot, 1.0.0 runs.
  void ExpectCancelled(const Expected<JobRecord>& r) {
    ASSERT_TRUE(r) << r.error().ToString();
    EXPECT_EQ(cancel_answer_, JobCancel::Answer::kAccepted);
    EXPECT_EQ(r->state, JobState::kFailed);
    ASSERT_TRUE(r->error);
    EXPECT_EQ(r->error->code(), Errc::kCancelled) << r->error->ToString();
    auto st = boot_.ReadState();
    ASSERT_TRUE(st);
    EXPECT_EQ(st->order.front(), Slot::kA);
    EXPECT_EQ(st->a_left, 3);
    EXPECT_EQ(st->b_left, 0) << "slot B must stay not bootable";
    EXPECT_EQ(rebooter_.requests, 0);
    EXPECT_EQ(Reboot(), Slot::kA);
    auto inst = MakeInstaller();
    EXPECT_EQ(*inst->CurrentVersion(), "1.0.0");
    auto again = inst->Lookup(r->id);
    ASSERT_TRUE(again && *again);
    EXPECT_EQ((*again)->state, JobState::kFailed) << "recorded, answered when offered again";
  }
};

TEST_F(DeviceInstallerTest, InstallsRebootsChecksHealthAndCommits) {
  auto inst = MakeInstaller({{"ok", {"true"}, std::chrono::seconds(5)}});
  EXPECT_EQ(*inst->CurrentVersion(), "1.0.0");
  auto r = inst->Start(Spec("job-1", "v101"));
  ASSERT_TRUE(r) << r.error().ToString();
  EXPECT_EQ(r->state, JobState::kRebooting);
  EXPECT_EQ(r->target_slot, "B");
  EXPECT_EQ(rebooter_.requests, 1);
  auto st = boot_.ReadState();
  ASSERT_TRUE(st);
  EXPECT_EQ(st->order.front(), Slot::kB);
  EXPECT_EQ(st->b_left, 3);
  EXPECT_EQ(SlotContent("slot-b", g_images->payload_101().size()), g_images->payload_101());

  ASSERT_EQ(Reboot(), Slot::kB);
  auto inst2 = MakeInstaller({{"ok", {"true"}, std::chrono::seconds(5)}});
  auto resumed = inst2->Resume();
  ASSERT_TRUE(resumed) << resumed.error().ToString();
  ASSERT_TRUE(*resumed);
  EXPECT_EQ((*resumed)->state, JobState::kCommitted);
  EXPECT_EQ(*inst2->CurrentVersion(), "1.0.1");
  st = boot_.ReadState();
  EXPECT_EQ(st->order.front(), Slot::kB);
  EXPECT_EQ(st->b_left, 3);
  // Committed means the next power-on boots B again, for good.
  EXPECT_EQ(Reboot(), Slot::kB);
  // The same job offered again is answered, not run again.
  auto again = inst2->Start(Spec("job-1", "v101"));
  ASSERT_TRUE(again);
  EXPECT_EQ(again->state, JobState::kCommitted);
  EXPECT_EQ(rebooter_.requests, 1);
}

TEST_F(DeviceInstallerTest, SlotsShowWhatEachHoldsAndWhetherItBoots) {
  auto inst = MakeInstaller();
  auto slots = inst->Slots();
  ASSERT_TRUE(slots) << slots.error().ToString();
  // The factory image: no record, the running OS's VERSION_ID.
  EXPECT_EQ((*slots)[Slot::kA].version, "1.0.0");
  EXPECT_EQ((*slots)[Slot::kA].state, "good");
  EXPECT_EQ((*slots)[Slot::kB].version, "");
  auto r = inst->Start(Spec("job-s", "v101"));
  ASSERT_TRUE(r && r->state == JobState::kRebooting);
  slots = inst->Slots();
  ASSERT_TRUE(slots);
  EXPECT_EQ((*slots)[Slot::kB].version, "1.0.1");
  EXPECT_EQ((*slots)[Slot::kB].state, "trial");
  EXPECT_EQ((*slots)[Slot::kA].state, "good");

  ASSERT_EQ(Reboot(), Slot::kB);
  auto inst2 = MakeInstaller();
  ASSERT_TRUE(inst2->Resume());
  slots = inst2->Slots();
  ASSERT_TRUE(slots);
  // B from its record; A, left behind, from the job that moved away from it
  // (os-release now speaks for B).
  EXPECT_EQ((*slots)[Slot::kB].version, "1.0.1");
  EXPECT_EQ((*slots)[Slot::kB].state, "good");
  EXPECT_EQ((*slots)[Slot::kA].version, "1.0.0");
  EXPECT_EQ((*slots)[Slot::kA].state, "good");
}

TEST_F(DeviceInstallerTest, ACancelledCloudCheckLeavesTheTrialUndecided) {
  // The agent stops while the cloud check waits (HelloGate abandoned with
  // kCancelled): no rollback; the next start checks again.
  int calls = 0;
  auto stopping = [&calls]() -> Status {
    ++calls;
    return Error(Errc::kCancelled, "the agent is stopping");
  };
  ASSERT_EQ(MakeInstaller({}, stopping)->Start(Spec("job-x", "v101"))->state, JobState::kRebooting);
  ASSERT_EQ(Reboot(), Slot::kB);
  auto r = MakeInstaller({}, stopping)->Resume();
  ASSERT_TRUE(r && *r) << (r ? "" : r.error().ToString());
  EXPECT_EQ((*r)->state, JobState::kHealthChecking);
  EXPECT_EQ(rebooter_.requests, 1);  // no reboot back to A
  auto answered = [&calls]() -> Status {
    ++calls;
    return Ok();
  };
  r = MakeInstaller({}, answered)->Resume();
  ASSERT_TRUE(r && *r);
  EXPECT_EQ((*r)->state, JobState::kCommitted);
  EXPECT_EQ(calls, 2);
}

TEST_F(DeviceInstallerTest, FailedHealthCheckRollsBack) {
  auto checks = std::vector<HealthCheckSpec>{
      {"dataplane", {"sh", "-c", "echo link down; exit 3"}, std::chrono::seconds(5)}};
  auto inst = MakeInstaller(checks);
  ASSERT_EQ(inst->Start(Spec("job-h", "v101"))->state, JobState::kRebooting);
  ASSERT_EQ(Reboot(), Slot::kB);
  auto r = MakeInstaller(checks)->Resume();
  ASSERT_TRUE(r && *r) << (r ? "" : r.error().ToString());
  EXPECT_EQ((*r)->state, JobState::kRollingBack);
  EXPECT_EQ(rebooter_.requests, 2);
  EXPECT_EQ(boot_.ReadState()->b_left, 0);
  ASSERT_EQ(Reboot(), Slot::kA);
  auto inst3 = MakeInstaller(checks);
  r = inst3->Resume();
  ASSERT_TRUE(r && *r);
  EXPECT_EQ((*r)->state, JobState::kRolledBack);
  ASSERT_TRUE((*r)->error);
  EXPECT_EQ((*r)->error->code(), Errc::kHealthCheckFailed);
  EXPECT_NE((*r)->error->message().find("link down"), std::string::npos);
  EXPECT_EQ(*inst3->CurrentVersion(), "1.0.0");
  EXPECT_EQ(Reboot(), Slot::kA);
}

TEST_F(DeviceInstallerTest, UnreachableControlChannelRollsBack) {
  // The new OS boots and its command checks pass, but it cannot reach the
  // control channel (nothing listens on the endpoint): rolled back, with the
  // endpoint and the last error in the job's error.
  auto checks = std::vector<HealthCheckSpec>{{"ok", {"true"}, std::chrono::seconds(5)}};
  net::DownloadOptions tls;
  tls.ca_file = g_images->Root();
  auto cloud = [tls] {
    return net::ProbeEndpoint("wss://127.0.0.1:1/device/v1", tls, std::chrono::milliseconds(1500));
  };
  ASSERT_EQ(MakeInstaller(checks, cloud)->Start(Spec("job-c", "v101"))->state,
            JobState::kRebooting);
  ASSERT_EQ(Reboot(), Slot::kB);
  auto r = MakeInstaller(checks, cloud)->Resume();
  ASSERT_TRUE(r && *r) << (r ? "" : r.error().ToString());
  EXPECT_EQ((*r)->state, JobState::kRollingBack);
  ASSERT_EQ(Reboot(), Slot::kA);
  auto inst = MakeInstaller(checks, cloud);
  r = inst->Resume();
  ASSERT_TRUE(r && *r);
  EXPECT_EQ((*r)->state, JobState::kRolledBack);
  ASSERT_TRUE((*r)->error);
  EXPECT_EQ((*r)->error->code(), Errc::kHealthCheckFailed);
  EXPECT_NE((*r)->error->message().find("control channel wss://127.0.0.1:1/device/v1"),
            std::string::npos)
      << (*r)->error->message();
  EXPECT_EQ(*inst->CurrentVersion(), "1.0.0");

  // Reachable: the same job id is finished, a new one commits.
  auto ok = [] { return Status(); };
  auto inst2 = MakeInstaller(checks, ok);
  ASSERT_EQ(inst2->Start(Spec("job-c2", "v101"))->state, JobState::kRebooting);
  ASSERT_EQ(Reboot(), Slot::kB);
  r = MakeInstaller(checks, ok)->Resume();
  ASSERT_TRUE(r && *r);
  EXPECT_EQ((*r)->state, JobState::kCommitted);
}

TEST_F(DeviceInstallerTest, UnbootableSlotFallsBackAndIsReported) {
  auto inst = MakeInstaller();
  ASSERT_EQ(inst->Start(Spec("job-u", "v101"))->state, JobState::kRebooting);
  // The new kernel never comes up: three tries of B, then the bootloader
  // falls back to A.
  for (int i = 0; i < 3; ++i) ASSERT_EQ(Reboot(), Slot::kB);
  ASSERT_EQ(Reboot(), Slot::kA);
  auto inst2 = MakeInstaller();
  auto r = inst2->Resume();
  ASSERT_TRUE(r && *r);
  EXPECT_EQ((*r)->state, JobState::kRolledBack);
  EXPECT_EQ((*r)->error->code(), Errc::kRolledBack);
  EXPECT_NE((*r)->error->message().find("fell back to slot A"), std::string::npos);
  EXPECT_EQ(*inst2->CurrentVersion(), "1.0.0");
  EXPECT_EQ(boot_.ReadState()->a_left, 3);
}

TEST_F(DeviceInstallerTest, RefusesBeforeTouchingTheSlot) {
  ExpectRefused("wrong-model", Errc::kIncompatibleModel);
  ExpectRefused("dpi", Errc::kWrongType);
  ExpectRefused("v090", Errc::kVersionTooOld);
  ExpectRefused("huge", Errc::kSlotTooSmall);
  ExpectRefused("noncanon", Errc::kImageNonCanonical);
}

TEST_F(DeviceInstallerTest, DowngradeOnlyWhenAllowed) {
  auto inst = MakeInstaller();
  auto spec = Spec("down", "v090");
  spec.allow_downgrade = true;
  auto r = inst->Start(spec);
  ASSERT_TRUE(r) << r.error().ToString();
  EXPECT_EQ(r->state, JobState::kRebooting);
}

// A running version this agent cannot compare ("5.1.0-r2", "12") must not
// let any signed version through: the check fails closed unless the operator
// allows a downgrade.
TEST_F(DeviceInstallerTest, UnparsableRunningVersionRefusesUnlessAllowed) {
  for (const char* running : {"5.1.0-r2", "12"}) {
    ASSERT_TRUE(WriteFileAtomic(dir_ / "os-release",
                                std::string("NAME=SAG\nVERSION_ID=\"") + running + "\"\n"));
    auto inst = MakeInstaller();
    const auto before = boot_.env();
    auto r = inst->Start(Spec(std::string("unparsable-") + running, "v101"));
    ASSERT_TRUE(r) << r.error().ToString();
    EXPECT_EQ(r->state, JobState::kFailed);
    ASSERT_TRUE(r->error);
    EXPECT_EQ(r->error->code(), Errc::kVersionUnparsable) << r->error->ToString();
    EXPECT_NE(r->error->message().find(running), std::string::npos) << r->error->message();
    EXPECT_NE(r->error->message().find("--allow-downgrade"), std::string::npos)
        << r->error->message();
    EXPECT_EQ(boot_.env(), before) << "the boot environment changed";
    EXPECT_EQ(SlotContent("slot-b", kSlotSize), std::string(kSlotSize, '\0')) << "slot B touched";
  }
  auto inst = MakeInstaller();
  auto spec = Spec("unparsable-allowed", "v101");
  spec.allow_downgrade = true;
  auto r = inst->Start(spec);
  ASSERT_TRUE(r) << r.error().ToString();
  EXPECT_EQ(r->state, JobState::kRebooting) << (r->error ? r->error->ToString() : "");
}

TEST_F(DeviceInstallerTest, RefusesFullStateDisk) {
  system_.free = 1000;
  ExpectRefused("v101", Errc::kNoSpace);
}

TEST_F(DeviceInstallerTest, CorruptChunkLeavesSlotUnbootable) {
  // Flip a byte deep in the payload: the header verifies, the chunk does not.
  const auto bad = dir_ / "bad.sagimg";
  fs::copy_file(g_images->Image("v101"), bad);
  const auto size = fs::file_size(bad);
  {
    std::fstream f(bad, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(size - 5000));
    f.put('\x5a');
  }
  auto inst = MakeInstaller();
  auto r = inst->Start(JobSpec{"bad", bad.string(), false, true});
  ASSERT_TRUE(r) << r.error().ToString();
  EXPECT_EQ(r->state, JobState::kFailed);
  EXPECT_TRUE(r->error->code() == Errc::kChunkHashMismatch || r->error->code() == Errc::kDecompress)
      << r->error->ToString();
  EXPECT_EQ(rebooter_.requests, 0);
  auto st = boot_.ReadState();
  EXPECT_EQ(st->order.front(), Slot::kA);
  EXPECT_EQ(st->b_left, 0);
  EXPECT_EQ(Reboot(), Slot::kA);
}

TEST_F(DeviceInstallerTest, TruncatedImageFails) {
  const auto cut = dir_ / "cut.sagimg";
  fs::copy_file(g_images->Image("v101"), cut);
  fs::resize_file(cut, fs::file_size(cut) / 2);
  auto r = MakeInstaller()->Start(JobSpec{"cut", cut.string(), false, true});
  ASSERT_TRUE(r);
  EXPECT_EQ(r->state, JobState::kFailed);
  EXPECT_EQ(r->error->code(), Errc::kImageTruncated) << r->error->ToString();
  EXPECT_EQ(Reboot(), Slot::kA);
}

// The daemon opens the image and verifies its header once; the installer
// streams the payload from that same reader: the image file may be gone by
// then (only the open source is read).
TEST_F(DeviceInstallerTest, StartsFromAReaderWhoseHeaderIsVerifiedWithoutOpeningAgain) {
  const auto copy = dir_ / "once.sagimg";
  fs::copy_file(g_images->Image("v101"), copy);
  auto source = image::FileSource::Open(copy);
  ASSERT_TRUE(source);
  image::Trust trust;
  trust.root_ca = g_images->Root();
  image::ImageReader reader(**source, trust);
  auto header = reader.ReadHeader();
  ASSERT_TRUE(header) << header.error().ToString();
  fs::remove(copy);
  auto r = MakeInstaller()->Start(JobSpec{"once", copy.string(), false, true}, reader, **header);
  ASSERT_TRUE(r) << r.error().ToString();
  EXPECT_EQ(r->state, JobState::kRebooting) << (r->error ? r->error->ToString() : "");
  EXPECT_EQ(SlotContent("slot-b", g_images->payload_101().size()), g_images->payload_101());
}

// The loop guard's end of a job: before the trial it fails (recorded, slot B
// stays unbootable, A boots); on the trial boot it rolls back.
TEST_F(DeviceInstallerTest, AbandonEndsAnUnfinishedJobWithItsError) {
  auto r = StartAndStop(Spec("job-x", "v101"), 5);
  ASSERT_TRUE(r && r->state == JobState::kWriting);
  auto inst = MakeInstaller();
  auto other = inst->Abandon("other", Error(Errc::kJobCrashLoop, "loop"));
  ASSERT_FALSE(other);
  EXPECT_EQ(other.error().code(), Errc::kJobUnknown);
  auto ended = inst->Abandon("job-x", Error(Errc::kJobCrashLoop, "loop"));
  ASSERT_TRUE(ended) << ended.error().ToString();
  EXPECT_EQ(ended->state, JobState::kFailed);
  auto seen = inst->Lookup("job-x");
  ASSERT_TRUE(seen && *seen);
  EXPECT_EQ((*seen)->state, JobState::kFailed);
  ASSERT_TRUE((*seen)->error);
  EXPECT_EQ((*seen)->error->code(), Errc::kJobCrashLoop);
  EXPECT_EQ(Reboot(), Slot::kA) << "slot B must not boot";
  auto resumed = MakeInstaller()->Resume();
  ASSERT_TRUE(resumed);
  EXPECT_FALSE(*resumed) << "nothing left to resume";

  ASSERT_EQ(MakeInstaller()->Start(Spec("job-t", "v101"))->state, JobState::kRebooting);
  ASSERT_EQ(Reboot(), Slot::kB);
  // A health check that kills the agent leaves the journal in
  // HealthChecking on the trial boot (written here as that crash would).
  const auto path = dir_ / "state" / "device-job.json";
  auto doc = nlohmann::json::parse(*ReadFile(path));
  doc["state"] = "HealthChecking";
  ASSERT_TRUE(WriteFileAtomic(path, doc.dump()));
  auto trial = MakeInstaller()->Abandon("job-t", Error(Errc::kJobCrashLoop, "loop"));
  ASSERT_TRUE(trial) << trial.error().ToString();
  EXPECT_EQ(trial->state, JobState::kRollingBack);
  ASSERT_EQ(Reboot(), Slot::kA);
  auto back = MakeInstaller()->Resume();
  ASSERT_TRUE(back && *back);
  EXPECT_EQ((*back)->state, JobState::kRolledBack);
  ASSERT_TRUE((*back)->error);
  EXPECT_EQ((*back)->error->code(), Errc::kJobCrashLoop);
}

// Each step a crash would make the job repeat is announced before it runs.
TEST_F(DeviceInstallerTest, AnnouncesEachStepBeforeItRuns) {
  std::vector<std::string> steps;
  steps_ = &steps;
  ASSERT_EQ(
      MakeInstaller({{"ok", {"true"}, std::chrono::seconds(5)}})->Start(Spec("s", "v101"))->state,
      JobState::kRebooting);
  ASSERT_EQ(Reboot(), Slot::kB);
  auto r = MakeInstaller({{"ok", {"true"}, std::chrono::seconds(5)}})->Resume();
  ASSERT_TRUE(r && *r);
  EXPECT_EQ((*r)->state, JobState::kCommitted);
  steps_ = nullptr;
  EXPECT_EQ(steps, (std::vector<std::string>{"s:Pending", "s:Writing", "s:Verifying",
                                             "s:Activating", "s:HealthChecking"}));
}

TEST_F(DeviceInstallerTest, InterruptedWriteResumesFromCheckpoint) {
  auto r = StartAndStop(Spec("job-r", "v101"), 5);  // stop after 5 of 11 chunks, as SIGTERM would
  ASSERT_TRUE(r) << r.error().ToString();
  EXPECT_EQ(r->state, JobState::kWriting);
  EXPECT_GE(r->next_chunk, 2U);
  EXPECT_LT(r->next_chunk, r->chunks_total);
  auto inst2 = MakeInstaller();
  auto busy = inst2->Start(Spec("other", "v102"));
  ASSERT_FALSE(busy);
  EXPECT_EQ(busy.error().code(), Errc::kJobConflict);
  auto resumed = inst2->Resume();
  ASSERT_TRUE(resumed && *resumed) << (resumed ? "" : resumed.error().ToString());
  EXPECT_EQ((*resumed)->state, JobState::kRebooting);
  EXPECT_EQ(SlotContent("slot-b", g_images->payload_101().size()), g_images->payload_101());
}

// Checkpoints come every checkpoint_bytes but at most once per interval (each
// costs three disk flushes): within the interval nothing is recorded as done,
// so a stop resumes from the last checkpoint (here: the start), and the last
// chunk is always checkpointed. (Without the floor, as in every other test
// here, a checkpoint comes every two chunks unless one is running: see
// InterruptedWriteResumesFromCheckpoint.)
TEST_F(DeviceInstallerTest, CheckpointsAreAtMostOnePerInterval) {
  checkpoint_interval_ = std::chrono::hours(1);
  auto r = StartAndStop(Spec("job-i", "v101"), 7);
  ASSERT_TRUE(r) << r.error().ToString();
  EXPECT_EQ(r->state, JobState::kWriting);
  EXPECT_EQ(r->next_chunk, 0U);
  EXPECT_EQ(r->verified_chunk, 0U);
  auto resumed = MakeInstaller()->Resume();
  ASSERT_TRUE(resumed && *resumed) << (resumed ? "" : resumed.error().ToString());
  EXPECT_EQ((*resumed)->state, JobState::kRebooting);
  EXPECT_EQ((*resumed)->verified_chunk, (*resumed)->chunks_total);
  EXPECT_EQ(SlotContent("slot-b", g_images->payload_101().size()), g_images->payload_101());
}

// The writer never waits for a checkpoint: while one is running (its flush
// can take seconds on a disk with a backlog) no other is queued, and the
// writer goes on; the next starts once it finished. (Queued behind a slow
// flush, the writer would stop two checkpoints later, every two chunks here,
// and the held flush would wait in vain.)
TEST_F(DeviceInstallerTest, ASlowFlushDoesNotHoldUpTheWriter) {
  SlowFlushSlot slow(*slot_b_, g_images->payload_101().size());
  slot_b_override_ = &slow;
  auto r = MakeInstaller()->Start(Spec("job-f", "v101"));
  ASSERT_TRUE(r) << r.error().ToString();
  EXPECT_TRUE(slow.writer_got_there) << "the writer stopped behind the held flush";
  EXPECT_EQ(r->state, JobState::kRebooting) << (r->error ? r->error->ToString() : "");
  EXPECT_EQ(r->verified_chunk, r->chunks_total);
  EXPECT_EQ(SlotContent("slot-b", g_images->payload_101().size()), g_images->payload_101());
}

// The writer writes from the reader's buffers while the reader decodes the
// next chunks: the reader must not decode into a buffer the writer still
// holds. With a slow writer, a chunk overwritten before it was written
// reaches the slot with another chunk's bytes (for a compressed chunk, caught
// by the read-back; for a raw one, written as it was compared). Red when the
// installer's buffer gate lets the reader go on at once.
TEST_F(DeviceInstallerTest, ASlowWriteKeepsItsCompressedChunkWhileTheNextIsDecoded) {
  InstallThroughSlowWrites("text", g_images->text());
}

TEST_F(DeviceInstallerTest, ASlowWriteKeepsItsRawChunkWhileTheNextIsRead) {
  InstallThroughSlowWrites("v101", g_images->payload_101());
}

// Every chunk is read back beside the writer: a slot that does not return
// what was written fails the job before the trial boot is set, and the slot
// stays unbootable. Raw chunks (v101, random data) and compressed ones
// (text) alike: read back from the medium and checked against the CRC-32C of
// the buffer each was written from.
TEST_F(DeviceInstallerTest, ReadBackMismatchFailsBeforeTheTrialBoot) {
  for (const std::string image : {"v101", "text"}) {
    SCOPED_TRACE(image);
    BitRotSlot rotten(*slot_b_, 5 * kChunk + 123);
    slot_b_override_ = &rotten;
    auto r = MakeInstaller()->Start(Spec("rot-" + image, image));
    slot_b_override_ = nullptr;
    ASSERT_TRUE(r) << r.error().ToString();
    EXPECT_EQ(r->state, JobState::kFailed);
    ASSERT_TRUE(r->error);
    EXPECT_EQ(r->error->code(), Errc::kReadBackMismatch) << r->error->ToString();
    EXPECT_NE(r->error->message().find("chunk 5 "), std::string::npos) << r->error->ToString();
    EXPECT_EQ(r->verified_chunk, r->next_chunk);
    EXPECT_LE(r->next_chunk, 5U);
    EXPECT_EQ(rebooter_.requests, 0);
    EXPECT_EQ(boot_.ReadState()->b_left, 0);
    EXPECT_EQ(Reboot(), Slot::kA);
  }
}

// Slot B on a medium that lies (tools/powerloss, kernel page cache on): it
// acknowledges the writes to a range of chunk 3 and keeps nothing, while
// the page cache shows them. A read-back from the page cache passes; the
// read-back from the medium beside the write catches it, before the trial
// boot is set. Red with boot.read_back: cache.
TEST_F(DeviceInstallerTest, LyingMediumIsCaughtBeforeTheTrialBoot) {
  fs::create_directories(dir_ / "medium");
  fs::create_directories(dir_ / "mnt");
  fs::copy_file(dir_ / "slot-b", dir_ / "medium" / "slot-b");
  test::PowerLossMount mount(SAG_POWERLOSS_BIN, dir_ / "medium", dir_ / "mnt", "kernel");
  if (!mount.Available()) GTEST_SKIP() << "no FUSE here (needs /dev/fuse and root)";
  ASSERT_FALSE(mount.Control("lie slot-b " + std::to_string(3 * kChunk + 100) + " 10").empty());
  auto lying = platform::OpenSlotDevice("B", dir_ / "mnt" / "slot-b");
  ASSERT_TRUE(lying) << lying.error().ToString();
  slot_b_override_ = lying->get();
  auto r = MakeInstaller()->Start(Spec("lying", "v101"));
  slot_b_override_ = nullptr;
  ASSERT_TRUE(r) << r.error().ToString();
  EXPECT_EQ(r->state, JobState::kFailed) << "a slot the medium does not hold was activated";
  ASSERT_TRUE(r->error);
  EXPECT_EQ(r->error->code(), Errc::kReadBackMismatch) << r->error->ToString();
  EXPECT_NE(r->error->ToString().find("chunk 3 "), std::string::npos) << r->error->ToString();
  EXPECT_NE(r->error->ToString().find("from the medium"), std::string::npos)
      << r->error->ToString();
  EXPECT_EQ(rebooter_.requests, 0);
  EXPECT_EQ(boot_.ReadState()->b_left, 0);
  EXPECT_EQ(Reboot(), Slot::kA);
}

// boot.read_back: medium reads the slot once, from the medium, beside the
// write: every byte of the payload exactly once, nothing from the page cache,
// and the journal says so (verified_medium), so Verifying reads nothing more.
// Raw chunks (v101) and compressed ones (text).
TEST_F(DeviceInstallerTest, MediumReadBackReadsEachChunkOnceFromTheMedium) {
  CountingSlot counting(*slot_b_);
  slot_b_override_ = &counting;
  auto r = MakeInstaller()->Start(Spec("once", "v101"));
  slot_b_override_ = nullptr;
  ASSERT_TRUE(r) << r.error().ToString();
  ASSERT_EQ(r->state, JobState::kRebooting) << (r->error ? r->error->ToString() : "");
  EXPECT_EQ(counting.medium_bytes.load(), r->payload_size);
  EXPECT_EQ(counting.cache_bytes.load(), 0U);
  EXPECT_TRUE(r->verified_medium);
  EXPECT_EQ(r->verified_chunk, r->chunks_total);
}

TEST_F(DeviceInstallerTest, MediumReadBackReadsEachCompressedChunkOnceFromTheMedium) {
  CountingSlot counting(*slot_b_);
  slot_b_override_ = &counting;
  auto r = MakeInstaller()->Start(Spec("once-text", "text"));
  slot_b_override_ = nullptr;
  ASSERT_TRUE(r) << r.error().ToString();
  ASSERT_EQ(r->state, JobState::kRebooting) << (r->error ? r->error->ToString() : "");
  EXPECT_EQ(counting.medium_bytes.load(), r->payload_size);
  EXPECT_EQ(counting.cache_bytes.load(), 0U);
}

// A job whose chunks before a cut were read back from the page cache (it ran
// with boot.read_back: cache, or under an older agent: verified_medium
// absent) has them read from the medium again when resumed with medium.
TEST_F(DeviceInstallerTest, ResumeWithMediumRereadsChunksReadFromTheCache) {
  read_back_ = InstallerOptions::ReadBack::kCache;
  auto r = StartAndStop(Spec("job-m", "v101"), 6);
  ASSERT_TRUE(r) << r.error().ToString();
  ASSERT_EQ(r->state, JobState::kWriting);
  ASSERT_GE(r->verified_chunk, 2U);
  EXPECT_FALSE(r->verified_medium);
  {  // chunk 0 went bad on the storage after it was read back
    std::fstream f(dir_ / "slot-b", std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(100);
    f.put('\x5a');
  }
  read_back_ = InstallerOptions::ReadBack::kMedium;
  auto resumed = MakeInstaller()->Resume();
  ASSERT_TRUE(resumed && *resumed) << (resumed ? "" : resumed.error().ToString());
  EXPECT_EQ((*resumed)->state, JobState::kFailed);
  ASSERT_TRUE((*resumed)->error);
  EXPECT_EQ((*resumed)->error->code(), Errc::kReadBackMismatch) << (*resumed)->error->ToString();
  EXPECT_NE((*resumed)->error->message().find("chunk 0 "), std::string::npos)
      << (*resumed)->error->ToString();
  EXPECT_EQ(Reboot(), Slot::kA);
}

// A compressed chunk is authenticated by its compressed bytes (zsha256)
// before zstd decodes it, and read back against the CRC-32C of the buffer it
// was written from: its content is not hashed again, on the device or on
// the read-back. A signed manifest whose content hash for such a chunk
// disagrees with its compressed bytes (a signer's fault) is refused where
// every content hash is checked, by a reader with ContentCheck::kEveryChunk
// (the cloud's repository indexes images with one, so no device is sent
// it); the installer writes what the signed compressed bytes decode to.
// Red with the read-back hashing decoded chunks again (ReadBackMismatch).
TEST_F(DeviceInstallerTest, CompressedChunkIsCheckedByItsCompressedBytes) {
  const auto good = g_images->Image("text");
  const auto bytes = *ReadFile(good);
  auto src = image::FileSource::Open(good);
  ASSERT_TRUE(src);
  const auto u = image::ReadUnverifiedHeader(**src);
  ASSERT_TRUE(u);
  auto j = nlohmann::json::parse(u->manifest_json);
  ASSERT_LT(j["chunks"][2]["length"].get<std::uint64_t>(), kChunk) << "chunk 2 is compressed";
  j["chunks"][2]["sha256"] = std::string(64, 'c');
  const auto pki = g_images->Root().parent_path();
  auto sig = image::SignManifest(j.dump(), pki / "signer.key", pki / "signer.pem",
                                 pki / "signer-chain.pem");
  ASSERT_TRUE(sig);
  const auto zst = dir_ / "payload.zst";
  std::ofstream(zst, std::ios::binary) << bytes.substr(u->payload_offset, u->payload_stored_size);
  const auto bad = dir_ / "bad-content.sagimg";
  ASSERT_TRUE(image::WriteContainer(bad, j.dump(), *sig, zst));

  {
    auto whole = image::FileSource::Open(bad);
    ASSERT_TRUE(whole);
    image::Trust trust;
    trust.root_ca = g_images->Root();
    image::ImageReader reader(**whole, trust);
    std::size_t chunks = 0;
    for (;; ++chunks) {
      auto c = reader.NextChunk();
      if (!c) {
        EXPECT_EQ(c.error().code(), Errc::kChunkHashMismatch) << c.error().ToString();
        break;
      }
      ASSERT_TRUE(*c) << "every content hash checked, and the image passed";
    }
    EXPECT_EQ(chunks, 2U);
  }

  auto r = MakeInstaller()->Start(JobSpec{"content", bad.string(), false, true});
  ASSERT_TRUE(r) << r.error().ToString();
  ASSERT_EQ(r->state, JobState::kRebooting) << (r->error ? r->error->ToString() : "");
  const auto slot = ReadFile(dir_ / "slot-b");
  ASSERT_TRUE(slot);
  EXPECT_EQ(slot->substr(0, g_images->text().size()), g_images->text());
}

// A journal without verified_chunk (an older agent's, or one whose read-back
// lagged) has the chunks written before the cut read back on resume too.
TEST_F(DeviceInstallerTest, ResumeReadsBackChunksWrittenBeforeTheCut) {
  auto r = StartAndStop(Spec("job-v", "v101"), 6);
  ASSERT_TRUE(r) << r.error().ToString();
  ASSERT_EQ(r->state, JobState::kWriting);
  ASSERT_GE(r->next_chunk, 2U);
  EXPECT_EQ(r->verified_chunk, r->next_chunk);
  const auto journal = dir_ / "state" / "device-job.json";
  auto doc = nlohmann::json::parse(*ReadFile(journal));
  doc.erase("verified_chunk");
  ASSERT_TRUE(WriteFileAtomic(journal, doc.dump()));
  {  // chunk 0 went bad on the storage after it was written
    std::fstream f(dir_ / "slot-b", std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(100);
    f.put('\x5a');
  }
  auto resumed = MakeInstaller()->Resume();
  ASSERT_TRUE(resumed && *resumed) << (resumed ? "" : resumed.error().ToString());
  EXPECT_EQ((*resumed)->state, JobState::kFailed);
  ASSERT_TRUE((*resumed)->error);
  EXPECT_EQ((*resumed)->error->code(), Errc::kReadBackMismatch) << (*resumed)->error->ToString();
  EXPECT_EQ(Reboot(), Slot::kA);
}

// The signed header is stored once beside the journal, which is rewritten at
// every checkpoint and stays small. A resume without it (or with another
// job's) ends the job with a reason instead of writing unverified chunks.
TEST_F(DeviceInstallerTest, ResumeNeedsTheStoredHeaderOfItsJob) {
  const auto header = dir_ / "state" / "device-job.header.json";
  const auto journal = dir_ / "state" / "device-job.json";
  for (const bool other_job : {false, true}) {
    SCOPED_TRACE(other_job ? "another job's header" : "no header");
    const std::string id = other_job ? "job-h2" : "job-h1";
    auto r = StartAndStop(Spec(id, "v101"), 5);
    ASSERT_TRUE(r) << r.error().ToString();
    ASSERT_EQ(r->state, JobState::kWriting);
    ASSERT_TRUE(fs::exists(header));
    EXPECT_LT(fs::file_size(journal), 2048U);
    if (other_job) {
      auto doc = nlohmann::json::parse(*ReadFile(header));
      doc["manifest_json"] = doc["manifest_json"].get<std::string>() + " ";
      ASSERT_TRUE(WriteFileAtomic(header, doc.dump()));
    } else {
      fs::remove(header);
    }
    auto resumed = MakeInstaller()->Resume();
    ASSERT_TRUE(resumed && *resumed) << (resumed ? "" : resumed.error().ToString());
    EXPECT_EQ((*resumed)->state, JobState::kFailed);
    ASSERT_TRUE((*resumed)->error);
    EXPECT_EQ((*resumed)->error->code(), Errc::kJournalCorrupt) << (*resumed)->error->ToString();
    EXPECT_NE((*resumed)->error->message().find("device-job.header.json"), std::string::npos);
    EXPECT_FALSE(fs::exists(header)) << "a finished job leaves no header behind";
    EXPECT_EQ(Reboot(), Slot::kA);
  }
}

// Over HTTPS from a server that drops the connection twice mid-image: the
// downloader resumes with Range requests and the install completes.
// A journal this agent cannot read: a newer agent's record (after a fallback
// to the older OS) is left untouched and the job fails saying so; a damaged
// record names the file and what is wrong with it.
TEST_F(DeviceInstallerTest, JournalOfANewerAgentIsLeftAloneAndNamed) {
  const auto path = dir_ / "state" / "device-job.json";
  const std::string unknown_state =
      R"({"id": "job-n", "state": "Teleporting", "source": "/x", "version": "9.0.0"})";
  const std::string newer_format = R"({"format": 7, "id": "job-n", "state": "Writing"})";
  for (const auto& text : {unknown_state, newer_format}) {
    ASSERT_TRUE(WriteFileAtomic(path, text));
    auto inst = MakeInstaller();
    auto r = inst->Start(Spec("after-fallback", "v101"));
    ASSERT_FALSE(r) << text;
    EXPECT_EQ(r.error().code(), Errc::kJournalNewerFormat) << r.error().ToString();
    EXPECT_NE(r.error().message().find(path.string()), std::string::npos) << r.error().message();
    EXPECT_NE(r.error().message().find("newer sag-agent"), std::string::npos)
        << r.error().message();
    auto resumed = inst->Resume();
    ASSERT_FALSE(resumed);
    EXPECT_EQ(resumed.error().code(), Errc::kJournalNewerFormat);
    EXPECT_EQ(*ReadFile(path), text) << "the journal was touched";
    EXPECT_EQ(SlotContent("slot-b", kSlotSize), std::string(kSlotSize, '\0')) << "slot B touched";
  }
  ASSERT_TRUE(WriteFileAtomic(path, R"({"id": "job-c", "state": "Writing"})"));
  auto r = MakeInstaller()->Start(Spec("after-damage", "v101"));
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code(), Errc::kJournalCorrupt) << r.error().ToString();
  EXPECT_NE(r.error().message().find(path.string()), std::string::npos) << r.error().message();
  EXPECT_NE(r.error().message().find("source"), std::string::npos) << r.error().message();
}

TEST_F(DeviceInstallerTest, DownloadsOverHttpsThroughDrops) {
  test::TestHttpServer server(*ReadFile(g_images->Image("v101")), g_images->Tls());
  test::Faults faults;
  faults.drop_after = 200'000;
  faults.drop_times = 2;
  server.SetFaults(faults);
  auto r = MakeInstaller()->Start(JobSpec{"url", server.Url("/v101.sagimg"), false, true});
  ASSERT_TRUE(r) << r.error().ToString();
  EXPECT_EQ(r->state, JobState::kRebooting) << (r->error ? r->error->ToString() : "");
  EXPECT_EQ(SlotContent("slot-b", g_images->payload_101().size()), g_images->payload_101());
  bool resumed_with_range = false;
  for (const auto& range : server.ranges()) resumed_with_range |= range.starts_with("bytes=");
  EXPECT_TRUE(resumed_with_range);
}

// A job stopped mid-write (SIGTERM, power) continues at its last checkpoint:
// the resumed download asks only for the rest of the image.
TEST_F(DeviceInstallerTest, ResumedDownloadAsksForTheRestOnly) {
  test::TestHttpServer server(*ReadFile(g_images->Image("v101")), g_images->Tls());
  auto r = StartAndStop(JobSpec{"url-r", server.Url("/v101.sagimg"), false, true}, 6);
  ASSERT_TRUE(r) << r.error().ToString();
  ASSERT_EQ(r->state, JobState::kWriting);
  ASSERT_GT(r->next_chunk, 0U);
  const auto before = server.ranges().size();
  auto resumed = MakeInstaller()->Resume();
  ASSERT_TRUE(resumed && *resumed) << (resumed ? "" : resumed.error().ToString());
  EXPECT_EQ((*resumed)->state, JobState::kRebooting);
  const auto ranges = server.ranges();
  ASSERT_GT(ranges.size(), before);
  EXPECT_TRUE(ranges[before].starts_with("bytes=")) << ranges[before];
  EXPECT_NE(ranges[before], "bytes=0-");
  EXPECT_EQ(SlotContent("slot-b", g_images->payload_101().size()), g_images->payload_101());
}

// A signed URL's query string is a credential: the job's error and the
// history of finished jobs show the URL without it.
TEST_F(DeviceInstallerTest, HistoryAndErrorsHideTheSignatureOfASignedUrl) {
  test::TestHttpServer server(*ReadFile(g_images->Image("v101")), g_images->Tls());
  test::Faults faults;
  faults.fail_status = 404;
  faults.fail_times = -1;
  server.SetFaults(faults);
  const std::string url = server.Url("/v101.sagimg?Expires=9&Signature=s3cr3t");
  auto r = MakeInstaller()->Start(JobSpec{"signed", url, false, true});
  ASSERT_TRUE(r) << r.error().ToString();
  EXPECT_EQ(r->state, JobState::kFailed);
  ASSERT_TRUE(r->error);
  EXPECT_EQ(r->error->message().find("s3cr3t"), std::string::npos) << r->error->message();
  auto history = ReadFile(dir_ / "state" / "device-jobs.json");
  ASSERT_TRUE(history) << history.error().ToString();
  EXPECT_EQ(history->find("s3cr3t"), std::string::npos) << *history;
  EXPECT_NE(history->find("/v101.sagimg?<redacted>"), std::string::npos) << *history;
}

// A cancel (common/job_cancel.h) before SetTrial ends the job Failed with
// Cancelled and nothing bootable changed; at and after it, it is refused
// and the job goes on to its trial boot.
TEST_F(DeviceInstallerTest, CancelWhileWritingEndsTheJobCancelled) {
  JobCancel cancel;
  cancel_in_ = JobState::kWriting;
  cancel_at_ = 3;
  auto r = StartCancellable("c-write", "v101", cancel);
  ExpectCancelled(r);
  EXPECT_LT(r->next_chunk, r->chunks_total) << "the write stopped between chunks";
  EXPECT_EQ(cancel.Request(), JobCancel::Answer::kAccepted) << "asking twice answers the same";
}

TEST_F(DeviceInstallerTest, CancelAtVerifyingEndsTheJobCancelled) {
  JobCancel cancel;
  cancel_in_ = JobState::kVerifying;
  auto r = StartCancellable("c-verify", "v101", cancel);
  ExpectCancelled(r);
  EXPECT_EQ(r->next_chunk, r->chunks_total);
}

// Past the last step boundary, as StepActivate starts: the cancel point's
// TryCross() is what keeps SetTrial from running.
TEST_F(DeviceInstallerTest, CancelRightBeforeSetTrialEndsTheJobCancelled) {
  JobCancel cancel;
  cancel_in_ = JobState::kCommitted;  // not by progress
  step_hook_ = [&](const std::string& step) {
    if (step == "Activating") cancel_answer_ = cancel.Request();
  };
  auto r = StartCancellable("c-activate", "v101", cancel);
  step_hook_ = nullptr;
  ExpectCancelled(r);
}

// A cancel arriving while SetTrial runs: the job crossed before it, so the
// cancel is refused and the trial boot is set whole.
TEST_F(DeviceInstallerTest, CancelDuringSetTrialIsRefused) {
  JobCancel cancel;
  cancel_in_ = JobState::kCommitted;  // not by progress
  HookedBoot hooked(boot_);
  hooked.before_set_trial = [&] { cancel_answer_ = cancel.Request(); };
  boot_override_ = &hooked;
  auto r = StartCancellable("c-during", "v101", cancel);
  boot_override_ = nullptr;
  ASSERT_TRUE(r) << r.error().ToString();
  EXPECT_EQ(cancel_answer_, JobCancel::Answer::kPastNoReturn);
  EXPECT_EQ(r->state, JobState::kRebooting) << (r->error ? r->error->ToString() : "");
  EXPECT_EQ(boot_.ReadState()->order.front(), Slot::kB);
  EXPECT_EQ(rebooter_.requests, 1);
}

TEST_F(DeviceInstallerTest, CancelAfterSetTrialIsRefusedAndTheTrialGoesOn) {
  JobCancel cancel;
  cancel_in_ = JobState::kRebooting;
  auto r = StartCancellable("c-late", "v101", cancel);
  ASSERT_TRUE(r) << r.error().ToString();
  EXPECT_EQ(cancel_answer_, JobCancel::Answer::kPastNoReturn);
  EXPECT_EQ(r->state, JobState::kRebooting);
  EXPECT_EQ(rebooter_.requests, 1);
  EXPECT_EQ(boot_.ReadState()->order.front(), Slot::kB);
  EXPECT_EQ(Reboot(), Slot::kB);
}

// A cancel racing the job across SetTrial, at every moment of a job: either
// accepted and the job Cancelled with A still first, or refused and the
// trial set. Never both, never neither.
TEST_F(DeviceInstallerTest, CancelRacingThePointOfNoReturnGetsOneAnswer) {
  int accepted = 0;
  int refused = 0;
  // The cancels are spread over about one job's duration (measured by the
  // first, uncancelled run; not asserted), so that some land on each side
  // of SetTrial and some near it.
  std::chrono::microseconds job_time{0};
  for (int i = -1; i < 12; ++i) {
    boot_.env() = platform::FakeBootControl().env();
    boot_.Boot();
    fs::remove_all(dir_ / "state");
    fs::create_directories(dir_ / "state");
    rebooter_.requests = 0;
    JobCancel cancel;
    std::atomic<bool> started{false};
    std::optional<JobCancel::Answer> answer;
    auto source = image::FileSource::Open(g_images->Image("v102"));
    ASSERT_TRUE(source);
    image::Trust trust;
    trust.root_ca = g_images->Root();
    image::ImageReader reader(**source, trust);
    auto header = reader.ReadHeader();
    ASSERT_TRUE(header);
    auto inst = MakeInstaller();
    std::thread canceller([&] {
      while (!started) std::this_thread::yield();
      if (i < 0) return;
      std::this_thread::sleep_for(job_time * (i + 6) / 12);
      answer = cancel.Request();
    });
    const auto t0 = std::chrono::steady_clock::now();
    started = true;
    auto r = inst->Start(Spec("race-" + std::to_string(i), "v102"), reader, **header, &cancel);
    const auto took = std::chrono::steady_clock::now() - t0;
    canceller.join();
    ASSERT_TRUE(r) << r.error().ToString();
    if (i < 0) {
      ASSERT_EQ(r->state, JobState::kRebooting);
      job_time = std::chrono::duration_cast<std::chrono::microseconds>(took);
      continue;
    }
    ASSERT_TRUE(answer);
    const auto st = boot_.ReadState();
    ASSERT_TRUE(st);
    if (*answer == JobCancel::Answer::kAccepted) {
      ++accepted;
      EXPECT_EQ(r->state, JobState::kFailed) << i;
      ASSERT_TRUE(r->error);
      EXPECT_EQ(r->error->code(), Errc::kCancelled) << i;
      EXPECT_EQ(st->order.front(), Slot::kA) << i;
      EXPECT_EQ(rebooter_.requests, 0) << i;
    } else {
      ++refused;
      EXPECT_EQ(*answer, JobCancel::Answer::kPastNoReturn) << i;
      EXPECT_EQ(r->state, JobState::kRebooting) << i;
      EXPECT_EQ(st->order.front(), Slot::kB) << i;
      EXPECT_EQ(rebooter_.requests, 1) << i;
    }
  }
  // Not asserted (timing): how the race fell.
  std::printf("cancel race: %d accepted, %d refused (one job: %lld us)\n", accepted, refused,
              static_cast<long long>(job_time.count()));
}

TEST_F(DeviceInstallerTest, MissingSourceIsRefused) {
  auto r = MakeInstaller()->Start(JobSpec{"nofile", (dir_ / "nope.sagimg").string(), false, true});
  ASSERT_TRUE(r);
  EXPECT_EQ(r->state, JobState::kFailed);
  EXPECT_NE(r->error->message().find("nope.sagimg"), std::string::npos);
}

}  // namespace
}  // namespace sag::firmware
