// Delta downloads for format 2 images (docs/delta.md): the reuse index, and
// the plan that says which frames a device can assemble from data it already
// holds and which byte ranges it must fetch. No network here: the plan is
// computed from the new image's verified manifest, its reuse index and local
// files or block devices (the active slot, the inactive slot).
//
// Matching and downloading use different units. A block (kReuseBlockSize,
// 4 KiB, the allocation unit of ext4 and EROFS) is what is looked up: the
// reuse index holds the first kReuseHashBytes (8, format 2) or
// kCompactHashBytes (5, format 3) bytes of each block's SHA-256. A frame (the manifest's
// frame_size, a multiple of the block size) is what is downloaded and what is verified: a frame is
// assembled locally only if every one of its blocks was found, and it counts as local only once the
// assembled bytes matched the frame's full signed SHA-256. A truncated hash is a lookup hint, never
// a proof: a collision or a block that rotted since it was indexed costs a download, not a bad
// write.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "common/error.h"
#include "common/image/image.h"
#include "common/unique_fd.h"

namespace sag::image {

// The first kReuseHashBytes bytes of the block's SHA-256 as a little-endian
// number. A block shorter than kReuseBlockSize (the payload's last) is hashed
// as if padded with zeros to kReuseBlockSize.
using BlockHash = std::uint64_t;
BlockHash HashBlock(std::span<const std::uint8_t> block);

// The stored form of a reuse index (what the manifest's reuse.sha256 covers):
// a zstd skippable frame (magic kReuseIndexMagic, u32 LE length) holding one
// zstd frame of the hashes, kReuseHashBytes each, in block order.
// `hash_bytes` (5 to 8) of each hash are stored: kReuseHashBytes in format
// 2, kCompactHashBytes in format 3.
Expected<std::string> EncodeReuseIndex(std::span<const BlockHash> hashes, int zstd_level,
                                       std::uint64_t hash_bytes = kReuseHashBytes);
// The bits of a BlockHash that an index of `hash_bytes`-byte hashes keeps.
BlockHash HashMask(std::uint64_t hash_bytes);

// Checks stored bytes against the manifest's reuse entry (SHA-256 first,
// then the frame shape and the decompressed size) and returns one hash per
// payload block. Errors: kChunkHashMismatch (not the signed bytes),
// kDecompress (signed but not a valid index: a broken signing tool),
// kInvalidArgument (a format 1 manifest).
Expected<std::vector<BlockHash>> DecodeReuseIndex(std::span<const std::uint8_t> stored,
                                                  const Manifest& manifest);

// Reads and decodes the reuse index of a verified image file (`header` from
// its ImageReader), reading only the index's bytes.
Expected<std::vector<BlockHash>> ReadReuseIndex(const std::filesystem::path& image,
                                                const VerifiedHeader& header);

// Data the device already holds, read in kReuseBlockSize blocks from offset 0.
struct LocalSource {
  std::filesystem::path path;  // a file or a block device
  // The source's block hashes, if kept beside it (an installed image's reuse
  // index): used instead of reading and hashing the source. A hint only: a
  // block that changed since is caught by the frame's full hash.
  std::optional<std::vector<BlockHash>> hashes;
  // How many bytes of each of `hashes` are meaningful (the index it came from:
  // 8 for format 2, 5 for format 3). Hashes are compared on the shorter of
  // this and the new image's.
  std::uint64_t hash_bytes = kReuseHashBytes;
};

// Where a block of the new payload was found. 8 bytes: one per payload block
// is kept (8 MiB for a 4 GiB image).
struct BlockLocation {
  static constexpr std::uint32_t kNowhere = 0xFF;
  static constexpr std::uint32_t kZero = 0xFE;  // an all-zero block: nothing to read
  static constexpr std::size_t kMaxSources = kZero;
  std::uint64_t source : 8 = kNowhere;  // index into the sources, or the above
  std::uint64_t block : 56 = 0;         // block number within that source
};

struct DeltaOptions {
  // Two downloads separated by at most this many compressed bytes of local
  // frames become one request (the local frames are fetched and discarded):
  // a request costs a round trip, a few hundred bytes of headers and (no
  // keep-alive yet) a TLS handshake of a few KiB. 4 KiB: about two 8 KiB
  // frames of format 4 (docs/delta.md, "The request plan").
  std::uint64_t max_gap = 4U << 10U;
  // A request is not extended past this many bytes (0: no cap), so that a
  // resumed download loses little.
  std::uint64_t max_request = 0;
  // Look for all-zero blocks without reading anything.
  bool zero_blocks = true;
};

// One single-range GET: bytes [offset, offset + length) of payload.zst's data
// (add VerifiedHeader::payload_offset for the container), covering frames
// [first_frame, end_frame).
struct RangeRequest {
  std::uint64_t offset = 0;
  std::uint64_t length = 0;
  std::size_t first_frame = 0;
  std::size_t end_frame = 0;
};

// Format 4: "frame" in frame_local and frames_rejected means a verification
// group (a Chunk); frame_have, frames_local, frames_download, frame_bytes and
// the requests' frame numbers count the frames (the unit of download).
struct DeltaPlan {
  std::vector<std::uint8_t> frame_local;  // per frame (group): 1 = assembled locally and verified
  std::vector<std::uint8_t> group_rejected;  // per frame (group): 1 = every block found, hash wrong
  // Format 4, per frame: 1 = not downloaded (its group verified locally, or
  // every block found in a group to be checked once the rest is fetched).
  std::vector<std::uint8_t> frame_have;
  std::vector<BlockLocation> blocks;   // per payload block: where it was found
  std::vector<RangeRequest> requests;  // in payload order
  std::uint64_t blocks_total = 0;
  std::uint64_t blocks_found = 0;     // by the truncated-hash lookup
  std::uint64_t frames_local = 0;     // verified against their full SHA-256
  std::uint64_t frames_rejected = 0;  // every block found, but the frame's SHA-256 did not match
  std::uint64_t frames_download = 0;
  std::uint64_t frame_bytes = 0;       // compressed bytes of the frames to download
  std::uint64_t request_bytes = 0;     // bytes the requests fetch (frames and bridged gaps)
  std::uint64_t index_bytes = 0;       // the stored reuse index (one more request)
  std::uint64_t dict_bytes = 0;        // format 4: the dictionary, if any frame is fetched
  std::uint64_t full_bytes = 0;        // every frame: what a full download fetches
  std::uint64_t local_read_bytes = 0;  // bytes read from the sources (scan and verification)
};

// Reads blocks of local sources by location; keeps the sources open.
class LocalBlocks {
 public:
  static Expected<LocalBlocks> Open(std::span<const LocalSource> sources);
  // Fills `out` (at most kReuseBlockSize bytes) with the located block's
  // first out.size() bytes; zeros past a source's end.
  Status Read(BlockLocation where, std::span<std::uint8_t> out);
  [[nodiscard]] std::uint64_t SizeOf(std::size_t source) const { return sizes_[source]; }
  [[nodiscard]] std::size_t count() const { return fds_.size(); }
  [[nodiscard]] int fd(std::size_t source) const { return fds_[source].get(); }
  [[nodiscard]] const std::filesystem::path& path(std::size_t source) const {
    return paths_[source];
  }

 private:
  std::vector<UniqueFd> fds_;
  std::vector<std::uint64_t> sizes_;
  std::vector<std::filesystem::path> paths_;
};

// Assembles frame `frame` of `manifest` from the blocks the plan located into
// `out` (resized to the frame's size) and checks it against the frame's
// signed SHA-256: kChunkHashMismatch if it does not match (a truncated-hash
// collision, bit rot), kInvalidArgument if a block was not located.
Status AssembleFrame(const Manifest& manifest, std::span<const BlockLocation> blocks,
                     std::size_t frame, LocalBlocks& local, std::vector<std::uint8_t>& out);

// Looks up every block of the new payload (zero blocks, then the sources in
// the order given: put the active slot first), assembles and verifies each
// frame whose blocks were all found, and plans coalesced requests for the
// rest. `index` is the new image's decoded reuse index. Memory besides the
// index (8 bytes per payload block): the blocks' locations (8 bytes a block,
// kept in the plan) and, while the sources are looked up, the blocks ordered
// by hash (4 bytes a block): 12 MiB for a 4 GiB image; one frame buffer, one
// 256 KiB read buffer.
Expected<DeltaPlan> PlanDelta(const Manifest& manifest, std::span<const BlockHash> index,
                              std::span<const LocalSource> sources,
                              const DeltaOptions& options = {});
// The same, taking the sources: each one's hashes are freed as soon as they
// were looked up (an install's kept index is not held while the plan reads
// the next source).
Expected<DeltaPlan> PlanDelta(const Manifest& manifest, std::span<const BlockHash> index,
                              std::vector<LocalSource>&& sources, const DeltaOptions& options = {});

// Requests for downloading exactly the frames marked 0 in `frame_local` (one
// entry per frame: FrameCount, format 4's frames rather than its groups),
// coalesced by `options` (PlanDelta calls this; exposed for tests and for a
// caller that marks frames itself).
std::vector<RangeRequest> PlanRequests(const Manifest& manifest,
                                       std::span<const std::uint8_t> frame_local,
                                       const DeltaOptions& options);

}  // namespace sag::image
