// The signed image format: round trip, resume, interop with `openssl cms`,
// and every way a bad image must be refused. The PKI and the images are made
// once per suite (SetUpTestSuite) so that the byte-walking tests stay fast.
#include "common/image/image.h"

#include <archive.h>
#include <archive_entry.h>
#include <gtest/gtest.h>
#include <openssl/bn.h>
#include <openssl/cms.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/objects.h>
#include <openssl/x509.h>
#include <zstd.h>

#include <algorithm>
#include <deque>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <string_view>
#include <utility>
#include <vector>

#include "common/atomic_file.h"
#include "common/image/image_writer.h"
#include "common/image/pki.h"
#include "common/process.h"
#include "tests/support/temp_dir.h"

#if defined(__SANITIZE_ADDRESS__)
// The byte-walking tests verify thousands of images; OpenSSL allocates a
// lot per verification, and recording deep allocation stacks for each
// dominated their time under ASan. Shallow stacks keep them fast.
extern "C" const char* __asan_default_options() {  // NOLINT(bugprone-reserved-identifier)
  return "malloc_context_size=2";
}
#endif

namespace sag::image {
namespace {

constexpr std::uint64_t kChunk = 16384;
constexpr std::size_t kTextChunk = 3;  // 48-64 KiB: all text, so compressed

// Serves a buffer in uneven pieces, as a network would.
class MemSource final : public ByteSource {
 public:
  explicit MemSource(std::string data, std::size_t max_piece = 777)
      : data_(std::move(data)), max_piece_(max_piece) {}
  Expected<std::size_t> Read(std::span<std::uint8_t> buf) override {
    const std::size_t n = std::min({buf.size(), data_.size() - pos_, max_piece_});
    std::memcpy(buf.data(), data_.data() + pos_, n);
    pos_ += n;
    return n;
  }

 private:
  std::string data_;
  std::size_t max_piece_;
  std::size_t pos_ = 0;
};

std::string Slurp(const std::filesystem::path& p) {
  auto s = ReadFile(p, 64U << 20U);
  EXPECT_TRUE(s) << p;
  return s ? *s : std::string();
}

void Spit(const std::filesystem::path& p, std::string_view data) {
  std::ofstream(p, std::ios::binary) << data;
}

struct Outcome {
  std::optional<Error> error;
  std::string payload;              // every byte the reader yielded
  std::vector<std::size_t> chunks;  // indexes yielded
  std::vector<bool> checked;        // content_checked of each
};

Outcome ReadAll(std::string image, const Trust& trust, const Limits& limits = {},
                ContentCheck check = ContentCheck::kEveryChunk) {
  MemSource src(std::move(image));
  ImageReader reader(src, trust, limits, kMinChunkBuffers, check);
  Outcome out;
  if (auto h = reader.ReadHeader(); !h) {
    out.error = h.error();
    return out;
  }
  for (;;) {
    auto c = reader.NextChunk();
    if (!c) {
      out.error = c.error();
      return out;
    }
    if (!*c) return out;
    out.chunks.push_back((*c)->index);
    out.checked.push_back((*c)->content_checked);
    out.payload.append(reinterpret_cast<const char*>((*c)->data.data()), (*c)->data.size());
  }
}

// A tar with exactly these entries (tests of the container rules).
constexpr std::time_t kBuildTimeSeconds = 1795780800;  // 2026-11-27T12:00:00Z

void WriteTar(const std::filesystem::path& path,
              const std::vector<std::pair<std::string, std::string>>& entries,
              bool pad_record = false) {
  archive* a = archive_write_new();
  archive_write_set_format_ustar(a);
  archive_write_add_filter_none(a);
  if (!pad_record) archive_write_set_bytes_in_last_block(a, 1);
  ASSERT_EQ(archive_write_open_filename(a, path.c_str()), ARCHIVE_OK);
  for (const auto& [name, data] : entries) {
    archive_entry* e = archive_entry_new();
    archive_entry_set_pathname(e, name.c_str());
    archive_entry_set_size(e, static_cast<la_int64_t>(data.size()));
    archive_entry_set_filetype(e, AE_IFREG);
    archive_entry_set_perm(e, 0644);
    // The headers as sag-image writes them: mtime is the manifest's
    // build_time (Params() below), which the reader checks.
    archive_entry_set_mtime(e, kBuildTimeSeconds, 0);
    ASSERT_EQ(archive_write_header(a, e), ARCHIVE_OK);
    archive_entry_free(e);
    ASSERT_EQ(archive_write_data(a, data.data(), data.size()),
              static_cast<la_ssize_t>(data.size()));
  }
  archive_write_close(a);
  archive_write_free(a);
}

class ImageTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new test::TempDir();  // NOLINT(cppcoreguidelines-owning-memory)
    const auto& d = dir_->path();
    ASSERT_TRUE(pki::InitDevPki(d / "pki"));
    for (auto [name, flaw] : {std::pair{"expired", pki::SignerFlaw::kExpired},
                              std::pair{"future", pki::SignerFlaw::kNotYetValid},
                              std::pair{"nocode", pki::SignerFlaw::kNoCodeSigning},
                              std::pair{"foreign", pki::SignerFlaw::kOtherRoot}}) {
      ASSERT_TRUE(pki::IssueSigner(d / "pki", name, flaw));
    }
    // Random bytes (zstd stores them raw) around compressible text, with a
    // short last chunk.
    std::mt19937 rng(42);
    std::string payload;
    for (int i = 0; i < 40000; ++i) payload.push_back(static_cast<char>(rng()));
    for (int i = 0; payload.size() < 70000; ++i) {
      payload += "line " + std::to_string(i) + " of the firmware image\n";
    }
    for (int i = 0; i < 30123; ++i) payload.push_back(static_cast<char>(rng()));
    payload_ = new std::string(payload);  // NOLINT(cppcoreguidelines-owning-memory)
    Spit(d / "payload.bin", payload);
    ASSERT_TRUE(CreateImage(Params("signer", d / "good.img")));
    for (const char* bad : {"expired", "future", "nocode", "foreign"}) {
      ASSERT_TRUE(CreateImage(Params(bad, d / (std::string(bad) + ".img"))));
    }
    image_ = new std::string(Slurp(d / "good.img"));  // NOLINT(cppcoreguidelines-owning-memory)
  }
  static void TearDownTestSuite() {
    delete dir_;
    delete payload_;
    delete image_;
  }

  static CreateParams Params(const std::string& signer, const std::filesystem::path& out) {
    const auto pki = dir_->path() / "pki";
    CreateParams p;
    p.type = ImageType::kDevice;
    p.version = "2.3.1";
    p.compatible = {"sag-1000", "sag-100wm"};
    p.payload = dir_->path() / "payload.bin";
    p.key = pki / (signer + ".key");
    p.cert = pki / (signer + ".pem");
    p.chain = pki / (signer + "-chain.pem");
    p.chunk_size = kChunk;
    p.build_time = "2026-11-27T12:00:00Z";
    p.output = out;
    return p;
  }

  static Trust GoodTrust() { return Trust{dir_->path() / "pki" / "root-ca.pem", std::nullopt}; }
  static const std::filesystem::path& Dir() { return dir_->path(); }

  // The verified header of the good image.
  static VerifiedHeader Header() {
    MemSource src(*image_);
    ImageReader reader(src, GoodTrust());
    auto h = reader.ReadHeader();
    EXPECT_TRUE(h);
    return **h;
  }

  // Checks the outcome of reading a broken image: the expected error, and
  // only verified bytes yielded before it.
  static void ExpectRefused(const Outcome& o, Errc code, const std::string& what) {
    ASSERT_TRUE(o.error.has_value()) << what << ": accepted";
    EXPECT_EQ(o.error->code(), code) << what << ": " << o.error->ToString();
    EXPECT_FALSE(o.error->message().empty());
    EXPECT_EQ(o.payload, payload_->substr(0, o.payload.size())) << what;
  }

  static test::TempDir* dir_;
  static std::string* payload_;
  static std::string* image_;
};

test::TempDir* ImageTest::dir_ = nullptr;
std::string* ImageTest::payload_ = nullptr;
std::string* ImageTest::image_ = nullptr;

TEST_F(ImageTest, RoundTripYieldsThePayload) {
  const auto o = ReadAll(*image_, GoodTrust());
  ASSERT_FALSE(o.error) << o.error->ToString();
  EXPECT_EQ(o.payload, *payload_);
  const auto h = Header();
  EXPECT_EQ(h.manifest.type, ImageType::kDevice);
  EXPECT_EQ(h.manifest.version, "2.3.1");
  EXPECT_EQ(h.manifest.compatible, (std::vector<std::string>{"sag-1000", "sag-100wm"}));
  EXPECT_EQ(h.manifest.payload_size, payload_->size());
  EXPECT_EQ(h.manifest.payload_sha256, Sha256::Of(*payload_));
  EXPECT_EQ(h.manifest.chunks.size(), (payload_->size() + kChunk - 1) / kChunk);
  EXPECT_NE(h.signer.subject.find("code signing"), std::string::npos);
  // The compressible middle chunks really are compressed, the random ones not.
  EXPECT_LT(h.manifest.chunks[kTextChunk].length, kChunk / 2);
  EXPECT_GE(h.manifest.chunks[0].length, kChunk);
  // payload_offset is the real container offset, and the container has the
  // size the format predicts.
  const auto& last = h.manifest.chunks.back();
  EXPECT_EQ(h.payload_offset % 512, 0U);
  EXPECT_EQ(image_->size(), ContainerSize(h.manifest_json.size(), h.signature_der.size(),
                                          last.offset + last.length));
  EXPECT_EQ(ReadUnverifiedHeader(*std::make_unique<MemSource>(*image_))->payload_offset,
            h.payload_offset);
}

TEST_F(ImageTest, ReaderWorksWithOneByteReadsAndFromAFile) {
  MemSource src(*image_, 1);
  ImageReader reader(src, GoodTrust());
  std::string got;
  for (;;) {
    auto c = reader.NextChunk();  // ReadHeader is implied
    ASSERT_TRUE(c) << c.error().ToString();
    if (!*c) break;
    got.append(reinterpret_cast<const char*>((*c)->data.data()), (*c)->data.size());
  }
  EXPECT_EQ(got, *payload_);
  // After the end it keeps saying so.
  auto again = reader.NextChunk();
  ASSERT_TRUE(again);
  EXPECT_FALSE(*again);

  auto file = FileSource::Open(Dir() / "good.img");
  ASSERT_TRUE(file);
  ImageReader from_file(**file, GoodTrust());
  std::size_t n = 0;
  for (;;) {
    auto c = from_file.NextChunk();
    ASSERT_TRUE(c) << c.error().ToString();
    if (!*c) break;
    ++n;
  }
  EXPECT_EQ(n, Header().manifest.chunks.size());
}

TEST_F(ImageTest, ChunkReaderResumesAtAnyChunk) {
  const auto h = Header();
  for (std::size_t k : {std::size_t{0}, std::size_t{2}, kTextChunk, h.manifest.chunks.size() - 1}) {
    auto file =
        FileSource::Open(Dir() / "good.img", h.payload_offset + h.manifest.chunks[k].offset);
    ASSERT_TRUE(file);
    ChunkReader reader(**file, h.manifest, k);
    std::string got;
    for (;;) {
      auto c = reader.Next();
      ASSERT_TRUE(c) << c.error().ToString();
      if (!*c) break;
      got.append(reinterpret_cast<const char*>((*c)->data.data()), (*c)->data.size());
    }
    EXPECT_EQ(got, payload_->substr(k * kChunk)) << k;
  }
  // Positioned one byte off: refused, nothing yielded.
  auto file =
      FileSource::Open(Dir() / "good.img", h.payload_offset + h.manifest.chunks[2].offset + 1);
  ASSERT_TRUE(file);
  ChunkReader off(**file, h.manifest, 2);
  auto c = off.Next();
  ASSERT_FALSE(c);
  EXPECT_TRUE(c.error().code() == Errc::kDecompress || c.error().code() == Errc::kChunkHashMismatch)
      << c.error().ToString();
}

TEST_F(ImageTest, OpensslCmsVerifiesTheSignature) {
  const auto h = Header();
  Spit(Dir() / "m.json", h.manifest_json);
  Spit(Dir() / "m.sig", h.signature_der);
  const auto root = (Dir() / "pki" / "root-ca.pem").string();
  auto r = RunCommand({"openssl", "cms", "-verify", "-binary", "-inform", "DER", "-in",
                       (Dir() / "m.sig").string(), "-content", (Dir() / "m.json").string(),
                       "-CAfile", root, "-purpose", "any", "-out", "/dev/null"});
  ASSERT_TRUE(r);
  EXPECT_EQ(r->exit_code, 0) << r->output;
  EXPECT_NE(r->output.find("Verification successful"), std::string::npos) << r->output;
  // And it refuses an altered manifest, so the check above means something.
  Spit(Dir() / "m2.json", h.manifest_json + " ");
  auto bad = RunCommand({"openssl", "cms", "-verify", "-binary", "-inform", "DER", "-in",
                         (Dir() / "m.sig").string(), "-content", (Dir() / "m2.json").string(),
                         "-CAfile", root, "-purpose", "any", "-out", "/dev/null"});
  ASSERT_TRUE(bad);
  EXPECT_NE(bad->exit_code, 0);
}

// Every byte of the header region (tar headers, manifest, signature, the
// start of the payload) and every 97th byte of the rest, each with one bit
// flipped: refused with a 2xx code, and no unverified byte yielded.
TEST_F(ImageTest, FlippedByteAnywhereIsRefused) {
  const auto h = Header();
  std::vector<std::size_t> offsets;
  offsets.reserve(h.payload_offset + 64 + image_->size() / 97 + 160);
  for (std::size_t i = 0; i < h.payload_offset + 64; ++i) offsets.push_back(i);
  for (std::size_t i = h.payload_offset + 64; i < image_->size(); i += 97) offsets.push_back(i);
  for (std::size_t i = image_->size() - 1100; i < image_->size(); i += 7) offsets.push_back(i);
  std::map<Errc, int> seen;
  for (const auto off : offsets) {
    std::string bad = *image_;
    bad[off] = static_cast<char>(bad[off] ^ (1U << (off % 8)));
    const auto o = ReadAll(std::move(bad), GoodTrust());
    ASSERT_TRUE(o.error.has_value()) << "flip at offset " << off << " accepted";
    const int n = o.error->number();
    EXPECT_TRUE(n >= 200 && n < 300) << off << ": " << o.error->ToString();
    EXPECT_EQ(o.payload, payload_->substr(0, o.payload.size())) << off;
    if (off < h.payload_offset) {
      EXPECT_TRUE(o.chunks.empty()) << off;
    }
    ++seen[o.error->code()];
  }
  // The walk reached every layer: container, signature, chunks.
  EXPECT_GT(seen[Errc::kImageContainer], 0);
  EXPECT_GT(seen[Errc::kSignatureInvalid], 0);
  EXPECT_GT(seen[Errc::kChunkHashMismatch] + seen[Errc::kDecompress], 0);
}

// The signatureAlgorithm OID's hash is not what CMS_verify checks (it hashes
// with the digestAlgorithm): ecdsa-with-SHA384, one bit from SHA256, must be
// refused, or the same content has a second file. The flip walk above hits
// this byte only when the signature's length puts it on its offsets.
TEST_F(ImageTest, AnotherHashInTheSignatureAlgorithmIsRefused) {
  const auto h = Header();
  const std::string oid("\x06\x08\x2a\x86\x48\xce\x3d\x04\x03\x02", 10);
  // The SignerInfo's: the last one before the payload (the certificates
  // before it carry their own).
  const auto at = image_->rfind(oid, h.payload_offset);
  ASSERT_NE(at, std::string::npos);
  std::string bad = *image_;
  bad[at + oid.size() - 1] = '\x03';  // ecdsa-with-SHA384
  const auto o = ReadAll(std::move(bad), GoodTrust());
  ASSERT_TRUE(o.error.has_value()) << "ecdsa-with-SHA384 accepted";
  EXPECT_EQ(o.error->code(), Errc::kSignatureInvalid) << o.error->ToString();
  EXPECT_TRUE(o.chunks.empty());
}

// zstd ignores a few bits of a compressed block (entropy table details,
// reserved bits): every bit of a compressed chunk, flipped alone, must still
// be refused, before zstd sees the bytes.
TEST_F(ImageTest, EveryBitOfACompressedChunkMatters) {
  const auto h = Header();
  const std::size_t k = kTextChunk;
  const auto& c = h.manifest.chunks[k];
  ASSERT_LT(c.length, c.size / 2) << "chunk " << k << " is expected to be compressed";
  const std::string frame = image_->substr(h.payload_offset + c.offset, c.length);
  for (std::size_t bit = 0; bit < frame.size() * 8; ++bit) {
    std::string bad = frame;
    bad[bit / 8] = static_cast<char>(bad[bit / 8] ^ (1U << (bit % 8)));
    MemSource src(bad);
    ChunkReader reader(src, h.manifest, k);
    auto got = reader.Next();
    ASSERT_FALSE(got) << "bit " << bit << " of chunk " << k << " flipped and accepted";
    EXPECT_TRUE(got.error().code() == Errc::kChunkHashMismatch ||
                got.error().code() == Errc::kDecompress)
        << got.error().ToString();
  }
}

TEST_F(ImageTest, TruncationAtAnyOffsetIsRefused) {
  const auto h = Header();
  std::vector<std::size_t> cuts;
  for (std::size_t i = 0; i < h.payload_offset + 600; i += 11) cuts.push_back(i);
  for (std::size_t i = h.payload_offset; i < image_->size(); i += 97) cuts.push_back(i);
  for (std::size_t i = image_->size() - 1100; i < image_->size(); i += 5) cuts.push_back(i);
  for (const auto cut : cuts) {
    const auto o = ReadAll(image_->substr(0, cut), GoodTrust());
    ExpectRefused(o, Errc::kImageTruncated, "cut at " + std::to_string(cut));
    // Nothing past the cut can have been yielded, the last chunk never.
    EXPECT_LT(o.chunks.size(), h.manifest.chunks.size()) << cut;
  }
}

TEST_F(ImageTest, EntriesMissingDuplicatedReorderedOrExtraAreRefused) {
  const auto h = Header();
  const auto u = ReadUnverifiedHeader(*std::make_unique<MemSource>(*image_));
  ASSERT_TRUE(u);
  const std::string zst = image_->substr(u->payload_offset, u->payload_stored_size);
  const auto& m = h.manifest_json;
  const auto& s = h.signature_der;
  using Entries = std::vector<std::pair<std::string, std::string>>;
  const std::vector<std::pair<std::string, Entries>> cases = {
      {"no signature", {{"manifest.json", m}, {"payload.zst", zst}}},
      {"no manifest", {{"manifest.json.sig", s}, {"payload.zst", zst}}},
      {"no payload", {{"manifest.json", m}, {"manifest.json.sig", s}}},
      {"signature first", {{"manifest.json.sig", s}, {"manifest.json", m}, {"payload.zst", zst}}},
      {"manifest twice",
       {{"manifest.json", m},
        {"manifest.json", m},
        {"manifest.json.sig", s},
        {"payload.zst", zst}}},
      {"payload twice",
       {{"manifest.json", m},
        {"manifest.json.sig", s},
        {"payload.zst", zst},
        {"payload.zst", zst}}},
      {"extra entry in the middle",
       {{"manifest.json", m}, {"manifest.json.sig", s}, {"README", "x"}, {"payload.zst", zst}}},
      {"extra entry at the end",
       {{"manifest.json", m}, {"manifest.json.sig", s}, {"payload.zst", zst}, {"README", "x"}}},
      {"renamed entry", {{"./manifest.json", m}, {"manifest.json.sig", s}, {"payload.zst", zst}}},
      {"payload of another size",
       {{"manifest.json", m}, {"manifest.json.sig", s}, {"payload.zst", zst + "x"}}},
  };
  for (const auto& [what, entries] : cases) {
    WriteTar(Dir() / "case.tar", entries);
    const auto o = ReadAll(Slurp(Dir() / "case.tar"), GoodTrust());
    ExpectRefused(o, Errc::kImageContainer, what);
    if (what != "payload twice" && what != "extra entry at the end") {
      EXPECT_TRUE(o.chunks.empty()) << what;
    }
  }
  // The same three entries in the right order, with the writer's headers,
  // are fine (libarchive here, not sag-image), but a tar padded to a 10 KiB
  // record has bytes after its end.
  WriteTar(Dir() / "ok.tar",
           {{"manifest.json", m}, {"manifest.json.sig", s}, {"payload.zst", zst}});
  EXPECT_FALSE(ReadAll(Slurp(Dir() / "ok.tar"), GoodTrust()).error);
  WriteTar(Dir() / "padded.tar",
           {{"manifest.json", m}, {"manifest.json.sig", s}, {"payload.zst", zst}}, true);
  if (Slurp(Dir() / "padded.tar").size() != image_->size()) {
    ExpectRefused(ReadAll(Slurp(Dir() / "padded.tar"), GoodTrust()), Errc::kImageContainer,
                  "record padding");
  }
  ExpectRefused(ReadAll(*image_ + std::string(512, '\0'), GoodTrust()), Errc::kImageContainer,
                "trailing zeros");
  ExpectRefused(ReadAll(*image_ + "x", GoodTrust()), Errc::kImageContainer, "trailing byte");
}

TEST_F(ImageTest, BadSignersAreRefusedWithTheirOwnCodes) {
  const std::vector<std::pair<std::string, Errc>> cases = {
      {"expired", Errc::kSignerExpired},
      {"future", Errc::kSignerNotYetValid},
      {"nocode", Errc::kSignerUsage},
      {"foreign", Errc::kSignerUntrusted},
  };
  for (const auto& [name, code] : cases) {
    const auto o = ReadAll(Slurp(Dir() / (name + ".img")), GoodTrust());
    ExpectRefused(o, code, name);
    EXPECT_TRUE(o.chunks.empty());
  }
  // The foreign image verifies against its own root: the test images are
  // otherwise sound.
  const auto o = ReadAll(Slurp(Dir() / "foreign.img"),
                         Trust{Dir() / "pki" / "foreign-root-ca.pem", std::nullopt});
  EXPECT_FALSE(o.error) << o.error->ToString();
  // Trust::now decides validity.
  const std::time_t now = std::time(nullptr);
  ExpectRefused(ReadAll(*image_, Trust{GoodTrust().root_ca, now + 50L * 365 * 86400}),
                Errc::kSignerExpired, "good signer in 50 years");
  ExpectRefused(ReadAll(*image_, Trust{GoodTrust().root_ca, now - 10L * 86400}),
                Errc::kSignerNotYetValid, "good signer 10 days ago");
  // Another root pinned: untrusted.
  ExpectRefused(ReadAll(*image_, Trust{Dir() / "pki" / "foreign-root-ca.pem", std::nullopt}),
                Errc::kSignerUntrusted, "pinned the wrong root");
  // The intermediate pinned instead of the root is not an anchor either.
  ExpectRefused(ReadAll(*image_, Trust{Dir() / "pki" / "intermediate-ca.pem", std::nullopt}),
                Errc::kSignerUntrusted, "pinned the intermediate");
}

// The signature value s of an ECDSA signature, and whether it is in the
// upper half of the group order ("high-s"); `flip` replaces s by n - s (the
// same signature, other bytes) and returns the re-encoded CMS.
struct SValue {
  bool high = false;
  std::string flipped_der;
};

SValue InspectS(const std::string& der, bool flip) {
  SValue out;
  const auto* p = reinterpret_cast<const unsigned char*>(der.data());
  CMS_ContentInfo* cms = d2i_CMS_ContentInfo(nullptr, &p, static_cast<long>(der.size()));
  EXPECT_NE(cms, nullptr);
  if (cms == nullptr) return out;
  CMS_SignerInfo* si = sk_CMS_SignerInfo_value(CMS_get0_SignerInfos(cms), 0);
  X509* signer = nullptr;
  CMS_SignerInfo_get0_algs(si, nullptr, &signer, nullptr, nullptr);
  STACK_OF(X509)* certs = CMS_get1_certs(cms);
  for (int i = 0; signer == nullptr && i < sk_X509_num(certs); ++i) {
    if (CMS_SignerInfo_cert_cmp(si, sk_X509_value(certs, i)) == 0) signer = sk_X509_value(certs, i);
  }
  EXPECT_NE(signer, nullptr);
  EVP_PKEY* key = X509_get0_pubkey(signer);
  char group[64] = {};
  size_t glen = 0;
  EXPECT_EQ(EVP_PKEY_get_group_name(key, group, sizeof group, &glen), 1);
  EC_GROUP* ec = EC_GROUP_new_by_curve_name(OBJ_txt2nid(group));
  const BIGNUM* n = EC_GROUP_get0_order(ec);
  ASN1_OCTET_STRING* os = CMS_SignerInfo_get0_signature(si);
  const unsigned char* sp = ASN1_STRING_get0_data(os);
  ECDSA_SIG* sig = d2i_ECDSA_SIG(nullptr, &sp, ASN1_STRING_length(os));
  EXPECT_NE(sig, nullptr);
  BIGNUM* half = BN_dup(n);
  BN_rshift1(half, half);
  out.high = BN_cmp(ECDSA_SIG_get0_s(sig), half) > 0;
  if (flip) {
    BIGNUM* ns = BN_new();
    BN_sub(ns, n, ECDSA_SIG_get0_s(sig));
    ECDSA_SIG_set0(sig, BN_dup(ECDSA_SIG_get0_r(sig)), ns);
    unsigned char* enc = nullptr;
    const int len = i2d_ECDSA_SIG(sig, &enc);
    ASN1_STRING_set(os, enc, len);
    OPENSSL_free(enc);
    unsigned char* cms_der = nullptr;
    const int cms_len = i2d_CMS_ContentInfo(cms, &cms_der);
    out.flipped_der.assign(reinterpret_cast<const char*>(cms_der),
                           static_cast<std::size_t>(cms_len));
    OPENSSL_free(cms_der);
  }
  BN_free(half);
  ECDSA_SIG_free(sig);
  EC_GROUP_free(ec);
  sk_X509_pop_free(certs, X509_free);
  CMS_ContentInfo_free(cms);
  return out;
}

// ECDSA's s and n - s both verify: the reader takes only the low one, and
// the writer always makes that one, so one signed content has one file.
TEST_F(ImageTest, HighSSignatureIsRefusedAndTheWriterMakesLowS) {
  const auto h = Header();
  EXPECT_FALSE(InspectS(h.signature_der, false).high);
  const auto flipped = InspectS(h.signature_der, true);
  ASSERT_FALSE(flipped.flipped_der.empty());
  ASSERT_NE(flipped.flipped_der, h.signature_der);
  EXPECT_TRUE(InspectS(flipped.flipped_der, false).high);
  // A valid signature all the same: the OpenSSL command line accepts it.
  Spit(Dir() / "hs.json", h.manifest_json);
  Spit(Dir() / "hs.sig", flipped.flipped_der);
  auto cli = RunCommand({"openssl", "cms", "-verify", "-binary", "-inform", "DER", "-in",
                         (Dir() / "hs.sig").string(), "-content", (Dir() / "hs.json").string(),
                         "-CAfile", (Dir() / "pki" / "root-ca.pem").string(), "-purpose", "any",
                         "-out", "/dev/null"});
  ASSERT_TRUE(cli);
  EXPECT_EQ(cli->exit_code, 0) << cli->output;
  auto v = VerifyHeader(h.manifest_json, flipped.flipped_der, GoodTrust());
  ASSERT_FALSE(v);
  EXPECT_EQ(v.error().code(), Errc::kImageNonCanonical) << v.error().ToString();
  // In a container: refused before any chunk.
  const auto& last = h.manifest.chunks.back();
  Spit(Dir() / "hs.zst", image_->substr(h.payload_offset, last.offset + last.length));
  ASSERT_TRUE(
      WriteContainer(Dir() / "hs.img", h.manifest_json, flipped.flipped_der, Dir() / "hs.zst"));
  const auto o = ReadAll(Slurp(Dir() / "hs.img"), GoodTrust());
  ASSERT_TRUE(o.error.has_value()) << "high-s accepted";
  EXPECT_EQ(o.error->code(), Errc::kImageNonCanonical) << o.error->ToString();
  EXPECT_TRUE(o.chunks.empty());
  // Half of all ECDSA signatures come out high-s: 24 in a row low is the
  // writer's doing (a chance of 2^-24 otherwise).
  for (int i = 0; i < 24; ++i) {
    auto sig = SignManifest(h.manifest_json, Dir() / "pki" / "signer.key",
                            Dir() / "pki" / "signer.pem", Dir() / "pki" / "signer-chain.pem");
    ASSERT_TRUE(sig) << sig.error().ToString();
    EXPECT_FALSE(InspectS(*sig, false).high) << "signature " << i << " is high-s";
    ASSERT_TRUE(VerifyHeader(h.manifest_json, *sig, GoodTrust()));
  }
}

// A tar header field that the ustar checksum covers but the reader did not
// look at (mode, owner, mtime, user and group names, device numbers),
// changed with the checksum recomputed: refused, since the writer only makes
// one header for an entry.
TEST_F(ImageTest, TarHeaderFieldsMustBeTheWritersExactly) {
  const auto h = Header();
  struct Edit {
    const char* field;
    std::size_t at;
    std::string bytes;
  };
  const Edit edits[] = {{"mode", 100, "000755 "},
                        {"uid", 108, "001750 "},
                        {"gid", 116, "001750 "},
                        {"mtime", 136, "00000000001"},
                        {"uname", 265, std::string("root")},
                        {"gname", 297, std::string("wheel")},
                        {"devmajor", 329, "000001 "}};
  // The header of each of the three entries.
  const std::size_t sig_header = 512 + (h.manifest_json.size() + 511) / 512 * 512;
  const std::size_t payload_header = h.payload_offset - 512;
  for (const std::size_t header : {std::size_t{0}, sig_header, payload_header}) {
    for (const auto& e : edits) {
      std::string bad = *image_;
      bad.replace(header + e.at, e.bytes.size(), e.bytes);
      // Recompute the checksum: six octal digits, NUL, space.
      unsigned sum = 0;
      for (std::size_t i = 0; i < 512; ++i) {
        sum += (i >= 148 && i < 156) ? ' ' : static_cast<unsigned char>(bad[header + i]);
      }
      char field[9];
      std::snprintf(field, sizeof field, "%06o", sum);
      bad.replace(header + 148, 6, field, 6);
      bad[header + 154] = '\0';
      bad[header + 155] = ' ';
      ASSERT_NE(bad, *image_) << e.field;
      const auto o = ReadAll(std::move(bad), GoodTrust());
      ASSERT_TRUE(o.error.has_value()) << e.field << " at header " << header << " accepted";
      EXPECT_EQ(o.error->code(), Errc::kImageNonCanonical)
          << e.field << " at header " << header << ": " << o.error->ToString();
      EXPECT_NE(o.error->message().find(e.field), std::string::npos) << o.error->message();
      EXPECT_TRUE(o.chunks.empty()) << e.field;
    }
  }
}

TEST_F(ImageTest, SignatureOverOtherBytesIsRefused) {
  const auto h = Header();
  auto alt = h.manifest_json;
  alt.insert(alt.find("2.3.1"), "1");  // version 12.3.1, still valid JSON
  auto v = VerifyHeader(alt, h.signature_der, GoodTrust());
  ASSERT_FALSE(v);
  EXPECT_EQ(v.error().code(), Errc::kSignatureInvalid);
  v = VerifyHeader(h.manifest_json, "not DER at all", GoodTrust());
  ASSERT_FALSE(v);
  EXPECT_EQ(v.error().code(), Errc::kSignatureInvalid);
  ASSERT_TRUE(VerifyHeader(h.manifest_json, h.signature_der, GoodTrust()));
  // A missing root file is a configuration problem, not a bad image.
  v = VerifyHeader(h.manifest_json, h.signature_der, Trust{Dir() / "nope.pem", std::nullopt});
  ASSERT_FALSE(v);
  EXPECT_EQ(v.error().number() / 100, 1);
}

// Signs `json` with the good signer and wraps it with the good payload.
std::string SignedImage(const std::filesystem::path& dir, const std::string& json,
                        const std::string& zst) {
  auto sig = SignManifest(json, dir / "pki" / "signer.key", dir / "pki" / "signer.pem",
                          dir / "pki" / "signer-chain.pem");
  EXPECT_TRUE(sig);
  Spit(dir / "zst.bin", zst);
  EXPECT_TRUE(WriteContainer(dir / "signed.img", json, *sig, dir / "zst.bin"));
  return Slurp(dir / "signed.img");
}

TEST_F(ImageTest, SignedButAbsurdManifestsAreRefused) {
  const auto h = Header();
  const auto u = ReadUnverifiedHeader(*std::make_unique<MemSource>(*image_));
  const std::string zst = image_->substr(u->payload_offset, u->payload_stored_size);
  const auto base = nlohmann::json::parse(h.manifest_json);
  struct Case {
    std::string what;
    std::function<void(nlohmann::json&)> edit;
    Errc code;
  };
  const std::vector<Case> cases = {
      {"payload of 2^63 bytes", [](auto& j) { j["payload"]["size"] = 1ULL << 63U; },
       Errc::kManifestLimits},
      {"chunk size 1", [](auto& j) { j["payload"]["chunk_size"] = 1; }, Errc::kManifestLimits},
      {"chunk size 1 GiB", [](auto& j) { j["payload"]["chunk_size"] = 1ULL << 30U; },
       Errc::kManifestLimits},
      {"chunk length 2^40", [](auto& j) { j["chunks"][0]["length"] = 1ULL << 40U; },
       Errc::kManifestLimits},
      {"a chunk missing", [](auto& j) { j["chunks"].erase(j["chunks"].size() - 1); },
       Errc::kManifestLimits},
      {"format 5", [](auto& j) { j["format"] = 5; }, Errc::kManifestVersion},
      // Format 2 is known (docs/delta.md): a format 1 body under its number is malformed.
      {"format 2 with a format 1 body", [](auto& j) { j["format"] = 2; }, Errc::kManifestMalformed},
      {"type Bios", [](auto& j) { j["type"] = "Bios"; }, Errc::kManifestMalformed},
      {"bad version", [](auto& j) { j["version"] = "1.2.3.4.5"; }, Errc::kManifestMalformed},
      {"gap between chunks", [](auto& j) { j["chunks"][1]["offset"] = 1; },
       Errc::kManifestMalformed},
  };
  for (const auto& c : cases) {
    auto j = base;
    c.edit(j);
    ExpectRefused(ReadAll(SignedImage(Dir(), j.dump(), zst), GoodTrust()), c.code, c.what);
  }
  // Signed JSON that is not JSON.
  ExpectRefused(ReadAll(SignedImage(Dir(), "{\"format\": 1,", zst), GoodTrust()),
                Errc::kManifestMalformed, "truncated JSON");
  // A payload hash that does not match the (correct) chunks, as only a
  // broken signing tool could make: the streaming reader does not hash the
  // payload twice (the signed chunk hashes cover every byte) and yields it;
  // `sag-image extract`, which hands out the payload as one file, refuses it.
  auto j = base;
  j["payload"]["sha256"] = std::string(64, '0');
  const auto inconsistent = SignedImage(Dir(), j.dump(), zst);
  const auto o = ReadAll(inconsistent, GoodTrust());
  EXPECT_FALSE(o.error) << o.error->message();
  EXPECT_EQ(o.payload, *payload_);
  Spit(Dir() / "inconsistent.img", inconsistent);
  const auto ex = RunCommand(
      {SAG_IMAGE_BIN, "extract", "--ca", (Dir() / "pki" / "root-ca.pem").string(),
       (Dir() / "inconsistent.img").string(), "--output", (Dir() / "inconsistent.bin").string()});
  ASSERT_TRUE(ex);
  EXPECT_EQ(ex->exit_code, 1);
  EXPECT_NE(ex->output.find("PayloadHashMismatch"), std::string::npos) << ex->output;
  EXPECT_FALSE(std::filesystem::exists(Dir() / "inconsistent.bin"));
  // A wrong chunk hash.
  j = base;
  j["chunks"][3]["sha256"] = std::string(64, 'a');
  const auto o3 = ReadAll(SignedImage(Dir(), j.dump(), zst), GoodTrust());
  ExpectRefused(o3, Errc::kChunkHashMismatch, "chunk hash");
  EXPECT_EQ(o3.chunks.size(), 3U);
  // Deferring the content check of compressed chunks changes nothing for a
  // chunk of raw blocks (chunk 0: random bytes): its content hash is the
  // only one it has.
  j = base;
  j["chunks"][0]["sha256"] = std::string(64, 'a');
  ExpectRefused(
      ReadAll(SignedImage(Dir(), j.dump(), zst), GoodTrust(), {}, ContentCheck::kDeferCompressed),
      Errc::kChunkHashMismatch, "raw chunk hash, deferred mode");
}

// ContentCheck::kDeferCompressed: a chunk holding a compressed block is
// yielded once its compressed bytes matched their signed hash, marked for
// the caller to check its content; its content hash is not computed.
// Tampering with its bytes is still refused before it is yielded.
TEST_F(ImageTest, DeferredContentCheckLeavesCompressedChunksToTheCaller) {
  const auto h = Header();
  const auto u = ReadUnverifiedHeader(*std::make_unique<MemSource>(*image_));
  const std::string zst = image_->substr(u->payload_offset, u->payload_stored_size);
  auto j = nlohmann::json::parse(h.manifest_json);
  // A chunk shorter than chunk_size holds a compressed block (raw blocks
  // add headers to the content).
  const auto chunk_size = j["payload"]["chunk_size"].get<std::uint64_t>();
  std::size_t k = 0;
  while (k < j["chunks"].size() && j["chunks"][k]["length"].get<std::uint64_t>() >= chunk_size) {
    ++k;
  }
  ASSERT_LT(k, j["chunks"].size()) << "the test payload has no compressed chunk";
  // As if the decompressor had produced other bytes than the signer's did:
  // the signed content hash of chunk k does not match its decompressed bytes.
  j["chunks"][k]["sha256"] = std::string(64, 'b');
  const auto img = SignedImage(Dir(), j.dump(), zst);
  const auto every = ReadAll(img, GoodTrust());
  ExpectRefused(every, Errc::kChunkHashMismatch, "content hash checked");
  EXPECT_EQ(every.chunks.size(), k);
  const auto deferred = ReadAll(img, GoodTrust(), {}, ContentCheck::kDeferCompressed);
  ASSERT_FALSE(deferred.error) << deferred.error->message();
  EXPECT_EQ(deferred.payload, *payload_);
  ASSERT_GT(deferred.checked.size(), k);
  EXPECT_FALSE(deferred.checked[k]);
  EXPECT_TRUE(deferred.checked[0]) << "chunk 0 holds random bytes (raw blocks)";
  // A changed byte inside chunk k's compressed bytes: refused in both modes.
  auto bad = *image_;
  bad[u->payload_offset + j["chunks"][k]["offset"].get<std::size_t>() + 20] ^= 0x01;
  for (const auto check : {ContentCheck::kEveryChunk, ContentCheck::kDeferCompressed}) {
    const auto o = ReadAll(bad, GoodTrust(), {}, check);
    ASSERT_TRUE(o.error);
    EXPECT_TRUE(o.error->code() == Errc::kChunkHashMismatch || o.error->code() == Errc::kDecompress)
        << o.error->ToString();
    EXPECT_EQ(o.chunks.size(), k);
  }
}

TEST_F(ImageTest, DeclaredContainerSizesAreBoundedBeforeAllocation) {
  // A manifest.json header that claims 8 GiB: refused from the header alone.
  std::string bad = image_->substr(0, 512);
  std::memcpy(&bad[124], "77777777777", 11);
  std::memcpy(&bad[148], "        ", 8);
  unsigned sum = 0;
  for (char c : bad) sum += static_cast<unsigned char>(c);
  char chk[8];
  std::snprintf(chk, sizeof(chk), "%06o", sum);
  std::memcpy(&bad[148], chk, 7);
  ExpectRefused(ReadAll(bad, GoodTrust()), Errc::kManifestLimits, "8 GiB manifest");
  Limits small;
  small.max_signature_bytes = 100;
  ExpectRefused(ReadAll(*image_, GoodTrust(), small), Errc::kManifestLimits, "signature limit");
  small = Limits{};
  small.max_payload_bytes = 1000;
  ExpectRefused(ReadAll(*image_, GoodTrust(), small), Errc::kManifestLimits, "payload limit");
  small = Limits{};
  small.max_chunks = 3;
  ExpectRefused(ReadAll(*image_, GoodTrust(), small), Errc::kManifestLimits, "chunk limit");
}

TEST(ManifestParse, RoundTripAndRejects) {
  Manifest m;
  m.type = ImageType::kDpi;
  m.version = "20201117_1_0-0.0.1";
  m.compatible = {"sag-vcpe"};
  m.build_time = "2026-01-02T03:04:05Z";
  m.payload_size = 10000;
  m.chunk_size = 4096;
  m.payload_sha256 = Sha256::Of("x");
  for (std::uint64_t i = 0; i < 3; ++i) {
    m.chunks.push_back(
        Chunk{i * 100, 100, i < 2 ? 4096U : 10000U - 8192U, Sha256::Of("c"), Sha256::Of("z")});
  }
  const auto text = SerializeManifest(m);
  auto back = ParseManifest(text);
  ASSERT_TRUE(back) << back.error().ToString();
  EXPECT_EQ(back->type, ImageType::kDpi);
  EXPECT_EQ(back->version, m.version);
  EXPECT_EQ(back->chunks.size(), 3U);
  EXPECT_EQ(back->chunks[2].size, 10000U - 8192U);
  EXPECT_EQ(SerializeManifest(*back), text);

  const std::vector<std::pair<std::string, Errc>> bad = {
      {"", Errc::kManifestMalformed},
      {"[]", Errc::kManifestMalformed},
      {"{}", Errc::kManifestMalformed},
      {R"({"format": "1"})", Errc::kManifestMalformed},
      {R"({"format": 0})", Errc::kManifestVersion},
      {R"({"format": 99, "anything": 1})", Errc::kManifestVersion},
      {std::string(100, '[') + std::string(100, ']'), Errc::kManifestMalformed},
      {R"({"format":1,"x":[[[[[[[[1]]]]]]]]})", Errc::kManifestMalformed},
  };
  for (const auto& [json, code] : bad) {
    auto r = ParseManifest(json);
    ASSERT_FALSE(r) << json;
    EXPECT_EQ(r.error().code(), code) << json << ": " << r.error().ToString();
  }
  // A Device version on a Dpi image and the reverse are refused.
  auto j = nlohmann::json::parse(text);
  j["version"] = "1.2.3";
  EXPECT_EQ(ParseManifest(j.dump()).error().code(), Errc::kManifestMalformed);
  // Extra keys are refused: a reader must not ignore what a signer meant.
  j = nlohmann::json::parse(text);
  j["payload"]["encrypted"] = true;
  EXPECT_EQ(ParseManifest(j.dump()).error().code(), Errc::kManifestMalformed);
  // Limits are the caller's.
  Limits tight;
  tight.max_manifest_bytes = 10;
  EXPECT_EQ(ParseManifest(text, tight).error().code(), Errc::kManifestLimits);
}

TEST(ImageWriter, RefusesBadParameters) {
  test::TempDir d;
  Spit(d / "p", "payload");
  CreateParams p;
  p.version = "1.0";
  p.compatible = {"sag-1000"};
  p.payload = d / "p";
  p.key = d / "missing.key";
  p.cert = d / "missing.pem";
  p.output = d / "out.img";
  p.chunk_size = 100;
  EXPECT_EQ(CreateImage(p).error().code(), Errc::kInvalidArgument);
  p.chunk_size = kDefaultChunkSize;
  p.version = "one";
  EXPECT_EQ(CreateImage(p).error().code(), Errc::kInvalidArgument);
  p.version = "1.0";
  EXPECT_EQ(CreateImage(p).error().code(), Errc::kNotFound);  // the key
  EXPECT_FALSE(std::filesystem::exists(d / "out.img"));
  // No temporary left behind.
  std::size_t files = 0;
  for ([[maybe_unused]] const auto& e : std::filesystem::directory_iterator(d.path())) ++files;
  EXPECT_EQ(files, 1U);
}

// Chunks of 64 KiB and more are hashed on a second thread while the next one
// is read: each chunk's bytes must stay intact for as long as the `buffers`
// contract says, and a corrupt chunk must still stop the reader exactly there.
constexpr std::uint64_t kBig = 64U << 10U;

// 21 chunks of kBig: every third (1, 4, 7, ...) one run of 'x' (a compressed
// block), the others random bytes (raw blocks). Returns {payload, image}.
std::pair<std::string, std::string> MixedImage(const std::filesystem::path& dir, CreateParams p) {
  std::mt19937 rng(7);
  std::string payload;
  while (payload.size() < 20 * kBig + 1000) {
    payload += (payload.size() / kBig) % 3 == 1 ? std::string(kBig, 'x')
                                                : std::string(1, static_cast<char>(rng()));
  }
  Spit(dir / "big-payload.bin", payload);
  p.output = dir / "big.img";
  p.payload = dir / "big-payload.bin";
  p.chunk_size = kBig;
  EXPECT_TRUE(CreateImage(p));
  return {payload, Slurp(dir / "big.img")};
}

TEST_F(ImageTest, ThreadedReaderKeepsChunksValidForItsBuffers) {
  const auto [payload, image] = MixedImage(Dir(), Params("signer", Dir() / "big.img"));

  for (const std::size_t buffers : {kMinChunkBuffers, std::size_t{4}, kMaxChunkBuffers}) {
    MemSource src(image, 100000);
    ImageReader reader(src, GoodTrust(), {}, buffers);
    std::deque<ChunkView> held;  // the views the contract keeps valid
    std::size_t count = 0;
    for (;;) {
      auto c = reader.NextChunk();
      ASSERT_TRUE(c) << c.error().ToString();
      if (!*c) break;
      held.push_back(**c);
      while (held.size() > buffers - 1) held.pop_front();
      for (const auto& v : held) {
        ASSERT_EQ(std::string_view(reinterpret_cast<const char*>(v.data.data()), v.data.size()),
                  std::string_view(payload).substr(v.index * kBig, v.data.size()))
            << "chunk " << v.index << " changed " << count - v.index << " calls later with "
            << buffers << " buffers";
      }
      ++count;
    }
    EXPECT_EQ(count, 21U);
  }

  // A flipped byte in chunk 7's stored bytes: chunks 0..6 come out, then
  // the error, although chunk 7 was read while chunk 6 was being hashed.
  const auto h = ReadUnverifiedHeader(*std::make_unique<MemSource>(image));
  ASSERT_TRUE(h);
  auto m = ParseManifest(h->manifest_json);
  ASSERT_TRUE(m);
  std::string bad = image;
  bad[h->payload_offset + m->chunks[7].offset + m->chunks[7].length / 2] ^= 0x10;
  const auto o = ReadAll(bad, GoodTrust());
  ASSERT_TRUE(o.error);
  EXPECT_TRUE(o.error->code() == Errc::kChunkHashMismatch || o.error->code() == Errc::kDecompress)
      << o.error->ToString();
  EXPECT_EQ(o.chunks.size(), 7U);
  EXPECT_EQ(o.payload, payload.substr(0, 7 * kBig));
}

// The buffer gate (for a caller that writes a chunk on another thread while
// the next is decoded): asked once for every chunk, in order, before its
// buffer is reused (before the chunk is read into it: it is decoded in
// place). Every chunk but the last comes with the next one read ahead: a raw
// chunk's content is hashed on the other core while the next is read and
// decoded, a compressed chunk is decoded while the next one's compressed
// bytes are hashed there. A gate that says stop fails the read with
// kCancelled, at the chunk it refused: the chunks before it come out.
TEST_F(ImageTest, BufferGateIsAskedBeforeEachReadOneChunkAhead) {
  const auto [payload, image] = MixedImage(Dir(), Params("signer", Dir() / "big.img"));
  MemSource src(image, 100000);
  ImageReader reader(src, GoodTrust(), {}, kMinChunkBuffers, ContentCheck::kDeferCompressed);
  std::vector<std::size_t> asked;
  reader.SetBufferGate([&](std::size_t index) {
    asked.push_back(index);
    return true;
  });
  std::size_t deferred = 0;
  for (std::size_t i = 0;; ++i) {
    auto c = reader.NextChunk();
    ASSERT_TRUE(c) << c.error().ToString();
    if (!*c) break;
    ASSERT_EQ((*c)->index, i);
    EXPECT_EQ(std::string_view(reinterpret_cast<const char*>((*c)->data.data()), (*c)->data.size()),
              std::string_view(payload).substr(i * kBig, (*c)->data.size()));
    ASSERT_FALSE(asked.empty());
    if (!(*c)->content_checked) {
      ++deferred;
      EXPECT_EQ(i % 3, 1U);
    }
    EXPECT_EQ(asked.back(), std::min<std::size_t>(i + 1, 20))
        << "chunk " << i << (!(*c)->content_checked ? " (deferred)" : "")
        << " without a read-ahead";
  }
  EXPECT_EQ(deferred, 7U);
  ASSERT_EQ(asked.size(), 21U);
  for (std::size_t i = 0; i < asked.size(); ++i) EXPECT_EQ(asked[i], i);

  MemSource again(image, 100000);
  ImageReader stopped(again, GoodTrust(), {}, kMinChunkBuffers, ContentCheck::kDeferCompressed);
  stopped.SetBufferGate([](std::size_t index) { return index < 5; });
  std::size_t got = 0;
  for (;;) {
    auto c = stopped.NextChunk();
    if (!c) {
      EXPECT_EQ(c.error().code(), Errc::kCancelled) << c.error().ToString();
      break;
    }
    ASSERT_TRUE(*c) << "read to the end past a gate that said stop";
    ++got;
  }
  EXPECT_EQ(got, 5U) << "chunks 0-4 come out; the gate refused chunk 5";
}

// Chunks are decoded in place: the stored bytes sit at the end of the
// chunk's buffer and the output grows towards them (zstd's decompression
// margin). Every kind of block, in 1 and 4 MiB chunks (eight blocks and
// more, so that the output closes in on the input), at the fastest, the
// default and the slowest level sag-image offers (whose block splitter
// makes smaller blocks): literal-heavy text (Huffman-coded literals about
// as large as a block), repeated text, zeros (RLE), random bytes (raw), and
// halves of these. Read with every content hashed, and with it deferred to
// the caller and three buffers (the installer's way): every byte as in the
// payload. (With buffers one block of margin short, zstd stops at the first
// block whose output would reach input not read yet: "Destination buffer is
// too small", red.)
TEST_F(ImageTest, InPlaceDecodingKeepsEveryKindOfChunk) {
  constexpr std::size_t kMiB = 1U << 20U;
  std::mt19937 rng(11);
  const auto letters = [&](std::size_t n) {
    std::string s;
    while (s.size() < n) s.push_back("abcdefghijklmnopqrstuvwxyz  \n"[rng() % 29]);
    return s;
  };
  const auto random = [&](std::size_t n) {
    std::string s;
    while (s.size() < n) s.push_back(static_cast<char>(rng()));
    return s;
  };
  std::string text;
  for (int i = 0; text.size() < kMiB; ++i) {
    text += "block " + std::to_string(i) + " of the root file system\n";
  }
  const std::string payload = letters(kMiB) + text.substr(0, kMiB) + std::string(kMiB, '\0') +
                              random(kMiB) + letters(kMiB / 2) + random(kMiB / 2) +
                              random(kMiB / 2) + std::string(kMiB / 2, 'z') + letters(kMiB / 3);
  Spit(Dir() / "inplace-payload.bin", payload);
  // Level 1's window is 512 KiB, level 3's 2 MiB: sag-image sets one that
  // covers the chunk, so that its frames are single-segment ones, which
  // the reader takes (red without: "not a single canonical zstd frame").
  for (const auto& [level, chunk] :
       {std::pair{1, kMiB}, std::pair{3, kMiB}, std::pair{19, kMiB}, std::pair{3, 4 * kMiB}}) {
    auto p = Params("signer", Dir() / "inplace.img");
    p.payload = Dir() / "inplace-payload.bin";
    p.chunk_size = chunk;
    p.zstd_level = level;
    ASSERT_TRUE(CreateImage(p));
    const auto image = Slurp(Dir() / "inplace.img");
    const auto o = ReadAll(image, GoodTrust());
    ASSERT_FALSE(o.error) << "level " << level << ": " << o.error->ToString();
    EXPECT_EQ(o.payload.size(), payload.size());
    EXPECT_TRUE(o.payload == payload) << "level " << level;

    MemSource src(image, 100000);
    ImageReader reader(src, GoodTrust(), {}, 3, ContentCheck::kDeferCompressed);
    std::size_t count = 0;
    std::size_t deferred = 0;
    for (;;) {
      auto c = reader.NextChunk();
      ASSERT_TRUE(c) << "level " << level << ": " << c.error().ToString();
      if (!*c) break;
      const auto& v = **c;
      EXPECT_TRUE(std::string_view(reinterpret_cast<const char*>(v.data.data()), v.data.size()) ==
                  std::string_view(payload).substr(v.index * chunk, v.data.size()))
          << "level " << level << ", chunk " << v.index;
      deferred += v.content_checked ? 0 : 1;
      ++count;
    }
    EXPECT_EQ(count, (payload.size() + chunk - 1) / chunk);
    EXPECT_GE(deferred, chunk == kMiB ? 4U : 2U) << "level " << level;
  }
}

// A frame that zstd decodes, but not in place in a chunk buffer: 2048 RLE
// blocks of 32 bytes, whose 6 KiB of block headers need more room than the
// one block of margin the buffer has (sag-image never makes such a frame).
// Signed, it is still refused with a clear error before anything decodes it
// (red without the margin check, which would decode it).
TEST_F(ImageTest, AFrameThatCannotBeDecodedInPlaceIsRefused) {
  constexpr std::size_t kSize = 65536;
  const std::string content(kSize, 'x');
  // Magic, single segment with a 2-byte content size (65536 - 256).
  std::string frame = {'\x28', '\xb5', '\x2f', '\xfd', '\x60', '\x00', '\xff'};
  for (std::uint32_t b = 0; b < 2048; ++b) {
    const std::uint32_t h = (b == 2047 ? 1U : 0U) | (1U << 1U) | (32U << 3U);
    for (const std::uint32_t shift : {0U, 8U, 16U}) frame.push_back(static_cast<char>(h >> shift));
    frame.push_back('x');
  }
  std::string out(kSize, '\0');
  ASSERT_EQ(ZSTD_decompress(out.data(), out.size(), frame.data(), frame.size()), kSize);
  ASSERT_TRUE(out == content);

  Spit(Dir() / "rle-payload.bin", content);
  auto p = Params("signer", Dir() / "rle.img");
  p.payload = Dir() / "rle-payload.bin";
  p.chunk_size = kSize;
  ASSERT_TRUE(CreateImage(p));
  MemSource src(Slurp(Dir() / "rle.img"));
  ImageReader reader(src, GoodTrust());
  const auto h = reader.ReadHeader();
  ASSERT_TRUE(h) << h.error().ToString();
  auto j = nlohmann::json::parse((*h)->manifest_json);
  ASSERT_EQ(j["chunks"].size(), 1U);
  j["chunks"][0]["length"] = frame.size();
  j["chunks"][0]["zsha256"] = ToHex(
      Sha256::Of(std::span(reinterpret_cast<const std::uint8_t*>(frame.data()), frame.size())));
  const auto o = ReadAll(SignedImage(Dir(), j.dump(), frame), GoodTrust());
  ASSERT_TRUE(o.error.has_value()) << "a frame zstd cannot decode in place was accepted";
  EXPECT_EQ(o.error->code(), Errc::kDecompress) << o.error->ToString();
  EXPECT_NE(o.error->message().find("decode in place"), std::string::npos) << o.error->message();
  EXPECT_TRUE(o.chunks.empty());
}

// A chunk of raw blocks cut as zstd cuts incompressible data (full 128 KiB
// blocks, the last one shorter) is read straight to where its blocks decode
// to; any other frame is put back together as stored and judged as before.
// Chunk 1 of a three-chunk image (256 KiB chunks) is replaced by a hand-made
// frame: each must come out exactly as zstd decodes it, or be refused with
// chunk 0 yielded and nothing of chunk 1. Red checks: the frames that leave
// the direct path after raw blocks were read in place fail if those are not
// put back in order, and a direct path that took blocks of any size puts
// them at the wrong place.
TEST_F(ImageTest, RawBlocksAreReadInPlaceAndOtherFramesAsStored) {
  constexpr std::size_t kSize = 256U << 10U;
  constexpr std::size_t kBlock = 128U << 10U;
  std::mt19937 rng(5);
  const auto random = [&](std::size_t n) {
    std::string r;
    while (r.size() < n) r.push_back(static_cast<char>(rng()));
    return r;
  };
  std::string text;
  for (int i = 0; text.size() < kBlock; ++i) text += "line " + std::to_string(i) + " of a file\n";
  text.resize(kBlock);
  const std::string first = random(kSize);
  const std::string last = random(100000);
  // The image sag-image makes: chunk 1 is a raw block, then a compressed one.
  const std::string mixed = random(kBlock) + text;
  const auto whole = [&](std::string_view chunk1) {  // the payload with this chunk 1
    std::string w = first;
    w += chunk1;
    w += last;
    return w;
  };
  Spit(Dir() / "raw-payload.bin", whole(mixed));
  auto p = Params("signer", Dir() / "raw.img");
  p.payload = Dir() / "raw-payload.bin";
  p.chunk_size = kSize;
  ASSERT_TRUE(CreateImage(p));
  const auto image = Slurp(Dir() / "raw.img");
  for (const auto check : {ContentCheck::kEveryChunk, ContentCheck::kDeferCompressed}) {
    const auto o = ReadAll(image, GoodTrust(), {}, check);
    ASSERT_FALSE(o.error) << o.error->ToString();
    EXPECT_TRUE(o.payload == whole(mixed));
  }

  const auto u = ReadUnverifiedHeader(*std::make_unique<MemSource>(image));
  ASSERT_TRUE(u);
  const std::string zst = image.substr(u->payload_offset, u->payload_stored_size);
  const auto base = nlohmann::json::parse(u->manifest_json);
  ASSERT_EQ(base["chunks"].size(), 3U);
  {
    // sag-image's chunk 1: a full raw block (read in place), then a
    // compressed one (the rest as stored, hashed before zstd decodes it).
    const std::uint64_t at = base["chunks"][1]["offset"].get<std::uint64_t>() + 9;
    const auto block = [&](std::uint64_t pos) {
      return static_cast<std::uint32_t>(static_cast<std::uint8_t>(zst[pos])) |
             static_cast<std::uint32_t>(static_cast<std::uint8_t>(zst[pos + 1])) << 8U |
             static_cast<std::uint32_t>(static_cast<std::uint8_t>(zst[pos + 2])) << 16U;
    };
    ASSERT_EQ(block(at), kBlock << 3U) << "not a full raw block first";
    ASSERT_EQ((block(at + 3 + kBlock) >> 1U) & 3U, 2U) << "not a compressed block next";
  }
  const auto sha = [](std::string_view b) {
    return ToHex(Sha256::Of(std::span(reinterpret_cast<const std::uint8_t*>(b.data()), b.size())));
  };
  // Frame pieces: the header sag-image writes for 256 KiB (single segment,
  // 4-byte content size), and blocks (3-byte header: last, type, size).
  const std::string header = {'\x28', '\xb5', '\x2f', '\xfd', '\xa0',
                              '\x00', '\x00', '\x04', '\x00'};
  const auto bh = [](bool is_last, std::uint32_t type, std::uint32_t size) {
    const std::uint32_t h = (is_last ? 1U : 0U) | (type << 1U) | (size << 3U);
    return std::string{static_cast<char>(h), static_cast<char>(h >> 8U),
                       static_cast<char>(h >> 16U)};
  };
  const auto raw = [&](bool is_last, std::string_view b) {
    return bh(is_last, 0, b.size()) + std::string(b);
  };
  const std::string a = random(kSize);
  const std::string_view a1(a.data(), kBlock);
  const std::string_view a2(a.data() + kBlock, kBlock);
  const std::string zs = random(kBlock) + std::string(kBlock, 'z');
  // `good`: the reader takes the frame (zstd decodes it to `content`, checked
  // below); the others are refused, as they were before raw blocks were read
  // in place.
  struct Case {
    std::string what;
    std::string content;
    std::string frame;
    bool good;
  };
  const std::vector<Case> cases = {
      {"two full raw blocks (read in place)", a, header + raw(false, a1) + raw(true, a2), true},
      {"raw blocks of 64 KiB first", a,
       header + raw(false, a1.substr(0, kBlock / 2)) + raw(false, a1.substr(kBlock / 2)) +
           raw(true, a2),
       true},
      {"a full raw block, then two of 64 KiB", a,
       header + raw(false, a1) + raw(false, a2.substr(0, kBlock / 2)) +
           raw(true, a2.substr(kBlock / 2)),
       true},
      {"a full raw block, then an RLE block", zs,
       header + raw(false, std::string_view(zs).substr(0, kBlock)) + bh(true, 1, kBlock) + "z",
       true},
      {"two full raw blocks, then an empty last raw block", a,
       header + raw(false, a1) + raw(false, a2) + raw(true, ""), true},
      {"a raw block over 128 KiB first (zstd takes it)", a,
       header + raw(false, std::string_view(a).substr(0, kBlock + 1)) +
           raw(true, std::string_view(a).substr(kBlock + 1)),
       true},
      {"one raw block of 256 KiB (zstd takes it)", a, header + raw(true, a), true},
      {"the last block not marked last", a, header + raw(false, a1) + raw(false, a2), false},
      {"the first block marked last", a, header + raw(true, a1) + raw(true, a2), false},
      {"a reserved block type", a, header + bh(false, 3, kBlock) + std::string(a1) + raw(true, a2),
       false},
      {"a frame header with a checksum flag", a,
       std::string{'\x28', '\xb5', '\x2f', '\xfd', '\xa4', '\x00', '\x00', '\x04', '\x00'} +
           raw(false, a1) + raw(true, a2),
       false},
      {"a flipped content byte", a,
       header + raw(false, a1) +
           raw(true, std::string(a2.substr(0, 9)) + "!" + std::string(a2.substr(10))),
       false},
      {"content size one short", a, header + raw(false, a1) + raw(true, a2.substr(0, kBlock - 1)),
       false},
  };
  for (const auto& c : cases) {
    if (c.good) {
      std::string out(kSize, '\0');
      const std::size_t n = ZSTD_decompress(out.data(), out.size(), c.frame.data(), c.frame.size());
      ASSERT_EQ(n, kSize) << c.what << ": zstd does not take it";
      ASSERT_TRUE(out == c.content) << c.what << ": zstd decodes it to something else";
    }
    auto j = base;
    j["chunks"][1]["length"] = c.frame.size();
    j["chunks"][1]["sha256"] = sha(c.content);
    j["chunks"][1]["zsha256"] = sha(c.frame);
    j["chunks"][2]["offset"] = j["chunks"][1]["offset"].get<std::uint64_t>() + c.frame.size();
    j["payload"]["sha256"] = sha(whole(c.content));
    const std::uint64_t len0 = base["chunks"][0]["length"];
    const std::uint64_t off2 = base["chunks"][2]["offset"];
    const auto signed_image =
        SignedImage(Dir(), j.dump(), zst.substr(0, len0) + c.frame + zst.substr(off2));
    for (const auto check : {ContentCheck::kEveryChunk, ContentCheck::kDeferCompressed}) {
      const auto o = ReadAll(signed_image, GoodTrust(), {}, check);
      if (c.good) {
        ASSERT_FALSE(o.error) << c.what << ": " << o.error->ToString();
        EXPECT_TRUE(o.payload == whole(c.content)) << c.what;
      } else {
        ASSERT_TRUE(o.error) << c.what << ": accepted";
        EXPECT_TRUE(o.error->code() == Errc::kDecompress ||
                    o.error->code() == Errc::kChunkHashMismatch)
            << c.what << ": " << o.error->ToString();
        EXPECT_EQ(o.chunks, std::vector<std::size_t>{0}) << c.what;
      }
    }
  }
}

}  // namespace
}  // namespace sag::image
