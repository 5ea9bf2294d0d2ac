#include "common/process.h"

#include <gtest/gtest.h>

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

TEST(Process, EmptyArgvIsAnError) { EXPECT_FALSE(RunCommand({})); }

}  // namespace
}  // namespace sag
