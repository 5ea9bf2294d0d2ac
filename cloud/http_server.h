// sag-cloud's HTTP/1.1 server: serves one HttpHandler (the RPC API, later
// the image repository) on one listening endpoint, over plain TCP or TLS.
// Every request is bounded in size (header and body limits) and in time
// (the header must arrive within the idle/read timeouts, the body within
// the read timeout, the answer leave within the write timeout); keep-alive
// is honoured. What the server itself refuses (a body above the limit) it
// answers with `refusal`, so even that is an API error body; malformed HTTP
// and timeouts close the connection. One slow or broken client never holds
// up another: each connection is its own coroutine on the io_context.
//
// The handler runs on the io_context's thread and must not block. All of
// Beast lives in http_server.cpp.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "cloud/http_types.h"
#include "common/error.h"

namespace boost::asio {
class io_context;
namespace ssl {
class context;
}  // namespace ssl
}  // namespace boost::asio

namespace sag::cloud {

struct HttpServerOptions {
  std::size_t max_header_bytes = 16U << 10U;
  std::size_t max_body_bytes = 1U << 20U;
  std::chrono::milliseconds idle_timeout{30'000};  // for the next request's header
  std::chrono::milliseconds read_timeout{10'000};  // for the first header and each body
  std::chrono::milliseconds write_timeout{30'000};
  std::size_t max_connections = 20'000;  // beyond: accepted and closed at once
  std::string server_name = "sag-cloud";
  // The answer to a request the server refuses itself (413: body too
  // large). Unset: a plain-text body.
  std::function<HttpResponse(int status, const std::string& why)> refusal;
};

class HttpServer {
 public:
  // Binds `address`:`port` (port 0: an ephemeral one) and serves on `io`,
  // which the caller runs. `tls` set: HTTPS with that context (which must
  // outlive the server). kNetConnect when the address cannot be bound.
  static Expected<std::unique_ptr<HttpServer>> Start(boost::asio::io_context& io,
                                                     const std::string& address, std::uint16_t port,
                                                     HttpHandler handler,
                                                     HttpServerOptions options = {},
                                                     boost::asio::ssl::context* tls = nullptr);
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  [[nodiscard]] std::uint16_t port() const;
  // Stops accepting and closes every open connection. Call on the io thread
  // (or after it stopped).
  void Stop();

  [[nodiscard]] std::size_t connections() const;  // open now
  [[nodiscard]] std::uint64_t requests() const;   // served so far

  struct Impl;

 private:
  explicit HttpServer(std::shared_ptr<Impl> impl);
  std::shared_ptr<Impl> impl_;
};

}  // namespace sag::cloud
