// The registry of job ids: what is put is found again after a restart (a new
// object on the same file), bounded without ever dropping an unfinished job,
// and a damaged file is an error value that also stops further writes.
#include "agent/registry.h"

#include <gtest/gtest.h>

#include "common/atomic_file.h"
#include "tests/support/temp_dir.h"

namespace sag::agent {
namespace {

JobOutcome Job(const std::string& id, JobPhase phase, JobType type = JobType::kDpi) {
  JobOutcome o;
  o.id = id;
  o.type = type;
  o.phase = phase;
  o.state = std::string(JobPhaseName(phase));
  o.to = "1.0.1";
  return o;
}

TEST(JobRegistry, WhatIsPutIsFoundAfterARestart) {
  test::TempDir dir;
  {
    JobRegistry r(dir / "jobs.json");
    ASSERT_TRUE(r.Load());
    auto failed = Job("a", JobPhase::kFailed, JobType::kUnknown);
    failed.error = Error(Errc::kSignatureInvalid, "bad signature");
    ASSERT_TRUE(r.Put(failed));
    ASSERT_TRUE(r.Put(Job("b", JobPhase::kAccepted)));
    ASSERT_TRUE(r.Put(Job("b", JobPhase::kRebooting, JobType::kDevice)));  // an update
  }
  JobRegistry again(dir / "jobs.json");
  ASSERT_TRUE(again.Load());
  ASSERT_EQ(again.jobs().size(), 2U);
  auto a = again.Find("a");
  ASSERT_TRUE(a);
  EXPECT_EQ(a->phase, JobPhase::kFailed);
  EXPECT_EQ(a->type, JobType::kUnknown);
  ASSERT_TRUE(a->error);
  EXPECT_EQ(a->error->code(), Errc::kSignatureInvalid);
  EXPECT_EQ(a->error->message(), "bad signature");
  auto b = again.Find("b");
  ASSERT_TRUE(b);
  EXPECT_EQ(b->phase, JobPhase::kRebooting);
  EXPECT_EQ(b->type, JobType::kDevice);
  EXPECT_FALSE(again.Find("c"));
  ASSERT_TRUE(again.Remove("b"));
  JobRegistry third(dir / "jobs.json");
  ASSERT_TRUE(third.Load());
  EXPECT_FALSE(third.Find("b"));
  EXPECT_TRUE(third.Find("a"));
}

TEST(JobRegistry, KeepsTheNewestFinishedAndEveryUnfinishedJob) {
  test::TempDir dir;
  JobRegistry r(dir / "jobs.json", 3);
  ASSERT_TRUE(r.Load());
  ASSERT_TRUE(r.Put(Job("running", JobPhase::kRunning)));
  for (int i = 0; i < 10; ++i) {
    ASSERT_TRUE(r.Put(Job("j" + std::to_string(i), JobPhase::kCommitted)));
  }
  JobRegistry again(dir / "jobs.json", 3);
  ASSERT_TRUE(again.Load());
  ASSERT_EQ(again.jobs().size(), 4U);
  EXPECT_TRUE(again.Find("running"));
  EXPECT_FALSE(again.Find("j6"));
  for (const auto* id : {"j7", "j8", "j9"}) EXPECT_TRUE(again.Find(id)) << id;
}

TEST(JobRegistry, ADamagedFileIsAnErrorAndIsNotOverwritten) {
  const std::pair<const char*, const char*> cases[] = {
      {"{", "not valid JSON"},
      {R"({"version": 1, "jobs": [{"id": 7, "type": "Dpi", "phase": "failed"}]})",
       "jobs[0]: id: expected a string, got integer"},
      {R"({"version": 1, "jobs": [{"id": "a", "type": "Dpi", "phase": "done"}]})",
       "phase: unknown job phase 'done'"},
      {R"({"version": 1, "jobs": [{"id": "a", "type": "Dpi", "phase": "failed",
           "error": {"code": "E1"}}]})",
       "error.code: expected an unsigned integer, got string"},
      {R"({"version": 2, "jobs": []})", "version: version 2 is not 1"},
      {R"([])", "expected an object, got array"},
  };
  for (const auto& [text, needle] : cases) {
    test::TempDir dir;
    ASSERT_TRUE(WriteFileAtomic(dir / "jobs.json", text));
    JobRegistry r(dir / "jobs.json");
    auto st = r.Load();
    ASSERT_FALSE(st) << text;
    EXPECT_EQ(st.error().code(), Errc::kJournalCorrupt);
    EXPECT_NE(st.error().message().find(needle), std::string::npos) << st.error().message();
    EXPECT_NE(st.error().message().find("move the file aside"), std::string::npos);
    EXPECT_FALSE(r.Put(Job("x", JobPhase::kAccepted)));
    EXPECT_EQ(*ReadFile(dir / "jobs.json"), text);
  }
}

}  // namespace
}  // namespace sag::agent
