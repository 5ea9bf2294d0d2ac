// The HTTP exchange as sag-cloud's handlers see it, free of Beast: the server
// parses and bounds each request (size, time, de-chunked body), a handler (the
// RPC API, the image repository) turns it into a response. Beast stays in the
// server's translation unit, and handlers are tested without sockets.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace sag::cloud {

struct HttpHeader {
  std::string name;  // as received
  std::string value;
};

struct HttpRequest {
  std::string method;               // "GET", "POST", ...
  std::string target;               // path and query as received, still percent-encoded
  std::vector<HttpHeader> headers;  // in the order received, duplicates kept
  std::string body;                 // the whole body, de-chunked and capped by the server
  std::string remote;               // "127.0.0.1:53412"
  bool tls = false;                 // arrived over HTTPS

  // The first header named `name` (ASCII case-insensitive); nullopt if absent.
  [[nodiscard]] std::optional<std::string_view> Header(std::string_view name) const;
  // How many headers are named `name` (a duplicate signed header is an error).
  [[nodiscard]] std::size_t HeaderCount(std::string_view name) const;
};

// A byte range of a file, streamed by the server instead of a body string
// (images are far larger than what a handler should hold in memory).
struct FileRange {
  std::filesystem::path path;
  std::uint64_t offset = 0;
  std::uint64_t length = 0;
};

struct HttpResponse {
  int status = 200;
  std::vector<HttpHeader> headers;  // the server adds Content-Length, Date and Server
  std::string body;                 // ignored when `file` is set
  std::optional<FileRange> file;
};

using HttpHandler = std::function<HttpResponse(const HttpRequest&)>;

}  // namespace sag::cloud
