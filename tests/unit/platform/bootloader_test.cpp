// The boot algorithm, stated once more here in the plainest form, checked
// against RunBootScript (which the simulator and the fake run) for every
// combination of order and counters, including unset variables.
#include "platform/bootloader.h"

#include <gtest/gtest.h>

#include "common/process.h"
#include "platform/fake_boot_control.h"

namespace sag::platform {
namespace {

struct Expect {
  std::optional<std::string> slot;  // nullopt: no slot, counters reset, board reset
  std::string a_left;
  std::string b_left;
};

// docs/boot.md, "The algorithm": unset variables take their defaults
// ("A B", 3, 3); the first slot of BOOT_ORDER with a count above 0 boots,
// and its count goes down by one; no such slot: both counts become 3.
Expect Stated(const std::optional<std::string>& order, const std::optional<int>& a,
              const std::optional<int>& b) {
  const std::string o = (!order || order->empty()) ? "A B" : *order;
  int left[2] = {a.value_or(3), b.value_or(3)};
  for (const char c : o) {
    if (c != 'A' && c != 'B') continue;
    int& n = left[c - 'A'];
    if (n > 0) {
      --n;
      return {std::string(1, c), std::to_string(left[0]), std::to_string(left[1])};
    }
  }
  return {std::nullopt, "3", "3"};
}

TEST(BootScript, MatchesTheStatedAlgorithmForAllCombinations) {
  const std::optional<std::string> orders[] = {std::nullopt, "",  "A B", "B A",
                                               "A",          "B", "B",   "A B A"};
  std::vector<std::optional<int>> counts = {std::nullopt};
  for (int i = 0; i <= kMaxAttempts; ++i) counts.emplace_back(i);
  int checked = 0;
  for (const auto& order : orders) {
    for (const auto& a : counts) {
      for (const auto& b : counts) {
        EnvVars env{{"bootcmd", "run x"}};
        if (order) env[kVarOrder] = *order;
        if (a) env[kVarALeft] = std::to_string(*a);
        if (b) env[kVarBLeft] = std::to_string(*b);
        const Expect want = Stated(order, a, b);
        const BootStep got = RunBootScript(env);
        const std::string ctx = "order=" + order.value_or("<unset>") +
                                " a=" + (a ? std::to_string(*a) : "-") +
                                " b=" + (b ? std::to_string(*b) : "-");
        ASSERT_EQ(got.slot.has_value(), want.slot.has_value()) << ctx;
        if (want.slot) {
          EXPECT_EQ(SlotName(*got.slot), *want.slot) << ctx;
        }
        EXPECT_EQ(got.env.at(kVarALeft), want.a_left) << ctx;
        EXPECT_EQ(got.env.at(kVarBLeft), want.b_left) << ctx;
        EXPECT_EQ(got.env.at("bootcmd"), "run x") << ctx;
        ++checked;
      }
    }
  }
  EXPECT_EQ(checked, 8 * 11 * 11);
}

TEST(BootScript, FollowsUBootNumberParsingOutsideTheValidRange) {
  // `test -gt` reads a decimal prefix, garbage is 0: not bootable.
  BootStep s = RunBootScript({{kVarOrder, "A B"}, {kVarALeft, "x"}, {kVarBLeft, "2"}});
  EXPECT_EQ(s.slot, Slot::kB);
  EXPECT_TRUE(s.fallback);
  // `setexpr` computes in hex: 10 - 1 is "f", which `test` then reads as 0.
  s = RunBootScript({{kVarOrder, "A"}, {kVarALeft, "10"}, {kVarBLeft, "0"}});
  EXPECT_EQ(s.slot, Slot::kA);
  EXPECT_EQ(s.env[kVarALeft], "f");
  // Unknown names in the order are skipped.
  s = RunBootScript({{kVarOrder, "C B"}, {kVarALeft, "1"}, {kVarBLeft, "1"}});
  EXPECT_EQ(s.slot, Slot::kB);
}

TEST(BootScript, FakeBootsWithTheSameAlgorithm) {
  FakeBootControl fake;
  for (int i = 0; i < 40; ++i) {
    const BootStep want = RunBootScript(fake.env());
    EXPECT_EQ(fake.Boot(), want.slot);
    EXPECT_EQ(fake.env(), want.env);
    if (i == 5) {
      ASSERT_TRUE(fake.SetTrial(Slot::kB, 2)) << i;
    }
  }
}

TEST(BootScript, ShippedGrubSnippetIsValidGrubScript) {
  auto r = RunCommand({"grub-script-check", SAG_SOURCE_DIR "/platform/bootloader/grub.cfg"});
  ASSERT_TRUE(r);
  EXPECT_EQ(r->exit_code, 0) << r->output;
}

}  // namespace
}  // namespace sag::platform
