// A DPI store, a journal and the fake engine wired as the installer's hooks,
// in a temp dir; plus packages whose content is derived from their version,
// so a test can check that a directory holds one complete database.
#pragma once

#include <gtest/gtest.h>

#include <filesystem>
#include <optional>
#include <string>

#include "common/atomic_file.h"
#include "dpi/installer.h"
#include "tests/support/temp_dir.h"
#include "tests/unit/dpi/dpi_test_support.h"

namespace sag::dpi::test {

inline std::string DpiVersion(int n) {
  return "2026" + std::string("0101_") + std::to_string(n) + "_0-1.0";
}

inline std::string RuleContent(const std::string& version, int i) {
  return "rules of " + version + " #" + std::to_string(i) + "\n" + std::string(2000 + i * 37, 'r');
}

constexpr int kRuleFiles = 6;

// A database: version, MANIFEST (checked by the fake engine) and rule files.
inline std::string MakeDb(const std::string& version, bool zstd = false, bool reject = false,
                          const std::string& version_file = "") {
  TarBuilder tar(zstd);
  tar.File("version", (version_file.empty() ? version : version_file) + "\n");
  std::string manifest;
  tar.Dir("rules");
  for (int i = 0; i < kRuleFiles; ++i) {
    const auto name = "rules/r" + std::to_string(i) + ".dat";
    const auto content = RuleContent(version, i);
    tar.File(name, content);
    manifest += std::to_string(content.size()) + " " + name + "\n";
  }
  tar.File("MANIFEST", manifest);
  if (reject) tar.File("REJECT", "compile error on line 3\n");
  return tar.Finish();
}

// Whether dir holds exactly the database MakeDb(version) describes.
inline ::testing::AssertionResult IsCompleteDb(const std::filesystem::path& dir,
                                               const std::string& version) {
  auto v = ReadFile(dir / "version");
  if (!v || *v != version + "\n") {
    return ::testing::AssertionFailure() << dir << " has no version file for " << version;
  }
  for (int i = 0; i < kRuleFiles; ++i) {
    auto c = ReadFile(dir / ("rules/r" + std::to_string(i) + ".dat"));
    if (!c || *c != RuleContent(version, i)) {
      return ::testing::AssertionFailure() << dir << ": rule file " << i << " is missing or wrong";
    }
  }
  return ::testing::AssertionSuccess();
}

// The hardware model of the simulated appliance and of the test packages.
inline constexpr std::string_view kModel = "sag-1000";

class DpiEnv {
 public:
  // In a fresh temp dir, removed afterwards.
  DpiEnv() : owned_(std::in_place), dir_(owned_->path()) { Init(); }
  // In an existing directory (the kill test's driver process).
  explicit DpiEnv(std::filesystem::path root) : dir_(std::move(root)) { Init(); }
  DpiEnv(const DpiEnv&) = delete;
  DpiEnv& operator=(const DpiEnv&) = delete;

  void Init() {
    std::filesystem::create_directories(engine_state());
    options_.model = std::string(kModel);
    options_.store = dir_ / "store";
    options_.journal = dir_ / "dpi-job.json";
    options_.keep = 2;
    const std::string engine = SAG_FAKE_DPI_ENGINE;
    const std::string state = engine_state().string();
    options_.hooks.validate.command = {engine, "--state", state, "validate"};
    options_.hooks.reload.command = {
        engine, "--state", state, "--db", (dir_ / "store/current").string(), "reload"};
    options_.hooks.confirm.command = {engine, "--state", state, "confirm"};
    options_.hooks.validate.timeout = std::chrono::seconds(20);
    options_.hooks.reload.timeout = std::chrono::seconds(20);
    options_.hooks.confirm.timeout = std::chrono::seconds(20);
  }

  [[nodiscard]] std::filesystem::path engine_state() const { return dir_ / "engine"; }
  [[nodiscard]] std::filesystem::path store() const { return dir_ / "store"; }
  Options& options() { return options_; }
  FakeSystemInfo& system() { return system_; }
  [[nodiscard]] const std::filesystem::path& path() const { return dir_; }

  DpiInstaller MakeInstaller() { return {options_, &system_}; }

  void Control(const std::string& name, const std::string& content) {
    ASSERT_TRUE(WriteFileAtomic(engine_state() / name, content));
  }
  void ClearControl(const std::string& name) { std::filesystem::remove(engine_state() / name); }

  // What the fake engine says it loaded ("none" when nothing).
  [[nodiscard]] std::string EngineLoaded() const {
    auto t = ReadFile(engine_state() / "loaded");
    if (!t) return "none";
    return t->substr(0, t->find('\n'));
  }
  // Where it loaded it from (the resolved directory).
  [[nodiscard]] std::string EngineLoadedFrom() const {
    auto t = ReadFile(engine_state() / "loaded");
    if (!t) return "";
    const auto nl = t->find('\n');
    return t->substr(nl + 1, t->find('\n', nl + 1) - nl - 1);
  }

  Expected<JobResult> Install(const std::string& job, const std::string& version,
                              const std::string& payload, bool allow_downgrade = false) {
    auto installer = MakeInstaller();
    BufferSource src(payload, 4096);
    return installer.Install(
        {job, version, allow_downgrade},
        {image::ImageType::kDpi, version, payload.size(), {std::string(kModel)}}, src);
  }

 private:
  std::optional<sag::test::TempDir> owned_;
  std::filesystem::path dir_;
  Options options_;
  FakeSystemInfo system_;
};

}  // namespace sag::dpi::test
