#include "agent/dispatcher.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <utility>

#include "agent/outbox.h"
#include "agent/registry.h"
#include "agent/status.h"
#include "agent/step_guard.h"
#include "common/atomic_file.h"
#include "common/redact.h"
#include "common/stream_source.h"
#include "firmware/job.h"

namespace sag::agent {

namespace {

using nlohmann::json;

constexpr std::chrono::milliseconds kStatusInterval{500};

json ErrorJson(const std::optional<Error>& error) {
  if (!error) return nullptr;
  return {
      {"code", error->number()}, {"name", ErrcName(error->code())}, {"message", error->message()}};
}

json RefusedJson(const std::string& id, const Error& e) {
  return {{"id", id}, {"state", "Refused"}, {"error", ErrorJson(e)}};
}

// status.json's "job" (docs/status.md).
json StatusJob(JobType type, const EngineJob& j, int percent) {
  json s = {{"id", j.id},
            {"type", type == JobType::kUnknown ? json(nullptr) : json(JobTypeName(type))},
            {"version", j.to},
            {"state", j.state},
            {"percent", percent},
            {"from_version", j.from}};
  if (!j.target_slot.empty()) s["target_slot"] = j.target_slot;
  s["error"] = ErrorJson(j.error);
  return s;
}

EngineJob EngineJobOf(const JobOutcome& o) {
  return {o.id, o.phase, o.state, o.error, o.from, o.to, ""};
}

JobOutcome OutcomeOf(JobType type, const EngineJob& j, JobOutcome o) {
  o.type = type;
  o.phase = j.phase;
  o.state = j.state;
  o.error = j.error;
  o.from = j.from;
  o.to = j.to;
  o.updated_at = firmware::NowUtc();
  return o;
}

// The real opener: the source (file or URL) and a reader that verified the
// header against the pinned root.
Expected<std::unique_ptr<OpenImage>> OpenReal(const JobSpec& spec, const image::Trust& trust,
                                              const image::Limits& limits,
                                              const net::DownloadOptions& download) {
  auto img = std::make_unique<OpenImage>();
  SAG_TRY(img->source, OpenStreamSource(spec.source, 0, download));
  img->reader = std::make_unique<image::ImageReader>(*img->source, trust, limits);
  auto header = img->reader->ReadHeader();
  if (!header) {
    return std::move(header).error().WithContext("checking " + RedactUrl(spec.source));
  }
  img->header = *header;
  return img;
}

// Whether the spec asks for what the signed manifest holds.
Status CheckSpecAgainst(const JobSpec& spec, const image::Manifest& m) {
  const JobType type = m.type == image::ImageType::kDpi ? JobType::kDpi : JobType::kDevice;
  if (spec.type != JobType::kUnknown && spec.type != type) {
    return Error(Errc::kSpecMismatch, "the job is a " + std::string(JobTypeName(spec.type)) +
                                          " job, but the signed image is a " +
                                          std::string(JobTypeName(type)) + " image (version " +
                                          m.version + "); send it with the image's type");
  }
  if (!spec.version.empty() && spec.version != m.version) {
    return Error(Errc::kSpecMismatch, "the job asks for version " + spec.version +
                                          ", but the signed image holds " + m.version +
                                          "; check the job's image URL");
  }
  return Ok();
}

}  // namespace

// ---------------------------------------------------------------- answers

json JobAnswer::ToJson() const {
  if (refused) {
    return RefusedJson(outcome.id, outcome.error.value_or(Error(Errc::kInternal, "refused")));
  }
  json j = outcome.ToJson();
  j["version"] = outcome.to;
  j["known"] = known;
  if (!target_slot.empty()) j["target_slot"] = target_slot;
  return j;
}

bool JobAnswer::ok() const {
  return !refused &&
         (outcome.phase == JobPhase::kCommitted || outcome.phase == JobPhase::kRebooting);
}

// ---------------------------------------------------------------- set-up

Dispatcher::Dispatcher(DispatcherParts parts) : parts_(std::move(parts)) {
  if (!parts_.open) {
    parts_.open = [this](const JobSpec& spec, const std::atomic<bool>* cancel) {
      net::DownloadOptions d = parts_.download;
      d.cancel = cancel;
      d.log_context = [this, id = spec.id] { return LogContext(id); };
      return OpenReal(spec, parts_.trust, parts_.limits, d);
    };
  }
  parts_.device->SetProgress([this](const EngineJob& j, std::uint64_t done, std::uint64_t total) {
    OnProgress(JobType::kDevice, j, done, total);
  });
  parts_.dpi->SetProgress([this](const EngineJob& j, std::uint64_t done, std::uint64_t total) {
    OnProgress(JobType::kDpi, j, done, total);
  });
}

Dispatcher::~Dispatcher() {
  {
    const std::lock_guard lock(mu_);
    quit_ = true;
  }
  cv_.notify_all();
  if (worker_.joinable()) worker_.join();
}

void Dispatcher::Cancel() {
  stopping_ = true;
  parts_.device->Cancel();
  parts_.dpi->Cancel();
  const std::lock_guard lock(mu_);
  if (current_) current_->Stop();
}

// ---------------------------------------------------------------- cancel

CancelAnswer Dispatcher::RefuseCancel(const std::string& id, JobCancel::Answer answer) {
  CancelAnswer a;
  const std::string past =
      " is past its point of no return (a Device job's trial boot is set, a DPI job's new "
      "database is swapped in): it runs to its outcome";
  if (answer == JobCancel::Answer::kPastNoReturn) {
    a.error = Error(Errc::kCancelTooLate, "job " + id + past);
  } else if (auto known = parts_.registry->Find(id); !known) {
    a.error =
        Error(Errc::kJobUnknown, "this agent has no job " + id +
                                     " (never offered to it, or forgotten); nothing to cancel");
  } else if (IsFinal(known->phase)) {
    a.error = Error(Errc::kCancelTooLate, "job " + id + " already ended: " + known->state + " (" +
                                              std::string(JobPhaseName(known->phase)) + ")");
  } else if (known->phase == JobPhase::kRebooting) {
    a.error = Error(Errc::kCancelTooLate, "job " + id + " (" + known->state + ")" + past);
  } else {
    a.error = Error(Errc::kCancelTooLate,
                    "job " + id + " (" + known->state +
                        ") is not running on the worker now: it is ending, or it is resumed "
                        "after a restart, which is not cancelled");
  }
  spdlog::info("job {}: cancel refused: {}", id, a.error->ToString());
  return a;
}

JobAnswer Dispatcher::EndCancelled(const JobSpec& spec) {
  const auto known = parts_.registry->Find(spec.id);
  JobOutcome o;
  o.id = spec.id;
  o.type = spec.type;
  o.to = spec.version;
  o.phase = JobPhase::kFailed;
  o.state = "Failed";
  o.error = Error(Errc::kCancelled, "job " + spec.id +
                                        " was cancelled on request while it waited; it never "
                                        "started and nothing was changed");
  o.accepted_at = known ? known->accepted_at : firmware::NowUtc();
  o.updated_at = firmware::NowUtc();
  spdlog::info("job {}: {}", spec.id, o.error->ToString());
  // The result first, as Record() does; it names no versions (the engines
  // belong to the worker): the channel sends those it last saw.
  Emit("result", o.id, o.ToJson());
  if (auto st = parts_.registry->Put(o); !st) {
    spdlog::error("job {}: {}", o.id, st.error().ToString());
  }
  JobAnswer a;
  a.outcome = std::move(o);
  return a;
}

CancelAnswer Dispatcher::CancelWaiting(const JobSpec& spec, JobAnswer* ended) {
  // A job id the registry knows as started or ended is answered from its
  // record when it comes up: that answer stands.
  if (auto known = parts_.registry->Find(spec.id); known && known->phase != JobPhase::kAccepted) {
    return RefuseCancel(spec.id, JobCancel::Answer::kEnded);
  }
  JobAnswer a = EndCancelled(spec);
  if (ended != nullptr) *ended = std::move(a);
  return {true, std::nullopt};
}

CancelAnswer Dispatcher::CancelJob(const std::string& id) {
  std::shared_ptr<JobCancel> running;
  std::optional<Task> waiting;
  {
    const std::lock_guard lock(mu_);
    if (current_ && current_id_ == id) {
      running = current_;
    } else if (auto it = std::find_if(tasks_.begin(), tasks_.end(),
                                      [&](const Task& t) { return t.cancel && t.job_id == id; });
               it != tasks_.end()) {
      if (auto known = parts_.registry->Find(id); known && known->phase != JobPhase::kAccepted) {
        return RefuseCancel(id, JobCancel::Answer::kEnded);
      }
      waiting = std::move(*it);
      tasks_.erase(it);
    }
  }
  if (running) {
    const auto answer = running->Request();
    if (answer != JobCancel::Answer::kAccepted) return RefuseCancel(id, answer);
    // Durable before it is answered: a job whose cancel was accepted and
    // whose agent is killed before the job ended is ended Cancelled at the
    // next start (RecoverNow), never resumed across its point of no return.
    // (Killed before this: no answer went out; the cloud asks again, and
    // the resumed job refuses.)
    if (auto st = WriteFileAtomic(CancelMarker(id), "{}\n", 0600); !st) {
      spdlog::warn("job {}: the accepted cancel is not durable: {}", id, st.error().ToString());
    }
    spdlog::info("job {}: cancel accepted; the job stops at its next check", id);
    return {true, std::nullopt};
  }
  if (waiting) {
    // Out of the queue (checked against the registry under the lock): it
    // never runs. Its reply says how it ended.
    JobAnswer ended = EndCancelled(waiting->spec);
    Post([reply = std::move(waiting->reply), ended = std::move(ended)] { reply(ended); });
    cv_.notify_all();  // WaitIdle(): one task less
    return {true, std::nullopt};
  }
  return RefuseCancel(id, JobCancel::Answer::kEnded);
}

InstallEngine* Dispatcher::EngineFor(JobType type) {
  return type == JobType::kDpi ? parts_.dpi : parts_.device;
}

// ---------------------------------------------------------------- the worker

bool Dispatcher::busy() const {
  const std::lock_guard lock(mu_);
  return running_ > 0 || !tasks_.empty();
}

void Dispatcher::WaitIdle() {
  std::unique_lock lock(mu_);
  cv_.wait(lock, [&] { return running_ == 0 && tasks_.empty(); });
}

void Dispatcher::Post(std::function<void()> fn) {
  if (parts_.post) {
    parts_.post(std::move(fn));
  } else {
    fn();
  }
}

void Dispatcher::Enqueue(std::function<void()> work) {
  Task task;
  task.run = std::move(work);
  EnqueueTask(std::move(task));
}

void Dispatcher::EnqueueTask(Task task) {
  {
    const std::lock_guard lock(mu_);
    tasks_.push_back(std::move(task));
    // One worker, started with the first task: an idle daemon that never
    // gets a job has no thread for it.
    if (!worker_.joinable()) worker_ = std::thread([this] { WorkerLoop(); });
  }
  cv_.notify_one();
}

void Dispatcher::WorkerLoop() {
  std::unique_lock lock(mu_);
  for (;;) {
    cv_.wait(lock, [&] { return quit_ || !tasks_.empty(); });
    if (tasks_.empty()) return;  // quit_, and nothing left
    Task task = std::move(tasks_.front());
    tasks_.pop_front();
    ++running_;
    if (task.cancel) {
      // From the queue to the worker under one lock: a cancel finds the job
      // in one or the other.
      current_id_ = task.job_id;
      current_ = task.cancel;
      if (stopping_) current_->Stop();
    }
    lock.unlock();
    if (task.cancel) {
      JobAnswer a = RunWith(task.spec, *task.cancel);
      Post([reply = std::move(task.reply), a = std::move(a)] { reply(a); });
    } else {
      task.run();
    }
    lock.lock();
    if (task.cancel && current_ == task.cancel) {
      current_.reset();
      current_id_.clear();
    }
    --running_;
    cv_.notify_all();  // WaitIdle()
  }
}

void Dispatcher::Submit(JobSpec spec, ReplyFn reply) {
  auto refuse_now = [&](Error e) {
    JobAnswer a;
    a.outcome.id = spec.id;
    a.outcome.error = std::move(e);
    a.refused = true;
    spdlog::error("job {}: {}", spec.id, a.outcome.error->ToString());
    Post([reply = std::move(reply), a = std::move(a)] { reply(a); });
  };
  if (auto problem = CheckJobSpec(spec)) {
    refuse_now(Error(Errc::kBadRequest, "job spec: " + problem->field + ": " + problem->problem));
    return;
  }
  {
    const std::lock_guard lock(mu_);
    if (tasks_.size() >= kMaxQueued) {
      refuse_now(Error(Errc::kJobConflict, std::to_string(kMaxQueued) +
                                               " jobs wait already; offer this one again later"));
      return;
    }
  }
  Task task;
  task.job_id = spec.id;
  task.spec = std::move(spec);
  task.reply = std::move(reply);
  task.cancel = std::make_shared<JobCancel>();
  EnqueueTask(std::move(task));
}

void Dispatcher::Recover(std::function<void()> done) {
  Enqueue([this, done = std::move(done)]() mutable {
    RecoverNow();
    Post(std::move(done));
  });
}

// ---------------------------------------------------------------- records and reports

// Appends a report; one that cannot be made durable is logged, and the job
// goes on.
void Dispatcher::Emit(const char* kind, const std::string& job, json body) {
  if (parts_.outbox == nullptr) return;
  if (auto seq = parts_.outbox->Append(kind, job, std::move(body)); !seq) {
    spdlog::error("job {}: the {} report is not in the outbox: {}", job, kind,
                  seq.error().ToString());
  }
}

void Dispatcher::Record(const JobOutcome& o, bool report) {
  // The report first: a kill between the two leaves the registry's record
  // unfinished, and RecoverNow() then finds the result report pending
  // instead of making a second one.
  if (report && IsFinal(o.phase)) {
    // A result says what runs after the job: the cloud takes the versions
    // from it (docs/protocol.md).
    json body = o.ToJson();
    auto device = parts_.device->CurrentVersion();
    auto dpi = parts_.dpi->CurrentVersion();
    body["versions"] = {{"device", device ? *device : std::string()},
                        {"dpi", dpi ? *dpi : std::string()}};
    Emit("result", o.id, std::move(body));
  } else if (report) {
    Emit("state", o.id, o.ToJson());
  }
  if (auto st = parts_.registry->Put(o); !st) {
    spdlog::error("job {}: {}", o.id, st.error().ToString());
  }
  if (IsFinal(o.phase) && parts_.guard != nullptr) {
    if (auto st = parts_.guard->Clear(); !st) spdlog::warn("{}", st.error().ToString());
  }
  if (IsFinal(o.phase)) {
    std::error_code ec;
    std::filesystem::remove(CancelMarker(o.id), ec);
  }
}

std::filesystem::path Dispatcher::CancelMarker(const std::string& id) const {
  return parts_.registry->path().parent_path() / ("cancel-" + id + ".json");
}

// Jobs whose cancel was accepted by an agent that was killed before the job
// ended: ended Cancelled now (an accepted cancel means the job never crossed
// its point of no return), before the engines resume them.
void Dispatcher::EndAcceptedCancels() {
  std::error_code ec;
  const auto dir = parts_.registry->path().parent_path();
  std::vector<std::string> ids;
  for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    if (name.starts_with("cancel-") && name.ends_with(".json")) {
      ids.push_back(name.substr(7, name.size() - 12));
    }
  }
  for (const auto& id : ids) {
    for (InstallEngine* engine : {parts_.device, parts_.dpi}) {
      auto seen = engine->Lookup(id);
      if (!seen || !*seen || IsFinal((*seen)->phase)) continue;
      auto ended = engine->Abandon(
          id, Error(Errc::kCancelled, "job " + id +
                                          " was cancelled on request before its point of no "
                                          "return; the agent stopped before the job ended, and "
                                          "it was ended at the next start"));
      if (!ended) {
        spdlog::error("job {}: ending the cancelled job: {}", id, ended.error().ToString());
        continue;
      }
      auto known = parts_.registry->Find(id);
      JobOutcome base = known.value_or(JobOutcome{});
      base.id = id;
      if (base.accepted_at.empty()) base.accepted_at = firmware::NowUtc();
      Record(OutcomeOf(engine->type(), *ended, base), /*report=*/true);
    }
    std::filesystem::remove(CancelMarker(id), ec);
  }
}

// The registry's record of `id`, brought up to date with what the engines
// recorded; nullopt when nobody knows the id.
Expected<std::optional<JobOutcome>> Dispatcher::Recorded(const std::string& id) {
  auto known = parts_.registry->Find(id);
  JobOutcome base = known.value_or(JobOutcome{});
  base.id = id;
  if (base.accepted_at.empty()) base.accepted_at = firmware::NowUtc();
  for (InstallEngine* engine : {parts_.dpi, parts_.device}) {
    SAG_TRY(auto seen, engine->Lookup(id));
    if (seen) return std::optional<JobOutcome>(OutcomeOf(engine->type(), *seen, base));
  }
  return known;
}

void Dispatcher::SetStatusJob(json job, bool now) {
  if (parts_.status == nullptr) return;
  if (now) {
    (void)parts_.status->Update({{"job", job}});
  } else {
    parts_.status->Post({{"job", job}});
  }
}

std::string Dispatcher::LogContext(const std::string& id) const {
  const std::lock_guard lock(status_mu_);
  const std::string stage = last_job_ == id && !last_state_.empty() ? last_state_ : "Downloading";
  return "job " + id + ": " + stage;
}

json Dispatcher::LastJobStatus() const {
  const std::lock_guard lock(status_mu_);
  return status_job_;
}

void Dispatcher::OnProgress(JobType type, const EngineJob& j, std::uint64_t done,
                            std::uint64_t total) {
  const int percent =
      total == 0 ? (IsFinal(j.phase) ? 100 : 0) : static_cast<int>(100 * done / total);
  const std::lock_guard lock(status_mu_);
  if (j.id != last_job_) {
    last_job_ = j.id;
    last_state_.clear();
    last_percent_ = -1;
  }
  if (percent == last_percent_ && j.state == last_state_) return;
  const bool state_changed = j.state != last_state_;
  const bool log_it = state_changed || percent % 10 == 0;
  last_percent_ = percent;
  last_state_ = j.state;
  if (log_it && total != 0) {
    spdlog::info("job {}: {} {}% ({}/{})", j.id, j.state, percent, done, total);
  }
  // Reports: every state change (before the job goes on: it may be the last
  // word before a reboot) and every 10 % of a long step.
  if (state_changed) {
    Emit("state", j.id,
         {{"type", JobTypeName(type)},
          {"phase", JobPhaseName(j.phase)},
          {"state", j.state},
          {"to", j.to}});
  } else if (total != 0 && percent % 10 == 0 && parts_.outbox != nullptr) {
    // Posted, not appended here: this is the install's writer thread, and an
    // fdatasync of the outbox waits for a disk that is busy with the slot
    // (up to 15 ms each on the test VM). The next state change appends it
    // first, in order.
    parts_.outbox->Post("progress", j.id, {{"state", j.state}, {"percent", percent}});
  }
  // status.json follows every state change and the end of a step, and the
  // percentage in between at most every kStatusInterval: a file replacement
  // for every percent would cost the install real time. A state change is
  // written before the job goes on (it is the last word before a reboot);
  // the percentage is posted, because it comes from the install's writer
  // thread, which must not wait for the file system.
  json s = StatusJob(type, j, percent);
  if (type == JobType::kDpi && status_job_.is_object() && status_job_.value("id", "") == j.id) {
    // A DPI step names no versions: keep what the job's status said.
    s["version"] = status_job_.value("version", "");
    s["from_version"] = status_job_.value("from_version", "");
  }
  status_job_ = s;
  const auto now = std::chrono::steady_clock::now();
  if (!state_changed && percent != 100 && now - last_status_write_ < kStatusInterval) return;
  last_status_write_ = now;
  SetStatusJob(std::move(s), state_changed);
}

// ---------------------------------------------------------------- running a job

// A job that fails before an engine saw it (its image cannot be opened or
// verified, it disagrees with the manifest, its deadline passed): recorded
// under its id, neither engine knows it.
JobAnswer Dispatcher::Fail(JobOutcome outcome, const Error& error, JobCancel& cancel) {
  outcome.phase = JobPhase::kFailed;
  outcome.state = "Failed";
  outcome.error = error;
  // A cancel accepted before the job ended ends it Cancelled, whatever else
  // stopped it (a download stopped by the cancel, among others).
  if (cancel.EndFailed()) {
    outcome.error =
        Error(Errc::kCancelled, "job " + outcome.id +
                                    " was cancelled on request before its point of no return; what "
                                    "boots and runs was not changed");
  }
  spdlog::error("job {}: {}", outcome.id, outcome.error->ToString());
  outcome.updated_at = firmware::NowUtc();
  {
    const std::lock_guard lock(status_mu_);
    status_job_ = StatusJob(outcome.type, EngineJobOf(outcome), 0);
  }
  SetStatusJob(LastJobStatus(), true);
  Record(outcome, /*report=*/true);
  JobAnswer a;
  a.outcome = std::move(outcome);
  return a;
}

JobAnswer Dispatcher::Run(const JobSpec& spec) {
  auto cancel = std::make_shared<JobCancel>();
  {
    const std::lock_guard lock(mu_);
    current_id_ = spec.id;
    current_ = cancel;
    if (stopping_) cancel->Stop();
  }
  JobAnswer a = RunWith(spec, *cancel);
  const std::lock_guard lock(mu_);
  if (current_ == cancel) {
    current_.reset();
    current_id_.clear();
  }
  return a;
}

JobAnswer Dispatcher::RunWith(const JobSpec& spec, JobCancel& cancel) {
  JobAnswer answer;
  answer.outcome.id = spec.id;
  // Refused or answered from the record: not this run's job to cancel.
  auto refuse = [&](const Error& e) {
    cancel.End();
    spdlog::error("job {}: {}", spec.id, e.ToString());
    answer.refused = true;
    answer.outcome.error = e;
    return answer;
  };
  if (auto problem = CheckJobSpec(spec)) {
    return refuse(
        Error(Errc::kBadRequest, "job spec: " + problem->field + ": " + problem->problem));
  }
  // A job id is run once, whatever its type: one recorded before is answered
  // with its record before the source is even opened (it may be gone, and
  // its type must not be guessed from it).
  auto seen = Recorded(spec.id);
  if (!seen) return refuse(seen.error());
  JobOutcome outcome;
  if (*seen && (*seen)->phase != JobPhase::kAccepted) {
    outcome = **seen;
    spdlog::info("job {}: seen before ({}, {}), not run again", spec.id, JobTypeName(outcome.type),
                 outcome.state);
    cancel.End();
    Record(outcome, /*report=*/false);  // reported when it happened
    answer.outcome = outcome;
    answer.known = true;
    {
      const std::lock_guard lock(status_mu_);
      status_job_ = StatusJob(outcome.type, EngineJobOf(outcome), 100);
    }
    return answer;
  }
  // New, or accepted before a crash and known to no engine: it never started.
  outcome.id = spec.id;
  outcome.accepted_at = *seen ? (*seen)->accepted_at : firmware::NowUtc();
  outcome.type = spec.type;
  outcome.to = spec.version;
  outcome.phase = JobPhase::kAccepted;
  outcome.state = "Accepted";
  outcome.updated_at = firmware::NowUtc();
  // Recorded before anything runs: a crash from here on finds the id.
  if (auto st = parts_.registry->Put(outcome); !st) return refuse(st.error());
  Emit("state", outcome.id, outcome.ToJson());

  if (DeadlinePassed(spec.deadline, firmware::NowUtc())) {
    return Fail(outcome,
                Error(Errc::kTimeout,
                      "the job's deadline " + spec.deadline + " passed before it could start"),
                cancel);
  }
  if (spec.size != 0 && !IsUrl(spec.source)) {
    // A local file's size is known before a byte is read; a URL's is
    // checked by nothing cheaper than the signed header that follows.
    std::error_code ec;
    const auto size = std::filesystem::file_size(spec.source, ec);
    if (!ec && size != spec.size) {
      return Fail(
          outcome,
          Error(Errc::kSpecMismatch, "the job says the image has " + std::to_string(spec.size) +
                                         " bytes, but " + spec.source + " has " +
                                         std::to_string(size) + "; check the job's image"),
          cancel);
    }
  }
  if (cancel.requested()) return Fail(outcome, Error(Errc::kCancelled, "cancelled"), cancel);
  // The signed header, read and verified once for the whole job; its
  // download stops when the job is cancelled or the daemon stops.
  auto img = parts_.open(spec, cancel.flag());
  if (!img) return Fail(outcome, img.error(), cancel);
  const image::Manifest& m = (*img)->header->manifest;
  const JobType type = m.type == image::ImageType::kDpi ? JobType::kDpi : JobType::kDevice;
  outcome.type = type;
  outcome.to = m.version;
  if (auto st = CheckSpecAgainst(spec, m); !st) return Fail(outcome, st.error(), cancel);
  spdlog::info("job {}: {} {} (signed by {})", spec.id, JobTypeName(type), m.version,
               (*img)->header->signer.subject);
  {
    EngineJob starting{spec.id, JobPhase::kRunning, "Starting", std::nullopt, "", m.version, ""};
    const std::lock_guard lock(status_mu_);
    status_job_ = StatusJob(type, starting, 0);
  }
  SetStatusJob(LastJobStatus(), true);

  InstallEngine* engine = EngineFor(type);
  auto r = engine->Install(spec, {(*img)->header, (*img)->reader.get()}, cancel);
  // The job ended in this run (or crossed its point of no return): a cancel
  // from now on is refused.
  if (const bool cancelled = cancel.EndFailed(); !r && cancelled) {
    // Not recorded by the engine, and a cancel was accepted: recorded here
    // as Cancelled (the accepted cancel stands).
    return Fail(outcome, r.error(), cancel);
  }
  if (!r) {
    // Not run and not recorded by the engine: the same id may come again.
    if (auto st = parts_.registry->Remove(spec.id); !st) {
      spdlog::error("{}", st.error().ToString());
    }
    Emit("state", spec.id, RefusedJson(spec.id, r.error()));
    answer = refuse(r.error());
    answer.outcome.type = type;
    return answer;
  }
  outcome = OutcomeOf(type, *r, outcome);
  Record(outcome, /*report=*/true);
  {
    const std::lock_guard lock(status_mu_);
    json s = StatusJob(type, *r, IsFinal(r->phase) || r->phase == JobPhase::kRebooting ? 100 : 0);
    status_job_ = s;
  }
  SetStatusJob(LastJobStatus(), true);
  answer.outcome = outcome;
  answer.target_slot = r->target_slot;
  return answer;
}

// ---------------------------------------------------------------- start-up

// A job that keeps stopping the agent at the same step is ended here,
// before the engines resume it once more.
void Dispatcher::GuardAtStart() {
  if (parts_.guard == nullptr) return;
  auto entry = parts_.guard->Load();
  if (!entry) {
    spdlog::error("{}", entry.error().ToString());
    (void)parts_.guard->Clear();
    return;
  }
  if (!*entry || (*entry)->attempts < StepGuard::kMaxAttempts) return;
  const StepGuard::Entry& e = **entry;
  for (InstallEngine* engine : {parts_.device, parts_.dpi}) {
    auto seen = engine->Lookup(e.job);
    if (!seen || !*seen || IsFinal((*seen)->phase)) continue;
    const Error error(Errc::kJobCrashLoop,
                      "job " + e.job + " entered step " + e.step + " " +
                          std::to_string(e.attempts) +
                          " times and the agent stopped each time before the step finished; "
                          "ended instead of trying again (see the agent's log of those runs)");
    auto ended = engine->Abandon(e.job, error);
    if (!ended) {
      spdlog::error("job {}: the loop guard could not end it: {}", e.job, ended.error().ToString());
      return;  // the file stays: the engine resumes the job as usual
    }
    auto known = parts_.registry->Find(e.job);
    JobOutcome base = known.value_or(JobOutcome{});
    base.id = e.job;
    if (base.accepted_at.empty()) base.accepted_at = firmware::NowUtc();
    const JobOutcome o = OutcomeOf(engine->type(), *ended, base);
    // Final, or a Device job rolling back on its trial boot (reported when
    // the old slot runs again, by SyncRegistry in that boot).
    Record(o, /*report=*/true);
    break;
  }
  if (auto st = parts_.guard->Clear(); !st) spdlog::warn("{}", st.error().ToString());
}

// Jobs the registry holds as unfinished get what became of them (a Device
// job commits or falls back in the boot after its trial).
void Dispatcher::SyncRegistry() {
  const auto jobs = parts_.registry->jobs();
  for (const auto& j : jobs) {
    if (IsFinal(j.phase)) continue;
    auto now = Recorded(j.id);
    if (!now) {
      spdlog::error("job {}: {}", j.id, now.error().ToString());
    } else if (*now && ((*now)->phase != j.phase || (*now)->state != j.state)) {
      spdlog::info("job {}: {} ({})", j.id, JobPhaseName((*now)->phase), (*now)->state);
      // A Device job's outcome is known only in the boot after its trial:
      // its result report is made here (unless the daemon made it and was
      // killed before it updated the registry).
      const bool report = !IsFinal((*now)->phase) || parts_.outbox == nullptr ||
                          !parts_.outbox->HasPending("result", j.id);
      Record(**now, report);
    }
  }
}

void Dispatcher::RecoverNow() {
  EndAcceptedCancels();
  GuardAtStart();
  auto resumed = parts_.device->Resume();
  if (!resumed) spdlog::error("resuming the Device job: {}", resumed.error().ToString());
  auto dpi_resumed = parts_.dpi->Resume();
  if (!dpi_resumed) {
    spdlog::error("resuming the DPI job: {}", dpi_resumed.error().ToString());
  } else if (*dpi_resumed && !IsFinal((*dpi_resumed)->phase)) {
    spdlog::warn("DPI job {} was interrupted: {}", (*dpi_resumed)->id, (*dpi_resumed)->state);
  }
  if (resumed && *resumed && IsFinal((*resumed)->phase) && parts_.guard != nullptr) {
    (void)parts_.guard->Clear();
  }
  SyncRegistry();
}

}  // namespace sag::agent
