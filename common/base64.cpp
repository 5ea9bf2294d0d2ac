#include "common/base64.h"

#include <openssl/evp.h>

namespace sag {

std::string Base64Encode(std::string_view data) {
  std::string out(4 * ((data.size() + 2) / 3), '\0');
  const int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                                reinterpret_cast<const unsigned char*>(data.data()),
                                static_cast<int>(data.size()));
  out.resize(static_cast<std::size_t>(n));
  return out;
}

Expected<std::string> Base64Decode(std::string_view text) {
  if (text.size() % 4 != 0) {
    return Error(Errc::kInvalidArgument, "base64 text length is not a multiple of 4");
  }
  std::string out(3 * text.size() / 4, '\0');
  const int n = EVP_DecodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                                reinterpret_cast<const unsigned char*>(text.data()),
                                static_cast<int>(text.size()));
  if (n < 0) return Error(Errc::kInvalidArgument, "not valid base64");
  // EVP_DecodeBlock counts padding as zero bytes; drop them.
  auto len = static_cast<std::size_t>(n);
  if (!text.empty() && text.back() == '=') --len;
  if (text.size() > 1 && text[text.size() - 2] == '=') --len;
  out.resize(len);
  return out;
}

}  // namespace sag
