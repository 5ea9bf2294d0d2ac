// Durable, untearable file replacement.
//
// WriteFileAtomic writes to a temporary file in the same directory, fsyncs it,
// renames it over the target and fsyncs the directory. A reader (or a reboot
// after a power cut at any instant) sees either the complete old content or
// the complete new content, never a mix and never an empty file.
#pragma once

#include <filesystem>
#include <string>
#include <string_view>

#include "common/error.h"

namespace sag {

Status WriteFileAtomic(const std::filesystem::path& path, std::string_view content,
                       unsigned mode = 0644);

// The same replacement without the fsyncs: readers never see a torn file,
// but after a power cut the old content, the new one or none may be found.
// For runtime files that are rebuilt at start (status.json, updated with
// every percent of progress: an fsync each would slow the install).
Status ReplaceFile(const std::filesystem::path& path, std::string_view content,
                   unsigned mode = 0644);

// fsync of a directory, so that a rename or create inside it is durable.
Status FsyncDir(const std::filesystem::path& dir);

// Reads a whole file; refuses files above max_size (kImageTooLarge) so that a
// hostile or corrupted file cannot make the agent allocate without bound.
Expected<std::string> ReadFile(const std::filesystem::path& path,
                               std::size_t max_size = 16U << 20U);

}  // namespace sag
