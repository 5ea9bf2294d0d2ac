// Streaming SHA-256 over OpenSSL EVP.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <string_view>

#include "common/error.h"

namespace sag {

using Digest = std::array<std::uint8_t, 32>;

class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(Sha256&&) noexcept;
  Sha256& operator=(Sha256&&) noexcept;
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;

  void Update(std::span<const std::uint8_t> data);
  void Update(std::string_view data);
  // Returns the digest and resets the object for a new message.
  Digest Final();

  static Digest Of(std::span<const std::uint8_t> data);
  static Digest Of(std::string_view data);
  // Hashes a file in fixed-size blocks (memory does not grow with its size).
  static Expected<Digest> OfFile(const std::filesystem::path& path);

 private:
  struct Ctx;
  std::unique_ptr<Ctx> ctx_;
};

std::string ToHex(std::span<const std::uint8_t> bytes);
inline std::string ToHex(const Digest& d) { return ToHex(std::span<const std::uint8_t>(d)); }
// Parses exactly 64 hex digits (either case).
Expected<Digest> DigestFromHex(std::string_view hex);

}  // namespace sag
