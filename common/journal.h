// A durable record of one job: a JSON document replaced atomically (temp
// file, fsync, rename, fsync of the directory) at every state transition, so
// after SIGKILL or power loss at any instant it holds the last committed
// state, complete. The state machines that use it live in firmware/ and dpi/.
#pragma once

#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <string_view>

#include "common/error.h"

namespace sag {

// Every record carries the format of its schema ("format": N, added by
// Save). A record without one was written before records had a format and is
// format 1. An agent reads formats up to its own: after an A/B fallback an
// older agent may find a newer agent's record, and it must neither guess at
// it nor overwrite it (docs/device-upgrade.md, "Journal format").
class Journal {
 public:
  // `format`: the schema version this agent writes and the newest it reads.
  explicit Journal(std::filesystem::path path, int format = 1)
      : path_(std::move(path)), format_(format) {}

  // nullopt when no job was ever recorded. kJournalCorrupt (naming the file
  // and what is wrong) when the file is not a JSON object or its format is
  // not a positive integer; kJournalNewerFormat when a newer agent wrote it.
  // The file is never changed by a failed Load.
  Expected<std::optional<nlohmann::json>> Load() const;
  // `record` must be an object; its "format" is set to this agent's.
  Status Save(const nlohmann::json& record) const;
  // Moves the record aside to `<name>.last` (kept for `status`), atomically.
  Status Archive() const;

  [[nodiscard]] const std::filesystem::path& path() const { return path_; }
  [[nodiscard]] int format() const { return format_; }

  // kJournalNewerFormat for this file: what was newer (a format number, an
  // unknown state) and what the operator can do.
  [[nodiscard]] Error NewerFormat(std::string_view what) const;

 private:
  std::filesystem::path path_;
  int format_;
};

}  // namespace sag
