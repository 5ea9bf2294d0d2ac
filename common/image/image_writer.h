// Builds signed images (sag-image create, tests, the demo).
//
// CreateImage streams the payload file chunk by chunk: each chunk is
// compressed alone with zstd and appended to a temporary file next to the
// output, the manifest is built from the chunk hashes and signed, and the
// container is written with libarchive (ustar) and renamed into place. Memory
// stays at about two chunks whatever the payload size.
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "common/error.h"
#include "common/image/image.h"

namespace sag::image {

struct CreateParams {
  ImageType type = ImageType::kDevice;
  std::string version;
  std::vector<std::string> compatible;
  std::filesystem::path payload;
  std::filesystem::path key;    // PEM private key of the signer
  std::filesystem::path cert;   // PEM signer certificate
  std::filesystem::path chain;  // optional PEM intermediates, carried in the signature
  // kFormatVersion (1), kFormatDelta (2: frames plus a reuse index for
  // delta downloads, docs/delta.md) or kFormatCompact (3: format 2 with a
  // compact frame table and 5-byte index hashes) or kFormatGrouped (4:
  // format 3 with a trained zstd dictionary and one SHA-256 per group of
  // frames). Formats 2 to 4 need agents that read them.
  int format = kFormatVersion;
  std::uint64_t chunk_size = kDefaultChunkSize;  // the frame size in formats 2 to 4
  // Format 4: frames per verification group, and the size of the zstd
  // dictionary trained on the payload (0: none).
  std::uint64_t group_frames = kDefaultGroupFrames;
  std::uint64_t dict_bytes = kDefaultDictBytes;
  int zstd_level = 3;
  std::optional<std::string> build_time;  // default: now, ISO 8601 UTC
  std::filesystem::path output;
};

// Errors: kInvalidArgument (bad parameters, checked with ParseManifest's
// rules), kNotFound/kIo (files), kKeyInvalid (key, certificate or chain
// unusable or not matching), kImageTooLarge (payload.zst above ustar's 8 GiB).
[[nodiscard]] Status CreateImage(const CreateParams& params, const Limits& limits = {});

// A detached DER CMS signature over `content` as CreateImage makes it. Signs
// with any certificate: refusing bad signers is the verifier's job, and tests
// need images signed by bad ones.
[[nodiscard]] Expected<std::string> SignManifest(std::string_view content,
                                                 const std::filesystem::path& key,
                                                 const std::filesystem::path& cert,
                                                 const std::filesystem::path& chain = {});

// Writes a container from parts as they are (tests build broken images
// with it): the three entries, the payload.zst bytes read from a file.
[[nodiscard]] Status WriteContainer(const std::filesystem::path& output,
                                    std::string_view manifest_json, std::string_view signature_der,
                                    const std::filesystem::path& payload_zst);

}  // namespace sag::image
