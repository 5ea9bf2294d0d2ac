#include "common/sha256.h"

#include <fcntl.h>
#include <openssl/evp.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <vector>

namespace sag {

struct Sha256::Ctx {
  EVP_MD_CTX* md = nullptr;
  ~Ctx() { EVP_MD_CTX_free(md); }
};

Sha256::Sha256() : ctx_(std::make_unique<Ctx>()) {
  ctx_->md = EVP_MD_CTX_new();
  // Allocation failure of a 200-byte context leaves nothing sensible to do.
  if (ctx_->md == nullptr || EVP_DigestInit_ex(ctx_->md, EVP_sha256(), nullptr) != 1) {
    std::abort();
  }
}

Sha256::~Sha256() = default;
Sha256::Sha256(Sha256&&) noexcept = default;
Sha256& Sha256::operator=(Sha256&&) noexcept = default;

void Sha256::Update(std::span<const std::uint8_t> data) {
  if (!data.empty()) EVP_DigestUpdate(ctx_->md, data.data(), data.size());
}

void Sha256::Update(std::string_view data) {
  if (!data.empty()) EVP_DigestUpdate(ctx_->md, data.data(), data.size());
}

Digest Sha256::Final() {
  Digest d{};
  unsigned len = 0;
  EVP_DigestFinal_ex(ctx_->md, d.data(), &len);
  EVP_DigestInit_ex(ctx_->md, EVP_sha256(), nullptr);
  return d;
}

Digest Sha256::Of(std::span<const std::uint8_t> data) {
  Sha256 h;
  h.Update(data);
  return h.Final();
}

Digest Sha256::Of(std::string_view data) {
  Sha256 h;
  h.Update(data);
  return h.Final();
}

Expected<Digest> Sha256::OfFile(const std::filesystem::path& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return MakeErrno(Errc::kIo, "open " + path.string());
  Sha256 h;
  std::vector<std::uint8_t> buf(1U << 20U);
  for (;;) {
    const ssize_t n = ::read(fd, buf.data(), buf.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      auto err = MakeErrno(Errc::kIo, "read " + path.string());
      ::close(fd);
      return err;
    }
    if (n == 0) break;
    h.Update(std::span<const std::uint8_t>(buf.data(), static_cast<std::size_t>(n)));
  }
  ::close(fd);
  return h.Final();
}

std::string ToHex(std::span<const std::uint8_t> bytes) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out(bytes.size() * 2, '0');
  for (std::size_t i = 0; i < bytes.size(); ++i) {
    out[2 * i] = kDigits[bytes[i] >> 4U];
    out[2 * i + 1] = kDigits[bytes[i] & 0xFU];
  }
  return out;
}

Expected<Digest> DigestFromHex(std::string_view hex) {
  if (hex.size() != 64) {
    return Error(Errc::kManifestMalformed, "a SHA-256 digest is 64 hex digits, got " +
                                               std::to_string(hex.size()) + " characters");
  }
  auto nibble = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  Digest d{};
  for (std::size_t i = 0; i < d.size(); ++i) {
    const int hi = nibble(hex[2 * i]);
    const int lo = nibble(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) {
      return Error(Errc::kManifestMalformed, "not a hex digest: '" + std::string(hex) + "'");
    }
    d[i] = static_cast<std::uint8_t>((hi << 4) | lo);
  }
  return d;
}

}  // namespace sag
