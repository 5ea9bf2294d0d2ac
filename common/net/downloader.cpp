// The HTTPS downloader. All Beast/Asio template code of the project's
// downloads lives in this one translation unit on purpose: it is the slowest
// thing to compile, and the interface (downloader.h) needs none of it.
//
// Shape: Fetch() builds the TLS context, then runs one coroutine (Run) on a
// private io_context: Run retries Attempt with backoff; Attempt follows
// redirects, one connection per hop; Exchange sends the request and streams
// the body through a fixed buffer into the sink. A second coroutine (Watch)
// polls the cancel flag and aborts whatever operation is pending.
#include "common/net/downloader.h"

// Boost 1.74 enables co_await for clang only with the Coroutines TS; clang 14
// in C++20 mode (clang-tidy) has standard coroutines, as GCC does.
#if defined(__clang__) && !defined(BOOST_ASIO_HAS_CO_AWAIT)
#define BOOST_ASIO_HAS_CO_AWAIT 1
#endif

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/address.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>
#include <cctype>
#include <exception>
#include <limits>
#include <memory>
#include <random>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include "common/net/tls.h"
#include "common/parse_decimal.h"
#include "common/redact.h"

namespace sag::net {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace ssl = asio::ssl;
using tcp = asio::ip::tcp;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;
using ErrorCode = boost::system::error_code;
using SslStream = beast::ssl_stream<beast::tcp_stream>;

// The body goes through one buffer of this size: memory does not depend on
// the size of the file.
constexpr std::size_t kBufferSize = 64U << 10U;
// Beast's read buffer (headers, and body bytes not yet handed to the sink).
constexpr std::size_t kReadBufferLimit = 64U << 10U;
constexpr std::uint32_t kHeaderLimit = 16U << 10U;
constexpr milliseconds kCancelPoll{50};
// After the body has arrived, waiting for the server's close_notify is a
// courtesy; it must not delay the result.
constexpr milliseconds kShutdownTimeout{1000};

// Bandwidth pacing: the read after `n` bytes may start n/rate seconds after
// the previous one (a virtual-clock token bucket). Idle time earns at most
// kBurst of credit, so a pause cannot be followed by an unlimited burst; a
// late wake-up (a loaded machine) is caught up within that credit.
constexpr Clock::duration kBurst = milliseconds(50);
// Each read asks for about 1/50 s of data so the pacing is fine-grained.
constexpr std::uint64_t kReadsPerSecond = 50;
constexpr std::size_t kMinPacedRead = 512;

bool IEquals(std::string_view a, std::string_view b) {
  return std::equal(a.begin(), a.end(), b.begin(), b.end(), [](char x, char y) {
    return std::tolower(static_cast<unsigned char>(x)) ==
           std::tolower(static_cast<unsigned char>(y));
  });
}

bool IStartsWith(std::string_view s, std::string_view prefix) {
  return s.size() >= prefix.size() && IEquals(s.substr(0, prefix.size()), prefix);
}

// A header value as std::string_view (Beast 1.74 has its own string_view).
template <typename Fields>
std::string_view Field(const Fields& fields, http::field name) {
  const auto v = fields[name];
  return {v.data(), v.size()};
}

// ---------------------------------------------------------------------------
// URLs: just what an image repository needs (scheme, host, port, target).

struct Url {
  bool https = false;
  std::string host;  // IPv6 literals without brackets
  std::uint16_t port = 0;
  std::string target;  // path and query, starts with '/'

  [[nodiscard]] bool IsIpLiteral() const {
    ErrorCode ec;
    (void)asio::ip::make_address(host, ec);
    return !ec;
  }
  // host[:port] as in the Host header; the port only when not the default.
  [[nodiscard]] std::string Authority() const {
    std::string out = host.find(':') != std::string::npos ? "[" + host + "]" : host;
    if (port != (https ? 443 : 80)) out += ":" + std::to_string(port);
    return out;
  }
  [[nodiscard]] std::string ToString() const {
    return (https ? "https://" : "http://") + Authority() + target;
  }
  bool operator==(const Url&) const = default;
};

Expected<Url> ParseUrl(std::string_view text) {
  const auto bad = [&](std::string_view why) {
    return Error(Errc::kInvalidArgument, "invalid download URL '" + std::string(text) +
                                             "': " + std::string(why) +
                                             "; expected https://host[:port]/path");
  };
  Url url;
  std::string_view rest;
  if (IStartsWith(text, "https://")) {
    url.https = true;
    rest = text.substr(8);
  } else if (IStartsWith(text, "http://")) {
    rest = text.substr(7);
  } else {
    return bad("the scheme must be https:// (or http:// in tests)");
  }
  for (const char c : text) {
    if (static_cast<unsigned char>(c) <= 0x20 || c == 0x7f) {
      return bad("spaces and control characters must be percent-encoded");
    }
  }
  const std::size_t end_of_authority = rest.find_first_of("/?#");
  const std::string_view authority = rest.substr(0, end_of_authority);
  std::string target(end_of_authority == std::string_view::npos ? std::string_view("/")
                                                                : rest.substr(end_of_authority));
  target = target.substr(0, target.find('#'));
  if (target.empty() || target.front() != '/') target.insert(0, "/");
  if (authority.empty()) return bad("no host");
  if (authority.find('@') != std::string_view::npos) return bad("credentials in URLs are refused");

  std::string_view host;
  std::string_view port;
  if (authority.front() == '[') {
    const std::size_t close = authority.find(']');
    if (close == std::string_view::npos) return bad("unterminated IPv6 literal");
    host = authority.substr(1, close - 1);
    const std::string_view after = authority.substr(close + 1);
    if (!after.empty()) {
      if (after.front() != ':') return bad("junk after the IPv6 literal");
      port = after.substr(1);
    }
  } else {
    const std::size_t colon = authority.rfind(':');
    host = authority.substr(0, colon);
    if (colon != std::string_view::npos) port = authority.substr(colon + 1);
  }
  if (host.empty()) return bad("no host");
  url.host = std::string(host);
  url.port = url.https ? 443 : 80;
  if (!port.empty()) {
    const auto p = ParseDecimal<std::uint16_t>(port);
    if (!p || *p == 0) return bad("port must be 1..65535");
    url.port = *p;
  }
  url.target = std::move(target);
  return url;
}

// Resolves a Location header against the URL that answered with it
// (absolute, scheme-relative, absolute-path or relative reference).
Expected<Url> ResolveLocation(const Url& base, std::string_view location) {
  if (IStartsWith(location, "https://") || IStartsWith(location, "http://")) {
    return ParseUrl(location);
  }
  if (location.starts_with("//")) {
    return ParseUrl((base.https ? "https:" : "http:") + std::string(location));
  }
  std::string path;
  if (location.starts_with("/")) {
    path = std::string(location);
  } else {
    const std::string_view base_path =
        std::string_view(base.target).substr(0, base.target.find('?'));
    path = std::string(base_path.substr(0, base_path.rfind('/') + 1)) + std::string(location);
  }
  std::string origin = base.ToString();
  origin.resize(origin.size() - base.target.size());
  return ParseUrl(origin + path);
}

// "bytes 10-99/100", "bytes 10-99/*", "bytes */100" (RFC 9110 14.4).
struct ContentRange {
  std::optional<std::uint64_t> first;  // absent for "*/total" (416 answers)
  std::uint64_t last = 0;
  std::optional<std::uint64_t> total;
};

std::optional<ContentRange> ParseContentRange(std::string_view v) {
  if (!IStartsWith(v, "bytes ")) return std::nullopt;
  v.remove_prefix(6);
  const std::size_t slash = v.find('/');
  if (slash == std::string_view::npos) return std::nullopt;
  const std::string_view range = v.substr(0, slash);
  const std::string_view total = v.substr(slash + 1);
  ContentRange out;
  if (total != "*") {
    out.total = ParseDecimal<std::uint64_t>(total);
    if (!out.total) return std::nullopt;
  }
  if (range == "*") return out.total ? std::optional(out) : std::nullopt;
  const std::size_t dash = range.find('-');
  if (dash == std::string_view::npos) return std::nullopt;
  out.first = ParseDecimal<std::uint64_t>(range.substr(0, dash));
  const auto last = ParseDecimal<std::uint64_t>(range.substr(dash + 1));
  if (!out.first || !last || *last < *out.first) return std::nullopt;
  if (out.total && *last >= *out.total) return std::nullopt;
  out.last = *last;
  return out;
}

// ---------------------------------------------------------------------------

class Pacer {
 public:
  explicit Pacer(std::uint64_t rate) : rate_(rate) {}

  [[nodiscard]] std::size_t ReadSize() const {
    if (rate_ == 0) return kBufferSize;
    return static_cast<std::size_t>(
        std::clamp<std::uint64_t>(rate_ / kReadsPerSecond, kMinPacedRead, kBufferSize));
  }
  [[nodiscard]] Clock::duration Delay(Clock::time_point now) const {
    return (rate_ != 0 && next_ > now) ? next_ - now : Clock::duration::zero();
  }
  void Consumed(std::size_t n, Clock::time_point now) {
    if (rate_ == 0) return;
    const auto cost = std::chrono::nanoseconds(static_cast<std::int64_t>(
        static_cast<long double>(n) * 1e9L / static_cast<long double>(rate_)));
    next_ = std::max(next_, now - kBurst) + std::chrono::duration_cast<Clock::duration>(cost);
  }

 private:
  std::uint64_t rate_;
  Clock::time_point next_{};
};

// A failed attempt: the error, and whether another attempt may help.
struct Failure {
  Error error;
  bool retry = false;
  milliseconds retry_after{0};  // from a Retry-After header
};

using MaybeFailure = std::optional<Failure>;

Failure Fatal(Errc code, std::string message) { return {Error(code, std::move(message)), false}; }
Failure Transient(Errc code, std::string message) {
  return {Error(code, std::move(message)), true};
}

// The result of one request/response on one connection.
struct Step {
  enum class Kind { kDone, kRedirect, kFailed };
  Kind kind = Kind::kFailed;
  std::string location;
  MaybeFailure failure;
};

Step Failed(Failure f) { return {Step::Kind::kFailed, {}, std::move(f)}; }

class Fetcher {
 public:
  Fetcher(asio::io_context& io, Url origin, std::uint64_t offset, const Sink& sink,
          const DownloadOptions& options, ssl::context* tls,
          std::optional<std::uint64_t> end = std::nullopt)
      : origin_(std::move(origin)),
        end_(end),
        sink_(sink),
        options_(options),
        tls_(tls),
        pos_(offset),
        pacer_(options.bandwidth_limit),
        buffer_(kBufferSize),
        sleep_timer_(io),
        watch_timer_(io),
        rng_(std::random_device{}()) {}

  asio::awaitable<void> Run();
  asio::awaitable<void> Watch();

  [[nodiscard]] Expected<DownloadInfo> Result() const {
    if (result_) return *result_;
    return info_;
  }

 private:
  // Set by the watcher: a cancel request, the deadline or too slow a rate.
  // Every wait ends soon after (the watcher cancels it) and the fetch ends
  // with CancelledFailure().
  [[nodiscard]] bool CancelRequested() const {
    return stop_.has_value() || (options_.cancel != nullptr && options_.cancel->load());
  }
  [[nodiscard]] Failure CancelledFailure() const {
    if (stop_) return *stop_;
    return Fatal(Errc::kCancelled, "download of " + origin_.ToString() + " cancelled at byte " +
                                       std::to_string(pos_));
  }
  // The deadline and the minimum rate, checked by the watcher.
  [[nodiscard]] std::optional<Failure> Overdue(Clock::time_point now);
  [[nodiscard]] milliseconds Backoff(int failures, milliseconds retry_after);

  asio::awaitable<void> Sleep(Clock::duration d);
  asio::awaitable<MaybeFailure> Attempt();
  asio::awaitable<MaybeFailure> Connect(beast::tcp_stream& stream, const Url& url);
  asio::awaitable<MaybeFailure> Handshake(SslStream& stream, const Url& url);
  template <typename Stream>
  asio::awaitable<Step> Exchange(Stream& stream, const Url& url);
  template <typename Stream>
  asio::awaitable<MaybeFailure> ReadBody(Stream& stream, beast::flat_buffer& buffer,
                                         http::response_parser<http::buffer_body>& parser,
                                         const Url& url, std::uint64_t skip);
  // Checks the response headers of a 200/206/416 against what was asked.
  MaybeFailure CheckPayloadHeaders(const http::response_parser<http::buffer_body>& parser,
                                   const Url& url, std::uint64_t& skip, bool& complete);
  [[nodiscard]] Failure TransportFailure(const ErrorCode& ec, const std::string& doing,
                                         Errc timeout_code) const;

  const Url origin_;
  // FetchRange: the byte after the last one wanted. Every request then asks
  // for a closed range and the server must answer 206 with exactly it.
  const std::optional<std::uint64_t> end_;
  const Sink& sink_;
  const DownloadOptions& options_;
  ssl::context* tls_;  // null for http://

  std::uint64_t pos_;  // next byte the sink expects
  DownloadInfo info_;
  std::string etag_;  // strong validator seen earlier in this fetch
  Pacer pacer_;
  std::vector<std::uint8_t> buffer_;
  std::optional<Error> result_;

  // What the watcher aborts on cancel; set only while the operation may be
  // pending (everything runs on one thread, so plain pointers are safe).
  beast::tcp_stream* active_stream_ = nullptr;
  tcp::resolver* active_resolver_ = nullptr;
  asio::steady_timer sleep_timer_;
  asio::steady_timer watch_timer_;
  bool finished_ = false;
  bool host_mismatch_ = false;
  std::optional<Failure> stop_;
  const Clock::time_point started_ = Clock::now();
  Clock::time_point window_start_ = started_;
  std::uint64_t window_bytes_at_start_ = 0;  // info_.bytes when the window began
  std::mt19937_64 rng_;
};

// Clears an "active operation" pointer when the object it points to goes away.
template <typename T>
class ActiveGuard {
 public:
  ActiveGuard(T*& slot, T* value) : slot_(slot) { slot_ = value; }
  ~ActiveGuard() { slot_ = nullptr; }
  ActiveGuard(const ActiveGuard&) = delete;
  ActiveGuard& operator=(const ActiveGuard&) = delete;

 private:
  T*& slot_;
};

milliseconds Fetcher::Backoff(int failures, milliseconds retry_after) {
  // Capped exponential with "equal jitter": half of the step is fixed, half
  // random, so devices that lost the same server do not return in lockstep.
  const int shift = std::min(failures - 1, 30);
  const auto cap = std::max(options_.max_backoff, milliseconds(1));
  const auto initial = std::max(options_.initial_backoff, milliseconds(1));
  const auto step = (initial.count() > (cap.count() >> shift))
                        ? cap
                        : std::min(cap, milliseconds(initial.count() << shift));
  std::uniform_int_distribution<std::int64_t> jitter(0, step.count() / 2);
  auto delay = milliseconds(step.count() - step.count() / 2 + jitter(rng_));
  // A server that says when to come back is believed, within the cap.
  delay = std::max(delay, std::min(retry_after, cap));
  return delay;
}

// An alert by which the server says it does not accept our certificate (TLS
// 1.3 sends it after the client's handshake has completed, so it can arrive
// on the first read). Retrying does not change the certificate.
bool IsClientCertificateRejected(const ErrorCode& ec) {
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

Failure Fetcher::TransportFailure(const ErrorCode& ec, const std::string& doing,
                                  Errc timeout_code) const {
  if (CancelRequested()) return CancelledFailure();
  if (IsClientCertificateRejected(ec)) {
    return Fatal(
        Errc::kNetTls,
        doing + ": the server rejected the device's certificate (" + ec.message() + "); check " +
            (options_.client_cert.empty()
                 ? std::string("that a device certificate is configured")
                 : options_.client_cert.string() + " and that the server trusts its issuer"));
  }
  if (ec == beast::error::timeout) {
    const auto limit =
        timeout_code == Errc::kNetStalled ? options_.stall_timeout : options_.connect_timeout;
    return Transient(timeout_code, doing + ": " +
                                       (timeout_code == Errc::kNetStalled ? "stalled, no data for "
                                                                          : "timed out after ") +
                                       std::to_string(limit.count()) + " ms");
  }
  if (ec.category() == asio::error::get_ssl_category()) {
    return Transient(Errc::kNetTls, doing + ": TLS error: " + ec.message());
  }
  return Transient(Errc::kNetConnect, doing + ": " + ec.message());
}

asio::awaitable<void> Fetcher::Sleep(Clock::duration d) {
  if (CancelRequested() || d <= Clock::duration::zero()) co_return;
  sleep_timer_.expires_after(d);
  ErrorCode ec;
  co_await sleep_timer_.async_wait(asio::redirect_error(asio::use_awaitable, ec));
}

std::optional<Failure> Fetcher::Overdue(Clock::time_point now) {
  const auto where = [&] {
    return "download of " + origin_.ToString() + " at byte " + std::to_string(pos_) +
           (info_.total_size ? " of " + std::to_string(*info_.total_size) : std::string());
  };
  if (options_.deadline > milliseconds(0) && now - started_ >= options_.deadline) {
    return Fatal(Errc::kNetDeadline,
                 where() + ": not done within its deadline of " +
                     std::to_string(options_.deadline.count() / 1000) +
                     " s (download.deadline_s); check the link and the server, then send the "
                     "job again (it resumes from its last checkpoint)");
  }
  if (options_.min_rate > 0 && options_.min_rate_window > milliseconds(0) &&
      now - window_start_ >= options_.min_rate_window) {
    const std::uint64_t got = info_.bytes - window_bytes_at_start_;
    const auto window_ms = static_cast<std::uint64_t>(options_.min_rate_window.count());
    if (got * 1000 < options_.min_rate * window_ms) {
      return Fatal(Errc::kNetTooSlow,
                   where() + ": " + std::to_string(got) + " bytes in the last " +
                       std::to_string(window_ms / 1000) + " s, below the minimum of " +
                       std::to_string(options_.min_rate) +
                       " bytes/s (download.min_rate over download.min_rate_window_s); the "
                       "server or the link is too slow; send the job again later (it resumes)");
    }
    window_start_ = now;
    window_bytes_at_start_ = info_.bytes;
  }
  return std::nullopt;
}

asio::awaitable<void> Fetcher::Watch() {
  while (!finished_) {
    watch_timer_.expires_after(kCancelPoll);
    ErrorCode ec;
    co_await watch_timer_.async_wait(asio::redirect_error(asio::use_awaitable, ec));
    if (finished_) co_return;
    if (!stop_) stop_ = Overdue(Clock::now());
    if (CancelRequested()) {
      if (active_resolver_ != nullptr) active_resolver_->cancel();
      if (active_stream_ != nullptr) active_stream_->cancel();
      sleep_timer_.cancel();
      co_return;
    }
  }
}

asio::awaitable<void> Fetcher::Run() {
  int failures = 0;  // consecutive, without progress
  for (;;) {
    if (CancelRequested()) {
      result_ = CancelledFailure().error;
      break;
    }
    const std::uint64_t before = info_.bytes;
    MaybeFailure failure = co_await Attempt();
    const bool progress = info_.bytes > before;
    if (!failure) {
      if (end_ ? pos_ >= *end_ : (!info_.total_size || pos_ >= *info_.total_size)) break;  // done
      // The server sent less than asked (a shorter range): ask for the rest.
      if (progress) {
        failures = 0;
        continue;
      }
      failure =
          Transient(Errc::kNetProtocol, "GET " + origin_.ToString() + ": response ended at byte " +
                                            std::to_string(pos_) + " of " +
                                            std::to_string(end_ ? *end_ : *info_.total_size));
    }
    if (failure->error.code() == Errc::kCancelled || CancelRequested()) {
      result_ = CancelledFailure().error;
      break;
    }
    if (!failure->retry) {
      result_ = std::move(failure->error);
      break;
    }
    if (progress) failures = 0;
    ++failures;
    if (failures > options_.max_retries) {
      result_ = Error(failure->error.code(),
                      "gave up downloading " + origin_.ToString() + " at byte " +
                          std::to_string(pos_) + " after " + std::to_string(failures) +
                          " consecutive failed attempts; last error: " + failure->error.message() +
                          "; check that the device can reach " + origin_.Authority() +
                          " and that the server is up, then retry the job (it resumes)");
      break;
    }
    const milliseconds delay = Backoff(failures, failure->retry_after);
    // The URL may be signed: its query string never reaches the log.
    spdlog::warn("{}download {}: {}; retry {}/{} in {} ms (at byte {})",
                 options_.log_context ? options_.log_context() + ": " : std::string(),
                 RedactUrl(origin_.ToString()), RedactUrls(failure->error.message()), failures,
                 options_.max_retries, delay.count(), pos_);
    co_await Sleep(delay);
  }
  finished_ = true;
  watch_timer_.cancel();
}

asio::awaitable<MaybeFailure> Fetcher::Attempt() {
  Url url = origin_;
  std::vector<std::string> chain{url.ToString()};
  const auto executor = co_await asio::this_coro::executor;
  for (;;) {
    Step step;
    ++info_.attempts;
    if (url.https) {
      SslStream stream(executor, *tls_);
      const ActiveGuard<beast::tcp_stream> guard(active_stream_, &beast::get_lowest_layer(stream));
      if (auto f = co_await Connect(beast::get_lowest_layer(stream), url)) co_return f;
      if (auto f = co_await Handshake(stream, url)) co_return f;
      step = co_await Exchange(stream, url);
    } else {
      beast::tcp_stream stream(executor);
      const ActiveGuard<beast::tcp_stream> guard(active_stream_, &stream);
      if (auto f = co_await Connect(stream, url)) co_return f;
      step = co_await Exchange(stream, url);
    }
    if (step.kind == Step::Kind::kDone) co_return std::nullopt;
    if (step.kind == Step::Kind::kFailed) co_return std::move(step.failure);

    auto next = ResolveLocation(url, step.location);
    if (!next) {
      co_return Fatal(Errc::kNetProtocol, url.ToString() + " redirected to an unusable Location '" +
                                              step.location + "': " + next.error().message());
    }
    if (tls_ != nullptr && !next->https) {
      co_return Fatal(Errc::kNetProtocol, url.ToString() + " redirected to plain http (" +
                                              next->ToString() +
                                              "); refused: downloads must stay on https");
    }
    const std::string next_text = next->ToString();
    const bool loop = std::find(chain.begin(), chain.end(), next_text) != chain.end();
    chain.push_back(next_text);
    if (loop || static_cast<int>(chain.size()) - 1 > options_.max_redirects) {
      std::string path;
      for (const auto& hop : chain) path += (path.empty() ? "" : " -> ") + hop;
      co_return Fatal(
          Errc::kNetTooManyRedirects,
          (loop ? std::string("redirect loop: ")
                : "more than " + std::to_string(options_.max_redirects) + " redirects: ") +
              path + "; fix the repository's redirects or the configured URL");
    }
    url = std::move(*next);
  }
}

asio::awaitable<MaybeFailure> Fetcher::Connect(beast::tcp_stream& stream, const Url& url) {
  if (CancelRequested()) co_return CancelledFailure();
  const std::string where = url.Authority();
  const auto executor = co_await asio::this_coro::executor;
  // Shared with the deadline's handler, which may still be queued when this
  // coroutine has moved on.
  auto resolver = std::make_shared<tcp::resolver>(executor);
  auto resolve_timed_out = std::make_shared<bool>(false);
  const ActiveGuard<tcp::resolver> guard(active_resolver_, resolver.get());
  // The resolver has no deadline of its own; a timer cancels it.
  asio::steady_timer deadline(executor);
  deadline.expires_after(options_.connect_timeout);
  deadline.async_wait([resolver, resolve_timed_out](const ErrorCode& ec) {
    if (!ec) {
      *resolve_timed_out = true;
      resolver->cancel();
    }
  });
  ErrorCode ec;
  const auto endpoints = co_await resolver->async_resolve(
      url.host, std::to_string(url.port), asio::redirect_error(asio::use_awaitable, ec));
  deadline.cancel();
  if (ec) {
    if (CancelRequested()) co_return CancelledFailure();
    co_return Transient(Errc::kNetConnect,
                        "resolving " + url.host + ": " +
                            (*resolve_timed_out ? std::string("timed out") : ec.message()) +
                            "; check DNS and the repository URL");
  }
  stream.expires_after(options_.connect_timeout);
  co_await stream.async_connect(endpoints, asio::redirect_error(asio::use_awaitable, ec));
  if (ec) {
    co_return TransportFailure(ec, "connecting to " + where, Errc::kNetConnect);
  }
  co_return std::nullopt;
}

asio::awaitable<MaybeFailure> Fetcher::Handshake(SslStream& stream, const Url& url) {
  if (CancelRequested()) co_return CancelledFailure();
  const std::string where = url.Authority();
  // SNI only for names (RFC 6066 forbids IP literals); the certificate check
  // covers both: DNS names against dNSName SANs, addresses against iPAddress.
  if (!url.IsIpLiteral() &&
      SSL_set_tlsext_host_name(stream.native_handle(), url.host.c_str()) != 1) {
    co_return Fatal(Errc::kNetTls,
                    "TLS with " + where + ": cannot set the server name '" + url.host + "' (SNI)");
  }
  host_mismatch_ = false;
  ErrorCode ec;
  stream.set_verify_callback(
      [this, check = ssl::host_name_verification(url.host)](bool preverified,
                                                            ssl::verify_context& ctx) {
        const bool ok = check(preverified, ctx);
        if (preverified && !ok) host_mismatch_ = true;
        return ok;
      },
      ec);
  if (ec) co_return Fatal(Errc::kNetTls, "TLS with " + where + ": " + ec.message());

  beast::get_lowest_layer(stream).expires_after(options_.connect_timeout);
  co_await stream.async_handshake(ssl::stream_base::client,
                                  asio::redirect_error(asio::use_awaitable, ec));
  if (!ec) co_return std::nullopt;
  if (CancelRequested()) co_return CancelledFailure();
  if (ec.category() != asio::error::get_ssl_category() || IsClientCertificateRejected(ec)) {
    // Resets, timeouts, a server closing mid-handshake: the network, not
    // trust (retried); or the server refusing our certificate (not).
    co_return TransportFailure(ec, "TLS handshake with " + where, Errc::kNetConnect);
  }
  // A trust or protocol failure does not heal by retrying.
  std::string msg = "TLS handshake with " + where + " failed: ";
  const long verify = SSL_get_verify_result(stream.native_handle());
  if (host_mismatch_) {
    msg += "the server's certificate is not valid for '" + url.host +
           "'; check the host name in the repository URL";
  } else if (verify != X509_V_OK) {
    msg += std::string("the server's certificate is not trusted (") +
           X509_verify_cert_error_string(verify) + "); it must chain to the pinned CA " +
           options_.ca_file.string() + "; check the repository URL and the CA file";
  } else {
    msg += ec.message();
    if (!options_.client_cert.empty()) {
      msg +=
          "; if the server rejected the device certificate, check " + options_.client_cert.string();
    }
  }
  co_return Fatal(Errc::kNetTls, std::move(msg));
}

MaybeFailure Fetcher::CheckPayloadHeaders(const http::response_parser<http::buffer_body>& parser,
                                          const Url& url, std::uint64_t& skip, bool& complete) {
  const auto& res = parser.get();
  const std::string where = "GET " + url.ToString();
  const unsigned status = res.result_int();
  std::optional<std::uint64_t> total;
  skip = 0;
  complete = false;
  if (status == 206 || status == 416) {
    const auto cr = ParseContentRange(Field(res, http::field::content_range));
    if (!cr) {
      return Fatal(Errc::kNetRangeUnsupported,
                   where + ": HTTP " + std::to_string(status) + " with an invalid Content-Range '" +
                       std::string(Field(res, http::field::content_range)) +
                       "'; the server does not serve byte ranges correctly");
    }
    total = cr->total;
    if (status == 416) {
      // Resuming exactly at the end: nothing is missing.
      if (total && *total == pos_) {
        complete = true;
      } else {
        return Fatal(Errc::kNetRangeUnsupported,
                     where + ": offset " + std::to_string(pos_) + " is past the end of the file (" +
                         (total ? std::to_string(*total) : std::string("unknown")) +
                         " bytes); the file on the server is not the one being resumed; restart "
                         "the download from the beginning");
      }
    } else if (!cr->first || *cr->first != pos_) {
      return Fatal(Errc::kNetRangeUnsupported,
                   where + ": asked for bytes from " + std::to_string(pos_) +
                       " but the server sent Content-Range '" +
                       std::string(Field(res, http::field::content_range)) +
                       "'; the server does not serve byte ranges correctly");
    } else if (end_ && cr->last >= *end_) {
      return Fatal(Errc::kNetRangeUnsupported,
                   where + ": asked for bytes " + std::to_string(pos_) + "-" +
                       std::to_string(*end_ - 1) + " but the server sent Content-Range '" +
                       std::string(Field(res, http::field::content_range)) +
                       "'; the server does not serve byte ranges correctly");
    } else if (const auto len = parser.content_length(); len && *len != cr->last - *cr->first + 1) {
      return Fatal(Errc::kNetProtocol, where + ": Content-Length " + std::to_string(*len) +
                                           " does not match Content-Range '" +
                                           std::string(Field(res, http::field::content_range)) +
                                           "'");
    }
  } else if (end_) {
    // A range fetch (a delta download) that got the whole file: reading it
    // to the wanted bytes could cost the whole image per request. The
    // caller decides (docs/delta.md: download.delta_fallback).
    return Fatal(Errc::kNetRangeUnsupported,
                 where + ": asked for bytes " + std::to_string(pos_) + "-" +
                     std::to_string(*end_ - 1) + " and the server answered HTTP " +
                     std::to_string(status) +
                     " with the whole file: it does not support Range requests, which delta "
                     "downloads need; serve the image from a server that honours Range, or set "
                     "download.delta_fallback: full");
  } else {  // 200: the whole file
    if (const auto len = parser.content_length()) total = *len;
    if (total && *total < pos_) {
      return Fatal(Errc::kNetRangeUnsupported,
                   where + ": offset " + std::to_string(pos_) + " is past the end of the file (" +
                       std::to_string(*total) + " bytes); restart the download from the beginning");
    }
    // The server ignored Range: read from byte 0 and discard up to pos_ (see
    // docs/download.md: correct with any server, costs the skipped bytes).
    skip = pos_;
  }

  // The bytes before pos_ came from earlier responses; they must be of the
  // same file.
  const std::string etag(Field(res, http::field::etag));
  const bool strong = !etag.empty() && !etag.starts_with("W/");
  if (strong && !etag_.empty() && etag != etag_) {
    return Fatal(Errc::kNetRangeUnsupported,
                 where + ": the file changed on the server during the download (ETag " + etag_ +
                     " -> " + etag + "); restart the download from the beginning");
  }
  if (strong) etag_ = etag;
  if (total && info_.total_size && *total != *info_.total_size) {
    return Fatal(Errc::kNetRangeUnsupported,
                 where + ": the file changed on the server during the download (size " +
                     std::to_string(*info_.total_size) + " -> " + std::to_string(*total) +
                     "); restart the download from the beginning");
  }
  if (total) info_.total_size = total;
  return std::nullopt;
}

template <typename Stream>
asio::awaitable<Step> Fetcher::Exchange(Stream& stream, const Url& url) {
  const std::string where = "GET " + url.ToString();
  auto& lowest = beast::get_lowest_layer(stream);
  http::request<http::empty_body> req{http::verb::get, url.target, 11};
  req.set(http::field::host, url.Authority());
  req.set(http::field::user_agent, "sag-agent/" SAG_VERSION);
  // Byte offsets are offsets into the file as stored, never into a
  // compressed transfer encoding.
  req.set(http::field::accept_encoding, "identity");
  req.set(http::field::connection, "close");
  if (end_) {
    req.set(http::field::range, "bytes=" + std::to_string(pos_) + "-" + std::to_string(*end_ - 1));
  } else if (pos_ > 0) {
    req.set(http::field::range, "bytes=" + std::to_string(pos_) + "-");
  }

  ErrorCode ec;
  lowest.expires_after(options_.stall_timeout);
  co_await http::async_write(stream, req, asio::redirect_error(asio::use_awaitable, ec));
  if (ec)
    co_return Failed(TransportFailure(ec, where + ": sending the request", Errc::kNetStalled));

  beast::flat_buffer buffer(kReadBufferLimit);
  http::response_parser<http::buffer_body> parser;
  parser.header_limit(kHeaderLimit);
  // No limit: the length is the file's size. (Not boost::none: Beast 1.74
  // compares `len > body_limit_` on the optional, which is true for none.)
  parser.body_limit(std::numeric_limits<std::uint64_t>::max());
  lowest.expires_after(options_.stall_timeout);
  co_await http::async_read_header(stream, buffer, parser,
                                   asio::redirect_error(asio::use_awaitable, ec));
  if (ec) {
    if (ec.category() == http::make_error_code(http::error::bad_version).category() &&
        ec != http::error::end_of_stream && ec != http::error::partial_message) {
      co_return Failed(
          Fatal(Errc::kNetProtocol, where + ": malformed response header: " + ec.message()));
    }
    co_return Failed(TransportFailure(ec, where + ": reading the response", Errc::kNetStalled));
  }

  const auto& res = parser.get();
  const unsigned status = res.result_int();
  const std::string status_text =
      "HTTP " + std::to_string(status) + " " + std::string(res.reason());
  switch (status) {
    case 200:
    case 206:
    case 416:
      break;
    case 301:
    case 302:
    case 303:
    case 307:
    case 308: {
      const auto location = Field(res, http::field::location);
      if (location.empty()) {
        co_return Failed(
            Fatal(Errc::kNetProtocol, where + ": " + status_text + " without Location"));
      }
      co_return Step{Step::Kind::kRedirect, std::string(location), std::nullopt};
    }
    default: {
      // 408 (server timed out waiting), 429 (rate limited) and 5xx are the
      // server's trouble and may pass; other answers will not change.
      const bool retry = status == 408 || status == 429 || (status >= 500 && status <= 599);
      std::string msg = where + ": " + status_text;
      if (status == 404 || status == 410) {
        msg += "; the file is not on the server: check the URL and that the version is published";
      } else if (status == 401 || status == 403) {
        msg += "; the server refused access: check the device's credentials and the URL";
      } else if (retry) {
        msg += "; the server is failing or overloaded";
      } else {
        msg += "; the request or URL is not accepted by the server";
      }
      Failure f{Error(Errc::kNetHttpStatus, std::move(msg)), retry};
      if (const auto secs = ParseDecimal<std::uint32_t>(Field(res, http::field::retry_after))) {
        f.retry_after = std::chrono::seconds(*secs);
      }
      co_return Failed(std::move(f));
    }
  }

  std::uint64_t skip = 0;
  bool complete = false;
  if (auto f = CheckPayloadHeaders(parser, url, skip, complete)) co_return Failed(std::move(*f));
  if (!complete) {
    if (auto f = co_await ReadBody(stream, buffer, parser, url, skip)) {
      co_return Failed(std::move(*f));
    }
  }
  if constexpr (std::is_same_v<Stream, SslStream>) {
    // Polite close; "stream truncated" (the server closed without
    // close_notify) and any other error here cost nothing: the body is in.
    lowest.expires_after(std::min<Clock::duration>(kShutdownTimeout, options_.stall_timeout));
    co_await stream.async_shutdown(asio::redirect_error(asio::use_awaitable, ec));
  } else {
    lowest.socket().shutdown(tcp::socket::shutdown_both, ec);
  }
  co_return Step{Step::Kind::kDone, {}, std::nullopt};
}

template <typename Stream>
asio::awaitable<MaybeFailure> Fetcher::ReadBody(Stream& stream, beast::flat_buffer& buffer,
                                                http::response_parser<http::buffer_body>& parser,
                                                const Url& url, std::uint64_t skip) {
  auto& lowest = beast::get_lowest_layer(stream);
  std::uint64_t received = 0;  // body bytes of this response
  while (!parser.is_done()) {
    if (CancelRequested()) co_return CancelledFailure();
    if (const auto wait = pacer_.Delay(Clock::now()); wait > Clock::duration::zero()) {
      co_await Sleep(wait);
      if (CancelRequested()) co_return CancelledFailure();
    }
    const std::size_t want = pacer_.ReadSize();
    auto& body = parser.get().body();
    body.data = buffer_.data();
    body.size = want;
    ErrorCode ec;
    lowest.expires_after(options_.stall_timeout);
    co_await http::async_read_some(stream, buffer, parser,
                                   asio::redirect_error(asio::use_awaitable, ec));
    if (ec == http::error::need_buffer) ec = {};
    const std::size_t n = want - parser.get().body().size;
    pacer_.Consumed(n, Clock::now());
    received += n;
    // Deliver what arrived, even when the read then failed: it is valid data
    // and the next attempt starts after it.
    std::size_t from = 0;
    if (skip > 0) {
      from = static_cast<std::size_t>(std::min<std::uint64_t>(skip, n));
      skip -= from;
    }
    if (n > from) {
      const std::span<const std::uint8_t> data(buffer_.data() + from, n - from);
      if (Status st = sink_(pos_, data); !st) {
        co_return Failure{std::move(st).error(), false};
      }
      pos_ += data.size();
      info_.bytes += data.size();
    }
    if (ec) {
      co_return TransportFailure(ec,
                                 "GET " + url.ToString() + ": reading the body after " +
                                     std::to_string(received) + " bytes",
                                 Errc::kNetStalled);
    }
  }
  if (skip > 0) {
    co_return Fatal(
        Errc::kNetRangeUnsupported,
        "GET " + url.ToString() + ": the file ended before offset " + std::to_string(pos_));
  }
  co_return std::nullopt;
}

// The client context the options ask for (their CA, client certificate and
// key), for a fetch or for all of a prefetcher's requests.
Expected<std::unique_ptr<ssl::context>> TlsContextFor(const DownloadOptions& options) {
  return MakeTlsClientContext({options.ca_file, options.client_cert, options.client_key});
}

Expected<DownloadInfo> FetchImpl(const std::string& url_text, std::uint64_t offset,
                                 const Sink& sink, const DownloadOptions& options,
                                 std::optional<std::uint64_t> end = std::nullopt) {
  SAG_TRY(Url url, ParseUrl(url_text));
  if (url.https && options.ca_file.empty()) {
    return Error(Errc::kInvalidArgument, "refusing " + url.ToString() +
                                             ": https needs a pinned CA file and none is set; "
                                             "configure the CA");
  }
  if (!url.https && !options.ca_file.empty()) {
    return Error(Errc::kInvalidArgument,
                 "refusing " + url.ToString() + ": plain http while a CA is configured; use https");
  }
  if (options.max_retries < 0 || options.max_redirects < 0 ||
      options.stall_timeout <= milliseconds(0) || options.connect_timeout <= milliseconds(0) ||
      options.deadline < milliseconds(0) || options.min_rate_window < milliseconds(0)) {
    return Error(Errc::kInvalidArgument,
                 "download options out of range: retries and redirects must be >= 0, timeouts > 0, "
                 "the deadline and the rate window >= 0");
  }
  std::unique_ptr<ssl::context> own_tls;
  if (url.https && !options.tls) {
    SAG_TRY(own_tls, TlsContextFor(options));
  }
  ssl::context* tls = url.https ? (options.tls ? options.tls.get() : own_tls.get()) : nullptr;
  asio::io_context io(1);
  Fetcher fetcher(io, std::move(url), offset, sink, options, tls, end);
  std::exception_ptr failure;
  asio::co_spawn(io, fetcher.Run(), [&failure](std::exception_ptr e) { failure = std::move(e); });
  // The watcher also keeps the deadline and the minimum rate, so it runs
  // for every fetch.
  asio::co_spawn(io, fetcher.Watch(), asio::detached);
  io.run();
  if (failure) std::rethrow_exception(failure);
  return fetcher.Result();
}

}  // namespace

Expected<DownloadInfo> Fetch(const std::string& url, std::uint64_t offset, const Sink& sink,
                             const DownloadOptions& options) {
  // No exception crosses the module edge: allocation failures and anything a
  // sink throws become an error value.
  // Errors leave with their URLs redacted (common/redact.h): they end up in
  // status.json, the job history and the cloud, and a signed URL's query
  // string is a credential.
  try {
    auto result = FetchImpl(url, offset, sink, options);
    if (result) return result;
    return Error(result.error().code(), RedactUrls(result.error().message()));
  } catch (const std::exception& e) {
    return Error(Errc::kInternal, "downloading " + RedactUrl(url) + ": " + e.what());
  }
}

Expected<DownloadInfo> FetchRange(const std::string& url, std::uint64_t offset,
                                  std::uint64_t length, const Sink& sink,
                                  const DownloadOptions& options) {
  if (length == 0) return DownloadInfo{};
  try {
    auto result = FetchImpl(url, offset, sink, options, offset + length);
    if (result) return result;
    return Error(result.error().code(), RedactUrls(result.error().message()));
  } catch (const std::exception& e) {
    return Error(Errc::kInternal, "downloading " + RedactUrl(url) + ": " + e.what());
  }
}

Expected<std::vector<std::uint8_t>> FetchRangeExact(const std::string& url, std::uint64_t offset,
                                                    std::uint64_t length, std::string_view what,
                                                    const DownloadOptions& options,
                                                    std::uint64_t* received) {
  std::vector<std::uint8_t> bytes;
  bytes.reserve(length);
  auto got = FetchRange(
      url, offset, length,
      [&](std::uint64_t /*offset*/, std::span<const std::uint8_t> data) -> Status {
        if (received != nullptr) *received += data.size();
        if (bytes.size() + data.size() > length) {
          return Error(Errc::kNetProtocol, "the server sent more than the " +
                                               std::to_string(length) + " bytes asked for");
        }
        bytes.insert(bytes.end(), data.begin(), data.end());
        return Ok();
      },
      options);
  if (!got) return std::move(got).error().WithContext("fetching " + std::string(what));
  if (bytes.size() != length) {
    return Error(Errc::kNetProtocol, "fetching " + std::string(what) + ": the server sent " +
                                         std::to_string(bytes.size()) + " of " +
                                         std::to_string(length) + " bytes");
  }
  return bytes;
}

struct RangePrefetcher::Slot {
  std::vector<std::uint8_t> buf;  // received, not yet consumed
  bool done = false;
  Status status = Ok();
};

namespace {

// `options` with one TLS context for all of the prefetcher's requests (made
// here unless given; if it cannot be made, each fetch makes its own and
// reports why).
DownloadOptions WithSharedTls(const std::string& url, DownloadOptions options) {
  if (options.tls || !url.starts_with("https://") || options.ca_file.empty()) return options;
  auto ctx = TlsContextFor(options);
  if (ctx) options.tls = std::shared_ptr<ssl::context>(std::move(*ctx));
  return options;
}

}  // namespace

RangePrefetcher::RangePrefetcher(std::string url, std::vector<Range> ranges, std::size_t parallel,
                                 std::size_t buffer_bytes, DownloadOptions options,
                                 std::function<bool()> stopping)
    : url_(std::move(url)),
      ranges_(std::move(ranges)),
      parallel_(std::max<std::size_t>(parallel, 1)),
      buffer_bytes_(std::max<std::size_t>(buffer_bytes, 1)),
      options_(WithSharedTls(url_, std::move(options))),
      worker_options_(options_),
      stopping_(std::move(stopping)) {
  if (parallel_ == 1 || ranges_.empty()) return;
  worker_options_.cancel = &cancel_;
  slots_.reserve(ranges_.size());
  for (std::size_t i = 0; i < ranges_.size(); ++i) slots_.push_back(std::make_unique<Slot>());
  const std::size_t n = std::min(parallel_, ranges_.size());
  try {
    for (std::size_t w = 0; w < n; ++w) workers_.emplace_back([this] { Work(); });
  } catch (const std::system_error& e) {
    // Fewer workers (none: every range is fetched when consumed).
    spdlog::warn("range requests: {} of {} worker threads started ({})", workers_.size(), n,
                 e.what());
    if (workers_.empty()) slots_.clear();
  }
}

RangePrefetcher::~RangePrefetcher() { Finish(); }

std::uint64_t RangePrefetcher::Finish() {
  {
    const std::lock_guard lock(mu_);
    closed_ = true;
    cancel_ = true;
  }
  cv_.notify_all();
  for (auto& w : workers_) {
    if (w.joinable()) w.join();
  }
  const std::lock_guard lock(mu_);
  const std::uint64_t discarded = received_ - delivered_;
  received_ = delivered_;
  return discarded;
}

void RangePrefetcher::Work() {
  for (;;) {
    std::size_t i = 0;
    {
      std::unique_lock lock(mu_);
      // Range i starts once the consumer is within `parallel` of it.
      cv_.wait(lock, [&] {
        return closed_ || next_start_ >= ranges_.size() || next_start_ < head_ + parallel_;
      });
      if (closed_ || next_start_ >= ranges_.size()) return;
      i = next_start_++;
    }
    Slot& slot = *slots_[i];
    const Range r = ranges_[i];
    auto got = FetchRange(
        url_, r.offset, r.length,
        [&](std::uint64_t /*offset*/, std::span<const std::uint8_t> data) -> Status {
          std::unique_lock lock(mu_);
          // Full: wait for the consumer (TCP flow control holds the server).
          cv_.wait(lock, [&] {
            return closed_ || slot.buf.empty() || slot.buf.size() + data.size() <= buffer_bytes_;
          });
          if (closed_) return Error(Errc::kCancelled, "stopped");
          slot.buf.insert(slot.buf.end(), data.begin(), data.end());
          received_ += data.size();
          cv_.notify_all();
          return Ok();
        },
        worker_options_);
    {
      const std::lock_guard lock(mu_);
      slot.status = got ? Ok() : Status(std::move(got).error());
      slot.done = true;
    }
    cv_.notify_all();
  }
}

Status RangePrefetcher::Consume(std::size_t i, const Sink& sink) {
  if (i >= ranges_.size()) {
    return Error(Errc::kInternal, "range " + std::to_string(i) + " of " +
                                      std::to_string(ranges_.size()) + " consumed");
  }
  const Range r = ranges_[i];
  if (slots_.empty()) {
    std::uint64_t delivered = 0;
    auto got = FetchRange(
        url_, r.offset, r.length,
        [&](std::uint64_t offset, std::span<const std::uint8_t> data) -> Status {
          delivered += data.size();
          return sink(offset, data);
        },
        options_);
    const std::lock_guard lock(mu_);
    head_ = i + 1;
    received_ += delivered;
    delivered_ += delivered;
    if (!got) return std::move(got).error();
    return Ok();
  }
  {
    const std::lock_guard lock(mu_);
    if (i != head_) {
      return Error(Errc::kInternal, "range " + std::to_string(i) + " consumed before range " +
                                        std::to_string(head_));
    }
  }
  constexpr std::chrono::milliseconds kPoll{20};
  const auto stop = [&] {
    return (stopping_ && stopping_()) || (options_.cancel != nullptr && options_.cancel->load());
  };
  Slot& slot = *slots_[i];
  std::vector<std::uint8_t> take;
  std::uint64_t at = r.offset;
  for (;;) {
    {
      std::unique_lock lock(mu_);
      while (slot.buf.empty() && !slot.done && !closed_) {
        if (stop()) break;
        cv_.wait_for(lock, kPoll);
      }
      if (closed_ || (slot.buf.empty() && !slot.done)) {
        closed_ = true;
        cancel_ = true;
        cv_.notify_all();
        return Error(Errc::kCancelled, "stopped");
      }
      if (slot.buf.empty()) {
        // Done: the buffer goes too, not only its bytes (a slot is kept per
        // range until the prefetcher ends).
        std::vector<std::uint8_t>().swap(slot.buf);
        head_ = i + 1;
        cv_.notify_all();
        return slot.status;
      }
      take.swap(slot.buf);
      slot.buf.clear();
      delivered_ += take.size();
    }
    cv_.notify_all();
    if (stop()) {
      {
        const std::lock_guard lock(mu_);
        closed_ = true;
        cancel_ = true;
      }
      cv_.notify_all();
      return Error(Errc::kCancelled, "stopped");
    }
    SAG_TRY_STATUS(sink(at, take));
    at += take.size();
    take.clear();
  }
}

}  // namespace sag::net
