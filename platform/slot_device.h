// Slot devices: the storage an A/B slot lives on, a block device or a regular
// file of fixed size.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <span>

#include "common/error.h"

namespace sag::platform {

class SlotWriter {
 public:
  virtual ~SlotWriter() = default;
  // Writes at `offset`; kSlotSize when offset + data.size() exceeds Size()
  // (nothing is written then).
  virtual Status WriteAt(std::uint64_t offset, std::span<const std::uint8_t> data) = 0;
  // Flushes everything written before the call to stable storage. A slot is
  // not written until Sync() returned success. May be called from another
  // thread while WriteAt() runs (the install syncs beside its writer).
  virtual Status Sync() = 0;
};

class SlotDevice {
 public:
  virtual ~SlotDevice() = default;
  [[nodiscard]] virtual const std::filesystem::path& path() const = 0;
  virtual Expected<std::uint64_t> Size() = 0;
  // kSlotReadOnly when the device cannot be opened for writing.
  virtual Expected<std::unique_ptr<SlotWriter>> OpenWriter() = 0;
  // Reads up to buf.size() bytes at offset; fewer only at the end. Safe to
  // call from several threads at once.
  virtual Expected<std::size_t> ReadAt(std::uint64_t offset, std::span<std::uint8_t> buf) = 0;
  // As ReadAt, but what the medium holds, not a cache in front of it (the
  // page cache may still hold data the device lost or never got). For data
  // made durable by SlotWriter::Sync(). By default a device without a cache.
  virtual Expected<std::size_t> ReadMediumAt(std::uint64_t offset, std::span<std::uint8_t> buf) {
    return ReadAt(offset, buf);
  }
};

}  // namespace sag::platform
