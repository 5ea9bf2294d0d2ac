// The inbox as a hostile user or a broken tool would fill it: each bad entry
// is refused with a clear error, moved to rejected/ with its .error, answered
// in replies/, and the valid requests around it are still served.
#include "agent/inbox.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>

#include "common/atomic_file.h"
#include "tests/support/temp_dir.h"

namespace sag::agent {
namespace {

namespace fs = std::filesystem;

constexpr uid_t kNobody = 65534;

void Write(const fs::path& path, const std::string& text) {
  std::ofstream(path, std::ios::binary) << text;
}

std::string Slurp(const fs::path& path) {
  auto text = ReadFile(path);
  return text ? *text : std::string("<unreadable: ") + text.error().ToString() + ">";
}

struct Fixture {
  test::TempDir tmp;
  Inbox inbox{{.dir = tmp / "inbox", .max_bytes = 4096, .agent_uid = ::geteuid()}};
  Fixture() { EXPECT_TRUE(inbox.Prepare()); }
  [[nodiscard]] fs::path Dir() const { return tmp / "inbox"; }

  // Scans once; expects exactly the one rejection of `name` with `needle` in
  // its message, the entry moved aside with its .error, and a reply.
  void ExpectRejected(const std::string& name, const std::string& needle) {
    std::vector<InboxRejection> rejected;
    auto next = inbox.Next(&rejected);
    ASSERT_TRUE(next) << next.error().ToString();
    EXPECT_FALSE(*next);
    ASSERT_EQ(rejected.size(), 1U);
    EXPECT_EQ(rejected[0].name, name);
    EXPECT_EQ(rejected[0].error.code(), Errc::kBadRequest);
    EXPECT_NE(rejected[0].error.message().find(needle), std::string::npos)
        << rejected[0].error.message();
    EXPECT_EQ(fs::symlink_status(Dir() / name).type(), fs::file_type::not_found)
        << name << " left in the inbox";
    EXPECT_NE(fs::symlink_status(inbox.RejectedDir() / name).type(), fs::file_type::not_found)
        << name << " not kept in rejected/";
    EXPECT_NE(Slurp(inbox.RejectedDir() / (name + ".error")).find(needle), std::string::npos);
    const std::string stem = name.substr(0, name.size() - 5);
    const auto reply = Slurp(inbox.ReplyPath(stem));
    EXPECT_NE(reply.find("\"Rejected\""), std::string::npos) << reply;
    EXPECT_NE(reply.find("415"), std::string::npos) << reply;
    // The daemon goes on: a valid request after it is served.
    Write(Dir() / "zz-good.json", R"({"id":"zz-good","source":"/img"})");
    auto good = inbox.Next();
    ASSERT_TRUE(good && *good);
    EXPECT_EQ((*good)->spec.id, "zz-good");
    EXPECT_TRUE(inbox.Remove(**good));
  }
};

TEST(Inbox, TakesAValidRequestAndKeepsItUntilRemoved) {
  Fixture f;
  Write(f.Dir() / "j1.json",
        R"({"id":"j1","source":"https://repo/x.sagimg","allow_downgrade":true,"reboot":false})");
  auto next = f.inbox.Next();
  ASSERT_TRUE(next && *next);
  EXPECT_EQ((*next)->name, "j1");
  EXPECT_EQ((*next)->spec.source, "https://repo/x.sagimg");
  EXPECT_TRUE((*next)->spec.allow_downgrade);
  EXPECT_FALSE((*next)->spec.reboot);
  EXPECT_TRUE(fs::exists(f.Dir() / "j1.json"));  // still there: a crash must not lose it
  ASSERT_TRUE(f.inbox.Remove(**next));
  auto none = f.inbox.Next();
  ASSERT_TRUE(none);
  EXPECT_FALSE(*none);
}

TEST(Inbox, IgnoresTemporaryFilesAndOtherNames) {
  Fixture f;
  Write(f.Dir() / ".j1.json.tmp123", "{");
  Write(f.Dir() / "notes.txt", "{");
  std::vector<InboxRejection> rejected;
  auto next = f.inbox.Next(&rejected);
  ASSERT_TRUE(next);
  EXPECT_FALSE(*next);
  EXPECT_TRUE(rejected.empty());
  EXPECT_TRUE(fs::exists(f.Dir() / ".j1.json.tmp123"));
}

TEST(Inbox, WrongTypeIsRejectedNotThrown) {
  // Found on main: this aborted the daemon with an uncaught type_error, and
  // the file stayed, so every restart aborted again.
  Fixture f;
  Write(f.Dir() / "x.json", R"({"id":"x","source":"/img","allow_downgrade":"yes"})");
  f.ExpectRejected("x.json", "allow_downgrade: expected a boolean, got string");
}

TEST(Inbox, NonJsonIsRejected) {
  Fixture f;
  Write(f.Dir() / "x.json", "install 1.0.1 please");
  f.ExpectRejected("x.json", "not valid JSON");
}

TEST(Inbox, UnknownKeyIsRejected) {
  Fixture f;
  Write(f.Dir() / "x.json", R"({"id":"x","source":"/img","reboots":false})");
  f.ExpectRejected("x.json", "reboots: unknown field");
}

TEST(Inbox, MissingSourceIsRejected) {
  Fixture f;
  Write(f.Dir() / "x.json", R"({"id":"x"})");
  f.ExpectRejected("x.json", "source: missing");
}

TEST(Inbox, RelativeSourceIsRejected) {
  Fixture f;
  Write(f.Dir() / "x.json", R"({"id":"x","source":"img.sagimg"})");
  f.ExpectRejected("x.json", "source: expected an absolute file path");
}

TEST(Inbox, JobIdThatCannotNameAFileIsRejected) {
  Fixture f;
  Write(f.Dir() / "x.json", R"({"id":"../../etc/x","source":"/img"})");
  f.ExpectRejected("x.json", "id: a job id is made of letters");
}

TEST(Inbox, FifoIsRejectedWithoutBlocking) {
  // Found on main: a FIFO named x.json blocked the daemon's main thread in
  // open() forever (and SIGTERM was no longer handled).
  Fixture f;
  ASSERT_EQ(::mkfifo((f.Dir() / "x.json").c_str(), 0600), 0);
  f.ExpectRejected("x.json", "is a FIFO");
}

TEST(Inbox, SymlinkIsRejectedAndItsTargetUntouched) {
  Fixture f;
  Write(f.tmp / "target.json", R"({"id":"x","source":"/img"})");
  fs::create_symlink(f.tmp / "target.json", f.Dir() / "x.json");
  f.ExpectRejected("x.json", "is a symbolic link");
  EXPECT_TRUE(fs::exists(f.tmp / "target.json"));
  EXPECT_TRUE(fs::is_symlink(f.inbox.RejectedDir() / "x.json"));
}

TEST(Inbox, DirectoryIsRejected) {
  Fixture f;
  fs::create_directories(f.Dir() / "x.json" / "sub");
  f.ExpectRejected("x.json", "is a directory");
}

TEST(Inbox, HugeFileIsRejectedUnread) {
  Fixture f;
  Write(f.Dir() / "x.json", std::string(1U << 20U, ' '));
  f.ExpectRejected("x.json", "1048576 bytes, more than the 4096");
}

TEST(Inbox, FileOfAnotherUserIsRejected) {
  if (::geteuid() != 0) GTEST_SKIP() << "chown needs root";
  Fixture f;
  Write(f.Dir() / "x.json", R"({"id":"x","source":"/img"})");
  ASSERT_EQ(::chown((f.Dir() / "x.json").c_str(), kNobody, kNobody), 0);
  f.ExpectRejected("x.json", "is owned by uid 65534; only root or the agent's user");
}

TEST(Inbox, TwoRejectedWithTheSameNameAreBothKept) {
  Fixture f;
  Write(f.Dir() / "x.json", "1");
  f.ExpectRejected("x.json", "expected an object");
  Write(f.Dir() / "x.json", "2");
  auto next = f.inbox.Next();
  ASSERT_TRUE(next);
  EXPECT_EQ(Slurp(f.inbox.RejectedDir() / "x.json"), "1");
  EXPECT_EQ(Slurp(f.inbox.RejectedDir() / "x.json.1"), "2");
}

// An unreadable file: root reads anything, so the scan runs in a child that
// is the agent's user (nobody) on an inbox it owns.
TEST(Inbox, UnreadableFileIsRejected) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to become another user";
  test::TempDir tmp;
  const fs::path dir = tmp / "inbox";
  Inbox inbox({.dir = dir, .max_bytes = 4096, .agent_uid = kNobody});
  ASSERT_TRUE(inbox.Prepare());
  Write(dir / "x.json", R"({"id":"x","source":"/img"})");
  ::chmod((dir / "x.json").c_str(), 0);
  for (const auto& p : {tmp.path(), dir, inbox.RejectedDir(), dir / "replies", dir / "x.json"}) {
    ASSERT_EQ(::chown(p.c_str(), kNobody, kNobody), 0) << p;
  }
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    if (::setgid(kNobody) != 0 || ::setuid(kNobody) != 0) ::_exit(10);
    std::vector<InboxRejection> rejected;
    auto next = inbox.Next(&rejected);
    if (!next || *next || rejected.size() != 1) ::_exit(11);
    if (rejected[0].error.message().find("cannot be opened: Permission denied") ==
        std::string::npos) {
      ::_exit(12);
    }
    ::_exit(fs::exists(inbox.RejectedDir() / "x.json") ? 0 : 13);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0)
      << "10 setuid, 11 not one rejection, 12 wrong message, 13 not moved";
}

TEST(DecodeInboxRequest, TakesEveryFieldOfTheJobModel) {
  const std::string sha(64, 'a');
  auto r = DecodeInboxRequest(R"({"id":"j","source":"https://repo/x","type":"Dpi","version":"v1",)"
                              R"("size":1234,"sha256":")" +
                                  sha + R"(","deadline":"2026-12-02T08:00:00Z","reboot":false})",
                              "req");
  ASSERT_TRUE(r) << r.error().ToString();
  EXPECT_EQ(r->spec.id, "j");
  EXPECT_EQ(r->spec.type, JobType::kDpi);
  EXPECT_EQ(r->spec.version, "v1");
  EXPECT_EQ(r->spec.size, 1234U);
  EXPECT_EQ(r->spec.sha256, sha);
  EXPECT_EQ(r->spec.deadline, "2026-12-02T08:00:00Z");
  EXPECT_FALSE(r->spec.reboot);
  EXPECT_FALSE(r->spec.allow_downgrade);
  auto plain = DecodeInboxRequest(R"({"id":"j","source":"/x"})", "req");
  ASSERT_TRUE(plain);
  EXPECT_EQ(plain->spec.type, JobType::kUnknown);
  EXPECT_TRUE(plain->spec.version.empty());
  EXPECT_EQ(plain->spec.size, 0U);
  EXPECT_TRUE(plain->spec.reboot);
}

TEST(DecodeInboxRequest, EveryTypeIsChecked) {
  const std::pair<const char*, const char*> cases[] = {
      {R"({"id":7,"source":"/x"})", "id: expected a string, got integer"},
      {R"({"id":"a","source":["/x"]})", "source: expected a string, got array"},
      {R"({"id":"a","source":"/x","reboot":1})", "reboot: expected a boolean, got integer"},
      {R"([])", "document: expected an object, got array"},
      {R"({"id":"","source":"/x"})", "id: a job id has 1 to 128 characters"},
      {R"({"id":"a","source":"/x","type":1})", "type: expected a string, got integer"},
      {R"({"id":"a","source":"/x","type":"Firmware"})", R"(type: expected "Device" or "Dpi")"},
      {R"({"id":"a","source":"/x","type":"Unknown"})", R"(type: expected "Device" or "Dpi")"},
      {R"({"id":"a","source":"/x","version":2})", "version: expected a string, got integer"},
      {R"({"id":"a","source":"/x","size":-1})", "size: expected an unsigned integer"},
      {R"({"id":"a","source":"/x","size":"12"})", "size: expected an unsigned integer"},
      {R"({"id":"a","source":"/x","sha256":"ABCD"})", "sha256: expected 64 lower-case hex"},
      {R"({"id":"a","source":"/x","deadline":"tomorrow"})", "deadline: expected a UTC time"},
      {R"({"id":"a","source":"/x","deadline":5})", "deadline: expected a string, got integer"},
  };
  for (const auto& [text, needle] : cases) {
    auto r = DecodeInboxRequest(text, "req");
    ASSERT_FALSE(r) << text;
    EXPECT_EQ(r.error().code(), Errc::kBadRequest);
    EXPECT_NE(r.error().message().find(needle), std::string::npos) << r.error().message();
  }
}

}  // namespace
}  // namespace sag::agent
