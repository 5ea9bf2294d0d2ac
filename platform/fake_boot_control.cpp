#include "platform/fake_boot_control.h"

#include "platform/bootloader.h"

namespace sag::platform {

namespace {
constexpr const char* kWhere = "fake boot environment";
}

FakeBootControl::FakeBootControl()
    : FakeBootControl(BootState{{Slot::kA, Slot::kB}, 3, 0}, Slot::kA) {}

FakeBootControl::FakeBootControl(const BootState& state, Slot booted)
    : env_(FormatBootVars(state)), booted_(booted) {}

Expected<Slot> FakeBootControl::BootedSlot() {
  if (!booted_) return Error(Errc::kUnknownSlot, "the fake kernel command line names no slot");
  return *booted_;
}

Expected<BootState> FakeBootControl::ReadState() {
  if (corrupt_) return Error(Errc::kBootEnvCorrupt, "fake boot environment: no valid copy");
  return ParseBootVars(env_, kWhere);
}

Status FakeBootControl::Change(const std::function<Expected<BootState>(const BootState&)>& next) {
  SAG_TRY(const BootState current, ReadState());
  SAG_TRY(const BootState wanted, next(current));
  if (!wanted.NextBoot()) {
    return Error(Errc::kBootEnvInvalid, "refusing to write " + DescribeState(wanted));
  }
  const EnvVars set = FormatBootVars(wanted);
  bool same = true;
  for (const auto& [n, v] : set) same = same && env_.count(n) != 0 && env_.at(n) == v;
  if (same) return Ok();
  if (fail_next_write_) {
    Error e = std::move(*fail_next_write_);
    fail_next_write_.reset();
    return e;
  }
  for (const auto& [n, v] : set) env_[n] = v;
  ++writes_;
  return Ok();
}

Status FakeBootControl::SetTrial(Slot slot, int attempts) {
  return Change([&](const BootState& s) { return StateAfterSetTrial(s, slot, attempts); });
}

Status FakeBootControl::MarkGood(Slot slot, int attempts) {
  return Change([&](const BootState& s) { return StateAfterMarkGood(s, slot, attempts); });
}

Status FakeBootControl::MarkBad(Slot slot) {
  return Change([&](const BootState& s) { return StateAfterMarkBad(s, slot); });
}

std::optional<Slot> FakeBootControl::Boot() {
  if (corrupt_) {  // U-Boot falls back to its built-in default environment
    env_.clear();
    corrupt_ = false;
  }
  BootStep step = RunBootScript(env_);
  env_ = std::move(step.env);
  booted_ = step.slot;
  return step.slot;
}

}  // namespace sag::platform
