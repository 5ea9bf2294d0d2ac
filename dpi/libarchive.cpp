#include "dpi/libarchive.h"

#include <dlfcn.h>

#include <string>

namespace sag::dpi {

namespace {

// dlsym into a typed function pointer.
template <typename Fn>
Status Resolve(void* handle, const char* name, Fn& out) {
  ::dlerror();
  void* sym = ::dlsym(handle, name);
  if (sym == nullptr) {
    const char* why = ::dlerror();
    return Error(Errc::kInternal, std::string(LibArchive::kSoname) + " has no symbol " + name +
                                      (why != nullptr ? std::string(" (") + why + ")" : "") +
                                      "; the libarchive13 package is damaged or too old");
  }
  out = reinterpret_cast<Fn>(sym);  // NOLINT(cppcoreguidelines-pro-type-reinterpret-cast)
  return Ok();
}

}  // namespace

Expected<std::shared_ptr<const LibArchive>> LibArchive::Load() {
  // RTLD_LOCAL: its symbols stay out of the global scope; RTLD_NOW: a missing
  // dependency fails here, not in the middle of an extraction.
  void* handle = ::dlopen(kSoname, RTLD_NOW | RTLD_LOCAL);
  if (handle == nullptr) {
    const char* why = ::dlerror();
    return Error(Errc::kInternal, std::string("cannot load ") + kSoname + ": " +
                                      (why != nullptr ? why : "unknown error") +
                                      "; install the libarchive13 package");
  }
  std::shared_ptr<LibArchive> lib(new LibArchive(handle));
  SAG_TRY_STATUS(Resolve(handle, "archive_read_new", lib->read_new));
  SAG_TRY_STATUS(Resolve(handle, "archive_read_free", lib->read_free));
  SAG_TRY_STATUS(Resolve(handle, "archive_read_support_format_tar", lib->read_support_format_tar));
  SAG_TRY_STATUS(
      Resolve(handle, "archive_read_support_filter_none", lib->read_support_filter_none));
  SAG_TRY_STATUS(Resolve(handle, "archive_read_open", lib->read_open));
  SAG_TRY_STATUS(Resolve(handle, "archive_read_next_header", lib->read_next_header));
  SAG_TRY_STATUS(Resolve(handle, "archive_read_data_block", lib->read_data_block));
  SAG_TRY_STATUS(Resolve(handle, "archive_error_string", lib->error_string));
  SAG_TRY_STATUS(Resolve(handle, "archive_entry_pathname", lib->entry_pathname));
  SAG_TRY_STATUS(Resolve(handle, "archive_entry_mode", lib->entry_mode));
  SAG_TRY_STATUS(Resolve(handle, "archive_entry_hardlink", lib->entry_hardlink));
  SAG_TRY_STATUS(Resolve(handle, "archive_entry_symlink", lib->entry_symlink));
  SAG_TRY_STATUS(Resolve(handle, "archive_entry_filetype", lib->entry_filetype));
  SAG_TRY_STATUS(Resolve(handle, "archive_entry_sparse_count", lib->entry_sparse_count));
  SAG_TRY_STATUS(Resolve(handle, "archive_entry_size", lib->entry_size));
  return std::shared_ptr<const LibArchive>(std::move(lib));
}

LibArchive::~LibArchive() { ::dlclose(handle_); }

}  // namespace sag::dpi
