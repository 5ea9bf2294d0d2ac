#include "agent/status.h"

#include <poll.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/inotify.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <ctime>
#include <iostream>
#include <limits>
#include <optional>
#include <sstream>
#include <utility>

#include "common/atomic_file.h"
#include "common/log.h"
#include "common/redact.h"
#include "firmware/job.h"

namespace sag::agent {

namespace {

// Every string in `j` with its URLs redacted (common/redact.h): the file is
// world-readable, and job sources, error messages and hook output may hold
// signed URLs.
void RedactStrings(nlohmann::json& j) {
  if (j.is_string()) {
    const auto& text = j.get_ref<const std::string&>();
    if (text.find("://") != std::string::npos) j = RedactUrls(text);
  } else if (j.is_structured()) {
    for (auto& item : j) RedactStrings(item);
  }
}

}  // namespace

Status StatusFile::Update(const nlohmann::json& fields) {
  // Top-level keys are replaced whole: a DPI job must not inherit fields of
  // the Device job reported before it.
  for (const auto& [key, value] : fields.items()) {
    doc_[key] = value;
    RedactStrings(doc_[key]);
  }
  doc_["updated_at"] = firmware::NowUtc();
  // A runtime file, rebuilt at start: replaced untorn, not made durable.
  return ReplaceFile(path_, doc_.dump(2) + "\n", 0644);
}

Expected<nlohmann::json> StatusFile::Read() const {
  SAG_TRY(const auto text, ReadFile(path_, 1U << 20U));
  auto doc = nlohmann::json::parse(text, nullptr, false);
  if (doc.is_discarded()) {
    return Error(Errc::kIo, path_.string() + " is not JSON");
  }
  return doc;
}

StatusWriter::StatusWriter(std::filesystem::path path)
    : file_(std::move(path)), thread_([this] { Run(); }) {}

StatusWriter::~StatusWriter() {
  {
    const std::lock_guard lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

void StatusWriter::Post(const nlohmann::json& fields) {
  {
    const std::lock_guard lock(mu_);
    for (const auto& [key, value] : fields.items()) posted_[key] = value;
  }
  cv_.notify_all();
}

nlohmann::json StatusWriter::TakePosted() {
  const std::lock_guard lock(mu_);
  return std::exchange(posted_, nlohmann::json::object());
}

Status StatusWriter::Update(const nlohmann::json& fields) {
  const std::lock_guard lock(file_mu_);
  nlohmann::json all = TakePosted();
  for (const auto& [key, value] : fields.items()) all[key] = value;
  return file_.Update(all);
}

void StatusWriter::Run() {
  for (;;) {
    {
      std::unique_lock lock(mu_);
      cv_.wait(lock, [&] { return stop_ || !posted_.empty(); });
      if (posted_.empty()) return;  // stopped, nothing left to write
    }
    // Taken under file_mu_: an Update() between taking and writing would
    // otherwise be overwritten by older fields.
    const std::lock_guard lock(file_mu_);
    const nlohmann::json posted = TakePosted();
    if (posted.empty()) continue;  // an Update() wrote it
    if (auto st = file_.Update(posted); !st) spdlog::warn("status: {}", st.error().ToString());
  }
}

// --- Reading it -------------------------------------------------------------
//
// Everything below reads a document that another program wrote, possibly an
// older or newer one: every field is looked up with its type checked, and a
// missing or mistyped field shows as unknown instead of throwing.

namespace {

using nlohmann::json;
using WallClock = std::chrono::system_clock;

const json* Field(const json& obj, const char* key) {
  if (!obj.is_object()) return nullptr;
  auto it = obj.find(key);
  return it == obj.end() || it->is_null() ? nullptr : &*it;
}

const json* Obj(const json& obj, const char* key) {
  const json* f = Field(obj, key);
  return f != nullptr && f->is_object() ? f : nullptr;
}

std::optional<std::string> Str(const json& obj, const char* key) {
  const json* f = Field(obj, key);
  if (f == nullptr || !f->is_string()) return std::nullopt;
  return f->get<std::string>();
}

std::optional<std::int64_t> Int(const json& obj, const char* key) {
  const json* f = Field(obj, key);
  if (f == nullptr) return std::nullopt;
  if (f->is_number_integer()) return f->get<std::int64_t>();
  if (f->is_number_float()) return static_cast<std::int64_t>(f->get<double>());
  return std::nullopt;
}

std::string Or(const std::optional<std::string>& s, const char* fallback = "-") {
  return s && !s->empty() ? *s : std::string(fallback);
}

// Copies obj[from] into out[to] when obj has it (not null).
void Move(const json& obj, const char* from, json& out, const char* to) {
  if (const json* f = Field(obj, from)) out[to] = *f;
}

// agent.state in words.
std::string StateWords(const std::string& state) {
  if (state == "resuming") return "resuming an interrupted job";
  if (state == "running") return "running a job";
  if (state == "waiting_reboot") return "waiting for the reboot it asked for";
  return state;
}

bool IsTerminalState(const std::string& state) {
  return state == "Committed" || state == "RolledBack" || state == "Failed";
}

std::string OutcomeOf(const std::string& state) {
  if (state == "Committed") return "committed";
  if (state == "RolledBack") return "rolled_back";
  return "failed";
}

// "2026-12-01T10:00:00Z" (the only form the daemon writes).
std::optional<WallClock::time_point> ParseUtc(const std::string& text) {
  std::tm tm{};
  char z = 0;
  int n = 0;
  // Every field is checked below.
  // NOLINTNEXTLINE(cert-err34-c,bugprone-unchecked-string-to-number-conversion)
  if (std::sscanf(text.c_str(), "%4d-%2d-%2dT%2d:%2d:%2d%c%n", &tm.tm_year, &tm.tm_mon, &tm.tm_mday,
                  &tm.tm_hour, &tm.tm_min, &tm.tm_sec, &z, &n) != 7 ||
      z != 'Z' || static_cast<std::size_t>(n) != text.size() || tm.tm_mon < 1 || tm.tm_mon > 12 ||
      tm.tm_mday < 1 || tm.tm_mday > 31 || tm.tm_hour > 23 || tm.tm_min > 59 || tm.tm_sec > 60) {
    return std::nullopt;
  }
  tm.tm_year -= 1900;
  tm.tm_mon -= 1;
  const std::time_t t = timegm(&tm);
  if (t == static_cast<std::time_t>(-1)) return std::nullopt;
  return WallClock::from_time_t(t);
}

// "3m12s", "2h05m", "4d03h": how long, for people.
std::string Span(std::chrono::seconds d) {
  auto s = d.count();
  char buf[32];
  if (s < 60) {
    std::snprintf(buf, sizeof buf, "%llds", static_cast<long long>(s));
  } else if (s < 3600) {
    std::snprintf(buf, sizeof buf, "%lldm%02llds", static_cast<long long>(s / 60),
                  static_cast<long long>(s % 60));
  } else if (s < 86400) {
    std::snprintf(buf, sizeof buf, "%lldh%02lldm", static_cast<long long>(s / 3600),
                  static_cast<long long>(s / 60 % 60));
  } else {
    std::snprintf(buf, sizeof buf, "%lldd%02lldh", static_cast<long long>(s / 86400),
                  static_cast<long long>(s / 3600 % 24));
  }
  return buf;
}

// "2026-12-01T10:00:00Z (3m12s ago)", or the text as it is when it is not a
// time the daemon writes.
std::string When(const std::optional<std::string>& text, WallClock::time_point now) {
  if (!text) return "-";
  auto t = ParseUtc(*text);
  if (!t) return *text;
  const auto d = std::chrono::duration_cast<std::chrono::seconds>(now - *t);
  if (d.count() >= 0) return *text + " (" + Span(d) + " ago)";
  return *text + " (in " + Span(-d) + ")";
}

std::string Bytes(std::int64_t n) {
  char buf[32];
  if (n >= std::int64_t{1024} * 1024) {
    std::snprintf(buf, sizeof buf, "%.1f MiB", static_cast<double>(n) / (1024.0 * 1024.0));
  } else if (n >= 1024) {
    std::snprintf(buf, sizeof buf, "%.1f KiB", static_cast<double>(n) / 1024.0);
  } else {
    std::snprintf(buf, sizeof buf, "%lld B", static_cast<long long>(n));
  }
  return buf;
}

constexpr int kBarWidth = 30;

std::string Bar(std::int64_t percent) {
  const auto p = std::clamp<std::int64_t>(percent, 0, 100);
  const auto filled = static_cast<std::size_t>(p * kBarWidth / 100);
  return "[" + std::string(filled, '#') + std::string(kBarWidth - filled, '-') + "]";
}

std::string ErrorLine(const json& error) {
  if (!error.is_object()) return {};
  std::string line;
  if (auto code = Int(error, "code")) line += "E" + std::to_string(*code) + " ";
  line += Or(Str(error, "name"), "Error");
  if (auto msg = Str(error, "message"); msg && !msg->empty()) line += ": " + *msg;
  return line;
}

// One label column: every line of the summary starts with 12 characters.
// The text went through the log filter: what the file holds came partly from
// outside (a server's error message, an image URL), and must neither move a
// terminal's cursor nor show a signed URL's query.
void Line(std::ostringstream& out, const char* label, const std::string& text) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "%-12s", label);
  out << buf << ScrubLogText(text) << "\n";
}

void FormatChannel(std::ostringstream& out, const json& ch, WallClock::time_point now) {
  const std::string state = Or(Str(ch, "state"), "unknown");
  std::string text = state;
  if (state == "online") {
    text += " since " + When(Str(ch, "since"), now);
  } else if (state == "offline" || state == "connecting") {
    text += " since " + When(Str(ch, "since"), now);
    if (auto attempts = Int(ch, "attempts"); attempts && *attempts > 0) {
      text += ", " + std::to_string(*attempts) + (*attempts == 1 ? " attempt" : " attempts");
    }
    if (auto next = Str(ch, "next_attempt_at")) {
      // The daemon writes it when it schedules the attempt; once due, the
      // attempt is being made.
      const auto at = ParseUtc(*next);
      if (at && *at > now) {
        text += ", next attempt in " + Span(std::chrono::ceil<std::chrono::seconds>(*at - now)) +
                " (" + *next + ")";
      } else {
        text += ", retrying since " + When(next, now);
      }
    }
  } else if (state == "disabled") {
    text += " (no cloud endpoint)";
  }
  Line(out, "channel", text);
  if (auto endpoint = Str(ch, "endpoint")) Line(out, "", *endpoint);
  if (auto err = Str(ch, "last_error"); err && state != "online") {
    Line(out, "", "last error: " + *err);
  }
}

void FormatDevice(std::ostringstream& out, const json& dev) {
  const auto booted = Str(dev, "booted_slot");
  std::string os = Or(Str(dev, "version"), "unknown");
  if (booted) os += " (booted from slot " + *booted + ")";
  Line(out, "Device OS", os);
  if (const json* slots = Obj(dev, "slots")) {
    for (const char* name : {"A", "B"}) {
      const json* slot = Obj(*slots, name);
      if (slot == nullptr) continue;
      char buf[96];
      std::snprintf(buf, sizeof buf, "%-12s %-8s", Or(Str(*slot, "version"), "-").c_str(),
                    Or(Str(*slot, "state"), "unknown").c_str());
      std::string text = buf;
      if (booted && *booted == name) text += " booted";
      while (!text.empty() && text.back() == ' ') text.pop_back();
      Line(out, (std::string("slot ") + name).c_str(), text);
    }
  }
  if (const json* boot = Obj(dev, "boot")) {
    std::string text = "BOOT_ORDER=\"" + Or(Str(*boot, "order"), "") + "\"";
    if (auto a = Int(*boot, "a_left")) text += " BOOT_A_LEFT=" + std::to_string(*a);
    if (auto b = Int(*boot, "b_left")) text += " BOOT_B_LEFT=" + std::to_string(*b);
    Line(out, "boot env", text);
  }
}

void FormatJob(std::ostringstream& out, const json& job, WallClock::time_point now) {
  const std::string type = Or(Str(job, "type"), "");
  std::string head = Or(Str(job, "id")) + "  " + type;
  const auto from = Str(job, "from_version");
  const auto to = Str(job, "version");
  if (from && !from->empty() && to) {
    head += " " + *from + " -> " + *to;
  } else if (to) {
    head += " " + *to;
  }
  if (auto slot = Str(job, "target_slot"); slot && !slot->empty()) head += " into slot " + *slot;
  Line(out, "job", head);
  std::string progress = Or(Str(job, "stage"), "?");
  if (auto pct = Int(job, "percent")) {
    char buf[8];
    std::snprintf(buf, sizeof buf, "%3lld%%",
                  static_cast<long long>(std::clamp<std::int64_t>(*pct, 0, 100)));
    progress += "  " + Bar(*pct) + " " + buf;
  }
  auto done = Int(job, "bytes_done");
  auto total = Int(job, "bytes_total");
  if (done && total && *total > 0) progress += "  " + Bytes(*done) + " of " + Bytes(*total);
  Line(out, "", progress);
  if (auto started = Str(job, "started_at")) Line(out, "", "started " + When(started, now));
  if (auto source = Str(job, "source")) Line(out, "", "from " + *source);
}

void FormatLastResult(std::ostringstream& out, const json& r, WallClock::time_point now) {
  std::string head =
      Or(Str(r, "id")) + "  " + Or(Str(r, "type"), "") + " " + Or(Str(r, "version"), "");
  std::string outcome = Or(Str(r, "outcome"), "");
  if (outcome.empty()) outcome = OutcomeOf(Or(Str(r, "state"), "Failed"));
  std::replace(outcome.begin(), outcome.end(), '_', ' ');
  head += ": " + outcome;
  if (auto at = Str(r, "finished_at")) head += " at " + When(at, now);
  Line(out, "last result", head);
  if (auto left = Str(r, "to_version")) Line(out, "", "left " + *left + " running");
  if (const json* e = Obj(r, "error")) Line(out, "", ErrorLine(*e));
}

void FormatOutbox(std::ostringstream& out, const json& o) {
  const auto pending = Int(o, "pending");
  std::string text;
  if (!pending) {
    text = "-";
  } else if (*pending == 0) {
    text = "empty";
  } else {
    text = std::to_string(*pending) + (*pending == 1 ? " report" : " reports") + " waiting";
    if (auto oldest = Int(o, "oldest_pending_seq")) text += ", oldest #" + std::to_string(*oldest);
  }
  if (auto acked = Int(o, "last_acked_seq"))
    text += " (acknowledged up to #" + std::to_string(*acked) + ")";
  Line(out, "outbox", text);
}

// A process that exited but was not reaped yet (its parent is gone or slow)
// still answers kill(pid, 0): /proc/PID/stat's state says it is a zombie.
bool ProcessIsAlive(pid_t pid) {
  if (::kill(pid, 0) != 0 && errno != EPERM) return false;
  auto stat = ReadFile("/proc/" + std::to_string(pid) + "/stat", 4096);
  if (!stat) return true;  // /proc hides it: kill() is all we know
  const auto paren = stat->rfind(')');
  if (paren == std::string::npos || paren + 2 >= stat->size()) return true;
  const char state = (*stat)[paren + 2];
  return state != 'Z' && state != 'X';
}

// The name the kernel gives the process (its executable's, 15 characters at
// most), or nothing when /proc does not show it.
std::optional<std::string> ProcessName(pid_t pid) {
  auto text = ReadFile("/proc/" + std::to_string(pid) + "/comm", 64);
  if (!text) return std::nullopt;
  std::string name = *text;
  while (!name.empty() && (name.back() == '\n' || name.back() == ' ')) name.pop_back();
  return name;
}

}  // namespace

json NormalizeStatus(const json& doc) {
  if (!doc.is_object()) return json::object();
  if (Int(doc, "schema")) return doc;
  // The flat layout the daemon writes (agent.cpp RefreshStatus): its
  // top-level fields become schema 1's objects; "channel" and "outbox" are
  // schema 1's already.
  json out = json::object();
  out["schema"] = 1;
  Move(doc, "updated_at", out, "updated_at");
  json agent = json::object();
  Move(doc, "agent_version", agent, "version");
  Move(doc, "pid", agent, "pid");
  Move(doc, "state", agent, "state");
  if (!agent.empty()) out["agent"] = agent;
  json identity = json::object();
  for (const char* key : {"smartag_id", "serial_number", "model"}) Move(doc, key, identity, key);
  if (!identity.empty()) out["identity"] = identity;
  json device = json::object();
  Move(doc, "device_version", device, "version");
  Move(doc, "booted_slot", device, "booted_slot");
  if (Obj(doc, "boot") != nullptr) device["boot"] = doc["boot"];
  if (Obj(doc, "slots") != nullptr) device["slots"] = doc["slots"];
  if (!device.empty()) out["device"] = device;
  if (doc.contains("dpi_version")) {
    const auto dpi = Str(doc, "dpi_version");
    out["dpi"] = {{"version", dpi ? json(*dpi) : json()}};
  }
  if (Obj(doc, "channel") != nullptr) out["channel"] = doc["channel"];
  if (Obj(doc, "outbox") != nullptr) out["outbox"] = doc["outbox"];
  out["job"] = nullptr;
  if (const json* job = Obj(doc, "job")) {
    const std::string state = Or(Str(*job, "state"), "");
    json j = json::object();
    for (const char* key : {"id", "type", "version", "from_version"}) Move(*job, key, j, key);
    if (IsTerminalState(state)) {
      j["state"] = state;
      j["outcome"] = OutcomeOf(state);
      j["error"] = Obj(*job, "error") != nullptr ? (*job)["error"] : json();
      Move(*job, "active", j, "to_version");  // DPI: the database active after it
      out["last_result"] = j;
    } else {
      j["stage"] = state;
      for (const char* key : {"percent", "bytes_done", "bytes_total", "target_slot", "source",
                              "started_at", "updated_at"}) {
        Move(*job, key, j, key);
      }
      out["job"] = j;
    }
  }
  return out;
}

Liveness CheckDaemon(const json& status) {
  const json* agent = Obj(status, "agent");
  // 0 for none: a plain integer, not an optional (GCC 12 -O2 warns of a
  // maybe-uninitialized optional here).
  const auto pid = agent != nullptr ? Int(*agent, "pid").value_or(0) : 0;
  const std::string state = agent != nullptr ? Or(Str(*agent, "state"), "") : "";
  if (pid <= 0 || pid > std::numeric_limits<pid_t>::max()) {
    return {false, "status.json names no daemon pid"};
  }
  const auto p = static_cast<pid_t>(pid);
  if (state == "stopped") return {false, "pid " + std::to_string(p) + " stopped"};
  if (!ProcessIsAlive(p)) return {false, "no process " + std::to_string(p)};
  if (auto name = ProcessName(p); name && *name != "sag-agent") {
    return {false, "pid " + std::to_string(p) + " is now '" + *name + "', not sag-agent"};
  }
  return {true, ""};
}

std::string FormatStatus(const json& s, const StatusContext& ctx) {
  std::ostringstream out;
  const auto now = ctx.now;
  static const json kEmpty = json::object();
  const json* agent = Obj(s, "agent");
  const json& a = agent != nullptr ? *agent : kEmpty;
  const std::string version = Str(a, "version") ? *Str(a, "version") + ", " : "";
  const std::string state = Or(Str(a, "state"), "unknown");
  if (ctx.daemon.running) {
    std::string head = version + "running";
    if (auto pid = Int(a, "pid")) head += " (pid " + std::to_string(*pid) + ")";
    if (auto started = Str(a, "started_at")) head += " since " + When(started, now);
    Line(out, "sag-agent", head + ": " + StateWords(state));
  } else {
    Line(out, "sag-agent",
         version + "NOT RUNNING (" + ctx.daemon.reason + "); last state " + state);
    Line(out, "",
         "status.json is stale since " + When(Str(s, "updated_at"), now) +
             "; below is what the daemon last reported");
    Line(out, "", "start it: systemctl start sag-agent; why it stopped: journalctl -u sag-agent");
  }
  if (const json* id = Obj(s, "identity")) {
    Line(out, "appliance",
         Or(Str(*id, "smartag_id")) + "  serial " + Or(Str(*id, "serial_number")) + "  model " +
             Or(Str(*id, "model")));
  }
  if (const json* ch = Obj(s, "channel")) FormatChannel(out, *ch, now);
  if (const json* dev = Obj(s, "device")) FormatDevice(out, *dev);
  if (const json* dpi = Obj(s, "dpi")) {
    Line(out, "DPI db", Or(Str(*dpi, "version"), "none active"));
  }
  if (const json* job = Obj(s, "job")) {
    FormatJob(out, *job, now);
  } else {
    Line(out, "job", "none");
  }
  if (const json* r = Obj(s, "last_result")) {
    FormatLastResult(out, *r, now);
  } else {
    Line(out, "last result", "none");
  }
  if (const json* o = Obj(s, "outbox")) FormatOutbox(out, *o);
  Line(out, "updated", When(Str(s, "updated_at"), now));
  return out.str();
}

namespace {

enum class Read { kOk, kMissing, kBad };

struct Snapshot {
  Read read = Read::kMissing;
  std::string error;           // kMissing, kBad: what went wrong
  nlohmann::ordered_json doc;  // as read, in its own key order (kOk)
  json status;                 // normalized (kOk)
  Liveness daemon;
};

constexpr std::size_t kMaxStatusBytes = 1U << 20U;

Snapshot TakeSnapshot(const std::filesystem::path& file) {
  Snapshot s;
  s.daemon = {false, "no " + file.string()};
  auto text = ReadFile(file, kMaxStatusBytes);
  if (!text) {
    s.read = text.error().code() == Errc::kNotFound ? Read::kMissing : Read::kBad;
    s.error = text.error().message();
    return s;
  }
  s.doc = nlohmann::ordered_json::parse(*text, nullptr, false);
  if (s.doc.is_discarded() || !s.doc.is_object()) {
    s.read = Read::kBad;
    s.error = file.string() + " is not a JSON object (" + std::to_string(text->size()) + " bytes)";
    return s;
  }
  s.read = Read::kOk;
  s.status = NormalizeStatus(json::parse(*text, nullptr, false));
  s.daemon = CheckDaemon(s.status);
  return s;
}

int ExitCode(const Snapshot& s) {
  if (s.read == Read::kBad) return kStatusUnreadable;
  return s.daemon.running ? kStatusRunning : kStatusNotRunning;
}

std::string Render(const Snapshot& s, const std::filesystem::path& file, bool as_json,
                   bool one_line) {
  if (as_json) {
    // Schema 1 whichever layout the file has (docs/status.md): a schema-1
    // file as written, in its key order; the daemon's flat layout mapped.
    nlohmann::ordered_json doc = s.doc;
    if (s.read == Read::kOk && !s.doc.contains("schema")) {
      doc = nlohmann::ordered_json::parse(s.status.dump());
    }
    if (s.read != Read::kOk) {
      doc = {{"running", false}, {"status_file", file.string()}, {"error", s.error}};
    } else if (!s.daemon.running) {
      doc["running"] = false;
    }
    return doc.dump(one_line ? -1 : 2) + "\n";
  }
  if (s.read == Read::kMissing) {
    return "sag-agent: NOT RUNNING: " + file.string() +
           " does not exist (the daemon writes it when it starts)\n"
           "  start it: systemctl start sag-agent; why it stopped: journalctl -u sag-agent\n";
  }
  if (s.read == Read::kBad) return "sag-agent: cannot read the status: " + s.error + "\n";
  StatusContext ctx;
  ctx.daemon = s.daemon;
  return FormatStatus(s.status, ctx);
}

std::optional<std::string> JobId(const Snapshot& s) {
  const json* job = s.read == Read::kOk ? Obj(s.status, "job") : nullptr;
  return job != nullptr ? Str(*job, "id") : std::nullopt;
}

// Wakes when something in the status file's directory changes (the daemon
// renames a new file over it), or after `wait` at most.
class DirWatch {
 public:
  explicit DirWatch(const std::filesystem::path& dir)
      : fd_(::inotify_init1(IN_CLOEXEC | IN_NONBLOCK)) {
    if (fd_ >= 0 && ::inotify_add_watch(
                        fd_, dir.c_str(),
                        IN_MOVED_TO | IN_CLOSE_WRITE | IN_CREATE | IN_DELETE | IN_MOVED_FROM) < 0) {
      ::close(fd_);
      fd_ = -1;  // no directory yet: wait by time only
    }
  }
  ~DirWatch() {
    if (fd_ >= 0) ::close(fd_);
  }
  DirWatch(const DirWatch&) = delete;
  DirWatch& operator=(const DirWatch&) = delete;

  void Wait(std::chrono::milliseconds wait) {
    pollfd p{fd_, POLLIN, 0};
    ::poll(&p, fd_ >= 0 ? 1 : 0, static_cast<int>(wait.count()));
    if (fd_ < 0) return;
    alignas(inotify_event) char buf[4096];
    while (::read(fd_, buf, sizeof buf) > 0) {
    }
  }

 private:
  int fd_;
};

int Watch(const StatusOptions& o, std::ostream& out) {
  using std::chrono::milliseconds;
  using SteadyClock = std::chrono::steady_clock;
  const bool tty = &out == &std::cout && ::isatty(STDOUT_FILENO) == 1;
  const auto deadline =
      o.timeout.count() > 0 ? SteadyClock::now() + o.timeout : SteadyClock::time_point::max();
  // Added before the first read: a change after it is seen.
  DirWatch watch(o.file.parent_path());
  std::optional<std::string> followed;
  std::string last_key;
  int frames = 0;
  for (;;) {
    const Snapshot s = TakeSnapshot(o.file);
    const auto id = JobId(s);
    // The job ends when the document shows another job or none.
    const bool ended = followed && id != followed;
    if (!followed && id) followed = id;
    // A terminal redraws every second (the "ago" times move); a pipe gets a
    // frame when the document or the daemon's liveness changes.
    const std::string key = s.doc.dump() + (s.daemon.running ? "1" : "0") + s.error;
    if (tty || key != last_key) {
      std::string frame = Render(s, o.file, o.json, true);
      if (!o.json && !followed && s.daemon.running) frame += "waiting for a job (Ctrl-C to stop)\n";
      if (tty && !o.json) out << "\033[H\033[2J";
      out << frame << (o.json || tty ? "" : "\n") << std::flush;
      last_key = key;
      ++frames;
    }
    if (ended) {
      const json* r = Obj(s.status, "last_result");
      const bool this_job = r != nullptr && Str(*r, "id") == followed;
      const std::string outcome = this_job ? Or(Str(*r, "outcome"), "") : "";
      if (!o.json)
        out << "job " << *followed << " ended" << (outcome.empty() ? "" : ": " + outcome) << "\n";
      return outcome.empty() || outcome == "committed" ? kStatusRunning : kStatusFailedJob;
    }
    if (s.read == Read::kBad || !s.daemon.running) {
      if (!o.json && followed) {
        out << "the agent is not running; job " << *followed
            << " goes on when it runs again (a Device job after the reboot it asked for)\n";
      }
      return ExitCode(s);
    }
    if (o.count > 0 && frames >= o.count) return ExitCode(s);
    const auto now = SteadyClock::now();
    if (now >= deadline) return ExitCode(s);
    const auto left = std::chrono::duration_cast<milliseconds>(deadline - now);
    watch.Wait(std::min(milliseconds(1000), left));
  }
}

}  // namespace

int RunStatusCommand(const StatusOptions& o, std::ostream& out, std::ostream& err) {
  if (o.watch) return Watch(o, out);
  const Snapshot s = TakeSnapshot(o.file);
  if (s.read == Read::kBad && !o.json) {
    err << Render(s, o.file, false, false);
    return kStatusUnreadable;
  }
  out << Render(s, o.file, o.json, false);
  return ExitCode(s);
}

}  // namespace sag::agent
