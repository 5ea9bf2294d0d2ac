#include "common/redact.h"

#include <gtest/gtest.h>

namespace sag {
namespace {

TEST(Redact, QueryStringAndUserinfoOfAUrl) {
  EXPECT_EQ(RedactUrl("https://oss.example.com/img/1.0.1.sagimg?Expires=1700000000&"
                      "OSSAccessKeyId=AK&Signature=abc%2Bdef"),
            "https://oss.example.com/img/1.0.1.sagimg?<redacted>");
  EXPECT_EQ(RedactUrl("https://user:secret@repo.example:8443/a/b.img"),
            "https://<redacted>@repo.example:8443/a/b.img");
  EXPECT_EQ(RedactUrl("HTTP://u@h?x=1#frag"), "HTTP://<redacted>@h?<redacted>");
  EXPECT_EQ(RedactUrl("https://h/p#token=1"), "https://h/p?<redacted>");
  EXPECT_EQ(RedactUrl("wss://token@h"), "wss://<redacted>@h");
  EXPECT_EQ(RedactUrl("https://h/a@b"), "https://h/a@b");  // '@' in the path
  EXPECT_EQ(RedactUrl("https://h/plain.img"), "https://h/plain.img");
  EXPECT_EQ(RedactUrl("https://h"), "https://h");
  EXPECT_EQ(RedactUrl("/var/lib/images/a?b.img"), "/var/lib/images/a?b.img");  // a file name
  EXPECT_EQ(RedactUrl(""), "");
}

TEST(Redact, EveryUrlInAMessage) {
  EXPECT_EQ(RedactUrls("gave up downloading https://h/f.img?Signature=s3cr3t at byte 10; last "
                       "error: GET https://u:p@h/f.img?Signature=s3cr3t: stalled"),
            "gave up downloading https://h/f.img?<redacted> at byte 10; last error: GET "
            "https://<redacted>@h/f.img?<redacted> stalled");
  EXPECT_EQ(RedactUrls("redirect loop: https://a/x?t=1 -> https://b:pw@c/y?t=2"),
            "redirect loop: https://a/x?<redacted> -> https://<redacted>@c/y?<redacted>");
  EXPECT_EQ(RedactUrls("invalid download URL 'https://h/f?k=v': no"),
            "invalid download URL 'https://h/f?<redacted>': no");
  EXPECT_EQ(RedactUrls(R"({"source":"https://h/x?sig=1"})"),
            R"({"source":"https://h/x?<redacted>"})");
  EXPECT_EQ(RedactUrls("ratio 3:// not a url"), "ratio 3:// not a url");
  EXPECT_EQ(RedactUrls(""), "");
  const std::string clean = "opening /var/tmp/1.0.1.sagimg: No such file";
  EXPECT_EQ(RedactUrls(clean), clean);
}

}  // namespace
}  // namespace sag
