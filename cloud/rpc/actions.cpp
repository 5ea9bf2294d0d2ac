#include "cloud/rpc/actions.h"

#include <algorithm>

#include "common/parse_decimal.h"
#include "common/version.h"

namespace sag::cloud::rpc {

namespace {

using json = nlohmann::ordered_json;

constexpr std::string_view kUpdate = "UpdateSmartAccessGatewayVersion";
constexpr std::string_view kDescribeVersions = "DescribeSmartAccessGatewayVersions";
constexpr std::string_view kDescribeGateways = "DescribeSmartAccessGateways";
constexpr std::string_view kDescribeAttribute = "DescribeSmartAccessGatewayAttribute";

ActionResult Fail(RpcError e) { return {std::move(e), json::object()}; }

const std::string* Find(const ParamMap& params, const std::string& name) {
  const auto it = params.find(name);
  return it == params.end() ? nullptr : &it->second;
}

// A required parameter: absent or empty is MissingParameter.
std::optional<RpcError> Require(const ParamMap& params, const std::string& name) {
  const auto* v = Find(params, name);
  if (v == nullptr || v->empty()) return errors::MissingParameter(name);
  return std::nullopt;
}

std::optional<VersionType> ParseVersionType(const ParamMap& params, RpcError& error) {
  const auto* v = Find(params, "VersionType");
  if (v == nullptr || v->empty() || *v == "Device") return VersionType::kDevice;
  if (*v == "Dpi") return VersionType::kDpi;
  error = errors::InvalidParameter("VersionType", "Valid values: Device, Dpi.");
  return std::nullopt;
}

VersionKind KindOf(VersionType t) {
  return t == VersionType::kDevice ? VersionKind::kDevice : VersionKind::kDpi;
}

const std::string& ReportedVersion(const DeviceState& d, VersionType t) {
  return t == VersionType::kDevice ? d.software_version : d.dpi_signature_db_version;
}

bool Compatible(const CatalogEntry& e, const std::string& model) {
  return e.hardware_models.empty() || model.empty() ||
         std::find(e.hardware_models.begin(), e.hardware_models.end(), model) !=
             e.hardware_models.end();
}

// A positive integer parameter within [lo, hi], or its default when absent.
std::optional<long> IntParam(const ParamMap& params, const std::string& name, long dflt, long lo,
                             long hi, RpcError& error) {
  const auto* v = Find(params, name);
  if (v == nullptr || v->empty()) return dflt;
  const auto n = ParseDecimal<long>(*v);
  if (!n || *n < lo || *n > hi) {
    error = errors::InvalidParameter(name, "It must be an integer from " + std::to_string(lo) +
                                               " to " + std::to_string(hi) + ".");
    return std::nullopt;
  }
  return n;
}

// The instance `id` as the caller may see it: absent, of another region or
// of another account are all InvalidId.SMARTAG for the Describe actions.
std::optional<InstanceState> Visible(ApiBackend& backend, const CallContext& ctx,
                                     const ParamMap& params) {
  auto inst = backend.FindInstance(params.at("SmartAGId"));
  if (!inst || inst->account != ctx.account) return std::nullopt;
  const auto* region = Find(params, "RegionId");
  if (region != nullptr && !region->empty() && *region != inst->region_id) return std::nullopt;
  return inst;
}

const DeviceState* MasterDevice(const InstanceState& inst) {
  for (const auto& d : inst.devices) {
    if (d.ha_state == "active") return &d;
  }
  return inst.devices.empty() ? nullptr : &inst.devices.front();
}

bool AnyOnline(const InstanceState& inst) {
  return std::any_of(inst.devices.begin(), inst.devices.end(),
                     [](const DeviceState& d) { return d.online; });
}

}  // namespace

std::string DisplayStatus(const InstanceState& instance) {
  if (instance.status == "Active" && !AnyOnline(instance)) return "Offline";
  return instance.status;
}

SmartagActions::SmartagActions(ApiBackend& backend, ActionOptions options)
    : backend_(backend), options_(options) {}

bool SmartagActions::Known(std::string_view action) {
  return action == kUpdate || action == kDescribeVersions || action == kDescribeGateways ||
         action == kDescribeAttribute;
}

ActionResult SmartagActions::Call(std::string_view action, const CallContext& ctx,
                                  const ParamMap& params) {
  if (action == kUpdate) return UpdateVersion(ctx, params);
  if (action == kDescribeVersions) return DescribeVersions(ctx, params);
  if (action == kDescribeGateways) return DescribeGateways(ctx, params);
  if (action == kDescribeAttribute) return DescribeAttribute(ctx, params);
  return Fail(errors::InvalidActionNotFound());
}

ActionResult SmartagActions::UpdateVersion(const CallContext& ctx, const ParamMap& params) {
  for (const char* name : {"RegionId", "SmartAGId", "VersionCode"}) {
    if (auto e = Require(params, name)) return Fail(*e);
  }
  RpcError error;
  const auto type = ParseVersionType(params, error);
  if (!type) return Fail(error);
  if (ctx.read_only) return Fail(errors::Forbidden());

  const auto inst = backend_.FindInstance(params.at("SmartAGId"));
  if (!inst || inst->region_id != params.at("RegionId")) return Fail(errors::InvalidIdSmartag());
  if (inst->account != ctx.account) return Fail(errors::PermissionError());
  if (inst->status == "Arrearage") return Fail(errors::SmartAccessGatewayInArrears());
  if (inst->status != "Active") return Fail(errors::SmartAccessGatewayNotActivated());
  const auto now_ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(ctx.now.time_since_epoch()).count();
  if (inst->end_time_ms != 0 && inst->end_time_ms <= now_ms) {
    return Fail(errors::SmartAccessGatewayInArrears());
  }
  if (inst->associated_ccn_id.empty()) return Fail(errors::NotBoundCcn());

  std::vector<const DeviceState*> targets;
  const auto* serial = Find(params, "SerialNumber");
  for (const auto& d : inst->devices) {
    if (serial == nullptr || serial->empty() || d.serial_number == *serial) targets.push_back(&d);
  }
  if (serial != nullptr && !serial->empty() && targets.empty()) {
    return Fail(errors::InvalidIdSn());
  }
  // An instance whose boxes never came is "not online".
  if (targets.empty()) return Fail(errors::SmartAccessGatewayNotOnline());

  const std::string& code = params.at("VersionCode");
  const auto catalog = backend_.Catalog(*type);
  auto target_version = Version::Parse(KindOf(*type), code);
  for (const auto* d : targets) {
    if (!d->online) return Fail(errors::SmartAccessGatewayNotOnline());
    if (!d->state_reported_at || *d->state_reported_at + options_.state_staleness < ctx.now) {
      return Fail(errors::GetSmartAccessGatewayStateError());
    }
    const std::string& reported = ReportedVersion(*d, *type);
    const auto current = Version::Parse(KindOf(*type), reported);
    // A box without a DPI database (it reported none) takes any version; a
    // Device OS version must be known to be compared.
    const bool first_dpi = *type == VersionType::kDpi && reported.empty();
    if (!first_dpi && (reported.empty() || !current)) {
      return Fail(errors::GetSmartAccessGatewayVersionError());
    }
    const bool listed = std::any_of(catalog.begin(), catalog.end(), [&](const CatalogEntry& e) {
      return e.type == *type && e.version_code == code && Compatible(e, d->hardware_model);
    });
    if (!listed || !target_version) return Fail(errors::VersionNotExist());
    if (!first_dpi && *target_version <= *current) return Fail(errors::VersionTooOld());
  }

  // Every box checked: the jobs go out together or not at all.
  std::vector<UpgradeOrder> orders;
  orders.reserve(targets.size());
  for (const auto* d : targets) {
    orders.push_back({ctx.request_id, inst->smartag_id, d->serial_number, *type, code});
  }
  switch (backend_.DispatchUpgrades(orders)) {
    case DispatchResult::kDispatched:
      break;
    case DispatchResult::kOffline:
      return Fail(errors::SmartAccessGatewayNotOnline());
    case DispatchResult::kBusy:
      return Fail(errors::IncorrectStatus());
    case DispatchResult::kFailed:
      return Fail(errors::InternalError());
  }
  return {};
}

ActionResult SmartagActions::DescribeVersions(const CallContext& ctx, const ParamMap& params) {
  for (const char* name : {"RegionId", "SmartAGId"}) {
    if (auto e = Require(params, name)) return Fail(*e);
  }
  RpcError error;
  const auto type = ParseVersionType(params, error);
  if (!type) return Fail(error);
  const auto inst = Visible(backend_, ctx, params);
  if (!inst) return Fail(errors::InvalidIdSmartag());
  std::string model = inst->instance_type;
  if (const auto* sn = Find(params, "SmartAGSn"); sn != nullptr && !sn->empty()) {
    const auto it = std::find_if(inst->devices.begin(), inst->devices.end(),
                                 [&](const DeviceState& d) { return d.serial_number == *sn; });
    if (it == inst->devices.end()) return Fail(errors::InvalidIdSn());
    if (!it->hardware_model.empty()) model = it->hardware_model;
  }
  json list = json::array();
  for (const auto& e : backend_.Catalog(*type)) {
    if (e.type != *type || !Compatible(e, model)) continue;
    json v = json::object();
    v["Type"] = e.release_type;
    v["CreateTime"] = e.create_time_ms;
    v["VersionCode"] = e.version_code;
    v["VersionName"] = e.version_name;
    list.push_back(std::move(v));
  }
  ActionResult r;
  r.body["SmartAGVersions"] = json{{"SmartAGVersion", std::move(list)}};
  return r;
}

ActionResult SmartagActions::DescribeGateways(const CallContext& ctx, const ParamMap& params) {
  RpcError error;
  const auto page_number = IntParam(params, "PageNumber", 1, 1, 1000000, error);
  if (!page_number) return Fail(error);
  const auto page_size = IntParam(params, "PageSize", 10, 1, 50, error);
  if (!page_size) return Fail(error);
  const auto* comparator = Find(params, "VersionComparator");
  if (comparator != nullptr && !comparator->empty() && *comparator != "greater" &&
      *comparator != "less" && *comparator != "equals") {
    return Fail(
        errors::InvalidParameter("VersionComparator", "Valid values: greater, less, equals."));
  }
  const auto* software_version = Find(params, "SoftwareVersion");
  std::optional<Version> wanted_version;
  if (software_version != nullptr && !software_version->empty()) {
    auto v = Version::Parse(VersionKind::kDevice, *software_version);
    if (!v) return Fail(errors::InvalidParameter("SoftwareVersion"));
    wanted_version = std::move(*v);
  }
  std::vector<std::string> ids;
  for (const auto& [name, value] : params) {
    if (name.starts_with("SmartAGIds.") && !value.empty()) ids.push_back(value);
  }
  const auto matches = [&](const std::string& param, const std::string& value) {
    const auto* v = Find(params, param);
    return v == nullptr || v->empty() || *v == value;
  };
  const auto* region = Find(params, "RegionId");
  // Status and SoftwareVersion filter on the boxes' live state; without
  // them, the list is filtered on the configured state and only the page
  // answered is made live (a call costs its page, not the fleet).
  const auto* status_filter = Find(params, "Status");
  const bool live = wanted_version || (status_filter != nullptr && !status_filter->empty());
  auto instances = backend_.ListInstances(region == nullptr ? std::string() : *region, live);
  std::sort(instances.begin(), instances.end(), [](const InstanceState& a, const InstanceState& b) {
    return a.smartag_id < b.smartag_id;
  });
  std::vector<const InstanceState*> selected;
  for (const auto& inst : instances) {
    if (inst.account != ctx.account) continue;
    if (region != nullptr && !region->empty() && inst.region_id != *region) continue;
    if (!matches("SmartAGId", inst.smartag_id) || !matches("Name", inst.name) ||
        !matches("Status", DisplayStatus(inst)) ||
        !matches("AssociatedCcnId", inst.associated_ccn_id)) {
      continue;
    }
    if (!ids.empty() && std::find(ids.begin(), ids.end(), inst.smartag_id) == ids.end()) continue;
    if (const auto* sn = Find(params, "SerialNumber"); sn != nullptr && !sn->empty()) {
      if (std::none_of(inst.devices.begin(), inst.devices.end(),
                       [&](const DeviceState& d) { return d.serial_number == *sn; })) {
        continue;
      }
    }
    if (wanted_version) {
      const auto* master = MasterDevice(inst);
      const auto have = master == nullptr
                            ? Expected<Version>(Error(Errc::kNotFound, "no device"))
                            : Version::Parse(VersionKind::kDevice, master->software_version);
      if (!have) continue;
      const std::string cmp = comparator == nullptr || comparator->empty() ? "equals" : *comparator;
      if ((cmp == "equals" && !(*have == *wanted_version)) ||
          (cmp == "greater" && !(*have > *wanted_version)) ||
          (cmp == "less" && !(*have < *wanted_version))) {
        continue;
      }
    }
    selected.push_back(&inst);
  }
  json list = json::array();
  const auto first = static_cast<std::size_t>((*page_number - 1) * *page_size);
  for (std::size_t i = first; i < selected.size() && i < first + *page_size; ++i) {
    const InstanceState inst = live ? *selected[i] : backend_.MakeLive(*selected[i]);
    const DeviceState* master = MasterDevice(inst);
    json g = json::object();
    g["SmartAGId"] = inst.smartag_id;
    g["Name"] = inst.name;
    g["Description"] = inst.description;
    g["Status"] = DisplayStatus(inst);
    g["SerialNumber"] = master == nullptr ? "" : master->serial_number;
    g["HardwareVersion"] = inst.instance_type;
    g["SoftwareVersion"] = master == nullptr ? "" : master->software_version;
    for (const auto& d : inst.devices) {
      if (&d != master) g["BackupSoftwareVersion"] = d.software_version;
    }
    g["AssociatedCcnId"] = inst.associated_ccn_id;
    g["AssociatedCcnName"] = inst.associated_ccn_name;
    g["City"] = inst.city;
    g["CreateTime"] = inst.create_time_ms;
    g["EndTime"] = inst.end_time_ms;
    g["MaxBandwidth"] = inst.max_bandwidth;
    list.push_back(std::move(g));
  }
  ActionResult r;
  r.body["TotalCount"] = selected.size();
  r.body["PageNumber"] = *page_number;
  r.body["PageSize"] = *page_size;
  r.body["SmartAccessGateways"] = json{{"SmartAccessGateway", std::move(list)}};
  return r;
}

ActionResult SmartagActions::DescribeAttribute(const CallContext& ctx, const ParamMap& params) {
  for (const char* name : {"RegionId", "SmartAGId"}) {
    if (auto e = Require(params, name)) return Fail(*e);
  }
  const auto inst = Visible(backend_, ctx, params);
  if (!inst) return Fail(errors::InvalidIdSmartag());
  const DeviceState* master = MasterDevice(*inst);
  std::string serials;
  json devices = json::array();
  for (const auto& d : inst->devices) {
    if (!serials.empty()) serials += ',';
    serials += d.serial_number;
    json j = json::object();
    j["SerialNumber"] = d.serial_number;
    j["SoftwareVersion"] = d.software_version;
    j["DpiSignatureDbVersion"] = d.dpi_signature_db_version;
    j["MonitorVersion"] = "";
    j["HaState"] = d.ha_state;
    devices.push_back(std::move(j));
  }
  ActionResult r;
  auto& b = r.body;
  b["SmartAGId"] = inst->smartag_id;
  b["Name"] = inst->name;
  b["Description"] = inst->description;
  b["Status"] = DisplayStatus(*inst);
  b["SerialNumber"] = serials;
  b["TrafficMasterSn"] = master == nullptr ? "" : master->serial_number;
  b["InstanceType"] = inst->instance_type;
  b["City"] = inst->city;
  b["AssociatedCcnId"] = inst->associated_ccn_id;
  b["AssociatedCcnName"] = inst->associated_ccn_name;
  b["CreateTime"] = inst->create_time_ms;
  b["EndTime"] = inst->end_time_ms;
  b["MaxBandwidth"] = inst->max_bandwidth;
  b["Devices"] = json{{"Device", std::move(devices)}};
  return r;
}

}  // namespace sag::cloud::rpc
