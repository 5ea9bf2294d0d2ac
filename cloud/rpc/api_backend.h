// What the Smartag RPC API needs from the rest of sag-cloud: the state of
// instances, devices and the image catalog, and a way to hand an upgrade job
// to the device gateway. The API front (rpc/actions.h) owns every check an
// action makes and every error it answers; a backend only reports state as
// it is and dispatches.
//
// The real backend reads the store and asks the gateway (once both exist);
// MemoryBackend (rpc/memory_backend.h) keeps the same state in memory for
// tests and for `sag-cloud serve` without them.
//
// Calls come from the API's thread and must return within milliseconds:
// SDK clients time out after 3 s, and nothing here may wait on a device.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace sag::cloud::rpc {

using Clock = std::chrono::system_clock;

enum class VersionType { kDevice, kDpi };

// One box of an instance (an HA instance has two).
struct DeviceState {
  std::string serial_number;
  std::string hardware_model;  // "sag-1000", "sag-100wm", ...
  // The versions the device last reported as committed; empty: never reported.
  std::string software_version;
  std::string dpi_signature_db_version;
  bool online = false;  // its channel to the gateway is up now
  // When the device last sent its state (hello or heartbeat) on the channel;
  // nullopt: never. An online device whose state is older than the API's
  // staleness bound cannot be upgraded (GetSmartAccessGatewayStateError).
  std::optional<Clock::time_point> state_reported_at;
  std::string ha_state;  // "active", "standby" or "" (single box)
};

// An SAG instance as DescribeSmartAccessGateway* show it.
struct InstanceState {
  std::string smartag_id;  // "sag-..."
  std::string account;     // the owning account (Alibaba Cloud uid)
  std::string region_id;   // "cn-shanghai"
  std::string name;
  std::string description;
  // The commercial status, exactly as the API spells it: Ordered, Delivered,
  // Received, Unconfirmed, Init, Active, Arrearage. "Offline" is not stored:
  // the API shows it for an Active instance whose devices are all offline.
  std::string status;
  std::string instance_type;  // hardware model of the boxes: "sag-1000", "sag-100wm"
  std::string associated_ccn_id;
  std::string associated_ccn_name;
  std::string city;
  std::string max_bandwidth;  // "50 M"
  std::int64_t create_time_ms = 0;
  std::int64_t end_time_ms = 0;  // after this the instance is in arrears
  std::vector<DeviceState> devices;
};

// One signed image the repository holds.
struct CatalogEntry {
  VersionType type = VersionType::kDevice;
  std::string version_code;  // "2.3.1.1", "20201117_1_0-0.0.1"
  std::string version_name;  // the package name
  std::string release_type;  // "release" or "beta"
  std::int64_t create_time_ms = 0;
  std::vector<std::string> hardware_models;  // compatible models; empty: all
};

// One device's upgrade. A call without SerialNumber on an HA instance gives
// one order per device, all with the call's RequestId: a backend that makes
// job ids from it must tell the devices apart.
struct UpgradeOrder {
  std::string request_id;  // the RPC RequestId, kept with the job for tracing
  std::string smartag_id;
  std::string serial_number;  // one device
  VersionType type = VersionType::kDevice;
  std::string version_code;
};

// The answer for a whole call (every order of it): a call is all or nothing.
enum class DispatchResult {
  kDispatched,  // every job is on its way (persisted); the outcomes are reported later
  kOffline,     // a device's channel went down since the state was read
  kBusy,        // a device runs another job of this type
  kFailed,      // anything else (store error): the API answers InternalError
};

class ApiBackend {
 public:
  virtual ~ApiBackend() = default;

  // Every instance of the region ("" = all regions), of every account; the
  // API filters by the caller's account. With `live`, each box carries its
  // reported versions and online state; without, only what is configured
  // (a fleet's list is filtered on that, and only the page answered is
  // made live: reading every device for each call is O(fleet) per call).
  virtual std::vector<InstanceState> ListInstances(const std::string& region_id, bool live) = 0;
  // The instance with its boxes' reported versions and online state.
  virtual InstanceState MakeLive(InstanceState instance) = 0;
  // nullopt: no instance has this id.
  virtual std::optional<InstanceState> FindInstance(const std::string& smartag_id) = 0;
  // The verified images of one type.
  virtual std::vector<CatalogEntry> Catalog(VersionType type) = 0;
  // Hands the jobs of one call (one order per box: two for an HA pair
  // without SerialNumber) to the gateway without waiting for the devices.
  // All or nothing: unless the answer is kDispatched, no order's job is
  // left behind (the boxes of an HA pair must run the same version, so
  // upgrading one of them when the call asked for both is wrong).
  virtual DispatchResult DispatchUpgrades(const std::vector<UpgradeOrder>& orders) = 0;
};

}  // namespace sag::cloud::rpc
