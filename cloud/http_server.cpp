#include "cloud/http_server.h"

// Boost 1.74 enables co_await for clang only with the Coroutines TS; clang 14
// in C++20 mode (clang-tidy) has standard coroutines, as GCC does.
#if defined(__clang__) && !defined(BOOST_ASIO_HAS_CO_AWAIT)
#define BOOST_ASIO_HAS_CO_AWAIT 1
#endif

#include <array>
#include <atomic>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>
#include <ctime>
#include <fstream>
#include <type_traits>
#include <unordered_map>

#include "common/log.h"

namespace sag::cloud {

namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace ssl = asio::ssl;
using tcp = asio::ip::tcp;
using ErrorCode = boost::system::error_code;

constexpr std::size_t kFileChunk = 64U << 10U;

std::string HttpDate() {
  const std::time_t now = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&now, &tm);
  std::array<char, 64> buf{};
  const auto n = std::strftime(buf.data(), buf.size(), "%a, %d %b %Y %H:%M:%S GMT", &tm);
  return {buf.data(), n};
}

HttpResponse PlainRefusal(int status, const std::string& why) {
  HttpResponse r;
  r.status = status;
  r.headers.push_back({"Content-Type", "text/plain; charset=utf-8"});
  r.body = why + "\n";
  return r;
}

template <typename Stream>
auto& Lowest(Stream& s) {
  return beast::get_lowest_layer(s);
}

}  // namespace

struct HttpServer::Impl {
  Impl(asio::io_context& io_in, HttpHandler h, HttpServerOptions o, ssl::context* t)
      : io(io_in), acceptor(io_in), handler(std::move(h)), opts(std::move(o)), tls(t) {}

  asio::io_context& io;
  tcp::acceptor acceptor;
  HttpHandler handler;
  HttpServerOptions opts;
  ssl::context* tls;
  bool stopped = false;
  std::atomic<std::size_t> open{0};
  std::atomic<std::uint64_t> served{0};
  std::uint64_t next_id = 0;
  std::unordered_map<std::uint64_t, std::function<void()>> closers;  // io thread only

  HttpResponse Refuse(int status, const std::string& why) const {
    return opts.refusal ? opts.refusal(status, why) : PlainRefusal(status, why);
  }
};

namespace {

using Impl = HttpServer::Impl;

// Registers a connection's close function for Stop(), for its lifetime.
class Registration {
 public:
  Registration(Impl& impl, std::function<void()> closer) : impl_(impl), id_(impl.next_id++) {
    impl_.closers.emplace(id_, std::move(closer));
    ++impl_.open;
  }
  ~Registration() {
    impl_.closers.erase(id_);
    --impl_.open;
  }
  Registration(const Registration&) = delete;
  Registration& operator=(const Registration&) = delete;

 private:
  Impl& impl_;
  std::uint64_t id_;
};

template <typename Stream>
asio::awaitable<bool> WriteResponse(Impl& impl, Stream& stream, HttpResponse resp, bool keep_alive,
                                    unsigned version, bool head = false) {
  ErrorCode ec;
  std::ifstream file;
  if (resp.file && !head) {
    file.open(resp.file->path, std::ios::binary);
    if (file) file.seekg(static_cast<std::streamoff>(resp.file->offset));
    if (!file) {
      spdlog::warn("http: cannot read {}", resp.file->path.string());
      resp = impl.Refuse(500, "the file to send cannot be read");
    }
  }
  const auto set_headers = [&](auto& res) {
    for (const auto& h : resp.headers) res.insert(h.name, h.value);
    res.set(http::field::server, impl.opts.server_name);
    res.set(http::field::date, HttpDate());
    res.keep_alive(keep_alive);
  };
  Lowest(stream).expires_after(impl.opts.write_timeout);
  if (head) {
    // The answer to HEAD: the headers of the GET answer, with its length,
    // and no body (a body would be read as the next response).
    http::response<http::empty_body> res{static_cast<http::status>(resp.status), version};
    set_headers(res);
    res.content_length(resp.file ? resp.file->length : resp.body.size());
    http::response_serializer<http::empty_body> sr{res};
    co_await http::async_write_header(stream, sr, asio::redirect_error(asio::use_awaitable, ec));
    co_return !ec;
  }
  if (!resp.file) {
    http::response<http::string_body> res{static_cast<http::status>(resp.status), version};
    set_headers(res);
    res.body() = std::move(resp.body);
    res.prepare_payload();
    co_await http::async_write(stream, res, asio::redirect_error(asio::use_awaitable, ec));
    co_return !ec;
  }
  http::response<http::empty_body> res{static_cast<http::status>(resp.status), version};
  set_headers(res);
  res.content_length(resp.file->length);
  http::response_serializer<http::empty_body> sr{res};
  co_await http::async_write_header(stream, sr, asio::redirect_error(asio::use_awaitable, ec));
  std::vector<char> chunk(kFileChunk);
  for (std::uint64_t left = resp.file->length; left > 0 && !ec;) {
    const auto n = static_cast<std::size_t>(std::min<std::uint64_t>(left, chunk.size()));
    if (!file.read(chunk.data(), static_cast<std::streamsize>(n))) co_return false;  // shrank
    Lowest(stream).expires_after(impl.opts.write_timeout);
    co_await asio::async_write(stream, asio::buffer(chunk.data(), n),
                               asio::redirect_error(asio::use_awaitable, ec));
    left -= n;
  }
  co_return !ec;
}

// After a refusal the client may still be sending its body: closing with
// unread bytes makes the kernel reset the connection, and the reset can
// destroy the answer before the client reads it. So: stop sending, then read
// and drop what still comes, bounded in bytes and time, and close.
template <typename Stream>
asio::awaitable<void> LingeringClose(Impl& impl, Stream& stream) {
  if constexpr (std::is_same_v<Stream, beast::tcp_stream>) {
    ErrorCode ec;
    stream.socket().shutdown(tcp::socket::shutdown_send, ec);
    std::array<char, 16384> sink{};
    constexpr std::size_t kMaxDrain = 4U << 20U;
    for (std::size_t drained = 0; !ec && drained < kMaxDrain;) {
      stream.expires_after(impl.opts.read_timeout);
      drained += co_await stream.async_read_some(asio::buffer(sink),
                                                 asio::redirect_error(asio::use_awaitable, ec));
    }
  }
}

template <typename Stream>
asio::awaitable<void> ServeHttp(std::shared_ptr<Impl> self, Stream& stream, std::string remote,
                                bool tls) {
  Impl& impl = *self;
  beast::flat_buffer buffer;
  bool first = true;
  for (;;) {
    ErrorCode ec;
    http::request_parser<http::string_body> parser;
    parser.header_limit(static_cast<std::uint32_t>(impl.opts.max_header_bytes));
    parser.body_limit(impl.opts.max_body_bytes);
    Lowest(stream).expires_after(first ? impl.opts.read_timeout : impl.opts.idle_timeout);
    co_await http::async_read_header(stream, buffer, parser,
                                     asio::redirect_error(asio::use_awaitable, ec));
    // Beast checks a Content-Length against the body limit with the header.
    const bool too_large = ec == http::error::body_limit;
    if (ec && !too_large) co_return;  // closed, timed out, or not HTTP: nothing to answer
    first = false;
    if (too_large) {
      // Refused before the body is read (its Content-Length is above the
      // limit); the connection cannot be reused.
      co_await WriteResponse(impl, stream, impl.Refuse(413, "request body too large"), false, 11);
      co_await LingeringClose(impl, stream);
      co_return;
    }
    const auto& header = parser.get();
    const unsigned version = header.version() == 10 ? 10 : 11;
    if (beast::iequals(header[http::field::expect], "100-continue")) {
      static constexpr std::string_view kContinue = "HTTP/1.1 100 Continue\r\n\r\n";
      Lowest(stream).expires_after(impl.opts.write_timeout);
      co_await asio::async_write(stream, asio::buffer(kContinue.data(), kContinue.size()),
                                 asio::redirect_error(asio::use_awaitable, ec));
      if (ec) co_return;
    }
    Lowest(stream).expires_after(impl.opts.read_timeout);
    co_await http::async_read(stream, buffer, parser,
                              asio::redirect_error(asio::use_awaitable, ec));
    if (ec == http::error::body_limit) {
      co_await WriteResponse(impl, stream, impl.Refuse(413, "request body too large"), false,
                             version);
      co_await LingeringClose(impl, stream);
      co_return;
    }
    if (ec) co_return;
    auto msg = parser.release();
    HttpRequest req;
    req.method = std::string(msg.method_string());
    req.target = std::string(msg.target());
    for (const auto& field : msg) {
      req.headers.push_back({std::string(field.name_string()), std::string(field.value())});
    }
    req.body = std::move(msg.body());
    req.remote = remote;
    req.tls = tls;
    HttpResponse resp;
    try {
      resp = impl.handler(req);
    } catch (const std::exception& e) {
      spdlog::error("http: handler failed on {} {}: {}", req.method, req.target, e.what());
      resp = impl.Refuse(500, "internal error");
    }
    ++impl.served;
    const bool keep = msg.keep_alive() && !impl.stopped;
    const bool head = req.method == "HEAD";
    if (!co_await WriteResponse(impl, stream, std::move(resp), keep, version, head) || !keep) {
      co_return;
    }
  }
}

asio::awaitable<void> ServeConnection(std::shared_ptr<Impl> self, tcp::socket socket) {
  ErrorCode ec;
  const auto ep = socket.remote_endpoint(ec);
  const std::string remote =
      ec ? std::string("?") : ep.address().to_string() + ":" + std::to_string(ep.port());
  if (self->tls == nullptr) {
    beast::tcp_stream stream(std::move(socket));
    const Registration reg(*self, [&stream] {
      ErrorCode e;
      stream.socket().close(e);
    });
    co_await ServeHttp(self, stream, remote, false);
    stream.socket().shutdown(tcp::socket::shutdown_send, ec);
    co_return;
  }
  beast::ssl_stream<beast::tcp_stream> stream(std::move(socket), *self->tls);
  const Registration reg(*self, [&stream] {
    ErrorCode e;
    Lowest(stream).socket().close(e);
  });
  Lowest(stream).expires_after(self->opts.read_timeout);
  co_await stream.async_handshake(ssl::stream_base::server,
                                  asio::redirect_error(asio::use_awaitable, ec));
  if (ec) co_return;
  co_await ServeHttp(self, stream, remote, true);
  Lowest(stream).expires_after(std::chrono::seconds(2));
  co_await stream.async_shutdown(asio::redirect_error(asio::use_awaitable, ec));
}

asio::awaitable<void> AcceptLoop(std::shared_ptr<Impl> self) {
  asio::steady_timer backoff(self->io);
  while (!self->stopped) {
    ErrorCode ec;
    tcp::socket socket =
        co_await self->acceptor.async_accept(asio::redirect_error(asio::use_awaitable, ec));
    if (self->stopped) co_return;
    if (ec) {
      // Out of descriptors and the like: wait a little instead of spinning.
      spdlog::warn("http: accept failed: {}", ec.message());
      backoff.expires_after(std::chrono::milliseconds(50));
      co_await backoff.async_wait(asio::redirect_error(asio::use_awaitable, ec));
      continue;
    }
    if (self->open >= self->opts.max_connections) {
      socket.close(ec);
      continue;
    }
    asio::co_spawn(self->io, ServeConnection(self, std::move(socket)), asio::detached);
  }
}

}  // namespace

Expected<std::unique_ptr<HttpServer>> HttpServer::Start(asio::io_context& io,
                                                        const std::string& address,
                                                        std::uint16_t port, HttpHandler handler,
                                                        HttpServerOptions options,
                                                        ssl::context* tls) {
  auto impl = std::make_shared<Impl>(io, std::move(handler), std::move(options), tls);
  ErrorCode ec;
  const auto addr = asio::ip::make_address(address, ec);
  if (ec) {
    return Error(Errc::kInvalidArgument, "listen address '" + address + "' is not an IP address");
  }
  const tcp::endpoint ep(addr, port);
  const std::string where = address + ":" + std::to_string(port);
  if (impl->acceptor.open(ep.protocol(), ec); ec) {
    return Error(Errc::kNetConnect, "opening a socket for " + where + ": " + ec.message());
  }
  impl->acceptor.set_option(asio::socket_base::reuse_address(true), ec);
  if (impl->acceptor.bind(ep, ec); ec) {
    return Error(Errc::kNetConnect, "binding " + where + ": " + ec.message());
  }
  if (impl->acceptor.listen(asio::socket_base::max_listen_connections, ec); ec) {
    return Error(Errc::kNetConnect, "listening on " + where + ": " + ec.message());
  }
  asio::co_spawn(io, AcceptLoop(impl), asio::detached);
  return std::unique_ptr<HttpServer>(new HttpServer(std::move(impl)));
}

HttpServer::HttpServer(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}

HttpServer::~HttpServer() { Stop(); }

std::uint16_t HttpServer::port() const {
  ErrorCode ec;
  const auto ep = impl_->acceptor.local_endpoint(ec);
  return ec ? 0 : ep.port();
}

void HttpServer::Stop() {
  if (impl_->stopped) return;
  impl_->stopped = true;
  ErrorCode ec;
  impl_->acceptor.close(ec);
  // Closing a socket ends its session's pending operation, which removes
  // its entry: iterate over a copy.
  auto closers = impl_->closers;
  for (auto& [id, close] : closers) close();
}

std::size_t HttpServer::connections() const { return impl_->open; }

std::uint64_t HttpServer::requests() const { return impl_->served; }

}  // namespace sag::cloud
