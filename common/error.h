// Errors are values: a stable numbered code plus a human message with context.
//
// Codes are part of the agent's interface: they are reported to the cloud and
// written to the status file, so a number is never reused or renumbered. Add
// new codes at the end of their range. Messages say what failed, with what
// input, and what to do about it.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <variant>

namespace sag {

enum class Errc : std::uint16_t {
  kOk = 0,
  // 1xx: generic, configuration, files
  kInternal = 100,
  kInvalidArgument = 101,
  kConfigMissing = 102,     // configuration file does not exist / unreadable
  kConfigSyntax = 103,      // not valid YAML
  kConfigUnknownKey = 104,  // a key the schema does not know
  kConfigType = 105,        // a value of the wrong type
  kConfigRange = 106,       // a value out of its allowed range
  kConfigMissingKey = 107,  // a required key is absent
  kIo = 110,                // read/write/fsync/rename failed
  kNoSpace = 111,           // not enough free space
  kNotFound = 112,          // a file or resource does not exist
  kPermission = 113,        // access denied
  kTimeout = 114,           // a deadline passed
  kCancelled = 115,         // stopped on request
  kCommandFailed = 116,     // an external command exited non-zero
  // 2xx: signed images
  kImageTruncated = 200,
  kImageContainer = 201,     // entries missing, duplicated, out of order, extra
  kManifestMalformed = 202,  // not JSON or fields of wrong shape
  kManifestVersion = 203,    // unknown format version
  kManifestLimits = 204,     // absurd sizes or counts
  kSignatureInvalid = 205,   // CMS signature does not match the manifest
  kSignerUntrusted = 206,    // signer does not chain to the pinned root
  kSignerExpired = 207,
  kSignerNotYetValid = 208,
  kSignerUsage = 209,  // signer lacks the codeSigning extended key usage
  kChunkHashMismatch = 210,
  kPayloadHashMismatch = 211,
  kDecompress = 212,  // a chunk does not decompress to its size
  kImageTooLarge = 213,
  kKeyInvalid = 214,         // signing key or certificate unusable
  kImageNonCanonical = 215,  // valid bytes, but not the one encoding the writer produces
  // 3xx: platform (boot environment, slots, reboot, identity)
  kBootEnvCorrupt = 300,  // no valid copy of the bootloader environment
  kBootEnvInvalid = 301,  // a variable holds a value that breaks the rules
  kBootEnvWrite = 302,
  kUnknownSlot = 303,
  kSlotSize = 304,  // a write past the end or a slot of the wrong size
  kSlotReadOnly = 305,
  kSlotIo = 306,
  kRebootFailed = 307,
  kSystemInfo = 308,
  // 4xx: install policy
  kVersionTooOld = 400,
  kIncompatibleModel = 401,
  kWrongType = 402,
  kSlotTooSmall = 403,
  kReadBackMismatch = 404,
  kHealthCheckFailed = 405,
  kRolledBack = 406,  // booted the old slot: trial boot failed
  kWrongSlotBooted = 407,
  kJobConflict = 408,  // another job is running
  kJobUnknown = 409,
  kJournalCorrupt = 410,
  kVersionUnparsable = 411,   // the running/active version cannot be compared
  kJournalNewerFormat = 412,  // a job record written by a newer agent
  // 413-419: the daemon (issue 14).
  kSpecMismatch = 413,   // a job's type or version disagrees with the image's signed manifest
  kJobCrashLoop = 414,   // a job kept stopping the agent at the same step; ended instead of retried
  kBadRequest = 415,     // a job request that is not a regular file, too big, or fails its schema
  kOutboxCorrupt = 416,  // the report outbox's files are damaged
  kCancelTooLate = 417,  // a cancel after the job's point of no return, or after it ended
  // 5xx: network
  kNetConnect = 500,
  kNetTls = 501,
  kNetHttpStatus = 502,
  kNetStalled = 503,
  kNetTooManyRedirects = 504,
  kNetProtocol = 505,
  kNetRangeUnsupported = 506,
  kNetDeadline = 507,  // the download's overall deadline passed
  kNetTooSlow = 508,   // below the minimum rate over its window
  // 6xx: DPI signature database
  kArchiveUnsafePath = 600,   // absolute path or '..'
  kArchiveUnsafeLink = 601,   // symlink/hard link outside the staging directory
  kArchiveSpecialFile = 602,  // device node, FIFO, socket
  kArchiveSetId = 603,        // setuid/setgid bits
  kArchiveTooManyEntries = 604,
  kArchiveTooLarge = 605,   // total size above the cap
  kArchiveRatio = 606,      // expansion ratio above the cap
  kArchiveMalformed = 607,  // truncated or not an archive
  kDpiValidateFailed = 610,
  kDpiReloadFailed = 611,
  kDpiConfirmMismatch = 612,
  kDpiStore = 613,
  kDpiInterrupted = 614,  // the agent stopped mid-job; cleaned up or rolled back on resume
  // 7xx: control channel and protocol
  kProtocol = 700,
  kProtocolVersion = 701,
  kProtocolUnknownType = 702,  // a message type this protocol version does not define
  kProtocolTooLarge = 703,     // a message above the size cap
  kChannelRefused = 704,       // the peer refused us: certificate, unregistered serial, HTTP 403
  kChannelClosed = 705,        // the connection closed or broke
  kChannelTimeout = 706,       // a deadline passed (connect, handshake, write, heartbeat)
  kStoreCorrupt = 707,         // the gateway's state file is damaged
  kUnknownDevice = 708,        // a serial number that is not registered
  kJobExists = 709,            // a job id that is already in the store
  kStoreNewerSchema = 710,     // the store was written by a newer sag-cloud
};

// The stable name of a code ("ImageTruncated"), used in logs and reports.
std::string_view ErrcName(Errc code);

class [[nodiscard]] Error {
 public:
  Error() = default;
  Error(Errc code, std::string message) : code_(code), message_(std::move(message)) {}

  [[nodiscard]] Errc code() const { return code_; }
  [[nodiscard]] int number() const { return static_cast<int>(code_); }
  [[nodiscard]] const std::string& message() const { return message_; }

  // Prefixes the message with what the caller was doing: "reading slot B: ...".
  [[nodiscard]] Error WithContext(std::string_view context) const&;
  [[nodiscard]] Error WithContext(std::string_view context) &&;

  // "E110 Io: reading /x: No such file or directory"
  [[nodiscard]] std::string ToString() const;

 private:
  Errc code_ = Errc::kInternal;
  std::string message_;
};

// An error from errno, with what was being done: MakeErrno(Errc::kIo, "open /x").
Error MakeErrno(Errc code, std::string_view what, int err);
Error MakeErrno(Errc code, std::string_view what);  // uses the current errno

// Expected<T>: a value or an Error. std::expected is C++23; this is the subset
// the project needs, with the same spelling.
template <typename T>
class [[nodiscard]] Expected {
 public:
  Expected(T value)
      : v_(std::in_place_index<0>, std::move(value)) {}  // NOLINT(google-explicit-constructor)
  Expected(Error error)
      : v_(std::in_place_index<1>, std::move(error)) {}  // NOLINT(google-explicit-constructor)

  [[nodiscard]] bool has_value() const { return v_.index() == 0; }
  explicit operator bool() const { return has_value(); }

  T& value() & { return std::get<0>(v_); }
  const T& value() const& { return std::get<0>(v_); }
  T&& value() && { return std::get<0>(std::move(v_)); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T&& operator*() && { return std::move(*this).value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }

  const Error& error() const& { return std::get<1>(v_); }
  Error&& error() && { return std::get<1>(std::move(v_)); }

 private:
  std::variant<T, Error> v_;
};

template <>
class [[nodiscard]] Expected<void> {
 public:
  Expected() = default;
  Expected(Error error)
      : error_(std::move(error)), ok_(false) {}  // NOLINT(google-explicit-constructor)

  [[nodiscard]] bool has_value() const { return ok_; }
  explicit operator bool() const { return ok_; }
  void value() const {}
  const Error& error() const& { return error_; }
  Error&& error() && { return std::move(error_); }

 private:
  Error error_;
  bool ok_ = true;
};

using Status = Expected<void>;

inline Status Ok() { return {}; }

}  // namespace sag

// Propagates an error: SAG_TRY(auto v, Compute()); or SAG_TRY_STATUS(Write()).
#define SAG_CONCAT_INNER(a, b) a##b
#define SAG_CONCAT(a, b) SAG_CONCAT_INNER(a, b)
#define SAG_TRY_IMPL(tmp, decl, expr)      \
  auto tmp = (expr);                       \
  if (!tmp) return std::move(tmp).error(); \
  decl = std::move(tmp).value()
#define SAG_TRY(decl, expr) SAG_TRY_IMPL(SAG_CONCAT(sag_try_, __COUNTER__), decl, expr)
#define SAG_TRY_STATUS_IMPL(tmp, expr)       \
  do {                                       \
    auto tmp = (expr);                       \
    if (!tmp) return std::move(tmp).error(); \
  } while (false)
#define SAG_TRY_STATUS(expr) SAG_TRY_STATUS_IMPL(SAG_CONCAT(sag_try_status_, __COUNTER__), expr)
