// Both ends of the device channel on loopback with real TLS: the gateway
// (cloud/gateway.h) and the agent's client (agent/channel.h) on one
// io_context, driven by the test thread with a deadline on every wait.
#include "agent/channel.h"

#include <gtest/gtest.h>
#include <sys/resource.h>

#include <algorithm>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "agent/hello_gate.h"
#include "cloud/gateway.h"
#include "cloud/sqlite_store.h"
#include "cloud/store.h"
#include "common/process.h"
#include "tests/support/sqlite_sql.h"
#include "tests/support/temp_dir.h"
#include "tests/support/test_http_server.h"

namespace sag {
namespace {

using agent::Channel;
using agent::ChannelOptions;
using agent::OutgoingReport;
using cloud::Gateway;
using cloud::GatewayOptions;
using cloud::JobRecord;
using cloud::JobState;
using cloud::Store;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

constexpr const char* kSerial = "sag000lab01";
constexpr const char* kEpoch = "epoch-1";

// Leaf certificates of the test PKI's CAs (ca / rogue-ca in `dir`).
Status MakeClientCert(const std::filesystem::path& dir, const std::string& name,
                      const std::string& cn, const std::string& ca, int days) {
  const auto p = [&](const std::string& f) { return (dir / f).string(); };
  {
    std::ofstream ext(p(name + ".ext"));
    ext << "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n";
  }
  SAG_TRY_STATUS(CheckCommand({"openssl", "req", "-new", "-config", p("openssl.cnf"), "-newkey",
                               "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout",
                               p(name + ".key"), "-out", p(name + ".csr"), "-subj", "/CN=" + cn}));
  return CheckCommand({"openssl", "x509", "-req", "-in", p(name + ".csr"), "-CA", p(ca + ".pem"),
                       "-CAkey", p(ca + ".key"), "-CAcreateserial", "-days", std::to_string(days),
                       "-out", p(name + ".pem"), "-extfile", p(name + ".ext")});
}

proto::Result MakeResult(std::uint64_t seq, const std::string& job, const std::string& outcome,
                         const std::string& version) {
  proto::Result r;
  r.seq = seq;
  r.job_id = job;
  r.job_type = "Device";
  r.version = version;
  r.outcome = outcome;
  r.versions = {version, ""};
  r.time = "2026-12-02T00:00:00Z";
  return r;
}

proto::Progress MakeProgress(std::uint64_t seq, const std::string& job, int percent) {
  proto::Progress p;
  p.seq = seq;
  p.job_id = job;
  p.job_type = "Device";
  p.stage = "Writing";
  p.percent = percent;
  p.time = "2026-12-02T00:00:00Z";
  return p;
}

// The daemon as the channel sees it: an in-memory outbox and job registry.
class FakeHost : public agent::ChannelHost {
 public:
  FakeHost() {
    hello.smartag_id = "sag-lab-active";
    hello.serial = kSerial;
    hello.model = "sag-1000";
    hello.agent_version = "0.2.0";
    hello.versions = {"1.0.0", ""};
    hello.boot.booted_slot = "A";
    hello.boot.slots["A"] = {"1.0.0", "good"};
    hello.agent_state = "idle";
    hello.outbox_epoch = kEpoch;
  }

  proto::Hello MakeHello() override {
    proto::Hello h = hello;
    h.last_seq = last_seq;
    ++hellos;
    return h;
  }
  void OnJob(const proto::Job& job, std::function<void(proto::JobAck)> reply) override {
    jobs.push_back(job);
    job_times.push_back(Clock::now());
    if (!answer_jobs) return;
    proto::JobAck ack;
    ack.job_id = job.job_id;
    ack.accepted = true;
    ack.state = "Downloading";
    reply(ack);
  }
  void OnCancel(const proto::Cancel& cancel, std::function<void(proto::CancelAck)> reply) override {
    cancels.push_back(cancel.job_id);
    if (cancel_refusal) {
      reply(proto::CancelAck{cancel.job_id, false, cancel_refusal});
    } else {
      reply(proto::CancelAck{cancel.job_id, true, std::nullopt});
    }
  }
  std::vector<OutgoingReport> Pending() override { return pending; }
  void Acked(std::uint64_t seq) override {
    EXPECT_GT(seq, acked);
    acked = seq;
    std::erase_if(pending, [&](const OutgoingReport& r) { return agent::SeqOf(r) <= seq; });
  }
  void OnChannelChange(bool online) override { changes.push_back(online); }
  void OnReconnectScheduled(milliseconds delay, const agent::ChannelStatus& status) override {
    retries.emplace_back(delay, status);
  }

  void Add(OutgoingReport r) {
    last_seq = agent::SeqOf(r);
    pending.push_back(std::move(r));
  }

  proto::Hello hello;
  std::uint64_t last_seq = 0;
  std::uint64_t acked = 0;
  std::vector<OutgoingReport> pending;
  std::vector<proto::Job> jobs;
  std::vector<Clock::time_point> job_times;
  std::vector<std::string> cancels;
  std::vector<bool> changes;
  std::vector<std::pair<milliseconds, agent::ChannelStatus>> retries;
  bool answer_jobs = true;
  std::optional<proto::ErrorInfo> cancel_refusal;  // set: cancels are refused with it
  int hellos = 0;
};

class ChannelTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto pki = test::MakeTestPki(dir_.path());
    ASSERT_TRUE(pki) << pki.error().ToString();
    pki_ = *pki;
    ASSERT_TRUE(MakeClientCert(dir_.path(), "device", kSerial, "ca", 2));
    OpenStore();
    ASSERT_TRUE(store_->RegisterDevice(kSerial, "sag-lab-active", "sag-1000"));
  }

  GatewayOptions GwOptions() {
    GatewayOptions o;
    o.cert_chain = pki_.server_cert;
    o.key = pki_.server_key;
    o.device_ca = pki_.ca_cert;
    o.heartbeat = milliseconds(1000);
    o.handshake_timeout = milliseconds(2000);
    o.write_timeout = milliseconds(2000);
    o.close_timeout = milliseconds(500);
    o.port = port_;
    return o;
  }

  void StartGateway(std::optional<GatewayOptions> options = std::nullopt) {
    gw_ = std::make_unique<Gateway>(io_, options ? *options : GwOptions(), *store_);
    auto st = gw_->Start();
    ASSERT_TRUE(st) << st.error().ToString();
    port_ = gw_->port();
  }

  void OpenStore() {
    store_.reset();
    auto s = cloud::OpenSqliteStore(dir_ / "store.db");
    ASSERT_TRUE(s) << s.error().ToString();
    store_ = std::move(*s);
  }

  // Runs SQL on the store's file with a connection of its own.
  void Sql(const std::string& sql) { test::Sql(dir_ / "store.db", sql); }

  // Stops the gateway, lets its connections close, and opens the store
  // again from its file, as a restarted sag-cloud would.
  void RestartGateway(bool start_again = true) {
    gw_->Stop();
    RunFor(milliseconds(200));
    gw_.reset();
    OpenStore();
    if (start_again) StartGateway();
  }

  ChannelOptions ChOptions(const std::string& cert = "device") {
    ChannelOptions o;
    o.endpoint = "wss://127.0.0.1:" + std::to_string(port_) + "/device/v1";
    o.root_ca = pki_.ca_cert;
    o.device_cert = dir_ / (cert + ".pem");
    o.device_key = dir_ / (cert + ".key");
    o.connect_timeout = milliseconds(2000);
    o.heartbeat = milliseconds(1000);
    o.initial_backoff = milliseconds(50);
    o.max_backoff = milliseconds(200);
    o.seed = 42;
    return o;
  }

  void StartChannel(ChannelOptions o) {
    ch_ = std::make_unique<Channel>(io_, std::move(o), host_);
    auto st = ch_->Start();
    ASSERT_TRUE(st) << st.error().ToString();
  }

  // Runs the loop until `pred` holds or `limit` passes; every wait is bounded.
  bool RunUntil(const std::function<bool()>& pred, milliseconds limit = milliseconds(8000)) {
    const auto deadline = Clock::now() + limit;
    while (!pred()) {
      if (Clock::now() >= deadline) return false;
      if (io_.stopped()) io_.restart();
      io_.run_for(milliseconds(5));
    }
    return true;
  }
  void RunFor(milliseconds d) {
    (void)RunUntil([] { return false; }, d);
  }

  bool Online() { return ch_->status().online; }

  JobRecord MakeJob(const std::string& id) {
    JobRecord j;
    j.serial = kSerial;
    j.spec.job_id = id;
    j.spec.job_type = "Device";
    j.spec.version = "1.0.1";
    j.spec.url = "https://repo.example/sag-1000-1.0.1.sagimg";
    j.spec.size = 1000;
    j.spec.sha256 = std::string(64, 'a');
    return j;
  }

  void TearDown() override {
    if (ch_) ch_->Stop();
    if (gw_) gw_->Stop();
    RunFor(milliseconds(100));
    ch_.reset();
    gw_.reset();
  }

  test::TempDir dir_;
  test::TestPki pki_;
  boost::asio::io_context io_{1};
  std::unique_ptr<Store> store_;
  std::unique_ptr<Gateway> gw_;
  std::unique_ptr<agent::HelloGate> gate_;  // outlives ch_, which signals it
  std::unique_ptr<Channel> ch_;
  FakeHost host_;
  std::uint16_t port_ = 0;
};

TEST_F(ChannelTest, MutualTlsHelloUpdatesTheStore) {
  ASSERT_TRUE(store_->AddJob(MakeJob("j-1")));
  StartGateway();
  host_.hello.versions = {"1.0.1", "20201117_1_0-0.0.1"};
  host_.hello.agent_state = "trial";
  host_.hello.jobs.push_back({"j-1", "Device", "1.0.1", "Committed", "committed", std::nullopt});
  host_.last_seq = 7;
  StartChannel(ChOptions());
  ASSERT_TRUE(RunUntil([&] { return Online(); }));
  EXPECT_TRUE(gw_->IsOnline(kSerial));
  const auto d = store_->FindDevice(kSerial);
  ASSERT_TRUE(d);
  EXPECT_TRUE(d->online);
  EXPECT_EQ(d->versions.device, "1.0.1");
  EXPECT_EQ(d->versions.dpi, "20201117_1_0-0.0.1");
  EXPECT_EQ(d->agent_state, "trial");
  EXPECT_EQ(d->agent_version, "0.2.0");
  EXPECT_EQ(d->boot.booted_slot, "A");
  EXPECT_EQ(d->epoch, kEpoch);
  EXPECT_EQ(d->snapshot_seq, 7U);
  EXPECT_FALSE(d->last_seen.empty());
  // The job the device listed takes its state from the hello, and is not
  // offered again.
  EXPECT_EQ(store_->FindJob("j-1")->state, JobState::kCommitted);
  RunFor(milliseconds(100));
  EXPECT_TRUE(host_.jobs.empty());
  // Persisted: the store opened again says the same.
  auto reloaded = cloud::OpenSqliteStore(dir_ / "store.db");
  ASSERT_TRUE(reloaded);
  EXPECT_EQ((*reloaded)->FindDevice(kSerial)->versions.device, "1.0.1");
  EXPECT_EQ((*reloaded)->FindJob("j-1")->state, JobState::kCommitted);
  EXPECT_EQ(ch_->status().connects, 1U);
}

TEST_F(ChannelTest, UnregisteredSerialIsRefusedWith403) {
  ASSERT_TRUE(MakeClientCert(dir_.path(), "stranger", "sag999unknown", "ca", 2));
  StartGateway();
  StartChannel(ChOptions("stranger"));
  ASSERT_TRUE(RunUntil([&] { return ch_->status().failures >= 2; }));
  const auto st = ch_->status();
  EXPECT_FALSE(st.online);
  ASSERT_TRUE(st.last_error);
  EXPECT_EQ(st.last_error->code(), Errc::kChannelRefused) << st.last_error->ToString();
  EXPECT_NE(st.last_error->message().find("403"), std::string::npos);
  EXPECT_GE(gw_->stats().refused, 2U);
  EXPECT_EQ(gw_->stats().channels, 0U);
  EXPECT_FALSE(store_->FindDevice("sag999unknown"));
}

TEST_F(ChannelTest, DeviceCertificateOfAnotherCaIsRefused) {
  ASSERT_TRUE(MakeClientCert(dir_.path(), "rogue-device", kSerial, "rogue-ca", 2));
  StartGateway();
  StartChannel(ChOptions("rogue-device"));
  ASSERT_TRUE(RunUntil([&] { return ch_->status().failures >= 2; }));
  EXPECT_FALSE(ch_->status().online);
  EXPECT_EQ(ch_->status().last_error->code(), Errc::kChannelRefused)
      << ch_->status().last_error->ToString();
  EXPECT_GE(gw_->stats().refused, 2U);
  EXPECT_FALSE(store_->FindDevice(kSerial)->online);
}

TEST_F(ChannelTest, ExpiredDeviceCertificateIsRefused) {
  ASSERT_TRUE(MakeClientCert(dir_.path(), "expired", kSerial, "ca", -1));
  StartGateway();
  StartChannel(ChOptions("expired"));
  ASSERT_TRUE(RunUntil([&] { return ch_->status().failures >= 2; }));
  EXPECT_FALSE(ch_->status().online);
  EXPECT_EQ(ch_->status().last_error->code(), Errc::kChannelRefused)
      << ch_->status().last_error->ToString();
  EXPECT_GE(gw_->stats().refused, 2U);
}

TEST_F(ChannelTest, ServerWithTheWrongHostNameIsRefused) {
  auto o = GwOptions();
  o.cert_chain = pki_.wrong_host_cert;
  o.key = pki_.wrong_host_key;
  StartGateway(o);
  StartChannel(ChOptions());
  ASSERT_TRUE(RunUntil([&] { return ch_->status().failures >= 2; }));
  EXPECT_FALSE(ch_->status().online);
  ASSERT_TRUE(ch_->status().last_error);
  EXPECT_EQ(ch_->status().last_error->code(), Errc::kNetTls);
  EXPECT_NE(ch_->status().last_error->message().find("not valid for '127.0.0.1'"),
            std::string::npos)
      << ch_->status().last_error->message();
  EXPECT_EQ(gw_->stats().channels, 0U);
}

TEST_F(ChannelTest, ServerOfAnotherRootIsRefused) {
  auto o = GwOptions();
  o.cert_chain = pki_.rogue_server_cert;
  o.key = pki_.rogue_server_key;
  StartGateway(o);
  StartChannel(ChOptions());
  ASSERT_TRUE(RunUntil([&] { return ch_->status().failures >= 2; }));
  EXPECT_FALSE(ch_->status().online);
  EXPECT_EQ(ch_->status().last_error->code(), Errc::kNetTls);
  EXPECT_NE(ch_->status().last_error->message().find("not trusted"), std::string::npos)
      << ch_->status().last_error->message();
}

TEST_F(ChannelTest, OversizedFrameClosesWith1009AndTheDeviceReconnects) {
  StartGateway();
  StartChannel(ChOptions());
  ASSERT_TRUE(RunUntil([&] { return Online(); }));
  ch_->SendRawForTest(std::string(proto::kMaxMessageBytes + 1, ' '), false);
  ASSERT_TRUE(RunUntil([&] { return ch_->status().last_close_code != 0; }));
  EXPECT_EQ(ch_->status().last_close_code, 1009);
  ASSERT_TRUE(RunUntil([&] { return ch_->status().connects == 2 && Online(); }));
}

TEST_F(ChannelTest, UnknownTypeIsAnsweredWithErrorAndTheChannelStaysUp) {
  StartGateway();
  StartChannel(ChOptions());
  ASSERT_TRUE(RunUntil([&] { return Online(); }));
  ch_->SendRawForTest(R"({"v":1,"type":"telemetry","id":"x1","cpu":3})", false);
  ASSERT_TRUE(RunUntil([&] { return ch_->status().errors_received == 1; }));
  EXPECT_EQ(ch_->status().last_error_code, "UnknownType");
  ch_->SendRawForTest(R"({"v":1,"type":"progress","id":"x2"})", false);
  ASSERT_TRUE(RunUntil([&] { return ch_->status().errors_received == 2; }));
  EXPECT_EQ(ch_->status().last_error_code, "Malformed");
  RunFor(milliseconds(100));
  EXPECT_TRUE(Online());
  EXPECT_EQ(ch_->status().connects, 1U);
}

TEST_F(ChannelTest, BinaryFrameIsAnsweredWithMalformedAndClosed) {
  StartGateway();
  StartChannel(ChOptions());
  ASSERT_TRUE(RunUntil([&] { return Online(); }));
  ch_->SendRawForTest(R"({"v":1,"type":"heartbeat","id":"x1","time":""})", true);
  ASSERT_TRUE(RunUntil([&] { return ch_->status().last_close_code != 0; }));
  EXPECT_EQ(ch_->status().last_error_code, "Malformed");
  EXPECT_EQ(ch_->status().last_close_code, 1007);
}

TEST_F(ChannelTest, PushedJobReachesTheDeviceAndItsAckIsRecorded) {
  StartGateway();
  StartChannel(ChOptions());
  ASSERT_TRUE(RunUntil([&] { return Online(); }));
  std::vector<double> latencies_ms;
  for (int i = 0; i < 20; ++i) {
    const std::string id = "j-" + std::to_string(i);
    const auto t0 = Clock::now();
    ASSERT_TRUE(gw_->Push(MakeJob(id)));
    ASSERT_TRUE(RunUntil([&] { return host_.jobs.size() == static_cast<std::size_t>(i + 1); }));
    latencies_ms.push_back(
        std::chrono::duration<double, std::milli>(host_.job_times.back() - t0).count());
    ASSERT_TRUE(RunUntil([&] { return store_->FindJob(id)->state == JobState::kAccepted; }));
    EXPECT_EQ(store_->FindJob(id)->device_state, "Downloading");
    EXPECT_EQ(host_.jobs.back().job_id, id);
    EXPECT_EQ(host_.jobs.back().sha256, std::string(64, 'a'));
  }
  std::sort(latencies_ms.begin(), latencies_ms.end());
  std::printf("Push(job) -> OnJob on loopback (ASAN build, 20 jobs): p50 %.2f ms, max %.2f ms\n",
              latencies_ms[latencies_ms.size() / 2], latencies_ms.back());
  // A job id is used once.
  EXPECT_EQ(gw_->Push(MakeJob("j-0")).error().code(), Errc::kJobExists);
  auto bad = MakeJob("j-bad");
  bad.spec.sha256 = "xyz";
  EXPECT_EQ(gw_->Push(bad).error().code(), Errc::kInvalidArgument);
  auto stranger = MakeJob("j-x");
  stranger.serial = "nobody";
  EXPECT_EQ(gw_->Push(stranger).error().code(), Errc::kUnknownDevice);
}

TEST_F(ChannelTest, JobPushedWhileOfflineIsOfferedOnTheNextHello) {
  StartGateway();
  ASSERT_TRUE(gw_->Push(MakeJob("j-late")));
  EXPECT_EQ(store_->FindJob("j-late")->state, JobState::kPending);
  // The device does not answer: the job stays in the store, offered.
  host_.answer_jobs = false;
  StartChannel(ChOptions());
  ASSERT_TRUE(RunUntil([&] { return host_.jobs.size() == 1; }));
  EXPECT_EQ(store_->FindJob("j-late")->state, JobState::kOffered);
  // A gateway restart: the job survives in the store and is offered again
  // because the device's hello does not list it.
  RestartGateway();
  host_.answer_jobs = true;
  ASSERT_TRUE(RunUntil([&] { return host_.jobs.size() == 2; }));
  ASSERT_TRUE(RunUntil([&] { return store_->FindJob("j-late")->state == JobState::kAccepted; }));
  // Once the device lists the job in its hello, it is not offered again.
  host_.hello.jobs.push_back({"j-late", "Device", "1.0.1", "Downloading", "", std::nullopt});
  RestartGateway();
  ASSERT_TRUE(RunUntil([&] { return Online() && ch_->status().connects == 3; }));
  RunFor(milliseconds(200));
  EXPECT_EQ(host_.jobs.size(), 2U);
}

TEST_F(ChannelTest, ReportsAreRecordedOnceAndAcknowledged) {
  ASSERT_TRUE(store_->AddJob(MakeJob("j-1")));
  StartGateway();
  host_.Add(MakeProgress(1, "j-1", 10));
  host_.Add(MakeProgress(2, "j-1", 60));
  StartChannel(ChOptions());
  ASSERT_TRUE(RunUntil([&] { return host_.acked == 2; }));
  EXPECT_EQ(store_->FindJob("j-1")->percent, 60);
  // A report made while the channel is up goes out at once, and a result
  // newer than the hello changes the device's versions.
  host_.Add(MakeResult(3, "j-1", "committed", "1.0.1"));
  ch_->ReportsAvailable();
  ASSERT_TRUE(RunUntil([&] { return host_.acked == 3; }));
  EXPECT_TRUE(host_.pending.empty());
  EXPECT_EQ(store_->Reports().size(), 3U);
  EXPECT_EQ(store_->FindJob("j-1")->state, JobState::kCommitted);
  EXPECT_EQ(store_->FindDevice(kSerial)->versions.device, "1.0.1");
  EXPECT_EQ(store_->FindDevice(kSerial)->acked_seq, 3U);

  // The same reports again (an ack lost on the way): acknowledged again,
  // not recorded again.
  ch_->SendRawForTest(proto::Encode({"r1", "", MakeResult(3, "j-1", "committed", "1.0.1")}), false);
  ch_->SendRawForTest(proto::Encode({"r2", "", MakeProgress(2, "j-1", 60)}), false);
  ASSERT_TRUE(RunUntil([&] { return gw_->stats().reports_duplicate == 2; }));
  EXPECT_EQ(store_->Reports().size(), 3U);
  EXPECT_EQ(gw_->stats().reports_recorded, 3U);
  EXPECT_TRUE(Online());
}

TEST_F(ChannelTest, ReportsSurviveAGatewayRestartNoneLostNoneDuplicated) {
  ASSERT_TRUE(store_->AddJob(MakeJob("j-1")));
  StartGateway();
  host_.Add(MakeProgress(1, "j-1", 10));
  StartChannel(ChOptions());
  ASSERT_TRUE(RunUntil([&] { return host_.acked == 1; }));
  // The gateway goes away; the device keeps producing reports.
  RestartGateway(/*start_again=*/false);
  ASSERT_TRUE(RunUntil([&] { return !Online(); }));
  host_.Add(MakeProgress(2, "j-1", 50));
  host_.Add(MakeProgress(3, "j-1", 90));
  ch_->ReportsAvailable();
  host_.Add(MakeResult(4, "j-1", "committed", "1.0.1"));
  ch_->ReportsAvailable();
  RunFor(milliseconds(300));
  const auto down_at = Clock::now();
  StartGateway();
  ASSERT_TRUE(RunUntil([&] { return host_.acked == 4; }));
  std::printf("reconnect after the gateway restart: %.0f ms (backoff 50..200 ms)\n",
              std::chrono::duration<double, std::milli>(Clock::now() - down_at).count());
  // New reports while up go out at once.
  proto::State state;
  state.seq = 5;
  state.versions = {"1.0.1", ""};
  state.agent_state = "idle";
  state.time = "2026-12-02T00:00:00Z";
  host_.Add(state);
  ch_->ReportsAvailable();
  ASSERT_TRUE(RunUntil([&] { return host_.acked == 5; }));
  std::vector<std::uint64_t> seqs;
  for (const auto& r : store_->Reports()) seqs.push_back(r.seq);
  EXPECT_EQ(seqs, (std::vector<std::uint64_t>{1, 2, 3, 4, 5}));
  EXPECT_EQ(store_->FindJob("j-1")->state, JobState::kCommitted);
  EXPECT_EQ(ch_->status().connects, 2U);
}

// The store fails to record a report (here half-way through its transaction:
// the report row went in, the device row was refused): the gateway answers
// with an error and closes; nothing of the report stays, in the store or in
// the gateway's memory, so the device's resend is recorded once, in full.
TEST_F(ChannelTest, AReportWhoseWriteFailedIsRecordedOnceWhenSentAgain) {
  ASSERT_TRUE(store_->AddJob(MakeJob("j-1")));
  StartGateway();
  ASSERT_NO_FATAL_FAILURE(
      Sql("CREATE TRIGGER fail BEFORE UPDATE ON devices WHEN NEW.acked_seq = 1 "
          "BEGIN SELECT RAISE(ABORT, 'injected failure'); END"));
  host_.Add(MakeResult(1, "j-1", "committed", "1.0.1"));
  // The device runs what its result says: its hello (which counts report #1
  // in) names 1.0.1 too, or the gateway keeps the hello's newer word.
  host_.hello.versions = {"1.0.1", ""};
  StartChannel(ChOptions());
  ASSERT_TRUE(RunUntil([&] { return ch_->status().connects >= 1 && !Online(); }));
  EXPECT_EQ(host_.acked, 0U);
  EXPECT_TRUE(store_->Reports().empty());
  ASSERT_NO_FATAL_FAILURE(Sql("DROP TRIGGER fail"));
  ASSERT_TRUE(RunUntil([&] { return host_.acked == 1; }));
  ASSERT_EQ(store_->Reports().size(), 1U);
  EXPECT_EQ(store_->Reports()[0].seq, 1U);
  EXPECT_EQ(store_->FindDevice(kSerial)->acked_seq, 1U);
  EXPECT_EQ(store_->FindDevice(kSerial)->versions.device, "1.0.1");
  EXPECT_EQ(store_->FindJob("j-1")->state, JobState::kCommitted);
  EXPECT_EQ(gw_->stats().reports_recorded, 1U);
  EXPECT_GE(ch_->status().connects, 2U);
}

TEST_F(ChannelTest, StaleSuccessResentAfterARollbackDoesNotOverwrite) {
  ASSERT_TRUE(store_->AddJob(MakeJob("j-1")));
  StartGateway();
  // The device committed j-1 (#5), then fell back to 1.0.0 (#9); the ack of
  // #5 was lost, so #5 is still pending when it says hello with last_seq 9.
  host_.Add(MakeResult(5, "j-1", "committed", "1.0.1"));
  host_.last_seq = 9;
  host_.hello.versions = {"1.0.0", ""};
  host_.hello.jobs.push_back({"j-1", "Device", "1.0.1", "RolledBack", "rolled_back",
                              proto::ErrorInfo{406, "RolledBack", "fell back to slot A"}});
  StartChannel(ChOptions());
  ASSERT_TRUE(RunUntil([&] { return host_.acked == 5; }));
  const auto job = store_->FindJob("j-1");
  EXPECT_EQ(job->state, JobState::kRolledBack);
  EXPECT_EQ(job->outcome, "rolled_back");
  EXPECT_EQ(store_->FindDevice(kSerial)->versions.device, "1.0.0");
  EXPECT_EQ(store_->Reports().size(), 1U);  // recorded, but it changed nothing
}

// After a reboot into the old slot, the device's hello lists j-1 still
// rolling back, with no outcome, as of #38, while its result (#37, whose ack
// was lost) waits in the outbox. The hello stamps j-1 with #38, but the
// older result still ends the job: nothing newer can say more of a job that
// is not final. (Dropping it left the cloud's job in RollingBack for good.)
TEST_F(ChannelTest, AResultOlderThanAHelloThatListsItsJobUnfinishedEndsTheJob) {
  ASSERT_TRUE(store_->AddJob(MakeJob("j-1")));
  StartGateway();
  auto rolled_back = MakeResult(37, "j-1", "rolled_back", "1.0.1");
  rolled_back.versions = {"1.0.0", ""};
  rolled_back.error = proto::ErrorInfo{406, "RolledBack", "fell back to slot A"};
  host_.Add(rolled_back);
  host_.last_seq = 38;
  host_.hello.versions = {"1.0.0", ""};
  host_.hello.jobs.push_back({"j-1", "Device", "1.0.1", "RollingBack", "", std::nullopt});
  StartChannel(ChOptions());
  ASSERT_TRUE(RunUntil([&] { return host_.acked == 37; }));
  const auto job = store_->FindJob("j-1");
  EXPECT_EQ(job->state, JobState::kRolledBack);
  EXPECT_EQ(job->outcome, "rolled_back");
  EXPECT_EQ(store_->FindDevice(kSerial)->versions.device, "1.0.0");
  EXPECT_EQ(store_->Reports().size(), 1U);
}

TEST_F(ChannelTest, SilentDeviceGoesOfflineAfterThreeHeartbeats) {
  auto o = GwOptions();
  o.heartbeat = milliseconds(200);
  StartGateway(o);
  auto co = ChOptions();
  co.heartbeat = milliseconds(60000);  // this device never sends one
  co.initial_backoff = milliseconds(5000);
  StartChannel(co);
  ASSERT_TRUE(RunUntil([&] { return Online(); }));
  EXPECT_TRUE(store_->FindDevice(kSerial)->online);
  const auto t0 = Clock::now();
  ASSERT_TRUE(RunUntil([&] { return !gw_->IsOnline(kSerial); }, milliseconds(3000)));
  const auto took = Clock::now() - t0;
  EXPECT_GE(took, milliseconds(500));  // not before 3 x 200 ms (minus the hello's age)
  EXPECT_FALSE(store_->FindDevice(kSerial)->online);
  ASSERT_TRUE(RunUntil([&] { return !Online(); }));
}

TEST_F(ChannelTest, HeartbeatsKeepAnIdleChannelUp) {
  auto o = GwOptions();
  o.heartbeat = milliseconds(200);
  StartGateway(o);
  auto co = ChOptions();
  co.heartbeat = milliseconds(200);
  StartChannel(co);
  ASSERT_TRUE(RunUntil([&] { return Online(); }));
  RunFor(milliseconds(1500));
  EXPECT_TRUE(Online());
  EXPECT_TRUE(gw_->IsOnline(kSerial));
  EXPECT_EQ(ch_->status().connects, 1U);
  EXPECT_FALSE(ch_->status().server_time.empty());
}

TEST_F(ChannelTest, CancelReachesTheDevice) {
  StartGateway();
  host_.answer_jobs = false;
  StartChannel(ChOptions());
  ASSERT_TRUE(RunUntil([&] { return Online(); }));
  ASSERT_TRUE(gw_->Push(MakeJob("j-c")));
  ASSERT_TRUE(RunUntil([&] { return host_.jobs.size() == 1; }));
  ASSERT_TRUE(gw_->Cancel("j-c"));
  ASSERT_TRUE(RunUntil([&] { return host_.cancels.size() == 1; }));
  EXPECT_TRUE(store_->FindJob("j-c")->cancel_requested);
  EXPECT_EQ(gw_->Cancel("nope").error().code(), Errc::kJobUnknown);
}

// An accepted cancel: its cancel.ack is recorded, and the device's result
// (failed, Cancelled) makes the job Cancelled, which is final.
TEST_F(ChannelTest, AnAcceptedCancelEndsTheJobCancelledByItsResult) {
  StartGateway();
  StartChannel(ChOptions());
  ASSERT_TRUE(RunUntil([&] { return Online(); }));
  ASSERT_TRUE(gw_->Push(MakeJob("j-a")));
  ASSERT_TRUE(RunUntil([&] { return store_->FindJob("j-a")->state == JobState::kAccepted; }));
  ASSERT_TRUE(gw_->Cancel("j-a"));
  ASSERT_TRUE(RunUntil([&] { return store_->FindJob("j-a")->cancel_answer == "accepted"; }));
  EXPECT_EQ(store_->FindJob("j-a")->state, JobState::kAccepted) << "ended by the result only";
  proto::Result r = MakeResult(1, "j-a", "failed", "1.0.0");
  r.error = proto::ErrorInfo{115, "Cancelled", "cancelled on request while Writing"};
  host_.Add(r);
  ch_->ReportsAvailable();
  ASSERT_TRUE(RunUntil([&] { return store_->FindJob("j-a")->state == JobState::kCancelled; }));
  const auto job = *store_->FindJob("j-a");
  ASSERT_TRUE(job.error);
  EXPECT_EQ(job.error->name, "Cancelled");
  EXPECT_EQ(job.outcome, "failed");
  EXPECT_TRUE(IsFinal(JobState::kCancelled));
  EXPECT_EQ(gw_->Cancel("j-a").error().code(), Errc::kInvalidArgument)
      << "final: nothing to cancel";
  // Kept across a restart of the store (migration 3's columns).
  RestartGateway();
  EXPECT_EQ(store_->FindJob("j-a")->state, JobState::kCancelled);
  EXPECT_EQ(store_->FindJob("j-a")->cancel_answer, "accepted");
}

// A refused cancel is recorded with its reason, the job goes on, and the
// cancel is not sent again on the next hello.
TEST_F(ChannelTest, ARefusedCancelIsRecordedAndNotSentAgain) {
  StartGateway();
  host_.cancel_refusal = proto::ErrorInfo{417, "CancelTooLate", "past its point of no return"};
  StartChannel(ChOptions());
  ASSERT_TRUE(RunUntil([&] { return Online(); }));
  ASSERT_TRUE(gw_->Push(MakeJob("j-r")));
  ASSERT_TRUE(RunUntil([&] { return store_->FindJob("j-r")->state == JobState::kAccepted; }));
  ASSERT_TRUE(gw_->Cancel("j-r"));
  ASSERT_TRUE(RunUntil([&] { return store_->FindJob("j-r")->cancel_answer == "refused"; }));
  auto job = *store_->FindJob("j-r");
  EXPECT_EQ(job.state, JobState::kAccepted);
  EXPECT_NE(job.cancel_reason.find("CancelTooLate"), std::string::npos) << job.cancel_reason;
  host_.hello.jobs = {{"j-r", "Device", "1.0.1", "Rebooting", "", std::nullopt}};
  const int hellos = host_.hellos;
  RestartGateway();
  ASSERT_TRUE(RunUntil([&] { return host_.hellos > hellos && Online(); }));
  RunFor(milliseconds(300));
  EXPECT_EQ(host_.cancels.size(), 1U) << "a refusal is final";
  host_.Add(MakeResult(1, "j-r", "committed", "1.0.1"));
  ch_->ReportsAvailable();
  ASSERT_TRUE(RunUntil([&] { return store_->FindJob("j-r")->state == JobState::kCommitted; }));
}

// A job that never left the cloud is cancelled there, and never offered.
TEST_F(ChannelTest, APendingJobIsCancelledInTheCloudAndNeverOffered) {
  StartGateway();
  ASSERT_TRUE(gw_->Push(MakeJob("j-p")));
  ASSERT_EQ(store_->FindJob("j-p")->state, JobState::kPending);
  ASSERT_TRUE(gw_->Cancel("j-p"));
  auto job = *store_->FindJob("j-p");
  EXPECT_EQ(job.state, JobState::kCancelled);
  ASSERT_TRUE(job.error);
  EXPECT_EQ(job.error->name, "Cancelled");
  StartChannel(ChOptions());
  ASSERT_TRUE(RunUntil([&] { return Online(); }));
  RunFor(milliseconds(300));
  EXPECT_TRUE(host_.jobs.empty());
  EXPECT_TRUE(host_.cancels.empty());
}

// An offered job the device does not know (it never got it): its cancel is
// refused JobUnknown and the job is not offered again: Cancelled.
TEST_F(ChannelTest, AnOfferedJobTheDeviceDoesNotKnowIsCancelled) {
  StartGateway();
  host_.answer_jobs = false;
  host_.cancel_refusal = proto::ErrorInfo{409, "JobUnknown", "this agent has no job j-u"};
  StartChannel(ChOptions());
  ASSERT_TRUE(RunUntil([&] { return Online(); }));
  ASSERT_TRUE(gw_->Push(MakeJob("j-u")));
  ASSERT_TRUE(RunUntil([&] { return host_.jobs.size() == 1; }));
  ASSERT_EQ(store_->FindJob("j-u")->state, JobState::kOffered);
  ASSERT_TRUE(gw_->Cancel("j-u"));
  ASSERT_TRUE(RunUntil([&] { return store_->FindJob("j-u")->state == JobState::kCancelled; }));
  const int hellos = host_.hellos;
  RestartGateway();
  ASSERT_TRUE(RunUntil([&] { return host_.hellos > hellos && Online(); }));
  RunFor(milliseconds(300));
  EXPECT_EQ(host_.jobs.size(), 1U) << "not offered again";
}

TEST_F(ChannelTest, SecondConnectionOfADeviceReplacesTheFirst) {
  StartGateway();
  StartChannel(ChOptions());
  ASSERT_TRUE(RunUntil([&] { return Online(); }));
  FakeHost other;
  auto co = ChOptions();
  co.initial_backoff = milliseconds(5000);  // the replaced one stays away a while
  auto second = std::make_unique<Channel>(io_, co, other);
  ASSERT_TRUE(second->Start());
  ASSERT_TRUE(RunUntil([&] { return second->status().online; }));
  ASSERT_TRUE(RunUntil([&] { return ch_->status().last_close_code == 1000; }));
  EXPECT_EQ(gw_->stats().channels, 1U);
  second->Stop();
  RunFor(milliseconds(100));
}

TEST_F(ChannelTest, SilentAndOverdueJobsTimeOutAndALateResultStillCounts) {
  auto o = GwOptions();
  o.job_silence = std::chrono::seconds(60);
  StartGateway(o);
  auto overdue = MakeJob("j-overdue");
  overdue.spec.deadline = "2000-01-01T00:00:00Z";
  ASSERT_TRUE(gw_->Push(overdue));
  ASSERT_TRUE(gw_->Push(MakeJob("j-silent")));
  ASSERT_TRUE(gw_->Push(MakeJob("j-pending")));
  {
    auto silent = *store_->FindJob("j-silent");
    silent.state = JobState::kAccepted;
    cloud::StoreWrite w;
    w.jobs.push_back(silent);
    ASSERT_TRUE(store_->Write(w));
  }
  const auto now = std::chrono::system_clock::now();
  EXPECT_EQ(gw_->SweepJobs(now), 1U);  // the overdue one
  EXPECT_EQ(store_->FindJob("j-overdue")->state, JobState::kTimedOut);
  EXPECT_EQ(store_->FindJob("j-silent")->state, JobState::kAccepted);
  EXPECT_EQ(gw_->SweepJobs(now + std::chrono::seconds(61)), 1U);  // the silent one
  EXPECT_EQ(store_->FindJob("j-silent")->state, JobState::kTimedOut);
  // A pending job of an offline device waits for it (no deadline).
  EXPECT_EQ(store_->FindJob("j-pending")->state, JobState::kPending);
  // The device's word is the truth: its late result is recorded.
  host_.Add(MakeResult(1, "j-silent", "committed", "1.0.1"));
  host_.answer_jobs = false;
  StartChannel(ChOptions());
  ASSERT_TRUE(RunUntil([&] { return host_.acked == 1; }));
  EXPECT_EQ(store_->FindJob("j-silent")->state, JobState::kCommitted);
  EXPECT_FALSE(store_->FindJob("j-silent")->timed_out.empty());
}

TEST_F(ChannelTest, AServerThatAcceptsAndNeverAnswersIsLeftWithinTheDeadline) {
  using boost::asio::ip::tcp;
  tcp::acceptor mute(io_, tcp::endpoint(boost::asio::ip::make_address("127.0.0.1"), 0));
  port_ = mute.local_endpoint().port();
  std::vector<tcp::socket> held;  // accepted, never read or written
  std::function<void()> accept = [&] {
    mute.async_accept([&](const boost::system::error_code& ec, tcp::socket s) {
      if (ec) return;
      held.push_back(std::move(s));
      accept();
    });
  };
  accept();
  auto o = ChOptions();
  o.connect_timeout = milliseconds(300);
  StartChannel(o);
  const auto t0 = Clock::now();
  ASSERT_TRUE(RunUntil([&] { return ch_->status().failures >= 2; }, milliseconds(3000)));
  // Two attempts: 2 x 300 ms deadline plus one backoff of at most 50 ms.
  EXPECT_LT(Clock::now() - t0, milliseconds(1500));
  ASSERT_TRUE(ch_->status().last_error);
  EXPECT_EQ(ch_->status().last_error->code(), Errc::kChannelTimeout)
      << ch_->status().last_error->ToString();
  EXPECT_GE(held.size(), 2U);
  ch_->Stop();
  mute.close();
  RunFor(milliseconds(50));
}

// The trial boot's health.require_cloud check (agent/hello_gate.h) waits on
// the install's worker thread while the channel runs on the loop: run it on a
// thread of its own and drive the loop until it returns (bounded).
Status CheckCloud(agent::HelloGate& gate, milliseconds timeout,
                  const std::function<bool(const std::function<bool()>&, milliseconds)>& run) {
  auto check = std::async(std::launch::async, [&] { return gate.Wait(timeout); });
  const bool done =
      run([&] { return check.wait_for(milliseconds(0)) == std::future_status::ready; },
          timeout + milliseconds(5000));
  EXPECT_TRUE(done) << "the check did not return within its timeout";
  return check.get();
}

TEST_F(ChannelTest, HealthCheckFailsWhenTheServerAcceptsAndNeverAnswersHello) {
  using boost::asio::ip::tcp;
  tcp::acceptor mute(io_, tcp::endpoint(boost::asio::ip::make_address("127.0.0.1"), 0));
  port_ = mute.local_endpoint().port();
  std::vector<tcp::socket> held;  // accepted, never read or written
  std::function<void()> accept = [&] {
    mute.async_accept([&](const boost::system::error_code& ec, tcp::socket s) {
      if (ec) return;
      held.push_back(std::move(s));
      accept();
    });
  };
  accept();
  auto o = ChOptions();
  o.connect_timeout = milliseconds(300);
  gate_ = std::make_unique<agent::HelloGate>(o.endpoint);
  agent::HelloGate& gate = *gate_;
  o.hello_gate = &gate;
  StartChannel(o);
  const auto run = [&](const std::function<bool()>& pred, milliseconds limit) {
    return RunUntil(pred, limit);
  };
  auto st = CheckCloud(gate, milliseconds(1500), run);
  ASSERT_FALSE(st);
  EXPECT_EQ(st.error().code(), Errc::kHealthCheckFailed);
  const std::string& m = st.error().message();
  EXPECT_NE(m.find("control channel " + o.endpoint), std::string::npos) << m;
  EXPECT_NE(m.find("did not answer hello"), std::string::npos) << m;
  EXPECT_NE(m.find("ChannelTimeout"), std::string::npos) << m;  // the channel's last error
  EXPECT_GE(held.size(), 1U);  // it was connected to, and that is not enough
  EXPECT_FALSE(gate.answered());
  ch_->Stop();
  mute.close();
  RunFor(milliseconds(50));
}

TEST_F(ChannelTest, HealthCheckFailsWhenTheGatewayRefusesTheHello) {
  // TLS and the WebSocket upgrade succeed, the hello is sent, and the
  // gateway answers it with an error (the hello names another serial than
  // the certificate): no hello.ack, no pass.
  StartGateway();
  host_.hello.serial = "sag000other";
  auto o = ChOptions();
  gate_ = std::make_unique<agent::HelloGate>(o.endpoint);
  agent::HelloGate& gate = *gate_;
  o.hello_gate = &gate;
  StartChannel(o);
  const auto run = [&](const std::function<bool()>& pred, milliseconds limit) {
    return RunUntil(pred, limit);
  };
  auto st = CheckCloud(gate, milliseconds(1500), run);
  ASSERT_FALSE(st);
  EXPECT_EQ(st.error().code(), Errc::kHealthCheckFailed) << st.error().ToString();
  EXPECT_GE(host_.hellos, 1);  // the hello went out
  EXPECT_EQ(ch_->status().connects, 0U);
}

TEST_F(ChannelTest, HealthCheckPassesOnceTheCloudAnswersHello) {
  StartGateway();
  auto o = ChOptions();
  gate_ = std::make_unique<agent::HelloGate>(o.endpoint);
  agent::HelloGate& gate = *gate_;
  o.hello_gate = &gate;
  StartChannel(o);
  const auto run = [&](const std::function<bool()>& pred, milliseconds limit) {
    return RunUntil(pred, limit);
  };
  auto st = CheckCloud(gate, milliseconds(8000), run);
  EXPECT_TRUE(st) << st.error().ToString();
  EXPECT_TRUE(Online());
  // A stop after the answer is no verdict any more.
  ch_->Stop();
  RunFor(milliseconds(100));
  EXPECT_TRUE(gate.Wait(milliseconds(0)));
}

TEST_F(ChannelTest, EveryScheduledReconnectIsToldWithItsBackoff) {
  {  // a port nobody listens on: every attempt is refused at once
    using boost::asio::ip::tcp;
    tcp::acceptor probe(io_, tcp::endpoint(boost::asio::ip::make_address("127.0.0.1"), 0));
    port_ = probe.local_endpoint().port();
  }
  auto o = ChOptions();  // initial 50 ms, cap 200 ms
  StartChannel(o);
  ASSERT_TRUE(RunUntil([&] { return host_.retries.size() >= 6; }));
  for (std::size_t i = 0; i < host_.retries.size(); ++i) {
    const auto& [delay, st] = host_.retries[i];
    const int n = static_cast<int>(i) + 1;
    const milliseconds window =
        std::min(o.max_backoff, o.initial_backoff * (std::int64_t{1} << (n - 1)));
    EXPECT_EQ(st.failures, n);
    EXPECT_GE(delay.count(), 0) << "attempt " << n;
    EXPECT_LE(delay, window) << "attempt " << n;
    EXPECT_EQ(st.next_delay, delay);
    ASSERT_TRUE(st.last_error);
    EXPECT_EQ(st.last_error->code(), Errc::kNetConnect) << st.last_error->ToString();
    EXPECT_FALSE(st.online);
  }
  // Once the gateway is there the channel comes up, and a later break is
  // told with the count started again.
  StartGateway(GwOptions());
  ASSERT_TRUE(RunUntil([&] { return Online(); }));
  const std::size_t before = host_.retries.size();
  RestartGateway();
  ASSERT_TRUE(RunUntil([&] { return host_.retries.size() > before; }));
  EXPECT_EQ(host_.retries[before].second.failures, 1);
  EXPECT_LE(host_.retries[before].first, o.initial_backoff);
}

TEST_F(ChannelTest, GatewayDropsAConnectionThatNeverShakesHands) {
  using boost::asio::ip::tcp;
  auto o = GwOptions();
  o.handshake_timeout = milliseconds(300);
  StartGateway(o);
  tcp::socket mute(io_);
  mute.connect(tcp::endpoint(boost::asio::ip::make_address("127.0.0.1"), port_));
  ASSERT_TRUE(RunUntil([&] { return gw_->stats().connections == 1; }, milliseconds(2000)));
  const auto t0 = Clock::now();
  ASSERT_TRUE(RunUntil([&] { return gw_->stats().connections == 0; }, milliseconds(2000)));
  EXPECT_GE(Clock::now() - t0, milliseconds(200));
}

TEST(ChannelBackoff, FullJitterWithinTheCappedExponentialWindow) {
  std::mt19937_64 rng(7);
  const milliseconds initial(1000);
  const milliseconds cap(300000);
  for (int n = 1; n <= 14; ++n) {
    const std::int64_t window = std::min<std::int64_t>(cap.count(), 1000LL << (n - 1));
    std::int64_t lo = window;
    std::int64_t hi = 0;
    double sum = 0;
    constexpr int kSamples = 2000;
    for (int i = 0; i < kSamples; ++i) {
      const auto d = agent::BackoffDelay(n, initial, cap, rng).count();
      ASSERT_GE(d, 0);
      ASSERT_LE(d, window) << "attempt " << n;
      lo = std::min(lo, d);
      hi = std::max(hi, d);
      sum += static_cast<double>(d);
    }
    // Full jitter: spread over the whole window, mean about half of it.
    EXPECT_LT(lo, window / 10) << "attempt " << n;
    EXPECT_GT(hi, window * 9 / 10) << "attempt " << n;
    EXPECT_NEAR(sum / kSamples, static_cast<double>(window) / 2, window * 0.05) << n;
  }
  // Seeded: the same seed gives the same delays (tests are repeatable).
  std::mt19937_64 a(99);
  std::mt19937_64 b(99);
  for (int n = 1; n <= 20; ++n) {
    EXPECT_EQ(agent::BackoffDelay(n, initial, cap, a), agent::BackoffDelay(n, initial, cap, b));
  }
}

}  // namespace
}  // namespace sag
