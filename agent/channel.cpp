// The device channel's client. All of the agent's Beast/Asio template code
// for the channel is in this translation unit (see channel.h for the
// contract).
//
// Shape: Impl::Run loops connect -> live -> backoff until Stop(). One
// Connection per attempt, with three coroutines on the io_context's thread:
// Run (resolve, connect, TLS, upgrade, hello, then the read loop), Writer
// (drains the send queue, then the close handshake) and Watchdog (every
// deadline: each step, each write, the close, silence; and our heartbeats).
// The watchdog enforces a deadline by closing the TCP socket, which ends
// every pending operation of the connection.

// Boost 1.74 enables co_await for clang only with the Coroutines TS; clang 14
// in C++20 mode (clang-tidy) has standard coroutines, as GCC does.
#if defined(__clang__) && !defined(BOOST_ASIO_HAS_CO_AWAIT)
#define BOOST_ASIO_HAS_CO_AWAIT 1
#endif

#include "agent/channel.h"

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <array>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/address.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>
#include <boost/beast/websocket.hpp>
#include <boost/beast/websocket/ssl.hpp>
#include <ctime>
#include <deque>
#include <exception>
#include <utility>

#include "agent/hello_gate.h"
#include "common/net/tls.h"
#include "common/parse_decimal.h"

namespace sag::agent {

namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace websocket = beast::websocket;
namespace ssl = asio::ssl;
using tcp = asio::ip::tcp;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;
using ErrorCode = boost::system::error_code;
using Ws = websocket::stream<beast::ssl_stream<beast::tcp_stream>>;

constexpr int kSilenceFactor = 3;  // docs/protocol.md: 3 x heartbeat without traffic
constexpr std::size_t kMaxQueued = 4096;
constexpr std::size_t kMaxMalformed = 10;

std::string UtcNow() {
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  std::array<char, 32> buf{};
  const std::size_t n = std::strftime(buf.data(), buf.size(), "%Y-%m-%dT%H:%M:%SZ", &tm);
  return {buf.data(), n};
}

struct Endpoint {
  std::string host;  // IPv6 without brackets
  std::uint16_t port = 443;
  std::string path;
  bool ip = false;
  [[nodiscard]] std::string Authority() const {
    const std::string h = host.find(':') != std::string::npos ? "[" + host + "]" : host;
    return h + ":" + std::to_string(port);
  }
};

Expected<Endpoint> ParseEndpoint(std::string_view text) {
  const auto bad = [&](std::string_view why) {
    return Error(Errc::kInvalidArgument, "cloud.endpoint '" + std::string(text) +
                                             "': " + std::string(why) +
                                             "; expected wss://host[:port]/device/v1");
  };
  if (!text.starts_with("wss://")) return bad("the scheme must be wss://");
  std::string_view rest = text.substr(6);
  const std::size_t slash = rest.find('/');
  const std::string_view authority = rest.substr(0, slash);
  Endpoint ep;
  ep.path = slash == std::string_view::npos ? "/" : std::string(rest.substr(slash));
  std::string_view port;
  if (authority.starts_with("[")) {
    const std::size_t close = authority.find(']');
    if (close == std::string_view::npos) return bad("unterminated IPv6 literal");
    ep.host = std::string(authority.substr(1, close - 1));
    const std::string_view after = authority.substr(close + 1);
    if (!after.empty()) {
      if (!after.starts_with(":")) return bad("junk after the IPv6 literal");
      port = after.substr(1);
    }
  } else {
    const std::size_t colon = authority.rfind(':');
    ep.host = std::string(authority.substr(0, colon));
    if (colon != std::string_view::npos) port = authority.substr(colon + 1);
  }
  if (ep.host.empty()) return bad("no host");
  if (!port.empty()) {
    const auto value = ParseDecimal<unsigned>(port);
    if (!value || *value == 0 || *value > 65535) return bad("port must be 1..65535");
    ep.port = static_cast<std::uint16_t>(*value);
  }
  ErrorCode ec;
  (void)asio::ip::make_address(ep.host, ec);
  ep.ip = !ec;
  return ep;
}

// An alert by which the server says it does not accept our certificate.
bool IsCertificateRejected(const ErrorCode& ec) {
  if (ec.category() != asio::error::get_ssl_category()) return false;
  switch (ERR_GET_REASON(static_cast<unsigned long>(ec.value()))) {
    case SSL_R_TLSV13_ALERT_CERTIFICATE_REQUIRED:
    case SSL_R_SSLV3_ALERT_BAD_CERTIFICATE:
    case SSL_R_SSLV3_ALERT_CERTIFICATE_UNKNOWN:
    case SSL_R_SSLV3_ALERT_CERTIFICATE_EXPIRED:
    case SSL_R_SSLV3_ALERT_CERTIFICATE_REVOKED:
    case SSL_R_SSLV3_ALERT_UNSUPPORTED_CERTIFICATE:
    case SSL_R_TLSV1_ALERT_UNKNOWN_CA:
    case SSL_R_TLSV1_ALERT_ACCESS_DENIED:
      return true;
    default:
      return false;
  }
}

proto::Body ToBody(const OutgoingReport& r) {
  return std::visit([](const auto& m) { return proto::Body(m); }, r);
}

}  // namespace

std::uint64_t SeqOf(const OutgoingReport& report) {
  return std::visit([](const auto& m) { return m.seq; }, report);
}

milliseconds BackoffDelay(int n, milliseconds initial, milliseconds max, std::mt19937_64& rng) {
  const int shift = std::clamp(n - 1, 0, 30);
  const std::int64_t cap = std::max<std::int64_t>(max.count(), 1);
  const std::int64_t base = std::max<std::int64_t>(initial.count(), 1);
  const std::int64_t window = base > (cap >> shift) ? cap : std::min(cap, base << shift);
  std::uniform_int_distribution<std::int64_t> pick(0, window);
  return milliseconds(pick(rng));
}

class Connection;

struct Channel::Impl : std::enable_shared_from_this<Channel::Impl> {
  Impl(asio::io_context& io_context, ChannelOptions o, ChannelHost& h)
      : io(io_context),
        options(std::move(o)),
        host(h),
        rng(options.seed != 0 ? options.seed : std::random_device{}()),
        backoff(io_context) {}

  asio::awaitable<void> Run();
  void SetOnline(bool online) {
    if (status.online == online) return;
    status.online = online;
    status.since = UtcNow();
    host.OnChannelChange(online);
  }
  // Passes an ack of our epoch to the host, once per increase.
  void AckUpTo(const std::string& epoch, std::uint64_t seq) {
    if (epoch != acked_epoch) {
      acked_epoch = epoch;
      acked_seq = 0;
    }
    if (seq <= acked_seq) return;
    acked_seq = seq;
    host.Acked(seq);
  }

  asio::io_context& io;
  ChannelOptions options;
  ChannelHost& host;
  std::mt19937_64 rng;
  Endpoint endpoint;
  std::unique_ptr<ssl::context> tls;
  asio::steady_timer backoff;
  bool started = false;
  bool stopped = false;
  std::shared_ptr<Connection> conn;
  ChannelStatus status;
  std::string acked_epoch;
  std::uint64_t acked_seq = 0;
};

class Connection : public std::enable_shared_from_this<Connection> {
 public:
  explicit Connection(std::shared_ptr<Channel::Impl> ch)
      : ch_(std::move(ch)),
        resolver_(ch_->io),
        ws_(beast::tcp_stream(ch_->io), *ch_->tls),
        watchdog_(ch_->io),
        signal_(ch_->io) {}

  // The whole life of one connection; returns why it ended.
  asio::awaitable<Error> Run();
  void Send(proto::Body body, std::string re = {});
  void SendRaw(std::string frame, bool binary);
  void Close(websocket::close_code code, std::string reason);
  void Kill(Error why);
  void SendPending();

  [[nodiscard]] bool up() const { return up_; }

 private:
  struct Frame {
    std::string data;
    bool binary = false;
  };
  asio::awaitable<std::optional<Error>> Open();
  asio::awaitable<void> Writer();
  asio::awaitable<void> Watchdog();
  void Rearm() { watchdog_.cancel(); }
  void Handle(std::string_view text);
  void Step() { step_deadline_ = Clock::now() + ch_->options.connect_timeout; }

  std::shared_ptr<Channel::Impl> ch_;
  tcp::resolver resolver_;
  Ws ws_;
  asio::steady_timer watchdog_;
  asio::steady_timer signal_;
  std::deque<Frame> queue_;
  std::optional<std::pair<websocket::close_code, std::string>> close_;
  std::optional<Error> end_;  // set by Kill
  bool upgraded_ = false;
  bool up_ = false;
  bool dead_ = false;
  bool host_mismatch_ = false;
  std::size_t malformed_ = 0;
  std::uint64_t next_id_ = 1;
  std::string epoch_;            // of our hello
  std::uint64_t last_sent_ = 0;  // highest report seq sent on this connection
  std::uint32_t server_heartbeat_s_ = 0;
  std::optional<Clock::time_point> step_deadline_;
  std::optional<Clock::time_point> write_started_;
  std::optional<Clock::time_point> close_started_;
  Clock::time_point last_rx_ = Clock::now();
  Clock::time_point last_tx_ = Clock::now();
};

// --- Connection ----------------------------------------------------------

void Connection::Send(proto::Body body, std::string re) {
  SendRaw(proto::Encode({"d" + std::to_string(next_id_++), std::move(re), std::move(body)}), false);
}

void Connection::SendRaw(std::string frame, bool binary) {
  if (dead_ || close_ || !upgraded_) return;
  if (queue_.size() >= kMaxQueued) {
    Kill(Error(Errc::kChannelTimeout, "the gateway does not read its messages"));
    return;
  }
  queue_.push_back({std::move(frame), binary});
  last_tx_ = Clock::now();
  signal_.cancel();
}

void Connection::Close(websocket::close_code code, std::string reason) {
  if (dead_ || close_) return;
  if (!upgraded_) {
    Kill(Error(Errc::kCancelled, "stopped"));
    return;
  }
  close_.emplace(code, std::move(reason));
  signal_.cancel();
}

void Connection::Kill(Error why) {
  if (dead_) return;
  dead_ = true;
  if (!end_) end_ = std::move(why);
  ErrorCode ec;
  resolver_.cancel();
  beast::get_lowest_layer(ws_).socket().close(ec);
  signal_.cancel();
  watchdog_.cancel();
}

void Connection::SendPending() {
  if (!up_ || dead_) return;
  for (const OutgoingReport& r : ch_->host.Pending()) {
    const std::uint64_t seq = SeqOf(r);
    if (seq <= last_sent_) continue;
    Send(ToBody(r));
    last_sent_ = seq;
  }
}

asio::awaitable<std::optional<Error>> Connection::Open() {
  const Endpoint& ep = ch_->endpoint;
  const std::string where = ep.Authority();
  ErrorCode ec;
  Step();
  Rearm();
  const auto results = co_await resolver_.async_resolve(
      ep.host, std::to_string(ep.port), asio::redirect_error(asio::use_awaitable, ec));
  if (ec || dead_) {
    co_return Error(Errc::kNetConnect, "resolving " + ep.host + ": " + ec.message());
  }
  Step();
  co_await beast::get_lowest_layer(ws_).async_connect(
      results, asio::redirect_error(asio::use_awaitable, ec));
  if (ec || dead_)
    co_return Error(Errc::kNetConnect, "connecting to " + where + ": " + ec.message());
  ErrorCode ignored;
  beast::get_lowest_layer(ws_).socket().set_option(tcp::no_delay(true), ignored);

  // SNI only for names (RFC 6066); the certificate check covers both: DNS
  // names against dNSName SANs, addresses against iPAddress SANs.
  if (!ep.ip && SSL_set_tlsext_host_name(ws_.next_layer().native_handle(), ep.host.c_str()) != 1) {
    co_return Error(Errc::kNetTls, "cannot set the server name '" + ep.host + "' (SNI)");
  }
  ws_.next_layer().set_verify_callback(
      [this, check = ssl::host_name_verification(ep.host)](bool preverified,
                                                           ssl::verify_context& ctx) {
        const bool ok = check(preverified, ctx);
        if (preverified && !ok) host_mismatch_ = true;
        return ok;
      },
      ec);
  if (ec) co_return Error(Errc::kNetTls, "TLS with " + where + ": " + ec.message());
  Step();
  co_await ws_.next_layer().async_handshake(ssl::stream_base::client,
                                            asio::redirect_error(asio::use_awaitable, ec));
  if (ec || dead_) {
    if (IsCertificateRejected(ec)) {
      co_return Error(Errc::kChannelRefused,
                      "the gateway " + where + " refused the device certificate " +
                          ch_->options.device_cert.string() + " (" + ec.message() +
                          "); check that it is issued by the fleet's device CA and not expired");
    }
    const long verify = SSL_get_verify_result(ws_.next_layer().native_handle());
    if (host_mismatch_) {
      co_return Error(Errc::kNetTls, "the gateway's certificate is not valid for '" + ep.host +
                                         "'; check cloud.endpoint");
    }
    if (ec.category() == asio::error::get_ssl_category() && verify != X509_V_OK) {
      co_return Error(Errc::kNetTls, std::string("the gateway's certificate is not trusted (") +
                                         X509_verify_cert_error_string(verify) +
                                         "); it must chain to the pinned root " +
                                         ch_->options.root_ca.string());
    }
    co_return Error(Errc::kNetConnect, "TLS handshake with " + where + ": " + ec.message());
  }
  Step();
  ws_.read_message_max(proto::kMaxMessageBytes);
  ws_.set_option(websocket::stream_base::decorator([](websocket::request_type& req) {
    req.set(http::field::user_agent, "sag-agent/" SAG_VERSION);
  }));
  websocket::response_type res;
  co_await ws_.async_handshake(res, where, ep.path, asio::redirect_error(asio::use_awaitable, ec));
  if (ec || dead_) {
    // TLS 1.3: the gateway's verdict on our certificate arrives after our
    // side of the handshake, on the first read.
    if (IsCertificateRejected(ec)) {
      co_return Error(Errc::kChannelRefused,
                      "the gateway " + where + " refused the device certificate " +
                          ch_->options.device_cert.string() + " (" + ec.message() +
                          "); check that it is issued by the fleet's device CA and not expired");
    }
    if (res.result() == http::status::forbidden) {
      co_return Error(Errc::kChannelRefused,
                      "the gateway " + where +
                          " refused this device (HTTP 403): its serial number (the certificate's "
                          "CN) is not registered there");
    }
    if (res.result_int() != 0 && res.result() != http::status::switching_protocols) {
      co_return Error(Errc::kNetProtocol, "the gateway " + where + " answered the upgrade to " +
                                              ep.path + " with HTTP " +
                                              std::to_string(res.result_int()));
    }
    co_return Error(Errc::kNetConnect, "WebSocket upgrade with " + where + ": " + ec.message());
  }
  co_return std::nullopt;
}

asio::awaitable<Error> Connection::Run() {
  auto self = shared_from_this();
  asio::co_spawn(ch_->io, Watchdog(), [self](const std::exception_ptr&) {});
  if (auto failed = co_await Open()) {
    Kill(*failed);
    co_return *end_;
  }
  upgraded_ = true;
  asio::co_spawn(ch_->io, Writer(), [self](const std::exception_ptr&) {});
  proto::Hello hello = ch_->host.MakeHello();
  epoch_ = hello.outbox_epoch;
  Send(std::move(hello));
  Step();  // hello.ack within connect_timeout
  last_rx_ = Clock::now();
  Rearm();
  beast::flat_buffer buffer;
  for (;;) {
    ErrorCode ec;
    buffer.clear();
    co_await ws_.async_read(buffer, asio::redirect_error(asio::use_awaitable, ec));
    if (dead_) break;
    if (ec) {
      const auto& reason = ws_.reason();
      if (ec == websocket::error::closed) {
        ch_->status.last_close_code = static_cast<int>(reason.code);
        Kill(Error(Errc::kChannelClosed, "the gateway closed the channel (" +
                                             std::to_string(reason.code) + " " +
                                             std::string(reason.reason.c_str()) + ")"));
      } else {
        Kill(Error(Errc::kChannelClosed, "the channel broke: " + ec.message()));
      }
      break;
    }
    last_rx_ = Clock::now();
    if (!ws_.got_text()) {
      Send(proto::ProtocolError{"Malformed", "binary frames are not accepted; send text"});
      Close(websocket::close_code::bad_payload, "binary frame");
      continue;
    }
    const auto data = buffer.data();
    Handle({static_cast<const char*>(data.data()), data.size()});
  }
  Kill(Error(Errc::kChannelClosed, "closed"));
  if (up_) ch_->SetOnline(false);
  co_return *end_;
}

asio::awaitable<void> Connection::Writer() {
  auto self = shared_from_this();
  while (!dead_) {
    ErrorCode ec;
    if (!queue_.empty()) {
      write_started_ = Clock::now();
      Rearm();
      ws_.binary(queue_.front().binary);
      co_await ws_.async_write(asio::buffer(queue_.front().data),
                               asio::redirect_error(asio::use_awaitable, ec));
      write_started_.reset();
      if (ec) {
        Kill(Error(Errc::kChannelClosed, "writing to the gateway: " + ec.message()));
        break;
      }
      queue_.pop_front();
      continue;
    }
    if (close_) {
      close_started_ = Clock::now();
      Rearm();
      // WebSocket close, then TLS close_notify (Beast's teardown).
      co_await ws_.async_close(websocket::close_reason(close_->first, close_->second),
                               asio::redirect_error(asio::use_awaitable, ec));
      Kill(Error(Errc::kCancelled, "closed by the device"));
      break;
    }
    signal_.expires_at(Clock::time_point::max());
    co_await signal_.async_wait(asio::redirect_error(asio::use_awaitable, ec));
  }
}

asio::awaitable<void> Connection::Watchdog() {
  auto self = shared_from_this();
  const auto& o = ch_->options;
  while (!dead_) {
    const auto now = Clock::now();
    auto next = Clock::time_point::max();
    const auto due = [&](Clock::time_point at) {
      next = std::min(next, at);
      return now >= at;
    };
    if (step_deadline_ && due(*step_deadline_)) {
      Kill(Error(Errc::kChannelTimeout,
                 std::string(upgraded_ ? "no hello.ack" : "connecting to the gateway: no answer") +
                     " within " + std::to_string(o.connect_timeout.count()) +
                     " ms (cloud.connect_timeout)"));
      break;
    }
    if (write_started_ && due(*write_started_ + o.connect_timeout)) {
      Kill(Error(Errc::kChannelTimeout, "a write to the gateway did not complete within " +
                                            std::to_string(o.connect_timeout.count()) + " ms"));
      break;
    }
    if (close_started_ && due(*close_started_ + o.close_timeout)) {
      Kill(Error(Errc::kCancelled, "the gateway did not answer the close; dropped"));
      break;
    }
    if (up_) {
      const auto silence =
          kSilenceFactor *
          std::max<milliseconds>(o.heartbeat, std::chrono::seconds(server_heartbeat_s_));
      if (due(last_rx_ + silence)) {
        Kill(Error(Errc::kChannelTimeout,
                   "no message from the gateway for " + std::to_string(silence.count()) + " ms"));
        break;
      }
      if (!close_ && due(last_tx_ + o.heartbeat)) {
        Send(proto::Heartbeat{UtcNow()});
        next = std::min(next, last_tx_ + o.heartbeat);
      }
    }
    ErrorCode ec;
    watchdog_.expires_at(next);
    co_await watchdog_.async_wait(asio::redirect_error(asio::use_awaitable, ec));
  }
}

void Connection::Handle(std::string_view text) {
  auto decoded = proto::Decode(text);
  if (!decoded) {
    const Error& e = decoded.error();
    spdlog::warn("channel: bad message from the gateway: {}", e.ToString());
    Send(proto::ProtocolError{std::string(proto::ErrorCodeFor(e)), e.message()});
    if (e.code() == Errc::kProtocol && ++malformed_ > kMaxMalformed) {
      Close(websocket::close_code::policy_error, "too many malformed messages");
    }
    return;
  }
  const proto::Message& m = *decoded;
  std::visit(
      [&](const auto& body) {
        using T = std::decay_t<decltype(body)>;
        ChannelHost& host = ch_->host;
        if constexpr (std::is_same_v<T, proto::HelloAck>) {
          if (up_) return;
          up_ = true;
          step_deadline_.reset();
          Rearm();  // heartbeats and the silence check start now
          server_heartbeat_s_ = body.heartbeat_s;
          ChannelStatus& st = ch_->status;
          st.server_time = body.server_time;
          st.failures = 0;
          st.last_error.reset();
          ++st.connects;
          spdlog::info("channel: up with {} (reports recorded up to #{})",
                       ch_->endpoint.Authority(), body.acked_seq);
          // The cloud answered hello: only now does the trial boot's
          // health.require_cloud check pass.
          if (ch_->options.hello_gate != nullptr) ch_->options.hello_gate->Answered();
          ch_->SetOnline(true);
          if (body.acked_epoch == epoch_) {
            ch_->AckUpTo(epoch_, body.acked_seq);
            last_sent_ = body.acked_seq;
          }
          SendPending();
        } else if constexpr (std::is_same_v<T, proto::Heartbeat>) {
          ch_->status.server_time = body.time;
        } else if constexpr (std::is_same_v<T, proto::Ack>) {
          if (body.epoch == epoch_) ch_->AckUpTo(epoch_, body.seq);
        } else if constexpr (std::is_same_v<T, proto::Job>) {
          std::weak_ptr<Connection> weak = weak_from_this();
          host.OnJob(body, [weak, re = m.id](proto::JobAck ack) {
            if (auto c = weak.lock()) c->Send(std::move(ack), re);
          });
        } else if constexpr (std::is_same_v<T, proto::Cancel>) {
          std::weak_ptr<Connection> weak = weak_from_this();
          host.OnCancel(body, [weak, re = m.id](proto::CancelAck ack) {
            if (auto c = weak.lock()) c->Send(std::move(ack), re);
          });
        } else if constexpr (std::is_same_v<T, proto::ProtocolError>) {
          ++ch_->status.errors_received;
          ch_->status.last_error_code = body.code;
          spdlog::warn("channel: the gateway reports {}: {}", body.code, body.message);
        } else {
          Send(proto::ProtocolError{"OutOfOrder", "'" + std::string(proto::TypeName(m.body)) +
                                                      "' is sent by the device, not to it"},
               m.id);
        }
      },
      m.body);
}

// --- Channel -------------------------------------------------------------

asio::awaitable<void> Channel::Impl::Run() {
  auto self = shared_from_this();
  while (!stopped) {
    conn = std::make_shared<Connection>(self);
    auto c = conn;
    Error why = co_await c->Run();
    const bool was_up = c->up();
    if (conn == c) conn.reset();
    if (stopped) break;
    status.failures = was_up ? 1 : status.failures + 1;
    const milliseconds delay =
        BackoffDelay(status.failures, options.initial_backoff, options.max_backoff, rng);
    status.next_delay = delay;
    spdlog::warn("channel: {}; next attempt in {} ms (attempt {})", why.ToString(), delay.count(),
                 status.failures);
    if (options.hello_gate != nullptr) options.hello_gate->Failed(why);
    status.last_error = std::move(why);
    host.OnReconnectScheduled(delay, status);
    backoff.expires_after(delay);
    ErrorCode ec;
    co_await backoff.async_wait(asio::redirect_error(asio::use_awaitable, ec));
  }
}

Channel::Channel(asio::io_context& io, ChannelOptions options, ChannelHost& host)
    : impl_(std::make_shared<Impl>(io, std::move(options), host)) {}

Channel::~Channel() { Stop(); }

Status Channel::Start() {
  if (impl_->started) return Error(Errc::kInvalidArgument, "the channel is started already");
  try {
    SAG_TRY(impl_->endpoint, ParseEndpoint(impl_->options.endpoint));
    if (impl_->options.device_cert.empty()) {
      return Error(Errc::kInvalidArgument,
                   "the channel needs the device certificate and key (pki.device_cert, "
                   "pki.device_key)");
    }
    SAG_TRY(impl_->tls,
            net::MakeTlsClientContext(
                {impl_->options.root_ca, impl_->options.device_cert, impl_->options.device_key}));
    impl_->started = true;
    if (impl_->options.hello_gate != nullptr) impl_->options.hello_gate->Expect();
    asio::co_spawn(impl_->io, impl_->Run(), [](const std::exception_ptr& e) {
      if (!e) return;
      try {
        std::rethrow_exception(e);
      } catch (const std::exception& ex) {
        spdlog::error("channel: stopped by an unexpected failure: {}", ex.what());
      }
    });
    return Ok();
  } catch (const std::exception& e) {
    return Error(Errc::kInternal, std::string("starting the channel: ") + e.what());
  }
}

void Channel::Stop() {
  if (impl_->stopped) return;
  impl_->stopped = true;
  impl_->backoff.cancel();
  if (impl_->options.hello_gate != nullptr) {
    impl_->options.hello_gate->Abandon(Error(Errc::kCancelled, "the agent is stopping"));
  }
  if (impl_->conn) impl_->conn->Close(websocket::close_code::normal, "device stopping");
}

void Channel::ReportsAvailable() {
  if (impl_->conn) impl_->conn->SendPending();
}

ChannelStatus Channel::status() const { return impl_->status; }

void Channel::SendRawForTest(std::string frame, bool binary) {
  if (impl_->conn) impl_->conn->SendRaw(std::move(frame), binary);
}

}  // namespace sag::agent
