#pragma once
// A heap buffer aligned for O_DIRECT (4096 bytes: any logical block size up
// to a page). SlotDevice reads into it and writes from it without a bounce
// buffer; the image reader decodes chunks into such buffers so that the
// installer's writes go to the slot directly (docs/device-upgrade.md, "Writes").
// Its pages are not touched before they are written.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <new>
#include <span>

namespace sag {

inline constexpr std::size_t kDirectAlign = 4096;

class AlignedBuffer {
 public:
  explicit AlignedBuffer(std::size_t size)
      : data_(static_cast<std::uint8_t*>(std::aligned_alloc(
                  kDirectAlign, (std::max<std::size_t>(size, 1) + kDirectAlign - 1) / kDirectAlign *
                                    kDirectAlign)),
              &std::free),
        size_(size) {
    if (data_ == nullptr) throw std::bad_alloc();
  }
  [[nodiscard]] std::uint8_t* data() { return data_.get(); }
  [[nodiscard]] const std::uint8_t* data() const { return data_.get(); }
  [[nodiscard]] std::size_t size() const { return size_; }
  std::span<std::uint8_t> span() { return {data_.get(), size_}; }
  [[nodiscard]] std::span<const std::uint8_t> span() const { return {data_.get(), size_}; }

 private:
  std::unique_ptr<std::uint8_t, decltype(&std::free)> data_;
  std::size_t size_;
};

// Whether a write or read of `data` at `offset` meets O_DIRECT's alignment.
inline bool DirectAligned(const void* data, std::uint64_t offset, std::size_t size) {
  return reinterpret_cast<std::uintptr_t>(data) % kDirectAlign == 0 && offset % kDirectAlign == 0 &&
         size % kDirectAlign == 0;
}

}  // namespace sag
