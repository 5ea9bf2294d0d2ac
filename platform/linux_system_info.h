// SystemInfo from configured values and files.
#pragma once

#include <filesystem>
#include <string>

#include "platform/system_info.h"

namespace sag::platform {

struct SystemInfoOptions {
  // A configured value wins; otherwise the file is read (surrounding
  // whitespace and NUL bytes, as in device-tree files, are stripped).
  std::string serial_number;
  std::filesystem::path serial_file{"/sys/class/dmi/id/product_serial"};
  std::string model;
  std::filesystem::path model_file{"/sys/class/dmi/id/product_name"};
  // The simulator points this at its own file, which it renews on every
  // simulated boot (configuration `simulator: boot_id_file`).
  std::filesystem::path boot_id_file{"/proc/sys/kernel/random/boot_id"};
};

class LinuxSystemInfo : public SystemInfo {
 public:
  explicit LinuxSystemInfo(SystemInfoOptions options);
  Expected<std::string> SerialNumber() override;
  Expected<std::string> HardwareModel() override;
  Expected<std::string> BootId() override;
  Expected<std::uint64_t> FreeSpace(const std::filesystem::path& dir) override;

 private:
  SystemInfoOptions options_;
};

}  // namespace sag::platform
