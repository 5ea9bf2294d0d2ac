#include "platform/env_boot_control.h"

#include "common/atomic_file.h"
#include "platform/boot_state.h"

namespace sag::platform {

EnvBootControl::EnvBootControl(std::unique_ptr<BootEnv> env, std::filesystem::path cmdline,
                               std::string cmdline_key)
    : env_(std::move(env)), cmdline_(std::move(cmdline)), cmdline_key_(std::move(cmdline_key)) {}

Expected<Slot> EnvBootControl::BootedSlot() {
  auto text = ReadFile(cmdline_, 64U << 10U);
  if (!text) return text.error().WithContext("reading the kernel command line");
  return SlotFromCmdline(*text, cmdline_key_, cmdline_.string());
}

Expected<BootState> EnvBootControl::ReadState() {
  SAG_TRY(const EnvVars vars, env_->Load());
  return ParseBootVars(vars, env_->name());
}

Status EnvBootControl::Change(const std::string& what,
                              const std::function<Expected<BootState>(const BootState&)>& next) {
  auto st = env_->Update([&](const EnvVars& vars) -> Expected<EnvVars> {
    SAG_TRY(const BootState current, ParseBootVars(vars, env_->name()));
    SAG_TRY(const BootState wanted, next(current));
    if (!wanted.NextBoot()) {  // the rules never produce this; the check is the last guard
      return Error(Errc::kBootEnvInvalid,
                   "refusing to write " + DescribeState(wanted) + ": no slot would be bootable");
    }
    EnvVars set = FormatBootVars(wanted);
    bool same = true;
    for (const auto& [n, v] : set) {
      const auto it = vars.find(n);
      same = same && it != vars.end() && it->second == v;
    }
    if (same) return EnvVars{};
    return set;
  });
  if (!st) return std::move(st).error().WithContext(what);
  return Ok();
}

Status EnvBootControl::SetTrial(Slot slot, int attempts) {
  return Change("setting a trial boot of slot " + std::string(SlotName(slot)),
                [&](const BootState& s) { return StateAfterSetTrial(s, slot, attempts); });
}

Status EnvBootControl::MarkGood(Slot slot, int attempts) {
  return Change("marking slot " + std::string(SlotName(slot)) + " good",
                [&](const BootState& s) { return StateAfterMarkGood(s, slot, attempts); });
}

Status EnvBootControl::MarkBad(Slot slot) {
  return Change("marking slot " + std::string(SlotName(slot)) + " bad",
                [&](const BootState& s) { return StateAfterMarkBad(s, slot); });
}

Expected<std::unique_ptr<BootControl>> MakeBootControl(const BootOptions& options) {
  std::error_code ec;
  const auto& env_path =
      options.backend == BootOptions::Backend::kUBoot ? options.uboot_config : options.grubenv;
  if (!std::filesystem::exists(env_path, ec)) {
    return Error(
        Errc::kNotFound,
        (options.backend == BootOptions::Backend::kUBoot ? "U-Boot environment configuration "
                                                         : "GRUB environment block ") +
            env_path.string() + " does not exist; check boot.uboot_config/boot.grubenv");
  }
  if (!std::filesystem::exists(options.cmdline, ec)) {
    return Error(Errc::kNotFound, "kernel command line " + options.cmdline.string() +
                                      " does not exist; check boot.cmdline");
  }
  if (options.cmdline_key.empty() || options.cmdline_key.find_first_of(" =") != std::string::npos) {
    return Error(Errc::kInvalidArgument,
                 "invalid kernel command line key '" + options.cmdline_key + "'");
  }
  std::unique_ptr<BootEnv> env;
  if (options.backend == BootOptions::Backend::kUBoot) {
    env = std::make_unique<UBootEnv>(options.uboot_config);
  } else {
    env = std::make_unique<GrubEnv>(options.grubenv);
  }
  return std::unique_ptr<BootControl>(
      std::make_unique<EnvBootControl>(std::move(env), options.cmdline, options.cmdline_key));
}

}  // namespace sag::platform
