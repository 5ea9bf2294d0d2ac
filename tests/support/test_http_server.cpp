#include "tests/support/test_http_server.h"

#include <openssl/ssl.h>

// Boost 1.74 enables co_await for clang only with the Coroutines TS; clang 14
// in C++20 mode (clang-tidy) has standard coroutines, as GCC does.
#if defined(__clang__) && !defined(BOOST_ASIO_HAS_CO_AWAIT)
#define BOOST_ASIO_HAS_CO_AWAIT 1
#endif

#include <algorithm>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>
#include <fstream>
#include <mutex>
#include <thread>

#include "common/parse_decimal.h"
#include "common/process.h"

namespace sag::test {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace ssl = asio::ssl;
using tcp = asio::ip::tcp;
using ErrorCode = boost::system::error_code;
using std::chrono::milliseconds;

constexpr std::size_t kWriteChunk = 64U << 10U;
constexpr milliseconds kIoTimeout{5000};

// "bytes=N-" or "bytes=N-M"; nullopt for anything else (served as 200).
std::optional<std::pair<std::uint64_t, std::optional<std::uint64_t>>> ParseRange(
    std::string_view v) {
  if (!v.starts_with("bytes=")) return std::nullopt;
  v.remove_prefix(6);
  const auto dash = v.find('-');
  if (dash == std::string_view::npos || dash == 0) return std::nullopt;
  const auto first = ParseDecimal<std::uint64_t>(v.substr(0, dash));
  if (!first) return std::nullopt;
  const std::string_view rest = v.substr(dash + 1);
  if (rest.empty()) return std::pair{*first, std::optional<std::uint64_t>()};
  const auto last = ParseDecimal<std::uint64_t>(rest);
  if (!last) return std::nullopt;
  return std::pair{*first, last};
}

std::string StatusLine(int status) {
  const auto reason = http::obsolete_reason(static_cast<http::status>(status));
  return "HTTP/1.1 " + std::to_string(status) + " " + std::string(reason.data(), reason.size()) +
         "\r\n";
}

// What to send for one request, decided under the lock.
struct Plan {
  std::string header;
  std::uint64_t body_first = 0;
  std::uint64_t body_size = 0;
  std::optional<std::uint64_t> drop_after;
  std::optional<std::uint64_t> stall_after;
  milliseconds stall_for{0};
  std::uint64_t trickle_bytes = 0;
  milliseconds trickle_every{0};
  milliseconds respond_after{0};
};

}  // namespace

struct TestHttpServer::Impl {
  explicit Impl(std::string body) : content(std::move(body)) {}

  asio::awaitable<void> Accept();
  asio::awaitable<void> Session(tcp::socket socket);
  template <typename Stream>
  asio::awaitable<void> Serve(Stream& stream);
  Plan Decide(const http::request<http::empty_body>& req);

  const std::string content;
  std::optional<ssl::context> tls;  // outlives the io_context (declared before it)
  asio::io_context io;
  tcp::acceptor acceptor{io};
  std::uint16_t port = 0;
  std::thread thread;

  mutable std::mutex mu;
  Faults faults;
  int drops_done = 0;
  int stalls_done = 0;
  int fails_done = 0;
  int fails_skipped = 0;
  int connections = 0;
  int open_now = 0;
  int max_open = 0;
  int requests = 0;
  std::vector<std::string> ranges;
  std::string sni;
};

TestHttpServer::TestHttpServer(std::string content, std::optional<ServerTls> tls)
    : impl_(std::make_unique<Impl>(std::move(content))) {
  if (tls) {
    auto& ctx = impl_->tls.emplace(ssl::context::tls_server);
    ctx.use_certificate_chain_file(tls->cert_chain.string());
    ctx.use_private_key_file(tls->key.string(), ssl::context::pem);
    if (!tls->client_ca.empty()) {
      ctx.load_verify_file(tls->client_ca.string());
      ctx.set_verify_mode(ssl::verify_peer | ssl::verify_fail_if_no_peer_cert);
    }
  }
  const tcp::endpoint ep(asio::ip::make_address("127.0.0.1"), 0);
  impl_->acceptor.open(ep.protocol());
  impl_->acceptor.set_option(tcp::acceptor::reuse_address(true));
  impl_->acceptor.bind(ep);
  impl_->acceptor.listen();
  impl_->port = impl_->acceptor.local_endpoint().port();
  asio::co_spawn(impl_->io, impl_->Accept(), asio::detached);
  impl_->thread = std::thread([this] { impl_->io.run(); });
}

TestHttpServer::~TestHttpServer() {
  impl_->io.stop();
  impl_->thread.join();
}

void TestHttpServer::SetFaults(Faults faults) {
  const std::lock_guard lock(impl_->mu);
  impl_->faults = std::move(faults);
  impl_->drops_done = impl_->stalls_done = impl_->fails_done = impl_->fails_skipped = 0;
}

std::uint16_t TestHttpServer::port() const { return impl_->port; }

std::string TestHttpServer::Url(std::string_view target, std::string_view host) const {
  return std::string(impl_->tls ? "https://" : "http://") + std::string(host) + ":" +
         std::to_string(impl_->port) + std::string(target);
}

int TestHttpServer::connections() const {
  const std::lock_guard lock(impl_->mu);
  return impl_->connections;
}

int TestHttpServer::max_concurrent() const {
  const std::lock_guard lock(impl_->mu);
  return impl_->max_open;
}

int TestHttpServer::requests() const {
  const std::lock_guard lock(impl_->mu);
  return impl_->requests;
}

std::vector<std::string> TestHttpServer::ranges() const {
  const std::lock_guard lock(impl_->mu);
  return impl_->ranges;
}

std::string TestHttpServer::last_sni() const {
  const std::lock_guard lock(impl_->mu);
  return impl_->sni;
}

asio::awaitable<void> TestHttpServer::Impl::Accept() {
  for (;;) {
    ErrorCode ec;
    tcp::socket socket =
        co_await acceptor.async_accept(asio::redirect_error(asio::use_awaitable, ec));
    if (ec) co_return;
    {
      const std::lock_guard lock(mu);
      ++connections;
      max_open = std::max(max_open, ++open_now);
    }
    asio::co_spawn(io, Session(std::move(socket)), [this](const std::exception_ptr&) {
      const std::lock_guard lock(mu);
      --open_now;
    });
  }
}

asio::awaitable<void> TestHttpServer::Impl::Session(tcp::socket socket) {
  ErrorCode ec;
  if (!tls) {
    beast::tcp_stream stream(std::move(socket));
    co_await Serve(stream);
    stream.socket().shutdown(tcp::socket::shutdown_both, ec);
  } else {
    beast::ssl_stream<beast::tcp_stream> stream(std::move(socket), *tls);
    beast::get_lowest_layer(stream).expires_after(kIoTimeout);
    co_await stream.async_handshake(ssl::stream_base::server,
                                    asio::redirect_error(asio::use_awaitable, ec));
    if (ec) co_return;
    const char* name = SSL_get_servername(stream.native_handle(), TLSEXT_NAMETYPE_host_name);
    {
      const std::lock_guard lock(mu);
      sni = name != nullptr ? name : "";
    }
    co_await Serve(stream);
  }
}

Plan TestHttpServer::Impl::Decide(const http::request<http::empty_body>& req) {
  const std::lock_guard lock(mu);
  ++requests;
  const auto range_field = req[http::field::range];
  const std::string_view range_text(range_field.data(), range_field.size());
  ranges.emplace_back(range_text);
  const auto target = req.target();
  Plan plan;
  const std::string common = "Connection: close\r\nServer: sag-test\r\n";

  if (const auto it = faults.redirects.find(std::string(target.data(), target.size()));
      it != faults.redirects.end()) {
    plan.header =
        StatusLine(302) + "Location: " + it->second + "\r\nContent-Length: 0\r\n" + common + "\r\n";
    return plan;
  }
  if (faults.fail_status != 0 && fails_skipped < faults.fail_skip) {
    ++fails_skipped;
  } else if (faults.fail_status != 0 && (faults.fail_times < 0 || fails_done < faults.fail_times)) {
    ++fails_done;
    const std::string body = "failing on purpose\n";
    plan.header =
        StatusLine(faults.fail_status) + "Content-Length: " + std::to_string(body.size()) + "\r\n" +
        common + (faults.retry_after.empty() ? "" : "Retry-After: " + faults.retry_after + "\r\n") +
        "\r\n" + body;
    return plan;
  }

  const std::uint64_t size = content.size();
  const std::string etag = faults.etag.empty() ? "" : "ETag: " + faults.etag + "\r\n";
  const auto range = faults.ignore_range ? std::nullopt : ParseRange(range_text);
  if (range && range->first >= size) {
    plan.header = StatusLine(416) + "Content-Range: bytes */" + std::to_string(size) +
                  "\r\nContent-Length: 0\r\n" + common + "\r\n";
    return plan;
  }
  if (range) {
    const std::uint64_t last =
        std::min(range->second.value_or(size - 1) + faults.range_extra, size - 1);
    plan.body_first = range->first;
    plan.body_size = last - range->first + 1;
    const auto shown_first = static_cast<std::uint64_t>(static_cast<std::int64_t>(range->first) +
                                                        faults.range_start_shift);
    plan.header = StatusLine(206) + "Content-Range: bytes " + std::to_string(shown_first) + "-" +
                  std::to_string(last) + "/" + std::to_string(size) + "\r\n";
  } else {
    plan.body_size = size;
    plan.header = StatusLine(200);
  }
  plan.header += "Content-Length: " + std::to_string(plan.body_size) + "\r\n" +
                 "Accept-Ranges: bytes\r\n" + etag + common + "\r\n";
  if (drops_done < faults.drop_times) {
    ++drops_done;
    plan.drop_after = faults.drop_after;
  }
  plan.trickle_bytes = faults.trickle_bytes;
  plan.respond_after = faults.respond_after;
  plan.trickle_every = faults.trickle_every;
  if (stalls_done < faults.stall_times) {
    ++stalls_done;
    plan.stall_after = faults.stall_after;
    plan.stall_for = faults.stall_for;
  }
  return plan;
}

template <typename Stream>
asio::awaitable<void> TestHttpServer::Impl::Serve(Stream& stream) {
  auto& lowest = beast::get_lowest_layer(stream);
  ErrorCode ec;
  beast::flat_buffer buffer;
  http::request<http::empty_body> req;
  lowest.expires_after(kIoTimeout);
  co_await http::async_read(stream, buffer, req, asio::redirect_error(asio::use_awaitable, ec));
  if (ec) co_return;
  const Plan plan = Decide(req);
  if (plan.respond_after.count() > 0) {
    asio::steady_timer timer(co_await asio::this_coro::executor);
    timer.expires_after(plan.respond_after);
    co_await timer.async_wait(asio::redirect_error(asio::use_awaitable, ec));
  }

  lowest.expires_after(kIoTimeout);
  co_await asio::async_write(stream, asio::buffer(plan.header),
                             asio::redirect_error(asio::use_awaitable, ec));
  if (ec) co_return;
  std::uint64_t sent = 0;
  bool stalled = false;
  while (sent < plan.body_size) {
    std::uint64_t n = std::min<std::uint64_t>(kWriteChunk, plan.body_size - sent);
    if (plan.drop_after) {
      if (sent >= *plan.drop_after) {
        lowest.close();  // no close_notify: the client sees a truncated stream
        co_return;
      }
      n = std::min(n, *plan.drop_after - sent);
    }
    if (plan.stall_after && !stalled) {
      if (sent >= *plan.stall_after) {
        stalled = true;
        asio::steady_timer timer(co_await asio::this_coro::executor);
        timer.expires_after(plan.stall_for);
        co_await timer.async_wait(asio::redirect_error(asio::use_awaitable, ec));
        continue;
      }
      n = std::min(n, *plan.stall_after - sent);
    }
    if (plan.trickle_bytes > 0) {
      n = std::min(n, plan.trickle_bytes);
      asio::steady_timer timer(co_await asio::this_coro::executor);
      timer.expires_after(plan.trickle_every);
      co_await timer.async_wait(asio::redirect_error(asio::use_awaitable, ec));
    }
    lowest.expires_after(kIoTimeout);
    co_await asio::async_write(
        stream, asio::buffer(content.data() + plan.body_first + sent, static_cast<std::size_t>(n)),
        asio::redirect_error(asio::use_awaitable, ec));
    if (ec) co_return;
    sent += n;
  }
  if constexpr (!std::is_same_v<Stream, beast::tcp_stream>) {
    lowest.expires_after(kIoTimeout);
    co_await stream.async_shutdown(asio::redirect_error(asio::use_awaitable, ec));
  }
}

Expected<TestPki> MakeTestPki(const std::filesystem::path& dir) {
  const auto p = [&](const std::string& name) { return (dir / name).string(); };
  {
    // A minimal config so that -addext does not collide with the defaults.
    std::ofstream cfg(p("openssl.cnf"));
    cfg << "[req]\ndistinguished_name = dn\nprompt = no\n[dn]\nCN = unused\n";
    if (!cfg) return Error(Errc::kIo, "writing " + p("openssl.cnf"));
  }
  const auto run = [&](const std::vector<std::string>& argv) { return CheckCommand(argv); };
  const auto make_ca = [&](const std::string& name) {
    return run({"openssl",
                "req",
                "-x509",
                "-config",
                p("openssl.cnf"),
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                p(name + ".key"),
                "-out",
                p(name + ".pem"),
                "-days",
                "2",
                "-subj",
                "/CN=" + name,
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign"});
  };
  const auto make_leaf = [&](const std::string& name, const std::string& ca,
                             const std::string& ext) -> Status {
    SAG_TRY_STATUS(run({"openssl", "req", "-new", "-config", p("openssl.cnf"), "-newkey", "ec",
                        "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout",
                        p(name + ".key"), "-out", p(name + ".csr"), "-subj", "/CN=" + name}));
    {
      std::ofstream f(p(name + ".ext"));
      f << ext;
      if (!f) return Error(Errc::kIo, "writing " + p(name + ".ext"));
    }
    return run({"openssl", "x509", "-req", "-in", p(name + ".csr"), "-CA", p(ca + ".pem"), "-CAkey",
                p(ca + ".key"), "-CAcreateserial", "-days", "2", "-out", p(name + ".pem"),
                "-extfile", p(name + ".ext")});
  };
  const std::string server_ext =
      "basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
      "subjectAltName=IP:127.0.0.1,DNS:localhost\n";
  SAG_TRY_STATUS(make_ca("ca"));
  SAG_TRY_STATUS(make_ca("rogue-ca"));
  SAG_TRY_STATUS(make_leaf("server", "ca", server_ext));
  SAG_TRY_STATUS(make_leaf("wrong-host", "ca",
                           "basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
                           "subjectAltName=DNS:wrong.example\n"));
  SAG_TRY_STATUS(make_leaf("rogue-server", "rogue-ca", server_ext));
  SAG_TRY_STATUS(
      make_leaf("client", "ca", "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n"));
  TestPki pki;
  pki.ca_cert = p("ca.pem");
  pki.server_cert = p("server.pem");
  pki.server_key = p("server.key");
  pki.wrong_host_cert = p("wrong-host.pem");
  pki.wrong_host_key = p("wrong-host.key");
  pki.rogue_ca_cert = p("rogue-ca.pem");
  pki.rogue_server_cert = p("rogue-server.pem");
  pki.rogue_server_key = p("rogue-server.key");
  pki.client_cert = p("client.pem");
  pki.client_key = p("client.key");
  return pki;
}

}  // namespace sag::test
