#include "common/net/probe.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <thread>

namespace sag::net {

namespace {

// wss:// and ws:// are https:// and http:// for the opening handshake.
std::string HttpUrl(const std::string& endpoint) {
  for (const auto& [from, to] : {std::pair{"wss://", "https://"}, std::pair{"ws://", "http://"}}) {
    if (endpoint.starts_with(from)) return to + endpoint.substr(std::string_view(from).size());
  }
  return endpoint;
}

}  // namespace

Status ProbeEndpoint(const std::string& endpoint, const DownloadOptions& options,
                     std::chrono::milliseconds deadline) {
  using SteadyClock = std::chrono::steady_clock;
  using std::chrono::milliseconds;
  if (endpoint.empty()) {
    return Error(Errc::kHealthCheckFailed,
                 "the control channel must be reachable (health.require_cloud) but no "
                 "cloud.endpoint is configured; set cloud.endpoint or health.require_cloud: false");
  }
  const std::string url = HttpUrl(endpoint);
  const auto end = SteadyClock::now() + deadline;
  constexpr std::uint64_t kEnough = 64U << 10U;  // a body this long is an answer too
  constexpr milliseconds kPerAttempt{5000};
  constexpr milliseconds kPause{1000};
  Error last(Errc::kTimeout, "no attempt made");
  for (int attempt = 1;; ++attempt) {
    const auto left = std::chrono::duration_cast<milliseconds>(end - SteadyClock::now());
    DownloadOptions o = options;
    o.max_retries = 0;  // the retries are this loop's, bounded by the deadline
    o.max_redirects = 0;
    o.connect_timeout = std::clamp(left, milliseconds(100), kPerAttempt);
    o.stall_timeout = o.connect_timeout;
    o.bandwidth_limit = 0;
    bool enough = false;
    auto r = Fetch(
        url, 0,
        [&](std::uint64_t offset, std::span<const std::uint8_t> data) -> Status {
          if (offset + data.size() < kEnough) return Ok();
          enough = true;
          return Error(Errc::kCancelled, "enough of the answer");
        },
        o);
    // An HTTP status, even an error or a redirect, came from the endpoint
    // over a verified TLS session.
    if (r || enough || r.error().code() == Errc::kNetHttpStatus ||
        r.error().code() == Errc::kNetTooManyRedirects) {
      spdlog::info("control channel {} reachable (attempt {})", endpoint, attempt);
      return Ok();
    }
    last = r.error();
    if (last.code() == Errc::kInvalidArgument || (options.cancel != nullptr && *options.cancel)) {
      break;  // a configuration error does not heal by waiting
    }
    if (SteadyClock::now() + kPause >= end) break;
    spdlog::warn("control channel {} not reachable yet: {}", endpoint, last.message());
    std::this_thread::sleep_for(kPause);
  }
  return Error(Errc::kHealthCheckFailed, "control channel " + endpoint + " not reachable within " +
                                             std::to_string(deadline.count() / 1000) +
                                             " s: " + last.ToString());
}

}  // namespace sag::net
