#include "cloud/store.h"

#include <algorithm>
#include <array>
#include <ctime>
#include <nlohmann/json.hpp>
#include <system_error>
#include <utility>

#include "common/atomic_file.h"
#include "common/json_reader.h"

namespace sag::cloud {

namespace {

using nlohmann::json;

constexpr int kFormat = 1;
constexpr std::size_t kMaxFileBytes = 256U << 20U;

constexpr std::array<std::pair<JobState, std::string_view>, 8> kJobStateNames{{
    {JobState::kPending, "Pending"},
    {JobState::kOffered, "Offered"},
    {JobState::kAccepted, "Accepted"},
    {JobState::kCommitted, "Committed"},
    {JobState::kRolledBack, "RolledBack"},
    {JobState::kFailed, "Failed"},
    {JobState::kRejected, "Rejected"},
    {JobState::kTimedOut, "TimedOut"},
}};

json ErrorJson(const std::optional<proto::ErrorInfo>& e) {
  if (!e) return nullptr;
  return {{"code", e->code}, {"name", e->name}, {"message", e->message}};
}

std::optional<proto::ErrorInfo> ReadError(JsonReader& r, std::string_view key) {
  auto o = r.OptObj(key);
  if (!o) return std::nullopt;
  proto::ErrorInfo e;
  e.code = static_cast<int>(o->I64("code"));
  e.name = o->Str("name");
  e.message = o->Str("message");
  return e;
}

json BootJson(const proto::BootInfo& b) {
  json slots = json::object();
  for (const auto& [name, s] : b.slots) slots[name] = {{"version", s.version}, {"state", s.state}};
  return {{"booted_slot", b.booted_slot}, {"slots", std::move(slots)}};
}

proto::BootInfo ReadBoot(JsonReader& r) {
  auto o = r.Obj("boot");
  proto::BootInfo b;
  b.booted_slot = o.Str("booted_slot");
  auto slots = o.Obj("slots");
  for (const char* name : {"A", "B"}) {
    if (auto s = slots.OptObj(name)) b.slots[name] = {s->Str("version"), s->Str("state")};
  }
  return b;
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

DeviceRecord ReadDevice(JsonReader& r) {
  DeviceRecord d;
  d.serial = r.Str("serial");
  if (d.serial.empty() && r.ok()) r.Fail("serial", "must not be empty");
  d.smartag_id = r.Str("smartag_id");
  d.model = r.Str("model");
  d.agent_version = r.Str("agent_version");
  auto v = r.Obj("versions");
  d.versions = {v.Str("device"), v.Str("dpi")};
  d.boot = ReadBoot(r);
  d.agent_state = r.Str("agent_state");
  d.online = r.Bool("online");
  d.last_seen = r.Str("last_seen");
  d.epoch = r.Str("epoch");
  d.acked_seq = r.U64("acked_seq");
  d.snapshot_seq = r.U64("snapshot_seq");
  return d;
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
          {"created", j.created},
          {"updated", j.updated},
          {"timed_out", j.timed_out},
          {"stamp_epoch", j.stamp_epoch},
          {"stamp_seq", j.stamp_seq}};
}

JobRecord ReadJob(JsonReader& r) {
  JobRecord j;
  proto::Job& s = j.spec;
  s.job_id = r.Str("job_id");
  if (s.job_id.empty() && r.ok()) r.Fail("job_id", "must not be empty");
  s.job_type = r.Str("job_type");
  s.version = r.Str("version");
  s.url = r.Str("url");
  s.size = r.U64("size");
  s.sha256 = r.Str("sha256");
  s.deadline = r.Str("deadline");
  s.allow_downgrade = r.Bool("allow_downgrade");
  j.serial = r.Str("serial");
  const std::string state = r.Str("state");
  if (auto st = ParseJobState(state)) {
    j.state = *st;
  } else if (r.ok()) {
    r.Fail("state", "unknown job state '" + state + "'");
  }
  j.device_state = r.Str("device_state");
  const auto pct = r.U64("percent");
  if (pct > 100 && r.ok()) r.Fail("percent", "out of range 0..100");
  j.percent = static_cast<int>(std::min<std::uint64_t>(pct, 100));
  j.outcome = r.Str("outcome");
  j.error = ReadError(r, "error");
  j.cancel_requested = r.Bool("cancel_requested");
  j.created = r.Str("created");
  j.updated = r.Str("updated");
  j.timed_out = r.Str("timed_out", "");
  j.stamp_epoch = r.Str("stamp_epoch");
  j.stamp_seq = r.U64("stamp_seq");
  return j;
}

json ReportJson(const ReportRecord& rep) {
  return {{"serial", rep.serial},    {"epoch", rep.epoch},   {"seq", rep.seq},
          {"type", rep.type},        {"job_id", rep.job_id}, {"detail", rep.detail},
          {"received", rep.received}};
}

ReportRecord ReadReport(JsonReader& r) {
  ReportRecord rep;
  rep.serial = r.Str("serial");
  rep.epoch = r.Str("epoch");
  rep.seq = r.U64("seq");
  rep.type = r.Str("type");
  rep.job_id = r.Str("job_id");
  rep.detail = r.Str("detail");
  rep.received = r.Str("received");
  return rep;
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
         state == JobState::kFailed || state == JobState::kRejected;
}

Store::Store(std::filesystem::path path) : path_(std::move(path)) {}

Status Store::Load() {
  devices_.clear();
  jobs_.clear();
  job_order_.clear();
  reports_.clear();
  std::error_code ec;
  if (!std::filesystem::exists(path_, ec)) return Ok();
  const std::string what = "gateway store " + path_.string();
  SAG_TRY(const std::string text, ReadFile(path_, kMaxFileBytes));
  JsonLimits limits;
  limits.max_bytes = kMaxFileBytes;
  SAG_TRY(const json doc, ParseJson(text, what, Errc::kStoreCorrupt, limits));
  JsonReader r(doc, what, Errc::kStoreCorrupt);
  if (const auto format = r.U64("format"); r.ok() && format != kFormat) {
    r.Fail("format", "format " + std::to_string(format) + " is not " + std::to_string(kFormat) +
                         " (written by another version of sag-cloud)");
  }
  for (auto& d : r.ObjList("devices", 1U << 20U)) {
    DeviceRecord rec = ReadDevice(d);
    if (!r.ok()) break;
    const std::string key = rec.serial;
    devices_[key] = std::move(rec);
  }
  for (auto& j : r.ObjList("jobs", 1U << 22U)) {
    JobRecord rec = ReadJob(j);
    if (!r.ok()) break;
    if (!devices_.contains(rec.serial)) {
      j.Fail("serial", "job " + rec.spec.job_id + " of unregistered device '" + rec.serial + "'");
      break;
    }
    if (jobs_.contains(rec.spec.job_id)) {
      j.Fail("job_id", "job " + rec.spec.job_id + " appears twice");
      break;
    }
    job_order_.push_back(rec.spec.job_id);
    const std::string key = rec.spec.job_id;
    jobs_[key] = std::move(rec);
  }
  for (auto& rep : r.ObjList("reports", kMaxReportsKept)) reports_.push_back(ReadReport(rep));
  if (Status st = r.Finish(); !st) {
    devices_.clear();
    jobs_.clear();
    job_order_.clear();
    reports_.clear();
    return Error(st.error().code(),
                 st.error().message() + "; restore it from a backup or move it aside");
  }
  return Ok();
}

Status Store::Save() const {
  json devices = json::array();
  for (const auto& [serial, d] : devices_) devices.push_back(DeviceJson(d));
  json jobs = json::array();
  for (const auto& id : job_order_) jobs.push_back(JobJson(jobs_.find(id)->second));
  json reports = json::array();
  for (const auto& rep : reports_) reports.push_back(ReportJson(rep));
  const json doc = {{"format", kFormat},
                    {"devices", std::move(devices)},
                    {"jobs", std::move(jobs)},
                    {"reports", std::move(reports)}};
  const std::string text = doc.dump(1, ' ', false, json::error_handler_t::replace) + "\n";
  if (Status st = WriteFileAtomic(path_, text, 0600); !st) {
    return st.error().WithContext("saving the gateway store");
  }
  return Ok();
}

Status Store::RegisterDevice(const std::string& serial, const std::string& smartag_id,
                             const std::string& model) {
  if (serial.empty() || serial.size() > proto::kMaxString) {
    return Error(Errc::kInvalidArgument, "a device's serial number must be 1.." +
                                             std::to_string(proto::kMaxString) + " characters");
  }
  DeviceRecord& d = devices_[serial];
  d.serial = serial;
  d.smartag_id = smartag_id;
  d.model = model;
  return Ok();
}

const DeviceRecord* Store::FindDevice(std::string_view serial) const {
  const auto it = devices_.find(serial);
  return it == devices_.end() ? nullptr : &it->second;
}

DeviceRecord* Store::MutableDevice(std::string_view serial) {
  const auto it = devices_.find(serial);
  return it == devices_.end() ? nullptr : &it->second;
}

std::vector<const DeviceRecord*> Store::Devices() const {
  std::vector<const DeviceRecord*> out;
  out.reserve(devices_.size());
  for (const auto& [serial, d] : devices_) out.push_back(&d);
  return out;
}

Status Store::AddJob(JobRecord job) {
  if (job.spec.job_id.empty() || job.spec.job_id.size() > proto::kMaxId) {
    return Error(Errc::kInvalidArgument,
                 "a job id must be 1.." + std::to_string(proto::kMaxId) + " characters");
  }
  if (!devices_.contains(job.serial)) {
    return Error(Errc::kUnknownDevice, "job " + job.spec.job_id + ": no device with serial '" +
                                           job.serial + "' is registered");
  }
  if (jobs_.contains(job.spec.job_id)) {
    return Error(Errc::kJobExists,
                 "job " + job.spec.job_id + " exists already; a job id is used once");
  }
  job.state = JobState::kPending;
  if (job.created.empty()) job.created = UtcNow();
  job.updated = job.created;
  job_order_.push_back(job.spec.job_id);
  const std::string key = job.spec.job_id;
  jobs_[key] = std::move(job);
  return Ok();
}

const JobRecord* Store::FindJob(std::string_view job_id) const {
  const auto it = jobs_.find(job_id);
  return it == jobs_.end() ? nullptr : &it->second;
}

JobRecord* Store::MutableJob(std::string_view job_id) {
  const auto it = jobs_.find(job_id);
  return it == jobs_.end() ? nullptr : &it->second;
}

std::vector<JobRecord*> Store::Jobs() {
  std::vector<JobRecord*> out;
  out.reserve(job_order_.size());
  for (const auto& id : job_order_) out.push_back(&jobs_.find(id)->second);
  return out;
}

std::vector<JobRecord*> Store::JobsOf(std::string_view serial) {
  std::vector<JobRecord*> out;
  for (const auto& id : job_order_) {
    JobRecord& j = jobs_.find(id)->second;
    if (j.serial == serial) out.push_back(&j);
  }
  return out;
}

void Store::AddReport(ReportRecord report) {
  if (reports_.size() >= kMaxReportsKept) {
    reports_.erase(reports_.begin(),
                   reports_.begin() + static_cast<std::ptrdiff_t>(kMaxReportsKept / 4));
  }
  reports_.push_back(std::move(report));
}

}  // namespace sag::cloud
