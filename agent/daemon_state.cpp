#include "agent/daemon_state.h"

#include <spdlog/spdlog.h>

namespace sag::agent {

std::string_view DaemonStateName(DaemonState state) {
  switch (state) {
    case DaemonState::kStarting:
      return "starting";
    case DaemonState::kResuming:
      return "resuming";
    case DaemonState::kIdle:
      return "idle";
    case DaemonState::kRunning:
      return "running";
    case DaemonState::kStopping:
      return "stopping";
    case DaemonState::kStopped:
      return "stopped";
  }
  return "?";
}

std::string_view DaemonEventName(DaemonEvent event) {
  switch (event) {
    case DaemonEvent::kReady:
      return "ready";
    case DaemonEvent::kWorkerDone:
      return "worker_done";
    case DaemonEvent::kJobTaken:
      return "job_taken";
    case DaemonEvent::kStopRequested:
      return "stop_requested";
    case DaemonEvent::kLoopEnded:
      return "loop_ended";
  }
  return "?";
}

std::optional<DaemonState> NextDaemonState(DaemonState from, DaemonEvent event) {
  for (const auto& t : kDaemonTransitions) {
    if (t.from == from && t.event == event) return t.to;
  }
  return std::nullopt;
}

bool DaemonMachine::Fire(DaemonEvent event) {
  const auto next = NextDaemonState(state_, event);
  if (!next) {
    spdlog::error("bug: the daemon has no transition from {} on {}; refused, still {}",
                  DaemonStateName(state_), DaemonEventName(event), DaemonStateName(state_));
    return false;
  }
  if (*next != state_) {
    spdlog::debug("daemon: {} -> {} ({})", DaemonStateName(state_), DaemonStateName(*next),
                  DaemonEventName(event));
  }
  state_ = *next;
  return true;
}

}  // namespace sag::agent
