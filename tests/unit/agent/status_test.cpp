#include "agent/status.h"

#include <gtest/gtest.h>

#include <chrono>
#include <thread>

#include "common/atomic_file.h"
#include "tests/support/temp_dir.h"

namespace sag::agent {
namespace {

nlohmann::json Job(int percent) { return {{"job", {{"state", "Writing"}, {"percent", percent}}}}; }

int PercentIn(const StatusFile& file) {
  auto doc = file.Read();
  if (!doc || !doc->contains("job")) return -1;
  return (*doc)["job"].value("percent", -1);
}

TEST(StatusWriter, WritesWhatIsPostedOnItsOwn) {
  test::TempDir dir;
  StatusWriter writer(dir / "status.json");
  writer.Post(Job(7));
  const StatusFile file(dir / "status.json");
  for (int i = 0; i < 500 && PercentIn(file) != 7; ++i) {  // 5 s at most
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(PercentIn(file), 7);
}

TEST(StatusWriter, AnUpdateTakesInWhatWasPostedBeforeIt) {
  test::TempDir dir;
  StatusWriter writer(dir / "status.json");
  writer.Post(Job(40));
  writer.Post({{"agent_version", "1.2.3"}});
  ASSERT_TRUE(writer.Update({{"state", "idle"}}));
  auto doc = StatusFile(dir / "status.json").Read();
  ASSERT_TRUE(doc) << doc.error().ToString();
  EXPECT_EQ((*doc)["job"]["percent"], 40);
  EXPECT_EQ((*doc)["agent_version"], "1.2.3");
  EXPECT_EQ((*doc)["state"], "idle");
  // The update's own fields win over posted ones.
  writer.Post({{"state", "busy"}});
  ASSERT_TRUE(writer.Update({{"state", "idle again"}}));
  EXPECT_EQ((*StatusFile(dir / "status.json").Read())["state"], "idle again");
}

// status.json is world-readable: a signed URL's query string and userinfo
// never reach it, wherever in the document they are.
TEST(StatusWriter, RedactsSignedUrlsEverywhere) {
  test::TempDir dir;
  StatusWriter writer(dir / "status.json");
  const std::string url = "https://ops:pw@oss.example/img/1.0.1.sagimg?Expires=1&Signature=s3cr3t";
  writer.Post({{"last", {{"source", url}}}});
  ASSERT_TRUE(writer.Update(
      {{"job",
        {{"source", url},
         {"error", {{"code", 503}, {"message", "gave up downloading " + url + " at byte 0"}}}}},
       {"history", {{{"source", url}}}}}));
  auto text = ReadFile(dir / "status.json");
  ASSERT_TRUE(text) << text.error().ToString();
  EXPECT_EQ(text->find("s3cr3t"), std::string::npos) << *text;
  EXPECT_EQ(text->find("ops:pw"), std::string::npos) << *text;
  EXPECT_EQ(text->find("Expires"), std::string::npos) << *text;
  auto doc = StatusFile(dir / "status.json").Read();
  ASSERT_TRUE(doc) << doc.error().ToString();
  EXPECT_EQ((*doc)["job"]["source"], "https://<redacted>@oss.example/img/1.0.1.sagimg?<redacted>");
  EXPECT_EQ((*doc)["job"]["error"]["code"], 503);
}

TEST(StatusWriter, WritesWhatIsStillPostedWhenItGoes) {
  test::TempDir dir;
  {
    StatusWriter writer(dir / "status.json");
    writer.Post(Job(99));
  }
  EXPECT_EQ(PercentIn(StatusFile(dir / "status.json")), 99);
}

// Posts from one thread and updates from another: the file never goes back
// to older fields, and the last update is the last word.
TEST(StatusWriter, TheFileNeverGoesBackInTime) {
  test::TempDir dir;
  const StatusFile file(dir / "status.json");
  {
    StatusWriter writer(dir / "status.json");
    constexpr int kPosts = 2000;
    std::thread poster([&] {
      for (int i = 0; i < kPosts; ++i) writer.Post(Job(i));
    });
    int seen = -1;
    for (int i = 0; i < 200; ++i) {
      ASSERT_TRUE(writer.Update({{"tick", i}}));
      const int now = PercentIn(file);
      EXPECT_GE(now, seen) << "after update " << i;
      seen = now;
    }
    poster.join();
    ASSERT_TRUE(writer.Update(Job(kPosts)));
  }
  EXPECT_EQ(PercentIn(file), 2000);
  EXPECT_EQ((*file.Read())["tick"], 199);
}

}  // namespace
}  // namespace sag::agent
