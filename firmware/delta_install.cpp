// The delta install of a format 2 Device image (docs/delta.md, "The device
// install"): the slot is written frame by frame, in order, from blocks the
// appliance already holds where they can be found and verified, and from
// coalesced single-range GETs for the rest. Checkpoints, read-back and resume
// follow the full install's rules (installer.cpp, StepWrite): the journal's
// next_chunk counts frames that are synced and read back from the slot.
#include <spdlog/spdlog.h>
#define ZSTD_STATIC_LINKING_ONLY  // ZSTD_createDDict_byReference: no copy of the dictionary
#include <zstd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstring>
#include <functional>
#include <memory>
#include <optional>
#include <system_error>

#include "common/atomic_file.h"
#include "common/json_reader.h"
#include "common/redact.h"
#include "common/stream_source.h"
#include "firmware/installer.h"

namespace sag::firmware {

namespace {

using platform::Slot;

// The block-hash index kept beside an installed slot (state_dir/
// slot-X.blockhashes): magic, the SHA-256 of the payload it describes, the
// block count (u64 LE), the hashes (u64 LE each), and a SHA-256 of all of
// that, so that a torn or damaged file is never taken for an index. The
// magic's 7th byte says how many bytes of each hash are meaningful: '1' for
// 8 (format 2's index, the first version of the file), '5' to '7' for that
// many (format 3's).
constexpr std::array<std::uint8_t, 8> kIndexMagic{'S', 'A', 'G', 'B', 'I', 'X', '1', '\n'};
constexpr std::size_t kIndexMagicHashBytes = 6;  // the byte of kIndexMagic that varies

char MagicHashByte(std::uint64_t hash_bytes) {
  return hash_bytes >= image::kReuseHashBytes ? '1' : static_cast<char>('0' + hash_bytes);
}
constexpr std::size_t kIndexHead = kIndexMagic.size() + 32 + 8;
// Slot read-back in pieces of this size.
constexpr std::size_t kReadPiece = 256U << 10U;
// Bytes a range request in flight buffers ahead of the writer
// (net::RangePrefetcher; docs/delta.md, "Requests in flight").
constexpr std::size_t kAheadBytes = 128U << 10U;

// Byte accounting of a prefetcher's bytes that were received but never
// written (requests ahead of a failure or a replan), when it ends: when
// called (a replan) and when the write step leaves, however it leaves.
struct EndPrefetch {
  std::optional<net::RangePrefetcher>& pf;
  DeltaRecord& stats;
  std::uint64_t& fetched_now;
  ~EndPrefetch() { (*this)(); }
  void operator()() const {
    if (!pf) return;
    const std::uint64_t discarded = pf->Finish();
    stats.fetched_bytes += discarded;
    fetched_now += discarded;
    pf.reset();
  }
};

void PutU64(std::string& out, std::uint64_t v) {
  for (unsigned i = 0; i < 8; ++i) out.push_back(static_cast<char>((v >> (8U * i)) & 0xFFU));
}

std::uint64_t GetU64(const char* p) {
  std::uint64_t v = 0;
  for (unsigned i = 0; i < 8; ++i) {
    v |= std::uint64_t{static_cast<std::uint8_t>(p[i])} << (8U * i);
  }
  return v;
}

std::uint64_t BlockCount(std::uint64_t bytes) {
  return (bytes + image::kReuseBlockSize - 1) / image::kReuseBlockSize;
}

// Checks a downloaded frame against its signed hashes (format 2: the
// compressed bytes before they are decompressed; format 3, which signs no
// per-frame compressed hash: one zstd frame of exactly the frame's size,
// decompressed into a buffer of that size) and its content.
Status DecodeFrame(const image::Manifest& m, std::size_t f, std::span<const std::uint8_t> z,
                   std::vector<std::uint8_t>& out) {
  const auto& c = m.chunks[f];
  const bool zsha = image::HasChunkZsha(m);
  if (z.size() != c.length || (zsha && Sha256::Of(z) != c.zsha256)) {
    return Error(Errc::kChunkHashMismatch,
                 "frame " + std::to_string(f) +
                     " as downloaded does not match its signed SHA-256; the file on the server "
                     "is damaged or is not this image");
  }
  if (!zsha && (ZSTD_getFrameContentSize(z.data(), z.size()) != c.size ||
                ZSTD_findFrameCompressedSize(z.data(), z.size()) != z.size())) {
    return Error(Errc::kChunkHashMismatch,
                 "frame " + std::to_string(f) + " as downloaded is not one zstd frame of " +
                     std::to_string(c.size) +
                     " bytes; the file on the server is damaged or is not this image");
  }
  out.resize(c.size);
  const std::size_t n = ZSTD_decompress(out.data(), out.size(), z.data(), z.size());
  if (ZSTD_isError(n) != 0U || n != c.size) {
    if (!zsha) {
      return Error(Errc::kChunkHashMismatch,
                   "frame " + std::to_string(f) + " as downloaded does not decompress to " +
                       std::to_string(c.size) +
                       " bytes; the file on the server is damaged or is not this image");
    }
    return Error(Errc::kDecompress,
                 "frame " + std::to_string(f) + " is signed but does not decompress to " +
                     std::to_string(c.size) + " bytes; rebuild the image with sag-image");
  }
  if (Sha256::Of(std::span<const std::uint8_t>(out)) != c.sha256) {
    return Error(Errc::kChunkHashMismatch,
                 "frame " + std::to_string(f) + " decompressed does not match its signed SHA-256");
  }
  return Ok();
}

// Reads frame `f` back from the slot (from the medium after a sync, or the
// cache) and checks it against the signed manifest.
Status ReadBackFrame(const JobRecord& record, platform::SlotDevice& slot, const image::Manifest& m,
                     std::uint64_t f, bool medium, std::vector<std::uint8_t>& piece) {
  const auto& c = m.chunks[f];
  const std::uint64_t offset = f * m.chunk_size;
  Sha256 sha;
  for (std::uint64_t done = 0; done < c.size;) {
    const auto want =
        static_cast<std::size_t>(std::min<std::uint64_t>(piece.size(), c.size - done));
    const auto buf = std::span(piece).first(want);
    SAG_TRY(const std::size_t got,
            medium ? slot.ReadMediumAt(offset + done, buf) : slot.ReadAt(offset + done, buf));
    if (got == 0) break;
    sha.Update(buf.first(got));
    done += got;
  }
  if (sha.Final() != c.sha256) {
    return Error(Errc::kReadBackMismatch,
                 "slot " + record.target_slot + " (" + slot.path().string() + ") chunk " +
                     std::to_string(f) + " at offset " + std::to_string(offset) +
                     " reads back different from what was written; the storage may be failing");
  }
  return Ok();
}

using DDictPtr = std::unique_ptr<ZSTD_DDict, decltype(&ZSTD_freeDDict)>;
using DCtxPtr = std::unique_ptr<ZSTD_DCtx, decltype(&ZSTD_freeDCtx)>;

// Format 4: checks that a downloaded frame is one zstd frame of exactly its
// signed size and decodes it (with the verified dictionary) into `out`,
// which is exactly that size: a frame that would decode to more is refused.
// Its content is checked with its group's.
Status DecodeGroupedFrame(const image::Manifest& m, std::size_t f, std::span<const std::uint8_t> z,
                          std::span<std::uint8_t> out, ZSTD_DCtx* dctx, const ZSTD_DDict* ddict) {
  const auto bad = [&](const std::string& what) {
    return Error(Errc::kChunkHashMismatch,
                 "frame " + std::to_string(f) + " as downloaded " + what +
                     "; the file on the server is damaged or is not this image");
  };
  if (z.size() != m.frame_lengths[f]) return bad("is not its signed length");
  if (ZSTD_getFrameContentSize(z.data(), z.size()) != out.size() ||
      ZSTD_findFrameCompressedSize(z.data(), z.size()) != z.size()) {
    return bad("is not one zstd frame of " + std::to_string(out.size()) + " bytes");
  }
  const std::size_t n =
      ddict != nullptr
          ? ZSTD_decompress_usingDDict(dctx, out.data(), out.size(), z.data(), z.size(), ddict)
          : ZSTD_decompressDCtx(dctx, out.data(), out.size(), z.data(), z.size());
  if (ZSTD_isError(n) != 0U || n != out.size()) {
    return bad("does not decompress to " + std::to_string(out.size()) + " bytes");
  }
  return Ok();
}

// Format 4's write loop (docs/delta.md, "Format 4"): groups are assembled in
// order in one buffer, from fetched frames (coalesced requests, which may
// span groups) and local blocks for the others, checked against the group's
// signed SHA-256, and only then handed to `put`. A group that fails (a local
// block changed, a truncated-hash collision) is fetched whole and checked
// again; the requests after it are planned again.
template <typename Put>
Status WriteGroups(const image::Manifest& m, std::span<const image::BlockLocation> blocks,
                   std::vector<std::uint8_t> have, std::vector<image::RangeRequest> requests,
                   image::LocalBlocks& local, std::uint64_t start, const std::string& url,
                   std::uint64_t base, DeltaRecord& stats, std::uint64_t& fetched_now,
                   const net::DownloadOptions& download, const image::DeltaOptions& dopt,
                   std::size_t parallel, const std::function<bool()>& stopping, Put&& put) {
  const std::uint64_t per_group = m.group_frames;
  const std::uint64_t frames = m.frame_lengths.size();
  std::vector<std::uint8_t> dict;  // referenced by ddict (no copy): outlives it
  DDictPtr ddict(nullptr, ZSTD_freeDDict);
  DCtxPtr dctx(ZSTD_createDCtx(), ZSTD_freeDCtx);
  if (!dctx) return Error(Errc::kInternal, "zstd: no decompression context");
  // The dictionary, fetched once before the first frame and checked against
  // its signed SHA-256 before zstd sees it.
  auto ensure_dict = [&]() -> Status {
    if (!m.dict || ddict) return Ok();
    ++stats.requests;
    std::uint64_t received = 0;
    auto stored = net::FetchRangeExact(url, base + m.dict->offset, m.dict->length, "the dictionary",
                                       download, &received);
    stats.fetched_bytes += received;
    fetched_now += received;
    if (!stored) return std::move(stored).error();
    SAG_TRY(dict, image::DecodeDictionary(*stored, m));
    std::vector<std::uint8_t>().swap(*stored);
    ddict.reset(ZSTD_createDDict_byReference(dict.data(), dict.size()));
    if (!ddict) return Error(Errc::kDecompress, "the image's zstd dictionary is not usable");
    return Ok();
  };
  std::vector<std::uint8_t> buf(m.chunk_size);
  std::vector<std::uint8_t> fetched(per_group, 0);  // frames of the open group already in buf
  std::uint64_t cur = start;                        // the open group
  std::optional<std::uint64_t> bad_group;
  std::uint64_t replans = 0;
  auto frame_place = [&](std::uint64_t f) {
    const std::uint64_t at = (f % per_group) * m.frame_size;
    const std::uint64_t size = f + 1 < frames ? m.frame_size : m.payload_size - f * m.frame_size;
    return std::span(buf).subspan(at, size);
  };
  // Completes group g (the open one): the frames not fetched come from local
  // blocks; then the group's hash decides.
  auto complete = [&](std::uint64_t g) -> Status {
    const auto& c = m.chunks[g];
    for (std::uint64_t f = g * per_group; f < std::min(frames, (g + 1) * per_group); ++f) {
      if (fetched[f % per_group] != 0) continue;
      const auto place = frame_place(f);
      const std::uint64_t first = f * (m.frame_size / image::kReuseBlockSize);
      for (std::uint64_t at = 0; at < place.size(); at += image::kReuseBlockSize) {
        const std::uint64_t b = first + at / image::kReuseBlockSize;
        const auto n = std::min<std::uint64_t>(image::kReuseBlockSize, place.size() - at);
        if (b >= blocks.size() || blocks[b].source == image::BlockLocation::kNowhere) {
          bad_group = g;
          return Error(Errc::kChunkHashMismatch, "group " + std::to_string(g) + ": block " +
                                                     std::to_string(b) +
                                                     " was neither found locally nor fetched");
        }
        SAG_TRY_STATUS(local.Read(blocks[b], place.subspan(at, n)));
      }
    }
    if (Sha256::Of(std::span<const std::uint8_t>(buf).first(c.size)) != c.sha256) {
      bad_group = g;
      return Error(Errc::kChunkHashMismatch,
                   "group " + std::to_string(g) + " assembled does not match its signed SHA-256");
    }
    std::fill(fetched.begin(), fetched.end(), std::uint8_t{0});
    SAG_TRY_STATUS(put(g, std::span<const std::uint8_t>(buf).first(c.size)));
    ++cur;
    return Ok();
  };
  // The planned requests, up to `parallel` in flight (made again after a
  // replan); a group's refetch is one request of its own.
  std::optional<net::RangePrefetcher> pf;
  const EndPrefetch end_prefetch{pf, stats, fetched_now};
  auto range_of = [&](std::uint64_t first, std::uint64_t end) {
    const auto r0 = image::FrameAt(m, first);
    const auto rl = image::FrameAt(m, end - 1);
    return net::RangePrefetcher::Range{base + r0.offset, rl.offset + rl.length - r0.offset};
  };
  auto start_prefetch = [&]() -> Status {
    std::vector<net::RangePrefetcher::Range> ranges;
    ranges.reserve(requests.size());
    for (const auto& q : requests) ranges.push_back(range_of(q.first_frame, q.end_frame));
    pf.emplace(url, std::move(ranges), parallel, kAheadBytes, download, stopping);
    // The dictionary while the first requests are in flight.
    if (!requests.empty()) SAG_TRY_STATUS(ensure_dict());
    return Ok();
  };
  // Fetches frames [first, end) in one range (request `planned` of the plan
  // if set); each frame is decoded into its place as it arrives, and groups
  // before its own are completed first.
  auto fetch = [&](std::uint64_t first, std::uint64_t end,
                   std::optional<std::size_t> planned) -> Status {
    SAG_TRY_STATUS(ensure_dict());
    const auto range = range_of(first, end);
    std::vector<std::uint8_t> pending;
    std::uint64_t next = first;
    ++stats.requests;
    const net::Sink sink = [&](std::uint64_t /*offset*/,
                               std::span<const std::uint8_t> data) -> Status {
      stats.fetched_bytes += data.size();
      fetched_now += data.size();
      while (!data.empty()) {
        if (next >= end) return Error(Errc::kNetProtocol, "the server sent more than asked");
        const std::size_t want = m.frame_lengths[next] - pending.size();
        const std::size_t n = std::min(want, data.size());
        pending.insert(pending.end(), data.begin(), data.begin() + static_cast<std::ptrdiff_t>(n));
        data = data.subspan(n);
        if (pending.size() == m.frame_lengths[next]) {
          const std::uint64_t g = next / per_group;
          while (cur < g) SAG_TRY_STATUS(complete(cur));
          SAG_TRY_STATUS(
              DecodeGroupedFrame(m, next, pending, frame_place(next), dctx.get(), ddict.get()));
          fetched[next % per_group] = 1;
          pending.clear();
          ++next;
        }
      }
      return Ok();
    };
    if (planned) {
      SAG_TRY_STATUS(pf->Consume(*planned, sink));
    } else {
      auto got = net::FetchRange(url, range.offset, range.length, sink, download);
      if (!got) return std::move(got).error();
    }
    if (next != end) {
      return Error(Errc::kNetProtocol, "range of frames " + std::to_string(first) + "-" +
                                           std::to_string(end - 1) + " ended early");
    }
    return Ok();
  };
  // A group that failed: fetched whole (every frame from the server), and
  // the requests after it planned again from its end.
  auto refetch = [&](std::uint64_t g) -> Status {
    bad_group.reset();
    end_prefetch();  // the requests in flight are planned again below
    ++stats.frames_rejected;
    spdlog::warn(
        "group {} assembled from local blocks did not match its signed SHA-256; "
        "fetching it whole",
        g);
    std::fill(fetched.begin(), fetched.end(), std::uint8_t{0});
    cur = g;
    const std::uint64_t first = g * per_group;
    const std::uint64_t end = std::min(frames, first + per_group);
    SAG_TRY_STATUS(fetch(first, end, std::nullopt));
    for (std::uint64_t f = first; f < end; ++f) have[f] = 1;
    if (auto st = complete(g); !st) {
      bad_group.reset();
      return Error(Errc::kChunkHashMismatch,
                   "group " + std::to_string(g) +
                       " as downloaded does not match its signed SHA-256; the file on the server "
                       "is damaged or is not this image");
    }
    for (std::uint64_t f = 0; f < end; ++f) have[f] = 1;
    requests = image::PlanRequests(m, have, dopt);
    ++replans;
    return Ok();
  };
  auto complete_or_refetch = [&](std::uint64_t g) -> Status {
    if (auto st = complete(g); !st) {
      if (!bad_group) return st;
      SAG_TRY_STATUS(refetch(g));
    }
    return Ok();
  };
  // After a refetch the requests are planned again from the refetched
  // group's end: start over from the first of them.
  std::size_t r = 0;
  while (r < requests.size()) {
    const auto req = requests[r];
    const std::uint64_t plans = replans;
    while (cur < req.first_frame / per_group && plans == replans) {
      SAG_TRY_STATUS(complete_or_refetch(cur));
    }
    if (plans != replans) {
      r = 0;
      continue;
    }
    if (!pf) SAG_TRY_STATUS(start_prefetch());
    if (auto st = fetch(req.first_frame, req.end_frame, r); !st) {
      if (!bad_group) return st;
      SAG_TRY_STATUS(refetch(*bad_group));
      r = 0;
      continue;
    }
    ++r;
  }
  while (cur < m.chunks.size()) SAG_TRY_STATUS(complete_or_refetch(cur));
  return Ok();
}

}  // namespace

bool DeviceInstaller::UsesDelta(const std::string& source, const image::Manifest& m) const {
  return options_.delta.enabled && m.reuse.has_value() && IsUrl(source);
}

std::filesystem::path DeviceInstaller::SlotIndexPath(Slot slot) const {
  return options_.state_dir / ("slot-" + std::string(platform::SlotName(slot)) + ".blockhashes");
}

Status DeviceInstaller::KeepSlotIndex(Slot slot, const Digest& payload_sha256,
                                      std::span<const image::BlockHash> hashes,
                                      std::uint64_t hash_bytes) {
  std::string out;
  out.reserve(kIndexHead + hashes.size() * 8 + 32);
  out.append(kIndexMagic.begin(), kIndexMagic.end());
  out[kIndexMagicHashBytes] = MagicHashByte(hash_bytes);
  out.append(payload_sha256.begin(), payload_sha256.end());
  PutU64(out, hashes.size());
  for (const auto h : hashes) PutU64(out, h);
  const Digest sum = Sha256::Of(std::string_view(out));
  out.append(sum.begin(), sum.end());
  // Atomic and durable (file and directory fsynced): a cut leaves the old
  // index or the new one, and either is checked before it is used.
  return WriteFileAtomic(SlotIndexPath(slot), out, 0644);
}

// The index kept beside `slot`, if it describes what slots.json says the
// slot holds; otherwise nullopt and the plan reads the slot instead.
std::optional<DeviceInstaller::KeptIndex> DeviceInstaller::LoadSlotIndex(Slot slot) {
  const std::string name(platform::SlotName(slot));
  const auto path = SlotIndexPath(slot);
  auto why_not = [&](const std::string& why) {
    spdlog::info("slot {}: {}; the delta plan reads the slot instead", name, why);
    return std::nullopt;
  };
  auto text = ReadFile(options_.state_dir / "slots.json", 1U << 20U);
  if (!text) return why_not("no slot record");
  const auto doc = nlohmann::json::parse(*text, nullptr, false);
  if (!doc.is_object() || !doc.contains(name) || !doc[name].is_object()) {
    return why_not("no committed image recorded");
  }
  const auto& rec = doc[name];
  if (!rec.contains("payload_sha256") || !rec["payload_sha256"].is_string() ||
      !rec.contains("payload_size") || !rec["payload_size"].is_number_unsigned()) {
    return why_not("its record names no payload");
  }
  const auto sha = DigestFromHex(rec["payload_sha256"].get<std::string>());
  const auto blocks = BlockCount(rec["payload_size"].get<std::uint64_t>());
  if (!sha) return why_not("its record's payload_sha256 is not a SHA-256");
  const std::size_t expect = kIndexHead + blocks * 8 + 32;
  auto file = ReadFile(path, expect);
  if (!file) return why_not("no block-hash index (" + file.error().message() + ")");
  const std::string& f = *file;
  std::uint64_t hash_bytes = 0;
  for (std::uint64_t n = image::kMinReuseHashBytes; n <= image::kReuseHashBytes; ++n) {
    if (f.size() > kIndexMagicHashBytes && f[kIndexMagicHashBytes] == MagicHashByte(n)) {
      hash_bytes = n;
    }
  }
  bool magic = f.size() == expect;
  for (std::size_t i = 0; magic && i < kIndexMagic.size(); ++i) {
    magic = i == kIndexMagicHashBytes || kIndexMagic[i] == static_cast<std::uint8_t>(f[i]);
  }
  if (!magic || hash_bytes == 0) {
    return why_not("block-hash index " + path.string() + " is not one for this payload size");
  }
  Digest stored{};
  std::memcpy(stored.data(), f.data() + kIndexMagic.size(), stored.size());
  Digest sum{};
  std::memcpy(sum.data(), f.data() + f.size() - 32, sum.size());
  if (Sha256::Of(std::string_view(f).substr(0, f.size() - 32)) != sum) {
    return why_not("block-hash index " + path.string() + " is damaged");
  }
  if (stored != *sha || GetU64(f.data() + kIndexMagic.size() + 32) != blocks) {
    return why_not("block-hash index " + path.string() + " is of another image");
  }
  KeptIndex kept;
  kept.hash_bytes = hash_bytes;
  kept.hashes.resize(blocks);
  for (std::uint64_t b = 0; b < blocks; ++b) {
    kept.hashes[b] = GetU64(f.data() + kIndexHead + b * 8);
  }
  return kept;
}

Expected<bool> DeviceInstaller::StepWriteDelta(JobRecord& record) {
  SAG_TRY(const Slot target, platform::ParseSlot(record.target_slot));
  SAG_TRY(const Slot from, platform::ParseSlot(record.from_slot));
  SAG_TRY(const auto header, LoadHeader(record));
  const image::Manifest& m = header.manifest;
  if (m.chunks.size() != record.chunks_total || !m.reuse || m.chunk_size == 0 ||
      m.chunk_size % image::kReuseBlockSize != 0) {
    return Error(Errc::kJournalCorrupt, "the stored header of job " + record.id +
                                            " does not describe the delta install it records");
  }
  platform::SlotDevice* slot = platform_.slots.at(target);
  const std::string& url = record.source;
  // The container offset of payload.zst, recorded at the start (a header
  // verified again from the journal does not know it).
  const std::uint64_t base = record.payload_offset;
  const std::uint64_t start = record.next_chunk;
  const bool medium = options_.read_back == InstallerOptions::ReadBack::kMedium;
  if (!record.delta) record.delta = DeltaRecord{};
  DeltaRecord& stats = *record.delta;
  const auto wall0 = std::chrono::steady_clock::now();

  // A server that ignores Range: a full install if configured, else a clear
  // error (the downloader's names what to do).
  auto range_failure = [&](Error e) -> Expected<bool> {
    if (e.code() != Errc::kNetRangeUnsupported || !options_.delta.full_fallback) {
      return std::move(e).WithContext("delta download of " + RedactUrl(url));
    }
    spdlog::warn("job {}: {}; installing the whole image instead (download.delta_fallback: full)",
                 record.id, e.message());
    stats.full_fallback = true;
    SAG_TRY_STATUS(SaveProgress(record));
    return false;
  };

  // 1. The reuse index: one range, checked against its signed SHA-256
  // before a byte of it is decompressed.
  std::uint64_t fetched_now = 0;
  std::uint64_t planned_now = m.reuse->length;
  auto report = [&] { Report(record, fetched_now, planned_now); };
  std::uint64_t received = 0;
  ++stats.requests;
  auto stored = net::FetchRangeExact(url, base + m.reuse->offset, m.reuse->length,
                                     "the reuse index", options_.download, &received);
  stats.fetched_bytes += received;
  fetched_now += received;
  if (!stored) return range_failure(std::move(stored).error());
  SAG_TRY(auto index, image::DecodeReuseIndex(*stored, m));
  std::vector<std::uint8_t>().swap(*stored);

  // 2. The plan. Sources in order, the first that offers a hash wins: zero
  // blocks, the running slot (by the index kept beside it when it matches
  // the slot's record, else read and hashed), then the target slot itself
  // (an older version or an interrupted attempt, read and hashed).
  std::vector<image::LocalSource> sources;
  {
    auto kept = LoadSlotIndex(from);
    image::LocalSource running{platform_.slots.at(from)->path(), std::nullopt};
    if (kept) {
      running.hashes = std::move(kept->hashes);
      running.hash_bytes = kept->hash_bytes;
    }
    sources.push_back(std::move(running));
  }
  sources.push_back({slot->path(), std::nullopt});
  constexpr std::size_t kTargetSource = 1;
  image::DeltaOptions dopt;
  dopt.max_gap = options_.delta.max_gap;
  SAG_TRY(auto local, image::LocalBlocks::Open(sources));
  // The plan takes the sources: the kept index is freed once looked up, and
  // the writes need only the plan's block locations.
  SAG_TRY(auto plan, image::PlanDelta(m, index, std::move(sources), dopt));
  // The index of what the slot is to hold, for the next delta from it: kept
  // now, so that it is not held while the frames download (8 bytes a
  // block). It is used only once slots.json names the same payload for the
  // slot, which is recorded after the install; until then the job's start
  // cleared the slot's record.
  SAG_TRY_STATUS(KeepSlotIndex(target, m.payload_sha256, index, m.reuse->hash_bytes));
  std::vector<image::BlockHash>().swap(index);

  // The target is a source and the destination. Frames are written in
  // order, so when frame k is assembled the target holds, below k's offset,
  // what this run wrote since the plan (and, below the resume point, what
  // earlier runs wrote and checkpointed: stable since the plan read it);
  // from k's offset on, what the plan read. A target block is used for
  // frame k only where it is still what the plan saw: below the resume
  // point or at or after frame k. Other frames are downloaded.
  const std::uint64_t per_frame = m.chunk_size / image::kReuseBlockSize;
  const std::uint64_t resume_block = start * per_frame;
  std::vector<std::uint8_t> use_local(plan.frame_local);
  std::uint64_t overwritten = 0;
  for (std::size_t f = 0; f < use_local.size(); ++f) {
    if (f < start) {
      use_local[f] = 1;  // written already: nothing to fetch
      continue;
    }
    if (use_local[f] == 0) continue;
    const std::uint64_t first = f * per_frame;
    const std::uint64_t end = std::min<std::uint64_t>(first + per_frame, plan.blocks.size());
    for (std::uint64_t b = first; b < end; ++b) {
      const auto& at = plan.blocks[b];
      if (at.source == kTargetSource && at.block >= resume_block && at.block < first) {
        use_local[f] = 0;
        ++overwritten;
        break;
      }
    }
  }
  // Format 4: frames are fetched, groups verified (delta.h, frame_have). The
  // same rule per frame: a frame that would need a target block that the
  // writer overwrites before its group is fetched; its group is checked once
  // assembled from local and fetched frames.
  const bool grouped = !m.frame_lengths.empty();
  std::vector<std::uint8_t> have;
  if (grouped) {
    overwritten = 0;
    have = plan.frame_have;
    const std::uint64_t frame_blocks = m.frame_size / image::kReuseBlockSize;
    for (std::size_t f = 0; f < have.size(); ++f) {
      const std::size_t g = f / m.group_frames;
      if (g < start) {
        have[f] = 1;
        continue;
      }
      if (have[f] == 0) continue;
      const std::uint64_t group_first = g * per_frame;
      const std::uint64_t first = f * frame_blocks;
      const std::uint64_t end = std::min<std::uint64_t>(first + frame_blocks, plan.blocks.size());
      for (std::uint64_t b = first; b < end; ++b) {
        const auto& at = plan.blocks[b];
        if (at.source == kTargetSource && at.block >= resume_block && at.block < group_first) {
          have[f] = 0;
          ++overwritten;
          break;
        }
      }
    }
  }
  auto requests = image::PlanRequests(m, grouped ? have : use_local, dopt);
  std::uint64_t request_bytes = 0;
  for (const auto& r : requests) request_bytes += r.length;
  planned_now += request_bytes;
  if (grouped && m.dict && !requests.empty()) planned_now += m.dict->length;
  stats.planned_bytes = planned_now;
  stats.frames_local = 0;
  stats.frames_download = 0;
  if (grouped) {
    for (std::size_t f = start * m.group_frames; f < have.size(); ++f) {
      ++(have[f] != 0 ? stats.frames_local : stats.frames_download);
    }
  } else {
    for (std::size_t f = start; f < use_local.size(); ++f) {
      ++(use_local[f] != 0 ? stats.frames_local : stats.frames_download);
    }
  }
  stats.frames_rejected = plan.frames_rejected;
  spdlog::info(
      "job {}: delta from frame {} of {}: {} local, {} to fetch ({} rejected by their SHA-256, "
      "{} whose target blocks are overwritten first) in {} requests, {} of {} bytes "
      "(index {}); {} blocks of {} found locally",
      record.id, start, m.chunks.size(), stats.frames_local, stats.frames_download,
      plan.frames_rejected, overwritten, requests.size(), request_bytes, plan.full_bytes,
      m.reuse->length, plan.blocks_found, plan.blocks_total);
  SAG_TRY_STATUS(SaveProgress(record));
  report();

  // 3. Write frame by frame, in order.
  SAG_TRY(auto writer, slot->OpenWriter());
  std::vector<std::uint8_t> frame;
  std::vector<std::uint8_t> piece(std::min<std::uint64_t>(kReadPiece, m.chunk_size));
  std::uint64_t since_checkpoint = 0;
  auto last_checkpoint = std::chrono::steady_clock::now();
  // Syncs the slot, reads back the frames written since the last checkpoint
  // and records them: next_chunk counts only synced, read-back frames.
  auto checkpoint = [&](std::uint64_t upto) -> Status {
    SAG_TRY_STATUS(writer->Sync());
    for (std::uint64_t f = record.verified_chunk; f < upto; ++f) {
      SAG_TRY_STATUS(ReadBackFrame(record, *slot, m, f, medium, piece));
    }
    record.next_chunk = upto;
    record.verified_chunk = upto;
    record.verified_medium = medium;
    since_checkpoint = 0;
    last_checkpoint = std::chrono::steady_clock::now();
    return SaveProgress(record);
  };
  // Frames read back before a cut count only if read as this run reads
  // (from the medium when configured); the first checkpoint reads back the
  // rest from verified_chunk on.
  if (medium && !record.verified_medium) record.verified_chunk = 0;
  auto put = [&](std::size_t f, std::span<const std::uint8_t> data) -> Status {
    if (Stopping()) return Error(Errc::kCancelled, "stopped");
    if (auto st = writer->WriteAt(f * m.chunk_size, data); !st) {
      return std::move(st).error().WithContext("writing slot " + record.target_slot);
    }
    since_checkpoint += data.size();
    const bool last = f + 1 == m.chunks.size();
    if (last ||
        (since_checkpoint >= options_.checkpoint_bytes &&
         std::chrono::steady_clock::now() - last_checkpoint >= options_.checkpoint_interval)) {
      SAG_TRY_STATUS(checkpoint(f + 1));
    }
    report();
    return Ok();
  };
  // The planned requests, up to delta.parallel in flight (format 2 and 3;
  // format 4's are WriteGroups').
  const auto stopping = [this] { return Stopping(); };
  std::optional<net::RangePrefetcher> pf;
  const EndPrefetch end_prefetch{pf, stats, fetched_now};
  auto range_of = [&](std::size_t first, std::size_t end) {
    const auto& c0 = m.chunks[first];
    const auto& cl = m.chunks[end - 1];
    return net::RangePrefetcher::Range{base + c0.offset, cl.offset + cl.length - c0.offset};
  };
  if (!grouped) {
    std::vector<net::RangePrefetcher::Range> ranges;
    ranges.reserve(requests.size());
    for (const auto& q : requests) ranges.push_back(range_of(q.first_frame, q.end_frame));
    pf.emplace(url, std::move(ranges), options_.delta.parallel, kAheadBytes, options_.download,
               stopping);
  }
  // Fetches frames [first, end) (one range: request `planned` of the plan if
  // set) and writes each as it arrives.
  auto fetch = [&](std::size_t first, std::size_t end,
                   std::optional<std::size_t> planned) -> Status {
    const auto range = range_of(first, end);
    std::vector<std::uint8_t> pending;
    std::size_t next = first;
    ++stats.requests;
    const net::Sink sink = [&](std::uint64_t /*offset*/,
                               std::span<const std::uint8_t> data) -> Status {
      stats.fetched_bytes += data.size();
      fetched_now += data.size();
      while (!data.empty()) {
        if (next >= end) return Error(Errc::kNetProtocol, "the server sent more than asked");
        const std::size_t want = m.chunks[next].length - pending.size();
        const std::size_t n = std::min(want, data.size());
        pending.insert(pending.end(), data.begin(), data.begin() + static_cast<std::ptrdiff_t>(n));
        data = data.subspan(n);
        if (pending.size() == m.chunks[next].length) {
          SAG_TRY_STATUS(DecodeFrame(m, next, pending, frame));
          pending.clear();
          SAG_TRY_STATUS(put(next, frame));
          ++next;
        }
      }
      return Ok();
    };
    if (planned) {
      SAG_TRY_STATUS(pf->Consume(*planned, sink));
    } else {
      auto got = net::FetchRange(url, range.offset, range.length, sink, options_.download);
      if (!got) return std::move(got).error();
    }
    if (next != end) {
      return Error(Errc::kNetProtocol, "range of frames " + std::to_string(first) + "-" +
                                           std::to_string(end - 1) + " ended early");
    }
    return Ok();
  };

  // A stop passes as it is (the job resumes); a server that stopped
  // honouring Range, as for the index; anything else names the download.
  auto failed = [&](Error e) -> Expected<bool> {
    if (e.code() == Errc::kCancelled) return e;
    if (e.code() == Errc::kNetRangeUnsupported) return range_failure(std::move(e));
    return std::move(e).WithContext("delta download of " + RedactUrl(url));
  };
  if (grouped) {
    if (auto st =
            WriteGroups(m, plan.blocks, have, requests, local, start, url, base, stats, fetched_now,
                        options_.download, dopt, options_.delta.parallel, stopping, put);
        !st) {
      return failed(std::move(st).error());
    }
  }
  std::size_t r = 0;
  for (std::size_t f = grouped ? m.chunks.size() : start; f < m.chunks.size();) {
    if (Stopping()) return Error(Errc::kCancelled, "stopped");
    if (r < requests.size() && requests[r].first_frame == f) {
      if (auto st = fetch(f, requests[r].end_frame, r); !st) {
        return failed(std::move(st).error());
      }
      f = requests[r].end_frame;
      ++r;
      continue;
    }
    // A local frame, checked against its signed SHA-256 as it is assembled
    // (the slot may have changed since the plan read it): on a mismatch it
    // is fetched instead.
    auto st = image::AssembleFrame(m, plan.blocks, f, local, frame);
    if (!st) {
      if (st.error().code() != Errc::kChunkHashMismatch) return std::move(st).error();
      spdlog::warn("job {}: {}; fetching it", record.id, st.error().message());
      ++stats.frames_rejected;
      if (auto fs = fetch(f, f + 1, std::nullopt); !fs) return failed(std::move(fs).error());
      ++f;
      continue;
    }
    SAG_TRY_STATUS(put(f, frame));
    ++f;
  }
  if (record.next_chunk != m.chunks.size()) {
    return Error(Errc::kInternal, "the delta install ended at frame " +
                                      std::to_string(record.next_chunk) + " of " +
                                      std::to_string(m.chunks.size()));
  }
  spdlog::info("job {}: delta written in {:.3f} s: {} bytes fetched in {} requests (planned {})",
               record.id,
               std::chrono::duration<double>(std::chrono::steady_clock::now() - wall0).count(),
               fetched_now, stats.requests, planned_now);
  SAG_TRY_STATUS(Save(record, JobEvent::kWritten));
  return true;
}

}  // namespace sag::firmware
