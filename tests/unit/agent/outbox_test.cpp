// The report outbox: sequence numbers, acknowledgements and replay across a
// restart (a new object on the same files), a torn last line cut off, a
// damaged line an error value, and the bound that coalesces progress but
// never drops a state change or a result.
#include "agent/outbox.h"

#include <gtest/gtest.h>

#include <fstream>

#include "common/atomic_file.h"
#include "tests/support/temp_dir.h"

namespace sag::agent {
namespace {

namespace fs = std::filesystem;

std::vector<std::uint64_t> Seqs(const Outbox& o) {
  std::vector<std::uint64_t> out;
  for (const auto& r : o.Pending()) out.push_back(r.seq);
  return out;
}

void AppendRaw(const fs::path& path, const std::string& text) {
  std::ofstream(path, std::ios::binary | std::ios::app) << text;
}

TEST(Outbox, UnacknowledgedReportsAreReplayedInOrderAfterARestart) {
  test::TempDir dir;
  {
    Outbox o(dir.path());
    ASSERT_TRUE(o.Load());
    for (int i = 0; i < 5; ++i) {
      auto seq = o.Append("state", "j1", {{"state", "S" + std::to_string(i)}});
      ASSERT_TRUE(seq);
      EXPECT_EQ(*seq, static_cast<std::uint64_t>(i + 1));
    }
    ASSERT_TRUE(o.Ack(2));
  }
  Outbox again(dir.path());
  ASSERT_TRUE(again.Load());
  EXPECT_EQ(again.acked(), 2U);
  EXPECT_EQ(Seqs(again), (std::vector<std::uint64_t>{3, 4, 5}));
  EXPECT_EQ(again.Pending()[0].body["state"], "S2");
  // Numbers go on after the restart; none is reused.
  auto next = again.Append("result", "j1", {{"phase", "committed"}});
  ASSERT_TRUE(next);
  EXPECT_EQ(*next, 6U);
  EXPECT_EQ(again.Summary(),
            (nlohmann::json{{"pending", 4}, {"oldest_pending_seq", 3}, {"last_acked_seq", 2}}));
}

TEST(Outbox, AllAcknowledgedThenRestartedKeepsNumbering) {
  test::TempDir dir;
  {
    Outbox o(dir.path());
    ASSERT_TRUE(o.Load());
    for (int i = 0; i < 100; ++i) ASSERT_TRUE(o.Append("progress", "j", {{"percent", i}}));
    ASSERT_TRUE(o.Ack(100));  // compacts the log: every line was acknowledged
    EXPECT_TRUE(o.Pending().empty());
  }
  EXPECT_EQ(*ReadFile(dir / "outbox.log"), "");
  Outbox again(dir.path());
  ASSERT_TRUE(again.Load());
  auto seq = again.Append("state", "j", {});
  ASSERT_TRUE(seq);
  EXPECT_EQ(*seq, 101U);
}

TEST(Outbox, ATornLastLineIsCutOff) {
  test::TempDir dir;
  {
    Outbox o(dir.path());
    ASSERT_TRUE(o.Load());
    ASSERT_TRUE(o.Append("state", "j", {{"state", "Writing"}}));
  }
  AppendRaw(dir / "outbox.log", R"({"seq":2,"kind":"sta)");
  Outbox again(dir.path());
  ASSERT_TRUE(again.Load());
  EXPECT_EQ(Seqs(again), (std::vector<std::uint64_t>{1}));
  auto seq = again.Append("result", "j", {});
  ASSERT_TRUE(seq);
  EXPECT_EQ(*seq, 2U);
  Outbox third(dir.path());
  auto third_st = third.Load();
  ASSERT_TRUE(third_st) << "the cut line must not glue onto the next append: "
                        << third_st.error().ToString();
  EXPECT_EQ(Seqs(third), (std::vector<std::uint64_t>{1, 2}));
}

TEST(Outbox, ADamagedLineIsAnErrorValue) {
  const std::pair<const char*, const char*> cases[] = {
      {"garbage\n", "line 1: not valid JSON"},
      {R"({"seq":"1","kind":"state","job":"j","body":{}})"
       "\n",
       "line 1: seq: expected an unsigned integer, got string"},
      {R"({"seq":1,"kind":"gossip","job":"j","body":{}})"
       "\n",
       "kind: unknown report kind 'gossip'"},
      {R"({"seq":2,"kind":"state","job":"j","body":{}})"
       "\n"
       R"({"seq":2,"kind":"state","job":"j","body":{}})"
       "\n",
       "line 2: seq: 2 does not follow 2"},
  };
  for (const auto& [text, needle] : cases) {
    test::TempDir dir;
    AppendRaw(dir / "outbox.log", text);
    Outbox o(dir.path());
    auto st = o.Load();
    ASSERT_FALSE(st) << text;
    EXPECT_EQ(st.error().code(), Errc::kOutboxCorrupt);
    EXPECT_NE(st.error().message().find(needle), std::string::npos) << st.error().message();
  }
  test::TempDir dir;
  ASSERT_TRUE(WriteFileAtomic(dir / "outbox.ack", R"({"acked": -1})"));
  Outbox o(dir.path());
  auto st = o.Load();
  ASSERT_FALSE(st);
  EXPECT_EQ(st.error().code(), Errc::kOutboxCorrupt);
}

TEST(Outbox, TheBoundCoalescesProgressAndNeverDropsStateOrResults) {
  test::TempDir dir;
  Outbox o(dir.path(), 8);
  ASSERT_TRUE(o.Load());
  ASSERT_TRUE(o.Append("state", "a", {{"state", "Writing"}}));
  for (int p = 0; p <= 100; p += 10) ASSERT_TRUE(o.Append("progress", "a", {{"percent", p}}));
  ASSERT_TRUE(o.Append("state", "a", {{"state", "Verifying"}}));
  for (int i = 0; i < 20; ++i) ASSERT_TRUE(o.Append("state", "b", {{"n", i}}));
  ASSERT_TRUE(o.Append("result", "a", {{"phase", "committed"}}));
  Outbox again(dir.path(), 8);
  ASSERT_TRUE(again.Load());
  std::size_t states = 0;
  std::size_t results = 0;
  std::size_t progress = 0;
  std::uint64_t prev = 0;
  for (const auto& r : again.Pending()) {
    EXPECT_GT(r.seq, prev);
    prev = r.seq;
    states += r.kind == "state" ? 1 : 0;
    results += r.kind == "result" ? 1 : 0;
    progress += r.kind == "progress" ? 1 : 0;
  }
  EXPECT_EQ(states, 22U);
  EXPECT_EQ(results, 1U);
  EXPECT_EQ(progress, 0U);  // each superseded by a's next state
}

}  // namespace
}  // namespace sag::agent
