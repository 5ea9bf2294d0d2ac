// The dispatcher: every job, from any source (the local inbox now, the
// control channel next), goes through it, and it is the only code that runs
// jobs. For a job spec it
//
//   1. checks the spec's format (CheckJobSpec; bad = refused, kBadRequest);
//   2. answers a job id recorded before (in the registry or by an engine,
//      after any restart or reboot) with its record, and never runs it again;
//   3. records the id (phase accepted) and reports it, before anything runs;
//   4. opens the image and reads and verifies its signed header, once per
//      job; a spec whose type or version disagrees with the signed manifest
//      fails with kSpecMismatch, an image that cannot be opened or verified
//      fails with its error, a passed deadline with kTimeout: each recorded
//      under the id, so offered again it is answered the same way;
//   5. hands the verified header and the reader positioned after it to the
//      engine of the manifest's type (agent/engines.h), and records and
//      reports where the job went (a Device job stops at rebooting; its
//      outcome is recorded and reported by RecoverNow() in the next boot).
//
// Reports (agent/outbox.h), in order: "state" accepted, a "state" for every
// engine state change, "progress" every 10 % of a long step, one "result"
// when the job reaches a final phase. A job the engine refuses without
// recording it (kJobConflict, a damaged journal) is forgotten again (it may
// be offered later) and reported as a "state" {"state": "Refused"}.
//
// Threads: Run() and RecoverNow() block and run on the calling thread; the
// daemon calls them through Submit() and Recover(), which run them one at a
// time on the dispatcher's one worker thread and hand the answer back through
// the `post` function (onto the daemon's event loop). Cancel() from any
// thread. A second source (the control channel) calls Submit() from the same
// loop; jobs from both queue on the one worker, and each id still runs once.
//
//   dispatcher.Submit(spec, [](const JobAnswer& a) {
//     // a.known: replayed from the record; a.refused: not run, may come again;
//     // a.outcome: phase, state, error code/name/message, from/to versions.
//     Send(JobAckOf(a));
//   });
//
// Reports the job makes later (state changes, progress, the result, also
// after a reboot) are in the Outbox, in order, for the channel to send and
// acknowledge.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <thread>

#include "agent/engines.h"
#include "agent/job.h"
#include "common/error.h"
#include "common/image/image.h"
#include "common/net/downloader.h"

namespace sag::agent {

class JobRegistry;
class Outbox;
class StatusWriter;
class StepGuard;

// What a source sends back for a job.
struct JobAnswer {
  JobOutcome outcome;       // the job as recorded (id, type, phase, state, error, from, to)
  bool known = false;       // recorded before: answered from the record, not run now
  bool refused = false;     // neither run nor recorded (see `outcome.error`); may come again
  std::string target_slot;  // a Device job's slot

  // The reply document (the inbox's replies/NAME.json, docs/agent.md):
  // {"id", "type", "phase", "state", "version", "from", "to", "error", "known"};
  // a refused job: {"id", "state": "Refused", "error"}.
  [[nodiscard]] nlohmann::json ToJson() const;
  // Whether the job went where it was sent: committed, or on its way to the
  // trial boot (rebooting). `sag-agent install` exits 0 then.
  [[nodiscard]] bool ok() const;
};

// The answer to a cancel of one job (the channel's cancel.ack).
struct CancelAnswer {
  bool accepted = false;
  std::optional<Error> error;  // why it was refused: kJobUnknown, kCancelTooLate
};

// An opened image: the reader has verified the signed header.
struct OpenImage {
  std::unique_ptr<image::ByteSource> source;
  std::unique_ptr<image::ImageReader> reader;  // null in tests
  image::VerifiedHeader header_copy;           // what tests' openers return
  const image::VerifiedHeader* header = nullptr;
};
using ImageOpener = std::function<Expected<std::unique_ptr<OpenImage>>(
    const JobSpec& spec, const std::atomic<bool>* cancel)>;

struct DispatcherParts {
  JobRegistry* registry = nullptr;  // required; loaded
  InstallEngine* device = nullptr;  // required
  InstallEngine* dpi = nullptr;     // required
  Outbox* outbox = nullptr;         // null: no reports
  StepGuard* guard = nullptr;       // null: no loop guard
  StatusWriter* status = nullptr;   // null: no status.json
  // How an image is opened and its header verified; null = from
  // spec.source (file or URL) with `trust`, `limits`, `download` below.
  ImageOpener open;
  image::Trust trust;
  image::Limits limits;
  net::DownloadOptions download;
  // Runs a completion on the owner's event loop (e.g. boost::asio::post onto
  // its io_context). Null: a reply is called on the thread that has it, the
  // worker (or, for a spec refused at once, the caller of Submit); the
  // daemon uses that to write the inbox's reply off its loop and posts its
  // own completion.
  std::function<void(std::function<void()>)> post;
};

class Dispatcher {
 public:
  using ReplyFn = std::function<void(const JobAnswer&)>;

  explicit Dispatcher(DispatcherParts parts);
  ~Dispatcher();  // finishes the running job (Cancel() first to hurry it) and joins the worker
  Dispatcher(const Dispatcher&) = delete;
  Dispatcher& operator=(const Dispatcher&) = delete;

  // The entry point of every job source, called from the event loop: runs
  // `spec` on the worker after what was submitted before it, and calls
  // `reply` with its answer through `post`. A spec whose format is wrong,
  // and a job submitted while kMaxQueued wait, are refused at once (reply
  // posted without waiting for the worker). Every submitted spec gets
  // exactly one reply.
  static constexpr std::size_t kMaxQueued = 16;
  void Submit(JobSpec spec, ReplyFn reply);

  // At daemon start, on the worker: RecoverNow(), then `done` through `post`.
  void Recover(std::function<void()> done);

  // Whether a job or the recovery runs or waits on the worker.
  [[nodiscard]] bool busy() const;
  // Blocks until nothing runs or waits on the worker (not from the worker).
  void WaitIdle();

  // Stops the running job at its next checkpoint (its download too); it
  // resumes at the next start. Any thread.
  void Cancel();

  // Cancels job `id` (the channel's `cancel`; docs/protocol.md). Any thread.
  //   - waiting in the queue: ended at once, Failed with kCancelled,
  //     recorded and reported (a "result"); its reply is posted with that;
  //   - running: accepted before its engine's point of no return (it ends
  //     Failed with kCancelled, cleaned up as any failed job), refused
  //     (kCancelTooLate) after it; decided under the job's cancel point
  //     (common/job_cancel.h), so never both. An accepted cancel is made
  //     durable (STATE_DIR/cancel-ID.json) before it is answered: killed
  //     before the job ended, the agent ends it Cancelled at its next start
  //     (RecoverNow) instead of resuming it;
  //   - ended or past its point of no return in an earlier run: refused
  //     (kCancelTooLate); never seen: refused (kJobUnknown).
  CancelAnswer CancelJob(const std::string& id);

  // Ends a job that waits in a queue of the caller's own (the daemon's
  // cloud jobs) before it reached Submit(): unless the registry knows it as
  // started or ended (refused, kCancelTooLate), it is recorded and reported
  // Failed with kCancelled and `*ended` is its answer for the job's reply.
  // Any thread.
  CancelAnswer CancelWaiting(const JobSpec& spec, JobAnswer* ended);

  // --- The blocking core (the worker; `sag-agent install` without a
  // daemon; tests) ---

  // Runs or answers one job (steps 1-5 above).
  JobAnswer Run(const JobSpec& spec);

  // Jobs whose accepted cancel outlived their agent are ended Cancelled,
  // then the loop guard (agent/step_guard.h), then both engines' Resume(), then
  // the registry's unfinished jobs brought up to date (a Device job commits
  // or falls back in the boot after its trial: its result is reported here).
  void RecoverNow();

  // status.json's "job": the last job this dispatcher ran or answered, or
  // null when none yet.
  [[nodiscard]] nlohmann::json LastJobStatus() const;

 private:
  struct Task {
    std::function<void()> run;
    // A job's task: its id, spec, reply and cancel point ("" for the recovery).
    std::string job_id;
    JobSpec spec;
    ReplyFn reply;
    std::shared_ptr<JobCancel> cancel;
  };
  void Enqueue(std::function<void()> work);
  void EnqueueTask(Task task);
  JobAnswer RunWith(const JobSpec& spec, JobCancel& cancel);
  CancelAnswer RefuseCancel(const std::string& id, JobCancel::Answer answer);
  void Post(std::function<void()> fn);
  void WorkerLoop();
  void Emit(const char* kind, const std::string& job, nlohmann::json body);
  void Record(const JobOutcome& outcome, bool report);
  Expected<std::optional<JobOutcome>> Recorded(const std::string& id);
  void SyncRegistry();
  void GuardAtStart();
  void OnProgress(JobType type, const EngineJob& job, std::uint64_t done, std::uint64_t total);
  void SetStatusJob(nlohmann::json job, bool now);
  // "job ID: STAGE" for the download's log lines (any thread): the stage
  // the job last reported, "Downloading" before its engine took it.
  [[nodiscard]] std::string LogContext(const std::string& id) const;
  InstallEngine* EngineFor(JobType type);
  JobAnswer Fail(JobOutcome outcome, const Error& error, JobCancel& cancel);
  JobAnswer EndCancelled(const JobSpec& spec);
  [[nodiscard]] std::filesystem::path CancelMarker(const std::string& id) const;
  void EndAcceptedCancels();

  DispatcherParts parts_;
  std::atomic<bool> stopping_{false};

  // The worker and its queue.
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Task> tasks_;  // guarded by mu_
  int running_ = 0;         // guarded by mu_
  bool quit_ = false;       // guarded by mu_
  // The job on the worker now and its cancel point (null when none).
  std::string current_id_;              // guarded by mu_
  std::shared_ptr<JobCancel> current_;  // guarded by mu_
  std::thread worker_;

  // Progress and status.json (from the install's threads).
  mutable std::mutex status_mu_;
  int last_percent_ = -1;                                      // guarded by status_mu_
  std::string last_state_;                                     // guarded by status_mu_
  std::string last_job_;                                       // guarded by status_mu_
  std::chrono::steady_clock::time_point last_status_write_{};  // guarded by status_mu_
  nlohmann::json status_job_;                                  // guarded by status_mu_
};

}  // namespace sag::agent
