// The report outbox: sequence numbers, acknowledgements and replay across a
// restart (a new object on the same files), a torn last line cut off, a
// damaged line an error value, and the bound that coalesces progress but
// never drops a state change or a result.
#include "agent/outbox.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <fstream>
#include <mutex>
#include <thread>

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

// Post() is for the install's writer thread: it returns at once, even while
// another append holds the outbox (here: a consumer callback that blocks, as
// a busy disk's fdatasync would), and the posted reports land in the log in
// the order of the calls, before what is appended after them, durable.
TEST(Outbox, PostedReportsDoNotWaitAndKeepTheirOrder) {
  test::TempDir dir;
  {
    Outbox o(dir.path());
    ASSERT_TRUE(o.Load());
    std::mutex mu;
    std::condition_variable cv;
    bool inside = false;
    bool release = false;
    o.SetOnAppend([&] {
      std::unique_lock lock(mu);
      if (release) return;
      inside = true;
      cv.notify_all();
      cv.wait_for(lock, std::chrono::seconds(10), [&] { return release; });
    });
    std::thread first([&] { ASSERT_TRUE(o.Append("state", "j1", {{"state", "Writing"}})); });
    {
      std::unique_lock lock(mu);
      ASSERT_TRUE(cv.wait_for(lock, std::chrono::seconds(10), [&] { return inside; }));
    }
    // The outbox is held by the first append: posting must not wait for it.
    const auto t0 = std::chrono::steady_clock::now();
    o.Post("progress", "j1", {{"state", "Writing"}, {"percent", 10}});
    o.Post("progress", "j1", {{"state", "Writing"}, {"percent", 20}});
    const bool returned_while_held = [&] {
      const std::lock_guard lock(mu);
      return !release;
    }();
    EXPECT_TRUE(returned_while_held);
    EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(5))
        << "Post() waited for the append that held the outbox";
    {
      const std::lock_guard lock(mu);
      release = true;
    }
    cv.notify_all();
    first.join();
    ASSERT_TRUE(o.Append("state", "j1", {{"state", "Verifying"}}));
    // A report posted just before an append goes before it, although the
    // outbox's thread has hardly had the time to wake up.
    for (int k = 0; k < 50; ++k) {
      o.Post("progress", "j2", {{"state", "P" + std::to_string(k)}});
      ASSERT_TRUE(o.Append("state", "j2", {{"state", "S" + std::to_string(k)}}));
    }
    o.Post("progress", "j1", {{"state", "Verifying"}, {"percent", 50}});
    // Destroyed with a report still posted: it is appended first.
  }
  Outbox again(dir.path());
  ASSERT_TRUE(again.Load());
  auto pending = again.Pending();
  ASSERT_EQ(pending.size(), 105U);
  for (std::size_t k = 0; k < 50; ++k) {
    const auto& posted = pending.at(4 + 2 * k);
    const auto& appended = pending.at(5 + 2 * k);
    ASSERT_EQ(posted.body["state"], "P" + std::to_string(k)) << "report " << posted.seq;
    ASSERT_EQ(appended.body["state"], "S" + std::to_string(k)) << "report " << appended.seq;
  }
  pending.erase(pending.begin() + 4, pending.begin() + 104);
  std::vector<std::string> got;
  got.reserve(pending.size());
  for (const auto& r : pending) {
    got.push_back(r.kind + " " + r.body["state"].get<std::string>() +
                  (r.body.contains("percent") ? " " + r.body["percent"].dump() : ""));
  }
  EXPECT_EQ(got,
            (std::vector<std::string>{"state Writing", "progress Writing 10", "progress Writing 20",
                                      "state Verifying", "progress Verifying 50"}));
  EXPECT_EQ(pending.back().seq, 105U);
}

}  // namespace
}  // namespace sag::agent
