// sag-agent: the upgrade daemon of a Smart Access Gateway appliance, and its
// local subcommands. This file is the composition root: the only place that
// picks real backends.
#include <signal.h>

#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

#include "agent/config.h"
#include "common/log.h"

namespace {

constexpr const char* kUsage = R"(usage: sag-agent COMMAND [OPTIONS]

The upgrade agent of a Smart Access Gateway appliance.

commands:
  run [--config FILE]        run the daemon (default config /etc/sag-agent/agent.yaml)
  check-config [FILE]        validate a configuration file and exit
  --help, -h                 show this help
  --version                  print the version

exit status: 0 on success, 1 on a runtime error, 2 on bad usage or configuration.
)";

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

int Run(const std::string& path) {
  auto config = sag::agent::LoadConfig(path);
  if (!config) return ConfigError(config.error());
  sag::SetupLogging(config->log_level);
  spdlog::info("sag-agent {} starting", SAG_VERSION);
  for (const auto& line : sag::agent::DescribeConfig(*config)) spdlog::info("{}", line);

  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  int sig = 0;
  sigwait(&set, &sig);
  spdlog::info("received {}, stopping", sig == SIGTERM ? "SIGTERM" : "SIGINT");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
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
  auto option_config = [&](std::size_t from) -> bool {
    for (std::size_t i = from; i < args.size(); ++i) {
      if (args[i] == "--config" && i + 1 < args.size()) {
        config_path = args[++i];
      } else if (args[i].starts_with("--config=")) {
        config_path = args[i].substr(9);
      } else {
        return false;
      }
    }
    return true;
  };
  if (cmd == "check-config") {
    if (args.size() == 2 && !args[1].starts_with("--")) return CheckConfig(args[1]);
    if (!option_config(1)) return Usage("check-config takes one FILE or --config FILE");
    return CheckConfig(config_path);
  }
  if (cmd == "run") {
    if (!option_config(1)) return Usage("run takes only --config FILE");
    return Run(config_path);
  }
  return Usage("unknown command '" + cmd + "'");
}
