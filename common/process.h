// Running external commands with a deadline (health checks, DPI hooks, the
// simulator's agent). No shell is involved: argv is passed as given.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <string>
#include <vector>

#include "common/error.h"

namespace sag {

struct CommandResult {
  int exit_code = -1;      // valid when !signalled
  int signal = 0;          // the signal that killed it, 0 if it exited
  bool timed_out = false;  // killed by us at the deadline
  std::string output;      // stdout and stderr together, capped at max_output
};

struct CommandOptions {
  std::chrono::milliseconds timeout{30000};
  std::vector<std::string> env;         // "K=V" added to the inherited environment
  std::size_t max_output = 64U << 10U;  // bytes kept; the rest is drained and dropped
};

// Runs argv[0] (PATH lookup) and waits for it or for the deadline; at the
// deadline the whole process group gets SIGKILL. An error is returned only if
// the command could not be started; its exit status is in the result.
Expected<CommandResult> RunCommand(const std::vector<std::string>& argv,
                                   const CommandOptions& options = {});

// A command's outcome as one Status: kCommandFailed / kTimeout with the tail of
// its output in the message.
Status CheckCommand(const std::vector<std::string>& argv, const CommandOptions& options = {});

}  // namespace sag
