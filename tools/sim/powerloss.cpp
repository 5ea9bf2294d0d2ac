#include "tools/sim/powerloss.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <sstream>
#include <thread>
#include <vector>

namespace sag::sim {

namespace {

constexpr const char* kCtl = ".sag-powerloss";

std::uint64_t Field(const std::string& figures, const std::string& key) {
  const auto at = figures.find(key + "=");
  if (at == std::string::npos) return 0;
  return std::strtoull(figures.c_str() + at + key.size() + 1, nullptr, 10);
}

}  // namespace

Expected<std::unique_ptr<PowerLossMedium>> PowerLossMedium::Mount(const std::filesystem::path& bin,
                                                                  const std::filesystem::path& dir,
                                                                  bool torn, std::uint64_t seed) {
  std::vector<std::string> args{bin.string(), "mount",  dir.string(),
                                dir.string(), "--seed", std::to_string(seed)};
  std::vector<char*> argv;
  argv.reserve(args.size() + 1);
  for (auto& s : args) argv.push_back(s.data());
  argv.push_back(nullptr);
  std::fflush(stdout);
  const pid_t pid = ::fork();
  if (pid < 0) return MakeErrno(Errc::kIo, "fork for " + bin.string());
  if (pid == 0) {
    (void)::close_range(3, ~0U, 0);  // the medium's process holds no descriptor of ours
    ::execv(argv[0], argv.data());
    std::fprintf(stderr, "sag-sim: cannot start %s\n", argv[0]);
    ::_exit(127);
  }
  // Mounted when the control file shows; bounded (10 s).
  for (int i = 0; i < 1000; ++i) {
    std::error_code ec;
    if (std::filesystem::exists(dir / kCtl, ec)) {
      return std::unique_ptr<PowerLossMedium>(new PowerLossMedium(dir, pid, torn));
    }
    int status = 0;
    if (::waitpid(pid, &status, WNOHANG) == pid) {
      return Error(Errc::kIo, bin.string() + " could not mount " + dir.string() +
                                  " (it exited; needs /dev/fuse and root)");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ::kill(pid, SIGKILL);
  ::umount2(dir.c_str(), MNT_DETACH);
  ::waitpid(pid, nullptr, 0);
  return Error(Errc::kTimeout, bin.string() + " did not mount " + dir.string() + " within 10 s");
}

PowerLossMedium::~PowerLossMedium() {
  ::umount2(dir_.c_str(), 0);
  for (int i = 0; i < 1000; ++i) {  // bounded: 10 s, then killed
    if (::waitpid(pid_, nullptr, WNOHANG) == pid_) return;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ::kill(pid_, SIGKILL);
  ::umount2(dir_.c_str(), MNT_DETACH);
  ::waitpid(pid_, nullptr, 0);
}

Expected<std::string> PowerLossMedium::Control(const std::string& line) {
  const auto path = dir_ / kCtl;
  const int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
  if (fd < 0) return MakeErrno(Errc::kIo, "open " + path.string());
  if (::write(fd, line.data(), line.size()) != static_cast<ssize_t>(line.size())) {
    const int err = errno;
    ::close(fd);
    return MakeErrno(Errc::kIo, "'" + line + "' to " + path.string(), err);
  }
  std::string reply(4096, '\0');
  const ssize_t n = ::pread(fd, reply.data(), reply.size(), 0);
  ::close(fd);
  reply.resize(n > 0 ? static_cast<std::size_t>(n) : 0);
  while (!reply.empty() && reply.back() == '\n') reply.pop_back();
  return reply;
}

Expected<std::string> PowerLossMedium::Cut() {
  SAG_TRY(auto reply, Control(torn_ ? "cut torn" : "cut"));
  ++figures_.cuts;
  figures_.bytes_lost += Field(reply, "bytes_lost");
  figures_.entries_lost += Field(reply, "entries_lost");
  figures_.torn += Field(reply, "torn");
  return reply;
}

Status PowerLossMedium::Sync() {
  SAG_TRY_STATUS(Control("sync"));
  return Ok();
}

}  // namespace sag::sim
