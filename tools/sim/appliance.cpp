#include "tools/sim/appliance.h"

#include <fcntl.h>
#include <unistd.h>

#include <sstream>

#include "common/atomic_file.h"
#include "platform/boot_env.h"
#include "platform/boot_state.h"

namespace sag::sim {

namespace {

// A YAML single-quoted scalar: paths may hold spaces or colons.
std::string Quote(const std::string& s) {
  std::string out = "'";
  for (const char c : s) {
    out += c;
    if (c == '\'') out += '\'';
  }
  return out + "'";
}

Status Preallocate(const std::filesystem::path& path, std::uint64_t size,
                   const std::filesystem::path& content) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) return MakeErrno(Errc::kIo, "create slot file " + path.string());
  // Real blocks, not a sparse file: a slot is a partition of fixed size.
  int err = ::posix_fallocate(fd, 0, static_cast<off_t>(size));
  if (err == 0 && !content.empty()) {
    auto data = ReadFile(content, size);
    if (!data) {
      ::close(fd);
      return data.error().WithContext("--slot-a must fit in the slot (" + std::to_string(size) +
                                      " bytes)");
    }
    if (::pwrite(fd, data->data(), data->size(), 0) != static_cast<ssize_t>(data->size())) {
      err = errno;
    }
  }
  if (err == 0 && ::fsync(fd) != 0) err = errno;
  ::close(fd);
  if (err != 0) return MakeErrno(Errc::kIo, "pre-allocate slot file " + path.string(), err);
  return Ok();
}

}  // namespace

Appliance::Appliance(const std::filesystem::path& dir) : dir_(std::filesystem::absolute(dir)) {}

std::filesystem::path Appliance::SlotPath(platform::Slot slot) const {
  return dir_ / (slot == platform::Slot::kA ? "slot-a.img" : "slot-b.img");
}

std::filesystem::path Appliance::FaultPath(platform::Slot slot, const std::string& kind) const {
  return dir_ / "faults" / (std::string(platform::SlotName(slot)) + "." + kind);
}

Status Appliance::Load() {
  auto conf = ReadFile(dir_ / "sim.conf");
  if (!conf) {
    return Error(Errc::kNotFound,
                 dir_.string() + " is not a simulated appliance (no sim.conf); run sag-sim init");
  }
  std::istringstream lines(*conf);
  std::string line;
  while (std::getline(lines, line)) {
    if (line.starts_with("slot_size=")) slot_size_ = std::stoull(line.substr(10));
  }
  if (slot_size_ == 0)
    return Error(Errc::kConfigMissingKey, dir_.string() + "/sim.conf has no slot_size");
  return Ok();
}

namespace {

// The DPI engine of the simulated appliance: the fake engine, keeping its
// state (the loaded version, scripted failures) in DIR/dpi-engine.
std::string DpiHooks(const std::filesystem::path& engine, const std::string& d) {
  if (engine.empty()) return "";
  const std::string e = Quote(engine.string());
  const std::string state = Quote(d + "/dpi-engine");
  return "  hooks:\n"
         "    validate: {command: [" +
         e + ", --state, " + state +
         ", validate], timeout_s: 30}\n"
         "    reload: {command: [" +
         e + ", --state, " + state + ", --db, " + Quote(d + "/state/dpi/current") +
         ", reload], timeout_s: 30}\n"
         "    confirm: {command: [" +
         e + ", --state, " + state + ", confirm], timeout_s: 10}\n";
}

}  // namespace

Status Appliance::Init(const InitOptions& o) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (fs::exists(dir_, ec) && !fs::is_empty(dir_, ec)) {
    return Error(Errc::kInvalidArgument, dir_.string() + " exists and is not empty");
  }
  if (o.slot_size == 0) return Error(Errc::kInvalidArgument, "--slot-size must be > 0");
  for (const char* sub : {"", "faults", "pki", "state", "run"}) {
    fs::create_directories(dir_ / sub, ec);
    if (ec) return Error(Errc::kIo, "create " + (dir_ / sub).string() + ": " + ec.message());
  }
  slot_size_ = o.slot_size;
  SAG_TRY_STATUS(WriteFileAtomic(dir_ / "sim.conf", "slot_size=" + std::to_string(o.slot_size) +
                                                        "\nmodel=" + o.model +
                                                        "\nserial=" + o.serial + "\n"));
  SAG_TRY_STATUS(Preallocate(SlotPath(platform::Slot::kA), o.slot_size, o.slot_a));
  SAG_TRY_STATUS(Preallocate(SlotPath(platform::Slot::kB), o.slot_size, {}));

  // Two redundant copies in one file, like an eMMC boot partition.
  const auto env = dir_ / "uboot.env";
  SAG_TRY_STATUS(WriteFileAtomic(env, std::string(2 * kEnvSize, '\0')));
  char cfg[512];
  std::snprintf(cfg, sizeof cfg,
                "# libubootenv configuration of the simulated appliance\n"
                "# device offset size\n%s 0x0000 0x%llx\n%s 0x%llx 0x%llx\n",
                env.c_str(), static_cast<unsigned long long>(kEnvSize), env.c_str(),
                static_cast<unsigned long long>(kEnvSize),
                static_cast<unsigned long long>(kEnvSize));
  SAG_TRY_STATUS(WriteFileAtomic(dir_ / "fw_env.config", cfg));
  // Factory state: A holds the image and has the tries; B is empty.
  // A GRUB environment block too, for cut-env --backend grub.
  SAG_TRY_STATUS(
      platform::GrubEnv(dir_ / "grubenv")
          .Format(platform::FormatBootVars({{platform::Slot::kA, platform::Slot::kB}, 3, 0})));
  platform::UBootEnv uboot(dir_ / "fw_env.config");
  SAG_TRY_STATUS(
      uboot.Format(platform::FormatBootVars({{platform::Slot::kA, platform::Slot::kB}, 3, 0})));
  SAG_TRY_STATUS(WriteFileAtomic(dir_ / "cmdline", "console=ttyS0 (not booted yet)\n"));
  SAG_TRY_STATUS(WriteFileAtomic(dir_ / "boot_id", "00000000-0000-0000-0000-000000000000\n"));

  if (!o.root_ca.empty()) {
    auto pem = ReadFile(o.root_ca);
    if (!pem) return pem.error().WithContext("--root-ca");
    SAG_TRY_STATUS(WriteFileAtomic(dir_ / "pki" / "root.pem", *pem));
  }

  const std::string d = dir_.string();
  // What the factory image in slot A reports as its version.
  SAG_TRY_STATUS(WriteFileAtomic(
      dir_ / "os-release", "NAME=\"SAG OS (simulated)\"\nVERSION_ID=\"" + o.version + "\"\n"));
  SAG_TRY_STATUS(WriteFileAtomic(
      dir_ / "health-check",
      "#!/bin/sh\n"
      "# sag-sim health check: fails when the booted slot carries the 'unhealthy'\n"
      "# fault (sag-sim fault DIR --slot X unhealthy).\n"
      "slot=$(sed -n 's/.*sag\\.slot=\\([AB]\\).*/\\1/p' " +
          Quote(d + "/cmdline") +
          ")\n"
          "if [ -z \"$slot\" ]; then echo 'no sag.slot on the command line'; exit 2; fi\n"
          "if [ -e " +
          Quote(d + "/faults/") +
          "\"$slot.unhealthy\" ]; then\n"
          "  echo \"slot $slot is unhealthy (sag-sim fault)\"; exit 1\n"
          "fi\n"
          "echo \"slot $slot is healthy\"\n",
      0755));

  const std::string id = o.smartag_id.empty() ? "sag-sim-" + o.serial : o.smartag_id;
  std::string yaml =
      "# sag-agent configuration of the simulated appliance " + d +
      "\n"
      "# (generated by sag-sim init; the simulator plays bootloader and power supply)\n"
      "identity:\n"
      "  smartag_id: " +
      Quote(id) +
      "\n"
      "  serial_number: " +
      Quote(o.serial) +
      "\n"
      "  model: " +
      Quote(o.model) +
      "\n"
      "cloud:\n" +
      (o.endpoint.empty() ? std::string("  # no endpoint: the agent keeps no device channel\n")
                          : "  endpoint: " + Quote(o.endpoint) + "\n") +
      "  connect_timeout_s: 5\n"
      "  heartbeat_s: 5\n"
      "  max_backoff_s: 10\n"
      "pki:\n"
      "  root_ca: " +
      Quote(d + "/pki/root.pem") +
      "\n"
      "  device_cert: " +
      Quote(d + "/pki/device.pem") +
      "\n"
      "  device_key: " +
      Quote(d + "/pki/device.key") +
      "\n"
      "paths:\n"
      "  state_dir: " +
      Quote(d + "/state") +
      "\n"
      "  runtime_dir: " +
      Quote(d + "/run") +
      "\n"
      "boot:\n"
      "  backend: uboot\n"
      "  uboot_config: " +
      Quote(d + "/fw_env.config") +
      "\n"
      "  cmdline: " +
      Quote(d + "/cmdline") +
      "\n"
      "  cmdline_key: sag.slot\n"
      "  os_release: " +
      Quote(d + "/os-release") +
      "\n"
      "  trial_attempts: 3\n"
      "  slots:\n"
      "    A:\n"
      "      device: " +
      Quote(SlotPath(platform::Slot::kA).string()) +
      "\n"
      "    B:\n"
      "      device: " +
      Quote(SlotPath(platform::Slot::kB).string()) +
      "\n"
      "dpi:\n"
      "  store: " +
      Quote(d + "/state/dpi") +
      "\n"
      "  keep: 2\n" +
      DpiHooks(o.dpi_engine, d) +
      "health:\n"
      "  require_cloud: false\n"
      "  checks:\n"
      "    - name: sim-slot-health\n"
      "      command: [" +
      Quote(d + "/health-check") +
      "]\n"
      "      timeout_s: 10\n"
      "simulator:\n"
      "  reboot_flag: " +
      Quote(d + "/run/reboot-requested") +
      "\n"
      "  boot_id_file: " +
      Quote(d + "/boot_id") +
      "\n"
      "log:\n"
      "  level: debug\n";
  return WriteFileAtomic(dir_ / "agent.yaml", yaml);
}

}  // namespace sag::sim
