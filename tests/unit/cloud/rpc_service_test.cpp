// The RPC gateway's behaviour: both signature schemes over GET and POST,
// every refusal with Alibaba Cloud's code and status, and the body shapes.
#include <gtest/gtest.h>

#include "cloud/rpc/signature.h"
#include "cloud/sqlite_store.h"
#include "tests/support/temp_dir.h"
#include "tests/unit/cloud/rpc_fixture.h"

namespace sag::cloud::rpc::test {
namespace {

using std::chrono::minutes;
using std::chrono::seconds;

const ParamList kDescribe{{"RegionId", "cn-shanghai"}};
constexpr const char* kDescribeAction = "DescribeSmartAccessGateways";

void SetHeader(HttpRequest& r, const std::string& name, const std::string& value) {
  for (auto& h : r.headers) {
    if (h.name == name) {
      h.value = value;
      return;
    }
  }
  r.headers.push_back({name, value});
}

void DropHeader(HttpRequest& r, const std::string& name) {
  std::erase_if(r.headers, [&](const HttpHeader& h) { return h.name == name; });
}

struct SchemeCase {
  SignatureScheme scheme;
  const char* method;
};

void PrintTo(const SchemeCase& c, std::ostream* os) {
  *os << (c.scheme == SignatureScheme::kV1 ? "v1 " : "acs3 ") << c.method;
}

class BothSchemes : public RpcFixture, public ::testing::WithParamInterface<SchemeCase> {};

INSTANTIATE_TEST_SUITE_P(Rpc, BothSchemes,
                         ::testing::Values(SchemeCase{SignatureScheme::kV1, "GET"},
                                           SchemeCase{SignatureScheme::kV1, "POST"},
                                           SchemeCase{SignatureScheme::kAcs3, "GET"},
                                           SchemeCase{SignatureScheme::kAcs3, "POST"}),
                         [](const ::testing::TestParamInfo<SchemeCase>& p) {
                           return std::string(p.param.scheme == SignatureScheme::kV1 ? "V1"
                                                                                     : "Acs3") +
                                  p.param.method;
                         });

TEST_P(BothSchemes, ASignedCallSucceeds) {
  const auto r = Call(Options(GetParam().scheme, GetParam().method), kDescribeAction, kDescribe);
  EXPECT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(CodeOf(r), "");
  const auto j = Json(r);
  const auto id = j["RequestId"].get<std::string>();
  EXPECT_EQ(id.size(), 36U);
  EXPECT_EQ(id, [&] {
    std::string up = id;
    for (auto& c : up) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    return up;
  }());
  EXPECT_EQ(j["TotalCount"], 2);
}

TEST_P(BothSchemes, SpecialCharactersSurviveSigning) {
  // The reference's example value, in a parameter the action reads.
  const std::string name = "1.0 *~'()!+/=&\xC3\xA9\xE4\xB8\xAD";
  auto inst = *backend_.FindInstance("sag-active");
  inst.name = name;
  backend_.PutInstance(inst);
  const auto r = Call(Options(GetParam().scheme, GetParam().method), kDescribeAction,
                      {{"RegionId", "cn-shanghai"}, {"Name", name}});
  ASSERT_EQ(CodeOf(r), "") << r.body;
  EXPECT_EQ(Json(r)["TotalCount"], 1);
  EXPECT_EQ(Json(r)["SmartAccessGateways"]["SmartAccessGateway"][0]["Name"], name);
}

TEST_P(BothSchemes, AReplayedNonceIsRefused) {
  const auto o = Options(GetParam().scheme, GetParam().method);
  EXPECT_EQ(CodeOf(Call(o, kDescribeAction, kDescribe, "nonce-1")), "");
  const auto again = Call(o, kDescribeAction, kDescribe, "nonce-1");
  EXPECT_EQ(again.status, 400);
  EXPECT_EQ(CodeOf(again), "SignatureNonceUsed");
  EXPECT_EQ(Json(again)["Message"], "Specified signature nonce was used already.");
  // The same nonce under another key is another nonce.
  auto other = o;
  other.access_key_id = "otherid";
  other.access_key_secret = "othersecret";
  EXPECT_EQ(CodeOf(Call(other, kDescribeAction, kDescribe, "nonce-1")), "");
}

TEST_P(BothSchemes, AFailedSignatureDoesNotBurnTheNonce) {
  auto bad = Options(GetParam().scheme, GetParam().method);
  bad.access_key_secret = "wrong";
  EXPECT_EQ(CodeOf(Call(bad, kDescribeAction, kDescribe, "nonce-2")), "SignatureDoesNotMatch");
  EXPECT_EQ(CodeOf(Call(Options(GetParam().scheme, GetParam().method), kDescribeAction, kDescribe,
                        "nonce-2")),
            "");
}

TEST_P(BothSchemes, AWrongSecretDoesNotMatch) {
  auto o = Options(GetParam().scheme, GetParam().method);
  o.access_key_secret = "testsecreT";
  const auto r = Call(o, kDescribeAction, kDescribe);
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(CodeOf(r), "SignatureDoesNotMatch");
  // The message shows the server's string to sign, as Alibaba Cloud's does.
  const auto message = Json(r)["Message"].get<std::string>();
  if (GetParam().scheme == SignatureScheme::kV1) {
    EXPECT_TRUE(
        message.starts_with("Specified signature is not matched with our calculation. "
                            "server string to sign is:" +
                            std::string(GetParam().method) + "&%2F&AccessKeyId%3Dtestid"))
        << message;
  } else {
    EXPECT_TRUE(
        message.starts_with("Specified signature does not match our calculation. server "
                            "StringToSign is [ACS3-HMAC-SHA256\n"))
        << message;
  }
}

TEST_P(BothSchemes, AnUnknownAccessKeyIsRefused) {
  auto o = Options(GetParam().scheme, GetParam().method);
  o.access_key_id = "nobody";
  const auto r = Call(o, kDescribeAction, kDescribe);
  EXPECT_EQ(r.status, 404);
  EXPECT_EQ(CodeOf(r), "InvalidAccessKeyId.NotFound");
  EXPECT_EQ(Json(r)["Message"], "Specified access key is not found.");
}

TEST_P(BothSchemes, TheTimeWindowIsFifteenMinutesEachWay) {
  const auto o = Options(GetParam().scheme, GetParam().method);
  for (const auto skew : {minutes(-16), minutes(16)}) {
    const auto req = SignRequest(o, kDescribeAction, kDescribe, now_ + skew);
    const auto r = service_.Handle(req);
    EXPECT_EQ(r.status, 400);
    EXPECT_EQ(CodeOf(r), "InvalidTimeStamp.Expired");
  }
  for (const auto skew : {minutes(-14), minutes(14)}) {
    EXPECT_EQ(CodeOf(service_.Handle(SignRequest(o, kDescribeAction, kDescribe, now_ + skew))), "");
  }
}

TEST_P(BothSchemes, AnotherApiVersionIsRefused) {
  auto o = Options(GetParam().scheme, GetParam().method);
  o.version = "2014-05-26";
  const auto r = Call(o, kDescribeAction, kDescribe);
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(CodeOf(r), "InvalidVersion");
}

TEST_P(BothSchemes, AnUnknownActionIsNotFound) {
  const auto r = Call(Options(GetParam().scheme, GetParam().method), "DescribeRegionz", kDescribe);
  EXPECT_EQ(r.status, 404);
  EXPECT_EQ(CodeOf(r), "InvalidAction.NotFound");
}

TEST_P(BothSchemes, ErrorsAndSuccessesInXml) {
  const auto o = Options(GetParam().scheme, GetParam().method, "XML");
  const auto ok = Call(o, "DescribeSmartAccessGatewayVersions",
                       {{"RegionId", "cn-shanghai"}, {"SmartAGId", "sag-active"}});
  EXPECT_EQ(ok.status, 200);
  EXPECT_TRUE(
      ok.body.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>"
                          "<DescribeSmartAccessGatewayVersionsResponse><RequestId>"))
      << ok.body;
  EXPECT_NE(ok.body.find("</RequestId><SmartAGVersions><SmartAGVersion><Type>release</Type>"
                         "<CreateTime>"),
            std::string::npos)
      << ok.body;
  EXPECT_NE(ok.body.find("<VersionCode>2.3.1.1</VersionCode><VersionName>sag-os-2.3.1.1"
                         "</VersionName></SmartAGVersion><SmartAGVersion>"),
            std::string::npos)
      << ok.body;
  const auto bad = Call(o, "DescribeSmartAccessGatewayVersions", {{"RegionId", "cn-shanghai"}});
  EXPECT_EQ(bad.status, 400);
  EXPECT_TRUE(bad.body.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><RequestId>"))
      << bad.body;
  EXPECT_NE(bad.body.find("</RequestId><HostId>smartag.test</HostId><Code>MissingParameter</Code>"
                          "<Message>The input parameter &quot;SmartAGId&quot; that is mandatory "
                          "for processing this request is not supplied.</Message><Recommend>"
                          "https://api.aliyun.com/troubleshoot?q=MissingParameter&amp;"
                          "product=Smartag&amp;requestId="),
            std::string::npos)
      << bad.body;
  EXPECT_TRUE(bad.body.ends_with("</Recommend></Error>")) << bad.body;
}

TEST_F(RpcFixture, TheErrorBodyHasAlibabasShape) {
  auto o = Options(SignatureScheme::kV1, "GET");
  o.access_key_id = "nobody";
  const auto r = Call(o, kDescribeAction, kDescribe);
  const auto j = nlohmann::ordered_json::parse(r.body);
  std::vector<std::string> keys;
  for (const auto& [k, v] : j.items()) keys.push_back(k);
  EXPECT_EQ(keys,
            (std::vector<std::string>{"RequestId", "HostId", "Code", "Message", "Recommend"}));
  EXPECT_EQ(j["HostId"], "smartag.test");
  EXPECT_EQ(j["Recommend"],
            "https://api.aliyun.com/troubleshoot?q=InvalidAccessKeyId.NotFound"
            "&product=Smartag&requestId=" +
                j["RequestId"].get<std::string>());
  EXPECT_EQ(r.headers.at(0).name, "Content-Type");
  EXPECT_EQ(r.headers.at(0).value, "application/json;charset=utf-8");
}

// ---- signature 1.0 specifics ----

TEST_F(RpcFixture, V1EachCommonParameterIsRequired) {
  for (const char* name : {"Action", "Version", "AccessKeyId", "Signature", "SignatureMethod",
                           "SignatureVersion", "SignatureNonce", "Timestamp"}) {
    auto req = SignRequest(Options(SignatureScheme::kV1, "GET"), kDescribeAction, kDescribe, now_);
    auto params = *ParseQueryString(req.target.substr(2));
    std::erase_if(params, [&](const auto& p) { return p.first == name; });
    std::string q;
    for (const auto& [k, v] : params)
      q += (q.empty() ? "" : "&") + PercentEncode(k) + "=" + PercentEncode(v);
    req.target = "/?" + q;
    const auto r = service_.Handle(req);
    EXPECT_EQ(r.status, 400) << name;
    EXPECT_EQ(CodeOf(r), "MissingParameter") << name;
    EXPECT_EQ(Json(r)["Message"], "The input parameter \"" + std::string(name) +
                                      "\" that is mandatory for processing this request is not "
                                      "supplied.");
  }
}

TEST_F(RpcFixture, V1WithAForeignAuthorizationHeaderStaysV1) {
  auto req = SignRequest(Options(SignatureScheme::kV1, "GET"), kDescribeAction, kDescribe, now_);
  req.headers.push_back({"Authorization", "Basic dXNlcjpwYXNz"});
  EXPECT_EQ(CodeOf(service_.Handle(req)), "");
}

TEST_F(RpcFixture, V1ChangingAnySignedParameterBreaksTheSignature) {
  auto req = SignRequest(Options(SignatureScheme::kV1, "GET"), kDescribeAction, kDescribe, now_);
  const auto pos = req.target.find("RegionId=cn-shanghai");
  ASSERT_NE(pos, std::string::npos);
  req.target.replace(pos, 20, "RegionId=cn-hangzhou");
  EXPECT_EQ(CodeOf(service_.Handle(req)), "SignatureDoesNotMatch");
}

TEST_F(RpcFixture, V1TheMethodIsSigned) {
  // A GET's parameters replayed as a POST form: the string to sign starts
  // with the real method.
  auto req = SignRequest(Options(SignatureScheme::kV1, "GET"), kDescribeAction, kDescribe, now_);
  req.method = "POST";
  req.body = req.target.substr(2);
  req.target = "/";
  req.headers.push_back({"Content-Type", "application/x-www-form-urlencoded"});
  EXPECT_EQ(CodeOf(service_.Handle(req)), "SignatureDoesNotMatch");
}

TEST_F(RpcFixture, V1PlusForSpaceAndLowerCaseEscapesAreAccepted) {
  auto inst = *backend_.FindInstance("sag-active");
  inst.name = "a b~c";
  backend_.PutInstance(inst);
  auto req = SignRequest(Options(SignatureScheme::kV1, "GET"), kDescribeAction,
                         {{"RegionId", "cn-shanghai"}, {"Name", "a b~c"}}, now_);
  const auto pos = req.target.find("Name=a%20b~c");
  ASSERT_NE(pos, std::string::npos) << req.target;
  req.target.replace(pos, 12, "Name=a+b%7ec");
  const auto r = service_.Handle(req);
  EXPECT_EQ(CodeOf(r), "") << r.body;
  EXPECT_EQ(Json(r)["TotalCount"], 1);
}

TEST_F(RpcFixture, V1OnlyHmacSha1AndVersion10) {
  for (const auto& [name, value] : std::vector<std::pair<std::string, std::string>>{
           {"SignatureMethod", "HMAC-SHA256"}, {"SignatureVersion", "2.0"}}) {
    ParamMap all{{"AccessKeyId", "testid"},
                 {"Action", kDescribeAction},
                 {"Format", "JSON"},
                 {"RegionId", "cn-shanghai"},
                 {"SignatureMethod", "HMAC-SHA1"},
                 {"SignatureNonce", NewNonce()},
                 {"SignatureVersion", "1.0"},
                 {"Timestamp", FormatIsoTimestamp(now_)},
                 {"Version", "2018-03-13"}};
    all[name] = value;
    all["Signature"] = V1Signature("testsecret", V1StringToSign("GET", all));
    HttpRequest req;
    req.method = "GET";
    req.target = "/?";
    for (const auto& [k, v] : all) req.target += PercentEncode(k) + "=" + PercentEncode(v) + "&";
    const auto r = service_.Handle(req);
    EXPECT_EQ(r.status, 400);
    EXPECT_EQ(CodeOf(r), "IncompleteSignature") << name;
  }
}

TEST_F(RpcFixture, V1TimestampMustBeIso8601Utc) {
  for (const char* ts : {"2026-12-02 05:00:00", "2026-12-02T05:00:00", "2026-02-31T05:00:00Z",
                         "2026-12-02T25:00:00Z", "yesterday",
                         // Past the clock's range (2262): refused, not overflowed (UBSan).
                         "9026-12-02T05:00:00Z"}) {
    ParamMap all{{"AccessKeyId", "testid"},        {"Action", kDescribeAction},
                 {"SignatureMethod", "HMAC-SHA1"}, {"SignatureNonce", NewNonce()},
                 {"SignatureVersion", "1.0"},      {"Timestamp", ts},
                 {"Version", "2018-03-13"}};
    all["Signature"] = V1Signature("testsecret", V1StringToSign("GET", all));
    HttpRequest req;
    req.method = "GET";
    req.target = "/?";
    for (const auto& [k, v] : all) req.target += PercentEncode(k) + "=" + PercentEncode(v) + "&";
    EXPECT_EQ(CodeOf(service_.Handle(req)), "InvalidTimeStamp.Format") << ts;
  }
  // A fraction of a second is tolerated.
  EXPECT_TRUE(ParseIsoTimestamp("2026-12-02T05:00:00.123Z"));
}

// ---- ACS3 specifics ----

TEST_F(RpcFixture, Acs3ASwappedBodyDoesNotMatch) {
  auto req = SignRequest(Options(SignatureScheme::kAcs3, "POST"), kDescribeAction, kDescribe, now_);
  req.body = "RegionId=cn-hangzhou";
  EXPECT_EQ(CodeOf(service_.Handle(req)), "SignatureDoesNotMatch");
}

TEST_F(RpcFixture, Acs3QueryOnAPostWithAnEmptyBody) {
  // POST with the parameters in the query string, Content-Length 0.
  auto get = SignRequest(Options(SignatureScheme::kAcs3, "GET"), kDescribeAction, kDescribe, now_);
  // Re-sign the same shape as POST: only the method differs in the canonical request.
  std::vector<CanonicalHeader> headers;
  for (const auto& name : {"host", "x-acs-action", "x-acs-content-sha256", "x-acs-date",
                           "x-acs-signature-nonce", "x-acs-version"}) {
    headers.push_back({name, std::string(*get.Header(name))});
  }
  const ParamMap query(kDescribe.begin(), kDescribe.end());
  const auto sig = Acs3Signature("testsecret", Acs3StringToSign(Acs3CanonicalRequest(
                                                   "POST", "/", query, headers, HexSha256(""))));
  get.method = "POST";
  SetHeader(get, "authorization", Acs3AuthorizationHeader("testid", headers, sig));
  const auto r = service_.Handle(get);
  EXPECT_EQ(CodeOf(r), "") << r.body;
}

TEST_F(RpcFixture, Acs3WireEncodingMayDifferFromTheSignedOne) {
  // A client that sends '*', '(' and ')' literally and '~' escaped: the
  // server re-encodes the decoded query before checking.
  auto inst = *backend_.FindInstance("sag-active");
  inst.name = "a*(b)~";
  backend_.PutInstance(inst);
  auto req = SignRequest(Options(SignatureScheme::kAcs3, "GET"), kDescribeAction,
                         {{"Name", "a*(b)~"}, {"RegionId", "cn-shanghai"}}, now_);
  const auto pos = req.target.find("Name=a%2A%28b%29~");
  ASSERT_NE(pos, std::string::npos) << req.target;
  req.target.replace(pos, 17, "Name=a*(b)%7E");
  const auto r = service_.Handle(req);
  EXPECT_EQ(CodeOf(r), "") << r.body;
  EXPECT_EQ(Json(r)["TotalCount"], 1);
}

TEST_F(RpcFixture, Acs3EssentialHeadersMustBeSignedPresentAndSingle) {
  const auto base =
      SignRequest(Options(SignatureScheme::kAcs3, "POST"), kDescribeAction, kDescribe, now_);
  for (const char* name : {"host", "x-acs-action", "x-acs-version", "x-acs-date",
                           "x-acs-signature-nonce", "x-acs-content-sha256"}) {
    {  // absent
      auto req = base;
      DropHeader(req, name);
      const auto r = service_.Handle(req);
      EXPECT_EQ(r.status, 400);
      EXPECT_EQ(CodeOf(r), "IncompleteSignature") << name;
    }
    {  // twice
      auto req = base;
      req.headers.push_back({name, std::string(*base.Header(name))});
      EXPECT_EQ(CodeOf(service_.Handle(req)), "IncompleteSignature") << name;
    }
    {  // not among the signed headers
      auto req = base;
      std::string auth(*req.Header("authorization"));
      const auto pos = auth.find(std::string(name) + ";");
      const auto at = pos != std::string::npos ? pos : auth.find(";" + std::string(name) + ",");
      ASSERT_NE(at, std::string::npos) << auth;
      auth.erase(at, std::string(name).size() + 1);
      SetHeader(req, "authorization", auth);
      EXPECT_EQ(CodeOf(service_.Handle(req)), "IncompleteSignature") << name << " " << auth;
    }
  }
}

TEST_F(RpcFixture, Acs3AMalformedAuthorizationIsIncomplete) {
  auto req = SignRequest(Options(SignatureScheme::kAcs3, "POST"), kDescribeAction, kDescribe, now_);
  SetHeader(req, "authorization", "ACS3-HMAC-SHA256 Credential=testid");
  const auto r = service_.Handle(req);
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(CodeOf(r), "IncompleteSignature");
  EXPECT_TRUE(Json(r)["Message"].get<std::string>().starts_with(
      "The request signature does not conform to Aliyun standards."));
}

TEST_F(RpcFixture, Acs3AcceptXmlAnswersXml) {
  const auto r = Call(Options(SignatureScheme::kAcs3, "POST", "XML"), kDescribeAction, kDescribe);
  EXPECT_EQ(r.status, 200);
  EXPECT_TRUE(
      r.body.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>"
                         "<DescribeSmartAccessGatewaysResponse><RequestId>"))
      << r.body;
}

// ---- parameters and transport ----

TEST_F(RpcFixture, DuplicateParametersAreRefused) {
  auto req = SignRequest(Options(SignatureScheme::kV1, "GET"), kDescribeAction, kDescribe, now_);
  req.target += "&RegionId=cn-shanghai";
  auto r = service_.Handle(req);
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(CodeOf(r), "InvalidParameter");
  // Once in the query and once in the form body.
  auto post = SignRequest(Options(SignatureScheme::kV1, "POST"), kDescribeAction, kDescribe, now_);
  post.target = "/?RegionId=cn-shanghai";
  r = service_.Handle(post);
  EXPECT_EQ(CodeOf(r), "InvalidParameter");
  EXPECT_NE(Json(r)["Message"].get<std::string>().find("RegionId"), std::string::npos);
}

TEST_F(RpcFixture, BadPercentEncodingIsRefused) {
  auto req = SignRequest(Options(SignatureScheme::kV1, "GET"), kDescribeAction, kDescribe, now_);
  req.target += "&Name=%E4%B";
  const auto r = service_.Handle(req);
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(CodeOf(r), "InvalidParameter");
}

TEST_F(RpcFixture, OnlySlashWithGetOrPost) {
  auto req = SignRequest(Options(SignatureScheme::kV1, "GET"), kDescribeAction, kDescribe, now_);
  auto other_path = req;
  other_path.target = "/api" + req.target.substr(1);
  EXPECT_EQ(CodeOf(service_.Handle(other_path)), "InvalidAction.NotFound");
  auto put = req;
  put.method = "PUT";
  EXPECT_EQ(service_.Handle(put).status, 404);
}

TEST_F(RpcFixture, AnUnknownFormatIsRefused) {
  const auto r = Call(Options(SignatureScheme::kV1, "GET", "YAML"), kDescribeAction, kDescribe);
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(CodeOf(r), "InvalidParameter");
}

TEST(RpcThrottling, AKeyAboveItsRateIsThrottled) {
  MemoryBackend backend;
  RpcConfig c;
  c.access_keys = {{"testid", "testsecret", "1001", false}};
  c.rate_per_second = 1;
  c.rate_burst = 2;
  Clock::time_point now = FixedNow();
  RpcService service(c, backend, [&] { return now; });
  SignOptions o;
  o.host = "h";
  o.access_key_id = "testid";
  o.access_key_secret = "testsecret";
  const auto call = [&] {
    return service.Handle(SignRequest(o, "DescribeSmartAccessGateways", {}, now));
  };
  EXPECT_EQ(call().status, 200);
  EXPECT_EQ(call().status, 200);
  const auto r = call();
  EXPECT_EQ(r.status, 400);
  EXPECT_NE(r.body.find("\"Code\":\"Throttling\""), std::string::npos) << r.body;
  now += seconds(1);
  EXPECT_EQ(call().status, 200);
}

// With a store (sag-cloud serve's real parts), a nonce outlives the process:
// the same signed request sent again after a restart is a replay.
TEST_F(RpcFixture, ANonceIsRefusedAfterARestartWithItsStore) {
  sag::test::TempDir dir;
  const auto path = dir / "store.db";
  const auto request = SignRequest(Options(SignatureScheme::kAcs3), kDescribeAction, kDescribe,
                                   now_, "nonce-restart");
  {
    auto store = OpenSqliteStore(path);
    ASSERT_TRUE(store) << store.error().ToString();
    RpcService service(Config(), backend_, store->get(), [this] { return now_; });
    EXPECT_EQ(CodeOf(service.Handle(request)), "");
  }
  auto store = OpenSqliteStore(path);
  ASSERT_TRUE(store) << store.error().ToString();
  now_ += minutes(10);  // within the window: the request is still valid
  RpcService restarted(Config(), backend_, store->get(), [this] { return now_; });
  EXPECT_EQ(CodeOf(restarted.Handle(request)), "SignatureNonceUsed");
  // A fresh nonce still works.
  EXPECT_EQ(CodeOf(restarted.Handle(SignRequest(Options(SignatureScheme::kAcs3), kDescribeAction,
                                                kDescribe, now_, "nonce-fresh"))),
            "");
}

TEST(NonceCacheTest, ForgetsAfterItsTtlAndIsBounded) {
  NonceCache cache(seconds(60), 2);
  const auto t0 = FixedNow();
  EXPECT_EQ(cache.Insert("a", t0), NonceCache::Result::kNew);
  EXPECT_EQ(cache.Insert("a", t0 + seconds(59)), NonceCache::Result::kUsed);
  EXPECT_EQ(cache.Insert("b", t0 + seconds(1)), NonceCache::Result::kNew);
  EXPECT_EQ(cache.Insert("c", t0 + seconds(2)), NonceCache::Result::kFull);
  EXPECT_EQ(cache.Insert("a", t0 + seconds(61)), NonceCache::Result::kNew);  // a expired
  EXPECT_EQ(cache.size(), 2U);
}

}  // namespace
}  // namespace sag::cloud::rpc::test
