// The daemon's end of the control channel (agent/channel.h, docs/protocol.md):
// what it says in hello, where the cloud's jobs go, and the outbox's reports
// as the protocol's messages.
//
//   hello     identity (configuration), versions and boot state as of the
//             last status refresh (a job's end, the start), the agent's
//             state, every job the registry held then plus the one running,
//             the outbox's epoch and last sequence number;
//   job       becomes a JobSpec and goes to the daemon's queue (the same
//             dispatcher the inbox feeds): its job.ack is sent when the
//             dispatcher answers it: at once for a known or refused job,
//             when the install has gone where it goes in this boot for a new
//             one (the state changes flow as progress meanwhile);
//   cancel    goes to the daemon (Hooks::cancel): a job waiting in its queue
//             ends at once, a running one before its point of no return
//             (Dispatcher::CancelJob); cancel.ack says which, or why not;
//   reports   the outbox's pending reports, in order: "state" and
//             "progress" as progress (stage = the installer's state),
//             "result" as result with the versions running after it,
//             "device" (the daemon's: what runs, after a start or a job
//             that changed it) as state;
//   ack       acknowledges the outbox up to the sequence number.
//
// Everything is called on the daemon's loop thread; nothing here touches
// the registry or the engines, which the worker uses: the daemon hands in a
// snapshot instead.
#pragma once

#include <chrono>
#include <functional>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "agent/channel.h"
#include "agent/config.h"
#include "agent/dispatcher.h"
#include "agent/job.h"
#include "agent/outbox.h"

namespace sag::agent {

// What the worker last saw: versions, boot state, the registry's jobs.
struct DeviceSnapshot {
  std::string device_version;
  std::string dpi_version;
  proto::BootInfo boot;
  std::vector<JobOutcome> jobs;
  std::optional<JobOutcome> running;  // the job on the worker now
};

// Conversions, on their own for the tests.
JobSpec SpecOfJob(const proto::Job& job);
proto::JobAck AckOfAnswer(const JobAnswer& answer);
proto::JobSummary SummaryOf(const JobOutcome& job);
// A report as the protocol carries it: "state" and "progress" as progress,
// "result" as result (with `now`, the versions running); nullopt for a
// report of a job whose type is not known (refused before its image was
// read): the cloud learns of those from the job.ack.
std::optional<OutgoingReport> MessageOf(const Report& report, const proto::Versions& now,
                                        const std::string& job_type);
// committed | rolled_back | failed, "" while the job runs.
std::string OutcomeName(JobPhase phase);

class DaemonChannelHost final : public ChannelHost {
 public:
  struct Hooks {
    // Hands a job to the daemon's queue; the reply comes back on the loop.
    std::function<void(JobSpec, std::function<void(const JobAnswer&)>)> submit;
    std::function<std::string()> agent_state;
    std::function<void(bool online)> on_change;  // status.json's channel
    // status.json's channel: offline, the next attempt in `delay`.
    std::function<void(std::chrono::milliseconds delay, const ChannelStatus&)> on_retry;
    // Cancels a job (on the loop); null: every cancel is refused.
    std::function<CancelAnswer(const std::string& job_id)> cancel;
  };

  DaemonChannelHost(const Config& config, Outbox& outbox, Hooks hooks);

  // From the worker (under the host's lock): the state hello reports.
  void SetSnapshot(DeviceSnapshot snapshot);

  proto::Hello MakeHello() override;
  void OnJob(const proto::Job& job, std::function<void(proto::JobAck)> reply) override;
  void OnCancel(const proto::Cancel& cancel, std::function<void(proto::CancelAck)> reply) override;
  std::vector<OutgoingReport> Pending() override;
  void Acked(std::uint64_t seq) override;
  void OnChannelChange(bool online) override;
  void OnReconnectScheduled(std::chrono::milliseconds delay, const ChannelStatus& status) override;

 private:
  const Config& config_;
  Outbox& outbox_;
  Hooks hooks_;
  mutable std::mutex mu_;
  DeviceSnapshot snapshot_;
};

}  // namespace sag::agent
