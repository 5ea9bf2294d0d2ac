// The device gateway: the cloud end of the device channel (docs/protocol.md).
//
// A WebSocket-over-TLS server on the caller's io_context. A device connects
// with its certificate: the TLS handshake refuses a certificate that does not
// chain to the device CA, the WebSocket upgrade answers 403 when the
// certificate's subject CN (the serial number) is not registered in the
// store or the path is not /device/v1. One live channel per device: a second
// connection replaces the first (closed with 1000 "replaced").
//
// On `hello` the store takes the device's state (versions, boot, agent
// state, the jobs it knows) and marks it online; jobs of the device that are
// not final and that the device did not list are offered again. Reports
// (progress, result, state) are recorded once per (epoch, seq) and saved
// before they are acknowledged; a report at or below the last recorded seq is
// acknowledged again and not recorded again. A report older than what the
// store already holds (a stale "committed" resent after a rollback) does not
// overwrite the newer state. No traffic for 3 heartbeat intervals: the
// connection is closed and the device marked offline.
//
// Beast lives in gateway.cpp only. Everything runs on the io_context's
// thread; call the methods from it (Push from an API handler on the same
// loop, or through asio::post).
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>

#include "cloud/store.h"
#include "common/error.h"
#include "common/proto/messages.h"

namespace boost::asio {
class io_context;
}  // namespace boost::asio

namespace sag::cloud {

struct GatewayOptions {
  std::string listen_address = "127.0.0.1";  // an IP literal (IPv4 or IPv6)
  std::uint16_t port = 0;                    // 0: an ephemeral port (see Gateway::port())
  std::filesystem::path cert_chain;          // PEM: the server certificate and intermediates
  std::filesystem::path key;
  std::filesystem::path device_ca;  // PEM: device certificates must chain to this CA
  // Sent in hello.ack (rounded up to whole seconds there) and used for the
  // gateway's own heartbeats; no traffic for 3 intervals = offline.
  std::chrono::milliseconds heartbeat{30000};
  // TLS handshake + WebSocket upgrade, each write, the close handshake.
  std::chrono::milliseconds handshake_timeout{10000};
  std::chrono::milliseconds write_timeout{10000};
  std::chrono::milliseconds close_timeout{2000};
  // Nothing stays in progress forever: a job offered or accepted with no
  // report about it for job_silence, or any unfinished job past its
  // deadline, becomes TimedOut (a later result still counts). Checked every
  // sweep_interval.
  std::chrono::seconds job_silence{3600};
  std::chrono::milliseconds sweep_interval{5000};
  std::size_t max_connections = 20000;  // further connections are closed at once
  std::size_t max_malformed = 10;       // then the connection is closed with 1008
};

struct GatewayStats {
  std::size_t connections = 0;  // TCP connections open (any phase)
  std::size_t channels = 0;     // devices past hello
  std::uint64_t accepted = 0;   // connections accepted since Start
  std::uint64_t refused = 0;    // TLS or upgrade refused (certificate, serial, path)
  std::uint64_t reports_recorded = 0;
  std::uint64_t reports_duplicate = 0;
};

class Gateway {
 public:
  Gateway(boost::asio::io_context& io, GatewayOptions options, Store& store);
  ~Gateway();
  Gateway(const Gateway&) = delete;
  Gateway& operator=(const Gateway&) = delete;

  // Loads the TLS files, binds and listens. kNetTls for unusable TLS files,
  // kNetConnect when the address cannot be bound.
  Status Start();
  // Stops accepting and closes every channel (devices are marked offline).
  // The io_context must run a little longer for the closes to finish.
  void Stop();

  [[nodiscard]] std::uint16_t port() const;

  // A new job for job.serial: recorded in the store (Pending, saved), then
  // sent at once if the device is online, else on its next hello. It stays
  // in the store until the device answers it. kUnknownDevice, kJobExists,
  // kInvalidArgument (a spec the protocol cannot carry), store errors.
  Status Push(JobRecord job);
  // Asks the device to cancel a job: recorded (cancel_requested), sent now
  // if the device is online, else with its next hello (a job whose cancel
  // was asked is not offered again). A Pending job (never offered) becomes
  // Cancelled at once. The device's cancel.ack is recorded (cancel_answer,
  // cancel_reason); an accepted cancel ends the job with its result (failed,
  // Cancelled: JobState kCancelled). kJobUnknown for an unknown id;
  // kInvalidArgument for a final job.
  Status Cancel(const std::string& job_id);

  // Ends the silent and overdue jobs as of `now` (the gateway does it every
  // sweep_interval by itself); returns how many it ended.
  std::size_t SweepJobs(std::chrono::system_clock::time_point now);

  // Whether the device has a live channel past hello.
  [[nodiscard]] bool IsOnline(const std::string& serial) const;
  [[nodiscard]] GatewayStats stats() const;

  struct Impl;  // opaque: the sessions of gateway.cpp share it

 private:
  std::shared_ptr<Impl> impl_;
};

}  // namespace sag::cloud
