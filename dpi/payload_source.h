// Where a DPI package's payload bytes come from.
//
// The installer never sees the signed container: it is handed the payload of
// an image whose header was already verified (common/image/image.h's
// ImageReader, or a test buffer), one chunk at a time. Keeping this seam small
// lets the agent plug the ImageReader in without the installer knowing about
// signatures, and lets tests feed hostile archives directly.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "common/error.h"
#include "common/image/image.h"

namespace sag::dpi {

// What the installer needs from a verified image header.
struct PackageInfo {
  image::ImageType type = image::ImageType::kDpi;
  std::string version;                  // the manifest's version, e.g. "20201117_1_0-0.0.1"
  std::uint64_t payload_size = 0;       // uncompressed payload bytes (the tar or tar.zst)
  std::vector<std::string> compatible;  // the hardware models the package is signed for

  static PackageInfo FromManifest(const image::Manifest& manifest) {
    return {manifest.type, manifest.version, manifest.payload_size, manifest.compatible};
  }
};

// A stream of verified payload bytes.
class PayloadSource {
 public:
  virtual ~PayloadSource() = default;
  // The next chunk of payload, or nullopt at the end. The span stays valid
  // until the next call. An error (a chunk hash mismatch, a network failure)
  // ends the install: nothing staged from this payload is ever activated.
  // Only nullopt means "all bytes were delivered and verified": a reader that
  // checks a whole-payload hash checks it before returning nullopt, so the
  // installer always reads to the end, even past the archive's end marker.
  virtual Expected<std::optional<std::span<const std::uint8_t>>> Next() = 0;
};

// A PayloadSource over a callback, e.g.
//   CallbackPayloadSource src([&]() -> Expected<std::optional<std::span<const uint8_t>>> {
//     SAG_TRY(auto chunk, reader.NextChunk());
//     if (!chunk) return std::optional<std::span<const uint8_t>>();
//     return std::optional(chunk->data);
//   });
class CallbackPayloadSource final : public PayloadSource {
 public:
  using NextFn = std::function<Expected<std::optional<std::span<const std::uint8_t>>>()>;
  explicit CallbackPayloadSource(NextFn next) : next_(std::move(next)) {}
  Expected<std::optional<std::span<const std::uint8_t>>> Next() override { return next_(); }

 private:
  NextFn next_;
};

}  // namespace sag::dpi
