#include "agent/hello_gate.h"

#include <spdlog/spdlog.h>

#include <utility>

namespace sag::agent {

HelloGate::HelloGate(std::string endpoint) : endpoint_(std::move(endpoint)) {}

void HelloGate::Expect() {
  const std::lock_guard lock(mu_);
  if (state_ == State::kNoChannel) state_ = State::kWaiting;
}

void HelloGate::Answered() {
  {
    const std::lock_guard lock(mu_);
    if (state_ == State::kAnswered || state_ == State::kAbandoned) return;
    state_ = State::kAnswered;
  }
  cv_.notify_all();
}

void HelloGate::Failed(const Error& why) {
  const std::lock_guard lock(mu_);
  last_error_ = why;
}

void HelloGate::Abandon(Error why) {
  {
    const std::lock_guard lock(mu_);
    if (state_ == State::kAnswered || state_ == State::kAbandoned) return;
    state_ = State::kAbandoned;
    abandoned_ = std::move(why);
  }
  cv_.notify_all();
}

bool HelloGate::answered() const {
  const std::lock_guard lock(mu_);
  return state_ == State::kAnswered;
}

Status HelloGate::Wait(std::chrono::milliseconds timeout) const {
  std::unique_lock lock(mu_);
  if (state_ == State::kNoChannel) {
    return Error(Errc::kHealthCheckFailed,
                 "control channel " + endpoint_ +
                     ": no channel runs in this process, so nothing can answer its hello "
                     "(health.require_cloud is checked by the daemon, sag-agent run)");
  }
  // steady_clock: a clock set by NTP after the boot must not end the wait.
  (void)cv_.wait_for(lock, timeout, [&] { return state_ != State::kWaiting; });
  if (state_ == State::kAnswered) {
    spdlog::info("control channel {}: the cloud answered hello", endpoint_);
    return Ok();
  }
  if (state_ == State::kAbandoned) {
    if (abandoned_->code() == Errc::kCancelled) return *abandoned_;
    return Error(Errc::kHealthCheckFailed,
                 "control channel " + endpoint_ + " cannot come up: " + abandoned_->ToString());
  }
  return Error(Errc::kHealthCheckFailed,
               "control channel " + endpoint_ + ": the cloud did not answer hello within " +
                   (timeout.count() % 1000 == 0 ? std::to_string(timeout.count() / 1000) + " s"
                                                : std::to_string(timeout.count()) + " ms") +
                   " (health.cloud_timeout_s); last error: " +
                   (last_error_ ? last_error_->ToString()
                                : std::string("none, the first connection is still being made")));
}

}  // namespace sag::agent
