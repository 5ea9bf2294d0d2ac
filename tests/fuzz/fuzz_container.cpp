// libFuzzer: the container reader. Each input goes through
//   1. ReadUnverifiedHeader + SignerSubjectUnverified (strict ustar, CMS DER),
//   2. ImageReader with a pinned root (signature and chain checks),
//   3. ChunkReader with a fixed, genuinely signed manifest, so that the zstd
//      and hash paths see fuzzed bytes too (they are unreachable through 2
//      without forging a signature).
// A development PKI and one small image are made at start-up in a temporary
// directory.
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>

#include "common/atomic_file.h"
#include "common/image/image.h"
#include "common/image/image_writer.h"
#include "common/image/pki.h"

namespace {

using namespace sag::image;  // NOLINT(google-build-using-namespace)

class MemSource final : public ByteSource {
 public:
  MemSource(const std::uint8_t* d, std::size_t n) : d_(d), n_(n) {}
  sag::Expected<std::size_t> Read(std::span<std::uint8_t> buf) override {
    // Uneven pieces, as from a network.
    const std::size_t n = std::min({buf.size(), n_ - pos_, std::size_t{1000}});
    if (n > 0) std::memcpy(buf.data(), d_ + pos_, n);
    pos_ += n;
    return n;
  }

 private:
  const std::uint8_t* d_;
  std::size_t n_;
  std::size_t pos_ = 0;
};

struct World {
  std::filesystem::path dir;
  Trust trust;
  Manifest manifest;
};

World* g_world = nullptr;

void Die(const std::string& what) {
  std::fprintf(stderr, "fuzz_container setup: %s\n", what.c_str());
  std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int* /*argc*/, char*** /*argv*/) {
  auto* w = new World();  // lives for the process
  char tmpl[] = "/tmp/sag-fuzz-XXXXXX";
  if (::mkdtemp(tmpl) == nullptr) Die("mkdtemp");
  w->dir = tmpl;
  if (!pki::InitDevPki(w->dir / "pki")) Die("pki");
  std::string payload;
  for (int i = 0; i < 3000; ++i) payload += "chunk line " + std::to_string(i) + "\n";
  std::ofstream(w->dir / "payload") << payload;
  CreateParams p;
  p.version = "1.0.1";
  p.compatible = {"sag-1000"};
  p.payload = w->dir / "payload";
  p.key = w->dir / "pki" / "signer.key";
  p.cert = w->dir / "pki" / "signer.pem";
  p.chain = w->dir / "pki" / "signer-chain.pem";
  p.chunk_size = 4096;
  p.output = w->dir / "seed.img";
  if (!CreateImage(p)) Die("create");
  w->trust.root_ca = w->dir / "pki" / "root-ca.pem";
  auto src = FileSource::Open(p.output);
  ImageReader r(**src, w->trust);
  auto h = r.ReadHeader();
  if (!h) Die(h.error().ToString());
  w->manifest = (*h)->manifest;
  g_world = w;
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  Limits limits;
  limits.max_manifest_bytes = 1U << 20U;
  {
    MemSource src(data, size);
    auto h = ReadUnverifiedHeader(src, limits);
    if (h) (void)SignerSubjectUnverified(h->signature_der);
  }
  {
    MemSource src(data, size);
    ImageReader reader(src, g_world->trust, limits);
    for (int i = 0; i < 64; ++i) {
      auto c = reader.NextChunk();
      if (!c || !*c) break;
    }
  }
  {
    MemSource src(data, size);
    ChunkReader reader(src, g_world->manifest, size % g_world->manifest.chunks.size(), limits);
    for (;;) {
      auto c = reader.Next();
      if (!c || !*c) break;
    }
  }
  return 0;
}
