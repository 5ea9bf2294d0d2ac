#include "common/journal.h"

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <string>

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
  if (const auto it = doc.find("format"); it != doc.end()) {
    if (!it->is_number_integer() || it->get<std::int64_t>() < 1) {
      return Error(Errc::kJournalCorrupt,
                   "job journal " + path_.string() + " has format " + it->dump() +
                       ", not a positive integer; move it aside to let the agent start clean");
    }
    if (it->get<std::int64_t>() > format_) {
      return NewerFormat(std::to_string(it->get<std::int64_t>()));
    }
  }
  return std::optional<nlohmann::json>(std::move(doc));
}

Error Journal::NewerFormat(std::string_view what) const {
  return {Errc::kJournalNewerFormat,
          "job journal " + path_.string() + " was written by a newer sag-agent (" +
              std::string(what) + "; this agent reads record format " + std::to_string(format_) +
              " and older); it is left untouched. Boot the slot with the newer agent to "
              "let it finish the job, or, to give up that job, move the file aside (its "
              "progress is lost) and send the job again"};
}

Status Journal::Save(const nlohmann::json& record) const {
  if (!record.is_object()) {
    return Error(Errc::kInternal, "job journal " + path_.string() + ": a record is an object");
  }
  nlohmann::json versioned = record;
  versioned["format"] = format_;
  return WriteFileAtomic(path_, versioned.dump(2) + "\n", 0600);
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
