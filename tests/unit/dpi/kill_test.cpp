// SIGKILL at random instants across the whole install flow, then Resume():
// the invariant is exactly one complete database active (`current`), the
// engine loaded from it, nothing left in staging, the job in a terminal state.
//
// The install runs in a forked child, slowed down (a throttled payload source
// and an engine that sleeps a few ms per command) so that kills spread over
// every stage; kill instants sweep the measured duration of one install.
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <gtest/gtest.h>
#include <map>
#include <random>
#include <thread>

#include "common/journal.h"
#include "tests/unit/dpi/dpi_env.h"

namespace sag::dpi {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using test::DpiEnv;
using test::DpiVersion;
using test::IsCompleteDb;
using test::MakeDb;

// The hooks a killed agent left running are reparented to this process (a
// subreaper); kill them as systemd's control-group kill would, and reap them.
void KillOrphans() {
  for (int round = 0; round < 100; ++round) {
    std::vector<pid_t> children;
    for (const auto& e : fs::directory_iterator("/proc")) {
      const auto name = e.path().filename().string();
      if (name.find_first_not_of("0123456789") != std::string::npos) continue;
      std::ifstream stat(e.path() / "stat");
      std::string line;
      std::getline(stat, line);
      const auto close = line.rfind(')');
      if (close == std::string::npos) continue;
      std::istringstream rest(line.substr(close + 2));
      char st = 0;
      pid_t ppid = 0;
      rest >> st >> ppid;
      if (ppid == ::getpid()) children.push_back(std::stoi(name));
    }
    if (children.empty()) return;
    for (pid_t c : children) ::kill(c, SIGKILL);
    for (pid_t c : children) ::waitpid(c, nullptr, 0);
  }
}

// Runs one install in a child; returns its pid. The child never returns.
pid_t ForkInstall(DpiEnv& env, const std::string& job, const std::string& version,
                  const std::string& payload) {
  const pid_t pid = ::fork();
  if (pid != 0) return pid;
  auto installer = env.MakeInstaller();
  test::BufferSource src(payload, 2048);
  src.OnChunk([] { std::this_thread::sleep_for(std::chrono::milliseconds(1)); });
  auto r = installer.Install({job, version, false},
                             {image::ImageType::kDpi, version, payload.size()}, src);
  ::_exit(r && r->ok() ? 0 : 1);
}

std::string JournalState(const DpiEnv& env, const std::string& job) {
  auto rec = Journal(env.path() / "dpi-job.json").Load();
  if (!rec || !rec->has_value()) return "NoRecord";
  const auto& j = (**rec)["job"];
  if (j.value("id", std::string()) != job) return "NotStarted";
  return j.value("state", std::string("?"));
}

TEST(DpiKill, RandomInstantsEndWithOneCompleteDatabaseActive) {
  int kills = 120;
  if (const char* k = std::getenv("SAG_DPI_KILLS"); k != nullptr) kills = std::atoi(k);
  ASSERT_EQ(::prctl(PR_SET_CHILD_SUBREAPER, 1), 0);
  DpiEnv env;
  env.Control("delay-ms", "4");
  int n = 1;
  {
    auto r = env.Install("job-1", DpiVersion(n), MakeDb(DpiVersion(n)));
    ASSERT_TRUE(r && r->ok());
  }
  std::string active = DpiVersion(n++);

  // One uninterrupted install gives the duration that the kills sweep.
  Clock::duration total{};
  {
    const auto v = DpiVersion(n++);
    const auto start = Clock::now();
    const pid_t pid = ForkInstall(env, "calibrate", v, MakeDb(v));
    int status = 0;
    ASSERT_EQ(::waitpid(pid, &status, 0), pid);
    total = Clock::now() - start;
    ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    active = v;
  }
  std::printf("one install takes %lld ms\n",
              static_cast<long long>(
                  std::chrono::duration_cast<std::chrono::milliseconds>(total).count()));

  std::mt19937 rng(20261127);
  std::uniform_real_distribution<double> jitter(0.0, 1.0);
  std::map<std::string, int> landed;
  int committed = 0;
  for (int i = 0; i < kills; ++i) {
    const auto job = "job-k" + std::to_string(i);
    const auto version = DpiVersion(n++);
    // Stratified sweep over [0, 1.05 x duration], jittered within each slot.
    const double at = 1.05 * (i % 40 + jitter(rng)) / 40.0;
    const auto delay = std::chrono::duration_cast<Clock::duration>(total * at);
    const pid_t pid = ForkInstall(env, job, version, MakeDb(version, /*zstd=*/i % 2 == 1));
    std::this_thread::sleep_for(delay);
    ::kill(pid, SIGKILL);
    int status = 0;
    ASSERT_EQ(::waitpid(pid, &status, 0), pid);
    KillOrphans();
    const auto state = JournalState(env, job);
    ++landed[WIFSIGNALED(status) ? state : "Finished"];

    auto installer = env.MakeInstaller();
    auto r = installer.Resume();
    ASSERT_TRUE(r) << r.error().ToString();
    ASSERT_TRUE(r->has_value());
    const auto& res = **r;
    SCOPED_TRACE("kill " + std::to_string(i) + " in " + state);
    ASSERT_TRUE(IsTerminal(res.state)) << JobStateName(res.state);
    if (res.state == JobState::kFailed) {
      // Only a pre-swap interruption or refusal may fail; a failed rollback never.
      ASSERT_TRUE(res.failed_in) << res.error->ToString();
      EXPECT_TRUE(*res.failed_in == JobState::kVerifying || *res.failed_in == JobState::kStaging ||
                  *res.failed_in == JobState::kValidating)
          << res.error->ToString();
    }
    auto cur = installer.CurrentVersion();
    ASSERT_TRUE(cur) << cur.error().ToString();
    ASSERT_TRUE(*cur == active || *cur == version) << *cur;
    if (res.job_id == job) {
      EXPECT_EQ(*cur == version, res.state == JobState::kCommitted);
    }
    ASSERT_TRUE(IsCompleteDb(env.store() / "current", *cur));
    ASSERT_EQ(env.EngineLoaded(), *cur);
    ASSERT_EQ(fs::path(env.EngineLoadedFrom()).filename(), *cur);
    ASSERT_TRUE(fs::is_empty(env.store() / "staging"));
    ASSERT_FALSE(fs::exists(fs::symlink_status(env.store() / "current.tmp")));
    std::size_t versions = 0;
    for ([[maybe_unused]] const auto& e : fs::directory_iterator(env.store() / "versions")) {
      ++versions;
    }
    ASSERT_LE(versions, 2U);
    if (*cur == version) ++committed;
    active = *cur;
  }
  std::string summary;
  for (const auto& [state, count] : landed) summary += state + "=" + std::to_string(count) + " ";
  std::printf("%d kills landed in: %s; %d of them committed\n", kills, summary.c_str(), committed);
  // The sweep must have reached the stages on both sides of the swap.
  for (const auto* s : {"Staging", "Validating", "Reloading", "Confirming"}) {
    EXPECT_GE(landed[s], 1) << "no kill landed in " << s << ": " << summary;
  }
}

}  // namespace
}  // namespace sag::dpi
