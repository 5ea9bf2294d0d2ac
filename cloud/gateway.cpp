// The device gateway. All of sag-cloud's Beast/Asio template code for the
// device channel is in this translation unit (see gateway.h for the contract).
//
// Shape: one acceptor coroutine; per connection a Session with three
// coroutines on the io_context's one thread: Run (TLS handshake, upgrade,
// then the read loop), Writer (drains the send queue, then the close
// handshake) and Watchdog (every deadline of the connection: handshake,
// write, close, silence; and the gateway's own heartbeats). The watchdog
// enforces a deadline by closing the TCP socket, which ends every pending
// operation of the session.

// Boost 1.74 enables co_await for clang only with the Coroutines TS; clang 14
// in C++20 mode (clang-tidy) has standard coroutines, as GCC does.
#if defined(__clang__) && !defined(BOOST_ASIO_HAS_CO_AWAIT)
#define BOOST_ASIO_HAS_CO_AWAIT 1
#endif

#include "cloud/gateway.h"

#include <spdlog/spdlog.h>

#include <algorithm>
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
#include <deque>
#include <exception>
#include <map>
#include <optional>
#include <utility>
#include <variant>

#include "common/net/tls.h"

namespace sag::cloud {

namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace websocket = beast::websocket;
namespace ssl = asio::ssl;
using tcp = asio::ip::tcp;
using SteadyClock = std::chrono::steady_clock;
using ErrorCode = boost::system::error_code;
using Ws = websocket::stream<beast::ssl_stream<beast::tcp_stream>>;

constexpr std::string_view kPath = "/device/v1";
constexpr std::size_t kMaxQueued = 1024;  // a peer that reads slower than this is dropped
constexpr int kSilenceFactor = 3;         // docs/protocol.md: 3 x heartbeat without traffic

// A device's outcome for `job`; "failed" with the error `Cancelled` of a
// job whose cancel was asked (an accepted cancel, docs/protocol.md) is
// Cancelled.
JobState StateOfOutcome(std::string_view outcome, const std::optional<proto::ErrorInfo>& error,
                        const JobRecord& job) {
  if (outcome == "committed") return JobState::kCommitted;
  if (outcome == "rolled_back") return JobState::kRolledBack;
  if (job.cancel_requested && error && error->name == ErrcName(Errc::kCancelled)) {
    return JobState::kCancelled;
  }
  return JobState::kFailed;
}

proto::ErrorInfo CancelledInCloud(const std::string& why) {
  return {static_cast<int>(Errc::kCancelled), std::string(ErrcName(Errc::kCancelled)), why};
}

// Whether the job's state was set by a report newer than (epoch, seq) of the
// device's current epoch: then that report is older and must not overwrite.
bool StampNewer(const JobRecord& job, std::string_view epoch, std::uint64_t seq) {
  return job.stamp_epoch == epoch && job.stamp_seq > seq;
}

void Stamp(JobRecord& job, std::string_view epoch, std::uint64_t seq) {
  job.stamp_epoch = std::string(epoch);
  job.stamp_seq = seq;
  job.updated = UtcNow();
}

}  // namespace

class Session;

struct Gateway::Impl : std::enable_shared_from_this<Gateway::Impl> {
  Impl(asio::io_context& io_context, GatewayOptions o, Store& s)
      : io(io_context), options(std::move(o)), store(s) {}

  asio::awaitable<void> Accept();
  asio::awaitable<void> Sweep();
  std::size_t SweepJobs(std::chrono::system_clock::time_point now);
  // Writes to the store in one transaction; logs a failure (the caller
  // decides what it means).
  std::optional<WriteResult> Write(const StoreWrite& write, std::string_view why) const {
    auto r = store.Write(write);
    if (!r) {
      spdlog::error("gateway: {}: {}", why, r.error().ToString());
      return std::nullopt;
    }
    return *r;
  }
  // Records when the devices with traffic since the last call spoke: one
  // batched write instead of one per heartbeat.
  void FlushLastSeen();
  std::shared_ptr<Session> Channel(std::string_view serial) const;
  void SendJob(Session& session, JobRecord& job, bool save);

  asio::io_context& io;
  GatewayOptions options;
  Store& store;
  std::unique_ptr<ssl::context> tls;
  std::optional<tcp::acceptor> acceptor;
  std::uint16_t port = 0;
  bool stopped = false;
  std::map<const Session*, std::weak_ptr<Session>> sessions;
  std::map<std::string, std::weak_ptr<Session>, std::less<>> channels;  // serial -> past hello
  GatewayStats stats;
};

class Session : public std::enable_shared_from_this<Session> {
 public:
  Session(std::shared_ptr<Gateway::Impl> gw, tcp::socket socket)
      : gw_(std::move(gw)),
        ws_(beast::tcp_stream(std::move(socket)), *gw_->tls),
        watchdog_(gw_->io),
        signal_(gw_->io) {}

  asio::awaitable<void> Run();
  // Queues a message; dropped once the session is closing.
  void Send(proto::Body body, std::string re = {});
  // Sends what is queued, then the close handshake (bounded by close_timeout).
  void Close(websocket::close_code code, std::string reason);
  // Ends the connection now: closes the TCP socket.
  void Kill(std::string_view why);

  [[nodiscard]] const std::string& serial() const { return serial_; }
  // Whether a message came since the last call (for the last_seen batch).
  bool TakeSeen() { return std::exchange(seen_, false); }

 private:
  asio::awaitable<bool> Upgrade();
  asio::awaitable<void> Refuse(http::status status, const http::request<http::empty_body>& req);
  asio::awaitable<void> Writer();
  asio::awaitable<void> Watchdog();
  void Rearm() { watchdog_.cancel(); }
  void Handle(std::string_view text);
  void OnHello(const proto::Message& m, const proto::Hello& hello);
  void OnJobAck(const proto::JobAck& ack);
  void OnCancelAck(const proto::CancelAck& ack);
  // Records a report once per (epoch, seq), saves, acknowledges.
  template <typename Apply>
  void OnReport(std::uint64_t seq, std::string_view type, const std::string& job_id,
                std::string detail, Apply apply);
  void OnClosed();

  std::shared_ptr<Gateway::Impl> gw_;
  Ws ws_;
  asio::steady_timer watchdog_;
  asio::steady_timer signal_;  // wakes the writer
  std::string serial_;         // the certificate's CN
  std::deque<std::string> queue_;
  std::optional<std::pair<websocket::close_code, std::string>> close_;
  bool upgraded_ = false;
  bool hello_done_ = false;
  bool dead_ = false;
  bool seen_ = false;  // a message came since the last FlushLastSeen
  std::size_t malformed_ = 0;
  std::uint64_t next_id_ = 1;
  std::optional<SteadyClock::time_point> handshake_deadline_;
  std::optional<SteadyClock::time_point> write_started_;
  std::optional<SteadyClock::time_point> close_started_;
  SteadyClock::time_point last_rx_ = SteadyClock::now();
  SteadyClock::time_point last_tx_ = SteadyClock::now();
};

std::shared_ptr<Session> Gateway::Impl::Channel(std::string_view serial) const {
  const auto it = channels.find(serial);
  return it == channels.end() ? nullptr : it->second.lock();
}

void Gateway::Impl::SendJob(Session& session, JobRecord& job, bool save) {
  spdlog::info("gateway: offering job {} ({} {}) to {}", job.spec.job_id, job.spec.job_type,
               job.spec.version, job.serial);
  session.Send(job.spec);
  // "Offered" needs no fsync before the send: lost, the job is Pending and
  // offered again, and the device answers a known job id with its state.
  if (job.state == JobState::kPending) {
    job.state = JobState::kOffered;
    job.updated = UtcNow();
    if (save) {
      StoreWrite w;
      w.jobs.push_back(job);
      w.durability = Durability::kRelaxed;
      (void)Write(w, "recording job " + job.spec.job_id + " as offered");
    }
  }
}

// --- Session -------------------------------------------------------------

void Session::Send(proto::Body body, std::string re) {
  if (dead_ || close_) return;
  if (queue_.size() >= kMaxQueued) {
    Kill("the device does not read its messages (" + std::to_string(kMaxQueued) + " queued)");
    return;
  }
  queue_.push_back(
      proto::Encode({"g" + std::to_string(next_id_++), std::move(re), std::move(body)}));
  last_tx_ = SteadyClock::now();
  signal_.cancel();
}

void Session::Close(websocket::close_code code, std::string reason) {
  if (dead_ || close_) return;
  if (!upgraded_) {  // nothing to say yet: no WebSocket to close
    Kill("closing before the upgrade");
    return;
  }
  close_.emplace(code, std::move(reason));
  signal_.cancel();
}

void Session::Kill(std::string_view why) {
  if (dead_) return;
  dead_ = true;
  if (!why.empty()) {
    spdlog::info("gateway: connection of '{}' dropped: {}", serial_.empty() ? "?" : serial_, why);
  }
  ErrorCode ec;
  beast::get_lowest_layer(ws_).socket().close(ec);
  signal_.cancel();
  watchdog_.cancel();
}

asio::awaitable<void> Session::Refuse(http::status status,
                                      const http::request<http::empty_body>& req) {
  http::response<http::string_body> res{status, req.version()};
  res.set(http::field::connection, "close");
  res.set(http::field::content_type, "text/plain");
  res.body() = std::string(http::obsolete_reason(status)) + "\n";
  res.prepare_payload();
  ErrorCode ec;
  co_await http::async_write(ws_.next_layer(), res, asio::redirect_error(asio::use_awaitable, ec));
  if (!ec) co_await ws_.next_layer().async_shutdown(asio::redirect_error(asio::use_awaitable, ec));
}

// TLS handshake, then the HTTP upgrade with the serial and path checks.
asio::awaitable<bool> Session::Upgrade() {
  ErrorCode ec;
  co_await ws_.next_layer().async_handshake(ssl::stream_base::server,
                                            asio::redirect_error(asio::use_awaitable, ec));
  if (ec) {
    // Another CA, no certificate, an expired one: the handshake already
    // told the peer (TLS alert); nothing else is said.
    ++gw_->stats.refused;
    spdlog::info("gateway: TLS handshake refused: {}", ec.message());
    co_return false;
  }
  serial_ = net::PeerCommonName(ws_.next_layer().native_handle());
  beast::flat_buffer buffer;
  http::request_parser<http::empty_body> parser;
  parser.header_limit(8U << 10U);
  co_await http::async_read(ws_.next_layer(), buffer, parser,
                            asio::redirect_error(asio::use_awaitable, ec));
  if (ec) co_return false;
  const auto& req = parser.get();
  const std::string_view target(req.target().data(), req.target().size());
  if (!websocket::is_upgrade(req)) {
    co_await Refuse(http::status::bad_request, req);
    co_return false;
  }
  if (target != kPath) {
    co_await Refuse(http::status::not_found, req);
    co_return false;
  }
  if (serial_.empty() || gw_->stopped || !gw_->store.FindDevice(serial_)) {
    ++gw_->stats.refused;
    spdlog::warn("gateway: refused a device certificate for serial '{}': not registered", serial_);
    co_await Refuse(http::status::forbidden, req);
    co_return false;
  }
  ws_.read_message_max(proto::kMaxMessageBytes);
  ws_.set_option(websocket::stream_base::decorator(
      [](websocket::response_type& res) { res.set(http::field::server, "sag-cloud"); }));
  co_await ws_.async_accept(req, asio::redirect_error(asio::use_awaitable, ec));
  if (ec) co_return false;
  co_return true;
}

asio::awaitable<void> Session::Run() {
  auto self = shared_from_this();
  handshake_deadline_ = SteadyClock::now() + gw_->options.handshake_timeout;
  asio::co_spawn(gw_->io, Watchdog(), [self](const std::exception_ptr&) {});
  const bool upgraded = co_await Upgrade();
  handshake_deadline_.reset();
  if (upgraded && !dead_) {
    upgraded_ = true;
    last_rx_ = SteadyClock::now();
    Rearm();
    asio::co_spawn(gw_->io, Writer(), [self](const std::exception_ptr&) {});
    beast::flat_buffer buffer;
    for (;;) {
      ErrorCode ec;
      buffer.clear();
      co_await ws_.async_read(buffer, asio::redirect_error(asio::use_awaitable, ec));
      if (ec || dead_) {
        if (ec == websocket::error::message_too_big) {
          spdlog::warn("gateway: '{}' sent a message above {} bytes; closed with 1009", serial_,
                       proto::kMaxMessageBytes);
        }
        break;
      }
      last_rx_ = SteadyClock::now();
      if (!ws_.got_text()) {
        Send(proto::ProtocolError{"Malformed", "binary frames are not accepted; send text"});
        Close(websocket::close_code::bad_payload, "binary frame");
        continue;
      }
      const auto data = buffer.data();
      Handle({static_cast<const char*>(data.data()), data.size()});
    }
  }
  Kill({});
  OnClosed();
}

asio::awaitable<void> Session::Writer() {
  auto self = shared_from_this();
  while (!dead_) {
    ErrorCode ec;
    if (!queue_.empty()) {
      write_started_ = SteadyClock::now();
      Rearm();
      co_await ws_.async_write(asio::buffer(queue_.front()),
                               asio::redirect_error(asio::use_awaitable, ec));
      write_started_.reset();
      if (ec) {
        Kill("write failed: " + ec.message());
        break;
      }
      queue_.pop_front();
      continue;
    }
    if (close_) {
      close_started_ = SteadyClock::now();
      Rearm();
      co_await ws_.async_close(websocket::close_reason(close_->first, close_->second),
                               asio::redirect_error(asio::use_awaitable, ec));
      Kill({});
      break;
    }
    signal_.expires_at(SteadyClock::time_point::max());
    co_await signal_.async_wait(asio::redirect_error(asio::use_awaitable, ec));
  }
}

asio::awaitable<void> Session::Watchdog() {
  auto self = shared_from_this();
  const auto hb = gw_->options.heartbeat;
  while (!dead_) {
    const auto now = SteadyClock::now();
    auto next = SteadyClock::time_point::max();
    const auto due = [&](std::optional<SteadyClock::time_point> at) {
      if (at) next = std::min(next, *at);
      return at && now >= *at;
    };
    if (due(handshake_deadline_)) {
      Kill("no TLS/WebSocket handshake within " +
           std::to_string(gw_->options.handshake_timeout.count()) + " ms");
      break;
    }
    if (write_started_ && due(*write_started_ + gw_->options.write_timeout)) {
      Kill("a write did not complete within " + std::to_string(gw_->options.write_timeout.count()) +
           " ms");
      break;
    }
    if (close_started_ && due(*close_started_ + gw_->options.close_timeout)) {
      Kill("the close handshake was not answered");
      break;
    }
    if (upgraded_) {
      if (due(last_rx_ + kSilenceFactor * hb)) {
        Kill("silent for " + std::to_string(kSilenceFactor) + " heartbeat intervals");
        break;
      }
      if (hello_done_ && !close_ && due(last_tx_ + hb)) {
        Send(proto::Heartbeat{UtcNow()});
        next = std::min(next, last_tx_ + hb);
      }
    }
    ErrorCode ec;
    watchdog_.expires_at(next);
    co_await watchdog_.async_wait(asio::redirect_error(asio::use_awaitable, ec));
  }
}

void Session::Handle(std::string_view text) {
  auto decoded = proto::Decode(text);
  if (!decoded) {
    const Error& e = decoded.error();
    spdlog::warn("gateway: bad message from '{}': {}", serial_, e.ToString());
    Send(proto::ProtocolError{std::string(proto::ErrorCodeFor(e)), e.message()});
    if (e.code() == Errc::kProtocolVersion && !hello_done_) {
      Close(websocket::close_code::policy_error, "unsupported protocol version");
    } else if (e.code() == Errc::kProtocol && ++malformed_ > gw_->options.max_malformed) {
      Close(websocket::close_code::policy_error, "too many malformed messages");
    }
    return;
  }
  const proto::Message& m = *decoded;
  if (gw_->stopped) return;
  if (!hello_done_ && !std::holds_alternative<proto::Hello>(m.body)) {
    Send(proto::ProtocolError{"OutOfOrder", "the first message must be hello"}, m.id);
    Close(websocket::close_code::policy_error, "hello first");
    return;
  }
  seen_ = true;
  std::visit(
      [&](const auto& body) {
        using T = std::decay_t<decltype(body)>;
        if constexpr (std::is_same_v<T, proto::Hello>) {
          OnHello(m, body);
        } else if constexpr (std::is_same_v<T, proto::Heartbeat>) {
          // Traffic; last_rx_ is updated.
        } else if constexpr (std::is_same_v<T, proto::JobAck>) {
          OnJobAck(body);
        } else if constexpr (std::is_same_v<T, proto::Progress>) {
          OnReport(body.seq, "progress", body.job_id,
                   body.stage + " " + std::to_string(body.percent) + "%",
                   [&](DeviceRecord& d, std::optional<JobRecord>& job) {
                     if (!job || IsFinal(job->state) || StampNewer(*job, d.epoch, body.seq)) {
                       return;
                     }
                     if (job->state == JobState::kPending || job->state == JobState::kOffered) {
                       job->state = JobState::kAccepted;
                     }
                     job->device_state = body.stage;
                     job->percent = body.percent;
                     Stamp(*job, d.epoch, body.seq);
                   });
        } else if constexpr (std::is_same_v<T, proto::Result>) {
          OnReport(body.seq, "result", body.job_id, body.outcome,
                   [&](DeviceRecord& d, std::optional<JobRecord>& job) {
                     // The device's versions only from a report newer than
                     // what the last hello (or state) already reflected.
                     if (body.seq > d.snapshot_seq) {
                       d.versions = body.versions;
                       d.snapshot_seq = body.seq;
                     }
                     if (!job) return;
                     // A result ends its job on the device: a newer report
                     // can say no more of it unless it was final already. (A
                     // hello stamps the jobs it lists, also one listed in its
                     // last state without the outcome whose result is replayed
                     // after it: dropping that result left the job open.)
                     if (IsFinal(job->state) && StampNewer(*job, d.epoch, body.seq)) {
                       spdlog::info(
                           "gateway: job {}: result '{}' (#{}) is older than the state "
                           "recorded (#{}); kept",
                           body.job_id, body.outcome, body.seq, job->stamp_seq);
                       return;
                     }
                     job->state = StateOfOutcome(body.outcome, body.error, *job);
                     job->outcome = body.outcome;
                     job->error = body.error;
                     if (job->state == JobState::kCommitted) job->percent = 100;
                     Stamp(*job, d.epoch, body.seq);
                   });
        } else if constexpr (std::is_same_v<T, proto::State>) {
          OnReport(body.seq, "state", "", body.agent_state,
                   [&](DeviceRecord& d, std::optional<JobRecord>&) {
                     if (body.seq <= d.snapshot_seq) return;
                     d.versions = body.versions;
                     d.boot = body.boot;
                     if (!body.agent_state.empty()) d.agent_state = body.agent_state;
                     d.snapshot_seq = body.seq;
                   });
        } else if constexpr (std::is_same_v<T, proto::CancelAck>) {
          OnCancelAck(body);
        } else if constexpr (std::is_same_v<T, proto::ProtocolError>) {
          spdlog::warn("gateway: '{}' reports a protocol error {}: {}", serial_, body.code,
                       body.message);
        } else {
          // hello.ack, job, ack, cancel: the cloud's own messages.
          Send(proto::ProtocolError{"OutOfOrder", "'" + std::string(proto::TypeName(m.body)) +
                                                      "' is sent by the cloud, not to it"},
               m.id);
        }
      },
      m.body);
}

void Session::OnHello(const proto::Message& m, const proto::Hello& hello) {
  if (hello.serial != serial_) {
    Send(proto::ProtocolError{"Malformed", "device.serial '" + hello.serial +
                                               "' is not the certificate's '" + serial_ + "'"},
         m.id);
    Close(websocket::close_code::policy_error, "serial mismatch");
    return;
  }
  Store& store = gw_->store;
  std::optional<DeviceRecord> d = store.FindDevice(serial_);
  if (!d) {  // checked at the upgrade and never unregistered: a store failure
    Close(websocket::close_code::policy_error, "unknown device");
    return;
  }
  auto self = shared_from_this();
  if (auto old = gw_->Channel(serial_); old && old != self) {
    old->Close(websocket::close_code::normal, "replaced");
  }
  gw_->channels[serial_] = self;
  hello_done_ = true;
  Rearm();  // our heartbeats start now

  if (d->smartag_id.empty()) d->smartag_id = hello.smartag_id;
  if (d->model.empty()) d->model = hello.model;
  d->agent_version = hello.agent_version;
  d->versions = hello.versions;
  d->boot = hello.boot;
  d->agent_state = hello.agent_state;
  d->online = true;
  d->last_seen = UtcNow();
  if (d->epoch != hello.outbox_epoch) {
    if (!d->epoch.empty()) {
      spdlog::info("gateway: '{}' has a new outbox (epoch {} -> {}); its sequence restarts",
                   serial_, d->epoch, hello.outbox_epoch);
    }
    d->epoch = hello.outbox_epoch;
    d->acked_seq = 0;
  }
  d->snapshot_seq = hello.last_seq;
  const std::string epoch = d->epoch;

  // One transaction: the device's row and the jobs it names.
  StoreWrite w;
  // The jobs the device knows: its word is the truth, as of last_seq.
  std::map<std::string, bool, std::less<>> listed;
  for (const auto& s : hello.jobs) {
    listed[s.job_id] = true;
    std::optional<JobRecord> job = store.FindJob(s.job_id);
    if (!job || job->serial != serial_ || StampNewer(*job, epoch, hello.last_seq)) {
      continue;
    }
    job->device_state = s.state;
    if (!s.outcome.empty()) {
      job->state = StateOfOutcome(s.outcome, s.error, *job);
      job->outcome = s.outcome;
      job->error = s.error;
    } else if (job->state == JobState::kPending || job->state == JobState::kOffered) {
      job->state = JobState::kAccepted;
    }
    Stamp(*job, epoch, hello.last_seq);
    w.jobs.push_back(std::move(*job));
  }
  w.device = *d;
  // Relaxed: a hello is the device's whole state, sent again on every
  // connect; a power cut that loses it loses nothing the device does not
  // repeat (and a later durable write makes it durable too).
  w.durability = Durability::kRelaxed;
  (void)gw_->Write(w, "recording the hello of " + serial_);
  spdlog::info("gateway: '{}' online (device {}, dpi {}, {} jobs known, reports up to #{})",
               serial_, hello.versions.device, hello.versions.dpi, hello.jobs.size(),
               hello.last_seq);

  const auto hb_s = static_cast<std::uint32_t>(
      std::max<std::int64_t>(1, (gw_->options.heartbeat.count() + 999) / 1000));
  Send(proto::HelloAck{UtcNow(), hb_s, d->epoch, d->acked_seq}, m.id);
  // Jobs the device does not know yet: offered (again).
  // A cancel the device has not answered yet is sent (again): for an
  // unfinished job, or one the device lists (it ended while the cancel was
  // on its way: its answer is recorded too). A job whose cancel was asked
  // is not offered again.
  for (JobRecord& job : store.JobsOf(serial_)) {
    const bool is_listed = listed.contains(job.spec.job_id);
    const bool cancel =
        job.cancel_requested && job.cancel_answer.empty() && (is_listed || !IsFinal(job.state));
    if (is_listed) {
      if (cancel) Send(proto::Cancel{job.spec.job_id});
      continue;
    }
    if (!job.cancel_requested &&
        (job.state == JobState::kPending || job.state == JobState::kOffered)) {
      gw_->SendJob(*this, job, true);
    }
    if (cancel) Send(proto::Cancel{job.spec.job_id});
  }
}

void Session::OnCancelAck(const proto::CancelAck& ack) {
  spdlog::info("gateway: '{}' {} the cancel of job {}{}", serial_,
               ack.accepted ? "accepted" : "refused", ack.job_id,
               ack.error ? ": " + ack.error->name + ": " + ack.error->message : std::string());
  std::optional<JobRecord> job = gw_->store.FindJob(ack.job_id);
  if (!job || job->serial != serial_) {
    spdlog::warn("gateway: '{}' answered a cancel of job {}, which is not one of its jobs", serial_,
                 ack.job_id);
    return;
  }
  job->cancel_answer = ack.accepted ? "accepted" : "refused";
  job->cancel_reason = ack.error ? ack.error->name + ": " + ack.error->message : std::string();
  // An accepted cancel ends the job by its result (failed, Cancelled). A
  // device that does not know a job the cloud never saw it take will not
  // get it again: cancelled here.
  if (!ack.accepted && ack.error && ack.error->name == ErrcName(Errc::kJobUnknown) &&
      (job->state == JobState::kPending || job->state == JobState::kOffered)) {
    job->state = JobState::kCancelled;
    job->error = CancelledInCloud("cancelled before the device started it (it does not know it)");
  }
  job->updated = UtcNow();
  StoreWrite w;
  w.jobs.push_back(std::move(*job));
  (void)gw_->Write(w, "recording the answer to the cancel of job " + ack.job_id);
}

void Session::OnJobAck(const proto::JobAck& ack) {
  std::optional<JobRecord> job = gw_->store.FindJob(ack.job_id);
  if (!job || job->serial != serial_) {
    spdlog::warn("gateway: '{}' answered job {}, which is not one of its jobs", serial_,
                 ack.job_id);
    return;
  }
  if (IsFinal(job->state)) return;
  if (!ack.accepted) {
    job->state = JobState::kRejected;
    job->error = ack.error;
    spdlog::info("gateway: '{}' refused job {}: {}", serial_, ack.job_id,
                 ack.error ? ack.error->message : std::string("(no reason)"));
  } else {
    if (!ack.outcome.empty()) {
      job->state = StateOfOutcome(ack.outcome, ack.error, *job);
      job->outcome = ack.outcome;
      job->error = ack.error;
    } else if (job->state == JobState::kPending || job->state == JobState::kOffered) {
      job->state = JobState::kAccepted;
    }
    job->device_state = ack.state;
  }
  job->updated = UtcNow();
  StoreWrite w;
  w.jobs.push_back(std::move(*job));
  (void)gw_->Write(w, "recording the answer to job " + ack.job_id);
}

template <typename Apply>
void Session::OnReport(std::uint64_t seq, std::string_view type, const std::string& job_id,
                       std::string detail, Apply apply) {
  Store& store = gw_->store;
  std::optional<DeviceRecord> d = store.FindDevice(serial_);
  if (!d) return;
  if (seq <= d->acked_seq) {
    // At least once: a report sent again after a lost ack or a restart.
    ++gw_->stats.reports_duplicate;
    Send(proto::Ack{d->epoch, d->acked_seq});
    return;
  }
  // In order over one connection: everything below seq was recorded or was
  // dropped by the device on purpose (superseded progress, agent/outbox.h).
  // The change is made on copies and written in one transaction with the
  // report: a failed write changes nothing, here or in the store, so the
  // report sent again is recorded once.
  std::optional<JobRecord> job;
  if (!job_id.empty()) {
    job = store.FindJob(job_id);
    if (job && job->serial != serial_) job.reset();
  }
  apply(*d, job);
  d->acked_seq = seq;
  d->last_seen = UtcNow();
  StoreWrite w;
  w.report = ReportRecord{serial_, d->epoch,          seq,         std::string(type),
                          job_id,  std::move(detail), d->last_seen};
  w.device = *d;
  if (job) w.jobs.push_back(std::move(*job));
  // Durable before acknowledged: a report acked is never lost by a restart
  // or a power cut.
  const auto written = gw_->Write(w, "recording report #" + std::to_string(seq) + " of " + serial_);
  if (!written) {
    Send(proto::ProtocolError{"Internal", "the report could not be recorded; send it again"});
    Close(websocket::close_code::try_again_later, "store failure");
    return;
  }
  if (*written == WriteResult::kDuplicateReport) {
    // Recorded already (by another connection of the device, or another
    // gateway node): acknowledged again, not recorded again.
    ++gw_->stats.reports_duplicate;
  } else {
    ++gw_->stats.reports_recorded;
  }
  Send(proto::Ack{d->epoch, seq});
}

void Session::OnClosed() {
  gw_->sessions.erase(this);
  if (!hello_done_) return;
  if (const auto it = gw_->channels.find(serial_);
      it != gw_->channels.end() && it->second.lock().get() == this) {
    gw_->channels.erase(it);
    if (!gw_->stopped) {
      if (std::optional<DeviceRecord> d = gw_->store.FindDevice(serial_)) {
        d->online = false;
        d->last_seen = UtcNow();
        StoreWrite w;
        w.device = std::move(*d);
        w.durability = Durability::kRelaxed;
        (void)gw_->Write(w, "recording that " + serial_ + " went offline");
      }
      spdlog::info("gateway: '{}' offline", serial_);
    }
  }
}

// --- Gateway -------------------------------------------------------------

asio::awaitable<void> Gateway::Impl::Accept() {
  auto self = shared_from_this();
  while (!stopped) {
    ErrorCode ec;
    tcp::socket socket =
        co_await acceptor->async_accept(asio::redirect_error(asio::use_awaitable, ec));
    if (stopped) break;
    if (ec) {
      // EMFILE and the like: wait a little instead of spinning.
      spdlog::warn("gateway: accept failed: {}", ec.message());
      asio::steady_timer t(io, std::chrono::milliseconds(100));
      co_await t.async_wait(asio::redirect_error(asio::use_awaitable, ec));
      continue;
    }
    if (sessions.size() >= options.max_connections) {
      socket.close(ec);
      ++stats.refused;
      continue;
    }
    socket.set_option(tcp::no_delay(true), ec);
    ++stats.accepted;
    auto session = std::make_shared<Session>(self, std::move(socket));
    sessions[session.get()] = session;
    // The completion handler owns the session until its Run ends.
    asio::co_spawn(io, session->Run(), [session](const std::exception_ptr& e) {
      if (!e) return;
      try {
        std::rethrow_exception(e);
      } catch (const std::exception& ex) {
        spdlog::error("gateway: a connection failed: {}", ex.what());
      }
    });
  }
}

asio::awaitable<void> Gateway::Impl::Sweep() {
  auto self = shared_from_this();
  asio::steady_timer timer(io);
  while (!stopped) {
    timer.expires_after(options.sweep_interval);
    ErrorCode ec;
    co_await timer.async_wait(asio::redirect_error(asio::use_awaitable, ec));
    if (stopped) break;
    SweepJobs(std::chrono::system_clock::now());
    FlushLastSeen();
  }
}

void Gateway::Impl::FlushLastSeen() {
  std::vector<std::pair<std::string, std::string>> seen;
  const std::string now = UtcNow();
  for (const auto& [serial, weak] : channels) {
    if (auto s = weak.lock(); s && s->TakeSeen()) seen.emplace_back(serial, now);
  }
  if (Status st = store.TouchDevices(seen); !st) {
    spdlog::error("gateway: recording when {} devices last spoke: {}", seen.size(),
                  st.error().ToString());
  }
}

Gateway::Gateway(asio::io_context& io, GatewayOptions options, Store& store)
    : impl_(std::make_shared<Impl>(io, std::move(options), store)) {}

Gateway::~Gateway() { Stop(); }

Status Gateway::Start() {
  try {
    SAG_TRY(impl_->tls, net::MakeTlsServerContext({impl_->options.cert_chain, impl_->options.key,
                                                   impl_->options.device_ca}));
    if (impl_->options.device_ca.empty()) {
      return Error(Errc::kInvalidArgument, "the gateway needs the device CA (mutual TLS)");
    }
    ErrorCode ec;
    const auto address = asio::ip::make_address(impl_->options.listen_address, ec);
    if (ec) {
      return Error(Errc::kInvalidArgument,
                   "listen address '" + impl_->options.listen_address + "' is not an IP address");
    }
    const tcp::endpoint endpoint(address, impl_->options.port);
    auto& acc = impl_->acceptor.emplace(impl_->io);
    acc.open(endpoint.protocol(), ec);
    if (!ec) acc.set_option(asio::socket_base::reuse_address(true), ec);
    if (!ec) acc.bind(endpoint, ec);
    if (!ec) acc.listen(asio::socket_base::max_listen_connections, ec);
    if (ec) {
      impl_->acceptor.reset();
      return Error(Errc::kNetConnect, "cannot listen on " + impl_->options.listen_address + ":" +
                                          std::to_string(impl_->options.port) + ": " +
                                          ec.message());
    }
    impl_->port = acc.local_endpoint().port();
    // A device is online only with a live channel of this process.
    std::vector<std::string> offline;
    for (const DeviceRecord& d : impl_->store.Devices()) {
      if (d.online) offline.push_back(d.serial);
    }
    if (Status st = impl_->store.MarkOffline(offline); !st) {
      return st.error().WithContext("marking every device offline at start");
    }
    asio::co_spawn(impl_->io, impl_->Accept(), [](const std::exception_ptr&) {});
    asio::co_spawn(impl_->io, impl_->Sweep(), [](const std::exception_ptr&) {});
    spdlog::info("gateway: listening on {}:{}", impl_->options.listen_address, impl_->port);
    return Ok();
  } catch (const std::exception& e) {
    return Error(Errc::kInternal, std::string("starting the gateway: ") + e.what());
  }
}

void Gateway::Stop() {
  if (impl_->stopped) return;
  impl_->stopped = true;
  if (impl_->acceptor) {
    ErrorCode ec;
    impl_->acceptor->close(ec);
  }
  for (auto& [ptr, weak] : impl_->sessions) {
    if (auto s = weak.lock()) s->Close(websocket::close_code::going_away, "gateway stopping");
  }
  impl_->FlushLastSeen();
  std::vector<std::string> offline;
  offline.reserve(impl_->channels.size());
  for (const auto& [serial, weak] : impl_->channels) offline.push_back(serial);
  impl_->channels.clear();
  if (Status st = impl_->store.MarkOffline(offline); !st) {
    spdlog::error("gateway: marking the devices offline at stop: {}", st.error().ToString());
  }
}

std::uint16_t Gateway::port() const { return impl_->port; }

std::size_t Gateway::SweepJobs(std::chrono::system_clock::time_point now) {
  return impl_->SweepJobs(now);
}

std::size_t Gateway::Impl::SweepJobs(std::chrono::system_clock::time_point now) {
  std::size_t ended = 0;
  StoreWrite w;
  for (JobRecord& j : store.OpenJobs()) {
    JobRecord* job = &j;
    std::string why;
    const auto deadline = ParseUtc(job->spec.deadline);
    const auto updated = ParseUtc(job->updated);
    if (deadline && now >= *deadline) {
      why = "its deadline " + job->spec.deadline + " passed";
    } else if (job->state != JobState::kPending && updated &&
               now - *updated >= options.job_silence) {
      why = "no report about it since " + job->updated;
    } else {
      continue;
    }
    spdlog::warn("gateway: job {} of {} timed out: {}", job->spec.job_id, job->serial, why);
    job->state = JobState::kTimedOut;
    job->error = proto::ErrorInfo{static_cast<int>(Errc::kTimeout), "Timeout",
                                  "the job timed out in the cloud: " + why};
    job->timed_out = UtcTime(now);
    job->updated = job->timed_out;
    w.jobs.push_back(std::move(j));
    ++ended;
  }
  if (ended > 0 && !Write(w, "recording timed-out jobs")) return 0;
  return ended;
}

Status Gateway::Push(JobRecord job) {
  // The protocol's own checks: a job the device would refuse as malformed is
  // refused here, with the field.
  if (auto check = proto::Decode(proto::Encode({"check", "", job.spec})); !check) {
    return Error(Errc::kInvalidArgument, "job " + job.spec.job_id + ": " + check.error().message());
  }
  auto session = impl_->Channel(job.serial);
  job.state = session ? JobState::kOffered : JobState::kPending;
  // Durable before it leaves: one transaction (one fsync) per job.
  SAG_TRY_STATUS(impl_->store.AddJob(job));
  if (session) impl_->SendJob(*session, job, false);
  return Ok();
}

Status Gateway::Cancel(const std::string& job_id) {
  std::optional<JobRecord> job = impl_->store.FindJob(job_id);
  if (!job) return Error(Errc::kJobUnknown, "no job " + job_id);
  if (IsFinal(job->state)) {
    return Error(Errc::kInvalidArgument,
                 "job " + job_id + " is already " + std::string(JobStateName(job->state)));
  }
  job->cancel_requested = true;
  job->cancel_answer.clear();
  job->cancel_reason.clear();
  job->updated = UtcNow();
  // A job that never left the cloud ends here; any other is the device's
  // to end (its cancel.ack, then its result).
  const bool never_sent = job->state == JobState::kPending;
  if (never_sent) {
    job->state = JobState::kCancelled;
    job->error = CancelledInCloud("cancelled before it was offered to the device");
  }
  StoreWrite w;
  w.jobs.push_back(*job);
  if (auto r = impl_->store.Write(w); !r) return r.error().WithContext("cancelling " + job_id);
  spdlog::info("gateway: job {} of {}: cancel {}", job_id, job->serial,
               never_sent ? "done (never offered)" : "asked");
  if (auto s = impl_->Channel(job->serial); s && !never_sent) s->Send(proto::Cancel{job_id});
  return Ok();
}

bool Gateway::IsOnline(const std::string& serial) const {
  return impl_->Channel(serial) != nullptr;
}

GatewayStats Gateway::stats() const {
  GatewayStats s = impl_->stats;
  s.connections = impl_->sessions.size();
  s.channels = impl_->channels.size();
  return s;
}

}  // namespace sag::cloud
