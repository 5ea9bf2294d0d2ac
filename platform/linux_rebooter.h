// Rebooter backends.
#pragma once

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "platform/rebooter.h"

namespace sag::platform {

// Runs a command that requests the reboot; kRebootFailed when it fails.
class CommandRebooter : public Rebooter {
 public:
  explicit CommandRebooter(std::vector<std::string> argv);
  Status Reboot() override;

 private:
  std::vector<std::string> argv_;
};

// The real one: `systemctl reboot`. systemd then stops services (the agent
// gets SIGTERM) and reboots.
class SystemdRebooter : public CommandRebooter {
 public:
  SystemdRebooter();
};

// For the simulator: writes a marker file (atomically, with the requesting
// pid) and then sends SIGTERM to its own process, as systemd would during a
// reboot, so the agent shuts down through its normal path. The simulator
// sees the marker after the agent exited and reboots the simulated device.
// The marker's path comes from the agent's configuration (`simulator:
// reboot_flag`, written by sag-sim init); the composition root picks this
// rebooter when it is set.
class FlagFileRebooter : public Rebooter {
 public:
  explicit FlagFileRebooter(std::filesystem::path flag, bool terminate_self = true);
  Status Reboot() override;

 private:
  std::filesystem::path flag_;
  bool terminate_self_;
};

// The composition root's choice: FlagFileRebooter when `flag_file` is set
// (configuration `simulator: reboot_flag`), SystemdRebooter otherwise.
std::unique_ptr<Rebooter> MakeRebooter(const std::filesystem::path& flag_file);

}  // namespace sag::platform
