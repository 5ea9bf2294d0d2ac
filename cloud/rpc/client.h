// The client side of the RPC API, as Alibaba Cloud's SDKs send it: sign a
// call with signature 1.0 or ACS3-HMAC-SHA256 (SignRequest, pure, so tests
// build exact requests with it) and send it over HTTP (SendRequest, a small
// blocking client; all its Beast code is in client.cpp). `sag-cloud call` is
// made of the two.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

#include "cloud/http_types.h"
#include "cloud/rpc/api_backend.h"
#include "cloud/rpc/percent.h"
#include "common/error.h"

namespace sag::cloud::rpc {

enum class SignatureScheme { kV1, kAcs3 };

struct SignOptions {
  std::string host;  // the Host header ("127.0.0.1:8080")
  std::string access_key_id;
  std::string access_key_secret;
  SignatureScheme scheme = SignatureScheme::kAcs3;
  std::string method = "POST";  // GET: parameters in the query; POST: in a form body
  std::string format = "JSON";  // signature 1.0: the Format parameter
  std::string version = "2018-03-13";
};

// A request ready to send; `nonce` empty: 32 random hex digits.
HttpRequest SignRequest(const SignOptions& options, const std::string& action,
                        const ParamList& params, Clock::time_point now, std::string nonce = {});

// 32 random lower-case hex digits, as the SDKs make their nonces.
std::string NewNonce();

struct Endpoint {
  std::string host;  // name or address
  std::uint16_t port = 80;
  bool tls = false;
  std::string ca_file;  // https: the pinned CA the server's certificate must chain to
};

// "http://host[:port]" or "https://host[:port]", "[::1]" for IPv6 (a
// trailing '/' tolerated).
Expected<Endpoint> ParseEndpoint(std::string_view url);

// One HTTP/1.1 exchange, connect and whole exchange bounded by `timeout`.
// Over https the server's certificate must chain to `ca_file` and name the
// host. kNetConnect, kNetTls, kTimeout, kNetProtocol.
Expected<HttpResponse> SendRequest(const Endpoint& endpoint, const HttpRequest& request,
                                   std::chrono::milliseconds timeout);

}  // namespace sag::cloud::rpc
