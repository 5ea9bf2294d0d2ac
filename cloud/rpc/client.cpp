// The blocking HTTP exchange of `sag-cloud call`: all of the client's Beast
// code is here.
#include "cloud/rpc/client.h"

#if defined(__clang__) && !defined(BOOST_ASIO_HAS_CO_AWAIT)
#define BOOST_ASIO_HAS_CO_AWAIT 1
#endif

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>

#include "common/net/tls.h"

namespace sag::cloud::rpc {

namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace ssl = asio::ssl;
using tcp = asio::ip::tcp;
using ErrorCode = boost::system::error_code;

constexpr std::size_t kMaxResponseBody = 16U << 20U;

Error NetError(Errc code, const std::string& what, const ErrorCode& ec) {
  if (ec == beast::error::timeout) return {Errc::kTimeout, what + ": timed out"};
  return {code, what + ": " + ec.message()};
}

template <typename Stream>
asio::awaitable<void> Talk(Stream& stream, const std::string& where, const HttpRequest& request,
                           Expected<HttpResponse>& out) {
  ErrorCode ec;
  http::request<http::string_body> req;
  req.method_string(request.method);
  req.target(request.target);
  req.version(11);
  for (const auto& h : request.headers) req.insert(h.name, h.value);
  req.body() = request.body;
  req.prepare_payload();
  co_await http::async_write(stream, req, asio::redirect_error(asio::use_awaitable, ec));
  if (ec) {
    out = NetError(Errc::kNetProtocol, "sending to " + where, ec);
    co_return;
  }
  beast::flat_buffer buffer;
  http::response_parser<http::string_body> parser;
  parser.body_limit(kMaxResponseBody);
  co_await http::async_read(stream, buffer, parser, asio::redirect_error(asio::use_awaitable, ec));
  if (ec) {
    out = NetError(Errc::kNetProtocol, "reading the answer of " + where, ec);
    co_return;
  }
  auto msg = parser.release();
  HttpResponse resp;
  resp.status = static_cast<int>(msg.result_int());
  for (const auto& field : msg) {
    resp.headers.push_back({std::string(field.name_string()), std::string(field.value())});
  }
  resp.body = std::move(msg.body());
  out = std::move(resp);
}

asio::awaitable<void> Exchange(const Endpoint& endpoint, const HttpRequest& request,
                               std::chrono::milliseconds timeout, ssl::context* tls,
                               Expected<HttpResponse>& out) {
  auto executor = co_await asio::this_coro::executor;
  ErrorCode ec;
  tcp::resolver resolver(executor);
  const auto results = co_await resolver.async_resolve(
      endpoint.host, std::to_string(endpoint.port), asio::redirect_error(asio::use_awaitable, ec));
  const std::string where = endpoint.host + ":" + std::to_string(endpoint.port);
  if (ec) {
    out = NetError(Errc::kNetConnect, "resolving " + endpoint.host, ec);
    co_return;
  }
  beast::tcp_stream tcp_stream(executor);
  tcp_stream.expires_after(timeout);  // one deadline for the whole exchange
  co_await tcp_stream.async_connect(results, asio::redirect_error(asio::use_awaitable, ec));
  if (ec) {
    out = NetError(Errc::kNetConnect, "connecting to " + where, ec);
    co_return;
  }
  if (tls == nullptr) {
    co_await Talk(tcp_stream, where, request, out);
    tcp_stream.socket().shutdown(tcp::socket::shutdown_both, ec);
    co_return;
  }
  beast::ssl_stream<beast::tcp_stream> stream(std::move(tcp_stream), *tls);
  // SNI only for names (RFC 6066 forbids IP literals); the certificate check
  // covers both.
  ErrorCode addr_ec;
  asio::ip::make_address(endpoint.host, addr_ec);
  if (addr_ec && SSL_set_tlsext_host_name(stream.native_handle(), endpoint.host.c_str()) != 1) {
    out = Error(Errc::kNetTls, "TLS with " + where + ": cannot set the server name (SNI)");
    co_return;
  }
  stream.set_verify_callback(ssl::host_name_verification(endpoint.host), ec);
  co_await stream.async_handshake(ssl::stream_base::client,
                                  asio::redirect_error(asio::use_awaitable, ec));
  if (ec) {
    out = NetError(Errc::kNetTls, "TLS handshake with " + where, ec);
    co_return;
  }
  co_await Talk(stream, where, request, out);
  // The answer is complete; a peer that skips close_notify is not an error.
  co_await stream.async_shutdown(asio::redirect_error(asio::use_awaitable, ec));
}

}  // namespace

Expected<HttpResponse> SendRequest(const Endpoint& endpoint, const HttpRequest& request,
                                   std::chrono::milliseconds timeout) {
  std::unique_ptr<ssl::context> tls;
  if (endpoint.tls) {
    if (endpoint.ca_file.empty()) {
      return Error(Errc::kInvalidArgument,
                   "https needs the CA file the server's certificate "
                   "chains to (--ca-file)");
    }
    auto ctx = net::MakeTlsClientContext({endpoint.ca_file, {}, {}});
    if (!ctx) return std::move(ctx).error();
    tls = std::move(*ctx);
  }
  asio::io_context io;
  Expected<HttpResponse> out = Error(Errc::kInternal, "the exchange did not run");
  asio::co_spawn(io, Exchange(endpoint, request, timeout, tls.get(), out), asio::detached);
  io.run();
  return out;
}

}  // namespace sag::cloud::rpc
