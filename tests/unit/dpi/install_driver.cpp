// sag-dpi-test-driver ROOT JOB VERSION PAYLOAD_FILE: runs one DPI install in
// the DpiEnv at ROOT, slowed down (1 ms per 2 KiB payload chunk), for the
// kill test to SIGKILL at a random instant. Exit 0 when the job committed.
#include <thread>

#include "common/atomic_file.h"
#include "tests/unit/dpi/dpi_env.h"

// Killed or short-lived: the leak scan at exit would only slow the campaign.
extern "C" __attribute__((used)) const char* __asan_default_options() {  // NOLINT
  return "detect_leaks=0";
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
