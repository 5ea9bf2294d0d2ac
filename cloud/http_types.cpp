#include "cloud/http_types.h"

#include <algorithm>
#include <cctype>

namespace sag::cloud {

namespace {

bool EqualsNoCase(std::string_view a, std::string_view b) {
  return std::equal(a.begin(), a.end(), b.begin(), b.end(), [](char x, char y) {
    return std::tolower(static_cast<unsigned char>(x)) ==
           std::tolower(static_cast<unsigned char>(y));
  });
}

}  // namespace

std::optional<std::string_view> HttpRequest::Header(std::string_view name) const {
  for (const auto& h : headers) {
    if (EqualsNoCase(h.name, name)) return std::string_view(h.value);
  }
  return std::nullopt;
}

std::size_t HttpRequest::HeaderCount(std::string_view name) const {
  return static_cast<std::size_t>(
      std::count_if(headers.begin(), headers.end(),
                    [&](const HttpHeader& h) { return EqualsNoCase(h.name, name); }));
}

}  // namespace sag::cloud
