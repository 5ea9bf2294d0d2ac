// A sag-powerloss file system (tools/powerloss) mounted for one test: the
// medium with a volatile write cache, fault injection and power cuts. Needs
// /dev/fuse and the right to mount (root); Available() says whether it could.
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/vfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

namespace sag::test {

class PowerLossMount {
 public:
  // Serves `backing` at `mountpoint` (both must exist); `cache` is the
  // --cache mode: direct, kernel or writeback.
  PowerLossMount(const std::filesystem::path& bin, const std::filesystem::path& backing,
                 const std::filesystem::path& mountpoint, const std::string& cache = "direct")
      : mountpoint_(mountpoint) {
    std::vector<std::string> args{bin.string(),        "mount",   backing.string(),
                                  mountpoint.string(), "--cache", cache};
    pid_ = ::fork();
    if (pid_ == 0) {
      // A test that dies (an abort, a sanitizer report) takes its server
      // along: SIGTERM unmounts, so that nothing is left mounted and holding
      // the test's output pipe.
      ::prctl(PR_SET_PDEATHSIG, SIGTERM);
      std::vector<char*> argv;
      argv.reserve(args.size() + 1);
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      ::execv(argv[0], argv.data());
      ::_exit(127);
    }
    // Mounted when the control file shows; bounded (10 s).
    for (int i = 0; i < 1000 && pid_ > 0; ++i) {
      if (std::filesystem::exists(mountpoint / ".sag-powerloss")) {
        mounted_ = true;
        break;
      }
      int status = 0;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  }
  ~PowerLossMount() {
    if (mounted_) ::umount2(mountpoint_.c_str(), 0);
    if (pid_ > 0) {
      int status = 0;
      for (int i = 0; i < 500; ++i) {  // bounded: 5 s, then killed
        if (::waitpid(pid_, &status, WNOHANG) == pid_) return;
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
      }
      ::kill(pid_, SIGKILL);
      ::umount2(mountpoint_.c_str(), MNT_DETACH);
      ::waitpid(pid_, &status, 0);
    }
  }
  PowerLossMount(const PowerLossMount&) = delete;
  PowerLossMount& operator=(const PowerLossMount&) = delete;

  [[nodiscard]] bool Available() const { return mounted_; }
  // The server's process (a child of the test), -1 when it is not running.
  [[nodiscard]] pid_t pid() const { return pid_; }

  // Sends a control line ("cut", "sync", "fail PATH OFF LEN ERRNO", "lie PATH
  // OFF LEN", "clear") and returns the reply; empty when refused.
  std::string Control(const std::string& line) const {
    const std::string path = (mountpoint_ / ".sag-powerloss").string();
    const int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
    if (fd < 0) return {};
    std::string reply;
    if (::write(fd, line.data(), line.size()) == static_cast<ssize_t>(line.size())) {
      reply.resize(4096);
      const ssize_t n = ::pread(fd, reply.data(), reply.size(), 0);
      reply.resize(n > 0 ? static_cast<std::size_t>(n) : 0);
    }
    ::close(fd);
    return reply;
  }

 private:
  std::filesystem::path mountpoint_;
  pid_t pid_ = -1;
  bool mounted_ = false;
};

}  // namespace sag::test
