// The gate of the trial boot's health.require_cloud check: it opens on the
// cloud's answer to hello and on nothing else, says why when it does not,
// and lets a stopping agent go without a verdict.
#include "agent/hello_gate.h"

#include <gtest/gtest.h>

#include <chrono>
#include <thread>

namespace sag::agent {
namespace {

using std::chrono::milliseconds;

constexpr const char* kEndpoint = "wss://gw.example:8444/device/v1";

TEST(HelloGate, WithoutAChannelTheCheckFailsAtOnce) {
  HelloGate gate(kEndpoint);
  auto st = gate.Wait(milliseconds(3'600'000));  // not waited for: nothing could answer
  ASSERT_FALSE(st);
  EXPECT_EQ(st.error().code(), Errc::kHealthCheckFailed);
  EXPECT_NE(st.error().message().find(kEndpoint), std::string::npos) << st.error().message();
  EXPECT_NE(st.error().message().find("no channel runs"), std::string::npos);
}

TEST(HelloGate, TheAnsweredHelloPassesAWaitingCheck) {
  HelloGate gate(kEndpoint);
  gate.Expect();
  EXPECT_FALSE(gate.answered());
  std::thread channel([&] {
    gate.Failed(Error(Errc::kNetConnect, "connection refused"));
    gate.Answered();
  });
  auto st = gate.Wait(milliseconds(60'000));  // returns when answered
  channel.join();
  EXPECT_TRUE(st) << st.error().ToString();
  EXPECT_TRUE(gate.answered());
}

TEST(HelloGate, AnAnsweredHelloStaysAnsweredAfterTheChannelDrops) {
  HelloGate gate(kEndpoint);
  gate.Expect();
  gate.Answered();
  gate.Failed(Error(Errc::kChannelClosed, "the channel broke"));
  gate.Abandon(Error(Errc::kCancelled, "the agent is stopping"));
  EXPECT_TRUE(gate.Wait(milliseconds(0)));
}

TEST(HelloGate, NoAnswerWithinTheTimeoutFailsWithTheEndpointAndTheLastError) {
  HelloGate gate(kEndpoint);
  gate.Expect();
  auto st = gate.Wait(milliseconds(20));
  ASSERT_FALSE(st);
  EXPECT_EQ(st.error().code(), Errc::kHealthCheckFailed);
  EXPECT_NE(st.error().message().find("still being made"), std::string::npos)
      << st.error().message();
  gate.Failed(Error(Errc::kChannelTimeout, "connecting to the gateway: no answer within 300 ms"));
  st = gate.Wait(milliseconds(1000));
  ASSERT_FALSE(st);
  EXPECT_EQ(st.error().code(), Errc::kHealthCheckFailed);
  const std::string& m = st.error().message();
  EXPECT_NE(m.find(kEndpoint), std::string::npos) << m;
  EXPECT_NE(m.find("did not answer hello within 1 s (health.cloud_timeout_s)"), std::string::npos)
      << m;
  EXPECT_NE(m.find("ChannelTimeout: connecting to the gateway: no answer"), std::string::npos) << m;
  EXPECT_FALSE(gate.answered());
}

TEST(HelloGate, AStoppingAgentEndsTheWaitWithoutAVerdict) {
  HelloGate gate(kEndpoint);
  gate.Expect();
  std::thread stop([&] { gate.Abandon(Error(Errc::kCancelled, "the agent is stopping")); });
  auto st = gate.Wait(milliseconds(60'000));  // returns when abandoned
  stop.join();
  ASSERT_FALSE(st);
  EXPECT_EQ(st.error().code(), Errc::kCancelled);  // the installer keeps the job HealthChecking
  gate.Answered();                                 // too late: the agent stopped waiting
  EXPECT_EQ(gate.Wait(milliseconds(0)).error().code(), Errc::kCancelled);
}

TEST(HelloGate, AChannelThatCannotStartFailsTheCheckWithItsReason) {
  HelloGate gate(kEndpoint);
  gate.Expect();
  gate.Abandon(Error(Errc::kNetTls, "device key unreadable"));
  auto st = gate.Wait(milliseconds(60'000));
  ASSERT_FALSE(st);
  EXPECT_EQ(st.error().code(), Errc::kHealthCheckFailed);
  EXPECT_NE(st.error().message().find("device key unreadable"), std::string::npos);
}

}  // namespace
}  // namespace sag::agent
