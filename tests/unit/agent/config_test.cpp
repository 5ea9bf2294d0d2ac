#include "agent/config.h"

#include <gtest/gtest.h>

#include <regex>

#include "tests/support/temp_dir.h"

namespace sag::agent {
namespace {

const std::filesystem::path kExample = SAG_SOURCE_DIR "/agent/examples/agent.yaml";
const std::filesystem::path kBad = SAG_SOURCE_DIR "/tests/data/config";

const char* kMinimal = R"(
identity: {smartag_id: sag-abc, serial_number: sag1, model: sag-100wm}
pki: {root_ca: /pki/root.pem}
boot:
  slots:
    A: {device: /dev/a}
    B: {device: /dev/b}
)";

TEST(Config, ExampleIsValid) {
  auto c = LoadConfig(kExample);
  ASSERT_TRUE(c) << c.error().ToString();
  EXPECT_EQ(c->identity.smartag_id, "sag-0ovhf732a9j1234567");
  EXPECT_EQ(c->identity.model, "sag-1000");
  EXPECT_EQ(c->boot.backend, BootBackend::kUBoot);
  EXPECT_EQ(c->boot.slots.at("B").device, "/dev/mmcblk0p3");
  EXPECT_EQ(c->boot.trial_attempts, 3);
  EXPECT_EQ(c->dpi.reload.command.at(0), "/usr/libexec/sag-dpi/reload");
  EXPECT_EQ(c->dpi.confirm.timeout, std::chrono::seconds(10));
  ASSERT_EQ(c->health.checks.size(), 1U);
  EXPECT_TRUE(c->health.require_cloud);
  EXPECT_EQ(c->log_level, spdlog::level::info);
  EXPECT_FALSE(DescribeConfig(*c).empty());
}

TEST(Config, MinimalGetsDefaults) {
  auto c = ParseConfig(kMinimal, "mini.yaml");
  ASSERT_TRUE(c) << c.error().ToString();
  EXPECT_EQ(c->paths.state_dir, "/var/lib/sag-agent");
  EXPECT_EQ(c->dpi.keep, 2);
  EXPECT_EQ(c->download.bandwidth_limit, 0U);
  EXPECT_EQ(c->download.checkpoint_bytes, 32U << 20U);
  EXPECT_EQ(c->download.checkpoint_interval, std::chrono::milliseconds(0));
  EXPECT_TRUE(c->cloud.endpoint.empty());
  EXPECT_TRUE(c->boot.read_back_medium);
}

// The simulator's stand-ins come from the configuration sag-sim init writes,
// never from the environment; a real appliance's configuration has none.
TEST(Config, SimulatorSectionIsStrict) {
  auto none = ParseConfig(kMinimal, "mini.yaml");
  ASSERT_TRUE(none);
  EXPECT_TRUE(none->simulator.reboot_flag.empty());
  EXPECT_TRUE(none->simulator.boot_id_file.empty());
  auto sim = ParseConfig(std::string(kMinimal) +
                             "simulator: {reboot_flag: /sim/run/reboot-requested, "
                             "boot_id_file: /sim/boot_id}\n",
                         "sim.yaml");
  ASSERT_TRUE(sim) << sim.error().ToString();
  EXPECT_EQ(sim->simulator.reboot_flag, "/sim/run/reboot-requested");
  EXPECT_EQ(sim->simulator.boot_id_file, "/sim/boot_id");
  const std::pair<const char*, Errc> bad[] = {
      {"simulator: {reboot: /x}\n", Errc::kConfigUnknownKey},
      {"simulator: {reboot_flag: [a]}\n", Errc::kConfigType},
      {"simulator: {boot_id_file: relative/id}\n", Errc::kConfigRange},
  };
  for (const auto& [text, code] : bad) {
    auto c = ParseConfig(std::string(kMinimal) + text, "bad.yaml");
    ASSERT_FALSE(c) << text;
    EXPECT_EQ(c.error().code(), code) << c.error().ToString();
    EXPECT_NE(c.error().message().find("simulator."), std::string::npos) << c.error().message();
  }
}

TEST(Config, DeltaFallbackIsFailUnlessFullAndParallelIsBounded) {
  const std::string head =
      "identity: {smartag_id: sag-1, serial_number: s, model: m}\npki: {root_ca: /r}\n"
      "boot: {slots: {A: {device: /a}, B: {device: /b}}}\n";
  auto dflt = ParseConfig(head, "d.yaml");
  ASSERT_TRUE(dflt) << dflt.error().ToString();
  EXPECT_FALSE(dflt->download.delta_fallback_full);
  auto full = ParseConfig(head + "download: {delta_fallback: full}\n", "f.yaml");
  ASSERT_TRUE(full) << full.error().ToString();
  EXPECT_TRUE(full->download.delta_fallback_full);
  auto fail = ParseConfig(head + "download: {delta_fallback: fail}\n", "x.yaml");
  ASSERT_TRUE(fail) << fail.error().ToString();
  EXPECT_FALSE(fail->download.delta_fallback_full);
  EXPECT_EQ(dflt->download.delta_parallel, 3);
  auto one = ParseConfig(head + "download: {delta_parallel: 1}\n", "p.yaml");
  ASSERT_TRUE(one) << one.error().ToString();
  EXPECT_EQ(one->download.delta_parallel, 1);
  for (const char* bad : {"0", "17", "-1"}) {
    auto r = ParseConfig(head + "download: {delta_parallel: " + bad + "}\n", "b.yaml");
    ASSERT_FALSE(r) << bad;
    EXPECT_EQ(r.error().code(), Errc::kConfigRange) << r.error().ToString();
    EXPECT_NE(r.error().message().find("delta_parallel"), std::string::npos) << r.error().message();
  }
  auto word = ParseConfig(head + "download: {delta_parallel: many}\n", "w.yaml");
  ASSERT_FALSE(word);
  EXPECT_EQ(word.error().code(), Errc::kConfigType) << word.error().ToString();
}

TEST(Config, ReadBackIsMediumOrCache) {
  const std::string head =
      "identity: {smartag_id: sag-1, serial_number: s, model: m}\npki: {root_ca: /r}\n";
  auto cache = ParseConfig(
      head + "boot: {read_back: cache, slots: {A: {device: /a}, B: {device: /b}}}\n", "c.yaml");
  ASSERT_TRUE(cache) << cache.error().ToString();
  EXPECT_FALSE(cache->boot.read_back_medium);
  auto medium = ParseConfig(
      head + "boot: {read_back: medium, slots: {A: {device: /a}, B: {device: /b}}}\n", "m.yaml");
  ASSERT_TRUE(medium) << medium.error().ToString();
  EXPECT_TRUE(medium->boot.read_back_medium);
  auto bad = ParseConfig(
      head + "boot: {read_back: disk, slots: {A: {device: /a}, B: {device: /b}}}\n", "b.yaml");
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error().code(), Errc::kConfigRange);
  EXPECT_NE(bad.error().message().find("'boot.read_back' must be 'medium'"), std::string::npos)
      << bad.error().ToString();
  EXPECT_NE(bad.error().message().find("'disk'"), std::string::npos) << bad.error().ToString();
}

struct BadCase {
  const char* file;
  Errc code;
  const char* location;  // "LINE:COLUMN"
  const char* mentions;  // a word the message must contain
};

void PrintTo(const BadCase& c, std::ostream* os) { *os << c.file; }

class BadConfig : public ::testing::TestWithParam<BadCase> {};

TEST_P(BadConfig, RefusedWithFileLineColumnAndKey) {
  const auto& bc = GetParam();
  const auto path = kBad / bc.file;
  auto c = LoadConfig(path);
  ASSERT_FALSE(c);
  EXPECT_EQ(c.error().code(), bc.code) << c.error().ToString();
  const std::string msg = c.error().message();
  EXPECT_EQ(msg.rfind(path.string() + ":" + bc.location + ": ", 0), 0U) << msg;
  EXPECT_NE(msg.find(bc.mentions), std::string::npos) << msg;
  EXPECT_EQ(msg.find('\n'), std::string::npos) << "one line: " << msg;
}

INSTANTIATE_TEST_SUITE_P(
    Examples, BadConfig,
    ::testing::Values(
        BadCase{"unknown-key.yaml", Errc::kConfigUnknownKey, "14:3", "cloud.hartbeat_s"},
        BadCase{"wrong-type.yaml", Errc::kConfigType, "30:19", "integer"},
        BadCase{"out-of-range.yaml", Errc::kConfigRange, "30:19", "between 1 and 9"},
        BadCase{"invalid-yaml.yaml", Errc::kConfigSyntax, "10:1", "invalid YAML"},
        BadCase{"missing-key.yaml", Errc::kConfigMissingKey, "6:3", "identity.serial_number"},
        BadCase{"bad-level.yaml", Errc::kConfigRange, "59:10", "log level"},
        BadCase{"relative-path.yaml", Errc::kConfigRange, "17:12", "absolute path"},
        BadCase{"bad-endpoint.yaml", Errc::kConfigRange, "11:13", "wss://"},
        BadCase{"require-cloud-no-endpoint.yaml", Errc::kConfigMissingKey, "47:18",
                "cloud.endpoint"}),
    [](const auto& test_info) {
      std::string name = test_info.param.file;
      name = name.substr(0, name.find('.'));
      for (auto& ch : name)
        if (ch == '-') ch = '_';
      return name;
    });

// The cloud check after a trial boot needs an endpoint to reach: without
// one every upgrade would roll back.
TEST(Config, RequireCloudNeedsAnEndpoint) {
  const std::string ok = kMinimal;
  auto c = ParseConfig(ok + "health: {require_cloud: true}\n", "rc.yaml");
  ASSERT_FALSE(c);
  EXPECT_EQ(c.error().code(), Errc::kConfigMissingKey) << c.error().ToString();
  EXPECT_EQ(c.error().message().rfind("rc.yaml:8:", 0), 0U) << c.error().message();
  EXPECT_NE(c.error().message().find("cloud.endpoint"), std::string::npos) << c.error().message();
  EXPECT_NE(c.error().message().find("require_cloud: false"), std::string::npos)
      << c.error().message();
  auto with = ParseConfig(ok + "cloud: {endpoint: \"wss://cloud.example/device/v1\"}\n" +
                              "health: {require_cloud: true}\n",
                          "rc.yaml");
  ASSERT_TRUE(with) << with.error().ToString();
  EXPECT_TRUE(with->health.require_cloud);
  auto off = ParseConfig(ok + "health: {require_cloud: false}\n", "rc.yaml");
  ASSERT_TRUE(off) << off.error().ToString();
}

TEST(Config, MissingFileSaysWhatToDo) {
  auto c = LoadConfig("/nonexistent/agent.yaml");
  ASSERT_FALSE(c);
  EXPECT_EQ(c.error().code(), Errc::kConfigMissing);
  EXPECT_NE(c.error().message().find("/nonexistent/agent.yaml"), std::string::npos);
}

// The download's overall deadline and minimum rate (docs/download.md).
TEST(Config, DownloadDeadlineAndMinimumRate) {
  const std::string ok = kMinimal;
  auto defaults = ParseConfig(ok, "d.yaml");
  ASSERT_TRUE(defaults) << defaults.error().ToString();
  EXPECT_EQ(defaults->download.deadline, std::chrono::seconds(86400));
  EXPECT_EQ(defaults->download.min_rate, 512U);
  EXPECT_EQ(defaults->download.min_rate_window, std::chrono::seconds(300));
  auto set = ParseConfig(
      ok + "download: {deadline_s: 3600, min_rate: 4096, min_rate_window_s: 60}\n", "d.yaml");
  ASSERT_TRUE(set) << set.error().ToString();
  EXPECT_EQ(set->download.deadline, std::chrono::seconds(3600));
  EXPECT_EQ(set->download.min_rate, 4096U);
  EXPECT_EQ(set->download.min_rate_window, std::chrono::seconds(60));
  auto off = ParseConfig(ok + "download: {deadline_s: 0, min_rate: 0}\n", "d.yaml");
  ASSERT_TRUE(off) << off.error().ToString();
  EXPECT_EQ(off->download.deadline, std::chrono::seconds(0));
  EXPECT_EQ(off->download.min_rate, 0U);
  const std::pair<std::string, Errc> bad[] = {
      {"download: {deadline_s: -1}\n", Errc::kConfigRange},
      {"download: {deadline_s: soon}\n", Errc::kConfigType},
      {"download: {min_rate: -5}\n", Errc::kConfigRange},
      {"download: {min_rate_window_s: 0}\n", Errc::kConfigRange},
      {"download: {min_rate_window_s: 86401}\n", Errc::kConfigRange},
  };
  for (const auto& [yaml, code] : bad) {
    auto c = ParseConfig(ok + yaml, "d.yaml");
    ASSERT_FALSE(c) << yaml;
    EXPECT_EQ(c.error().code(), code) << yaml << c.error().ToString();
  }
}

TEST(Config, InlineBadCases) {
  struct Case {
    std::string yaml;
    Errc code;
  };
  const std::string ok = kMinimal;
  const Case cases[] = {
      {"", Errc::kConfigMissingKey},
      {"- a\n- b\n", Errc::kConfigType},
      {ok + "log: {level: [1]}\n", Errc::kConfigType},
      {ok + "dpi: {keep: 1}\n", Errc::kConfigRange},
      {ok + "dpi: {keep: 2.5}\n", Errc::kConfigType},
      {ok + "download: {bandwidth_limit: -1}\n", Errc::kConfigRange},
      {ok + "download: {checkpoint_interval_ms: 60001}\n", Errc::kConfigRange},
      {ok + "download: {checkpoint_interval_ms: soon}\n", Errc::kConfigType},
      {ok + "download: {delta_fallback: maybe}\n", Errc::kConfigRange},
      {ok + "health: {require_cloud: maybe}\n", Errc::kConfigType},
      {ok + "health: {checks: [{name: x, command: []}]}\n", Errc::kConfigType},
      {ok + "health: {checks: [{name: x}]}\n", Errc::kConfigMissingKey},
      {ok + "health: {checks: {name: x}}\n", Errc::kConfigType},
      {ok + "dpi: {hooks: {reload: {command: [x], timeout_s: 0}}}\n", Errc::kConfigRange},
      {ok + "dpi: {hooks: {restart: {command: [x]}}}\n", Errc::kConfigUnknownKey},
      {"identity: {smartag_id: abc, serial_number: s, model: m}\n", Errc::kConfigRange},
      {"identity: {smartag_id: sag-1, serial_number: s, model: m}\npki: {root_ca: /r}\n"
       "boot: {slots: {A: {device: /d}, B: {device: /d}}}\n",
       Errc::kConfigRange},
      {"identity: {smartag_id: sag-1, serial_number: s, model: m}\npki: {root_ca: /r}\n"
       "boot: {backend: lilo, slots: {A: {device: /a}, B: {device: /b}}}\n",
       Errc::kConfigRange},
      {"identity: {smartag_id: sag-1, serial_number: s, model: m}\npki: {root_ca: /r}\n"
       "boot: {slots: {A: {device: /a}, C: {device: /b}}}\n",
       Errc::kConfigUnknownKey},
      {"identity: {smartag_id: sag-1, serial_number: s, model: m}\npki: {root_ca: /r}\n",
       Errc::kConfigMissingKey},
  };
  for (const auto& tc : cases) {
    auto c = ParseConfig(tc.yaml, "inline.yaml");
    ASSERT_FALSE(c) << tc.yaml;
    EXPECT_EQ(c.error().code(), tc.code) << tc.yaml << "\n" << c.error().ToString();
    EXPECT_TRUE(std::regex_search(c.error().message(), std::regex("^inline\\.yaml(:\\d+:\\d+)?: ")))
        << c.error().message();
  }
}

}  // namespace
}  // namespace sag::agent
