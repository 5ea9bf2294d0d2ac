// The bootloader's half of boot counting, as code: what the shipped U-Boot
// script (platform/bootloader/boot.cmd) and GRUB snippet
// (platform/bootloader/grub.cfg) do on every power-on. The simulator and
// FakeBootControl run this, so tests exercise the same algorithm the device
// runs; docs/boot.md states it in words.
#pragma once

#include <optional>
#include <string>

#include "platform/boot_control.h"
#include "platform/boot_state.h"

namespace sag::platform {

// What a missing variable defaults to, as in RAUC's example script.
inline constexpr const char* kDefaultOrder = "A B";
inline constexpr int kDefaultAttempts = 3;

struct BootStep {
  // The slot whose kernel is started; nullopt when no slot in BOOT_ORDER had
  // tries left: the script then resets both counters to kDefaultAttempts,
  // saves, and resets the board (the next power-on boots the first slot).
  std::optional<Slot> slot;
  bool fallback = false;  // `slot` is not the first entry of BOOT_ORDER
  EnvVars env;            // the environment after the script's saveenv
};

// One run of the boot script over the raw environment. It follows the
// script literally, including how U-Boot reads numbers (`test -gt` parses a
// decimal prefix, `setexpr` computes in hex), so it is defined for any
// content, not only for environments the agent would accept.
BootStep RunBootScript(EnvVars env);

}  // namespace sag::platform
