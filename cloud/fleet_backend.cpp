#include "cloud/fleet_backend.h"

#include <spdlog/spdlog.h>

#include <algorithm>

#include "cloud/rpc/rpc_service.h"
#include "common/sha256.h"

namespace sag::cloud {

namespace {

image::ImageType ImageTypeOf(rpc::VersionType type) {
  return type == rpc::VersionType::kDevice ? image::ImageType::kDevice : image::ImageType::kDpi;
}

std::string JobTypeName(rpc::VersionType type) {
  return type == rpc::VersionType::kDevice ? "Device" : "Dpi";
}

}  // namespace

FleetBackend::FleetBackend(FleetOptions options, Store& store, Gateway& gateway,
                           const Repository& repository)
    : options_(std::move(options)), store_(store), gateway_(gateway), repository_(repository) {}

Status FleetBackend::RegisterDevices() {
  std::vector<DeviceIdentity> boxes;
  for (const auto& instance : options_.instances) {
    for (const auto& box : instance.devices) {
      boxes.push_back({box.serial_number, instance.smartag_id, box.hardware_model});
    }
  }
  return store_.RegisterDevices(boxes);
}

std::string FleetBackend::JobIdOf(const rpc::UpgradeOrder& order) {
  // One call may upgrade both boxes of an HA pair: one order, and one job,
  // per box, all with the call's RequestId. A serial too long for the
  // protocol's id limit is replaced by a short hash of it.
  std::string id = "upg-" + order.request_id + "-" + order.serial_number;
  if (id.size() > proto::kMaxId) {
    id = "upg-" + order.request_id + "-" + ToHex(Sha256::Of(order.serial_number)).substr(0, 12);
  }
  return id;
}

rpc::InstanceState FleetBackend::Live(rpc::InstanceState instance, const DeviceMap* devices) const {
  for (auto& box : instance.devices) {
    box.software_version.clear();
    box.dpi_signature_db_version.clear();
    box.online = false;
    box.state_reported_at.reset();
    std::optional<DeviceRecord> rec;
    if (devices == nullptr) {
      rec = store_.FindDevice(box.serial_number);
    } else if (const auto it = devices->find(box.serial_number); it != devices->end()) {
      rec = it->second;
    }
    if (!rec) continue;
    box.software_version = rec->versions.device;
    box.dpi_signature_db_version = rec->versions.dpi;
    if (!rec->model.empty()) box.hardware_model = rec->model;
    box.online = gateway_.IsOnline(box.serial_number);
    if (!rec->last_seen.empty()) box.state_reported_at = rpc::ParseIsoTimestamp(rec->last_seen);
  }
  return instance;
}

std::vector<rpc::InstanceState> FleetBackend::ListInstances(const std::string& region_id,
                                                            bool live) {
  std::vector<rpc::InstanceState> out;
  // Live: one read of every device instead of one per box.
  DeviceMap devices;
  if (live) {
    for (DeviceRecord& d : store_.Devices()) {
      std::string serial = d.serial;
      devices.emplace(std::move(serial), std::move(d));
    }
  }
  for (const auto& instance : options_.instances) {
    if (!region_id.empty() && instance.region_id != region_id) continue;
    out.push_back(live ? Live(instance, &devices) : instance);
  }
  return out;
}

std::optional<rpc::InstanceState> FleetBackend::FindInstance(const std::string& smartag_id) {
  for (const auto& instance : options_.instances) {
    if (instance.smartag_id == smartag_id) return Live(instance);
  }
  return std::nullopt;
}

std::vector<rpc::CatalogEntry> FleetBackend::Catalog(rpc::VersionType type) {
  std::vector<rpc::CatalogEntry> out;
  for (const auto& img : repository_.Images()) {
    if (img.type != ImageTypeOf(type)) continue;
    rpc::CatalogEntry e;
    e.type = type;
    e.version_code = img.version;
    e.version_name = img.file_name;
    e.release_type = "release";
    if (auto t = rpc::ParseIsoTimestamp(img.build_time)) {
      e.create_time_ms =
          std::chrono::duration_cast<std::chrono::milliseconds>(t->time_since_epoch()).count();
    }
    e.hardware_models = img.compatible;
    out.push_back(std::move(e));
  }
  return out;
}

rpc::DispatchResult FleetBackend::Prepare(const rpc::UpgradeOrder& order, JobRecord& job) const {
  const auto img = repository_.Find(ImageTypeOf(order.type), order.version_code);
  if (!img) {
    // The front checked the catalog a moment ago: the repository changed.
    spdlog::error("api: {} {} is no longer in the image repository", JobTypeName(order.type),
                  order.version_code);
    return rpc::DispatchResult::kFailed;
  }
  if (!gateway_.IsOnline(order.serial_number)) return rpc::DispatchResult::kOffline;
  for (const JobRecord& other : store_.JobsOf(order.serial_number)) {
    if (other.spec.job_type == JobTypeName(order.type) && !IsFinal(other.state) &&
        other.state != JobState::kTimedOut) {
      return rpc::DispatchResult::kBusy;
    }
  }
  job.serial = order.serial_number;
  job.spec.job_id = JobIdOf(order);
  if (store_.FindJob(job.spec.job_id)) {
    spdlog::error("api: job {} exists already", job.spec.job_id);
    return rpc::DispatchResult::kFailed;
  }
  job.spec.job_type = JobTypeName(order.type);
  job.spec.version = img->version;
  job.spec.url = options_.image_base_url + Repository::PathOf(*img);
  job.spec.size = img->size;
  job.spec.sha256 = img->sha256;
  job.spec.deadline = UtcTime(std::chrono::system_clock::now() + options_.job_deadline);
  job.created = UtcNow();
  job.updated = job.created;
  return rpc::DispatchResult::kDispatched;
}

rpc::DispatchResult FleetBackend::DispatchUpgrades(const std::vector<rpc::UpgradeOrder>& orders) {
  // Every order is checked before any job is pushed: a box that is offline
  // or busy refuses the whole call, and its pair gets no job either.
  std::vector<JobRecord> jobs;
  for (const auto& order : orders) {
    const bool twice = std::any_of(jobs.begin(), jobs.end(), [&](const JobRecord& j) {
      return j.serial == order.serial_number && j.spec.job_type == JobTypeName(order.type);
    });
    if (twice) return rpc::DispatchResult::kBusy;
    JobRecord job;
    if (const auto r = Prepare(order, job); r != rpc::DispatchResult::kDispatched) {
      spdlog::info("api: call {} not dispatched: {} cannot take its {} job ({})", order.request_id,
                   order.serial_number, JobTypeName(order.type),
                   r == rpc::DispatchResult::kOffline ? "offline"
                   : r == rpc::DispatchResult::kBusy  ? "busy with another job"
                                                      : "failed");
      return r;
    }
    jobs.push_back(std::move(job));
  }
  // Nothing refused. Only the store failing (disk full, I/O error) can stop
  // this half-way: the jobs already pushed are then cancelled, and the call
  // answers InternalError.
  std::vector<std::string> pushed;
  for (auto& job : jobs) {
    const std::string id = job.spec.job_id;
    const std::string serial = job.serial;
    const std::string what = job.spec.job_type + " " + job.spec.version;
    if (auto st = gateway_.Push(std::move(job)); !st) {
      spdlog::error("api: job {} for {} ({}): {}", id, serial, what, st.error().ToString());
      for (const auto& done : pushed) {
        if (auto c = gateway_.Cancel(done); !c) {
          spdlog::error("api: job {} of the same call stays: cancelling it failed: {}", done,
                        c.error().ToString());
        } else {
          spdlog::warn("api: job {} of the same call cancelled", done);
        }
      }
      return rpc::DispatchResult::kFailed;
    }
    spdlog::info("api: job {} for {}: {}", id, serial, what);
    pushed.push_back(id);
  }
  return rpc::DispatchResult::kDispatched;
}

}  // namespace sag::cloud
