// /run/sag-agent/status.json: what the agent is and does, for humans
// (`sag-agent status`), scripts (`--json`) and the simulator. Written
// atomically, so a reader never sees half a file.
#pragma once

#include <condition_variable>
#include <filesystem>
#include <mutex>
#include <nlohmann/json.hpp>
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

// The human form of a status document.
std::string FormatStatus(const nlohmann::json& status);

}  // namespace sag::agent
