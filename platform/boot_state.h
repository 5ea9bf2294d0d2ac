// The boot variables as text and the rules every writer follows.
//
// Both bootloader backends and the fake store the same three variables
// (BOOT_ORDER, BOOT_A_LEFT, BOOT_B_LEFT); this file turns them into a
// BootState and back, validates them, and computes the state after each
// BootControl operation, so that every backend enforces exactly one set of
// rules.
#pragma once

#include <map>
#include <string>
#include <string_view>

#include "common/error.h"
#include "platform/boot_control.h"

namespace sag::platform {

// A bootloader environment as name -> value.
using EnvVars = std::map<std::string, std::string>;

inline constexpr const char* kVarOrder = "BOOT_ORDER";
inline constexpr const char* kVarALeft = "BOOT_A_LEFT";
inline constexpr const char* kVarBLeft = "BOOT_B_LEFT";

// Attempts are one decimal digit: U-Boot's `setexpr` computes in hex and GRUB
// has no arithmetic at all (its snippet counts down with a table), so both
// scripts agree with the agent only for 0..9.
inline constexpr int kMaxAttempts = 9;

std::string_view LeftVar(Slot slot);                      // "BOOT_A_LEFT" | "BOOT_B_LEFT"
std::string FormatOrder(const std::vector<Slot>& order);  // "A B"

// Parses and validates the three variables. `where` names the environment in
// messages ("U-Boot environment /etc/fw_env.config"). kBootEnvInvalid names
// the variable and its value when one is missing or breaks the rules: order
// empty, a name other than A/B, a slot listed twice, a count not in 0..9.
Expected<BootState> ParseBootVars(const EnvVars& vars, std::string_view where);

// The three variables for `state` (BOOT_ORDER always lists both slots).
EnvVars FormatBootVars(const BootState& state);

// One line for logs: BOOT_ORDER="B A" BOOT_A_LEFT=3 BOOT_B_LEFT=2.
std::string DescribeState(const BootState& state);

// The state after each operation (see BootControl for what they mean). Each
// refuses with kInvalidArgument an attempts value outside 1..9 and with
// kBootEnvInvalid a result that would leave no bootable slot.
Expected<BootState> StateAfterSetTrial(const BootState& state, Slot slot, int attempts);
Expected<BootState> StateAfterMarkGood(const BootState& state, Slot slot, int attempts);
Expected<BootState> StateAfterMarkBad(const BootState& state, Slot slot);

// The slot named by `key=` on a kernel command line ("... sag.slot=B ...").
// kUnknownSlot when the key is absent or names no known slot; `source` names
// the file in messages.
Expected<Slot> SlotFromCmdline(std::string_view cmdline, std::string_view key,
                               std::string_view source);

}  // namespace sag::platform
