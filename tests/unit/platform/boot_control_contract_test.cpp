// One contract, three backends: the fake, U-Boot on a file (libubootenv) and
// a GRUB environment block. Each test provisions an environment, drives the
// BootControl and "boots" with the shipped boot algorithm.
#include <gtest/gtest.h>

#include "tests/unit/platform/env_harness.h"

namespace sag::platform::test {
namespace {

constexpr Slot kA = Slot::kA;
constexpr Slot kB = Slot::kB;

BootState State(std::vector<Slot> order, int a, int b) { return {std::move(order), a, b}; }

template <typename H>
class BootControlContract : public ::testing::Test {
 protected:
  void SetUp() override { h_.Provision(State({kA, kB}, 3, 0), kA); }
  BootState Read() {
    auto s = h_.control().ReadState();
    EXPECT_TRUE(s) << s.error().ToString();
    return s ? *s : BootState{};
  }
  H h_;
};

using Backends = ::testing::Types<FakeHarness, UBootHarness, GrubHarness>;
TYPED_TEST_SUITE(BootControlContract, Backends);

TYPED_TEST(BootControlContract, ReadsProvisionedStateAndBootedSlot) {
  const BootState s = this->Read();
  EXPECT_EQ(s.order, (std::vector<Slot>{kA, kB}));
  EXPECT_EQ(s.a_left, 3);
  EXPECT_EQ(s.b_left, 0);
  EXPECT_EQ(s.NextBoot(), kA);
  auto booted = this->h_.control().BootedSlot();
  ASSERT_TRUE(booted);
  EXPECT_EQ(*booted, kA);
}

TYPED_TEST(BootControlContract, TrialBootsNewSlotThenCommit) {
  ASSERT_TRUE(this->h_.control().SetTrial(kB, 3));
  BootState s = this->Read();
  EXPECT_EQ(s.order, (std::vector<Slot>{kB, kA}));
  EXPECT_EQ(s.b_left, 3);
  EXPECT_EQ(s.a_left, 3);  // the fallback keeps its tries
  EXPECT_EQ(this->h_.Boot(), kB);
  EXPECT_EQ(*this->h_.control().BootedSlot(), kB);
  EXPECT_EQ(this->Read().b_left, 2);  // the bootloader counted the try
  ASSERT_TRUE(this->h_.control().MarkGood(kB, 3));
  s = this->Read();
  EXPECT_EQ(s.order, (std::vector<Slot>{kB, kA}));
  EXPECT_EQ(s.b_left, 3);
  EXPECT_EQ(this->h_.Boot(), kB);
}

TYPED_TEST(BootControlContract, ExhaustedTrialFallsBackToOldSlot) {
  ASSERT_TRUE(this->h_.control().SetTrial(kB, 2));
  EXPECT_EQ(this->h_.Boot(), kB);
  EXPECT_EQ(this->h_.Boot(), kB);
  EXPECT_EQ(this->h_.Boot(), kA);  // B has no tries left
  EXPECT_EQ(*this->h_.control().BootedSlot(), kA);
  const BootState s = this->Read();
  EXPECT_EQ(s.b_left, 0);
  EXPECT_EQ(s.a_left, 2);
  EXPECT_EQ(s.order, (std::vector<Slot>{kB, kA}));  // the bootloader never reorders
}

TYPED_TEST(BootControlContract, NoSlotLeftResetsCountersLikeTheScript) {
  this->h_.Provision(State({kA, kB}, 1, 0), kA);
  EXPECT_EQ(this->h_.Boot(), kA);
  EXPECT_EQ(this->Read().NextBoot(), std::nullopt);  // readable, nothing bootable
  EXPECT_EQ(this->h_.Boot(), std::nullopt);          // reset: both counters back to 3
  const BootState s = this->Read();
  EXPECT_EQ(s.a_left, kDefaultAttempts);
  EXPECT_EQ(s.b_left, kDefaultAttempts);
  EXPECT_EQ(this->h_.Boot(), kA);
}

TYPED_TEST(BootControlContract, MarkBadMovesSlotLastAndKeepsOneBootable) {
  ASSERT_TRUE(this->h_.control().SetTrial(kB, 3));
  ASSERT_TRUE(this->h_.control().MarkBad(kB));
  BootState s = this->Read();
  EXPECT_EQ(s.order, (std::vector<Slot>{kA, kB}));
  EXPECT_EQ(s.b_left, 0);
  const std::string before = this->h_.Snapshot();
  const auto st = this->h_.control().MarkBad(kA);  // B has nothing left: refused
  ASSERT_FALSE(st);
  EXPECT_EQ(st.error().code(), Errc::kBootEnvInvalid);
  EXPECT_EQ(this->h_.Snapshot(), before);
  EXPECT_EQ(this->Read().NextBoot(), kA);
}

TYPED_TEST(BootControlContract, TrialRefusedWithoutAFallback) {
  this->h_.Provision(State({kA, kB}, 0, 2), kB);
  const std::string before = this->h_.Snapshot();
  const auto st = this->h_.control().SetTrial(kA, 3);  // B, the fallback, has 2: fine
  ASSERT_TRUE(st) << st.error().ToString();
  this->h_.Provision(State({kA, kB}, 2, 0), kA);
  const auto refused = this->h_.control().SetTrial(kA, 3);  // fallback B has 0
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().code(), Errc::kBootEnvInvalid);
  EXPECT_NE(refused.error().message().find("BOOT_B_LEFT=0"), std::string::npos);
  (void)before;
}

TYPED_TEST(BootControlContract, AttemptsOutOfRangeAreRejected) {
  const std::string before = this->h_.Snapshot();
  for (const int n : {0, -1, 10, 100}) {
    auto st = this->h_.control().SetTrial(kB, n);
    ASSERT_FALSE(st);
    EXPECT_EQ(st.error().code(), Errc::kInvalidArgument) << n;
    st = this->h_.control().MarkGood(kA, n);
    ASSERT_FALSE(st);
    EXPECT_EQ(st.error().code(), Errc::kInvalidArgument) << n;
  }
  EXPECT_EQ(this->h_.Snapshot(), before);
}

TYPED_TEST(BootControlContract, MarkGoodOfCommittedStateWritesNothing) {
  ASSERT_TRUE(this->h_.control().MarkGood(kA, 3));
  const std::string before = this->h_.Snapshot();
  ASSERT_TRUE(this->h_.control().MarkGood(kA, 3));
  EXPECT_EQ(this->h_.Snapshot(), before);
}

TYPED_TEST(BootControlContract, InvalidVariablesAreNamedAndNeverOverwritten) {
  struct Case {
    const char* var;
    std::optional<std::string> value;
  };
  const Case cases[] = {{"BOOT_ORDER", "A C"}, {"BOOT_ORDER", "A A"},
                        {"BOOT_ORDER", " "},   {"BOOT_ORDER", std::nullopt},
                        {"BOOT_A_LEFT", "x"},  {"BOOT_A_LEFT", "10"},
                        {"BOOT_B_LEFT", "-1"}, {"BOOT_B_LEFT", std::nullopt}};
  for (const auto& c : cases) {
    this->h_.Provision(State({kA, kB}, 3, 3), kA);
    this->h_.SetRaw(c.var, c.value);
    const std::string before = this->h_.Snapshot();
    auto read = this->h_.control().ReadState();
    ASSERT_FALSE(read) << c.var;
    EXPECT_EQ(read.error().code(), Errc::kBootEnvInvalid);
    EXPECT_NE(read.error().message().find(c.var), std::string::npos) << read.error().message();
    for (const auto& st : {this->h_.control().SetTrial(kB, 3), this->h_.control().MarkGood(kA, 3),
                           this->h_.control().MarkBad(kB)}) {
      ASSERT_FALSE(st);
      EXPECT_EQ(st.error().code(), Errc::kBootEnvInvalid) << st.error().message();
    }
    EXPECT_EQ(this->h_.Snapshot(), before) << c.var;
  }
}

TYPED_TEST(BootControlContract, OtherVariablesArePreserved) {
  this->h_.SetRaw("bootcmd", "run sag_boot");
  ASSERT_TRUE(this->h_.control().SetTrial(kB, 3));
  ASSERT_TRUE(this->h_.control().MarkBad(kB));
  EXPECT_EQ(this->h_.Raw()["bootcmd"], "run sag_boot");
}

TYPED_TEST(BootControlContract, CorruptEnvironmentIsReportedNotRepaired) {
  this->h_.Corrupt();
  const std::string before = this->h_.Snapshot();
  auto read = this->h_.control().ReadState();
  ASSERT_FALSE(read);
  EXPECT_EQ(read.error().code(), Errc::kBootEnvCorrupt);
  const auto st = this->h_.control().MarkGood(kA, 3);
  ASSERT_FALSE(st);
  EXPECT_EQ(st.error().code(), Errc::kBootEnvCorrupt);
  EXPECT_EQ(this->h_.Snapshot(), before);
}

TYPED_TEST(BootControlContract, CommandLineWithoutKnownSlot) {
  for (const char* cmdline : {"root=/dev/x quiet", "sag.slot=C", "sag.slot="}) {
    this->h_.BreakCmdline(cmdline);
    auto booted = this->h_.control().BootedSlot();
    ASSERT_FALSE(booted) << cmdline;
    EXPECT_EQ(booted.error().code(), Errc::kUnknownSlot);
  }
}

TEST(FakeBootControl, InjectedWriteFailureChangesNothing) {
  FakeBootControl fake;
  fake.FailNextWrite(Error(Errc::kBootEnvWrite, "injected"));
  const auto st = fake.SetTrial(kB, 3);
  ASSERT_FALSE(st);
  EXPECT_EQ(st.error().code(), Errc::kBootEnvWrite);
  EXPECT_EQ(fake.writes(), 0);
  EXPECT_EQ(fake.ReadState()->order, (std::vector<Slot>{kA, kB}));
  ASSERT_TRUE(fake.SetTrial(kB, 3));  // only the next write fails
  EXPECT_EQ(fake.writes(), 1);
  fake.CorruptEnvironment();
  EXPECT_EQ(fake.Boot(), kA);  // U-Boot's default environment: "A B", 3, 3
  EXPECT_EQ(fake.ReadState()->a_left, 2);
}

TEST(GrubEnv, RemovesTemporariesOfKilledWriters) {
  sag::test::TempDir dir;
  GrubEnv env(dir / "grubenv");
  ASSERT_TRUE(env.Format(FormatBootVars(State({kA, kB}, 3, 0))));
  ASSERT_TRUE(WriteFileAtomic(dir / ".grubenv.tmp12345", "half a block"));
  ASSERT_TRUE(env.Update([](const EnvVars&) -> Expected<EnvVars> { return EnvVars{{"x", "1"}}; }));
  EXPECT_FALSE(std::filesystem::exists(dir / ".grubenv.tmp12345"));
  EXPECT_EQ(std::distance(std::filesystem::directory_iterator(dir.path()),
                          std::filesystem::directory_iterator()),
            1);
}

}  // namespace
}  // namespace sag::platform::test
