// libarchive, loaded with dlopen() while a DPI package is extracted and
// unloaded after it, as systemd loads its optional libraries: the daemon
// spends nearly all its life idle, and libarchive's dependency chain
// (libxml2, ICU, nettle, lzma, lz4, bz2, acl) is about 1.5 MiB of mapped
// pages that it would otherwise carry all that time (bench/daemon_bench.sh).
// The declarations still come from <archive.h>: a mismatching signature is a
// compile error, and the soname pins the ABI.
#pragma once

#include <archive.h>
#include <archive_entry.h>

#include <memory>

#include "common/error.h"

namespace sag::dpi {

class LibArchive {
 public:
  static constexpr const char* kSoname = "libarchive.so.13";

  // Loads the library and resolves every function below; an error names the
  // library or symbol and the package that provides it.
  static Expected<std::shared_ptr<const LibArchive>> Load();

  LibArchive(const LibArchive&) = delete;
  LibArchive& operator=(const LibArchive&) = delete;
  ~LibArchive();

  decltype(&::archive_read_new) read_new = nullptr;
  decltype(&::archive_read_free) read_free = nullptr;
  decltype(&::archive_read_support_format_tar) read_support_format_tar = nullptr;
  decltype(&::archive_read_support_filter_none) read_support_filter_none = nullptr;
  decltype(&::archive_read_open) read_open = nullptr;
  decltype(&::archive_read_next_header) read_next_header = nullptr;
  decltype(&::archive_read_data_block) read_data_block = nullptr;
  decltype(&::archive_error_string) error_string = nullptr;
  decltype(&::archive_entry_pathname) entry_pathname = nullptr;
  decltype(&::archive_entry_mode) entry_mode = nullptr;
  decltype(&::archive_entry_hardlink) entry_hardlink = nullptr;
  decltype(&::archive_entry_symlink) entry_symlink = nullptr;
  decltype(&::archive_entry_filetype) entry_filetype = nullptr;
  decltype(&::archive_entry_sparse_count) entry_sparse_count = nullptr;
  decltype(&::archive_entry_size) entry_size = nullptr;

 private:
  explicit LibArchive(void* handle) : handle_(handle) {}
  void* handle_;
};

}  // namespace sag::dpi
