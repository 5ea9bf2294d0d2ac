// The Smartag actions through the whole RPC front, against a backend that
// keeps real state: every documented error of UpdateSmartAccessGatewayVersion
// reached through that state, in JSON and in XML, and the Describe bodies.
#include <gtest/gtest.h>

#include "tests/unit/cloud/rpc_fixture.h"

namespace sag::cloud::rpc::test {
namespace {

constexpr const char* kUpdate = "UpdateSmartAccessGatewayVersion";

class UpdateVersion : public RpcFixture {
 protected:
  // Calls UpdateSmartAccessGatewayVersion in JSON and in XML (two calls,
  // each with its own nonce) and checks that both answer the same
  // status and code; returns the code ("" for success).
  std::string Update(const ParamList& params, const char* key = "testid",
                     const char* secret = "testsecret") {
    std::string code;
    for (const char* format : {"JSON", "XML"}) {
      auto o = Options(SignatureScheme::kAcs3, "POST", format);
      o.access_key_id = key;
      o.access_key_secret = secret;
      const auto r = Call(o, kUpdate, params);
      if (std::string(format) == "JSON") {
        code = CodeOf(r);
        json_status_ = r.status;
      } else {
        EXPECT_EQ(r.status, json_status_) << r.body;
        if (code.empty()) {
          EXPECT_NE(r.body.find("<UpdateSmartAccessGatewayVersionResponse><RequestId>"),
                    std::string::npos)
              << r.body;
        } else {
          EXPECT_NE(r.body.find("<Code>" + code + "</Code>"), std::string::npos) << r.body;
        }
      }
    }
    return code;
  }

  static ParamList Params(std::string id, std::string version, std::string type = "",
                          std::string serial = "") {
    ParamList p{{"RegionId", "cn-shanghai"},
                {"SmartAGId", std::move(id)},
                {"VersionCode", std::move(version)}};
    if (!type.empty()) p.emplace_back("VersionType", std::move(type));
    if (!serial.empty()) p.emplace_back("SerialNumber", std::move(serial));
    return p;
  }

  void Mutate(const std::string& id, const std::function<void(InstanceState&)>& change) {
    auto inst = *backend_.FindInstance(id);
    change(inst);
    backend_.PutInstance(inst);
  }

  int json_status_ = 0;
};

TEST_F(UpdateVersion, SucceedsAndDispatchesWithoutChangingTheReportedVersion) {
  EXPECT_EQ(Update(Params("sag-active", "2.3.1.1")), "");
  EXPECT_EQ(json_status_, 200);
  const auto orders = backend_.Orders();
  ASSERT_EQ(orders.size(), 2U);  // the JSON and the XML call
  EXPECT_EQ(orders[0].smartag_id, "sag-active");
  EXPECT_EQ(orders[0].serial_number, "sag1a");
  EXPECT_EQ(orders[0].version_code, "2.3.1.1");
  EXPECT_EQ(orders[0].type, VersionType::kDevice);
  EXPECT_EQ(orders[0].request_id.size(), 36U);

  const auto describe = [&] {
    return Json(Call(Options(SignatureScheme::kV1, "GET"), "DescribeSmartAccessGatewayAttribute",
                     {{"RegionId", "cn-shanghai"}, {"SmartAGId", "sag-active"}}));
  };
  // Dispatched is not done: the version is the old one until the device reports.
  EXPECT_EQ(describe()["Devices"]["Device"][0]["SoftwareVersion"], "2.0.0");
  ASSERT_TRUE(backend_.ReportVersion("sag1a", VersionType::kDevice, "2.3.1.1"));
  EXPECT_EQ(describe()["Devices"]["Device"][0]["SoftwareVersion"], "2.3.1.1");
  // Now the same target is not newer any more.
  EXPECT_EQ(Update(Params("sag-active", "2.3.1.1")), "VersionTooOld");
}

TEST_F(UpdateVersion, DpiUsesTheDpiVersionAndCatalog) {
  EXPECT_EQ(Update(Params("sag-active", "20210101_1_0-0.0.2", "Dpi")), "");
  EXPECT_EQ(backend_.Orders().at(0).type, VersionType::kDpi);
  // A device version is not in the DPI catalog.
  EXPECT_EQ(Update(Params("sag-active", "2.3.1.1", "Dpi")), "VersionNotExist");
  EXPECT_EQ(Update(Params("sag-active", "2.3.1.1", "Firmware")), "InvalidParameter");
}

TEST_F(UpdateVersion, MissingParameters) {
  for (const char* drop : {"RegionId", "SmartAGId", "VersionCode"}) {
    auto p = Params("sag-active", "2.3.1.1");
    std::erase_if(p, [&](const auto& kv) { return kv.first == drop; });
    EXPECT_EQ(Update(p), "MissingParameter") << drop;
    EXPECT_EQ(json_status_, 400);
  }
}

TEST_F(UpdateVersion, Forbidden_AReadOnlyKey) {
  EXPECT_EQ(Update(Params("sag-active", "2.3.1.1"), "readonly", "rosecret"), "Forbidden");
  EXPECT_EQ(json_status_, 403);
  EXPECT_TRUE(backend_.Orders().empty());
}

TEST_F(UpdateVersion, InvalidIdSmartag_UnknownOrInAnotherRegion) {
  EXPECT_EQ(Update(Params("sag-nope", "2.3.1.1")), "InvalidId.SMARTAG");
  EXPECT_EQ(json_status_, 403);
  auto p = Params("sag-active", "2.3.1.1");
  p[0].second = "cn-hangzhou";
  EXPECT_EQ(Update(p), "InvalidId.SMARTAG");
}

TEST_F(UpdateVersion, PermissionError_AnotherAccountsInstance) {
  EXPECT_EQ(Update(Params("sag-active", "2.3.1.1"), "otherid", "othersecret"), "PermissionError");
  EXPECT_EQ(json_status_, 500);
}

TEST_F(UpdateVersion, NotActivated) {
  for (const char* status : {"Ordered", "Delivered", "Received", "Unconfirmed", "Init"}) {
    Mutate("sag-active", [&](InstanceState& i) { i.status = status; });
    EXPECT_EQ(Update(Params("sag-active", "2.3.1.1")), "SmartAccessGatewayNotActivated") << status;
    EXPECT_EQ(json_status_, 500);
  }
}

TEST_F(UpdateVersion, InArrears_EndTimePassedOrArrearage) {
  Mutate("sag-active", [&](InstanceState& i) { i.end_time_ms = Ms(FixedNow()) - 1; });
  EXPECT_EQ(Update(Params("sag-active", "2.3.1.1")), "SmartAccessGatewayInArrears");
  EXPECT_EQ(json_status_, 500);
  Mutate("sag-active", [&](InstanceState& i) {
    i.end_time_ms = Ms(FixedNow()) + 1000;
    i.status = "Arrearage";
  });
  EXPECT_EQ(Update(Params("sag-active", "2.3.1.1")), "SmartAccessGatewayInArrears");
}

TEST_F(UpdateVersion, NotBoundCcn) {
  Mutate("sag-active", [&](InstanceState& i) { i.associated_ccn_id.clear(); });
  EXPECT_EQ(Update(Params("sag-active", "2.3.1.1")), "NotBoundCCN");
  EXPECT_EQ(json_status_, 403);
}

TEST_F(UpdateVersion, NotOnline) {
  ASSERT_TRUE(backend_.SetOnline("sag1a", false, FixedNow()));
  EXPECT_EQ(Update(Params("sag-active", "2.3.1.1")), "SmartAccessGatewayNotOnline");
  EXPECT_EQ(json_status_, 403);
  // The channel dropping between the check and the dispatch.
  ASSERT_TRUE(backend_.SetOnline("sag1a", true, FixedNow()));
  backend_.FailNextDispatch(DispatchResult::kOffline);
  auto o = Options(SignatureScheme::kAcs3);
  EXPECT_EQ(CodeOf(Call(o, kUpdate, Params("sag-active", "2.3.1.1"))),
            "SmartAccessGatewayNotOnline");
}

TEST_F(UpdateVersion, StateError_NeverOrLongAgo) {
  Mutate("sag-active", [&](InstanceState& i) { i.devices[0].state_reported_at.reset(); });
  EXPECT_EQ(Update(Params("sag-active", "2.3.1.1")), "GetSmartAccessGatewayStateError");
  EXPECT_EQ(json_status_, 403);
  Mutate("sag-active", [&](InstanceState& i) {
    i.devices[0].state_reported_at = FixedNow() - std::chrono::seconds(301);
  });
  EXPECT_EQ(Update(Params("sag-active", "2.3.1.1")), "GetSmartAccessGatewayStateError");
  Mutate("sag-active", [&](InstanceState& i) {
    i.devices[0].state_reported_at = FixedNow() - std::chrono::seconds(299);
  });
  EXPECT_EQ(Update(Params("sag-active", "2.3.1.1")), "");
}

TEST_F(UpdateVersion, VersionError_NeverReportedOrUnparsable) {
  Mutate("sag-active", [&](InstanceState& i) { i.devices[0].software_version.clear(); });
  EXPECT_EQ(Update(Params("sag-active", "2.3.1.1")), "GetSmartAccessGatewayVersionError");
  EXPECT_EQ(json_status_, 403);
  Mutate("sag-active", [&](InstanceState& i) { i.devices[0].software_version = "garbage"; });
  EXPECT_EQ(Update(Params("sag-active", "2.3.1.1")), "GetSmartAccessGatewayVersionError");
  // The DPI version is separate from the device version: unparsable is an
  // error; none reported means no database yet, and any version installs.
  Mutate("sag-active", [&](InstanceState& i) {
    i.devices[0].software_version = "2.0.0";
    i.devices[0].dpi_signature_db_version = "garbage";
  });
  EXPECT_EQ(Update(Params("sag-active", "20210101_1_0-0.0.2", "Dpi")),
            "GetSmartAccessGatewayVersionError");
  EXPECT_EQ(Update(Params("sag-active", "2.3.1.1")), "");
  Mutate("sag-active", [&](InstanceState& i) { i.devices[0].dpi_signature_db_version.clear(); });
  EXPECT_EQ(Update(Params("sag-active", "20210101_1_0-0.0.2", "Dpi")), "");
}

TEST_F(UpdateVersion, VersionNotExist_NotInCatalogOrNotForThisModel) {
  EXPECT_EQ(Update(Params("sag-active", "2.9.9")), "VersionNotExist");
  EXPECT_EQ(json_status_, 400);
  EXPECT_EQ(Update(Params("sag-active", "9.9.9")), "VersionNotExist");  // sag-100wm only
}

TEST_F(UpdateVersion, VersionTooOld_SameOrOlder) {
  EXPECT_EQ(Update(Params("sag-active", "2.0.0")), "VersionTooOld");
  EXPECT_EQ(json_status_, 403);
  Mutate("sag-active", [&](InstanceState& i) { i.devices[0].software_version = "3.0.0"; });
  EXPECT_EQ(Update(Params("sag-active", "2.3.1.1")), "VersionTooOld");
}

TEST_F(UpdateVersion, IncorrectStatus_WhenTheDeviceIsBusy) {
  backend_.FailNextDispatch(DispatchResult::kBusy);
  EXPECT_EQ(CodeOf(Call(Options(SignatureScheme::kV1), kUpdate, Params("sag-active", "2.3.1.1"))),
            "IncorrectStatus");
  backend_.FailNextDispatch(DispatchResult::kFailed);
  const auto r = Call(Options(SignatureScheme::kV1), kUpdate, Params("sag-active", "2.3.1.1"));
  EXPECT_EQ(CodeOf(r), "InternalError");
  EXPECT_EQ(r.status, 500);
}

TEST_F(UpdateVersion, HaWithoutSerialNumberUpgradesBothBoxes) {
  EXPECT_EQ(CodeOf(Call(Options(SignatureScheme::kAcs3), kUpdate, Params("sag-ha", "2.3.1.1"))),
            "");
  const auto orders = backend_.Orders();
  ASSERT_EQ(orders.size(), 2U);
  EXPECT_EQ(orders[0].serial_number, "sag2a");
  EXPECT_EQ(orders[1].serial_number, "sag2b");
}

TEST_F(UpdateVersion, HaCallRefusedByTheGatewayLeavesNoOrder) {
  // All or nothing: the backend refusing the call (one box busy) leaves
  // neither box's job behind.
  backend_.FailNextDispatch(DispatchResult::kBusy);
  EXPECT_EQ(CodeOf(Call(Options(SignatureScheme::kAcs3), kUpdate, Params("sag-ha", "2.3.1.1"))),
            "IncorrectStatus");
  EXPECT_TRUE(backend_.Orders().empty());
}

TEST_F(UpdateVersion, HaSerialNumberPicksOneBox) {
  // The standby is offline: upgrading the active box alone works, both does not.
  ASSERT_TRUE(backend_.SetOnline("sag2b", false, FixedNow()));
  EXPECT_EQ(Update(Params("sag-ha", "2.3.1.1", "", "sag2b")), "SmartAccessGatewayNotOnline");
  EXPECT_EQ(Update(Params("sag-ha", "2.3.1.1")), "SmartAccessGatewayNotOnline");
  EXPECT_EQ(Update(Params("sag-ha", "2.3.1.1", "", "sag2a")), "");
  for (const auto& o : backend_.Orders()) EXPECT_EQ(o.serial_number, "sag2a");
  EXPECT_EQ(Update(Params("sag-ha", "2.3.1.1", "", "sag9z")), "InvalidId.SN");
  EXPECT_EQ(json_status_, 400);
}

// ---- the Describe actions ----

TEST_F(RpcFixture, DescribeSmartAccessGatewaysListsTheCallersInstances) {
  backend_.PutInstance(Instance("sag-foreign", {Box("sag9a", "2.0.0")}, "2002"));
  ASSERT_TRUE(backend_.SetOnline("sag1a", false, FixedNow()));
  const auto r = Call(Options(SignatureScheme::kAcs3), "DescribeSmartAccessGateways",
                      {{"RegionId", "cn-shanghai"}, {"PageSize", "1"}});
  ASSERT_EQ(r.status, 200) << r.body;
  const auto j = nlohmann::ordered_json::parse(r.body);
  EXPECT_EQ(j["TotalCount"], 2);
  EXPECT_EQ(j["PageNumber"], 1);
  EXPECT_EQ(j["PageSize"], 1);
  const auto& list = j["SmartAccessGateways"]["SmartAccessGateway"];
  ASSERT_EQ(list.size(), 1U);
  EXPECT_EQ(list[0]["SmartAGId"], "sag-active");
  EXPECT_EQ(list[0]["Status"], "Offline");  // Active, but its box's channel is down
  EXPECT_EQ(list[0]["SerialNumber"], "sag1a");
  EXPECT_EQ(list[0]["SoftwareVersion"], "2.0.0");
  EXPECT_EQ(list[0]["HardwareVersion"], "sag-1000");
  EXPECT_EQ(list[0]["AssociatedCcnId"], "ccn-abc");
  EXPECT_TRUE(list[0]["CreateTime"].is_number_integer());
  EXPECT_TRUE(list[0]["EndTime"].is_number_integer());
  EXPECT_TRUE(list[0]["MaxBandwidth"].is_string());

  const auto page2 = Json(Call(Options(SignatureScheme::kAcs3), "DescribeSmartAccessGateways",
                               {{"PageSize", "1"}, {"PageNumber", "2"}}));
  EXPECT_EQ(page2["SmartAccessGateways"]["SmartAccessGateway"][0]["SmartAGId"], "sag-ha");
  EXPECT_EQ(page2["SmartAccessGateways"]["SmartAccessGateway"][0]["Status"], "Active");
  EXPECT_EQ(page2["SmartAccessGateways"]["SmartAccessGateway"][0]["BackupSoftwareVersion"],
            "2.0.0");
}

TEST_F(RpcFixture, DescribeSmartAccessGatewaysFilters) {
  const auto count = [&](const ParamList& p) {
    const auto r = Call(Options(SignatureScheme::kV1), "DescribeSmartAccessGateways", p);
    return Json(r).value("TotalCount", -1);
  };
  EXPECT_EQ(count({{"SmartAGId", "sag-ha"}}), 1);
  EXPECT_EQ(count({{"SmartAGIds.1", "sag-ha"}, {"SmartAGIds.2", "sag-active"}}), 2);
  EXPECT_EQ(count({{"SerialNumber", "sag2b"}}), 1);
  EXPECT_EQ(count({{"Status", "Offline"}}), 0);
  EXPECT_EQ(count({{"RegionId", "cn-hangzhou"}}), 0);
  ASSERT_TRUE(backend_.ReportVersion("sag1a", VersionType::kDevice, "2.3.1.1"));
  EXPECT_EQ(count({{"SoftwareVersion", "2.3.0"}, {"VersionComparator", "greater"}}), 1);
  EXPECT_EQ(count({{"SoftwareVersion", "2.3.1.1"}, {"VersionComparator", "equals"}}), 1);
  EXPECT_EQ(count({{"SoftwareVersion", "2.3.0"}, {"VersionComparator", "less"}}), 1);
  for (const ParamList& bad : std::vector<ParamList>{{{"PageSize", "51"}},
                                                     {{"PageSize", "0"}},
                                                     {{"PageNumber", "x"}},
                                                     {{"VersionComparator", "about"}}}) {
    const auto r = Call(Options(SignatureScheme::kV1), "DescribeSmartAccessGateways", bad);
    EXPECT_EQ(CodeOf(r), "InvalidParameter") << bad[0].first;
  }
}

// A fleet's list is filtered on what is configured and only the page
// answered is made live: a call costs its page, not the fleet (bench_fleet:
// reading every device for each call took 100 ms a call at 10,000 boxes).
TEST_F(RpcFixture, DescribeSmartAccessGatewaysReadsTheLiveStateOfThePageOnly) {
  for (int n = 0; n < 30; ++n) {
    const std::string id = std::to_string(100 + n);
    backend_.PutInstance(Instance("sag-fleet" + id, {Box("sagf" + id, "2.0." + id)}));
  }
  const auto before = backend_.LiveReads();
  const auto j = Json(Call(Options(SignatureScheme::kAcs3), "DescribeSmartAccessGateways",
                           {{"PageSize", "5"}, {"PageNumber", "2"}}));
  EXPECT_EQ(j["TotalCount"], 32);
  const auto& list = j["SmartAccessGateways"]["SmartAccessGateway"];
  ASSERT_EQ(list.size(), 5U);
  EXPECT_EQ(list[0]["SmartAGId"], "sag-fleet104");   // after sag-active and 100-103
  EXPECT_EQ(list[0]["SoftwareVersion"], "2.0.104");  // live, though listed without
  EXPECT_EQ(backend_.LiveReads() - before, 5U);
  // A filter on live state reads it for the whole list, in one pass.
  const auto v = Json(Call(Options(SignatureScheme::kAcs3), "DescribeSmartAccessGateways",
                           {{"SoftwareVersion", "2.0.120"}, {"VersionComparator", "equals"}}));
  EXPECT_EQ(v["TotalCount"], 1);
  EXPECT_EQ(backend_.LiveReads() - before, 5U);
}

TEST_F(RpcFixture, DescribeSmartAccessGatewayAttributeShowsEachDevice) {
  const auto r = Call(Options(SignatureScheme::kAcs3), "DescribeSmartAccessGatewayAttribute",
                      {{"RegionId", "cn-shanghai"}, {"SmartAGId", "sag-ha"}});
  ASSERT_EQ(r.status, 200) << r.body;
  const auto j = Json(r);
  EXPECT_EQ(j["SmartAGId"], "sag-ha");
  EXPECT_EQ(j["Status"], "Active");
  EXPECT_EQ(j["SerialNumber"], "sag2a,sag2b");
  EXPECT_EQ(j["TrafficMasterSn"], "sag2a");
  const auto& devices = j["Devices"]["Device"];
  ASSERT_EQ(devices.size(), 2U);
  EXPECT_EQ(devices[1]["SerialNumber"], "sag2b");
  EXPECT_EQ(devices[1]["SoftwareVersion"], "2.0.0");
  EXPECT_EQ(devices[1]["DpiSignatureDbVersion"], "20201117_1_0-0.0.1");
  EXPECT_EQ(devices[1]["HaState"], "standby");
  // Another account's instance does not exist for this caller.
  backend_.PutInstance(Instance("sag-foreign", {Box("sag9a", "2.0.0")}, "2002"));
  EXPECT_EQ(CodeOf(Call(Options(SignatureScheme::kAcs3), "DescribeSmartAccessGatewayAttribute",
                        {{"RegionId", "cn-shanghai"}, {"SmartAGId", "sag-foreign"}})),
            "InvalidId.SMARTAG");
  EXPECT_EQ(CodeOf(Call(Options(SignatureScheme::kAcs3), "DescribeSmartAccessGatewayAttribute",
                        {{"RegionId", "cn-shanghai"}})),
            "MissingParameter");
}

TEST_F(RpcFixture, DescribeSmartAccessGatewayVersionsListsTheCatalog) {
  const auto j = Json(Call(Options(SignatureScheme::kAcs3), "DescribeSmartAccessGatewayVersions",
                           {{"RegionId", "cn-shanghai"}, {"SmartAGId", "sag-active"}}));
  const auto& list = j["SmartAGVersions"]["SmartAGVersion"];
  ASSERT_EQ(list.size(), 3U);  // not the sag-100wm image
  EXPECT_EQ(list[1]["VersionCode"], "2.3.1.1");
  EXPECT_EQ(list[1]["VersionName"], "sag-os-2.3.1.1");
  EXPECT_EQ(list[1]["Type"], "release");
  EXPECT_TRUE(list[1]["CreateTime"].is_number_integer());
  const auto dpi = Json(
      Call(Options(SignatureScheme::kAcs3), "DescribeSmartAccessGatewayVersions",
           {{"RegionId", "cn-shanghai"}, {"SmartAGId", "sag-active"}, {"VersionType", "Dpi"}}));
  EXPECT_EQ(dpi["SmartAGVersions"]["SmartAGVersion"].size(), 1U);
  EXPECT_EQ(CodeOf(Call(
                Options(SignatureScheme::kAcs3), "DescribeSmartAccessGatewayVersions",
                {{"RegionId", "cn-shanghai"}, {"SmartAGId", "sag-active"}, {"SmartAGSn", "nope"}})),
            "InvalidId.SN");
}

}  // namespace
}  // namespace sag::cloud::rpc::test
