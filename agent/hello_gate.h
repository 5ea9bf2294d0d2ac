// The trial boot's `health.require_cloud` check (docs/device-upgrade.md): the
// new OS is healthy only if the control channel came up and the cloud
// answered its `hello` with `hello.ack` (docs/protocol.md). A TCP connection,
// a TLS handshake or a WebSocket upgrade is not enough: a gateway that
// accepts and never answers, or refuses this device's hello, is as lost to
// the fleet as no gateway at all.
//
// The channel (agent/channel.h, ChannelOptions::hello_gate) signals the gate
// on the daemon's event loop; the health check waits on it on the install's
// worker thread. All methods are thread-safe.
#pragma once

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <optional>
#include <string>

#include "common/error.h"

namespace sag::agent {

class HelloGate {
 public:
  // `endpoint`: cloud.endpoint, named in the check's errors.
  explicit HelloGate(std::string endpoint);

  // A channel to the endpoint runs in this process and will signal the gate.
  // Before this (no channel: `run --once` without a cloud, a command) Wait()
  // fails at once, since nothing could answer.
  void Expect();
  // The cloud answered hello. Latched: the check asks whether this boot
  // reached the cloud, and a later disconnect does not undo that.
  void Answered();
  // An attempt ended without hello.ack (or a live channel broke): kept for
  // the message of a Wait() that times out.
  void Failed(const Error& why);
  // No channel will answer any more (it could not start, or the agent
  // stops): a waiting or later Wait() returns at once. Ignored once answered.
  void Abandon(Error why);

  [[nodiscard]] bool answered() const;

  // Blocks until the hello is answered (Ok), `timeout` passes
  // (kHealthCheckFailed naming the endpoint, the timeout and the channel's
  // last error), or the gate is abandoned (kCancelled as is, so that an agent
  // stopping mid-check does not roll the trial back; else
  // kHealthCheckFailed with the reason).
  [[nodiscard]] Status Wait(std::chrono::milliseconds timeout) const;

 private:
  enum class State { kNoChannel, kWaiting, kAnswered, kAbandoned };

  const std::string endpoint_;
  mutable std::mutex mu_;
  mutable std::condition_variable cv_;
  State state_ = State::kNoChannel;  // guarded by mu_
  std::optional<Error> last_error_;  // guarded by mu_
  std::optional<Error> abandoned_;   // guarded by mu_
};

}  // namespace sag::agent
