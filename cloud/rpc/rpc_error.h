// The errors the Smartag RPC API answers, as Alibaba Cloud spells them: an
// HTTP status, a Code and a Message (reference section 1 for the actions'
// documented errors, section 3 for the gateway's). Every error body carries
// them with RequestId, HostId and Recommend (rpc/body.h).
//
// Where no source gives the exact wording, the code and message follow the
// family's conventions; docs/cloud.md lists which those are.
#pragma once

#include <string>
#include <string_view>

namespace sag::cloud::rpc {

struct RpcError {
  int http_status = 500;
  std::string code;
  std::string message;
};

namespace errors {

// ---- the API gateway: parameters, signature, time, replay ----
RpcError MissingParameter(std::string_view name);
RpcError InvalidParameter(std::string_view name, std::string_view why = {});
RpcError SignatureDoesNotMatchV1(std::string_view server_string_to_sign);
RpcError SignatureDoesNotMatchAcs3(std::string_view server_string_to_sign);
RpcError IncompleteSignature(std::string_view detail);
RpcError InvalidAccessKeyIdNotFound();
RpcError SignatureNonceUsed();
RpcError InvalidTimeStampExpired();
RpcError InvalidTimeStampFormat();
RpcError InvalidVersion();
RpcError InvalidActionNotFound();
RpcError Throttling();
RpcError InternalError();
RpcError RequestTooLarge(std::size_t limit);

// ---- Smartag actions ----
RpcError Forbidden();
RpcError PermissionError();
RpcError InvalidIdSmartag();
RpcError SmartAccessGatewayInArrears();
RpcError SmartAccessGatewayNotActivated();
RpcError NotBoundCcn();
RpcError SmartAccessGatewayNotOnline();
RpcError GetSmartAccessGatewayVersionError();
RpcError GetSmartAccessGatewayStateError();
RpcError VersionTooOld();
RpcError VersionNotExist();
RpcError InvalidIdSn();
RpcError IncorrectStatus();

}  // namespace errors
}  // namespace sag::cloud::rpc
