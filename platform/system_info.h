// Facts about the appliance.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>

#include "common/error.h"

namespace sag::platform {

class SystemInfo {
 public:
  virtual ~SystemInfo() = default;
  virtual Expected<std::string> SerialNumber() = 0;
  virtual Expected<std::string> HardwareModel() = 0;
  // Changes on every boot (/proc/sys/kernel/random/boot_id); lets the agent
  // tell a reboot from a restart of itself.
  virtual Expected<std::string> BootId() = 0;
  // Bytes available to the agent in the file system holding `dir`.
  virtual Expected<std::uint64_t> FreeSpace(const std::filesystem::path& dir) = 0;
};

}  // namespace sag::platform
