#include "agent/outbox.h"

#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <random>
#include <utility>

#include "common/atomic_file.h"
#include "common/json_reader.h"

namespace sag::agent {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr std::size_t kMaxLogBytes = 64U << 20U;

bool KnownKind(std::string_view kind) {
  return kind == "state" || kind == "progress" || kind == "result" || kind == "device";
}

Error Corrupt(const std::string& problem) {
  return {Errc::kOutboxCorrupt,
          problem + "; move the outbox files aside (their unacknowledged reports are lost)"};
}

// 2026-12-01T23:59:59.123Z
std::string NowUtcMs() {
  const auto now = std::chrono::system_clock::now();
  const std::time_t t = std::chrono::system_clock::to_time_t(now);
  const auto ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count() % 1000;
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[40];
  const std::size_t n = std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &tm);
  std::snprintf(buf + n, sizeof buf - n, ".%03dZ", static_cast<int>(ms));
  return buf;
}

}  // namespace

json Report::ToJson() const {
  return {{"seq", seq}, {"kind", kind}, {"job", job}, {"at", at}, {"body", body}};
}

Outbox::Outbox(fs::path dir, std::size_t max_pending)
    : dir_(std::move(dir)), max_pending_(std::max<std::size_t>(max_pending, 1)) {}

Outbox::~Outbox() {
  {
    const std::lock_guard lock(post_mu_);
    post_stop_ = true;
  }
  post_cv_.notify_all();
  if (post_thread_.joinable()) post_thread_.join();
}

void Outbox::Post(std::string kind, std::string job, json body) {
  {
    const std::lock_guard lock(post_mu_);
    posted_.push_back(Posted{std::move(kind), std::move(job), std::move(body)});
    if (!post_thread_.joinable()) post_thread_ = std::thread([this] { RunPosted(); });
  }
  post_cv_.notify_all();
}

void Outbox::RunPosted() {
  for (;;) {
    {
      std::unique_lock lock(post_mu_);
      post_cv_.wait(lock, [&] { return post_stop_ || !posted_.empty(); });
      if (posted_.empty()) return;  // stopped, nothing left
    }
    const std::lock_guard lock(mu_);
    AppendPostedLocked();
  }
}

void Outbox::AppendPostedLocked() {
  std::vector<Posted> posted;
  {
    const std::lock_guard lock(post_mu_);
    posted.swap(posted_);
  }
  for (auto& p : posted) {
    const std::string job = p.job;
    const std::string kind = p.kind;
    if (auto seq = AppendLocked(std::move(p.kind), std::move(p.job), std::move(p.body)); !seq) {
      spdlog::error("job {}: the {} report is not in the outbox: {}", job, kind,
                    seq.error().ToString());
    }
  }
}

Status Outbox::Load() {
  const std::lock_guard lock(mu_);
  reports_.clear();
  acked_ = 0;
  last_seq_ = 0;
  epoch_.clear();
  if (auto text = ReadFile(AckPath(), 4096)) {
    const std::string what = "outbox acknowledgement " + AckPath().string();
    auto doc = ParseJson(*text, what, Errc::kOutboxCorrupt);
    if (!doc) return Corrupt(doc.error().message());
    JsonReader r(*doc, what, Errc::kOutboxCorrupt);
    acked_ = r.U64("acked");
    epoch_ = r.Str("epoch", "");
    if (auto st = r.Finish(); !st) return Corrupt(st.error().message());
  } else if (text.error().code() != Errc::kNotFound) {
    return std::move(text).error().WithContext("reading the outbox");
  }
  last_seq_ = acked_;
  if (epoch_.empty()) {
    // The first load (or an acknowledgement file of an agent before epochs):
    // this sequence gets its name, durably, before any report is sent.
    epoch_ = NewEpoch();
    SAG_TRY_STATUS(WriteAck(acked_));
  }
  std::string log;
  if (auto text = ReadFile(LogPath(), kMaxLogBytes)) {
    log = std::move(*text);
  } else if (text.error().code() != Errc::kNotFound) {
    return std::move(text).error().WithContext("reading the outbox");
  }
  // A torn last line: an append cut by SIGKILL or power loss before it
  // returned; nobody was told it was appended.
  const auto end = log.rfind('\n');
  const std::size_t whole = end == std::string::npos ? 0 : end + 1;
  if (whole != log.size()) {
    if (::truncate(LogPath().c_str(), static_cast<off_t>(whole)) != 0) {
      return MakeErrno(Errc::kIo, "cut the torn last report off " + LogPath().string());
    }
    log.resize(whole);
  }
  std::size_t line_no = 0;
  std::uint64_t prev = 0;
  for (std::size_t pos = 0; pos < log.size();) {
    const std::size_t nl = log.find('\n', pos);
    const std::string_view line(log.data() + pos, nl - pos);
    pos = nl + 1;
    ++line_no;
    const std::string what = LogPath().string() + " line " + std::to_string(line_no);
    auto doc = ParseJson(line, what, Errc::kOutboxCorrupt);
    if (!doc) return Corrupt(doc.error().message());
    JsonReader r(*doc, what, Errc::kOutboxCorrupt);
    Report rep;
    rep.seq = r.U64("seq");
    rep.kind = r.Str("kind");
    rep.job = r.Str("job");
    rep.at = r.Str("at", "");
    (void)r.Obj("body");
    if (r.ok() && !KnownKind(rep.kind)) r.Fail("kind", "unknown report kind '" + rep.kind + "'");
    if (r.ok() && rep.seq <= prev) {
      r.Fail("seq", std::to_string(rep.seq) + " does not follow " + std::to_string(prev));
    }
    if (auto st = r.Finish(); !st) return Corrupt(st.error().message());
    rep.body = (*doc)["body"];
    prev = rep.seq;
    last_seq_ = std::max(last_seq_, rep.seq);
    if (rep.seq > acked_) reports_.push_back(std::move(rep));
  }
  lines_in_file_ = line_no;
  size_ = log.size();
  return OpenForAppend();
}

Status Outbox::OpenForAppend() {
  fd_.Reset();
  const bool existed = fs::exists(LogPath());
  UniqueFd fd(::open(LogPath().c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600));
  if (fd.get() < 0) return MakeErrno(Errc::kIo, "open " + LogPath().string());
  // A new file's name must be durable before its first report is.
  if (!existed) SAG_TRY_STATUS(FsyncDir(dir_));
  fd_ = std::move(fd);
  return Ok();
}

Expected<std::uint64_t> Outbox::Append(std::string kind, std::string job, json body) {
  const std::lock_guard lock(mu_);
  AppendPostedLocked();
  return AppendLocked(std::move(kind), std::move(job), std::move(body));
}

Expected<std::uint64_t> Outbox::AppendLocked(std::string kind, std::string job, json body) {
  if (fd_.get() < 0) return Error(Errc::kInternal, "the outbox was not loaded");
  Report rep;
  rep.seq = last_seq_ + 1;
  rep.kind = std::move(kind);
  rep.job = std::move(job);
  rep.at = NowUtcMs();
  rep.body = body.is_null() ? json::object() : std::move(body);
  if (!rep.body.is_object()) return Error(Errc::kInternal, "a report's body must be an object");
  const std::string line = rep.ToJson().dump() + "\n";
  std::size_t done = 0;
  while (done < line.size()) {
    const ssize_t n = ::write(fd_.get(), line.data() + done, line.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const int err = errno;
      // Never leave a partial line for the next append to continue.
      (void)::ftruncate(fd_.get(), static_cast<off_t>(size_));
      return MakeErrno(Errc::kIo, "append to " + LogPath().string(), err);
    }
    done += static_cast<std::size_t>(n);
  }
  // The report is durable before the caller goes on (and, for a state
  // change, before the step it announces).
  if (::fdatasync(fd_.get()) != 0) {
    const int err = errno;
    (void)::ftruncate(fd_.get(), static_cast<off_t>(size_));
    return MakeErrno(Errc::kIo, "fdatasync " + LogPath().string(), err);
  }
  size_ += line.size();
  ++lines_in_file_;
  last_seq_ = rep.seq;
  reports_.push_back(std::move(rep));
  if (reports_.size() > max_pending_) {
    std::vector<Report> keep = reports_;
    Coalesce(keep);
    if (keep.size() < reports_.size()) SAG_TRY_STATUS(Rewrite(std::move(keep)));
  }
  if (on_append_) on_append_();
  return last_seq_;
}

std::string Outbox::NewEpoch() {
  std::random_device rd;
  char buf[24];
  std::snprintf(buf, sizeof buf, "%08x%08x", rd(), rd());
  return buf;
}

Status Outbox::WriteAck(std::uint64_t seq) const {
  return WriteFileAtomic(AckPath(), json{{"acked", seq}, {"epoch", epoch_}}.dump() + "\n", 0600);
}

std::string Outbox::epoch() const {
  const std::lock_guard lock(mu_);
  return epoch_;
}

void Outbox::SetOnAppend(std::function<void()> fn) {
  const std::lock_guard lock(mu_);
  on_append_ = std::move(fn);
}

Status Outbox::Ack(std::uint64_t seq) {
  const std::lock_guard lock(mu_);
  seq = std::min(seq, last_seq_);
  if (seq <= acked_) return Ok();
  SAG_TRY_STATUS(WriteAck(seq));
  acked_ = seq;
  std::erase_if(reports_, [&](const Report& r) { return r.seq <= acked_; });
  // The acknowledged lines go once they are most of the file.
  if (lines_in_file_ > 64 && lines_in_file_ > 2 * reports_.size()) {
    SAG_TRY_STATUS(Rewrite(reports_));
  }
  return Ok();
}

// Progress is coalesced: a pending progress report that a newer report of
// the same job follows says nothing the newer one does not.
void Outbox::Coalesce(std::vector<Report>& pending) const {
  std::vector<Report> out;
  for (std::size_t i = 0; i < pending.size(); ++i) {
    const auto& r = pending[i];
    if (r.kind == "progress") {
      const bool superseded =
          std::any_of(pending.begin() + static_cast<std::ptrdiff_t>(i) + 1, pending.end(),
                      [&](const Report& later) { return later.job == r.job; });
      if (superseded) continue;
    }
    out.push_back(r);
  }
  pending = std::move(out);
}

Status Outbox::Rewrite(std::vector<Report> keep) {
  std::string text;
  for (const auto& r : keep) text += r.ToJson().dump() + "\n";
  SAG_TRY_STATUS(WriteFileAtomic(LogPath(), text, 0600));
  size_ = text.size();
  lines_in_file_ = keep.size();
  reports_ = std::move(keep);
  return OpenForAppend();
}

std::vector<Report> Outbox::Pending() const {
  const std::lock_guard lock(mu_);
  return reports_;
}

bool Outbox::HasPending(std::string_view kind, std::string_view job) const {
  const std::lock_guard lock(mu_);
  return std::any_of(reports_.begin(), reports_.end(),
                     [&](const Report& r) { return r.kind == kind && r.job == job; });
}

std::uint64_t Outbox::acked() const {
  const std::lock_guard lock(mu_);
  return acked_;
}

std::uint64_t Outbox::last_seq() const {
  const std::lock_guard lock(mu_);
  return last_seq_;
}

json Outbox::Summary() const {
  const std::lock_guard lock(mu_);
  return {{"pending", reports_.size()},
          {"oldest_pending_seq", reports_.empty() ? json(nullptr) : json(reports_.front().seq)},
          {"last_acked_seq", acked_}};
}

}  // namespace sag::agent
