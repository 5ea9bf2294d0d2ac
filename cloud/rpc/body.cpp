#include "cloud/rpc/body.h"

#include "cloud/rpc/percent.h"

namespace sag::cloud::rpc {

namespace {

constexpr std::string_view kJsonType = "application/json;charset=utf-8";
constexpr std::string_view kXmlType = "text/xml;charset=utf-8";

constexpr std::string_view kReplacement = "\xEF\xBF\xBD";  // U+FFFD

// The length of the well-formed UTF-8 sequence at text[i] (RFC 3629: no
// overlong forms, no surrogates, nothing above U+10FFFF) and its code point;
// 0 when the bytes there are not one.
std::size_t Utf8Sequence(std::string_view text, std::size_t i, char32_t& cp) {
  const auto byte = [&](std::size_t k) { return static_cast<unsigned char>(text[k]); };
  const unsigned char b0 = byte(i);
  std::size_t n = 0;
  char32_t min = 0;
  if (b0 < 0x80) {
    cp = b0;
    return 1;
  }
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    n = 2;
    cp = b0 & 0x1FU;
    min = 0x80;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    n = 3;
    cp = b0 & 0x0FU;
    min = 0x800;
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    n = 4;
    cp = b0 & 0x07U;
    min = 0x10000;
  } else {
    return 0;  // a continuation byte, C0, C1 or F5..FF
  }
  if (i + n > text.size()) return 0;
  for (std::size_t k = 1; k < n; ++k) {
    if ((byte(i + k) & 0xC0U) != 0x80U) return 0;
    cp = (cp << 6U) | (byte(i + k) & 0x3FU);
  }
  if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
  return n;
}

// XML 1.0's Char production: what may appear in a document at all.
bool XmlChar(char32_t cp) {
  return cp == 0x9 || cp == 0xA || cp == 0xD || (cp >= 0x20 && cp <= 0xD7FF) ||
         (cp >= 0xE000 && cp <= 0xFFFD) || (cp >= 0x10000 && cp <= 0x10FFFF);
}

// Character data: markup escaped; a byte that does not start well-formed
// UTF-8, and a character XML cannot carry (controls, U+FFFE, U+FFFF), each
// become U+FFFD, as the JSON bodies replace invalid UTF-8. A parameter
// echoed back (a string to sign) or a stored string may hold anything: the
// body stays a well-formed document.
void AppendEscaped(std::string& out, std::string_view text) {
  for (std::size_t i = 0; i < text.size();) {
    char32_t cp = 0;
    const std::size_t n = Utf8Sequence(text, i, cp);
    if (n == 0 || !XmlChar(cp)) {
      out += kReplacement;
      i += n == 0 ? 1 : n;
      continue;
    }
    switch (cp) {
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
        out.append(text.substr(i, n));
    }
    i += n;
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
