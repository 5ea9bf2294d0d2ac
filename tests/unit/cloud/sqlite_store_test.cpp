// The SQLite store (cloud/sqlite_store.h): a restart keeps everything, the
// schema migrates forward and refuses a newer one, a write is one
// transaction (a failure half-way or a power cut leaves the previous state),
// a report is recorded once, nonces are used once.
#include "cloud/sqlite_store.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <random>
#include <sstream>
#include <string>

#include "tests/support/powerloss_mount.h"
#include "tests/support/sqlite_sql.h"
#include "tests/support/temp_dir.h"

namespace sag::cloud {
namespace {

using rpc::Clock;
using std::chrono::seconds;
using test::Sql;
using test::SqlInt;

std::unique_ptr<Store> Open(const std::filesystem::path& path, SqliteOptions options = {}) {
  auto s = OpenSqliteStore(path, options);
  EXPECT_TRUE(s) << s.error().ToString();
  return s ? std::move(*s) : nullptr;
}

std::string Bytes(const std::filesystem::path& path) {
  std::ifstream f(path, std::ios::binary);
  std::ostringstream s;
  s << f.rdbuf();
  return s.str();
}

JobRecord MakeJob(const std::string& id, const std::string& serial = "sag1") {
  JobRecord job;
  job.serial = serial;
  job.spec = {id, "Device", "1.0.1", "https://r/x", 10, std::string(64, 'b'), "", false};
  return job;
}

// A report that moves device sag1 and job j-1 to `seq`, as the gateway writes it.
StoreWrite ReportWrite(Store& store, std::uint64_t seq) {
  StoreWrite w;
  auto d = store.FindDevice("sag1");
  auto j = store.FindJob("j-1");
  d->acked_seq = seq;
  d->epoch = "e1";
  j->percent = static_cast<int>(seq % 100);
  j->stamp_epoch = "e1";
  j->stamp_seq = seq;
  w.device = *d;
  w.jobs.push_back(*j);
  w.report = ReportRecord{"sag1", "e1", seq, "progress", "j-1", "Writing", "t"};
  return w;
}

TEST(SqliteStore, ARestartKeepsEverything) {
  test::TempDir dir;
  const auto path = dir / "store.db";
  {
    auto store = Open(path);
    ASSERT_TRUE(store);
    EXPECT_TRUE(store->Devices().empty());  // a new file: empty
    ASSERT_TRUE(store->RegisterDevices({{"sag1", "sag-lab", "sag-1000"}, {"sag2", "sag-2", "m"}}));
    ASSERT_TRUE(store->AddJob(MakeJob("j-1")));
    auto d = *store->FindDevice("sag1");
    d.versions = {"1.0.0", "d1"};
    d.boot.booted_slot = "B";
    d.boot.slots["A"] = {"1.0.0", "good"};
    d.online = true;
    auto j = *store->FindJob("j-1");
    j.state = JobState::kRolledBack;
    j.error = proto::ErrorInfo{406, "RolledBack", "fell back"};
    StoreWrite w;
    w.device = d;
    w.jobs.push_back(j);
    w.report = ReportRecord{"sag1", "e", 12, "result", "j-1", "rolled_back", "t"};
    ASSERT_EQ(*store->Write(w), WriteResult::kWritten);
    ASSERT_TRUE(store->TouchDevices({{"sag2", "2026-12-02T00:00:00Z"}}));
    ASSERT_TRUE(*store->Remember("AK\nn1", Clock::now(), Clock::now() + seconds(1800)));
  }
  auto again = Open(path);
  ASSERT_TRUE(again);
  ASSERT_EQ(again->Devices().size(), 2U);
  const auto d = again->FindDevice("sag1");
  ASSERT_TRUE(d);
  EXPECT_EQ(d->smartag_id, "sag-lab");
  EXPECT_EQ(d->versions.dpi, "d1");
  EXPECT_EQ(d->boot.booted_slot, "B");
  EXPECT_EQ(d->boot.slots.at("A").state, "good");
  EXPECT_TRUE(d->online);
  EXPECT_EQ(again->FindDevice("sag2")->last_seen, "2026-12-02T00:00:00Z");
  const auto j = again->FindJob("j-1");
  ASSERT_TRUE(j);
  EXPECT_EQ(j->state, JobState::kRolledBack);
  EXPECT_EQ(j->error->code, 406);
  EXPECT_EQ(j->spec.sha256, std::string(64, 'b'));
  ASSERT_EQ(again->Reports().size(), 1U);
  EXPECT_EQ(again->Reports("sag1")[0].seq, 12U);
  EXPECT_TRUE(again->Reports("sag2").empty());
  EXPECT_FALSE(*again->Remember("AK\nn1", Clock::now(), Clock::now() + seconds(1800)));

  // Registering again changes the identity only.
  ASSERT_TRUE(again->RegisterDevice("sag1", "sag-new", "sag-1000"));
  EXPECT_EQ(again->FindDevice("sag1")->smartag_id, "sag-new");
  EXPECT_EQ(again->FindDevice("sag1")->versions.dpi, "d1");

  EXPECT_EQ(again->AddJob(MakeJob("j-1")).error().code(), Errc::kJobExists);
  EXPECT_EQ(again->AddJob(MakeJob("j-2", "nobody")).error().code(), Errc::kUnknownDevice);
  EXPECT_EQ(again->AddJob(MakeJob("")).error().code(), Errc::kInvalidArgument);
  EXPECT_EQ(again->RegisterDevice("", "x", "y").error().code(), Errc::kInvalidArgument);
  StoreWrite ghost;
  ghost.jobs.push_back(MakeJob("j-ghost"));
  EXPECT_EQ(again->Write(ghost).error().code(), Errc::kJobUnknown);
}

TEST(SqliteStore, JobQueriesKeepCreationOrder) {
  test::TempDir dir;
  auto store = Open(dir / "store.db");
  ASSERT_TRUE(store->RegisterDevices({{"sag1", "a", "m"}, {"sag2", "b", "m"}}));
  for (const char* id : {"j-b", "j-a", "j-c"}) ASSERT_TRUE(store->AddJob(MakeJob(id)));
  ASSERT_TRUE(store->AddJob(MakeJob("j-other", "sag2")));
  auto j = *store->FindJob("j-a");
  j.state = JobState::kCommitted;
  StoreWrite w;
  w.jobs.push_back(j);
  ASSERT_TRUE(store->Write(w));
  std::vector<std::string> ids;
  for (const auto& job : store->JobsOf("sag1")) ids.push_back(job.spec.job_id);
  EXPECT_EQ(ids, (std::vector<std::string>{"j-b", "j-a", "j-c"}));
  ids.clear();
  for (const auto& job : store->OpenJobs()) ids.push_back(job.spec.job_id);
  EXPECT_EQ(ids, (std::vector<std::string>{"j-b", "j-c", "j-other"}));
  EXPECT_EQ(store->Jobs().size(), 4U);
}

// A database as the first release left it (schema 1: no nonces) is migrated
// at open, its content kept.
TEST(SqliteStore, MigratesAnOlderSchema) {
  test::TempDir dir;
  const auto path = dir / "store.db";
  {
    SqliteOptions o;
    o.migrate_to = 1;
    auto old = Open(path, o);
    ASSERT_TRUE(old);
    ASSERT_TRUE(old->RegisterDevice("sag1", "sag-lab", "sag-1000"));
    // (No job: this build's job rows have columns of later schemas.)
  }
  EXPECT_EQ(SqlInt(path, "PRAGMA user_version"), 1);
  EXPECT_EQ(SqlInt(path, "SELECT count(*) FROM sqlite_master WHERE name = 'nonces'"), 0);
  {
    SqliteOptions ro;
    ro.read_only = true;
    auto refused = OpenSqliteStore(path, ro);  // a reader does not migrate
    ASSERT_FALSE(refused);
    EXPECT_NE(refused.error().message().find("migrate"), std::string::npos);
  }
  auto store = Open(path);
  ASSERT_TRUE(store);
  EXPECT_EQ(SqlInt(path, "PRAGMA user_version"), kSqliteSchemaVersion);
  EXPECT_EQ(store->FindDevice("sag1")->smartag_id, "sag-lab");
  ASSERT_TRUE(store->AddJob(MakeJob("j-1")));  // the migrated tables take a job
  EXPECT_EQ(store->FindJob("j-1")->state, JobState::kPending);
  EXPECT_TRUE(*store->Remember("AK\nn", Clock::now(), Clock::now() + seconds(60)));
}

// A newer sag-cloud's database is refused and left as it was.
TEST(SqliteStore, RefusesANewerSchemaAndLeavesItAlone) {
  test::TempDir dir;
  const auto path = dir / "store.db";
  {
    auto store = Open(path);
    ASSERT_TRUE(store->RegisterDevice("sag1", "sag-lab", "sag-1000"));
  }
  Sql(path, "PRAGMA user_version = " + std::to_string(kSqliteSchemaVersion + 1));
  const std::string before = Bytes(path);
  auto st = OpenSqliteStore(path);
  ASSERT_FALSE(st);
  EXPECT_EQ(st.error().code(), Errc::kStoreNewerSchema);
  EXPECT_NE(st.error().message().find("newer sag-cloud"), std::string::npos)
      << st.error().message();
  EXPECT_EQ(Bytes(path), before);
}

TEST(SqliteStore, RefusesFilesThatAreNotItsDatabase) {
  test::TempDir dir;
  {
    std::ofstream(dir / "old.json") << R"({"format":1,"devices":[],"jobs":[]})";
    auto st = OpenSqliteStore(dir / "old.json");
    ASSERT_FALSE(st);
    EXPECT_EQ(st.error().code(), Errc::kStoreCorrupt);
    EXPECT_NE(st.error().message().find("JSON store of an older sag-cloud"), std::string::npos);
    EXPECT_EQ(Bytes(dir / "old.json"), R"({"format":1,"devices":[],"jobs":[]})");
  }
  {
    std::ofstream(dir / "junk") << std::string(100, '\x01');
    auto st = OpenSqliteStore(dir / "junk");
    ASSERT_FALSE(st);
    EXPECT_EQ(st.error().code(), Errc::kStoreCorrupt);
  }
  {
    Sql(dir / "other.db", "CREATE TABLE t (x); PRAGMA user_version = 1");
    auto st = OpenSqliteStore(dir / "other.db");
    ASSERT_FALSE(st);
    EXPECT_EQ(st.error().code(), Errc::kStoreCorrupt);
    EXPECT_NE(st.error().message().find("another program"), std::string::npos);
  }
  {
    auto st = OpenSqliteStore(dir / "missing-dir" / "store.db");
    ASSERT_FALSE(st);
    EXPECT_EQ(st.error().code(), Errc::kIo);
  }
}

// The same report (serial, epoch, seq) twice: the second write is refused as
// a whole, whatever else it carries.
TEST(SqliteStore, ADuplicateReportIsRecordedOnceAndChangesNothing) {
  test::TempDir dir;
  auto store = Open(dir / "store.db");
  ASSERT_TRUE(store->RegisterDevice("sag1", "sag-lab", "sag-1000"));
  ASSERT_TRUE(store->AddJob(MakeJob("j-1")));
  ASSERT_EQ(*store->Write(ReportWrite(*store, 1)), WriteResult::kWritten);
  StoreWrite again = ReportWrite(*store, 1);
  again.device->acked_seq = 7;
  again.jobs[0].state = JobState::kCommitted;
  ASSERT_EQ(*store->Write(again), WriteResult::kDuplicateReport);
  EXPECT_EQ(store->Reports().size(), 1U);
  EXPECT_EQ(store->FindDevice("sag1")->acked_seq, 1U);
  EXPECT_EQ(store->FindJob("j-1")->state, JobState::kPending);
  // Another epoch, or another device, is another report.
  StoreWrite next = ReportWrite(*store, 1);
  next.report->epoch = "e2";
  ASSERT_EQ(*store->Write(next), WriteResult::kWritten);
  EXPECT_EQ(store->Reports().size(), 2U);
}

// A write that fails half-way (the report row is in, the device row is
// refused) leaves nothing of itself.
TEST(SqliteStore, AWriteThatFailsHalfWayLeavesThePreviousState) {
  test::TempDir dir;
  const auto path = dir / "store.db";
  auto store = Open(path);
  ASSERT_TRUE(store->RegisterDevice("sag1", "sag-lab", "sag-1000"));
  ASSERT_TRUE(store->AddJob(MakeJob("j-1")));
  ASSERT_TRUE(store->Write(ReportWrite(*store, 1)));
  Sql(path,
      "CREATE TRIGGER fail BEFORE UPDATE ON devices WHEN NEW.acked_seq = 2 "
      "BEGIN SELECT RAISE(ABORT, 'injected failure'); END");
  auto failed = store->Write(ReportWrite(*store, 2));
  ASSERT_FALSE(failed);
  EXPECT_NE(failed.error().message().find("injected failure"), std::string::npos);
  EXPECT_EQ(store->Reports().size(), 1U);
  EXPECT_EQ(store->FindDevice("sag1")->acked_seq, 1U);
  EXPECT_EQ(store->FindJob("j-1")->stamp_seq, 1U);
  Sql(path, "DROP TRIGGER fail");
  ASSERT_EQ(*store->Write(ReportWrite(*store, 2)), WriteResult::kWritten);
  EXPECT_EQ(store->Reports().size(), 2U);
}

TEST(SqliteStore, NoncesAreUsedOnceUntilTheyExpireAndArePruned) {
  test::TempDir dir;
  const auto path = dir / "store.db";
  auto store = Open(path);
  const auto t0 = Clock::now();
  EXPECT_TRUE(*store->Remember("AK\nn", t0, t0 + seconds(60)));
  EXPECT_FALSE(*store->Remember("AK\nn", t0 + seconds(59), t0 + seconds(119)));
  EXPECT_TRUE(*store->Remember("AK2\nn", t0, t0 + seconds(60)));                // another key
  EXPECT_TRUE(*store->Remember("AK\nn", t0 + seconds(61), t0 + seconds(121)));  // expired
  // Expired ones go as new ones come: the table does not grow for ever.
  for (int i = 0; i < 600; ++i) {
    ASSERT_TRUE(
        *store->Remember("AK\n" + std::to_string(i), t0 + seconds(200 + i), t0 + seconds(201 + i)));
  }
  EXPECT_LT(SqlInt(path, "SELECT count(*) FROM nonces"), 200);  // of 604
}

// How many reports of a device the store keeps once reports 1..acked were
// written: all of them until the first prune that drops any, then the newest
// kMaxReportsPerDevice as of the last prune and those written since.
std::uint64_t KeptReports(std::uint64_t acked) {
  const std::uint64_t pruned_at = acked / Store::kReportPruneEvery * Store::kReportPruneEvery;
  if (pruned_at <= Store::kMaxReportsPerDevice) return acked;
  return Store::kMaxReportsPerDevice + (acked - pruned_at);
}

// Power is cut at random instants while reports are written one by one (the
// writer is killed, then the medium loses what was not synced, with a torn
// last write). After each cut the store opens, and holds exactly the reports
// up to its device's acked_seq (no transaction half-applied; the oldest
// pruned as KeptReports says, as a fast writer passes 4096), never fewer
// than the last whose Write returned (kDurable). The FUSE model has no shared
// mmap, so the store runs in its exclusive mode there (the WAL index in
// memory; the WAL, its commits and fsyncs are the same).
TEST(SqliteStore, PowerCutsMidTransactionLeaveAWholeState) {
  test::TempDir dir;
  std::filesystem::create_directories(dir / "mnt");
  const test::PowerLossMount mount(SAG_POWERLOSS_BIN, dir / "mnt", dir / "mnt");
  if (!mount.Available()) GTEST_SKIP() << "no FUSE here (needs /dev/fuse and root)";
  const auto path = dir / "mnt" / "store.db";
  SqliteOptions exclusive;
  exclusive.exclusive = true;
  {
    auto store = Open(path, exclusive);
    ASSERT_TRUE(store);
    ASSERT_TRUE(store->RegisterDevice("sag1", "sag-lab", "sag-1000"));
    ASSERT_TRUE(store->AddJob(MakeJob("j-1")));
  }
  ASSERT_FALSE(mount.Control("sync").empty());
  std::mt19937 rng(4242);
  // Past the writer's start (an open under ASan takes tens of ms), into its writes.
  std::uniform_int_distribution<int> delay_us(20000, 250000);
  std::uint64_t durable = 0;  // the newest report whose Write returned
  int in_flight_kept = 0;
  for (int trial = 0; trial < 20; ++trial) {
    int fds[2];
    ASSERT_EQ(::pipe(fds), 0);
    const pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      ::close(fds[0]);
      auto s = OpenSqliteStore(path, exclusive);
      if (!s) ::_exit(1);
      for (std::uint64_t seq = (*s)->FindDevice("sag1")->acked_seq + 1;; ++seq) {
        auto r = (*s)->Write(ReportWrite(**s, seq));
        if (!r || *r != WriteResult::kWritten) ::_exit(1);
        if (::write(fds[1], &seq, sizeof seq) != sizeof seq) ::_exit(1);
      }
    }
    ::close(fds[1]);
    ::usleep(static_cast<useconds_t>(delay_us(rng)));
    ::kill(pid, SIGKILL);
    int status = 0;
    ::waitpid(pid, &status, 0);
    ASSERT_TRUE(WIFSIGNALED(status)) << "writer failed on its own at trial " << trial;
    for (std::uint64_t seq = 0; ::read(fds[0], &seq, sizeof seq) == sizeof seq;) durable = seq;
    ::close(fds[0]);
    ASSERT_FALSE(mount.Control("cut torn").empty());

    auto store = Open(path, exclusive);
    ASSERT_TRUE(store) << "trial " << trial;
    const auto d = store->FindDevice("sag1");
    ASSERT_TRUE(d);
    const auto reports = store->Reports("sag1");
    ASSERT_GE(d->acked_seq, durable) << "trial " << trial << ": a durable report was lost";
    ASSERT_LE(d->acked_seq, durable + 1) << "trial " << trial;
    if (d->acked_seq == durable + 1) ++in_flight_kept;
    ASSERT_EQ(reports.size(), KeptReports(d->acked_seq))
        << "trial " << trial << ": a torn transaction";
    for (std::size_t i = 0; i < reports.size(); ++i) {  // the newest, in order, none missing
      ASSERT_EQ(reports[i].seq, d->acked_seq - reports.size() + 1 + i) << "trial " << trial;
    }
    EXPECT_EQ(store->FindJob("j-1")->stamp_seq, d->acked_seq) << "trial " << trial;
    durable = d->acked_seq;
  }
  std::printf("20 cuts, report %llu reached, %d cuts kept the write in flight\n",
              static_cast<unsigned long long>(durable), in_flight_kept);
  EXPECT_GT(durable, 0U);
}

}  // namespace
}  // namespace sag::cloud
