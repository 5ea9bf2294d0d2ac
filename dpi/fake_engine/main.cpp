// sag-fake-dpi-engine: a stand-in for the DPI engine, for tests and the demo.
// It keeps real state, like the engine would: the version it loaded, read
// from the database that `current` points at when it is told to reload.
//
//   sag-fake-dpi-engine --state DIR [--db PATH] validate DB_DIR [VERSION]
//   sag-fake-dpi-engine --state DIR [--db PATH] reload [DB_DIR VERSION]
//   sag-fake-dpi-engine --state DIR confirm [DB_DIR VERSION]
//
// validate: DB_DIR must hold a `version` file (equal to VERSION when given),
//   every file listed in an optional MANIFEST ("SIZE PATH" lines) with its
//   size, and no REJECT file.
// reload: loads the database at --db (default $SAG_DPI_CURRENT, the store's
//   `current` symlink), i.e. follows the link the way an engine configured
//   with that path would; the arguments the installer appends are ignored.
//   A missing link unloads (state "none"). The loaded version is recorded in
//   DIR/loaded, written atomically.
// confirm: prints the loaded version ("none") as its first line.
//
// Control files in the state DIR, to script failures:
//   reject           versions (one a line, or "*") that validate and reload refuse
//   reject-on-reload versions that only reload refuses (validate accepts them)
//   crash-on-reload  versions whose reload dies by SIGKILL before loading
//   hang-on-reload   versions whose reload hangs for 30 s before loading
//   confirm-override lines "LOADED SAID": when LOADED ("*" = any) is loaded,
//                    confirm prints SAID instead
//   delay-ms         every command sleeps this long first (slows kill tests)
#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "common/atomic_file.h"
#include "common/parse_decimal.h"

namespace {

namespace fs = std::filesystem;

std::string FirstLine(const std::string& text) {
  std::string line = text.substr(0, text.find('\n'));
  while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) line.pop_back();
  return line;
}

std::string ReadOr(const fs::path& path, const std::string& fallback) {
  auto text = sag::ReadFile(path, 1U << 20U);
  return text ? *text : fallback;
}

bool Listed(const fs::path& control, const std::string& version) {
  std::istringstream in(ReadOr(control, ""));
  std::string line;
  while (std::getline(in, line)) {
    line = FirstLine(line);
    if (line == "*" || (!line.empty() && line == version)) return true;
  }
  return false;
}

int Usage() {
  std::fputs(
      "usage: sag-fake-dpi-engine --state DIR [--db PATH] validate|reload|confirm [DB_DIR "
      "[VERSION]]\n",
      stderr);
  return 64;
}

// The checks a database must pass to be loadable; returns its version.
bool CheckDatabase(const fs::path& state, const fs::path& db, const std::string& expected,
                   bool reloading, std::string* version) {
  auto text = sag::ReadFile(db / "version", 4096);
  if (!text) {
    std::fprintf(stderr, "fake engine: %s has no version file\n", db.c_str());
    return false;
  }
  *version = FirstLine(*text);
  if (!expected.empty() && *version != expected) {
    std::fprintf(stderr, "fake engine: %s holds version %s, expected %s\n", db.c_str(),
                 version->c_str(), expected.c_str());
    return false;
  }
  std::error_code ec;
  if (fs::exists(db / "REJECT", ec) || Listed(state / "reject", *version) ||
      (reloading && Listed(state / "reject-on-reload", *version))) {
    std::fprintf(stderr, "fake engine: database %s rejected (signature compile error)\n",
                 version->c_str());
    return false;
  }
  std::istringstream manifest(ReadOr(db / "MANIFEST", ""));
  std::string line;
  while (std::getline(manifest, line)) {
    std::istringstream fields(line);
    std::uintmax_t size = 0;
    std::string path;
    if (!(fields >> size >> path)) continue;
    const auto actual = fs::file_size(db / path, ec);
    if (ec || actual != size) {
      std::fprintf(stderr, "fake engine: %s/%s is missing or has the wrong size\n", db.c_str(),
                   path.c_str());
      return false;
    }
  }
  return true;
}

}  // namespace

// Tests start this tool hundreds of times; under AddressSanitizer the leak
// scan at exit took most of each run (60 of 100 ms), and a short-lived tool
// has no leaks worth that. Unused in builds without ASan.
extern "C" __attribute__((used)) const char* __asan_default_options() {  // NOLINT
  return "detect_leaks=0";
}

int main(int argc, char** argv) {
  fs::path state;
  fs::path db;
  if (const char* cur = std::getenv("SAG_DPI_CURRENT"); cur != nullptr) db = cur;
  std::vector<std::string> args;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--state" && i + 1 < argc) {
      state = argv[++i];
    } else if (a == "--db" && i + 1 < argc) {
      db = argv[++i];
    } else {
      args.push_back(a);
    }
  }
  if (state.empty() || args.empty()) return Usage();
  std::error_code ec;
  fs::create_directories(state, ec);

  // One command at a time, as a real engine's control socket would.
  const auto lock_path = (state / "lock").string();
  const int lock = ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (lock < 0 || ::flock(lock, LOCK_EX) != 0) {
    std::perror("fake engine: lock");
    return 70;
  }
  const std::string delay_text = FirstLine(ReadOr(state / "delay-ms", "0"));
  const auto delay = sag::ParseDecimal<int>(delay_text);
  if (!delay) {
    std::fprintf(stderr, "fake engine: delay-ms '%s' is not a number\n", delay_text.c_str());
    return 64;
  }
  if (*delay > 0) std::this_thread::sleep_for(std::chrono::milliseconds(*delay));

  const std::string& cmd = args[0];
  if (cmd == "validate") {
    if (args.size() < 2) return Usage();
    std::string version;
    const std::string expected = args.size() > 2 ? args[2] : "";
    if (!CheckDatabase(state, args[1], expected, false, &version)) return 1;
    std::printf("valid %s\n", version.c_str());
    return 0;
  }
  if (cmd == "reload") {
    if (db.empty()) {
      std::fputs("fake engine: reload needs --db or SAG_DPI_CURRENT\n", stderr);
      return 64;
    }
    std::string loaded = "none";
    std::string where;
    if (fs::exists(fs::symlink_status(db, ec))) {
      const auto real = fs::canonical(db, ec);
      if (ec) {
        std::fprintf(stderr, "fake engine: %s does not resolve: %s\n", db.c_str(),
                     ec.message().c_str());
        return 1;
      }
      std::string version;
      auto head = sag::ReadFile(real / "version", 4096);
      if (head && Listed(state / "crash-on-reload", FirstLine(*head))) {
        std::fputs("fake engine: crashing on reload (as told)\n", stderr);
        std::fflush(stderr);
        ::kill(::getpid(), SIGKILL);
      }
      if (head && Listed(state / "hang-on-reload", FirstLine(*head))) {
        std::this_thread::sleep_for(std::chrono::seconds(30));
      }
      if (!CheckDatabase(state, real, "", true, &version)) return 2;
      loaded = version;
      where = real.string();
    }
    if (auto st = sag::WriteFileAtomic(state / "loaded", loaded + "\n" + where + "\n"); !st) {
      std::fprintf(stderr, "fake engine: %s\n", st.error().ToString().c_str());
      return 70;
    }
    std::printf("loaded %s\n", loaded.c_str());
    return 0;
  }
  if (cmd == "confirm") {
    const std::string loaded = FirstLine(ReadOr(state / "loaded", "none\n"));
    std::istringstream lies(ReadOr(state / "confirm-override", ""));
    std::string line;
    while (std::getline(lies, line)) {
      std::istringstream fields(line);
      std::string when;
      std::string say;
      if (fields >> when >> say && (when == loaded || when == "*")) {
        std::printf("%s\n", say.c_str());
        return 0;
      }
    }
    std::printf("%s\n", loaded.c_str());
    return 0;
  }
  return Usage();
}
