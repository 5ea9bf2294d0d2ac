// Boot control: which slot runs, which one boots next, and how many tries a
// slot has left. The bootloader side follows the RAUC convention:
//   BOOT_ORDER  = "A B"  slots to try, first first
//   BOOT_A_LEFT = "3"    boots left for A; the bootloader decrements it before
//   BOOT_B_LEFT = "3"    booting A and skips slots at 0
// The shipped U-Boot script and GRUB snippet (platform/bootloader/) implement
// the bootloader half; the simulator runs the same rules.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/error.h"

namespace sag::platform {

enum class Slot { kA, kB };

std::string_view SlotName(Slot slot);  // "A" | "B"
Slot OtherSlot(Slot slot);
Expected<Slot> ParseSlot(std::string_view name);  // kUnknownSlot otherwise

struct BootState {
  std::vector<Slot> order;  // BOOT_ORDER, each slot at most once, never empty
  int a_left = 0;           // BOOT_A_LEFT
  int b_left = 0;           // BOOT_B_LEFT

  [[nodiscard]] int Left(Slot slot) const { return slot == Slot::kA ? a_left : b_left; }
  // The slot the bootloader will pick next: first in order with tries left.
  [[nodiscard]] std::optional<Slot> NextBoot() const;
};

// All writes: `attempts` must be 1..9 (kInvalidArgument otherwise; the boot
// scripts count with one digit). The environment is read and all three
// variables validated first; on any error nothing is written. Only the three
// boot variables are written, and never into a state without a bootable
// slot. Implementations: EnvBootControl (U-Boot, GRUB; env_boot_control.h),
// FakeBootControl (tests). docs/boot.md has the whole convention.
class BootControl {
 public:
  virtual ~BootControl() = default;

  // The slot the running system booted from (kernel command line). Fails with
  // kUnknownSlot when the command line names no known slot.
  virtual Expected<Slot> BootedSlot() = 0;

  // The environment as the bootloader sees it; kBootEnvCorrupt when no valid
  // copy exists, kBootEnvInvalid when a variable breaks the rules above.
  virtual Expected<BootState> ReadState() = 0;

  // Makes `slot` the next boot for `attempts` tries: it goes first in
  // BOOT_ORDER with BOOT_x_LEFT = attempts. The current slot stays second, so
  // when the tries run out the bootloader falls back to it. Refused with
  // kBootEnvInvalid when that fallback slot has no tries left (mark the
  // running slot good first).
  virtual Status SetTrial(Slot slot, int attempts) = 0;

  // Commits `slot` (normally the booted one after a healthy trial): first in
  // BOOT_ORDER, BOOT_x_LEFT reset to `attempts`. Writes nothing when the
  // environment already says so, so it can run on every healthy boot.
  virtual Status MarkGood(Slot slot, int attempts) = 0;

  // Makes `slot` unbootable: BOOT_x_LEFT = 0 and moved last. Refused with
  // kBootEnvInvalid when the other slot has no tries left either, so the
  // environment never ends without a bootable slot.
  virtual Status MarkBad(Slot slot) = 0;
};

}  // namespace sag::platform
