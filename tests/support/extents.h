// What a file system did with a file's blocks: whether a range was zeroed in
// place (FALLOC_FL_ZERO_RANGE leaves it allocated but unwritten) rather than
// written, and whether the file system can do that at all.
#pragma once

#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fiemap.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>

namespace sag::test {

// Whether the extent holding `offset` of `path` is allocated but unwritten;
// nullopt where FIEMAP says nothing (a hole, no FIEMAP).
inline std::optional<bool> Unwritten(const std::filesystem::path& path, std::uint64_t offset) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return std::nullopt;
  // struct fiemap with room for one extent after it
  constexpr std::size_t kSize = sizeof(struct fiemap) + sizeof(struct fiemap_extent);
  alignas(struct fiemap) std::array<unsigned char, kSize> buf{};
  auto* map = reinterpret_cast<struct fiemap*>(buf.data());
  map->fm_start = offset;
  map->fm_length = 4096;
  map->fm_flags = FIEMAP_FLAG_SYNC;
  map->fm_extent_count = 1;
  const int rc = ::ioctl(fd, FS_IOC_FIEMAP, map);
  ::close(fd);
  if (rc != 0 || map->fm_mapped_extents != 1) return std::nullopt;
  return (map->fm_extents[0].fe_flags & FIEMAP_EXTENT_UNWRITTEN) != 0;
}

// Whether the file system holding `dir` zeroes a range in place (ext4, xfs;
// not tmpfs). Probes with a scratch file in `dir`.
inline bool ZeroesRanges(const std::filesystem::path& dir) {
  const auto probe = dir / ".zero-range-probe";
  std::ofstream(probe, std::ios::binary) << std::string(8192, 'x');
  const int fd = ::open(probe.c_str(), O_WRONLY | O_CLOEXEC);
  const bool zeroes =
      fd >= 0 && ::fallocate(fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, 0, 4096) == 0;
  if (fd >= 0) ::close(fd);
  std::filesystem::remove(probe);
  return zeroes;
}

}  // namespace sag::test
