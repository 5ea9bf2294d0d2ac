#include "agent/step_guard.h"

#include <nlohmann/json.hpp>

#include "common/atomic_file.h"
#include "common/json_reader.h"

namespace sag::agent {

namespace {

constexpr std::uint64_t kMaxBytes = 4096;

}  // namespace

StepGuard::StepGuard(std::filesystem::path file, std::string boot_id)
    : file_(std::move(file)), boot_id_(std::move(boot_id)) {}

Expected<std::optional<StepGuard::Entry>> StepGuard::Load() const {
  auto text = ReadFile(file_, kMaxBytes);
  if (!text) {
    if (text.error().code() == Errc::kNotFound) return std::optional<Entry>();
    return std::move(text).error().WithContext("reading the loop guard's file");
  }
  const std::string what = "loop guard " + file_.string();
  auto damaged = [&](const Error& e) {
    return Error(Errc::kJournalCorrupt,
                 e.message() + "; the agent counts the job's attempts from 0 again");
  };
  auto doc = ParseJson(*text, what, Errc::kJournalCorrupt, {.max_bytes = kMaxBytes});
  if (!doc) return damaged(doc.error());
  JsonReader r(*doc, what, Errc::kJournalCorrupt);
  Entry e;
  e.job = r.Str("job");
  e.step = r.Str("step");
  const auto attempts = r.U64("attempts");
  e.boot = r.Str("boot", "");
  if (r.ok() && (attempts == 0 || attempts > 1000)) r.Fail("attempts", "expected 1 to 1000");
  if (auto st = r.Finish(); !st) return damaged(st.error());
  e.attempts = static_cast<int>(attempts);
  return std::optional<Entry>(std::move(e));
}

Status StepGuard::Enter(const std::string& job, std::string_view step) {
  const std::lock_guard lock(mu_);
  if (!loaded_) {
    auto now = Load();
    // A damaged file counts from 0 (Load's message says so where it is read
    // at start); the write below replaces it.
    last_ = now ? *now : std::nullopt;
    loaded_ = true;
  }
  Entry next{job, std::string(step), 1, boot_id_};
  if (last_ && last_->job == job && last_->step == step && last_->boot == boot_id_) {
    next.attempts = last_->attempts + 1;
  }
  const nlohmann::json doc = {
      {"job", next.job}, {"step", next.step}, {"attempts", next.attempts}, {"boot", next.boot}};
  SAG_TRY_STATUS(WriteFileAtomic(file_, doc.dump() + "\n", 0600));
  last_ = std::move(next);
  return Ok();
}

Status StepGuard::Clear() {
  const std::lock_guard lock(mu_);
  if (loaded_ && !last_) return Ok();  // nothing recorded since the last clear
  std::error_code ec;
  std::filesystem::remove(file_, ec);
  if (ec) return Error(Errc::kIo, "remove " + file_.string() + ": " + ec.message());
  last_.reset();
  loaded_ = true;
  return FsyncDir(file_.parent_path());
}

}  // namespace sag::agent
