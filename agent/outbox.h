// The durable report outbox: every state change, result and progress
// milestone of a job, on its way to the cloud. A consumer (the control
// channel) sends what is pending, in order, and acknowledges up to a sequence
// number; what is not acknowledged is sent again after a restart (at least
// once; the cloud handles a report idempotently by its sequence number).
//
// Files (STATE_DIR):
//   outbox.log  append-only, one JSON report per line:
//               {"seq": N, "kind": "state"|"progress"|"result"|"device", "job": ID,
//                "at": TIME, "body": {...}}
//               Each append is written and fdatasync'ed before Append()
//               returns: a report that was appended survives SIGKILL and a
//               power cut. A torn last line (cut mid-append) is cut off on
//               Load(); it was never acknowledged as appended. Post() hands
//               a report to the outbox's own thread instead, which appends
//               it the same way; Append() appends what was posted first, so
//               the log keeps the order of the calls.
//   outbox.ack  {"acked": N, "epoch": E}, replaced atomically by Ack().
//               The epoch names this outbox's sequence: made at the first
//               Load() (random), it changes only when the files are started
//               afresh (moved aside as damaged), so that the cloud never
//               takes a new report #1 for one it already recorded.
//
// Bounds and policy: when more than max_pending reports are pending, the
// pending progress reports that a newer report of the same job supersedes
// are dropped (progress is coalesced to the latest per job); state changes
// and results are never dropped. Acknowledged reports are removed from the
// log when they are more than half of it (an atomic rewrite of the pending
// ones). A damaged line before the last is kOutboxCorrupt (416).
#pragma once

#include <condition_variable>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "common/error.h"
#include "common/unique_fd.h"

namespace sag::agent {

struct Report {
  std::uint64_t seq = 0;
  std::string kind;  // "state" | "progress" | "result" | "device" (what runs; job "")
  std::string job;   // job id
  std::string at;    // UTC time of the report
  nlohmann::json body = nlohmann::json::object();

  [[nodiscard]] nlohmann::json ToJson() const;
};

class Outbox {
 public:
  static constexpr std::size_t kMaxPending = 1024;

  explicit Outbox(std::filesystem::path dir, std::size_t max_pending = kMaxPending);
  // Appends what is still posted.
  ~Outbox();
  Outbox(const Outbox&) = delete;
  Outbox& operator=(const Outbox&) = delete;

  // Reads both files, cuts a torn last line off. kOutboxCorrupt when a line
  // before the last is not a report or the sequence numbers do not increase.
  Status Load();

  // Appends a report (seq assigned) and makes it durable; returns its seq.
  // First appends what was posted before (in order).
  Expected<std::uint64_t> Append(std::string kind, std::string job, nlohmann::json body);
  // Returns at once; the outbox's thread appends the report as Append()
  // would, after what was posted before it and before anything appended
  // later. For reports a caller must not wait for the disk for (progress,
  // from an install's writer thread): one posted but not yet appended is
  // lost by a kill or a power cut, as if it had not been made. An append
  // that fails is logged.
  void Post(std::string kind, std::string job, nlohmann::json body);

  // Everything up to `seq` has reached the consumer; persisted atomically.
  Status Ack(std::uint64_t seq);

  // The reports not acknowledged yet, in sequence order.
  [[nodiscard]] std::vector<Report> Pending() const;
  // Whether a pending report of `kind` for `job` is in the outbox.
  [[nodiscard]] bool HasPending(std::string_view kind, std::string_view job) const;
  [[nodiscard]] std::uint64_t acked() const;
  [[nodiscard]] std::string epoch() const;
  // Called for every report appended, after it is durable, on the appending
  // thread with the outbox's lock held: it must not call back into the
  // outbox (post to a loop instead). The channel learns there is more to send.
  void SetOnAppend(std::function<void()> fn);
  [[nodiscard]] std::uint64_t last_seq() const;
  // status.json's "outbox": {"pending", "oldest_pending_seq", "last_acked_seq"}.
  [[nodiscard]] nlohmann::json Summary() const;

  [[nodiscard]] std::filesystem::path LogPath() const { return dir_ / "outbox.log"; }
  [[nodiscard]] std::filesystem::path AckPath() const { return dir_ / "outbox.ack"; }

 private:
  struct Posted {
    std::string kind;
    std::string job;
    nlohmann::json body;
  };
  // Call with mu_ held.
  Expected<std::uint64_t> AppendLocked(std::string kind, std::string job, nlohmann::json body);
  void AppendPostedLocked();
  void RunPosted();
  Status OpenForAppend();
  Status WriteAck(std::uint64_t seq) const;
  static std::string NewEpoch();
  Status Rewrite(std::vector<Report> keep);  // atomically, the log holds `keep` only
  void Coalesce(std::vector<Report>& pending) const;

  std::filesystem::path dir_;
  std::size_t max_pending_;
  mutable std::mutex mu_;        // Append may come from the install's threads
  std::vector<Report> reports_;  // pending, in sequence order
  std::uint64_t acked_ = 0;
  std::string epoch_;
  std::function<void()> on_append_;
  std::uint64_t last_seq_ = 0;
  std::size_t lines_in_file_ = 0;  // acknowledged lines included
  std::size_t size_ = 0;           // bytes of whole lines in the log
  UniqueFd fd_;

  std::mutex post_mu_;  // taken after mu_, never before it
  std::condition_variable post_cv_;
  std::vector<Posted> posted_;  // guarded by post_mu_
  bool post_stop_ = false;      // guarded by post_mu_
  std::thread post_thread_;     // started by the first Post()
};

}  // namespace sag::agent
