#include "firmware/job.h"

#include <gtest/gtest.h>

namespace sag::firmware {
namespace {

constexpr JobState kAllStates[] = {
    JobState::kPending,   JobState::kWriting,        JobState::kVerifying,  JobState::kActivating,
    JobState::kRebooting, JobState::kHealthChecking, JobState::kCommitting, JobState::kRollingBack,
    JobState::kCommitted, JobState::kRolledBack,     JobState::kFailed};
constexpr JobEvent kAllEvents[] = {
    JobEvent::kSlotPrepared, JobEvent::kWritten,   JobEvent::kVerified, JobEvent::kTrialSet,
    JobEvent::kBootedNew,    JobEvent::kBootedOld, JobEvent::kHealthy,  JobEvent::kUnhealthy,
    JobEvent::kMarkedGood,   JobEvent::kFailed};

TEST(JobStateMachine, HappyPathEndsCommitted) {
  JobState s = JobState::kPending;
  for (auto e :
       {JobEvent::kSlotPrepared, JobEvent::kWritten, JobEvent::kVerified, JobEvent::kTrialSet,
        JobEvent::kBootedNew, JobEvent::kHealthy, JobEvent::kMarkedGood}) {
    auto next = Transition(s, e);
    ASSERT_TRUE(next) << next.error().ToString();
    s = *next;
  }
  EXPECT_EQ(s, JobState::kCommitted);
}

TEST(JobStateMachine, RollbackPaths) {
  EXPECT_EQ(*Transition(JobState::kRebooting, JobEvent::kBootedOld), JobState::kRolledBack);
  EXPECT_EQ(*Transition(JobState::kHealthChecking, JobEvent::kUnhealthy), JobState::kRollingBack);
  EXPECT_EQ(*Transition(JobState::kRollingBack, JobEvent::kBootedOld), JobState::kRolledBack);
  EXPECT_EQ(*Transition(JobState::kHealthChecking, JobEvent::kBootedOld), JobState::kRolledBack);
}

// Failing is only possible before the trial boot is set: afterwards the
// outcome is decided by what boots, never by a write error.
TEST(JobStateMachine, FailOnlyBeforeActivation) {
  for (auto s : kAllStates) {
    const bool can_fail = Transition(s, JobEvent::kFailed).has_value();
    const bool before = s == JobState::kPending || s == JobState::kWriting ||
                        s == JobState::kVerifying || s == JobState::kActivating;
    EXPECT_EQ(can_fail, before) << JobStateName(s);
  }
}

TEST(JobStateMachine, TerminalStatesHaveNoWayOut) {
  for (auto s : kAllStates) {
    if (!IsTerminal(s)) continue;
    for (auto e : kAllEvents) {
      auto next = Transition(s, e);
      ASSERT_FALSE(next) << JobStateName(s) << " + " << JobEventName(e);
      EXPECT_EQ(next.error().code(), Errc::kInternal);
    }
  }
}

// Every non-terminal state reaches a terminal one: no job can get stuck.
TEST(JobStateMachine, EveryStateReachesAnEnd) {
  for (auto start : kAllStates) {
    std::vector<JobState> frontier{start};
    std::vector<JobState> seen;
    bool reaches_end = false;
    while (!frontier.empty()) {
      const JobState s = frontier.back();
      frontier.pop_back();
      if (IsTerminal(s)) reaches_end = true;
      if (std::find(seen.begin(), seen.end(), s) != seen.end()) continue;
      seen.push_back(s);
      for (auto e : kAllEvents) {
        if (auto n = Transition(s, e)) frontier.push_back(*n);
      }
    }
    EXPECT_TRUE(reaches_end) << JobStateName(start);
  }
}

TEST(JobRecord, JsonRoundTrip) {
  JobRecord r;
  r.id = "job-7";
  r.state = JobState::kWriting;
  r.source = "https://127.0.0.1:8443/images/1.0.1.sagimg";
  r.version = "1.0.1";
  r.from_version = "1.0.0";
  r.target_slot = "B";
  r.from_slot = "A";
  r.next_chunk = 12;
  r.verified_chunk = 10;
  r.verified_medium = true;
  r.chunks_total = 40;
  r.payload_offset = 3072;
  r.error = Error(Errc::kNetStalled, "no byte for 30 s");
  r.history = {"t Pending", "t Writing"};
  auto back = JobRecord::FromJson(r.ToJson());
  ASSERT_TRUE(back) << back.error().ToString();
  EXPECT_EQ(back->id, r.id);
  EXPECT_EQ(back->state, JobState::kWriting);
  EXPECT_EQ(back->next_chunk, 12U);
  EXPECT_EQ(back->verified_chunk, 10U);
  EXPECT_TRUE(back->verified_medium);
  EXPECT_EQ(back->payload_offset, 3072U);
  ASSERT_TRUE(back->error);
  EXPECT_EQ(back->error->code(), Errc::kNetStalled);
  EXPECT_EQ(back->history.size(), 2U);
}

// A record without verified_chunk (written before the read-back ran beside
// the write) has every chunk read back again; one that claims more than was
// written is held to next_chunk.
TEST(JobRecord, VerifiedChunkDefaultsToNothingVerified) {
  JobRecord r;
  r.id = "x";
  r.next_chunk = 7;
  r.verified_chunk = 7;
  auto j = r.ToJson();
  j.erase("verified_chunk");
  auto back = JobRecord::FromJson(j);
  ASSERT_TRUE(back) << back.error().ToString();
  EXPECT_EQ(back->verified_chunk, 0U);
  EXPECT_FALSE(back->verified_medium) << "a record without it was not read from the medium";
  j["verified_chunk"] = 9;
  EXPECT_EQ(JobRecord::FromJson(j)->verified_chunk, 7U);
  j["verified_chunk"] = "all";
  EXPECT_EQ(JobRecord::FromJson(j).error().code(), Errc::kJournalCorrupt);
}

TEST(JobRecord, RejectsBrokenRecords) {
  JobRecord r;
  r.id = "x";
  auto j = r.ToJson();
  // A state this agent does not know: a newer agent's record, not damage.
  j["state"] = "Dancing";
  EXPECT_EQ(JobRecord::FromJson(j).error().code(), Errc::kJournalNewerFormat);
  j = r.ToJson();
  j.erase("next_chunk");
  EXPECT_EQ(JobRecord::FromJson(j).error().code(), Errc::kJournalCorrupt);
  j = r.ToJson();
  j["next_chunk"] = "many";
  EXPECT_EQ(JobRecord::FromJson(j).error().code(), Errc::kJournalCorrupt);
}

}  // namespace
}  // namespace sag::firmware
