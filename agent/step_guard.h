// The loop guard: a job that keeps stopping the agent at the same step (a
// health check that takes the agent down, a hook that kills it, a payload
// that crashes the writer) is ended with kJobCrashLoop after kMaxAttempts
// entries of that step, instead of being resumed forever under systemd's
// Restart=.
//
// STATE_DIR/step-attempts.json: {"job": ID, "step": NAME, "attempts": N},
// replaced atomically (temp file, fsync, rename, fsync of the directory)
// before a job enters a step that a crash would make it repeat: the engines
// call the daemon back for that (firmware::InstallerOptions::on_step,
// dpi::Options::on_step). Entering the step that the file names, in the boot
// it names, adds one; entering another step (or a step of another job, or
// the same step in a later boot) starts again at 1: a power cut or a reboot
// is not the agent crashing, and an install cut by the power several times
// at the same step must go on (the bootloader's boot counter, not this
// guard, ends a new OS that keeps resetting the board). A job
// that reaches a final phase clears the file. At daemon start, before the
// engines resume, an entry with attempts >= kMaxAttempts whose job is still
// unfinished is ended through InstallEngine::Abandon with kJobCrashLoop
// (agent/dispatcher.cpp, Dispatcher::RecoverNow).
//
// A damaged file is an error value (kJournalCorrupt) naming the file; the
// dispatcher then logs it and starts counting again.
#pragma once

#include <filesystem>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>

#include "common/error.h"

namespace sag::agent {

class StepGuard {
 public:
  // Entries of one step of one job that may end without the step finishing;
  // at the next start after that many, the job is ended (kJobCrashLoop). A
  // step is entered once by the run that starts it and once per resume, so
  // with 3 the third restart in a row at the same step ends the job.
  static constexpr int kMaxAttempts = 3;

  struct Entry {
    std::string job;
    std::string step;
    int attempts = 0;
    std::string boot;  // the boot id of the entries counted ("" = unknown)
  };

  // `boot_id`: this boot's (platform::SystemInfo::BootId); "" when unknown,
  // which counts restarts across boots too.
  explicit StepGuard(std::filesystem::path file, std::string boot_id = {});

  // Records that `job` enters `step` (see the file comment). Thread-safe.
  Status Enter(const std::string& job, std::string_view step);
  // Forgets the entry (its job finished or was ended).
  Status Clear();
  // The entry, nullopt when there is none; kJournalCorrupt when the file is
  // damaged.
  [[nodiscard]] Expected<std::optional<Entry>> Load() const;

  [[nodiscard]] const std::filesystem::path& path() const { return file_; }

 private:
  std::filesystem::path file_;
  std::string boot_id_;
  mutable std::mutex mu_;
  std::optional<Entry> last_;  // what the file holds, once read or written
  bool loaded_ = false;
};

}  // namespace sag::agent
