#include "common/proto/messages.h"

#include <nlohmann/json.hpp>
#include <type_traits>
#include <utility>

#include "common/json_reader.h"

namespace sag::proto {

namespace {

using nlohmann::json;

constexpr std::size_t kMaxErrorMessage = 4096;

template <typename T>
struct Tag;
#define SAG_PROTO_TAG(T, name)                      \
  template <>                                       \
  struct Tag<T> {                                   \
    static constexpr std::string_view kName = name; \
  };
SAG_PROTO_TAG(Hello, "hello")
SAG_PROTO_TAG(HelloAck, "hello.ack")
SAG_PROTO_TAG(Heartbeat, "heartbeat")
SAG_PROTO_TAG(Job, "job")
SAG_PROTO_TAG(JobAck, "job.ack")
SAG_PROTO_TAG(Progress, "progress")
SAG_PROTO_TAG(Result, "result")
SAG_PROTO_TAG(State, "state")
SAG_PROTO_TAG(Ack, "ack")
SAG_PROTO_TAG(Cancel, "cancel")
SAG_PROTO_TAG(CancelAck, "cancel.ack")
SAG_PROTO_TAG(ProtocolError, "error")
#undef SAG_PROTO_TAG

// --- encoding ---------------------------------------------------------------

json ToJson(const std::optional<ErrorInfo>& e) {
  if (!e) return nullptr;
  return {{"code", e->code}, {"name", e->name}, {"message", e->message}};
}

json ToJson(const Versions& v) { return {{"device", v.device}, {"dpi", v.dpi}}; }

json ToJson(const BootInfo& b) {
  json slots = json::object();
  for (const auto& [name, s] : b.slots) slots[name] = {{"version", s.version}, {"state", s.state}};
  return {{"booted_slot", b.booted_slot}, {"slots", std::move(slots)}};
}

void Fill(json& j, const Hello& m) {
  j["device"] = {{"smartag_id", m.smartag_id}, {"serial", m.serial}, {"model", m.model}};
  j["agent_version"] = m.agent_version;
  j["versions"] = ToJson(m.versions);
  j["boot"] = ToJson(m.boot);
  j["agent_state"] = m.agent_state;
  json jobs = json::array();
  for (const auto& s : m.jobs) {
    jobs.push_back({{"job_id", s.job_id},
                    {"job_type", s.job_type},
                    {"version", s.version},
                    {"state", s.state},
                    {"outcome", s.outcome},
                    {"error", ToJson(s.error)}});
  }
  j["jobs"] = std::move(jobs);
  j["outbox"] = {{"epoch", m.outbox_epoch}, {"last_seq", m.last_seq}};
}
void Fill(json& j, const HelloAck& m) {
  j["server_time"] = m.server_time;
  j["heartbeat_s"] = m.heartbeat_s;
  j["acked"] = {{"epoch", m.acked_epoch}, {"seq", m.acked_seq}};
}
void Fill(json& j, const Heartbeat& m) { j["time"] = m.time; }
void Fill(json& j, const Job& m) {
  j["job_id"] = m.job_id;
  j["job_type"] = m.job_type;
  j["version"] = m.version;
  j["url"] = m.url;
  j["size"] = m.size;
  j["sha256"] = m.sha256;
  j["deadline"] = m.deadline;
  j["allow_downgrade"] = m.allow_downgrade;
}
void Fill(json& j, const JobAck& m) {
  j["job_id"] = m.job_id;
  j["accepted"] = m.accepted;
  j["known"] = m.known;
  j["state"] = m.state;
  j["outcome"] = m.outcome;
  j["error"] = ToJson(m.error);
}
void Fill(json& j, const Progress& m) {
  j["seq"] = m.seq;
  j["job_id"] = m.job_id;
  j["job_type"] = m.job_type;
  j["stage"] = m.stage;
  j["percent"] = m.percent;
  j["bytes_done"] = m.bytes_done;
  j["bytes_total"] = m.bytes_total;
  j["time"] = m.time;
}
void Fill(json& j, const Result& m) {
  j["seq"] = m.seq;
  j["job_id"] = m.job_id;
  j["job_type"] = m.job_type;
  j["version"] = m.version;
  j["outcome"] = m.outcome;
  j["error"] = ToJson(m.error);
  j["from_version"] = m.from_version;
  j["versions"] = ToJson(m.versions);
  j["time"] = m.time;
}
void Fill(json& j, const State& m) {
  j["seq"] = m.seq;
  j["versions"] = ToJson(m.versions);
  j["boot"] = ToJson(m.boot);
  j["agent_state"] = m.agent_state;
  j["time"] = m.time;
}
void Fill(json& j, const Ack& m) {
  j["epoch"] = m.epoch;
  j["seq"] = m.seq;
}
void Fill(json& j, const Cancel& m) { j["job_id"] = m.job_id; }
void Fill(json& j, const CancelAck& m) {
  j["job_id"] = m.job_id;
  j["accepted"] = m.accepted;
  j["error"] = ToJson(m.error);
}
void Fill(json& j, const ProtocolError& m) {
  j["code"] = m.code;
  j["message"] = m.message;
}

// --- decoding ---------------------------------------------------------------

// Field checks beyond the type, recorded on the reader with the field's path.
std::string Bounded(JsonReader& r, std::string_view key, std::size_t max, bool required = true,
                    bool non_empty = false) {
  std::string v = required ? r.Str(key) : r.Str(key, "");
  if (v.size() > max) {
    r.Fail(key, std::to_string(v.size()) + " characters, more than the " + std::to_string(max) +
                    " allowed");
    return {};
  }
  if (non_empty && v.empty() && r.ok()) r.Fail(key, "must not be empty");
  return v;
}

std::string OneOf(JsonReader& r, std::string_view key,
                  std::initializer_list<std::string_view> allowed, bool allow_empty = false) {
  // Optional when it may be empty: absent and null read as "".
  std::string v = Bounded(r, key, kMaxString, /*required=*/!allow_empty);
  if (!r.ok() || (allow_empty && v.empty())) return v;
  for (const auto a : allowed) {
    if (v == a) return v;
  }
  std::string list;
  for (const auto a : allowed) list += (list.empty() ? "" : ", ") + std::string(a);
  r.Fail(key, "'" + v + "' is not one of " + list);
  return {};
}

std::string JobType(JsonReader& r, std::string_view key = "job_type") {
  return OneOf(r, key, {"Device", "Dpi"});
}

std::string Outcome(JsonReader& r, bool allow_empty) {
  return OneOf(r, "outcome", {"committed", "rolled_back", "failed"}, allow_empty);
}

std::optional<ErrorInfo> ErrorOf(JsonReader& r, std::string_view key) {
  auto o = r.OptObj(key);
  if (!o) return std::nullopt;
  ErrorInfo e;
  const auto code = o->I64("code");
  if (code < 0 || code > 65535) o->Fail("code", "out of range 0..65535");
  e.code = static_cast<int>(code);
  e.name = Bounded(*o, "name", kMaxString);
  e.message = Bounded(*o, "message", kMaxErrorMessage);
  return e;
}

Versions VersionsOf(JsonReader& r) {
  auto o = r.Obj("versions");
  return {Bounded(o, "device", kMaxString), Bounded(o, "dpi", kMaxString)};
}

BootInfo BootOf(JsonReader& r) {
  auto o = r.Obj("boot");
  BootInfo b;
  b.booted_slot = OneOf(o, "booted_slot", {"A", "B"}, /*allow_empty=*/true);
  auto slots = o.Obj("slots");
  for (const char* name : {"A", "B"}) {
    if (auto s = slots.OptObj(name)) {
      b.slots[name] = {Bounded(*s, "version", kMaxString), Bounded(*s, "state", kMaxString)};
    }
  }
  return b;
}

std::string Sha256Hex(JsonReader& r, std::string_view key) {
  std::string v = r.Str(key, "");
  if (v.empty()) return v;
  const bool hex = v.size() == 64 && v.find_first_not_of("0123456789abcdef") == std::string::npos;
  if (!hex) r.Fail(key, "expected 64 lower-case hex characters or \"\"");
  return v;
}

Expected<Body> DecodeBody(std::string_view type, JsonReader& r) {
  if (type == "hello") {
    Hello m;
    auto device = r.Obj("device");
    m.smartag_id = Bounded(device, "smartag_id", kMaxString);
    m.serial = Bounded(device, "serial", kMaxString, true, true);
    m.model = Bounded(device, "model", kMaxString);
    m.agent_version = Bounded(r, "agent_version", kMaxString);
    m.versions = VersionsOf(r);
    m.boot = BootOf(r);
    m.agent_state = Bounded(r, "agent_state", kMaxString);
    for (auto& j : r.ObjList("jobs", kMaxList)) {
      JobSummary s;
      s.job_id = Bounded(j, "job_id", kMaxId, true, true);
      s.job_type = JobType(j);
      s.version = Bounded(j, "version", kMaxString);
      s.state = Bounded(j, "state", kMaxString);
      s.outcome = Outcome(j, /*allow_empty=*/true);
      s.error = ErrorOf(j, "error");
      m.jobs.push_back(std::move(s));
    }
    auto outbox = r.Obj("outbox");
    m.outbox_epoch = Bounded(outbox, "epoch", kMaxId, true, true);
    m.last_seq = outbox.U64("last_seq");
    return Body(std::move(m));
  }
  if (type == "hello.ack") {
    HelloAck m;
    m.server_time = Bounded(r, "server_time", kMaxString);
    const auto hb = r.U64("heartbeat_s");
    if (hb < 1 || hb > 3600) r.Fail("heartbeat_s", "out of range 1..3600");
    m.heartbeat_s = static_cast<std::uint32_t>(hb);
    auto acked = r.Obj("acked");
    m.acked_epoch = Bounded(acked, "epoch", kMaxId);
    m.acked_seq = acked.U64("seq");
    return Body(std::move(m));
  }
  if (type == "heartbeat") return Body(Heartbeat{Bounded(r, "time", kMaxString)});
  if (type == "job") {
    Job m;
    m.job_id = Bounded(r, "job_id", kMaxId, true, true);
    m.job_type = JobType(r);
    m.version = Bounded(r, "version", kMaxString, true, true);
    m.url = Bounded(r, "url", kMaxUrl, true, true);
    if (r.ok() && !m.url.starts_with("https://") && !m.url.starts_with("http://")) {
      r.Fail("url", "must be an http:// or https:// URL");
    }
    m.size = r.U64("size", 0);
    m.sha256 = Sha256Hex(r, "sha256");
    m.deadline = Bounded(r, "deadline", kMaxString, false);
    m.allow_downgrade = r.Bool("allow_downgrade", false);
    return Body(std::move(m));
  }
  if (type == "job.ack") {
    JobAck m;
    m.job_id = Bounded(r, "job_id", kMaxId, true, true);
    m.accepted = r.Bool("accepted");
    m.known = r.Bool("known", false);
    m.state = Bounded(r, "state", kMaxString, false);
    m.outcome = Outcome(r, /*allow_empty=*/true);
    m.error = ErrorOf(r, "error");
    if (r.ok() && !m.accepted && !m.error) r.Fail("error", "a refused job needs its error");
    return Body(std::move(m));
  }
  if (type == "progress") {
    Progress m;
    m.seq = r.U64("seq");
    m.job_id = Bounded(r, "job_id", kMaxId, true, true);
    m.job_type = JobType(r);
    m.stage = Bounded(r, "stage", kMaxString, true, true);
    const auto pct = r.U64("percent");
    if (pct > 100) r.Fail("percent", "out of range 0..100");
    m.percent = static_cast<int>(pct);
    m.bytes_done = r.U64("bytes_done", 0);
    m.bytes_total = r.U64("bytes_total", 0);
    m.time = Bounded(r, "time", kMaxString);
    return Body(std::move(m));
  }
  if (type == "result") {
    Result m;
    m.seq = r.U64("seq");
    m.job_id = Bounded(r, "job_id", kMaxId, true, true);
    m.job_type = JobType(r);
    m.version = Bounded(r, "version", kMaxString);
    m.outcome = Outcome(r, /*allow_empty=*/false);
    m.error = ErrorOf(r, "error");
    m.from_version = Bounded(r, "from_version", kMaxString, false);
    m.versions = VersionsOf(r);
    m.time = Bounded(r, "time", kMaxString);
    return Body(std::move(m));
  }
  if (type == "state") {
    State m;
    m.seq = r.U64("seq");
    m.versions = VersionsOf(r);
    m.boot = BootOf(r);
    m.agent_state = Bounded(r, "agent_state", kMaxString, false);
    m.time = Bounded(r, "time", kMaxString);
    return Body(std::move(m));
  }
  if (type == "ack") {
    Ack m;
    m.epoch = Bounded(r, "epoch", kMaxId, true, true);
    m.seq = r.U64("seq");
    return Body(std::move(m));
  }
  if (type == "cancel") return Body(Cancel{Bounded(r, "job_id", kMaxId, true, true)});
  if (type == "cancel.ack") {
    CancelAck m;
    m.job_id = Bounded(r, "job_id", kMaxId, true, true);
    m.accepted = r.Bool("accepted");
    m.error = ErrorOf(r, "error");
    return Body(std::move(m));
  }
  if (type == "error") {
    return Body(ProtocolError{Bounded(r, "code", kMaxString, true, true),
                              Bounded(r, "message", kMaxErrorMessage, false)});
  }
  return Error(Errc::kProtocolUnknownType, "message type '" + std::string(type) +
                                               "' is not defined by protocol version " +
                                               std::to_string(kVersion));
}

}  // namespace

ErrorInfo ToErrorInfo(const Error& error) {
  return {error.number(), std::string(ErrcName(error.code())), error.message()};
}

std::string_view TypeName(const Body& body) {
  return std::visit([](const auto& m) { return Tag<std::decay_t<decltype(m)>>::kName; }, body);
}

std::string Encode(const Message& message) {
  json j = {{"v", kVersion}, {"type", TypeName(message.body)}, {"id", message.id}};
  if (!message.re.empty()) j["re"] = message.re;
  std::visit([&j](const auto& m) { Fill(j, m); }, message.body);
  // Strings that are not valid UTF-8 (a hook's output in an error message)
  // are repaired instead of making the encoder throw.
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

Expected<Message> Decode(std::string_view text) {
  if (text.size() > kMaxMessageBytes) {
    return Error(Errc::kProtocolTooLarge, "message of " + std::to_string(text.size()) +
                                              " bytes, more than the " +
                                              std::to_string(kMaxMessageBytes) + " allowed");
  }
  JsonLimits limits;
  limits.max_bytes = kMaxMessageBytes;
  limits.max_depth = 8;
  SAG_TRY(const json doc, ParseJson(text, "message", Errc::kProtocol, limits));
  JsonReader r(doc, "message", Errc::kProtocol);
  // The version first: a newer peer's message may not fit this decoder.
  if (const json* v = r.Raw("v"); v != nullptr && v->is_number_integer() &&
                                  !(v->is_number_unsigned() && v->get<std::uint64_t>() == 1)) {
    return Error(Errc::kProtocolVersion, "protocol version " + v->dump() +
                                             " is not supported (this side speaks " +
                                             std::to_string(kVersion) + ")");
  }
  (void)r.U64("v");
  Message m;
  const std::string type = Bounded(r, "type", kMaxString, true, true);
  m.id = Bounded(r, "id", kMaxId, true, true);
  m.re = Bounded(r, "re", kMaxId, false);
  SAG_TRY_STATUS(r.Finish());
  // The body's problems name the type: "'job' message: size: expected ...".
  JsonReader body(doc, "'" + type + "' message", Errc::kProtocol);
  SAG_TRY(m.body, DecodeBody(type, body));
  SAG_TRY_STATUS(body.Finish());
  return m;
}

std::string_view ErrorCodeFor(const Error& decode_error) {
  switch (decode_error.code()) {
    case Errc::kProtocolTooLarge:
      return "TooLarge";
    case Errc::kProtocolVersion:
      return "UnsupportedVersion";
    case Errc::kProtocolUnknownType:
      return "UnknownType";
    default:
      return "Malformed";
  }
}

}  // namespace sag::proto
