// Untrusted bytes into the RPC front, under ASan/UBSan: random and mutated
// requests never crash it, and every answer is a JSON body that either
// succeeds (200, no Code) or carries an error Code with its documented shape.
#include <gtest/gtest.h>

#include <random>

#include "tests/unit/cloud/rpc_fixture.h"

namespace sag::cloud::rpc::test {
namespace {

class RpcRobustness : public RpcFixture {
 protected:
  void Check(const HttpRequest& req) {
    const auto r = service_.Handle(req);
    if (r.body.starts_with("<?xml")) {
      ASSERT_NE(r.body.find("<RequestId>"), std::string::npos) << r.body;
      for (const char* tag : {"<Code>", "<Message>", "<HostId>", "<Recommend>"}) {
        ASSERT_EQ(r.status == 200, r.body.find(tag) == std::string::npos) << r.body;
      }
      ++xml_;
      return;
    }
    const auto j = nlohmann::json::parse(r.body, nullptr, false);
    ASSERT_TRUE(j.is_object()) << "target " << req.target << " body " << r.body;
    ASSERT_TRUE(j.contains("RequestId"));
    if (r.status == 200) {
      ASSERT_FALSE(j.contains("Code")) << r.body;
    } else {
      ASSERT_TRUE(j.contains("Code") && j.contains("Message") && j.contains("HostId") &&
                  j.contains("Recommend"))
          << r.body;
      ASSERT_TRUE(r.status == 400 || r.status == 403 || r.status == 404 || r.status == 500)
          << r.status << " " << r.body;
    }
  }

  std::mt19937 rng_{20261202};
  int xml_ = 0;
};

TEST_F(RpcRobustness, MutatedSignedRequestsAlwaysGetAWellFormedAnswer) {
  const char* alphabet = "%=&+~*ABCaz09-_. \x00\xff\xc3\n:;,";
  const auto mutate = [&](std::string& s) {
    if (s.empty()) s.push_back('x');
    const auto pos = std::uniform_int_distribution<std::size_t>(0, s.size() - 1)(rng_);
    switch (rng_() % 4) {
      case 0:
        s[pos] = alphabet[rng_() % 23];
        break;
      case 1:
        s.insert(pos, 1, alphabet[rng_() % 23]);
        break;
      case 2:
        s.erase(pos, 1 + rng_() % 3);
        break;
      default:
        s.insert(pos, s.substr(pos, 1 + rng_() % 8));
    }
  };
  int served = 0;
  for (int i = 0; i < 4000; ++i) {
    const auto scheme = i % 2 == 0 ? SignatureScheme::kV1 : SignatureScheme::kAcs3;
    const char* method = i % 4 < 2 ? "GET" : "POST";
    auto req =
        SignRequest(Options(scheme, method, i % 3 == 0 ? "XML" : "JSON"),
                    i % 5 == 0 ? "UpdateSmartAccessGatewayVersion" : "DescribeSmartAccessGateways",
                    {{"RegionId", "cn-shanghai"},
                     {"SmartAGId", "sag-active"},
                     {"VersionCode", "2.3.1.1"},
                     {"Name", "a b*~\xc3\xa9"}},
                    now_);
    const int edits = 1 + static_cast<int>(rng_() % 3);
    for (int e = 0; e < edits; ++e) {
      switch (rng_() % 3) {
        case 0:
          mutate(req.target);
          break;
        case 1:
          mutate(req.body);
          break;
        default:
          mutate(req.headers[rng_() % req.headers.size()].value);
      }
    }
    if (req.body.empty() && rng_() % 2 == 0) req.body = req.target;  // odd but possible
    Check(req);
    if (HasFailure()) return;
    ++served;
  }
  EXPECT_EQ(served, 4000);
  EXPECT_GT(xml_, 500);
}

TEST_F(RpcRobustness, RandomBytesAlwaysGetAWellFormedAnswer) {
  for (int i = 0; i < 3000; ++i) {
    HttpRequest req;
    req.method = i % 2 == 0 ? "GET" : "POST";
    std::string junk(rng_() % 200, '\0');
    for (auto& c : junk) c = static_cast<char>(rng_());
    req.target = "/?" + junk;
    req.body = junk;
    req.headers = {{"content-type", "application/x-www-form-urlencoded"}};
    if (i % 3 == 0) req.headers.push_back({"authorization", "ACS3-HMAC-SHA256 " + junk});
    Check(req);
    if (HasFailure()) return;
  }
}

}  // namespace
}  // namespace sag::cloud::rpc::test
