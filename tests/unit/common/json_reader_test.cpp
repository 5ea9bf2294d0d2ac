#include "common/json_reader.h"

#include <gtest/gtest.h>

#include <string>

namespace sag {
namespace {

using nlohmann::json;

TEST(ParseJson, RefusesWhatIsNotJsonWithTheNameAndCode) {
  auto r = ParseJson("{\"id\": ", "inbox request x.json", Errc::kInvalidArgument);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code(), Errc::kInvalidArgument);
  EXPECT_NE(r.error().message().find("inbox request x.json: not valid JSON"), std::string::npos);
}

TEST(ParseJson, RefusesTooLargeAndTooDeep) {
  JsonLimits small;
  small.max_bytes = 10;
  auto big = ParseJson(R"({"a": "0123456789"})", "doc", Errc::kProtocol, small);
  ASSERT_FALSE(big);
  EXPECT_EQ(big.error().code(), Errc::kProtocol);
  EXPECT_NE(big.error().message().find("more than the 10 allowed"), std::string::npos);

  const std::string deep = std::string(100, '[') + std::string(100, ']');
  auto d = ParseJson(deep, "doc", Errc::kProtocol);
  ASSERT_FALSE(d);
  EXPECT_NE(d.error().message().find("nested deeper than 32"), std::string::npos);
  EXPECT_TRUE(ParseJson(std::string(20, '[') + std::string(20, ']'), "doc", Errc::kProtocol));
}

TEST(JsonReader, ReadsEveryTypeAndDefaults) {
  const json doc = json::parse(R"({"s": "x", "b": true, "u": 7, "i": -3, "f": 1.5,
      "n": null, "o": {"k": "v"}, "l": ["a", "b"], "ol": [{"k": 1}, {"k": 2}]})");
  JsonReader r(doc, "doc", Errc::kInvalidArgument);
  EXPECT_EQ(r.Str("s"), "x");
  EXPECT_TRUE(r.Bool("b"));
  EXPECT_EQ(r.U64("u"), 7U);
  EXPECT_EQ(r.I64("i"), -3);
  EXPECT_EQ(r.I64("u"), 7);
  EXPECT_DOUBLE_EQ(r.Num("f"), 1.5);
  EXPECT_EQ(r.Str("absent", "dflt"), "dflt");
  EXPECT_EQ(r.Str("n", "dflt"), "dflt");  // null = absent for optional fields
  EXPECT_FALSE(r.OptStr("absent"));
  EXPECT_EQ(r.OptU64("u"), 7U);
  EXPECT_EQ(r.Obj("o").Str("k"), "v");
  EXPECT_FALSE(r.OptObj("absent"));
  EXPECT_EQ(r.StrList("l", 2), (std::vector<std::string>{"a", "b"}));
  auto items = r.ObjList("ol", 10);
  ASSERT_EQ(items.size(), 2U);
  EXPECT_EQ(items[1].U64("k"), 2U);
  EXPECT_TRUE(r.Finish());
}

// Each case: a document, the field read, and the message expected.
TEST(JsonReader, EveryProblemIsAnErrorWithItsPath) {
  struct Case {
    const char* doc;
    std::function<void(JsonReader&)> read;
    const char* message;
  };
  const Case cases[] = {
      {R"({"id": "x", "allow_downgrade": "yes"})",
       [](JsonReader& r) { (void)r.Bool("allow_downgrade", false); },
       "req: allow_downgrade: expected a boolean, got string"},
      {R"({})", [](JsonReader& r) { (void)r.Str("id"); }, "req: id: missing (expected a string)"},
      {R"({"id": null})", [](JsonReader& r) { (void)r.Str("id"); }, "req: id: missing"},
      {R"({"size": -1})", [](JsonReader& r) { (void)r.U64("size"); },
       "req: size: expected an unsigned integer, got negative integer"},
      {R"({"size": 1.5})", [](JsonReader& r) { (void)r.U64("size", 0); },
       "req: size: expected an unsigned integer, got number with a fraction"},
      {R"({"size": 18446744073709551615})", [](JsonReader& r) { (void)r.I64("size"); },
       "req: size: expected an integer, got integer above 2^63-1"},
      {R"({"job": {"id": 5}})", [](JsonReader& r) { (void)r.Obj("job").Str("id"); },
       "req: job.id: expected a string, got integer"},
      {R"({"job": []})", [](JsonReader& r) { (void)r.Obj("job").Str("id"); },
       "req: job: expected an object, got array"},
      {R"({"l": ["a", 1]})", [](JsonReader& r) { (void)r.StrList("l", 5); },
       "req: l[1]: expected a string, got integer"},
      {R"({"l": ["a", "b", "c"]})", [](JsonReader& r) { (void)r.StrList("l", 2); },
       "req: l: 3 items, more than the 2 allowed"},
      {R"({"ol": [{"k": 1}, {"k": "x"}]})",
       [](JsonReader& r) {
         for (auto& o : r.ObjList("ol", 5)) (void)o.U64("k");
       },
       "req: ol[1].k: expected an unsigned integer, got string"},
      {R"({"id": "x", "extra": 1})", [](JsonReader& r) { r.OnlyKeys({"id"}); },
       "req: extra: unknown field (known: id)"},
      {R"([1])", [](JsonReader& r) { (void)r.Str("id"); },
       "req: document: expected an object, got array"},
  };
  for (const auto& c : cases) {
    const json doc = json::parse(c.doc);
    JsonReader r(doc, "req", Errc::kInvalidArgument);
    c.read(r);
    const auto st = r.Finish();
    ASSERT_FALSE(st) << c.doc;
    EXPECT_EQ(st.error().code(), Errc::kInvalidArgument);
    EXPECT_NE(st.error().message().find(c.message), std::string::npos)
        << c.doc << " -> " << st.error().message();
  }
}

TEST(JsonReader, TheFirstProblemWinsAndGettersStillReturn) {
  const json doc = json::parse(R"({"a": 1, "b": 2})");
  JsonReader r(doc, "req", Errc::kJournalCorrupt);
  EXPECT_EQ(r.Str("a"), "");
  EXPECT_EQ(r.Str("b", "d"), "d");
  r.Fail("c", "custom");
  EXPECT_FALSE(r.ok());
  const auto st = r.Finish();
  ASSERT_FALSE(st);
  EXPECT_EQ(st.error().code(), Errc::kJournalCorrupt);
  EXPECT_NE(st.error().message().find("req: a: expected a string"), std::string::npos);
}

}  // namespace
}  // namespace sag
