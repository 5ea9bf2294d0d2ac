#include "common/image/image.h"

#define ZSTD_STATIC_LINKING_ONLY  // ZSTD_getFrameHeader: strict frame checks
#include <fcntl.h>
#include <unistd.h>
#include <zstd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <ctime>
#include <mutex>
#include <nlohmann/json.hpp>
#include <system_error>
#include <thread>
#include <utility>

#include "common/aligned_buffer.h"
#include "common/all_zero.h"
#include "common/atomic_file.h"
#include "common/base64.h"
#include "common/image/ossl.h"
#include "common/version.h"

namespace sag::image {

std::string_view ImageTypeName(ImageType type) {
  return type == ImageType::kDevice ? "Device" : "Dpi";
}

// ---------------------------------------------------------------------------
// Manifest

namespace {

using nlohmann::json;

constexpr std::size_t kMaxCompatible = 64;
constexpr std::size_t kMaxModelName = 64;
constexpr int kMaxJsonDepth = 4;

Error Malformed(const std::string& what) {
  return {Errc::kManifestMalformed, "manifest: " + what + "; rebuild the image with sag-image"};
}

Error TooLarge(const std::string& what) {
  return {Errc::kManifestLimits, "manifest: " + what + "; the image is corrupt or hostile"};
}

bool ValidModel(std::string_view m) {
  if (m.empty() || m.size() > kMaxModelName) return false;
  return std::all_of(m.begin(), m.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_' || c == '.';
  });
}

bool ValidBuildTime(std::string_view t) {
  // YYYY-MM-DDTHH:MM:SSZ
  static constexpr std::string_view kShape = "dddd-dd-ddTdd:dd:ddZ";
  if (t.size() != kShape.size()) return false;
  for (std::size_t i = 0; i < t.size(); ++i) {
    if (kShape[i] == 'd' ? (t[i] < '0' || t[i] > '9') : t[i] != kShape[i]) return false;
  }
  return true;
}

Expected<std::uint64_t> GetU64(const json& obj, const char* key) {
  const auto it = obj.find(key);
  if (it == obj.end()) return Malformed(std::string("missing \"") + key + "\"");
  if (!it->is_number_unsigned()) {
    return Malformed(std::string("\"") + key + "\" must be a non-negative integer");
  }
  return it->get<std::uint64_t>();
}

Expected<std::string> GetString(const json& obj, const char* key) {
  const auto it = obj.find(key);
  if (it == obj.end()) return Malformed(std::string("missing \"") + key + "\"");
  if (!it->is_string()) return Malformed(std::string("\"") + key + "\" must be a string");
  return it->get<std::string>();
}

Status OnlyKeys(const json& obj, std::initializer_list<std::string_view> keys,
                std::string_view where) {
  for (const auto& [k, v] : obj.items()) {
    if (std::find(keys.begin(), keys.end(), k) == keys.end()) {
      return Malformed("unknown key \"" + k + "\" in " + std::string(where));
    }
  }
  return Ok();
}

// The frame records of formats 2 and 3, `record_bytes` each, in order: the
// compressed length (u32 little-endian), the content SHA-256 and, in format
// 2's 68-byte records, the compressed bytes' SHA-256. Offsets are implied
// (frames back to back); every length must fit a zstd frame of its size.
Status TakeFrameRecords(const std::uint8_t* p, std::uint64_t count, std::size_t record_bytes,
                        Manifest& m) {
  m.chunks.reserve(count);
  std::uint64_t offset = 0;
  for (std::uint64_t i = 0; i < count; ++i, p += record_bytes) {
    Chunk c;
    c.offset = offset;
    c.length = std::uint64_t{p[0]} | (std::uint64_t{p[1]} << 8U) | (std::uint64_t{p[2]} << 16U) |
               (std::uint64_t{p[3]} << 24U);
    std::memcpy(c.sha256.data(), p + 4, 32);
    if (record_bytes == kFrameRecordBytes) std::memcpy(c.zsha256.data(), p + 36, 32);
    c.size = i + 1 < count ? m.chunk_size : m.payload_size - (count - 1) * m.chunk_size;
    if (c.length == 0 || c.length > ZSTD_compressBound(c.size)) {
      return TooLarge("frame " + std::to_string(i) + " length " + std::to_string(c.length) +
                      " is not a zstd frame of " + std::to_string(c.size) + " bytes");
    }
    offset += c.length;
    m.chunks.push_back(c);
  }
  return Ok();
}

// Format 2's frame table: one base64 string of kFrameRecordBytes per frame
// (about 91 bytes of JSON per frame instead of 170 for format 1's objects:
// the manifest of a 4 GiB image in 64 KiB frames stays under 6 MiB).
Status ParseFrames(const json& j, std::uint64_t count, Manifest& m) {
  SAG_TRY(const auto text, GetString(j, "frames"));
  if (text.size() != (count * kFrameRecordBytes + 2) / 3 * 4) {
    return TooLarge("frame table of " + std::to_string(text.size()) +
                    " base64 characters, a payload of " + std::to_string(m.payload_size) +
                    " bytes in frames of " + std::to_string(m.chunk_size) + " needs " +
                    std::to_string(count) + " frames");
  }
  auto table = Base64Decode(text);
  if (!table) return Malformed("frames: " + table.error().message());
  if (table->size() != count * kFrameRecordBytes) {
    return Malformed("frames: " + std::to_string(table->size()) + " bytes, expected " +
                     std::to_string(count * kFrameRecordBytes));
  }
  return TakeFrameRecords(reinterpret_cast<const std::uint8_t*>(table->data()), count,
                          kFrameRecordBytes, m);
}

// Format 3's frame table: base64 of one zstd frame that holds
// kCompactFrameRecordBytes per frame (length, content SHA-256). The decoded
// size follows from the payload size and frame size, both bounded, so the
// decompression writes into a buffer of exactly that size (a signed table that
// says otherwise is refused, never followed).
Status ParseCompactFrames(const json& j, std::uint64_t count, Manifest& m) {
  SAG_TRY(const auto text, GetString(j, "frames"));
  const std::uint64_t raw_size = count * kCompactFrameRecordBytes;
  // base64 of at most one zstd frame of raw_size bytes.
  if (text.empty() || text.size() > (ZSTD_compressBound(raw_size) + 2) / 3 * 4) {
    return TooLarge("frame table of " + std::to_string(text.size()) + " base64 characters for " +
                    std::to_string(count) + " frames");
  }
  auto z = Base64Decode(text);
  if (!z) return Malformed("frames: " + z.error().message());
  if (ZSTD_getFrameContentSize(z->data(), z->size()) != raw_size ||
      ZSTD_findFrameCompressedSize(z->data(), z->size()) != z->size()) {
    return Malformed("frames: not one zstd frame of " + std::to_string(raw_size) + " bytes (" +
                     std::to_string(count) + " frames)");
  }
  std::vector<std::uint8_t> table(raw_size);
  const std::size_t n = ZSTD_decompress(table.data(), table.size(), z->data(), z->size());
  if (ZSTD_isError(n) != 0U || n != raw_size) {
    return Malformed("frames: the zstd frame does not decompress to " + std::to_string(raw_size) +
                     " bytes");
  }
  return TakeFrameRecords(table.data(), count, kCompactFrameRecordBytes, m);
}

// Format 4's frame table: base64 of one zstd frame that holds, for every
// frame, its compressed length (u32 LE), then, for every group of
// group_frames frames, the SHA-256 of the group's content. Decoded into a
// buffer of exactly the size the payload, frame and group sizes imply.
// Groups become Chunks (offset and length of their frames as stored, from
// `first_offset`: right after the dictionary).
Status ParseGroupedFrames(const json& j, std::uint64_t frames, std::uint64_t first_offset,
                          Manifest& m) {
  SAG_TRY(const auto text, GetString(j, "frames"));
  const std::uint64_t groups = (frames + m.group_frames - 1) / m.group_frames;
  const std::uint64_t raw_size = frames * 4 + groups * 32;
  if (text.empty() || text.size() > (ZSTD_compressBound(raw_size) + 2) / 3 * 4) {
    return TooLarge("frame table of " + std::to_string(text.size()) + " base64 characters for " +
                    std::to_string(frames) + " frames");
  }
  auto z = Base64Decode(text);
  if (!z) return Malformed("frames: " + z.error().message());
  if (ZSTD_getFrameContentSize(z->data(), z->size()) != raw_size ||
      ZSTD_findFrameCompressedSize(z->data(), z->size()) != z->size()) {
    return Malformed("frames: not one zstd frame of " + std::to_string(raw_size) + " bytes (" +
                     std::to_string(frames) + " frames in " + std::to_string(groups) + " groups)");
  }
  std::vector<std::uint8_t> table(raw_size);
  const std::size_t n = ZSTD_decompress(table.data(), table.size(), z->data(), z->size());
  if (ZSTD_isError(n) != 0U || n != raw_size) {
    return Malformed("frames: the zstd frame does not decompress to " + std::to_string(raw_size) +
                     " bytes");
  }
  m.frame_lengths.reserve(frames);
  m.chunks.reserve(groups);
  const std::uint8_t* p = table.data();
  const std::uint8_t* hashes = table.data() + frames * 4;
  std::uint64_t offset = first_offset;
  for (std::uint64_t g = 0; g < groups; ++g) {
    Chunk c;
    c.offset = offset;
    const std::uint64_t first = g * m.group_frames;
    const std::uint64_t end = std::min(first + m.group_frames, frames);
    for (std::uint64_t f = first; f < end; ++f, p += 4) {
      const std::uint64_t length = std::uint64_t{p[0]} | (std::uint64_t{p[1]} << 8U) |
                                   (std::uint64_t{p[2]} << 16U) | (std::uint64_t{p[3]} << 24U);
      const std::uint64_t size =
          f + 1 < frames ? m.frame_size : m.payload_size - (frames - 1) * m.frame_size;
      if (length == 0 || length > ZSTD_compressBound(size)) {
        return TooLarge("frame " + std::to_string(f) + " length " + std::to_string(length) +
                        " is not a zstd frame of " + std::to_string(size) + " bytes");
      }
      m.frame_lengths.push_back(static_cast<std::uint32_t>(length));
      c.length += length;
      c.size += size;
    }
    std::memcpy(c.sha256.data(), hashes + g * 32, 32);
    offset += c.length;
    m.chunks.push_back(c);
  }
  return Ok();
}

// Format 4's dictionary entry: at offset 0 of payload.zst, a skippable frame
// of at most kMaxDictBytes of dictionary.
Status ParseDict(const json& j, Manifest& m) {
  const auto d = j.find("dict");
  if (d == j.end()) return Ok();
  if (!d->is_object()) return Malformed("\"dict\" must be an object");
  SAG_TRY_STATUS(OnlyKeys(*d, {"offset", "length", "sha256"}, "dict"));
  DictInfo info;
  SAG_TRY(info.offset, GetU64(*d, "offset"));
  SAG_TRY(info.length, GetU64(*d, "length"));
  SAG_TRY(const auto sha, GetString(*d, "sha256"));
  auto digest = DigestFromHex(sha);
  if (!digest) return Malformed("dict.sha256: " + digest.error().message());
  info.sha256 = *digest;
  if (info.offset != 0) {
    return Malformed("dictionary at " + std::to_string(info.offset) +
                     ", expected at the start of payload.zst (0)");
  }
  if (info.length <= 8 || info.length > 8 + kMaxDictBytes) {
    return TooLarge("dictionary of " + std::to_string(info.length) + " bytes (at most " +
                    std::to_string(8 + kMaxDictBytes) + " stored)");
  }
  m.dict = info;
  return Ok();
}

Status ParseReuse(const json& j, Manifest& m) {
  const auto r = j.find("reuse");
  if (r == j.end() || !r->is_object()) return Malformed("missing \"reuse\" object");
  SAG_TRY_STATUS(
      OnlyKeys(*r, {"block_size", "hash_bytes", "offset", "length", "size", "sha256"}, "reuse"));
  ReuseIndexInfo info;
  SAG_TRY(info.block_size, GetU64(*r, "block_size"));
  SAG_TRY(info.hash_bytes, GetU64(*r, "hash_bytes"));
  SAG_TRY(info.offset, GetU64(*r, "offset"));
  SAG_TRY(info.length, GetU64(*r, "length"));
  SAG_TRY(info.size, GetU64(*r, "size"));
  SAG_TRY(const auto sha, GetString(*r, "sha256"));
  auto digest = DigestFromHex(sha);
  if (!digest) return Malformed("reuse.sha256: " + digest.error().message());
  info.sha256 = *digest;
  // Format 2: 8-byte hashes; format 3: 5 to 8 (a shorter hash only costs
  // false matches, each a frame downloaded: docs/delta.md).
  const bool hash_ok = m.format == kFormatDelta ? info.hash_bytes == kReuseHashBytes
                                                : info.hash_bytes >= kMinReuseHashBytes &&
                                                      info.hash_bytes <= kReuseHashBytes;
  if (info.block_size != kReuseBlockSize || !hash_ok) {
    return Malformed("reuse index of " + std::to_string(info.hash_bytes) + "-byte hashes of " +
                     std::to_string(info.block_size) + "-byte blocks (format " +
                     std::to_string(m.format) + " knows " +
                     (m.format == kFormatDelta ? std::string("8") : std::string("5 to 8")) +
                     " of " + std::to_string(kReuseBlockSize) + ")");
  }
  const std::uint64_t frame_size = m.frame_lengths.empty() ? m.chunk_size : m.frame_size;
  if (frame_size % kReuseBlockSize != 0) {
    return Malformed("frame_size " + std::to_string(frame_size) + " is not a multiple of " +
                     std::to_string(kReuseBlockSize));
  }
  const auto& last = m.chunks.back();
  if (info.offset != last.offset + last.length) {
    return Malformed("reuse index at " + std::to_string(info.offset) +
                     ", expected right after the last frame at " +
                     std::to_string(last.offset + last.length));
  }
  const std::uint64_t blocks = (m.payload_size + kReuseBlockSize - 1) / kReuseBlockSize;
  if (info.size != blocks * info.hash_bytes) {
    return Malformed("reuse index of " + std::to_string(info.size) + " bytes, " +
                     std::to_string(blocks) + " blocks need " +
                     std::to_string(blocks * info.hash_bytes));
  }
  // 8 bytes of skippable-frame header around one zstd frame.
  if (info.length <= 8 || info.length > 8 + ZSTD_compressBound(info.size)) {
    return TooLarge("reuse index stored in " + std::to_string(info.length) +
                    " bytes is not a zstd frame of " + std::to_string(info.size) + " bytes");
  }
  m.reuse = info;
  return Ok();
}

Expected<Manifest> ParseManifestJson(const json& j, const Limits& limits) {
  if (!j.is_object()) return Malformed("top level must be an object");
  // The format version first: a newer format may change everything else.
  const auto fmt = j.find("format");
  if (fmt == j.end() || !fmt->is_number_integer()) {
    return Malformed("missing or non-integer \"format\"");
  }
  const auto format = fmt->get<std::int64_t>();
  if (format != kFormatVersion && format != kFormatDelta && format != kFormatCompact &&
      format != kFormatGrouped) {
    return Error(Errc::kManifestVersion,
                 "manifest: unknown format version " + fmt->dump() + " (this reader knows " +
                     std::to_string(kFormatVersion) + " to " + std::to_string(kFormatGrouped) +
                     "); update the agent first");
  }
  const bool grouped = format == kFormatGrouped;
  const bool delta = format == kFormatDelta || format == kFormatCompact || grouped;
  const bool compact = format == kFormatCompact || grouped;
  if (grouped) {
    SAG_TRY_STATUS(OnlyKeys(j,
                            {"format", "type", "version", "compatible", "build_time", "payload",
                             "frames", "reuse", "dict"},
                            "manifest"));
  } else if (delta) {
    SAG_TRY_STATUS(OnlyKeys(
        j, {"format", "type", "version", "compatible", "build_time", "payload", "frames", "reuse"},
        "manifest"));
  } else {
    SAG_TRY_STATUS(
        OnlyKeys(j, {"format", "type", "version", "compatible", "build_time", "payload", "chunks"},
                 "manifest"));
  }
  Manifest m;
  m.format = static_cast<int>(format);
  SAG_TRY(const auto type, GetString(j, "type"));
  if (type == "Device") {
    m.type = ImageType::kDevice;
  } else if (type == "Dpi") {
    m.type = ImageType::kDpi;
  } else {
    return Malformed(R"("type" must be "Device" or "Dpi", got ")" + type + "\"");
  }
  SAG_TRY(m.version, GetString(j, "version"));
  const auto parsed = Version::Parse(
      m.type == ImageType::kDevice ? VersionKind::kDevice : VersionKind::kDpi, m.version);
  if (!parsed) return Malformed(parsed.error().message());

  const auto compat = j.find("compatible");
  if (compat == j.end() || !compat->is_array() || compat->empty()) {
    return Malformed("\"compatible\" must be a non-empty array of hardware models");
  }
  if (compat->size() > kMaxCompatible) {
    return TooLarge(std::to_string(compat->size()) + " compatible models (at most " +
                    std::to_string(kMaxCompatible) + ")");
  }
  for (const auto& c : *compat) {
    if (!c.is_string() || !ValidModel(c.get_ref<const std::string&>())) {
      return Malformed("compatible model " + c.dump() +
                       " is not 1-64 characters of [a-z0-9._-] (like sag-1000)");
    }
    m.compatible.push_back(c.get<std::string>());
  }
  SAG_TRY(m.build_time, GetString(j, "build_time"));
  if (!ValidBuildTime(m.build_time)) {
    return Malformed(R"("build_time" must be UTC like 2026-11-27T20:00:00Z, got ")" + m.build_time +
                     "\"");
  }

  const auto payload = j.find("payload");
  if (payload == j.end() || !payload->is_object()) return Malformed("missing \"payload\" object");
  const char* const size_key = delta ? "frame_size" : "chunk_size";
  if (grouped) {
    SAG_TRY_STATUS(OnlyKeys(*payload,
                            {"size", "sha256", size_key, "group_frames", "compression", "zsha256"},
                            "payload"));
    SAG_TRY(m.group_frames, GetU64(*payload, "group_frames"));
    if (m.group_frames == 0 || m.group_frames > kMaxGroupFrames) {
      return TooLarge("group of " + std::to_string(m.group_frames) + " frames (1 to " +
                      std::to_string(kMaxGroupFrames) + ")");
    }
  }
  if (compact) {
    if (!grouped) {
      SAG_TRY_STATUS(
          OnlyKeys(*payload, {"size", "sha256", size_key, "compression", "zsha256"}, "payload"));
    }
    SAG_TRY(const auto zsha, GetString(*payload, "zsha256"));
    auto zd = DigestFromHex(zsha);
    if (!zd) return Malformed("payload.zsha256: " + zd.error().message());
    m.frames_zsha256 = *zd;
  } else {
    SAG_TRY_STATUS(OnlyKeys(*payload, {"size", "sha256", size_key, "compression"}, "payload"));
  }
  SAG_TRY(m.payload_size, GetU64(*payload, "size"));
  SAG_TRY(m.chunk_size, GetU64(*payload, size_key));
  SAG_TRY(const auto sha, GetString(*payload, "sha256"));
  auto digest = DigestFromHex(sha);
  if (!digest) return Malformed("payload.sha256: " + digest.error().message());
  m.payload_sha256 = *digest;
  SAG_TRY(const auto compression, GetString(*payload, "compression"));
  if (compression != "zstd") {
    return Malformed(R"(payload.compression must be "zstd", got ")" + compression + "\"");
  }

  if (m.payload_size == 0) return TooLarge("empty payload");
  if (m.payload_size > limits.max_payload_bytes) {
    return TooLarge("payload of " + std::to_string(m.payload_size) + " bytes (limit " +
                    std::to_string(limits.max_payload_bytes) + ")");
  }
  if (grouped) {
    // The frame is the unit of download, the group (chunk_size) the unit
    // of verification and of every chunk buffer.
    m.frame_size = m.chunk_size;
    if (m.frame_size < limits.min_chunk_size ||
        m.frame_size > limits.max_chunk_size / m.group_frames) {
      return TooLarge("groups of " + std::to_string(m.group_frames) + " frames of " +
                      std::to_string(m.frame_size) + " bytes outside [" +
                      std::to_string(limits.min_chunk_size) + ", " +
                      std::to_string(limits.max_chunk_size) + "]");
    }
    m.chunk_size = m.frame_size * m.group_frames;
    const std::uint64_t frames = (m.payload_size + m.frame_size - 1) / m.frame_size;
    if (frames > limits.max_chunks) {
      return TooLarge(std::to_string(frames) + " frames (limit " +
                      std::to_string(limits.max_chunks) + ")");
    }
    SAG_TRY_STATUS(ParseDict(j, m));
    SAG_TRY_STATUS(ParseGroupedFrames(j, frames, m.dict ? m.dict->length : 0, m));
    SAG_TRY_STATUS(ParseReuse(j, m));
    return m;
  }
  if (m.chunk_size < limits.min_chunk_size || m.chunk_size > limits.max_chunk_size) {
    return TooLarge("chunk_size " + std::to_string(m.chunk_size) + " outside [" +
                    std::to_string(limits.min_chunk_size) + ", " +
                    std::to_string(limits.max_chunk_size) + "]");
  }
  const std::uint64_t count = (m.payload_size + m.chunk_size - 1) / m.chunk_size;
  if (count > limits.max_chunks) {
    return TooLarge(std::to_string(count) + " chunks (limit " + std::to_string(limits.max_chunks) +
                    ")");
  }
  if (delta) {
    SAG_TRY_STATUS(compact ? ParseCompactFrames(j, count, m) : ParseFrames(j, count, m));
    SAG_TRY_STATUS(ParseReuse(j, m));
    return m;
  }
  const auto chunks = j.find("chunks");
  if (chunks == j.end() || !chunks->is_array()) return Malformed("missing \"chunks\" array");
  if (chunks->size() != count) {
    return TooLarge("chunk table has " + std::to_string(chunks->size()) + " entries, payload of " +
                    std::to_string(m.payload_size) + " bytes in chunks of " +
                    std::to_string(m.chunk_size) + " needs " + std::to_string(count));
  }
  m.chunks.reserve(count);
  std::uint64_t offset = 0;
  for (std::uint64_t i = 0; i < count; ++i) {
    const auto& c = (*chunks)[i];
    const auto where = "chunk " + std::to_string(i);
    if (!c.is_object()) return Malformed(where + " must be an object");
    SAG_TRY_STATUS(OnlyKeys(c, {"offset", "length", "sha256", "zsha256"}, where));
    Chunk chunk;
    SAG_TRY(chunk.offset, GetU64(c, "offset"));
    SAG_TRY(chunk.length, GetU64(c, "length"));
    SAG_TRY(const auto csha, GetString(c, "sha256"));
    auto cd = DigestFromHex(csha);
    if (!cd) return Malformed(where + ".sha256: " + cd.error().message());
    chunk.sha256 = *cd;
    SAG_TRY(const auto zsha, GetString(c, "zsha256"));
    auto zd = DigestFromHex(zsha);
    if (!zd) return Malformed(where + ".zsha256: " + zd.error().message());
    chunk.zsha256 = *zd;
    chunk.size = i + 1 < count ? m.chunk_size : m.payload_size - (count - 1) * m.chunk_size;
    if (chunk.offset != offset) {
      return Malformed(where + " starts at " + std::to_string(chunk.offset) + ", expected " +
                       std::to_string(offset) + " (chunks are stored back to back)");
    }
    if (chunk.length == 0 || chunk.length > ZSTD_compressBound(chunk.size)) {
      return TooLarge(where + " length " + std::to_string(chunk.length) +
                      " is not a zstd frame of " + std::to_string(chunk.size) + " bytes");
    }
    offset += chunk.length;
    m.chunks.push_back(chunk);
  }
  return m;
}

}  // namespace

Expected<Manifest> ParseManifest(std::string_view text, const Limits& limits) {
  if (text.size() > limits.max_manifest_bytes) {
    return TooLarge("manifest of " + std::to_string(text.size()) + " bytes (limit " +
                    std::to_string(limits.max_manifest_bytes) + ")");
  }
  json j;
  try {
    // The depth bound keeps hostile nesting from costing stack or memory.
    j = json::parse(text, [](int depth, json::parse_event_t /*event*/, json& /*value*/) {
      if (depth > kMaxJsonDepth) throw std::invalid_argument("nesting deeper than 4");
      return true;
    });
  } catch (const std::exception& e) {
    return Malformed(std::string("not valid JSON: ") + e.what());
  }
  return ParseManifestJson(j, limits);
}

std::string SerializeManifest(const Manifest& m) {
  json j = {
      {"format", m.format},         {"type", ImageTypeName(m.type)}, {"version", m.version},
      {"compatible", m.compatible}, {"build_time", m.build_time},
  };
  if (m.format == kFormatGrouped && m.reuse) {
    std::string table;
    table.reserve(m.frame_lengths.size() * 4 + m.chunks.size() * 32);
    for (const auto len : m.frame_lengths) {
      for (unsigned shift = 0; shift < 32; shift += 8) {
        table.push_back(static_cast<char>((len >> shift) & 0xFFU));
      }
    }
    for (const auto& c : m.chunks) {
      table.append(reinterpret_cast<const char*>(c.sha256.data()), c.sha256.size());
    }
    std::string z(ZSTD_compressBound(table.size()), '\0');
    const std::size_t n = ZSTD_compress(z.data(), z.size(), table.data(), table.size(), 19);
    if (ZSTD_isError(n) == 0U) z.resize(n);
    j["payload"] = {
        {"size", m.payload_size},     {"sha256", ToHex(m.payload_sha256)},
        {"frame_size", m.frame_size}, {"group_frames", m.group_frames},
        {"compression", "zstd"},      {"zsha256", ToHex(m.frames_zsha256.value_or(Digest{}))}};
    j["frames"] = Base64Encode(ZSTD_isError(n) == 0U ? z : std::string());
    if (m.dict) {
      j["dict"] = {{"offset", m.dict->offset},
                   {"length", m.dict->length},
                   {"sha256", ToHex(m.dict->sha256)}};
    }
    const auto& r = *m.reuse;
    j["reuse"] = {{"block_size", r.block_size},
                  {"hash_bytes", r.hash_bytes},
                  {"offset", r.offset},
                  {"length", r.length},
                  {"size", r.size},
                  {"sha256", ToHex(r.sha256)}};
    return j.dump(1) + "\n";
  }
  if ((m.format == kFormatDelta || m.format == kFormatCompact) && m.reuse) {
    const bool compact = m.format == kFormatCompact;
    std::string table;
    table.reserve(m.chunks.size() * (compact ? kCompactFrameRecordBytes : kFrameRecordBytes));
    for (const auto& c : m.chunks) {
      for (unsigned shift = 0; shift < 32; shift += 8) {
        table.push_back(static_cast<char>((c.length >> shift) & 0xFFU));
      }
      table.append(reinterpret_cast<const char*>(c.sha256.data()), c.sha256.size());
      if (!compact) {
        table.append(reinterpret_cast<const char*>(c.zsha256.data()), c.zsha256.size());
      }
    }
    j["payload"] = {{"size", m.payload_size},
                    {"sha256", ToHex(m.payload_sha256)},
                    {"frame_size", m.chunk_size},
                    {"compression", "zstd"}};
    if (compact) {
      // Zero frames (free space) repeat one record: zstd takes them out.
      std::string z(ZSTD_compressBound(table.size()), '\0');
      const std::size_t n = ZSTD_compress(z.data(), z.size(), table.data(), table.size(), 19);
      if (ZSTD_isError(n) == 0U) z.resize(n);
      j["payload"]["zsha256"] = ToHex(m.frames_zsha256.value_or(Digest{}));
      j["frames"] = Base64Encode(ZSTD_isError(n) == 0U ? z : std::string());
    } else {
      j["frames"] = Base64Encode(table);
    }
    const auto& r = *m.reuse;
    j["reuse"] = {{"block_size", r.block_size},
                  {"hash_bytes", r.hash_bytes},
                  {"offset", r.offset},
                  {"length", r.length},
                  {"size", r.size},
                  {"sha256", ToHex(r.sha256)}};
    return j.dump(1) + "\n";
  }
  json chunks = json::array();
  for (const auto& c : m.chunks) {
    chunks.push_back(json{{"offset", c.offset},
                          {"length", c.length},
                          {"sha256", ToHex(c.sha256)},
                          {"zsha256", ToHex(c.zsha256)}});
  }
  j["payload"] = {{"size", m.payload_size},
                  {"sha256", ToHex(m.payload_sha256)},
                  {"chunk_size", m.chunk_size},
                  {"compression", "zstd"}};
  j["chunks"] = chunks;
  return j.dump(1) + "\n";
}

std::size_t FrameCount(const Manifest& m) {
  return m.frame_lengths.empty() ? m.chunks.size() : m.frame_lengths.size();
}

FrameRef FrameAt(const Manifest& m, std::size_t f) {
  if (m.frame_lengths.empty()) {
    const auto& c = m.chunks[f];
    return FrameRef{c.offset, c.length, c.size};
  }
  const std::size_t g = f / m.group_frames;
  FrameRef r{m.chunks[g].offset, m.frame_lengths[f], 0};
  for (std::size_t i = g * m.group_frames; i < f; ++i) r.offset += m.frame_lengths[i];
  r.size = f + 1 < m.frame_lengths.size() ? m.frame_size : m.payload_size - f * m.frame_size;
  return r;
}

std::uint64_t MaxStoredChunk(const Manifest& m) {
  if (m.frame_lengths.empty()) return ZSTD_compressBound(m.chunk_size);
  return m.group_frames * ZSTD_compressBound(m.frame_size);
}

// ---------------------------------------------------------------------------
// Signature

namespace {

std::string NameOneLine(X509_NAME* name) {
  ossl::BioPtr bio(BIO_new(BIO_s_mem()));
  X509_NAME_print_ex(bio.get(), name, 0, XN_FLAG_RFC2253);
  return ossl::BioText(bio.get());
}

std::string TimeText(const ASN1_TIME* t) {
  ossl::BioPtr bio(BIO_new(BIO_s_mem()));
  ASN1_TIME_print(bio.get(), t);
  return ossl::BioText(bio.get());
}

Expected<ossl::CmsPtr> ParseCms(std::string_view der) {
  ossl::BioPtr bio = ossl::MemBio(der);
  ossl::CmsPtr cms(d2i_CMS_bio(bio.get(), nullptr));
  if (!cms) return ossl::Fail(Errc::kSignatureInvalid, "signature is not a DER CMS structure");
  return cms;
}

Expected<ossl::X509Ptr> LoadRoot(const std::filesystem::path& path) {
  auto pem = ReadFile(path, 1U << 20U);
  if (!pem) return pem.error().WithContext("reading the pinned root CA");
  ossl::BioPtr bio = ossl::MemBio(*pem);
  ossl::X509Ptr root(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
  if (!root) {
    return ossl::Fail(Errc::kKeyInvalid,
                      "the pinned root CA " + path.string() + " is not a PEM certificate");
  }
  return root;
}

// A minimal DER reader for CheckCmsShape.
struct Der {
  std::span<const std::uint8_t> rest;
  // The next TLV (whole) and its content; nullopt if malformed.
  std::optional<std::pair<std::span<const std::uint8_t>, std::span<const std::uint8_t>>> Next() {
    if (rest.size() < 2) return std::nullopt;
    std::size_t hl = 2;
    std::size_t len = rest[1];
    if ((len & 0x80U) != 0) {
      const std::size_t n = len & 0x7FU;
      if (n == 0 || n > 3 || rest.size() < 2 + n) return std::nullopt;
      len = 0;
      for (std::size_t i = 0; i < n; ++i) len = (len << 8U) | rest[2 + i];
      hl += n;
    }
    if (rest.size() - hl < len) return std::nullopt;
    auto whole = rest.first(hl + len);
    auto content = whole.subspan(hl);
    rest = rest.subspan(hl + len);
    return std::pair{whole, content};
  }
};

bool Equals(std::span<const std::uint8_t> a, std::initializer_list<std::uint8_t> b) {
  return std::equal(a.begin(), a.end(), b.begin(), b.end());
}

// OpenSSL's CMS_verify ignores some fields that the signature does not
// cover (the SignedData and SignerInfo versions, the digestAlgorithms set,
// the signatureAlgorithm OID, unused certificates). A changed byte there
// must still be refused, so the structure is checked against what
// SignManifest writes: DER that re-encodes to itself, version 1, SHA-256,
// an ECDSA or RSA signature algorithm, no CRLs and no unsigned attributes.
Status CheckCmsShape(std::string_view der_text, CMS_ContentInfo* cms) {
  const auto bad = [](const std::string& what) {
    return Error(Errc::kSignatureInvalid,
                 "signature structure: " + what + "; the image was altered");
  };
  const std::span<const std::uint8_t> der(reinterpret_cast<const std::uint8_t*>(der_text.data()),
                                          der_text.size());
  unsigned char* re = nullptr;
  const int re_len = i2d_CMS_ContentInfo(cms, &re);
  const bool same =
      std::cmp_equal(re_len, der.size()) && std::memcmp(re, der.data(), der.size()) == 0;
  OPENSSL_free(re);
  if (!same) return bad("not in canonical DER");
  static constexpr std::initializer_list<std::uint8_t> kVersion1 = {0x02, 0x01, 0x01};
  static constexpr std::initializer_list<std::uint8_t> kSha256 = {
      0x30, 0x0b, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01};
  static constexpr std::initializer_list<std::uint8_t> kData = {
      0x30, 0x0b, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x01};
  Der top{der};
  auto ci = top.Next();
  if (!ci || !top.rest.empty()) return bad("trailing bytes");
  Der ci_in{ci->second};
  auto oid = ci_in.Next();
  auto explicit0 = ci_in.Next();
  if (!oid || !explicit0) return bad("no SignedData");
  Der e0{explicit0->second};
  auto sd = e0.Next();
  if (!sd) return bad("no SignedData");
  Der sd_in{sd->second};
  auto version = sd_in.Next();
  if (!version || !Equals(version->first, kVersion1)) return bad("SignedData version is not 1");
  auto digests = sd_in.Next();
  if (!digests || digests->first[0] != 0x31 || !Equals(digests->second, kSha256)) {
    return bad("digestAlgorithms is not exactly SHA-256");
  }
  auto encap = sd_in.Next();
  if (!encap || !Equals(encap->first, kData)) return bad("content is not detached id-data");
  auto next = sd_in.Next();
  if (next && next->first[0] == 0xa0) next = sd_in.Next();  // certificates
  if (!next || next->first[0] != 0x31 || !sd_in.rest.empty()) {
    return bad("CRLs or extra fields present");
  }
  Der infos{next->second};
  auto si = infos.Next();
  if (!si || !infos.rest.empty()) return bad("not exactly one SignerInfo");
  Der si_in{si->second};
  auto si_version = si_in.Next();
  if (!si_version || !Equals(si_version->first, kVersion1))
    return bad("SignerInfo version is not 1");
  auto sid = si_in.Next();
  auto digest_alg = si_in.Next();
  if (!sid || !digest_alg || !Equals(digest_alg->first, kSha256)) {
    return bad("digestAlgorithm is not SHA-256");
  }
  auto attrs = si_in.Next();
  if (!attrs || attrs->first[0] != 0xa0) return bad("no signed attributes");
  auto sig_alg = si_in.Next();
  // ECDSA over the pinned SHA-256 digest is ecdsa-with-SHA256, what OpenSSL
  // writes. ecdsa-with-SHA384 is one bit away and CMS_verify ignores the
  // hash the OID names: accepting it made a second file of the same content.
  const bool known_alg =
      sig_alg &&
      (Equals(sig_alg->first, {0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03,
                               0x02}) ||  // ecdsa-with-SHA256
       Equals(sig_alg->first, {0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01,
                               0x01, 0x01, 0x05, 0x00}) ||  // rsaEncryption
       Equals(sig_alg->first, {0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01,
                               0x01, 0x0b, 0x05, 0x00}));  // sha256WithRSAEncryption
  if (!known_alg) return bad("unknown signatureAlgorithm");
  auto sig = si_in.Next();
  if (!sig || sig->first[0] != 0x04 || !si_in.rest.empty()) {
    return bad("unsigned attributes or extra fields present");
  }
  return Ok();
}

Errc MapVerifyError(int err) {
  switch (err) {
    case X509_V_ERR_CERT_HAS_EXPIRED:
      return Errc::kSignerExpired;
    case X509_V_ERR_CERT_NOT_YET_VALID:
      return Errc::kSignerNotYetValid;
    default:
      return Errc::kSignerUntrusted;
  }
}

}  // namespace

namespace {

// ECDSA signature (r, s) and (r, n - s) both verify; the writer makes the
// one with s <= n/2 (as Bitcoin's BIP 62 and libsecp256k1 do), so the other
// is refused: one signed manifest, one signature. RSA PKCS#1 v1.5
// signatures are deterministic and have no such twin.
Status CheckLowS(CMS_SignerInfo* si, X509* signer) {
  EVP_PKEY* key = X509_get0_pubkey(signer);
  if (key == nullptr || EVP_PKEY_get_base_id(key) != EVP_PKEY_EC) return Ok();
  SAG_TRY(const bool high, ossl::HighS(si, key, /*make_low=*/false));
  if (high) {
    return Error(Errc::kImageNonCanonical,
                 "the ECDSA signature has a high s (n - s of the one sag-image writes): a valid "
                 "signature, but another file for the same signed manifest; sign the image "
                 "again with sag-image");
  }
  return Ok();
}

}  // namespace

Expected<VerifiedHeader> VerifyHeader(std::string manifest_json, std::string signature_der,
                                      const Trust& trust, const Limits& limits) {
  if (manifest_json.size() > limits.max_manifest_bytes) {
    return TooLarge("manifest of " + std::to_string(manifest_json.size()) + " bytes");
  }
  if (signature_der.size() > limits.max_signature_bytes) {
    return Error(Errc::kManifestLimits, "signature of " + std::to_string(signature_der.size()) +
                                            " bytes (limit " +
                                            std::to_string(limits.max_signature_bytes) + ")");
  }
  ERR_clear_error();
  SAG_TRY(auto root, LoadRoot(trust.root_ca));
  SAG_TRY(auto cms, ParseCms(signature_der));
  if (CMS_is_detached(cms.get()) != 1) {
    return Error(Errc::kSignatureInvalid, "signature embeds its content; expected detached CMS");
  }
  STACK_OF(CMS_SignerInfo)* infos = CMS_get0_SignerInfos(cms.get());
  if (infos == nullptr || sk_CMS_SignerInfo_num(infos) != 1) {
    return Error(Errc::kSignatureInvalid, "signature must have exactly one signer");
  }
  SAG_TRY_STATUS(CheckCmsShape(signature_der, cms.get()));
  ossl::StorePtr store(X509_STORE_new());
  if (!store || X509_STORE_add_cert(store.get(), root.get()) != 1) {
    return ossl::Fail(Errc::kInternal, "building the trust store");
  }
  // Step 1: the signature over the manifest bytes. The chain is checked
  // separately below so that each failure gets its own code.
  ossl::BioPtr content = ossl::MemBio(manifest_json);
  if (CMS_verify(cms.get(), nullptr, store.get(), content.get(), nullptr,
                 CMS_BINARY | CMS_NO_SIGNER_CERT_VERIFY) != 1) {
    return ossl::Fail(Errc::kSignatureInvalid,
                      "the CMS signature does not match manifest.json; the image was altered");
  }
  ossl::X509StackPtr signers(CMS_get0_signers(cms.get()));
  if (!signers || sk_X509_num(signers.get()) != 1) {
    return Error(Errc::kSignatureInvalid, "signature has no signer certificate");
  }
  X509* signer = sk_X509_value(signers.get(), 0);
  // OpenSSL matches the SignerInfo's issuer name to the certificate in
  // canonical form (case-insensitively); require the exact bytes instead.
  {
    ASN1_OCTET_STRING* keyid = nullptr;
    X509_NAME* sid_issuer = nullptr;
    ASN1_INTEGER* sid_serial = nullptr;
    const unsigned char* a = nullptr;
    const unsigned char* b = nullptr;
    std::size_t alen = 0;
    std::size_t blen = 0;
    if (CMS_SignerInfo_get0_signer_id(sk_CMS_SignerInfo_value(infos, 0), &keyid, &sid_issuer,
                                      &sid_serial) != 1 ||
        sid_issuer == nullptr || sid_serial == nullptr ||
        X509_NAME_get0_der(sid_issuer, &a, &alen) != 1 ||
        X509_NAME_get0_der(X509_get_issuer_name(signer), &b, &blen) != 1 || alen != blen ||
        std::memcmp(a, b, alen) != 0 ||
        ASN1_INTEGER_cmp(sid_serial, X509_get0_serialNumber(signer)) != 0) {
      ERR_clear_error();
      return Error(Errc::kSignatureInvalid,
                   "the signer identifier does not match the signer certificate exactly");
    }
  }
  const std::string subject = NameOneLine(X509_get_subject_name(signer));
  SAG_TRY_STATUS(CheckLowS(sk_CMS_SignerInfo_value(infos, 0), signer));

  // Step 2: the chain, with the pinned root as the only anchor.
  ossl::X509StackPtr certs(CMS_get1_certs(cms.get()));
  ossl::StoreCtxPtr ctx(X509_STORE_CTX_new());
  if (!ctx || X509_STORE_CTX_init(ctx.get(), store.get(), signer, certs.get()) != 1) {
    return ossl::Fail(Errc::kInternal, "building the verification context");
  }
  if (trust.now) X509_STORE_CTX_set_time(ctx.get(), 0, *trust.now);
  if (X509_verify_cert(ctx.get()) != 1) {
    const int err = X509_STORE_CTX_get_error(ctx.get());
    ERR_clear_error();
    return Error(MapVerifyError(err),
                 "signer \"" + subject + "\": " + X509_verify_cert_error_string(err) +
                     " (checked against the pinned root " + trust.root_ca.string() + ")");
  }
  // Every certificate carried must be part of the verified chain: an unused
  // one would be bytes that nothing checks.
  STACK_OF(X509)* chain = X509_STORE_CTX_get0_chain(ctx.get());
  for (int i = 0; i < sk_X509_num(certs.get()); ++i) {
    X509* c = sk_X509_value(certs.get(), i);
    bool used = false;
    for (int k = 0; k < sk_X509_num(chain) && !used; ++k) {
      used = X509_cmp(c, sk_X509_value(chain, k)) == 0;
    }
    if (!used) {
      return Error(Errc::kSignatureInvalid,
                   "signature carries a certificate outside the signer's chain: \"" +
                       NameOneLine(X509_get_subject_name(c)) + "\"");
    }
  }
  // Step 3: the signer must be a code-signing certificate. OpenSSL 3.0 has no
  // code-signing purpose, so the extension is read here; a certificate
  // without any EKU extension does not count as code signing.
  const std::uint32_t flags = X509_get_extension_flags(signer);
  if ((flags & EXFLAG_XKUSAGE) == 0U ||
      (X509_get_extended_key_usage(signer) & XKU_CODE_SIGN) == 0U) {
    return Error(Errc::kSignerUsage, "signer \"" + subject +
                                         "\" lacks the codeSigning extended key usage; sign "
                                         "with a code-signing certificate");
  }
  if ((flags & EXFLAG_KUSAGE) != 0U && (X509_get_key_usage(signer) & KU_DIGITAL_SIGNATURE) == 0U) {
    return Error(Errc::kSignerUsage,
                 "signer \"" + subject + "\" key usage does not allow digitalSignature");
  }

  VerifiedHeader h;
  SAG_TRY(h.manifest, ParseManifest(manifest_json, limits));
  h.signer.subject = subject;
  h.signer.not_after = TimeText(X509_get0_notAfter(signer));
  h.manifest_sha256 = Sha256::Of(manifest_json);
  h.manifest_json = std::move(manifest_json);
  h.signature_der = std::move(signature_der);
  return h;
}

Expected<std::string> SignerSubjectUnverified(std::string_view signature_der) {
  ERR_clear_error();
  SAG_TRY(auto cms, ParseCms(signature_der));
  STACK_OF(CMS_SignerInfo)* infos = CMS_get0_SignerInfos(cms.get());
  ossl::X509StackPtr certs(CMS_get1_certs(cms.get()));
  if (infos == nullptr || sk_CMS_SignerInfo_num(infos) < 1 || !certs) {
    return Error(Errc::kSignatureInvalid, "signature has no signer");
  }
  CMS_SignerInfo* si = sk_CMS_SignerInfo_value(infos, 0);
  for (int i = 0; i < sk_X509_num(certs.get()); ++i) {
    X509* c = sk_X509_value(certs.get(), i);
    if (CMS_SignerInfo_cert_cmp(si, c) == 0) return NameOneLine(X509_get_subject_name(c));
  }
  return Error(Errc::kSignatureInvalid, "signature does not carry its signer certificate");
}

// ---------------------------------------------------------------------------
// Container: strict ustar

namespace {

constexpr std::size_t kBlock = 512;
using Block = std::array<std::uint8_t, kBlock>;

std::uint64_t Padded(std::uint64_t n) { return (n + kBlock - 1) / kBlock * kBlock; }

// Reads exactly buf.size() bytes; counts the container offset.
class Input {
 public:
  explicit Input(ByteSource& source) : source_(source) {}
  ByteSource& source() { return source_; }
  Status Read(std::span<std::uint8_t> buf, std::string_view what) {
    std::size_t got = 0;
    while (got < buf.size()) {
      SAG_TRY(const auto n, source_.Read(buf.subspan(got)));
      if (n == 0) {
        return Error(Errc::kImageTruncated,
                     "image ends at offset " + std::to_string(offset_ + got) + " while reading " +
                         std::string(what) + " (" + std::to_string(buf.size() - got) +
                         " more bytes expected); download it again");
      }
      if (n > buf.size() - got) return Error(Errc::kInternal, "byte source overfilled a buffer");
      got += n;
    }
    offset_ += got;
    return Ok();
  }
  // True when the source has no more bytes.
  Expected<bool> AtEnd() {
    std::uint8_t b = 0;
    SAG_TRY(const auto n, source_.Read(std::span<std::uint8_t>(&b, 1)));
    return n == 0;
  }
  [[nodiscard]] std::uint64_t offset() const { return offset_; }

 private:
  ByteSource& source_;
  std::uint64_t offset_ = 0;
};

Error ContainerError(std::uint64_t offset, const std::string& what) {
  return {Errc::kImageContainer, "image container at offset " + std::to_string(offset) + ": " +
                                     what + "; it is not an image made by sag-image"};
}

// Parses an octal field of exactly `digits` digits.
std::optional<std::uint64_t> Octal(std::span<const std::uint8_t> field, std::size_t digits) {
  std::uint64_t v = 0;
  for (std::size_t i = 0; i < digits; ++i) {
    if (field[i] < '0' || field[i] > '7') return std::nullopt;
    v = v * 8 + (field[i] - '0');
  }
  return v;
}

// Checks one ustar header as libarchive writes it for a regular file and
// returns the entry's size: the checksum catches a damaged header, and the
// fields that matter are parsed strictly. The checksum can be recomputed,
// so once the manifest is verified CheckCanonicalHeader compares every
// byte with the one header the writer makes.
Expected<std::uint64_t> ParseHeader(const Block& h, std::string_view name, std::uint64_t offset) {
  if (AllZero(h)) return ContainerError(offset, "entry \"" + std::string(name) + "\" missing");
  // chksum: six octal digits, NUL, space; computed with itself as spaces.
  const auto stored = Octal(std::span(h).subspan(148, 8), 6);
  if (!stored || h[154] != 0 || h[155] != ' ') {
    return ContainerError(offset, "malformed tar header checksum field");
  }
  std::uint64_t sum = 0;
  for (std::size_t i = 0; i < kBlock; ++i) sum += (i >= 148 && i < 156) ? ' ' : h[i];
  if (sum != *stored) return ContainerError(offset, "tar header checksum mismatch");
  if (std::memcmp(&h[257],
                  "ustar\0"
                  "00",
                  8) != 0) {
    return ContainerError(offset, "not a ustar header");
  }
  const std::string_view got(reinterpret_cast<const char*>(h.data()),
                             strnlen(reinterpret_cast<const char*>(h.data()), 100));
  if (got != name || !AllZero(std::span(h).subspan(got.size(), 100 - got.size())) ||
      !AllZero(std::span(h).subspan(345, 155))) {
    return ContainerError(offset, "expected entry \"" + std::string(name) + "\", found \"" +
                                      std::string(got) + "\" (entries missing or out of order)");
  }
  if (h[156] != '0')
    return ContainerError(offset, "entry \"" + std::string(name) + "\" is not a regular file");
  if (!AllZero(std::span(h).subspan(157, 100))) {
    return ContainerError(offset, "entry \"" + std::string(name) + "\" has a link name");
  }
  const auto size = Octal(std::span(h).subspan(124, 12), 11);
  if (!size || h[135] != ' ')
    return ContainerError(offset, "malformed size of \"" + std::string(name) + "\"");
  return *size;
}

// The one ustar header sag-image writes for an entry (what libarchive's
// ustar writer makes for a regular file of mode 0644, uid and gid 0, no user
// or group name, mtime the manifest's build_time): the checksum only says
// that a header is intact, not that it is this one, and every other header
// with the same name and size would be another file for the same signed
// content. Returns the name of the first field that differs, or nullopt.
std::optional<std::string_view> NonCanonicalField(const Block& h, std::string_view name,
                                                  std::uint64_t size, std::time_t mtime) {
  Block want{};
  std::memcpy(want.data(), name.data(), std::min<std::size_t>(name.size(), 100));
  const auto put = [&want](std::size_t at, std::string_view bytes) {
    std::memcpy(&want[at], bytes.data(), bytes.size());
  };
  const auto octal = [&want](std::size_t at, std::size_t digits, std::uint64_t v) {
    for (std::size_t i = digits; i-- > 0; v >>= 3U)
      want[at + i] = static_cast<std::uint8_t>('0' + (v & 7U));
  };
  put(100, std::string_view("000644 \0", 8));
  put(108, std::string_view("000000 \0", 8));
  put(116, std::string_view("000000 \0", 8));
  octal(124, 11, size);
  want[135] = ' ';
  octal(136, 11, static_cast<std::uint64_t>(std::max<std::time_t>(mtime, 0)));
  want[147] = ' ';
  std::memset(&want[148], ' ', 8);
  want[156] = '0';
  put(257, std::string_view("ustar\0"
                            "00",
                            8));
  put(329, std::string_view("000000 \0", 8));
  put(337, std::string_view("000000 \0", 8));
  std::uint64_t sum = 0;
  for (const auto b : want) sum += b;
  octal(148, 6, sum);
  want[154] = 0;
  if (h == want) return std::nullopt;
  static constexpr std::pair<std::size_t, std::string_view> kFields[] = {
      {0, "name"},      {100, "mode"},   {108, "uid"},      {116, "gid"},      {124, "size"},
      {136, "mtime"},   {148, "chksum"}, {156, "typeflag"}, {157, "linkname"}, {257, "magic"},
      {263, "version"}, {265, "uname"},  {297, "gname"},    {329, "devmajor"}, {337, "devminor"},
      {345, "prefix"},  {500, "padding"}};
  std::size_t first = 0;
  while (h[first] == want[first]) ++first;
  std::string_view field = "name";
  for (const auto& [at, f] : kFields) {
    if (at <= first) field = f;
  }
  // The checksum differs whenever another field does: name that one.
  if (field == "chksum") {
    for (std::size_t i = 156; i < kBlock; ++i) {
      if (h[i] != want[i]) {
        for (const auto& [at, f] : kFields) {
          if (at <= i) field = f;
        }
        break;
      }
    }
  }
  return field;
}

// build_time as sag-image turns it into the entries' mtime (0 when strptime
// does not take it, as the writer does).
std::time_t BuildTimeSeconds(const std::string& build_time) {
  std::tm tm{};
  if (strptime(build_time.c_str(), "%Y-%m-%dT%H:%M:%SZ", &tm) == nullptr) return 0;
  return timegm(&tm);
}

Status CheckCanonicalHeader(const Block& h, std::string_view name, std::uint64_t size,
                            const std::string& build_time, std::uint64_t offset) {
  if (auto field = NonCanonicalField(h, name, size, BuildTimeSeconds(build_time))) {
    return Error(Errc::kImageNonCanonical,
                 "image container at offset " + std::to_string(offset) + ": the tar header of \"" +
                     std::string(name) + "\" differs from the one sag-image writes in field " +
                     std::string(*field) +
                     " (an intact header, but another file for the same signed content); "
                     "rebuild the image with sag-image create");
  }
  return Ok();
}

struct Entry {
  std::uint64_t size = 0;
  Block header{};
  std::uint64_t offset = 0;
};

Expected<Entry> ReadEntryHeader(Input& in, std::string_view name) {
  Block h{};
  const auto at = in.offset();
  SAG_TRY_STATUS(in.Read(h, "the header of " + std::string(name)));
  SAG_TRY(const auto size, ParseHeader(h, name, at));
  return Entry{size, h, at};
}

Status ReadPadding(Input& in, std::uint64_t size, std::string_view name) {
  const auto pad = Padded(size) - size;
  if (pad == 0) return Ok();
  Block b{};
  const auto at = in.offset();
  SAG_TRY_STATUS(in.Read(std::span(b).first(pad), "the padding of " + std::string(name)));
  if (!AllZero(std::span(b).first(pad))) {
    return ContainerError(at, "non-zero padding after \"" + std::string(name) + "\"");
  }
  return Ok();
}

Expected<std::string> ReadSmallEntry(Input& in, std::string_view name, std::uint64_t limit,
                                     Entry* entry = nullptr) {
  SAG_TRY(const auto e, ReadEntryHeader(in, name));
  if (entry != nullptr) *entry = e;
  if (e.size > limit) {
    return Error(Errc::kManifestLimits, std::string(name) + " of " + std::to_string(e.size) +
                                            " bytes exceeds the limit of " + std::to_string(limit));
  }
  std::string data(e.size, '\0');
  SAG_TRY_STATUS(in.Read(std::span(reinterpret_cast<std::uint8_t*>(data.data()), data.size()),
                         std::string(name)));
  SAG_TRY_STATUS(ReadPadding(in, e.size, name));
  return data;
}

// Streams format 2's stored reuse index through SHA-256 (no allocation that
// follows its size) and compares it with the signed one.
Status CheckReuseIndex(Input& in, const ReuseIndexInfo& reuse) {
  std::array<std::uint8_t, 16384> buf{};
  Sha256 sha;
  for (std::uint64_t left = reuse.length; left > 0;) {
    const auto n = static_cast<std::size_t>(std::min<std::uint64_t>(left, buf.size()));
    SAG_TRY_STATUS(in.Read(std::span(buf).first(n), "the reuse index"));
    sha.Update(std::span(buf).first(n));
    left -= n;
  }
  if (sha.Final() != reuse.sha256) {
    return Error(Errc::kChunkHashMismatch,
                 "the reuse index does not match its signed SHA-256; download the image again");
  }
  return Ok();
}

// After payload.zst: two zero blocks, then nothing.
Status ReadTrailer(Input& in) {
  std::array<std::uint8_t, 2 * kBlock> t{};
  const auto at = in.offset();
  SAG_TRY_STATUS(in.Read(t, "the end-of-archive blocks"));
  if (!AllZero(std::span(t).first(kBlock))) {
    return ContainerError(at, "an extra entry after \"payload.zst\"");
  }
  if (!AllZero(std::span(t).subspan(kBlock))) {
    return ContainerError(at + kBlock, "malformed end-of-archive block");
  }
  SAG_TRY(const bool end, in.AtEnd());
  if (!end) return ContainerError(in.offset(), "data after the end of the archive");
  return Ok();
}

}  // namespace

std::uint64_t ContainerSize(std::uint64_t manifest_bytes, std::uint64_t signature_bytes,
                            std::uint64_t payload_stored_bytes) {
  return 3 * kBlock + Padded(manifest_bytes) + Padded(signature_bytes) +
         Padded(payload_stored_bytes) + 2 * kBlock;
}

Expected<UnverifiedHeader> ReadUnverifiedHeader(ByteSource& source, const Limits& limits) {
  Input in(source);
  UnverifiedHeader h;
  SAG_TRY(h.manifest_json, ReadSmallEntry(in, kManifestName, limits.max_manifest_bytes));
  SAG_TRY(h.signature_der, ReadSmallEntry(in, kSignatureName, limits.max_signature_bytes));
  SAG_TRY(const auto e, ReadEntryHeader(in, kPayloadName));
  h.payload_offset = in.offset();
  h.payload_stored_size = e.size;
  return h;
}

// ---------------------------------------------------------------------------
// Chunks

namespace {

// A decoded-chunk buffer: zstd decodes a chunk in place, from its stored
// bytes at the end of the buffer towards the start (ZSTD_decompressionMargin),
// so no separate buffer holds the compressed bytes. Room for the largest
// chunk, one block of margin, and each frame's header and 3 bytes per block,
// counted for blocks of 512 bytes (zstd's block splitter makes blocks
// smaller than 128 KiB; Check refuses a frame that needs more room than
// this); and at least the largest stored chunk. For 1 MiB chunks:
// 1 MiB + 136 KiB.
std::size_t InPlaceCapacity(const Manifest& m) {
  static_assert(ZSTD_VERSION_NUMBER >= 10504, "in-place decoding needs zstd 1.5.4");
  const std::uint64_t frame = m.frame_lengths.empty() ? m.chunk_size : m.frame_size;
  const std::uint64_t frames = m.frame_lengths.empty() ? 1 : m.group_frames;
  const std::uint64_t margin = std::min<std::uint64_t>(frame, ZSTD_BLOCKSIZE_MAX) +
                               frames * (ZSTD_FRAMEHEADERSIZE_MAX + 4 + 3 * (frame / 512 + 1));
  const std::uint64_t need = std::max<std::uint64_t>(m.chunk_size + margin, MaxStoredChunk(m));
  return (need + kDirectAlign - 1) / kDirectAlign * kDirectAlign;
}

// Checks and decompresses one chunk at a time, each in its own buffer of a
// ring: chunk i's stored bytes are read into the end of buffer i % buffers
// and decoded in place there, so chunk i stays valid while chunks i+1 ..
// i+buffers-1 are read and decoded.
class ChunkDecoder {
 public:
  ChunkDecoder(const Manifest& m, std::size_t buffers, std::span<const std::uint8_t> dictionary)
      : dctx_(ZSTD_createDCtx()),
        ddict_(dictionary.empty() ? nullptr
                                  : ZSTD_createDDict(dictionary.data(), dictionary.size())),
        m_(m),
        zsha_(HasChunkZsha(m)),
        capacity_(InPlaceCapacity(m)) {
    // Aligned: the installer writes a chunk from here with O_DIRECT.
    buffers_.reserve(buffers);
    for (std::size_t i = 0; i < buffers; ++i) buffers_.emplace_back(capacity_);
  }
  ~ChunkDecoder() {
    ZSTD_freeDDict(ddict_);
    ZSTD_freeDCtx(dctx_);
  }
  ChunkDecoder(const ChunkDecoder&) = delete;
  ChunkDecoder& operator=(const ChunkDecoder&) = delete;

  // Where chunk `index`'s stored bytes are to be read: the end of its
  // buffer. An error for a chunk that does not fit (a manifest that skipped
  // ParseManifest).
  Expected<std::span<std::uint8_t>> InputFor(const Chunk& c, std::size_t index) {
    if (c.length > capacity_ || c.size > m_.chunk_size) {
      return Error(Errc::kManifestLimits, "chunk of " + std::to_string(c.length) + "/" +
                                              std::to_string(c.size) +
                                              " bytes does not fit the chunk buffers");
    }
    return Stored(c, index);
  }

  // Decodes chunk `index` in place, from the stored bytes read into
  // InputFor(c, index), once Check passed (and, if it asked for it, the
  // stored bytes matched the signed zsha256).
  Expected<std::span<const std::uint8_t>> Decode(const Chunk& c, std::size_t index) {
    const auto where = "chunk " + std::to_string(index);
    const auto src = Stored(c, index);
    auto& buf = buffers_[index % buffers_.size()];
    // zstd 1.5.4 and later keep a block's output and its literals short of
    // input not read yet when the whole buffer is given as the output.
    const auto decode = [&](std::uint64_t at, std::uint64_t size, std::span<const std::uint8_t> z,
                            const std::string& name) -> Status {
      const std::size_t n =
          ddict_ != nullptr
              ? ZSTD_decompress_usingDDict(dctx_, buf.data() + at, capacity_ - at, z.data(),
                                           z.size(), ddict_)
              : ZSTD_decompressDCtx(dctx_, buf.data() + at, capacity_ - at, z.data(), z.size());
      if (ZSTD_isError(n) != 0U || n != size) {
        return Error(Errc::kDecompress,
                     name + ": zstd frame does not decompress to " + std::to_string(size) +
                         " bytes (" +
                         (ZSTD_isError(n) != 0U ? ZSTD_getErrorName(n) : std::to_string(n)) +
                         "); the image is corrupt");
      }
      return Ok();
    };
    if (m_.frame_lengths.empty()) {
      SAG_TRY_STATUS(decode(0, c.size, src, where));
    } else {
      SAG_TRY_STATUS(ForEachFrame(index, [&](const Frame& f) {
        return decode(f.at, f.size, src.subspan(f.pos, f.length),
                      "frame " + std::to_string(f.index));
      }));
    }
    return std::span<const std::uint8_t>(buf.span()).first(c.size);
  }

  // Chunk `index`'s frame(s), read into InputFor(c, index), before anything
  // decodes them: each one canonical zstd frame of exactly its size, that
  // zstd can decode in place in the buffer. Returns the stored bytes if they
  // are to be checked against the chunk's signed zsha256 before Decode (a
  // compressed block in a format 1-2 image: the decoded content is then
  // authenticated, and the caller's to check), else nothing: the caller
  // checks the decoded bytes against c.sha256.
  Expected<std::optional<std::span<const std::uint8_t>>> Check(const Chunk& c, std::size_t index) {
    const auto where = "chunk " + std::to_string(index);
    const auto src = Stored(c, index);
    bool authenticated = false;
    if (m_.frame_lengths.empty()) {
      // Format 3: zstd decodes the unauthenticated frame into the bounded
      // buffer (CheckFrame pinned down its header and size), and the
      // content's signed SHA-256 decides (docs/delta.md, "Format 3").
      SAG_TRY(const bool compressed, CheckFrame(src, c.size, where));
      authenticated = compressed && zsha_;
    } else {
      // Format 4: a group's frames, each decoded with the (verified)
      // dictionary at its place; the caller checks the group's content.
      if (m_.dict && ddict_ == nullptr) {
        return Error(Errc::kDecompress, where + ": the image's zstd dictionary is not usable");
      }
      std::uint64_t pos = 0;  // the frames' stored and content bytes so far
      std::uint64_t at = 0;
      SAG_TRY_STATUS(ForEachFrame(index, [&](const Frame& f) -> Status {
        const auto frame = "frame " + std::to_string(f.index);
        if (f.pos + f.length > src.size() || f.at + f.size > c.size) {
          return Error(Errc::kManifestLimits, frame + " does not fit its group");
        }
        SAG_TRY_STATUS(CheckFrame(src.subspan(f.pos, f.length), f.size, frame));
        pos = f.pos + f.length;
        at = f.at + f.size;
        return Ok();
      }));
      if (pos != c.length || at != c.size) {
        return Error(Errc::kManifestLimits, where + ": its frames do not add up to the group");
      }
    }
    // Each block may run one block ahead of what it consumed: decoded in
    // place, the output must never reach input not read yet.
    const std::size_t margin = ZSTD_decompressionMargin(src.data(), src.size());
    if (ZSTD_isError(margin) != 0U || c.size + margin > capacity_) {
      return Error(Errc::kDecompress,
                   where + ": its zstd frames need more room to decode in place than frames " +
                       "made by sag-image (" + std::to_string(capacity_ - c.size) +
                       " bytes); the image is corrupt");
    }
    using Bytes = std::optional<std::span<const std::uint8_t>>;
    return authenticated ? Bytes(src) : Bytes();
  }

  // Whether ReadRaw may read this image's chunks: one frame each, no
  // dictionary (formats 1 to 3; the caller leaves out format 3, whose
  // frames' stored bytes are hashed as a whole).
  [[nodiscard]] bool CanReadRaw() const { return m_.frame_lengths.empty() && ddict_ == nullptr; }

  // Reads chunk `index` with `read` piece by piece, as far as
  // it is made of raw blocks the way zstd cuts incompressible data (each a
  // full block but the last): each block's bytes go straight to where they
  // decode to, so such a chunk is not copied again once read (zstd would
  // move every byte from the end of the buffer to its start). Returns its
  // content, to be checked against c.sha256 as any decoded chunk. At the
  // first block of another kind, or anything else sag-image does not write
  // (Check and zstd then judge it), it puts the bytes read so far where
  // InputFor(c, index) has them, reads the rest there, and returns nothing:
  // the chunk is then checked and decoded as any other.
  template <typename Read>
  Expected<std::optional<std::span<const std::uint8_t>>> ReadRaw(const Chunk& c, std::size_t index,
                                                                 const Read& read) {
    using Result = std::optional<std::span<const std::uint8_t>>;
    auto& buf = buffers_[index % buffers_.size()];
    const auto stored = Stored(c, index);
    const std::size_t header = HeaderSize(c.size);
    const std::uint64_t block = std::min<std::uint64_t>(ZSTD_BLOCKSIZE_MAX, c.size);
    std::array<std::uint8_t, 5 + 8 + 3> head{};  // the frame header and a block header
    std::size_t pending = 0;                     // bytes of `head` not placed yet
    std::uint64_t blocks = 0;                    // raw blocks placed at blocks * block
    if (c.length >= header + 3) {
      pending = header + 3;
      SAG_TRY_STATUS(read(std::span(head).first(pending)));
      if (CanonicalHeader(std::span(head).first(pending), c.size)) {
        for (;;) {
          const std::uint8_t* h = head.data() + pending - 3;
          const std::uint32_t bh = h[0] | (h[1] << 8U) | (h[2] << 16U);
          const bool last = (bh & 1U) != 0;
          const std::uint64_t size = bh >> 3U;
          const std::uint64_t at = blocks * block;
          const std::uint64_t end = header + (blocks + 1) * 3 + at + size;  // stored bytes
          const bool raw = ((bh >> 1U) & 3U) == 0 && size > 0 && size <= block &&
                           (last ? at + size == c.size && end == c.length
                                 : size == block && at + size < c.size && end + 3 <= c.length);
          if (!raw) break;
          SAG_TRY_STATUS(read(buf.span().subspan(at, size)));
          ++blocks;
          if (last) return Result(std::span<const std::uint8_t>(buf.span()).first(c.size));
          SAG_TRY_STATUS(read(std::span(head).subspan(header, 3)));
          pending = header + 3;
        }
      }
    }
    // Put the stored bytes read so far in order at the end of the buffer:
    // the frame header, each raw block with its header (from the last, as
    // each moves to a higher address), then the block header just read.
    std::uint64_t placed = 0;
    if (blocks > 0) {
      const auto at_stored = [&](std::uint64_t b) { return header + b * (3 + block); };
      for (std::uint64_t b = blocks; b-- > 0;) {
        std::memmove(stored.data() + at_stored(b) + 3, buf.data() + b * block, block);
        const std::uint32_t bh = static_cast<std::uint32_t>(block) << 3U;  // raw, not last
        stored[at_stored(b)] = static_cast<std::uint8_t>(bh);
        stored[at_stored(b) + 1] = static_cast<std::uint8_t>(bh >> 8U);
        stored[at_stored(b) + 2] = static_cast<std::uint8_t>(bh >> 16U);
      }
      std::memcpy(stored.data(), head.data(), header);
      std::memcpy(stored.data() + at_stored(blocks), head.data() + header, 3);
      placed = at_stored(blocks) + 3;
    } else {
      std::memcpy(stored.data(), head.data(), pending);
      placed = pending;
    }
    SAG_TRY_STATUS(read(stored.subspan(placed)));
    return Result();
  }

 private:
  std::span<std::uint8_t> Stored(const Chunk& c, std::size_t index) {
    return buffers_[index % buffers_.size()].span().subspan(capacity_ - c.length, c.length);
  }

  // Format 4: a frame of a group, where it is among the group's stored
  // bytes (pos, length) and in its content (at, size).
  struct Frame {
    std::size_t index = 0;
    std::uint64_t pos = 0;
    std::uint64_t length = 0;
    std::uint64_t at = 0;
    std::uint64_t size = 0;
  };

  // Calls `fn` (returning a Status) for each frame of group `index`, in
  // order, up to the first error.
  template <typename Fn>
  Status ForEachFrame(std::size_t index, const Fn& fn) const {
    Frame f;
    const std::size_t first = index * m_.group_frames;
    const std::size_t end = std::min<std::size_t>(first + m_.group_frames, m_.frame_lengths.size());
    for (f.index = first; f.index < end; ++f.index) {
      f.length = m_.frame_lengths[f.index];
      f.size = f.index + 1 < m_.frame_lengths.size() ? m_.frame_size
                                                     : m_.payload_size - f.index * m_.frame_size;
      SAG_TRY_STATUS(fn(std::as_const(f)));
      f.pos += f.length;
      f.at += f.size;
    }
    return Ok();
  }

  // One zstd frame exactly as sag-image writes it: single segment, content
  // size equal to the chunk size in its shortest encoding, no dictionary,
  // no checksum, reserved bits clear, nothing after the frame. zstd itself
  // ignores some of these bits; checking them means a changed byte there is
  // refused too instead of passing unnoticed.
  // Returns whether the frame holds a compressed (entropy-coded) block.
  static Expected<bool> CheckFrame(std::span<const std::uint8_t> src, std::uint64_t size,
                                   const std::string& where) {
    if (!CanonicalHeader(src, size) ||
        ZSTD_findFrameCompressedSize(src.data(), src.size()) != src.size()) {
      return Error(Errc::kDecompress, where + ": not a single canonical zstd frame of " +
                                          std::to_string(size) + " bytes; the image is corrupt");
    }
    // Walk the block headers (3 bytes, little endian: last, type, size).
    std::size_t pos = HeaderSize(size);
    bool compressed = false;
    for (;;) {
      if (pos + 3 > src.size()) break;  // cannot happen after findFrameCompressedSize
      const std::uint32_t bh = src[pos] | (src[pos + 1] << 8U) | (src[pos + 2] << 16U);
      const std::uint32_t type = (bh >> 1U) & 3U;
      const std::uint32_t block_size = bh >> 3U;
      compressed = compressed || type == 2;
      pos += 3 + (type == 1 ? 1 : block_size);
      if ((bh & 1U) != 0) break;
    }
    return compressed;
  }

  // The size of the frame header sag-image writes for a chunk of `size`
  // bytes: magic, descriptor, content size in its shortest encoding.
  static std::size_t HeaderSize(std::uint64_t size) {
    return 5 + (size < 256 ? 1 : size < 65536 + 256 ? 2 : size <= 0xFFFFFFFFU ? 4 : 8);
  }

  // Whether `src` starts with that frame header: single segment, content
  // size `size`, no dictionary, no checksum, reserved bits clear.
  static bool CanonicalHeader(std::span<const std::uint8_t> src, std::uint64_t size) {
    ZSTD_frameHeader fh{};
    const std::size_t r = ZSTD_getFrameHeader(&fh, src.data(), src.size());
    const std::size_t fcs_bytes = HeaderSize(size) - 5;
    const std::uint8_t fcs_flag = fcs_bytes == 1 ? 0 : fcs_bytes == 2 ? 1 : fcs_bytes == 4 ? 2 : 3;
    return r == 0 && fh.frameType == ZSTD_frame && fh.frameContentSize == size && fh.dictID == 0 &&
           fh.checksumFlag == 0 && src.size() > 4 &&
           src[4] == static_cast<std::uint8_t>((fcs_flag << 6U) | 0x20U) &&
           fh.headerSize == HeaderSize(size);
  }

  ZSTD_DCtx* dctx_;
  ZSTD_DDict* ddict_;
  const Manifest& m_;
  bool zsha_;
  std::size_t capacity_;
  std::vector<AlignedBuffer> buffers_;
};

// Hashes on a second core, in the order submitted, so that this one reads
// and decodes meanwhile: a chunk's stored bytes before it is decoded, or its
// decoded content. Each Submit returns a ticket to Take its digest with, in
// any order; at most kSlots are submitted and not taken (ChunkPipeline has
// two at most). Small chunks are hashed inline.
class ChunkHasher {
 public:
  ChunkHasher(bool parallel, StageTimes* times) : inline_(!parallel), times_(times) {}
  ~ChunkHasher() {
    {
      const std::lock_guard lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
  }
  ChunkHasher(const ChunkHasher&) = delete;
  ChunkHasher& operator=(const ChunkHasher&) = delete;

  static constexpr std::size_t kSlots = 4;

  // `data` must stay untouched until Take() returned its digest.
  std::uint64_t Submit(std::span<const std::uint8_t> data) {
    if (!inline_ && !thread_.joinable()) {
      try {
        thread_ = std::thread([this] { Run(); });
      } catch (const std::system_error&) {  // no thread: hash here instead
        inline_ = true;
      }
    }
    const std::lock_guard lock(mu_);
    const std::uint64_t ticket = submitted_++;
    if (inline_) {
      const StageTimer timer(times_, Stage::kHash);
      digests_[ticket % kSlots] = Sha256::Of(data);
      ++done_;
    } else {
      pending_[ticket % kSlots] = data;
    }
    cv_.notify_all();
    return ticket;
  }

  // The digest of what Submit returned `ticket` for.
  Digest Take(std::uint64_t ticket) {
    std::unique_lock lock(mu_);
    cv_.wait(lock, [&] { return done_ > ticket; });
    return digests_[ticket % kSlots];
  }

 private:
  void Run() {
    std::unique_lock lock(mu_);
    for (;;) {
      cv_.wait(lock, [&] { return stop_ || done_ < submitted_; });
      if (done_ == submitted_) return;  // stopped
      const auto data = pending_[done_ % kSlots];
      lock.unlock();
      Digest digest{};
      {
        const StageTimer timer(times_, Stage::kHash);
        digest = Sha256::Of(data);
      }
      lock.lock();
      digests_[done_++ % kSlots] = digest;
      cv_.notify_all();
    }
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::array<std::span<const std::uint8_t>, kSlots> pending_{};
  std::array<Digest, kSlots> digests_{};
  std::uint64_t submitted_ = 0;
  std::uint64_t done_ = 0;
  bool stop_ = false;
  bool inline_;
  StageTimes* times_;
  std::thread thread_;
};

// Yields the chunks from `first` on, each only once its SHA-256 matched the
// signed one (with ContentCheck::kDeferCompressed, a chunk holding a
// compressed block once its compressed bytes' SHA-256 matched). The hashing
// runs on the second core while this one reads and decodes: while chunk i's
// content is hashed, chunk i+1 is read and (unless compressed) decoded; while
// chunk i is decompressed, chunk i+1 is read and its compressed bytes are
// hashed. So verifying runs at about the speed of one SHA-256 pass, or of
// zstd alone. A fault in chunk i+1 found while chunk i was asked for is
// reported when chunk i+1 is asked for. A chunk whose content is not hashed
// here (deferred) has nothing to wait for once decoded: it is yielded at
// once, so that the caller can use it (write it) while the next one is
// decoded.
class ChunkPipeline {
 public:
  // `stored` (optional) is fed every chunk's compressed bytes in order.
  ChunkPipeline(Input& in, const Manifest& m, std::size_t first, std::size_t buffers,
                ContentCheck check, StageTimes* times, Sha256* stored = nullptr,
                std::span<const std::uint8_t> dictionary = {})
      : in_(in),
        stored_(stored),
        m_(m),
        decoder_(m, std::clamp(buffers, kMinChunkBuffers, kMaxChunkBuffers), dictionary),
        hasher_(m.chunks.size() - first > 1 && m.chunk_size >= kParallelMin, times),
        times_(times),
        check_(check),
        next_(first) {}

  [[nodiscard]] std::size_t next() const { return next_; }
  void SetGate(BufferGate gate) { gate_ = std::move(gate); }

  Expected<std::optional<ChunkView>> Next() {
    if (next_ >= m_.chunks.size()) return std::optional<ChunkView>();
    const std::size_t i = next_;
    const bool more = i + 1 < m_.chunks.size();
    Slot& cur = slots_.at(i % 2);
    Slot& ahead = slots_.at((i + 1) % 2);
    if (cur.error) return *cur.error;
    if (!cur.fetched) SAG_TRY_STATUS(Fetch(i, cur));
    if (!cur.decoded) {
      // Compressed: the next chunk's stored bytes are hashed meanwhile.
      if (cur.stored_ticket && more) Ahead(i + 1, ahead, false);
      SAG_TRY_STATUS(Decode(i, cur));
    }
    if (cur.content_ticket) {
      if (more) Ahead(i + 1, ahead, true);
      const Chunk& c = m_.chunks[i];
      if (const auto digest = hasher_.Take(*cur.content_ticket); digest != c.sha256) {
        return Error(Errc::kChunkHashMismatch, "chunk " + std::to_string(i) + ": SHA-256 " +
                                                   ToHex(digest) + " does not match the signed " +
                                                   ToHex(c.sha256) + "; the image is corrupt");
      }
    }
    const ChunkView view{i, cur.data, cur.content_ticket.has_value()};
    cur = Slot{};
    ++next_;
    return std::optional<ChunkView>(view);
  }

 private:
  static constexpr std::uint64_t kParallelMin = 64U << 10U;

  // A chunk on its way: read (its frames checked), then decoded.
  struct Slot {
    bool fetched = false;
    bool decoded = false;
    // Its stored bytes' digest, to match zsha256 before it is decoded.
    std::optional<std::uint64_t> stored_ticket;
    // Its content's digest, to match sha256 before it is yielded.
    std::optional<std::uint64_t> content_ticket;
    std::span<const std::uint8_t> data;  // decoded
    std::optional<Error> error;          // found ahead, reported when it is asked for
  };

  // Reads chunk i into the end of its buffer (the buffer chunk i - buffers
  // was yielded in) and checks its frames; hands its stored bytes to the
  // hasher if they are to match zsha256. The whole-frames hash is fed here,
  // in order, as decoding in place overwrites them.
  Status Fetch(std::size_t i, Slot& slot) {
    const Chunk& c = m_.chunks[i];
    if (gate_ && !gate_(i)) return Error(Errc::kCancelled, "stopped");
    SAG_TRY(const auto buf, decoder_.InputFor(c, i));
    const auto what = "chunk " + std::to_string(i);
    const auto read = [&](std::span<std::uint8_t> to) {
      const StageTimer timer(times_, Stage::kRead);
      return in_.Read(to, what);
    };
    if (stored_ == nullptr && decoder_.CanReadRaw()) {
      // A chunk of raw blocks comes out read: its content is hashed next.
      SAG_TRY(const auto raw, decoder_.ReadRaw(c, i, read));
      if (raw) {
        slot.fetched = true;
        slot.decoded = true;
        slot.data = *raw;
        slot.content_ticket = hasher_.Submit(*raw);
        return Ok();
      }
    } else {
      SAG_TRY_STATUS(read(buf));
    }
    if (stored_ != nullptr) stored_->Update(buf);
    SAG_TRY(const auto stored, [&] {
      const StageTimer timer(times_, Stage::kDecompress);
      return decoder_.Check(c, i);
    }());
    slot.fetched = true;
    if (stored) slot.stored_ticket = hasher_.Submit(*stored);
    return Ok();
  }

  // Decodes chunk i once its stored bytes matched zsha256 (if they were to),
  // and hands its content to the hasher unless the caller checks it.
  Status Decode(std::size_t i, Slot& slot) {
    const Chunk& c = m_.chunks[i];
    const bool authenticated = slot.stored_ticket.has_value();
    if (authenticated) {
      if (const auto z = hasher_.Take(*slot.stored_ticket); z != c.zsha256) {
        return Error(Errc::kChunkHashMismatch, "chunk " + std::to_string(i) +
                                                   ": compressed SHA-256 " + ToHex(z) +
                                                   " does not match the signed " +
                                                   ToHex(c.zsha256) + "; the image is corrupt");
      }
    }
    SAG_TRY(slot.data, [&] {
      const StageTimer timer(times_, Stage::kDecompress);
      return decoder_.Decode(c, i);
    }());
    slot.decoded = true;
    if (!authenticated || check_ == ContentCheck::kEveryChunk) {
      slot.content_ticket = hasher_.Submit(slot.data);
    }
    return Ok();
  }

  // Takes chunk i as far as it can go without waiting for the hasher: read,
  // and with `decode` decoded too unless it is compressed. What fails is
  // kept for when chunk i is asked for.
  void Ahead(std::size_t i, Slot& slot, bool decode) {
    if (slot.error) return;
    Status st = Ok();
    if (!slot.fetched) st = Fetch(i, slot);
    if (st && decode && !slot.decoded && !slot.stored_ticket) st = Decode(i, slot);
    if (!st) slot.error = std::move(st).error();
  }

  Input& in_;
  Sha256* stored_;
  const Manifest& m_;
  ChunkDecoder decoder_;
  ChunkHasher hasher_;
  StageTimes* times_;
  ContentCheck check_;
  std::size_t next_;
  std::array<Slot, 2> slots_;
  BufferGate gate_;
};

}  // namespace

// ---------------------------------------------------------------------------
// ImageReader

struct ImageReader::Impl {
  Impl(ByteSource& s, Trust t, Limits l, std::size_t b, ContentCheck c)
      : in(s), trust(std::move(t)), limits(l), buffers(b), check(c) {}
  Input in;
  Trust trust;
  Limits limits;
  std::size_t buffers;
  ContentCheck check;
  std::optional<VerifiedHeader> header;
  std::unique_ptr<ChunkPipeline> pipeline;
  Sha256 frames_sha;                     // format 3: the frames' compressed bytes (frames_zsha256)
  std::vector<std::uint8_t> dictionary;  // format 4, once checked
  StageTimes* times = nullptr;
  BufferGate gate;
  bool done = false;
  std::optional<Error> failed;  // sticky: a reader that failed stays failed

  Expected<const VerifiedHeader*> ReadHeader() {
    Entry manifest_entry;
    Entry sig_entry;
    SAG_TRY(auto manifest,
            ReadSmallEntry(in, kManifestName, limits.max_manifest_bytes, &manifest_entry));
    SAG_TRY(auto sig, ReadSmallEntry(in, kSignatureName, limits.max_signature_bytes, &sig_entry));
    SAG_TRY(auto h, VerifyHeader(std::move(manifest), std::move(sig), trust, limits));
    // The headers' mtime is the signed build_time: checked once it is known.
    for (const auto* e : {&manifest_entry, &sig_entry}) {
      SAG_TRY_STATUS(CheckCanonicalHeader(e->header,
                                          e == &manifest_entry ? kManifestName : kSignatureName,
                                          e->size, h.manifest.build_time, e->offset));
    }
    const auto at = in.offset();
    SAG_TRY(const auto e, ReadEntryHeader(in, kPayloadName));
    SAG_TRY_STATUS(CheckCanonicalHeader(e.header, kPayloadName, e.size, h.manifest.build_time, at));
    const auto& chunks = h.manifest.chunks;
    std::uint64_t stored = chunks.back().offset + chunks.back().length;
    if (h.manifest.reuse) stored += h.manifest.reuse->length;
    if (e.size != stored) {
      return ContainerError(at, "payload.zst holds " + std::to_string(e.size) +
                                    " bytes, the signed chunk table " + std::to_string(stored));
    }
    h.payload_offset = in.offset();
    header = std::move(h);
    return &*header;
  }

  Expected<std::optional<ChunkView>> Next() {
    if (!header) SAG_TRY_STATUS(ReadHeader());
    const auto& m = header->manifest;
    if (done) return std::optional<ChunkView>();
    // The chunk buffers are allocated only by a reader that reads chunks.
    if (!pipeline) {
      // Format 4: the dictionary comes first and is checked against its
      // signed SHA-256 before zstd sees it.
      if (m.dict) {
        std::vector<std::uint8_t> stored(m.dict->length);
        SAG_TRY_STATUS(in.Read(stored, "the zstd dictionary"));
        SAG_TRY(dictionary, DecodeDictionary(stored, m));
      }
      pipeline = std::make_unique<ChunkPipeline>(
          in, m, 0, buffers, check, times, m.frames_zsha256 ? &frames_sha : nullptr, dictionary);
      pipeline->SetGate(std::move(gate));
    }
    SAG_TRY(const auto view, pipeline->Next());
    if (pipeline->next() == m.chunks.size()) {
      // The last chunk is released only once the end of the container
      // checked out. The whole-payload SHA-256 is not computed again: the
      // signed chunk hashes cover every byte (docs/image-format.md).
      const auto& last = m.chunks.back();
      if (m.frames_zsha256 && frames_sha.Final() != *m.frames_zsha256) {
        return Error(Errc::kChunkHashMismatch,
                     "the frames as stored do not match their signed SHA-256 (payload.zsha256): "
                     "the image was altered");
      }
      std::uint64_t stored_bytes = last.offset + last.length;
      if (m.reuse) {
        // Format 2: the reuse index follows the frames; a full install does
        // not use it, but the image is accepted only whole.
        SAG_TRY_STATUS(CheckReuseIndex(in, *m.reuse));
        stored_bytes += m.reuse->length;
      }
      SAG_TRY_STATUS(ReadPadding(in, stored_bytes, kPayloadName));
      SAG_TRY_STATUS(ReadTrailer(in));
      done = true;
    }
    return view;
  }
};

ImageReader::ImageReader(ByteSource& source, Trust trust, Limits limits, std::size_t buffers,
                         ContentCheck check)
    : impl_(std::make_unique<Impl>(source, std::move(trust), limits, buffers, check)) {}
ImageReader::~ImageReader() = default;

Expected<const VerifiedHeader*> ImageReader::ReadHeader() {
  if (impl_->failed) return *impl_->failed;
  if (impl_->header) return &*impl_->header;
  auto r = impl_->ReadHeader();
  if (!r) impl_->failed = r.error();
  return r;
}

void ImageReader::StopSource() { impl_->in.source().Stop(); }

void ImageReader::ReleaseHeaderText() {
  if (!impl_->header) return;
  std::string().swap(impl_->header->manifest_json);
  std::string().swap(impl_->header->signature_der);
}

void ImageReader::SetChunkReading(std::size_t buffers, ContentCheck check) {
  if (impl_->pipeline) return;
  impl_->buffers = buffers;
  impl_->check = check;
}

void ImageReader::SetStageTimes(StageTimes* times) {
  if (!impl_->pipeline) impl_->times = times;
}

void ImageReader::SetBufferGate(BufferGate gate) {
  if (!impl_->pipeline) impl_->gate = std::move(gate);
}

Expected<std::optional<ChunkView>> ImageReader::NextChunk() {
  if (impl_->failed) return *impl_->failed;
  auto r = impl_->Next();
  if (!r) impl_->failed = r.error();
  return r;
}

// ---------------------------------------------------------------------------
// ChunkReader

struct ChunkReader::Impl {
  explicit Impl(ByteSource& s) : in(s) {}
  Input in;
  std::unique_ptr<ChunkPipeline> chunks;
  std::optional<Error> failed;
};

ChunkReader::ChunkReader(ByteSource& source, const Manifest& manifest, std::size_t first_chunk,
                         Limits limits, std::size_t buffers, ContentCheck check, StageTimes* times,
                         std::span<const std::uint8_t> dictionary)
    : impl_(std::make_unique<Impl>(source)) {
  // The manifest was verified by VerifyHeader with these limits; checking the
  // chunk size again keeps a caller's mistake from becoming a huge buffer.
  if (manifest.chunk_size < limits.min_chunk_size || manifest.chunk_size > limits.max_chunk_size ||
      first_chunk > manifest.chunks.size()) {
    impl_->failed =
        Error(Errc::kInvalidArgument, "ChunkReader: chunk size or first chunk out of range");
  } else if (manifest.dict && dictionary.empty()) {
    impl_->failed = Error(Errc::kInvalidArgument,
                          "ChunkReader: a format 4 image's dictionary "
                          "is needed to read its frames");
  } else {
    impl_->chunks = std::make_unique<ChunkPipeline>(impl_->in, manifest, first_chunk, buffers,
                                                    check, times, nullptr, dictionary);
  }
}
ChunkReader::~ChunkReader() = default;

void ChunkReader::SetBufferGate(BufferGate gate) {
  if (impl_->chunks) impl_->chunks->SetGate(std::move(gate));
}

Expected<std::optional<ChunkView>> ChunkReader::Next() {
  auto& s = *impl_;
  if (s.failed) return *s.failed;
  auto r = s.chunks->Next();
  if (!r) s.failed = r.error();
  return r;
}

// ---------------------------------------------------------------------------
// Format 4's dictionary

Expected<std::vector<std::uint8_t>> DecodeDictionary(std::span<const std::uint8_t> stored,
                                                     const Manifest& m) {
  if (!m.dict) return Error(Errc::kInvalidArgument, "the image has no zstd dictionary");
  // The signed hash first: nothing else looks at unauthenticated bytes.
  if (stored.size() != m.dict->length || Sha256::Of(stored) != m.dict->sha256) {
    return Error(Errc::kChunkHashMismatch,
                 "the zstd dictionary does not match its signed SHA-256; download the image "
                 "again");
  }
  const auto u32 = [&](std::size_t at) {
    return std::uint32_t{stored[at]} | (std::uint32_t{stored[at + 1]} << 8U) |
           (std::uint32_t{stored[at + 2]} << 16U) | (std::uint32_t{stored[at + 3]} << 24U);
  };
  if (stored.size() <= 8 || u32(0) != kDictMagic || u32(4) != stored.size() - 8) {
    return Error(Errc::kDecompress,
                 "the zstd dictionary is signed but not a skippable frame of its length; "
                 "rebuild the image with sag-image");
  }
  return std::vector<std::uint8_t>(stored.begin() + 8, stored.end());
}

Expected<std::vector<std::uint8_t>> ReadDictionary(ByteSource& source, const Manifest& m) {
  if (!m.dict) return Error(Errc::kInvalidArgument, "the image has no zstd dictionary");
  Input in(source);
  std::vector<std::uint8_t> stored(m.dict->length);
  SAG_TRY_STATUS(in.Read(stored, "the zstd dictionary"));
  return DecodeDictionary(stored, m);
}

// ---------------------------------------------------------------------------
// FileSource

Expected<std::unique_ptr<FileSource>> FileSource::Open(const std::filesystem::path& path,
                                                       std::uint64_t offset) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return MakeErrno(errno == ENOENT ? Errc::kNotFound : Errc::kIo, "open image " + path.string());
  }
  if (offset != 0 && ::lseek(fd, static_cast<off_t>(offset), SEEK_SET) < 0) {
    auto err = MakeErrno(Errc::kIo, "seek in " + path.string());
    ::close(fd);
    return err;
  }
  ::posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
  return std::unique_ptr<FileSource>(new FileSource(fd, path.string()));
}

FileSource::~FileSource() { ::close(fd_); }

Expected<std::size_t> FileSource::Read(std::span<std::uint8_t> buf) {
  for (;;) {
    const ssize_t n = ::read(fd_, buf.data(), buf.size());
    if (n >= 0) return static_cast<std::size_t>(n);
    if (errno != EINTR) return MakeErrno(Errc::kIo, "read " + path_);
  }
}

}  // namespace sag::image
