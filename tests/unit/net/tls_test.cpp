// The shared TLS set-up: what loads, and what it refuses with which message.
#include "common/net/tls.h"

#include <gtest/gtest.h>

#include "tests/support/temp_dir.h"
#include "tests/support/test_http_server.h"

namespace sag::net {
namespace {

class Tls : public ::testing::Test {
 protected:
  void SetUp() override {
    auto pki = test::MakeTestPki(dir_.path());
    ASSERT_TRUE(pki) << pki.error().ToString();
    pki_ = *pki;
  }
  test::TempDir dir_;
  test::TestPki pki_;
};

TEST_F(Tls, ClientAndServerContextsLoad) {
  EXPECT_TRUE(MakeTlsClientContext({pki_.ca_cert, {}, {}}));
  EXPECT_TRUE(MakeTlsClientContext({pki_.ca_cert, pki_.client_cert, pki_.client_key}));
  EXPECT_TRUE(MakeTlsServerContext({pki_.server_cert, pki_.server_key, {}}));
  EXPECT_TRUE(MakeTlsServerContext({pki_.server_cert, pki_.server_key, pki_.ca_cert}));
}

TEST_F(Tls, RefusalsSayWhatToFix) {
  auto no_ca = MakeTlsClientContext({dir_ / "missing.pem", {}, {}});
  ASSERT_FALSE(no_ca);
  EXPECT_EQ(no_ca.error().code(), Errc::kNetTls);
  EXPECT_NE(no_ca.error().message().find("cannot load the pinned CA"), std::string::npos);

  auto half = MakeTlsClientContext({pki_.ca_cert, pki_.client_cert, {}});
  ASSERT_FALSE(half);
  EXPECT_EQ(half.error().code(), Errc::kInvalidArgument);

  auto mismatch = MakeTlsClientContext({pki_.ca_cert, pki_.client_cert, pki_.server_key});
  ASSERT_FALSE(mismatch);
  EXPECT_EQ(mismatch.error().code(), Errc::kNetTls);
  // OpenSSL refuses a key that is not the certificate's as it loads it.
  EXPECT_NE(mismatch.error().message().find("cannot load the device certificate"),
            std::string::npos)
      << mismatch.error().message();

  auto server = MakeTlsServerContext({pki_.server_cert, pki_.client_key, {}});
  ASSERT_FALSE(server);
  EXPECT_NE(server.error().message().find("cannot load the server certificate"), std::string::npos)
      << server.error().message();

  auto client_ca = MakeTlsServerContext({pki_.server_cert, pki_.server_key, dir_ / "none.pem"});
  ASSERT_FALSE(client_ca);
  EXPECT_NE(client_ca.error().message().find("cannot load the client CA"), std::string::npos);
}

}  // namespace
}  // namespace sag::net
