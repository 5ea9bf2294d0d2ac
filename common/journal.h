// A durable record of one job: a JSON document replaced atomically (temp
// file, fsync, rename, fsync of the directory) at every state transition, so
// after SIGKILL or power loss at any instant it holds the last committed
// state, complete. The state machines that use it live in firmware/ and dpi/.
#pragma once

#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>

#include "common/error.h"

namespace sag {

class Journal {
 public:
  explicit Journal(std::filesystem::path path) : path_(std::move(path)) {}

  // nullopt when no job was ever recorded; kJournalCorrupt when the file
  // exists but is not a JSON object (never expected: writes are atomic).
  Expected<std::optional<nlohmann::json>> Load() const;
  Status Save(const nlohmann::json& record) const;
  // Moves the record aside to `<name>.last` (kept for `status`), atomically.
  Status Archive() const;

  [[nodiscard]] const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

}  // namespace sag
