// The device channel's messages (docs/protocol.md, version 1): the types both
// ends exchange, their encoder and their strict decoder. The device (agent/)
// and the gateway (cloud/) use these and nothing else to speak the protocol.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "common/error.h"

namespace sag::proto {

inline constexpr int kVersion = 1;
inline constexpr std::size_t kMaxMessageBytes = 64U << 10U;
inline constexpr std::size_t kMaxString = 1024;
inline constexpr std::size_t kMaxUrl = 4096;
inline constexpr std::size_t kMaxList = 256;
inline constexpr std::size_t kMaxId = 64;

// An error as the agent reports it: its stable code, name and message.
struct ErrorInfo {
  int code = 0;
  std::string name;
  std::string message;
  friend bool operator==(const ErrorInfo&, const ErrorInfo&) = default;
};
ErrorInfo ToErrorInfo(const Error& error);

struct Versions {
  std::string device;  // "" when unknown
  std::string dpi;     // "" when no database is active
  friend bool operator==(const Versions&, const Versions&) = default;
};

struct SlotInfo {
  std::string version;
  std::string state;  // good | trial | bad | writing | unknown
  friend bool operator==(const SlotInfo&, const SlotInfo&) = default;
};

struct BootInfo {
  std::string booted_slot;                // "A" | "B" | "" when unknown
  std::map<std::string, SlotInfo> slots;  // "A", "B"
  friend bool operator==(const BootInfo&, const BootInfo&) = default;
};

struct JobSummary {
  std::string job_id;
  std::string job_type;  // "Device" | "Dpi"
  std::string version;
  std::string state;    // the job's state name
  std::string outcome;  // "" while it runs, else committed | rolled_back | failed
  std::optional<ErrorInfo> error;
  friend bool operator==(const JobSummary&, const JobSummary&) = default;
};

struct Hello {
  std::string smartag_id;
  std::string serial;
  std::string model;
  std::string agent_version;
  Versions versions;
  BootInfo boot;
  std::string agent_state;
  std::vector<JobSummary> jobs;
  std::string outbox_epoch;
  std::uint64_t last_seq = 0;
  friend bool operator==(const Hello&, const Hello&) = default;
};

struct HelloAck {
  std::string server_time;
  std::uint32_t heartbeat_s = 30;
  std::string acked_epoch;
  std::uint64_t acked_seq = 0;
  friend bool operator==(const HelloAck&, const HelloAck&) = default;
};

struct Heartbeat {
  std::string time;
  friend bool operator==(const Heartbeat&, const Heartbeat&) = default;
};

struct Job {
  std::string job_id;
  std::string job_type;  // "Device" | "Dpi"
  std::string version;
  std::string url;
  std::uint64_t size = 0;  // of the image file; 0 = unknown
  std::string sha256;      // of the image file, 64 lower-case hex; "" = unknown
  std::string deadline;    // UTC; "" = none
  bool allow_downgrade = false;
  friend bool operator==(const Job&, const Job&) = default;
};

struct JobAck {
  std::string job_id;
  bool accepted = false;
  bool known = false;  // the device had this job id already
  std::string state;
  std::string outcome;
  std::optional<ErrorInfo> error;
  friend bool operator==(const JobAck&, const JobAck&) = default;
};

struct Progress {
  std::uint64_t seq = 0;
  std::string job_id;
  std::string job_type;
  std::string stage;
  int percent = 0;
  std::uint64_t bytes_done = 0;
  std::uint64_t bytes_total = 0;
  std::string time;
  friend bool operator==(const Progress&, const Progress&) = default;
};

struct Result {
  std::uint64_t seq = 0;
  std::string job_id;
  std::string job_type;
  std::string version;
  std::string outcome;  // committed | rolled_back | failed
  std::optional<ErrorInfo> error;
  std::string from_version;
  Versions versions;  // running after the job
  std::string time;
  friend bool operator==(const Result&, const Result&) = default;
};

struct State {
  std::uint64_t seq = 0;
  Versions versions;
  BootInfo boot;
  std::string agent_state;
  std::string time;
  friend bool operator==(const State&, const State&) = default;
};

struct Ack {
  std::string epoch;
  std::uint64_t seq = 0;
  friend bool operator==(const Ack&, const Ack&) = default;
};

struct Cancel {
  std::string job_id;
  friend bool operator==(const Cancel&, const Cancel&) = default;
};

struct CancelAck {
  std::string job_id;
  bool accepted = false;
  std::optional<ErrorInfo> error;
  friend bool operator==(const CancelAck&, const CancelAck&) = default;
};

// The `error` message. Codes: Malformed, UnknownType, UnsupportedVersion,
// OutOfOrder, TooLarge, Internal.
struct ProtocolError {
  std::string code;
  std::string message;
  friend bool operator==(const ProtocolError&, const ProtocolError&) = default;
};

using Body = std::variant<Hello, HelloAck, Heartbeat, Job, JobAck, Progress, Result, State, Ack,
                          Cancel, CancelAck, ProtocolError>;

struct Message {
  std::string id;
  std::string re;  // "" when it answers nothing
  Body body;
  friend bool operator==(const Message&, const Message&) = default;
};

// "hello", "job.ack", ...
std::string_view TypeName(const Body& body);

// One text frame. Never fails: every field is a value the types can hold
// (strings are escaped; invalid UTF-8 is replaced).
std::string Encode(const Message& message);

// The strict decoder for one text frame. Errors (docs/protocol.md, "Envelope"):
//   kProtocolTooLarge     more than kMaxMessageBytes
//   kProtocolVersion      `v` is not 1 (the message names the version seen)
//   kProtocolUnknownType  a `type` this version does not define
//   kProtocol             anything else malformed, naming the field
// Unknown fields are ignored.
Expected<Message> Decode(std::string_view text);

// The `error` code a decoding error is answered with.
std::string_view ErrorCodeFor(const Error& decode_error);

}  // namespace sag::proto
