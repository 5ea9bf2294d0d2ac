// Response bodies in the two formats an RPC caller may ask for (Format=JSON
// or XML), from one document model (nlohmann::ordered_json, keys in the
// order Alibaba Cloud writes them).
//
// XML mapping, as Alibaba Cloud's API renders its models: the document is
// the children of a root element ("<Action>Response" for success, "Error"
// for errors); an object member becomes an element; an array member becomes
// one element per item, all named after the member. So the JSON list wrapper
// {"SmartAGVersions":{"SmartAGVersion":[a,b]}} is
// <SmartAGVersions><SmartAGVersion>a</SmartAGVersion><SmartAGVersion>b</SmartAGVersion></SmartAGVersions>.
// Booleans are "true"/"false", null an empty element.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

#include "cloud/http_types.h"
#include "cloud/rpc/rpc_error.h"

namespace sag::cloud::rpc {

enum class Format { kJson, kXml };

std::string RenderXml(std::string_view root, const nlohmann::ordered_json& doc);

// 200, {"RequestId": ..., then the members of `doc`}.
HttpResponse SuccessResponse(Format format, std::string_view action, std::string_view request_id,
                             const nlohmann::ordered_json& doc);

// error.http_status with RequestId, HostId, Code, Message, Recommend.
HttpResponse ErrorResponse(Format format, const RpcError& error, std::string_view request_id,
                           std::string_view host_id);

// "https://api.aliyun.com/troubleshoot?q=<Code>&product=Smartag&requestId=<id>"
std::string RecommendUrl(std::string_view code, std::string_view request_id);

}  // namespace sag::cloud::rpc
