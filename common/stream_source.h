// Opening an image wherever it is: a local file (USB stick, field install) or
// an http(s) URL, from a byte offset (a resumed job). A URL is fetched on its
// own thread into a few fixed buffers, so the network overlaps the stages
// that consume the bytes and memory stays bounded.
#pragma once

#include <memory>
#include <string>

#include "common/image/image.h"
#include "common/net/downloader.h"

namespace sag {

[[nodiscard]] bool IsUrl(const std::string& location);

Expected<std::unique_ptr<image::ByteSource>> OpenStreamSource(const std::string& location,
                                                              std::uint64_t offset,
                                                              const net::DownloadOptions& options);

}  // namespace sag
