#include "cloud/rpc/signature.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <algorithm>
#include <array>
#include <span>

#include "cloud/rpc/percent.h"
#include "common/base64.h"
#include "common/sha256.h"

namespace sag::cloud::rpc {

namespace {

std::string Hmac(const EVP_MD* md, std::string_view key, std::string_view data) {
  std::array<unsigned char, EVP_MAX_MD_SIZE> out{};
  unsigned int len = 0;
  HMAC(md, key.data(), static_cast<int>(key.size()),
       reinterpret_cast<const unsigned char*>(data.data()), data.size(), out.data(), &len);
  return {reinterpret_cast<const char*>(out.data()), len};
}

std::string_view Trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

std::string JoinEncoded(const ParamMap& params, bool skip_signature) {
  std::string out;
  for (const auto& [name, value] : params) {
    if (skip_signature && name == "Signature") continue;
    if (!out.empty()) out.push_back('&');
    out += PercentEncode(name);
    out.push_back('=');
    out += PercentEncode(value);
  }
  return out;
}

}  // namespace

std::string V1CanonicalizedQuery(const ParamMap& params) { return JoinEncoded(params, true); }

std::string V1StringToSign(std::string_view method, const ParamMap& params) {
  return std::string(method) + "&" + PercentEncode("/") + "&" +
         PercentEncode(V1CanonicalizedQuery(params));
}

std::string V1Signature(std::string_view access_key_secret, std::string_view string_to_sign) {
  return Base64Encode(Hmac(EVP_sha1(), std::string(access_key_secret) + "&", string_to_sign));
}

Expected<Acs3Authorization> ParseAcs3Authorization(std::string_view header) {
  header = Trim(header);
  if (!header.starts_with(kAcs3Algorithm) || header.size() == kAcs3Algorithm.size() ||
      header[kAcs3Algorithm.size()] != ' ') {
    return Error(Errc::kInvalidArgument, "the Authorization header does not start with '" +
                                             std::string(kAcs3Algorithm) + " '");
  }
  header.remove_prefix(kAcs3Algorithm.size() + 1);
  Acs3Authorization auth;
  bool has_credential = false;
  bool has_headers = false;
  bool has_signature = false;
  while (!header.empty()) {
    const auto comma = header.find(',');
    const std::string_view part = Trim(header.substr(0, comma));
    header = comma == std::string_view::npos ? std::string_view() : header.substr(comma + 1);
    const auto eq = part.find('=');
    if (eq == std::string_view::npos) {
      return Error(Errc::kInvalidArgument,
                   "Authorization: '" + std::string(part) + "' is not name=value");
    }
    const std::string_view name = part.substr(0, eq);
    const std::string_view value = part.substr(eq + 1);
    bool* seen = nullptr;
    if (name == "Credential") {
      seen = &has_credential;
      auth.credential = value;
    } else if (name == "SignedHeaders") {
      seen = &has_headers;
      std::string_view rest = value;
      while (!rest.empty()) {
        const auto semi = rest.find(';');
        const std::string_view h = rest.substr(0, semi);
        rest = semi == std::string_view::npos ? std::string_view() : rest.substr(semi + 1);
        if (h.empty()) return Error(Errc::kInvalidArgument, "Authorization: empty signed header");
        std::string lower(h);
        std::transform(lower.begin(), lower.end(), lower.begin(),
                       [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
        auth.signed_headers.push_back(std::move(lower));
      }
    } else if (name == "Signature") {
      seen = &has_signature;
      auth.signature = value;
    } else {
      return Error(Errc::kInvalidArgument,
                   "Authorization: unknown field '" + std::string(name) + "'");
    }
    if (*seen) {
      return Error(Errc::kInvalidArgument,
                   "Authorization: field '" + std::string(name) + "' given twice");
    }
    *seen = true;
  }
  if (!has_credential || auth.credential.empty()) {
    return Error(Errc::kInvalidArgument, "Authorization: no Credential");
  }
  if (!has_headers || auth.signed_headers.empty()) {
    return Error(Errc::kInvalidArgument, "Authorization: no SignedHeaders");
  }
  if (!has_signature || auth.signature.empty()) {
    return Error(Errc::kInvalidArgument, "Authorization: no Signature");
  }
  return auth;
}

std::string Acs3CanonicalQuery(const ParamMap& query) { return JoinEncoded(query, false); }

std::string Acs3CanonicalRequest(std::string_view method, std::string_view canonical_uri,
                                 const ParamMap& query,
                                 const std::vector<CanonicalHeader>& signed_headers,
                                 std::string_view hashed_payload) {
  std::string out;
  out += method;
  out += '\n';
  out += canonical_uri;
  out += '\n';
  out += Acs3CanonicalQuery(query);
  out += '\n';
  std::string names;
  for (const auto& h : signed_headers) {
    out += h.name;
    out += ':';
    out += Trim(h.value);
    out += '\n';
    if (!names.empty()) names += ';';
    names += h.name;
  }
  out += '\n';
  out += names;
  out += '\n';
  out += hashed_payload;
  return out;
}

std::string Acs3StringToSign(std::string_view canonical_request) {
  return std::string(kAcs3Algorithm) + "\n" + HexSha256(canonical_request);
}

std::string Acs3Signature(std::string_view access_key_secret, std::string_view string_to_sign) {
  const std::string mac = Hmac(EVP_sha256(), access_key_secret, string_to_sign);
  return ToHex(
      std::span<const std::uint8_t>(reinterpret_cast<const std::uint8_t*>(mac.data()), mac.size()));
}

std::string Acs3AuthorizationHeader(std::string_view access_key_id,
                                    const std::vector<CanonicalHeader>& signed_headers,
                                    std::string_view signature) {
  std::string names;
  for (const auto& h : signed_headers) {
    if (!names.empty()) names += ';';
    names += h.name;
  }
  return std::string(kAcs3Algorithm) + " Credential=" + std::string(access_key_id) +
         ",SignedHeaders=" + names + ",Signature=" + std::string(signature);
}

std::string HexSha256(std::string_view data) { return ToHex(Sha256::Of(data)); }

bool SignaturesEqual(std::string_view a, std::string_view b) {
  return a.size() == b.size() && CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

}  // namespace sag::cloud::rpc
