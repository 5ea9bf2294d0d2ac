// A test-only HTTP/HTTPS server on 127.0.0.1 that serves one byte buffer with
// Range support, and misbehaves on request: it drops connections, stalls,
// fails with a status, redirects (also in loops), ignores or misreports
// Range. Runs on its own thread; all Beast code is in test_http_server.cpp.
//
// Also: MakeTestPki(), a throwaway PKI made with the openssl command line.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/error.h"

namespace sag::test {

struct ServerTls {
  std::filesystem::path cert_chain;  // PEM: the server certificate (and intermediates)
  std::filesystem::path key;
  std::filesystem::path client_ca;  // non-empty: require a client certificate from this CA
};

// Faults count responses: `drop_times = 2` drops the first two responses
// that carry a body, then the server behaves.
struct Faults {
  std::uint64_t drop_after = 0;            // close the TCP connection (no TLS close_notify) after
  int drop_times = 0;                      // this many body bytes, in the next drop_times responses
  std::uint64_t stall_after = 0;           // stop sending for stall_for after this many body
  std::chrono::milliseconds stall_for{0};  // bytes, in the next stall_times responses
  int stall_times = 0;
  int fail_status = 0;                  // answer fail_status to the next fail_times requests
  int fail_times = 0;                   // (-1: to all of them)
  int fail_skip = 0;                    // after serving this many requests normally
  std::string retry_after{};            // Retry-After header on those failures, if not empty
  bool ignore_range = false;            // answer Range requests with 200 and the whole file
  std::int64_t range_start_shift = 0;   // report start+shift in Content-Range (a lying server)
  std::string etag = "\"sag-test-1\"";  // empty: no ETag header
  std::map<std::string, std::string> redirects{};  // target -> Location (302)
  std::uint64_t trickle_bytes = 0;                 // > 0: send the body this many bytes at a
  std::chrono::milliseconds trickle_every{0};      // time, waiting this long before each
  std::uint64_t range_extra = 0;  // a range answer covers this many bytes past the asked end
  std::chrono::milliseconds respond_after{0};  // wait this long before each response
};

class TestHttpServer {
 public:
  // Serves `content` at every target that is not a redirect; over TLS when
  // `tls` is set. Listens on 127.0.0.1, an ephemeral port.
  explicit TestHttpServer(std::string content, std::optional<ServerTls> tls = std::nullopt);
  ~TestHttpServer();
  TestHttpServer(const TestHttpServer&) = delete;
  TestHttpServer& operator=(const TestHttpServer&) = delete;

  // Replaces the faults and resets their counters.
  void SetFaults(Faults faults);

  [[nodiscard]] std::uint16_t port() const;
  // "https://127.0.0.1:PORT/file" (or http://, or another host name)
  [[nodiscard]] std::string Url(std::string_view target = "/file",
                                std::string_view host = "127.0.0.1") const;

  [[nodiscard]] int connections() const;                  // TCP connections accepted
  [[nodiscard]] int requests() const;                     // HTTP requests read
  [[nodiscard]] int max_concurrent() const;               // most connections open at the same time
  [[nodiscard]] std::vector<std::string> ranges() const;  // Range header per request, "" if none
  [[nodiscard]] std::string last_sni() const;             // server name of the last handshake

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// A throwaway PKI (EC P-256, valid for 2 days) in `dir`.
struct TestPki {
  std::filesystem::path ca_cert;                              // the CA the client pins
  std::filesystem::path server_cert, server_key;              // SAN IP:127.0.0.1, DNS:localhost
  std::filesystem::path wrong_host_cert, wrong_host_key;      // same CA, SAN DNS:wrong.example
  std::filesystem::path rogue_ca_cert;                        // an unrelated CA
  std::filesystem::path rogue_server_cert, rogue_server_key;  // from it, SAN IP:127.0.0.1
  std::filesystem::path client_cert, client_key;              // same CA, clientAuth
};

Expected<TestPki> MakeTestPki(const std::filesystem::path& dir);

}  // namespace sag::test
