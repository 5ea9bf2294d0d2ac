// The channel's message codec: every type round-trips, the documented samples
// (tests/data/proto, also the fuzzer's seeds) decode, and every kind of bad
// message is an error with the code the protocol answers it with.
#include "common/proto/messages.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <string>

#include "common/atomic_file.h"

namespace sag::proto {
namespace {

namespace fs = std::filesystem;

fs::path DataDir() { return fs::path(SAG_SOURCE_DIR) / "tests/data/proto"; }

TEST(Proto, EverySampleDecodesAndRoundTrips) {
  int n = 0;
  for (const auto& entry : fs::directory_iterator(DataDir())) {
    auto text = ReadFile(entry.path());
    ASSERT_TRUE(text);
    auto m = Decode(*text);
    ASSERT_TRUE(m) << entry.path() << ": " << m.error().ToString();
    auto again = Decode(Encode(*m));
    ASSERT_TRUE(again) << entry.path();
    EXPECT_EQ(*again, *m) << entry.path();
    ++n;
  }
  EXPECT_EQ(n, 12);  // one sample per message type
}

TEST(Proto, FieldsSurviveTheRoundTrip) {
  Result r;
  r.seq = 131;
  r.job_id = "j-8";
  r.job_type = "Device";
  r.version = "1.0.1";
  r.outcome = "rolled_back";
  r.error = ErrorInfo{405, "HealthCheckFailed", "bad \xff byte"};
  r.versions = {"1.0.0", "x"};
  const Message m{"5", "", r};
  auto d = Decode(Encode(m));
  ASSERT_TRUE(d) << d.error().ToString();
  const auto& got = std::get<Result>(d->body);
  EXPECT_EQ(got.seq, 131U);
  EXPECT_EQ(got.outcome, "rolled_back");
  ASSERT_TRUE(got.error);
  EXPECT_EQ(got.error->code, 405);
  // Invalid UTF-8 (a hook's output) is repaired, never a throw.
  EXPECT_EQ(got.error->message, "bad \xEF\xBF\xBD byte");
  EXPECT_EQ(TypeName(d->body), "result");
}

TEST(Proto, UnknownFieldsAreIgnored) {
  auto m = Decode(R"({"v":1,"type":"cancel","id":"x","job_id":"j","future":{"a":[1,2]},"z":null})");
  ASSERT_TRUE(m) << m.error().ToString();
  EXPECT_EQ(std::get<Cancel>(m->body).job_id, "j");
}

struct Bad {
  std::string text;
  Errc code;
  const char* answer;  // the `error` code it is answered with
  const char* says;    // part of the message
};

TEST(Proto, BadMessagesAreErrorsWithTheirAnswer) {
  const std::string big_url = "https://h/" + std::string(5000, 'a');
  const Bad cases[] = {
      {"", Errc::kProtocol, "Malformed", "not valid JSON"},
      {"not json", Errc::kProtocol, "Malformed", "not valid JSON"},
      {"[1,2]", Errc::kProtocol, "Malformed", "expected an object"},
      {R"({"type":"cancel","id":"x","job_id":"j"})", Errc::kProtocol, "Malformed", "v: missing"},
      {R"({"v":"1","type":"cancel","id":"x","job_id":"j"})", Errc::kProtocol, "Malformed",
       "v: expected an unsigned integer"},
      {R"({"v":2,"type":"hello","id":"x"})", Errc::kProtocolVersion, "UnsupportedVersion",
       "protocol version 2"},
      {R"({"v":-1,"type":"hello","id":"x"})", Errc::kProtocolVersion, "UnsupportedVersion",
       "protocol version -1"},
      {R"({"v":1,"type":"jobs","id":"x"})", Errc::kProtocolUnknownType, "UnknownType",
       "'jobs' is not defined"},
      {R"({"v":1,"type":"cancel","job_id":"j"})", Errc::kProtocol, "Malformed", "id: missing"},
      {R"({"v":1,"type":"cancel","id":"","job_id":"j"})", Errc::kProtocol, "Malformed",
       "id: must not be empty"},
      {R"({"v":1,"type":"cancel","id":")" + std::string(65, 'i') + R"(","job_id":"j"})",
       Errc::kProtocol, "Malformed", "more than the 64 allowed"},
      {R"({"v":1,"type":"cancel","id":"x"})", Errc::kProtocol, "Malformed",
       "'cancel' message: job_id: missing"},
      {R"({"v":1,"type":"job","id":"x","job_id":"j","job_type":"Os","version":"1","url":"https://h/i"})",
       Errc::kProtocol, "Malformed", "job_type: 'Os' is not one of Device, Dpi"},
      {R"({"v":1,"type":"job","id":"x","job_id":"j","job_type":"Dpi","version":"1","url":"file:///etc/shadow"})",
       Errc::kProtocol, "Malformed", "url: must be an http:// or https:// URL"},
      {R"({"v":1,"type":"job","id":"x","job_id":"j","job_type":"Dpi","version":"1","url":")" +
           big_url + R"("})",
       Errc::kProtocol, "Malformed", "url: 5010 characters"},
      {R"({"v":1,"type":"job","id":"x","job_id":"j","job_type":"Dpi","version":"1","url":"https://h/i","size":-5})",
       Errc::kProtocol, "Malformed", "size: expected an unsigned integer"},
      {R"({"v":1,"type":"job","id":"x","job_id":"j","job_type":"Dpi","version":"1","url":"https://h/i","sha256":"ABC"})",
       Errc::kProtocol, "Malformed", "sha256: expected 64 lower-case hex"},
      {R"({"v":1,"type":"progress","id":"x","seq":1,"job_id":"j","job_type":"Dpi","stage":"S","percent":101,"time":"t"})",
       Errc::kProtocol, "Malformed", "percent: out of range"},
      {R"({"v":1,"type":"result","id":"x","seq":1,"job_id":"j","job_type":"Dpi","version":"1","outcome":"ok","versions":{"device":"","dpi":""},"time":"t"})",
       Errc::kProtocol, "Malformed", "outcome: 'ok' is not one of"},
      {R"({"v":1,"type":"job.ack","id":"x","job_id":"j","accepted":false})", Errc::kProtocol,
       "Malformed", "a refused job needs its error"},
      {R"({"v":1,"type":"hello.ack","id":"x","server_time":"t","heartbeat_s":0,"acked":{"epoch":"","seq":0}})",
       Errc::kProtocol, "Malformed", "heartbeat_s: out of range"},
      {R"({"v":1,"type":"hello","id":"x","device":{"smartag_id":"s","serial":"","model":"m"}})",
       Errc::kProtocol, "Malformed", "device.serial: must not be empty"},
      {std::string(70000, ' '), Errc::kProtocolTooLarge, "TooLarge", "more than the 65536 allowed"},
      {std::string(40, '[') + std::string(40, ']'), Errc::kProtocol, "Malformed", "nested deeper"},
  };
  for (const auto& c : cases) {
    auto m = Decode(c.text);
    ASSERT_FALSE(m) << c.text.substr(0, 200);
    EXPECT_EQ(m.error().code(), c.code) << c.text.substr(0, 200) << ": " << m.error().ToString();
    EXPECT_EQ(ErrorCodeFor(m.error()), c.answer) << c.text.substr(0, 200);
    EXPECT_NE(m.error().message().find(c.says), std::string::npos)
        << c.text.substr(0, 200) << ": " << m.error().message();
  }
}

TEST(Proto, TooManyJobsInHelloIsMalformed) {
  std::string jobs;
  for (int i = 0; i < 257; ++i) {
    jobs += std::string(i ? "," : "") + R"({"job_id":"j)" + std::to_string(i) +
            R"(","job_type":"Dpi","version":"1","state":"Committed","outcome":"committed"})";
  }
  const std::string text =
      R"({"v":1,"type":"hello","id":"1","device":{"smartag_id":"s","serial":"n","model":"m"},)"
      R"("agent_version":"a","versions":{"device":"","dpi":""},"boot":{"booted_slot":"","slots":{}},)"
      R"("agent_state":"idle","jobs":[)" +
      jobs + R"(],"outbox":{"epoch":"e","last_seq":0}})";
  auto m = Decode(text);
  ASSERT_FALSE(m);
  EXPECT_NE(m.error().message().find("jobs: 257 items"), std::string::npos) << m.error().message();
}

}  // namespace
}  // namespace sag::proto
