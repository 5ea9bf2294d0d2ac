// The signed image format shared by Device OS images and DPI databases, and
// its streaming reader. The format is documented in docs/image-format.md.
//
// Container: a ustar archive whose entries are, in this order and nothing
// else: "manifest.json", "manifest.json.sig" (detached CMS signature, DER) and
// "payload.zst" (the payload as independently zstd-compressed chunks, back to
// back). The manifest is signed; it lists every chunk's compressed offset and
// length (relative to the start of payload.zst's data) and the SHA-256 of its
// uncompressed bytes, so each chunk is verified alone.
#pragma once

#include <cstdint>
#include <ctime>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "common/error.h"
#include "common/sha256.h"
#include "common/stage_time.h"

namespace sag::image {

enum class ImageType { kDevice, kDpi };
std::string_view ImageTypeName(ImageType type);  // "Device" | "Dpi"

struct Chunk {
  std::uint64_t offset = 0;  // of its compressed bytes within payload.zst's data
  std::uint64_t length = 0;  // compressed length
  std::uint64_t size = 0;    // uncompressed length (chunk_size, the last may be shorter)
  Digest sha256{};           // of the uncompressed bytes
  // Of the compressed bytes. Checked before decompressing any chunk that holds
  // a compressed zstd block: zstd ignores a few bits in its entropy tables,
  // and a changed bit there must be refused too. (A chunk of raw blocks
  // only is its content plus block headers that the frame check pins down.)
  Digest zsha256{};
};

// Format 2 only: where the reuse index is and what it must hash to
// (docs/delta.md). The index holds, for every kReuseBlockSize block of the
// payload (the last one zero-padded), the first kReuseHashBytes bytes of its
// SHA-256; it is stored zstd-compressed inside a zstd skippable frame right
// after the last payload frame, so `zstd -d payload.zst` still yields exactly
// the payload and a device fetches it with one Range request.
struct ReuseIndexInfo {
  std::uint64_t block_size = 0;  // kReuseBlockSize
  std::uint64_t hash_bytes = 0;  // kReuseHashBytes (format 2), kCompactHashBytes (format 3)
  std::uint64_t offset = 0;      // within payload.zst's data: right after the last frame
  std::uint64_t length = 0;      // stored bytes (the skippable frame, header included)
  std::uint64_t size = 0;        // decompressed: hash_bytes per block
  Digest sha256{};               // of the `length` stored bytes
};

// Format 4: where the compression dictionary is and what it must hash to.
// Stored as a zstd skippable frame (magic kDictMagic, u32 LE length) holding
// the dictionary as ZDICT_trainFromBuffer makes it.
struct DictInfo {
  std::uint64_t offset = 0;  // within payload.zst's data: 0 (before the first frame)
  std::uint64_t length = 0;  // stored bytes, the 8-byte skippable header included
  Digest sha256{};           // of the `length` stored bytes
};

struct Manifest {
  int format = 1;
  ImageType type = ImageType::kDevice;
  std::string version;                  // checked with sag::Version for its type
  std::vector<std::string> compatible;  // hardware models
  std::string build_time;               // ISO 8601 UTC
  std::uint64_t payload_size = 0;       // uncompressed
  Digest payload_sha256{};
  std::uint64_t chunk_size = 0;  // format 2 calls chunks "frames"
  std::vector<Chunk> chunks;
  std::optional<ReuseIndexInfo> reuse;  // set in formats 2 and 3, absent in format 1
  // Format 3 only: the SHA-256 of every frame's compressed bytes back to back
  // (payload.zst up to the reuse index). Format 3 drops the per-frame zsha256
  // (Chunk::zsha256 is zero); a reader of the whole image checks this one
  // before it yields the last frame, so that the file stays the one file of
  // its signed manifest (docs/delta.md, "Format 3").
  std::optional<Digest> frames_zsha256;
  // Format 4 only (docs/delta.md, "Format 4"): frames of `frame_size` bytes
  // are the unit of download, verified in groups of `group_frames`
  // consecutive frames. In memory a group is a Chunk (its content SHA-256, its
  // frames' compressed bytes back to back), so chunk_size is group_frames x
  // frame_size and every reader of chunks (installers, read-back, resume)
  // works on groups; `frame_lengths` holds each frame's compressed length.
  std::uint64_t frame_size = 0;
  std::uint64_t group_frames = 1;
  std::vector<std::uint32_t> frame_lengths;
  // Format 4: the zstd dictionary every frame is compressed with, stored at
  // the start of payload.zst, its SHA-256 signed here. Absent: no dictionary.
  std::optional<DictInfo> dict;
};

// Frames (the unit of download) of a manifest: format 4's frames, or the
// chunks of formats 1 to 3 (one frame per chunk).
std::size_t FrameCount(const Manifest& m);
// Frames per chunk (format 4's group size; 1 before).
inline std::uint64_t FramesPerChunk(const Manifest& m) {
  return m.frame_lengths.empty() ? 1 : m.group_frames;
}
struct FrameRef {
  std::uint64_t offset = 0;  // compressed, within payload.zst's data
  std::uint64_t length = 0;  // compressed
  std::uint64_t size = 0;    // uncompressed
};
// Frame f (f < FrameCount(m)): O(group_frames).
FrameRef FrameAt(const Manifest& m, std::size_t f);
// The largest compressed chunk (group) a manifest allows: the buffer a
// reader needs.
std::uint64_t MaxStoredChunk(const Manifest& m);

// True for a manifest whose chunks carry a signed SHA-256 of their compressed
// bytes (formats 1 and 2).
inline bool HasChunkZsha(const Manifest& m) { return !m.frames_zsha256.has_value(); }

// Bounds applied before any allocation that follows a declared size.
struct Limits {
  std::uint64_t max_manifest_bytes = 16U << 20U;
  std::uint64_t max_signature_bytes = 64U << 10U;
  std::uint64_t max_payload_bytes = 64ULL << 30U;
  std::uint64_t max_chunks = 1U << 20U;
  std::uint64_t min_chunk_size = 4U << 10U;
  std::uint64_t max_chunk_size = 16U << 20U;
};

struct Trust {
  std::filesystem::path root_ca;   // PEM; the only anchor (no system store)
  std::optional<std::time_t> now;  // verification time; unset = current time
};

struct Signer {
  std::string subject;    // one-line distinguished name of the signing cert
  std::string not_after;  // its expiry, human readable
};

// What a verified header gives the installer. manifest_json and signature_der
// are kept so that a resumed job can verify them again without the network.
struct VerifiedHeader {
  Manifest manifest;
  Signer signer;
  Digest manifest_sha256{};  // of manifest_json: names the signed header
  std::string manifest_json;
  std::string signature_der;
  std::uint64_t payload_offset = 0;  // container offset of payload.zst's first data byte
};

// Parses and checks a manifest's shape and limits (no signature check):
// known format version (1; 2 to 4 with a reuse index: docs/delta.md), type, a version
// valid for that type, compatible models, sizes within `limits`, a chunk table that tiles the
// payload (contiguous offsets from 0, chunk_size bytes each but the last, lengths no larger than
// zstd's bound). Errors: kManifestMalformed, kManifestVersion, kManifestLimits.
Expected<Manifest> ParseManifest(std::string_view json, const Limits& limits = {});
std::string SerializeManifest(const Manifest& manifest);

// The container's fixed names and layout.
inline constexpr std::string_view kManifestName = "manifest.json";
inline constexpr std::string_view kSignatureName = "manifest.json.sig";
inline constexpr std::string_view kPayloadName = "payload.zst";
// The format sag-image writes unless told otherwise, and the newest one this
// reader knows. Format 2 (docs/delta.md) adds the reuse index; a reader
// accepts both.
inline constexpr int kFormatVersion = 1;
inline constexpr int kFormatDelta = 2;
// Format 3 (docs/delta.md): format 2 with a compact frame table (length and
// content SHA-256, zstd-compressed, no per-frame compressed SHA-256) and a
// reuse index of shorter hashes. The format `--frame-size` asks for.
inline constexpr int kFormatCompact = 3;
// Format 3's reuse-index hash length: a false match costs one frame download,
// never a wrong byte; about 2 per install of a 4 GiB image (docs/delta.md).
inline constexpr std::uint64_t kCompactHashBytes = 5;
inline constexpr std::uint64_t kMinReuseHashBytes = 5;
// Bytes per frame in format 3's frame table (before zstd and base64): the
// compressed length (u32 LE) and the SHA-256 of the content.
inline constexpr std::uint64_t kCompactFrameRecordBytes = 4 + 32;
inline constexpr std::uint64_t kReuseBlockSize = 4096;
// sag-image create --format 2's frame size and zstd level unless told
// otherwise: with 32 KiB frames a minor update downloaded 12 % of the image
// (64 KiB: 14 %), and level 19 keeps the full image within 5 % of format 1's
// 1 MiB chunks at level 3 (level 3: +18 %). Measurements in docs/delta.md.
inline constexpr std::uint64_t kDefaultFrameSize = 32U << 10U;
inline constexpr int kDefaultFrameLevel = 19;
// sag-image create --format 3's frame size unless told otherwise: with
// format 3's smaller header, 16 KiB frames download less than 32 KiB ones
// (9.2 % of today's image against 10.8 %) and the full image stays within
// 10 % of format 1's (+8.3 %); a 4 GiB image's manifest stays under 12.6 MiB.
inline constexpr std::uint64_t kDefaultCompactFrameSize = 16U << 10U;
inline constexpr std::uint64_t kReuseHashBytes = 8;
// Format 4 (docs/delta.md, "Format 4"): format 3 with a zstd dictionary
// (a signed part of payload.zst) and one content SHA-256 per group of
// frames instead of per frame.
inline constexpr int kFormatGrouped = 4;
inline constexpr std::uint32_t kDictMagic = 0x184D2A5EU;
inline constexpr std::uint64_t kMaxDictBytes = 1U << 20U;
inline constexpr std::uint64_t kMaxGroupFrames = 64;
// sag-image create --format 4's defaults (measured: docs/delta.md).
inline constexpr std::uint64_t kDefaultGroupedFrameSize = 8U << 10U;
inline constexpr std::uint64_t kDefaultGroupFrames = 8;
inline constexpr std::uint64_t kDefaultDictBytes = 112640;
// Bytes per frame in format 2's binary frame table (before base64): the
// compressed length (u32 LE), the SHA-256 of the content, of the compressed bytes.
inline constexpr std::uint64_t kFrameRecordBytes = 4 + 32 + 32;
// The zstd skippable-frame magic that holds the reuse index.
inline constexpr std::uint32_t kReuseIndexMagic = 0x184D2A5DU;
inline constexpr std::uint64_t kDefaultChunkSize = 1U << 20U;

// Checks a detached CMS signature over manifest_json against trust, then the
// manifest itself. Signer problems come back as kSignerUntrusted,
// kSignerExpired, kSignerNotYetValid or kSignerUsage; a mismatch as
// kSignatureInvalid.
Expected<VerifiedHeader> VerifyHeader(std::string manifest_json, std::string signature_der,
                                      const Trust& trust, const Limits& limits = {});

// Reads and signs nothing: the container's first two entries and the offset
// of the payload, checked strictly but NOT verified (sag-image inspect).
struct UnverifiedHeader {
  std::string manifest_json;
  std::string signature_der;
  std::uint64_t payload_offset = 0;
  std::uint64_t payload_stored_size = 0;  // size of payload.zst
};
class ByteSource;
Expected<UnverifiedHeader> ReadUnverifiedHeader(ByteSource& source, const Limits& limits = {});
// The subject of the certificate that made a CMS signature, read without
// verifying anything (for display).
Expected<std::string> SignerSubjectUnverified(std::string_view signature_der);
// Total container size for a manifest and signature of these sizes.
std::uint64_t ContainerSize(std::uint64_t manifest_bytes, std::uint64_t signature_bytes,
                            std::uint64_t payload_stored_bytes);

// Where container bytes come from: a file, a download, a test buffer.
class ByteSource {
 public:
  virtual ~ByteSource() = default;
  // Fills up to buf.size() bytes; returns 0 only at the end of the data.
  virtual Expected<std::size_t> Read(std::span<std::uint8_t> buf) = 0;
  // No more bytes will be read: a download stops fetching ahead (a delta
  // install reads only the header from the stream, docs/delta.md). Reads
  // after it fail. Default: nothing to stop.
  virtual void Stop() {}
};

// One verified chunk. `data` stays valid until `buffers - 1` more chunks were
// asked for (with the default of 2 buffers: until the next call).
struct ChunkView {
  std::size_t index = 0;
  std::span<const std::uint8_t> data;
  // False only with ContentCheck::kDeferCompressed, for a chunk whose
  // compressed bytes matched their signed hash and whose content the caller
  // must still check against `sha256`.
  bool content_checked = true;
};

// What a reader checks before it yields a chunk.
enum class ContentCheck {
  // The content's SHA-256, always (and, for a chunk holding a compressed zstd
  // block, the compressed bytes' SHA-256 before decompressing).
  kEveryChunk,
  // For a chunk holding a compressed block: its compressed bytes' SHA-256
  // only, before decompressing; the decompressed content is yielded with
  // content_checked = false. Chunks of raw blocks are checked as always. For
  // a caller that checks every chunk's content itself afterwards (the Device
  // installer reads the slot back): tampering is still refused before the
  // chunk is yielded (the compressed bytes are authenticated); what is
  // deferred is a check of the decompressor's own work, one SHA-256 pass.
  kDeferCompressed,
};

// Decoded-chunk buffers a reader keeps (see ChunkView).
inline constexpr std::size_t kMinChunkBuffers = 2;
inline constexpr std::size_t kMaxChunkBuffers = 8;

// For a caller that keeps yielded chunks longer than ChunkView promises (the
// Device installer writes a chunk on another thread while the next one is
// decoded): called before the reader reads chunk `index` into the buffer
// chunk `index - buffers` was yielded in (and decodes it there, in place).
// It returns true once the caller is done with that chunk (at once for
// index < first + buffers), or false to stop reading: the read then fails
// with kCancelled. Without a gate, a chunk's data stays valid as ChunkView
// says.
using BufferGate = std::function<bool(std::size_t index)>;

// Reads a container from the start. Nothing is yielded before the signature
// verified; a chunk is yielded only after its hash matched. Memory is
// `buffers` chunk buffers (bounded by the limits), each a chunk and the room
// zstd needs to decode one in place (1 MiB + 136 KiB for 1 MiB chunks),
// whatever the image size; none is allocated before the first chunk. Chunk
// i is hashed on a second thread while chunk i+1 is read and decompressed.
class ImageReader {
 public:
  ImageReader(ByteSource& source, Trust trust, Limits limits = {},
              std::size_t buffers = kMinChunkBuffers,
              ContentCheck check = ContentCheck::kEveryChunk);
  ~ImageReader();
  ImageReader(const ImageReader&) = delete;
  ImageReader& operator=(const ImageReader&) = delete;

  // Reads and verifies manifest.json and its signature; reads no payload.
  Expected<const VerifiedHeader*> ReadHeader();
  // Frees the header's manifest_json and signature_der (the parsed manifest
  // stays): for a caller that stored them already and streams a large image.
  void ReleaseHeaderText();
  // The payload will not be read from this reader (a delta install fetches
  // ranges instead): stops the source's read-ahead (ByteSource::Stop).
  void StopSource();
  // Chooses how chunks are read (as the constructor's `buffers` and `check`)
  // for a reader that one party opened and verified and another streams (the
  // agent's dispatcher, then an installer). No effect after the first
  // NextChunk().
  void SetChunkReading(std::size_t buffers, ContentCheck check);
  // Adds the time spent reading, decompressing and hashing chunks to
  // `times` (which outlives the reader); null = not measured. No effect
  // after the first NextChunk().
  void SetStageTimes(StageTimes* times);
  // See BufferGate. No effect after the first NextChunk().
  void SetBufferGate(BufferGate gate);
  // The next verified chunk, or nullopt after the last one; the last one
  // only once the end of the container was checked.
  Expected<std::optional<ChunkView>> NextChunk();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Reads chunks first_chunk.. of an already verified header from a source
// positioned at header.payload_offset + manifest.chunks[first_chunk].offset
// (a resumed download). Each chunk is hash-checked, as by ImageReader.
// A format 4 image's dictionary (`dictionary`: its content, from
// DecodeDictionary) is required; without one the reader fails.
class ChunkReader {
 public:
  ChunkReader(ByteSource& source, const Manifest& manifest, std::size_t first_chunk,
              Limits limits = {}, std::size_t buffers = kMinChunkBuffers,
              ContentCheck check = ContentCheck::kEveryChunk, StageTimes* times = nullptr,
              std::span<const std::uint8_t> dictionary = {});
  ~ChunkReader();
  ChunkReader(const ChunkReader&) = delete;
  ChunkReader& operator=(const ChunkReader&) = delete;
  // See BufferGate. Before the first Next().
  void SetBufferGate(BufferGate gate);
  Expected<std::optional<ChunkView>> Next();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Format 4: checks a dictionary's stored bytes against the manifest's
// signed SHA-256 (before anything else), then its skippable frame, and
// returns the dictionary itself. Errors: kChunkHashMismatch (not the signed
// bytes), kDecompress (signed but malformed), kInvalidArgument (no dictionary
// in the manifest).
Expected<std::vector<std::uint8_t>> DecodeDictionary(std::span<const std::uint8_t> stored,
                                                     const Manifest& manifest);
// Reads exactly the dictionary's stored bytes from `source` (positioned at
// payload_offset + dict.offset) and decodes them as above.
Expected<std::vector<std::uint8_t>> ReadDictionary(ByteSource& source, const Manifest& manifest);

// A ByteSource over a file (sag-image verify, sag-agent install FILE).
class FileSource final : public ByteSource {
 public:
  static Expected<std::unique_ptr<FileSource>> Open(const std::filesystem::path& path,
                                                    std::uint64_t offset = 0);
  ~FileSource() override;
  FileSource(const FileSource&) = delete;
  FileSource& operator=(const FileSource&) = delete;
  Expected<std::size_t> Read(std::span<std::uint8_t> buf) override;

 private:
  explicit FileSource(int fd, std::string path) : fd_(fd), path_(std::move(path)) {}
  int fd_;
  std::string path_;
};

}  // namespace sag::image
