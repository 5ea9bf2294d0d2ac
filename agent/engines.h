// What the daemon needs from an install engine: one interface for the Device
// installer (firmware/installer.h) and the DPI installer (dpi/installer.h),
// so that the dispatcher (agent/dispatcher.h) runs jobs of either type the
// same way and runs in unit tests on fakes (tests/unit/agent/fake_engine.h).
//
// An engine keeps its own state machine and journal; what it tells the
// daemon is an EngineJob: the job's phase in the one job model
// (agent/job.h) and the engine's own state name. The dispatcher opens the
// image and verifies its signed header once per job; the engine gets that
// header and the reader positioned after it, never the source to open again.
//
// Threads: the dispatcher calls an engine from one thread at a time (its
// worker), except Cancel(), which may come from any thread.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "agent/job.h"
#include "common/error.h"
#include "common/image/image.h"
#include "common/job_cancel.h"

namespace sag::agent {

// What an engine recorded about one of its jobs.
struct EngineJob {
  std::string id;
  JobPhase phase = JobPhase::kFailed;
  std::string state;  // the engine's own state name ("Writing", "Staging", ...)
  std::optional<Error> error;
  std::string from;         // the version that ran when the job started
  std::string to;           // the version the job installs
  std::string target_slot;  // a Device job's slot ("A" | "B"); "" for DPI
};

// An image whose signed header the dispatcher read and verified for this job.
// `reader` is positioned after the header (its next call is NextChunk());
// null in unit tests, whose fake engines read no payload.
struct VerifiedImage {
  const image::VerifiedHeader* header = nullptr;
  image::ImageReader* reader = nullptr;
};

// Progress of a long step: `done` of `total` units (0/0 = a state change).
using EngineProgressFn =
    std::function<void(const EngineJob& job, std::uint64_t done, std::uint64_t total)>;

class InstallEngine {
 public:
  virtual ~InstallEngine() = default;

  [[nodiscard]] virtual JobType type() const = 0;

  // Where progress goes (the dispatcher sets it once, before any job).
  virtual void SetProgress(EngineProgressFn progress) = 0;

  // At daemon start: finishes whatever the engine's journal holds (a cut
  // download, a trial boot to check, a rollback) as far as it goes in this
  // boot. The job as it stands afterwards, or nullopt when there was none.
  virtual Expected<std::optional<EngineJob>> Resume() = 0;

  // The recorded job `id` (running or finished), or nullopt if the engine
  // never saw it. kJournalCorrupt when its state files are damaged.
  virtual Expected<std::optional<EngineJob>> Lookup(const std::string& id) = 0;

  // Runs a new job whose image header is verified, as far as it goes in
  // this boot (a Device job stops at Rebooting). A job refused by the
  // engine's policy (version, model, space) is an EngineJob in phase
  // failed, recorded under its id. An Error means the job could not be run
  // or recorded at all (kJobConflict: another job is unfinished; a damaged
  // journal): the engine did not record it.
  //
  // `cancel` (never null; outlives the call) is the job's cancel point
  // (common/job_cancel.h): the engine checks it between its steps and in its
  // long loops, crosses it with TryCross() right before its point of no
  // return (Device: SetTrial; DPI: the swap) and ends a job whose cancel was
  // accepted before that Failed with kCancelled, cleaned up as any failed
  // job.
  virtual Expected<EngineJob> Install(const JobSpec& spec, VerifiedImage image,
                                      JobCancel& cancel) = 0;

  // The version now running (Device) or loaded (DPI).
  virtual Expected<std::string> CurrentVersion() = 0;

  // Stops the running job at its next checkpoint (a download waiting on a
  // stalled server included); it resumes at the next start. Any thread.
  // (The daemon stopping; a cancel of one job is its JobCancel.)
  virtual void Cancel() = 0;

  // The loop guard (agent/step_guard.h): ends the unfinished job `id` with
  // `error` instead of running its step once more. Before anything changed
  // what runs, the job fails; a Device job on its trial boot rolls back.
  // The engine records the outcome, so Lookup() answers it afterwards.
  // kJobUnknown when `id` is not the engine's unfinished job.
  virtual Expected<EngineJob> Abandon(const std::string& id, Error error) = 0;
};

}  // namespace sag::agent
