// sag-dpi-test-driver ROOT JOB VERSION PAYLOAD_FILE: runs one DPI install in
// the DpiEnv at ROOT, slowed down (1 ms per 2 KiB payload chunk), for the
// kill test to SIGKILL at a random instant. Exit 0 when the job committed.
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <string_view>
#include <thread>

#include "common/atomic_file.h"
#include "tests/unit/dpi/dpi_env.h"

// Killed or short-lived: the leak scan at exit would only slow the campaign.
extern "C" __attribute__((used)) const char* __asan_default_options() {  // NOLINT
  return "detect_leaks=0";
}

// syncfs(2) on sag-powerloss: the kernel sends FUSE_SYNCFS to virtiofs only,
// so the medium never hears of it and would lose at a cut what a real disk
// keeps (docs/power-loss.md). The driver is linked with --wrap=syncfs: after
// the real call succeeded, the file system named by $SAG_POWERLOSS_CONTROL
// (its control file) is told to make everything durable, which is what
// syncfs does to the file system it is called on. Without the variable it is
// the plain call.
extern "C" int __real_syncfs(int fd);  // NOLINT(bugprone-reserved-identifier)
extern "C" __attribute__((used)) int __wrap_syncfs(int fd) {  // NOLINT
  const int r = __real_syncfs(fd);
  const char* control = std::getenv("SAG_POWERLOSS_CONTROL");
  if (r != 0 || control == nullptr) return r;
  const int c = ::open(control, O_RDWR | O_CLOEXEC);
  if (c < 0) return -1;
  constexpr std::string_view kLine = "sync";
  const bool ok = ::write(c, kLine.data(), kLine.size()) == static_cast<ssize_t>(kLine.size());
  ::close(c);
  if (!ok) errno = EIO;
  return ok ? 0 : -1;
}

int main(int argc, char** argv) {
  if (argc != 5) return 64;
  sag::dpi::test::DpiEnv env{std::filesystem::path(argv[1])};
  auto payload = sag::ReadFile(argv[4], 64U << 20U);
  if (!payload) return 65;
  const std::string version = argv[3];
  auto installer = env.MakeInstaller();
  sag::dpi::test::BufferSource src(*payload, 2048);
  src.OnChunk([] { std::this_thread::sleep_for(std::chrono::milliseconds(1)); });
  auto r = installer.Install(
      {argv[2], version, false},
      {sag::image::ImageType::kDpi, version, src.size(), {std::string(sag::dpi::test::kModel)}},
      src);
  return r && r->ok() ? 0 : 1;
}
