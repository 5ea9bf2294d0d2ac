#include "common/journal.h"

#include <cerrno>
#include <cstdio>

#include "common/atomic_file.h"

namespace sag {

Expected<std::optional<nlohmann::json>> Journal::Load() const {
  auto text = ReadFile(path_, 4U << 20U);
  if (!text) {
    if (text.error().code() == Errc::kNotFound) return std::optional<nlohmann::json>();
    return std::move(text).error().WithContext("reading job journal");
  }
  auto doc = nlohmann::json::parse(*text, nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded() || !doc.is_object()) {
    return Error(Errc::kJournalCorrupt,
                 "job journal " + path_.string() +
                     " is not a JSON object; move it aside to let the agent start clean");
  }
  return std::optional<nlohmann::json>(std::move(doc));
}

Status Journal::Save(const nlohmann::json& record) const {
  return WriteFileAtomic(path_, record.dump(2) + "\n", 0600);
}

Status Journal::Archive() const {
  const auto last = path_.string() + ".last";
  if (std::rename(path_.c_str(), last.c_str()) != 0) {
    if (errno == ENOENT) return Ok();
    return MakeErrno(Errc::kIo, "archive journal " + path_.string());
  }
  return FsyncDir(path_.parent_path());
}

}  // namespace sag
