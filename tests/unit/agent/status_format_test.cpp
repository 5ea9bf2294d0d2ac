// `sag-agent status` as people and scripts read it: the human summary for
// every job stage, online and offline, with the daemon up and down; the
// flat layout of older daemons; hostile or partial documents.
#include <gtest/gtest.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <ctime>
#include <fstream>
#include <sstream>

#include "agent/status.h"
#include "tests/support/temp_dir.h"

extern char** environ;  // NOLINT(readability-redundant-declaration)

namespace sag::agent {
namespace {

using nlohmann::json;

std::chrono::system_clock::time_point At(const char* utc) {
  std::tm tm{};
  EXPECT_TRUE(strptime(utc, "%Y-%m-%dT%H:%M:%SZ", &tm) != nullptr) << utc;
  return std::chrono::system_clock::from_time_t(timegm(&tm));
}

// The example of docs/status.md, online, with a Device job downloading.
json Document() {
  return json::parse(R"({
    "schema": 1,
    "updated_at": "2026-12-01T10:00:00Z",
    "agent": {"version": "0.1.0", "pid": 1234, "state": "running", "started_at": "2026-12-01T09:59:58Z"},
    "identity": {"smartag_id": "sag-0ovhf732a9j1234567", "serial_number": "sag233abcd", "model": "sag-1000"},
    "channel": {"state": "online", "endpoint": "wss://127.0.0.1:8444/device/v1",
                "since": "2026-12-01T09:59:59Z", "last_error": null, "next_attempt_at": null, "attempts": 0},
    "device": {"version": "1.0.0", "booted_slot": "A", "boot": {"order": "A B", "a_left": 3, "b_left": 3},
               "slots": {"A": {"version": "1.0.0", "state": "good"}, "B": {"version": "0.9.0", "state": "writing"}}},
    "dpi": {"version": "20201117_1_0-0.0.1"},
    "job": {"id": "job-42", "type": "Device", "version": "1.0.1", "stage": "Downloading", "percent": 37,
            "bytes_done": 9961472, "bytes_total": 26214400, "from_version": "1.0.0", "target_slot": "B",
            "source": "https://127.0.0.1:8443/images/sag-1000-1.0.1.sagimg",
            "started_at": "2026-12-01T09:59:59Z", "updated_at": "2026-12-01T10:00:00Z"},
    "last_result": {"id": "job-41", "type": "Device", "version": "1.0.2", "outcome": "rolled_back",
                    "state": "RolledBack",
                    "error": {"code": 405, "name": "HealthCheckFailed", "message": "check 'dataplane' exited 1"},
                    "from_version": "1.0.1", "to_version": "1.0.1", "finished_at": "2026-12-01T09:50:00Z"},
    "outbox": {"pending": 2, "oldest_pending_seq": 117, "last_acked_seq": 116}
  })");
}

StatusContext Running(const char* now = "2026-12-01T10:00:05Z") {
  StatusContext c;
  c.now = At(now);
  c.daemon = {true, ""};
  return c;
}

StatusContext Down(const char* reason, const char* now = "2026-12-01T13:00:00Z") {
  StatusContext c;
  c.now = At(now);
  c.daemon = {false, reason};
  return c;
}

// The line of `text` that starts with `label` (padded to the label column),
// and the lines under it up to the next label.
std::string Section(const std::string& text, const std::string& label) {
  std::istringstream in(text);
  std::string line;
  std::string out;
  bool inside = false;
  while (std::getline(in, line)) {
    if (line.starts_with(label) && line.size() > label.size() && line[label.size()] == ' ') {
      inside = true;
    } else if (inside && !line.starts_with("            ")) {
      break;
    }
    if (inside) out += line + "\n";
  }
  return out;
}

TEST(StatusFormat, OnlineWithADeviceJobDownloading) {
  const std::string out = FormatStatus(Document(), Running());
  EXPECT_EQ(
      Section(out, "sag-agent"),
      "sag-agent   0.1.0, running (pid 1234) since 2026-12-01T09:59:58Z (7s ago): running a job\n");
  EXPECT_EQ(Section(out, "appliance"),
            "appliance   sag-0ovhf732a9j1234567  serial sag233abcd  model sag-1000\n");
  EXPECT_EQ(Section(out, "channel"),
            "channel     online since 2026-12-01T09:59:59Z (6s ago)\n"
            "            wss://127.0.0.1:8444/device/v1\n");
  EXPECT_EQ(Section(out, "Device OS"), "Device OS   1.0.0 (booted from slot A)\n");
  EXPECT_EQ(Section(out, "slot A"), "slot A      1.0.0        good     booted\n");
  EXPECT_EQ(Section(out, "slot B"), "slot B      0.9.0        writing\n");
  EXPECT_EQ(Section(out, "boot env"),
            "boot env    BOOT_ORDER=\"A B\" BOOT_A_LEFT=3 BOOT_B_LEFT=3\n");
  EXPECT_EQ(Section(out, "DPI db"), "DPI db      20201117_1_0-0.0.1\n");
  EXPECT_EQ(Section(out, "job"),
            "job         job-42  Device 1.0.0 -> 1.0.1 into slot B\n"
            "            Downloading  [###########-------------------]  37%  9.5 MiB of 25.0 MiB\n"
            "            started 2026-12-01T09:59:59Z (6s ago)\n"
            "            from https://127.0.0.1:8443/images/sag-1000-1.0.1.sagimg\n");
  EXPECT_EQ(Section(out, "last result"),
            "last result job-41  Device 1.0.2: rolled back at 2026-12-01T09:50:00Z (10m05s ago)\n"
            "            left 1.0.1 running\n"
            "            E405 HealthCheckFailed: check 'dataplane' exited 1\n");
  EXPECT_EQ(Section(out, "outbox"),
            "outbox      2 reports waiting, oldest #117 (acknowledged up to #116)\n");
  EXPECT_EQ(Section(out, "updated"), "updated     2026-12-01T10:00:00Z (5s ago)\n");
}

// Every stage either installer reports shows with its name, percentage and
// a bar filled in proportion.
TEST(StatusFormat, EveryJobStageWithItsProgress) {
  struct Case {
    const char* type;
    const char* stage;
    int percent;
  };
  const Case cases[] = {
      {"Device", "Downloading", 0},  {"Device", "Writing", 50},
      {"Device", "Verifying", 90},   {"Device", "Activating", 100},
      {"Device", "Rebooting", 100},  {"Device", "HealthChecking", 100},
      {"Device", "Committing", 100}, {"Device", "RollingBack", 100},
      {"Dpi", "Verifying", 10},      {"Dpi", "Staging", 20},
      {"Dpi", "Validating", 40},     {"Dpi", "Swapping", 60},
      {"Dpi", "Reloading", 80},      {"Dpi", "Confirming", 99},
      {"Dpi", "RollingBack", 100},
  };
  for (const auto& c : cases) {
    json doc = Document();
    doc["job"]["type"] = c.type;
    doc["job"]["stage"] = c.stage;
    doc["job"]["percent"] = c.percent;
    doc["job"].erase("bytes_done");
    if (std::string(c.type) == "Dpi") doc["job"].erase("target_slot");
    const std::string job = Section(FormatStatus(doc, Running()), "job");
    const int filled = c.percent * 30 / 100;
    char progress[96];
    std::snprintf(progress, sizeof progress, "            %s  [%s%s] %3d%%\n", c.stage,
                  std::string(filled, '#').c_str(), std::string(30 - filled, '-').c_str(),
                  c.percent);
    EXPECT_NE(job.find(progress), std::string::npos) << c.type << " " << c.stage << ":\n" << job;
    EXPECT_EQ(job.find("into slot") != std::string::npos, std::string(c.type) == "Device") << job;
  }
}

TEST(StatusFormat, NoJobAndNoResult) {
  json doc = Document();
  doc["job"] = nullptr;
  doc["last_result"] = nullptr;
  doc["agent"]["state"] = "idle";
  doc["outbox"] = {{"pending", 0}, {"oldest_pending_seq", nullptr}, {"last_acked_seq", 116}};
  const std::string out = FormatStatus(doc, Running());
  EXPECT_NE(out.find(": idle\n"), std::string::npos) << out;
  EXPECT_EQ(Section(out, "job"), "job         none\n");
  EXPECT_EQ(Section(out, "last result"), "last result none\n");
  EXPECT_EQ(Section(out, "outbox"), "outbox      empty (acknowledged up to #116)\n");
}

TEST(StatusFormat, ChannelOfflineConnectingDisabled) {
  json doc = Document();
  doc["channel"] = {{"state", "offline"},
                    {"endpoint", "wss://127.0.0.1:8444/device/v1"},
                    {"since", "2026-12-01T09:57:00Z"},
                    {"last_error", "E500 NetConnect: connect 127.0.0.1:8444: Connection refused"},
                    {"next_attempt_at", "2026-12-01T10:00:08Z"},
                    {"attempts", 3}};
  EXPECT_EQ(
      Section(FormatStatus(doc, Running()), "channel"),
      "channel     offline since 2026-12-01T09:57:00Z (3m05s ago), 3 attempts, next attempt "
      "in 3s (2026-12-01T10:00:08Z)\n"
      "            wss://127.0.0.1:8444/device/v1\n"
      "            last error: E500 NetConnect: connect 127.0.0.1:8444: Connection refused\n");
  doc["channel"]["state"] = "connecting";
  doc["channel"]["attempts"] = 1;
  EXPECT_NE(Section(FormatStatus(doc, Running()), "channel")
                .find("connecting since 2026-12-01T09:57:00Z (3m05s ago), 1 attempt, next attempt "
                      "in 3s"),
            std::string::npos);
  // Due: the attempt is being made.
  doc["channel"]["next_attempt_at"] = "2026-12-01T10:00:01Z";
  EXPECT_NE(Section(FormatStatus(doc, Running()), "channel")
                .find(", 1 attempt, retrying since 2026-12-01T10:00:01Z (4s ago)\n"),
            std::string::npos)
      << FormatStatus(doc, Running());
  doc["channel"] = {{"state", "disabled"}};
  EXPECT_EQ(Section(FormatStatus(doc, Running()), "channel"),
            "channel     disabled (no cloud endpoint)\n");
}

// The daemon is gone: said first, with since when the file is stale; the
// rest is what it last reported.
TEST(StatusFormat, DaemonDownSaysSoAndSinceWhen) {
  const std::string out = FormatStatus(Document(), Down("no process 1234"));
  EXPECT_EQ(
      out.rfind("sag-agent   0.1.0, NOT RUNNING (no process 1234); last state running\n"
                "            status.json is stale since 2026-12-01T10:00:00Z (3h00m ago); below is "
                "what the daemon last reported\n"
                "            start it: systemctl start sag-agent; why it stopped: journalctl -u "
                "sag-agent\n",
                0),
      0U)
      << out;
  EXPECT_NE(out.find("Downloading"), std::string::npos);
}

// A document of the daemons before schema 1: the flat fields.
TEST(StatusFormat, OldFlatDocumentsAreReadToo) {
  const json old = json::parse(R"({
    "agent_version": "0.1.0", "smartag_id": "sag-1", "serial_number": "sn1", "model": "sag-1000",
    "state": "idle", "pid": 99, "device_version": "1.0.1", "dpi_version": null, "booted_slot": "B",
    "boot": {"order": "B A", "a_left": 3, "b_left": 0},
    "job": {"id": "local-1", "type": "Device", "version": "1.0.1", "state": "Committed", "percent": 100,
            "from_version": "1.0.0", "target_slot": "B", "error": null},
    "updated_at": "2026-12-01T10:00:00Z"})");
  const json s = NormalizeStatus(old);
  EXPECT_EQ(s["agent"]["pid"], 99);
  EXPECT_EQ(s["device"]["booted_slot"], "B");
  EXPECT_TRUE(s["job"].is_null());
  EXPECT_EQ(s["last_result"]["outcome"], "committed");
  const std::string out = FormatStatus(s, Running());
  EXPECT_EQ(Section(out, "Device OS"), "Device OS   1.0.1 (booted from slot B)\n");
  EXPECT_EQ(Section(out, "DPI db"), "DPI db      none active\n");
  EXPECT_EQ(Section(out, "boot env"),
            "boot env    BOOT_ORDER=\"B A\" BOOT_A_LEFT=3 BOOT_B_LEFT=0\n");
  EXPECT_EQ(Section(out, "job"), "job         none\n");
  EXPECT_EQ(Section(out, "last result"), "last result local-1  Device 1.0.1: committed\n");

  json running = old;
  running["job"]["state"] = "Writing";
  running["job"]["percent"] = 40;
  const json r = NormalizeStatus(running);
  EXPECT_EQ(r["job"]["stage"], "Writing");
  EXPECT_NE(Section(FormatStatus(r, Running()), "job")
                .find("Writing  [############------------------]  40%"),
            std::string::npos);
  // A failed job keeps its error.
  running["job"]["state"] = "Failed";
  running["job"]["error"] = {{"code", 204}, {"name", "ImageSignature"}, {"message", "bad"}};
  EXPECT_NE(FormatStatus(NormalizeStatus(running), Running()).find("E204 ImageSignature: bad"),
            std::string::npos);
}

// The flat document the daemon writes (agent.cpp RefreshStatus, with the
// channel and outbox it posts): the summary shows the channel's state and
// since when, its last error, and the outbox, as for a schema-1 document.
json DaemonFlatDocument(const char* channel_state) {
  json doc = json::parse(R"({
    "agent_version": "0.1.0", "smartag_id": "sag-1", "serial_number": "sn1", "model": "sag-1000",
    "state": "running", "pid": 99, "device_version": "1.0.0", "dpi_version": null, "booted_slot": "A",
    "boot": {"order": "A B", "a_left": 3, "b_left": 3},
    "job": {"id": "upg-1-sn1", "type": "Device", "version": "1.0.1", "state": "Writing", "percent": 40,
            "from_version": "1.0.0", "target_slot": "B", "error": null},
    "outbox": {"pending": 1, "oldest_pending_seq": 7, "last_acked_seq": 6},
    "updated_at": "2026-12-01T10:00:00Z"})");
  doc["channel"] = {{"state", channel_state},
                    {"endpoint", "wss://127.0.0.1:8444/device/v1"},
                    {"since", "2026-12-01T09:59:00Z"},
                    {"last_error", nullptr},
                    {"attempts", 0}};
  if (std::string(channel_state) == "offline") {
    doc["channel"]["last_error"] = "E500 NetConnect: connect 127.0.0.1:8444: Connection refused";
    doc["channel"]["attempts"] = 2;
    doc["channel"]["next_attempt_at"] = "2026-12-01T10:00:17Z";
    doc["channel"]["backoff_ms"] = 12000;
  }
  return doc;
}

TEST(StatusFormat, TheDaemonsFlatDocumentShowsChannelAndOutbox) {
  const std::string online = FormatStatus(NormalizeStatus(DaemonFlatDocument("online")), Running());
  EXPECT_EQ(Section(online, "channel"),
            "channel     online since 2026-12-01T09:59:00Z (1m05s ago)\n"
            "            wss://127.0.0.1:8444/device/v1\n")
      << online;
  EXPECT_EQ(Section(online, "outbox"),
            "outbox      1 report waiting, oldest #7 (acknowledged up to #6)\n");
  EXPECT_NE(Section(online, "job").find("Writing  [############------------------]  40%"),
            std::string::npos)
      << online;
  const std::string offline =
      FormatStatus(NormalizeStatus(DaemonFlatDocument("offline")), Running());
  EXPECT_EQ(Section(offline, "channel"),
            "channel     offline since 2026-12-01T09:59:00Z (1m05s ago), 2 attempts, next attempt "
            "in 12s (2026-12-01T10:00:17Z)\n"
            "            wss://127.0.0.1:8444/device/v1\n"
            "            last error: E500 NetConnect: connect 127.0.0.1:8444: Connection refused\n")
      << offline;
  // --json carries the next attempt as the daemon wrote it.
  const json off = NormalizeStatus(DaemonFlatDocument("offline"));
  EXPECT_EQ(off["channel"]["next_attempt_at"], "2026-12-01T10:00:17Z");
  EXPECT_EQ(off["channel"]["backoff_ms"], 12000);
  // Mapped once, the document is schema 1 and maps onto itself.
  const json s = NormalizeStatus(DaemonFlatDocument("online"));
  EXPECT_EQ(s["schema"], 1);
  EXPECT_EQ(NormalizeStatus(s), s);
}

// Partial, mistyped or foreign documents never throw and show what they can.
TEST(StatusFormat, PartialAndMistypedFieldsAreUnknownNotFatal) {
  const json docs[] = {
      json::object(),
      json::parse(R"({"schema": 1})"),
      json::parse(
          R"({"schema": 1, "agent": "x", "job": 5, "channel": [], "device": {"slots": 3}})"),
      json::parse(
          R"({"schema": 1, "job": {"id": 7, "percent": "half", "bytes_total": -1, "stage": null},
                      "last_result": {"error": "text"}, "outbox": {"pending": "x"},
                      "device": {"slots": {"A": null, "B": {"state": 1}}, "boot": {"a_left": "3"}},
                      "updated_at": "yesterday"})"),
      json::parse(R"({"schema": 1, "job": {"percent": 250}, "agent": {"pid": -4, "state": 3}})"),
      json::parse(R"({"state": 4, "job": {"state": 9}, "boot": "x", "pid": "1"})"),
      json::array(),
  };
  for (const auto& d : docs) {
    std::string out;
    EXPECT_NO_THROW(out = FormatStatus(NormalizeStatus(d), Running())) << d.dump();
    EXPECT_NE(out.find("updated"), std::string::npos) << out;
    EXPECT_NO_THROW((void)CheckDaemon(NormalizeStatus(d))) << d.dump();
  }
  const std::string out = FormatStatus(NormalizeStatus(docs[4]), Running());
  EXPECT_NE(out.find("[##############################] 100%"), std::string::npos) << out;
  EXPECT_FALSE(CheckDaemon(NormalizeStatus(docs[4])).running);
}

// Strings from outside (a server's error, an image URL) cannot drive the
// terminal or show a signed URL's query.
TEST(StatusFormat, ForeignTextIsEscapedAndUrlsRedacted) {
  json doc = Document();
  doc["channel"]["state"] = "offline";
  doc["channel"]["last_error"] = "E500 NetConnect: \x1b[2J\x1b[Hserver says\nhi";
  doc["job"]["source"] = "https://oss.example/img.sagimg?Expires=1&Signature=s3cret";
  const std::string out = FormatStatus(doc, Running());
  EXPECT_EQ(out.find('\x1b'), std::string::npos) << out;
  EXPECT_EQ(out.find("s3cret"), std::string::npos) << out;
  EXPECT_NE(out.find("last error: E500 NetConnect: \\x1b[2J\\x1b[Hserver says\\nhi\n"),
            std::string::npos)
      << out;
  EXPECT_NE(out.find("from https://oss.example/img.sagimg?<redacted>\n"), std::string::npos) << out;
}

// A process named sag-agent (a copy of sleep), so /proc/PID/comm says so.
class FakeDaemon {
 public:
  explicit FakeDaemon(const std::filesystem::path& dir) {
    const auto exe = dir / "sag-agent";
    std::filesystem::copy_file("/bin/sleep", exe);
    std::string path = exe.string();
    std::string arg = "60";
    char* argv[] = {path.data(), arg.data(), nullptr};
    EXPECT_EQ(posix_spawn(&pid_, path.c_str(), nullptr, nullptr, argv, environ), 0);
  }
  ~FakeDaemon() {
    if (reaped_) return;  // its pid may belong to another process by now
    Kill();
    Reap();
  }
  FakeDaemon(const FakeDaemon&) = delete;
  FakeDaemon& operator=(const FakeDaemon&) = delete;
  void Kill() const { ::kill(pid_, SIGKILL); }
  void Reap() {
    if (pid_ > 0 && !reaped_) ::waitpid(pid_, nullptr, 0);
    reaped_ = true;
  }
  [[nodiscard]] pid_t pid() const { return pid_; }

 private:
  pid_t pid_ = -1;
  bool reaped_ = false;
};

json WithPid(pid_t pid, const char* state = "idle") {
  return NormalizeStatus(json{{"schema", 1}, {"agent", {{"pid", pid}, {"state", state}}}});
}

TEST(StatusDaemon, AliveOnlyWhileItsProcessRunsAsSagAgent) {
  test::TempDir dir;
  FakeDaemon daemon(dir.path());
  // /proc shows the new process's name once it has exec'd: bounded wait.
  Liveness live;
  for (int i = 0; i < 500 && !(live = CheckDaemon(WithPid(daemon.pid()))).running; ++i) {
    ::usleep(10'000);
  }
  EXPECT_TRUE(live.running) << live.reason;
  EXPECT_FALSE(CheckDaemon(WithPid(daemon.pid(), "stopped")).running);
  // Killed but not reaped: a zombie answers kill(pid, 0), and is not a daemon.
  daemon.Kill();
  for (int i = 0; i < 500 && (live = CheckDaemon(WithPid(daemon.pid()))).running; ++i) {
    ::usleep(10'000);
  }
  EXPECT_FALSE(live.running);
  daemon.Reap();
  live = CheckDaemon(WithPid(daemon.pid()));
  EXPECT_FALSE(live.running);
  EXPECT_EQ(live.reason, "no process " + std::to_string(daemon.pid()));
}

TEST(StatusDaemon, APidReusedByAnotherProgramIsNotTheDaemon) {
  const Liveness live = CheckDaemon(WithPid(::getpid()));
  EXPECT_FALSE(live.running);
  EXPECT_NE(live.reason.find("not sag-agent"), std::string::npos) << live.reason;
  EXPECT_FALSE(CheckDaemon(NormalizeStatus(json{{"schema", 1}})).running);
}

struct CommandResult {
  int code;
  std::string out;
  std::string err;
};

CommandResult RunStatus(const StatusOptions& o) {
  std::ostringstream out;
  std::ostringstream err;
  const int code = RunStatusCommand(o, out, err);
  return {code, out.str(), err.str()};
}

TEST(StatusCommand, NoFileMeansNotRunning) {
  test::TempDir dir;
  StatusOptions o;
  o.file = dir / "status.json";
  auto r = RunStatus(o);
  EXPECT_EQ(r.code, kStatusNotRunning);
  EXPECT_NE(r.out.find("NOT RUNNING: " + o.file.string() + " does not exist"), std::string::npos);
  o.json = true;
  r = RunStatus(o);
  EXPECT_EQ(r.code, kStatusNotRunning);
  const json doc = json::parse(r.out);
  EXPECT_EQ(doc["running"], false);
  EXPECT_EQ(doc["status_file"], o.file.string());
}

TEST(StatusCommand, AnUnreadableFileIsAnError) {
  test::TempDir dir;
  StatusOptions o;
  o.file = dir / "status.json";
  std::ofstream(o.file) << R"({"schema": 1, "upd)";
  auto r = RunStatus(o);
  EXPECT_EQ(r.code, kStatusUnreadable);
  EXPECT_NE(r.err.find("is not a JSON object"), std::string::npos) << r.err;
  o.json = true;
  r = RunStatus(o);
  EXPECT_EQ(r.code, kStatusUnreadable);
  EXPECT_EQ(json::parse(r.out)["running"], false);
}

// --json prints the document as the daemon wrote it (its key order), and
// "running": false when its daemon is gone.
TEST(StatusCommand, JsonIsTheDocumentPlusRunning) {
  test::TempDir dir;
  StatusOptions o;
  o.file = dir / "status.json";
  o.json = true;
  std::ofstream(o.file)
      << R"({"schema": 1, "updated_at": "2026-12-01T10:00:00Z", "agent": {"pid": 0}, "zeta": 1, "alpha": 2})";
  const auto r = RunStatus(o);
  EXPECT_EQ(r.code, kStatusNotRunning);
  const auto doc = nlohmann::ordered_json::parse(r.out);
  std::vector<std::string> keys;
  for (const auto& [k, v] : doc.items()) keys.push_back(k);
  EXPECT_EQ(keys, (std::vector<std::string>{"schema", "updated_at", "agent", "zeta", "alpha",
                                            "running"}));
  EXPECT_EQ(doc["running"], false);

  FakeDaemon daemon(dir.path());
  std::ofstream(o.file, std::ios::trunc)
      << json{{"schema", 1}, {"agent", {{"pid", daemon.pid()}}}}.dump();
  auto live = RunStatus(o);
  for (int i = 0; i < 500 && live.code != kStatusRunning; ++i) {
    ::usleep(10'000);
    live = RunStatus(o);
  }
  EXPECT_EQ(live.code, kStatusRunning);
  EXPECT_FALSE(json::parse(live.out).contains("running"));
}

// --json of the daemon's flat file is schema 1 (docs/status.md): the
// channel, identity, device, the job with its stage, the outbox.
TEST(StatusCommand, JsonOfTheDaemonsFlatFileIsSchema1) {
  test::TempDir dir;
  FakeDaemon daemon(dir.path());
  StatusOptions o;
  o.file = dir / "status.json";
  o.json = true;
  json flat = DaemonFlatDocument("offline");
  flat["pid"] = daemon.pid();
  std::ofstream(o.file) << flat.dump();
  auto r = RunStatus(o);
  for (int i = 0; i < 500 && r.code != kStatusRunning; ++i) {  // until the spawn has exec'd
    ::usleep(10'000);
    r = RunStatus(o);
  }
  EXPECT_EQ(r.code, kStatusRunning);
  const json doc = json::parse(r.out);
  EXPECT_EQ(doc["schema"], 1);
  EXPECT_EQ(doc["agent"]["pid"], daemon.pid());
  EXPECT_EQ(doc["identity"]["serial_number"], "sn1");
  EXPECT_EQ(doc["channel"], flat["channel"]);
  EXPECT_EQ(doc["device"]["booted_slot"], "A");
  EXPECT_EQ(doc["job"]["stage"], "Writing");
  EXPECT_EQ(doc["job"]["percent"], 40);
  EXPECT_EQ(doc["outbox"]["pending"], 1);
  EXPECT_FALSE(doc.contains("device_version")) << "the flat fields are mapped, not copied";
}

// --json for every stage, online and offline, with the daemon up: the
// document exactly as written, nothing added.
TEST(StatusCommand, JsonForEveryStageOnlineAndOffline) {
  test::TempDir dir;
  FakeDaemon daemon(dir.path());
  StatusOptions o;
  o.file = dir / "status.json";
  o.json = true;
  for (const char* stage : {"Downloading", "Writing", "Verifying", "Activating", "Rebooting",
                            "HealthChecking", "Committing", "RollingBack", "Staging", "Validating",
                            "Swapping", "Reloading", "Confirming"}) {
    for (const char* channel : {"online", "offline"}) {
      json doc = Document();
      doc["agent"]["pid"] = daemon.pid();
      doc["job"]["stage"] = stage;
      doc["channel"]["state"] = channel;
      std::ofstream(o.file, std::ios::trunc) << doc.dump();
      auto r = RunStatus(o);
      for (int i = 0; i < 500 && r.code != kStatusRunning; ++i) {  // until the spawn has exec'd
        ::usleep(10'000);
        r = RunStatus(o);
      }
      EXPECT_EQ(r.code, kStatusRunning) << stage << " " << channel;
      EXPECT_EQ(json::parse(r.out), doc) << stage << " " << channel;
    }
  }
}

}  // namespace
}  // namespace sag::agent
