// The device end of the control channel (docs/protocol.md): a WebSocket over
// mutual TLS to cloud.endpoint, opened and kept open by the device, on the
// daemon's io_context.
//
// Per connection: resolve, TCP connect, TLS handshake (the server must chain
// to the pinned root and be valid for the endpoint's host name; the device
// presents its certificate), WebSocket upgrade, `hello`, then `hello.ack`.
// Each of these has a deadline (connect_timeout); so has every write. After
// hello.ack the channel is up: the reports the host has not had acknowledged
// are sent in sequence order, then new ones as the host announces them
// (ReportsAvailable); `ack`s are passed to the host (ChannelHost::Acked);
// `job` and `cancel` go to the host, whose answers go back with `re`.
// Heartbeats every `heartbeat` when nothing else was sent; nothing received
// for 3 heartbeat intervals (the larger of ours and the cloud's) = the
// connection is dead.
//
// Reconnect: after any failure, the n-th consecutive failed attempt
// (n = 1, 2, ...) waits BackoffDelay(n): a uniformly random time in
// [0, min(max_backoff, initial_backoff * 2^(n-1))] ("full jitter"), so that a
// fleet that lost the gateway at the same second does not return in the same
// second. A connection that reached hello.ack resets n. The RNG is seeded
// from ChannelOptions::seed (tests) or the system's random device.
//
// Everything runs on the io_context's thread; the host's callbacks are called
// on it and may call back into the Channel.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <variant>
#include <vector>

#include "common/error.h"
#include "common/proto/messages.h"

namespace boost::asio {
class io_context;
}  // namespace boost::asio

namespace sag::agent {

class HelloGate;
struct ChannelStatus;

// A report on its way to the cloud, with its outbox sequence number.
using OutgoingReport = std::variant<proto::Progress, proto::Result, proto::State>;
std::uint64_t SeqOf(const OutgoingReport& report);

// What the channel needs from the daemon. Called on the io_context's thread.
class ChannelHost {
 public:
  virtual ~ChannelHost() = default;

  // The hello of a new connection: identity, versions, boot state, every job
  // the registry holds, the outbox's epoch and last sequence number.
  virtual proto::Hello MakeHello() = 0;
  // A job from the cloud. `reply` sends the job.ack (now or later, on the
  // loop); a reply after the connection ended is dropped (the cloud offers
  // the job again after the next hello, and a known job id is answered with
  // its state).
  virtual void OnJob(const proto::Job& job, std::function<void(proto::JobAck)> reply) = 0;
  virtual void OnCancel(const proto::Cancel& cancel,
                        std::function<void(proto::CancelAck)> reply) = 0;
  // The reports not acknowledged yet, in sequence order (Outbox::Pending).
  virtual std::vector<OutgoingReport> Pending() = 0;
  // The cloud has recorded every report up to `seq` (Outbox::Ack). Called
  // with increasing seq.
  virtual void Acked(std::uint64_t seq) = 0;
  // The channel came up (hello.ack) or went down.
  virtual void OnChannelChange(bool /*online*/) {}
  // An attempt ended (or the live connection broke) and the next one starts
  // in `delay` (BackoffDelay: within [0, max_backoff]); `status` is the
  // channel's, with the attempt's error and the failure count.
  virtual void OnReconnectScheduled(std::chrono::milliseconds /*delay*/,
                                    const ChannelStatus& /*status*/) {}
};

struct ChannelOptions {
  std::string endpoint;  // wss://host:port/device/v1 (host: a name, IPv4 or [IPv6])
  std::filesystem::path root_ca;
  std::filesystem::path device_cert;
  std::filesystem::path device_key;
  std::chrono::milliseconds connect_timeout{10000};  // each step, and each write
  std::chrono::milliseconds heartbeat{30000};
  std::chrono::milliseconds close_timeout{2000};
  std::chrono::milliseconds initial_backoff{1000};
  std::chrono::milliseconds max_backoff{300000};
  std::uint64_t seed = 0;  // 0: seeded from std::random_device
  // The trial boot's health check (agent/hello_gate.h), or null: Expect()ed
  // by Start(), Answered() on hello.ack and nothing earlier, Failed() with
  // the error of every attempt that ends, Abandon()ed (kCancelled) by Stop().
  HelloGate* hello_gate = nullptr;
};

struct ChannelStatus {
  bool online = false;                   // hello.ack received on the live connection
  std::string since;                     // UTC of the last change of `online`
  std::optional<Error> last_error;       // why the last connection ended or failed
  int failures = 0;                      // consecutive failed attempts
  std::chrono::milliseconds next_delay;  // the wait before the next attempt
  std::string server_time;               // the cloud's clock, last seen
  std::uint64_t connects = 0;            // connections that reached hello.ack
  std::uint64_t errors_received = 0;     // `error` messages from the cloud
  std::string last_error_code;           // the last one's code
  int last_close_code = 0;               // WebSocket close status the cloud sent, 0 = none
};

// The delay before the n-th consecutive attempt (n >= 1): uniform in
// [0, min(max, initial * 2^(n-1))].
std::chrono::milliseconds BackoffDelay(int n, std::chrono::milliseconds initial,
                                       std::chrono::milliseconds max, std::mt19937_64& rng);

class Channel {
 public:
  Channel(boost::asio::io_context& io, ChannelOptions options, ChannelHost& host);
  ~Channel();
  Channel(const Channel&) = delete;
  Channel& operator=(const Channel&) = delete;

  // Checks the endpoint and loads the TLS files (kInvalidArgument, kNetTls),
  // then connects and stays connected until Stop().
  Status Start();
  // Closes the connection (WebSocket close, then TLS close_notify, bounded
  // by close_timeout) and stops reconnecting.
  void Stop();
  // The host appended reports: sent now when the channel is up.
  void ReportsAvailable();

  [[nodiscard]] ChannelStatus status() const;

  // Tests only: sends one frame as is (text or binary) on the live connection.
  void SendRawForTest(std::string frame, bool binary);

  struct Impl;  // opaque: the connections of channel.cpp share it

 private:
  std::shared_ptr<Impl> impl_;
};

}  // namespace sag::agent
