// The dispatcher on fake engines (fake_engine.h) and a fake image opener: a
// "restart" is a new dispatcher, registry, outbox and engine objects over
// the same files and engine state; a "reboot" is a restart with the fake
// Device engine's boot flag set.
#include "agent/dispatcher.h"

#include <gtest/gtest.h>

#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <future>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "agent/outbox.h"
#include "agent/registry.h"
#include "agent/step_guard.h"
#include "common/atomic_file.h"
#include "tests/support/temp_dir.h"
#include "tests/unit/agent/fake_engine.h"

namespace sag::agent {
namespace {

using test::FakeEngine;
using test::FakeEngineState;

struct World {
  sag::test::TempDir dir;
  FakeEngineState device_state;
  FakeEngineState dpi_state;
  int opens = 0;
  std::atomic<bool> downloading{false};       // the opener waits in a "/slow" download
  std::atomic<bool> download_stopped{false};  // ... and saw its cancel flag
};

// One daemon lifetime over the world's files.
struct Daemon {
  World& w;
  JobRegistry registry;
  Outbox outbox;
  StepGuard guard;
  FakeEngine device;
  FakeEngine dpi;
  std::unique_ptr<Dispatcher> dispatcher;

  explicit Daemon(World& world)
      : w(world),
        registry(world.dir / "jobs.json"),
        outbox(world.dir.path()),
        guard(world.dir / "step-attempts.json"),
        device(JobType::kDevice, world.device_state, Hook()),
        dpi(JobType::kDpi, world.dpi_state, Hook()) {
    EXPECT_TRUE(registry.Load());
    EXPECT_TRUE(outbox.Load());
    DispatcherParts parts;
    parts.registry = &registry;
    parts.device = &device;
    parts.dpi = &dpi;
    parts.outbox = &outbox;
    parts.guard = &guard;
    // Images by name: /dev-V.img is a Device image of version V, /dpi-V.img
    // a DPI one; anything else does not exist.
    parts.open = [&w = world](
                     const JobSpec& spec,
                     const std::atomic<bool>* cancel) -> Expected<std::unique_ptr<OpenImage>> {
      ++w.opens;
      auto img = std::make_unique<OpenImage>();
      const std::string& s = spec.source;
      if (s.starts_with("/slow")) {
        // A download that stalls until its cancel flag is set (10 s at
        // most), as net::Downloader honours DownloadOptions::cancel.
        w.downloading = true;
        for (int i = 0; i < 10000 && (cancel == nullptr || !*cancel); ++i) {
          std::this_thread::sleep_for(std::chrono::milliseconds(1));
        }
        if (cancel != nullptr && *cancel) {
          w.download_stopped = true;
          return Error(Errc::kCancelled, "download stopped");
        }
        return Error(Errc::kNetStalled, "the test's download was never cancelled");
      }
      if (s.starts_with("/dev-")) {
        img->header_copy.manifest.type = image::ImageType::kDevice;
      } else if (s.starts_with("/dpi-")) {
        img->header_copy.manifest.type = image::ImageType::kDpi;
      } else {
        return Error(Errc::kNotFound, s + " does not exist");
      }
      img->header_copy.manifest.version = s.substr(5, s.size() - 9);
      img->header = &img->header_copy;
      return img;
    };
    dispatcher = std::make_unique<Dispatcher>(std::move(parts));
  }

  StepHookFn Hook() {
    return [this](const std::string& job, std::string_view step) {
      EXPECT_TRUE(guard.Enter(job, step));
    };
  }

  // "kind:phase" of each pending report of `job`, in order.
  std::vector<std::string> Reports(const std::string& job) const {
    std::vector<std::string> out;
    for (const auto& r : outbox.Pending()) {
      if (r.job == job)
        out.push_back(r.kind + ":" + r.body.value("phase", r.body.value("state", "")));
    }
    return out;
  }
};

JobSpec Spec(const std::string& id, const std::string& source) {
  JobSpec s;
  s.id = id;
  s.source = source;
  return s;
}

TEST(Dispatcher, RunsAJobOncePerIdAcrossTypesAndRestarts) {
  World w;
  {
    Daemon d(w);
    auto a = d.dispatcher->Run(Spec("a", "/dpi-20201117_1_0-0.0.1.img"));
    EXPECT_FALSE(a.known);
    EXPECT_EQ(a.outcome.type, JobType::kDpi);
    EXPECT_EQ(a.outcome.phase, JobPhase::kCommitted);
    EXPECT_TRUE(a.ok());
  }
  Daemon d(w);  // a restart
  d.dispatcher->RecoverNow();
  // The same id, now with a Device image: answered with the DPI record.
  auto again = d.dispatcher->Run(Spec("a", "/dev-9.0.0.img"));
  EXPECT_TRUE(again.known);
  EXPECT_EQ(again.outcome.type, JobType::kDpi);
  EXPECT_EQ(again.outcome.phase, JobPhase::kCommitted);
  EXPECT_EQ(w.dpi_state.installs["a"], 1);
  EXPECT_EQ(w.device_state.installs.count("a"), 0U);
  EXPECT_EQ(w.opens, 1) << "a known job's source is not opened again";
  const auto kinds = d.Reports("a");
  ASSERT_FALSE(kinds.empty());
  EXPECT_EQ(std::count(kinds.begin(), kinds.end(), "result:committed"), 1) << "no second result";
}

TEST(Dispatcher, AFailedImageIsAnsweredFromTheRegistryWhenOfferedAgain) {
  World w;
  Daemon d(w);
  auto first = d.dispatcher->Run(Spec("m", "/missing.img"));
  EXPECT_EQ(first.outcome.phase, JobPhase::kFailed);
  EXPECT_EQ(first.outcome.type, JobType::kUnknown);
  ASSERT_TRUE(first.outcome.error);
  EXPECT_EQ(first.outcome.error->code(), Errc::kNotFound);
  Daemon restarted(w);
  auto again = restarted.dispatcher->Run(Spec("m", "/missing.img"));
  EXPECT_TRUE(again.known);
  ASSERT_TRUE(again.outcome.error);
  EXPECT_EQ(again.outcome.error->code(), Errc::kNotFound);
  EXPECT_EQ(w.opens, 1);
  EXPECT_EQ(restarted.Reports("m"), (std::vector<std::string>{"state:accepted", "result:failed"}));
}

TEST(Dispatcher, ARefusedJobIsAnsweredAtOnceAndNotRecorded) {
  World w;
  Daemon d(w);
  w.device_state.refuse_next = Error(Errc::kJobConflict, "job x is still Rebooting");
  auto r = d.dispatcher->Run(Spec("c", "/dev-9.0.0.img"));
  EXPECT_TRUE(r.refused);
  ASSERT_TRUE(r.outcome.error);
  EXPECT_EQ(r.outcome.error->code(), Errc::kJobConflict);
  EXPECT_EQ(r.ToJson()["state"], "Refused");
  EXPECT_FALSE(d.registry.Find("c")) << "a refused job may be offered again";
  EXPECT_EQ(d.Reports("c"), (std::vector<std::string>{"state:accepted", "state:Refused"}));
  // Offered again once the conflict is gone: it runs.
  auto later = d.dispatcher->Run(Spec("c", "/dev-9.0.0.img"));
  EXPECT_FALSE(later.refused);
  EXPECT_EQ(later.outcome.phase, JobPhase::kRebooting);

  // Through Submit: a spec whose format is wrong is answered before
  // Submit returns, without the worker.
  std::optional<JobAnswer> got;
  JobSpec bad = Spec("b", "relative/path");
  d.dispatcher->Submit(bad, [&](const JobAnswer& a) { got = a; });
  ASSERT_TRUE(got);
  EXPECT_TRUE(got->refused);
  EXPECT_EQ(got->outcome.error->code(), Errc::kBadRequest);
}

TEST(Dispatcher, SubmitRunsJobsInOrderOnTheWorkerAndRepliesOnce) {
  World w;
  Daemon d(w);
  std::mutex mu;
  std::vector<std::string> replies;
  for (const char* id : {"s1", "s2", "s3"}) {
    d.dispatcher->Submit(
        Spec(id, std::string("/dpi-20201117_1_0-0.0.") + (id + 1) + ".img"),
        [&](const JobAnswer& a) {
          const std::lock_guard lock(mu);
          replies.push_back(a.outcome.id + ":" + std::string(JobPhaseName(a.outcome.phase)));
        });
  }
  d.dispatcher->WaitIdle();
  EXPECT_EQ(replies, (std::vector<std::string>{"s1:committed", "s2:committed", "s3:committed"}));
}

TEST(Dispatcher, ReportsAreInTheOutboxInOrder) {
  World w;
  Daemon d(w);
  (void)d.dispatcher->Run(Spec("r", "/dpi-20201117_1_0-0.0.1.img"));
  EXPECT_EQ(d.Reports("r"),
            (std::vector<std::string>{"state:accepted", "state:running", "progress:Writing",
                                      "progress:Writing", "state:committed", "result:committed"}))
      << "accepted, each state change, progress at each 10 % (50 and 100 of 25/50/75/100), "
         "one result";
  std::uint64_t last = 0;
  for (const auto& r : d.outbox.Pending()) {
    EXPECT_GT(r.seq, last);
    last = r.seq;
  }
}

TEST(Dispatcher, ADeviceResultIsReportedInTheBootAfterTheTrial) {
  World w;
  {
    Daemon d(w);
    auto r = d.dispatcher->Run(Spec("dv", "/dev-9.0.0.img"));
    EXPECT_EQ(r.outcome.phase, JobPhase::kRebooting);
    EXPECT_TRUE(r.ok());
    EXPECT_EQ(r.target_slot, "B");
    const auto kinds = d.Reports("dv");
    EXPECT_EQ(std::count_if(kinds.begin(), kinds.end(),
                            [](const std::string& k) { return k.starts_with("result:"); }),
              0)
        << "no result before the trial boot";
  }
  w.device_state.booted = true;  // the reboot
  {
    Daemon d(w);
    d.dispatcher->RecoverNow();
    EXPECT_EQ(d.registry.Find("dv")->phase, JobPhase::kCommitted);
    const auto kinds = d.Reports("dv");
    EXPECT_EQ(kinds.back(), "result:committed");
  }
  Daemon d(w);  // one more restart: no second result
  d.dispatcher->RecoverNow();
  const auto kinds = d.Reports("dv");
  EXPECT_EQ(std::count(kinds.begin(), kinds.end(), "result:committed"), 1);
}

TEST(Dispatcher, ASpecThatDisagreesWithTheSignedManifestIsRefusedWithItsCode) {
  World w;
  Daemon d(w);
  JobSpec wrong_type = Spec("t", "/dev-9.0.0.img");
  wrong_type.type = JobType::kDpi;
  auto t = d.dispatcher->Run(wrong_type);
  EXPECT_EQ(t.outcome.phase, JobPhase::kFailed);
  ASSERT_TRUE(t.outcome.error);
  EXPECT_EQ(t.outcome.error->code(), Errc::kSpecMismatch);
  EXPECT_EQ(t.outcome.error->number(), 413);
  EXPECT_NE(t.outcome.error->message().find("signed image is a Device image"), std::string::npos)
      << t.outcome.error->message();

  JobSpec wrong_version = Spec("v", "/dpi-20201117_1_0-0.0.1.img");
  wrong_version.version = "20201117_1_0-0.0.2";
  auto v = d.dispatcher->Run(wrong_version);
  ASSERT_TRUE(v.outcome.error);
  EXPECT_EQ(v.outcome.error->code(), Errc::kSpecMismatch);

  // A local image file of another size than the job says: refused before
  // it is opened.
  ASSERT_TRUE(WriteFileAtomic(w.dir / "img", "0123456789", 0600));
  JobSpec wrong_size = Spec("z", (w.dir / "img").string());
  wrong_size.size = 11;
  const int opens = w.opens;
  auto z = d.dispatcher->Run(wrong_size);
  ASSERT_TRUE(z.outcome.error);
  EXPECT_EQ(z.outcome.error->code(), Errc::kSpecMismatch);
  EXPECT_EQ(w.opens, opens);

  JobSpec right = Spec("ok", "/dpi-20201117_1_0-0.0.1.img");
  right.type = JobType::kDpi;
  right.version = "20201117_1_0-0.0.1";
  EXPECT_EQ(d.dispatcher->Run(right).outcome.phase, JobPhase::kCommitted);
  EXPECT_EQ(w.device_state.installs.size() + w.dpi_state.installs.size(), 1U)
      << "a mismatched job reaches no engine";
}

TEST(Dispatcher, AJobPastItsDeadlineFailsWithTimeout) {
  World w;
  Daemon d(w);
  JobSpec late = Spec("late", "/dev-9.0.0.img");
  late.deadline = "2000-01-01T00:00:00Z";
  auto r = d.dispatcher->Run(late);
  ASSERT_TRUE(r.outcome.error);
  EXPECT_EQ(r.outcome.error->code(), Errc::kTimeout);
  EXPECT_EQ(w.opens, 0);
}

// The loop guard: a job whose resume keeps stopping the agent in the same
// step is ended with kJobCrashLoop at the start after kMaxAttempts entries.
TEST(Dispatcher, AJobThatKeepsCrashingTheAgentAtOneStepIsEndedWithCrashLoop) {
  World w;
  {
    Daemon d(w);
    ASSERT_EQ(d.dispatcher->Run(Spec("loop", "/dev-9.0.0.img")).outcome.phase,
              JobPhase::kRebooting);
  }
  // Every boot from here resumes the job into HealthChecking and "dies".
  w.device_state.crash_step = "HealthChecking";
  for (int start = 1; start <= StepGuard::kMaxAttempts; ++start) {
    Daemon d(w);
    d.dispatcher->RecoverNow();
    EXPECT_EQ(w.device_state.abandons, 0) << "start " << start;
    auto e = d.guard.Load();
    ASSERT_TRUE(e && *e);
    EXPECT_EQ((*e)->attempts, start);
  }
  Daemon d(w);
  d.dispatcher->RecoverNow();
  EXPECT_EQ(w.device_state.abandons, 1);
  auto rec = d.registry.Find("loop");
  ASSERT_TRUE(rec);
  EXPECT_EQ(rec->phase, JobPhase::kFailed);
  ASSERT_TRUE(rec->error);
  EXPECT_EQ(rec->error->code(), Errc::kJobCrashLoop);
  EXPECT_EQ(rec->error->number(), 414);
  EXPECT_EQ(d.Reports("loop").back(), "result:failed");
  auto e = d.guard.Load();
  ASSERT_TRUE(e);
  EXPECT_FALSE(*e) << "the guard forgets an ended job";
}

// ---------------------------------------------------------------- cancel

// The last result report of `job`'s error name ("" when none).
std::string ResultError(const Daemon& d, const std::string& job) {
  std::string name;
  for (const auto& r : d.outbox.Pending()) {
    const auto e = r.body.find("error");
    if (r.job == job && r.kind == "result" && e != r.body.end() && e->is_object()) {
      name = e->value("name", "");
    }
  }
  return name;
}

void ExpectCancelled(const Daemon& d, const JobAnswer& a, const std::string& id) {
  EXPECT_FALSE(a.refused);
  EXPECT_EQ(a.outcome.phase, JobPhase::kFailed);
  ASSERT_TRUE(a.outcome.error);
  EXPECT_EQ(a.outcome.error->code(), Errc::kCancelled) << a.outcome.error->ToString();
  auto rec = d.registry.Find(id);
  ASSERT_TRUE(rec);
  EXPECT_EQ(rec->phase, JobPhase::kFailed);
  EXPECT_EQ(ResultError(d, id), "Cancelled") << "the result goes through the outbox";
}

TEST(DispatcherCancel, AQueuedJobEndsAtOnceAndNeverRuns) {
  World w;
  Daemon d(w);
  // The first job holds the worker until the test lets it go.
  std::promise<void> go;
  std::shared_future<void> release = go.get_future().share();
  w.dpi_state.at_point = [&](const std::string& point) {
    if (point == "Writing") release.wait_for(std::chrono::seconds(10));
  };
  std::promise<JobAnswer> first;
  std::promise<JobAnswer> queued;
  d.dispatcher->Submit(Spec("q1", "/dpi-20201117_1_0-0.0.1.img"),
                       [&](const JobAnswer& a) { first.set_value(a); });
  d.dispatcher->Submit(Spec("q2", "/dpi-20201117_1_0-0.0.2.img"),
                       [&](const JobAnswer& a) { queued.set_value(a); });
  const CancelAnswer c = d.dispatcher->CancelJob("q2");
  EXPECT_TRUE(c.accepted) << (c.error ? c.error->ToString() : "");
  // Its reply comes at once, while the first job still holds the worker.
  auto ended = queued.get_future();
  ASSERT_EQ(ended.wait_for(std::chrono::seconds(10)), std::future_status::ready);
  const JobAnswer q2 = ended.get();
  go.set_value();
  d.dispatcher->WaitIdle();
  ExpectCancelled(d, q2, "q2");
  EXPECT_EQ(w.dpi_state.installs.count("q2"), 0U) << "a cancelled queued job never runs";
  EXPECT_EQ(first.get_future().get().outcome.phase, JobPhase::kCommitted);
  // Offered again: answered from the record, not run.
  auto again = d.dispatcher->Run(Spec("q2", "/dpi-20201117_1_0-0.0.2.img"));
  EXPECT_TRUE(again.known);
  EXPECT_EQ(again.outcome.error->code(), Errc::kCancelled);
  EXPECT_EQ(w.dpi_state.installs.count("q2"), 0U);
  // A second cancel of it, and of the first (ended), are refused.
  for (const char* id : {"q2", "q1"}) {
    const CancelAnswer late = d.dispatcher->CancelJob(id);
    EXPECT_FALSE(late.accepted) << id;
    ASSERT_TRUE(late.error);
    EXPECT_EQ(late.error->code(), Errc::kCancelTooLate) << late.error->ToString();
  }
}

TEST(DispatcherCancel, ADownloadingJobStopsItsDownloadAndEndsCancelled) {
  World w;
  Daemon d(w);
  std::promise<JobAnswer> reply;
  d.dispatcher->Submit(Spec("dl", "/slow-dev-1.0.1.img"),
                       [&](const JobAnswer& a) { reply.set_value(a); });
  for (int i = 0; i < 10000 && !w.downloading; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  ASSERT_TRUE(w.downloading);
  const CancelAnswer c = d.dispatcher->CancelJob("dl");
  EXPECT_TRUE(c.accepted) << (c.error ? c.error->ToString() : "");
  auto f = reply.get_future();
  ASSERT_EQ(f.wait_for(std::chrono::seconds(20)), std::future_status::ready);
  d.dispatcher->WaitIdle();
  ExpectCancelled(d, f.get(), "dl");
  EXPECT_TRUE(w.download_stopped) << "the job's cancel reaches its download";
  EXPECT_EQ(w.device_state.installs.count("dl"), 0U);
}

// Through the engine (fake_engine.h: it checks the cancel at its step
// boundary and crosses its point of no return under the cancel's lock).
struct CancelAt {
  const char* point;
  JobType type;
  bool accepted;
};

TEST(DispatcherCancel, ARunningJobIsCancelledBeforeItsPointOfNoReturnOnly) {
  for (const CancelAt& c : {CancelAt{"Writing", JobType::kDevice, true},
                            CancelAt{"BeforeNoReturn", JobType::kDevice, true},
                            CancelAt{"AfterNoReturn", JobType::kDevice, false},
                            CancelAt{"Writing", JobType::kDpi, true},
                            CancelAt{"AfterNoReturn", JobType::kDpi, false}}) {
    SCOPED_TRACE(std::string(c.point) + " " + std::string(JobTypeName(c.type)));
    World w;
    Daemon d(w);
    std::optional<CancelAnswer> answer;
    bool durable_when_answered = false;
    FakeEngineState& engine = c.type == JobType::kDevice ? w.device_state : w.dpi_state;
    engine.at_point = [&](const std::string& point) {
      if (point != c.point) return;
      answer = d.dispatcher->CancelJob("r");
      durable_when_answered = std::filesystem::exists(w.dir / "cancel-r.json");
    };
    const auto a = d.dispatcher->Run(
        Spec("r", c.type == JobType::kDevice ? "/dev-1.0.1.img" : "/dpi-20201117_1_0-0.0.1.img"));
    ASSERT_TRUE(answer);
    EXPECT_EQ(answer->accepted, c.accepted);
    EXPECT_EQ(durable_when_answered, c.accepted) << "an accepted cancel is on disk when answered";
    EXPECT_FALSE(std::filesystem::exists(w.dir / "cancel-r.json")) << "removed once the job ended";
    if (c.accepted) {
      ExpectCancelled(d, a, "r");
      if (c.type == JobType::kDevice) {
        EXPECT_FALSE(w.device_state.unfinished);
      }
    } else {
      ASSERT_TRUE(answer->error);
      EXPECT_EQ(answer->error->code(), Errc::kCancelTooLate) << answer->error->ToString();
      EXPECT_EQ(a.outcome.phase,
                c.type == JobType::kDevice ? JobPhase::kRebooting : JobPhase::kCommitted);
      EXPECT_FALSE(a.outcome.error);
      // Past its point of no return in the registry too.
      const CancelAnswer again = d.dispatcher->CancelJob("r");
      EXPECT_FALSE(again.accepted);
      EXPECT_EQ(again.error->code(), Errc::kCancelTooLate);
    }
  }
}

// The agent killed after it accepted a cancel and before the job ended: the
// next start ends the job Cancelled instead of resuming it.
TEST(DispatcherCancel, AnAcceptedCancelOutlivesAKilledAgent) {
  World w;
  w.device_state.jobs["k"] =
      EngineJob{"k", JobPhase::kRunning, "Writing", std::nullopt, "1.0.0", "1.0.1", "B"};
  w.device_state.unfinished = "k";
  {
    Daemon d(w);
    JobOutcome o;
    o.id = "k";
    o.type = JobType::kDevice;
    o.phase = JobPhase::kRunning;
    o.state = "Writing";
    ASSERT_TRUE(d.registry.Put(o));
  }
  ASSERT_TRUE(WriteFileAtomic(w.dir / "cancel-k.json", "{}\n"));
  Daemon d(w);  // the restart
  d.dispatcher->RecoverNow();
  EXPECT_EQ(w.device_state.abandons, 1);
  EXPECT_FALSE(w.device_state.unfinished) << "not resumed";
  auto rec = d.registry.Find("k");
  ASSERT_TRUE(rec);
  EXPECT_EQ(rec->phase, JobPhase::kFailed);
  ASSERT_TRUE(rec->error);
  EXPECT_EQ(rec->error->code(), Errc::kCancelled);
  EXPECT_EQ(ResultError(d, "k"), "Cancelled");
  EXPECT_FALSE(std::filesystem::exists(w.dir / "cancel-k.json"));
}

TEST(DispatcherCancel, AnUnknownJobIsRefused) {
  World w;
  Daemon d(w);
  const CancelAnswer c = d.dispatcher->CancelJob("nobody");
  EXPECT_FALSE(c.accepted);
  ASSERT_TRUE(c.error);
  EXPECT_EQ(c.error->code(), Errc::kJobUnknown);
}

// The daemon's own queue (cloud jobs waiting for the worker): ended by
// CancelWaiting, unless the registry knows the id as started or ended.
TEST(DispatcherCancel, AJobWaitingInTheDaemonsQueueIsEndedUnlessKnown) {
  World w;
  Daemon d(w);
  JobSpec spec = Spec("w", "/dev-1.0.1.img");
  spec.type = JobType::kDevice;
  JobAnswer ended;
  const CancelAnswer c = d.dispatcher->CancelWaiting(spec, &ended);
  EXPECT_TRUE(c.accepted);
  ExpectCancelled(d, ended, "w");
  EXPECT_EQ(w.opens, 0);
  (void)d.dispatcher->Run(Spec("done", "/dpi-20201117_1_0-0.0.1.img"));
  JobAnswer unused;
  const CancelAnswer late = d.dispatcher->CancelWaiting(Spec("done", "/x"), &unused);
  EXPECT_FALSE(late.accepted);
  EXPECT_EQ(late.error->code(), Errc::kCancelTooLate);
}

TEST(StepGuard, CountsEntriesOfOneStepAndStartsAgainForAnother) {
  sag::test::TempDir dir;
  StepGuard g(dir / "step-attempts.json");
  ASSERT_TRUE(g.Enter("j", "Writing"));
  ASSERT_TRUE(g.Enter("j", "Writing"));
  EXPECT_EQ((*g.Load())->attempts, 2);
  StepGuard again(dir / "step-attempts.json");  // a restart
  ASSERT_TRUE(again.Enter("j", "Writing"));
  EXPECT_EQ((*again.Load())->attempts, 3);
  ASSERT_TRUE(again.Enter("j", "Verifying"));
  EXPECT_EQ((*again.Load())->attempts, 1);
  ASSERT_TRUE(again.Enter("k", "Verifying"));
  EXPECT_EQ((*again.Load())->job, "k");
  EXPECT_EQ((*again.Load())->attempts, 1);
}

TEST(StepGuard, APowerCutIsNotACrashTheCountStartsAgainInTheNextBoot) {
  sag::test::TempDir dir;
  for (int start = 1; start <= 2; ++start) {  // two crashes in boot b1
    StepGuard g(dir / "step-attempts.json", "b1");
    ASSERT_TRUE(g.Enter("j", "Writing"));
  }
  EXPECT_EQ((*StepGuard(dir / "step-attempts.json", "b1").Load())->attempts, 2);
  // The power went: boot b2 enters the same step again, once.
  StepGuard after_cut(dir / "step-attempts.json", "b2");
  ASSERT_TRUE(after_cut.Enter("j", "Writing"));
  EXPECT_EQ((*after_cut.Load())->attempts, 1);
  EXPECT_EQ((*after_cut.Load())->boot, "b2");
  // Restarts within b2 count again.
  StepGuard restart(dir / "step-attempts.json", "b2");
  ASSERT_TRUE(restart.Enter("j", "Writing"));
  EXPECT_EQ((*restart.Load())->attempts, 2);
}

TEST(StepGuard, ADamagedFileIsAnErrorValue) {
  sag::test::TempDir dir;
  for (const char* text : {"{", R"({"job":"j","step":"W","attempts":"3"})", "[]",
                           R"({"job":"j","step":"W","attempts":0})"}) {
    ASSERT_TRUE(WriteFileAtomic(dir / "step-attempts.json", text, 0600));
    StepGuard g(dir / "step-attempts.json");
    auto e = g.Load();
    ASSERT_FALSE(e) << text;
    EXPECT_EQ(e.error().code(), Errc::kJournalCorrupt);
    EXPECT_NE(e.error().message().find("step-attempts.json"), std::string::npos);
    ASSERT_TRUE(g.Enter("j", "W"));  // counting starts again
    EXPECT_EQ((*g.Load())->attempts, 1);
  }
}

}  // namespace
}  // namespace sag::agent
