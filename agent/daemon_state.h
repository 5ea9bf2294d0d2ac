// The daemon's own state machine (docs/agent.md, "The daemon's states"): one
// transition table, kDaemonTransitions, which every change of the daemon's
// state goes through (DaemonMachine::Fire). A change the table does not hold
// is a bug in the daemon: it is logged as one and refused, the state stays.
//
// Jobs have their own lifecycle (agent/job.h, phases); a Device job waiting
// for its trial boot is a job in phase `rebooting`, while the daemon is idle
// (it answers requests and refuses a second Device job with JobConflict).
#pragma once

#include <array>
#include <cstddef>
#include <optional>
#include <string_view>

namespace sag::agent {

enum class DaemonState {
  kStarting,  // building the backends, reading the state files
  kResuming,  // the worker resumes the installers' journals and the registry
  kIdle,      // waiting for a request (epoll_wait)
  kRunning,   // the worker runs one job
  kStopping,  // SIGTERM/SIGINT or --once: waits for the worker, then stops
  kStopped,   // the loop has ended
};

enum class DaemonEvent {
  kReady,          // the runtime is built and the loop is ready (READY=1)
  kWorkerDone,     // the worker posted its completion (resume or job)
  kJobTaken,       // a request was taken from a job source
  kStopRequested,  // SIGTERM, SIGINT, or --once with nothing left
  kLoopEnded,      // io_context::run returned
};

struct DaemonTransition {
  DaemonState from;
  DaemonEvent event;
  DaemonState to;
};

// The whole of the daemon's state machine. Stopped is the only final state.
inline constexpr std::array kDaemonTransitions{
    DaemonTransition{DaemonState::kStarting, DaemonEvent::kReady, DaemonState::kResuming},
    DaemonTransition{DaemonState::kStarting, DaemonEvent::kStopRequested, DaemonState::kStopping},
    DaemonTransition{DaemonState::kResuming, DaemonEvent::kWorkerDone, DaemonState::kIdle},
    DaemonTransition{DaemonState::kResuming, DaemonEvent::kStopRequested, DaemonState::kStopping},
    DaemonTransition{DaemonState::kIdle, DaemonEvent::kJobTaken, DaemonState::kRunning},
    DaemonTransition{DaemonState::kIdle, DaemonEvent::kStopRequested, DaemonState::kStopping},
    DaemonTransition{DaemonState::kRunning, DaemonEvent::kWorkerDone, DaemonState::kIdle},
    DaemonTransition{DaemonState::kRunning, DaemonEvent::kStopRequested, DaemonState::kStopping},
    DaemonTransition{DaemonState::kStopping, DaemonEvent::kWorkerDone, DaemonState::kStopping},
    DaemonTransition{DaemonState::kStopping, DaemonEvent::kStopRequested, DaemonState::kStopping},
    DaemonTransition{DaemonState::kStopping, DaemonEvent::kLoopEnded, DaemonState::kStopped},
};

inline constexpr std::size_t kDaemonStateCount = 6;
inline constexpr std::size_t kDaemonEventCount = 5;

std::string_view DaemonStateName(DaemonState state);  // "starting", ... "stopped"
std::string_view DaemonEventName(DaemonEvent event);  // "ready", ...

// Where `event` leads from `from`, or nullopt when the table has no such row.
[[nodiscard]] std::optional<DaemonState> NextDaemonState(DaemonState from, DaemonEvent event);

// The daemon's current state; owned by the loop thread.
class DaemonMachine {
 public:
  [[nodiscard]] DaemonState state() const { return state_; }
  // Follows the table; an event it has no row for is logged as a bug and
  // refused (false, the state unchanged).
  bool Fire(DaemonEvent event);

 private:
  DaemonState state_ = DaemonState::kStarting;
};

}  // namespace sag::agent
