// Hardened extraction of a DPI payload (tar, optionally zstd-compressed) into
// a staging directory.
//
// The archive is untrusted input even though its image was signed: a signing
// key can leak and a build script can be wrong, and the agent runs as root.
// So every entry is created by this code itself, relative to a descriptor of
// the staging directory, never by libarchive's disk writer and never through
// a path that could be redirected:
//   - paths: absolute paths and '..' components are refused (kArchiveUnsafePath);
//   - links: a symlink whose target is absolute or climbs out of the staging
//     directory (lexically per link, then, once the tree is complete, by the
//     kernel through chains of links with openat2(RESOLVE_BENEATH)), a link
//     loop, and a hard link whose target is not a regular file extracted
//     earlier from the same archive, are refused (kArchiveUnsafeLink). Parent
//     directories are opened one component at a time with O_NOFOLLOW, so an
//     entry written "through" a symlink of the archive (even one that points
//     inside) is refused too, and files are created with O_EXCL | O_NOFOLLOW;
//   - device nodes, FIFOs and sockets: kArchiveSpecialFile;
//   - setuid/setgid bits: kArchiveSetId; other modes are masked to 0755;
//   - more than max_entries entries: kArchiveTooManyEntries, checked per
//     header so a stream of millions of empty entries stops early;
//   - more than max_total_bytes of file data (checked against each header's
//     declared size before its data is read): kArchiveTooLarge;
//   - output more than max_ratio times the payload bytes read (after a floor):
//     kArchiveRatio, so a small payload cannot expand without bound;
//   - truncated or not a tar, duplicate entries, sparse entries:
//     kArchiveMalformed.
// Ownership, timestamps, xattrs and ACLs in the archive are ignored. Before
// a successful return every file and directory written is made durable (one
// syncfs(2) of the staging file system), so a complete return means a tree
// that survives a power cut: only then can it be swapped in.
//
// zstd is decoded here (not by libarchive's zstd filter) so that the decoder
// window, which is the decoder's memory, is capped by zstd_window_log_max:
// memory stays bounded whatever the payload claims.
#pragma once

#include <cstdint>
#include <filesystem>

#include "common/error.h"
#include "dpi/payload_source.h"

namespace sag::dpi {

struct ExtractLimits {
  std::uint64_t max_entries = 100000;
  std::uint64_t max_total_bytes = 4ULL << 30U;  // sum of regular file sizes
  std::uint64_t max_ratio = 200;                // extracted bytes per payload byte
  std::uint64_t ratio_floor_bytes = 1U << 20U;  // payloads below this count as this size
  std::size_t max_path_bytes = 1024;
  std::size_t max_depth = 32;
  int zstd_window_log_max = 23;  // 8 MiB decoder window
};

struct ExtractStats {
  std::uint64_t entries = 0;
  std::uint64_t files = 0;
  std::uint64_t file_bytes = 0;     // regular file data written
  std::uint64_t payload_bytes = 0;  // bytes read from the source
  std::uint64_t tar_bytes = 0;      // bytes of tar stream (after zstd)
  bool compressed = false;
};

// Extracts the payload into `staging`, an existing directory that the caller
// owns (it should be empty). Reads `source` to its end. On error the staging
// directory holds a partial tree that the caller removes; nothing outside it
// was created or modified.
Expected<ExtractStats> ExtractPayload(PayloadSource& source, const std::filesystem::path& staging,
                                      const ExtractLimits& limits);

}  // namespace sag::dpi
