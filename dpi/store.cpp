#include "dpi/store.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <system_error>
#include <utility>

#include "common/atomic_file.h"
#include "common/version.h"

namespace sag::dpi {

namespace fs = std::filesystem;

namespace {

constexpr std::string_view kVersionsPrefix = "versions/";

Status RemoveTree(const fs::path& path) {
  std::error_code ec;
  // remove_all does not follow symlinks inside the tree.
  fs::remove_all(path, ec);
  if (ec) {
    return Error(Errc::kDpiStore, "remove " + path.string() + ": " + ec.message() +
                                      "; check the store's permissions");
  }
  return Ok();
}

Status MakeDir(const fs::path& path) {
  std::error_code ec;
  fs::create_directories(path, ec);
  if (ec) return Error(Errc::kDpiStore, "create " + path.string() + ": " + ec.message());
  return Ok();
}

}  // namespace

Status Store::Init() const {
  SAG_TRY_STATUS(MakeDir(root_ / "versions"));
  SAG_TRY_STATUS(MakeDir(root_ / "staging"));
  const auto tmp = root_ / "current.tmp";
  if (::unlink(tmp.c_str()) != 0 && errno != ENOENT) {
    return MakeErrno(Errc::kDpiStore, "remove " + tmp.string());
  }
  return Ok();
}

Expected<std::optional<std::string>> Store::Current() const {
  const auto link = CurrentLink();
  std::error_code ec;
  const auto st = fs::symlink_status(link, ec);
  if (ec || st.type() == fs::file_type::not_found) {
    if (!ec || ec == std::errc::no_such_file_or_directory) return std::optional<std::string>();
    return Error(Errc::kDpiStore, "stat " + link.string() + ": " + ec.message());
  }
  if (st.type() != fs::file_type::symlink) {
    return Error(Errc::kDpiStore, link.string() +
                                      " is not a symlink; the store was modified by "
                                      "hand: point it at versions/<version>");
  }
  const auto target = fs::read_symlink(link, ec).string();
  if (ec) return Error(Errc::kDpiStore, "readlink " + link.string() + ": " + ec.message());
  if (!target.starts_with(kVersionsPrefix) || target.size() == kVersionsPrefix.size() ||
      target.find('/', kVersionsPrefix.size()) != std::string::npos) {
    return Error(Errc::kDpiStore, link.string() + " points at '" + target +
                                      "', not at versions/<version>; repair the store by hand");
  }
  auto version = target.substr(kVersionsPrefix.size());
  if (!fs::is_directory(VersionDir(version), ec)) {
    return Error(Errc::kDpiStore, link.string() + " points at the missing directory " +
                                      VersionDir(version).string());
  }
  return std::optional<std::string>(std::move(version));
}

Expected<std::vector<std::string>> Store::List() const {
  std::vector<std::string> out;
  std::error_code ec;
  for (fs::directory_iterator it(root_ / "versions", ec), end; !ec && it != end; it.increment(ec)) {
    out.push_back(it->path().filename().string());
  }
  if (ec)
    return Error(Errc::kDpiStore, "list " + (root_ / "versions").string() + ": " + ec.message());
  return out;
}

Status Store::ClearStaging() const {
  std::error_code ec;
  std::vector<fs::path> entries;
  for (fs::directory_iterator it(root_ / "staging", ec), end; !ec && it != end; it.increment(ec)) {
    entries.push_back(it->path());
  }
  if (ec && ec != std::errc::no_such_file_or_directory) {
    return Error(Errc::kDpiStore, "list staging: " + ec.message());
  }
  for (const auto& e : entries) SAG_TRY_STATUS(RemoveTree(e));
  if (!entries.empty()) SAG_TRY_STATUS(FsyncDir(root_ / "staging"));
  return Ok();
}

Expected<fs::path> Store::PrepareStaging(const std::string& version) const {
  SAG_TRY_STATUS(ClearStaging());
  const auto dir = StagingDir(version);
  std::error_code ec;
  if (!fs::create_directory(dir, ec) || ec) {
    return Error(Errc::kDpiStore, "create " + dir.string() + ": " +
                                      (ec ? ec.message() : std::string("already exists")));
  }
  return dir;
}

Status Store::Promote(const std::string& version) const {
  const auto staged = StagingDir(version);
  const auto final_dir = VersionDir(version);
  std::error_code ec;
  if (!fs::exists(staged, ec)) {
    if (fs::is_directory(final_dir, ec)) return Ok();  // promoted before a crash
    return Error(Errc::kDpiStore, "neither " + staged.string() + " nor " + final_dir.string() +
                                      " exists; the staged database is gone");
  }
  if (fs::exists(final_dir, ec)) {
    SAG_TRY(auto current, Current());
    if (current == version) {
      return Error(Errc::kDpiStore, "version " + version + " is active; it cannot be replaced");
    }
    SAG_TRY_STATUS(RemoveTree(final_dir));  // a stale copy from an earlier failed job
  }
  if (::rename(staged.c_str(), final_dir.c_str()) != 0) {
    return MakeErrno(Errc::kDpiStore, "rename " + staged.string() + " to " + final_dir.string());
  }
  // Both directories changed: make the move durable before `current` names it.
  SAG_TRY_STATUS(FsyncDir(root_ / "versions"));
  return FsyncDir(root_ / "staging");
}

Status Store::Activate(const std::optional<std::string>& version) const {
  const auto link = CurrentLink();
  if (!version) {
    if (::unlink(link.c_str()) != 0 && errno != ENOENT) {
      return MakeErrno(Errc::kDpiStore, "remove " + link.string());
    }
    return FsyncDir(root_);
  }
  std::error_code ec;
  if (!fs::is_directory(VersionDir(*version), ec)) {
    return Error(Errc::kDpiStore, "cannot activate " + *version + ": " +
                                      VersionDir(*version).string() + " does not exist");
  }
  const auto tmp = root_ / "current.tmp";
  const std::string target = std::string(kVersionsPrefix) + *version;
  if (::unlink(tmp.c_str()) != 0 && errno != ENOENT) {
    return MakeErrno(Errc::kDpiStore, "remove " + tmp.string());
  }
  if (::symlink(target.c_str(), tmp.c_str()) != 0) {
    return MakeErrno(Errc::kDpiStore, "create symlink " + tmp.string());
  }
  // rename(2) replaces `current` atomically: any reader, and the disk after a
  // power cut once the directory is fsynced, sees the old or the new link.
  if (::rename(tmp.c_str(), link.c_str()) != 0) {
    const auto err = MakeErrno(Errc::kDpiStore, "rename " + tmp.string() + " to " + link.string());
    ::unlink(tmp.c_str());
    return err;
  }
  return FsyncDir(root_);
}

Status Store::Remove(const std::string& version) const {
  SAG_TRY(auto current, Current());
  if (current == version) {
    return Error(Errc::kDpiStore, "refusing to remove the active version " + version);
  }
  std::error_code ec;
  if (!fs::exists(VersionDir(version), ec)) return Ok();
  SAG_TRY_STATUS(RemoveTree(VersionDir(version)));
  return FsyncDir(root_ / "versions");
}

Status Store::Prune(int keep, const std::optional<std::string>& previous) const {
  SAG_TRY(auto current, Current());
  SAG_TRY(auto all, List());
  std::vector<std::string> kept;
  auto keep_one = [&](const std::optional<std::string>& v) {
    if (v && std::find(all.begin(), all.end(), *v) != all.end() &&
        std::find(kept.begin(), kept.end(), *v) == kept.end()) {
      kept.push_back(*v);
    }
  };
  keep_one(current);
  if (keep > 1) keep_one(previous);
  // Then the newest of the others; names that do not parse go first.
  std::vector<std::pair<std::optional<Version>, std::string>> others;
  for (const auto& v : all) {
    if (std::find(kept.begin(), kept.end(), v) != kept.end()) continue;
    auto parsed = Version::Parse(VersionKind::kDpi, v);
    others.emplace_back(parsed ? std::optional<Version>(*parsed) : std::nullopt, v);
  }
  std::sort(others.begin(), others.end(), [](const auto& a, const auto& b) {
    if (a.first.has_value() != b.first.has_value()) return b.first.has_value();
    if (a.first && b.first) return *b.first < *a.first;
    return a.second < b.second;
  });
  bool removed = false;
  for (const auto& [parsed, name] : others) {
    if (parsed && std::cmp_less(kept.size(), keep)) {
      kept.push_back(name);
      continue;
    }
    SAG_TRY_STATUS(RemoveTree(VersionDir(name)));
    removed = true;
  }
  if (removed) SAG_TRY_STATUS(FsyncDir(root_ / "versions"));
  return Ok();
}

}  // namespace sag::dpi
