// The appliance's storage on a sag-powerloss file system (tools/powerloss):
// sag-sim boot --powerloss BIN mounts it over the appliance directory for
// the run, so that a power cut loses what was not made durable (slot files,
// the agent's state and runtime directories, the boot environment).
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>

#include "common/error.h"

namespace sag::sim {

// What the cuts lost, summed over the run.
struct PowerLossFigures {
  std::uint64_t cuts = 0;
  std::uint64_t bytes_lost = 0;    // bytes written and not synced
  std::uint64_t entries_lost = 0;  // directory operations undone
  std::uint64_t torn = 0;          // writes torn at a sector boundary
};

class PowerLossMedium {
 public:
  // Mounts BIN over `dir` (backing and mount point both `dir`); `torn`: the
  // write in flight at a cut is torn at a random sector boundary.
  static Expected<std::unique_ptr<PowerLossMedium>> Mount(const std::filesystem::path& bin,
                                                          const std::filesystem::path& dir,
                                                          bool torn, std::uint64_t seed);
  ~PowerLossMedium();  // unmounts: a clean shutdown, nothing lost
  PowerLossMedium(const PowerLossMedium&) = delete;
  PowerLossMedium& operator=(const PowerLossMedium&) = delete;

  // A power cut: the volatile state is gone. Returns the figures of this
  // cut as the server printed them ("cuts=.. bytes_lost=.. ...").
  Expected<std::string> Cut();
  // Everything written so far is durable (the bootloader's own writes go
  // straight to flash; a clean reboot syncs).
  Status Sync();
  [[nodiscard]] const PowerLossFigures& figures() const { return figures_; }
  // The file system's server (a child of the simulator).
  [[nodiscard]] pid_t pid() const { return pid_; }

 private:
  PowerLossMedium(std::filesystem::path dir, pid_t pid, bool torn)
      : dir_(std::move(dir)), pid_(pid), torn_(torn) {}
  Expected<std::string> Control(const std::string& line);

  std::filesystem::path dir_;
  pid_t pid_;
  bool torn_;
  PowerLossFigures figures_;
};

}  // namespace sag::sim
