// The outbox under SIGKILL at random instants (issue 14): a child process
// appends reports and acknowledges some of them, telling the parent through a
// pipe each sequence number once Append() or Ack() returned; the parent kills
// it at a random instant, 120 times, and after each kill loads the outbox as
// a restarted daemon would and checks:
//   - it loads (a torn last line is cut off, nothing else is damaged);
//   - no report lost: every report whose Append() returned is pending or
//     acknowledged; no acknowledgement lost;
//   - none duplicated and order kept: sequence numbers strictly increase;
//   - replay delivers each report once: a consumer that records what it was
//     given and acknowledges it sees every sequence number exactly once over
//     all the restarts.
// The kill instants are random (seeded, printed), not tied to the machine's
// speed: whatever the child managed before the kill is what is checked.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <map>
#include <random>
#include <set>
#include <string>

#include "agent/outbox.h"
#include "tests/support/temp_dir.h"

namespace sag::agent {
namespace {

constexpr int kKills = 120;

// The child: appends forever; every 7th report it acknowledges what it
// appended 3 reports before. Writes "A seq\n" / "K seq\n" after each returns.
[[noreturn]] void Child(const std::filesystem::path& dir, int out) {
  Outbox o(dir, 64);
  if (!o.Load()) ::_exit(3);
  for (std::uint64_t n = 0;; ++n) {
    const bool progress = n % 3 == 0;
    auto seq = o.Append(progress ? "progress" : "state", "job" + std::to_string(n % 5), {{"n", n}});
    if (!seq) ::_exit(4);
    std::string line = "A " + std::to_string(*seq) + "\n";
    if (::write(out, line.data(), line.size()) < 0) ::_exit(5);
    if (n % 7 == 6 && *seq > 3) {
      if (!o.Ack(*seq - 3)) ::_exit(6);
      line = "K " + std::to_string(*seq - 3) + "\n";
      if (::write(out, line.data(), line.size()) < 0) ::_exit(7);
    }
  }
}

TEST(OutboxKill, NoReportLostDuplicatedOrReorderedAcrossSigkills) {
  test::TempDir dir;
  const unsigned seed = std::random_device{}();
  std::printf("seed %u\n", seed);
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> wait_us(0, 20000);
  std::set<std::uint64_t> appended;        // Append() returned: must never be lost
  std::uint64_t acked_by_child = 0;        // Ack() returned
  std::map<std::uint64_t, int> delivered;  // what the consumer was given, how often
  for (int kill = 0; kill < kKills; ++kill) {
    // The consumer's turn (the daemon at start): replay what is pending,
    // then acknowledge it, as the channel would after the cloud's ack.
    {
      Outbox o(dir.path(), 64);
      auto st = o.Load();
      ASSERT_TRUE(st) << "kill " << kill << ": " << st.error().ToString();
      EXPECT_GE(o.acked(), acked_by_child) << "kill " << kill << ": an acknowledgement was lost";
      std::uint64_t prev = o.acked();
      std::set<std::uint64_t> present;
      for (const auto& r : o.Pending()) {
        ASSERT_GT(r.seq, prev) << "kill " << kill << ": out of order or duplicated";
        prev = r.seq;
        present.insert(r.seq);
      }
      for (const auto seq : appended) {
        // Coalesced progress may be gone; everything else must be there.
        if (seq > o.acked() && present.count(seq) == 0) {
          bool coalesced = false;
          for (const auto& r : o.Pending()) coalesced = coalesced || r.seq > seq;
          ASSERT_TRUE(coalesced) << "kill " << kill << ": report #" << seq << " lost";
        }
      }
      // Only every other round the consumer gets through (the cloud may be
      // away): pending reports then accumulate across kills.
      if (kill % 2 == 0) {
        for (const auto& r : o.Pending()) ++delivered[r.seq];
        ASSERT_TRUE(o.Ack(o.last_seq()));
        acked_by_child = o.last_seq();
      }
      appended.clear();
      for (const auto& r : o.Pending()) appended.insert(r.seq);
    }
    int fds[2];
    ASSERT_EQ(::pipe(fds), 0);
    const pid_t child = ::fork();
    ASSERT_GE(child, 0);
    if (child == 0) {
      ::close(fds[0]);
      Child(dir.path(), fds[1]);
    }
    ::close(fds[1]);
    ::usleep(static_cast<useconds_t>(wait_us(rng)));
    ::kill(child, SIGKILL);
    int status = 0;
    ASSERT_EQ(::waitpid(child, &status, 0), child);
    ASSERT_TRUE(WIFSIGNALED(status)) << "kill " << kill << ": the child exited "
                                     << WEXITSTATUS(status) << " (3 load, 4 append, 6 ack)";
    std::string text;
    char buf[4096];
    for (ssize_t n; (n = ::read(fds[0], buf, sizeof buf)) > 0;) {
      text.append(buf, static_cast<std::size_t>(n));
    }
    ::close(fds[0]);
    std::size_t pos = 0;
    for (std::size_t nl; (nl = text.find('\n', pos)) != std::string::npos; pos = nl + 1) {
      const std::string line = text.substr(pos, nl - pos);
      const std::uint64_t seq = std::stoull(line.substr(2));
      if (line[0] == 'A') appended.insert(seq);
      if (line[0] == 'K') acked_by_child = std::max(acked_by_child, seq);
    }
  }
  for (const auto& [seq, times] : delivered) {
    EXPECT_EQ(times, 1) << "report #" << seq << " delivered " << times << " times";
  }
  EXPECT_GT(delivered.size(), 0U);
  std::printf("%d kills, %zu reports delivered once each\n", kKills, delivered.size());
}

}  // namespace
}  // namespace sag::agent
