// Known answers for both signature schemes. Every expected value below was
// also computed with the openssl command line (the commands are in the
// comments), independent of this code.
#include <gtest/gtest.h>

#include "cloud/rpc/signature.h"

namespace sag::cloud::rpc {
namespace {

constexpr const char* kEmptySha256 =
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

TEST(SignatureV1, AlibabasPublishedExample) {
  // The documented DescribeRegions request (AccessKeyId testid, secret
  // testsecret); the published example spells the parameter "TimeStamp".
  const ParamMap params{{"TimeStamp", "2016-02-23T12:46:24Z"},
                        {"Format", "XML"},
                        {"AccessKeyId", "testid"},
                        {"Action", "DescribeRegions"},
                        {"SignatureMethod", "HMAC-SHA1"},
                        {"SignatureNonce", "3ee8c1b8-83d3-44af-a94f-4e0ad82fd6cf"},
                        {"Version", "2014-05-26"},
                        {"SignatureVersion", "1.0"}};
  const std::string sts = V1StringToSign("GET", params);
  EXPECT_EQ(sts,
            "GET&%2F&AccessKeyId%3Dtestid%26Action%3DDescribeRegions%26Format%3DXML%26"
            "SignatureMethod%3DHMAC-SHA1%26SignatureNonce%3D3ee8c1b8-83d3-44af-a94f-4e0ad82fd6cf%26"
            "SignatureVersion%3D1.0%26TimeStamp%3D2016-02-23T12%253A46%253A24Z%26"
            "Version%3D2014-05-26");
  EXPECT_EQ(V1Signature("testsecret", sts), "CT9X0VtwR86fNWSnsc6v8YGOjuE=");
}

TEST(SignatureV1, SignatureParameterIsNotSignedAndMethodIs) {
  ParamMap params{{"Action", "DescribeRegions"}, {"A", "1 2"}};
  const std::string without = V1StringToSign("POST", params);
  params["Signature"] = "whatever";
  EXPECT_EQ(V1StringToSign("POST", params), without);
  EXPECT_EQ(without, "POST&%2F&A%3D1%25202%26Action%3DDescribeRegions");
  EXPECT_NE(V1StringToSign("GET", params), without);
}

TEST(SignatureV1, AnUpdateCallAsAnSdkPostsIt) {
  // printf '%s' 'POST&%2F&AccessKeyId%3Dtestid%26Action%3DUpdateSmartAccessGatewayVersion%26
  //   Format%3DJSON%26RegionId%3Dcn-hangzhou%26SignatureMethod%3DHMAC-SHA1%26SignatureNonce%3D
  //   0123456789abcdef0123456789abcdef%26SignatureVersion%3D1.0%26SmartAGId%3Dsag-test%26
  //   Timestamp%3D2026-12-02T05%253A00%253A00Z%26Version%3D2018-03-13%26VersionCode%3D2.3.1.1'
  //   | openssl dgst -sha1 -hmac 'testsecret&' -binary | base64
  const ParamMap params{{"AccessKeyId", "testid"},
                        {"Action", "UpdateSmartAccessGatewayVersion"},
                        {"Format", "JSON"},
                        {"RegionId", "cn-hangzhou"},
                        {"SignatureMethod", "HMAC-SHA1"},
                        {"SignatureNonce", "0123456789abcdef0123456789abcdef"},
                        {"SignatureVersion", "1.0"},
                        {"SmartAGId", "sag-test"},
                        {"Timestamp", "2026-12-02T05:00:00Z"},
                        {"Version", "2018-03-13"},
                        {"VersionCode", "2.3.1.1"}};
  EXPECT_EQ(V1Signature("testsecret", V1StringToSign("POST", params)),
            "w6ofCJEb+XxCrgRoHFYm3PT0flc=");
}

// ACS3-HMAC-SHA256, derived step by step:
//  1. the body is empty; its SHA-256 (x-acs-content-sha256 and HashedPayload)
//     is e3b0c442...b855 (printf '' | openssl dgst -sha256);
//  2. the canonical request is the text below (query sorted and encoded;
//     headers lower-case, in the order SignedHeaders names them);
//  3. its SHA-256 is f291070b...5f1e (openssl dgst -sha256 cr.txt);
//  4. StringToSign = "ACS3-HMAC-SHA256\n" + that hex;
//  5. Signature = HMAC-SHA256 with key "testsecret" (no '&'):
//     printf 'ACS3-HMAC-SHA256\n%s' f291...5f1e | openssl dgst -sha256 -hmac testsecret
//     = dd8cd7b4...7ca2.
TEST(SignatureAcs3, DerivedVector) {
  const ParamMap query{
      {"VersionCode", "2.3.1.1"}, {"RegionId", "cn-hangzhou"}, {"SmartAGId", "sag-test"}};
  const std::vector<CanonicalHeader> headers{
      {"host", "smartag.cn-shanghai.aliyuncs.com"},
      {"x-acs-action", "UpdateSmartAccessGatewayVersion"},
      {"x-acs-content-sha256", kEmptySha256},
      {"x-acs-date", "2026-12-02T05:00:00Z"},
      {"x-acs-signature-nonce", "0123456789abcdef0123456789abcdef"},
      {"x-acs-version", "2018-03-13"}};
  EXPECT_EQ(HexSha256(""), kEmptySha256);
  const std::string cr = Acs3CanonicalRequest("POST", "/", query, headers, kEmptySha256);
  EXPECT_EQ(cr, std::string("POST\n/\nRegionId=cn-hangzhou&SmartAGId=sag-test&VersionCode=2.3.1.1\n"
                            "host:smartag.cn-shanghai.aliyuncs.com\n"
                            "x-acs-action:UpdateSmartAccessGatewayVersion\n"
                            "x-acs-content-sha256:") +
                    kEmptySha256 +
                    "\n"
                    "x-acs-date:2026-12-02T05:00:00Z\n"
                    "x-acs-signature-nonce:0123456789abcdef0123456789abcdef\n"
                    "x-acs-version:2018-03-13\n"
                    "\n"
                    "host;x-acs-action;x-acs-content-sha256;x-acs-date;x-acs-signature-nonce;"
                    "x-acs-version\n" +
                    kEmptySha256);
  const std::string sts = Acs3StringToSign(cr);
  EXPECT_EQ(sts,
            "ACS3-HMAC-SHA256\nf291070b19d2efeec96e3939a7766bce65b11ba0dc80c6d891b2f47a988f5f1e");
  EXPECT_EQ(Acs3Signature("testsecret", sts),
            "dd8cd7b487558b070a4cb4c71827e56c1fb3ac1ad1e016680d9ff4b68ef77ca2");
  EXPECT_EQ(Acs3AuthorizationHeader("testid", headers, "ab"),
            "ACS3-HMAC-SHA256 Credential=testid,SignedHeaders=host;x-acs-action;"
            "x-acs-content-sha256;x-acs-date;x-acs-signature-nonce;x-acs-version,Signature=ab");
}

TEST(SignatureAcs3, HeaderValuesAreTrimmedAndQueryValuesReencoded) {
  const ParamMap query{{"Name", "a b*(c)"}, {"Empty", ""}};
  const std::string cr = Acs3CanonicalRequest("GET", "/", query, {{"x-acs-date", "  2026  "}}, "h");
  EXPECT_EQ(cr, "GET\n/\nEmpty=&Name=a%20b%2A%28c%29\nx-acs-date:2026\n\nx-acs-date\nh");
}

TEST(SignatureAcs3, ParsesTheAuthorizationHeader) {
  const auto a = ParseAcs3Authorization(
      "ACS3-HMAC-SHA256 Credential=AK1,SignedHeaders=Host;x-acs-date, Signature=00ff");
  ASSERT_TRUE(a) << a.error().ToString();
  EXPECT_EQ(a->credential, "AK1");
  EXPECT_EQ(a->signed_headers, (std::vector<std::string>{"host", "x-acs-date"}));
  EXPECT_EQ(a->signature, "00ff");
  for (const char* bad :
       {"", "ACS3-HMAC-SHA256", "HMAC-SHA1 Credential=a,SignedHeaders=h,Signature=s",
        "ACS3-HMAC-SHA256 Credential=a,SignedHeaders=h",
        "ACS3-HMAC-SHA256 SignedHeaders=h,Signature=s",
        "ACS3-HMAC-SHA256 Credential=a,SignedHeaders=,Signature=s",
        "ACS3-HMAC-SHA256 Credential=a,SignedHeaders=h;;x,Signature=s",
        "ACS3-HMAC-SHA256 Credential=a,Credential=b,SignedHeaders=h,Signature=s",
        "ACS3-HMAC-SHA256 Credential=a,SignedHeaders=h,Signature=s,Extra=1",
        "ACS3-HMAC-SHA256 Credential=a,SignedHeaders=h,Signature"}) {
    EXPECT_FALSE(ParseAcs3Authorization(bad)) << bad;
  }
}

TEST(Signature, ComparisonIsExact) {
  EXPECT_TRUE(SignaturesEqual("abc", "abc"));
  EXPECT_FALSE(SignaturesEqual("abc", "abd"));
  EXPECT_FALSE(SignaturesEqual("abc", "ab"));
}

}  // namespace
}  // namespace sag::cloud::rpc
