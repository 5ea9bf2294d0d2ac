// sag-agent: the upgrade daemon of a Smart Access Gateway appliance, and its
// local subcommands. This file is the composition root: the only place that
// picks real backends.
#include <malloc.h>

#include <chrono>
#include <cstdio>
#include <iostream>
#include <optional>
#include <string>
#include <vector>

#include "agent/agent.h"
#include "agent/config.h"
#include "agent/status.h"
#include "common/log.h"
#include "common/parse_decimal.h"

namespace {

constexpr const char* kUsage = R"(usage: sag-agent COMMAND [OPTIONS]

The upgrade agent of a Smart Access Gateway appliance.

commands:
  run [--once]               run the daemon (--once: exit when no job is left)
  install FILE|URL           install a signed image (Device OS or DPI database)
      [--allow-downgrade]    accept a version not newer than the running one
      [--no-reboot]          set the trial boot but leave the reboot to the operator
      [--id ID] [--json]     job id (default generated); print the outcome as JSON
  status [--json]            the daemon, channel, versions, slots, the job and its
                             progress, the last result, the report backlog
      [--watch]              follow the current (or next) job until it ends
      [--count N] [--timeout S]  with --watch: stop after N frames or S seconds
      [--file FILE]          read FILE instead of RUNTIME_DIR/status.json
  mark-good                  commit the booted slot (ends a trial boot as healthy)
  rollback                   boot the other slot next and reboot
  check-config [FILE]        validate a configuration file and exit

options of every command:
  --config FILE              default /etc/sag-agent/agent.yaml
  --help, -h                 show this help
  --version                  print the version

exit status: 0 on success, 1 on a runtime error, 2 on bad usage or configuration;
status: 0 the daemon runs, 3 it does not, 1 status.json unreadable
(--watch: 0 the job committed, 1 it failed or rolled back).
)";

// A count or a number of seconds for an option: 1 to 1000000.
std::optional<int> ParseCount(const std::string& text) {
  const auto n = sag::ParseDecimal<int>(text);
  if (!n || *n < 1 || *n > 1'000'000) return std::nullopt;
  return n;
}

int Usage(const std::string& problem) {
  std::cerr << "sag-agent: " << problem << "\n\n" << kUsage;
  return 2;
}

// One line: the message (which starts with FILE:LINE:COLUMN) and the code.
int ConfigError(const sag::Error& e) {
  std::cerr << "sag-agent: " << e.message() << " [E" << e.number() << " " << sag::ErrcName(e.code())
            << "]\n";
  return 2;
}

int CheckConfig(const std::string& path) {
  auto config = sag::agent::LoadConfig(path);
  if (!config) {
    return ConfigError(config.error());
  }
  std::cout << path << ": OK\n";
  for (const auto& line : sag::agent::DescribeConfig(*config)) std::cout << "  " << line << "\n";
  return 0;
}

// Loads the configuration and sets up logging for a command.
std::optional<sag::agent::Config> Load(const std::string& path) {
  auto config = sag::agent::LoadConfig(path);
  if (!config) {
    ConfigError(config.error());
    return std::nullopt;
  }
  sag::SetupLogging(config->log_level);
  return std::move(*config);
}

// glibc's allocator, set for a daemon whose memory is a bound (16 MiB peak
// RSS in an install): at most two arenas, not eight per core (a delta
// install's download threads each kept an arena of freed buffers, about
// 1 MiB), and a fixed mmap threshold, so that a buffer of 128 KiB or more
// (the chunk buffers, a request's buffer, the plan's tables) is mapped on
// its own and unmapped when freed, instead of raising the threshold on its
// first free and staying in the heap (docs/delta.md, "Memory").
void TuneAllocator() {
  (void)::mallopt(M_ARENA_MAX, 2);
  (void)::mallopt(M_MMAP_THRESHOLD, 128 * 1024);
}

}  // namespace

int main(int argc, char** argv) {
  TuneAllocator();
  const std::vector<std::string> args(argv + 1, argv + argc);
  if (args.empty()) return Usage("missing command");
  const auto& cmd = args[0];
  if (cmd == "--help" || cmd == "-h" || cmd == "help") {
    std::cout << kUsage;
    return 0;
  }
  if (cmd == "--version") {
    std::cout << "sag-agent " << SAG_VERSION << "\n";
    return 0;
  }
  std::string config_path = sag::agent::kDefaultConfigPath;
  std::vector<std::string> rest;
  for (std::size_t i = 1; i < args.size(); ++i) {
    if (args[i] == "--config" && i + 1 < args.size()) {
      config_path = args[++i];
    } else if (args[i].starts_with("--config=")) {
      config_path = args[i].substr(9);
    } else {
      rest.push_back(args[i]);
    }
  }
  if (cmd == "check-config") {
    if (rest.size() == 1 && !rest[0].starts_with("--")) return CheckConfig(rest[0]);
    if (!rest.empty()) return Usage("check-config takes one FILE or --config FILE");
    return CheckConfig(config_path);
  }
  if (cmd == "run") {
    const bool once = rest.size() == 1 && rest[0] == "--once";
    if (!rest.empty() && !once) return Usage("run takes only --once and --config FILE");
    auto config = Load(config_path);
    if (!config) return 2;
    return sag::agent::CmdRun(*config, once);
  }
  if (cmd == "mark-good" || cmd == "rollback") {
    if (!rest.empty()) return Usage(cmd + " takes only --config FILE");
    auto config = Load(config_path);
    if (!config) return 2;
    if (cmd == "mark-good") return sag::agent::CmdMarkGood(*config);
    return sag::agent::CmdRollback(*config);
  }
  if (cmd == "status") {
    sag::agent::StatusOptions so;
    for (std::size_t i = 0; i < rest.size(); ++i) {
      const auto& a = rest[i];
      const bool has_value = i + 1 < rest.size();
      if (a == "--json") {
        so.json = true;
      } else if (a == "--watch") {
        so.watch = true;
      } else if (a == "--file" && has_value) {
        so.file = rest[++i];
      } else if ((a == "--count" || a == "--timeout") && has_value) {
        const auto n = ParseCount(rest[++i]);
        if (!n) return Usage("status " + a + " takes a whole number, not '" + rest[i] + "'");
        if (a == "--count") {
          so.count = *n;
        } else {
          so.timeout = std::chrono::seconds(*n);
        }
      } else {
        return Usage("status: unexpected argument '" + a + "'");
      }
    }
    if ((so.count != 0 || so.timeout.count() != 0) && !so.watch) {
      return Usage("status: --count and --timeout go with --watch");
    }
    if (!so.file.empty()) return sag::agent::RunStatusCommand(so, std::cout, std::cerr);
    auto config = sag::agent::LoadConfig(config_path);
    if (!config) return ConfigError(config.error());
    return sag::agent::CmdStatus(*config, so);
  }
  if (cmd == "install") {
    sag::agent::InstallArgs ia;
    for (std::size_t i = 0; i < rest.size(); ++i) {
      const auto& a = rest[i];
      if (a == "--allow-downgrade") {
        ia.allow_downgrade = true;
      } else if (a == "--no-reboot") {
        ia.reboot = false;
      } else if (a == "--json") {
        ia.json = true;
      } else if (a == "--id" && i + 1 < rest.size()) {
        ia.id = rest[++i];
      } else if (!a.starts_with("--") && ia.source.empty()) {
        ia.source = a;
      } else {
        return Usage("install: unexpected argument '" + a + "'");
      }
    }
    if (ia.source.empty()) return Usage("install needs an image FILE or URL");
    auto config = Load(config_path);
    if (!config) return 2;
    return sag::agent::CmdInstall(*config, ia);
  }
  return Usage("unknown command '" + cmd + "'");
}
