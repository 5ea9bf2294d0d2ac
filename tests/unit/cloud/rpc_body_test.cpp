// Response bodies with strings that are not valid UTF-8, or hold characters
// XML cannot carry: the JSON and XML bodies stay well-formed documents, the
// bad bytes replaced by U+FFFD (issue 16).
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <string>

#include "cloud/rpc/body.h"

namespace sag::cloud::rpc {
namespace {

constexpr std::string_view kFffd = "\xEF\xBF\xBD";

// Whether `s` is well-formed UTF-8 holding only XML 1.0 characters (written
// here on its own, so the test does not trust the code it checks).
bool XmlSafeUtf8(const std::string& s) {
  for (std::size_t i = 0; i < s.size();) {
    const auto b = static_cast<unsigned char>(s[i]);
    std::size_t n = b < 0x80            ? 1
                    : (b >> 5U) == 0x6  ? 2
                    : (b >> 4U) == 0xE  ? 3
                    : (b >> 3U) == 0x1E ? 4
                                        : 0;
    if (n == 0 || i + n > s.size()) return false;
    std::uint32_t cp = n == 1 ? b : b & (0x7FU >> n);
    for (std::size_t k = 1; k < n; ++k) {
      const auto c = static_cast<unsigned char>(s[i + k]);
      if ((c & 0xC0U) != 0x80U) return false;
      cp = (cp << 6U) | (c & 0x3FU);
    }
    const std::uint32_t min[] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < min[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    if (cp < 0x20 && cp != 0x9 && cp != 0xA && cp != 0xD) return false;
    if (cp == 0xFFFE || cp == 0xFFFF) return false;
    i += n;
  }
  return true;
}

std::string Repeat(std::string_view s, int n) {
  std::string out;
  for (int i = 0; i < n; ++i) out += s;
  return out;
}

TEST(RpcBody, XmlKeepsValidUtf8AndEscapesMarkup) {
  nlohmann::ordered_json doc;
  doc["Name"] = "分支 <a&b> \"q\" 'x' \xF0\x9F\x98\x80\t\n";
  EXPECT_EQ(RenderXml("R", doc),
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><R><Name>分支 &lt;a&amp;b&gt; &quot;q&quot; "
            "&apos;x&apos; \xF0\x9F\x98\x80\t\n</Name></R>");
}

TEST(RpcBody, XmlReplacesInvalidUtf8AndForbiddenCharacters) {
  const struct {
    std::string in;
    std::string out;
  } cases[] = {
      {"a\xFF"
       "b",
       "a" + std::string(kFffd) + "b"},        // never in UTF-8
      {"\x80", std::string(kFffd)},            // lone continuation
      {"\xC0\x80", Repeat(kFffd, 2)},          // overlong NUL
      {"\xE0\x80\xAF", Repeat(kFffd, 3)},      // overlong '/'
      {"\xED\xA0\x80", Repeat(kFffd, 3)},      // a surrogate
      {"\xF4\x90\x80\x80", Repeat(kFffd, 4)},  // above U+10FFFF
      {"x\xE2\x82", "x" + Repeat(kFffd, 2)},   // truncated at the end
      {"\xE2\x82"
       "A",
       Repeat(kFffd, 2) + "A"},                                  // truncated mid-way
      {std::string("a\0b", 3), "a" + std::string(kFffd) + "b"},  // NUL
      {"\x01\x1B", Repeat(kFffd, 2)},                            // controls
      {"\xEF\xBF\xBE\xEF\xBF\xBF", Repeat(kFffd, 2)},            // U+FFFE, U+FFFF
      {"\xEF\xBF\xBD", std::string(kFffd)},                      // U+FFFD itself stays
  };
  for (const auto& c : cases) {
    nlohmann::ordered_json doc;
    doc["V"] = c.in;
    const std::string xml = RenderXml("R", doc);
    EXPECT_EQ(xml, "<?xml version=\"1.0\" encoding=\"UTF-8\"?><R><V>" + c.out + "</V></R>")
        << "case " << (&c - cases);
    EXPECT_TRUE(XmlSafeUtf8(xml));
  }
}

TEST(RpcBody, ErrorAndSuccessBodiesWithInvalidUtf8StayWellFormed) {
  const std::string bad = "ver\xC3\x28sion\xFF\x01";
  RpcError e;
  e.http_status = 400;
  e.code = "InvalidParameter";
  e.message = "The parameter value '" + bad + "' is invalid.";
  const auto xml = ErrorResponse(Format::kXml, e, "RID", "host");
  EXPECT_TRUE(XmlSafeUtf8(xml.body)) << xml.body;
  EXPECT_NE(xml.body.find("<Message>The parameter value &apos;ver" + std::string(kFffd) + "(sion"),
            std::string::npos)
      << xml.body;
  const auto json = ErrorResponse(Format::kJson, e, "RID", "host");
  EXPECT_TRUE(nlohmann::json::accept(json.body)) << json.body;
  EXPECT_TRUE(XmlSafeUtf8(json.body));

  nlohmann::ordered_json doc;
  doc["Name"] = bad;
  const auto ok_xml = SuccessResponse(Format::kXml, "DescribeX", "RID", doc);
  EXPECT_TRUE(XmlSafeUtf8(ok_xml.body)) << ok_xml.body;
  const auto ok_json = SuccessResponse(Format::kJson, "DescribeX", "RID", doc);
  EXPECT_TRUE(nlohmann::json::accept(ok_json.body)) << ok_json.body;
}

}  // namespace
}  // namespace sag::cloud::rpc
