// A MemoryBackend with instances in every interesting state, an RpcService
// over it with a fixed clock, and helpers that sign requests the way the
// SDKs do (rpc/client.h SignRequest).
#pragma once

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "cloud/rpc/client.h"
#include "cloud/rpc/memory_backend.h"
#include "cloud/rpc/rpc_service.h"

namespace sag::cloud::rpc::test {

inline Clock::time_point FixedNow() { return *ParseIsoTimestamp("2026-12-02T05:00:00Z"); }

inline std::int64_t Ms(Clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(t.time_since_epoch()).count();
}

inline DeviceState Box(std::string sn, std::string version, bool online = true) {
  DeviceState d;
  d.serial_number = std::move(sn);
  d.hardware_model = "sag-1000";
  d.software_version = std::move(version);
  d.dpi_signature_db_version = "20201117_1_0-0.0.1";
  d.online = online;
  d.state_reported_at = FixedNow() - std::chrono::seconds(10);
  return d;
}

inline InstanceState Instance(std::string id, std::vector<DeviceState> devices,
                              std::string account = "1001") {
  InstanceState i;
  i.smartag_id = std::move(id);
  i.account = std::move(account);
  i.region_id = "cn-shanghai";
  i.name = "edge " + i.smartag_id;
  i.status = "Active";
  i.instance_type = "sag-1000";
  i.associated_ccn_id = "ccn-abc";
  i.associated_ccn_name = "office";
  i.city = "Shanghai";
  i.max_bandwidth = "50 M";
  i.create_time_ms = Ms(FixedNow() - std::chrono::hours(24 * 30));
  i.end_time_ms = Ms(FixedNow() + std::chrono::hours(24 * 300));
  i.devices = std::move(devices);
  return i;
}

class RpcFixture : public ::testing::Test {
 protected:
  RpcFixture() : service_(Config(), backend_, [this] { return now_; }) {
    backend_.PutInstance(Instance("sag-active", {Box("sag1a", "2.0.0")}));
    {
      auto ha = Instance("sag-ha", {Box("sag2a", "2.0.0"), Box("sag2b", "2.0.0")});
      ha.devices[0].ha_state = "active";
      ha.devices[1].ha_state = "standby";
      backend_.PutInstance(ha);
    }
    for (const char* v : {"2.0.0", "2.3.1.1", "3.0.0"}) {
      backend_.AddCatalogEntry({VersionType::kDevice,
                                v,
                                std::string("sag-os-") + v,
                                "release",
                                Ms(FixedNow() - std::chrono::hours(48)),
                                {"sag-1000"}});
    }
    backend_.AddCatalogEntry(
        {VersionType::kDevice, "9.9.9", "sag-os-100wm", "beta", 0, {"sag-100wm"}});
    backend_.AddCatalogEntry(
        {VersionType::kDpi, "20210101_1_0-0.0.2", "dpi-2021", "release", Ms(FixedNow()), {}});
  }

  static RpcConfig Config() {
    RpcConfig c;
    c.access_keys = {{"testid", "testsecret", "1001", false},
                     {"readonly", "rosecret", "1001", true},
                     {"otherid", "othersecret", "2002", false}};
    c.host_id = "smartag.test";
    return c;
  }

  SignOptions Options(SignatureScheme scheme, std::string method = "POST",
                      std::string format = "JSON") const {
    SignOptions o;
    o.host = "smartag.test";
    o.access_key_id = "testid";
    o.access_key_secret = "testsecret";
    o.scheme = scheme;
    o.method = std::move(method);
    o.format = std::move(format);
    return o;
  }

  HttpResponse Call(const SignOptions& o, const std::string& action, const ParamList& params,
                    std::string nonce = {}) {
    return service_.Handle(SignRequest(o, action, params, now_, std::move(nonce)));
  }

  static nlohmann::json Json(const HttpResponse& r) {
    auto j = nlohmann::json::parse(r.body, nullptr, false);
    EXPECT_FALSE(j.is_discarded()) << r.body;
    return j;
  }

  // The Code of an error body ("" for a success), checking the error shape.
  static std::string CodeOf(const HttpResponse& r) {
    const auto j = Json(r);
    if (!j.contains("Code")) {
      EXPECT_EQ(r.status, 200) << r.body;
      return "";
    }
    EXPECT_GE(r.status, 400) << r.body;
    for (const char* k : {"RequestId", "HostId", "Message", "Recommend"}) {
      EXPECT_TRUE(j.contains(k)) << k << " missing in " << r.body;
    }
    return j["Code"].get<std::string>();
  }

  Clock::time_point now_ = FixedNow();
  MemoryBackend backend_;
  RpcService service_;
};

}  // namespace sag::cloud::rpc::test
