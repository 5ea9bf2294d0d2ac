// The daemon's end of the channel without a network: hello from the snapshot
// and the outbox, jobs to the daemon's queue and their acks, the outbox's
// reports as the protocol's messages, acks into the outbox.
#include "agent/channel_host.h"

#include <gtest/gtest.h>

#include "tests/support/temp_dir.h"

namespace sag::agent {
namespace {

JobOutcome Outcome(const std::string& id, JobType type, JobPhase phase, const std::string& state) {
  JobOutcome o;
  o.id = id;
  o.type = type;
  o.phase = phase;
  o.state = state;
  o.from = "1.0.0";
  o.to = "1.0.1";
  return o;
}

class ChannelHostTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(outbox_.Load());
    config_.identity.smartag_id = "sag-x";
    config_.identity.serial_number = "sag000x";
    config_.identity.model = "sag-1000";
    DaemonChannelHost::Hooks hooks;
    hooks.submit = [this](const JobSpec& spec, std::function<void(const JobAnswer&)> reply) {
      submitted_.push_back(spec);
      replies_.push_back(std::move(reply));
    };
    hooks.agent_state = [] { return std::string("idle"); };
    hooks.on_change = [this](bool online) { changes_.push_back(online); };
    host_ = std::make_unique<DaemonChannelHost>(config_, outbox_, std::move(hooks));
  }

  sag::test::TempDir dir_;
  Outbox outbox_{dir_.path()};
  Config config_;
  std::unique_ptr<DaemonChannelHost> host_;
  std::vector<JobSpec> submitted_;
  std::vector<std::function<void(const JobAnswer&)>> replies_;
  std::vector<bool> changes_;
};

TEST_F(ChannelHostTest, HelloCarriesTheSnapshotTheJobsAndTheOutboxPosition) {
  DeviceSnapshot snap;
  snap.device_version = "1.0.1";
  snap.dpi_version = "20201117_1_0-0.0.1";
  snap.boot.booted_slot = "B";
  snap.jobs = {Outcome("j1", JobType::kDevice, JobPhase::kCommitted, "Committed"),
               Outcome("j2", JobType::kUnknown, JobPhase::kFailed, "Failed")};
  snap.running = Outcome("j3", JobType::kDpi, JobPhase::kRunning, "Staging");
  host_->SetSnapshot(snap);
  ASSERT_TRUE(outbox_.Append("state", "j3", {{"type", "Dpi"}, {"state", "Staging"}}));
  const proto::Hello h = host_->MakeHello();
  EXPECT_EQ(h.serial, "sag000x");
  EXPECT_EQ(h.versions.device, "1.0.1");
  EXPECT_EQ(h.versions.dpi, "20201117_1_0-0.0.1");
  EXPECT_EQ(h.boot.booted_slot, "B");
  EXPECT_EQ(h.agent_state, "idle");
  ASSERT_EQ(h.jobs.size(), 2U);  // j2's type was never known: not listed
  EXPECT_EQ(h.jobs[0].job_id, "j1");
  EXPECT_EQ(h.jobs[0].outcome, "committed");
  EXPECT_EQ(h.jobs[1].job_id, "j3");
  EXPECT_EQ(h.jobs[1].outcome, "");
  EXPECT_EQ(h.outbox_epoch, outbox_.epoch());
  EXPECT_FALSE(h.outbox_epoch.empty());
  EXPECT_EQ(h.last_seq, 1U);
}

TEST_F(ChannelHostTest, AJobGoesToTheQueueAndItsAnswerBecomesTheAck) {
  proto::Job job{"c1",
                 "Device",
                 "1.0.1",
                 "https://repo/images/os.sagimg",
                 4096,
                 std::string(64, 'a'),
                 "2030-01-01T00:00:00Z",
                 true};
  std::vector<proto::JobAck> acks;
  host_->OnJob(job, [&](const proto::JobAck& a) { acks.push_back(a); });
  ASSERT_EQ(submitted_.size(), 1U);
  const JobSpec& s = submitted_[0];
  EXPECT_EQ(s.id, "c1");
  EXPECT_EQ(s.type, JobType::kDevice);
  EXPECT_EQ(s.source, job.url);
  EXPECT_EQ(s.size, 4096U);
  EXPECT_EQ(s.sha256, job.sha256);
  EXPECT_EQ(s.deadline, job.deadline);
  EXPECT_TRUE(s.allow_downgrade);
  EXPECT_TRUE(acks.empty());  // not before the dispatcher answers

  JobAnswer known;
  known.outcome = Outcome("c1", JobType::kDevice, JobPhase::kRolledBack, "RolledBack");
  known.outcome.error = Error(Errc::kHealthCheckFailed, "slot B unhealthy");
  known.known = true;
  replies_[0](known);
  ASSERT_EQ(acks.size(), 1U);
  EXPECT_TRUE(acks[0].accepted);
  EXPECT_TRUE(acks[0].known);
  EXPECT_EQ(acks[0].outcome, "rolled_back");
  ASSERT_TRUE(acks[0].error);
  EXPECT_EQ(acks[0].error->name, "HealthCheckFailed");

  JobAnswer refused;
  refused.outcome.id = "c1";
  refused.refused = true;
  refused.outcome.error = Error(Errc::kJobConflict, "another job runs");
  const auto ack = AckOfAnswer(refused);
  EXPECT_FALSE(ack.accepted);
  EXPECT_EQ(ack.state, "Refused");
  EXPECT_EQ(ack.error->code, static_cast<int>(Errc::kJobConflict));
}

TEST_F(ChannelHostTest, PendingReportsBecomeProgressAndResultsInOrderAndAcksTrimTheOutbox) {
  DeviceSnapshot snap;
  snap.device_version = "1.0.1";
  host_->SetSnapshot(snap);
  // Accepted before the image was read (type unknown), then the engine's
  // states, progress, the result; a refused job of unknown type.
  ASSERT_TRUE(outbox_.Append("state", "d1", {{"type", "Unknown"}, {"phase", "accepted"}}));
  ASSERT_TRUE(outbox_.Append("state", "d1", {{"type", "Device"}, {"state", "Writing"}}));
  ASSERT_TRUE(outbox_.Append("progress", "d1", {{"state", "Writing"}, {"percent", 40}}));
  ASSERT_TRUE(outbox_.Append(
      "result", "d1", Outcome("d1", JobType::kDevice, JobPhase::kCommitted, "Committed").ToJson()));
  ASSERT_TRUE(outbox_.Append("state", "x9", {{"id", "x9"}, {"state", "Refused"}}));
  const auto pending = host_->Pending();
  ASSERT_EQ(pending.size(), 3U);
  const auto& p1 = std::get<proto::Progress>(pending[0]);
  EXPECT_EQ(p1.seq, 2U);
  EXPECT_EQ(p1.stage, "Writing");
  EXPECT_EQ(p1.job_type, "Device");
  const auto& p2 = std::get<proto::Progress>(pending[1]);
  EXPECT_EQ(p2.seq, 3U);
  EXPECT_EQ(p2.percent, 40);
  EXPECT_EQ(p2.job_type, "Device");  // from the state report before it
  const auto& r = std::get<proto::Result>(pending[2]);
  EXPECT_EQ(r.seq, 4U);
  EXPECT_EQ(r.outcome, "committed");
  EXPECT_EQ(r.version, "1.0.1");
  EXPECT_EQ(r.from_version, "1.0.0");
  EXPECT_EQ(r.versions.device, "1.0.1");

  host_->Acked(4);
  EXPECT_EQ(outbox_.acked(), 4U);
  EXPECT_EQ(outbox_.Pending().size(), 1U);  // x9's report stays until a later ack
  host_->OnChannelChange(true);
  EXPECT_EQ(changes_, std::vector<bool>{true});
}

TEST_F(ChannelHostTest, TheEpochIsKeptAcrossLoadsAndChangesWithFreshFiles) {
  const std::string epoch = outbox_.epoch();
  ASSERT_EQ(epoch.size(), 16U);
  Outbox again(dir_.path());
  ASSERT_TRUE(again.Load());
  EXPECT_EQ(again.epoch(), epoch);
  sag::test::TempDir other;
  Outbox fresh(other.path());
  ASSERT_TRUE(fresh.Load());
  EXPECT_NE(fresh.epoch(), epoch);
}

TEST_F(ChannelHostTest, CancelWithoutAJobQueueIsRefusedWithAReason) {
  std::optional<proto::CancelAck> got;
  host_->OnCancel({"c1"}, [&](const proto::CancelAck& a) { got = a; });
  ASSERT_TRUE(got);
  EXPECT_FALSE(got->accepted);
  ASSERT_TRUE(got->error);
  EXPECT_EQ(got->error->name, "CancelTooLate");
  EXPECT_NE(got->error->message.find("takes no cancels"), std::string::npos);
}

TEST_F(ChannelHostTest, CancelGoesToTheDaemonAndItsAnswerIsTheCancelAck) {
  DaemonChannelHost::Hooks hooks;
  std::vector<std::string> asked;
  hooks.cancel = [&](const std::string& id) {
    asked.push_back(id);
    CancelAnswer a;
    a.accepted = id == "run";
    if (!a.accepted) a.error = Error(Errc::kCancelTooLate, "job " + id + " is past it");
    return a;
  };
  DaemonChannelHost host(config_, outbox_, std::move(hooks));
  std::vector<proto::CancelAck> got;
  host.OnCancel({"run"}, [&](const proto::CancelAck& a) { got.push_back(a); });
  host.OnCancel({"late"}, [&](const proto::CancelAck& a) { got.push_back(a); });
  EXPECT_EQ(asked, (std::vector<std::string>{"run", "late"}));
  ASSERT_EQ(got.size(), 2U);
  EXPECT_EQ(got[0], (proto::CancelAck{"run", true, std::nullopt}));
  EXPECT_EQ(got[1].job_id, "late");
  EXPECT_FALSE(got[1].accepted);
  ASSERT_TRUE(got[1].error);
  EXPECT_EQ(got[1].error->code, 417);
  EXPECT_EQ(got[1].error->name, "CancelTooLate");
}

}  // namespace
}  // namespace sag::agent
