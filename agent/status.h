// /run/sag-agent/status.json: what the agent is and does, for humans
// (`sag-agent status`), scripts (`--json`) and the simulator. Written
// atomically, so a reader never sees half a file.
#pragma once

#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <mutex>
#include <nlohmann/json.hpp>
#include <ostream>
#include <string>
#include <thread>

#include "common/error.h"

namespace sag::agent {

class StatusFile {
 public:
  explicit StatusFile(std::filesystem::path path) : path_(std::move(path)) {}

  // Merges `fields` into the document and writes it (with updated_at).
  Status Update(const nlohmann::json& fields);
  Expected<nlohmann::json> Read() const;
  [[nodiscard]] const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
  nlohmann::json doc_ = nlohmann::json::object();
};

// status.json as the agent writes it: updates written before Update()
// returns, and updates posted from threads that must not wait for the file
// system (the install's progress, from its writer thread: replacing a file
// can wait a fifth of a second for the journal of a file system busy with the
// slot's fsync), written by a thread of its own. The file sees them in the
// order they were made: an Update() first takes in what was posted before it.
class StatusWriter {
 public:
  explicit StatusWriter(std::filesystem::path path);
  // Writes what is still posted.
  ~StatusWriter();
  StatusWriter(const StatusWriter&) = delete;
  StatusWriter& operator=(const StatusWriter&) = delete;

  // Merges `fields` (top-level keys, replaced whole) into the next write and
  // returns at once; fields posted again before that write replace these.
  void Post(const nlohmann::json& fields);
  // Writes everything posted so far and `fields` before it returns.
  Status Update(const nlohmann::json& fields);
  [[nodiscard]] const std::filesystem::path& path() const { return file_.path(); }

 private:
  void Run();
  // Takes the posted fields; call with file_mu_ held.
  nlohmann::json TakePosted();

  std::mutex file_mu_;  // one writer of the file at a time, in order
  StatusFile file_;     // guarded by file_mu_
  std::mutex mu_;
  std::condition_variable cv_;
  nlohmann::json posted_ = nlohmann::json::object();  // guarded by mu_
  bool stop_ = false;                                 // guarded by mu_
  std::thread thread_;
};

// --- Reading it: `sag-agent status` (docs/status.md) ------------------------

// The document in schema 1 whatever layout the file has: the flat fields the
// daemon writes (state, device_version, dpi_version, booted_slot, boot, job,
// channel, outbox, ...) are mapped onto schema 1's objects, a finished "job"
// becoming "last_result". A schema-1 document comes back as it is. What
// neither has stays absent; a field of the wrong type is treated as absent.
// Never throws.
nlohmann::json NormalizeStatus(const nlohmann::json& doc);

// Whether the daemon that wrote a (normalized) document is alive: its
// agent.pid exists (kill(pid, 0)), is still a sag-agent (/proc/PID/comm, when
// readable: pids are reused), and the document does not say it stopped.
struct Liveness {
  bool running = false;
  std::string reason;  // why not, for people: "no process 1234", ...
};
Liveness CheckDaemon(const nlohmann::json& status);

// What the human form needs besides the document.
struct StatusContext {
  std::chrono::system_clock::time_point now = std::chrono::system_clock::now();
  Liveness daemon;
};

// The human form of a (normalized) status document: identity, channel,
// versions and slots, the current job with a progress bar, the last result,
// the outbox; headed by whether the daemon runs and, if not, since when the
// document is stale.
std::string FormatStatus(const nlohmann::json& status, const StatusContext& context);

struct StatusOptions {
  std::filesystem::path file;            // status.json
  bool json = false;                     // the document (JSON; one line per frame with watch)
  bool watch = false;                    // follow the current (or next) job until it ends
  int count = 0;                         // watch: stop after this many frames (0 = no limit)
  std::chrono::milliseconds timeout{0};  // watch: stop after this long (0 = none)
};

// Exit codes of `sag-agent status`, as LSB init scripts and `systemctl
// status` use them.
inline constexpr int kStatusRunning = 0;     // the daemon runs (watch: the job committed)
inline constexpr int kStatusFailedJob = 1;   // watch: the job failed or rolled back
inline constexpr int kStatusUnreadable = 1;  // status.json exists but cannot be read
inline constexpr int kStatusNotRunning = 3;  // no status.json, or its daemon is gone

// `sag-agent status [--json] [--watch [--count N] [--timeout S]]`.
int RunStatusCommand(const StatusOptions& options, std::ostream& out, std::ostream& err);

}  // namespace sag::agent
