// An ApiBackend that keeps its state in memory: the fake of the tests, and
// the backend of `sag-cloud serve` until the store and the device gateway
// take its place (cloud/main.cpp). It obeys what the real one does: the
// reported versions change only through ReportVersion (the device committed
// and said so), never through DispatchUpgrades, which only records the jobs.
#pragma once

#include <mutex>
#include <string>
#include <vector>

#include "cloud/rpc/api_backend.h"

namespace sag::cloud::rpc {

class MemoryBackend final : public ApiBackend {
 public:
  // As the real backend: without `live`, the boxes' reported versions and
  // online state are left empty, and MakeLive fills them in.
  std::vector<InstanceState> ListInstances(const std::string& region_id, bool live) override;
  InstanceState MakeLive(InstanceState instance) override;
  std::optional<InstanceState> FindInstance(const std::string& smartag_id) override;
  std::vector<CatalogEntry> Catalog(VersionType type) override;
  DispatchResult DispatchUpgrades(const std::vector<UpgradeOrder>& orders) override;

  // ---- state, as the gateway and the store would change it ----
  void PutInstance(InstanceState instance);  // adds or replaces
  void AddCatalogEntry(CatalogEntry entry);
  // The device's channel came up (with its state) or went down.
  bool SetOnline(const std::string& serial, bool online, Clock::time_point state_at);
  // The device committed `version` and reported it.
  bool ReportVersion(const std::string& serial, VersionType type, const std::string& version);
  // Makes the next DispatchUpgrades answer `result` (once); it records none
  // of that call's orders.
  void FailNextDispatch(DispatchResult result);

  [[nodiscard]] std::vector<UpgradeOrder> Orders() const;
  // Instances made live one by one (MakeLive) so far.
  [[nodiscard]] std::size_t LiveReads() const;

 private:
  DeviceState* FindDevice(const std::string& serial);

  mutable std::mutex mu_;
  std::vector<InstanceState> instances_;
  std::vector<CatalogEntry> catalog_;
  std::vector<UpgradeOrder> orders_;
  DispatchResult next_dispatch_ = DispatchResult::kDispatched;
  std::size_t live_reads_ = 0;
};

}  // namespace sag::cloud::rpc
