// /run/sag-agent/status.json: what the agent is and does, for humans
// (`sag-agent status`), scripts (`--json`) and the simulator. Written
// atomically, so a reader never sees half a file.
#pragma once

#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>

#include "common/error.h"

namespace sag::agent {

class StatusFile {
 public:
  explicit StatusFile(std::filesystem::path path) : path_(std::move(path)) {}

  // Merges `fields` into the document and writes it (with updated_at).
  Status Update(const nlohmann::json& fields);
  Expected<nlohmann::json> Read() const;
  [[nodiscard]] const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
  nlohmann::json doc_ = nlohmann::json::object();
};

// The human form of a status document.
std::string FormatStatus(const nlohmann::json& status);

}  // namespace sag::agent
