#include "common/log.h"

#include <gtest/gtest.h>
#include <spdlog/sinks/ostream_sink.h>

#include <sstream>

namespace sag {
namespace {

TEST(ScrubLogText, LeavesPlainTextAlone) {
  EXPECT_EQ(ScrubLogText("job j-1 Writing 40% (1/2)"), "job j-1 Writing 40% (1/2)");
  EXPECT_EQ(ScrubLogText(""), "");
  EXPECT_EQ(ScrubLogText("ratio 3:// not a url"), "ratio 3:// not a url");
}

TEST(ScrubLogText, DropsTheQueryOfSignedUrls) {
  EXPECT_EQ(
      ScrubLogText("fetching https://oss.example/img/sag-1.0.1.sagimg?Expires=1&Signature=abc%2B "
                   "(attempt 2)"),
      "fetching https://oss.example/img/sag-1.0.1.sagimg?<redacted> (attempt 2)");
  EXPECT_EQ(ScrubLogText("\"source\":\"https://h/x?sig=1\""),
            "\"source\":\"https://h/x?<redacted>\"");
  // Cut to the end of the URL: a parenthesis after it goes too (more hidden,
  // never less).
  EXPECT_EQ(ScrubLogText("(https://h/x?a=1)"), "(https://h/x?<redacted>");
  EXPECT_EQ(ScrubLogText("https://h/x#token=1"), "https://h/x?<redacted>");
  EXPECT_EQ(ScrubLogText("https://h?x=1"), "https://h?<redacted>");
  EXPECT_EQ(ScrubLogText("two: http://a/1?k=1, ftp://b/2?k=2"),
            "two: http://a/1?<redacted> ftp://b/2?<redacted>");
}

TEST(ScrubLogText, DropsUserinfo) {
  EXPECT_EQ(ScrubLogText("GET https://admin:s3cret@10.0.0.1:8443/images/a"),
            "GET https://<redacted>@10.0.0.1:8443/images/a");
  EXPECT_EQ(ScrubLogText("wss://token@h"), "wss://<redacted>@h");
  // An '@' in the path is not userinfo.
  EXPECT_EQ(ScrubLogText("https://h/a@b"), "https://h/a@b");
  EXPECT_EQ(ScrubLogText("https://u:p@h/a?q=1"), "https://<redacted>@h/a?<redacted>");
}

TEST(ScrubLogText, KeepsEachMessageOnOneLine) {
  EXPECT_EQ(ScrubLogText("health check failed:\nline 2\r\n\tx"),
            "health check failed:\\nline 2\\r\\n\\tx");
  EXPECT_EQ(ScrubLogText(std::string("esc \x1b[31m red \x7f nul ") + '\0' + "!"),
            "esc \\x1b[31m red \\x7f nul \\x00!");
  EXPECT_EQ(ScrubLogText("https://h/a?x=1\nnext"), "https://h/a?<redacted>\\nnext");
}

std::string LogThrough(LogStyle style, spdlog::level::level_enum level, const std::string& msg) {
  std::ostringstream text;
  auto sink = std::make_shared<spdlog::sinks::ostream_sink_st>(text);
  spdlog::logger logger("test", sink);
  logger.set_formatter(MakeLogFormatter(style));
  logger.set_level(spdlog::level::trace);
  logger.log(level, "{}", msg);
  logger.flush();
  return text.str();
}

// The journal form: one line, the sd-daemon(3) priority first, the message
// scrubbed, whatever the level.
TEST(LogFormatter, JournalLinesCarryThePriorityAndAreScrubbed) {
  EXPECT_EQ(LogThrough(LogStyle::kJournal, spdlog::level::info, "job j-1 Writing 40%"),
            "<6>job j-1 Writing 40%\n");
  EXPECT_EQ(LogThrough(LogStyle::kJournal, spdlog::level::warn, "job j-1 Downloading: retry"),
            "<4>job j-1 Downloading: retry\n");
  EXPECT_EQ(LogThrough(LogStyle::kJournal, spdlog::level::err,
                       "job j-1 Failed: https://u:p@h/x.img?Signature=s3cret\noutput"),
            "<3>job j-1 Failed: https://<redacted>@h/x.img?<redacted>\\noutput\n");
  EXPECT_EQ(LogThrough(LogStyle::kJournal, spdlog::level::critical, "x"), "<2>x\n");
  EXPECT_EQ(LogThrough(LogStyle::kJournal, spdlog::level::debug, "x"), "<7>x\n");
}

TEST(LogFormatter, TerminalLinesAreScrubbedToo) {
  const std::string line = LogThrough(LogStyle::kTerminal, spdlog::level::info,
                                      "from https://h/x?Signature=s3cret\nmore");
  EXPECT_EQ(line.find("s3cret"), std::string::npos) << line;
  EXPECT_NE(line.find("https://h/x?<redacted>\\nmore"), std::string::npos) << line;
  EXPECT_EQ(std::count(line.begin(), line.end(), '\n'), 1) << line;
}

}  // namespace
}  // namespace sag
