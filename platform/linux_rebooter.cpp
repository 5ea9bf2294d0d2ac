#include "platform/linux_rebooter.h"

#include <signal.h>
#include <unistd.h>

#include "common/atomic_file.h"
#include "common/process.h"

namespace sag::platform {

CommandRebooter::CommandRebooter(std::vector<std::string> argv) : argv_(std::move(argv)) {}

Status CommandRebooter::Reboot() {
  if (auto st = CheckCommand(argv_); !st) {
    return Error(Errc::kRebootFailed, "requesting a reboot: " + st.error().message());
  }
  return Ok();
}

SystemdRebooter::SystemdRebooter() : CommandRebooter({"systemctl", "reboot"}) {}

FlagFileRebooter::FlagFileRebooter(std::filesystem::path flag, bool terminate_self)
    : flag_(std::move(flag)), terminate_self_(terminate_self) {}

Status FlagFileRebooter::Reboot() {
  if (auto st =
          WriteFileAtomic(flag_, "reboot requested by pid " + std::to_string(::getpid()) + "\n");
      !st) {
    return Error(Errc::kRebootFailed, "requesting a reboot: " + st.error().message());
  }
  if (terminate_self_ && ::kill(::getpid(), SIGTERM) != 0) {
    return MakeErrno(Errc::kRebootFailed, "sending SIGTERM to self after requesting a reboot");
  }
  return Ok();
}

std::unique_ptr<Rebooter> MakeRebooter(const std::filesystem::path& flag_file) {
  if (!flag_file.empty()) return std::make_unique<FlagFileRebooter>(flag_file);
  return std::make_unique<SystemdRebooter>();
}

}  // namespace sag::platform
