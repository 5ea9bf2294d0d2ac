// The device gateway's state: registered devices, their reported state and
// online presence, and the jobs sent to them. One JSON file, replaced
// atomically (common/atomic_file.h) by Save(): a power cut or SIGKILL leaves
// the previous or the new state, never a torn one. Loaded with a checked
// decoder: a damaged file is kStoreCorrupt, never an exception.
//
// The store is data and persistence only; what the protocol means (which
// report may change what) is decided by the gateway (cloud/gateway.h). Its
// records are free of any backend's behaviour, so a database can replace the
// file later behind the same calls.
//
// Not thread-safe: used from the gateway's io_context thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/error.h"
#include "common/proto/messages.h"

namespace sag::cloud {

// "2026-12-02T05:30:00Z"
std::string UtcTime(std::chrono::system_clock::time_point t);
// The inverse of UtcTime; nullopt for anything else.
std::optional<std::chrono::system_clock::time_point> ParseUtc(std::string_view text);
inline std::string UtcNow() { return UtcTime(std::chrono::system_clock::now()); }

// The cloud's view of a job. Pending -> Offered -> Accepted -> one of
// Committed | RolledBack | Failed; Offered -> Rejected (job.ack refused);
// TimedOut when the device went silent (a later result still counts).
enum class JobState {
  kPending,
  kOffered,
  kAccepted,
  kCommitted,
  kRolledBack,
  kFailed,
  kRejected,
  kTimedOut
};
std::string_view JobStateName(JobState state);
std::optional<JobState> ParseJobState(std::string_view name);
// Committed, RolledBack, Failed, Rejected: the device answered for good.
bool IsFinal(JobState state);

struct DeviceRecord {
  std::string serial;  // the certificate's subject CN; the key
  std::string smartag_id;
  std::string model;
  // Reported by the device (hello, state, result).
  std::string agent_version;
  proto::Versions versions;
  proto::BootInfo boot;
  std::string agent_state;
  // Presence, derived by the gateway from the channel and heartbeats.
  bool online = false;
  std::string last_seen;  // UTC of the last message; "" = never
  // Reports recorded: every report of `epoch` up to `acked_seq`. The device's
  // state above reflects its reports up to `snapshot_seq` (the last hello's
  // outbox.last_seq, or a newer state/result report).
  std::string epoch;
  std::uint64_t acked_seq = 0;
  std::uint64_t snapshot_seq = 0;
};

struct JobRecord {
  // As pushed (the `job` message).
  proto::Job spec;
  std::string serial;
  // Progress and outcome.
  JobState state = JobState::kPending;
  std::string device_state;  // the device's own name for where the job is
  int percent = 0;
  std::string outcome;  // "" | committed | rolled_back | failed
  std::optional<proto::ErrorInfo> error;
  bool cancel_requested = false;
  std::string created;
  std::string updated;    // the last change, or report about the job
  std::string timed_out;  // when it became TimedOut; kept if a late result arrives
  // The report position (device epoch, seq) that last set the state: an
  // older report resent later cannot overwrite a newer outcome.
  std::string stamp_epoch;
  std::uint64_t stamp_seq = 0;
};

// One report as recorded, for operators and tests (bounded per device).
struct ReportRecord {
  std::string serial;
  std::string epoch;
  std::uint64_t seq = 0;
  std::string type;  // "progress" | "result" | "state"
  std::string job_id;
  std::string detail;  // stage and percent, or outcome
  std::string received;
};

class Store {
 public:
  static constexpr std::size_t kMaxReportsKept = 4096;

  // A store persisted at `path`; Load() reads it if it exists.
  explicit Store(std::filesystem::path path);

  // Reads the file (a missing file is an empty store). kStoreCorrupt with
  // the field when it does not decode.
  Status Load();
  // Replaces the file atomically with the current state.
  [[nodiscard]] Status Save() const;

  // A device may connect once registered. kInvalidArgument for an empty
  // serial; registering again updates smartag_id and model.
  Status RegisterDevice(const std::string& serial, const std::string& smartag_id,
                        const std::string& model);
  [[nodiscard]] const DeviceRecord* FindDevice(std::string_view serial) const;
  DeviceRecord* MutableDevice(std::string_view serial);
  [[nodiscard]] std::vector<const DeviceRecord*> Devices() const;

  // A new job (state Pending). kUnknownDevice, kJobExists.
  Status AddJob(JobRecord job);
  [[nodiscard]] const JobRecord* FindJob(std::string_view job_id) const;
  JobRecord* MutableJob(std::string_view job_id);
  // The jobs of one device, oldest first.
  [[nodiscard]] std::vector<JobRecord*> JobsOf(std::string_view serial);
  // Every job, oldest first.
  [[nodiscard]] std::vector<JobRecord*> Jobs();

  void AddReport(ReportRecord report);
  [[nodiscard]] const std::vector<ReportRecord>& Reports() const { return reports_; }

  [[nodiscard]] const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
  std::map<std::string, DeviceRecord, std::less<>> devices_;
  std::map<std::string, JobRecord, std::less<>> jobs_;
  std::vector<std::string> job_order_;  // ids in creation order
  std::vector<ReportRecord> reports_;   // oldest first, at most kMaxReportsKept
};

}  // namespace sag::cloud
