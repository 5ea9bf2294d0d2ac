#include "cloud/repository.h"

#include <spdlog/spdlog.h>
#include <sys/stat.h>

#include <algorithm>
#include <system_error>

#include "common/parse_decimal.h"
#include "common/sha256.h"

namespace sag::cloud {

namespace fs = std::filesystem;

namespace {

constexpr std::string_view kSuffix = ".sagimg";

std::string Hex(const Digest& d) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  out.reserve(d.size() * 2);
  for (const auto b : d) {
    out += kDigits[b >> 4U];
    out += kDigits[b & 0x0fU];
  }
  return out;
}

struct FileId {
  std::uint64_t size = 0;
  std::int64_t mtime_ns = 0;
};

Expected<FileId> Identify(const fs::path& path) {
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) return MakeErrno(Errc::kIo, "stat " + path.string());
  if (!S_ISREG(st.st_mode)) {
    return Error(Errc::kInvalidArgument, "not a regular file (symbolic links are not followed)");
  }
  return FileId{static_cast<std::uint64_t>(st.st_size),
                static_cast<std::int64_t>(st.st_mtim.tv_sec) * 1'000'000'000 + st.st_mtim.tv_nsec};
}

// Verifies the image as an agent will (signed header, every chunk) and
// hashes the whole file: a damaged image is refused here once, not by every
// device it is sent to.
Expected<RepoImage> Index(const fs::path& path, const image::Trust& trust, const FileId& id) {
  SAG_TRY(auto source, image::FileSource::Open(path));
  image::ImageReader reader(*source, trust);
  SAG_TRY(const image::VerifiedHeader* header, reader.ReadHeader());
  for (;;) {
    SAG_TRY(auto chunk, reader.NextChunk());
    if (!chunk) break;
  }
  SAG_TRY(const Digest digest, Sha256::OfFile(path));
  RepoImage img;
  img.type = header->manifest.type;
  img.version = header->manifest.version;
  img.compatible = header->manifest.compatible;
  img.build_time = header->manifest.build_time;
  img.file_name = path.filename().string();
  img.size = id.size;
  img.sha256 = Hex(digest);
  img.signer = header->signer.subject;
  img.mtime_ns = id.mtime_ns;
  return img;
}

HttpResponse Plain(int status, std::string text) {
  HttpResponse r;
  r.status = status;
  r.headers.push_back({"Content-Type", "text/plain; charset=utf-8"});
  r.body = std::move(text) + "\n";
  return r;
}

std::optional<std::uint64_t> Number(std::string_view s) {
  if (s.empty() || s.size() > 19) return std::nullopt;
  return ParseDecimal<std::uint64_t>(s);
}

}  // namespace

Expected<std::optional<ByteRange>> ParseRange(std::string_view header, std::uint64_t size) {
  constexpr std::string_view kUnit = "bytes=";
  if (!header.starts_with(kUnit)) return std::optional<ByteRange>();
  const std::string_view spec = header.substr(kUnit.size());
  if (spec.find(',') != std::string_view::npos) return std::optional<ByteRange>();
  const auto dash = spec.find('-');
  if (dash == std::string_view::npos) return std::optional<ByteRange>();
  const std::string_view first = spec.substr(0, dash);
  const std::string_view last = spec.substr(dash + 1);
  if (first.empty()) {  // the last N bytes
    const auto n = Number(last);
    if (!n) return std::optional<ByteRange>();
    if (*n == 0 || size == 0) {
      return Error(Errc::kInvalidArgument, "an empty suffix range");
    }
    const std::uint64_t len = std::min(*n, size);
    return std::optional<ByteRange>(ByteRange{size - len, len});
  }
  const auto a = Number(first);
  if (!a) return std::optional<ByteRange>();
  std::uint64_t b = size == 0 ? 0 : size - 1;
  if (!last.empty()) {
    const auto parsed = Number(last);
    if (!parsed || *parsed < *a) return std::optional<ByteRange>();
    b = std::min(*parsed, b);
  }
  if (*a >= size) {
    return Error(Errc::kInvalidArgument, "range starts at " + std::to_string(*a) +
                                             ", the file has " + std::to_string(size) + " bytes");
  }
  return std::optional<ByteRange>(ByteRange{*a, b - *a + 1});
}

Repository::Repository(Options options) : options_(std::move(options)) {}

Status Repository::Scan() {
  std::error_code ec;
  fs::directory_iterator it(options_.dir, ec);
  if (ec) {
    return Error(ec == std::errc::no_such_file_or_directory ? Errc::kNotFound : Errc::kIo,
                 "image repository " + options_.dir.string() + ": " + ec.message());
  }
  std::map<std::string, RepoImage> previous;
  {
    const std::lock_guard lock(mu_);
    previous = by_name_;
  }
  std::map<std::string, RepoImage> found;
  std::vector<std::string> problems;
  std::size_t seen = 0;
  for (const auto& entry : it) {
    const std::string name = entry.path().filename().string();
    if (name.size() <= kSuffix.size() || !name.ends_with(kSuffix) || name.starts_with(".")) {
      continue;
    }
    if (++seen > kMaxImages) {
      problems.push_back(name + ": more than " + std::to_string(kMaxImages) +
                         " images in the repository; the rest are not indexed");
      break;
    }
    auto id = Identify(entry.path());
    if (!id) {
      problems.push_back(name + ": " + id.error().message());
      continue;
    }
    if (auto old = previous.find(name); old != previous.end() && old->second.size == id->size &&
                                        old->second.mtime_ns == id->mtime_ns) {
      found.emplace(name, old->second);
      continue;
    }
    auto img = Index(entry.path(), options_.trust, *id);
    if (!img) {
      problems.push_back(name + ": " + img.error().ToString());
      continue;
    }
    found.emplace(name, std::move(*img));
  }
  // One VersionCode must name one image of its type.
  std::map<std::pair<image::ImageType, std::string>, std::vector<std::string>> versions;
  for (const auto& [name, img] : found) versions[{img.type, img.version}].push_back(name);
  for (const auto& [key, names] : versions) {
    if (names.size() < 2) continue;
    std::string list;
    for (const auto& n : names) list.append(list.empty() ? "" : ", ").append(n);
    for (const auto& n : names) {
      problems.push_back(
          fmt::format("{}: {} version {} is in several images ({}); remove all but one", n,
                      image::ImageTypeName(key.first), key.second, list));
      found.erase(n);
    }
  }
  for (const auto& p : problems) spdlog::warn("image repository: left out {}", p);
  const std::lock_guard lock(mu_);
  by_name_ = std::move(found);
  problems_ = std::move(problems);
  return Ok();
}

std::vector<RepoImage> Repository::Images() const {
  const std::lock_guard lock(mu_);
  std::vector<RepoImage> out;
  out.reserve(by_name_.size());
  for (const auto& [name, img] : by_name_) out.push_back(img);
  return out;
}

std::optional<RepoImage> Repository::Find(image::ImageType type, const std::string& version) const {
  const std::lock_guard lock(mu_);
  for (const auto& [name, img] : by_name_) {
    if (img.type == type && img.version == version) return img;
  }
  return std::nullopt;
}

std::vector<std::string> Repository::problems() const {
  const std::lock_guard lock(mu_);
  return problems_;
}

std::string Repository::PathOf(const RepoImage& image) {
  return std::string(kPathPrefix) + image.file_name;
}

HttpResponse Repository::Serve(const HttpRequest& request) const {
  std::string_view path = request.target;
  if (const auto q = path.find('?'); q != std::string_view::npos) path = path.substr(0, q);
  if (!path.starts_with(kPathPrefix)) return Plain(404, "no such image");
  const std::string name(path.substr(kPathPrefix.size()));
  std::optional<RepoImage> img;
  {
    const std::lock_guard lock(mu_);
    // Only an indexed name reaches the file system: no '/', no '..', no
    // percent-decoding that could make one.
    if (auto it = by_name_.find(name); it != by_name_.end()) img = it->second;
  }
  if (!img) return Plain(404, "no such image");
  if (request.method != "GET") {
    HttpResponse r = Plain(405, "only GET is served here");
    r.headers.push_back({"Allow", "GET"});
    return r;
  }
  const fs::path file = options_.dir / img->file_name;
  auto id = Identify(file);
  if (!id || id->size != img->size || id->mtime_ns != img->mtime_ns) {
    // Its size and SHA-256 went out in jobs: other bytes must not go out
    // under them.
    spdlog::error("image repository: {} changed on disk since it was indexed; not served",
                  img->file_name);
    return Plain(503, img->file_name + " changed since it was indexed; the repository rescans it");
  }
  HttpResponse r;
  r.headers.push_back({"Content-Type", "application/octet-stream"});
  r.headers.push_back({"Accept-Ranges", "bytes"});
  r.headers.push_back({"ETag", "\"" + img->sha256 + "\""});
  std::optional<ByteRange> range;
  if (const auto h = request.Header("Range"); h && request.HeaderCount("Range") == 1) {
    auto parsed = ParseRange(*h, img->size);
    if (!parsed) {
      HttpResponse bad = Plain(416, parsed.error().message());
      bad.headers.push_back({"Content-Range", "bytes */" + std::to_string(img->size)});
      return bad;
    }
    range = *parsed;
  }
  if (range) {
    r.status = 206;
    r.headers.push_back({"Content-Range", "bytes " + std::to_string(range->offset) + "-" +
                                              std::to_string(range->offset + range->length - 1) +
                                              "/" + std::to_string(img->size)});
    r.file = FileRange{file, range->offset, range->length};
  } else {
    r.status = 200;
    r.file = FileRange{file, 0, img->size};
  }
  return r;
}

}  // namespace sag::cloud
