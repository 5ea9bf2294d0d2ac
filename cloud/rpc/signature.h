// The two request signatures of Alibaba Cloud's RPC APIs, as pure functions
// (the server checks with them, the `call` client signs with them).
//
// Signature 1.0 (older SDKs; reference section 3 and 5):
//   CanonicalizedQueryString = every parameter but Signature, sorted by name
//     (byte order), "enc(name)=enc(value)" joined by '&' (enc: PercentEncode);
//   StringToSign = METHOD + "&" + enc("/") + "&" + enc(CanonicalizedQueryString);
//   Signature    = Base64(HMAC-SHA1(AccessKeySecret + "&", StringToSign)).
//
// ACS3-HMAC-SHA256 (current SDKs; reference section 6):
//   CanonicalRequest = METHOD \n "/" \n CanonicalQueryString \n CanonicalHeaders \n
//                      SignedHeaders \n HashedPayload
//     CanonicalQueryString: query parameters sorted by name, enc(name)=enc(value);
//     CanonicalHeaders: "name:trimmed value\n" per signed header, in the order named;
//     HashedPayload: hex SHA-256 of the body (x-acs-content-sha256);
//   StringToSign = "ACS3-HMAC-SHA256\n" + hex(SHA-256(CanonicalRequest));
//   Signature    = hex(HMAC-SHA256(AccessKeySecret, StringToSign)).
#pragma once

#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "common/error.h"

namespace sag::cloud::rpc {

// Parameters by name; the server has already refused duplicates.
using ParamMap = std::map<std::string, std::string>;

// ---- signature 1.0 ----
std::string V1CanonicalizedQuery(const ParamMap& params);  // skips "Signature"
std::string V1StringToSign(std::string_view method, const ParamMap& params);
std::string V1Signature(std::string_view access_key_secret, std::string_view string_to_sign);

// ---- ACS3-HMAC-SHA256 ----
inline constexpr std::string_view kAcs3Algorithm = "ACS3-HMAC-SHA256";

struct Acs3Authorization {
  std::string credential;                   // the AccessKeyId
  std::vector<std::string> signed_headers;  // lower-case, in the order the client named them
  std::string signature;                    // hex
};

// "ACS3-HMAC-SHA256 Credential=AK,SignedHeaders=a;b,Signature=hex" (spaces
// after the commas tolerated). kInvalidArgument naming what is missing.
Expected<Acs3Authorization> ParseAcs3Authorization(std::string_view header);

struct CanonicalHeader {
  std::string name;  // lower-case
  std::string value;
};

std::string Acs3CanonicalQuery(const ParamMap& query);
std::string Acs3CanonicalRequest(std::string_view method, std::string_view canonical_uri,
                                 const ParamMap& query,
                                 const std::vector<CanonicalHeader>& signed_headers,
                                 std::string_view hashed_payload);
std::string Acs3StringToSign(std::string_view canonical_request);
std::string Acs3Signature(std::string_view access_key_secret, std::string_view string_to_sign);
std::string Acs3AuthorizationHeader(std::string_view access_key_id,
                                    const std::vector<CanonicalHeader>& signed_headers,
                                    std::string_view signature);

std::string HexSha256(std::string_view data);

// Compares two signatures in time independent of where they differ.
bool SignaturesEqual(std::string_view a, std::string_view b);

}  // namespace sag::cloud::rpc
