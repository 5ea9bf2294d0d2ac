#include "platform/file_slot_device.h"

#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "common/aligned_buffer.h"
#include "common/all_zero.h"

namespace sag::platform {

namespace {

Expected<std::uint64_t> SizeOf(int fd, const std::filesystem::path& path) {
  struct stat st {};
  if (::fstat(fd, &st) != 0) return MakeErrno(Errc::kSlotIo, "stat slot device " + path.string());
  if (S_ISREG(st.st_mode)) return static_cast<std::uint64_t>(st.st_size);
  if (S_ISBLK(st.st_mode)) {
    std::uint64_t size = 0;
    if (::ioctl(fd, BLKGETSIZE64, &size) != 0) {
      return MakeErrno(Errc::kSlotIo, "BLKGETSIZE64 on " + path.string());
    }
    return size;
  }
  return Error(Errc::kSlotIo,
               "slot device " + path.string() + " is neither a block device nor a regular file");
}

class FileSlotWriter : public SlotWriter {
 public:
  FileSlotWriter(int fd, int direct_fd, bool block, std::uint64_t size, std::filesystem::path path)
      : fd_(fd), direct_fd_(direct_fd), block_(block), size_(size), path_(std::move(path)) {}
  ~FileSlotWriter() override {
    ::close(fd_);
    if (direct_fd_ >= 0) ::close(direct_fd_);
  }
  FileSlotWriter(const FileSlotWriter&) = delete;
  FileSlotWriter& operator=(const FileSlotWriter&) = delete;

  Status WriteAt(std::uint64_t offset, std::span<const std::uint8_t> data) override {
    if (offset > size_ || data.size() > size_ - offset) {
      return Error(Errc::kSlotSize, "write of " + std::to_string(data.size()) + " bytes at " +
                                        std::to_string(offset) + " goes past the end of slot " +
                                        path_.string() + " (" + std::to_string(size_) +
                                        " bytes); nothing written");
    }
    // Aligned data goes to the medium directly (O_DIRECT): no copy into the
    // page cache, which on a loop or virtual disk costs more CPU than the
    // rest of the install (docs/device-upgrade.md, "Writes"); Sync() still flushes
    // the device's cache. Anything else (a chunk's unaligned tail, a delta
    // install's frames) goes through the page cache.
    const bool direct = direct_fd_ >= 0 && DirectAligned(data.data(), offset, data.size());
    if (direct && zero_out_ && data.size() >= kZeroOutMin && AllZero(data)) {
      SAG_TRY(const bool zeroed, ZeroOut(offset, data.size()));
      if (zeroed) return Ok();
    }
    while (!data.empty()) {
      const ssize_t n =
          ::pwrite(direct ? direct_fd_ : fd_, data.data(), data.size(), static_cast<off_t>(offset));
      if (n < 0) {
        if (errno == EINTR) continue;
        if (direct && errno == EINVAL) {
          // A device whose logical blocks are larger than 4 KiB: the page
          // cache from now on.
          ::close(direct_fd_);
          direct_fd_ = -1;
          return WriteAt(offset, data);
        }
        return MakeErrno(Errc::kSlotIo,
                         "write to slot " + path_.string() + " at " + std::to_string(offset));
      }
      data = data.subspan(static_cast<std::size_t>(n));
      offset += static_cast<std::uint64_t>(n);
    }
    return direct ? Ok() : WriteBehind(offset);
  }

  Status Sync() override {
    // Until this returns, the written data may sit in the page cache: a power
    // cut would lose it while the slot already looks written.
    if (::fsync(fd_) != 0) {
      const int err = errno;
      Remember(err);
      return MakeErrno(Errc::kSlotIo, "fsync slot " + path_.string(), err);
    }
    // The kernel reports a writeback error once per descriptor: when
    // sync_file_range (or an earlier fsync) saw it, this fsync returns 0
    // although the data never reached the medium. The slot stays failed.
    if (const int err = failed_.load(); err != 0) {
      return MakeErrno(
          Errc::kSlotIo,
          "slot " + path_.string() + " lost written data (a write-back error reported earlier)",
          err);
    }
    return Ok();
  }

 private:
  // An aligned chunk of zeros (the free space of a file system image, often
  // a fifth of it or more) is not sent to the device as data: the range is
  // zeroed in place, by the file system for a slot file
  // (FALLOC_FL_ZERO_RANGE: unwritten extents, the blocks stay allocated, so
  // a later install cannot run out of space where this one did not) or by
  // the device for a block device (BLKZEROOUT: a write-zeroes command where
  // the device has one, a loop device passes it to its backing file; the
  // kernel writes zero pages where it has none). Both are as durable as a
  // write after Sync()'s fsync, and both drop the range from the page cache,
  // so the read-back reads the zeros from the file system or the device.
  // Where neither is supported (tmpfs, a FUSE file system without it) the
  // zeros are written; the first refusal turns the attempt off. Returns
  // whether the range was zeroed.
  static constexpr std::size_t kZeroOutMin = 64U << 10U;
  Expected<bool> ZeroOut(std::uint64_t offset, std::size_t size) {
    int rc = 0;
    if (block_) {
      std::array<std::uint64_t, 2> range{offset, size};  // start, length
      rc = ::ioctl(fd_, BLKZEROOUT, range.data());
    } else {
      rc = ::fallocate(fd_, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(offset),
                       static_cast<off_t>(size));
    }
    if (rc == 0) return true;
    const int err = errno;
    // Refused (no such operation here, a mounted device), interrupted, or
    // short of space for the extents it splits (a write over allocated
    // blocks needs none): written as data.
    if (err == EOPNOTSUPP || err == ENOTTY || err == ENOSYS || err == EINVAL || err == EBUSY ||
        err == EINTR || err == ENOSPC || err == EDQUOT) {
      if (err != EINTR) zero_out_ = false;
      return false;
    }
    return MakeErrno(Errc::kSlotIo,
                     "zero " + std::to_string(size) + " bytes of slot " + path_.string() + " at " +
                         std::to_string(offset),
                     err);
  }

  // Sequential writes: the disk starts on the written data early instead of
  // at the next fsync (which then waits for little), in batches of kKick
  // bytes, and the range kBehind bytes back is waited for, so that dirty
  // pages stay bounded while writing, decoding and hashing overlap. Batches,
  // not every write, and a deep window: a virtual disk wants large requests
  // and many in flight (kicking each 1 MiB chunk with 16 MiB in flight gave
  // 0.75 MiB requests and a 1 GiB install 60 % of dd's speed; 8 MiB batches
  // with 256 MiB in flight give 3 MiB requests and 80-85 %). sync_file_range
  // promises no durability (Sync() does), but it does report the file's
  // pending write-back error, and reporting marks the error seen: the later
  // fsync on this descriptor then returns 0. So an error here fails the write
  // and is remembered for Sync().
  Status WriteBehind(std::uint64_t end) {
    constexpr std::uint64_t kKick = 8U << 20U;
    constexpr std::uint64_t kBehind = 256U << 20U;
    if (end <= kicked_) {  // not sequential (a resume, a rewrite): no hint
      kicked_ = end;
      return Ok();
    }
    if (end - kicked_ < kKick) return Ok();
    if (::sync_file_range(fd_, static_cast<off_t>(kicked_), static_cast<off_t>(end - kicked_),
                          SYNC_FILE_RANGE_WRITE) != 0) {
      return WriteBehindFailed(kicked_);
    }
    kicked_ = end;
    if (end > kBehind + waited_) {
      const std::uint64_t upto = end - kBehind;
      if (::sync_file_range(fd_, static_cast<off_t>(waited_), static_cast<off_t>(upto - waited_),
                            SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE |
                                SYNC_FILE_RANGE_WAIT_AFTER) != 0) {
        return WriteBehindFailed(waited_);
      }
      waited_ = upto;
    }
    return Ok();
  }

  Status WriteBehindFailed(std::uint64_t from) {
    const int err = errno;
    Remember(err);
    return MakeErrno(Errc::kSlotIo,
                     "write-back of slot " + path_.string() + " from " + std::to_string(from), err);
  }

  void Remember(int err) {
    int none = 0;
    failed_.compare_exchange_strong(none, err);
  }

  std::uint64_t kicked_ = 0;    // writeback started up to here
  std::uint64_t waited_ = 0;    // writeback waited for up to here
  std::atomic<int> failed_{0};  // first write-back error seen (errno), for Sync()
  int fd_;
  int direct_fd_;         // O_DIRECT, -1 where the file system refuses it
  bool block_;            // a block device, not a slot file
  bool zero_out_ = true;  // zero ranges in place until refused once
  std::uint64_t size_;
  std::filesystem::path path_;
};

}  // namespace

FileSlotDevice::FileSlotDevice(std::filesystem::path path) : path_(std::move(path)) {}

FileSlotDevice::~FileSlotDevice() {
  if (read_fd_ >= 0) ::close(read_fd_);
  if (direct_fd_ >= 0) ::close(direct_fd_);
}

Expected<std::uint64_t> FileSlotDevice::Size() {
  const int fd = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    return MakeErrno(err == ENOENT ? Errc::kNotFound : Errc::kSlotIo,
                     "open slot device " + path_.string(), err);
  }
  auto size = SizeOf(fd, path_);
  ::close(fd);
  return size;
}

Expected<std::unique_ptr<SlotWriter>> FileSlotDevice::OpenWriter() {
  struct stat st {};
  if (::stat(path_.c_str(), &st) != 0) {
    const int err = errno;
    return MakeErrno(err == ENOENT ? Errc::kNotFound : Errc::kSlotIo,
                     "slot device " + path_.string(), err);
  }
  if (S_ISREG(st.st_mode) && (st.st_mode & 0222) == 0) {
    return Error(Errc::kSlotReadOnly,
                 "slot file " + path_.string() + " is read-only (no write permission bits)");
  }
  // No O_CREAT, no O_TRUNC: a slot is never created or shrunk by writing it.
  const int fd = ::open(path_.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    const bool ro = err == EROFS || err == EACCES || err == EPERM;
    return MakeErrno(ro ? Errc::kSlotReadOnly : Errc::kSlotIo,
                     "open slot device " + path_.string() + " for writing", err);
  }
  if (S_ISBLK(st.st_mode)) {
    int ro = 0;
    if (::ioctl(fd, BLKROGET, &ro) == 0 && ro != 0) {
      ::close(fd);
      return Error(Errc::kSlotReadOnly,
                   "block device " + path_.string() + " is read-only (blockdev --getro)");
    }
  }
  auto size = SizeOf(fd, path_);
  if (!size) {
    ::close(fd);
    return std::move(size).error();
  }
  // The same file for direct writes; none where O_DIRECT is refused (tmpfs
  // before Linux 6.6, some FUSE file systems).
  const int direct_fd = ::open(path_.c_str(), O_WRONLY | O_CLOEXEC | O_DIRECT);
  return std::unique_ptr<SlotWriter>(
      std::make_unique<FileSlotWriter>(fd, direct_fd, S_ISBLK(st.st_mode), *size, path_));
}

Expected<int> FileSlotDevice::ReadFd() {
  std::call_once(read_open_, [this] {
    read_fd_ = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC);
    read_errno_ = errno;
  });
  if (read_fd_ < 0) {
    return MakeErrno(Errc::kSlotIo, "open slot device " + path_.string(), read_errno_);
  }
  return read_fd_;
}

Expected<std::size_t> FileSlotDevice::ReadAt(std::uint64_t offset, std::span<std::uint8_t> buf) {
  SAG_TRY_STATUS(ReadFd());
  std::size_t done = 0;
  while (done < buf.size()) {
    const ssize_t n =
        ::pread(read_fd_, buf.data() + done, buf.size() - done, static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return MakeErrno(Errc::kSlotIo,
                       "read slot " + path_.string() + " at " + std::to_string(offset + done));
    }
    if (n == 0) break;
    done += static_cast<std::size_t>(n);
  }
  return done;
}

Expected<std::size_t> FileSlotDevice::ReadMediumAt(std::uint64_t offset,
                                                   std::span<std::uint8_t> buf) {
  std::call_once(direct_open_, [this] {
    direct_fd_ = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC | O_DIRECT);
    direct_errno_ = errno;
  });
  if (direct_fd_ < 0) {
    if (direct_errno_ != EINVAL) {
      return MakeErrno(Errc::kSlotIo, "open slot device " + path_.string() + " with O_DIRECT",
                       direct_errno_);
    }
    // No O_DIRECT here (tmpfs before Linux 6.6): drop the clean pages, so
    // that the read goes to the medium, which for tmpfs is the cache.
    SAG_TRY(const int fd, ReadFd());
    (void)::posix_fadvise(fd, static_cast<off_t>(offset), static_cast<off_t>(buf.size()),
                          POSIX_FADV_DONTNEED);
    return ReadAt(offset, buf);
  }
  // O_DIRECT wants the buffer, offset and length aligned to the logical
  // block size; 4 KiB covers 512-byte and 4 KiB devices.
  constexpr std::uint64_t kAlign = 4096;
  // An aligned buffer (the installer's) is read into directly, all but a
  // tail shorter than kAlign: no bounce buffer to allocate and copy.
  const std::size_t whole = buf.size() / kAlign * kAlign;
  if (offset % kAlign == 0 && reinterpret_cast<std::uintptr_t>(buf.data()) % kAlign == 0 &&
      whole > 0) {
    std::size_t got = 0;
    while (got < whole) {
      const ssize_t n =
          ::pread(direct_fd_, buf.data() + got, whole - got, static_cast<off_t>(offset + got));
      if (n < 0) {
        if (errno == EINTR) continue;
        return MakeErrno(Errc::kSlotIo, "read slot " + path_.string() + " from the medium at " +
                                            std::to_string(offset + got));
      }
      if (n == 0) break;
      got += static_cast<std::size_t>(n);
      if (got % kAlign != 0) return got;  // the end of the file
    }
    if (got < whole || got == buf.size()) return got;
    SAG_TRY(const std::size_t tail, ReadMediumAt(offset + got, buf.subspan(got)));
    return got + tail;
  }
  const std::uint64_t begin = offset / kAlign * kAlign;
  const std::uint64_t end = (offset + buf.size() + kAlign - 1) / kAlign * kAlign;
  const auto span = static_cast<std::size_t>(end - begin);
  void* raw = nullptr;
  if (::posix_memalign(&raw, kAlign, span == 0 ? kAlign : span) != 0) {
    return Error(Errc::kSlotIo, "no memory for a read of " + std::to_string(span) + " bytes");
  }
  const std::unique_ptr<void, decltype(&std::free)> bounce(raw, &std::free);
  auto* base = static_cast<std::uint8_t*>(raw);
  std::size_t got = 0;
  while (got < span) {
    const ssize_t n = ::pread(direct_fd_, base + got, span - got, static_cast<off_t>(begin + got));
    if (n < 0) {
      if (errno == EINTR) continue;
      return MakeErrno(Errc::kSlotIo, "read slot " + path_.string() + " from the medium at " +
                                          std::to_string(begin + got));
    }
    if (n == 0) break;
    got += static_cast<std::size_t>(n);
    if (got % kAlign != 0) break;  // the end of the file
  }
  const std::uint64_t skip = offset - begin;
  if (got <= skip) return std::size_t{0};
  const std::size_t n = std::min(buf.size(), got - static_cast<std::size_t>(skip));
  std::memcpy(buf.data(), base + skip, n);
  return n;
}

Expected<std::unique_ptr<SlotDevice>> OpenSlotDevice(std::string_view slot_name,
                                                     const std::filesystem::path& path,
                                                     std::optional<std::uint64_t> expected_size) {
  auto dev = std::make_unique<FileSlotDevice>(path);
  auto size = dev->Size();
  if (!size) return std::move(size).error().WithContext("slot " + std::string(slot_name));
  if (*size == 0) {
    return Error(Errc::kSlotSize, "slot " + std::string(slot_name) + " device " + path.string() +
                                      " is empty; a slot file must be pre-allocated to the "
                                      "slot's size");
  }
  if (expected_size && *size != *expected_size) {
    return Error(Errc::kSlotSize, "slot " + std::string(slot_name) + " device " + path.string() +
                                      " has " + std::to_string(*size) + " bytes, expected " +
                                      std::to_string(*expected_size));
  }
  return std::unique_ptr<SlotDevice>(std::move(dev));
}

}  // namespace sag::platform
