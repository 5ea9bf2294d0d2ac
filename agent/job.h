// One job model for both VersionTypes, as the daemon, its job sources and
// its reporters see a job. The installers keep their own state machines
// (firmware/job.h, dpi/installer.h); a job's phase is where their states
// lead, in words that mean the same for a Device and a DPI job:
//
//   accepted   recorded under its id; nothing touched yet
//   running    an installer works on it (download, write, stage, reload, ...)
//   rebooting  a Device job waits for the trial boot (reboot requested or
//              pending), its health check and commit or fallback
//   committed  done: the new version runs (Device) or is loaded (DPI)
//   rolled_back  the previous version runs again; the error says why
//   failed     refused or failed before anything changed what runs
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>

#include "common/error.h"

namespace sag::agent {

enum class JobType { kUnknown, kDevice, kDpi };
enum class JobPhase { kAccepted, kRunning, kRebooting, kCommitted, kRolledBack, kFailed };

std::string_view JobTypeName(JobType type);  // "Unknown" | "Device" | "Dpi"
std::optional<JobType> ParseJobType(std::string_view name);
std::string_view JobPhaseName(JobPhase phase);  // "accepted", ... "failed"
std::optional<JobPhase> ParseJobPhase(std::string_view name);
[[nodiscard]] bool IsFinal(JobPhase phase);

// What a job asks for, from any source (inbox, channel): the one job model
// of both VersionTypes. What the spec says about the image (type, version)
// must agree with the image's signed manifest, or the job is refused with
// kSpecMismatch before anything is written; empty fields take what the
// manifest says.
struct JobSpec {
  std::string id;
  JobType type = JobType::kUnknown;  // kUnknown: the manifest's type decides
  std::string version;               // "": the manifest's version
  std::string source;                // absolute file path or http(s) URL
  std::uint64_t size = 0;            // of the image file in bytes; 0 = unknown
                                     // (a local file of another size: kSpecMismatch)
  std::string sha256;                // of the image file, 64 lower-case hex; "" = unknown
  bool allow_downgrade = false;
  bool reboot = true;    // a Device job reboots into the trial as soon as it is set
  std::string deadline;  // UTC, 2026-12-02T08:00:00Z; "" = none. A job not
                         // started by then is refused (kSpecMismatch).
};

// A job id: 1 to 128 of [A-Za-z0-9._:-], not starting with '.' (it names
// files: an inbox request, its reply).
Status CheckJobId(std::string_view id);

// The first field of `spec` whose value breaks its format (id, source,
// sha256, deadline), as {field, problem}; nullopt when all are well formed.
// Sources decode a spec with their own decoder and report this as their
// schema error; Dispatcher::Submit checks it again (kBadRequest).
struct SpecProblem {
  std::string field;
  std::string problem;
};
std::optional<SpecProblem> CheckJobSpec(const JobSpec& spec);

// Whether `deadline` (2026-12-02T08:00:00Z) is before `now` (same format);
// both are compared as text, which orders this fixed format correctly.
[[nodiscard]] bool DeadlinePassed(std::string_view deadline, std::string_view now);

// What became of a job: what the registry keeps and the reply says.
struct JobOutcome {
  std::string id;
  JobType type = JobType::kUnknown;
  JobPhase phase = JobPhase::kAccepted;
  std::string state;  // the installer's own state name ("Writing", "Swapping", ...)
  std::optional<Error> error;
  std::string from;  // the version that ran when the job started
  std::string to;    // the version the job installs
  std::string accepted_at;
  std::string updated_at;

  [[nodiscard]] nlohmann::json ToJson() const;
  // Every field type-checked; `what` names the document in messages.
  static Expected<JobOutcome> FromJson(const nlohmann::json& j, std::string_view what);
};

}  // namespace sag::agent
