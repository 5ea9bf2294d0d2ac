#pragma once
// A device end of the channel for the benchmarks: a fixed hello, every job
// accepted at once (the time of each kept), no reports.
#include <chrono>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "agent/channel.h"

namespace sag::bench {

class FakeHost : public agent::ChannelHost {
 public:
  explicit FakeHost(std::string serial) : serial_(std::move(serial)) {}
  proto::Hello MakeHello() override {
    proto::Hello h;
    h.serial = serial_;
    h.model = "sag-1000";
    h.versions = {"1.0.0", ""};
    h.outbox_epoch = "e";
    return h;
  }
  void OnJob(const proto::Job& job, std::function<void(proto::JobAck)> reply) override {
    got.push_back(std::chrono::steady_clock::now());
    reply(proto::JobAck{job.job_id, true, false, "Downloading", "", std::nullopt});
  }
  void OnCancel(const proto::Cancel& /*cancel*/,
                std::function<void(proto::CancelAck)> /*reply*/) override {}
  std::vector<agent::OutgoingReport> Pending() override { return {}; }
  void Acked(std::uint64_t /*seq*/) override {}

  std::vector<std::chrono::steady_clock::time_point> got;  // when each job arrived

 private:
  std::string serial_;
};

}  // namespace sag::bench
