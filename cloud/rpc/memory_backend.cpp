#include "cloud/rpc/memory_backend.h"

#include <algorithm>

namespace sag::cloud::rpc {

std::vector<InstanceState> MemoryBackend::ListInstances(const std::string& region_id, bool live) {
  const std::lock_guard lock(mu_);
  std::vector<InstanceState> out;
  for (const auto& i : instances_) {
    if (!region_id.empty() && i.region_id != region_id) continue;
    out.push_back(i);
    if (live) continue;
    for (auto& d : out.back().devices) {
      d.software_version.clear();
      d.dpi_signature_db_version.clear();
      d.online = false;
      d.state_reported_at.reset();
    }
  }
  return out;
}

InstanceState MemoryBackend::MakeLive(InstanceState instance) {
  const std::lock_guard lock(mu_);
  ++live_reads_;
  const auto it = std::find_if(instances_.begin(), instances_.end(), [&](const InstanceState& i) {
    return i.smartag_id == instance.smartag_id;
  });
  return it == instances_.end() ? instance : *it;
}

std::size_t MemoryBackend::LiveReads() const {
  const std::lock_guard lock(mu_);
  return live_reads_;
}

std::optional<InstanceState> MemoryBackend::FindInstance(const std::string& smartag_id) {
  const std::lock_guard lock(mu_);
  const auto it = std::find_if(instances_.begin(), instances_.end(),
                               [&](const InstanceState& i) { return i.smartag_id == smartag_id; });
  if (it == instances_.end()) return std::nullopt;
  return *it;
}

std::vector<CatalogEntry> MemoryBackend::Catalog(VersionType type) {
  const std::lock_guard lock(mu_);
  std::vector<CatalogEntry> out;
  std::copy_if(catalog_.begin(), catalog_.end(), std::back_inserter(out),
               [&](const CatalogEntry& e) { return e.type == type; });
  return out;
}

DispatchResult MemoryBackend::DispatchUpgrades(const std::vector<UpgradeOrder>& orders) {
  const std::lock_guard lock(mu_);
  const DispatchResult r = std::exchange(next_dispatch_, DispatchResult::kDispatched);
  if (r == DispatchResult::kDispatched) orders_.insert(orders_.end(), orders.begin(), orders.end());
  return r;
}

void MemoryBackend::PutInstance(InstanceState instance) {
  const std::lock_guard lock(mu_);
  for (auto& i : instances_) {
    if (i.smartag_id == instance.smartag_id) {
      i = std::move(instance);
      return;
    }
  }
  instances_.push_back(std::move(instance));
}

void MemoryBackend::AddCatalogEntry(CatalogEntry entry) {
  const std::lock_guard lock(mu_);
  catalog_.push_back(std::move(entry));
}

DeviceState* MemoryBackend::FindDevice(const std::string& serial) {
  for (auto& i : instances_) {
    for (auto& d : i.devices) {
      if (d.serial_number == serial) return &d;
    }
  }
  return nullptr;
}

bool MemoryBackend::SetOnline(const std::string& serial, bool online, Clock::time_point state_at) {
  const std::lock_guard lock(mu_);
  DeviceState* d = FindDevice(serial);
  if (d == nullptr) return false;
  d->online = online;
  if (online) d->state_reported_at = state_at;
  return true;
}

bool MemoryBackend::ReportVersion(const std::string& serial, VersionType type,
                                  const std::string& version) {
  const std::lock_guard lock(mu_);
  DeviceState* d = FindDevice(serial);
  if (d == nullptr) return false;
  (type == VersionType::kDevice ? d->software_version : d->dpi_signature_db_version) = version;
  return true;
}

void MemoryBackend::FailNextDispatch(DispatchResult result) {
  const std::lock_guard lock(mu_);
  next_dispatch_ = result;
}

std::vector<UpgradeOrder> MemoryBackend::Orders() const {
  const std::lock_guard lock(mu_);
  return orders_;
}

}  // namespace sag::cloud::rpc
