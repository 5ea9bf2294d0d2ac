// The control-channel reachability check of a trial boot, against the test
// HTTPS server on loopback.
#include "common/net/probe.h"

#include <gtest/gtest.h>

#include "tests/support/temp_dir.h"
#include "tests/support/test_http_server.h"

namespace sag::net {
namespace {

using std::chrono::milliseconds;
using test::TestHttpServer;

class ProbeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto pki = test::MakeTestPki(dir_.path());
    ASSERT_TRUE(pki) << pki.error().ToString();
    pki_ = *pki;
  }
  // The device's side: the pinned CA and its client certificate.
  [[nodiscard]] DownloadOptions Device() const {
    DownloadOptions o;
    o.ca_file = pki_.ca_cert;
    o.client_cert = pki_.client_cert;
    o.client_key = pki_.client_key;
    return o;
  }
  // A server that, like the control channel, requires a device certificate.
  [[nodiscard]] test::ServerTls Channel() const {
    return {pki_.server_cert, pki_.server_key, pki_.ca_cert};
  }
  static std::string Wss(const TestHttpServer& s) {
    return "wss://127.0.0.1:" + std::to_string(s.port()) + "/device/v1";
  }

  test::TempDir dir_;
  test::TestPki pki_;
};

TEST_F(ProbeTest, MutuallyAuthenticatedEndpointIsReachable) {
  TestHttpServer server("hello", Channel());
  EXPECT_TRUE(ProbeEndpoint(Wss(server), Device(), milliseconds(5000)));
  EXPECT_EQ(server.requests(), 1);
}

TEST_F(ProbeTest, AnyHttpAnswerCountsAsReachable) {
  // The channel endpoint refuses a plain GET (it wants a WebSocket upgrade):
  // it is still up and it is the right server.
  TestHttpServer server("", Channel());
  server.SetFaults({.fail_status = 426, .fail_times = -1});
  EXPECT_TRUE(ProbeEndpoint(Wss(server), Device(), milliseconds(5000)));
  server.SetFaults({.fail_status = 503, .fail_times = -1});
  EXPECT_TRUE(ProbeEndpoint(Wss(server), Device(), milliseconds(5000)));
  // A long body is not read to its end.
  TestHttpServer big(std::string(10U << 20U, 'x'), Channel());
  EXPECT_TRUE(ProbeEndpoint(Wss(big), Device(), milliseconds(5000)));
}

TEST_F(ProbeTest, NothingListeningFailsAfterTheDeadlineNamingTheEndpoint) {
  std::uint16_t port = 0;
  {
    TestHttpServer gone("", Channel());
    port = gone.port();
  }
  const std::string endpoint = "wss://127.0.0.1:" + std::to_string(port) + "/device/v1";
  const auto start = std::chrono::steady_clock::now();
  auto st = ProbeEndpoint(endpoint, Device(), milliseconds(2500));
  const auto took = std::chrono::steady_clock::now() - start;
  ASSERT_FALSE(st);
  EXPECT_EQ(st.error().code(), Errc::kHealthCheckFailed);
  EXPECT_NE(st.error().message().find("control channel " + endpoint + " not reachable within 2 s"),
            std::string::npos)
      << st.error().message();
  EXPECT_NE(st.error().message().find("NetConnect"), std::string::npos) << st.error().message();
  // It kept trying for about the deadline, and not for much longer.
  EXPECT_GE(took, milliseconds(1500));
  EXPECT_LT(took, milliseconds(20000));
}

TEST_F(ProbeTest, WrongServerOrNoDeviceCertificateIsNotReachable) {
  TestHttpServer rogue(
      "", test::ServerTls{pki_.rogue_server_cert, pki_.rogue_server_key, pki_.ca_cert});
  auto st = ProbeEndpoint(Wss(rogue), Device(), milliseconds(1200));
  ASSERT_FALSE(st);
  EXPECT_EQ(st.error().code(), Errc::kHealthCheckFailed);
  EXPECT_NE(st.error().message().find("NetTls"), std::string::npos) << st.error().message();

  TestHttpServer channel("", Channel());
  DownloadOptions anonymous = Device();
  anonymous.client_cert.clear();
  anonymous.client_key.clear();
  st = ProbeEndpoint(Wss(channel), anonymous, milliseconds(1200));
  ASSERT_FALSE(st);
  EXPECT_EQ(st.error().code(), Errc::kHealthCheckFailed);
  EXPECT_EQ(channel.requests(), 0);
}

TEST_F(ProbeTest, ConfigurationErrorsFailAtOnce) {
  // ws:// with a pinned CA would send the device's traffic in clear text.
  const auto start = std::chrono::steady_clock::now();
  auto st = ProbeEndpoint("ws://127.0.0.1:1/device/v1", Device(), milliseconds(10000));
  ASSERT_FALSE(st);
  EXPECT_EQ(st.error().code(), Errc::kHealthCheckFailed);
  EXPECT_NE(st.error().message().find("InvalidArgument"), std::string::npos)
      << st.error().message();
  EXPECT_LT(std::chrono::steady_clock::now() - start, milliseconds(5000));
}

// health.require_cloud without cloud.endpoint: the message says what is
// missing, not that an empty URL was "not reachable within 120 s".
TEST_F(ProbeTest, NoEndpointSaysSoInsteadOfNotReachable) {
  auto st = ProbeEndpoint("", Device(), milliseconds(120'000));
  ASSERT_FALSE(st);
  EXPECT_EQ(st.error().code(), Errc::kHealthCheckFailed);
  EXPECT_EQ(st.error().message().find("not reachable"), std::string::npos) << st.error().message();
  EXPECT_NE(st.error().message().find("cloud.endpoint"), std::string::npos) << st.error().message();
}

}  // namespace
}  // namespace sag::net
