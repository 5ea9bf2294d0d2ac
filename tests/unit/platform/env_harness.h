// Test harnesses that give the fake and the file-backed U-Boot and GRUB
// backends one shape, so one contract suite runs against all three.
#pragma once

#include <gtest/gtest.h>

#include <fstream>
#include <memory>
#include <string>

#include "common/atomic_file.h"
#include "platform/boot_env.h"
#include "platform/bootloader.h"
#include "platform/env_boot_control.h"
#include "platform/fake_boot_control.h"
#include "tests/support/temp_dir.h"

namespace sag::platform::test {

inline constexpr std::size_t kUBootCopySize = 0x2000;

// A U-Boot environment file with two redundant copies, and its config.
inline std::filesystem::path MakeUBootFiles(const std::filesystem::path& dir) {
  const auto env = dir / "uboot.env";
  std::ofstream(env, std::ios::binary) << std::string(2 * kUBootCopySize, '\0');
  auto config = dir / "fw_env.config";
  std::ofstream(config) << "# device offset size\n"
                        << env.string() << " 0x0000 0x2000\n"
                        << env.string() << " 0x2000 0x2000\n";
  return config;
}

inline std::string Slurp(const std::filesystem::path& p) {
  auto r = ReadFile(p);
  return r ? *r : std::string();
}

class Harness {
 public:
  virtual ~Harness() = default;
  virtual void Provision(const BootState& state, Slot booted) = 0;
  virtual BootControl& control() = 0;
  // The bootloader runs (shipped algorithm) and the kernel starts.
  virtual std::optional<Slot> Boot() = 0;
  virtual EnvVars Raw() = 0;
  // Writes raw variables as a bootloader tool would (nullopt: unset).
  virtual void SetRaw(const std::string& name, const std::optional<std::string>& value) = 0;
  virtual void Corrupt() = 0;
  virtual void BreakCmdline(const std::string& cmdline) = 0;
  // The stored bytes, to tell whether anything was written.
  virtual std::string Snapshot() = 0;
};

class FakeHarness : public Harness {
 public:
  void Provision(const BootState& state, Slot booted) override {
    fake_ = std::make_unique<FakeBootControl>(state, booted);
  }
  BootControl& control() override { return *fake_; }
  std::optional<Slot> Boot() override { return fake_->Boot(); }
  EnvVars Raw() override { return fake_->env(); }
  void SetRaw(const std::string& name, const std::optional<std::string>& value) override {
    if (value) {
      fake_->env()[name] = *value;
    } else {
      fake_->env().erase(name);
    }
  }
  void Corrupt() override { fake_->CorruptEnvironment(); }
  void BreakCmdline(const std::string& /*cmdline*/) override { fake_->LoseBootedSlot(); }
  std::string Snapshot() override {
    std::string s = std::to_string(fake_->writes());
    for (const auto& [n, v] : fake_->env()) s.append(";").append(n).append("=").append(v);
    return s;
  }

 private:
  std::unique_ptr<FakeBootControl> fake_;
};

// The shared part of the two file-backed harnesses.
class FileHarness : public Harness {
 public:
  BootControl& control() override { return *control_; }
  std::optional<Slot> Boot() override {
    std::optional<Slot> slot;
    EXPECT_TRUE(env_->Update([&](const EnvVars& vars) -> Expected<EnvVars> {
      BootStep step = RunBootScript(vars);
      slot = step.slot;
      return step.env;
    }));
    if (slot) WriteCmdline("console=ttyS0 sag.slot=" + std::string(SlotName(*slot)));
    return slot;
  }
  EnvVars Raw() override {
    auto vars = env_->Load();
    EXPECT_TRUE(vars) << vars.error().ToString();
    return vars ? *vars : EnvVars{};
  }
  void BreakCmdline(const std::string& cmdline) override { WriteCmdline(cmdline); }

 protected:
  void Finish(Slot booted) {
    WriteCmdline("root=/dev/x sag.slot=" + std::string(SlotName(booted)) + " quiet");
    BootOptions options;
    options.backend = backend_;
    options.uboot_config = dir_ / "fw_env.config";
    options.grubenv = dir_ / "grubenv";
    options.cmdline = dir_ / "cmdline";
    auto made = MakeBootControl(options);
    ASSERT_TRUE(made) << made.error().ToString();
    control_ = std::move(*made);
  }
  void WriteCmdline(const std::string& text) {
    ASSERT_TRUE(WriteFileAtomic(dir_ / "cmdline", text + "\n"));
  }

  sag::test::TempDir dir_;
  BootOptions::Backend backend_ = BootOptions::Backend::kUBoot;
  std::unique_ptr<BootEnv> env_;
  std::unique_ptr<BootControl> control_;
};

class UBootHarness : public FileHarness {
 public:
  void Provision(const BootState& state, Slot booted) override {
    auto* env = new UBootEnv(MakeUBootFiles(dir_.path()));
    env_.reset(env);
    ASSERT_TRUE(env->Format(FormatBootVars(state)));
    backend_ = BootOptions::Backend::kUBoot;
    Finish(booted);
  }
  void SetRaw(const std::string& name, const std::optional<std::string>& value) override {
    EnvVars vars = Raw();
    if (value) {
      vars[name] = *value;
    } else {
      vars.erase(name);
    }
    ASSERT_TRUE(static_cast<UBootEnv*>(env_.get())->Format(vars));
  }
  void Corrupt() override {
    std::fstream f(dir_ / "uboot.env", std::ios::in | std::ios::out | std::ios::binary);
    for (const std::size_t at : {std::size_t{0}, kUBootCopySize}) {
      f.seekp(static_cast<std::streamoff>(at + 8));
      f << "garbage";
    }
  }
  std::string Snapshot() override { return Slurp(dir_ / "uboot.env"); }
};

class GrubHarness : public FileHarness {
 public:
  void Provision(const BootState& state, Slot booted) override {
    auto* env = new GrubEnv(dir_ / "grubenv");
    env_.reset(env);
    ASSERT_TRUE(env->Format(FormatBootVars(state)));
    backend_ = BootOptions::Backend::kGrub;
    Finish(booted);
  }
  void SetRaw(const std::string& name, const std::optional<std::string>& value) override {
    EnvVars vars = Raw();
    if (value) {
      vars[name] = *value;
    } else {
      vars.erase(name);
    }
    ASSERT_TRUE(static_cast<GrubEnv*>(env_.get())->Format(vars));
  }
  void Corrupt() override {
    std::string block = Slurp(dir_ / "grubenv");
    block[2] = 'X';  // breaks the signature line
    ASSERT_TRUE(WriteFileAtomic(dir_ / "grubenv", block));
  }
  std::string Snapshot() override { return Slurp(dir_ / "grubenv"); }
};

}  // namespace sag::platform::test
