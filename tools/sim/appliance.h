// One simulated appliance = one directory. The layout (all created by init):
//
//   sim.conf          slot size, model, serial (key=value)
//   slot-a.img        slot A, pre-allocated to the slot size
//   slot-b.img        slot B
//   uboot.env         U-Boot environment, two redundant copies of kEnvSize
//   fw_env.config     libubootenv configuration for it (fw_printenv -c works)
//   grubenv           a GRUB environment block (only cut-env --backend grub)
//   cmdline           the kernel command line of the current boot (sag.slot=X)
//   boot_id           renewed on every simulated boot
//   agent.yaml        configuration for the real sag-agent
//   health-check      health check command: fails when the booted slot has
//                     the "unhealthy" fault
//   faults/           X.unhealthy / X.unbootable markers (sag-sim fault)
//   pki/              root.pem (from --root-ca), device cert and key
//   state/, run/      the agent's state and runtime directories
//   run/reboot-requested   written by the agent's FlagFileRebooter
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>

#include "common/error.h"
#include "platform/boot_control.h"

namespace sag::sim {

inline constexpr std::uint64_t kEnvSize = 0x4000;

struct InitOptions {
  std::uint64_t slot_size = 0;
  std::string model = "sag-1000";
  std::string serial = "sag000sim01";
  std::string smartag_id;            // default sag-sim-<serial>
  std::string endpoint;              // the device channel; "" = none (the agent keeps no channel)
  std::filesystem::path root_ca;     // copied to pki/root.pem when given
  std::filesystem::path slot_a;      // initial content of slot A when given
  std::string version = "1.0.0";     // VERSION_ID of the factory image in slot A
  std::filesystem::path dpi_engine;  // sag-fake-dpi-engine: configure the DPI hooks with it
};

class Appliance {
 public:
  explicit Appliance(const std::filesystem::path& dir);

  // Creates the appliance; DIR must not exist or be empty.
  Status Init(const InitOptions& options);
  // Reads sim.conf; fails when DIR is not an appliance.
  Status Load();

  [[nodiscard]] const std::filesystem::path& dir() const { return dir_; }
  [[nodiscard]] std::filesystem::path Path(const std::string& name) const { return dir_ / name; }
  [[nodiscard]] std::filesystem::path SlotPath(platform::Slot slot) const;
  [[nodiscard]] std::filesystem::path FaultPath(platform::Slot slot, const std::string& kind) const;
  [[nodiscard]] std::uint64_t slot_size() const { return slot_size_; }

 private:
  std::filesystem::path dir_;
  std::uint64_t slot_size_ = 0;
};

}  // namespace sag::sim
