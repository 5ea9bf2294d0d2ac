// The Device OS job: its states, the one table of transitions between them,
// and its durable record.
//
//   Pending ──SlotPrepared──▶ Writing ──Written──▶ Verifying ──Verified──▶ Activating
//   Activating ──TrialSet──▶ Rebooting ──BootedNew──▶ HealthChecking ──Healthy──▶ Committing
//   Committing ──MarkedGood──▶ Committed
//   HealthChecking ──Unhealthy──▶ RollingBack ──BootedOld──▶ RolledBack
//   Rebooting | HealthChecking ──BootedOld──▶ RolledBack      (the bootloader fell back)
//   Pending | Writing | Verifying | Activating ──Failed──▶ Failed
//
// Every transition is written to the journal before the step it leads to is
// taken, so after a power cut the record names the step to redo; each step is
// idempotent. Until Activating completes, the target slot is marked not
// bootable and the running slot stays first: nothing before that point can
// change what boots.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/error.h"

namespace sag::firmware {

enum class JobState {
  kPending,
  kWriting,
  kVerifying,
  kActivating,
  kRebooting,
  kHealthChecking,
  kCommitting,
  kRollingBack,
  kCommitted,
  kRolledBack,
  kFailed,
};

enum class JobEvent {
  kSlotPrepared,
  kWritten,
  kVerified,
  kTrialSet,
  kBootedNew,
  kBootedOld,
  kHealthy,
  kUnhealthy,
  kMarkedGood,
  kFailed,
};

std::string_view JobStateName(JobState state);
std::string_view JobEventName(JobEvent event);
Expected<JobState> ParseJobState(std::string_view name);
[[nodiscard]] bool IsTerminal(JobState state);

// The transition table's lookup: the next state, or kInternal when the event
// is not allowed in `from` (a bug, never a runtime condition).
Expected<JobState> Transition(JobState from, JobEvent event);

// What a delta install (docs/delta.md) planned and fetched, for status and
// tests. Byte counts are of payload.zst ranges (the reuse index included).
struct DeltaRecord {
  std::uint64_t planned_bytes = 0;    // index + requests, as planned by the last run
  std::uint64_t fetched_bytes = 0;    // fetched so far, over every run of the job
  std::uint64_t requests = 0;         // range requests made, over every run
  std::uint64_t frames_local = 0;     // last plan: frames assembled from local blocks
  std::uint64_t frames_download = 0;  // last plan: frames fetched
  std::uint64_t frames_rejected = 0;  // last plan: located but failed their signed SHA-256
  bool full_fallback = false;         // the server ignored Range; installed in full instead
};

// Everything the job needs to resume after a power cut.
struct JobRecord {
  std::string id;
  JobState state = JobState::kPending;
  std::string source;        // file path or URL of the image
  std::string version;       // the image's version
  std::string from_version;  // what ran when the job started
  std::string target_slot;   // "A" | "B"
  std::string from_slot;
  bool allow_downgrade = false;
  bool reboot = true;            // reboot as soon as the trial is set
  std::uint64_t next_chunk = 0;  // first chunk not yet durably in the slot
  // First chunk not yet read back from the slot and checked; at most
  // next_chunk. Missing in a record = 0 (everything is read back again).
  std::uint64_t verified_chunk = 0;
  // The chunks below verified_chunk were read back from the medium after a
  // sync (boot.read_back: medium), not from the page cache: the read-back
  // before the trial boot need not read them again. Missing = false.
  bool verified_medium = false;
  std::uint64_t chunks_total = 0;
  std::uint64_t payload_size = 0;
  std::string payload_sha256;
  // SHA-256 of the signed manifest: names the header stored beside the
  // journal (device-job.header.json), which is verified again on resume.
  std::string header_sha256;
  std::uint64_t payload_offset = 0;
  std::optional<DeltaRecord> delta;  // set once a delta install began
  std::string boot_id;               // of the boot that requested the reboot
  std::optional<Error> error;        // why it failed or rolled back
  std::string started_at;
  std::string updated_at;
  std::vector<std::string> history;  // "time state" lines, one per transition

  [[nodiscard]] nlohmann::json ToJson() const;
  static Expected<JobRecord> FromJson(const nlohmann::json& j);
};

std::string NowUtc();  // 2026-11-27T20:00:00Z

}  // namespace sag::firmware
