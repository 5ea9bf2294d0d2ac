// Whether the control channel's endpoint answers: the health check a trial
// boot must pass when `health.require_cloud` is set. A new OS that boots and
// runs its services but can no longer reach the cloud is as lost to the
// fleet as one that does not boot, so it is rolled back.
#pragma once

#include <chrono>
#include <string>

#include "common/error.h"
#include "common/net/downloader.h"

namespace sag::net {

// Connects to `endpoint` (wss://host[:port]/path, or https://; ws:// and
// http:// only without a CA, for loopback tests) the way the device channel
// does: TCP, TLS with the server verified against options.ca_file and the
// device's client certificate, then an HTTP request for the path. Any HTTP
// answer over that connection counts as reachable (the endpoint may refuse a
// plain GET; it is up and it is the right server). Tries again every second
// until `deadline` has passed (the network may take a while to come up after
// a boot). Returns kHealthCheckFailed naming the endpoint and the last error.
Status ProbeEndpoint(const std::string& endpoint, const DownloadOptions& options,
                     std::chrono::milliseconds deadline);

}  // namespace sag::net
