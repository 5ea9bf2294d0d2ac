// SlotDevice on a block device or a regular file. A regular file's size is
// its current length (the simulator pre-allocates it); writes never extend
// it. Read-only: a block device with the kernel's read-only flag (BLKROGET),
// a file without any write permission bit (refused even for root, so that a
// file can stand in for a write-protected partition), or an open that fails
// with EROFS/EACCES/EPERM.
#pragma once

#include <mutex>
#include <optional>

#include "platform/slot_device.h"

namespace sag::platform {

class FileSlotDevice : public SlotDevice {
 public:
  explicit FileSlotDevice(std::filesystem::path path);
  ~FileSlotDevice() override;
  FileSlotDevice(const FileSlotDevice&) = delete;
  FileSlotDevice& operator=(const FileSlotDevice&) = delete;

  [[nodiscard]] const std::filesystem::path& path() const override { return path_; }
  Expected<std::uint64_t> Size() override;
  Expected<std::unique_ptr<SlotWriter>> OpenWriter() override;
  Expected<std::size_t> ReadAt(std::uint64_t offset, std::span<std::uint8_t> buf) override;
  // O_DIRECT through an aligned bounce buffer; where the file system refuses
  // O_DIRECT, the range is dropped from the page cache (clean after Sync())
  // before it is read.
  Expected<std::size_t> ReadMediumAt(std::uint64_t offset, std::span<std::uint8_t> buf) override;

 private:
  Expected<int> ReadFd();  // opens the read descriptor once

  std::filesystem::path path_;
  std::once_flag read_open_;
  int read_fd_ = -1;  // set once under read_open_
  int read_errno_ = 0;
  std::once_flag direct_open_;
  int direct_fd_ = -1;  // O_DIRECT; set once under direct_open_
  int direct_errno_ = 0;
};

// Opens and checks a slot: it exists, is a regular file or block device, is
// not empty, and (when given) has exactly `expected_size` bytes. Errors name
// the slot and the device: kNotFound, kSlotIo (wrong type), kSlotSize.
Expected<std::unique_ptr<SlotDevice>> OpenSlotDevice(
    std::string_view slot_name, const std::filesystem::path& path,
    std::optional<std::uint64_t> expected_size = std::nullopt);

}  // namespace sag::platform
