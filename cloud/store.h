// The state of sag-cloud behind one interface: registered devices, what they
// reported and whether their channel is up, the jobs sent to them, every
// report recorded, and the RPC API's signature nonces.
//
// The interface is free of any one database's behaviour: every write is one
// StoreWrite applied in one transaction (all of it or nothing), the keys that
// make a write idempotent are part of the contract (a job id once, a report
// once per (serial, epoch, seq), a nonce once per key), and reads return
// copies. The embedded SQLite backend (cloud/sqlite_store.h) is the default;
// a PostgreSQL backend shared by several gateway nodes can implement the same
// calls (the durability levels map to synchronous_commit on/off).
//
// The store is data and persistence only; what the protocol means (which
// report may change what) is decided by the gateway (cloud/gateway.h).
//
// Reads return std::nullopt / empty for what is not there. A read that fails
// in the database (I/O error, damaged file) is logged and also answers
// "not there": callers then refuse the work (a device is not let in, a job is
// not found) and nothing is written from it.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "cloud/rpc/nonce_store.h"
#include "common/error.h"
#include "common/proto/messages.h"

namespace sag::cloud {

// "2026-12-02T05:30:00Z"
std::string UtcTime(std::chrono::system_clock::time_point t);
// The inverse of UtcTime; nullopt for anything else.
std::optional<std::chrono::system_clock::time_point> ParseUtc(std::string_view text);
inline std::string UtcNow() { return UtcTime(std::chrono::system_clock::now()); }

// The cloud's view of a job. Pending -> Offered -> Accepted -> one of
// Committed | RolledBack | Failed | Cancelled; Offered -> Rejected (job.ack
// refused); TimedOut when the device went silent (a later result still
// counts). Cancelled: the device ended it failed with `Cancelled` after an
// accepted cancel, or it was cancelled before it left the cloud (Pending).
enum class JobState {
  kPending,
  kOffered,
  kAccepted,
  kCommitted,
  kRolledBack,
  kFailed,
  kRejected,
  kTimedOut,
  kCancelled,
};
std::string_view JobStateName(JobState state);
std::optional<JobState> ParseJobState(std::string_view name);
// Committed, RolledBack, Failed, Rejected, Cancelled: answered for good.
bool IsFinal(JobState state);

// What the configuration says about a box: it may connect once registered.
struct DeviceIdentity {
  std::string serial;  // the certificate's subject CN; the key
  std::string smartag_id;
  std::string model;
};

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
  // The device's cancel.ack: "" (none yet), "accepted" or "refused", and a
  // refusal's reason ("CancelTooLate: ...").
  std::string cancel_answer;
  std::string cancel_reason;
  std::string created;
  std::string updated;    // the last change, or report about the job
  std::string timed_out;  // when it became TimedOut; kept if a late result arrives
  // The report position (device epoch, seq) that last set the state: an
  // older report resent later cannot overwrite a newer outcome.
  std::string stamp_epoch;
  std::uint64_t stamp_seq = 0;
};

// One report as recorded, for operators and tests.
struct ReportRecord {
  std::string serial;
  std::string epoch;
  std::uint64_t seq = 0;
  std::string type;  // "progress" | "result" | "state"
  std::string job_id;
  std::string detail;  // stage and percent, or outcome
  std::string received;
};

// How durable a write must be when its call returns.
enum class Durability {
  // On stable storage: survives a power cut (an acknowledged report, a new
  // job, a device's answer to a job).
  kDurable,
  // Survives a crash or SIGKILL of sag-cloud, but a power cut may lose the
  // last such writes (never tearing them, never losing a kDurable write):
  // state the device sends again anyway (hello), presence, nonces.
  kRelaxed,
};

// One transaction: all of it is written, or none of it.
struct StoreWrite {
  std::optional<DeviceRecord> device;  // replaces the registered device's row
  std::vector<JobRecord> jobs;         // replace existing jobs' rows
  // Inserted, once per (serial, epoch, seq): a report already there makes
  // the whole write kDuplicateReport and changes nothing.
  std::optional<ReportRecord> report;
  Durability durability = Durability::kDurable;
};

enum class WriteResult { kWritten, kDuplicateReport };

class Store : public rpc::NonceStore {
 public:
  ~Store() override = default;

  // --- devices ---------------------------------------------------------
  // Registers the boxes (new ones, or new smartag_id/model for known ones;
  // what they reported is kept), in one transaction. kInvalidArgument for
  // an empty or overlong serial.
  virtual Status RegisterDevices(const std::vector<DeviceIdentity>& devices) = 0;
  Status RegisterDevice(const std::string& serial, const std::string& smartag_id,
                        const std::string& model) {
    return RegisterDevices({{serial, smartag_id, model}});
  }
  virtual std::optional<DeviceRecord> FindDevice(std::string_view serial) = 0;
  // Every registered device, by serial.
  virtual std::vector<DeviceRecord> Devices() = 0;
  // Marks these devices offline (kRelaxed), in one transaction.
  virtual Status MarkOffline(const std::vector<std::string>& serials) = 0;
  // Records when devices last spoke ((serial, UTC) pairs; kRelaxed), in one
  // transaction: the gateway batches heartbeats instead of a write each.
  virtual Status TouchDevices(const std::vector<std::pair<std::string, std::string>>& seen) = 0;

  // --- jobs ------------------------------------------------------------
  // A new job, Pending or Offered (kDurable). kUnknownDevice, kJobExists,
  // kInvalidArgument (an empty or overlong id, another state).
  virtual Status AddJob(JobRecord job) = 0;
  virtual std::optional<JobRecord> FindJob(std::string_view job_id) = 0;
  // The jobs of one device, oldest first.
  virtual std::vector<JobRecord> JobsOf(std::string_view serial) = 0;
  // The jobs neither final nor TimedOut, oldest first.
  virtual std::vector<JobRecord> OpenJobs() = 0;
  // Every job, oldest first.
  virtual std::vector<JobRecord> Jobs() = 0;

  // --- writes ----------------------------------------------------------
  // kUnknownDevice / kJobUnknown for a row that does not exist; database
  // errors (kIo, kNoSpace, kStoreCorrupt). On any error nothing was written.
  virtual Expected<WriteResult> Write(const StoreWrite& write) = 0;

  // --- reports ---------------------------------------------------------
  // The reports recorded, oldest first; of one device when `serial` is not
  // empty. Every kReportPruneEvery-th report of a device (by seq) prunes
  // its reports to the newest kMaxReportsPerDevice, so between two prunes a
  // device holds up to kMaxReportsPerDevice + kReportPruneEvery - 1.
  static constexpr std::size_t kMaxReportsPerDevice = 4096;
  static constexpr std::uint64_t kReportPruneEvery = 256;
  virtual std::vector<ReportRecord> Reports(std::string_view serial = {}) = 0;

  // --- nonces (rpc::NonceStore) -----------------------------------------
  // Remember(): kRelaxed; expired nonces are pruned as new ones come.
};

// The whole store as one JSON document {format, devices, jobs, reports} (the
// shape of the JSON store sag-cloud kept before SQLite): for operators
// (`sag-cloud store dump`) and tests.
std::string DumpJson(Store& store);

}  // namespace sag::cloud
