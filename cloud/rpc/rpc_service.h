// The Smartag RPC endpoint as Alibaba Cloud serves it: one HttpHandler for
// "/" that reads GET query and POST form parameters, authenticates the call
// by either signature scheme its SDKs send (signature.h), refuses replays
// and stale requests, runs the action (actions.h) and answers in JSON or XML
// (body.h).
//
// What is checked, in order (the first failure answers):
//   path "/" and GET|POST                       404 InvalidAction.NotFound
//   parameters decode, none twice               400 InvalidParameter
//   Format JSON|XML                             400 InvalidParameter
//   signature 1.0 (no Authorization header):
//     Action, Version, AccessKeyId, Signature, SignatureMethod,
//     SignatureVersion, SignatureNonce, Timestamp present   400 MissingParameter
//     SignatureMethod HMAC-SHA1, SignatureVersion 1.0        400 IncompleteSignature
//   ACS3-HMAC-SHA256 (Authorization header):
//     the header parses; host and x-acs-{action,version,date,signature-nonce,
//     content-sha256} are present, once, and signed        400 IncompleteSignature
//   Version 2018-03-13                          400 InvalidVersion
//   Timestamp / x-acs-date well formed          400 InvalidTimeStamp.Format
//   ... and within the window (15 min)          400 InvalidTimeStamp.Expired
//   the access key exists                       404 InvalidAccessKeyId.NotFound
//   the signature matches                       400 SignatureDoesNotMatch
//   the key's request rate                      400 Throttling
//   the nonce is new for this key               400 SignatureNonceUsed
//   the action exists                           404 InvalidAction.NotFound
// A nonce is remembered only once the signature matched (nobody can burn
// another caller's nonces), for twice the window: in memory (which bounds
// how many are held), and in the NonceStore when one is given, so that a
// restart does not let a captured request be replayed.
#pragma once

#include <chrono>
#include <cstddef>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <unordered_set>
#include <vector>

#include "cloud/http_types.h"
#include "cloud/rpc/actions.h"
#include "cloud/rpc/api_backend.h"
#include "cloud/rpc/body.h"
#include "cloud/rpc/nonce_store.h"

namespace sag::cloud::rpc {

inline constexpr std::string_view kApiVersion = "2018-03-13";

struct AccessKey {
  std::string id;
  std::string secret;
  std::string account;     // the account (uid) whose instances the key reaches
  bool read_only = false;  // Describe* only; writes answer Forbidden
};

struct RpcConfig {
  std::vector<AccessKey> access_keys;
  // HostId in error bodies: the endpoint's host name.
  std::string host_id = "smartag.cn-shanghai.aliyuncs.com";
  std::chrono::seconds time_window{15 * 60};  // |now - Timestamp| allowed
  std::size_t max_nonces = 1'000'000;         // remembered at once; beyond: Throttling
  // Per access key: sustained requests per second and burst; 0 = unlimited.
  double rate_per_second = 0;
  double rate_burst = 0;
  ActionOptions actions;
};

// Remembers (key, nonce) pairs for `ttl`; memory bounded by `capacity`.
class NonceCache {
 public:
  NonceCache(std::chrono::seconds ttl, std::size_t capacity) : ttl_(ttl), capacity_(capacity) {}
  enum class Result { kNew, kUsed, kFull };
  Result Insert(const std::string& key, Clock::time_point now);
  [[nodiscard]] std::size_t size() const { return seen_.size(); }

 private:
  std::chrono::seconds ttl_;
  std::size_t capacity_;
  std::unordered_set<std::string> seen_;
  std::deque<std::pair<Clock::time_point, std::string>> order_;  // insertion order
};

class RpcService {
 public:
  using Now = std::function<Clock::time_point()>;
  RpcService(
      RpcConfig config, ApiBackend& backend, Now now = [] { return Clock::now(); });
  // Nonces also go to `nonces` (not owned; it must outlive the service).
  RpcService(
      RpcConfig config, ApiBackend& backend, NonceStore* nonces,
      Now now = [] { return Clock::now(); });

  // Thread-safe.
  HttpResponse Handle(const HttpRequest& request);
  HttpHandler Handler();

  // The body for a failure the HTTP server detects before a handler runs
  // (request too large, too slow): the same JSON error shape.
  [[nodiscard]] HttpResponse TransportError(const RpcError& error) const;

 private:
  struct Authenticated;
  HttpResponse Fail(Format format, const std::string& request_id, const RpcError& error) const;

  RpcConfig config_;
  SmartagActions actions_;
  Now now_;
  std::mutex mu_;  // guards nonces_ and buckets_
  NonceCache nonces_;
  NonceStore* nonce_store_ = nullptr;
  struct Bucket {
    double tokens = 0;
    Clock::time_point at;
  };
  std::map<std::string, Bucket> buckets_;
};

// An upper-case UUID v4 ("4C467B38-3910-447D-87BC-AC049166F216").
std::string NewRequestId();

// "YYYY-MM-DDThh:mm:ssZ" (an optional fraction of a second tolerated).
std::optional<Clock::time_point> ParseIsoTimestamp(std::string_view text);
std::string FormatIsoTimestamp(Clock::time_point t);

}  // namespace sag::cloud::rpc
