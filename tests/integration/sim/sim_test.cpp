// sag-sim end to end: the real binary, stand-in agents written as shell
// scripts (they talk to the simulator exactly as the agent will: the reboot
// marker in SAG_SIM_REBOOT_FLAG, fw_setenv on the simulator's environment),
// and the real sag-agent with the generated configuration.
#include <gtest/gtest.h>

#include <fstream>
#include <regex>

#include "common/atomic_file.h"
#include "common/process.h"
#include "tests/support/temp_dir.h"

namespace sag {
namespace {

struct Out {
  int code = -1;
  std::string text;
};

Out Sim(const std::vector<std::string>& args,
        std::chrono::seconds timeout = std::chrono::seconds(60)) {
  std::vector<std::string> argv{SAG_SIM_BIN};
  argv.insert(argv.end(), args.begin(), args.end());
  CommandOptions o;
  o.timeout = timeout;
  o.max_output = 1U << 20U;
  auto r = RunCommand(argv, o);
  EXPECT_TRUE(r);
  if (!r) return {};
  EXPECT_FALSE(r->timed_out);
  return {r->exit_code, r->output};
}

std::string Printenv(const std::filesystem::path& dev, const std::string& var) {
  auto r = RunCommand({"fw_printenv", "-c", (dev / "fw_env.config").string(), "-n", var});
  return r && r->exit_code == 0 ? r->output.substr(0, r->output.size() - 1) : "<error>";
}

int Count(const std::string& text, const std::string& what) {
  int n = 0;
  for (auto at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

class SimTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dev_ = dir_ / "dev";
    const Out o = Sim({"init", dev_.string(), "--slot-size", "65536", "--serial", "sag233sim"});
    ASSERT_EQ(o.code, 0) << o.text;
  }
  std::filesystem::path Agent(const std::string& body) {
    auto p = dir_ / ("agent" + std::to_string(++agents_) + ".sh");
    EXPECT_TRUE(WriteFileAtomic(p, "#!/bin/sh\n" + body, 0755));
    return p;
  }
  sag::test::TempDir dir_;
  std::filesystem::path dev_;
  int agents_ = 0;
};

TEST_F(SimTest, InitCreatesAnApplianceTheToolsAndTheAgentAccept) {
  EXPECT_EQ(std::filesystem::file_size(dev_ / "slot-a.img"), 65536U);
  EXPECT_EQ(std::filesystem::file_size(dev_ / "slot-b.img"), 65536U);
  EXPECT_EQ(Printenv(dev_, "BOOT_ORDER"), "A B");
  EXPECT_EQ(Printenv(dev_, "BOOT_A_LEFT"), "3");
  EXPECT_EQ(Printenv(dev_, "BOOT_B_LEFT"), "0");
  auto check = RunCommand({SAG_AGENT_BIN, "check-config", (dev_ / "agent.yaml").string()});
  ASSERT_TRUE(check);
  EXPECT_EQ(check->exit_code, 0) << check->output;
  EXPECT_NE(check->output.find("uboot " + (dev_ / "fw_env.config").string()), std::string::npos)
      << check->output;
  // Initial content for slot A, and refusing to overwrite an appliance.
  ASSERT_TRUE(WriteFileAtomic(dir_ / "image", "rootfs-v1"));
  const auto dev2 = dir_ / "dev2";
  ASSERT_EQ(
      Sim({"init", dev2.string(), "--slot-size", "4096", "--slot-a", (dir_ / "image").string()})
          .code,
      0);
  EXPECT_EQ(ReadFile(dev2 / "slot-a.img")->substr(0, 9), "rootfs-v1");
  const Out again = Sim({"init", dev2.string(), "--slot-size", "4096"});
  EXPECT_EQ(again.code, 2);
  EXPECT_NE(again.text.find("not empty"), std::string::npos) << again.text;
}

// The installer's path with a new slot that never comes up: three counted
// tries of B, then the bootloader falls back to A.
TEST_F(SimTest, TrialWithExhaustedAttemptsFallsBackToTheOldSlot) {
  const auto agent = Agent(
      "set -e\n"
      "cfg=\"$SAG_SIM_DIR/fw_env.config\"\n"
      "if [ ! -e \"$SAG_SIM_DIR/state/installed\" ]; then\n"
      "  echo \"agent: installing into B from slot $SAG_SIM_SLOT\"\n"
      "  fw_setenv -c \"$cfg\" BOOT_ORDER 'B A'\n"
      "  fw_setenv -c \"$cfg\" BOOT_B_LEFT 3\n"
      "  touch \"$SAG_SIM_DIR/state/installed\" \"$SAG_SIM_REBOOT_FLAG\"\n"
      "  exit 0\n"
      "fi\n"
      "echo \"agent: running in slot $SAG_SIM_SLOT after the trial\"\n");
  ASSERT_EQ(Sim({"fault", dev_.string(), "--slot", "B", "unbootable"}).code, 0);
  const Out o = Sim({"boot", dev_.string(), "--agent", agent.string()});
  ASSERT_EQ(o.code, 0) << o.text;
  EXPECT_NE(o.text.find("boot #1: BOOT_ORDER=\"A B\" A_LEFT=3 B_LEFT=0 -> slot A, 2 tries left"),
            std::string::npos)
      << o.text;
  EXPECT_NE(o.text.find("agent asked for a reboot"), std::string::npos) << o.text;
  EXPECT_EQ(Count(o.text, "does not come up"), 3) << o.text;
  EXPECT_NE(o.text.find("boot #5: BOOT_ORDER=\"B A\" A_LEFT=2 B_LEFT=0 -> slot A (fallback)"),
            std::string::npos)
      << o.text;
  EXPECT_NE(o.text.find("agent: running in slot A after the trial"), std::string::npos);
  EXPECT_EQ(Printenv(dev_, "BOOT_B_LEFT"), "0");
  EXPECT_EQ(Printenv(dev_, "BOOT_A_LEFT"), "1");
  EXPECT_NE(ReadFile(dev_ / "cmdline")->find("sag.slot=A"), std::string::npos);
}

TEST_F(SimTest, UnhealthyFaultFailsTheHealthCheckOfThatSlotOnly) {
  ASSERT_EQ(Sim({"fault", dev_.string(), "--slot", "B", "unhealthy"}).code, 0);
  const auto agent = Agent("exec \"$SAG_SIM_DIR/health-check\"\n");
  Out o = Sim({"boot", dev_.string(), "--agent", agent.string()});
  EXPECT_EQ(o.code, 0) << o.text;
  EXPECT_NE(o.text.find("slot A is healthy"), std::string::npos) << o.text;
  ASSERT_EQ(Sim({"env", dev_.string(), "BOOT_ORDER=B A", "BOOT_B_LEFT=3"}).code, 0);
  o = Sim({"boot", dev_.string(), "--agent", agent.string()});
  EXPECT_EQ(o.code, 1) << o.text;
  EXPECT_NE(o.text.find("slot B is unhealthy"), std::string::npos) << o.text;
  ASSERT_EQ(Sim({"fault", dev_.string(), "--slot", "B", "none"}).code, 0);
  o = Sim({"boot", dev_.string(), "--agent", agent.string()});
  EXPECT_NE(o.text.find("slot B is healthy"), std::string::npos) << o.text;
}

TEST_F(SimTest, PowerCutKillsTheAgentAndBootsAgainWithANewBootId) {
  const auto agent = Agent(
      "echo \"agent: boot $SAG_SIM_BOOT id $(cat \"$SAG_SIM_BOOT_ID_FILE\")\"\n"
      "if [ \"$SAG_SIM_BOOT\" = 1 ]; then exec sleep 30; fi\n");
  for (const std::vector<std::string>& cut :
       {std::vector<std::string>{"--cut-after-ms", "300"},
        std::vector<std::string>{"--cut-random", "300", "--seed", "5"}}) {
    std::vector<std::string> args{"boot", dev_.string(), "--agent", agent.string()};
    args.insert(args.end(), cut.begin(), cut.end());
    const auto start = std::chrono::steady_clock::now();
    const Out o = Sim(args);
    EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(15));
    ASSERT_EQ(o.code, 0) << o.text;
    EXPECT_EQ(Count(o.text, "power cut"), 1) << o.text;
    EXPECT_NE(o.text.find("boot #2"), std::string::npos) << o.text;
    std::smatch m1;
    std::smatch m2;
    const std::regex r1("agent: boot 1 id (\\S+)");
    const std::regex r2("agent: boot 2 id (\\S+)");
    if (std::regex_search(o.text, m1, r1) && std::regex_search(o.text, m2, r2)) {
      EXPECT_NE(m1[1].str(), m2[1].str());
    }
  }
}

// On sag-powerloss (docs/power-loss.md): every kill is followed by a cut of
// the medium that loses what the writer did not sync and tears its last write;
// every write the writer saw return must still be there (red with fsync made
// a no-op: "a write that returned was lost").
TEST_F(SimTest, PowerCutsDuringEnvironmentWritesLeaveAValidEnvironment) {
  const Out o = Sim({"cut-env", dev_.string(), "--trials", "100", "--seed", "1", "--powerloss",
                     SAG_POWERLOSS_BIN},
                    std::chrono::seconds(120));
  EXPECT_NE(o.text.find("medium totals: cuts=100 "), std::string::npos) << o.text;
  EXPECT_EQ(o.code, 0) << o.text;
  EXPECT_NE(o.text.find("100 of 100 power cuts left a valid environment"), std::string::npos)
      << o.text;
  EXPECT_EQ(Count(o.text, "INVALID"), 0);
  auto r = RunCommand({"fw_printenv", "-c", (dev_ / "fw_env.config").string()});
  ASSERT_TRUE(r);
  EXPECT_EQ(r->exit_code, 0) << r->output;
}

TEST_F(SimTest, PowerCutsDuringGrubBlockWritesLeaveAValidBlock) {
  const Out o = Sim({"cut-env", dev_.string(), "--backend", "grub", "--trials", "30", "--seed", "2",
                     "--powerloss", SAG_POWERLOSS_BIN},
                    std::chrono::seconds(120));
  EXPECT_EQ(o.code, 0) << o.text;
  EXPECT_NE(o.text.find("30 of 30 power cuts left a valid environment"), std::string::npos)
      << o.text;
  auto r = RunCommand({"grub-editenv", (dev_ / "grubenv").string(), "list"});
  ASSERT_TRUE(r);
  EXPECT_EQ(r->exit_code, 0) << r->output;
  EXPECT_NE(r->output.find("BOOT_ORDER="), std::string::npos) << r->output;
  EXPECT_EQ(std::filesystem::file_size(dev_ / "grubenv"), 1024U);
}

TEST_F(SimTest, BadInputsGiveClearErrors) {
  Out o = Sim({"boot", (dir_ / "nothing").string()});
  EXPECT_EQ(o.code, 1);
  EXPECT_NE(o.text.find("not a simulated appliance"), std::string::npos) << o.text;
  o = Sim({"boot", dev_.string(), "--cut-after-ms", "10", "--cut-from", "boot"});
  EXPECT_EQ(o.code, 2);
  EXPECT_NE(o.text.find("--cut-from is start or ready, not 'boot'"), std::string::npos) << o.text;
  o = Sim({"fault", dev_.string(), "--slot", "C", "unhealthy"});
  EXPECT_EQ(o.code, 1);
  EXPECT_NE(o.text.find("unknown slot 'C'"), std::string::npos) << o.text;
  std::filesystem::resize_file(dev_ / "slot-b.img", 1000);
  o = Sim({"boot", dev_.string(), "--agent", "true"});
  EXPECT_EQ(o.code, 1);
  EXPECT_NE(o.text.find("slot B device " + (dev_ / "slot-b.img").string() + " has 1000 bytes"),
            std::string::npos)
      << o.text;
  std::filesystem::resize_file(dev_ / "slot-b.img", 65536);
  // Both copies destroyed: tools report it; U-Boot (the simulator) boots on
  // its default environment and saves it.
  ASSERT_TRUE(WriteFileAtomic(dev_ / "uboot.env", std::string(0x8000, 'x')));
  o = Sim({"env", dev_.string()});
  EXPECT_EQ(o.code, 1);
  EXPECT_NE(o.text.find("BootEnvCorrupt"), std::string::npos) << o.text;
  EXPECT_NE(o.text.find((dev_ / "uboot.env").string()), std::string::npos) << o.text;
  o = Sim({"boot", dev_.string(), "--agent", "true"});
  EXPECT_EQ(o.code, 0) << o.text;
  EXPECT_NE(o.text.find("default environment"), std::string::npos) << o.text;
  EXPECT_EQ(Printenv(dev_, "BOOT_ORDER"), "A B");
}

// The real sag-agent with the generated configuration: it starts, runs
// until the power is cut, and starts again on the next boot. The cut comes
// 1 s after the agent wrote its pid file (its first log line is before it):
// an ASan agent on a loaded machine once took over 3 s to get there.
TEST_F(SimTest, RealAgentRunsUnderTheSimulator) {
  const Out o = Sim({"boot", dev_.string(), "--max-boots", "2", "--cuts", "2", "--cut-after-ms",
                     "1000", "--cut-from", "ready"});
  ASSERT_EQ(o.code, 0) << o.text;
  EXPECT_EQ(Count(o.text, "power cut"), 2) << o.text;
  EXPECT_EQ(Count(o.text, "was ready (agent killed"), 2) << o.text;
  EXPECT_NE(o.text.find("stopping after 2 boots"), std::string::npos) << o.text;
  EXPECT_GE(Count(o.text, "starting"), 2) << o.text;
}

}  // namespace
}  // namespace sag
