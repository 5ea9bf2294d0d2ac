#include "cloud/rpc/rpc_service.h"

#include <openssl/rand.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cstdio>
#include <ctime>

#include "cloud/rpc/percent.h"
#include "cloud/rpc/signature.h"

namespace sag::cloud::rpc {

namespace {

constexpr std::string_view kFormType = "application/x-www-form-urlencoded";

bool EqualsNoCase(std::string_view a, std::string_view b) {
  return std::equal(a.begin(), a.end(), b.begin(), b.end(), [](char x, char y) {
    return std::tolower(static_cast<unsigned char>(x)) ==
           std::tolower(static_cast<unsigned char>(y));
  });
}

bool ContainsNoCase(std::string_view hay, std::string_view needle) {
  if (needle.size() > hay.size()) return false;
  for (std::size_t i = 0; i + needle.size() <= hay.size(); ++i) {
    if (EqualsNoCase(hay.substr(i, needle.size()), needle)) return true;
  }
  return false;
}

std::string Lower(std::string_view s) {
  std::string out(s);
  std::transform(out.begin(), out.end(), out.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return out;
}

// Adds `list` to `into`; a name already there is an error.
std::optional<RpcError> Merge(const ParamList& list, ParamMap& into) {
  for (const auto& [name, value] : list) {
    if (!into.emplace(name, value).second) {
      return errors::InvalidParameter(name, "It is given more than once.");
    }
  }
  return std::nullopt;
}

}  // namespace

NonceCache::Result NonceCache::Insert(const std::string& key, Clock::time_point now) {
  while (!order_.empty() && order_.front().first + ttl_ < now) {
    seen_.erase(order_.front().second);
    order_.pop_front();
  }
  if (seen_.contains(key)) return Result::kUsed;
  if (seen_.size() >= capacity_) return Result::kFull;
  seen_.insert(key);
  order_.emplace_back(now, key);
  return Result::kNew;
}

std::string NewRequestId() {
  std::array<unsigned char, 16> b{};
  if (RAND_bytes(b.data(), static_cast<int>(b.size())) != 1) {
    // The id only needs to be unique enough to trace a request.
    const auto t = Clock::now().time_since_epoch().count();
    for (std::size_t i = 0; i < b.size(); ++i) {
      b[i] = static_cast<unsigned char>(static_cast<std::uint64_t>(t) >> ((i % 8) * 8));
    }
  }
  b[6] = static_cast<unsigned char>((b[6] & 0x0FU) | 0x40U);
  b[8] = static_cast<unsigned char>((b[8] & 0x3FU) | 0x80U);
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  for (std::size_t i = 0; i < b.size(); ++i) {
    if (i == 4 || i == 6 || i == 8 || i == 10) out.push_back('-');
    out.push_back(kHex[b[i] >> 4U]);
    out.push_back(kHex[b[i] & 0x0FU]);
  }
  return out;
}

std::optional<Clock::time_point> ParseIsoTimestamp(std::string_view text) {
  // YYYY-MM-DDThh:mm:ss[.fff]Z
  if (text.size() < 20 || text.back() != 'Z') return std::nullopt;
  const auto digits = [&](std::size_t pos, std::size_t n) -> int {
    int v = 0;
    for (std::size_t i = pos; i < pos + n; ++i) {
      if (std::isdigit(static_cast<unsigned char>(text[i])) == 0) return -1;
      v = v * 10 + (text[i] - '0');
    }
    return v;
  };
  if (text[4] != '-' || text[7] != '-' || text[10] != 'T' || text[13] != ':' || text[16] != ':') {
    return std::nullopt;
  }
  const std::string_view frac = text.substr(19, text.size() - 20);
  if (!frac.empty()) {
    if (frac.front() != '.' || frac.size() < 2 || frac.size() > 10) return std::nullopt;
    if (!std::all_of(frac.begin() + 1, frac.end(),
                     [](char c) { return std::isdigit(static_cast<unsigned char>(c)) != 0; })) {
      return std::nullopt;
    }
  }
  const int year = digits(0, 4);
  const int month = digits(5, 2);
  const int day = digits(8, 2);
  const int hour = digits(11, 2);
  const int minute = digits(14, 2);
  const int second = digits(17, 2);
  if (year < 1970 || month < 1 || month > 12 || day < 1 || day > 31 || hour < 0 || hour > 23 ||
      minute < 0 || minute > 59 || second < 0 || second > 60) {
    return std::nullopt;
  }
  std::tm tm{};
  tm.tm_year = year - 1900;
  tm.tm_mon = month - 1;
  tm.tm_mday = day;
  tm.tm_hour = hour;
  tm.tm_min = minute;
  tm.tm_sec = second;
  const std::time_t t = timegm(&tm);
  if (t == static_cast<std::time_t>(-1) || tm.tm_mday != day) return std::nullopt;  // 31 Feb
  // The clock counts nanoseconds in 64 bits, up to the year 2262: a later
  // time does not fit it (converting it would overflow).
  if (t >= std::chrono::duration_cast<std::chrono::seconds>(Clock::duration::max()).count()) {
    return std::nullopt;
  }
  return Clock::from_time_t(t);
}

std::string FormatIsoTimestamp(Clock::time_point t) {
  const std::time_t tt = Clock::to_time_t(t);
  std::tm tm{};
  gmtime_r(&tt, &tm);
  std::array<char, 32> buf{};
  const auto n = std::strftime(buf.data(), buf.size(), "%Y-%m-%dT%H:%M:%SZ", &tm);
  return {buf.data(), n};
}

RpcService::RpcService(RpcConfig config, ApiBackend& backend, Now now)
    : RpcService(std::move(config), backend, nullptr, std::move(now)) {}

RpcService::RpcService(RpcConfig config, ApiBackend& backend, NonceStore* nonces, Now now)
    : config_(std::move(config)),
      actions_(backend, config_.actions),
      now_(std::move(now)),
      nonces_(2 * config_.time_window, config_.max_nonces),
      nonce_store_(nonces) {}

HttpHandler RpcService::Handler() {
  return [this](const HttpRequest& r) { return Handle(r); };
}

HttpResponse RpcService::Fail(Format format, const std::string& request_id,
                              const RpcError& error) const {
  return ErrorResponse(format, error, request_id, config_.host_id);
}

HttpResponse RpcService::TransportError(const RpcError& error) const {
  return Fail(Format::kJson, NewRequestId(), error);
}

HttpResponse RpcService::Handle(const HttpRequest& request) {
  const std::string request_id = NewRequestId();
  const Clock::time_point now = now_();
  Format format = Format::kJson;
  const auto fail = [&](const RpcError& e) {
    spdlog::info("rpc {} {} from {}: {} {}", request.method, request_id, request.remote,
                 e.http_status, e.code);
    return Fail(format, request_id, e);
  };

  // ---- where, how, and the parameters ----
  const auto qmark = request.target.find('?');
  const std::string_view path = std::string_view(request.target).substr(0, qmark);
  const std::string_view query = qmark == std::string::npos
                                     ? std::string_view()
                                     : std::string_view(request.target).substr(qmark + 1);
  if (path != "/" || (request.method != "GET" && request.method != "POST")) {
    return fail(errors::InvalidActionNotFound());
  }
  auto query_list = ParseQueryString(query);
  if (!query_list)
    return fail(errors::InvalidParameter("QueryString", query_list.error().message()));
  ParamMap query_params;
  if (auto e = Merge(*query_list, query_params)) return fail(*e);
  ParamMap params = query_params;
  const auto content_type = request.Header("content-type");
  if (request.method == "POST" && !request.body.empty() && content_type &&
      ContainsNoCase(*content_type, kFormType)) {
    auto body_list = ParseQueryString(request.body);
    if (!body_list) return fail(errors::InvalidParameter("Body", body_list.error().message()));
    if (auto e = Merge(*body_list, params)) return fail(*e);
  }

  // ACS3 when an Authorization header comes without a signature 1.0
  // Signature parameter (a proxy's own Authorization does not turn a
  // signature 1.0 call into a broken ACS3 one).
  const auto authorization = request.Header("authorization");
  const bool acs3 = authorization.has_value() && !params.contains("Signature");
  if (const auto it = params.find("Format"); it != params.end()) {
    if (EqualsNoCase(it->second, "XML")) {
      format = Format::kXml;
    } else if (!EqualsNoCase(it->second, "JSON")) {
      return fail(errors::InvalidParameter("Format", "Valid values: JSON, XML."));
    }
  } else if (const auto accept = request.Header("accept"); acs3 && accept) {
    if (ContainsNoCase(*accept, "xml") && !ContainsNoCase(*accept, "json")) format = Format::kXml;
  }

  // ---- the signature's inputs ----
  std::string action;
  std::string version;
  std::string access_key_id;
  std::string nonce;
  std::string timestamp;
  std::string signature;
  std::vector<CanonicalHeader> signed_headers;
  if (!acs3) {
    for (const char* name : {"Action", "Version", "AccessKeyId", "Signature", "SignatureMethod",
                             "SignatureVersion", "SignatureNonce"}) {
      if (!params.contains(name)) return fail(errors::MissingParameter(name));
    }
    // The published signature example spells it "TimeStamp".
    auto ts = params.find("Timestamp");
    if (ts == params.end()) ts = params.find("TimeStamp");
    if (ts == params.end()) return fail(errors::MissingParameter("Timestamp"));
    if (params.at("SignatureMethod") != "HMAC-SHA1") {
      return fail(errors::IncompleteSignature("SignatureMethod must be HMAC-SHA1."));
    }
    if (params.at("SignatureVersion") != "1.0") {
      return fail(errors::IncompleteSignature("SignatureVersion must be 1.0."));
    }
    action = params.at("Action");
    version = params.at("Version");
    access_key_id = params.at("AccessKeyId");
    nonce = params.at("SignatureNonce");
    signature = params.at("Signature");
    timestamp = ts->second;
  } else {
    auto auth = ParseAcs3Authorization(*authorization);
    if (!auth) return fail(errors::IncompleteSignature(auth.error().message()));
    for (const char* required : {"host", "x-acs-action", "x-acs-version", "x-acs-date",
                                 "x-acs-signature-nonce", "x-acs-content-sha256"}) {
      if (std::find(auth->signed_headers.begin(), auth->signed_headers.end(), required) ==
          auth->signed_headers.end()) {
        return fail(errors::IncompleteSignature("The header " + std::string(required) +
                                                " must be signed."));
      }
    }
    for (const auto& name : auth->signed_headers) {
      const auto count = request.HeaderCount(name);
      if (count != 1) {
        return fail(errors::IncompleteSignature(
            "The signed header " + name +
            (count == 0 ? " is absent." : " is given more than once.")));
      }
      signed_headers.push_back({name, std::string(*request.Header(name))});
    }
    action = *request.Header("x-acs-action");
    version = *request.Header("x-acs-version");
    timestamp = *request.Header("x-acs-date");
    nonce = *request.Header("x-acs-signature-nonce");
    access_key_id = auth->credential;
    signature = Lower(auth->signature);
  }
  if (nonce.empty()) return fail(errors::MissingParameter("SignatureNonce"));
  if (version != kApiVersion) return fail(errors::InvalidVersion());
  const auto when = ParseIsoTimestamp(timestamp);
  if (!when) return fail(errors::InvalidTimeStampFormat());
  if (*when > now + config_.time_window || *when + config_.time_window < now) {
    return fail(errors::InvalidTimeStampExpired());
  }
  const auto key = std::find_if(config_.access_keys.begin(), config_.access_keys.end(),
                                [&](const AccessKey& k) { return k.id == access_key_id; });
  if (key == config_.access_keys.end()) return fail(errors::InvalidAccessKeyIdNotFound());

  // ---- the signature ----
  if (!acs3) {
    const std::string sts = V1StringToSign(request.method, params);
    if (!SignaturesEqual(V1Signature(key->secret, sts), signature)) {
      return fail(errors::SignatureDoesNotMatchV1(sts));
    }
  } else {
    // The payload is hashed as received: a body swapped after signing no
    // longer matches the signed x-acs-content-sha256.
    const std::string cr = Acs3CanonicalRequest(request.method, "/", query_params, signed_headers,
                                                HexSha256(request.body));
    const std::string sts = Acs3StringToSign(cr);
    if (!SignaturesEqual(Acs3Signature(key->secret, sts), signature)) {
      return fail(errors::SignatureDoesNotMatchAcs3(sts));
    }
  }

  // ---- rate and replay ----
  {
    const std::lock_guard lock(mu_);
    if (config_.rate_per_second > 0) {
      auto& b = buckets_[key->id];
      const double burst = std::max(1.0, config_.rate_burst);
      if (b.at == Clock::time_point()) b.tokens = burst;
      const double elapsed = std::chrono::duration<double>(now - b.at).count();
      if (b.at != Clock::time_point() && elapsed > 0) {
        b.tokens = std::min(burst, b.tokens + elapsed * config_.rate_per_second);
      }
      b.at = now;
      if (b.tokens < 1) return fail(errors::Throttling());
      b.tokens -= 1;
    }
    const std::string nonce_key = key->id + '\n' + nonce;
    switch (nonces_.Insert(nonce_key, now)) {
      case NonceCache::Result::kNew:
        break;
      case NonceCache::Result::kUsed:
        return fail(errors::SignatureNonceUsed());
      case NonceCache::Result::kFull:
        return fail(errors::Throttling());
    }
    // New to this process; the store also knows the ones of before a restart.
    if (nonce_store_ != nullptr) {
      auto fresh = nonce_store_->Remember(nonce_key, now, now + 2 * config_.time_window);
      if (!fresh) {
        spdlog::error("rpc {}: recording the nonce: {}", request_id, fresh.error().ToString());
        return fail(errors::InternalError());
      }
      if (!*fresh) return fail(errors::SignatureNonceUsed());
    }
  }

  // ---- the action ----
  if (!SmartagActions::Known(action)) return fail(errors::InvalidActionNotFound());
  const CallContext ctx{request_id, key->account, key->read_only, now};
  const ActionResult result = actions_.Call(action, ctx, params);
  if (result.error) return fail(*result.error);
  spdlog::info("rpc {} {} {} by {}: 200", request.method, request_id, action, key->id);
  return SuccessResponse(format, action, request_id, result.body);
}

}  // namespace sag::cloud::rpc
