// libFuzzer: the manifest parser (ParseManifest) and its serializer. A
// manifest that parses must serialize to JSON that parses to the same thing.
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "common/image/image.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  sag::image::Limits limits;
  limits.max_manifest_bytes = 1U << 20U;
  auto m = sag::image::ParseManifest(text, limits);
  if (m) {
    const auto again = sag::image::ParseManifest(sag::image::SerializeManifest(*m), limits);
    if (!again || sag::image::SerializeManifest(*again) != sag::image::SerializeManifest(*m)) {
      std::abort();
    }
  }
  return 0;
}
