// Base64 (RFC 4648, with padding) over OpenSSL's EVP encoder.
#pragma once

#include <string>
#include <string_view>

#include "common/error.h"

namespace sag {

std::string Base64Encode(std::string_view data);
Expected<std::string> Base64Decode(std::string_view text);

}  // namespace sag
