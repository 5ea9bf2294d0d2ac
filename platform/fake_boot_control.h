// A BootControl for tests that keeps real state and obeys the bootloader: the
// same validation and transition rules as the real backends (boot_state.h),
// and Boot() runs the shipped boot script's algorithm (bootloader.h), so a
// test can install, "reboot", and see a fallback happen.
#pragma once

#include <functional>
#include <optional>

#include "platform/boot_control.h"
#include "platform/boot_state.h"

namespace sag::platform {

class FakeBootControl : public BootControl {
 public:
  // A freshly provisioned device: BOOT_ORDER="A B", A 3 tries, B none,
  // running A.
  FakeBootControl();
  FakeBootControl(const BootState& state, Slot booted);

  Expected<Slot> BootedSlot() override;
  Expected<BootState> ReadState() override;
  Status SetTrial(Slot slot, int attempts) override;
  Status MarkGood(Slot slot, int attempts) override;
  Status MarkBad(Slot slot) override;

  // Power-on: the bootloader picks and decrements a slot and the kernel comes
  // up with it as BootedSlot(). Returns nullopt when no slot had tries: the
  // script reset the counters and the board; call Boot() again.
  std::optional<Slot> Boot();

  // The raw variables, as a bootloader tool would show them; tests may edit
  // them to inject broken content.
  EnvVars& env() { return env_; }
  // The next write fails with `error` and changes nothing.
  void FailNextWrite(Error error) { fail_next_write_ = std::move(error); }
  // Every read and write fails with kBootEnvCorrupt until Repair().
  void CorruptEnvironment() { corrupt_ = true; }
  void Repair() { corrupt_ = false; }
  // BootedSlot() fails with kUnknownSlot (a command line without the key).
  void LoseBootedSlot() { booted_.reset(); }
  [[nodiscard]] int writes() const { return writes_; }

 private:
  Status Change(const std::function<Expected<BootState>(const BootState&)>& next);

  EnvVars env_;
  std::optional<Slot> booted_;
  std::optional<Error> fail_next_write_;
  bool corrupt_ = false;
  int writes_ = 0;
};

}  // namespace sag::platform
