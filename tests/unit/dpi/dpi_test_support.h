// Helpers for the DPI tests: tar / tar.zst archives built with libarchive's
// writer, payload sources over buffers or generated lazily, a SystemInfo fake.
#pragma once

#include <archive.h>
#include <archive_entry.h>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "common/error.h"
#include "dpi/payload_source.h"
#include "platform/system_info.h"

namespace sag::dpi::test {

// Builds an archive in memory, entry by entry, including entries that a
// careful tar would never write (absolute paths, '..', devices).
class TarBuilder {
 public:
  explicit TarBuilder(bool zstd = false) : a_(archive_write_new()) {
    archive_write_set_format_pax_restricted(a_);
    if (zstd) archive_write_add_filter_zstd(a_);
    archive_write_set_bytes_in_last_block(a_, 1);
    archive_write_open(a_, &out_, nullptr, &TarBuilder::Write, nullptr);
  }
  ~TarBuilder() {
    if (a_ != nullptr) archive_write_free(a_);
  }
  TarBuilder(const TarBuilder&) = delete;
  TarBuilder& operator=(const TarBuilder&) = delete;

  TarBuilder& File(const std::string& path, const std::string& content, unsigned mode = 0644) {
    Header(path, AE_IFREG, mode, static_cast<la_int64_t>(content.size()), [&](archive_entry*) {});
    archive_write_data(a_, content.data(), content.size());
    return *this;
  }
  // A file of `size` zero bytes, written in pieces (a bomb needs no buffer).
  TarBuilder& Zeros(const std::string& path, std::uint64_t size) {
    Header(path, AE_IFREG, 0644, static_cast<la_int64_t>(size), [&](archive_entry*) {});
    const std::string block(1U << 20U, '\0');
    for (std::uint64_t left = size; left > 0;) {
      const auto n = static_cast<std::size_t>(std::min<std::uint64_t>(left, block.size()));
      archive_write_data(a_, block.data(), n);
      left -= n;
    }
    return *this;
  }
  TarBuilder& Dir(const std::string& path, unsigned mode = 0755) {
    Header(path, AE_IFDIR, mode, 0, [](archive_entry*) {});
    return *this;
  }
  TarBuilder& Symlink(const std::string& path, const std::string& target) {
    Header(path, AE_IFLNK, 0777, 0,
           [&](archive_entry* e) { archive_entry_set_symlink(e, target.c_str()); });
    return *this;
  }
  TarBuilder& Hardlink(const std::string& path, const std::string& target) {
    Header(path, AE_IFREG, 0644, 0,
           [&](archive_entry* e) { archive_entry_set_hardlink(e, target.c_str()); });
    return *this;
  }
  TarBuilder& Special(const std::string& path, unsigned type) {
    Header(path, type, 0644, 0, [](archive_entry* e) { archive_entry_set_rdev(e, 0x0801); });
    return *this;
  }
  std::string Finish() {
    archive_write_close(a_);
    archive_write_free(a_);
    a_ = nullptr;
    return std::move(out_);
  }

 private:
  template <typename F>
  void Header(const std::string& path, unsigned type, unsigned mode, la_int64_t size, F&& extra) {
    archive_entry* e = archive_entry_new();
    archive_entry_set_pathname(e, path.c_str());
    archive_entry_set_filetype(e, type);
    archive_entry_set_perm(e, mode);
    if ((mode & 06000U) != 0) archive_entry_set_mode(e, type | mode);
    archive_entry_set_size(e, size);
    archive_entry_set_mtime(e, 1600000000, 0);
    extra(e);
    archive_write_header(a_, e);
    archive_entry_free(e);
  }
  static la_ssize_t Write(struct archive* /*a*/, void* client, const void* buf, size_t n) {
    static_cast<std::string*>(client)->append(static_cast<const char*>(buf), n);
    return static_cast<la_ssize_t>(n);
  }

  struct archive* a_;
  std::string out_;
};

// Payload bytes from a buffer, in chunks of a given size.
class BufferSource final : public PayloadSource {
 public:
  explicit BufferSource(std::string data, std::size_t chunk = 64U << 10U)
      : data_(std::move(data)), chunk_(chunk) {}
  Expected<std::optional<std::span<const std::uint8_t>>> Next() override {
    ++calls_;
    if (fail_at_ && pos_ >= *fail_at_) {
      return Error(Errc::kChunkHashMismatch, "chunk at " + std::to_string(pos_) + " is corrupt");
    }
    if (on_chunk_) on_chunk_();
    if (pos_ >= data_.size()) return std::optional<std::span<const std::uint8_t>>();
    const auto n = std::min(chunk_, data_.size() - pos_);
    std::span<const std::uint8_t> s(reinterpret_cast<const std::uint8_t*>(data_.data()) + pos_, n);
    pos_ += n;
    return std::optional(s);
  }
  void FailAt(std::size_t offset) { fail_at_ = offset; }
  void OnChunk(std::function<void()> f) { on_chunk_ = std::move(f); }
  [[nodiscard]] int calls() const { return calls_; }
  [[nodiscard]] std::size_t size() const { return data_.size(); }

 private:
  std::string data_;
  std::size_t chunk_;
  std::size_t pos_ = 0;
  int calls_ = 0;
  std::optional<std::size_t> fail_at_;
  std::function<void()> on_chunk_;
};

// A tar of `count` empty entries (one directory, listed again and again)
// generated while it is read: millions of entries without holding them.
class ManyEntriesSource final : public PayloadSource {
 public:
  explicit ManyEntriesSource(std::uint64_t count) : count_(count), a_(archive_write_new()) {
    archive_write_set_format_ustar(a_);
    archive_write_open(a_, &buf_, nullptr, &ManyEntriesSource::Write, nullptr);
  }
  ~ManyEntriesSource() override { archive_write_free(a_); }
  ManyEntriesSource(const ManyEntriesSource&) = delete;
  ManyEntriesSource& operator=(const ManyEntriesSource&) = delete;

  Expected<std::optional<std::span<const std::uint8_t>>> Next() override {
    out_.clear();
    out_.swap(buf_);
    while (out_.empty() && !closed_) {
      if (written_ < count_) {
        archive_entry* e = archive_entry_new();
        archive_entry_set_pathname(e, "e/");
        archive_entry_set_filetype(e, AE_IFDIR);
        archive_entry_set_perm(e, 0755);
        archive_entry_set_size(e, 0);
        archive_write_header(a_, e);
        archive_entry_free(e);
        ++written_;
      } else {
        archive_write_close(a_);
        closed_ = true;
      }
      out_.swap(buf_);
    }
    if (out_.empty()) return std::optional<std::span<const std::uint8_t>>();
    return std::optional(std::span<const std::uint8_t>(
        reinterpret_cast<const std::uint8_t*>(out_.data()), out_.size()));
  }
  [[nodiscard]] std::uint64_t written() const { return written_; }

 private:
  static la_ssize_t Write(struct archive* /*a*/, void* client, const void* buf, size_t n) {
    static_cast<std::string*>(client)->append(static_cast<const char*>(buf), n);
    return static_cast<la_ssize_t>(n);
  }

  std::uint64_t count_;
  std::uint64_t written_ = 0;
  bool closed_ = false;
  struct archive* a_;
  std::string buf_;
  std::string out_;
};

class FakeSystemInfo final : public platform::SystemInfo {
 public:
  Expected<std::string> SerialNumber() override { return std::string("sag-test"); }
  Expected<std::string> HardwareModel() override { return std::string("sag-1000"); }
  Expected<std::string> BootId() override { return std::string("boot-1"); }
  Expected<std::uint64_t> FreeSpace(const std::filesystem::path& /*dir*/) override { return free_; }
  void SetFree(std::uint64_t free) { free_ = free; }

 private:
  std::uint64_t free_ = 1ULL << 40U;
};

}  // namespace sag::dpi::test
