#include "common/atomic_file.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <random>

#include "tests/support/powerloss_mount.h"
#include "tests/support/temp_dir.h"

namespace sag {
namespace {

TEST(AtomicFile, WritesAndReplaces) {
  test::TempDir dir;
  const auto p = dir / "state.json";
  ASSERT_TRUE(WriteFileAtomic(p, "one"));
  EXPECT_EQ(*ReadFile(p), "one");
  ASSERT_TRUE(WriteFileAtomic(p, "two"));
  EXPECT_EQ(*ReadFile(p), "two");
  // No temporary is left behind.
  int files = 0;
  for ([[maybe_unused]] const auto& e : std::filesystem::directory_iterator(dir.path())) ++files;
  EXPECT_EQ(files, 1);
}

// ReplaceFile: the same untorn replacement for runtime files, without fsync.
TEST(AtomicFile, ReplaceFileReplacesWithoutLeavingTemporaries) {
  test::TempDir dir;
  const auto p = dir / "status.json";
  ASSERT_TRUE(ReplaceFile(p, "one", 0600));
  ASSERT_TRUE(ReplaceFile(p, "two"));
  EXPECT_EQ(*ReadFile(p), "two");
  EXPECT_EQ(std::filesystem::status(p).permissions(), std::filesystem::perms(0644));
  int files = 0;
  for ([[maybe_unused]] const auto& e : std::filesystem::directory_iterator(dir.path())) ++files;
  EXPECT_EQ(files, 1);
  auto st = ReplaceFile(dir / "missing" / "status.json", "x");
  ASSERT_FALSE(st);
  EXPECT_NE(st.error().message().find("missing"), std::string::npos);
}

TEST(AtomicFile, ReportsMissingDirectory) {
  test::TempDir dir;
  auto st = WriteFileAtomic(dir / "no/such/dir/f", "x");
  ASSERT_FALSE(st);
  EXPECT_EQ(st.error().code(), Errc::kIo);
  EXPECT_NE(st.error().message().find("no/such/dir"), std::string::npos);
}

TEST(AtomicFile, ReadFileBoundsSize) {
  test::TempDir dir;
  ASSERT_TRUE(WriteFileAtomic(dir / "big", std::string(1000, 'x')));
  EXPECT_EQ(ReadFile(dir / "big", 999).error().code(), Errc::kImageTooLarge);
  EXPECT_TRUE(ReadFile(dir / "big", 1000));
  EXPECT_EQ(ReadFile(dir / "missing").error().code(), Errc::kNotFound);
}

// The content written in generation g: 256 KiB of one byte value, so a torn
// file (a mix of two generations, or a short one) is easy to recognise.
std::string Generation(unsigned g) {
  return {std::string(256U << 10U, static_cast<char>('a' + g % 26))};
}

bool IsWholeGeneration(const std::string& s) {
  if (s.size() != (256U << 10U)) return false;
  return s.find_first_not_of(s[0]) == std::string::npos;
}

// A writer process is SIGKILLed at random instants while it replaces the file
// over and over; every time, the file holds one complete generation.
TEST(AtomicFile, SurvivesSigkillAtRandomPoints) {
  test::TempDir dir;
  const auto p = dir / "journal";
  ASSERT_TRUE(WriteFileAtomic(p, Generation(0)));
  std::mt19937 rng(12345);
  std::uniform_int_distribution<int> delay_us(0, 20000);
  int killed_mid_write = 0;
  for (int trial = 0; trial < 60; ++trial) {
    const pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      for (unsigned g = 1;; ++g) {
        if (!WriteFileAtomic(p, Generation(g))) ::_exit(1);
      }
    }
    ::usleep(static_cast<useconds_t>(delay_us(rng)));
    ::kill(pid, SIGKILL);
    int status = 0;
    ::waitpid(pid, &status, 0);
    ASSERT_TRUE(WIFSIGNALED(status)) << "writer failed on its own at trial " << trial;
    ++killed_mid_write;
    auto content = ReadFile(p, 1U << 20U);
    ASSERT_TRUE(content) << content.error().ToString();
    ASSERT_TRUE(IsWholeGeneration(*content))
        << "torn file at trial " << trial << ", size " << content->size();
  }
  EXPECT_EQ(killed_mid_write, 60);
}

// The same on sag-powerloss (docs/power-loss.md), where a cut loses whatever
// fsync and the directory fsync did not make durable: power is cut at random
// instants while a writer replaces the file over and over. After each cut the
// file holds one whole generation, and never one older than the last that
// WriteFileAtomic returned for (it promises durability on return). Without
// the data fsync the file is torn or empty; without the directory fsync an
// older generation (or none) comes back.
TEST(AtomicFile, SurvivesPowerCutsAtRandomPoints) {
  test::TempDir dir;
  std::filesystem::create_directories(dir / "mnt");
  const test::PowerLossMount mount(SAG_POWERLOSS_BIN, dir / "mnt", dir / "mnt");
  if (!mount.Available()) GTEST_SKIP() << "no FUSE here (needs /dev/fuse and root)";
  const auto p = dir / "mnt" / "journal";
  ASSERT_TRUE(WriteFileAtomic(p, Generation(0)));
  std::mt19937 rng(54321);
  std::uniform_int_distribution<int> delay_us(0, 40000);
  unsigned durable = 0;  // the newest generation whose WriteFileAtomic returned
  int newer = 0;         // cuts that kept the generation in flight too
  for (int trial = 0; trial < 30; ++trial) {
    int fds[2];
    ASSERT_EQ(::pipe(fds), 0);
    const pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      ::close(fds[0]);
      for (unsigned g = durable + 1;; ++g) {
        if (!WriteFileAtomic(p, Generation(g))) ::_exit(1);
        if (::write(fds[1], &g, sizeof g) != sizeof g) ::_exit(1);
      }
    }
    ::close(fds[1]);
    ::usleep(static_cast<useconds_t>(delay_us(rng)));
    ::kill(pid, SIGKILL);
    int status = 0;
    ::waitpid(pid, &status, 0);
    ASSERT_TRUE(WIFSIGNALED(status)) << "writer failed on its own at trial " << trial;
    for (unsigned g = 0; ::read(fds[0], &g, sizeof g) == sizeof g;) durable = g;
    ::close(fds[0]);
    ASSERT_FALSE(mount.Control("cut torn").empty());
    auto content = ReadFile(p, 1U << 20U);
    ASSERT_TRUE(content) << "trial " << trial << ": " << content.error().ToString();
    ASSERT_TRUE(IsWholeGeneration(*content))
        << "torn file at trial " << trial << ", size " << content->size();
    const char got = content->front();
    if (got == Generation(durable + 1).front()) {
      ++durable;
      ++newer;
    } else {
      ASSERT_EQ(got, Generation(durable).front())
          << "trial " << trial << ": generation " << durable
          << " was written durably, the file after the cut holds another";
    }
  }
  std::printf("30 cuts, generation %u reached, %d cuts kept the write in flight\n", durable, newer);
}

}  // namespace
}  // namespace sag
