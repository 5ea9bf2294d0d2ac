#include "cloud/rpc/rpc_config.h"

#include <gtest/gtest.h>

namespace sag::cloud::rpc {
namespace {

TEST(ApiConfig, ReadsEverySection) {
  const auto c = ParseApiConfig(R"(
api:
  listen: "[::1]:9443"
  host_id: smartag.example
  time_window_s: 60
  state_staleness_s: 30
  rate_per_second: 5
  rate_burst: 10
  max_body_bytes: 4096
access_keys:
  - {id: a, secret: s, account: "1", read_only: true}
instances:
  - smartag_id: sag-1
    account: "1"
    status: Init
    end_time: 2030-01-01T00:00:00Z
    devices:
      - {serial_number: sn1, software_version: 1.0.0, online: true, ha_state: active}
catalog:
  - {type: Dpi, version_code: 20210101_1_0-0.0.2, hardware_models: [sag-1000]}
store: /var/lib/sag-cloud/store.db
gateway:
  listen: 127.0.0.1:9444
  cert_chain: pki/server-chain.pem
  key: pki/server.key
  device_ca: pki/root-ca.pem
  heartbeat_s: 15
repository:
  dir: images
  root_ca: pki/root-ca.pem
  listen: "[::1]:9445"
  cert_chain: pki/server-chain.pem
  key: pki/server.key
  job_deadline_s: 600
)",
                                "cloud.yaml");
  ASSERT_TRUE(c) << c.error().ToString();
  EXPECT_EQ(c->listen_address, "::1");
  EXPECT_EQ(c->listen_port, 9443);
  EXPECT_EQ(c->rpc.host_id, "smartag.example");
  EXPECT_EQ(c->rpc.time_window.count(), 60);
  EXPECT_EQ(c->rpc.actions.state_staleness.count(), 30);
  EXPECT_EQ(c->rpc.rate_per_second, 5);
  EXPECT_EQ(c->max_body_bytes, 4096U);
  ASSERT_EQ(c->rpc.access_keys.size(), 1U);
  EXPECT_TRUE(c->rpc.access_keys[0].read_only);
  ASSERT_EQ(c->instances.size(), 1U);
  EXPECT_EQ(c->instances[0].status, "Init");
  EXPECT_EQ(c->instances[0].region_id, "cn-shanghai");
  EXPECT_EQ(c->instances[0].end_time_ms, 1893456000000);
  ASSERT_EQ(c->instances[0].devices.size(), 1U);
  EXPECT_TRUE(c->instances[0].devices[0].online);
  ASSERT_EQ(c->catalog.size(), 1U);
  EXPECT_EQ(c->catalog[0].type, VersionType::kDpi);
  EXPECT_EQ(c->catalog[0].release_type, "release");
  ASSERT_TRUE(c->gateway);
  EXPECT_EQ(c->gateway->listen_port, 9444);
  EXPECT_EQ(c->gateway->heartbeat.count(), 15);
  EXPECT_EQ(c->gateway->device_ca, "pki/root-ca.pem");
  ASSERT_TRUE(c->repository);
  EXPECT_EQ(c->repository->listen_address, "::1");
  EXPECT_EQ(c->repository->base_url, "https://[::1]:9445");  // from listen
  EXPECT_TRUE(c->repository->client_ca.empty());
  EXPECT_EQ(c->repository->job_deadline.count(), 600);
  EXPECT_EQ(c->store, "/var/lib/sag-cloud/store.db");
}

TEST(ApiConfig, TheRealPartsGoTogether) {
  const std::string gateway = "gateway:\n  cert_chain: c.pem\n  key: k.pem\n  device_ca: ca.pem\n";
  const std::string repository =
      "repository:\n  dir: images\n  root_ca: ca.pem\n  cert_chain: "
      "c.pem\n  key: k.pem\n";
  auto only_gateway = ParseApiConfig(gateway, "cloud.yaml");
  ASSERT_FALSE(only_gateway);
  EXPECT_NE(only_gateway.error().message().find("go together"), std::string::npos);
  auto both = ParseApiConfig(gateway + repository + "  base_url: http://plain/\n", "cloud.yaml");
  ASSERT_FALSE(both);
  EXPECT_NE(both.error().message().find("https://"), std::string::npos);
  auto missing = ParseApiConfig("gateway:\n  key: k.pem\n" + repository, "cloud.yaml");
  ASSERT_FALSE(missing);
  EXPECT_EQ(missing.error().code(), Errc::kConfigMissingKey);
  auto ok = ParseApiConfig(gateway + repository + "  base_url: https://repo.example:8443//\n",
                           "cloud.yaml");
  ASSERT_TRUE(ok) << ok.error().ToString();
  EXPECT_EQ(ok->repository->base_url, "https://repo.example:8443");
}

TEST(ApiConfig, ErrorsNameTheLine) {
  const struct {
    const char* yaml;
    Errc code;
    const char* where;
  } cases[] = {
      {"api:\n  listen: 1.2.3.4:8080\n  bogus: 1\n", Errc::kConfigUnknownKey, "cloud.yaml:3:3:"},
      {"api:\n  listen: nowhere\n", Errc::kConfigRange, "cloud.yaml:2:"},
      {"api:\n  time_window_s: -1\n", Errc::kConfigRange, "cloud.yaml:2:"},
      {"access_keys:\n  - {id: a, secret: s}\n", Errc::kConfigMissingKey, "cloud.yaml:2:"},
      {"access_keys:\n  - {id: a, secret: s, account: '1'}\n  - {id: a, secret: t, account: '2'}\n",
       Errc::kConfigRange, "cloud.yaml:3:"},
      {"instances:\n  - {smartag_id: s, account: '1', status: Offline}\n", Errc::kConfigRange,
       "cloud.yaml:2:"},
      {"instances:\n  - {smartag_id: s, account: '1', end_time: tomorrow}\n", Errc::kConfigType,
       "cloud.yaml:2:"},
      {"catalog:\n  - {type: Firmware, version_code: '1'}\n", Errc::kConfigRange, "cloud.yaml:2:"},
      {"api: [1, 2\n", Errc::kConfigSyntax, "cloud.yaml:"},
  };
  for (const auto& c : cases) {
    const auto r = ParseApiConfig(c.yaml, "cloud.yaml");
    ASSERT_FALSE(r) << c.yaml;
    EXPECT_EQ(r.error().code(), c.code) << c.yaml << r.error().ToString();
    EXPECT_TRUE(r.error().message().starts_with(c.where)) << r.error().message();
  }
}

}  // namespace
}  // namespace sag::cloud::rpc
