#include "platform/linux_system_info.h"

#include <sys/statvfs.h>

#include "common/atomic_file.h"

namespace sag::platform {

namespace {

Expected<std::string> ValueOrFile(const std::string& value, const std::filesystem::path& file,
                                  const std::string& what) {
  if (!value.empty()) return value;
  if (file.empty()) {
    return Error(Errc::kSystemInfo, "no " + what + " configured and no file to read it from");
  }
  auto text = ReadFile(file, 4096);
  if (!text) {
    return Error(Errc::kSystemInfo, "reading the " + what + ": " + text.error().message());
  }
  std::string s = *text;
  const auto junk = [](char c) {
    return c == '\0' || c == ' ' || c == '\n' || c == '\t' || c == '\r';
  };
  while (!s.empty() && junk(s.back())) s.pop_back();
  std::size_t start = 0;
  while (start < s.size() && junk(s[start])) ++start;
  s.erase(0, start);
  if (s.empty())
    return Error(Errc::kSystemInfo, "the " + what + " in " + file.string() + " is empty");
  return s;
}

}  // namespace

LinuxSystemInfo::LinuxSystemInfo(SystemInfoOptions options) : options_(std::move(options)) {}

Expected<std::string> LinuxSystemInfo::SerialNumber() {
  return ValueOrFile(options_.serial_number, options_.serial_file, "serial number");
}

Expected<std::string> LinuxSystemInfo::HardwareModel() {
  return ValueOrFile(options_.model, options_.model_file, "hardware model");
}

Expected<std::string> LinuxSystemInfo::BootId() {
  return ValueOrFile("", options_.boot_id_file, "boot id");
}

Expected<std::uint64_t> LinuxSystemInfo::FreeSpace(const std::filesystem::path& dir) {
  struct statvfs st {};
  if (::statvfs(dir.c_str(), &st) != 0) {
    return MakeErrno(Errc::kSystemInfo, "statvfs " + dir.string());
  }
  // f_bavail, not f_bfree: the blocks reserved for root are not ours to use.
  return static_cast<std::uint64_t>(st.f_bavail) * st.f_frsize;
}

}  // namespace sag::platform
