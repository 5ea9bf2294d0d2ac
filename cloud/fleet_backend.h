// The ApiBackend of `sag-cloud serve`: the Smartag RPC API over the real
// parts. An instance's commercial record (region, account, status, name,
// its boxes' serial numbers and HA roles) comes from the configuration; what
// a box reports (versions, online, when it last spoke) comes from the store
// the device gateway keeps; the version catalog is the image repository's
// verified images; an upgrade is a job pushed through the gateway.
//
// Everything runs on the io_context thread the HTTP server and the gateway
// share: no call here waits on a device (Push records the job and sends it
// if the channel is up; the outcome arrives later as reports).
#pragma once

#include <chrono>
#include <map>
#include <string>
#include <vector>

#include "cloud/gateway.h"
#include "cloud/repository.h"
#include "cloud/rpc/api_backend.h"
#include "cloud/store.h"

namespace sag::cloud {

struct FleetOptions {
  // The instances, their boxes' serial numbers and HA roles; the versions
  // and online flags in here are ignored (the store's are used).
  std::vector<rpc::InstanceState> instances;
  // Where the devices fetch images: the repository server's base URL
  // ("https://127.0.0.1:8443"); an image's URL is this + Repository::PathOf.
  std::string image_base_url;
  // A job's deadline, from its dispatch: the device gives up after it.
  std::chrono::seconds job_deadline{std::chrono::hours(2)};
};

class FleetBackend final : public rpc::ApiBackend {
 public:
  FleetBackend(FleetOptions options, Store& store, Gateway& gateway, const Repository& repository);

  // Registers every configured box in the store, in one transaction (a box
  // must be registered before the gateway lets it connect).
  Status RegisterDevices();

  std::vector<rpc::InstanceState> ListInstances(const std::string& region_id, bool live) override;
  rpc::InstanceState MakeLive(rpc::InstanceState instance) override {
    return Live(std::move(instance));
  }
  std::optional<rpc::InstanceState> FindInstance(const std::string& smartag_id) override;
  std::vector<rpc::CatalogEntry> Catalog(rpc::VersionType type) override;
  // All or nothing (rpc::ApiBackend): every order is checked (image held,
  // box online, no unfinished job of that type, job id new) before the
  // first job is pushed.
  rpc::DispatchResult DispatchUpgrades(const std::vector<rpc::UpgradeOrder>& orders) override;

  // The id of the job an order becomes ("upg-<RequestId>-<serial>": an HA
  // call gives one order per box, with one RequestId).
  static std::string JobIdOf(const rpc::UpgradeOrder& order);

 private:
  using DeviceMap = std::map<std::string, DeviceRecord, std::less<>>;
  // The job for one order, or why the box cannot take it now.
  rpc::DispatchResult Prepare(const rpc::UpgradeOrder& order, JobRecord& job) const;
  // The instance with its boxes' live state: from `devices` (all of them,
  // read once) or, when null, read from the store box by box.
  rpc::InstanceState Live(rpc::InstanceState instance, const DeviceMap* devices = nullptr) const;

  FleetOptions options_;
  Store& store_;
  Gateway& gateway_;
  const Repository& repository_;
};

}  // namespace sag::cloud
