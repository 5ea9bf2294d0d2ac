// The registry of job ids: every job ever offered to this appliance, from any
// source, with its type, phase and outcome, so that a job id offered again
// (by the inbox or the channel, after any restart or reboot) is answered with
// its record and never run twice.
//
// One file, STATE_DIR/jobs.json, replaced atomically (WriteFileAtomic) at
// every change: {"version": 1, "jobs": [JobOutcome, ...]} in the order the
// jobs were accepted. Bounded: the newest kKeep (256) finished jobs are kept,
// older finished ones are dropped first; unfinished jobs are never dropped.
// The installers' own records (Device history, DPI journal) stay the truth
// about their jobs; the registry also holds the jobs that never reached an
// installer (an image that could not be opened or verified).
//
// Thread-safe: the worker records its jobs while the loop records a job
// cancelled before it started (Dispatcher::CancelWaiting).
#pragma once

#include <cstddef>
#include <filesystem>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "agent/job.h"
#include "common/error.h"

namespace sag::agent {

class JobRegistry {
 public:
  static constexpr std::size_t kKeep = 256;

  explicit JobRegistry(std::filesystem::path file, std::size_t keep = kKeep);

  // Reads the file (absent = no jobs). kJournalCorrupt, naming the field and
  // what to do, when it is damaged; the registry is then empty and Put()
  // refuses to overwrite the damaged file.
  Status Load();

  [[nodiscard]] std::optional<JobOutcome> Find(const std::string& id) const;
  // Inserts or updates (by id) and writes the file before returning.
  Status Put(const JobOutcome& outcome);

  // Forgets a job that was refused without running (it may be offered again).
  Status Remove(const std::string& id);

  // A copy, in the order the jobs were accepted.
  [[nodiscard]] std::vector<JobOutcome> jobs() const {
    const std::lock_guard lock(mu_);
    return jobs_;
  }
  [[nodiscard]] const std::filesystem::path& path() const { return file_; }

 private:
  std::filesystem::path file_;
  std::size_t keep_;
  mutable std::mutex mu_;
  std::vector<JobOutcome> jobs_;  // guarded by mu_
  std::optional<Error> damaged_;  // guarded by mu_

  Status Write(std::vector<JobOutcome> jobs, const std::string& context);
};

}  // namespace sag::agent
