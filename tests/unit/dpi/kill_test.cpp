// Power cuts at random instants across the whole install flow, then
// Resume(): the invariant is exactly one complete database active (`current`),
// the engine loaded from it, nothing left in staging, the job in a terminal
// state, and that outcome still there after one more cut.
//
// The DPI store, the journal and the engine's state live on sag-powerloss
// (tools/powerloss, docs/power-loss.md): a cut is a SIGKILL of the install
// and of the hooks it started, then a torn cut of the medium, which loses
// every byte and directory entry not made durable (by fsync, a directory
// fsync, or syncfs: the driver forwards it to the medium). The engine then
// starts again as at power-on: it loads what `current` points at. Without
// FUSE (no /dev/fuse, not root) the cut is a SIGKILL only, as it says.
//
// The install runs in a child process (sag-dpi-test-driver), slowed down (a payload source that
// sleeps 1 ms per 2 KiB chunk; the hooks are real processes) so that cuts
// spread over every stage; cut instants sweep the measured duration of one
// install. SAG_DPI_KILLS sets the number of cuts (100; the long variant
// registered under SAG_LONG_TESTS runs 2000).
#include <gtest/gtest.h>
#include <signal.h>
#include <spawn.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <map>
#include <random>
#include <sstream>
#include <thread>

#include "common/journal.h"
#include "common/process.h"
#include "tests/support/env_count.h"
#include "tests/support/powerloss_mount.h"
#include "tests/unit/dpi/dpi_env.h"

extern "C" char** environ;  // NOLINT(readability-redundant-declaration)

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
// `keep` is the medium's server, a child too.
void KillOrphans(pid_t keep) {
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
      if (ppid == ::getpid() && std::stoi(name) != keep) children.push_back(std::stoi(name));
    }
    if (children.empty()) return;
    for (pid_t c : children) ::kill(c, SIGKILL);
    for (pid_t c : children) ::waitpid(c, nullptr, 0);
  }
}

// Starts the driver for one install; returns its pid. posix_spawn, not
// fork: a fork of this (large, sanitized) test process costs more than the
// install itself.
// `control` is the medium's control file, empty when there is none.
pid_t SpawnInstall(DpiEnv& env, const fs::path& scratch, const std::string& control,
                   const std::string& job, const std::string& version, const std::string& payload) {
  const auto file = scratch / "payload.tar";
  EXPECT_TRUE(WriteFileAtomic(file, payload));
  std::vector<std::string> args = {SAG_DPI_TEST_DRIVER, env.path().string(), job, version,
                                   file.string()};
  std::vector<char*> argv;
  argv.reserve(args.size() + 1);
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  std::string control_var = "SAG_POWERLOSS_CONTROL=" + control;
  std::vector<char*> envp;
  for (char** e = environ; *e != nullptr; ++e) envp.push_back(*e);
  if (!control.empty()) envp.push_back(control_var.data());
  envp.push_back(nullptr);
  pid_t pid = -1;
  EXPECT_EQ(::posix_spawn(&pid, argv[0], nullptr, nullptr, argv.data(), envp.data()), 0);
  return pid;
}

// The engine at power-on: it loads the database `current` points at.
void EngineStarts(DpiEnv& env) {
  auto r = RunCommand({SAG_FAKE_DPI_ENGINE, "--state", env.engine_state().string(), "--db",
                       (env.store() / "current").string(), "reload"});
  ASSERT_TRUE(r) << r.error().ToString();
  ASSERT_EQ(r->exit_code, 0) << r->output;
}

std::uint64_t FieldOf(const std::string& reply, const std::string& key) {
  const auto at = reply.find(key + "=");
  return at == std::string::npos ? 0 : std::stoull(reply.substr(at + key.size() + 1));
}

std::string JournalState(const DpiEnv& env, const std::string& job) {
  auto rec = Journal(env.path() / "dpi-job.json").Load();
  if (!rec || !rec->has_value()) return "NoRecord";
  const auto& j = (**rec)["job"];
  if (j.value("id", std::string()) != job) return "NotStarted";
  return j.value("state", std::string("?"));
}

TEST(DpiKill, RandomInstantsEndWithOneCompleteDatabaseActive) {
  const int kills = sag::test::EnvCount("SAG_DPI_KILLS", 100);
  ASSERT_EQ(::prctl(PR_SET_CHILD_SUBREAPER, 1), 0);
  sag::test::TempDir scratch;
  const fs::path medium = scratch / "medium";
  fs::create_directories(medium);
  const sag::test::PowerLossMount mount(SAG_POWERLOSS_BIN, medium, medium);
  const bool powerloss = mount.Available();
  const std::string control = powerloss ? (medium / ".sag-powerloss").string() : std::string();
  std::printf("%s\n", powerloss ? "cuts on sag-powerloss: unsynced data and entries are lost"
                                : "no FUSE here (needs /dev/fuse and root): cuts are SIGKILLs "
                                  "only, a missing fsync goes unnoticed");
  DpiEnv env(medium);
  int n = 1;
  {
    auto r = env.Install("job-1", DpiVersion(n), MakeDb(DpiVersion(n)));
    ASSERT_TRUE(r && r->ok());
  }
  // The appliance as installed: all of it on the medium.
  if (powerloss) {
    ASSERT_FALSE(mount.Control("sync").empty());
  }
  std::string active = DpiVersion(n++);
  std::uint64_t bytes_lost = 0, entries_lost = 0, torn = 0;
  // A cut of the medium (torn: the write in flight keeps a prefix of its
  // sectors), then the engine's power-on; nothing without the medium.
  auto cut = [&](bool tear) {
    if (!powerloss) return;
    const std::string reply = mount.Control(tear ? "cut torn" : "cut");
    ASSERT_FALSE(reply.empty()) << "the medium refused the cut";
    bytes_lost += FieldOf(reply, "bytes_lost");
    entries_lost += FieldOf(reply, "entries_lost");
    torn += FieldOf(reply, "torn");
    EngineStarts(env);
  };

  // An uninterrupted install gives the duration that the kills sweep; it is
  // measured again every 20 kills, as the machine's load changes.
  Clock::duration total{};
  auto calibrate = [&] {
    const auto v = DpiVersion(n++);
    const auto start = Clock::now();
    const pid_t pid = SpawnInstall(env, scratch.path(), control, "calibrate-" + v, v, MakeDb(v));
    int status = 0;
    ASSERT_EQ(::waitpid(pid, &status, 0), pid);
    total = Clock::now() - start;
    ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    active = v;
    std::printf("one install takes %lld ms\n",
                static_cast<long long>(
                    std::chrono::duration_cast<std::chrono::milliseconds>(total).count()));
    std::fflush(stdout);
  };

  std::mt19937 rng(20261127);
  std::uniform_real_distribution<double> jitter(0.0, 1.0);
  std::map<std::string, int> landed;
  int committed = 0;
  for (int i = 0; i < kills; ++i) {
    if (i % 20 == 0) {
      calibrate();
      if (HasFatalFailure()) return;
    }
    const auto job = "job-k" + std::to_string(i);
    const auto version = DpiVersion(n++);
    // Stratified sweep over [0, 1.15 x duration], jittered within each slot;
    // past 1.0 the install usually finished, which covers Committed too.
    const double at = 1.15 * ((i * 7) % 20 + jitter(rng)) / 20.0;
    const auto delay = std::chrono::duration_cast<Clock::duration>(total * at);
    const pid_t pid = SpawnInstall(env, scratch.path(), control, job, version,
                                   MakeDb(version, /*zstd=*/i % 2 == 1));
    std::this_thread::sleep_for(delay);
    ::kill(pid, SIGKILL);
    int status = 0;
    ASSERT_EQ(::waitpid(pid, &status, 0), pid);
    KillOrphans(mount.pid());
    const auto state = JournalState(env, job);
    ++landed[WIFSIGNALED(status) ? state : "Finished"];
    cut(/*tear=*/true);
    if (HasFatalFailure()) return;

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
      EXPECT_TRUE(*res.failed_in == JobState::kChecking || *res.failed_in == JobState::kStaging ||
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
    // What Resume() decided is durable: it is all still there after one more
    // cut (and the engine's power-on).
    if (powerloss) {
      cut(/*tear=*/false);
      if (HasFatalFailure()) return;
      EXPECT_EQ(JournalState(env, res.job_id), JobStateName(res.state));
      auto after = installer.CurrentVersion();
      ASSERT_TRUE(after) << after.error().ToString();
      ASSERT_EQ(*after, *cur);
      ASSERT_TRUE(IsCompleteDb(env.store() / "current", *cur));
      ASSERT_EQ(env.EngineLoaded(), *cur);
      ASSERT_TRUE(fs::is_empty(env.store() / "staging"));
    }
    if (*cur == version) ++committed;
    active = *cur;
  }
  std::string summary;
  for (const auto& [state, count] : landed) summary += state + "=" + std::to_string(count) + " ";
  std::printf(
      "%d cuts landed in: %s; %d of them committed; the medium lost %llu unsynced bytes "
      "and %llu directory entries, %llu writes torn\n",
      kills, summary.c_str(), committed, static_cast<unsigned long long>(bytes_lost),
      static_cast<unsigned long long>(entries_lost), static_cast<unsigned long long>(torn));
  // The sweep must have reached the stages on both sides of the swap.
  for (const auto* s : {"Staging", "Validating", "Reloading", "Confirming"}) {
    EXPECT_GE(landed[s], 1) << "no kill landed in " << s << ": " << summary;
  }
}

}  // namespace
}  // namespace sag::dpi
