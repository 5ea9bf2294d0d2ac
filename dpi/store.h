// The versioned DPI database store.
//
//   <root>/versions/<version>/   one complete database per version
//   <root>/current -> versions/<version>   the active one (relative symlink)
//   <root>/staging/<version>/    extraction in progress (never active)
//
// Which database is live is decided by one symlink, replaced with rename(2):
// a crash at any instant leaves `current` pointing at the old or at the new
// version, both complete (files are fsynced before the swap), never at
// nothing or at a partial tree. This is libostree's deployment swap.
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "common/error.h"

namespace sag::dpi {

class Store {
 public:
  explicit Store(std::filesystem::path root) : root_(std::move(root)) {}

  // Creates root, versions/ and staging/ if missing; removes a `current.tmp`
  // left by a crash between its creation and its rename.
  Status Init() const;

  [[nodiscard]] const std::filesystem::path& root() const { return root_; }
  [[nodiscard]] std::filesystem::path CurrentLink() const { return root_ / "current"; }
  [[nodiscard]] std::filesystem::path VersionDir(const std::string& version) const {
    return root_ / "versions" / version;
  }
  [[nodiscard]] std::filesystem::path StagingDir(const std::string& version) const {
    return root_ / "staging" / version;
  }

  // The active version (the name `current` points at), nullopt when no
  // database was ever activated. kDpiStore when `current` is not a symlink
  // into versions/ or points at a missing directory.
  Expected<std::optional<std::string>> Current() const;

  // Versions present under versions/ (unordered).
  Expected<std::vector<std::string>> List() const;

  // Empties staging/ (leftovers of an interrupted job) and creates an empty
  // staging/<version>/.
  Expected<std::filesystem::path> PrepareStaging(const std::string& version) const;
  // Removes everything under staging/.
  Status ClearStaging() const;

  // Moves staging/<version> to versions/<version> (replacing a stale
  // versions/<version> that is not current). Idempotent: when staging/ no
  // longer holds it and versions/ does, there is nothing to do.
  Status Promote(const std::string& version) const;

  // Points `current` at versions/<version> with a symlink created as
  // current.tmp and renamed over current, then fsyncs the root; nullopt
  // removes `current` (no database active).
  Status Activate(const std::optional<std::string>& version) const;

  // Removes versions/<version>; refuses to remove the active one.
  Status Remove(const std::string& version) const;

  // Keeps `keep` versions (at least the current and `previous` when given;
  // then the newest others), removes the rest.
  Status Prune(int keep, const std::optional<std::string>& previous) const;

 private:
  std::filesystem::path root_;
};

}  // namespace sag::dpi
