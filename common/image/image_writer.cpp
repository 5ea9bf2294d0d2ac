#include "common/image/image_writer.h"

#include <archive.h>
#include <archive_entry.h>
#include <fcntl.h>
#include <openssl/pem.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zdict.h>
#include <zstd.h>

#include <algorithm>
#include <cerrno>
#include <ctime>
#include <nlohmann/json.hpp>
#include <random>

#include "common/all_zero.h"
#include "common/atomic_file.h"
#include "common/image/delta.h"
#include "common/image/ossl.h"
#include "common/unique_fd.h"

namespace sag::image {

namespace {

using Fd = UniqueFd;

// Removes a temporary file unless released.
class TempFile {
 public:
  explicit TempFile(std::filesystem::path p) : path_(std::move(p)) {}
  ~TempFile() {
    if (!path_.empty()) ::unlink(path_.c_str());
  }
  TempFile(const TempFile&) = delete;
  TempFile& operator=(const TempFile&) = delete;
  [[nodiscard]] const std::filesystem::path& path() const { return path_; }
  void Release() { path_.clear(); }

 private:
  std::filesystem::path path_;
};

std::filesystem::path TempNameFor(const std::filesystem::path& out, std::string_view tag) {
  std::random_device rd;
  const auto dir = out.has_parent_path() ? out.parent_path() : std::filesystem::path(".");
  return dir / ("." + out.filename().string() + "." + std::string(tag) + std::to_string(rd()));
}

Status WriteAll(int fd, std::span<const std::uint8_t> data, const std::string& what) {
  while (!data.empty()) {
    const ssize_t n = ::write(fd, data.data(), data.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return MakeErrno(errno == ENOSPC ? Errc::kNoSpace : Errc::kIo, "write " + what);
    }
    data = data.subspan(static_cast<std::size_t>(n));
  }
  return Ok();
}

// Fills buf completely unless the file ends; returns the bytes read.
Expected<std::size_t> ReadFull(int fd, std::span<std::uint8_t> buf, const std::string& what) {
  std::size_t got = 0;
  while (got < buf.size()) {
    const ssize_t n = ::read(fd, buf.data() + got, buf.size() - got);
    if (n < 0) {
      if (errno == EINTR) continue;
      return MakeErrno(Errc::kIo, "read " + what);
    }
    if (n == 0) break;
    got += static_cast<std::size_t>(n);
  }
  return got;
}

std::string NowIso() {
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

std::time_t ParseIso(const std::string& s) {
  std::tm tm{};
  if (strptime(s.c_str(), "%Y-%m-%dT%H:%M:%SZ", &tm) == nullptr) return 0;
  return timegm(&tm);
}

Expected<ossl::X509StackPtr> LoadChain(const std::filesystem::path& path) {
  ossl::X509StackPtr stack(sk_X509_new_null());
  if (path.empty()) return stack;
  SAG_TRY(const auto pem, ReadFile(path, 1U << 20U));
  ossl::BioPtr bio = ossl::MemBio(pem);
  while (X509* c = PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr)) {
    sk_X509_push(stack.get(), c);
  }
  ERR_clear_error();  // the loop ends on "no start line"
  if (sk_X509_num(stack.get()) == 0) {
    return Error(Errc::kKeyInvalid, "chain " + path.string() + " holds no PEM certificate");
  }
  return stack;
}

class ArchiveWriter {
 public:
  ArchiveWriter() : a_(archive_write_new()) {}
  ~ArchiveWriter() { archive_write_free(a_); }
  ArchiveWriter(const ArchiveWriter&) = delete;
  ArchiveWriter& operator=(const ArchiveWriter&) = delete;

  Status Open(int fd) {
    // ustar: fixed 512-byte headers, so the payload offset is a function of
    // the manifest and signature sizes. No padding after the two
    // end-of-archive blocks: the reader checks the end exactly.
    if (archive_write_set_format_ustar(a_) != ARCHIVE_OK ||
        archive_write_add_filter_none(a_) != ARCHIVE_OK ||
        archive_write_set_bytes_in_last_block(a_, 1) != ARCHIVE_OK ||
        archive_write_open_fd(a_, fd) != ARCHIVE_OK) {
      return Fail("opening the archive");
    }
    return Ok();
  }

  Status Begin(std::string_view name, std::uint64_t size, std::time_t mtime) {
    archive_entry* e = archive_entry_new();
    archive_entry_set_pathname(e, std::string(name).c_str());
    archive_entry_set_size(e, static_cast<la_int64_t>(size));
    archive_entry_set_filetype(e, AE_IFREG);
    archive_entry_set_perm(e, 0644);
    archive_entry_set_mtime(e, mtime, 0);
    const int r = archive_write_header(a_, e);
    archive_entry_free(e);
    if (r != ARCHIVE_OK) return Fail("writing the header of " + std::string(name));
    return Ok();
  }

  Status Data(std::span<const std::uint8_t> data) {
    while (!data.empty()) {
      const la_ssize_t n = archive_write_data(a_, data.data(), data.size());
      if (n <= 0) return Fail("writing entry data");
      data = data.subspan(static_cast<std::size_t>(n));
    }
    return Ok();
  }

  Status Close() {
    if (archive_write_close(a_) != ARCHIVE_OK) return Fail("closing the archive");
    return Ok();
  }

 private:
  Error Fail(const std::string& what) {
    const char* msg = archive_error_string(a_);
    return {Errc::kIo, what + ": " + (msg != nullptr ? msg : "libarchive error")};
  }
  archive* a_;
};

std::span<const std::uint8_t> Bytes(std::string_view s) {
  return {reinterpret_cast<const std::uint8_t*>(s.data()), s.size()};
}

constexpr std::uint64_t kUstarMaxSize = 077777777777ULL;  // 11 octal digits

Status WriteContainerAt(int out_fd, const std::string& out_name, std::string_view manifest_json,
                        std::string_view signature_der, int zst_fd, std::uint64_t zst_size,
                        std::time_t mtime) {
  if (zst_size > kUstarMaxSize) {
    return Error(Errc::kImageTooLarge, "payload.zst of " + std::to_string(zst_size) +
                                           " bytes exceeds ustar's 8 GiB entry limit");
  }
  ArchiveWriter w;
  SAG_TRY_STATUS(w.Open(out_fd));
  SAG_TRY_STATUS(w.Begin(kManifestName, manifest_json.size(), mtime));
  SAG_TRY_STATUS(w.Data(Bytes(manifest_json)));
  SAG_TRY_STATUS(w.Begin(kSignatureName, signature_der.size(), mtime));
  SAG_TRY_STATUS(w.Data(Bytes(signature_der)));
  SAG_TRY_STATUS(w.Begin(kPayloadName, zst_size, mtime));
  std::vector<std::uint8_t> buf(1U << 20U);
  std::uint64_t left = zst_size;
  while (left > 0) {
    SAG_TRY(const auto n,
            ReadFull(zst_fd, std::span(buf).first(std::min<std::uint64_t>(left, buf.size())),
                     "payload.zst"));
    if (n == 0) return Error(Errc::kIo, "payload.zst shrank while writing " + out_name);
    SAG_TRY_STATUS(w.Data(std::span(buf).first(n)));
    left -= n;
  }
  return w.Close();
}

// fsync, close, rename over the target, fsync the directory.
Status Commit(Fd& fd, TempFile& tmp, const std::filesystem::path& output) {
  if (::fsync(fd.get()) != 0) return MakeErrno(Errc::kIo, "fsync " + tmp.path().string());
  if (::close(fd.release()) != 0) return MakeErrno(Errc::kIo, "close " + tmp.path().string());
  if (::rename(tmp.path().c_str(), output.c_str()) != 0) {
    return MakeErrno(Errc::kIo, "rename to " + output.string());
  }
  tmp.Release();
  return FsyncDir(output.has_parent_path() ? output.parent_path() : ".");
}

}  // namespace

Expected<std::string> SignManifest(std::string_view content, const std::filesystem::path& key,
                                   const std::filesystem::path& cert,
                                   const std::filesystem::path& chain) {
  ERR_clear_error();
  SAG_TRY(const auto key_pem, ReadFile(key, 1U << 20U));
  SAG_TRY(const auto cert_pem, ReadFile(cert, 1U << 20U));
  auto kb = ossl::MemBio(key_pem);
  ossl::PkeyPtr pkey(PEM_read_bio_PrivateKey(kb.get(), nullptr, nullptr, nullptr));
  if (!pkey)
    return ossl::Fail(Errc::kKeyInvalid, "key " + key.string() + " is not a PEM private key");
  auto cb = ossl::MemBio(cert_pem);
  ossl::X509Ptr x(PEM_read_bio_X509(cb.get(), nullptr, nullptr, nullptr));
  if (!x) return ossl::Fail(Errc::kKeyInvalid, "certificate " + cert.string() + " is not PEM");
  if (X509_check_private_key(x.get(), pkey.get()) != 1) {
    return ossl::Fail(Errc::kKeyInvalid,
                      "key " + key.string() + " does not belong to " + cert.string());
  }
  SAG_TRY(auto loaded, LoadChain(chain));
  // A chain file may start with the signer itself (NAME-chain.pem does).
  ossl::X509StackPtr certs(sk_X509_new_null());
  while (sk_X509_num(loaded.get()) > 0) {
    X509* c = sk_X509_shift(loaded.get());
    if (X509_cmp(c, x.get()) == 0) {
      X509_free(c);
    } else {
      sk_X509_push(certs.get(), c);
    }
  }
  auto data = ossl::MemBio(content);
  ossl::CmsPtr cms(CMS_sign(x.get(), pkey.get(), certs.get(), data.get(),
                            CMS_BINARY | CMS_DETACHED | CMS_NOSMIMECAP));
  if (!cms) return ossl::Fail(Errc::kKeyInvalid, "CMS_sign failed");
  // Half of all ECDSA signatures come out with s > n/2; the reader takes
  // only s <= n/2 (one signature per manifest), so such an s becomes n - s,
  // which verifies the same.
  if (EVP_PKEY_get_base_id(pkey.get()) == EVP_PKEY_EC) {
    SAG_TRY_STATUS(ossl::HighS(sk_CMS_SignerInfo_value(CMS_get0_SignerInfos(cms.get()), 0),
                               pkey.get(),
                               /*make_low=*/true));
  }
  ossl::BioPtr out(BIO_new(BIO_s_mem()));
  if (i2d_CMS_bio(out.get(), cms.get()) != 1) return ossl::Fail(Errc::kInternal, "encoding CMS");
  return ossl::BioText(out.get());
}

Status WriteContainer(const std::filesystem::path& output, std::string_view manifest_json,
                      std::string_view signature_der, const std::filesystem::path& payload_zst) {
  Fd zst(::open(payload_zst.c_str(), O_RDONLY | O_CLOEXEC));
  if (zst.get() < 0) return MakeErrno(Errc::kIo, "open " + payload_zst.string());
  struct stat st {};
  if (::fstat(zst.get(), &st) != 0) return MakeErrno(Errc::kIo, "stat " + payload_zst.string());
  TempFile tmp(TempNameFor(output, "tmp"));
  Fd out(::open(tmp.path().c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644));
  if (out.get() < 0) return MakeErrno(Errc::kIo, "create " + tmp.path().string());
  // The entries' mtime is the manifest's build_time, as CreateImage writes
  // it (0 for a manifest without one: tests build broken images here).
  std::time_t mtime = 0;
  if (const auto j = nlohmann::json::parse(manifest_json, nullptr, false);
      j.is_object() && j.contains("build_time") && j["build_time"].is_string()) {
    mtime = ParseIso(j["build_time"].get<std::string>());
  }
  SAG_TRY_STATUS(WriteContainerAt(out.get(), output.string(), manifest_json, signature_der,
                                  zst.get(), static_cast<std::uint64_t>(st.st_size), mtime));
  return Commit(out, tmp, output);
}

namespace {

// The reader takes only single-segment frames (content size known, no
// window descriptor): zstd writes one only when its window covers the
// frame, which levels choose smaller than a large frame (level 1 has
// 512 KiB, level 3 2 MiB). So the window is set to cover the frame.
void CoverFrameWithWindow(ZSTD_CCtx* cctx, std::uint64_t frame_size) {
  const ZSTD_bounds bounds = ZSTD_cParam_getBounds(ZSTD_c_windowLog);
  int log = bounds.lowerBound;
  while (log < bounds.upperBound && (std::uint64_t{1} << static_cast<unsigned>(log)) < frame_size) {
    ++log;
  }
  ZSTD_CCtx_setParameter(cctx, ZSTD_c_windowLog, log);
}

// Format 4's dictionary: trained (ZDICT_trainFromBuffer) on an even sample of
// the payload's non-zero frames, at most kSampleBudget bytes of them. If
// training fails (too few samples: a tiny payload) the samples themselves
// become a raw-content dictionary. Empty: no dictionary (no non-zero frame,
// or none asked for).
Expected<std::vector<std::uint8_t>> TrainDictionary(int fd, const CreateParams& p) {
  std::vector<std::uint8_t> dict;
  if (p.dict_bytes == 0) return dict;
  constexpr std::uint64_t kSampleBudget = 16U << 20U;
  std::vector<std::uint8_t> raw(p.chunk_size);
  const auto frames = [&](const auto& each) -> Status {
    if (::lseek(fd, 0, SEEK_SET) != 0) return MakeErrno(Errc::kIo, "rewind the payload");
    for (;;) {
      SAG_TRY(const auto n, ReadFull(fd, raw, p.payload.string()));
      if (n == 0) break;
      const auto data = std::span<const std::uint8_t>(raw).first(n);
      if (!AllZero(data)) each(data);
      if (n < raw.size()) break;
    }
    return Ok();
  };
  std::uint64_t nonzero = 0;
  SAG_TRY_STATUS(frames([&](std::span<const std::uint8_t>) { ++nonzero; }));
  if (nonzero == 0) return dict;
  const std::uint64_t stride =
      std::max<std::uint64_t>(1, (nonzero * p.chunk_size + kSampleBudget - 1) / kSampleBudget);
  std::vector<std::uint8_t> samples;
  std::vector<std::size_t> sizes;
  std::uint64_t k = 0;
  SAG_TRY_STATUS(frames([&](std::span<const std::uint8_t> data) {
    if (k++ % stride != 0) return;
    samples.insert(samples.end(), data.begin(), data.end());
    sizes.push_back(data.size());
  }));
  dict.resize(p.dict_bytes);
  const std::size_t n = ZDICT_trainFromBuffer(dict.data(), dict.size(), samples.data(),
                                              sizes.data(), static_cast<unsigned>(sizes.size()));
  if (ZDICT_isError(n) != 0U) {
    dict.assign(samples.begin(),
                samples.begin() + static_cast<std::ptrdiff_t>(
                                      std::min<std::size_t>(samples.size(), p.dict_bytes)));
  } else {
    dict.resize(n);
  }
  return dict;
}

// Appends the reuse index of `block_hashes` to payload.zst at `offset` (after
// the last frame) and records it in the manifest; returns the new end.
Expected<std::uint64_t> AppendReuseIndex(const Fd& zst, const TempFile& zst_tmp,
                                         const std::vector<BlockHash>& block_hashes, int level,
                                         std::uint64_t hash_bytes, std::uint64_t offset,
                                         Manifest& m) {
  SAG_TRY(const auto stored, EncodeReuseIndex(block_hashes, level, hash_bytes));
  SAG_TRY_STATUS(WriteAll(zst.get(), Bytes(stored), zst_tmp.path().string()));
  m.reuse = ReuseIndexInfo{kReuseBlockSize,
                           hash_bytes,
                           offset,
                           stored.size(),
                           block_hashes.size() * hash_bytes,
                           Sha256::Of(std::string_view(stored))};
  return offset + stored.size();
}

// Pass 2: the manifest, checked by the reader's own parser before it is
// signed, the signature and payload.zst (its first `payload_size` bytes) in
// the container, committed to p.output.
Status SignAndWrite(const CreateParams& p, const Limits& limits, const Manifest& m, Fd& zst,
                    std::uint64_t payload_size) {
  const std::string json = SerializeManifest(m);
  if (auto check = ParseManifest(json, limits); !check) {
    return Error(Errc::kInvalidArgument, check.error().message());
  }
  SAG_TRY(const auto sig, SignManifest(json, p.key, p.cert, p.chain));
  if (::lseek(zst.get(), 0, SEEK_SET) != 0) return MakeErrno(Errc::kIo, "rewind payload.zst");
  TempFile out_tmp(TempNameFor(p.output, "tmp"));
  Fd out(::open(out_tmp.path().c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644));
  if (out.get() < 0) return MakeErrno(Errc::kIo, "create " + out_tmp.path().string());
  SAG_TRY_STATUS(WriteContainerAt(out.get(), p.output.string(), json, sig, zst.get(), payload_size,
                                  ParseIso(m.build_time)));
  return Commit(out, out_tmp, p.output);
}

// Format 4 (docs/delta.md, "Format 4"): the dictionary as a skippable frame at
// the start of payload.zst, then every frame compressed alone with it (no
// dictionary ID in the frame: the manifest names the dictionary), the
// content hashed per group of group_frames frames, then the reuse index.
Status CreateGrouped(const CreateParams& p, const Limits& limits, UniqueFd in, Manifest m) {
  m.frame_size = p.chunk_size;
  m.group_frames = p.group_frames;
  m.chunk_size = p.chunk_size * p.group_frames;
  SAG_TRY(const auto dict, TrainDictionary(in.get(), p));
  if (::lseek(in.get(), 0, SEEK_SET) != 0) return MakeErrno(Errc::kIo, "rewind the payload");

  TempFile zst_tmp(TempNameFor(p.output, "zst"));
  Fd zst(::open(zst_tmp.path().c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
  if (zst.get() < 0) return MakeErrno(Errc::kIo, "create " + zst_tmp.path().string());
  std::uint64_t offset = 0;
  std::unique_ptr<ZSTD_CDict, decltype(&ZSTD_freeCDict)> cdict(nullptr, ZSTD_freeCDict);
  if (!dict.empty()) {
    std::string stored;
    const auto put32 = [&stored](std::uint32_t v) {
      for (unsigned shift = 0; shift < 32; shift += 8) {
        stored.push_back(static_cast<char>((v >> shift) & 0xFFU));
      }
    };
    put32(kDictMagic);
    put32(static_cast<std::uint32_t>(dict.size()));
    stored.append(reinterpret_cast<const char*>(dict.data()), dict.size());
    SAG_TRY_STATUS(WriteAll(zst.get(), Bytes(stored), zst_tmp.path().string()));
    m.dict = DictInfo{0, stored.size(), Sha256::Of(std::string_view(stored))};
    offset = stored.size();
    cdict.reset(ZSTD_createCDict(dict.data(), dict.size(), p.zstd_level));
    if (!cdict) return Error(Errc::kInternal, "zstd could not load the trained dictionary");
  }
  std::unique_ptr<ZSTD_CCtx, decltype(&ZSTD_freeCCtx)> cctx(ZSTD_createCCtx(), ZSTD_freeCCtx);
  ZSTD_CCtx_setParameter(cctx.get(), ZSTD_c_compressionLevel, p.zstd_level);
  ZSTD_CCtx_setParameter(cctx.get(), ZSTD_c_checksumFlag, 0);
  ZSTD_CCtx_setParameter(cctx.get(), ZSTD_c_contentSizeFlag, 1);
  CoverFrameWithWindow(cctx.get(), p.chunk_size);
  // No dictionary ID in the frames: the reader's frame check requires none,
  // and the signed manifest says which dictionary (4 bytes a frame saved).
  ZSTD_CCtx_setParameter(cctx.get(), ZSTD_c_dictIDFlag, 0);
  if (cdict) ZSTD_CCtx_refCDict(cctx.get(), cdict.get());
  std::vector<std::uint8_t> raw(p.chunk_size);
  std::vector<std::uint8_t> packed(ZSTD_compressBound(p.chunk_size));
  Sha256 whole;
  Sha256 frames_stored;
  Sha256 group_sha;
  std::vector<BlockHash> block_hashes;
  Chunk group{offset, 0, 0, {}, {}};
  std::uint64_t in_group = 0;
  const auto close_group = [&] {
    group.sha256 = group_sha.Final();
    group_sha = Sha256();
    m.chunks.push_back(group);
    group = Chunk{offset, 0, 0, {}, {}};
    in_group = 0;
  };
  for (;;) {
    SAG_TRY(const auto n, ReadFull(in.get(), raw, p.payload.string()));
    if (n == 0) break;
    const auto data = std::span<const std::uint8_t>(raw).first(n);
    const std::size_t z =
        ZSTD_compress2(cctx.get(), packed.data(), packed.size(), data.data(), data.size());
    if (ZSTD_isError(z) != 0U) {
      return Error(Errc::kInternal,
                   std::string("zstd compression failed: ") + ZSTD_getErrorName(z));
    }
    SAG_TRY_STATUS(WriteAll(zst.get(), std::span(packed).first(z), zst_tmp.path().string()));
    whole.Update(data);
    group_sha.Update(data);
    frames_stored.Update(std::span(packed).first(z));
    for (std::size_t at = 0; at < n; at += kReuseBlockSize) {
      block_hashes.push_back(
          HashBlock(data.subspan(at, std::min<std::size_t>(kReuseBlockSize, n - at))));
    }
    m.frame_lengths.push_back(static_cast<std::uint32_t>(z));
    offset += z;
    group.length += z;
    group.size += n;
    m.payload_size += n;
    if (++in_group == p.group_frames) close_group();
    if (m.frame_lengths.size() > limits.max_chunks || m.payload_size > limits.max_payload_bytes) {
      return Error(Errc::kImageTooLarge, "payload " + p.payload.string() + " exceeds the limits");
    }
    if (n < raw.size()) break;
  }
  if (in_group > 0) close_group();
  if (m.chunks.empty()) return Error(Errc::kInvalidArgument, "empty payload " + p.payload.string());
  m.payload_sha256 = whole.Final();
  m.frames_zsha256 = frames_stored.Final();
  SAG_TRY(offset,
          AppendReuseIndex(zst, zst_tmp, block_hashes, p.zstd_level, kCompactHashBytes, offset, m));
  return SignAndWrite(p, limits, m, zst, offset);
}

}  // namespace

Status CreateImage(const CreateParams& p, const Limits& limits) {
  const auto bad = [](const std::string& what) { return Error(Errc::kInvalidArgument, what); };
  if (p.output.empty()) return bad("no output file given");
  if (p.chunk_size < limits.min_chunk_size || p.chunk_size > limits.max_chunk_size) {
    return bad("chunk size " + std::to_string(p.chunk_size) + " outside [" +
               std::to_string(limits.min_chunk_size) + ", " +
               std::to_string(limits.max_chunk_size) + "]");
  }
  if (p.format != kFormatVersion && p.format != kFormatDelta && p.format != kFormatCompact &&
      p.format != kFormatGrouped) {
    return bad("format " + std::to_string(p.format) + " is not " + std::to_string(kFormatVersion) +
               ", " + std::to_string(kFormatDelta) + ", " + std::to_string(kFormatCompact) +
               " or " + std::to_string(kFormatGrouped));
  }
  const bool grouped = p.format == kFormatGrouped;
  const bool delta = p.format == kFormatDelta || p.format == kFormatCompact || grouped;
  const std::uint64_t hash_bytes = p.format == kFormatDelta ? kReuseHashBytes : kCompactHashBytes;
  if (grouped && (p.group_frames == 0 || p.group_frames > kMaxGroupFrames ||
                  p.chunk_size > limits.max_chunk_size / p.group_frames)) {
    return bad("groups of " + std::to_string(p.group_frames) + " frames of " +
               std::to_string(p.chunk_size) + " bytes: 1 to " + std::to_string(kMaxGroupFrames) +
               " frames, at most " + std::to_string(limits.max_chunk_size) + " bytes a group");
  }
  if (grouped && p.dict_bytes > kMaxDictBytes) {
    return bad("dictionary of " + std::to_string(p.dict_bytes) + " bytes (at most " +
               std::to_string(kMaxDictBytes) + ")");
  }
  if (delta && p.chunk_size % kReuseBlockSize != 0) {
    return bad("frame size " + std::to_string(p.chunk_size) + " is not a multiple of " +
               std::to_string(kReuseBlockSize) + " (the reuse index's block size)");
  }
  if (p.zstd_level < 1 || p.zstd_level > ZSTD_maxCLevel()) {
    return bad("zstd level " + std::to_string(p.zstd_level) + " outside [1, " +
               std::to_string(ZSTD_maxCLevel()) + "]");
  }
  Fd in(::open(p.payload.c_str(), O_RDONLY | O_CLOEXEC));
  if (in.get() < 0) {
    return MakeErrno(errno == ENOENT ? Errc::kNotFound : Errc::kIo,
                     "open payload " + p.payload.string());
  }
  ::posix_fadvise(in.get(), 0, 0, POSIX_FADV_SEQUENTIAL);

  Manifest m;
  m.format = p.format;
  m.type = p.type;
  m.version = p.version;
  m.compatible = p.compatible;
  m.build_time = p.build_time.value_or(NowIso());
  m.chunk_size = p.chunk_size;

  if (grouped) return CreateGrouped(p, limits, std::move(in), std::move(m));

  // Pass 1: compress chunk by chunk into a temporary payload.zst.
  TempFile zst_tmp(TempNameFor(p.output, "zst"));
  Fd zst(::open(zst_tmp.path().c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
  if (zst.get() < 0) return MakeErrno(Errc::kIo, "create " + zst_tmp.path().string());
  std::unique_ptr<ZSTD_CCtx, decltype(&ZSTD_freeCCtx)> cctx(ZSTD_createCCtx(), ZSTD_freeCCtx);
  ZSTD_CCtx_setParameter(cctx.get(), ZSTD_c_compressionLevel, p.zstd_level);
  ZSTD_CCtx_setParameter(cctx.get(), ZSTD_c_checksumFlag, 0);
  ZSTD_CCtx_setParameter(cctx.get(), ZSTD_c_contentSizeFlag, 1);
  CoverFrameWithWindow(cctx.get(), p.chunk_size);
  std::vector<std::uint8_t> raw(p.chunk_size);
  std::vector<std::uint8_t> packed(ZSTD_compressBound(p.chunk_size));
  Sha256 whole;
  Sha256 frames_stored;                 // format 3: payload.zsha256
  std::vector<BlockHash> block_hashes;  // formats 2 and 3: one per 4 KiB of payload
  std::uint64_t offset = 0;
  for (;;) {
    SAG_TRY(const auto n, ReadFull(in.get(), raw, p.payload.string()));
    if (n == 0) break;
    const auto data = std::span<const std::uint8_t>(raw).first(n);
    const std::size_t z =
        ZSTD_compress2(cctx.get(), packed.data(), packed.size(), data.data(), data.size());
    if (ZSTD_isError(z) != 0U) {
      return Error(Errc::kInternal,
                   std::string("zstd compression failed: ") + ZSTD_getErrorName(z));
    }
    SAG_TRY_STATUS(WriteAll(zst.get(), std::span(packed).first(z), zst_tmp.path().string()));
    whole.Update(data);
    frames_stored.Update(std::span(packed).first(z));
    if (delta) {
      for (std::size_t at = 0; at < n; at += kReuseBlockSize) {
        block_hashes.push_back(
            HashBlock(data.subspan(at, std::min<std::size_t>(kReuseBlockSize, n - at))));
      }
    }
    m.chunks.push_back(
        Chunk{offset, z, n, Sha256::Of(data), Sha256::Of(std::span(packed).first(z))});
    offset += z;
    m.payload_size += n;
    if (m.chunks.size() > limits.max_chunks || m.payload_size > limits.max_payload_bytes) {
      return Error(Errc::kImageTooLarge, "payload " + p.payload.string() + " exceeds the limits");
    }
    if (n < raw.size()) break;
  }
  m.payload_sha256 = whole.Final();
  if (p.format == kFormatCompact) {
    m.frames_zsha256 = frames_stored.Final();
    for (auto& c : m.chunks) c.zsha256 = Digest{};  // not in format 3's table
  }
  if (delta && !m.chunks.empty()) {
    // The reuse index goes after the last frame, inside payload.zst.
    SAG_TRY(offset,
            AppendReuseIndex(zst, zst_tmp, block_hashes, p.zstd_level, hash_bytes, offset, m));
  }
  return SignAndWrite(p, limits, m, zst, offset);
}

}  // namespace sag::image
