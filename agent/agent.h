// The agent's composition root and its commands. Only this file picks real
// backends (or the simulator's, when sag-sim set the environment for it).
#pragma once

#include <string>
#include <vector>

#include "agent/config.h"

namespace sag::agent {

struct StatusOptions;

struct InstallArgs {
  std::string source;  // file path or http(s) URL
  std::string id;      // empty = generated
  bool allow_downgrade = false;
  bool reboot = true;
  bool json = false;
};

// The daemon. With `once`, it exits as soon as the journal's job and the
// inbox are done (the simulator's test campaigns use it).
int CmdRun(const Config& config, bool once = false);
int CmdInstall(const Config& config, const InstallArgs& args);
// `sag-agent status`: reads status.json (options.file, by default the one in
// config.paths.runtime_dir); exit codes in agent/status.h.
int CmdStatus(const Config& config, StatusOptions options);
int CmdMarkGood(const Config& config);
int CmdRollback(const Config& config);

}  // namespace sag::agent
