// DPI signature database upgrades: verify, stage, validate, swap atomically,
// reload, confirm, or roll back. The flow and its crash recovery are
// documented in docs/dpi.md.
//
// The job's lifecycle is the table kTransitions in installer.cpp: every state,
// every way out of it, and what Resume() does when the agent died in it. The
// job record (common/journal.h) is written at every transition, before the
// step that the new state guards, so SIGKILL or power loss at any instant
// leaves a record from which Resume() reaches a state with exactly one
// complete database active and the engine told to load it.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/error.h"
#include "common/job_cancel.h"
#include "common/journal.h"
#include "dpi/extract.h"
#include "dpi/payload_source.h"
#include "dpi/store.h"
#include "platform/system_info.h"

namespace sag::dpi {

enum class JobState {
  // type, model, version policy and free space are being checked. (Named
  // "Verifying" before: that word is the Device job's read-back of the
  // written slot; the old name is still read from journals.)
  kChecking,
  kStaging,      // the payload is being extracted into staging/<version>
  kValidating,   // the validate hook runs against the staged directory
  kSwapping,     // staging -> versions/<version>, then `current` is switched
  kReloading,    // the reload hook runs: the engine loads `current`
  kConfirming,   // the confirm hook must print the new version
  kCommitted,    // terminal: the new version is active and confirmed
  kRollingBack,  // `current` goes back to the previous version, reload, confirm
  kRolledBack,   // terminal: the previous version is active and confirmed again
  kFailed,       // terminal: refused or interrupted before the swap (active db
                 // untouched), or a rollback that itself failed
};

std::string_view JobStateName(JobState state);
// Also reads the names older agents wrote ("Verifying" = Checking).
std::optional<JobState> ParseJobState(std::string_view name);
bool IsTerminal(JobState state);
// Whether the table allows `from` -> `to` (exposed for tests).
bool TransitionAllowed(JobState from, JobState to);

// A hook: argv; the installer appends DIR and VERSION (see docs/dpi.md).
// An empty command means "not configured".
struct Hook {
  std::vector<std::string> command;
  std::chrono::milliseconds timeout{30000};
};

struct Hooks {
  Hook validate;  // optional
  Hook reload;    // required
  Hook confirm;   // required: its first output line is the loaded version
};

struct Options {
  // This appliance's hardware model: a package whose `compatible` list does
  // not name it is refused (kIncompatibleModel) before anything is staged.
  std::string model;
  std::filesystem::path store{"/var/lib/sag-agent/dpi"};
  int keep = 2;  // versions kept on disk, current included (at least 1)
  Hooks hooks;
  ExtractLimits limits;
  std::filesystem::path journal{"/var/lib/sag-agent/dpi-job.json"};
  // Free space required before extraction: payload size times this margin.
  double space_margin = 2.0;
  // Finished jobs remembered (ids and outcomes) so a re-sent job is answered.
  std::size_t history = 64;
  // Called as a job enters a state whose step does work (every state but
  // the terminal ones; RollingBack again when a resumed rollback runs it
  // once more), after the state is recorded: the daemon's loop guard counts
  // these entries (agent/step_guard.h). Null = none.
  std::function<void(const std::string& job, std::string_view step)> on_step;
};

struct JobSpec {
  std::string job_id;
  std::string version;  // the version the job asks for; empty = take the package's
  bool allow_downgrade = false;
};

struct JobResult {
  std::string job_id;
  JobState state = JobState::kFailed;
  std::string version;                  // the version the job installs
  std::optional<std::string> previous;  // the version active when the job started
  std::optional<std::string> active;    // the version active now
  // Set when the job did not commit: its code tells the stage
  // (kDpiValidateFailed, kDpiReloadFailed, kDpiConfirmMismatch, kArchive*,
  // kVersionTooOld, kWrongType, kNoSpace, kDpiInterrupted, ...).
  std::optional<Error> error;
  std::optional<JobState> failed_in;  // the state in which the job failed
  bool replayed = false;              // answered from the journal, not run now

  [[nodiscard]] bool ok() const { return state == JobState::kCommitted; }
};

// Not thread-safe; one installer per store and journal, used by one thread.
class DpiInstaller {
 public:
  // `system` gives the free space of the store's file system; not owned.
  DpiInstaller(Options options, platform::SystemInfo* system);

  // Runs a job to a terminal state. A job's outcome, failure included, is a
  // JobResult; an Error only means the job could not be run or recorded at
  // all (journal unwritable, kJobConflict when another job is unfinished:
  // call Resume() first, kInvalidArgument for a bad spec or configuration).
  // A job id seen before is answered from the journal (replayed = true) and
  // never run twice. `source` is read to its end only when staging starts.
  //
  // `cancel` (may be null; must outlive the call): the job's cancel point
  // (common/job_cancel.h), checked between the states and between payload
  // chunks while staging; its point of no return is the swap. A cancel
  // accepted before it ends the job Failed with kCancelled (staging removed,
  // the active database untouched); after it the cancel is refused.
  Expected<JobResult> Install(const JobSpec& spec, const PackageInfo& package,
                              PayloadSource& source, JobCancel* cancel = nullptr);

  // Finishes an interrupted job (call at start-up): before the swap the
  // staging is removed and the job fails with kDpiInterrupted; after it the
  // job rolls back to the previous version. nullopt when no job was ever
  // recorded; a finished job's result otherwise (replayed = true).
  Expected<std::optional<JobResult>> Resume();

  // The active version; kNotFound when no database is active.
  Expected<std::string> CurrentVersion() const;

  // The recorded outcome of a job id (current job or history); nullopt if unknown.
  Expected<std::optional<JobResult>> Lookup(const std::string& job_id) const;

  // The loop guard: ends the unfinished job `job_id` with `error` instead of
  // resuming it. Before the swap it fails (staging removed, the active
  // database untouched); after the swap it rolls back; a rollback that keeps
  // crashing the agent fails with `error` (the engine needs an operator).
  // kJobUnknown when the journal holds no unfinished job `job_id`.
  Expected<JobResult> Abandon(const std::string& job_id, Error error);

 private:
  struct Job;
  Status EnsureJournalDir() const;
  Status Persist(Job& job, JobState to);
  Status Run(Job& job, PayloadSource& source, JobCancel* cancel);
  Status StepVerify(Job& job, const JobSpec& spec, const PackageInfo& package);
  Status StepStage(Job& job, PayloadSource& source);
  Status StepValidate(Job& job);
  Status StepSwap(Job& job);
  Status StepReload(Job& job);
  Status StepConfirm(Job& job);
  void Commit(Job& job);
  void Fail(Job& job, Error error);
  void RollBack(Job& job, std::optional<Error> error);
  Status RunHook(const Hook& hook, std::string_view stage, const std::string& version,
                 const std::filesystem::path& dir, const std::string& job_id,
                 std::string* first_line);
  Status ReloadAndConfirm(const std::optional<std::string>& version, const std::string& job_id,
                          Errc reload_code, Errc confirm_code);
  JobResult ResultOf(const Job& job) const;
  static Error CancelledError(const Job& job);
  // The journal's current job and its history; nullopt when there is none.
  Expected<std::optional<Job>> LoadCurrent() const;

  Options options_;
  platform::SystemInfo* system_;
  Store store_;
  Journal journal_;
};

}  // namespace sag::dpi
