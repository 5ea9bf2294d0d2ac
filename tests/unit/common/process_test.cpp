#include "common/process.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <cstdint>
#include <string>

namespace sag {
namespace {

using std::chrono::milliseconds;

TEST(Process, CapturesOutputAndExitCode) {
  auto r = RunCommand({"sh", "-c", "echo out; echo err >&2; exit 3"});
  ASSERT_TRUE(r);
  EXPECT_EQ(r->exit_code, 3);
  EXPECT_FALSE(r->timed_out);
  EXPECT_NE(r->output.find("out"), std::string::npos);
  EXPECT_NE(r->output.find("err"), std::string::npos);
}

TEST(Process, KillsAtDeadlineIncludingChildren) {
  CommandOptions opt;
  opt.timeout = milliseconds(200);
  const auto start = std::chrono::steady_clock::now();
  // The grandchild keeps the pipe open; the group kill must end it too.
  auto r = RunCommand({"sh", "-c", "sleep 30 & sleep 30"}, opt);
  ASSERT_TRUE(r);
  EXPECT_TRUE(r->timed_out);
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(10));
  const auto st = CheckCommand({"sleep", "5"}, opt);
  EXPECT_EQ(st.error().code(), Errc::kTimeout);
}

TEST(Process, MissingProgramExits127) {
  auto r = RunCommand({"/nonexistent/program"});
  ASSERT_TRUE(r);
  EXPECT_EQ(r->exit_code, 127);
  EXPECT_EQ(CheckCommand({"/nonexistent/program"}).error().code(), Errc::kCommandFailed);
}

TEST(Process, PassesEnvironmentAndCapsOutput) {
  CommandOptions opt;
  opt.env = {"SAG_TEST_VALUE=hello"};
  opt.max_output = 10;
  auto r = RunCommand({"sh", "-c", "echo $SAG_TEST_VALUE; head -c 100000 /dev/zero"}, opt);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->exit_code, 0);
  EXPECT_EQ(r->output.size(), 10U);
  EXPECT_EQ(r->output.substr(0, 5), "hello");
}

// The daemon blocks SIGTERM and SIGINT (it waits for them on a signalfd) and
// may ignore others; a command it starts must get the default mask and
// dispositions, or `timeout` in a health check and an engine started by a
// hook cannot be stopped with SIGTERM. The child reports its own mask.
TEST(Process, ChildStartsWithDefaultSignalMaskAndDispositions) {
  sigset_t block;
  sigset_t old_mask;
  sigemptyset(&block);
  sigaddset(&block, SIGTERM);
  sigaddset(&block, SIGINT);
  ASSERT_EQ(pthread_sigmask(SIG_BLOCK, &block, &old_mask), 0);
  struct sigaction ignore {};
  struct sigaction old_hup {};
  ignore.sa_handler = SIG_IGN;
  ASSERT_EQ(sigaction(SIGHUP, &ignore, &old_hup), 0);

  auto r = RunCommand({"grep", "-E", "^Sig(Blk|Ign):", "/proc/self/status"});

  ASSERT_EQ(sigaction(SIGHUP, &old_hup, nullptr), 0);
  ASSERT_EQ(pthread_sigmask(SIG_SETMASK, &old_mask, nullptr), 0);
  ASSERT_TRUE(r) << r.error().ToString();
  ASSERT_EQ(r->exit_code, 0) << r->output;
  EXPECT_NE(r->output.find("SigBlk:\t0000000000000000\n"), std::string::npos) << r->output;
  EXPECT_NE(r->output.find("SigIgn:\t0000000000000000\n"), std::string::npos) << r->output;
}

// A hook must not inherit the daemon's descriptors (its channel socket, the
// slot): an engine the hook starts would keep them open after the daemon.
TEST(Process, ChildInheritsOnlyStandardDescriptors) {
  const int fd = ::open("/dev/null", O_RDONLY);  // not close-on-exec
  ASSERT_GE(fd, 3);
  auto r = RunCommand({"sh", "-c", "ls /proc/$$/fd"});
  ::close(fd);
  ASSERT_TRUE(r);
  ASSERT_EQ(r->exit_code, 0) << r->output;
  EXPECT_EQ(r->output, "0\n1\n2\n");
}

TEST(Process, EmptyArgvIsAnError) { EXPECT_FALSE(RunCommand({})); }

}  // namespace
}  // namespace sag
