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

// What a job asks for, from any source (inbox, channel).
struct JobSpec {
  std::string id;
  std::string source;  // absolute file path or http(s) URL
  bool allow_downgrade = false;
  bool reboot = true;
};

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
