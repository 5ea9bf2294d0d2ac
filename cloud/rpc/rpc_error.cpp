#include "cloud/rpc/rpc_error.h"

namespace sag::cloud::rpc::errors {

namespace {

RpcError Make(int status, std::string_view code, std::string message) {
  return {status, std::string(code), std::move(message)};
}

}  // namespace

RpcError MissingParameter(std::string_view name) {
  return Make(400, "MissingParameter",
              "The input parameter \"" + std::string(name) +
                  "\" that is mandatory for processing this request is not supplied.");
}

RpcError InvalidParameter(std::string_view name, std::string_view why) {
  std::string message = "The specified parameter \"" + std::string(name) + "\" is not valid.";
  if (!why.empty()) message += " " + std::string(why);
  return Make(400, "InvalidParameter", std::move(message));
}

RpcError SignatureDoesNotMatchV1(std::string_view server_string_to_sign) {
  return Make(400, "SignatureDoesNotMatch",
              "Specified signature is not matched with our calculation. server string to sign is:" +
                  std::string(server_string_to_sign));
}

RpcError SignatureDoesNotMatchAcs3(std::string_view server_string_to_sign) {
  return Make(400, "SignatureDoesNotMatch",
              "Specified signature does not match our calculation. server StringToSign is [" +
                  std::string(server_string_to_sign) + "]");
}

RpcError IncompleteSignature(std::string_view detail) {
  return Make(400, "IncompleteSignature",
              "The request signature does not conform to Aliyun standards. " + std::string(detail));
}

RpcError InvalidAccessKeyIdNotFound() {
  return Make(404, "InvalidAccessKeyId.NotFound", "Specified access key is not found.");
}

RpcError SignatureNonceUsed() {
  return Make(400, "SignatureNonceUsed", "Specified signature nonce was used already.");
}

RpcError InvalidTimeStampExpired() {
  return Make(400, "InvalidTimeStamp.Expired", "Specified time stamp or date value is expired.");
}

RpcError InvalidTimeStampFormat() {
  return Make(400, "InvalidTimeStamp.Format",
              "Specified time stamp or date value is not well formatted.");
}

RpcError InvalidVersion() {
  return Make(400, "InvalidVersion", "Specified parameter Version is not valid.");
}

RpcError InvalidActionNotFound() {
  return Make(404, "InvalidAction.NotFound",
              "Specified api is not found, please check your url and method.");
}

RpcError Throttling() {
  return Make(400, "Throttling", "Request was denied due to request throttling.");
}

RpcError InternalError() {
  return Make(500, "InternalError", "An error occurred while processing your request.");
}

RpcError RequestTooLarge(std::size_t limit) {
  return Make(413, "RequestTooLarge",
              "The request is larger than " + std::to_string(limit) + " bytes.");
}

RpcError Forbidden() {
  return Make(403, "Forbidden", "User not authorized to operate on the specified resource.");
}

RpcError PermissionError() {
  return Make(500, "PermissionError", "No permission to operate the instance.");
}

RpcError InvalidIdSmartag() {
  return Make(403, "InvalidId.SMARTAG",
              "The specified smart access gateway instance id is invalid.");
}

RpcError SmartAccessGatewayInArrears() {
  return Make(500, "SmartAccessGatewayInArrears",
              "The specified Smart Access Gateway has expired.");
}

RpcError SmartAccessGatewayNotActivated() {
  return Make(500, "SmartAccessGatewayNotActivated",
              "The specified Smart Access Gateway has not been activated.");
}

RpcError NotBoundCcn() {
  return Make(403, "NotBoundCCN",
              "The specified smart access gateway has not bound CCN; please bind CCN first.");
}

RpcError SmartAccessGatewayNotOnline() {
  return Make(403, "SmartAccessGatewayNotOnline",
              "The specified smart access gateway is not online.");
}

RpcError GetSmartAccessGatewayVersionError() {
  return Make(403, "GetSmartAccessGatewayVersionError",
              "An error occurred while obtaining the smart access gateway version.");
}

RpcError GetSmartAccessGatewayStateError() {
  return Make(403, "GetSmartAccessGatewayStateError",
              "An error occurred while obtaining the smart access gateway status.");
}

RpcError VersionTooOld() {
  return Make(403, "VersionTooOld",
              "The specified version is outdated; please select a newer version.");
}

RpcError VersionNotExist() {
  return Make(400, "VersionNotExist", "The specified version does not exist.");
}

RpcError InvalidIdSn() {
  return Make(400, "InvalidId.SN",
              "The specified smart access gateway serial number does not exist.");
}

RpcError IncorrectStatus() {
  return Make(400, "IncorrectStatus", "The instance status is invalid.");
}

}  // namespace sag::cloud::rpc::errors
