#include "cloud/rpc/body.h"

#include "cloud/rpc/percent.h"

namespace sag::cloud::rpc {

namespace {

constexpr std::string_view kJsonType = "application/json;charset=utf-8";
constexpr std::string_view kXmlType = "text/xml;charset=utf-8";

void AppendEscaped(std::string& out, std::string_view text) {
  for (const char c : text) {
    switch (c) {
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '&':
        out += "&amp;";
        break;
      case '"':
        out += "&quot;";
        break;
      case '\'':
        out += "&apos;";
        break;
      default:
        out.push_back(c);
    }
  }
}

void AppendValue(std::string& out, std::string_view name, const nlohmann::ordered_json& v);

void AppendChildren(std::string& out, const nlohmann::ordered_json& obj) {
  for (const auto& [key, value] : obj.items()) {
    if (value.is_array()) {
      for (const auto& item : value) AppendValue(out, key, item);
    } else {
      AppendValue(out, key, value);
    }
  }
}

void AppendValue(std::string& out, std::string_view name, const nlohmann::ordered_json& v) {
  out += '<';
  out += name;
  out += '>';
  if (v.is_object()) {
    AppendChildren(out, v);
  } else if (v.is_string()) {
    AppendEscaped(out, v.get_ref<const std::string&>());
  } else if (!v.is_null()) {
    out += v.dump();  // numbers and booleans as JSON writes them
  }
  out += "</";
  out += name;
  out += '>';
}

HttpResponse Respond(int status, Format format, std::string body) {
  HttpResponse r;
  r.status = status;
  r.headers.push_back(
      {"Content-Type", std::string(format == Format::kJson ? kJsonType : kXmlType)});
  r.body = std::move(body);
  return r;
}

}  // namespace

std::string RenderXml(std::string_view root, const nlohmann::ordered_json& doc) {
  std::string out = R"(<?xml version="1.0" encoding="UTF-8"?>)";
  AppendValue(out, root, doc);
  return out;
}

HttpResponse SuccessResponse(Format format, std::string_view action, std::string_view request_id,
                             const nlohmann::ordered_json& doc) {
  nlohmann::ordered_json full = nlohmann::ordered_json::object();
  full["RequestId"] = request_id;
  for (const auto& [key, value] : doc.items()) {
    if (key != "RequestId") full[key] = value;
  }
  if (format == Format::kJson) {
    return Respond(200, format,
                   full.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace));
  }
  return Respond(200, format, RenderXml(std::string(action) + "Response", full));
}

HttpResponse ErrorResponse(Format format, const RpcError& error, std::string_view request_id,
                           std::string_view host_id) {
  nlohmann::ordered_json doc = nlohmann::ordered_json::object();
  doc["RequestId"] = request_id;
  doc["HostId"] = host_id;
  doc["Code"] = error.code;
  doc["Message"] = error.message;
  doc["Recommend"] = RecommendUrl(error.code, request_id);
  // Invalid UTF-8 echoed from a request (a string to sign) must not make
  // dump() throw: replace it.
  if (format == Format::kJson) {
    return Respond(error.http_status, format,
                   doc.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace));
  }
  return Respond(error.http_status, format, RenderXml("Error", doc));
}

std::string RecommendUrl(std::string_view code, std::string_view request_id) {
  return "https://api.aliyun.com/troubleshoot?q=" + PercentEncode(code) +
         "&product=Smartag&requestId=" + PercentEncode(request_id);
}

}  // namespace sag::cloud::rpc
