#include "agent/job.h"

#include <array>
#include <utility>

#include "common/json_reader.h"

namespace sag::agent {

namespace {

constexpr std::array<std::string_view, 3> kTypeNames = {"Unknown", "Device", "Dpi"};
constexpr std::array<std::string_view, 6> kPhaseNames = {"accepted",  "running",     "rebooting",
                                                         "committed", "rolled_back", "failed"};

}  // namespace

std::string_view JobTypeName(JobType type) { return kTypeNames.at(static_cast<int>(type)); }

std::optional<JobType> ParseJobType(std::string_view name) {
  for (std::size_t i = 0; i < kTypeNames.size(); ++i) {
    if (kTypeNames[i] == name) return static_cast<JobType>(i);
  }
  return std::nullopt;
}

std::string_view JobPhaseName(JobPhase phase) { return kPhaseNames.at(static_cast<int>(phase)); }

std::optional<JobPhase> ParseJobPhase(std::string_view name) {
  for (std::size_t i = 0; i < kPhaseNames.size(); ++i) {
    if (kPhaseNames[i] == name) return static_cast<JobPhase>(i);
  }
  return std::nullopt;
}

bool IsFinal(JobPhase phase) {
  return phase == JobPhase::kCommitted || phase == JobPhase::kRolledBack ||
         phase == JobPhase::kFailed;
}

nlohmann::json JobOutcome::ToJson() const {
  nlohmann::json j = {{"id", id},
                      {"type", JobTypeName(type)},
                      {"phase", JobPhaseName(phase)},
                      {"state", state},
                      {"from", from},
                      {"to", to},
                      {"accepted_at", accepted_at},
                      {"updated_at", updated_at},
                      {"error", nullptr}};
  if (error) {
    j["error"] = {{"code", error->number()},
                  {"name", ErrcName(error->code())},
                  {"message", error->message()}};
  }
  return j;
}

Expected<JobOutcome> JobOutcome::FromJson(const nlohmann::json& j, std::string_view what) {
  JsonReader r(j, std::string(what), Errc::kJournalCorrupt);
  JobOutcome o;
  o.id = r.Str("id");
  const auto type = r.Str("type");
  const auto phase = r.Str("phase");
  o.state = r.Str("state", "");
  o.from = r.Str("from", "");
  o.to = r.Str("to", "");
  o.accepted_at = r.Str("accepted_at", "");
  o.updated_at = r.Str("updated_at", "");
  if (auto e = r.OptObj("error")) {
    const auto code = e->U64("code");
    auto message = e->Str("message", "");
    o.error = Error(static_cast<Errc>(code), std::move(message));
  }
  if (r.ok()) {
    if (auto t = ParseJobType(type)) {
      o.type = *t;
    } else {
      r.Fail("type", "unknown job type '" + type + "'");
    }
    if (auto p = ParseJobPhase(phase)) {
      o.phase = *p;
    } else {
      r.Fail("phase", "unknown job phase '" + phase + "'");
    }
  }
  SAG_TRY_STATUS(r.Finish());
  return o;
}

}  // namespace sag::agent
