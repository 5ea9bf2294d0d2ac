#include "cloud/store.h"

#include <algorithm>
#include <array>
#include <ctime>
#include <nlohmann/json.hpp>
#include <utility>

namespace sag::cloud {

namespace {

using nlohmann::json;

constexpr int kFormat = 1;

constexpr std::array<std::pair<JobState, std::string_view>, 9> kJobStateNames{{
    {JobState::kPending, "Pending"},
    {JobState::kOffered, "Offered"},
    {JobState::kAccepted, "Accepted"},
    {JobState::kCommitted, "Committed"},
    {JobState::kRolledBack, "RolledBack"},
    {JobState::kFailed, "Failed"},
    {JobState::kRejected, "Rejected"},
    {JobState::kTimedOut, "TimedOut"},
    {JobState::kCancelled, "Cancelled"},
}};

json ErrorJson(const std::optional<proto::ErrorInfo>& e) {
  if (!e) return nullptr;
  return {{"code", e->code}, {"name", e->name}, {"message", e->message}};
}

json BootJson(const proto::BootInfo& b) {
  json slots = json::object();
  for (const auto& [name, s] : b.slots) slots[name] = {{"version", s.version}, {"state", s.state}};
  return {{"booted_slot", b.booted_slot}, {"slots", std::move(slots)}};
}

json DeviceJson(const DeviceRecord& d) {
  return {{"serial", d.serial},
          {"smartag_id", d.smartag_id},
          {"model", d.model},
          {"agent_version", d.agent_version},
          {"versions", {{"device", d.versions.device}, {"dpi", d.versions.dpi}}},
          {"boot", BootJson(d.boot)},
          {"agent_state", d.agent_state},
          {"online", d.online},
          {"last_seen", d.last_seen},
          {"epoch", d.epoch},
          {"acked_seq", d.acked_seq},
          {"snapshot_seq", d.snapshot_seq}};
}

json JobJson(const JobRecord& j) {
  const proto::Job& s = j.spec;
  return {{"job_id", s.job_id},
          {"job_type", s.job_type},
          {"version", s.version},
          {"url", s.url},
          {"size", s.size},
          {"sha256", s.sha256},
          {"deadline", s.deadline},
          {"allow_downgrade", s.allow_downgrade},
          {"serial", j.serial},
          {"state", JobStateName(j.state)},
          {"device_state", j.device_state},
          {"percent", j.percent},
          {"outcome", j.outcome},
          {"error", ErrorJson(j.error)},
          {"cancel_requested", j.cancel_requested},
          {"cancel_answer", j.cancel_answer},
          {"cancel_reason", j.cancel_reason},
          {"created", j.created},
          {"updated", j.updated},
          {"timed_out", j.timed_out},
          {"stamp_epoch", j.stamp_epoch},
          {"stamp_seq", j.stamp_seq}};
}

json ReportJson(const ReportRecord& rep) {
  return {{"serial", rep.serial},    {"epoch", rep.epoch},   {"seq", rep.seq},
          {"type", rep.type},        {"job_id", rep.job_id}, {"detail", rep.detail},
          {"received", rep.received}};
}

}  // namespace

std::string UtcTime(std::chrono::system_clock::time_point t) {
  const std::time_t tt = std::chrono::system_clock::to_time_t(t);
  std::tm tm{};
  gmtime_r(&tt, &tm);
  std::array<char, 32> buf{};
  const std::size_t n = std::strftime(buf.data(), buf.size(), "%Y-%m-%dT%H:%M:%SZ", &tm);
  return {buf.data(), n};
}

std::optional<std::chrono::system_clock::time_point> ParseUtc(std::string_view text) {
  std::tm tm{};
  const std::string s(text);
  const char* end = strptime(s.c_str(), "%Y-%m-%dT%H:%M:%SZ", &tm);
  if (end == nullptr || *end != '\0') return std::nullopt;
  return std::chrono::system_clock::from_time_t(timegm(&tm));
}

std::string_view JobStateName(JobState state) {
  for (const auto& [s, name] : kJobStateNames) {
    if (s == state) return name;
  }
  return "Unknown";
}

std::optional<JobState> ParseJobState(std::string_view name) {
  for (const auto& [s, n] : kJobStateNames) {
    if (n == name) return s;
  }
  return std::nullopt;
}

bool IsFinal(JobState state) {
  return state == JobState::kCommitted || state == JobState::kRolledBack ||
         state == JobState::kFailed || state == JobState::kRejected ||
         state == JobState::kCancelled;
}

std::string DumpJson(Store& store) {
  json devices = json::array();
  for (const auto& d : store.Devices()) devices.push_back(DeviceJson(d));
  json jobs = json::array();
  for (const auto& j : store.Jobs()) jobs.push_back(JobJson(j));
  json reports = json::array();
  for (const auto& rep : store.Reports()) reports.push_back(ReportJson(rep));
  const json doc = {{"format", kFormat},
                    {"devices", std::move(devices)},
                    {"jobs", std::move(jobs)},
                    {"reports", std::move(reports)}};
  return doc.dump(1, ' ', false, json::error_handler_t::replace) + "\n";
}

}  // namespace sag::cloud
