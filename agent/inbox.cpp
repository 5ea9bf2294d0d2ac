#include "agent/inbox.h"

#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <utility>

#include "common/atomic_file.h"
#include "common/json_reader.h"
#include "common/unique_fd.h"

namespace sag::agent {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr std::string_view kExt = ".json";

std::string_view FileKind(mode_t mode) {
  if (S_ISLNK(mode)) return "a symbolic link";
  if (S_ISDIR(mode)) return "a directory";
  if (S_ISFIFO(mode)) return "a FIFO";
  if (S_ISSOCK(mode)) return "a socket";
  if (S_ISCHR(mode)) return "a character device";
  if (S_ISBLK(mode)) return "a block device";
  return "not a regular file";
}

}  // namespace

Expected<InboxRequest> DecodeInboxRequest(std::string_view text, std::string_view what) {
  SAG_TRY(const json doc, ParseJson(text, what, Errc::kBadRequest));
  JsonReader r(doc, std::string(what), Errc::kBadRequest);
  r.OnlyKeys({"id", "type", "version", "source", "size", "sha256", "allow_downgrade", "reboot",
              "deadline"});
  InboxRequest req;
  JobSpec& spec = req.spec;
  spec.id = r.Str("id");
  const auto type = r.OptStr("type");
  spec.version = r.Str("version", "");
  spec.source = r.Str("source");
  spec.size = r.U64("size", 0);
  spec.sha256 = r.Str("sha256", "");
  spec.allow_downgrade = r.Bool("allow_downgrade", false);
  spec.reboot = r.Bool("reboot", true);
  spec.deadline = r.Str("deadline", "");
  if (r.ok() && type) {
    const auto t = ParseJobType(*type);
    if (!t || *t == JobType::kUnknown) {
      r.Fail("type", R"(expected "Device" or "Dpi", got ')" + type->substr(0, 40) + "'");
    } else {
      spec.type = *t;
    }
  }
  if (r.ok()) {
    if (auto problem = CheckJobSpec(spec)) r.Fail(problem->field, problem->problem);
  }
  SAG_TRY_STATUS(r.Finish());
  return req;
}

Inbox::Inbox(InboxOptions options) : options_(std::move(options)) {}

fs::path Inbox::RequestPath(std::string_view name) const {
  return options_.dir / (std::string(name) + std::string(kExt));
}

fs::path Inbox::ReplyPath(std::string_view name) const {
  return options_.dir / "replies" / (std::string(name) + std::string(kExt));
}

Status Inbox::Prepare() const {
  for (const auto& d : {options_.dir, RejectedDir(), options_.dir / "replies"}) {
    std::error_code ec;
    fs::create_directories(d, ec);
    if (ec) return Error(Errc::kIo, "create " + d.string() + ": " + ec.message());
  }
  return Ok();
}

Expected<InboxRequest> Inbox::Read(const std::string& file_name) const {
  const fs::path path = options_.dir / file_name;
  const std::string what = "inbox request " + path.string();
  auto bad = [&](const std::string& problem) {
    return Error(Errc::kBadRequest, what + ": " + problem);
  };
  struct stat before {};
  if (::lstat(path.c_str(), &before) != 0) return MakeErrno(Errc::kIo, "lstat " + path.string());
  if (!S_ISREG(before.st_mode)) {
    return bad("is " + std::string(FileKind(before.st_mode)) +
               "; a request must be a regular file (write it with sag-agent install)");
  }
  if (before.st_uid != 0 && before.st_uid != options_.agent_uid) {
    return bad("is owned by uid " + std::to_string(before.st_uid) +
               "; only root or the agent's user (uid " + std::to_string(options_.agent_uid) +
               ") may hand the agent jobs");
  }
  if (std::cmp_greater(before.st_size, options_.max_bytes)) {
    return bad(std::to_string(before.st_size) + " bytes, more than the " +
               std::to_string(options_.max_bytes) + " a request may have");
  }
  // O_NOFOLLOW: the entry may have been replaced by a symlink since lstat;
  // O_NONBLOCK: or by a FIFO, whose open would wait for a writer forever.
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC));
  if (fd.get() < 0) {
    const int err = errno;
    if (err == ENOENT) return MakeErrno(Errc::kIo, "open " + path.string(), err);
    return bad(std::string("cannot be opened: ") + std::strerror(err));
  }
  struct stat after {};
  if (::fstat(fd.get(), &after) != 0) return MakeErrno(Errc::kIo, "fstat " + path.string());
  if (!S_ISREG(after.st_mode) || after.st_ino != before.st_ino || after.st_dev != before.st_dev ||
      (after.st_uid != 0 && after.st_uid != options_.agent_uid)) {
    return bad("was replaced while it was opened; a request must be a regular file");
  }
  std::string text(options_.max_bytes + 1, '\0');
  std::size_t got = 0;
  while (got < text.size()) {
    const ssize_t n = ::read(fd.get(), text.data() + got, text.size() - got);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return bad(std::string("cannot be read: ") + std::strerror(errno));
    if (n == 0) break;
    got += static_cast<std::size_t>(n);
  }
  if (got > options_.max_bytes) {
    return bad("more than the " + std::to_string(options_.max_bytes) + " bytes a request may have");
  }
  text.resize(got);
  SAG_TRY(auto req, DecodeInboxRequest(text, what));
  req.name = file_name.substr(0, file_name.size() - kExt.size());
  return req;
}

void Inbox::Reject(const std::string& file_name, const Error& error) const {
  spdlog::error("{}; moved to {}", error.ToString(), RejectedDir().string());
  const fs::path from = options_.dir / file_name;
  fs::path to = RejectedDir() / file_name;
  for (int i = 1; fs::symlink_status(to).type() != fs::file_type::not_found && i < 1000; ++i) {
    to = RejectedDir() / (file_name + "." + std::to_string(i));
  }
  // rename() moves the entry itself: a symlink stays a link, a FIFO is not
  // opened, a directory moves whole.
  if (::rename(from.c_str(), to.c_str()) != 0) {
    spdlog::error("cannot move {} to {}: {}; removing it", from.string(), to.string(),
                  std::strerror(errno));
    std::error_code ec;
    fs::remove_all(from, ec);
  } else if (auto st = WriteFileAtomic(to.string() + ".error", error.ToString() + "\n", 0600);
             !st) {
    spdlog::warn("{}", st.error().ToString());
  }
  const std::string name = file_name.substr(0, file_name.size() - kExt.size());
  if (CheckJobId(name)) {
    const json reply = {{"id", name},
                        {"state", "Rejected"},
                        {"error",
                         {{"code", error.number()},
                          {"name", ErrcName(error.code())},
                          {"message", error.message()}}}};
    if (auto st = Reply(name, reply); !st) spdlog::warn("{}", st.error().ToString());
  }
}

Expected<std::optional<InboxRequest>> Inbox::Next(std::vector<InboxRejection>* rejected) {
  std::vector<std::string> names;
  std::error_code ec;
  for (fs::directory_iterator it(options_.dir, ec), end; !ec && it != end; it.increment(ec)) {
    std::string name = it->path().filename().string();
    if (name.starts_with('.') || name.size() <= kExt.size() || !name.ends_with(kExt)) continue;
    names.push_back(std::move(name));
  }
  if (ec)
    return Error(Errc::kIo, "reading the inbox " + options_.dir.string() + ": " + ec.message());
  std::sort(names.begin(), names.end());
  for (const auto& name : names) {
    auto req = Read(name);
    if (req) return std::optional<InboxRequest>(std::move(*req));
    if (req.error().code() != Errc::kBadRequest) {
      // Gone since the listing (taken by a racing reader, removed by the
      // operator) or a transient error: not the request's fault.
      spdlog::warn("{}", req.error().ToString());
      continue;
    }
    Reject(name, req.error());
    if (rejected != nullptr) rejected->push_back({name, req.error()});
  }
  return std::optional<InboxRequest>();
}

Status Inbox::Remove(const InboxRequest& request) const {
  const auto path = RequestPath(request.name);
  if (::unlink(path.c_str()) != 0 && errno != ENOENT) {
    return MakeErrno(Errc::kIo, "remove the request " + path.string());
  }
  return FsyncDir(options_.dir);
}

Status Inbox::Reply(std::string_view name, const json& reply) const {
  return WriteFileAtomic(ReplyPath(name), reply.dump(2) + "\n", 0644);
}

}  // namespace sag::agent
