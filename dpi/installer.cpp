#include "dpi/installer.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <array>
#include <cmath>

#include "common/atomic_file.h"
#include "common/json_reader.h"
#include "common/process.h"
#include "common/version.h"

namespace sag::dpi {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// The DPI job's lifecycle, in one table. For each state: where it goes when
// its step succeeds, where when the step fails, and where Resume() takes a
// job found in it after a crash (SIGKILL, power loss) of the agent.
//
// Resume rules, and why:
//  - before the swap (Checking, Staging, Validating): the active database
//    and the engine were never touched; the staging is removed and the job
//    fails with kDpiInterrupted. The cloud may send it again; retrying here
//    would need the payload, which is gone with the process.
//  - after the swap started and before confirm (Swapping, Reloading,
//    Confirming): roll back. The previous version was confirmed by the engine
//    once; the new one never was, and the crash may have been caused by it
//    (an engine that hangs or takes the box down on load). Going back is the
//    only direction that ends at a known-good database; the job reports
//    kDpiInterrupted and can be sent again.
//  - RollingBack: run the rollback again; each of its steps is idempotent.
//  - terminal states: nothing to do (Committed re-runs the pruning).
struct StateRow {
  JobState state;
  std::string_view name;
  JobState on_success;
  JobState on_failure;
  JobState on_resume;
};

using S = JobState;
constexpr std::array<StateRow, 10> kStates = {{
    // state            name           on success      on failure      on resume
    {S::kChecking, "Checking", S::kStaging, S::kFailed, S::kFailed},
    {S::kStaging, "Staging", S::kValidating, S::kFailed, S::kFailed},
    {S::kValidating, "Validating", S::kSwapping, S::kFailed, S::kFailed},
    {S::kSwapping, "Swapping", S::kReloading, S::kRollingBack, S::kRollingBack},
    {S::kReloading, "Reloading", S::kConfirming, S::kRollingBack, S::kRollingBack},
    {S::kConfirming, "Confirming", S::kCommitted, S::kRollingBack, S::kRollingBack},
    {S::kCommitted, "Committed", S::kCommitted, S::kCommitted, S::kCommitted},
    {S::kRollingBack, "RollingBack", S::kRolledBack, S::kFailed, S::kRollingBack},
    {S::kRolledBack, "RolledBack", S::kRolledBack, S::kRolledBack, S::kRolledBack},
    {S::kFailed, "Failed", S::kFailed, S::kFailed, S::kFailed},
}};

const StateRow& Row(JobState state) {
  for (const auto& row : kStates) {
    if (row.state == state) return row;
  }
  return kStates.back();
}

json ErrorToJson(const std::optional<Error>& error) {
  if (!error) return nullptr;
  return {{"code", error->number()},
          {"name", std::string(ErrcName(error->code()))},
          {"message", error->message()}};
}

// A recorded error: {"code": int, "name": ..., "message": string} or null.
std::optional<Error> ErrorFromJson(JsonReader& r, std::string_view key) {
  auto e = r.OptObj(key);
  if (!e) return std::nullopt;
  const auto code = e->U64("code");
  auto message = e->Str("message", "");
  return Error(static_cast<Errc>(code), std::move(message));
}

json OptString(const std::optional<std::string>& s) {
  if (!s) return nullptr;
  return *s;
}

std::string FirstLine(const std::string& text) {
  std::string line = text.substr(0, text.find('\n'));
  while (!line.empty() && (line.back() == '\r' || line.back() == ' ' || line.back() == '\t')) {
    line.pop_back();
  }
  const auto start = line.find_first_not_of(" \t");
  return start == std::string::npos ? std::string() : line.substr(start);
}

std::string OutputTail(std::string out) {
  while (!out.empty() && (out.back() == '\n' || out.back() == ' ')) out.pop_back();
  if (out.size() > 400) out = "..." + out.substr(out.size() - 400);
  return out.empty() ? std::string() : " (output: " + out + ")";
}

}  // namespace

std::string_view JobStateName(JobState state) { return Row(state).name; }

std::optional<JobState> ParseJobState(std::string_view name) {
  for (const auto& row : kStates) {
    if (row.name == name) return row.state;
  }
  // Names of older agents' journals: a job recorded by one resumes here.
  if (name == "Verifying") return JobState::kChecking;
  return std::nullopt;
}

bool IsTerminal(JobState state) {
  const auto& row = Row(state);
  return row.on_success == state && row.on_failure == state;
}

bool TransitionAllowed(JobState from, JobState to) {
  if (IsTerminal(from)) return false;
  const auto& row = Row(from);
  return to == row.on_success || to == row.on_failure;
}

struct DpiInstaller::Job {
  std::string id;
  std::string version;
  std::optional<std::string> previous;
  bool allow_downgrade = false;
  JobState state = JobState::kChecking;
  std::optional<Error> error;
  std::optional<JobState> failed_in;
  json history = json::array();  // finished jobs, newest last

  [[nodiscard]] json ToJson() const {
    return {{"id", id},
            {"version", version},
            {"previous", OptString(previous)},
            {"allow_downgrade", allow_downgrade},
            {"state", std::string(JobStateName(state))},
            {"error", ErrorToJson(error)},
            {"failed_in", failed_in ? json(std::string(JobStateName(*failed_in))) : json(nullptr)}};
  }

  // Every field type-checked: a damaged journal is kJournalCorrupt, never
  // an exception.
  static Expected<Job> FromJson(const json& j) {
    JsonReader r(j, "DPI job record", Errc::kJournalCorrupt);
    Job job;
    job.id = r.Str("id");
    const auto state_name = r.Str("state");
    job.version = r.Str("version", "");
    job.previous = r.OptStr("previous");
    job.allow_downgrade = r.Bool("allow_downgrade", false);
    job.error = ErrorFromJson(r, "error");
    const auto failed_in = r.OptStr("failed_in");
    // Damage first (JournalError names the file and what to do) ...
    SAG_TRY_STATUS(r.Finish());
    // ... then a state a newer agent knows, which is not damage.
    const auto state = ParseJobState(state_name);
    if (!state) {
      return Error(Errc::kJournalNewerFormat, "DPI job state '" + state_name + "' is unknown");
    }
    job.state = *state;
    if (failed_in) job.failed_in = ParseJobState(*failed_in);
    return job;
  }

  // The journal's history: an array of job records (checked when read).
  static Status CheckHistory(const json& history) {
    if (!history.is_array()) {
      return Error(Errc::kJournalCorrupt, "DPI journal: history: expected an array, got " +
                                              std::string(JsonTypeName(history)));
    }
    for (const auto& h : history) SAG_TRY_STATUS(FromJson(h));
    return Ok();
  }
};

namespace {

// What is wrong with a record of `journal` names the file (see Journal).
Error JournalError(const Journal& journal, const Error& e) {
  if (e.code() == Errc::kJournalNewerFormat) return journal.NewerFormat(e.message());
  return {e.code(), "job journal " + journal.path().string() + ": " + e.message() +
                        "; move the file aside to let the agent start clean"};
}

}  // namespace

DpiInstaller::DpiInstaller(Options options, platform::SystemInfo* system)
    : options_(std::move(options)),
      system_(system),
      store_(options_.store),
      journal_(options_.journal) {}

Status DpiInstaller::EnsureJournalDir() const {
  const auto dir = options_.journal.parent_path();
  if (dir.empty()) return Ok();
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) {
    return Error(Errc::kIo, "create the journal's directory " + dir.string() + ": " + ec.message());
  }
  return Ok();
}

Status DpiInstaller::Persist(Job& job, JobState to) {
  if (to != job.state && !TransitionAllowed(job.state, to)) {
    return Error(Errc::kInternal, "DPI job " + job.id + ": transition " +
                                      std::string(JobStateName(job.state)) + " -> " +
                                      std::string(JobStateName(to)) + " is not in the table");
  }
  const JobState from = job.state;
  job.state = to;
  const json record = {{"kind", "dpi"}, {"job", job.ToJson()}, {"history", job.history}};
  if (auto st = journal_.Save(record); !st) {
    job.state = from;
    return std::move(st).error().WithContext("recording DPI job " + job.id + " state " +
                                             std::string(JobStateName(to)));
  }
  if (options_.on_step && !IsTerminal(to)) options_.on_step(job.id, JobStateName(to));
  if (from == to) {
    spdlog::info("dpi job {}: {} (version {})", job.id, JobStateName(to), job.version);
  } else {
    spdlog::info("dpi job {}: {} -> {} (version {})", job.id, JobStateName(from), JobStateName(to),
                 job.version);
  }
  return Ok();
}

JobResult DpiInstaller::ResultOf(const Job& job) const {
  JobResult r;
  r.job_id = job.id;
  r.state = job.state;
  r.version = job.version;
  r.previous = job.previous;
  r.error = job.error;
  r.failed_in = job.failed_in;
  if (auto cur = store_.Current(); cur) r.active = *cur;
  return r;
}

Expected<std::string> DpiInstaller::CurrentVersion() const {
  SAG_TRY(auto cur, store_.Current());
  if (!cur) {
    return Error(Errc::kNotFound,
                 "no DPI database is active in " + options_.store.string() + " (no 'current')");
  }
  return *cur;
}

Expected<std::optional<JobResult>> DpiInstaller::Lookup(const std::string& job_id) const {
  SAG_TRY(auto record, journal_.Load());
  if (!record) return std::optional<JobResult>();
  const auto& doc = *record;
  if (doc.contains("job")) {
    auto job_or = Job::FromJson(doc["job"]);
    if (!job_or) return JournalError(journal_, job_or.error());
    auto job = std::move(job_or).value();
    if (job.id == job_id) {
      auto r = ResultOf(job);
      r.replayed = true;
      return std::optional<JobResult>(std::move(r));
    }
  }
  if (doc.contains("history")) {
    if (auto st = Job::CheckHistory(doc["history"]); !st) return JournalError(journal_, st.error());
    for (const auto& h : doc["history"]) {
      auto job_or = Job::FromJson(h);
      if (!job_or) return JournalError(journal_, job_or.error());
      auto job = std::move(job_or).value();
      if (job.id != job_id) continue;
      auto r = ResultOf(job);
      r.replayed = true;
      return std::optional<JobResult>(std::move(r));
    }
  }
  return std::optional<JobResult>();
}

Expected<JobResult> DpiInstaller::Install(const JobSpec& spec, const PackageInfo& package,
                                          PayloadSource& source, JobCancel* cancel) {
  if (spec.job_id.empty()) return Error(Errc::kInvalidArgument, "a DPI job needs a job id");
  if (options_.hooks.reload.command.empty() || options_.hooks.confirm.command.empty()) {
    return Error(Errc::kInvalidArgument,
                 "DPI hooks 'reload' and 'confirm' must be configured (dpi.hooks in agent.yaml): "
                 "a database counts as installed only once the engine confirms it");
  }
  if (options_.keep < 1) {
    return Error(Errc::kInvalidArgument, "dpi.keep must be at least 1");
  }
  if (system_ == nullptr) return Error(Errc::kInvalidArgument, "DpiInstaller needs a SystemInfo");

  SAG_TRY(auto record, journal_.Load());
  Job job;
  if (record) {
    const auto& doc = *record;
    if (doc.contains("history")) {
      if (auto st = Job::CheckHistory(doc["history"]); !st)
        return JournalError(journal_, st.error());
      job.history = doc["history"];
    }
    if (doc.contains("job")) {
      auto previous_job_or = Job::FromJson(doc["job"]);
      if (!previous_job_or) return JournalError(journal_, previous_job_or.error());
      auto previous_job = std::move(previous_job_or).value();
      if (previous_job.id == spec.job_id) {
        auto r = ResultOf(previous_job);
        r.replayed = true;
        return r;
      }
      if (!IsTerminal(previous_job.state)) {
        return Error(Errc::kJobConflict, "DPI job " + previous_job.id + " is unfinished (state " +
                                             std::string(JobStateName(previous_job.state)) +
                                             "); Resume() must finish it before job " +
                                             spec.job_id + " can run");
      }
      auto finished = previous_job.ToJson();
      job.history.push_back(std::move(finished));
    }
    SAG_TRY(auto known, Lookup(spec.job_id));
    if (known) return *known;
  }
  while (job.history.size() > options_.history) job.history.erase(job.history.begin());

  SAG_TRY_STATUS(store_.Init());
  SAG_TRY_STATUS(EnsureJournalDir());
  job.id = spec.job_id;
  job.version = package.version;
  job.allow_downgrade = spec.allow_downgrade;
  SAG_TRY(job.previous, store_.Current());
  // The first record: from here on the job exists and a re-sent id is
  // answered with its state.
  SAG_TRY_STATUS(Persist(job, JobState::kChecking));
  if (auto st = StepVerify(job, spec, package); !st) {
    Error e = std::move(st).error();
    if (cancel != nullptr && cancel->EndFailed()) e = CancelledError(job);
    Fail(job, std::move(e));
    return ResultOf(job);
  }
  SAG_TRY_STATUS(Run(job, source, cancel));
  return ResultOf(job);
}

Error DpiInstaller::CancelledError(const Job& job) {
  return {Errc::kCancelled, "DPI job " + job.id + " was cancelled on request in state " +
                                std::string(JobStateName(job.state)) +
                                ", before the swap: the staged files were removed and " +
                                job.previous.value_or("no database") + " stays active"};
}

namespace {

// The payload, stopped between chunks when the job's cancel is accepted
// (or the daemon stops).
class CancellablePayload final : public PayloadSource {
 public:
  CancellablePayload(PayloadSource& inner, const JobCancel* cancel)
      : inner_(inner), cancel_(cancel) {}
  Expected<std::optional<std::span<const std::uint8_t>>> Next() override {
    if (cancel_ != nullptr && cancel_->stopping()) {
      return Error(Errc::kCancelled, "staging stopped on request");
    }
    return inner_.Next();
  }

 private:
  PayloadSource& inner_;
  const JobCancel* cancel_;
};

}  // namespace

// Drives a verified job from Staging to a terminal state. An Error is
// returned only when the journal cannot be written: then the job stops where
// it is and Resume() finishes it.
Status DpiInstaller::Run(Job& job, PayloadSource& source, JobCancel* cancel) {
  // Before the swap: a failure, or a cancel accepted (checked between the
  // states), ends the job Failed; a cancel accepted before the end makes
  // it Cancelled, whatever else stopped it.
  auto fail = [&](Error e) {
    if (cancel != nullptr && cancel->EndFailed()) {
      e = CancelledError(job);
    } else if (e.code() == Errc::kCancelled) {
      // Stopped with the daemon, not cancelled: as a resume would end it.
      e = Error(Errc::kDpiInterrupted,
                "the agent stopped while the job was in " + std::string(JobStateName(job.state)) +
                    " (" + e.message() + "); the staged files were removed and " +
                    job.previous.value_or("no database") + " stays active; send the job again");
    }
    Fail(job, std::move(e));
  };
  auto step = [&](Status st) -> Status {
    if (st && cancel != nullptr && cancel->requested()) return CancelledError(job);
    return st;
  };
  if (auto st = step(Ok()); !st) {
    fail(std::move(st).error());
    return Ok();
  }
  SAG_TRY_STATUS(Persist(job, JobState::kStaging));
  CancellablePayload payload(source, cancel);
  if (auto st = step(StepStage(job, payload)); !st) {
    fail(std::move(st).error());
    return Ok();
  }
  SAG_TRY_STATUS(Persist(job, JobState::kValidating));
  if (auto st = step(StepValidate(job)); !st) {
    fail(std::move(st).error());
    return Ok();
  }
  // The point of no return: decided under the cancel point's lock, so a
  // cancel either came first (nothing is swapped) or is refused.
  if (cancel != nullptr && !cancel->TryCross()) {
    fail(CancelledError(job));
    return Ok();
  }
  SAG_TRY_STATUS(Persist(job, JobState::kSwapping));
  if (auto st = StepSwap(job); !st) {
    RollBack(job, std::move(st).error());
    return Ok();
  }
  SAG_TRY_STATUS(Persist(job, JobState::kReloading));
  if (auto st = StepReload(job); !st) {
    RollBack(job, std::move(st).error());
    return Ok();
  }
  SAG_TRY_STATUS(Persist(job, JobState::kConfirming));
  if (auto st = StepConfirm(job); !st) {
    RollBack(job, std::move(st).error());
    return Ok();
  }
  Commit(job);
  return Ok();
}

Status DpiInstaller::StepVerify(Job& job, const JobSpec& spec, const PackageInfo& package) {
  if (package.type != image::ImageType::kDpi) {
    return Error(
        Errc::kWrongType,
        "the package is a Device image, not a Dpi database; send it as VersionType=Device");
  }
  // As the Device path does (firmware/installer.cpp CheckPolicy): the signed
  // manifest names the models the database is for.
  if (std::find(package.compatible.begin(), package.compatible.end(), options_.model) ==
      package.compatible.end()) {
    std::string list;
    for (const auto& c : package.compatible) list += (list.empty() ? "" : ", ") + c;
    return Error(
        Errc::kIncompatibleModel,
        "DPI database " + package.version + " is for " +
            (list.empty() ? std::string("no model") : list) + "; this appliance is a " +
            (options_.model.empty() ? std::string("(model not configured)") : options_.model));
  }
  SAG_TRY(auto version, Version::Parse(VersionKind::kDpi, package.version));
  if (!spec.version.empty() && spec.version != package.version) {
    return Error(Errc::kInvalidArgument, "the job asks for DPI version " + spec.version +
                                             " but the package holds " + package.version);
  }
  if (job.previous) {
    auto active = Version::Parse(VersionKind::kDpi, *job.previous);
    // An active database whose version does not parse cannot be compared:
    // fail closed unless the operator allows any version.
    if (!active && !job.allow_downgrade) {
      return Error(Errc::kVersionUnparsable,
                   "the active DPI database '" + *job.previous +
                       "' does not have a version this agent can compare with " + package.version +
                       " (" + active.error().message() +
                       "); to install it anyway, run `sag-agent install --allow-downgrade` or "
                       "send the job with allow_downgrade set");
    }
    if (active) {
      if (version == *active) {
        return Error(Errc::kVersionTooOld,
                     "DPI database " + package.version + " is already active");
      }
      if (version < *active && !job.allow_downgrade) {
        return Error(Errc::kVersionTooOld, "DPI database " + package.version +
                                               " is older than the active " + *job.previous +
                                               "; set allow_downgrade to install it anyway");
      }
    }
  }
  SAG_TRY(auto free, system_->FreeSpace(options_.store));
  const auto needed = static_cast<std::uint64_t>(
      std::ceil(static_cast<double>(package.payload_size) * options_.space_margin));
  if (free < needed) {
    return Error(Errc::kNoSpace, "the DPI store " + options_.store.string() + " has " +
                                     std::to_string(free) + " bytes free, " +
                                     std::to_string(needed) + " are needed for a " +
                                     std::to_string(package.payload_size) +
                                     "-byte package; free some space or lower dpi.keep");
  }
  return Ok();
}

Status DpiInstaller::StepStage(Job& job, PayloadSource& source) {
  SAG_TRY(auto dir, store_.PrepareStaging(job.version));
  SAG_TRY(auto stats, ExtractPayload(source, dir, options_.limits));
  spdlog::info("dpi job {}: extracted {} entries, {} bytes of files from {} payload bytes{}",
               job.id, stats.entries, stats.file_bytes, stats.payload_bytes,
               stats.compressed ? " (zstd)" : "");
  // The `version` file convention: the database names its own version, so a
  // package whose manifest and content disagree never goes live.
  auto text = ReadFile(dir / "version", 4096);
  if (!text) {
    return Error(Errc::kDpiValidateFailed, "the package has no readable 'version' file (" +
                                               text.error().message() +
                                               "); a DPI database must carry one");
  }
  const auto inside = FirstLine(*text);
  if (inside != job.version) {
    return Error(Errc::kDpiValidateFailed, "the package's 'version' file says '" + inside +
                                               "' but its manifest says '" + job.version + "'");
  }
  return Ok();
}

Status DpiInstaller::StepValidate(Job& job) {
  if (options_.hooks.validate.command.empty()) return Ok();
  if (auto st = RunHook(options_.hooks.validate, "validate", job.version,
                        store_.StagingDir(job.version), job.id, nullptr);
      !st) {
    return Error(Errc::kDpiValidateFailed,
                 "the engine refused database " + job.version + ": " + st.error().message());
  }
  return Ok();
}

Status DpiInstaller::StepSwap(Job& job) {
  SAG_TRY_STATUS(store_.Promote(job.version));
  return store_.Activate(job.version);
}

Status DpiInstaller::StepReload(Job& job) {
  if (auto st = RunHook(options_.hooks.reload, "reload", job.version,
                        store_.VersionDir(job.version), job.id, nullptr);
      !st) {
    return Error(Errc::kDpiReloadFailed, st.error().message());
  }
  return Ok();
}

Status DpiInstaller::StepConfirm(Job& job) {
  std::string loaded;
  if (auto st = RunHook(options_.hooks.confirm, "confirm", job.version,
                        store_.VersionDir(job.version), job.id, &loaded);
      !st) {
    return Error(Errc::kDpiConfirmMismatch,
                 "the engine could not confirm " + job.version + ": " + st.error().message());
  }
  if (loaded != job.version) {
    return Error(Errc::kDpiConfirmMismatch,
                 "the engine reports '" + loaded + "' loaded after the reload of " + job.version);
  }
  return Ok();
}

Status DpiInstaller::RunHook(const Hook& hook, std::string_view stage, const std::string& version,
                             const fs::path& dir, const std::string& job_id,
                             std::string* first_line) {
  std::vector<std::string> argv = hook.command;
  argv.push_back(dir.string());
  argv.push_back(version);
  CommandOptions opts;
  opts.timeout = hook.timeout;
  opts.env = {"SAG_DPI_STAGE=" + std::string(stage),
              "SAG_DPI_DIR=" + dir.string(),
              "SAG_DPI_VERSION=" + version,
              "SAG_DPI_STORE=" + options_.store.string(),
              "SAG_DPI_CURRENT=" + store_.CurrentLink().string(),
              "SAG_DPI_JOB_ID=" + job_id};
  auto r = RunCommand(argv, opts);
  if (!r) return std::move(r).error().WithContext(std::string(stage) + " hook");
  const std::string what = std::string(stage) + " hook '" + argv.front() + "'";
  if (r->timed_out) {
    return Error(Errc::kTimeout, what + " did not finish within " +
                                     std::to_string(hook.timeout.count()) + " ms" +
                                     OutputTail(r->output));
  }
  if (r->signal != 0) {
    return Error(Errc::kCommandFailed, what + " was killed by signal " + std::to_string(r->signal) +
                                           " (did the engine crash?)" + OutputTail(r->output));
  }
  if (r->exit_code != 0) {
    return Error(Errc::kCommandFailed, what + " exited with status " +
                                           std::to_string(r->exit_code) + OutputTail(r->output));
  }
  if (first_line != nullptr) *first_line = FirstLine(r->output);
  return Ok();
}

Status DpiInstaller::ReloadAndConfirm(const std::optional<std::string>& version,
                                      const std::string& job_id, Errc reload_code,
                                      Errc confirm_code) {
  const std::string v = version.value_or("");
  const fs::path dir = version ? store_.VersionDir(*version) : fs::path();
  if (auto st = RunHook(options_.hooks.reload, "reload", v, dir, job_id, nullptr); !st) {
    return Error(reload_code, st.error().message());
  }
  if (!version) return Ok();  // nothing to confirm: no database is active
  std::string loaded;
  if (auto st = RunHook(options_.hooks.confirm, "confirm", v, dir, job_id, &loaded); !st) {
    return Error(confirm_code, st.error().message());
  }
  if (loaded != v) {
    return Error(confirm_code, "the engine reports '" + loaded + "' loaded, expected " + v);
  }
  return Ok();
}

void DpiInstaller::Commit(Job& job) {
  if (auto st = Persist(job, JobState::kCommitted); !st) {
    spdlog::error("dpi job {}: {}", job.id, st.error().ToString());
    return;  // the record still says Confirming: Resume() rolls back
  }
  // Housekeeping after the commit point: failures only cost disk space.
  if (auto st = store_.Prune(options_.keep, job.previous); !st) {
    spdlog::warn("dpi job {}: pruning old versions: {}", job.id, st.error().ToString());
  }
  if (auto st = store_.ClearStaging(); !st) {
    spdlog::warn("dpi job {}: clearing staging: {}", job.id, st.error().ToString());
  }
}

void DpiInstaller::Fail(Job& job, Error error) {
  spdlog::warn("dpi job {} failed in {}: {}", job.id, JobStateName(job.state), error.ToString());
  // Before the swap nothing outside staging/ was touched: removing it is the
  // whole cleanup. A crash here leaves the pre-swap state, which Resume()
  // cleans again.
  if (auto st = store_.ClearStaging(); !st) {
    spdlog::warn("dpi job {}: clearing staging: {}", job.id, st.error().ToString());
  }
  if (!job.failed_in) job.failed_in = job.state;
  job.error = std::move(error);
  if (auto st = Persist(job, JobState::kFailed); !st) {
    spdlog::error("dpi job {}: {}", job.id, st.error().ToString());
  }
}

void DpiInstaller::RollBack(Job& job, std::optional<Error> error) {
  if (job.state != JobState::kRollingBack) {
    spdlog::warn("dpi job {} failed in {}, rolling back to {}: {}", job.id, JobStateName(job.state),
                 job.previous.value_or("(none)"), error ? error->ToString() : std::string());
    job.failed_in = job.state;
    job.error = std::move(error);
    // Recorded before `current` moves back, so a crash during the rollback
    // resumes the rollback, never the install.
    if (auto st = Persist(job, JobState::kRollingBack); !st) {
      spdlog::error("dpi job {}: {}", job.id, st.error().ToString());
      return;
    }
  } else if (options_.on_step) {
    options_.on_step(job.id, JobStateName(job.state));  // a resumed rollback runs again
  }
  auto attempt = [&]() -> Status {
    SAG_TRY_STATUS(store_.Activate(job.previous));
    return ReloadAndConfirm(job.previous, job.id, Errc::kDpiReloadFailed,
                            Errc::kDpiConfirmMismatch);
  }();
  if (!attempt) {
    const std::string original = job.error ? job.error->message() : std::string("interrupted");
    job.error =
        Error(job.error ? job.error->code() : attempt.error().code(),
              original + "; the rollback to " + job.previous.value_or("(none)") +
                  " failed too: " + attempt.error().ToString() + "; the engine needs an operator");
    if (auto st = Persist(job, JobState::kFailed); !st) {
      spdlog::error("dpi job {}: {}", job.id, st.error().ToString());
    }
    return;
  }
  if (auto st = store_.Remove(job.version); !st) {
    spdlog::warn("dpi job {}: removing {}: {}", job.id, job.version, st.error().ToString());
  }
  if (auto st = store_.ClearStaging(); !st) {
    spdlog::warn("dpi job {}: clearing staging: {}", job.id, st.error().ToString());
  }
  if (auto st = Persist(job, JobState::kRolledBack); !st) {
    spdlog::error("dpi job {}: {}", job.id, st.error().ToString());
  }
}

Expected<std::optional<DpiInstaller::Job>> DpiInstaller::LoadCurrent() const {
  SAG_TRY(auto record, journal_.Load());
  if (!record || !record->contains("job")) return std::optional<Job>();
  const auto& doc = *record;
  auto job_or = Job::FromJson(doc["job"]);
  if (!job_or) return JournalError(journal_, job_or.error());
  auto job = std::move(job_or).value();
  if (doc.contains("history")) {
    if (auto st = Job::CheckHistory(doc["history"]); !st) return JournalError(journal_, st.error());
    job.history = doc["history"];
  }
  return std::optional<Job>(std::move(job));
}

Expected<JobResult> DpiInstaller::Abandon(const std::string& job_id, Error error) {
  SAG_TRY(auto current, LoadCurrent());
  if (!current || current->id != job_id || IsTerminal(current->state)) {
    return Error(Errc::kJobUnknown, "no unfinished DPI job " + job_id + " to end");
  }
  Job& job = *current;
  SAG_TRY_STATUS(store_.Init());
  spdlog::error("dpi job {}: ended in {}: {}", job.id, JobStateName(job.state), error.ToString());
  switch (Row(job.state).on_resume) {
    case JobState::kFailed:
      job.failed_in = job.state;
      Fail(job, std::move(error));
      break;
    case JobState::kRollingBack:
      if (job.state == JobState::kRollingBack) {
        // The rollback itself keeps crashing the agent: stop here.
        if (!job.failed_in) job.failed_in = job.state;
        job.error = Error(error.code(), error.message() + "; the rollback to " +
                                            job.previous.value_or("(none)") +
                                            " did not finish; the engine needs an operator");
        SAG_TRY_STATUS(Persist(job, JobState::kFailed));
      } else {
        RollBack(job, std::move(error));
      }
      break;
    default:
      break;
  }
  return ResultOf(job);
}

Expected<std::optional<JobResult>> DpiInstaller::Resume() {
  SAG_TRY(auto current, LoadCurrent());
  if (!current) return std::optional<JobResult>();
  Job job = std::move(*current);
  SAG_TRY_STATUS(store_.Init());
  const JobState crashed_in = job.state;
  switch (Row(crashed_in).on_resume) {
    case JobState::kFailed:
      if (!IsTerminal(crashed_in)) {
        job.failed_in = crashed_in;
        Fail(job, Error(Errc::kDpiInterrupted, "the agent stopped while the job was in " +
                                                   std::string(JobStateName(crashed_in)) +
                                                   "; the staged files were removed and " +
                                                   job.previous.value_or("no database") +
                                                   " stays active; send the job again"));
      }
      break;
    case JobState::kRollingBack:
      if (crashed_in == JobState::kRollingBack && !job.error) {
        job.error = Error(Errc::kDpiInterrupted, "the agent stopped during a rollback of " +
                                                     job.version + "; the rollback was finished");
      }
      RollBack(job, crashed_in == JobState::kRollingBack
                        ? job.error
                        : std::optional<Error>(
                              Error(Errc::kDpiInterrupted,
                                    "the agent stopped while the job was in " +
                                        std::string(JobStateName(crashed_in)) +
                                        ", after the swap and before the engine confirmed " +
                                        job.version + "; rolled back")));
      break;
    case JobState::kCommitted:
      if (auto st = store_.Prune(options_.keep, job.previous); !st) {
        spdlog::warn("dpi job {}: pruning old versions: {}", job.id, st.error().ToString());
      }
      if (auto st = store_.ClearStaging(); !st) {
        spdlog::warn("dpi job {}: clearing staging: {}", job.id, st.error().ToString());
      }
      break;
    default:
      break;
  }
  auto r = ResultOf(job);
  r.replayed = IsTerminal(crashed_in);
  return std::optional<JobResult>(std::move(r));
}

}  // namespace sag::dpi
