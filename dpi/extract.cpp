#include "dpi/extract.h"

#include <fcntl.h>
#include <linux/openat2.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <zstd.h>

#include <algorithm>
#include <cerrno>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "common/unique_fd.h"
#include "dpi/libarchive.h"

namespace sag::dpi {

namespace {

using Fd = UniqueFd;

constexpr std::size_t kOutBufferBytes = 128U << 10U;

// Pulls payload chunks for libarchive, decoding zstd itself when the payload
// starts with a zstd frame, and enforces the expansion ratio on the stream.
class Feeder {
 public:
  Feeder(PayloadSource& source, const ExtractLimits& limits, ExtractStats& stats)
      : source_(source), limits_(limits), stats_(stats) {}
  ~Feeder() {
    if (dctx_ != nullptr) ZSTD_freeDCtx(dctx_);
  }
  Feeder(const Feeder&) = delete;
  Feeder& operator=(const Feeder&) = delete;

  // libarchive's read callback: the next block of tar stream, 0 at its end,
  // -1 on error (the error is kept in error_).
  la_ssize_t Read(const void** buf) {
    auto n = ReadImpl(buf);
    if (!n) {
      error_ = std::move(n).error();
      return -1;
    }
    stats_.tar_bytes += *n;
    if (auto st = CheckRatio(stats_.tar_bytes, "the tar stream"); !st) {
      error_ = std::move(st).error();
      return -1;
    }
    return static_cast<la_ssize_t>(*n);
  }

  Status CheckRatio(std::uint64_t produced, std::string_view what) const {
    const std::uint64_t base = std::max(stats_.payload_bytes, limits_.ratio_floor_bytes);
    if (limits_.max_ratio > 0 && produced / limits_.max_ratio > base) {
      return Error(
          Errc::kArchiveRatio,
          std::string(what) + " expands to more than " + std::to_string(limits_.max_ratio) +
              " times the " + std::to_string(stats_.payload_bytes) +
              " payload bytes read so far (a decompression bomb?); the package is refused");
    }
    return Ok();
  }

  // Reads what is left of the source after the archive's end marker, so that
  // the source gets to verify the whole payload before it says "end".
  Status Drain() {
    if (source_done_) return Ok();
    for (;;) {
      SAG_TRY(auto chunk, PullRaw());
      if (!chunk) return Ok();
    }
  }

  std::optional<Error>& error() { return error_; }

 private:
  Expected<std::optional<std::span<const std::uint8_t>>> PullRaw() {
    if (source_done_) return std::optional<std::span<const std::uint8_t>>();
    SAG_TRY(auto chunk, source_.Next());
    if (!chunk) {
      source_done_ = true;
      return chunk;
    }
    stats_.payload_bytes += chunk->size();
    return chunk;
  }

  Expected<std::size_t> ReadImpl(const void** buf) {
    if (mode_ == Mode::kUnknown) SAG_TRY_STATUS(Sniff());
    if (mode_ == Mode::kRaw) {
      if (!head_.empty() && !head_served_) {
        head_served_ = true;
        *buf = head_.data();
        return head_.size();
      }
      for (;;) {
        SAG_TRY(auto chunk, PullRaw());
        if (!chunk) return std::size_t{0};
        if (chunk->empty()) continue;
        *buf = chunk->data();
        return chunk->size();
      }
    }
    return ReadZstd(buf);
  }

  // Collects the first 4 bytes (chunks may be tiny) to tell zstd from tar.
  Status Sniff() {
    while (head_.size() < 4) {
      SAG_TRY(auto chunk, PullRaw());
      if (!chunk) break;
      head_.insert(head_.end(), chunk->begin(), chunk->end());
    }
    static constexpr std::uint8_t kZstdMagic[4] = {0x28, 0xB5, 0x2F, 0xFD};
    if (head_.size() >= 4 && std::equal(kZstdMagic, kZstdMagic + 4, head_.begin())) {
      mode_ = Mode::kZstd;
      stats_.compressed = true;
      dctx_ = ZSTD_createDCtx();
      if (dctx_ == nullptr) return Error(Errc::kInternal, "cannot allocate a zstd decoder");
      const std::size_t r =
          ZSTD_DCtx_setParameter(dctx_, ZSTD_d_windowLogMax, limits_.zstd_window_log_max);
      if (ZSTD_isError(r) != 0U) {
        return Error(Errc::kInternal, std::string("zstd window limit: ") + ZSTD_getErrorName(r));
      }
      out_.resize(kOutBufferBytes);
      in_ = {head_.data(), head_.size(), 0};
    } else {
      mode_ = Mode::kRaw;
    }
    return Ok();
  }

  Expected<std::size_t> ReadZstd(const void** buf) {
    for (;;) {
      if (in_.pos == in_.size && !source_done_) {
        SAG_TRY(auto chunk, PullRaw());
        if (chunk) {
          in_ = {chunk->data(), chunk->size(), 0};
        }
      }
      if (in_.pos == in_.size && source_done_) {
        // A frame that is not finished means the payload was cut short.
        if (frame_open_) {
          return Error(Errc::kArchiveMalformed,
                       "the payload's zstd stream ends in the middle of a frame (truncated)");
        }
        return std::size_t{0};
      }
      ZSTD_outBuffer out{out_.data(), out_.size(), 0};
      const std::size_t r = ZSTD_decompressStream(dctx_, &out, &in_);
      if (ZSTD_isError(r) != 0U) {
        return Error(Errc::kArchiveMalformed,
                     std::string("the payload does not decompress as zstd: ") +
                         ZSTD_getErrorName(r) +
                         " (a frame needing a window above the limit is refused too)");
      }
      frame_open_ = r != 0;
      if (out.pos > 0) {
        *buf = out_.data();
        return out.pos;
      }
    }
  }

  enum class Mode { kUnknown, kRaw, kZstd };

  PayloadSource& source_;
  const ExtractLimits& limits_;
  ExtractStats& stats_;
  Mode mode_ = Mode::kUnknown;
  std::vector<std::uint8_t> head_;
  bool head_served_ = false;
  bool source_done_ = false;
  ZSTD_DCtx* dctx_ = nullptr;
  ZSTD_inBuffer in_{nullptr, 0, 0};
  std::vector<std::uint8_t> out_;
  bool frame_open_ = false;
  std::optional<Error> error_;
};

la_ssize_t ReadCallback(struct archive* /*a*/, void* client, const void** buf) {
  return static_cast<Feeder*>(client)->Read(buf);
}

struct ArchiveDeleter {
  const LibArchive* lib;
  void operator()(struct archive* a) const { lib->read_free(a); }
};

// An entry path split into its components, '.' and empty ones dropped.
using Components = std::vector<std::string>;

std::string Join(const Components& parts, std::size_t count) {
  std::string out;
  for (std::size_t i = 0; i < count && i < parts.size(); ++i) {
    if (i > 0) out += '/';
    out += parts[i];
  }
  return out;
}

Expected<Components> SplitPath(std::string_view path, const ExtractLimits& limits, Errc unsafe,
                               std::string_view what) {
  if (path.empty()) return Error(Errc::kArchiveMalformed, std::string(what) + " has an empty path");
  if (path.size() > limits.max_path_bytes) {
    return Error(Errc::kArchiveMalformed, std::string(what) + " has a path longer than " +
                                              std::to_string(limits.max_path_bytes) + " bytes");
  }
  if (path.front() == '/') {
    return Error(unsafe, std::string(what) + " '" + std::string(path) +
                             "' is an absolute path; package archives must use relative paths");
  }
  Components parts;
  std::size_t start = 0;
  while (start <= path.size()) {
    const auto slash = path.find('/', start);
    const auto end = slash == std::string_view::npos ? path.size() : slash;
    const auto part = path.substr(start, end - start);
    if (part == "..") {
      return Error(unsafe,
                   std::string(what) + " '" + std::string(path) +
                       "' has a '..' component; it could reach outside the staging directory");
    }
    if (!part.empty() && part != ".") parts.emplace_back(part);
    if (slash == std::string_view::npos) break;
    start = slash + 1;
  }
  if (parts.size() > limits.max_depth) {
    return Error(Errc::kArchiveMalformed, std::string(what) + " '" + std::string(path) +
                                              "' is nested deeper than " +
                                              std::to_string(limits.max_depth) + " levels");
  }
  return parts;
}

// Creates the tree under one directory descriptor; never follows a symlink.
class TreeWriter {
 public:
  explicit TreeWriter(Fd root) : root_(std::move(root)) {}

  // Opens the directory made of the first `count` components, creating
  // missing ones when `create`. A component that is a symlink (even one
  // pointing inside) or not a directory is refused.
  Expected<Fd> OpenDir(const Components& parts, std::size_t count, bool create) {
    Fd dir(::dup(root_.get()));
    if (dir.get() < 0) return MakeErrno(Errc::kIo, "dup staging directory");
    for (std::size_t i = 0; i < count; ++i) {
      const char* name = parts[i].c_str();
      Fd next(::openat(dir.get(), name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
      if (next.get() < 0 && errno == ENOENT && create) {
        if (::mkdirat(dir.get(), name, 0755) != 0 && errno != EEXIST) {
          return MakeErrno(Errc::kIo, "create directory " + Join(parts, i + 1));
        }
        next = Fd(::openat(dir.get(), name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
      }
      if (next.get() < 0) {
        const int err = errno;
        if (err == ELOOP || err == ENOTDIR) {
          struct stat st {};
          if (::fstatat(dir.get(), name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISLNK(st.st_mode)) {
            return Error(Errc::kArchiveUnsafeLink,
                         "'" + Join(parts, parts.size()) + "' goes through the symlink '" +
                             Join(parts, i + 1) + "'; entries are never written through links");
          }
          return Error(Errc::kArchiveMalformed, "'" + Join(parts, parts.size()) + "' needs '" +
                                                    Join(parts, i + 1) +
                                                    "' to be a directory, but it is not");
        }
        return MakeErrno(err == ENOENT ? Errc::kArchiveUnsafeLink : Errc::kIo,
                         "open directory " + Join(parts, i + 1), err);
      }
      dir = std::move(next);
    }
    return dir;
  }

  // Makes every file and directory written so far durable with one
  // syncfs(2) of the staging file system: one journal commit for thousands
  // of files instead of one fsync each (the difference between milliseconds
  // and minutes on a busy flash). Since Linux 5.8 syncfs reports writeback
  // errors of the file system, so a failed write is not missed.
  // A lexical check cannot see chains (d/up -> .. and e -> ../d/up/..): once
  // every entry exists, let the kernel resolve each symlink beneath the
  // staging root. RESOLVE_BENEATH fails with EXDEV on any escape, absolute
  // targets included; a dangling link (ENOENT) stays inside and is allowed.
  static constexpr int kResolveAttempts = 1000;

  Status CheckResolvesInside(const std::string& link) {
    open_how how{};
    how.flags = O_PATH | O_CLOEXEC;
    how.resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS;
    // EAGAIN: a rename or mount anywhere on the system raced with a '..' of
    // the walk, and the kernel cannot tell whether it stayed beneath the
    // root; openat2(2) says to retry. Renames are frequent on a device (every
    // atomic file write is one), a lasting race is not.
    long fd = -1;
    for (int attempt = 0; attempt < kResolveAttempts; ++attempt) {
      fd = ::syscall(SYS_openat2, root_.get(), link.c_str(), &how, sizeof how);
      if (fd >= 0 || errno != EAGAIN) break;
    }
    if (fd >= 0) {
      ::close(static_cast<int>(fd));
      return Ok();
    }
    const int err = errno;
    if (err == ENOENT || err == ENOTDIR) return Ok();
    if (err == EXDEV || err == ELOOP) {
      return Error(Errc::kArchiveUnsafeLink,
                   "symlink '" + link +
                       "' resolves outside the staging directory (through other links) or loops");
    }
    if (err == EAGAIN) {
      return Error(Errc::kIo,
                   "resolve symlink " + link + ": renames elsewhere on the system raced " +
                       "with every one of " + std::to_string(kResolveAttempts) +
                       " attempts; install the package again when the system is quieter");
    }
    return MakeErrno(Errc::kIo, "resolve symlink " + link, err);
  }

  Status Sync() {
    if (::syncfs(root_.get()) != 0) return MakeErrno(Errc::kIo, "syncfs of the staging directory");
    return Ok();
  }

 private:
  Fd root_;
};

Status CheckLinkTarget(const Components& entry, std::string_view target) {
  const std::string name = Join(entry, entry.size());
  if (target.empty()) return Error(Errc::kArchiveMalformed, "symlink '" + name + "' has no target");
  if (target.front() == '/') {
    return Error(Errc::kArchiveUnsafeLink,
                 "symlink '" + name + "' points to the absolute path '" + std::string(target) +
                     "'; only relative links inside the package are allowed");
  }
  // Resolve lexically from the link's directory: the depth must never go
  // below the staging root.
  long depth = static_cast<long>(entry.size()) - 1;
  std::size_t start = 0;
  for (;;) {
    const auto slash = target.find('/', start);
    const auto part = target.substr(
        start, slash == std::string_view::npos ? std::string_view::npos : slash - start);
    if (part == "..") {
      if (--depth < 0) {
        return Error(Errc::kArchiveUnsafeLink, "symlink '" + name + "' -> '" + std::string(target) +
                                                   "' points outside the staging directory");
      }
    } else if (!part.empty() && part != ".") {
      ++depth;
    }
    if (slash == std::string_view::npos) break;
    start = slash + 1;
  }
  return Ok();
}

class Extractor {
 public:
  Extractor(const LibArchive& la, PayloadSource& source, const ExtractLimits& limits, Fd root)
      : la_(la), limits_(limits), feeder_(source, limits, stats_), tree_(std::move(root)) {}

  Expected<ExtractStats> Run() {
    std::unique_ptr<struct archive, ArchiveDeleter> a(la_.read_new(), ArchiveDeleter{&la_});
    if (!a) return Error(Errc::kInternal, "archive_read_new failed");
    la_.read_support_format_tar(a.get());
    la_.read_support_filter_none(a.get());
    if (la_.read_open(a.get(), &feeder_, nullptr, ReadCallback, nullptr) != ARCHIVE_OK) {
      return ArchiveError(a.get(), "opening the payload archive");
    }
    for (;;) {
      struct archive_entry* entry = nullptr;
      const int r = la_.read_next_header(a.get(), &entry);
      if (r == ARCHIVE_EOF) break;
      if (r != ARCHIVE_OK && r != ARCHIVE_WARN) {
        return ArchiveError(a.get(), "reading entry " + std::to_string(stats_.entries + 1));
      }
      if (++stats_.entries > limits_.max_entries) {
        return Error(Errc::kArchiveTooManyEntries, "the package archive has more than " +
                                                       std::to_string(limits_.max_entries) +
                                                       " entries; it is refused");
      }
      SAG_TRY_STATUS(Entry(a.get(), entry));
    }
    SAG_TRY_STATUS(feeder_.Drain());
    if (stats_.entries == 0) {
      return Error(Errc::kArchiveMalformed, "the package archive has no entries");
    }
    for (const auto& link : symlinks_) SAG_TRY_STATUS(tree_.CheckResolvesInside(link));
    SAG_TRY_STATUS(tree_.Sync());
    return stats_;
  }

 private:
  Error ArchiveError(struct archive* a, const std::string& what) {
    // The source's own error (a hash mismatch, a bomb) explains more than
    // libarchive's "read callback failed".
    if (feeder_.error()) return std::move(*feeder_.error()).WithContext(what);
    const char* msg = la_.error_string(a);
    return {Errc::kArchiveMalformed, what + ": " +
                                         (msg != nullptr ? msg : "not a tar archive or truncated") +
                                         "; the package is damaged or not a DPI package"};
  }

  Status Entry(struct archive* a, struct archive_entry* entry) {
    const char* raw = la_.entry_pathname(entry);
    if (raw == nullptr) return Error(Errc::kArchiveMalformed, "an entry has no path");
    SAG_TRY(auto parts, SplitPath(raw, limits_, Errc::kArchiveUnsafePath, "entry"));
    const std::string name = Join(parts, parts.size());
    const auto mode = la_.entry_mode(entry);
    if ((mode & (S_ISUID | S_ISGID)) != 0) {
      return Error(Errc::kArchiveSetId, "entry '" + name +
                                            "' has the setuid or setgid bit; packages must not "
                                            "carry privileged files");
    }
    if (const char* link = la_.entry_hardlink(entry); link != nullptr) {
      return HardLink(parts, link);
    }
    const auto type = la_.entry_filetype(entry);
    switch (type) {
      case AE_IFDIR:
        return Directory(parts);
      case AE_IFREG:
        return File(a, entry, parts, mode);
      case AE_IFLNK:
        return Symlink(parts, la_.entry_symlink(entry));
      case AE_IFCHR:
      case AE_IFBLK:
      case AE_IFIFO:
      case AE_IFSOCK:
        return Error(Errc::kArchiveSpecialFile,
                     "entry '" + name +
                         "' is a device node, FIFO or socket; packages hold only files, "
                         "directories and links");
      default:
        return Error(Errc::kArchiveMalformed, "entry '" + name + "' has an unknown type");
    }
  }

  Status Directory(const Components& parts) {
    if (parts.empty()) return Ok();  // "./"
    SAG_TRY(auto parent, tree_.OpenDir(parts, parts.size() - 1, true));
    if (::mkdirat(parent.get(), parts.back().c_str(), 0755) == 0) {
      return Ok();
    }
    if (errno != EEXIST)
      return MakeErrno(Errc::kIo, "create directory " + Join(parts, parts.size()));
    struct stat st {};
    if (::fstatat(parent.get(), parts.back().c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0 &&
        S_ISDIR(st.st_mode)) {
      return Ok();  // a directory listed twice, or after its children
    }
    return Error(Errc::kArchiveMalformed,
                 "directory '" + Join(parts, parts.size()) + "' collides with an earlier entry");
  }

  Status NeedName(const Components& parts, const std::string& kind) {
    if (parts.empty()) {
      return Error(Errc::kArchiveMalformed, kind + " entry has no name (it is the root)");
    }
    return Ok();
  }

  Status File(struct archive* a, struct archive_entry* entry, const Components& parts,
              unsigned mode) {
    SAG_TRY_STATUS(NeedName(parts, "a file"));
    const std::string name = Join(parts, parts.size());
    if (la_.entry_sparse_count(entry) > 0) {
      return Error(Errc::kArchiveMalformed, "entry '" + name + "' is a sparse file; not supported");
    }
    const auto declared =
        static_cast<std::uint64_t>(std::max<la_int64_t>(0, la_.entry_size(entry)));
    if (declared > limits_.max_total_bytes ||
        stats_.file_bytes + declared > limits_.max_total_bytes) {
      return Error(Errc::kArchiveTooLarge, "entry '" + name + "' (" + std::to_string(declared) +
                                               " bytes) takes the package above its limit of " +
                                               std::to_string(limits_.max_total_bytes) + " bytes");
    }
    SAG_TRY(auto parent, tree_.OpenDir(parts, parts.size() - 1, true));
    Fd fd(::openat(parent.get(), parts.back().c_str(),
                   O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, (mode & 0755U) | 0600U));
    if (fd.get() < 0) {
      if (errno == EEXIST) {
        return Error(Errc::kArchiveMalformed,
                     "entry '" + name + "' appears twice (or collides with a link)");
      }
      return MakeErrno(Errc::kIo, "create " + name);
    }
    std::uint64_t written = 0;
    for (;;) {
      const void* buf = nullptr;
      std::size_t size = 0;
      la_int64_t offset = 0;
      const int r = la_.read_data_block(a, &buf, &size, &offset);
      if (r == ARCHIVE_EOF) break;
      if (r != ARCHIVE_OK && r != ARCHIVE_WARN) return ArchiveError(a, "reading data of " + name);
      if (std::cmp_not_equal(offset, written)) {
        return Error(Errc::kArchiveMalformed, "entry '" + name + "' has holes (sparse data)");
      }
      if (written + size > declared) {
        return Error(Errc::kArchiveMalformed, "entry '" + name + "' has more data than its size");
      }
      const auto* p = static_cast<const char*>(buf);
      std::size_t left = size;
      while (left > 0) {
        const ssize_t n = ::write(fd.get(), p, left);
        if (n < 0) {
          if (errno == EINTR) continue;
          return MakeErrno(Errc::kIo, "write " + name);
        }
        p += n;
        left -= static_cast<std::size_t>(n);
      }
      written += size;
      stats_.file_bytes += size;
      SAG_TRY_STATUS(feeder_.CheckRatio(stats_.file_bytes, "the package's files"));
    }
    if (written != declared) {
      return Error(Errc::kArchiveMalformed, "entry '" + name + "' is truncated");
    }
    ++stats_.files;
    return Ok();
  }

  Status Symlink(const Components& parts, const char* target) {
    SAG_TRY_STATUS(NeedName(parts, "a symlink"));
    const std::string name = Join(parts, parts.size());
    if (target == nullptr)
      return Error(Errc::kArchiveMalformed, "symlink '" + name + "' has no target");
    SAG_TRY_STATUS(CheckLinkTarget(parts, target));
    SAG_TRY(auto parent, tree_.OpenDir(parts, parts.size() - 1, true));
    if (::symlinkat(target, parent.get(), parts.back().c_str()) != 0) {
      if (errno == EEXIST) {
        return Error(Errc::kArchiveMalformed,
                     "symlink '" + name + "' collides with an earlier entry");
      }
      return MakeErrno(Errc::kIo, "create symlink " + name);
    }
    symlinks_.push_back(name);
    return Ok();
  }

  Status HardLink(const Components& parts, const char* target) {
    SAG_TRY_STATUS(NeedName(parts, "a hard link"));
    const std::string name = Join(parts, parts.size());
    SAG_TRY(auto tparts, SplitPath(target, limits_, Errc::kArchiveUnsafeLink,
                                   "hard link '" + name + "' target"));
    if (tparts.empty()) {
      return Error(Errc::kArchiveUnsafeLink, "hard link '" + name + "' points to the root");
    }
    // The target must be a regular file this archive already created: a
    // link to anything else (a file of the host, a directory) is refused.
    auto tparent = tree_.OpenDir(tparts, tparts.size() - 1, false);
    if (!tparent) {
      return Error(Errc::kArchiveUnsafeLink, "hard link '" + name + "' -> '" + target +
                                                 "': target is not inside the package (" +
                                                 tparent.error().message() + ")");
    }
    struct stat st {};
    if (::fstatat(tparent->get(), tparts.back().c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0 ||
        !S_ISREG(st.st_mode)) {
      return Error(Errc::kArchiveUnsafeLink,
                   "hard link '" + name + "' -> '" + target +
                       "': target is not a regular file extracted earlier from the package");
    }
    SAG_TRY(auto parent, tree_.OpenDir(parts, parts.size() - 1, true));
    if (::linkat(tparent->get(), tparts.back().c_str(), parent.get(), parts.back().c_str(), 0) !=
        0) {
      if (errno == EEXIST) {
        return Error(Errc::kArchiveMalformed,
                     "hard link '" + name + "' collides with an earlier entry");
      }
      return MakeErrno(Errc::kIo, "create hard link " + name);
    }
    return Ok();
  }

  const LibArchive& la_;
  const ExtractLimits& limits_;
  ExtractStats stats_;
  Feeder feeder_;
  TreeWriter tree_;
  std::vector<std::string> symlinks_;  // checked again once the tree is complete
};

}  // namespace

Expected<ExtractStats> ExtractPayload(PayloadSource& source, const std::filesystem::path& staging,
                                      const ExtractLimits& limits) {
  Fd root(::open(staging.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
  if (root.get() < 0) return MakeErrno(Errc::kIo, "open staging directory " + staging.string());
  SAG_TRY(const auto la, LibArchive::Load());
  Extractor extractor(*la, source, limits, std::move(root));
  auto stats = extractor.Run();
  if (!stats) return std::move(stats).error().WithContext("extracting DPI package");
  return stats;
}

}  // namespace sag::dpi
