// The daemon's state machine: the table is consistent (one row per state and
// event, every state reachable from starting and able to reach stopped,
// stopped final, every state and event used), the machine follows it and
// refuses what it does not hold, and docs/agent.md draws exactly this table.
#include "agent/daemon_state.h"

#include <gtest/gtest.h>

#include <deque>
#include <fstream>
#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

namespace sag::agent {
namespace {

constexpr std::array kAllStates{DaemonState::kStarting, DaemonState::kResuming,
                                DaemonState::kIdle,     DaemonState::kRunning,
                                DaemonState::kStopping, DaemonState::kStopped};
constexpr std::array kAllEvents{DaemonEvent::kReady, DaemonEvent::kWorkerDone,
                                DaemonEvent::kJobTaken, DaemonEvent::kStopRequested,
                                DaemonEvent::kLoopEnded};
static_assert(kAllStates.size() == kDaemonStateCount);
static_assert(kAllEvents.size() == kDaemonEventCount);

std::set<DaemonState> Reachable(DaemonState from) {
  std::set<DaemonState> seen{from};
  for (bool grew = true; grew;) {
    grew = false;
    for (const auto& t : kDaemonTransitions) {
      if (seen.contains(t.from) && seen.insert(t.to).second) grew = true;
    }
  }
  return seen;
}

// The events of a shortest path from starting to `to` (breadth first).
std::vector<DaemonEvent> PathTo(DaemonState to) {
  std::map<DaemonState, std::vector<DaemonEvent>> paths{{DaemonState::kStarting, {}}};
  std::deque<DaemonState> queue{DaemonState::kStarting};
  while (!queue.empty()) {
    const DaemonState s = queue.front();
    queue.pop_front();
    if (s == to) return paths[s];
    for (const auto& t : kDaemonTransitions) {
      if (t.from != s || paths.contains(t.to)) continue;
      auto path = paths[s];
      path.push_back(t.event);
      paths[t.to] = std::move(path);
      queue.push_back(t.to);
    }
  }
  ADD_FAILURE() << "no path to " << DaemonStateName(to);
  return {};
}

TEST(DaemonStateTable, OneRowPerStateAndEvent) {
  std::set<std::pair<DaemonState, DaemonEvent>> keys;
  for (const auto& t : kDaemonTransitions) {
    EXPECT_TRUE(keys.insert({t.from, t.event}).second)
        << "two rows for " << DaemonStateName(t.from) << " on " << DaemonEventName(t.event);
  }
}

TEST(DaemonStateTable, EveryStateReachableAndEveryStateCanStop) {
  const auto from_start = Reachable(DaemonState::kStarting);
  for (auto s : kAllStates) {
    EXPECT_TRUE(from_start.contains(s)) << DaemonStateName(s) << " is unreachable";
    EXPECT_TRUE(Reachable(s).contains(DaemonState::kStopped))
        << DaemonStateName(s) << " cannot reach stopped";
    // A stop request is honoured in every state but the final one.
    if (s != DaemonState::kStopped) {
      EXPECT_TRUE(NextDaemonState(s, DaemonEvent::kStopRequested).has_value())
          << DaemonStateName(s) << " ignores a stop request";
    }
  }
}

TEST(DaemonStateTable, StoppedIsFinalAndEveryEventIsUsed) {
  std::set<DaemonEvent> used;
  for (const auto& t : kDaemonTransitions) {
    EXPECT_NE(t.from, DaemonState::kStopped) << "stopped must be final";
    used.insert(t.event);
  }
  for (auto e : kAllEvents) EXPECT_TRUE(used.contains(e)) << DaemonEventName(e) << " is unused";
  for (auto s : kAllStates) EXPECT_NE(DaemonStateName(s), "?");
  for (auto e : kAllEvents) EXPECT_NE(DaemonEventName(e), "?");
}

TEST(DaemonMachine, FollowsTheDaemonsOwnSequence) {
  // What CmdRun fires: start, resume, one job, SIGTERM during a second job.
  DaemonMachine m;
  EXPECT_EQ(m.state(), DaemonState::kStarting);
  const std::array<std::pair<DaemonEvent, DaemonState>, 7> steps{{
      {DaemonEvent::kReady, DaemonState::kResuming},
      {DaemonEvent::kWorkerDone, DaemonState::kIdle},
      {DaemonEvent::kJobTaken, DaemonState::kRunning},
      {DaemonEvent::kWorkerDone, DaemonState::kIdle},
      {DaemonEvent::kJobTaken, DaemonState::kRunning},
      {DaemonEvent::kStopRequested, DaemonState::kStopping},
      {DaemonEvent::kWorkerDone, DaemonState::kStopping},
  }};
  for (const auto& [event, want] : steps) {
    EXPECT_TRUE(m.Fire(event)) << DaemonEventName(event);
    EXPECT_EQ(m.state(), want) << DaemonEventName(event);
  }
  EXPECT_TRUE(m.Fire(DaemonEvent::kLoopEnded));
  EXPECT_EQ(m.state(), DaemonState::kStopped);
}

TEST(DaemonMachine, RefusesEveryChangeTheTableDoesNotHold) {
  for (auto s : kAllStates) {
    for (auto e : kAllEvents) {
      DaemonMachine m;
      // Drive m to s along the table's shortest path.
      for (auto event : PathTo(s)) ASSERT_TRUE(m.Fire(event));
      ASSERT_EQ(m.state(), s) << DaemonStateName(s);
      const auto want = NextDaemonState(s, e);
      EXPECT_EQ(m.Fire(e), want.has_value());
      EXPECT_EQ(m.state(), want.value_or(s)) << DaemonStateName(s) << " on " << DaemonEventName(e);
    }
  }
  DaemonMachine m;
  EXPECT_FALSE(m.Fire(DaemonEvent::kJobTaken));  // no job before the resume is done
  EXPECT_EQ(m.state(), DaemonState::kStarting);
}

TEST(DaemonStateTable, DocsDrawExactlyThisTable) {
  std::ifstream in(std::string(SAG_SOURCE_DIR) + "/docs/agent.md");
  ASSERT_TRUE(in.good());
  std::stringstream text;
  text << in.rdbuf();
  const std::string doc = text.str();
  const auto begin = doc.find("```mermaid\nstateDiagram-v2\n");
  ASSERT_NE(begin, std::string::npos) << "docs/agent.md has no daemon state diagram";
  const auto end = doc.find("```", begin + 10);
  const std::string diagram = doc.substr(begin, end - begin);
  std::set<std::tuple<std::string, std::string, std::string>> drawn;
  const std::regex row(R"(\n\s*(\w+) --> (\w+): (\w+))");
  for (std::sregex_iterator it(diagram.begin(), diagram.end(), row), last; it != last; ++it) {
    drawn.insert({(*it)[1], (*it)[3], (*it)[2]});
  }
  std::set<std::tuple<std::string, std::string, std::string>> table;
  for (const auto& t : kDaemonTransitions) {
    table.insert({std::string(DaemonStateName(t.from)), std::string(DaemonEventName(t.event)),
                  std::string(DaemonStateName(t.to))});
  }
  EXPECT_EQ(drawn, table);
}

}  // namespace
}  // namespace sag::agent
