// The RPC API's backend over the real parts: the store and the gateway with a
// device connected over the channel (loopback, mutual TLS with the
// development PKI), and the image repository with signed images.
#include "cloud/fleet_backend.h"

#include <gtest/gtest.h>

#include <boost/asio/io_context.hpp>
#include <chrono>
#include <fstream>
#include <functional>

#include "agent/channel.h"
#include "cloud/sqlite_store.h"
#include "common/image/image_writer.h"
#include "common/image/pki.h"
#include "tests/support/temp_dir.h"

namespace sag::cloud {
namespace {

namespace fs = std::filesystem;
using std::chrono::milliseconds;
constexpr const char* kSerial = "sag000fleet1";
constexpr const char* kSerial2 = "sag000fleet2";  // the standby of the HA pair

// The device: reports its versions in hello, takes every job.
class Device : public agent::ChannelHost {
 public:
  explicit Device(std::string serial = kSerial) : serial_(std::move(serial)) {}
  proto::Hello MakeHello() override {
    proto::Hello h;
    h.smartag_id = "sag-fleet";
    h.serial = serial_;
    h.model = "sag-1000";
    h.agent_version = "0.1.0";
    h.versions = {"1.0.0", "20201117_1_0-0.0.1"};
    h.agent_state = "idle";
    h.outbox_epoch = "e1";
    return h;
  }
  void OnJob(const proto::Job& job, std::function<void(proto::JobAck)> reply) override {
    jobs.push_back(job);
    reply({job.job_id, true, false, "Accepted", "", std::nullopt});
  }
  void OnCancel(const proto::Cancel& c, std::function<void(proto::CancelAck)> reply) override {
    reply({c.job_id, false, std::nullopt});
  }
  std::vector<agent::OutgoingReport> Pending() override { return {}; }
  void Acked(std::uint64_t /*seq*/) override {}
  std::vector<proto::Job> jobs;

 private:
  std::string serial_;
};

class FleetBackendTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto pki = dir_ / "pki";
    image::pki::InitOptions init;
    init.devices = {kSerial, kSerial2};
    ASSERT_TRUE(image::pki::InitDevPki(pki, init));
    fs::create_directories(dir_ / "images");
    std::ofstream(dir_ / "rootfs.img") << std::string(200000, 'x');
    for (const auto& [type, version, file] :
         {std::tuple{image::ImageType::kDevice, "1.0.1", "os-1.0.1.sagimg"},
          std::tuple{image::ImageType::kDpi, "20201117_1_0-0.0.2", "dpi-2.sagimg"}}) {
      image::CreateParams p;
      p.type = type;
      p.version = version;
      p.compatible = {"sag-1000"};
      p.payload = dir_ / "rootfs.img";
      p.key = pki / "signer.key";
      p.cert = pki / "signer.pem";
      p.chain = pki / "signer-chain.pem";
      p.output = dir_ / "images" / file;
      ASSERT_TRUE(image::CreateImage(p));
    }
    repo_ = std::make_unique<Repository>(
        Repository::Options{dir_ / "images", {pki / "root-ca.pem", std::nullopt}});
    ASSERT_TRUE(repo_->Scan());
    auto opened = OpenSqliteStore(dir_ / "store.db");
    ASSERT_TRUE(opened) << opened.error().ToString();
    store_ = std::move(*opened);
    GatewayOptions g;
    g.cert_chain = pki / "server-chain.pem";
    g.key = pki / "server.key";
    g.device_ca = pki / "root-ca.pem";
    g.heartbeat = milliseconds(1000);
    gw_ = std::make_unique<Gateway>(io_, g, *store_);
    FleetOptions f;
    rpc::InstanceState instance;
    instance.smartag_id = "sag-fleet";
    instance.region_id = "cn-shanghai";
    instance.status = "Active";
    rpc::DeviceState box;
    box.serial_number = kSerial;
    box.hardware_model = "sag-1000";
    box.software_version = "9.9.9";  // ignored: the store's is used
    box.online = true;               // ignored: the gateway's is used
    instance.devices.push_back(box);
    f.instances.push_back(instance);
    // An HA pair: two boxes of one instance.
    rpc::InstanceState ha = instance;
    ha.smartag_id = "sag-fleet-ha";
    ha.devices.clear();
    for (const char* serial : {kSerial, kSerial2}) {
      box.serial_number = serial;
      box.ha_state = box.serial_number == kSerial ? "active" : "standby";
      ha.devices.push_back(box);
    }
    f.instances.push_back(ha);
    f.image_base_url = "https://127.0.0.1:8443";
    backend_ = std::make_unique<FleetBackend>(f, *store_, *gw_, *repo_);
    ASSERT_TRUE(backend_->RegisterDevices());
    ASSERT_TRUE(gw_->Start());
  }

  void Connect() { Connect(device_, channel_, kSerial); }
  void Connect(Device& device, std::unique_ptr<agent::Channel>& channel,
               const std::string& serial) {
    agent::ChannelOptions o;
    o.endpoint = "wss://127.0.0.1:" + std::to_string(gw_->port()) + "/device/v1";
    o.root_ca = dir_ / "pki" / "root-ca.pem";
    o.device_cert = dir_ / "pki" / ("device-" + serial + "-chain.pem");
    o.device_key = dir_ / "pki" / ("device-" + serial + ".key");
    o.connect_timeout = milliseconds(2000);
    o.seed = 1;
    channel = std::make_unique<agent::Channel>(io_, o, device);
    ASSERT_TRUE(channel->Start());
    ASSERT_TRUE(RunUntil([&] { return gw_->IsOnline(serial); }));
  }

  bool RunUntil(const std::function<bool()>& pred) {
    const auto deadline = std::chrono::steady_clock::now() + milliseconds(8000);
    while (!pred()) {
      if (std::chrono::steady_clock::now() >= deadline) return false;
      if (io_.stopped()) io_.restart();
      io_.run_for(milliseconds(5));
    }
    return true;
  }

  void TearDown() override {
    if (channel_) channel_->Stop();
    if (channel2_) channel2_->Stop();
    gw_->Stop();
    io_.restart();
    io_.run_for(milliseconds(200));  // the closes finish
  }

  rpc::UpgradeOrder Order(rpc::VersionType type, const std::string& version,
                          const std::string& request, const std::string& serial = kSerial) {
    return {request, "sag-fleet", serial, type, version};
  }
  rpc::DispatchResult Dispatch(const rpc::UpgradeOrder& order) {
    return backend_->DispatchUpgrades({order});
  }
  // The jobs the store holds for one box.
  std::size_t JobsOf(const std::string& serial) { return store_->JobsOf(serial).size(); }

  test::TempDir dir_;
  boost::asio::io_context io_{1};
  std::unique_ptr<Repository> repo_;
  std::unique_ptr<Store> store_;
  std::unique_ptr<Gateway> gw_;
  std::unique_ptr<FleetBackend> backend_;
  Device device_;
  std::unique_ptr<agent::Channel> channel_;
  Device device2_{kSerial2};
  std::unique_ptr<agent::Channel> channel2_;
};

TEST_F(FleetBackendTest, AnOfflineBoxShowsNoVersionsAndTakesNoJob) {
  auto instance = backend_->FindInstance("sag-fleet");
  ASSERT_TRUE(instance);
  ASSERT_EQ(instance->devices.size(), 1U);
  EXPECT_FALSE(instance->devices[0].online);
  EXPECT_EQ(instance->devices[0].software_version, "");
  EXPECT_FALSE(instance->devices[0].state_reported_at);
  EXPECT_FALSE(backend_->FindInstance("sag-other"));
  EXPECT_EQ(backend_->ListInstances("cn-beijing", true).size(), 0U);
  EXPECT_EQ(backend_->ListInstances("", true).size(), 2U);
  EXPECT_EQ(Dispatch(Order(rpc::VersionType::kDevice, "1.0.1", "r1")),
            rpc::DispatchResult::kOffline);
  EXPECT_FALSE(store_->FindJob("upg-r1-sag000fleet1"));
  const auto catalog = backend_->Catalog(rpc::VersionType::kDevice);
  ASSERT_EQ(catalog.size(), 1U);
  EXPECT_EQ(catalog[0].version_code, "1.0.1");
  EXPECT_EQ(catalog[0].hardware_models, std::vector<std::string>{"sag-1000"});
  EXPECT_EQ(backend_->Catalog(rpc::VersionType::kDpi).size(), 1U);
}

TEST_F(FleetBackendTest, AnOnlineBoxReportsItsVersionsAndGetsTheJobWithTheImagesHash) {
  Connect();
  auto instance = backend_->FindInstance("sag-fleet");
  ASSERT_TRUE(instance);
  EXPECT_TRUE(instance->devices[0].online);
  EXPECT_EQ(instance->devices[0].software_version, "1.0.0");
  EXPECT_EQ(instance->devices[0].dpi_signature_db_version, "20201117_1_0-0.0.1");
  EXPECT_TRUE(instance->devices[0].state_reported_at);

  ASSERT_EQ(Dispatch(Order(rpc::VersionType::kDevice, "1.0.1", "r2")),
            rpc::DispatchResult::kDispatched);
  ASSERT_TRUE(RunUntil([&] { return device_.jobs.size() == 1; }));
  const auto img = repo_->Find(image::ImageType::kDevice, "1.0.1");
  ASSERT_TRUE(img);
  const proto::Job& job = device_.jobs[0];
  EXPECT_EQ(job.job_id, "upg-r2-sag000fleet1");
  EXPECT_EQ(job.job_type, "Device");
  EXPECT_EQ(job.url, "https://127.0.0.1:8443/images/os-1.0.1.sagimg");
  EXPECT_EQ(job.size, img->size);
  EXPECT_EQ(job.sha256, img->sha256);
  EXPECT_FALSE(job.deadline.empty());

  // One job of a type at a time; the other type is free.
  EXPECT_EQ(Dispatch(Order(rpc::VersionType::kDevice, "1.0.1", "r3")), rpc::DispatchResult::kBusy);
  EXPECT_EQ(Dispatch(Order(rpc::VersionType::kDpi, "20201117_1_0-0.0.2", "r4")),
            rpc::DispatchResult::kDispatched);
  // A version the repository does not hold (any more).
  EXPECT_EQ(Dispatch(Order(rpc::VersionType::kDpi, "20201117_1_0-0.0.9", "r5")),
            rpc::DispatchResult::kFailed);
}

TEST_F(FleetBackendTest, AnHaCallDispatchesBothBoxesOrNeither) {
  // The standby is offline: the call for both boxes is refused, and the
  // active box (first in order) gets no job either.
  Connect();
  const auto both = [&](const std::string& request) {
    return std::vector<rpc::UpgradeOrder>{
        Order(rpc::VersionType::kDevice, "1.0.1", request, kSerial),
        Order(rpc::VersionType::kDevice, "1.0.1", request, kSerial2)};
  };
  EXPECT_EQ(backend_->DispatchUpgrades(both("h1")), rpc::DispatchResult::kOffline);
  EXPECT_EQ(JobsOf(kSerial), 0U);
  EXPECT_EQ(JobsOf(kSerial2), 0U);

  // Both online, the standby busy with a job of its own (SerialNumber):
  // refused as a whole again, nothing for the active box.
  Connect(device2_, channel2_, kSerial2);
  ASSERT_EQ(Dispatch(Order(rpc::VersionType::kDevice, "1.0.1", "h2", kSerial2)),
            rpc::DispatchResult::kDispatched);
  EXPECT_EQ(backend_->DispatchUpgrades(both("h3")), rpc::DispatchResult::kBusy);
  EXPECT_EQ(JobsOf(kSerial), 0U);
  EXPECT_EQ(JobsOf(kSerial2), 1U);
  // One call naming a box twice is refused, not half-done.
  EXPECT_EQ(backend_->DispatchUpgrades({Order(rpc::VersionType::kDpi, "20201117_1_0-0.0.2", "h4"),
                                        Order(rpc::VersionType::kDpi, "20201117_1_0-0.0.2", "h4")}),
            rpc::DispatchResult::kBusy);
  EXPECT_EQ(JobsOf(kSerial), 0U);

  // The standby's job ends: the call for both gives one job to each box.
  ASSERT_TRUE(RunUntil([&] { return device2_.jobs.size() == 1; }));
  {
    auto done = store_->FindJob("upg-h2-" + std::string(kSerial2));
    ASSERT_TRUE(done);
    done->state = JobState::kCommitted;
    cloud::StoreWrite w;
    w.jobs.push_back(*done);
    ASSERT_TRUE(store_->Write(w));
  }
  EXPECT_EQ(backend_->DispatchUpgrades(both("h5")), rpc::DispatchResult::kDispatched);
  ASSERT_TRUE(RunUntil([&] { return device_.jobs.size() == 1 && device2_.jobs.size() == 2; }));
  EXPECT_EQ(device_.jobs[0].job_id, "upg-h5-" + std::string(kSerial));
  EXPECT_EQ(device2_.jobs[1].job_id, "upg-h5-" + std::string(kSerial2));
}

TEST(FleetBackendJobId, OneJobPerBoxOfAnHaCall) {
  // UpdateSmartAccessGatewayVersion without SerialNumber on an HA pair gives
  // two orders with one RequestId: their jobs must not share an id.
  const rpc::UpgradeOrder a{"4C467B38-3910-447D-87BC-AC049166F216", "sag-ha", "sage62x022502a",
                            rpc::VersionType::kDevice, "2.3.1.1"};
  auto b = a;
  b.serial_number = "sage62x022502b";
  EXPECT_NE(FleetBackend::JobIdOf(a), FleetBackend::JobIdOf(b));
  auto long_serial = a;
  long_serial.serial_number = std::string(80, 's');
  EXPECT_LE(FleetBackend::JobIdOf(long_serial).size(), proto::kMaxId);
  auto other_long = long_serial;
  other_long.serial_number = std::string(79, 's') + "t";
  EXPECT_NE(FleetBackend::JobIdOf(long_serial), FleetBackend::JobIdOf(other_long));
}

}  // namespace
}  // namespace sag::cloud
