// Raw access to a bootloader environment: the variables as text, read and
// written the way the bootloader's own tools do. EnvBootControl puts the boot
// counting rules on top; the simulator uses these directly to play the
// bootloader.
#pragma once

#include <filesystem>
#include <functional>
#include <string>

#include "common/error.h"
#include "platform/boot_state.h"

namespace sag::platform {

class BootEnv {
 public:
  // Given the current variables, returns the ones to set (an empty map: write
  // nothing) or an error (write nothing, return it).
  using ChangeFn = std::function<Expected<EnvVars>(const EnvVars&)>;

  virtual ~BootEnv() = default;
  // kBootEnvCorrupt when no valid copy exists; the message names the device.
  virtual Expected<EnvVars> Load() = 0;
  // Read-modify-write of some variables, other variables kept. When it
  // returns success the new environment is durable; a power cut at any
  // instant leaves either the old or the new environment readable.
  virtual Status Update(const ChangeFn& change) = 0;
  // What the messages call it: "U-Boot environment (/etc/fw_env.config)".
  [[nodiscard]] virtual const std::string& name() const = 0;
};

// U-Boot environment through libubootenv, configured like fw_printenv by a
// fw_env.config ("DEVICE OFFSET SIZE" per line, two lines for redundant
// copies). libubootenv writes the older copy and bumps its flag, so a cut
// write leaves the other copy valid; it also takes fw_printenv's lock file, so
// the agent and fw_setenv do not interleave.
class UBootEnv : public BootEnv {
 public:
  explicit UBootEnv(std::filesystem::path config);
  Expected<EnvVars> Load() override;
  Status Update(const ChangeFn& change) override;
  [[nodiscard]] const std::string& name() const override { return name_; }

  // Writes `vars` as the whole environment into every copy, whatever the
  // devices held before (valid or not). For provisioning (the simulator's
  // init, tests); the agent never calls it.
  Status Format(const EnvVars& vars);

 private:
  std::filesystem::path config_;
  std::string name_;
};

// GRUB environment block: a 1024-byte file starting "# GRUB Environment
// Block\n", then "name=value\n" lines (backslash and newline escaped with a
// backslash), padded with '#'; grub-editenv reads and writes the same. The
// file is replaced atomically (temp file, fsync, rename, fsync directory).
class GrubEnv : public BootEnv {
 public:
  static constexpr std::size_t kBlockSize = 1024;

  explicit GrubEnv(std::filesystem::path path);
  Expected<EnvVars> Load() override;
  // kBootEnvWrite, nothing written, when the variables would not fit.
  Status Update(const ChangeFn& change) override;
  [[nodiscard]] const std::string& name() const override { return name_; }

  // Creates (or replaces) the block with exactly `vars`.
  Status Format(const EnvVars& vars);

  // The block's text for `vars` in `order` (names not in `order` after them);
  // kBootEnvWrite when it exceeds kBlockSize.
  static Expected<std::string> Serialize(
      const std::vector<std::pair<std::string, std::string>>& vars, const std::string& where);
  // Parses a block; kBootEnvCorrupt when the size or the header is wrong.
  static Expected<std::vector<std::pair<std::string, std::string>>> Parse(std::string_view block,
                                                                          const std::string& where);

 private:
  void RemoveStaleTemps() const;

  std::filesystem::path path_;
  std::string name_;
};

}  // namespace sag::platform
