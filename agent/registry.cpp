#include "agent/registry.h"

#include <algorithm>
#include <utility>

#include "common/atomic_file.h"
#include "common/json_reader.h"

namespace sag::agent {

namespace {

constexpr std::size_t kMaxFileBytes = 4U << 20U;  // 256 records are ~100 KiB

}  // namespace

JobRegistry::JobRegistry(std::filesystem::path file, std::size_t keep)
    : file_(std::move(file)), keep_(std::max<std::size_t>(keep, 1)) {}

Status JobRegistry::Load() {
  const std::lock_guard lock(mu_);
  jobs_.clear();
  damaged_.reset();
  auto text = ReadFile(file_, kMaxFileBytes);
  if (!text) {
    if (text.error().code() == Errc::kNotFound) return Ok();
    return std::move(text).error().WithContext("reading the job registry");
  }
  const std::string what = "job registry " + file_.string();
  auto fail = [&](const Error& e) -> Status {
    damaged_ = Error(Errc::kJournalCorrupt,
                     e.message() + "; move the file aside (the record of past job ids is lost)");
    return *damaged_;
  };
  auto doc = ParseJson(*text, what, Errc::kJournalCorrupt, {.max_bytes = kMaxFileBytes});
  if (!doc) return fail(doc.error());
  JsonReader r(*doc, what, Errc::kJournalCorrupt);
  if (const auto version = r.U64("version"); r.ok() && version != 1) {
    r.Fail("version", "version " + std::to_string(version) + " is not 1");
  }
  std::vector<JobOutcome> jobs;
  auto items = r.ObjList("jobs", 4 * keep_ + 16);
  if (auto st = r.Finish(); !st) return fail(st.error());
  for (std::size_t i = 0; i < items.size(); ++i) {
    auto o = JobOutcome::FromJson((*doc)["jobs"][i], what + ": jobs[" + std::to_string(i) + "]");
    if (!o) return fail(o.error());
    jobs.push_back(std::move(*o));
  }
  jobs_ = std::move(jobs);
  return Ok();
}

std::optional<JobOutcome> JobRegistry::Find(const std::string& id) const {
  const std::lock_guard lock(mu_);
  for (const auto& j : jobs_) {
    if (j.id == id) return j;
  }
  return std::nullopt;
}

Status JobRegistry::Put(const JobOutcome& outcome) {
  const std::lock_guard lock(mu_);
  if (damaged_) return *damaged_;
  std::vector<JobOutcome> jobs = jobs_;
  auto it = std::find_if(jobs.begin(), jobs.end(),
                         [&](const JobOutcome& j) { return j.id == outcome.id; });
  if (it != jobs.end()) {
    *it = outcome;
  } else {
    jobs.push_back(outcome);
  }
  // The oldest finished jobs go first; an unfinished one is never dropped.
  std::size_t finished =
      std::count_if(jobs.begin(), jobs.end(), [](const JobOutcome& j) { return IsFinal(j.phase); });
  for (auto i = jobs.begin(); finished > keep_ && i != jobs.end();) {
    if (IsFinal(i->phase)) {
      i = jobs.erase(i);
      --finished;
    } else {
      ++i;
    }
  }
  return Write(std::move(jobs), "recording job " + outcome.id);
}

Status JobRegistry::Remove(const std::string& id) {
  const std::lock_guard lock(mu_);
  if (damaged_) return *damaged_;
  std::vector<JobOutcome> jobs = jobs_;
  std::erase_if(jobs, [&](const JobOutcome& j) { return j.id == id; });
  if (jobs.size() == jobs_.size()) return Ok();
  return Write(std::move(jobs), "forgetting job " + id);
}

// With mu_ held.
Status JobRegistry::Write(std::vector<JobOutcome> jobs, const std::string& context) {
  nlohmann::json list = nlohmann::json::array();
  for (const auto& j : jobs) list.push_back(j.ToJson());
  const nlohmann::json doc = {{"version", 1}, {"jobs", std::move(list)}};
  if (auto st = WriteFileAtomic(file_, doc.dump(1) + "\n", 0600); !st) {
    return std::move(st).error().WithContext(context);
  }
  jobs_ = std::move(jobs);
  return Ok();
}

}  // namespace sag::agent
