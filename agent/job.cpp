#include "agent/job.h"

#include <algorithm>
#include <array>
#include <cctype>
#include <utility>

#include "common/json_reader.h"

namespace sag::agent {

namespace {

constexpr std::array<std::string_view, 3> kTypeNames = {"Unknown", "Device", "Dpi"};
constexpr std::array<std::string_view, 6> kPhaseNames = {"accepted",  "running",     "rebooting",
                                                         "committed", "rolled_back", "failed"};

constexpr std::size_t kMaxIdBytes = 128;

bool IsUrlSource(std::string_view s) {
  return s.starts_with("http://") || s.starts_with("https://");
}

// 2026-12-02T08:00:00Z, digits where digits go.
bool IsUtcTime(std::string_view t) {
  constexpr std::string_view kShape = "dddd-dd-ddTdd:dd:ddZ";
  if (t.size() != kShape.size()) return false;
  for (std::size_t i = 0; i < t.size(); ++i) {
    if (kShape[i] == 'd' ? std::isdigit(static_cast<unsigned char>(t[i])) == 0
                         : t[i] != kShape[i]) {
      return false;
    }
  }
  return true;
}

}  // namespace

Status CheckJobId(std::string_view id) {
  if (id.empty() || id.size() > kMaxIdBytes) {
    return Error(Errc::kBadRequest, "a job id has 1 to " + std::to_string(kMaxIdBytes) +
                                        " characters, not " + std::to_string(id.size()));
  }
  const bool ok = std::all_of(id.begin(), id.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '_' || c == ':' || c == '-';
  });
  if (!ok || id.front() == '.') {
    return Error(Errc::kBadRequest,
                 "a job id is made of letters, digits and . _ : - (not first: .); got '" +
                     std::string(id.substr(0, 64)) + "'");
  }
  return Ok();
}

std::optional<SpecProblem> CheckJobSpec(const JobSpec& spec) {
  if (auto st = CheckJobId(spec.id); !st) return SpecProblem{"id", st.error().message()};
  if (!IsUrlSource(spec.source) && !spec.source.starts_with('/')) {
    return SpecProblem{"source", "expected an absolute file path or an http(s) URL"};
  }
  const bool hex = std::all_of(spec.sha256.begin(), spec.sha256.end(), [](char c) {
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
  });
  if (!spec.sha256.empty() && (spec.sha256.size() != 64 || !hex)) {
    return SpecProblem{"sha256", "expected 64 lower-case hex digits (the image file's SHA-256)"};
  }
  if (!spec.deadline.empty() && !IsUtcTime(spec.deadline)) {
    return SpecProblem{"deadline", "expected a UTC time like 2026-12-02T08:00:00Z, got '" +
                                       spec.deadline.substr(0, 40) + "'"};
  }
  return std::nullopt;
}

bool DeadlinePassed(std::string_view deadline, std::string_view now) {
  return !deadline.empty() && deadline < now;
}

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
