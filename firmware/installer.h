// Device OS installs: stream a signed image into the inactive A/B slot, read
// it back, set a one-time trial boot, reboot, check health, then commit or
// roll back. One job at a time, durable in a journal (see job.h).
#pragma once

#include <atomic>
#include <chrono>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "common/image/delta.h"
#include "common/image/image.h"
#include "common/job_cancel.h"
#include "common/journal.h"
#include "common/net/downloader.h"
#include "firmware/job.h"
#include "platform/boot_control.h"
#include "platform/rebooter.h"
#include "platform/slot_device.h"
#include "platform/system_info.h"

namespace sag::firmware {

struct HealthCheckSpec {
  std::string name;
  std::vector<std::string> command;
  std::chrono::milliseconds timeout{30000};
};

struct InstallerOptions {
  std::filesystem::path state_dir;  // journal, slot records
  std::string model;                // this appliance's hardware model
  image::Trust trust;               // pinned root for image signatures
  image::Limits limits;
  net::DownloadOptions download;
  int trial_attempts = 3;
  std::vector<HealthCheckSpec> health_checks;
  // Extra health condition, after the commands (the control channel came up
  // and the cloud answered hello: agent/hello_gate.h); null = none. A
  // kCancelled answer (the agent stops) is no verdict: the job stays
  // HealthChecking and is checked again at the next start.
  std::function<Status()> cloud_check;
  // The slot is synced and the journal records progress every
  // checkpoint_bytes, one checkpoint at a time (the writer does not wait for
  // one, it skips to the next chunk while one runs), and at most once per
  // checkpoint_interval (0 = no floor), for storage where flushes are dear.
  // A power cut loses the work since the last checkpoint that finished.
  std::uint64_t checkpoint_bytes = 32U << 20U;
  std::chrono::milliseconds checkpoint_interval{0};
  std::filesystem::path os_release{"/etc/os-release"};  // VERSION_ID when no slot record
  // Before the trial boot is set, the whole slot is read back once more
  // from the medium (SlotDevice::ReadMediumAt, O_DIRECT) after the final
  // sync and checked against the manifest, so that a device that lost or
  // garbled what the page cache still holds is caught. kCache: only the
  // read-back while writing (through the page cache).
  enum class ReadBack { kMedium, kCache };
  ReadBack read_back = ReadBack::kMedium;
  // Called before a job enters a step that does work a crash can interrupt
  // and that the job repeats when resumed, named by the state it runs in
  // (Pending, Writing, Verifying, Activating, HealthChecking): the daemon's
  // loop guard counts these entries (agent/step_guard.h). Not called for
  // Rebooting and RollingBack, which end in a reboot on purpose, nor for
  // Committing. Null = none.
  std::function<void(const std::string& job, std::string_view step)> on_step;
  // Delta installs (docs/delta.md): a format 2 image fetched from a URL is
  // installed from local blocks plus Range requests for the rest.
  struct Delta {
    bool enabled = true;
    // A server that answers a Range request with the whole file (200):
    // false (the default) fails the job with kNetRangeUnsupported, naming
    // the setting; true installs the whole image instead (config
    // download.delta_fallback: full). docs/delta.md says why it is off.
    bool full_fallback = false;
    // Local frames between two downloads bridged by one request (bytes;
    // image::DeltaOptions::max_gap says why 4 KiB).
    std::uint64_t max_gap = 4U << 10U;
    // Range requests in flight at once (config download.delta_parallel;
    // 1 = one after another), each buffering at most 256 KiB ahead of the
    // writer (docs/delta.md, "Requests in flight").
    std::size_t parallel = 3;
  };
  Delta delta;
};

struct JobSpec {
  std::string id;
  std::string source;  // file path or http(s) URL
  bool allow_downgrade = false;
  bool reboot = true;  // reboot as soon as the trial boot is set
};

// Progress of long steps, for logs, status.json and the cloud.
struct Progress {
  JobState state;
  std::uint64_t done = 0;
  std::uint64_t total = 0;
};
using ProgressFn = std::function<void(const JobRecord&, const Progress&)>;

struct Platform {
  platform::BootControl* boot = nullptr;
  std::map<platform::Slot, platform::SlotDevice*> slots;
  platform::Rebooter* rebooter = nullptr;
  platform::SystemInfo* system = nullptr;
};

class DeviceInstaller {
 public:
  DeviceInstaller(InstallerOptions options, Platform platform, ProgressFn progress = {});

  // Starts a job and runs it as far as it goes in this boot: to Rebooting
  // (reboot requested) or to Failed. A job id seen before is answered with
  // its recorded state and not run again; another job in progress is
  // kJobConflict.
  Expected<JobRecord> Start(const JobSpec& spec);

  // As Start(), for an image whose header the caller already read and
  // verified with `reader` (`header` is what its ReadHeader() returned): the
  // payload is streamed from that same reader, positioned after the header,
  // so the image is opened once per job. A write resumed after a cut opens
  // spec.source again at the chunk it stopped at.
  //
  // `cancel` (may be null; must outlive the call): the job's cancel point
  // (common/job_cancel.h), checked between the steps and between chunks of
  // the write and the read-back; its point of no return is SetTrial. A
  // cancel accepted before it ends the job Failed with kCancelled (the
  // target slot stays not bootable, the running slot first); after it the
  // cancel is refused and the job goes on.
  Expected<JobRecord> Start(const JobSpec& spec, image::ImageReader& reader,
                            const image::VerifiedHeader& header, JobCancel* cancel = nullptr);

  // The loop guard: ends the unfinished job `id` with `error` instead of
  // resuming it. Before the trial boot is set the job fails (the target slot
  // stays unbootable, the running one committed); on the trial boot
  // (HealthChecking) it is unhealthy and rolls back (a reboot is requested).
  // The journal records it as usual. kJobUnknown when the journal holds no
  // unfinished job `id`; kInvalidArgument in a state that cannot be ended
  // this way (Rebooting, Committing, RollingBack: the next boot decides).
  Expected<JobRecord> Abandon(const std::string& id, Error error);

  // At agent start: continues whatever job the journal holds (a download cut
  // by power loss, a trial boot to check, a commit to finish). Returns the
  // record as it stands afterwards, or nullopt when there is no job.
  Expected<std::optional<JobRecord>> Resume();

  // The version of the running OS: the record of the booted slot, else
  // VERSION_ID of os_release.
  Expected<std::string> CurrentVersion();

  // What each slot holds, for status.json and the channel's hello. version:
  // what its record says it holds (slots.json, written at each commit; the
  // booted slot without a record: CurrentVersion()), or, for the target of
  // the unfinished job, the version being installed; "" when unknown.
  // state (docs/status.md):
  //   writing  the unfinished job writes it (Pending .. Activating)
  //   trial    the job's trial boot is set or running (Rebooting,
  //            HealthChecking)
  //   bad      no boot tries left (unbootable), or being rolled back from
  //   good     bootable otherwise
  //   unknown  the boot environment cannot be read
  // Errors: a damaged journal or slot record (kJournalCorrupt).
  struct SlotView {
    std::string version;
    std::string state;
  };
  Expected<std::map<platform::Slot, SlotView>> Slots();

  // Manual control (sag-agent mark-good / rollback).
  Status MarkGood();
  Status Rollback();  // make the other slot boot next, then reboot

  // The recorded job `id` (the journal's or one in the history), if any:
  // a job offered again is answered with it. kJournalCorrupt when a state
  // file is damaged.
  Expected<std::optional<JobRecord>> Lookup(const std::string& id);

  // The last job (current or finished), if any.
  Expected<std::optional<JobRecord>> LastJob();

  void Cancel() { cancel_ = true; }

 private:
  Expected<JobRecord> Run(JobRecord record);
  void EnterStep(const JobRecord& record);
  // A job refused before its header was verified, remembered under its id.
  Expected<JobRecord> StartRefused(const JobSpec& spec, Error error);
  static JobRecord NewRecord(const JobSpec& spec);
  Status Save(JobRecord& record, JobEvent event);
  Status SaveProgress(JobRecord& record);
  Status Fail(JobRecord& record, Error error);
  Status StepPrepare(JobRecord& record);
  Status StepWrite(JobRecord& record);
  // The delta install of a format 2 image (delta_install.cpp): writes the
  // slot from local blocks and Range requests, checkpointed like StepWrite.
  // False: the server ignores Range and a full download is configured
  // (StepWrite goes on with it).
  Expected<bool> StepWriteDelta(JobRecord& record);
  [[nodiscard]] bool UsesDelta(const std::string& source, const image::Manifest& manifest) const;
  [[nodiscard]] std::filesystem::path SlotIndexPath(platform::Slot slot) const;
  Status KeepSlotIndex(platform::Slot slot, const Digest& payload_sha256,
                       std::span<const image::BlockHash> hashes, std::uint64_t hash_bytes);
  struct KeptIndex {
    std::vector<image::BlockHash> hashes;
    std::uint64_t hash_bytes = 0;  // meaningful bytes of each (8 or format 3's 5)
  };
  std::optional<KeptIndex> LoadSlotIndex(platform::Slot slot);
  Status StepVerify(JobRecord& record);
  Status StepActivate(JobRecord& record);
  Status StepReboot(JobRecord& record);
  Status StepAfterBoot(JobRecord& record);
  Status StepHealth(JobRecord& record);
  Status StepCommit(JobRecord& record);
  Status StepRollingBack(JobRecord& record);
  Status CheckPolicy(const JobSpec& spec, const image::VerifiedHeader& header,
                     platform::Slot target);
  Status RunHealthChecks(const JobRecord& record);
  Status RecordSlot(platform::Slot slot, const JobRecord& record);
  Expected<std::optional<JobRecord>> FindInHistory(const std::string& id);
  [[nodiscard]] std::filesystem::path HistoryPath() const;
  [[nodiscard]] Expected<nlohmann::json> LoadHistory() const;
  Status ArchiveFinished(const JobRecord& record);
  [[nodiscard]] std::filesystem::path HeaderPath() const;
  Status SaveHeader(const image::VerifiedHeader& header);
  Expected<image::VerifiedHeader> LoadHeader(const JobRecord& record);
  void Report(const JobRecord& record, std::uint64_t done, std::uint64_t total);
  // Whether the running step should stop: the daemon stops, or the job's
  // cancel was accepted.
  [[nodiscard]] bool Stopping() const;
  // kCancelled for a job whose cancel was accepted in `record`'s state.
  static Error CancelledError(const JobRecord& record);

  InstallerOptions options_;
  Platform platform_;
  ProgressFn progress_;
  Journal journal_;
  std::atomic<bool> cancel_{false};
  // The reader Start() verified the header with: StepWrite streams the
  // payload from it instead of opening the source again. Only during Start.
  image::ImageReader* fresh_reader_ = nullptr;
  // The running job's cancel point (only during Start; null otherwise).
  JobCancel* job_cancel_ = nullptr;
};

}  // namespace sag::firmware
