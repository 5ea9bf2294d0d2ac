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
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

namespace sag::cloud::rpc {

namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using ErrorCode = boost::system::error_code;

constexpr std::size_t kMaxResponseBody = 16U << 20U;

Error NetError(Errc code, const std::string& what, const ErrorCode& ec) {
  if (ec == beast::error::timeout) return {Errc::kTimeout, what + ": timed out"};
  return {code, what + ": " + ec.message()};
}

asio::awaitable<void> Exchange(const Endpoint& endpoint, const HttpRequest& request,
                               std::chrono::milliseconds timeout, Expected<HttpResponse>& out) {
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
  beast::tcp_stream stream(executor);
  stream.expires_after(timeout);  // one deadline for the whole exchange
  co_await stream.async_connect(results, asio::redirect_error(asio::use_awaitable, ec));
  if (ec) {
    out = NetError(Errc::kNetConnect, "connecting to " + where, ec);
    co_return;
  }
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
  stream.socket().shutdown(tcp::socket::shutdown_both, ec);
}

}  // namespace

Expected<HttpResponse> SendRequest(const Endpoint& endpoint, const HttpRequest& request,
                                   std::chrono::milliseconds timeout) {
  asio::io_context io;
  Expected<HttpResponse> out = Error(Errc::kInternal, "the exchange did not run");
  asio::co_spawn(io, Exchange(endpoint, request, timeout, out), asio::detached);
  io.run();
  return out;
}

}  // namespace sag::cloud::rpc
