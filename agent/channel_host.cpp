#include "agent/channel_host.h"

#include <spdlog/spdlog.h>

#include <map>

namespace sag::agent {

namespace {

std::optional<proto::ErrorInfo> ErrorInfoOf(const std::optional<Error>& e) {
  if (!e) return std::nullopt;
  return proto::ToErrorInfo(*e);
}

// A report body's "error" ({code, name, message} or null).
std::optional<proto::ErrorInfo> ErrorInfoOf(const nlohmann::json& body) {
  const auto it = body.find("error");
  if (it == body.end() || !it->is_object()) return std::nullopt;
  proto::ErrorInfo e;
  if (auto c = it->find("code"); c != it->end() && c->is_number_integer()) e.code = c->get<int>();
  if (auto n = it->find("name"); n != it->end() && n->is_string()) e.name = n->get<std::string>();
  if (auto m = it->find("message"); m != it->end() && m->is_string()) {
    e.message = m->get<std::string>();
  }
  return e;
}

std::string StrOf(const nlohmann::json& body, const char* key) {
  const auto it = body.find(key);
  return it != body.end() && it->is_string() ? it->get<std::string>() : std::string();
}

bool KnownType(const std::string& t) { return t == "Device" || t == "Dpi"; }

}  // namespace

std::string OutcomeName(JobPhase phase) {
  switch (phase) {
    case JobPhase::kCommitted:
      return "committed";
    case JobPhase::kRolledBack:
      return "rolled_back";
    case JobPhase::kFailed:
      return "failed";
    default:
      return "";
  }
}

JobSpec SpecOfJob(const proto::Job& job) {
  JobSpec s;
  s.id = job.job_id;
  s.type = ParseJobType(job.job_type).value_or(JobType::kUnknown);
  s.version = job.version;
  s.source = job.url;
  s.size = job.size;
  s.sha256 = job.sha256;
  s.allow_downgrade = job.allow_downgrade;
  s.reboot = true;
  s.deadline = job.deadline;
  return s;
}

proto::JobAck AckOfAnswer(const JobAnswer& answer) {
  proto::JobAck ack;
  ack.job_id = answer.outcome.id;
  ack.accepted = !answer.refused;
  ack.known = answer.known;
  ack.state = answer.refused ? "Refused" : answer.outcome.state;
  ack.outcome = answer.refused ? "" : OutcomeName(answer.outcome.phase);
  ack.error = ErrorInfoOf(answer.outcome.error);
  return ack;
}

proto::JobSummary SummaryOf(const JobOutcome& job) {
  return {job.id,
          std::string(JobTypeName(job.type)),
          job.to,
          job.state,
          OutcomeName(job.phase),
          ErrorInfoOf(job.error)};
}

std::optional<OutgoingReport> MessageOf(const Report& report, const proto::Versions& now,
                                        const std::string& job_type) {
  if (report.kind == "device") {
    // What runs, after a start or a job (the daemon's own report).
    proto::State st;
    st.seq = report.seq;
    st.versions = {StrOf(report.body, "device_version"), StrOf(report.body, "dpi_version")};
    st.boot.booted_slot = StrOf(report.body, "booted_slot");
    if (!st.boot.booted_slot.empty()) {
      st.boot.slots[st.boot.booted_slot] = {st.versions.device, "good"};
    }
    st.agent_state = StrOf(report.body, "agent_state");
    st.time = report.at;
    return st;
  }
  if (!KnownType(job_type)) return std::nullopt;  // refused before its type was known
  if (report.kind == "result") {
    proto::Result r;
    r.seq = report.seq;
    r.job_id = report.job;
    r.job_type = job_type;
    r.version = StrOf(report.body, "to");
    const auto phase = ParseJobPhase(StrOf(report.body, "phase"));
    r.outcome = phase ? OutcomeName(*phase) : "";
    if (r.outcome.empty()) r.outcome = "failed";
    r.error = ErrorInfoOf(report.body);
    r.from_version = StrOf(report.body, "from");
    r.versions = now;
    if (auto v = report.body.find("versions"); v != report.body.end() && v->is_object()) {
      r.versions = {StrOf(*v, "device"), StrOf(*v, "dpi")};
    }
    r.time = report.at;
    return r;
  }
  if (report.kind == "state" || report.kind == "progress") {
    proto::Progress p;
    p.seq = report.seq;
    p.job_id = report.job;
    p.job_type = job_type;
    p.stage = StrOf(report.body, "state");
    if (p.stage.empty()) p.stage = StrOf(report.body, "phase");
    if (auto it = report.body.find("percent"); it != report.body.end() && it->is_number_integer()) {
      p.percent = std::clamp(it->get<int>(), 0, 100);
    }
    p.time = report.at;
    return p;
  }
  return std::nullopt;
}

DaemonChannelHost::DaemonChannelHost(const Config& config, Outbox& outbox, Hooks hooks)
    : config_(config), outbox_(outbox), hooks_(std::move(hooks)) {}

void DaemonChannelHost::SetSnapshot(DeviceSnapshot snapshot) {
  const std::lock_guard lock(mu_);
  snapshot_ = std::move(snapshot);
}

proto::Hello DaemonChannelHost::MakeHello() {
  proto::Hello h;
  h.smartag_id = config_.identity.smartag_id;
  h.serial = config_.identity.serial_number;
  h.model = config_.identity.model;
  h.agent_version = SAG_VERSION;
  h.agent_state = hooks_.agent_state ? hooks_.agent_state() : "";
  {
    const std::lock_guard lock(mu_);
    h.versions = {snapshot_.device_version, snapshot_.dpi_version};
    h.boot = snapshot_.boot;
    std::map<std::string, JobOutcome> jobs;
    for (const auto& j : snapshot_.jobs) jobs[j.id] = j;
    if (snapshot_.running) jobs[snapshot_.running->id] = *snapshot_.running;
    for (const auto& [id, j] : jobs) {
      if (j.type == JobType::kUnknown) continue;  // refused before its image was read
      if (h.jobs.size() >= proto::kMaxList) break;
      h.jobs.push_back(SummaryOf(j));
    }
  }
  h.outbox_epoch = outbox_.epoch();
  h.last_seq = outbox_.last_seq();
  return h;
}

void DaemonChannelHost::OnJob(const proto::Job& job, std::function<void(proto::JobAck)> reply) {
  spdlog::info("job {}: from the cloud: {} {} ({})", job.job_id, job.job_type, job.version,
               job.url);
  hooks_.submit(SpecOfJob(job), [reply = std::move(reply)](const JobAnswer& answer) {
    reply(AckOfAnswer(answer));
  });
}

void DaemonChannelHost::OnCancel(const proto::Cancel& cancel,
                                 std::function<void(proto::CancelAck)> reply) {
  spdlog::info("job {}: the cloud asks to cancel it", cancel.job_id);
  if (!hooks_.cancel) {
    reply({cancel.job_id, false,
           proto::ToErrorInfo(Error(Errc::kCancelTooLate,
                                    "this agent takes no cancels (no job queue); the job runs "
                                    "to its outcome"))});
    return;
  }
  const CancelAnswer a = hooks_.cancel(cancel.job_id);
  spdlog::info("job {}: cancel {}{}", cancel.job_id, a.accepted ? "accepted" : "refused",
               a.error ? ": " + a.error->ToString() : std::string());
  reply({cancel.job_id, a.accepted, ErrorInfoOf(a.error)});
}

std::vector<OutgoingReport> DaemonChannelHost::Pending() {
  proto::Versions now;
  std::map<std::string, std::string> types;  // job id -> "Device" | "Dpi"
  {
    const std::lock_guard lock(mu_);
    now = {snapshot_.device_version, snapshot_.dpi_version};
    for (const auto& j : snapshot_.jobs) types[j.id] = std::string(JobTypeName(j.type));
    if (snapshot_.running) {
      types[snapshot_.running->id] = std::string(JobTypeName(snapshot_.running->type));
    }
  }
  std::vector<OutgoingReport> out;
  for (const auto& r : outbox_.Pending()) {
    // A state or result names the job's type; a progress report follows its
    // job's state change.
    if (const std::string t = StrOf(r.body, "type"); KnownType(t)) types[r.job] = t;
    if (auto m = MessageOf(r, now, types[r.job])) out.push_back(std::move(*m));
  }
  return out;
}

void DaemonChannelHost::Acked(std::uint64_t seq) {
  if (auto st = outbox_.Ack(seq); !st) {
    spdlog::error("outbox: {}", st.error().ToString());
  }
}

void DaemonChannelHost::OnChannelChange(bool online) {
  spdlog::info("control channel {}", online ? "online" : "offline");
  if (hooks_.on_change) hooks_.on_change(online);
}

void DaemonChannelHost::OnReconnectScheduled(std::chrono::milliseconds delay,
                                             const ChannelStatus& status) {
  if (hooks_.on_retry) hooks_.on_retry(delay, status);
}

}  // namespace sag::agent
