#include "common/image/delta.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zstd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <limits>
#include <numeric>

namespace sag::image {

namespace {

constexpr std::size_t kScanBytes = 256U << 10U;  // one read of a source during the scan

std::uint64_t BlockCount(std::uint64_t bytes) {
  return (bytes + kReuseBlockSize - 1) / kReuseBlockSize;
}

BlockHash Truncate(const Digest& d) {
  BlockHash h = 0;
  for (std::size_t i = 0; i < kReuseHashBytes; ++i) h |= BlockHash{d[i]} << (8U * i);
  return h;
}

Expected<std::size_t> PreadFull(int fd, std::span<std::uint8_t> buf, std::uint64_t offset,
                                const std::filesystem::path& path) {
  std::size_t got = 0;
  while (got < buf.size()) {
    const ssize_t n =
        ::pread(fd, buf.data() + got, buf.size() - got, static_cast<off_t>(offset + got));
    if (n < 0) {
      if (errno == EINTR) continue;
      return MakeErrno(Errc::kIo, "read " + path.string());
    }
    if (n == 0) break;
    got += static_cast<std::size_t>(n);
  }
  return got;
}

}  // namespace

BlockHash HashBlock(std::span<const std::uint8_t> block) {
  thread_local Sha256 sha;
  sha.Update(block);
  if (block.size() < kReuseBlockSize) {
    static const std::array<std::uint8_t, kReuseBlockSize> kZeros{};
    sha.Update(std::span(kZeros).first(kReuseBlockSize - block.size()));
  }
  return Truncate(sha.Final());
}

BlockHash HashMask(std::uint64_t hash_bytes) {
  return hash_bytes >= 8 ? ~BlockHash{0} : (BlockHash{1} << (8U * hash_bytes)) - 1;
}

Expected<std::string> EncodeReuseIndex(std::span<const BlockHash> hashes, int zstd_level,
                                       std::uint64_t hash_bytes) {
  if (hash_bytes < kMinReuseHashBytes || hash_bytes > kReuseHashBytes) {
    return Error(Errc::kInvalidArgument,
                 "reuse index of " + std::to_string(hash_bytes) + "-byte hashes (5 to 8)");
  }
  std::string raw(hashes.size() * hash_bytes, '\0');
  for (std::size_t i = 0; i < hashes.size(); ++i) {
    for (std::size_t b = 0; b < hash_bytes; ++b) {
      raw[i * hash_bytes + b] = static_cast<char>((hashes[i] >> (8U * b)) & 0xFFU);
    }
  }
  std::string out(8 + ZSTD_compressBound(raw.size()), '\0');
  const std::size_t z =
      ZSTD_compress(out.data() + 8, out.size() - 8, raw.data(), raw.size(), zstd_level);
  if (ZSTD_isError(z) != 0U) {
    return Error(Errc::kInternal, std::string("zstd compression of the reuse index failed: ") +
                                      ZSTD_getErrorName(z));
  }
  if (z > 0xFFFFFFFFU) return Error(Errc::kImageTooLarge, "reuse index above 4 GiB");
  out.resize(8 + z);
  for (unsigned i = 0; i < 4; ++i) {
    out[i] = static_cast<char>((kReuseIndexMagic >> (8U * i)) & 0xFFU);
    out[4 + i] = static_cast<char>((z >> (8U * i)) & 0xFFU);
  }
  return out;
}

Expected<std::vector<BlockHash>> DecodeReuseIndex(std::span<const std::uint8_t> stored,
                                                  const Manifest& manifest) {
  if (!manifest.reuse) {
    return Error(Errc::kInvalidArgument,
                 "format " + std::to_string(manifest.format) +
                     " image has no reuse index; rebuild it with sag-image create --format 2");
  }
  const auto& r = *manifest.reuse;
  // The signed hash first: nothing below reads unauthenticated bytes.
  if (stored.size() != r.length || Sha256::Of(stored) != r.sha256) {
    return Error(Errc::kChunkHashMismatch,
                 "reuse index (" + std::to_string(stored.size()) +
                     " bytes) does not match its signed SHA-256; fetch it again");
  }
  const auto bad = [](const std::string& what) {
    return Error(Errc::kDecompress, "reuse index: " + what + "; rebuild the image with sag-image");
  };
  std::uint32_t magic = 0;
  std::uint32_t inner = 0;
  for (unsigned i = 0; i < 4; ++i) {
    magic |= std::uint32_t{stored[i]} << (8U * i);
    inner |= std::uint32_t{stored[4 + i]} << (8U * i);
  }
  if (magic != kReuseIndexMagic || inner != stored.size() - 8) {
    return bad("not a skippable frame of " + std::to_string(stored.size() - 8) + " bytes");
  }
  const auto frame = stored.subspan(8);
  const auto content = ZSTD_getFrameContentSize(frame.data(), frame.size());
  if (content != r.size ||
      ZSTD_findFrameCompressedSize(frame.data(), frame.size()) != frame.size()) {
    return bad("not one zstd frame of " + std::to_string(r.size) + " bytes");
  }
  std::vector<std::uint8_t> raw(r.size);
  const std::size_t n = ZSTD_decompress(raw.data(), raw.size(), frame.data(), frame.size());
  if (ZSTD_isError(n) != 0U || n != r.size) return bad("does not decompress");
  const std::uint64_t hb = r.hash_bytes;
  if (hb < kMinReuseHashBytes || hb > kReuseHashBytes || r.size % hb != 0) {
    return bad("hashes of " + std::to_string(hb) + " bytes");
  }
  std::vector<BlockHash> hashes(r.size / hb);
  for (std::size_t i = 0; i < hashes.size(); ++i) {
    BlockHash h = 0;
    for (std::size_t b = 0; b < hb; ++b) {
      h |= BlockHash{raw[i * hb + b]} << (8U * b);
    }
    hashes[i] = h;
  }
  return hashes;
}

Expected<std::vector<BlockHash>> ReadReuseIndex(const std::filesystem::path& image,
                                                const VerifiedHeader& header) {
  const auto& m = header.manifest;
  if (!m.reuse) return DecodeReuseIndex({}, m);
  UniqueFd fd(::open(image.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) return MakeErrno(Errc::kIo, "open " + image.string());
  std::vector<std::uint8_t> stored(m.reuse->length);
  SAG_TRY(const auto n,
          PreadFull(fd.get(), stored, header.payload_offset + m.reuse->offset, image));
  if (n != stored.size()) {
    return Error(Errc::kImageTruncated, image.string() + " ends inside the reuse index");
  }
  return DecodeReuseIndex(stored, m);
}

// ---------------------------------------------------------------------------
// Local blocks

Expected<LocalBlocks> LocalBlocks::Open(std::span<const LocalSource> sources) {
  if (sources.size() > BlockLocation::kMaxSources) {
    return Error(Errc::kInvalidArgument,
                 "more than " + std::to_string(BlockLocation::kMaxSources) + " local sources");
  }
  LocalBlocks lb;
  for (const auto& s : sources) {
    UniqueFd fd(::open(s.path.c_str(), O_RDONLY | O_CLOEXEC));
    if (fd.get() < 0) {
      return MakeErrno(errno == ENOENT ? Errc::kNotFound : Errc::kIo,
                       "open local source " + s.path.string());
    }
    // lseek works for block devices, whose st_size is 0.
    const off_t end = ::lseek(fd.get(), 0, SEEK_END);
    if (end < 0) return MakeErrno(Errc::kIo, "size of local source " + s.path.string());
    lb.sizes_.push_back(static_cast<std::uint64_t>(end));
    lb.fds_.push_back(std::move(fd));
    lb.paths_.push_back(s.path);
  }
  return lb;
}

Status LocalBlocks::Read(BlockLocation where, std::span<std::uint8_t> out) {
  if (out.size() > kReuseBlockSize) return Error(Errc::kInternal, "block read above block size");
  if (where.source == BlockLocation::kZero) {
    std::fill(out.begin(), out.end(), std::uint8_t{0});
    return Ok();
  }
  if (where.source >= fds_.size()) {
    return Error(Errc::kInvalidArgument, "block read from a source that is not open");
  }
  SAG_TRY(const auto n, PreadFull(fds_[where.source].get(), out, where.block * kReuseBlockSize,
                                  paths_[where.source]));
  std::fill(out.begin() + static_cast<std::ptrdiff_t>(n), out.end(), std::uint8_t{0});
  return Ok();
}

Status AssembleFrame(const Manifest& m, std::span<const BlockLocation> blocks, std::size_t frame,
                     LocalBlocks& local, std::vector<std::uint8_t>& out) {
  if (frame >= m.chunks.size() || m.chunk_size % kReuseBlockSize != 0) {
    return Error(Errc::kInvalidArgument, "no frame " + std::to_string(frame) + " to assemble");
  }
  const auto& c = m.chunks[frame];
  out.resize(c.size);
  const std::uint64_t first = frame * m.chunk_size / kReuseBlockSize;
  for (std::uint64_t at = 0; at < c.size; at += kReuseBlockSize) {
    const std::uint64_t b = first + at / kReuseBlockSize;
    if (b >= blocks.size() || blocks[b].source == BlockLocation::kNowhere) {
      return Error(Errc::kInvalidArgument, "block " + std::to_string(b) + " of frame " +
                                               std::to_string(frame) + " was not found locally");
    }
    const auto n = static_cast<std::size_t>(std::min<std::uint64_t>(kReuseBlockSize, c.size - at));
    SAG_TRY_STATUS(local.Read(blocks[b], std::span(out).subspan(at, n)));
  }
  // The check that makes truncated hashes safe: the bytes that would be
  // written are the signed ones, or the frame is downloaded instead.
  if (Sha256::Of(std::span<const std::uint8_t>(out)) != c.sha256) {
    return Error(Errc::kChunkHashMismatch,
                 "frame " + std::to_string(frame) +
                     " assembled from local blocks does not match its signed SHA-256");
  }
  return Ok();
}

std::vector<RangeRequest> PlanRequests(const Manifest& m, std::span<const std::uint8_t> frame_local,
                                       const DeltaOptions& options) {
  std::vector<RangeRequest> out;
  std::optional<RangeRequest> cur;
  const std::size_t frames = FrameCount(m);
  const std::uint64_t per_chunk = FramesPerChunk(m);
  std::uint64_t offset = m.chunks.empty() ? 0 : m.chunks.front().offset;
  for (std::size_t i = 0; i < frames && i < frame_local.size(); ++i) {
    // Frames are stored back to back (format 4: from the end of the
    // dictionary): the running offset is each frame's.
    if (i % per_chunk == 0) offset = m.chunks[i / per_chunk].offset;
    const std::uint64_t length = m.frame_lengths.empty() ? m.chunks[i].length : m.frame_lengths[i];
    const std::uint64_t at = offset;
    offset += length;
    if (frame_local[i] != 0) continue;
    if (cur) {
      const std::uint64_t end = cur->offset + cur->length;
      const std::uint64_t merged = at + length - cur->offset;
      if (at - end <= options.max_gap &&
          (options.max_request == 0 || merged <= options.max_request)) {
        cur->length = merged;
        cur->end_frame = i + 1;
        continue;
      }
      out.push_back(*cur);
    }
    cur = RangeRequest{at, length, i, i + 1};
  }
  if (cur) out.push_back(*cur);
  return out;
}

namespace {

// PlanDelta; with `owned` (the vector `sources` views), each source's hashes
// are freed once they were looked up.
Expected<DeltaPlan> Plan(const Manifest& m, std::span<const BlockHash> index,
                         std::span<const LocalSource> sources, std::vector<LocalSource>* owned,
                         const DeltaOptions& options) {
  if (!m.reuse) return DecodeReuseIndex({}, m).error();
  DeltaPlan plan;
  plan.blocks_total = BlockCount(m.payload_size);
  if (index.size() != plan.blocks_total) {
    return Error(Errc::kInvalidArgument, "reuse index of " + std::to_string(index.size()) +
                                             " blocks for a payload of " +
                                             std::to_string(plan.blocks_total));
  }
  SAG_TRY(auto local, LocalBlocks::Open(sources));
  // Hashes are compared on the index's length (format 3's are shorter than
  // those a source may keep from a format 2 image, or that HashBlock gives).
  std::uint64_t hash_bytes = m.reuse->hash_bytes;
  for (const auto& s : sources) {
    if (s.hashes) hash_bytes = std::min(hash_bytes, std::max(s.hash_bytes, kMinReuseHashBytes));
  }
  const BlockHash mask = HashMask(hash_bytes);

  // The payload's blocks ordered by their (masked) hash, 4 bytes a block:
  // a found hash fills the location of every block that wants it at once, so
  // no table of distinct hashes and of where each was found is kept beside
  // the locations (docs/delta.md, "Memory bounds").
  if (plan.blocks_total > std::numeric_limits<std::uint32_t>::max()) {
    return Error(Errc::kInvalidArgument, "payload of more than 2^32 blocks");
  }
  std::vector<std::uint32_t> order(plan.blocks_total);
  std::iota(order.begin(), order.end(), std::uint32_t{0});
  const auto key = [&](std::uint32_t b) { return index[b] & mask; };
  std::sort(order.begin(), order.end(), [&](std::uint32_t a, std::uint32_t b) {
    const BlockHash ka = key(a);
    const BlockHash kb = key(b);
    return ka != kb ? ka < kb : a < b;
  });
  plan.blocks.resize(plan.blocks_total);
  std::uint64_t missing = plan.blocks_total;
  const auto offer = [&](BlockHash full, BlockLocation where) {
    const BlockHash h = full & mask;
    const auto lo = std::lower_bound(order.begin(), order.end(), h,
                                     [&](std::uint32_t b, BlockHash v) { return key(b) < v; });
    if (lo == order.end() || key(*lo) != h) return;
    // The first source wins: every block of this hash was filled together.
    if (plan.blocks[*lo].source != BlockLocation::kNowhere) return;
    for (auto it = lo; it != order.end() && key(*it) == h; ++it) {
      plan.blocks[*it] = where;
      --missing;
    }
  };
  if (options.zero_blocks) {
    static const std::array<std::uint8_t, kReuseBlockSize> kZeros{};
    offer(HashBlock(kZeros), BlockLocation{BlockLocation::kZero, 0});
  }
  std::vector<std::uint8_t> buf;
  for (std::size_t s = 0; s < sources.size() && missing > 0; ++s) {
    const auto src = static_cast<std::uint32_t>(s);
    if (sources[s].hashes) {
      const auto& hashes = *sources[s].hashes;
      for (std::uint64_t b = 0; b < hashes.size() && missing > 0; ++b) {
        offer(hashes[b], BlockLocation{src, b});
      }
      if (owned != nullptr) std::vector<BlockHash>().swap(*(*owned)[s].hashes);
      continue;
    }
    buf.resize(kScanBytes);
    const std::uint64_t size = local.SizeOf(s);
    for (std::uint64_t at = 0; at < size && missing > 0; at += kScanBytes) {
      const auto want = static_cast<std::size_t>(std::min<std::uint64_t>(kScanBytes, size - at));
      SAG_TRY(const auto n, PreadFull(local.fd(s), std::span(buf).first(want), at, local.path(s)));
      plan.local_read_bytes += n;
      for (std::size_t off = 0; off < n; off += kReuseBlockSize) {
        const auto len = std::min<std::size_t>(kReuseBlockSize, n - off);
        offer(HashBlock(std::span(buf).subspan(off, len)),
              BlockLocation{src, (at + off) / kReuseBlockSize});
      }
      if (n < want) break;
    }
  }
  std::vector<std::uint8_t>().swap(buf);
  std::vector<std::uint32_t>().swap(order);
  plan.blocks_found = plan.blocks_total - missing;

  // A frame is local only once its assembled bytes matched the signed hash.
  plan.frame_local.assign(m.chunks.size(), 0);
  plan.group_rejected.assign(m.chunks.size(), 0);
  const std::uint64_t per_frame = m.chunk_size / kReuseBlockSize;
  std::vector<std::uint8_t> frame;
  for (std::size_t f = 0; f < m.chunks.size(); ++f) {
    const auto first = f * per_frame;
    const auto end = std::min<std::uint64_t>(first + per_frame, plan.blocks_total);
    const bool all =
        std::all_of(plan.blocks.begin() + static_cast<std::ptrdiff_t>(first),
                    plan.blocks.begin() + static_cast<std::ptrdiff_t>(end),
                    [](const BlockLocation& l) { return l.source != BlockLocation::kNowhere; });
    plan.full_bytes += m.chunks[f].length;
    if (all) {
      const auto st = AssembleFrame(m, plan.blocks, f, local, frame);
      if (st) {
        plan.frame_local[f] = 1;
        ++plan.frames_local;
        plan.local_read_bytes += frame.size();
        continue;
      }
      if (st.error().code() != Errc::kChunkHashMismatch) return st.error();
      ++plan.frames_rejected;
      plan.group_rejected[f] = 1;
    }
    ++plan.frames_download;
    plan.frame_bytes += m.chunks[f].length;
  }
  if (!m.frame_lengths.empty()) {
    // Format 4: a group that did not verify locally is fetched frame by
    // frame: the frames some block of which was not found, or every frame
    // of a group that was rejected (which frame is wrong is not known). The
    // group is checked again once assembled from both (delta_install.cpp).
    const std::size_t frames = m.frame_lengths.size();
    const std::uint64_t per_frame_blocks = m.frame_size / kReuseBlockSize;
    plan.frame_have.assign(frames, 0);
    plan.frames_download = 0;
    plan.frame_bytes = 0;
    for (std::size_t f = 0; f < frames; ++f) {
      const std::size_t g = f / m.group_frames;
      bool have = plan.frame_local[g] != 0;
      if (!have && !plan.group_rejected[g]) {
        const auto first = f * per_frame_blocks;
        const auto end = std::min<std::uint64_t>(first + per_frame_blocks, plan.blocks_total);
        have =
            std::all_of(plan.blocks.begin() + static_cast<std::ptrdiff_t>(first),
                        plan.blocks.begin() + static_cast<std::ptrdiff_t>(end),
                        [](const BlockLocation& l) { return l.source != BlockLocation::kNowhere; });
      }
      plan.frame_have[f] = have ? 1 : 0;
      if (!have) {
        ++plan.frames_download;
        plan.frame_bytes += m.frame_lengths[f];
      }
    }
    plan.frames_local = frames - plan.frames_download;
    plan.requests = PlanRequests(m, plan.frame_have, options);
    if (m.dict && plan.frames_download > 0) plan.dict_bytes = m.dict->length;
  } else {
    plan.requests = PlanRequests(m, plan.frame_local, options);
  }
  for (const auto& r : plan.requests) plan.request_bytes += r.length;
  plan.index_bytes = m.reuse->length;
  return plan;
}

}  // namespace

Expected<DeltaPlan> PlanDelta(const Manifest& m, std::span<const BlockHash> index,
                              std::span<const LocalSource> sources, const DeltaOptions& options) {
  return Plan(m, index, sources, nullptr, options);
}

Expected<DeltaPlan> PlanDelta(const Manifest& m, std::span<const BlockHash> index,
                              std::vector<LocalSource>&& sources, const DeltaOptions& options) {
  std::vector<LocalSource> owned = std::move(sources);
  return Plan(m, index, owned, &owned, options);
}

}  // namespace sag::image
