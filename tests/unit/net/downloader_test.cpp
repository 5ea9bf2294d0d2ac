#include "common/net/downloader.h"

#include <gtest/gtest.h>
#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <filesystem>
#include <random>
#include <sstream>
#include <thread>

#include "common/sha256.h"
#include "common/stream_source.h"
#include "tests/support/temp_dir.h"
#include "tests/support/test_http_server.h"

namespace sag::net {
namespace {

using std::chrono::milliseconds;
using test::Faults;
using test::TestHttpServer;
using Clock = std::chrono::steady_clock;

std::string MakeContent(std::size_t n) {
  std::mt19937 rng(42);
  std::string out(n, '\0');
  for (auto& c : out) c = static_cast<char>(rng() & 0xffU);
  return out;
}

// What the sink saw; it checks that bytes come in order and exactly once.
struct Collected {
  std::string data;
  std::uint64_t start = 0;
  std::size_t calls = 0;
  std::size_t max_chunk = 0;
  bool in_order = true;
};

Sink CollectInto(Collected& c, std::uint64_t start) {
  c.start = start;
  return [&c](std::uint64_t offset, std::span<const std::uint8_t> data) -> Status {
    if (offset != c.start + c.data.size()) c.in_order = false;
    c.data.append(reinterpret_cast<const char*>(data.data()), data.size());
    c.max_chunk = std::max(c.max_chunk, data.size());
    ++c.calls;
    return Ok();
  };
}

// Small backoffs so that failure paths run in well under a second. The stall
// timeout stays generous (a loaded machine must not cause extra retries that
// the exact assertions below would see); the stall tests use kShortStall.
constexpr milliseconds kShortStall{300};

DownloadOptions Fast() {
  DownloadOptions o;
  o.connect_timeout = milliseconds(2000);
  o.stall_timeout = milliseconds(3000);
  o.initial_backoff = milliseconds(10);
  o.max_backoff = milliseconds(100);
  o.max_retries = 3;
  return o;
}

std::string Hex(std::string_view s) { return ToHex(Sha256::Of(s)); }

bool Contains(const std::string& haystack, std::string_view needle) {
  return haystack.find(needle) != std::string::npos;
}

// --- plain HTTP on loopback: the transfer logic ---------------------------

TEST(Downloader, FullDownload) {
  const std::string content = MakeContent(1U << 20U);
  TestHttpServer server(content);
  Collected got;
  auto info = Fetch(server.Url(), 0, CollectInto(got, 0), Fast());
  ASSERT_TRUE(info) << info.error().ToString();
  EXPECT_EQ(Hex(got.data), Hex(content));
  EXPECT_TRUE(got.in_order);
  EXPECT_EQ(info->total_size, content.size());
  EXPECT_EQ(info->bytes, content.size());
  EXPECT_EQ(info->attempts, 1);
  EXPECT_LE(got.max_chunk, 64U << 10U);  // streamed through a fixed buffer
  EXPECT_EQ(server.ranges(), std::vector<std::string>{""});
}

TEST(Downloader, ResumesFromOffset) {
  const std::string content = MakeContent(200000);
  TestHttpServer server(content);
  Collected got;
  auto info = Fetch(server.Url(), 12345, CollectInto(got, 12345), Fast());
  ASSERT_TRUE(info) << info.error().ToString();
  EXPECT_EQ(got.data, content.substr(12345));
  EXPECT_TRUE(got.in_order);
  EXPECT_EQ(info->total_size, content.size());
  EXPECT_EQ(server.ranges(), std::vector<std::string>{"bytes=12345-"});
}

TEST(Downloader, DropMidTransferResumesWithRange) {
  const std::string content = MakeContent(1U << 20U);
  TestHttpServer server(content);
  server.SetFaults({.drop_after = 300000, .drop_times = 2});
  Collected got;
  auto info = Fetch(server.Url(), 0, CollectInto(got, 0), Fast());
  ASSERT_TRUE(info) << info.error().ToString();
  EXPECT_EQ(Hex(got.data), Hex(content));
  EXPECT_TRUE(got.in_order);
  EXPECT_EQ(info->attempts, 3);
  EXPECT_EQ(server.ranges(), (std::vector<std::string>{"", "bytes=300000-", "bytes=600000-"}));
}

TEST(Downloader, ProgressResetsTheRetryBudget) {
  // Five drops with a budget of one retry: each attempt moves forward, so the
  // download is not abandoned.
  const std::string content = MakeContent(700000);
  TestHttpServer server(content);
  server.SetFaults({.drop_after = 100000, .drop_times = 5});
  auto o = Fast();
  o.max_retries = 1;
  Collected got;
  auto info = Fetch(server.Url(), 0, CollectInto(got, 0), o);
  ASSERT_TRUE(info) << info.error().ToString();
  EXPECT_EQ(Hex(got.data), Hex(content));
  EXPECT_EQ(server.requests(), 6);
}

TEST(Downloader, ServerIgnoringRangeIsSkippedNotDuplicated) {
  const std::string content = MakeContent(500000);
  TestHttpServer server(content);
  // A resume from an offset, and a drop, against a server that always
  // answers 200 with the whole file.
  server.SetFaults({.drop_after = 300000, .drop_times = 1, .ignore_range = true});
  Collected got;
  auto info = Fetch(server.Url(), 100000, CollectInto(got, 100000), Fast());
  ASSERT_TRUE(info) << info.error().ToString();
  EXPECT_EQ(Hex(got.data), Hex(content.substr(100000)));
  EXPECT_TRUE(got.in_order);
  EXPECT_EQ(server.ranges(), (std::vector<std::string>{"bytes=100000-", "bytes=300000-"}));
}

// FetchRange: a closed range, resumed after a drop with what is left of it.
TEST(Downloader, RangeFetchAsksForExactlyItsBytes) {
  const std::string content = MakeContent(1U << 20U);
  TestHttpServer server(content);
  server.SetFaults({.drop_after = 100000, .drop_times = 1});
  Collected got;
  auto info = FetchRange(server.Url(), 5000, 300000, CollectInto(got, 5000), Fast());
  ASSERT_TRUE(info) << info.error().ToString();
  EXPECT_EQ(Hex(got.data), Hex(content.substr(5000, 300000)));
  EXPECT_TRUE(got.in_order);
  EXPECT_EQ(server.ranges(),
            (std::vector<std::string>{"bytes=5000-304999", "bytes=105000-304999"}));
}

// A server that answers a range with 200 and the whole file: refused before
// the body is read (a delta would download the whole file per request).
TEST(Downloader, RangeFetchRefusesAServerIgnoringRange) {
  const std::string content = MakeContent(500000);
  TestHttpServer server(content);
  server.SetFaults({.ignore_range = true});
  Collected got;
  auto info = FetchRange(server.Url(), 1000, 2000, CollectInto(got, 1000), Fast());
  ASSERT_FALSE(info);
  EXPECT_EQ(info.error().code(), Errc::kNetRangeUnsupported) << info.error().ToString();
  EXPECT_TRUE(Contains(info.error().message(), "does not support Range")) << info.error().message();
  EXPECT_TRUE(got.data.empty());
  EXPECT_EQ(server.requests(), 1);  // not retried
}

// FetchRangeExact: one range into memory, exactly its length.
TEST(Downloader, RangeFetchExactReturnsExactlyTheRange) {
  const std::string content = MakeContent(500000);
  TestHttpServer server(content);
  server.SetFaults({.drop_after = 1000, .drop_times = 1});
  std::uint64_t received = 0;
  auto got = FetchRangeExact(server.Url(), 7000, 20000, "the test piece", Fast(), &received);
  ASSERT_TRUE(got) << got.error().ToString();
  EXPECT_EQ(Hex(std::string(got->begin(), got->end())), Hex(content.substr(7000, 20000)));
  EXPECT_EQ(received, 20000U);
  EXPECT_EQ(server.ranges(), (std::vector<std::string>{"bytes=7000-26999", "bytes=8000-26999"}));
}

// A server that answers with more than asked: refused, naming the piece.
TEST(Downloader, RangeFetchExactRefusesMoreThanAsked) {
  const std::string content = MakeContent(500000);
  TestHttpServer server(content);
  server.SetFaults({.range_extra = 100});
  std::uint64_t received = 0;
  auto got = FetchRangeExact(server.Url(), 7000, 20000, "the test piece", Fast(), &received);
  ASSERT_FALSE(got);
  EXPECT_TRUE(Contains(got.error().message(), "fetching the test piece")) << got.error().message();
  EXPECT_TRUE(Contains(got.error().message(), "7000-26999")) << got.error().message();
  EXPECT_EQ(received, 0U);
}

// A server that ignores Range: kNetRangeUnsupported as from FetchRange (the
// delta install's fallback decides on that code), naming the piece.
TEST(Downloader, RangeFetchExactKeepsRangeUnsupported) {
  const std::string content = MakeContent(500000);
  TestHttpServer server(content);
  server.SetFaults({.ignore_range = true});
  auto got = FetchRangeExact(server.Url(), 1000, 2000, "the dictionary", Fast());
  ASSERT_FALSE(got);
  EXPECT_EQ(got.error().code(), Errc::kNetRangeUnsupported) << got.error().ToString();
  EXPECT_TRUE(Contains(got.error().message(), "fetching the dictionary")) << got.error().message();
  EXPECT_TRUE(Contains(got.error().message(), "does not support Range")) << got.error().message();
  EXPECT_EQ(server.requests(), 1);
}

// RangePrefetcher: ranges consumed in order, the next ones fetched ahead.
std::vector<RangePrefetcher::Range> TestRanges() {
  // Lengths below, at and far above the 64 KiB buffer of the tests.
  return {{1000, 300000}, {400000, 5}, {500000, 65536},   {10, 200000},    {700000, 90000},
          {900000, 1},    {0, 150000}, {1200000, 400000}, {1700000, 7777}, {1800000, 100}};
}

std::string ConsumeAll(RangePrefetcher& p, Status& status) {
  std::string out;
  for (std::size_t i = 0; i < p.size() && status; ++i) {
    status = p.Consume(i, [&](std::uint64_t, std::span<const std::uint8_t> d) -> Status {
      out.append(reinterpret_cast<const char*>(d.data()), d.size());
      return Ok();
    });
  }
  return out;
}

TEST(Downloader, PrefetcherDeliversRangesInOrderWithRequestsInFlight) {
  const std::string content = MakeContent(2U << 20U);
  std::string want;
  for (const auto& r : TestRanges()) want += content.substr(r.offset, r.length);
  for (const std::size_t k : {1U, 3U}) {
    TestHttpServer server(content);
    // Each answer waits 200 ms: the workers' requests overlap on the server
    // even when a loaded machine is slow to run their threads.
    server.SetFaults({.respond_after = milliseconds(200)});
    RangePrefetcher p(server.Url(), TestRanges(), k, 64U << 10U, Fast(), nullptr);
    Status st = Ok();
    const std::string got = ConsumeAll(p, st);
    ASSERT_TRUE(st) << st.error().ToString();
    EXPECT_EQ(Hex(got), Hex(want)) << "K=" << k;
    EXPECT_EQ(p.Finish(), 0U);
    EXPECT_EQ(server.requests(), static_cast<int>(TestRanges().size()));
    if (k == 1) {
      EXPECT_EQ(server.max_concurrent(), 1);
    } else {
      EXPECT_GT(server.max_concurrent(), 1);
      EXPECT_LE(server.max_concurrent(), 3);
    }
  }
}

// The error of a range is returned when that range is consumed: the ranges
// before it are delivered whole.
TEST(Downloader, PrefetcherReturnsAnErrorInOrder) {
  const std::string content = MakeContent(1U << 20U);
  TestHttpServer server(content);
  RangePrefetcher p(server.Url(), {{0, 100000}, {200000, 300000}, {5000000, 10}, {0, 10}}, 3,
                    16U << 10U, Fast(), nullptr);
  std::string got;
  const auto into = [&](std::uint64_t, std::span<const std::uint8_t> d) -> Status {
    got.append(reinterpret_cast<const char*>(d.data()), d.size());
    return Ok();
  };
  ASSERT_TRUE(p.Consume(0, into));
  ASSERT_TRUE(p.Consume(1, into));
  EXPECT_EQ(Hex(got), Hex(content.substr(0, 100000) + content.substr(200000, 300000)));
  const auto st = p.Consume(2, into);
  ASSERT_FALSE(st);
  EXPECT_EQ(st.error().code(), Errc::kNetRangeUnsupported) << st.error().ToString();
}

// A consumer that stops (its sink fails, or `stopping` turns true) while
// the workers block on full buffers: they end promptly, nothing hangs.
TEST(Downloader, PrefetcherStopsPromptlyWhileWorkersBlock) {
  const std::string content = MakeContent(4U << 20U);
  TestHttpServer server(content);
  const std::vector<RangePrefetcher::Range> big{
      {0, 1U << 20U}, {1U << 20U, 1U << 20U}, {2U << 20U, 1U << 20U}};
  {
    RangePrefetcher p(server.Url(), big, 3, 16U << 10U, Fast(), nullptr);
    std::this_thread::sleep_for(milliseconds(200));  // the workers fill their buffers
    const auto t0 = std::chrono::steady_clock::now();
    const auto st = p.Consume(0, [](std::uint64_t, std::span<const std::uint8_t>) -> Status {
      return Error(Errc::kIo, "the writer failed");
    });
    ASSERT_FALSE(st);
    EXPECT_EQ(st.error().code(), Errc::kIo);
    const std::uint64_t discarded = p.Finish();
    EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(2));
    EXPECT_GT(discarded, 0U);
    // Bounded: at most a buffer (and one piece) per worker was received.
    EXPECT_LT(discarded, 3U * ((16U << 10U) + (64U << 10U)));
  }
  std::atomic<bool> stop{false};
  RangePrefetcher p(server.Url(), big, 3, 16U << 10U, Fast(), [&] { return stop.load(); });
  std::this_thread::sleep_for(milliseconds(200));
  const auto t0 = std::chrono::steady_clock::now();
  const auto st = p.Consume(0, [&](std::uint64_t, std::span<const std::uint8_t>) -> Status {
    stop = true;
    return Ok();
  });
  ASSERT_FALSE(st);
  EXPECT_EQ(st.error().code(), Errc::kCancelled);
  p.Finish();
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(2));
}

TEST(Downloader, StallTimesOutAndRetries) {
  const std::string content = MakeContent(400000);
  TestHttpServer server(content);
  server.SetFaults({.stall_after = 100000, .stall_for = milliseconds(5000), .stall_times = 1});
  auto o = Fast();
  o.stall_timeout = kShortStall;
  Collected got;
  const auto start = Clock::now();
  auto info = Fetch(server.Url(), 0, CollectInto(got, 0), o);
  ASSERT_TRUE(info) << info.error().ToString();
  EXPECT_LT(Clock::now() - start, milliseconds(3000));  // did not wait for the server
  EXPECT_EQ(Hex(got.data), Hex(content));
  EXPECT_EQ(server.ranges(), (std::vector<std::string>{"", "bytes=100000-"}));
}

TEST(Downloader, StallWithoutProgressGivesUpAsStalled) {
  TestHttpServer server(MakeContent(100000));
  server.SetFaults({.stall_after = 0, .stall_for = milliseconds(5000), .stall_times = 100});
  auto o = Fast();
  o.stall_timeout = kShortStall;
  o.max_retries = 1;
  Collected got;
  auto info = Fetch(server.Url(), 0, CollectInto(got, 0), o);
  ASSERT_FALSE(info);
  EXPECT_EQ(info.error().code(), Errc::kNetStalled) << info.error().ToString();
  EXPECT_EQ(server.requests(), 2);
}

TEST(Downloader, PersistentServerErrorGivesUpAfterMaxRetries) {
  TestHttpServer server(MakeContent(1000));
  server.SetFaults({.fail_status = 503, .fail_times = -1});
  auto o = Fast();
  o.max_retries = 2;
  Collected got;
  auto info = Fetch(server.Url(), 0, CollectInto(got, 0), o);
  ASSERT_FALSE(info);
  const Error& e = info.error();
  EXPECT_EQ(e.code(), Errc::kNetHttpStatus);
  EXPECT_TRUE(Contains(e.message(), "503")) << e.message();
  EXPECT_TRUE(Contains(e.message(), "after 3 consecutive failed attempts")) << e.message();
  EXPECT_TRUE(Contains(e.message(), "retry the job")) << e.message();
  EXPECT_EQ(server.requests(), 3);
}

TEST(Downloader, TransientStatusesAreRetried) {
  const std::string content = MakeContent(5000);
  for (const int status : {408, 429, 500, 502}) {
    TestHttpServer server(content);
    server.SetFaults({.fail_status = status, .fail_times = 2});
    Collected got;
    auto info = Fetch(server.Url(), 0, CollectInto(got, 0), Fast());
    ASSERT_TRUE(info) << status << ": " << info.error().ToString();
    EXPECT_EQ(got.data, content);
    EXPECT_EQ(server.requests(), 3) << status;
  }
}

// The default logger's lines while it lives (the fetch logs through it).
class CaptureLog {
 public:
  CaptureLog()
      : previous_(spdlog::default_logger()),
        logger_(std::make_shared<spdlog::logger>(
            "capture", std::make_shared<spdlog::sinks::ostream_sink_mt>(text_))) {
    logger_->set_pattern("%v");
    spdlog::set_default_logger(logger_);
  }
  ~CaptureLog() { spdlog::set_default_logger(previous_); }
  CaptureLog(const CaptureLog&) = delete;
  CaptureLog& operator=(const CaptureLog&) = delete;
  [[nodiscard]] std::string text() const { return text_.str(); }

 private:
  std::ostringstream text_;
  std::shared_ptr<spdlog::logger> previous_;
  std::shared_ptr<spdlog::logger> logger_;
};

TEST(Downloader, RetryLinesNameTheJobAndStageAndHideTheSignature) {
  const std::string content = MakeContent(5000);
  TestHttpServer server(content);
  server.SetFaults({.fail_status = 503, .fail_times = 2});
  DownloadOptions o = Fast();
  int stage = 0;
  o.log_context = [&stage] {
    return "job j-42: " + std::string(stage++ == 0 ? "Pending" : "Writing");
  };
  Collected got;
  std::string log;
  {
    const CaptureLog capture;
    auto info =
        Fetch(server.Url("/img.sagimg?Expires=1&Signature=s3cr3t"), 0, CollectInto(got, 0), o);
    ASSERT_TRUE(info) << info.error().ToString();
    log = capture.text();
  }
  EXPECT_EQ(got.data, content);
  // One line per retry, each with the job and its stage at that moment.
  EXPECT_TRUE(Contains(log, "job j-42: Pending: download http://127.0.0.1:" +
                                std::to_string(server.port()) + "/img.sagimg?<redacted>: "))
      << log;
  EXPECT_TRUE(Contains(log, "; retry 1/3 in ")) << log;
  EXPECT_TRUE(Contains(log, "job j-42: Writing: download ")) << log;
  EXPECT_TRUE(Contains(log, "; retry 2/3 in ")) << log;
  EXPECT_FALSE(Contains(log, "s3cr3t")) << log;
  EXPECT_FALSE(Contains(log, "Expires")) << log;
}

TEST(Downloader, RetryAfterIsCappedByMaxBackoff) {
  const std::string content = MakeContent(5000);
  TestHttpServer server(content);
  server.SetFaults({.fail_status = 503, .fail_times = 1, .retry_after = "3600"});
  Collected got;
  const auto start = Clock::now();
  auto info = Fetch(server.Url(), 0, CollectInto(got, 0), Fast());
  ASSERT_TRUE(info) << info.error().ToString();
  EXPECT_LT(Clock::now() - start, milliseconds(2000));
}

TEST(Downloader, ClientErrorsAreNotRetried) {
  for (const int status : {404, 403, 400}) {
    TestHttpServer server(MakeContent(1000));
    server.SetFaults({.fail_status = status, .fail_times = -1});
    Collected got;
    auto info = Fetch(server.Url(), 0, CollectInto(got, 0), Fast());
    ASSERT_FALSE(info);
    EXPECT_EQ(info.error().code(), Errc::kNetHttpStatus);
    EXPECT_TRUE(Contains(info.error().message(), "HTTP " + std::to_string(status)))
        << info.error().message();
    EXPECT_EQ(server.requests(), 1) << status;
  }
}

TEST(Downloader, FollowsRedirects) {
  const std::string content = MakeContent(70000);
  TestHttpServer server(content);
  // Relative, absolute-path and absolute Locations.
  server.SetFaults({.redirects = {{"/dir/a", "b"}, {"/dir/b", "/c"}, {"/c", server.Url("/file")}}});
  Collected got;
  auto info = Fetch(server.Url("/dir/a"), 0, CollectInto(got, 0), Fast());
  ASSERT_TRUE(info) << info.error().ToString();
  EXPECT_EQ(got.data, content);
  EXPECT_EQ(server.requests(), 4);
  EXPECT_EQ(info->attempts, 4);
}

// A signed URL's signature never appears in an error: errors go to
// status.json, the job's journal and the cloud.
TEST(Downloader, ErrorsDoNotShowTheSignatureOfSignedUrls) {
  TestHttpServer server(MakeContent(1000));
  server.SetFaults({.fail_status = 503, .fail_times = -1});
  auto o = Fast();
  o.max_retries = 1;
  Collected got;
  auto info =
      Fetch(server.Url("/img/1.0.1.sagimg?Expires=9&Signature=s3cr3t"), 0, CollectInto(got, 0), o);
  ASSERT_FALSE(info);
  EXPECT_EQ(info.error().code(), Errc::kNetHttpStatus);
  EXPECT_FALSE(Contains(info.error().message(), "s3cr3t")) << info.error().message();
  EXPECT_TRUE(Contains(info.error().message(), "/img/1.0.1.sagimg?<redacted>"))
      << info.error().message();
  auto bad = Fetch("https://u:pw@h/x?Signature=s3cr3t", 0, CollectInto(got, 0), o);
  ASSERT_FALSE(bad);
  EXPECT_FALSE(Contains(bad.error().message(), "s3cr3t")) << bad.error().message();
  EXPECT_FALSE(Contains(bad.error().message(), "u:pw")) << bad.error().message();
}

TEST(Downloader, RedirectLoopIsRefused) {
  TestHttpServer server(MakeContent(1000));
  server.SetFaults({.redirects = {{"/a", "/b"}, {"/b", "/a"}}});
  Collected got;
  auto info = Fetch(server.Url("/a"), 0, CollectInto(got, 0), Fast());
  ASSERT_FALSE(info);
  EXPECT_EQ(info.error().code(), Errc::kNetTooManyRedirects);
  EXPECT_TRUE(Contains(info.error().message(), "loop")) << info.error().message();
  EXPECT_EQ(server.requests(), 2);  // not retried
}

TEST(Downloader, TooManyRedirectsAreRefused) {
  const std::string content = MakeContent(1000);
  TestHttpServer server(content);
  Faults f;
  for (int i = 0; i < 6; ++i) {
    f.redirects["/r" + std::to_string(i)] = i == 5 ? "/file" : "/r" + std::to_string(i + 1);
  }
  server.SetFaults(f);
  auto o = Fast();
  o.max_redirects = 5;
  Collected got;
  auto info = Fetch(server.Url("/r0"), 0, CollectInto(got, 0), o);
  ASSERT_FALSE(info);
  EXPECT_EQ(info.error().code(), Errc::kNetTooManyRedirects);
  EXPECT_EQ(server.requests(), 6);

  o.max_redirects = 6;
  Collected got2;
  auto ok = Fetch(server.Url("/r0"), 0, CollectInto(got2, 0), o);
  ASSERT_TRUE(ok) << ok.error().ToString();
  EXPECT_EQ(got2.data, content);
}

TEST(Downloader, WrongContentRangeIsRefused) {
  TestHttpServer server(MakeContent(10000));
  server.SetFaults({.range_start_shift = 1});
  Collected got;
  auto info = Fetch(server.Url(), 500, CollectInto(got, 500), Fast());
  ASSERT_FALSE(info);
  EXPECT_EQ(info.error().code(), Errc::kNetRangeUnsupported);
  EXPECT_EQ(server.requests(), 1);
  EXPECT_TRUE(got.data.empty());
}

TEST(Downloader, OffsetAtTheEndIsCompleteAndPastTheEndIsRefused) {
  TestHttpServer server(MakeContent(10000));
  Collected got;
  auto info = Fetch(server.Url(), 10000, CollectInto(got, 10000), Fast());
  ASSERT_TRUE(info) << info.error().ToString();
  EXPECT_EQ(info->bytes, 0U);
  EXPECT_EQ(info->total_size, 10000U);

  auto past = Fetch(server.Url(), 10001, CollectInto(got, 10001), Fast());
  ASSERT_FALSE(past);
  EXPECT_EQ(past.error().code(), Errc::kNetRangeUnsupported);
}

TEST(Downloader, FileChangedBetweenAttemptsIsRefused) {
  const std::string content = MakeContent(300000);
  TestHttpServer server(content);
  server.SetFaults({.drop_after = 100000, .drop_times = 1});
  Collected got;
  const Sink collect = CollectInto(got, 0);
  bool changed = false;
  // The file is republished while the first response is in flight.
  const Sink sink = [&](std::uint64_t offset, std::span<const std::uint8_t> data) {
    if (!changed) {
      changed = true;
      server.SetFaults({.etag = "\"sag-test-2\""});
    }
    return collect(offset, data);
  };
  auto info = Fetch(server.Url(), 0, sink, Fast());
  ASSERT_FALSE(info);
  EXPECT_EQ(info.error().code(), Errc::kNetRangeUnsupported);
  EXPECT_TRUE(Contains(info.error().message(), "changed")) << info.error().message();
}

TEST(Downloader, SinkErrorStopsTheFetchUnchanged) {
  TestHttpServer server(MakeContent(500000));
  std::size_t calls = 0;
  const Sink sink = [&](std::uint64_t, std::span<const std::uint8_t>) -> Status {
    if (++calls == 2) return Error(Errc::kNoSpace, "slot full");
    return Ok();
  };
  auto info = Fetch(server.Url(), 0, sink, Fast());
  ASSERT_FALSE(info);
  EXPECT_EQ(info.error().code(), Errc::kNoSpace);
  EXPECT_EQ(info.error().message(), "slot full");
  EXPECT_EQ(calls, 2U);
  EXPECT_EQ(server.requests(), 1);
}

TEST(Downloader, CancelDuringAStalledRead) {
  TestHttpServer server(MakeContent(200000));
  server.SetFaults({.stall_after = 50000, .stall_for = milliseconds(8000), .stall_times = 1});
  std::atomic<bool> cancel{false};
  auto o = Fast();
  o.stall_timeout = milliseconds(6000);
  o.cancel = &cancel;
  std::thread canceller([&] {
    std::this_thread::sleep_for(milliseconds(300));
    cancel = true;
  });
  Collected got;
  const auto start = Clock::now();
  auto info = Fetch(server.Url(), 0, CollectInto(got, 0), o);
  canceller.join();
  ASSERT_FALSE(info);
  EXPECT_EQ(info.error().code(), Errc::kCancelled);
  EXPECT_LT(Clock::now() - start, milliseconds(2000));
  EXPECT_EQ(got.data.size(), 50000U);
}

TEST(Downloader, CancelDuringBackoff) {
  TestHttpServer server(MakeContent(1000));
  server.SetFaults({.fail_status = 503, .fail_times = -1});
  std::atomic<bool> cancel{false};
  auto o = Fast();
  o.initial_backoff = milliseconds(10000);
  o.max_backoff = milliseconds(10000);
  o.cancel = &cancel;
  std::thread canceller([&] {
    std::this_thread::sleep_for(milliseconds(300));
    cancel = true;
  });
  Collected got;
  const auto start = Clock::now();
  auto info = Fetch(server.Url(), 0, CollectInto(got, 0), o);
  canceller.join();
  ASSERT_FALSE(info);
  EXPECT_EQ(info.error().code(), Errc::kCancelled);
  EXPECT_LT(Clock::now() - start, milliseconds(2000));
  EXPECT_EQ(server.requests(), 1);
}

// A server that trickles bytes just often enough never stalls: the minimum
// rate over a window ends the fetch (kNetTooSlow), not the stall timeout.
TEST(Downloader, TrickleBelowTheMinimumRateIsTooSlow) {
  TestHttpServer server(MakeContent(4000));
  server.SetFaults({.trickle_bytes = 10, .trickle_every = milliseconds(50)});  // ~200 B/s
  auto o = Fast();
  o.stall_timeout = milliseconds(20000);
  o.min_rate = 100'000;
  o.min_rate_window = milliseconds(200);
  Collected got;
  auto info = Fetch(server.Url(), 0, CollectInto(got, 0), o);
  ASSERT_FALSE(info);
  EXPECT_EQ(info.error().code(), Errc::kNetTooSlow) << info.error().ToString();
  EXPECT_TRUE(Contains(info.error().message(), "download.min_rate")) << info.error().message();
  EXPECT_LT(got.data.size(), 4000U);
  EXPECT_TRUE(got.in_order);
}

// However fast the bytes come, the whole fetch has a deadline (kNetDeadline).
TEST(Downloader, OverallDeadlineEndsTheFetch) {
  TestHttpServer server(MakeContent(4000));
  server.SetFaults({.trickle_bytes = 10, .trickle_every = milliseconds(50)});
  auto o = Fast();
  o.stall_timeout = milliseconds(20000);
  o.min_rate = 0;
  o.deadline = milliseconds(300);
  Collected got;
  auto info = Fetch(server.Url(), 0, CollectInto(got, 0), o);
  ASSERT_FALSE(info);
  EXPECT_EQ(info.error().code(), Errc::kNetDeadline) << info.error().ToString();
  EXPECT_TRUE(Contains(info.error().message(), "download.deadline_s")) << info.error().message();
  EXPECT_LT(got.data.size(), 4000U);
}

// A reader waiting for a stalled server sees its caller's stop request (the
// agent's SIGTERM) while it waits, not after the stall timeout.
TEST(Downloader, StreamSourceSeesCancelWhileTheServerStalls) {
  TestHttpServer server(MakeContent(200000));
  server.SetFaults({.stall_after = 1000, .stall_for = milliseconds(30000), .stall_times = 1});
  std::atomic<bool> cancel{false};
  auto o = Fast();
  o.stall_timeout = milliseconds(20000);
  o.max_retries = 0;
  o.cancel = &cancel;
  auto src = OpenStreamSource(server.Url(), 0, o);
  ASSERT_TRUE(src) << src.error().ToString();
  std::vector<std::uint8_t> buf(4096);
  std::uint64_t got = 0;
  while (got < 1000) {  // the bytes before the stall
    auto n = (*src)->Read(buf);
    ASSERT_TRUE(n) << n.error().ToString();
    ASSERT_GT(*n, 0U);
    got += *n;
  }
  std::thread canceller([&] {
    std::this_thread::sleep_for(milliseconds(100));
    cancel = true;
  });
  auto n = (*src)->Read(buf);
  canceller.join();
  ASSERT_FALSE(n);
  EXPECT_EQ(n.error().code(), Errc::kCancelled) << n.error().ToString();
}

TEST(Downloader, BandwidthLimitPacesTheTransfer) {
  // 300 KB at 200 KB/s is 1.5 s; the band is loose so it cannot flake on a
  // loaded machine. bench/download_rate.cpp measures the 10 s accuracy.
  const std::string content = MakeContent(300000);
  TestHttpServer server(content);
  auto o = Fast();
  o.bandwidth_limit = 200000;
  Collected got;
  const auto start = Clock::now();
  auto info = Fetch(server.Url(), 0, CollectInto(got, 0), o);
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  ASSERT_TRUE(info) << info.error().ToString();
  EXPECT_EQ(got.data, content);
  EXPECT_GT(seconds, 1.5 * 0.75);
  EXPECT_LT(seconds, 1.5 * 1.25);
}

TEST(Downloader, RefusesBadUrlsAndSchemeCaMismatch) {
  Collected got;
  DownloadOptions o = Fast();
  EXPECT_EQ(Fetch("ftp://127.0.0.1/x", 0, CollectInto(got, 0), o).error().code(),
            Errc::kInvalidArgument);
  EXPECT_EQ(Fetch("http://127.0.0.1:99999/x", 0, CollectInto(got, 0), o).error().code(),
            Errc::kInvalidArgument);
  EXPECT_EQ(Fetch("http://user@127.0.0.1/x", 0, CollectInto(got, 0), o).error().code(),
            Errc::kInvalidArgument);
  // https needs the pinned CA; http is refused once a CA is configured.
  EXPECT_EQ(Fetch("https://127.0.0.1/x", 0, CollectInto(got, 0), o).error().code(),
            Errc::kInvalidArgument);
  o.ca_file = "/nonexistent/ca.pem";
  EXPECT_EQ(Fetch("http://127.0.0.1/x", 0, CollectInto(got, 0), o).error().code(),
            Errc::kInvalidArgument);
  const auto missing_ca = Fetch("https://127.0.0.1/x", 0, CollectInto(got, 0), o);
  EXPECT_EQ(missing_ca.error().code(), Errc::kNetTls);
  EXPECT_TRUE(Contains(missing_ca.error().message(), "/nonexistent/ca.pem"));
}

TEST(Downloader, ConnectionRefusedIsRetriedThenReported) {
  std::uint16_t port = 0;
  {
    const TestHttpServer gone("");
    port = gone.port();
  }
  auto o = Fast();
  o.max_retries = 1;
  Collected got;
  auto info =
      Fetch("http://127.0.0.1:" + std::to_string(port) + "/file", 0, CollectInto(got, 0), o);
  ASSERT_FALSE(info);
  EXPECT_EQ(info.error().code(), Errc::kNetConnect) << info.error().ToString();
  EXPECT_TRUE(Contains(info.error().message(), "2 consecutive")) << info.error().message();
}

// --- TLS: trust, host names, client certificates ---------------------------

class DownloaderTls : public ::testing::Test {
 protected:
  void SetUp() override {
    auto pki = test::MakeTestPki(dir_.path());
    ASSERT_TRUE(pki) << pki.error().ToString();
    pki_ = *pki;
  }
  [[nodiscard]] DownloadOptions Options() const {
    DownloadOptions o = Fast();
    o.ca_file = pki_.ca_cert;
    return o;
  }

  test::TempDir dir_;
  test::TestPki pki_;
};

TEST_F(DownloaderTls, DownloadsFromTrustedServerAndResumesAfterDrops) {
  const std::string content = MakeContent(1U << 20U);
  TestHttpServer server(content, test::ServerTls{pki_.server_cert, pki_.server_key, {}});
  server.SetFaults({.drop_after = 400000, .drop_times = 2});
  Collected got;
  auto info = Fetch(server.Url(), 0, CollectInto(got, 0), Options());
  ASSERT_TRUE(info) << info.error().ToString();
  EXPECT_EQ(Hex(got.data), Hex(content));
  EXPECT_TRUE(got.in_order);
  EXPECT_EQ(server.ranges(), (std::vector<std::string>{"", "bytes=400000-", "bytes=800000-"}));
  EXPECT_EQ(server.last_sni(), "");  // no SNI for an IP address
}

TEST_F(DownloaderTls, HostNameIsVerifiedAndSentAsSni) {
  const std::string content = MakeContent(10000);
  TestHttpServer server(content, test::ServerTls{pki_.server_cert, pki_.server_key, {}});
  Collected got;
  auto info = Fetch(server.Url("/file", "localhost"), 0, CollectInto(got, 0), Options());
  ASSERT_TRUE(info) << info.error().ToString();
  EXPECT_EQ(got.data, content);
  EXPECT_EQ(server.last_sni(), "localhost");
}

TEST_F(DownloaderTls, UntrustedServerIsRefusedWithoutRetry) {
  // A server whose chain ends at an unrelated CA (as a system store might
  // trust); only the pinned CA counts.
  TestHttpServer server(MakeContent(1000),
                        test::ServerTls{pki_.rogue_server_cert, pki_.rogue_server_key, {}});
  Collected got;
  auto info = Fetch(server.Url(), 0, CollectInto(got, 0), Options());
  ASSERT_FALSE(info);
  EXPECT_EQ(info.error().code(), Errc::kNetTls);
  EXPECT_TRUE(Contains(info.error().message(), "not trusted")) << info.error().message();
  EXPECT_EQ(server.connections(), 1);
  EXPECT_EQ(server.requests(), 0);
}

TEST_F(DownloaderTls, CertificateForAnotherHostIsRefused) {
  TestHttpServer server(MakeContent(1000),
                        test::ServerTls{pki_.wrong_host_cert, pki_.wrong_host_key, {}});
  Collected got;
  auto info = Fetch(server.Url(), 0, CollectInto(got, 0), Options());
  ASSERT_FALSE(info);
  EXPECT_EQ(info.error().code(), Errc::kNetTls);
  EXPECT_TRUE(Contains(info.error().message(), "not valid for '127.0.0.1'"))
      << info.error().message();
  EXPECT_EQ(server.connections(), 1);
  EXPECT_EQ(server.requests(), 0);
}

TEST_F(DownloaderTls, MutualTls) {
  const std::string content = MakeContent(10000);
  TestHttpServer server(content, test::ServerTls{pki_.server_cert, pki_.server_key, pki_.ca_cert});
  auto o = Options();
  Collected without;
  auto refused = Fetch(server.Url(), 0, CollectInto(without, 0), o);
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().code(), Errc::kNetTls) << refused.error().ToString();
  EXPECT_TRUE(Contains(refused.error().message(), "rejected the device's certificate"))
      << refused.error().message();
  EXPECT_EQ(server.connections(), 1);  // not retried
  EXPECT_EQ(server.requests(), 0);

  o.client_cert = pki_.client_cert;
  o.client_key = pki_.client_key;
  Collected got;
  auto info = Fetch(server.Url(), 0, CollectInto(got, 0), o);
  ASSERT_TRUE(info) << info.error().ToString();
  EXPECT_EQ(got.data, content);
}

// The prefetcher's requests share one TLS context, made when it starts:
// they still work once the CA file is gone (each fetch making its own would
// fail to load it), and every connection still checks the pinned CA, the
// host name and sends SNI.
TEST_F(DownloaderTls, PrefetcherRequestsShareOneContextAndEachIsVerified) {
  const std::string content = MakeContent(2U << 20U);
  std::string want;
  for (const auto& r : TestRanges()) want += content.substr(r.offset, r.length);
  const auto ca = dir_ / "ca-copy.pem";
  std::filesystem::copy_file(pki_.ca_cert, ca);
  auto o = Options();
  o.ca_file = ca;
  TestHttpServer server(content, test::ServerTls{pki_.server_cert, pki_.server_key, {}});
  RangePrefetcher p(server.Url("/file", "localhost"), TestRanges(), 3, 64U << 10U, o, nullptr);
  std::filesystem::remove(ca);
  Status st = Ok();
  const std::string got = ConsumeAll(p, st);
  ASSERT_TRUE(st) << st.error().ToString();
  EXPECT_EQ(Hex(got), Hex(want));
  EXPECT_EQ(server.requests(), static_cast<int>(TestRanges().size()));
  EXPECT_EQ(server.last_sni(), "localhost");

  TestHttpServer wrong(content, test::ServerTls{pki_.wrong_host_cert, pki_.wrong_host_key, {}});
  RangePrefetcher q(wrong.Url(), TestRanges(), 3, 64U << 10U, Options(), nullptr);
  Status refused = Ok();
  (void)ConsumeAll(q, refused);
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().code(), Errc::kNetTls) << refused.error().ToString();
  EXPECT_EQ(wrong.requests(), 0);
}

TEST_F(DownloaderTls, StallOverTlsTimesOutAndResumes) {
  const std::string content = MakeContent(300000);
  TestHttpServer server(content, test::ServerTls{pki_.server_cert, pki_.server_key, {}});
  server.SetFaults({.stall_after = 70000, .stall_for = milliseconds(5000), .stall_times = 1});
  auto o = Options();
  o.stall_timeout = kShortStall;
  Collected got;
  auto info = Fetch(server.Url(), 0, CollectInto(got, 0), o);
  ASSERT_TRUE(info) << info.error().ToString();
  EXPECT_EQ(Hex(got.data), Hex(content));
  EXPECT_EQ(server.ranges(), (std::vector<std::string>{"", "bytes=70000-"}));
}

}  // namespace
}  // namespace sag::net
