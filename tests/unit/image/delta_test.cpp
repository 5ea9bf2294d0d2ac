// Format 2 (frames plus a reuse index) and the delta plan: round trip, a
// tampered or malformed index refused, and the plan over real local files:
// blocks shared at other offsets found, bit rot and truncated-hash
// collisions caught by the frame's full hash, zero blocks, coalesced requests.
#include "common/image/delta.h"

#include <gtest/gtest.h>
#include <zstd.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "common/atomic_file.h"
#include "common/base64.h"
#include "common/image/image_writer.h"
#include "common/image/pki.h"
#include "tests/support/temp_dir.h"

namespace sag::image {
namespace {

constexpr std::uint64_t kFrame = 16384;  // 4 blocks per frame
constexpr std::size_t kBlock = kReuseBlockSize;

// Serves a buffer in uneven pieces, as a network would.
class MemSource final : public ByteSource {
 public:
  explicit MemSource(std::string data) : data_(std::move(data)) {}
  Expected<std::size_t> Read(std::span<std::uint8_t> buf) override {
    const std::size_t n = std::min({buf.size(), data_.size() - pos_, std::size_t{1000}});
    std::memcpy(buf.data(), data_.data() + pos_, n);
    pos_ += n;
    return n;
  }

 private:
  std::string data_;
  std::size_t pos_ = 0;
};

// A 4 KiB block of its own content: half random, half text (compressible).
std::string Block(int seed) {
  std::mt19937 rng(static_cast<unsigned>(seed) + 1U);
  std::string b;
  while (b.size() < kBlock / 2) b.push_back(static_cast<char>(rng()));
  for (int i = 0; b.size() < kBlock; ++i)
    b += "block " + std::to_string(seed) + " line " + std::to_string(i) + "\n";
  b.resize(kBlock);
  return b;
}

constexpr int kZeroBlock = -1;
std::string Blocks(const std::vector<int>& seeds) {
  std::string s;
  for (const int seed : seeds) s += seed == kZeroBlock ? std::string(kBlock, '\0') : Block(seed);
  return s;
}

std::vector<int> Range(int from, int to) {  // [from, to)
  std::vector<int> v;
  for (int i = from; i < to; ++i) v.push_back(i);
  return v;
}

std::vector<int> Concat(std::initializer_list<std::vector<int>> parts) {
  std::vector<int> v;
  for (const auto& p : parts) v.insert(v.end(), p.begin(), p.end());
  return v;
}

void Spit(const std::filesystem::path& p, std::string_view data) {
  std::ofstream(p, std::ios::binary) << data;
}

std::string Slurp(const std::filesystem::path& p) {
  auto s = ReadFile(p, 64U << 20U);
  EXPECT_TRUE(s) << p;
  return s ? *s : std::string();
}

class DeltaTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new test::TempDir();  // NOLINT(cppcoreguidelines-owning-memory)
    ASSERT_TRUE(pki::InitDevPki(dir_->path() / "pki"));
  }
  static void TearDownTestSuite() { delete dir_; }
  static const std::filesystem::path& Dir() { return dir_->path(); }
  static Trust GoodTrust() { return Trust{Dir() / "pki" / "root-ca.pem", std::nullopt}; }

  // Signs `payload` as a format 2 image; returns the image file.
  static std::filesystem::path Make(const std::string& name, std::string_view payload,
                                    std::uint64_t frame = kFrame, int format = kFormatDelta) {
    const auto pki = Dir() / "pki";
    Spit(Dir() / (name + ".bin"), payload);
    CreateParams p;
    p.version = "2.4.0";
    p.compatible = {"sag-1000"};
    p.payload = Dir() / (name + ".bin");
    p.key = pki / "signer.key";
    p.cert = pki / "signer.pem";
    p.chain = pki / "signer-chain.pem";
    p.format = format;
    p.chunk_size = frame;
    p.group_frames = 4;    // format 4
    p.dict_bytes = 16384;  // format 4
    p.build_time = "2026-12-01T12:00:00Z";
    p.output = Dir() / (name + ".img");
    EXPECT_TRUE(CreateImage(p));
    return p.output;
  }

  static VerifiedHeader HeaderOf(const std::filesystem::path& image) {
    MemSource src(Slurp(image));
    ImageReader reader(src, GoodTrust());
    auto h = reader.ReadHeader();
    EXPECT_TRUE(h) << h.error().ToString();
    return h ? **h : VerifiedHeader{};
  }

  // Reads a whole image through the verifying reader.
  static Expected<std::string> ReadAll(std::string image) {
    MemSource src(std::move(image));
    ImageReader reader(src, GoodTrust());
    SAG_TRY_STATUS(reader.ReadHeader());
    std::string out;
    for (;;) {
      SAG_TRY(auto c, reader.NextChunk());
      if (!c) return out;
      out.append(reinterpret_cast<const char*>(c->data.data()), c->data.size());
    }
  }

  struct Planned {
    VerifiedHeader header;
    std::vector<BlockHash> index;
    DeltaPlan plan;
  };
  static Planned Plan(const std::filesystem::path& image, const std::vector<LocalSource>& sources,
                      const DeltaOptions& options = {}) {
    Planned out;
    out.header = HeaderOf(image);
    auto index = ReadReuseIndex(image, out.header);
    EXPECT_TRUE(index) << index.error().ToString();
    if (index) out.index = *index;
    auto plan = PlanDelta(out.header.manifest, out.index, sources, options);
    EXPECT_TRUE(plan) << plan.error().ToString();
    // The overload that takes the sources (freeing each one's hashes once
    // looked up, as an install does) plans the same.
    auto taken =
        PlanDelta(out.header.manifest, out.index, std::vector<LocalSource>(sources), options);
    EXPECT_TRUE(taken) << taken.error().ToString();
    if (plan && taken) {
      EXPECT_EQ(taken->frame_local, plan->frame_local);
      EXPECT_EQ(taken->blocks_found, plan->blocks_found);
      EXPECT_EQ(taken->frames_rejected, plan->frames_rejected);
      EXPECT_EQ(taken->requests.size(), plan->requests.size());
    }
    if (plan) out.plan = *plan;
    return out;
  }

  static std::vector<std::size_t> Downloaded(const DeltaPlan& p) {
    std::vector<std::size_t> v;
    for (std::size_t i = 0; i < p.frame_local.size(); ++i) {
      if (p.frame_local[i] == 0) v.push_back(i);
    }
    return v;
  }

  static test::TempDir* dir_;
};

test::TempDir* DeltaTest::dir_ = nullptr;

TEST_F(DeltaTest, Format2RoundTripsWithItsReuseIndex) {
  // A payload whose last block and frame are short.
  const std::string payload = Blocks(Range(0, 11)) + std::string(1234, 'x');
  const auto image = Make("rt", payload);
  const auto got = ReadAll(Slurp(image));
  ASSERT_TRUE(got) << got.error().ToString();
  EXPECT_EQ(*got, payload);

  const auto h = HeaderOf(image);
  const auto& m = h.manifest;
  EXPECT_EQ(m.format, kFormatDelta);
  EXPECT_EQ(m.chunk_size, kFrame);
  ASSERT_EQ(m.chunks.size(), 3U);
  ASSERT_TRUE(m.reuse);
  EXPECT_EQ(m.reuse->offset, m.chunks.back().offset + m.chunks.back().length);
  EXPECT_EQ(m.reuse->size, 12 * kReuseHashBytes);
  // The manifest survives its own serialization.
  const auto again = ParseManifest(SerializeManifest(m));
  ASSERT_TRUE(again) << again.error().ToString();
  EXPECT_EQ(SerializeManifest(*again), h.manifest_json);

  const auto index = ReadReuseIndex(image, h);
  ASSERT_TRUE(index) << index.error().ToString();
  ASSERT_EQ(index->size(), 12U);
  for (std::size_t b = 0; b < 12; ++b) {
    const auto n = std::min<std::size_t>(kBlock, payload.size() - b * kBlock);
    EXPECT_EQ(
        (*index)[b],
        HashBlock(std::span(reinterpret_cast<const std::uint8_t*>(payload.data() + b * kBlock), n)))
        << b;
  }
  // The short last block hashes as if zero-padded.
  const std::string padded = std::string(1234, 'x') + std::string(kBlock - 1234, '\0');
  EXPECT_EQ((*index)[11],
            HashBlock(std::span(reinterpret_cast<const std::uint8_t*>(padded.data()), kBlock)));

  // A resumed download (ChunkReader) reads frames and stops before the index.
  const std::string bytes = Slurp(image);
  MemSource from2(bytes.substr(h.payload_offset + m.chunks[2].offset));
  ChunkReader resumed(from2, m, 2);
  const auto c = resumed.Next();
  ASSERT_TRUE(c && *c) << (c ? "" : c.error().ToString());
  EXPECT_EQ((*c)->index, 2U);
  const auto end = resumed.Next();
  ASSERT_TRUE(end);
  EXPECT_FALSE(*end);
}

TEST_F(DeltaTest, Format1ImagesKeepTheirFormat) {
  const std::string payload = Blocks(Range(0, 8));
  const auto image = Make("v1", payload, 1U << 20U, kFormatVersion);
  const auto h = HeaderOf(image);
  EXPECT_EQ(h.manifest.format, kFormatVersion);
  EXPECT_FALSE(h.manifest.reuse);
  EXPECT_NE(h.manifest_json.find("\"chunks\""), std::string::npos);
  const auto got = ReadAll(Slurp(image));
  ASSERT_TRUE(got) << got.error().ToString();
  EXPECT_EQ(*got, payload);
  EXPECT_EQ(ReadReuseIndex(image, h).error().code(), Errc::kInvalidArgument);
}

TEST_F(DeltaTest, ATamperedOrTruncatedReuseIndexIsRefused) {
  const auto image = Make("tamper", Blocks(Range(0, 12)));
  const std::string bytes = Slurp(image);
  const auto h = HeaderOf(image);
  const auto& r = *h.manifest.reuse;
  const std::uint64_t at = h.payload_offset + r.offset;
  for (const std::uint64_t delta : {std::uint64_t{0}, std::uint64_t{5}, r.length - 1}) {
    std::string bad = bytes;
    bad[at + delta] = static_cast<char>(bad[at + delta] ^ 0x01);
    const auto got = ReadAll(bad);
    ASSERT_FALSE(got) << "flip at index byte " << delta;
    EXPECT_EQ(got.error().code(), Errc::kChunkHashMismatch) << got.error().ToString();
    const auto stored = std::span(reinterpret_cast<const std::uint8_t*>(bad.data() + at), r.length);
    EXPECT_EQ(DecodeReuseIndex(stored, h.manifest).error().code(), Errc::kChunkHashMismatch);
  }
  for (const std::uint64_t cut : {at, at + 1, at + r.length - 1}) {
    const auto got = ReadAll(bytes.substr(0, cut));
    ASSERT_FALSE(got);
    EXPECT_EQ(got.error().code(), Errc::kImageTruncated) << got.error().ToString();
  }
}

TEST_F(DeltaTest, MalformedFormat2ManifestsAreRefused) {
  const auto h = HeaderOf(Make("manifest", Blocks(Range(0, 9))));
  const auto base = nlohmann::json::parse(h.manifest_json);
  const auto refused = [&](const std::function<void(nlohmann::json&)>& edit, Errc code,
                           const std::string& what) {
    auto j = base;
    edit(j);
    const auto m = ParseManifest(j.dump());
    ASSERT_FALSE(m) << what;
    EXPECT_EQ(m.error().code(), code) << what << ": " << m.error().ToString();
  };
  refused([](auto& j) { j["format"] = 5; }, Errc::kManifestVersion, "format 5");
  refused([](auto& j) { j.erase("reuse"); }, Errc::kManifestMalformed, "no reuse");
  refused([](auto& j) { j["format"] = 1; }, Errc::kManifestMalformed, "format 1 with reuse");
  refused([](auto& j) { j["payload"]["frame_size"] = 16384 + 512; }, Errc::kManifestMalformed,
          "frame size not a multiple of 4 KiB");
  refused([](auto& j) { j["reuse"]["offset"] = j["reuse"]["offset"].template get<int>() + 1; },
          Errc::kManifestMalformed, "index not right after the frames");
  refused([](auto& j) { j["reuse"]["size"] = 8 * 10; }, Errc::kManifestMalformed,
          "index size for another block count");
  refused([](auto& j) { j["reuse"]["hash_bytes"] = 4; }, Errc::kManifestMalformed, "4-byte hashes");
  refused([](auto& j) { j["reuse"]["length"] = 8; }, Errc::kManifestLimits, "empty index frame");
  refused([](auto& j) { j["reuse"]["extra"] = 1; }, Errc::kManifestMalformed, "unknown key");
  refused(
      [](auto& j) {
        auto s = j["frames"].template get<std::string>();
        j["frames"] = s.substr(0, s.size() - 4);
      },
      Errc::kManifestLimits, "frame table one record short");
  refused(
      [](auto& j) {
        j["frames"] = std::string(j["frames"].template get<std::string>().size(), '!');
      },
      Errc::kManifestMalformed, "frame table not base64");

  // The writer refuses what the reader would.
  CreateParams p;
  p.format = kFormatDelta;
  p.chunk_size = 16384 + 512;
  p.version = "2.4.0";
  p.compatible = {"sag-1000"};
  p.payload = Dir() / "manifest.bin";
  p.key = Dir() / "pki" / "signer.key";
  p.cert = Dir() / "pki" / "signer.pem";
  p.output = Dir() / "never.img";
  EXPECT_EQ(CreateImage(p).error().code(), Errc::kInvalidArgument);
  p.chunk_size = kFrame;
  p.format = 5;
  EXPECT_EQ(CreateImage(p).error().code(), Errc::kInvalidArgument);
  EXPECT_FALSE(std::filesystem::exists(p.output));
}

TEST_F(DeltaTest, SharedBlocksAtOtherOffsetsAreFound) {
  // The old slot: blocks 0..63. The new payload: the same blocks shifted by
  // one block, with two new blocks: frames 0 and 8 hold a new block.
  Spit(Dir() / "old-a", Blocks(Range(0, 64)));
  const auto image = Make("shift", Blocks(Concat({{1000}, Range(0, 31), {1001}, Range(31, 62)})));
  const auto r =
      Plan(image, {LocalSource{Dir() / "old-a", std::nullopt}}, DeltaOptions{.max_gap = 0});
  const auto& p = r.plan;
  EXPECT_EQ(p.blocks_total, 64U);
  EXPECT_EQ(p.blocks_found, 62U);
  EXPECT_EQ(p.frames_local, 14U);
  EXPECT_EQ(p.frames_rejected, 0U);
  EXPECT_EQ(Downloaded(p), (std::vector<std::size_t>{0, 8}));
  // New block 1 is old block 0, new block 33 is old block 31.
  EXPECT_EQ(std::uint64_t{p.blocks[1].source}, 0U);
  EXPECT_EQ(std::uint64_t{p.blocks[1].block}, 0U);
  EXPECT_EQ(std::uint64_t{p.blocks[33].block}, 31U);
  EXPECT_EQ(std::uint64_t{p.blocks[0].source}, std::uint64_t{BlockLocation::kNowhere});

  // The byte counts: exactly the two frames, in two requests, plus the index.
  const auto& chunks = r.header.manifest.chunks;
  ASSERT_EQ(p.requests.size(), 2U);
  EXPECT_EQ(p.requests[0].offset, chunks[0].offset);
  EXPECT_EQ(p.requests[0].length, chunks[0].length);
  EXPECT_EQ(p.requests[1].offset, chunks[8].offset);
  EXPECT_EQ(p.requests[1].length, chunks[8].length);
  EXPECT_EQ(p.frame_bytes, chunks[0].length + chunks[8].length);
  EXPECT_EQ(p.request_bytes, p.frame_bytes);
  EXPECT_EQ(p.index_bytes, r.header.manifest.reuse->length);
  std::uint64_t full = 0;
  for (const auto& c : chunks) full += c.length;
  EXPECT_EQ(p.full_bytes, full);

  // Every local frame assembles to its signed bytes.
  auto local = LocalBlocks::Open(std::vector{LocalSource{Dir() / "old-a", std::nullopt}});
  ASSERT_TRUE(local);
  const std::string payload = Slurp(Dir() / "shift.bin");
  std::vector<std::uint8_t> frame;
  for (std::size_t f = 0; f < chunks.size(); ++f) {
    if (p.frame_local[f] == 0) continue;
    ASSERT_TRUE(AssembleFrame(r.header.manifest, p.blocks, f, *local, frame)) << f;
    EXPECT_EQ(std::string(frame.begin(), frame.end()), payload.substr(f * kFrame, kFrame)) << f;
  }
}

TEST_F(DeltaTest, BitRotInAScannedSourceMakesItsFrameDownloaded) {
  std::string old = Blocks(Range(0, 64));
  old[10 * kBlock + 77] = static_cast<char>(old[10 * kBlock + 77] ^ 0x10);  // old block 10
  Spit(Dir() / "old-rot", old);
  const auto image = Make("rot", Blocks(Concat({{1000}, Range(0, 31), {1001}, Range(31, 62)})));
  // New block 11 (old block 10) is in frame 2.
  const auto r =
      Plan(image, {LocalSource{Dir() / "old-rot", std::nullopt}}, DeltaOptions{.max_gap = 0});
  EXPECT_EQ(Downloaded(r.plan), (std::vector<std::size_t>{0, 2, 8}));
  EXPECT_EQ(r.plan.blocks_found, 61U);
  EXPECT_EQ(r.plan.requests.size(), 3U);

  // Frames 0 and 2 are one local frame apart: a gap that large is bridged.
  const auto& chunks = r.header.manifest.chunks;
  DeltaOptions bridge{.max_gap = chunks[1].length};
  const auto b = PlanRequests(r.header.manifest, r.plan.frame_local, bridge);
  ASSERT_EQ(b.size(), 2U);
  EXPECT_EQ(b[0].first_frame, 0U);
  EXPECT_EQ(b[0].end_frame, 3U);
  EXPECT_EQ(b[0].length, chunks[0].length + chunks[1].length + chunks[2].length);
  bridge.max_gap = chunks[1].length - 1;
  EXPECT_EQ(PlanRequests(r.header.manifest, r.plan.frame_local, bridge).size(), 3U);
}

TEST_F(DeltaTest, StaleHashesOfALocalSourceAreCaughtByTheFrameHash) {
  // The hashes kept beside the slot say block 10 is intact; it rotted since.
  const std::string old = Blocks(Range(0, 64));
  std::vector<BlockHash> kept;
  kept.reserve(64);
  for (std::size_t b = 0; b < 64; ++b) {
    kept.push_back(HashBlock(
        std::span(reinterpret_cast<const std::uint8_t*>(old.data() + b * kBlock), kBlock)));
  }
  std::string rotted = old;
  rotted[10 * kBlock + 77] = static_cast<char>(rotted[10 * kBlock + 77] ^ 0x10);
  Spit(Dir() / "old-stale", rotted);
  const auto image = Make("stale", Blocks(Concat({{1000}, Range(0, 31), {1001}, Range(31, 62)})));
  const auto r = Plan(image, {LocalSource{Dir() / "old-stale", kept}}, DeltaOptions{.max_gap = 0});
  EXPECT_EQ(r.plan.blocks_found, 62U);  // the lookup believes the kept hashes
  EXPECT_EQ(r.plan.frames_rejected, 1U);
  EXPECT_EQ(Downloaded(r.plan), (std::vector<std::size_t>{0, 2, 8}));
  EXPECT_EQ(r.plan.frame_bytes, r.header.manifest.chunks[0].length +
                                    r.header.manifest.chunks[2].length +
                                    r.header.manifest.chunks[8].length);
}

TEST_F(DeltaTest, ATruncatedHashCollisionNeverAssemblesAFrame) {
  Spit(Dir() / "old-c", Blocks(Range(0, 64)));
  const auto image = Make("collide", Blocks(Range(0, 64)));
  auto h = HeaderOf(image);
  auto index = ReadReuseIndex(image, h);
  ASSERT_TRUE(index);
  // Without collisions, everything is local.
  const std::vector<LocalSource> sources{LocalSource{Dir() / "old-c", std::nullopt}};
  const auto clean = PlanDelta(h.manifest, *index, sources, {});
  ASSERT_TRUE(clean);
  EXPECT_EQ(clean->frames_download, 0U);
  EXPECT_TRUE(clean->requests.empty());
  // New block 20 (frame 5) claims the truncated hash of old block 40: what
  // a collision of 8-byte hashes would look like.
  (*index)[20] = (*index)[40];
  const auto plan = PlanDelta(h.manifest, *index, sources, {});
  ASSERT_TRUE(plan);
  EXPECT_EQ(plan->frames_rejected, 1U);
  EXPECT_EQ(Downloaded(*plan), (std::vector<std::size_t>{5}));
  ASSERT_EQ(plan->requests.size(), 1U);
  EXPECT_EQ(plan->requests[0].length, h.manifest.chunks[5].length);
  auto local = LocalBlocks::Open(sources);
  ASSERT_TRUE(local);
  std::vector<std::uint8_t> frame;
  EXPECT_EQ(AssembleFrame(h.manifest, plan->blocks, 5, *local, frame).error().code(),
            Errc::kChunkHashMismatch);
}

TEST_F(DeltaTest, ZeroBlocksNeedNoSourceAndOtherSourcesAreSearchedInOrder) {
  // Frames 1 and 2 are zeros; frame 3 mixes zeros and blocks only the
  // second source (the inactive slot) has; frame 0 is new.
  Spit(Dir() / "active", Blocks(Range(0, 16)));
  Spit(Dir() / "inactive", Blocks(Range(100, 116)));
  const auto image = Make("zeros", Blocks(Concat({{2000, 1, 2, 3},
                                                  std::vector<int>(8, kZeroBlock),
                                                  {kZeroBlock, 105, 106, kZeroBlock}})));
  const auto none = Plan(image, {});
  EXPECT_EQ(Downloaded(none.plan), (std::vector<std::size_t>{0, 3}));
  EXPECT_EQ(none.plan.frames_local, 2U);

  const auto both = Plan(image, {LocalSource{Dir() / "active", std::nullopt},
                                 LocalSource{Dir() / "inactive", std::nullopt}});
  EXPECT_EQ(Downloaded(both.plan), (std::vector<std::size_t>{0}));
  EXPECT_EQ(std::uint64_t{both.plan.blocks[1].source}, 0U);
  EXPECT_EQ(std::uint64_t{both.plan.blocks[13].source}, 1U);
  EXPECT_EQ(std::uint64_t{both.plan.blocks[13].block}, 5U);
  EXPECT_EQ(std::uint64_t{both.plan.blocks[4].source}, std::uint64_t{BlockLocation::kZero});

  DeltaOptions no_zero;
  no_zero.zero_blocks = false;
  const auto without = Plan(image, {}, no_zero);
  EXPECT_EQ(without.plan.frames_local, 0U);
  EXPECT_EQ(without.plan.frame_bytes, without.plan.full_bytes);
  ASSERT_EQ(without.plan.requests.size(), 1U);  // adjacent frames merge
  EXPECT_EQ(without.plan.requests[0].length, without.plan.full_bytes);
}

// Format 3: the compact frame table (length and content SHA-256, zstd in
// the manifest), payload.zsha256 instead of per-frame compressed hashes, and
// 5-byte index hashes.
TEST_F(DeltaTest, Format3RoundTripsWithACompactTableAndShortHashes) {
  const std::string payload = Blocks(Range(0, 11)) + std::string(1234, 'x');
  const auto image = Make("rt3", payload, kFrame, kFormatCompact);
  const auto got = ReadAll(Slurp(image));
  ASSERT_TRUE(got) << got.error().ToString();
  EXPECT_EQ(*got, payload);
  const auto h = HeaderOf(image);
  const auto& m = h.manifest;
  EXPECT_EQ(m.format, kFormatCompact);
  ASSERT_TRUE(m.frames_zsha256);
  EXPECT_FALSE(HasChunkZsha(m));
  ASSERT_EQ(m.chunks.size(), 3U);
  EXPECT_EQ(m.chunks[1].offset, m.chunks[0].length);
  ASSERT_TRUE(m.reuse);
  EXPECT_EQ(m.reuse->hash_bytes, kCompactHashBytes);
  EXPECT_EQ(m.reuse->size, 12 * kCompactHashBytes);
  const auto again = ParseManifest(SerializeManifest(m));
  ASSERT_TRUE(again) << again.error().ToString();
  EXPECT_EQ(SerializeManifest(*again), h.manifest_json);
  // Smaller than format 2's manifest of the same payload.
  EXPECT_LT(h.manifest_json.size(), HeaderOf(Make("rt2", payload)).manifest_json.size());

  const auto index = ReadReuseIndex(image, h);
  ASSERT_TRUE(index) << index.error().ToString();
  ASSERT_EQ(index->size(), 12U);
  for (std::size_t b = 0; b < 11; ++b) {
    EXPECT_EQ((*index)[b],
              HashBlock(std::span(
                  reinterpret_cast<const std::uint8_t*>(payload.data() + b * kBlock), kBlock)) &
                  HashMask(kCompactHashBytes))
        << b;
  }
  // A resumed download reads frames by their content hash alone.
  const std::string bytes = Slurp(image);
  MemSource from1(bytes.substr(h.payload_offset + m.chunks[1].offset));
  ChunkReader resumed(from1, m, 1);
  for (std::size_t k = 1; k < 3; ++k) {
    const auto c = resumed.Next();
    ASSERT_TRUE(c && *c) << (c ? "" : c.error().ToString());
    EXPECT_TRUE((*c)->content_checked);
    EXPECT_EQ(std::string(reinterpret_cast<const char*>((*c)->data.data()), (*c)->data.size()),
              payload.substr(k * kFrame, (*c)->data.size()));
  }
}

// The plan compares hashes on the shorter length: a format 3 image (5-byte
// hashes) against a source whose kept index came from a format 2 image (8),
// and a format 2 image against a kept format 3 index.
TEST_F(DeltaTest, HashesOfDifferentLengthsAreComparedOnTheShorter) {
  const std::string old_payload = Blocks(Range(0, 16));
  Spit(Dir() / "old-mixed", old_payload);
  const auto new_payload = Blocks(Concat({{3000}, Range(1, 16)}));
  const auto old2 = HeaderOf(Make("old-mixed-2", old_payload));
  const auto old3 = HeaderOf(Make("old-mixed-3", old_payload, kFrame, kFormatCompact));
  auto kept8 = ReadReuseIndex(Dir() / "old-mixed-2.img", old2);
  auto kept5 = ReadReuseIndex(Dir() / "old-mixed-3.img", old3);
  ASSERT_TRUE(kept8 && kept5);
  for (const int format : {kFormatDelta, kFormatCompact}) {
    const auto image = Make("new-mixed", new_payload, kFrame, format);
    for (const auto& [kept, bytes] :
         {std::pair{*kept8, kReuseHashBytes}, std::pair{*kept5, kCompactHashBytes}}) {
      const auto r = Plan(image, {LocalSource{Dir() / "old-mixed", kept, bytes}});
      EXPECT_EQ(Downloaded(r.plan), (std::vector<std::size_t>{0}))
          << "format " << format << ", kept " << bytes;
      EXPECT_EQ(r.plan.frames_rejected, 0U);
      EXPECT_EQ(r.plan.local_read_bytes, 3 * kFrame);  // read only to assemble
    }
  }
}

// Format 3 has no per-frame compressed hash: every bit of a compressed frame,
// flipped alone, is refused by the whole-image reader (the content hash, or
// payload.zsha256 for a bit zstd ignores), and a resumed reader, which
// cannot check payload.zsha256, either refuses it or yields exactly the
// signed content.
TEST_F(DeltaTest, Format3RefusesEveryFlippedBitOfAFrame) {
  const std::string payload = Blocks(Range(0, 12));
  const auto image = Make("flip3", payload, kFrame, kFormatCompact);
  const std::string bytes = Slurp(image);
  const auto h = HeaderOf(image);
  const std::size_t k = 1;
  const auto& c = h.manifest.chunks[k];
  ASSERT_LT(c.length, c.size) << "frame " << k << " is expected to be compressed";
  // Every bit of the frame's first 1 KiB (frame and block headers, entropy
  // tables: where zstd ignores bits) and every 13th bit after it through the
  // resumed reader; through the whole-image reader (a signature check each,
  // slow) those that the resumed reader took and every 97th.
  int resumed_ok = 0;
  int checked = 0;
  for (std::size_t bit = 0; bit < c.length * 8; bit += bit < 8192 ? 1 : 13) {
    std::string bad = bytes;
    const std::size_t at = h.payload_offset + c.offset + bit / 8;
    bad[at] = static_cast<char>(bad[at] ^ (1U << (bit % 8)));
    MemSource from(bad.substr(h.payload_offset + c.offset));
    ChunkReader resumed(from, h.manifest, k);
    const auto r = resumed.Next();
    ++checked;
    if (r) {
      ASSERT_TRUE(*r);
      EXPECT_EQ(std::string(reinterpret_cast<const char*>((*r)->data.data()), (*r)->data.size()),
                payload.substr(k * kFrame, kFrame))
          << bit;
      ++resumed_ok;
    } else {
      EXPECT_TRUE(r.error().code() == Errc::kChunkHashMismatch ||
                  r.error().code() == Errc::kDecompress)
          << r.error().ToString();
    }
    if (r || bit % 97 == 0) {
      const auto got = ReadAll(bad);
      ASSERT_FALSE(got) << "bit " << bit << " flipped and accepted";
      EXPECT_TRUE(got.error().code() == Errc::kChunkHashMismatch ||
                  got.error().code() == Errc::kDecompress)
          << got.error().ToString();
    }
  }
  std::printf(
      "frame of %llu compressed bytes: %d of %d flipped bits decode to the signed "
      "content (caught by payload.zsha256 only)\n",
      static_cast<unsigned long long>(c.length), resumed_ok, checked);
}

// Each signed part of format 3, re-signed with a wrong value: the whole
// image is refused.
TEST_F(DeltaTest, Format3RefusesEachSignedPartThatDoesNotMatch) {
  const std::string payload = Blocks(Range(0, 12));
  const auto image = Make("parts3", payload, kFrame, kFormatCompact);
  const std::string bytes = Slurp(image);
  const auto h = HeaderOf(image);
  const auto zst = Dir() / "parts3.zst";
  Spit(zst, bytes.substr(h.payload_offset, h.manifest.reuse->offset + h.manifest.reuse->length));
  const auto resigned = [&](const std::function<void(Manifest&)>& edit) {
    Manifest m = h.manifest;
    edit(m);
    const auto json = SerializeManifest(m);
    auto sig = SignManifest(json, Dir() / "pki" / "signer.key", Dir() / "pki" / "signer.pem",
                            Dir() / "pki" / "signer-chain.pem");
    EXPECT_TRUE(sig);
    EXPECT_TRUE(WriteContainer(Dir() / "parts3-bad.img", json, sig ? *sig : "", zst));
    return ReadAll(Slurp(Dir() / "parts3-bad.img"));
  };
  ASSERT_TRUE(resigned([](Manifest&) {})) << "the unedited parts must verify";
  const auto frame_hash = resigned([](Manifest& m) { m.chunks[1].sha256[0] ^= 1U; });
  ASSERT_FALSE(frame_hash);
  EXPECT_EQ(frame_hash.error().code(), Errc::kChunkHashMismatch) << frame_hash.error().ToString();
  const auto zsha = resigned([](Manifest& m) { (*m.frames_zsha256)[0] ^= 1U; });
  ASSERT_FALSE(zsha);
  EXPECT_EQ(zsha.error().code(), Errc::kChunkHashMismatch) << zsha.error().ToString();
  EXPECT_NE(zsha.error().message().find("zsha256"), std::string::npos);
  const auto index = resigned([](Manifest& m) { m.reuse->sha256[0] ^= 1U; });
  ASSERT_FALSE(index);
  EXPECT_EQ(index.error().code(), Errc::kChunkHashMismatch) << index.error().ToString();
}

TEST_F(DeltaTest, MalformedOrHostileFormat3ManifestsAreRefused) {
  const auto h = HeaderOf(Make("manifest3", Blocks(Range(0, 9)), kFrame, kFormatCompact));
  const auto base = nlohmann::json::parse(h.manifest_json);
  const auto refused = [&](const std::function<void(nlohmann::json&)>& edit, Errc code,
                           const std::string& what) {
    auto j = base;
    edit(j);
    const auto m = ParseManifest(j.dump());
    ASSERT_FALSE(m) << what;
    EXPECT_EQ(m.error().code(), code) << what << ": " << m.error().ToString();
  };
  // The table as a zstd frame of `raw` (declared content size as given).
  const auto table = [](const std::string& raw, bool with_size = true,
                        const std::string& tail = "") {
    ZSTD_CCtx* cctx = ZSTD_createCCtx();
    ZSTD_CCtx_setParameter(cctx, ZSTD_c_contentSizeFlag, with_size ? 1 : 0);
    std::string z(ZSTD_compressBound(raw.size()), '\0');
    const std::size_t n = ZSTD_compress2(cctx, z.data(), z.size(), raw.data(), raw.size());
    ZSTD_freeCCtx(cctx);
    z.resize(n);
    return Base64Encode(z + tail);
  };
  const std::string record(kCompactFrameRecordBytes, '\x01');  // length 0x01010101: too long
  std::string good_raw;
  for (const auto& c : h.manifest.chunks) {
    for (unsigned s = 0; s < 32; s += 8) good_raw.push_back(static_cast<char>(c.length >> s));
    good_raw.append(reinterpret_cast<const char*>(c.sha256.data()), 32);
  }
  ASSERT_TRUE(ParseManifest(base.dump()));
  {
    auto j = base;
    j["frames"] = table(good_raw);
    ASSERT_TRUE(ParseManifest(j.dump())) << "a table built here must parse";
  }
  refused([&](auto& j) { j["frames"] = table(good_raw + record); }, Errc::kManifestMalformed,
          "one record too many");
  refused([&](auto& j) { j["frames"] = table(good_raw.substr(36)); }, Errc::kManifestMalformed,
          "one record short");
  refused([&](auto& j) { j["frames"] = table(good_raw, false); }, Errc::kManifestMalformed,
          "no declared size");
  refused([&](auto& j) { j["frames"] = table(good_raw, true, "x"); }, Errc::kManifestMalformed,
          "bytes after the frame");
  refused([&](auto& j) { j["frames"] = table(std::string(3 * kCompactFrameRecordBytes, '\x01')); },
          Errc::kManifestLimits, "frame lengths above the zstd bound");
  refused([&](auto& j) { j["frames"] = std::string(1U << 20U, 'A'); }, Errc::kManifestLimits,
          "a table larger than its zstd bound");
  refused([&](auto& j) { j["frames"] = ""; }, Errc::kManifestLimits, "empty table");
  refused([](auto& j) { j["payload"].erase("zsha256"); }, Errc::kManifestMalformed,
          "no payload.zsha256");
  refused([](auto& j) { j["payload"]["zsha256"] = "00"; }, Errc::kManifestMalformed,
          "payload.zsha256 not a SHA-256");
  refused([](auto& j) { j["reuse"]["hash_bytes"] = 4; }, Errc::kManifestMalformed, "4-byte hashes");
  refused([](auto& j) { j["reuse"]["hash_bytes"] = 9; }, Errc::kManifestMalformed, "9-byte hashes");
  refused([](auto& j) { j["reuse"]["size"] = 8 * 9; }, Errc::kManifestMalformed,
          "index size of 8-byte hashes");
  refused([](auto& j) { j["format"] = kFormatDelta; }, Errc::kManifestMalformed,
          "format 2 with format 3's parts");
  // Format 2 knows neither payload.zsha256 nor short hashes.
  const auto h2 = HeaderOf(Make("manifest2", Blocks(Range(0, 9))));
  auto j2 = nlohmann::json::parse(h2.manifest_json);
  j2["payload"]["zsha256"] = base["payload"]["zsha256"];
  EXPECT_EQ(ParseManifest(j2.dump()).error().code(), Errc::kManifestMalformed);
}

// Format 4: 4 KiB frames in groups of 4, one SHA-256 per group, every frame
// compressed with a dictionary that is a signed part of payload.zst.
TEST_F(DeltaTest, Format4RoundTripsInGroupsWithADictionary) {
  const std::string payload = Blocks(Range(0, 11)) + std::string(1234, 'x');
  const auto image = Make("rt4", payload, kBlock, kFormatGrouped);
  const auto got = ReadAll(Slurp(image));
  ASSERT_TRUE(got) << got.error().ToString();
  EXPECT_EQ(*got, payload);
  const auto h = HeaderOf(image);
  const auto& m = h.manifest;
  EXPECT_EQ(m.format, kFormatGrouped);
  EXPECT_EQ(m.frame_size, kBlock);
  EXPECT_EQ(m.group_frames, 4U);
  EXPECT_EQ(m.chunk_size, 4 * kBlock);
  ASSERT_EQ(m.frame_lengths.size(), 12U);
  ASSERT_EQ(m.chunks.size(), 3U);
  EXPECT_EQ(m.chunks[2].size, 3 * kBlock + 1234);
  ASSERT_TRUE(m.dict);
  EXPECT_EQ(m.chunks[0].offset, m.dict->length) << "frames follow the dictionary";
  EXPECT_EQ(FrameAt(m, 5).offset, m.chunks[1].offset + m.frame_lengths[4]);
  const auto again = ParseManifest(SerializeManifest(m));
  ASSERT_TRUE(again) << again.error().ToString();
  EXPECT_EQ(SerializeManifest(*again), h.manifest_json);

  // A resumed read (ChunkReader from group 1) needs the dictionary, which it
  // gets checked; without one it refuses to start.
  const std::string bytes = Slurp(image);
  MemSource dict_src(bytes.substr(h.payload_offset + m.dict->offset));
  const auto dict = ReadDictionary(dict_src, m);
  ASSERT_TRUE(dict) << dict.error().ToString();
  MemSource from1(bytes.substr(h.payload_offset + m.chunks[1].offset));
  ChunkReader resumed(from1, m, 1, {}, kMinChunkBuffers, ContentCheck::kDeferCompressed, nullptr,
                      *dict);
  for (std::size_t k = 1; k < 3; ++k) {
    const auto c = resumed.Next();
    ASSERT_TRUE(c && *c) << (c ? "" : c.error().ToString());
    EXPECT_TRUE((*c)->content_checked);
    EXPECT_EQ(std::string(reinterpret_cast<const char*>((*c)->data.data()), (*c)->data.size()),
              payload.substr(k * 4 * kBlock, (*c)->data.size()));
  }
  MemSource again1(bytes.substr(h.payload_offset + m.chunks[1].offset));
  ChunkReader no_dict(again1, m, 1);
  const auto refused = no_dict.Next();
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().code(), Errc::kInvalidArgument);
}

// The dictionary is checked against its signed SHA-256 before zstd sees it:
// one changed byte is refused as the dictionary (not later, by a group).
TEST_F(DeltaTest, Format4RefusesATamperedDictionary) {
  const std::string payload = Blocks(Range(0, 12));
  const auto image = Make("dict4", payload, kBlock, kFormatGrouped);
  const auto h = HeaderOf(image);
  ASSERT_TRUE(h.manifest.dict);
  std::string bytes = Slurp(image);
  const std::size_t at = h.payload_offset + h.manifest.dict->length - 100;
  bytes[at] = static_cast<char>(bytes[at] ^ 1);
  const auto got = ReadAll(bytes);
  ASSERT_FALSE(got);
  EXPECT_EQ(got.error().code(), Errc::kChunkHashMismatch) << got.error().ToString();
  EXPECT_NE(got.error().message().find("dictionary"), std::string::npos) << got.error().ToString();
  MemSource src(bytes.substr(h.payload_offset));
  const auto dict = ReadDictionary(src, h.manifest);
  ASSERT_FALSE(dict);
  EXPECT_EQ(dict.error().code(), Errc::kChunkHashMismatch);
}

// A changed frame inside a group: refused by the group's content hash, also
// by a resumed reader in the installer's mode (kDeferCompressed), which has
// no payload.zsha256 to lean on. Truncated inside a group: refused too.
TEST_F(DeltaTest, Format4RefusesATamperedFrameOrATruncatedGroup) {
  const std::string payload = Blocks(Range(0, 12));
  const auto image = Make("frame4", payload, kBlock, kFormatGrouped);
  const auto h = HeaderOf(image);
  const auto& m = h.manifest;
  const std::string bytes = Slurp(image);
  const auto dict = [&] {
    MemSource src(bytes.substr(h.payload_offset));
    return *ReadDictionary(src, m);
  }();
  // Every 7th byte of frame 5 (group 1) changed, one at a time.
  const auto f5 = FrameAt(m, 5);
  int refused = 0;
  int tried = 0;
  for (std::uint64_t i = 0; i < f5.length; i += 7) {
    std::string bad = bytes;
    bad[h.payload_offset + f5.offset + i] ^= 0x40;
    MemSource from1(bad.substr(h.payload_offset + m.chunks[1].offset));
    ChunkReader resumed(from1, m, 1, {}, kMinChunkBuffers, ContentCheck::kDeferCompressed, nullptr,
                        dict);
    const auto c = resumed.Next();
    ++tried;
    if (!c) {
      ++refused;
      EXPECT_TRUE(c.error().code() == Errc::kChunkHashMismatch ||
                  c.error().code() == Errc::kDecompress)
          << c.error().ToString();
    } else {
      // A bit zstd ignores: the content must still be the signed one.
      ASSERT_TRUE(*c);
      EXPECT_EQ(std::string(reinterpret_cast<const char*>((*c)->data.data()), (*c)->data.size()),
                payload.substr(4 * kBlock, 4 * kBlock));
    }
  }
  EXPECT_GT(refused, tried / 2);
  // Truncated in the middle of group 1.
  const auto cut = ReadAll(bytes.substr(0, h.payload_offset + f5.offset + f5.length / 2));
  ASSERT_FALSE(cut);
  EXPECT_EQ(cut.error().code(), Errc::kImageTruncated) << cut.error().ToString();
}

// Signed frame lengths that do not match the frames (two lengths of one
// group shifted by a byte, the group's total unchanged) and a frame that
// would decode to more than its signed size: refused, never decoded past
// the frame's place.
TEST_F(DeltaTest, Format4RefusesWrongFrameLengthsAndOversizedFrames) {
  const std::string payload = Blocks(Range(0, 12));
  const auto image = Make("len4", payload, kBlock, kFormatGrouped);
  const std::string bytes = Slurp(image);
  const auto h = HeaderOf(image);
  const auto zst = Dir() / "len4.zst";
  std::string stored =
      bytes.substr(h.payload_offset, h.manifest.reuse->offset + h.manifest.reuse->length);
  const auto resigned = [&](const std::function<void(Manifest&)>& edit) {
    Manifest m = h.manifest;
    edit(m);
    Spit(zst, stored);
    const auto json = SerializeManifest(m);
    auto sig = SignManifest(json, Dir() / "pki" / "signer.key", Dir() / "pki" / "signer.pem",
                            Dir() / "pki" / "signer-chain.pem");
    EXPECT_TRUE(sig);
    EXPECT_TRUE(WriteContainer(Dir() / "len4-bad.img", json, sig ? *sig : "", zst));
    return ReadAll(Slurp(Dir() / "len4-bad.img"));
  };
  ASSERT_TRUE(resigned([](Manifest&) {})) << "the unedited parts must verify";
  const auto shifted = resigned([](Manifest& m) {
    m.frame_lengths[4] += 1;
    m.frame_lengths[5] -= 1;
  });
  ASSERT_FALSE(shifted);
  EXPECT_EQ(shifted.error().code(), Errc::kDecompress) << shifted.error().ToString();

  // Frame 4 replaced by a zstd frame of 8 KiB (two frames' worth), with the
  // lengths and the group hash signed as if that were right.
  const auto f4 = FrameAt(h.manifest, 4);
  const std::string big(2 * kBlock, 'B');
  std::string z(ZSTD_compressBound(big.size()), '\0');
  z.resize(ZSTD_compress(z.data(), z.size(), big.data(), big.size(), 3));
  const std::uint64_t rel = f4.offset;
  stored = stored.substr(0, rel) + z + stored.substr(rel + f4.length);
  const auto oversized = resigned([&](Manifest& m) {
    const auto delta = static_cast<std::int64_t>(z.size()) - static_cast<std::int64_t>(f4.length);
    m.frame_lengths[4] = static_cast<std::uint32_t>(z.size());
    m.chunks[1].length =
        static_cast<std::uint64_t>(static_cast<std::int64_t>(m.chunks[1].length) + delta);
    m.chunks[2].offset =
        static_cast<std::uint64_t>(static_cast<std::int64_t>(m.chunks[2].offset) + delta);
    m.reuse->offset =
        static_cast<std::uint64_t>(static_cast<std::int64_t>(m.reuse->offset) + delta);
    // The group's content if frame 4 were allowed to spill over frame 5.
    std::string content = big + payload.substr(6 * kBlock, 2 * kBlock);
    m.chunks[1].sha256 = Sha256::Of(content);
  });
  ASSERT_FALSE(oversized);
  EXPECT_EQ(oversized.error().code(), Errc::kDecompress) << oversized.error().ToString();
}

TEST(DeltaRequests, AdjacentFramesMergeAndGapsAreBridgedUpToTheLimit) {
  Manifest m;
  m.chunk_size = kFrame;
  std::uint64_t offset = 0;
  for (const std::uint64_t len : {100, 200, 300, 400, 500}) {
    m.chunks.push_back(Chunk{offset, len, kFrame, {}, {}});
    offset += len;
  }
  const std::vector<std::uint8_t> local{0, 1, 0, 0, 1};
  auto r = PlanRequests(m, local, DeltaOptions{.max_gap = 0});
  ASSERT_EQ(r.size(), 2U);
  EXPECT_EQ(r[0].offset, 0U);
  EXPECT_EQ(r[0].length, 100U);
  EXPECT_EQ(r[1].offset, 300U);
  EXPECT_EQ(r[1].length, 700U);
  EXPECT_EQ(r[1].first_frame, 2U);
  EXPECT_EQ(r[1].end_frame, 4U);
  r = PlanRequests(m, local, DeltaOptions{.max_gap = 200});
  ASSERT_EQ(r.size(), 1U);
  EXPECT_EQ(r[0].length, 1000U);
  EXPECT_EQ(PlanRequests(m, local, DeltaOptions{.max_gap = 199}).size(), 2U);
  // A cap on a request's size splits what gaps would merge.
  EXPECT_EQ(PlanRequests(m, local, DeltaOptions{.max_gap = 200, .max_request = 999}).size(), 2U);
  EXPECT_TRUE(PlanRequests(m, std::vector<std::uint8_t>(5, 1), {}).empty());
}

}  // namespace
}  // namespace sag::image
