#include "platform/boot_state.h"

#include <algorithm>
#include <sstream>

#include "platform/boot_control.h"

namespace sag::platform {

std::string_view SlotName(Slot slot) { return slot == Slot::kA ? "A" : "B"; }

Slot OtherSlot(Slot slot) { return slot == Slot::kA ? Slot::kB : Slot::kA; }

Expected<Slot> ParseSlot(std::string_view name) {
  if (name == "A") return Slot::kA;
  if (name == "B") return Slot::kB;
  return Error(Errc::kUnknownSlot,
               "unknown slot '" + std::string(name) + "': slots are named A and B");
}

std::optional<Slot> BootState::NextBoot() const {
  for (const Slot s : order) {
    if (Left(s) > 0) return s;
  }
  return std::nullopt;
}

std::string_view LeftVar(Slot slot) { return slot == Slot::kA ? kVarALeft : kVarBLeft; }

std::string FormatOrder(const std::vector<Slot>& order) {
  std::string out;
  for (const Slot s : order) {
    if (!out.empty()) out += ' ';
    out += SlotName(s);
  }
  return out;
}

namespace {

Error Invalid(std::string_view where, const std::string& what) {
  return {Errc::kBootEnvInvalid,
          std::string(where) + ": " + what +
              "; the agent does not write an environment it cannot validate: fix it with "
              "fw_setenv/grub-editenv (BOOT_ORDER=\"A B\", BOOT_A_LEFT and BOOT_B_LEFT 0..9)"};
}

Expected<int> ParseLeft(const EnvVars& vars, Slot slot, std::string_view where) {
  const std::string name(LeftVar(slot));
  const auto it = vars.find(name);
  if (it == vars.end()) return Invalid(where, name + " is not set");
  const std::string& v = it->second;
  if (v.size() != 1 || v[0] < '0' || v[0] > '9') {
    return Invalid(where, name + "=\"" + v + "\" is not a count of 0..9");
  }
  return v[0] - '0';
}

Status CheckAttempts(int attempts) {
  if (attempts < 1 || attempts > kMaxAttempts) {
    return Error(Errc::kInvalidArgument, "boot attempts must be 1.." +
                                             std::to_string(kMaxAttempts) + ", got " +
                                             std::to_string(attempts));
  }
  return Ok();
}

void SetLeft(BootState& state, Slot slot, int left) {
  (slot == Slot::kA ? state.a_left : state.b_left) = left;
}

}  // namespace

Expected<BootState> ParseBootVars(const EnvVars& vars, std::string_view where) {
  BootState state;
  const auto it = vars.find(kVarOrder);
  if (it == vars.end()) return Invalid(where, "BOOT_ORDER is not set");
  std::istringstream words(it->second);
  std::string word;
  while (words >> word) {
    auto slot = ParseSlot(word);
    if (!slot) {
      return Invalid(where, "BOOT_ORDER=\"" + it->second + "\" names unknown slot '" + word + "'");
    }
    if (std::find(state.order.begin(), state.order.end(), *slot) != state.order.end()) {
      return Invalid(where, "BOOT_ORDER=\"" + it->second + "\" lists slot " + word + " twice");
    }
    state.order.push_back(*slot);
  }
  if (state.order.empty()) return Invalid(where, "BOOT_ORDER is empty");
  SAG_TRY(state.a_left, ParseLeft(vars, Slot::kA, where));
  SAG_TRY(state.b_left, ParseLeft(vars, Slot::kB, where));
  return state;
}

EnvVars FormatBootVars(const BootState& state) {
  std::vector<Slot> order = state.order;
  for (const Slot s : {Slot::kA, Slot::kB}) {
    if (std::find(order.begin(), order.end(), s) == order.end()) order.push_back(s);
  }
  return {{kVarOrder, FormatOrder(order)},
          {kVarALeft, std::to_string(state.a_left)},
          {kVarBLeft, std::to_string(state.b_left)}};
}

std::string DescribeState(const BootState& state) {
  return "BOOT_ORDER=\"" + FormatOrder(state.order) +
         "\" BOOT_A_LEFT=" + std::to_string(state.a_left) +
         " BOOT_B_LEFT=" + std::to_string(state.b_left);
}

Expected<BootState> StateAfterSetTrial(const BootState& state, Slot slot, int attempts) {
  SAG_TRY_STATUS(CheckAttempts(attempts));
  const Slot fallback = OtherSlot(slot);
  // Without tries on the old slot a failed trial would not fall back to it
  // but end in the bootloader's counter reset, which boots the trial slot
  // again: refuse rather than lose the way back.
  if (state.Left(fallback) == 0) {
    return Error(Errc::kBootEnvInvalid,
                 "cannot start a trial of slot " + std::string(SlotName(slot)) + ": slot " +
                     std::string(SlotName(fallback)) + ", the fallback, has " +
                     std::string(LeftVar(fallback)) + "=0 (" + DescribeState(state) +
                     "); mark the running slot good first");
  }
  BootState next = state;
  next.order = {slot, fallback};
  SetLeft(next, slot, attempts);
  return next;
}

Expected<BootState> StateAfterMarkGood(const BootState& state, Slot slot, int attempts) {
  SAG_TRY_STATUS(CheckAttempts(attempts));
  BootState next = state;
  next.order = {slot, OtherSlot(slot)};
  SetLeft(next, slot, attempts);
  return next;
}

Expected<BootState> StateAfterMarkBad(const BootState& state, Slot slot) {
  const Slot other = OtherSlot(slot);
  if (state.Left(other) == 0) {
    return Error(Errc::kBootEnvInvalid, "refusing to mark slot " + std::string(SlotName(slot)) +
                                            " bad: slot " + std::string(SlotName(other)) +
                                            " has no tries left either (" + DescribeState(state) +
                                            "), so no slot would be bootable");
  }
  BootState next = state;
  next.order = {other, slot};
  SetLeft(next, slot, 0);
  return next;
}

Expected<Slot> SlotFromCmdline(std::string_view cmdline, std::string_view key,
                               std::string_view source) {
  const std::string prefix = std::string(key) + "=";
  std::istringstream words{std::string(cmdline)};
  std::string word;
  std::optional<std::string> value;
  while (words >> word) {
    // The kernel lets the last occurrence win; so do we.
    if (word.starts_with(prefix)) value = word.substr(prefix.size());
  }
  if (!value) {
    return Error(Errc::kUnknownSlot, "the kernel command line in " + std::string(source) +
                                         " has no " + prefix +
                                         "A|B; the boot script must pass the booted slot");
  }
  auto slot = ParseSlot(*value);
  if (!slot) {
    return Error(Errc::kUnknownSlot, "the kernel command line in " + std::string(source) +
                                         " says " + prefix + *value +
                                         ", which is not a slot (A or B)");
  }
  return slot;
}

}  // namespace sag::platform
