#include "firmware/job.h"

#include <algorithm>
#include <array>
#include <ctime>

namespace sag::firmware {

namespace {

struct Row {
  JobState from;
  JobEvent event;
  JobState to;
};

// The whole lifecycle: every allowed (state, event) pair and where it leads.
constexpr std::array kTable = {
    Row{JobState::kPending, JobEvent::kSlotPrepared, JobState::kWriting},
    Row{JobState::kWriting, JobEvent::kWritten, JobState::kVerifying},
    Row{JobState::kVerifying, JobEvent::kVerified, JobState::kActivating},
    Row{JobState::kActivating, JobEvent::kTrialSet, JobState::kRebooting},
    Row{JobState::kRebooting, JobEvent::kBootedNew, JobState::kHealthChecking},
    Row{JobState::kRebooting, JobEvent::kBootedOld, JobState::kRolledBack},
    Row{JobState::kHealthChecking, JobEvent::kHealthy, JobState::kCommitting},
    Row{JobState::kHealthChecking, JobEvent::kUnhealthy, JobState::kRollingBack},
    Row{JobState::kHealthChecking, JobEvent::kBootedOld, JobState::kRolledBack},
    Row{JobState::kCommitting, JobEvent::kMarkedGood, JobState::kCommitted},
    Row{JobState::kRollingBack, JobEvent::kBootedOld, JobState::kRolledBack},
    Row{JobState::kPending, JobEvent::kFailed, JobState::kFailed},
    Row{JobState::kWriting, JobEvent::kFailed, JobState::kFailed},
    Row{JobState::kVerifying, JobEvent::kFailed, JobState::kFailed},
    Row{JobState::kActivating, JobEvent::kFailed, JobState::kFailed},
};

constexpr std::array<std::string_view, 11> kStateNames = {
    "Pending",    "Writing",     "Verifying", "Activating", "Rebooting", "HealthChecking",
    "Committing", "RollingBack", "Committed", "RolledBack", "Failed"};

constexpr std::array<std::string_view, 10> kEventNames = {
    "SlotPrepared", "Written", "Verified",  "TrialSet",   "BootedNew",
    "BootedOld",    "Healthy", "Unhealthy", "MarkedGood", "Failed"};

}  // namespace

std::string_view JobStateName(JobState state) { return kStateNames.at(static_cast<int>(state)); }
std::string_view JobEventName(JobEvent event) { return kEventNames.at(static_cast<int>(event)); }

Expected<JobState> ParseJobState(std::string_view name) {
  for (std::size_t i = 0; i < kStateNames.size(); ++i) {
    if (kStateNames[i] == name) return static_cast<JobState>(i);
  }
  // Not a damaged file (those fail to parse): a state this agent does not
  // know was written by a newer one.
  return Error(Errc::kJournalNewerFormat, "job state '" + std::string(name) + "' is unknown");
}

bool IsTerminal(JobState state) {
  return state == JobState::kCommitted || state == JobState::kRolledBack ||
         state == JobState::kFailed;
}

Expected<JobState> Transition(JobState from, JobEvent event) {
  for (const auto& row : kTable) {
    if (row.from == from && row.event == event) return row.to;
  }
  return Error(Errc::kInternal, "event " + std::string(JobEventName(event)) +
                                    " is not allowed in state " + std::string(JobStateName(from)));
}

std::string NowUtc() {
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

nlohmann::json JobRecord::ToJson() const {
  nlohmann::json j = {
      {"id", id},
      {"type", "Device"},
      {"state", JobStateName(state)},
      {"source", source},
      {"version", version},
      {"from_version", from_version},
      {"target_slot", target_slot},
      {"from_slot", from_slot},
      {"allow_downgrade", allow_downgrade},
      {"reboot", reboot},
      {"next_chunk", next_chunk},
      {"verified_chunk", verified_chunk},
      {"verified_medium", verified_medium},
      {"chunks_total", chunks_total},
      {"payload_size", payload_size},
      {"payload_sha256", payload_sha256},
      {"header_sha256", header_sha256},
      {"payload_offset", payload_offset},
      {"boot_id", boot_id},
      {"started_at", started_at},
      {"updated_at", updated_at},
      {"history", history},
  };
  if (delta) {
    j["delta"] = {{"planned_bytes", delta->planned_bytes},
                  {"fetched_bytes", delta->fetched_bytes},
                  {"requests", delta->requests},
                  {"frames_local", delta->frames_local},
                  {"frames_download", delta->frames_download},
                  {"frames_rejected", delta->frames_rejected},
                  {"full_fallback", delta->full_fallback}};
  }
  if (error) {
    j["error"] = {{"code", error->number()},
                  {"name", ErrcName(error->code())},
                  {"message", error->message()}};
  }
  return j;
}

Expected<JobRecord> JobRecord::FromJson(const nlohmann::json& j) {
  JobRecord r;
  try {
    r.id = j.at("id").get<std::string>();
    SAG_TRY(r.state, ParseJobState(j.at("state").get<std::string>()));
    r.source = j.at("source").get<std::string>();
    r.version = j.at("version").get<std::string>();
    r.from_version = j.at("from_version").get<std::string>();
    r.target_slot = j.at("target_slot").get<std::string>();
    r.from_slot = j.at("from_slot").get<std::string>();
    r.allow_downgrade = j.at("allow_downgrade").get<bool>();
    r.reboot = j.at("reboot").get<bool>();
    r.next_chunk = j.at("next_chunk").get<std::uint64_t>();
    r.verified_chunk = std::min(r.next_chunk, j.value("verified_chunk", std::uint64_t{0}));
    r.verified_medium = j.value("verified_medium", false);
    r.chunks_total = j.at("chunks_total").get<std::uint64_t>();
    r.payload_size = j.at("payload_size").get<std::uint64_t>();
    r.payload_sha256 = j.at("payload_sha256").get<std::string>();
    r.header_sha256 = j.value("header_sha256", std::string());
    r.payload_offset = j.at("payload_offset").get<std::uint64_t>();
    if (j.contains("delta")) {
      const auto& d = j.at("delta");
      DeltaRecord dr;
      dr.planned_bytes = d.value("planned_bytes", std::uint64_t{0});
      dr.fetched_bytes = d.value("fetched_bytes", std::uint64_t{0});
      dr.requests = d.value("requests", std::uint64_t{0});
      dr.frames_local = d.value("frames_local", std::uint64_t{0});
      dr.frames_download = d.value("frames_download", std::uint64_t{0});
      dr.frames_rejected = d.value("frames_rejected", std::uint64_t{0});
      dr.full_fallback = d.value("full_fallback", false);
      r.delta = dr;
    }
    r.boot_id = j.at("boot_id").get<std::string>();
    r.started_at = j.at("started_at").get<std::string>();
    r.updated_at = j.at("updated_at").get<std::string>();
    r.history = j.at("history").get<std::vector<std::string>>();
    if (j.contains("error")) {
      const auto& e = j.at("error");
      r.error =
          Error(static_cast<Errc>(e.at("code").get<int>()), e.at("message").get<std::string>());
    }
  } catch (const nlohmann::json::exception& e) {
    return Error(Errc::kJournalCorrupt, std::string("job record: ") + e.what());
  }
  return r;
}

}  // namespace sag::firmware
