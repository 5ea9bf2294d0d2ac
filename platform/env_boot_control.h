// BootControl over a real bootloader environment (U-Boot or GRUB), and the
// factory the agent's composition root calls.
#pragma once

#include <filesystem>
#include <functional>
#include <memory>
#include <string>

#include "platform/boot_control.h"
#include "platform/boot_env.h"

namespace sag::platform {

// Every operation reads the environment, validates all three variables
// (ParseBootVars), computes the new state with the shared rules
// (StateAfter*), checks that a slot stays bootable, and writes only the three
// boot variables, and only when they change (MarkGood on every boot does not
// wear the flash). A variable that fails validation is never overwritten:
// the error names it and the environment is left as it was.
class EnvBootControl : public BootControl {
 public:
  EnvBootControl(std::unique_ptr<BootEnv> env, std::filesystem::path cmdline,
                 std::string cmdline_key);

  Expected<Slot> BootedSlot() override;
  Expected<BootState> ReadState() override;
  Status SetTrial(Slot slot, int attempts) override;
  Status MarkGood(Slot slot, int attempts) override;
  Status MarkBad(Slot slot) override;

 private:
  Status Change(const std::string& what,
                const std::function<Expected<BootState>(const BootState&)>& next);

  std::unique_ptr<BootEnv> env_;
  std::filesystem::path cmdline_;
  std::string cmdline_key_;
};

// A plain copy of the agent's `boot:` settings, so platform does not depend
// on the agent's configuration code.
struct BootOptions {
  enum class Backend { kUBoot, kGrub };
  Backend backend = Backend::kUBoot;
  std::filesystem::path uboot_config{"/etc/fw_env.config"};  // libubootenv's fw_env.config
  std::filesystem::path grubenv{"/boot/grub/grubenv"};
  std::filesystem::path cmdline{"/proc/cmdline"};
  std::string cmdline_key{"sag.slot"};
};

// Builds the backend. Fails early (kNotFound, naming the file) when the
// configured environment or command line does not exist; the environment's
// content is checked on each call.
Expected<std::unique_ptr<BootControl>> MakeBootControl(const BootOptions& options);

}  // namespace sag::platform
