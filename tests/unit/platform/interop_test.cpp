// The backends against the bootloaders' own tools: fw_printenv/fw_setenv
// (libubootenv-tool) and grub-editenv (grub-common).
#include <gtest/gtest.h>

#include "common/process.h"
#include "tests/unit/platform/env_harness.h"

namespace sag::platform::test {
namespace {

std::string Tool(const std::vector<std::string>& argv) {
  auto r = RunCommand(argv);
  EXPECT_TRUE(r);
  if (!r) return {};
  EXPECT_EQ(r->exit_code, 0) << argv[0] << ": " << r->output;
  return r->output;
}

class UBootInterop : public ::testing::Test {
 protected:
  void SetUp() override {
    config_ = MakeUBootFiles(dir_.path());
    env_ = std::make_unique<UBootEnv>(config_);
    ASSERT_TRUE(env_->Format(FormatBootVars({{Slot::kA, Slot::kB}, 3, 0})));
    ASSERT_TRUE(WriteFileAtomic(dir_ / "cmdline", "sag.slot=A\n"));
    control_ = std::make_unique<EnvBootControl>(std::make_unique<UBootEnv>(config_),
                                                dir_ / "cmdline", "sag.slot");
  }
  sag::test::TempDir dir_;
  std::filesystem::path config_;
  std::unique_ptr<UBootEnv> env_;
  std::unique_ptr<EnvBootControl> control_;
};

TEST_F(UBootInterop, FwPrintenvReadsWhatTheBackendWrote) {
  ASSERT_TRUE(control_->SetTrial(Slot::kB, 3));
  EXPECT_EQ(Tool({"fw_printenv", "-c", config_.string()}),
            "BOOT_A_LEFT=3\nBOOT_B_LEFT=3\nBOOT_ORDER=B A\n");
  ASSERT_TRUE(control_->MarkBad(Slot::kB));
  EXPECT_EQ(Tool({"fw_printenv", "-c", config_.string(), "-n", "BOOT_ORDER"}), "A B\n");
  EXPECT_EQ(Tool({"fw_printenv", "-c", config_.string(), "-n", "BOOT_B_LEFT"}), "0\n");
}

TEST_F(UBootInterop, BackendReadsWhatFwSetenvWrote) {
  Tool({"fw_setenv", "-c", config_.string(), "BOOT_ORDER", "B A"});
  Tool({"fw_setenv", "-c", config_.string(), "BOOT_B_LEFT", "5"});
  auto s = control_->ReadState();
  ASSERT_TRUE(s) << s.error().ToString();
  EXPECT_EQ(s->order, (std::vector<Slot>{Slot::kB, Slot::kA}));
  EXPECT_EQ(s->b_left, 5);
  // A value the agent cannot validate: refused, and left as fw_setenv wrote it.
  Tool({"fw_setenv", "-c", config_.string(), "BOOT_A_LEFT", "lots"});
  const auto st = control_->MarkGood(Slot::kB, 3);
  ASSERT_FALSE(st);
  EXPECT_EQ(st.error().code(), Errc::kBootEnvInvalid);
  EXPECT_NE(st.error().message().find("BOOT_A_LEFT=\"lots\""), std::string::npos);
  EXPECT_EQ(Tool({"fw_printenv", "-c", config_.string(), "-n", "BOOT_A_LEFT"}), "lots\n");
}

// libubootenv writes the older copy each time; destroying either copy must
// leave the other readable, destroying both must be a clear error.
TEST_F(UBootInterop, EitherRedundantCopySuffices) {
  ASSERT_TRUE(control_->SetTrial(Slot::kB, 3));  // newest copy: B first
  const std::string good = Slurp(dir_ / "uboot.env");
  for (const std::size_t copy : {std::size_t{0}, kUBootCopySize}) {
    std::string broken = good;
    broken[copy + 10] ^= 0x55;
    ASSERT_TRUE(WriteFileAtomic(dir_ / "uboot.env", broken));
    auto s = control_->ReadState();
    ASSERT_TRUE(s) << s.error().ToString();
    EXPECT_TRUE(s->NextBoot().has_value());
  }
  std::string broken = good;
  broken[10] ^= 0x55;
  broken[kUBootCopySize + 10] ^= 0x55;
  ASSERT_TRUE(WriteFileAtomic(dir_ / "uboot.env", broken));
  auto s = control_->ReadState();
  ASSERT_FALSE(s);
  EXPECT_EQ(s.error().code(), Errc::kBootEnvCorrupt);
  EXPECT_NE(s.error().message().find((dir_ / "uboot.env").string()), std::string::npos);
  EXPECT_NE(s.error().message().find("both CRCs"), std::string::npos) << s.error().message();
}

TEST_F(UBootInterop, MissingOrShortDeviceIsNamed) {
  ASSERT_TRUE(WriteFileAtomic(dir_ / "uboot.env", std::string(100, '\0')));
  auto s = control_->ReadState();
  ASSERT_FALSE(s);
  EXPECT_EQ(s.error().code(), Errc::kBootEnvCorrupt);
  EXPECT_NE(s.error().message().find("too short"), std::string::npos) << s.error().message();
  std::filesystem::remove(dir_ / "uboot.env");
  s = control_->ReadState();
  ASSERT_FALSE(s);
  EXPECT_NE(s.error().message().find((dir_ / "uboot.env").string()), std::string::npos);
  BootOptions options;
  options.uboot_config = dir_ / "missing.config";
  options.cmdline = dir_ / "cmdline";
  auto made = MakeBootControl(options);
  ASSERT_FALSE(made);
  EXPECT_EQ(made.error().code(), Errc::kNotFound);
  EXPECT_NE(made.error().message().find("missing.config"), std::string::npos);
}

class GrubInterop : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ = dir_ / "grubenv";
    ASSERT_TRUE(WriteFileAtomic(dir_ / "cmdline", "sag.slot=A\n"));
    control_ = std::make_unique<EnvBootControl>(std::make_unique<GrubEnv>(path_), dir_ / "cmdline",
                                                "sag.slot");
  }
  sag::test::TempDir dir_;
  std::filesystem::path path_;
  std::unique_ptr<EnvBootControl> control_;
};

TEST_F(GrubInterop, BackendReadsGrubEditenvAndGrubEditenvReadsBackend) {
  Tool({"grub-editenv", path_.string(), "create"});
  Tool({"grub-editenv", path_.string(), "set", "saved_entry=1", "BOOT_ORDER=B A", "BOOT_A_LEFT=3",
        "BOOT_B_LEFT=1", "note=a\\b"});
  auto s = control_->ReadState();
  ASSERT_TRUE(s) << s.error().ToString();
  EXPECT_EQ(s->order, (std::vector<Slot>{Slot::kB, Slot::kA}));
  EXPECT_EQ(s->b_left, 1);
  ASSERT_TRUE(control_->MarkGood(Slot::kA, 2));
  EXPECT_EQ(Tool({"grub-editenv", path_.string(), "list"}),
            "saved_entry=1\nBOOT_ORDER=A B\nBOOT_A_LEFT=2\nBOOT_B_LEFT=1\nnote=a\\b\n");
  EXPECT_EQ(std::filesystem::file_size(path_), GrubEnv::kBlockSize);
  Tool({"grub-editenv", path_.string(), "unset", "BOOT_B_LEFT"});
  const auto st = control_->MarkGood(Slot::kA, 3);
  ASSERT_FALSE(st);
  EXPECT_NE(st.error().message().find("BOOT_B_LEFT is not set"), std::string::npos);
}

TEST_F(GrubInterop, SerializationIsByteIdenticalToGrubEditenv) {
  Tool({"grub-editenv", path_.string(), "create"});
  Tool({"grub-editenv", path_.string(), "set", "BOOT_ORDER=A B", "BOOT_A_LEFT=3", "BOOT_B_LEFT=0",
        "x=multi\nline\\"});
  const std::string theirs = Slurp(path_);
  GrubEnv env(path_);
  auto parsed = GrubEnv::Parse(theirs, "t");
  ASSERT_TRUE(parsed) << parsed.error().ToString();
  EXPECT_EQ(parsed->back().second, "multi\nline\\");
  auto ours = GrubEnv::Serialize(*parsed, "t");
  ASSERT_TRUE(ours);
  EXPECT_EQ(*ours, theirs);
}

TEST_F(GrubInterop, OverflowAndBadBlocksAreRefused) {
  GrubEnv env(path_);
  ASSERT_TRUE(env.Format(FormatBootVars({{Slot::kA, Slot::kB}, 3, 0})));
  const std::string before = Slurp(path_);
  const auto st = env.Update([](const EnvVars&) -> Expected<EnvVars> {
    return EnvVars{{"big", std::string(1000, 'x')}};
  });
  ASSERT_FALSE(st);
  EXPECT_EQ(st.error().code(), Errc::kBootEnvWrite);
  EXPECT_EQ(Slurp(path_), before);
  ASSERT_TRUE(WriteFileAtomic(path_, before.substr(0, 1000)));
  auto s = control_->ReadState();
  ASSERT_FALSE(s);
  EXPECT_EQ(s.error().code(), Errc::kBootEnvCorrupt);
  EXPECT_NE(s.error().message().find("1000 bytes"), std::string::npos);
}

}  // namespace
}  // namespace sag::platform::test
