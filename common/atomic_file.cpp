#include "common/atomic_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <random>

#include "common/unique_fd.h"

namespace sag {

namespace {

using Fd = UniqueFd;

Status WriteAll(int fd, std::string_view data, const std::string& what) {
  while (!data.empty()) {
    const ssize_t n = ::write(fd, data.data(), data.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return MakeErrno(Errc::kIo, "write " + what);
    }
    data.remove_prefix(static_cast<std::size_t>(n));
  }
  return Ok();
}

}  // namespace

Status FsyncDir(const std::filesystem::path& dir) {
  Fd fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (fd.get() < 0) return MakeErrno(Errc::kIo, "open directory " + dir.string());
  if (::fsync(fd.get()) != 0) return MakeErrno(Errc::kIo, "fsync directory " + dir.string());
  return Ok();
}

namespace {

Status Replace(const std::filesystem::path& path, std::string_view content, unsigned mode,
               bool durable) {
  const auto dir = path.has_parent_path() ? path.parent_path() : std::filesystem::path(".");
  // A unique temporary name: a crashed earlier writer may have left its own
  // temporary behind, and two writers must not share one.
  std::random_device rd;
  const auto tmp = dir / ("." + path.filename().string() + ".tmp" + std::to_string(rd()));
  Fd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode));
  if (fd.get() < 0) return MakeErrno(Errc::kIo, "create " + tmp.string());
  auto cleanup = [&] { ::unlink(tmp.c_str()); };
  if (auto st = WriteAll(fd.get(), content, tmp.string()); !st) {
    cleanup();
    return st;
  }
  // fsync before rename: otherwise the rename can reach the disk before the
  // data, and a power cut leaves an empty or partial file under the real name.
  if (durable && ::fsync(fd.get()) != 0) {
    auto err = MakeErrno(Errc::kIo, "fsync " + tmp.string());
    cleanup();
    return err;
  }
  if (::close(fd.release()) != 0) {
    auto err = MakeErrno(Errc::kIo, "close " + tmp.string());
    cleanup();
    return err;
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    auto err = MakeErrno(Errc::kIo, "rename " + tmp.string() + " to " + path.string());
    cleanup();
    return err;
  }
  // The rename itself lives in the directory: fsync it to make it durable.
  return durable ? FsyncDir(dir) : Ok();
}

}  // namespace

Status WriteFileAtomic(const std::filesystem::path& path, std::string_view content, unsigned mode) {
  return Replace(path, content, mode, true);
}

Status ReplaceFile(const std::filesystem::path& path, std::string_view content, unsigned mode) {
  return Replace(path, content, mode, false);
}

Expected<std::string> ReadFile(const std::filesystem::path& path, std::size_t max_size) {
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) {
    const int err = errno;
    return MakeErrno(err == ENOENT ? Errc::kNotFound : Errc::kIo, "open " + path.string(), err);
  }
  std::string out;
  char buf[16384];
  for (;;) {
    const ssize_t n = ::read(fd.get(), buf, sizeof buf);
    if (n < 0) {
      if (errno == EINTR) continue;
      return MakeErrno(Errc::kIo, "read " + path.string());
    }
    if (n == 0) break;
    if (out.size() + static_cast<std::size_t>(n) > max_size) {
      return Error(Errc::kImageTooLarge, path.string() + " is larger than the allowed " +
                                             std::to_string(max_size) + " bytes");
    }
    out.append(buf, static_cast<std::size_t>(n));
  }
  return out;
}

}  // namespace sag
