// sag-image: build, sign, verify, inspect and extract signed images, and make
// a development PKI. See docs/image-format.md.
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/atomic_file.h"
#include "common/error.h"
#include "common/image/delta.h"
#include "common/image/image.h"
#include "common/image/image_writer.h"
#include "common/image/pki.h"
#include "common/sha256.h"

namespace {

using namespace sag;         // NOLINT(google-build-using-namespace)
using namespace sag::image;  // NOLINT(google-build-using-namespace)

constexpr const char* kUsage = R"(usage:
  sag-image create --type Device|Dpi --version V --compatible MODEL [--compatible MODEL...]
                   --payload FILE --key KEY.pem --cert CERT.pem [--chain CHAIN.pem]
                   [--chunk-size BYTES] [--level N] [--build-time YYYY-MM-DDTHH:MM:SSZ] --output FILE
                   [--format 1|2|3|4] [--frame-size BYTES]   (formats 2-4: delta-ready, docs/delta.md)
                   [--group-frames N] [--dict-size BYTES]   (format 4: frames per SHA-256, dictionary)
  sag-image verify --ca ROOT.pem [--now EPOCH] FILE
  sag-image inspect FILE [--json]
  sag-image delta-plan --ca ROOT.pem [--now EPOCH] FILE --local SOURCE [--local SOURCE...]
                   [--max-gap BYTES] [--max-request BYTES] [--no-zero-blocks] [--json]
  sag-image extract --ca ROOT.pem [--now EPOCH] FILE --output PAYLOAD
  sag-image pki init DIR [--device SERIAL...]
  sag-image pki signer DIR NAME [--flaw none|expired|not-yet-valid|no-codesign|other-root]
Exit status: 0 success, 1 failure (the message names the code, e.g. E205), 2 usage.
)";

struct Args {
  std::vector<std::string> positional;
  std::multimap<std::string, std::string> options;
  std::vector<std::string> flags;

  [[nodiscard]] std::string Get(const std::string& k) const {
    auto it = options.find(k);
    return it == options.end() ? std::string() : it->second;
  }
  [[nodiscard]] std::vector<std::string> All(const std::string& k) const {
    std::vector<std::string> out;
    for (auto [it, end] = options.equal_range(k); it != end; ++it) out.push_back(it->second);
    return out;
  }
  [[nodiscard]] bool Has(const std::string& flag) const {
    return std::find(flags.begin(), flags.end(), flag) != flags.end();
  }
};

// --name VALUE options; names in `bool_flags` take no value.
Expected<Args> ParseArgs(int argc, char** argv, int first,
                         const std::vector<std::string>& bool_flags) {
  Args a;
  for (int i = first; i < argc; ++i) {
    std::string s = argv[i];
    if (s.starts_with("--")) {
      const auto name = s.substr(2);
      if (std::find(bool_flags.begin(), bool_flags.end(), name) != bool_flags.end()) {
        a.flags.push_back(name);
        continue;
      }
      if (i + 1 >= argc) return Error(Errc::kInvalidArgument, s + " needs a value");
      a.options.emplace(name, argv[++i]);
    } else {
      a.positional.push_back(s);
    }
  }
  return a;
}

int Fail(const Error& e) {
  std::cerr << "sag-image: " << e.ToString() << "\n";
  return 1;
}

int Usage(const std::string& why) {
  std::cerr << "sag-image: " << why << "\n" << kUsage;
  return 2;
}

Expected<std::uint64_t> ParseU64(const std::string& s, const std::string& what) {
  try {
    std::size_t pos = 0;
    const auto v = std::stoull(s, &pos);
    if (pos == s.size() && !s.empty() && s[0] != '-') return static_cast<std::uint64_t>(v);
  } catch (const std::exception&) {  // NOLINT(bugprone-empty-catch)
  }
  return Error(Errc::kInvalidArgument, what + " must be a non-negative number, got '" + s + "'");
}

Expected<Trust> TrustFrom(const Args& a) {
  Trust t;
  t.root_ca = a.Get("ca");
  if (t.root_ca.empty()) return Error(Errc::kInvalidArgument, "--ca ROOT.pem is required");
  if (const auto now = a.Get("now"); !now.empty()) {
    SAG_TRY(const auto v, ParseU64(now, "--now"));
    t.now = static_cast<std::time_t>(v);
  }
  return t;
}

long PeakRssKib() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_maxrss;
}

int Create(const Args& a) {
  CreateParams p;
  const auto type = a.Get("type");
  if (type == "Device") {
    p.type = ImageType::kDevice;
  } else if (type == "Dpi") {
    p.type = ImageType::kDpi;
  } else {
    return Usage("--type must be Device or Dpi");
  }
  p.version = a.Get("version");
  p.compatible = a.All("compatible");
  p.payload = a.Get("payload");
  p.key = a.Get("key");
  p.cert = a.Get("cert");
  p.chain = a.Get("chain");
  p.output = a.Get("output");
  if (p.version.empty() || p.compatible.empty() || p.payload.empty() || p.key.empty() ||
      p.cert.empty() || p.output.empty()) {
    return Usage("create needs --version, --compatible, --payload, --key, --cert and --output");
  }
  // Format 1 stays the default: agents that predate format 2 refuse it
  // (ManifestVersion), so a fleet moves to it only once its agents read it.
  const auto fs = a.Get("frame-size");
  if (const auto f = a.Get("format"); !f.empty()) {
    auto v = ParseU64(f, "--format");
    if (!v) return Fail(v.error());
    p.format = static_cast<int>(std::min<std::uint64_t>(*v, 1000));
  } else if (!fs.empty()) {
    p.format = kFormatGrouped;  // the newest delta format
  }
  const bool delta =
      p.format == kFormatDelta || p.format == kFormatCompact || p.format == kFormatGrouped;
  if (delta) {
    p.chunk_size = p.format == kFormatGrouped   ? kDefaultGroupedFrameSize
                   : p.format == kFormatCompact ? kDefaultCompactFrameSize
                                                : kDefaultFrameSize;
    p.zstd_level = kDefaultFrameLevel;  // small frames need it (docs/delta.md); slower builds
  }
  for (const auto& [name, field] :
       {std::pair{"group-frames", &p.group_frames}, std::pair{"dict-size", &p.dict_bytes}}) {
    const auto v = a.Get(name);
    if (v.empty()) continue;
    if (p.format != kFormatGrouped) return Usage(std::string("--") + name + " needs --format 4");
    auto n = ParseU64(v, (std::string("--") + name).c_str());
    if (!n) return Fail(n.error());
    *field = *n;
  }
  const auto cs = a.Get("chunk-size");
  if (!cs.empty() && !fs.empty()) return Usage("give --chunk-size or --frame-size, not both");
  if (!fs.empty() && !delta) return Usage("--frame-size needs --format 2, 3 or 4");
  if (!cs.empty() || !fs.empty()) {
    auto v = ParseU64(cs.empty() ? fs : cs, cs.empty() ? "--frame-size" : "--chunk-size");
    if (!v) return Fail(v.error());
    p.chunk_size = *v;
  }
  if (const auto lvl = a.Get("level"); !lvl.empty()) {
    auto v = ParseU64(lvl, "--level");
    if (!v) return Fail(v.error());
    p.zstd_level = static_cast<int>(*v);
  }
  if (const auto bt = a.Get("build-time"); !bt.empty()) p.build_time = bt;
  if (auto st = CreateImage(p); !st) return Fail(st.error());
  std::cout << "created " << p.output.string() << "\n";
  return 0;
}

// Reads the whole image through the verifying reader; `sink` gets each chunk.
template <typename Sink>
Expected<const VerifiedHeader*> VerifyStream(ImageReader& reader, Sink&& sink) {
  SAG_TRY(const auto* header, reader.ReadHeader());
  for (;;) {
    SAG_TRY(auto chunk, reader.NextChunk());
    if (!chunk) break;
    SAG_TRY_STATUS(sink(*chunk));
  }
  return header;
}

int Verify(const Args& a) {
  if (a.positional.size() != 1) return Usage("verify takes one FILE");
  auto trust = TrustFrom(a);
  if (!trust) return Fail(trust.error());
  auto src = FileSource::Open(a.positional[0]);
  if (!src) return Fail(src.error());
  const auto start = std::chrono::steady_clock::now();
  ImageReader reader(**src, *trust);
  auto header = VerifyStream(reader, [](const ChunkView&) { return Ok(); });
  if (!header) return Fail(header.error());
  const double secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const auto& m = (*header)->manifest;
  std::string reuse;
  if (m.reuse) {
    // The reader checked the stored index's signed hash; this also checks
    // that it decodes to one hash per block.
    auto index = ReadReuseIndex(a.positional[0], **header);
    if (!index) return Fail(index.error());
    reuse = " (format " + std::to_string(m.format) + ", reuse index of " +
            std::to_string(index->size()) + " blocks)";
  }
  const double mib = static_cast<double>(m.payload_size) / (1024.0 * 1024.0);
  std::printf(
      "OK %s: %s %s, %zu %s%s, %.1f MiB verified in %.3f s (%.0f MiB/s), peak RSS %ld "
      "KiB\n"
      "signer: %s\n",
      a.positional[0].c_str(), std::string(ImageTypeName(m.type)).c_str(), m.version.c_str(),
      FrameCount(m), m.reuse ? "frames" : "chunks", reuse.c_str(), mib, secs,
      secs > 0 ? mib / secs : 0.0, PeakRssKib(), (*header)->signer.subject.c_str());
  return 0;
}

int Inspect(const Args& a) {
  if (a.positional.size() != 1) return Usage("inspect takes one FILE");
  auto src = FileSource::Open(a.positional[0]);
  if (!src) return Fail(src.error());
  auto h = ReadUnverifiedHeader(**src);
  if (!h) return Fail(h.error());
  auto m = ParseManifest(h->manifest_json);
  if (!m) return Fail(m.error());
  const auto signer = SignerSubjectUnverified(h->signature_der);
  const std::string subject = signer ? *signer : "(unreadable: " + signer.error().message() + ")";
  const auto total =
      ContainerSize(h->manifest_json.size(), h->signature_der.size(), h->payload_stored_size);
  const double ratio =
      h->payload_stored_size == 0
          ? 0.0
          : static_cast<double>(m->payload_size) / static_cast<double>(h->payload_stored_size);
  if (a.Has("json")) {
    nlohmann::json j;
    j["manifest"] = nlohmann::json::parse(h->manifest_json);
    j["manifest"].erase("chunks");
    j["manifest"].erase("frames");
    j["chunks"] = m->chunks.size();
    j["format"] = m->format;
    j["signer"] = subject;
    j["verified"] = false;
    j["payload_offset"] = h->payload_offset;
    j["payload_stored_size"] = h->payload_stored_size;
    j["container_size"] = total;
    j["compression_ratio"] = ratio;
    std::cout << j.dump(2) << "\n";
    return 0;
  }
  std::cout << "image:        " << a.positional[0] << " (NOT verified; use sag-image verify)\n"
            << "type:         " << ImageTypeName(m->type) << "\n"
            << "version:      " << m->version << "\n"
            << "compatible:   ";
  for (std::size_t i = 0; i < m->compatible.size(); ++i) {
    std::cout << (i != 0 ? ", " : "") << m->compatible[i];
  }
  std::printf(
      "\nbuild time:   %s\nsigner:       %s\npayload:      %llu bytes, sha256 %s\n"
      "chunks:       %zu of %llu bytes, zstd\nstored:       %llu bytes at offset %llu "
      "(ratio %.2f)\ncontainer:    %llu bytes\n",
      m->build_time.c_str(), subject.c_str(), static_cast<unsigned long long>(m->payload_size),
      ToHex(m->payload_sha256).c_str(), m->chunks.size(),
      static_cast<unsigned long long>(m->chunk_size),
      static_cast<unsigned long long>(h->payload_stored_size),
      static_cast<unsigned long long>(h->payload_offset), ratio,
      static_cast<unsigned long long>(total));
  if (m->reuse) {
    std::printf(
        "format:       %d (frames of %llu bytes)\nreuse index:  %llu hashes of %llu bytes "
        "per %llu-byte block, stored in %llu bytes at payload offset %llu\n",
        m->format,
        static_cast<unsigned long long>(m->frame_lengths.empty() ? m->chunk_size : m->frame_size),
        static_cast<unsigned long long>(m->reuse->size / m->reuse->hash_bytes),
        static_cast<unsigned long long>(m->reuse->hash_bytes),
        static_cast<unsigned long long>(m->reuse->block_size),
        static_cast<unsigned long long>(m->reuse->length),
        static_cast<unsigned long long>(m->reuse->offset));
    if (!m->frame_lengths.empty()) {
      std::printf("groups:       %zu of %llu frames, one SHA-256 each\ndictionary:   %llu bytes\n",
                  m->chunks.size(), static_cast<unsigned long long>(m->group_frames),
                  static_cast<unsigned long long>(m->dict ? m->dict->length : 0));
    }
  } else {
    std::printf("format:       %d\n", m->format);
  }
  return 0;
}

// Verifies a format 2 image's header and reuse index and prints what a
// device holding the --local sources would download (docs/delta.md).
int DeltaPlanCmd(const Args& a) {
  if (a.positional.size() != 1) return Usage("delta-plan takes one FILE");
  auto trust = TrustFrom(a);
  if (!trust) return Fail(trust.error());
  DeltaOptions opt;
  if (const auto g = a.Get("max-gap"); !g.empty()) {
    auto v = ParseU64(g, "--max-gap");
    if (!v) return Fail(v.error());
    opt.max_gap = *v;
  }
  if (const auto r = a.Get("max-request"); !r.empty()) {
    auto v = ParseU64(r, "--max-request");
    if (!v) return Fail(v.error());
    opt.max_request = *v;
  }
  opt.zero_blocks = !a.Has("no-zero-blocks");
  std::vector<LocalSource> sources;
  for (const auto& l : a.All("local")) sources.push_back(LocalSource{l, std::nullopt});
  auto src = FileSource::Open(a.positional[0]);
  if (!src) return Fail(src.error());
  ImageReader reader(**src, *trust);
  auto header = reader.ReadHeader();
  if (!header) return Fail(header.error());
  const auto& m = (*header)->manifest;
  auto index = ReadReuseIndex(a.positional[0], **header);
  if (!index) return Fail(index.error());
  const auto start = std::chrono::steady_clock::now();
  auto plan = PlanDelta(m, *index, sources, opt);
  if (!plan) return Fail(plan.error());
  const double secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const auto& p = *plan;
  // What a delta costs beyond the frames: the signed header (one request,
  // the container up to the payload) and the reuse index (one request).
  const std::uint64_t header_bytes = (*header)->payload_offset;
  const std::uint64_t total = p.request_bytes + p.index_bytes + p.dict_bytes + header_bytes;
  const double share = p.full_bytes == 0 ? 0.0
                                         : 100.0 * static_cast<double>(total) /
                                               static_cast<double>(p.full_bytes + header_bytes);
  if (a.Has("json")) {
    nlohmann::json j = {
        {"frames", FrameCount(m)},
        {"frame_size", m.frame_lengths.empty() ? m.chunk_size : m.frame_size},
        {"frames_local", p.frames_local},
        {"frames_rejected", p.frames_rejected},
        {"frames_download", p.frames_download},
        {"blocks", p.blocks_total},
        {"blocks_found", p.blocks_found},
        {"frame_bytes", p.frame_bytes},
        {"request_bytes", p.request_bytes},
        {"requests", p.requests.size()},
        {"index_bytes", p.index_bytes},
        {"dict_bytes", p.dict_bytes},
        {"groups", m.chunks.size()},
        {"header_bytes", header_bytes},
        {"download_bytes", total},
        {"full_bytes", p.full_bytes + header_bytes},
        {"download_percent", share},
        {"local_read_bytes", p.local_read_bytes},
        {"seconds", secs},
        {"peak_rss_kib", PeakRssKib()},
    };
    std::cout << j.dump(2) << "\n";
    return 0;
  }
  std::printf(
      "frames:     %zu of %llu bytes: %llu local (verified), %llu rejected, %llu to download\n"
      "blocks:     %llu of %llu found locally\n"
      "download:   %llu bytes = frames %llu + bridged gaps %llu + reuse index %llu + header %llu\n"
      "            in %zu range requests + 2 (header, index): %.2f %% of the full image "
      "(%llu bytes)\n"
      "planned in %.3f s reading %llu local bytes, peak RSS %ld KiB\n",
      m.chunks.size(), static_cast<unsigned long long>(m.chunk_size),
      static_cast<unsigned long long>(p.frames_local),
      static_cast<unsigned long long>(p.frames_rejected),
      static_cast<unsigned long long>(p.frames_download),
      static_cast<unsigned long long>(p.blocks_found),
      static_cast<unsigned long long>(p.blocks_total), static_cast<unsigned long long>(total),
      static_cast<unsigned long long>(p.frame_bytes),
      static_cast<unsigned long long>(p.request_bytes - p.frame_bytes),
      static_cast<unsigned long long>(p.index_bytes), static_cast<unsigned long long>(header_bytes),
      p.requests.size(), share, static_cast<unsigned long long>(p.full_bytes + header_bytes), secs,
      static_cast<unsigned long long>(p.local_read_bytes), PeakRssKib());
  return 0;
}

int Extract(const Args& a) {
  if (a.positional.size() != 1) return Usage("extract takes one FILE");
  const std::filesystem::path out = a.Get("output");
  if (out.empty()) return Usage("extract needs --output PAYLOAD");
  auto trust = TrustFrom(a);
  if (!trust) return Fail(trust.error());
  auto src = FileSource::Open(a.positional[0]);
  if (!src) return Fail(src.error());
  const auto dir = out.has_parent_path() ? out.parent_path() : std::filesystem::path(".");
  // A new file of a unique name (mkostemps: O_CREAT|O_EXCL, so a symlink or
  // any file planted in the directory is never opened, let alone truncated);
  // it gets the payload's name only after every byte verified.
  std::string tmp_name = (dir / ("." + out.filename().string() + ".XXXXXX.partial")).string();
  const int fd = ::mkostemps(tmp_name.data(), static_cast<int>(std::strlen(".partial")), O_CLOEXEC);
  if (fd < 0) return Fail(MakeErrno(Errc::kIo, "create a temporary file next to " + out.string()));
  const std::filesystem::path tmp = tmp_name;
  {
    // mkostemps creates 0600; the payload gets what a plain create would.
    const mode_t mask = ::umask(0);
    ::umask(mask);
    (void)::fchmod(fd, 0644 & ~mask);
  }
  ImageReader reader(**src, *trust);
  // The reader checks every chunk against its signed hash; the extracted
  // file is also checked against the signed whole-payload hash, so that what
  // lands on disk is exactly what `sha256sum` of the payload should print.
  Sha256 whole;
  auto header = VerifyStream(reader, [&](const ChunkView& c) -> Status {
    whole.Update(c.data);
    auto data = c.data;
    while (!data.empty()) {
      const ssize_t n = ::write(fd, data.data(), data.size());
      if (n < 0) {
        if (errno == EINTR) continue;
        return MakeErrno(errno == ENOSPC ? Errc::kNoSpace : Errc::kIo, "write " + tmp.string());
      }
      data = data.subspan(static_cast<std::size_t>(n));
    }
    return Ok();
  });
  // The payload gets its real name only once every byte verified.
  Status st = header ? Status() : Status(header.error());
  if (st) {
    const auto& m = (*header)->manifest;
    if (const auto d = whole.Final(); d != m.payload_sha256) {
      st = Error(Errc::kPayloadHashMismatch,
                 "payload SHA-256 " + ToHex(d) + " does not match the signed " +
                     ToHex(m.payload_sha256) + "; the image was signed by a broken tool");
    }
  }
  if (st && ::fsync(fd) != 0) st = MakeErrno(Errc::kIo, "fsync " + tmp.string());
  if (::close(fd) != 0 && st) st = MakeErrno(Errc::kIo, "close " + tmp.string());
  if (st && ::rename(tmp.c_str(), out.c_str()) != 0) {
    st = MakeErrno(Errc::kIo, "rename to " + out.string());
  }
  if (st) st = FsyncDir(dir);
  if (!st) {
    ::unlink(tmp.c_str());
    return Fail(st.error());
  }
  std::cout << "extracted " << (*header)->manifest.payload_size << " verified bytes to "
            << out.string() << "\n";
  return 0;
}

int Pki(const Args& a) {
  if (a.positional.empty()) return Usage("pki needs init or signer");
  const auto& sub = a.positional[0];
  if (sub == "init" && a.positional.size() == 2) {
    pki::InitOptions opt;
    if (auto d = a.All("device"); !d.empty()) opt.devices = d;
    if (auto st = pki::InitDevPki(a.positional[1], opt); !st) return Fail(st.error());
    std::cout << "development PKI written to " << a.positional[1] << "\n";
    return 0;
  }
  if (sub == "signer" && a.positional.size() == 3) {
    auto flaw = pki::ParseSignerFlaw(a.Get("flaw").empty() ? "none" : a.Get("flaw"));
    if (!flaw) return Fail(flaw.error());
    if (auto st = pki::IssueSigner(a.positional[1], a.positional[2], *flaw); !st) {
      return Fail(st.error());
    }
    std::cout << "signer " << a.positional[2] << " written to " << a.positional[1] << "\n";
    return 0;
  }
  return Usage("pki init DIR | pki signer DIR NAME");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) return Usage("missing command");
  const std::string cmd = argv[1];
  if (cmd == "--help" || cmd == "-h" || cmd == "help") {
    std::cout << kUsage;
    return 0;
  }
  auto args = ParseArgs(argc, argv, 2, {"json", "no-zero-blocks"});
  if (!args) return Usage(args.error().message());
  if (cmd == "create") return Create(*args);
  if (cmd == "verify") return Verify(*args);
  if (cmd == "inspect") return Inspect(*args);
  if (cmd == "extract") return Extract(*args);
  if (cmd == "delta-plan") return DeltaPlanCmd(*args);
  if (cmd == "pki") return Pki(*args);
  return Usage("unknown command '" + cmd + "'");
}
