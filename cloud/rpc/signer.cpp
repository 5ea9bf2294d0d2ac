#include <openssl/rand.h>

#include <algorithm>
#include <array>

#include "cloud/rpc/client.h"
#include "cloud/rpc/rpc_service.h"
#include "cloud/rpc/signature.h"
#include "common/parse_decimal.h"
#include "common/sha256.h"

namespace sag::cloud::rpc {

namespace {

std::string Encode(const ParamList& params) {
  std::string out;
  for (const auto& [name, value] : params) {
    if (!out.empty()) out.push_back('&');
    out += PercentEncode(name) + "=" + PercentEncode(value);
  }
  return out;
}

}  // namespace

std::string NewNonce() {
  std::array<std::uint8_t, 16> b{};
  if (RAND_bytes(b.data(), static_cast<int>(b.size())) != 1) {
    const auto t = static_cast<std::uint64_t>(Clock::now().time_since_epoch().count());
    for (std::size_t i = 0; i < b.size(); ++i) b[i] = static_cast<std::uint8_t>(t >> (i % 8 * 8));
  }
  return ToHex(std::span<const std::uint8_t>(b));
}

HttpRequest SignRequest(const SignOptions& options, const std::string& action,
                        const ParamList& params, Clock::time_point now, std::string nonce) {
  if (nonce.empty()) nonce = NewNonce();
  const std::string timestamp = FormatIsoTimestamp(now);
  HttpRequest r;
  r.method = options.method;
  r.headers.push_back({"host", options.host});
  if (options.scheme == SignatureScheme::kV1) {
    ParamMap all(params.begin(), params.end());
    all["AccessKeyId"] = options.access_key_id;
    all["Action"] = action;
    all["Format"] = options.format;
    all["SignatureMethod"] = "HMAC-SHA1";
    all["SignatureNonce"] = nonce;
    all["SignatureVersion"] = "1.0";
    all["Timestamp"] = timestamp;
    all["Version"] = options.version;
    const std::string signature =
        V1Signature(options.access_key_secret, V1StringToSign(options.method, all));
    ParamList wire(all.begin(), all.end());
    wire.emplace_back("Signature", signature);
    // Sent, not signed, as the SDKs do.
    r.headers.push_back({"x-acs-action", action});
    r.headers.push_back({"x-acs-version", options.version});
    if (options.method == "GET") {
      r.target = "/?" + Encode(wire);
    } else {
      r.target = "/";
      r.body = Encode(wire);
      r.headers.push_back({"content-type", "application/x-www-form-urlencoded"});
    }
    return r;
  }
  ParamMap query;
  if (options.method == "GET") {
    query = ParamMap(params.begin(), params.end());
    r.target = query.empty() ? "/" : "/?" + Encode(ParamList(query.begin(), query.end()));
  } else {
    r.target = "/";
    r.body = Encode(params);
  }
  std::vector<CanonicalHeader> signed_headers;
  signed_headers.push_back({"host", options.host});
  if (!r.body.empty())
    signed_headers.push_back({"content-type", "application/x-www-form-urlencoded"});
  const std::string payload_hash = HexSha256(r.body);
  signed_headers.push_back({"x-acs-action", action});
  signed_headers.push_back({"x-acs-content-sha256", payload_hash});
  signed_headers.push_back({"x-acs-date", timestamp});
  signed_headers.push_back({"x-acs-signature-nonce", nonce});
  signed_headers.push_back({"x-acs-version", options.version});
  std::sort(signed_headers.begin(), signed_headers.end(),
            [](const CanonicalHeader& a, const CanonicalHeader& b) { return a.name < b.name; });
  const std::string cr = Acs3CanonicalRequest(r.method, "/", query, signed_headers, payload_hash);
  const std::string signature = Acs3Signature(options.access_key_secret, Acs3StringToSign(cr));
  r.headers.clear();
  for (const auto& h : signed_headers) r.headers.push_back({h.name, h.value});
  r.headers.push_back({"accept", options.format == "XML" ? "application/xml" : "application/json"});
  r.headers.push_back(
      {"authorization", Acs3AuthorizationHeader(options.access_key_id, signed_headers, signature)});
  return r;
}

Expected<Endpoint> ParseEndpoint(std::string_view url) {
  Endpoint e;
  if (url.starts_with("https://")) {
    e.tls = true;
    e.port = 443;
    url.remove_prefix(8);
  } else if (url.starts_with("http://")) {
    url.remove_prefix(7);
  } else {
    return Error(Errc::kInvalidArgument,
                 "endpoint '" + std::string(url) + "': expected http://host[:port] or https://...");
  }
  if (url.ends_with('/')) url.remove_suffix(1);
  std::string_view host = url;
  if (url.starts_with('[')) {  // [::1]:port
    const auto close = url.find(']');
    if (close == std::string_view::npos) {
      return Error(Errc::kInvalidArgument, "endpoint: unterminated '[' in the host");
    }
    host = url.substr(1, close - 1);
    url.remove_prefix(close + 1);
  } else {
    const auto colon = url.rfind(':');
    host = url.substr(0, colon);
    url = colon == std::string_view::npos ? std::string_view() : url.substr(colon);
  }
  e.host = host;
  if (!url.empty()) {
    if (url.front() != ':' || url.size() < 2) {
      return Error(Errc::kInvalidArgument, "endpoint: expected ':port' after the host");
    }
    const auto port = ParseDecimal<unsigned>(url.substr(1));
    if (!port || *port > 65535) {
      return Error(Errc::kInvalidArgument, "endpoint: bad port '" + std::string(url) + "'");
    }
    e.port = static_cast<std::uint16_t>(*port);
  }
  if (e.host.empty()) return Error(Errc::kInvalidArgument, "endpoint: no host");
  return e;
}

}  // namespace sag::cloud::rpc
