#include "cloud/sqlite_store.h"

#include <spdlog/spdlog.h>
#include <sqlite3.h>

#include <array>
#include <fstream>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>

namespace sag::cloud {

namespace {

using nlohmann::json;
using rpc::Clock;

// PRAGMA application_id: "SAGC". A database with another id belongs to
// another program and is not touched.
constexpr int kApplicationId = 0x53414743;

// The schema, one step per version, applied in order. A step is never
// changed once released: a new version adds a step. Plain SQL that
// PostgreSQL accepts too (no SQLite-only column types or clauses).
constexpr std::array<const char*, kSqliteSchemaVersion> kMigrations{{
    // 1: devices, jobs, reports.
    R"sql(
CREATE TABLE devices (
  serial TEXT PRIMARY KEY,
  smartag_id TEXT NOT NULL DEFAULT '',
  model TEXT NOT NULL DEFAULT '',
  agent_version TEXT NOT NULL DEFAULT '',
  version_device TEXT NOT NULL DEFAULT '',
  version_dpi TEXT NOT NULL DEFAULT '',
  boot TEXT NOT NULL DEFAULT '{}',
  agent_state TEXT NOT NULL DEFAULT '',
  online INTEGER NOT NULL DEFAULT 0,
  last_seen TEXT NOT NULL DEFAULT '',
  epoch TEXT NOT NULL DEFAULT '',
  acked_seq BIGINT NOT NULL DEFAULT 0,
  snapshot_seq BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE jobs (
  id INTEGER PRIMARY KEY,
  job_id TEXT NOT NULL UNIQUE,
  serial TEXT NOT NULL REFERENCES devices(serial),
  job_type TEXT NOT NULL,
  version TEXT NOT NULL,
  url TEXT NOT NULL,
  size BIGINT NOT NULL,
  sha256 TEXT NOT NULL,
  deadline TEXT NOT NULL,
  allow_downgrade INTEGER NOT NULL,
  state TEXT NOT NULL,
  device_state TEXT NOT NULL,
  percent INTEGER NOT NULL,
  outcome TEXT NOT NULL,
  error_code INTEGER,
  error_name TEXT,
  error_message TEXT,
  cancel_requested INTEGER NOT NULL,
  created TEXT NOT NULL,
  updated TEXT NOT NULL,
  timed_out TEXT NOT NULL,
  stamp_epoch TEXT NOT NULL,
  stamp_seq BIGINT NOT NULL
);
CREATE INDEX jobs_by_serial ON jobs(serial, id);
CREATE INDEX jobs_by_state ON jobs(state, id);
CREATE TABLE reports (
  id INTEGER PRIMARY KEY,
  serial TEXT NOT NULL,
  epoch TEXT NOT NULL,
  seq BIGINT NOT NULL,
  type TEXT NOT NULL,
  job_id TEXT NOT NULL,
  detail TEXT NOT NULL,
  received TEXT NOT NULL,
  UNIQUE (serial, epoch, seq)
);
CREATE INDEX reports_by_serial ON reports(serial, id);
)sql",
    // 2: the RPC API's signature nonces (issue 16: a restart must not let a
    // captured request be replayed within the time window).
    R"sql(
CREATE TABLE nonces (
  key TEXT PRIMARY KEY,
  expires BIGINT NOT NULL
);
CREATE INDEX nonces_by_expiry ON nonces(expires);
)sql",
    // 3: the device's answer to a cancel (cancel.ack): "" (none yet),
    // "accepted" or "refused", and a refusal's reason ("Name: message").
    R"sql(
ALTER TABLE jobs ADD COLUMN cancel_answer TEXT NOT NULL DEFAULT '';
ALTER TABLE jobs ADD COLUMN cancel_reason TEXT NOT NULL DEFAULT '';
)sql",
}};

constexpr const char* kDeviceColumns =
    "serial, smartag_id, model, agent_version, version_device, version_dpi, boot, agent_state, "
    "online, last_seen, epoch, acked_seq, snapshot_seq";
constexpr const char* kJobColumns =
    "job_id, serial, job_type, version, url, size, sha256, deadline, allow_downgrade, state, "
    "device_state, percent, outcome, error_code, error_name, error_message, cancel_requested, "
    "created, updated, timed_out, stamp_epoch, stamp_seq, cancel_answer, cancel_reason";
constexpr const char* kReportColumns = "serial, epoch, seq, type, job_id, detail, received";

// Nonces: expired ones are deleted every this many Remember() calls.
constexpr unsigned kNoncePruneEvery = 512;

std::int64_t Unix(Clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::seconds>(t.time_since_epoch()).count();
}

std::string BootText(const proto::BootInfo& b) {
  json slots = json::object();
  for (const auto& [name, s] : b.slots) slots[name] = {{"version", s.version}, {"state", s.state}};
  return json{{"booted_slot", b.booted_slot}, {"slots", std::move(slots)}}.dump(
      -1, ' ', false, json::error_handler_t::replace);
}

proto::BootInfo ParseBoot(const std::string& text) {
  proto::BootInfo b;
  const json j = json::parse(text, nullptr, false);
  if (!j.is_object()) return b;
  if (const auto it = j.find("booted_slot"); it != j.end() && it->is_string()) {
    b.booted_slot = it->get<std::string>();
  }
  if (const auto it = j.find("slots"); it != j.end() && it->is_object()) {
    for (const auto& [name, s] : it->items()) {
      if (!s.is_object()) continue;
      b.slots[name] = {s.value("version", std::string()), s.value("state", std::string())};
    }
  }
  return b;
}

// A prepared statement of the connection's cache, reset when the handle goes.
class Stmt {
 public:
  explicit Stmt(sqlite3_stmt* s) : s_(s) {}
  ~Stmt() {
    sqlite3_reset(s_);
    sqlite3_clear_bindings(s_);
  }
  Stmt(const Stmt&) = delete;
  Stmt& operator=(const Stmt&) = delete;

  Stmt& Text(int i, std::string_view v) {
    sqlite3_bind_text(s_, i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT);
    return *this;
  }
  Stmt& Int(int i, std::int64_t v) {
    sqlite3_bind_int64(s_, i, v);
    return *this;
  }
  Stmt& Null(int i) {
    sqlite3_bind_null(s_, i);
    return *this;
  }
  // SQLITE_ROW, SQLITE_DONE or an error code.
  int Step() { return sqlite3_step(s_); }

  std::string ColText(int c) {
    const auto* p = sqlite3_column_text(s_, c);
    return p == nullptr ? std::string()
                        : std::string(reinterpret_cast<const char*>(p),
                                      static_cast<std::size_t>(sqlite3_column_bytes(s_, c)));
  }
  std::int64_t ColInt(int c) { return sqlite3_column_int64(s_, c); }
  bool ColNull(int c) { return sqlite3_column_type(s_, c) == SQLITE_NULL; }

 private:
  sqlite3_stmt* s_;
};

DeviceRecord ReadDevice(Stmt& s) {
  DeviceRecord d;
  d.serial = s.ColText(0);
  d.smartag_id = s.ColText(1);
  d.model = s.ColText(2);
  d.agent_version = s.ColText(3);
  d.versions = {s.ColText(4), s.ColText(5)};
  d.boot = ParseBoot(s.ColText(6));
  d.agent_state = s.ColText(7);
  d.online = s.ColInt(8) != 0;
  d.last_seen = s.ColText(9);
  d.epoch = s.ColText(10);
  d.acked_seq = static_cast<std::uint64_t>(s.ColInt(11));
  d.snapshot_seq = static_cast<std::uint64_t>(s.ColInt(12));
  return d;
}

JobRecord ReadJob(Stmt& s) {
  JobRecord j;
  j.spec.job_id = s.ColText(0);
  j.serial = s.ColText(1);
  j.spec.job_type = s.ColText(2);
  j.spec.version = s.ColText(3);
  j.spec.url = s.ColText(4);
  j.spec.size = static_cast<std::uint64_t>(s.ColInt(5));
  j.spec.sha256 = s.ColText(6);
  j.spec.deadline = s.ColText(7);
  j.spec.allow_downgrade = s.ColInt(8) != 0;
  j.state = ParseJobState(s.ColText(9)).value_or(JobState::kFailed);
  j.device_state = s.ColText(10);
  j.percent = static_cast<int>(s.ColInt(11));
  j.outcome = s.ColText(12);
  if (!s.ColNull(13)) {
    j.error = proto::ErrorInfo{static_cast<int>(s.ColInt(13)), s.ColText(14), s.ColText(15)};
  }
  j.cancel_requested = s.ColInt(16) != 0;
  j.created = s.ColText(17);
  j.updated = s.ColText(18);
  j.timed_out = s.ColText(19);
  j.stamp_epoch = s.ColText(20);
  j.stamp_seq = static_cast<std::uint64_t>(s.ColInt(21));
  j.cancel_answer = s.ColText(22);
  j.cancel_reason = s.ColText(23);
  return j;
}

ReportRecord ReadReport(Stmt& s) {
  ReportRecord r;
  r.serial = s.ColText(0);
  r.epoch = s.ColText(1);
  r.seq = static_cast<std::uint64_t>(s.ColInt(2));
  r.type = s.ColText(3);
  r.job_id = s.ColText(4);
  r.detail = s.ColText(5);
  r.received = s.ColText(6);
  return r;
}

// Binds a job's columns after the key: ?2.. in kJobColumns order from serial.
void BindJob(Stmt& s, const JobRecord& j) {
  s.Text(1, j.spec.job_id)
      .Text(2, j.serial)
      .Text(3, j.spec.job_type)
      .Text(4, j.spec.version)
      .Text(5, j.spec.url)
      .Int(6, static_cast<std::int64_t>(j.spec.size))
      .Text(7, j.spec.sha256)
      .Text(8, j.spec.deadline)
      .Int(9, j.spec.allow_downgrade ? 1 : 0)
      .Text(10, JobStateName(j.state))
      .Text(11, j.device_state)
      .Int(12, j.percent)
      .Text(13, j.outcome);
  if (j.error) {
    s.Int(14, j.error->code).Text(15, j.error->name).Text(16, j.error->message);
  } else {
    s.Null(14).Null(15).Null(16);
  }
  s.Int(17, j.cancel_requested ? 1 : 0)
      .Text(18, j.created)
      .Text(19, j.updated)
      .Text(20, j.timed_out)
      .Text(21, j.stamp_epoch)
      .Int(22, static_cast<std::int64_t>(j.stamp_seq))
      .Text(23, j.cancel_answer)
      .Text(24, j.cancel_reason);
}

class SqliteStore final : public Store {
 public:
  SqliteStore(std::filesystem::path path, sqlite3* db) : path_(std::move(path)), db_(db) {}
  ~SqliteStore() override {
    for (auto& [sql, stmt] : cache_) sqlite3_finalize(stmt);
    // Closing the last connection checkpoints the WAL into the database.
    sqlite3_close(db_);
  }
  SqliteStore(const SqliteStore&) = delete;
  SqliteStore& operator=(const SqliteStore&) = delete;

  // At open: the pragmas, then the migrations.
  Status Setup(const SqliteOptions& options);

  Status RegisterDevices(const std::vector<DeviceIdentity>& devices) override;
  std::optional<DeviceRecord> FindDevice(std::string_view serial) override;
  std::vector<DeviceRecord> Devices() override;
  Status MarkOffline(const std::vector<std::string>& serials) override;
  Status TouchDevices(const std::vector<std::pair<std::string, std::string>>& seen) override;
  Status AddJob(JobRecord job) override;
  std::optional<JobRecord> FindJob(std::string_view job_id) override;
  std::vector<JobRecord> JobsOf(std::string_view serial) override;
  std::vector<JobRecord> OpenJobs() override;
  std::vector<JobRecord> Jobs() override;
  Expected<WriteResult> Write(const StoreWrite& write) override;
  std::vector<ReportRecord> Reports(std::string_view serial) override;
  Expected<bool> Remember(const std::string& key, rpc::Clock::time_point now,
                          rpc::Clock::time_point expires) override;

 private:
  // The error of the last call on the connection, with what was being done.
  Error Fail(int rc, std::string_view what) const {
    const int primary = rc & 0xFF;
    Errc code = Errc::kIo;
    std::string hint;
    if (primary == SQLITE_FULL) {
      code = Errc::kNoSpace;
      hint = "; free space on its file system";
    } else if (primary == SQLITE_CORRUPT || primary == SQLITE_NOTADB) {
      code = Errc::kStoreCorrupt;
      hint = "; restore it from a backup or move it aside";
    } else if (primary == SQLITE_BUSY || primary == SQLITE_LOCKED) {
      hint = "; another process holds it locked (a second sag-cloud on the same store?)";
    } else if (primary == SQLITE_READONLY || primary == SQLITE_CANTOPEN || primary == SQLITE_PERM) {
      hint = "; check the permissions of the file and its directory";
    }
    return {code, "store " + path_.string() + ": " + std::string(what) + ": " +
                      sqlite3_errmsg(db_) + " (SQLite " + std::to_string(rc) + ")" + hint};
  }
  // A cached prepared statement; nullptr after logging a failure.
  sqlite3_stmt* Prepare(const char* sql) {
    auto it = cache_.find(sql);
    if (it != cache_.end()) return it->second;
    sqlite3_stmt* s = nullptr;
    if (const int rc = sqlite3_prepare_v3(db_, sql, -1, SQLITE_PREPARE_PERSISTENT, &s, nullptr);
        rc != SQLITE_OK) {
      spdlog::error("{}", Fail(rc, std::string("preparing ") + sql).ToString());
      return nullptr;
    }
    cache_.emplace(sql, s);
    return s;
  }
  Status Exec(const char* sql, std::string_view what) {
    char* msg = nullptr;
    const int rc = sqlite3_exec(db_, sql, nullptr, nullptr, &msg);
    sqlite3_free(msg);
    if (rc != SQLITE_OK) return Fail(rc, what);
    return Ok();
  }
  Expected<std::int64_t> PragmaInt(const char* sql) {
    sqlite3_stmt* raw = nullptr;
    int rc = sqlite3_prepare_v2(db_, sql, -1, &raw, nullptr);
    if (rc != SQLITE_OK) return Fail(rc, sql);
    rc = sqlite3_step(raw);
    const std::int64_t v = rc == SQLITE_ROW ? sqlite3_column_int64(raw, 0) : 0;
    sqlite3_finalize(raw);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) return Fail(rc, sql);
    return v;
  }

  // One transaction: Begin(), the statements, Commit(); Rollback() on any
  // failure (and by Txn's destructor when neither ran).
  Status Begin(Durability durability) {
    // synchronous is per connection and read at each commit: FULL makes
    // the commit fsync the WAL before it returns; NORMAL leaves that to the
    // next FULL commit or checkpoint (WAL mode keeps a transaction whole
    // either way).
    const bool full = durability == Durability::kDurable;
    if (full != sync_full_) {
      SAG_TRY_STATUS(Exec(full ? "PRAGMA synchronous=FULL" : "PRAGMA synchronous=NORMAL",
                          "setting the durability"));
      sync_full_ = full;
    }
    // IMMEDIATE: the write lock is taken now, so that no statement of the
    // transaction meets a busy database half-way.
    return Exec("BEGIN IMMEDIATE", "starting a transaction");
  }
  Status Commit() { return Exec("COMMIT", "committing"); }
  void Rollback() {
    if (sqlite3_get_autocommit(db_) == 0) (void)Exec("ROLLBACK", "rolling back");
  }
  template <typename Body>
  auto InTransaction(Durability durability, Body body) -> decltype(body()) {
    SAG_TRY_STATUS(Begin(durability));
    auto result = body();
    if (!result) {
      Rollback();
      return result;
    }
    if (Status st = Commit(); !st) {
      Rollback();
      return st.error();
    }
    return result;
  }

  template <typename T, typename Read>
  std::vector<T> Query(const char* sql, std::string_view key, Read read, std::string_view what) {
    std::vector<T> out;
    sqlite3_stmt* raw = Prepare(sql);
    if (raw == nullptr) return out;
    Stmt s(raw);
    if (!key.empty()) s.Text(1, key);
    int rc = SQLITE_ROW;
    while ((rc = s.Step()) == SQLITE_ROW) out.push_back(read(s));
    if (rc != SQLITE_DONE) {
      spdlog::error("{}", Fail(rc, what).ToString());
      out.clear();
    }
    return out;
  }

  Status MigrateTo(int target);

  std::filesystem::path path_;
  sqlite3* db_;
  std::mutex mu_;
  std::map<const char*, sqlite3_stmt*> cache_;  // by the SQL literal's address
  bool sync_full_ = true;
  unsigned nonce_calls_ = 0;
};

Status SqliteStore::Setup(const SqliteOptions& options) {
  sqlite3_extended_result_codes(db_, 1);
  sqlite3_busy_timeout(db_, static_cast<int>(options.busy_timeout.count()));
  // Before the first read: a WAL database opened in exclusive mode never
  // touches the shared-memory index.
  if (options.exclusive) {
    SAG_TRY_STATUS(Exec("PRAGMA locking_mode=EXCLUSIVE", "taking the store for this process"));
  }
  SAG_TRY(const std::int64_t version, PragmaInt("PRAGMA user_version"));
  SAG_TRY(const std::int64_t app, PragmaInt("PRAGMA application_id"));
  if (version > 0 && app != kApplicationId) {
    return Error(Errc::kStoreCorrupt, "store " + path_.string() +
                                          ": an SQLite database of another program (application "
                                          "id " +
                                          std::to_string(app) +
                                          "): point `store:` in the configuration to a new file");
  }
  if (version > kSqliteSchemaVersion) {
    return Error(Errc::kStoreNewerSchema,
                 "store " + path_.string() + ": schema version " + std::to_string(version) +
                     " was written by a newer sag-cloud; this one knows versions up to " +
                     std::to_string(kSqliteSchemaVersion) +
                     ": run the newer sag-cloud, or restore a backup this version wrote");
  }
  if (options.read_only) {
    if (version != kSqliteSchemaVersion) {
      return Error(Errc::kStoreCorrupt, "store " + path_.string() + ": schema version " +
                                            std::to_string(version) + ", not " +
                                            std::to_string(kSqliteSchemaVersion) +
                                            ": start `sag-cloud serve` once to migrate it");
    }
    return Ok();
  }
  // WAL: a commit appends to the log (one fsync with synchronous=FULL)
  // instead of rewriting pages in place, and readers do not block the writer.
  {
    sqlite3_stmt* raw = nullptr;
    int rc = sqlite3_prepare_v2(db_, "PRAGMA journal_mode=WAL", -1, &raw, nullptr);
    std::string mode;
    if (rc == SQLITE_OK) rc = sqlite3_step(raw);
    if (rc == SQLITE_ROW) {
      const auto* p = sqlite3_column_text(raw, 0);
      mode = p == nullptr ? "" : reinterpret_cast<const char*>(p);
    }
    sqlite3_finalize(raw);
    if (rc != SQLITE_ROW) return Fail(rc, "switching to the WAL journal");
    if (mode != "wal") {
      return Error(Errc::kIo, "store " + path_.string() +
                                  ": its file system does not support "
                                  "SQLite's WAL journal (journal mode '" +
                                  mode + "'): put the store on a local file system");
    }
  }
  SAG_TRY_STATUS(Exec("PRAGMA synchronous=FULL", "setting synchronous=FULL"));
  SAG_TRY_STATUS(Exec("PRAGMA foreign_keys=ON", "enabling foreign keys"));
  return MigrateTo(options.migrate_to);
}

Status SqliteStore::MigrateTo(int target) {
  SAG_TRY(std::int64_t version, PragmaInt("PRAGMA user_version"));
  for (auto v = version + 1; v <= target; ++v) {
    const std::string step = "migrating the schema to version " + std::to_string(v);
    SAG_TRY_STATUS(Begin(Durability::kDurable));
    Status st = Exec(kMigrations.at(static_cast<std::size_t>(v - 1)), step);
    if (st && v == 1) {
      st = Exec(("PRAGMA application_id=" + std::to_string(kApplicationId)).c_str(), step);
    }
    // user_version is in the database header: it commits with the step.
    if (st) st = Exec(("PRAGMA user_version=" + std::to_string(v)).c_str(), step);
    if (st) st = Commit();
    if (!st) {
      Rollback();
      return st;
    }
    if (version > 0) {
      spdlog::info("store {}: schema migrated to version {}", path_.string(), v);
    }
  }
  return Ok();
}

Status SqliteStore::RegisterDevices(const std::vector<DeviceIdentity>& devices) {
  for (const auto& d : devices) {
    if (d.serial.empty() || d.serial.size() > proto::kMaxString) {
      return Error(Errc::kInvalidArgument, "a device's serial number must be 1.." +
                                               std::to_string(proto::kMaxString) + " characters");
    }
  }
  const std::lock_guard lock(mu_);
  return InTransaction(Durability::kDurable, [&]() -> Status {
    sqlite3_stmt* raw = Prepare(
        "INSERT INTO devices (serial, smartag_id, model) VALUES (?1, ?2, ?3) "
        "ON CONFLICT (serial) DO UPDATE SET smartag_id = excluded.smartag_id, "
        "model = excluded.model");
    if (raw == nullptr) return Fail(sqlite3_errcode(db_), "registering devices");
    for (const auto& d : devices) {
      Stmt s(raw);
      s.Text(1, d.serial).Text(2, d.smartag_id).Text(3, d.model);
      if (const int rc = s.Step(); rc != SQLITE_DONE) {
        return Fail(rc, "registering device " + d.serial);
      }
    }
    return Ok();
  });
}

std::optional<DeviceRecord> SqliteStore::FindDevice(std::string_view serial) {
  static const std::string sql =
      std::string("SELECT ") + kDeviceColumns + " FROM devices WHERE serial = ?1";
  const std::lock_guard lock(mu_);
  auto rows = Query<DeviceRecord>(sql.c_str(), serial, ReadDevice, "reading a device");
  if (rows.empty()) return std::nullopt;
  return std::move(rows.front());
}

std::vector<DeviceRecord> SqliteStore::Devices() {
  static const std::string sql =
      std::string("SELECT ") + kDeviceColumns + " FROM devices ORDER BY serial";
  const std::lock_guard lock(mu_);
  return Query<DeviceRecord>(sql.c_str(), {}, ReadDevice, "reading the devices");
}

Status SqliteStore::MarkOffline(const std::vector<std::string>& serials) {
  if (serials.empty()) return Ok();
  const std::lock_guard lock(mu_);
  return InTransaction(Durability::kRelaxed, [&]() -> Status {
    sqlite3_stmt* raw = Prepare("UPDATE devices SET online = 0 WHERE serial = ?1");
    if (raw == nullptr) return Fail(sqlite3_errcode(db_), "marking devices offline");
    for (const auto& serial : serials) {
      Stmt s(raw);
      s.Text(1, serial);
      if (const int rc = s.Step(); rc != SQLITE_DONE) return Fail(rc, "marking devices offline");
    }
    return Ok();
  });
}

Status SqliteStore::TouchDevices(const std::vector<std::pair<std::string, std::string>>& seen) {
  if (seen.empty()) return Ok();
  const std::lock_guard lock(mu_);
  return InTransaction(Durability::kRelaxed, [&]() -> Status {
    sqlite3_stmt* raw = Prepare("UPDATE devices SET last_seen = ?2 WHERE serial = ?1");
    if (raw == nullptr) return Fail(sqlite3_errcode(db_), "recording when devices spoke");
    for (const auto& [serial, when] : seen) {
      Stmt s(raw);
      s.Text(1, serial).Text(2, when);
      if (const int rc = s.Step(); rc != SQLITE_DONE) {
        return Fail(rc, "recording when devices spoke");
      }
    }
    return Ok();
  });
}

Status SqliteStore::AddJob(JobRecord job) {
  if (job.spec.job_id.empty() || job.spec.job_id.size() > proto::kMaxId) {
    return Error(Errc::kInvalidArgument,
                 "a job id must be 1.." + std::to_string(proto::kMaxId) + " characters");
  }
  if (job.state != JobState::kPending && job.state != JobState::kOffered) {
    return Error(Errc::kInvalidArgument, "job " + job.spec.job_id + " is new: Pending or Offered");
  }
  if (job.created.empty()) job.created = UtcNow();
  job.updated = job.created;
  const std::lock_guard lock(mu_);
  return InTransaction(Durability::kDurable, [&]() -> Status {
    {
      sqlite3_stmt* raw = Prepare("SELECT 1 FROM devices WHERE serial = ?1");
      if (raw == nullptr) return Fail(sqlite3_errcode(db_), "adding job " + job.spec.job_id);
      Stmt s(raw);
      s.Text(1, job.serial);
      const int rc = s.Step();
      if (rc == SQLITE_DONE) {
        return Error(Errc::kUnknownDevice, "job " + job.spec.job_id + ": no device with serial '" +
                                               job.serial + "' is registered");
      }
      if (rc != SQLITE_ROW) return Fail(rc, "adding job " + job.spec.job_id);
    }
    static const std::string sql =
        std::string("INSERT INTO jobs (") + kJobColumns +
        ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, "
        "?18, ?19, ?20, ?21, ?22, ?23, ?24)";
    sqlite3_stmt* raw = Prepare(sql.c_str());
    if (raw == nullptr) return Fail(sqlite3_errcode(db_), "adding job " + job.spec.job_id);
    Stmt s(raw);
    BindJob(s, job);
    const int rc = s.Step();
    if (rc == SQLITE_CONSTRAINT_UNIQUE || rc == SQLITE_CONSTRAINT_PRIMARYKEY) {
      return Error(Errc::kJobExists,
                   "job " + job.spec.job_id + " exists already; a job id is used once");
    }
    if (rc != SQLITE_DONE) return Fail(rc, "adding job " + job.spec.job_id);
    return Ok();
  });
}

std::optional<JobRecord> SqliteStore::FindJob(std::string_view job_id) {
  static const std::string sql =
      std::string("SELECT ") + kJobColumns + " FROM jobs WHERE job_id = ?1";
  const std::lock_guard lock(mu_);
  auto rows = Query<JobRecord>(sql.c_str(), job_id, ReadJob, "reading a job");
  if (rows.empty()) return std::nullopt;
  return std::move(rows.front());
}

std::vector<JobRecord> SqliteStore::JobsOf(std::string_view serial) {
  static const std::string sql =
      std::string("SELECT ") + kJobColumns + " FROM jobs WHERE serial = ?1 ORDER BY id";
  const std::lock_guard lock(mu_);
  return Query<JobRecord>(sql.c_str(), serial, ReadJob, "reading a device's jobs");
}

std::vector<JobRecord> SqliteStore::OpenJobs() {
  static const std::string sql =
      std::string("SELECT ") + kJobColumns +
      " FROM jobs WHERE state IN ('Pending', 'Offered', 'Accepted') ORDER BY id";
  const std::lock_guard lock(mu_);
  return Query<JobRecord>(sql.c_str(), {}, ReadJob, "reading the open jobs");
}

std::vector<JobRecord> SqliteStore::Jobs() {
  static const std::string sql = std::string("SELECT ") + kJobColumns + " FROM jobs ORDER BY id";
  const std::lock_guard lock(mu_);
  return Query<JobRecord>(sql.c_str(), {}, ReadJob, "reading the jobs");
}

Expected<WriteResult> SqliteStore::Write(const StoreWrite& write) {
  const std::lock_guard lock(mu_);
  return InTransaction(write.durability, [&]() -> Expected<WriteResult> {
    if (const auto& r = write.report) {
      // The report first: when it is there already, nothing else is written.
      sqlite3_stmt* raw = Prepare(
          "INSERT INTO reports (serial, epoch, seq, type, job_id, detail, received) "
          "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT DO NOTHING");
      if (raw == nullptr) return Fail(sqlite3_errcode(db_), "recording a report");
      Stmt s(raw);
      s.Text(1, r->serial)
          .Text(2, r->epoch)
          .Int(3, static_cast<std::int64_t>(r->seq))
          .Text(4, r->type)
          .Text(5, r->job_id)
          .Text(6, r->detail)
          .Text(7, r->received);
      if (const int rc = s.Step(); rc != SQLITE_DONE) {
        return Fail(rc, "recording report #" + std::to_string(r->seq) + " of " + r->serial);
      }
      if (sqlite3_changes(db_) == 0) return WriteResult::kDuplicateReport;
    }
    if (const auto& d = write.device) {
      sqlite3_stmt* raw = Prepare(
          "UPDATE devices SET smartag_id = ?2, model = ?3, agent_version = ?4, "
          "version_device = ?5, version_dpi = ?6, boot = ?7, agent_state = ?8, online = ?9, "
          "last_seen = ?10, epoch = ?11, acked_seq = ?12, snapshot_seq = ?13 WHERE serial = ?1");
      if (raw == nullptr) return Fail(sqlite3_errcode(db_), "updating device " + d->serial);
      Stmt s(raw);
      s.Text(1, d->serial)
          .Text(2, d->smartag_id)
          .Text(3, d->model)
          .Text(4, d->agent_version)
          .Text(5, d->versions.device)
          .Text(6, d->versions.dpi)
          .Text(7, BootText(d->boot))
          .Text(8, d->agent_state)
          .Int(9, d->online ? 1 : 0)
          .Text(10, d->last_seen)
          .Text(11, d->epoch)
          .Int(12, static_cast<std::int64_t>(d->acked_seq))
          .Int(13, static_cast<std::int64_t>(d->snapshot_seq));
      if (const int rc = s.Step(); rc != SQLITE_DONE) {
        return Fail(rc, "updating device " + d->serial);
      }
      if (sqlite3_changes(db_) == 0) {
        return Error(Errc::kUnknownDevice, "no device with serial '" + d->serial + "'");
      }
    }
    for (const auto& j : write.jobs) {
      sqlite3_stmt* raw = Prepare(
          "UPDATE jobs SET serial = ?2, job_type = ?3, version = ?4, url = ?5, size = ?6, "
          "sha256 = ?7, deadline = ?8, allow_downgrade = ?9, state = ?10, device_state = ?11, "
          "percent = ?12, outcome = ?13, error_code = ?14, error_name = ?15, "
          "error_message = ?16, cancel_requested = ?17, created = ?18, updated = ?19, "
          "timed_out = ?20, stamp_epoch = ?21, stamp_seq = ?22, cancel_answer = ?23, "
          "cancel_reason = ?24 WHERE job_id = ?1");
      if (raw == nullptr) return Fail(sqlite3_errcode(db_), "updating job " + j.spec.job_id);
      Stmt s(raw);
      BindJob(s, j);
      if (const int rc = s.Step(); rc != SQLITE_DONE) {
        return Fail(rc, "updating job " + j.spec.job_id);
      }
      if (sqlite3_changes(db_) == 0) {
        return Error(Errc::kJobUnknown, "no job " + j.spec.job_id);
      }
    }
    if (const auto& r = write.report; r && r->seq % kReportPruneEvery == 0) {
      // Bounded per device: the oldest beyond kMaxReportsPerDevice go.
      sqlite3_stmt* raw = Prepare(
          "DELETE FROM reports WHERE serial = ?1 AND id <= (SELECT id FROM reports WHERE "
          "serial = ?1 ORDER BY id DESC LIMIT 1 OFFSET ?2)");
      if (raw == nullptr) return Fail(sqlite3_errcode(db_), "pruning reports");
      Stmt s(raw);
      s.Text(1, r->serial).Int(2, static_cast<std::int64_t>(kMaxReportsPerDevice));
      if (const int rc = s.Step(); rc != SQLITE_DONE) return Fail(rc, "pruning reports");
    }
    return WriteResult::kWritten;
  });
}

std::vector<ReportRecord> SqliteStore::Reports(std::string_view serial) {
  static const std::string all =
      std::string("SELECT ") + kReportColumns + " FROM reports ORDER BY id";
  static const std::string of =
      std::string("SELECT ") + kReportColumns + " FROM reports WHERE serial = ?1 ORDER BY id";
  const std::lock_guard lock(mu_);
  return Query<ReportRecord>(serial.empty() ? all.c_str() : of.c_str(), serial, ReadReport,
                             "reading the reports");
}

Expected<bool> SqliteStore::Remember(const std::string& key, rpc::Clock::time_point now,
                                     rpc::Clock::time_point expires) {
  const std::lock_guard lock(mu_);
  return InTransaction(Durability::kRelaxed, [&]() -> Expected<bool> {
    if (++nonce_calls_ % kNoncePruneEvery == 0) {
      sqlite3_stmt* raw = Prepare("DELETE FROM nonces WHERE expires <= ?1");
      if (raw == nullptr) return Fail(sqlite3_errcode(db_), "pruning nonces");
      Stmt s(raw);
      s.Int(1, Unix(now));
      if (const int rc = s.Step(); rc != SQLITE_DONE) return Fail(rc, "pruning nonces");
    }
    // New, or there but expired (not pruned yet): recorded; else used.
    sqlite3_stmt* raw = Prepare(
        "INSERT INTO nonces (key, expires) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET "
        "expires = excluded.expires WHERE nonces.expires <= ?3");
    if (raw == nullptr) return Fail(sqlite3_errcode(db_), "recording a nonce");
    Stmt s(raw);
    s.Text(1, key).Int(2, Unix(expires)).Int(3, Unix(now));
    if (const int rc = s.Step(); rc != SQLITE_DONE) return Fail(rc, "recording a nonce");
    return sqlite3_changes(db_) == 1;
  });
}

// What the file is, before SQLite opens it: nothing, empty, an SQLite
// database, or something else (a JSON store of an older sag-cloud).
Status CheckFileKind(const std::filesystem::path& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return Ok();  // missing: created
  std::array<char, 16> head{};
  f.read(head.data(), head.size());
  const auto n = static_cast<std::size_t>(f.gcount());
  if (n == 0) return Ok();
  const std::string_view h(head.data(), n);
  if (h == std::string_view("SQLite format 3\0", 16)) return Ok();
  if (h.find('{') != std::string_view::npos) {
    return Error(Errc::kStoreCorrupt,
                 "store " + path.string() +
                     " is the JSON store of an older sag-cloud, not an SQLite database: point "
                     "`store:` in the configuration to a new file (e.g. store.db) and register "
                     "the devices again (jobs and reports of the old file are not imported)");
  }
  return Error(Errc::kStoreCorrupt, "store " + path.string() +
                                        " is not an SQLite database: point `store:` in the "
                                        "configuration to a new file, or restore the store");
}

}  // namespace

Expected<std::unique_ptr<Store>> OpenSqliteStore(const std::filesystem::path& path,
                                                 const SqliteOptions& options) {
  if (options.migrate_to < 1 || options.migrate_to > kSqliteSchemaVersion) {
    return Error(Errc::kInvalidArgument,
                 "schema version " + std::to_string(options.migrate_to) + " does not exist");
  }
  SAG_TRY_STATUS(CheckFileKind(path));
  sqlite3* db = nullptr;
  const int flags =
      (options.read_only ? SQLITE_OPEN_READONLY : SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE) |
      SQLITE_OPEN_FULLMUTEX;
  const int rc = sqlite3_open_v2(path.c_str(), &db, flags, nullptr);
  if (rc != SQLITE_OK) {
    std::string msg = db != nullptr ? sqlite3_errmsg(db) : sqlite3_errstr(rc);
    sqlite3_close(db);
    return Error(Errc::kIo, "store " + path.string() + ": cannot open it: " + msg +
                                "; check that its directory exists and is writable");
  }
  auto store = std::make_unique<SqliteStore>(path, db);
  SAG_TRY_STATUS(store->Setup(options));
  return std::unique_ptr<Store>(std::move(store));
}

}  // namespace sag::cloud
