// The Smartag actions: each reads its parameters, checks them against the
// state the backend reports, and answers a body or an RpcError. Signature,
// time, replay and format are the caller's (rpc_service.h) business; an
// action sees an authenticated call.
//
// UpdateSmartAccessGatewayVersion's checks, in the order they run (the first
// that fails answers; docs/cloud.md has the same table):
//   RegionId, SmartAGId, VersionCode absent        400 MissingParameter
//   VersionType not Device|Dpi                     400 InvalidParameter
//   the access key is read-only                    403 Forbidden
//   no such instance (or not in RegionId)          403 InvalidId.SMARTAG
//   the instance belongs to another account        500 PermissionError
//   Status is not Active (Ordered, Init, ...)      500 SmartAccessGatewayNotActivated
//   Status Arrearage or EndTime passed             500 SmartAccessGatewayInArrears
//   no CCN bound                                   403 NotBoundCCN
//   SerialNumber names no device of the instance   400 InvalidId.SN
//   a chosen device's channel is down              403 SmartAccessGatewayNotOnline
//   its state never came or is stale               403 GetSmartAccessGatewayStateError
//   it never reported a version of VersionType     403 GetSmartAccessGatewayVersionError
//   (or reported one that does not parse)
//   VersionCode not in the catalog of VersionType  400 VersionNotExist
//   (or not for the device's hardware model)
//   VersionCode not newer than the reported one    403 VersionTooOld
//   the device runs another job of that type       400 IncorrectStatus
// Without SerialNumber every device of the instance is upgraded (both boxes
// of an HA pair, which must run the same version); each must pass.
#pragma once

#include <chrono>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>

#include "cloud/rpc/api_backend.h"
#include "cloud/rpc/rpc_error.h"
#include "cloud/rpc/signature.h"

namespace sag::cloud::rpc {

// Who calls, and when.
struct CallContext {
  std::string request_id;
  std::string account;     // the account the access key belongs to
  bool read_only = false;  // the key may call Describe* only
  Clock::time_point now;
};

struct ActionResult {
  std::optional<RpcError> error;                                   // set: the call failed
  nlohmann::ordered_json body = nlohmann::ordered_json::object();  // without RequestId
};

struct ActionOptions {
  // An online device whose last state is older than this cannot be upgraded.
  std::chrono::seconds state_staleness{300};
};

class SmartagActions {
 public:
  explicit SmartagActions(ApiBackend& backend, ActionOptions options = {});

  [[nodiscard]] static bool Known(std::string_view action);
  // Precondition: Known(action).
  ActionResult Call(std::string_view action, const CallContext& ctx, const ParamMap& params);

 private:
  ActionResult UpdateVersion(const CallContext& ctx, const ParamMap& params);
  ActionResult DescribeVersions(const CallContext& ctx, const ParamMap& params);
  ActionResult DescribeGateways(const CallContext& ctx, const ParamMap& params);
  ActionResult DescribeAttribute(const CallContext& ctx, const ParamMap& params);

  ApiBackend& backend_;
  ActionOptions options_;
};

// "Offline" for an Active instance none of whose devices is online, else the
// stored status.
std::string DisplayStatus(const InstanceState& instance);

}  // namespace sag::cloud::rpc
