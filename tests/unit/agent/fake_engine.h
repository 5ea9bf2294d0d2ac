// A fake install engine that keeps real state: its "journal" (FakeEngineState)
// outlives the engine object, as the real journal outlives the process, so a
// test restarts the daemon by building a new engine and dispatcher over the
// same state. It obeys the engine contract (agent/engines.h): a job id is
// recorded once, an unfinished job makes a new one kJobConflict, a Device job
// stops at Rebooting and its outcome is decided by Resume() in the next boot,
// Abandon() ends only the unfinished job.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "agent/engines.h"
#include "agent/installer_engines.h"

namespace sag::agent::test {

struct FakeEngineState {
  std::map<std::string, EngineJob> jobs;  // every job recorded, by id
  std::optional<std::string> unfinished;  // the job in progress, if any
  std::map<std::string, int> installs;    // Install() calls that ran a job, by id
  int abandons = 0;
  // What the next Install() does.
  std::optional<Error> refuse_next;  // not recorded (a conflict, a damaged journal)
  std::optional<Error> fail_next;    // recorded as failed (the engine's policy)
  // What Resume() makes of a Device job waiting for its trial boot once the
  // "reboot" happened (set booted = true): committed or rolled back.
  bool booted = false;
  bool trial_healthy = true;
  // Resume() of an unfinished job enters this step and "crashes" (the
  // process would die here): the job stays unfinished.
  std::string crash_step;
  std::string version = "1.0.0";
  // Called by Install() as the job reaches "Writing" (before the cancel is
  // checked), "BeforeNoReturn" (before it crosses its point of no return)
  // and "AfterNoReturn": a test cancels there.
  std::function<void(const std::string& point)> at_point;
};

class FakeEngine final : public InstallEngine {
 public:
  FakeEngine(JobType type, FakeEngineState& state, StepHookFn on_step = {})
      : type_(type), s_(state), on_step_(std::move(on_step)) {}

  [[nodiscard]] JobType type() const override { return type_; }
  void SetProgress(EngineProgressFn progress) override { progress_ = std::move(progress); }

  Expected<std::optional<EngineJob>> Resume() override {
    if (!s_.unfinished) return std::optional<EngineJob>();
    EngineJob& j = s_.jobs.at(*s_.unfinished);
    if (!s_.crash_step.empty()) {
      if (on_step_) on_step_(j.id, s_.crash_step);
      return std::optional<EngineJob>(j);  // "crashed": nothing finished
    }
    if (type_ == JobType::kDevice && j.phase == JobPhase::kRebooting && s_.booted) {
      Change(j, s_.trial_healthy ? JobPhase::kCommitted : JobPhase::kRolledBack,
             s_.trial_healthy ? "Committed" : "RolledBack");
      if (!s_.trial_healthy) j.error = Error(Errc::kHealthCheckFailed, "unhealthy");
      if (s_.trial_healthy) s_.version = j.to;
      s_.unfinished.reset();
    }
    return std::optional<EngineJob>(j);
  }

  Expected<std::optional<EngineJob>> Lookup(const std::string& id) override {
    auto it = s_.jobs.find(id);
    if (it == s_.jobs.end()) return std::optional<EngineJob>();
    return std::optional<EngineJob>(it->second);
  }

  Expected<EngineJob> Install(const JobSpec& spec, VerifiedImage image,
                              JobCancel& cancel) override {
    if (auto it = s_.jobs.find(spec.id); it != s_.jobs.end()) return it->second;
    if (s_.refuse_next) {
      Error e = *s_.refuse_next;
      s_.refuse_next.reset();
      return e;
    }
    if (s_.unfinished) {
      return Error(Errc::kJobConflict, "job " + *s_.unfinished + " is still unfinished");
    }
    ++s_.installs[spec.id];
    EngineJob j{spec.id,    JobPhase::kRunning,
                "Starting", std::nullopt,
                s_.version, image.header != nullptr ? image.header->manifest.version : "",
                ""};
    s_.jobs[spec.id] = j;
    if (s_.fail_next) {
      s_.jobs[spec.id].error = *s_.fail_next;
      s_.fail_next.reset();
      Change(s_.jobs[spec.id], JobPhase::kFailed, "Failed");
      return s_.jobs[spec.id];
    }
    if (on_step_) on_step_(spec.id, "Writing");
    Change(s_.jobs[spec.id], JobPhase::kRunning, "Writing");
    if (s_.at_point) s_.at_point("Writing");
    if (progress_) {
      for (std::uint64_t i = 1; i <= 4; ++i) progress_(s_.jobs[spec.id], i * 25, 100);
    }
    // As the real engines: a cancel is checked at a step boundary, and the
    // point of no return is crossed under the cancel point's lock.
    if (cancel.requested()) return Cancelled(s_.jobs[spec.id], cancel);
    if (s_.at_point) s_.at_point("BeforeNoReturn");
    if (!cancel.TryCross()) return Cancelled(s_.jobs[spec.id], cancel);
    if (s_.at_point) s_.at_point("AfterNoReturn");
    if (type_ == JobType::kDevice) {
      s_.jobs[spec.id].target_slot = "B";
      Change(s_.jobs[spec.id], JobPhase::kRebooting, "Rebooting");
      s_.unfinished = spec.id;
    } else {
      Change(s_.jobs[spec.id], JobPhase::kCommitted, "Committed");
      s_.version = s_.jobs[spec.id].to;
    }
    return s_.jobs[spec.id];
  }

  Expected<std::string> CurrentVersion() override { return s_.version; }
  void Cancel() override {}

  Expected<EngineJob> Abandon(const std::string& id, Error error) override {
    if (s_.unfinished != id) return Error(Errc::kJobUnknown, "no unfinished job " + id);
    ++s_.abandons;
    EngineJob& j = s_.jobs.at(id);
    j.error = std::move(error);
    Change(j, JobPhase::kFailed, "Failed");
    s_.unfinished.reset();
    return j;
  }

 private:
  EngineJob Cancelled(EngineJob& j, JobCancel& cancel) {
    (void)cancel.EndFailed();
    j.error = Error(Errc::kCancelled, "cancelled before the point of no return");
    Change(j, JobPhase::kFailed, "Failed");
    return j;
  }

  void Change(EngineJob& j, JobPhase phase, std::string state) {
    j.phase = phase;
    j.state = std::move(state);
    if (progress_) progress_(j, 0, 0);
  }

  JobType type_;
  FakeEngineState& s_;
  StepHookFn on_step_;
  EngineProgressFn progress_;
};

}  // namespace sag::agent::test
