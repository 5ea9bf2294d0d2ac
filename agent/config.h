// The agent's configuration (/etc/sag-agent/agent.yaml) and its validation.
//
// Loading is all or nothing: the first problem found is returned as an Error
// whose message starts with "FILE:LINE:COLUMN:" and names the key and what is
// expected, and no partially filled Config escapes.
#pragma once

#include <spdlog/common.h>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "common/error.h"

namespace sag::agent {

inline constexpr const char* kDefaultConfigPath = "/etc/sag-agent/agent.yaml";

struct Identity {
  std::string smartag_id;     // "sag-..." instance id
  std::string serial_number;  // device serial, e.g. "sag233abcd"
  std::string model;          // hardware model: sag-1000, sag-100wm, sag-vcpe
};

struct CloudConfig {
  std::string endpoint;  // wss://host:port/path of the device channel
  std::chrono::seconds connect_timeout{10};
  std::chrono::seconds heartbeat{30};
  std::chrono::seconds max_backoff{300};
};

struct PkiConfig {
  std::filesystem::path root_ca;      // pinned root: images and the cloud chain to it
  std::filesystem::path device_cert;  // mutual TLS identity
  std::filesystem::path device_key;
};

struct PathsConfig {
  std::filesystem::path state_dir{"/var/lib/sag-agent"};
  std::filesystem::path runtime_dir{"/run/sag-agent"};
};

enum class BootBackend { kUBoot, kGrub };

struct SlotConfig {
  std::filesystem::path device;  // block device or regular file
};

struct BootConfig {
  BootBackend backend = BootBackend::kUBoot;
  std::filesystem::path uboot_config{"/etc/fw_env.config"};  // libubootenv config
  std::filesystem::path grubenv{"/boot/grub/grubenv"};
  std::filesystem::path cmdline{"/proc/cmdline"};
  std::string cmdline_key{"sag.slot"};
  // VERSION_ID of the running OS, used until the agent has installed a
  // version itself (then its slot record in state_dir says).
  std::filesystem::path os_release{"/etc/os-release"};
  int trial_attempts = 3;  // BOOT_x_LEFT given to a slot on trial
  // boot.read_back: medium (default) reads the written slot back from the
  // device (O_DIRECT) before the trial boot; cache skips that pass.
  bool read_back_medium = true;
  std::map<std::string, SlotConfig> slots;  // exactly "A" and "B"
};

struct HookConfig {
  std::vector<std::string> command;  // argv; empty = not configured
  std::chrono::seconds timeout{30};
};

struct DpiConfig {
  std::filesystem::path store{"/var/lib/sag-agent/dpi"};
  int keep = 2;  // versions kept on disk, current included
  HookConfig validate;
  HookConfig reload;
  HookConfig confirm;
};

struct HealthCheck {
  std::string name;
  std::vector<std::string> command;
  std::chrono::seconds timeout{30};
};

struct HealthConfig {
  std::vector<HealthCheck> checks;
  bool require_cloud = false;  // the control channel must be reachable
  std::chrono::seconds cloud_timeout{120};
};

struct DownloadConfig {
  std::uint64_t bandwidth_limit = 0;  // bytes per second, 0 = unlimited
  std::chrono::seconds stall_timeout{30};
  int max_retries = 10;
  // The slot is synced and the journal records progress every this many
  // bytes (one checkpoint at a time), and at most once per
  // checkpoint_interval (0 = no floor): what a resumed install does not fetch
  // and write again.
  std::uint64_t checkpoint_bytes = 32U << 20U;
  std::chrono::milliseconds checkpoint_interval{0};
  // A fetch must end within `deadline` (0 = none) and bring at least
  // min_rate bytes/s over each min_rate_window (min_rate 0 = off):
  // docs/download.md.
  std::chrono::seconds deadline{86400};
  std::uint64_t min_rate = 512;
  std::chrono::seconds min_rate_window{300};
  // A delta install (docs/delta.md) from a server that ignores Range:
  // false = fail the job (default), true = install the whole image instead
  // (`delta_fallback: full`).
  bool delta_fallback_full = false;
  // Range requests of a delta install kept in flight at once (1 = one after
  // another): docs/delta.md, "Requests in flight".
  std::int64_t delta_parallel = 3;
};

// The simulated appliance's stand-ins for hardware that a test machine lacks
// (written by `sag-sim init`; absent on a real appliance). A reboot becomes
// a flag file the simulator watches (platform::FlagFileRebooter), and each
// simulated boot has its own boot id in a file the simulator rewrites.
struct SimulatorConfig {
  std::filesystem::path reboot_flag;   // "" = reboot for real
  std::filesystem::path boot_id_file;  // "" = /proc/sys/kernel/random/boot_id
};

struct Config {
  std::filesystem::path source;  // the file it was loaded from
  Identity identity;
  CloudConfig cloud;
  PkiConfig pki;
  PathsConfig paths;
  BootConfig boot;
  DpiConfig dpi;
  HealthConfig health;
  DownloadConfig download;
  SimulatorConfig simulator;
  spdlog::level::level_enum log_level = spdlog::level::info;
};

Expected<Config> LoadConfig(const std::filesystem::path& path);
// Parses YAML text; `name` is used in messages in place of a file name.
Expected<Config> ParseConfig(const std::string& yaml, const std::string& name);

// A few lines for the log at start-up.
std::vector<std::string> DescribeConfig(const Config& config);

}  // namespace sag::agent
