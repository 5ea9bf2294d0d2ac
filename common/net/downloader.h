// HTTPS downloads for images and DPI packages.
//
// One Fetch() delivers the bytes of a URL from a start offset, in order, to a
// sink, surviving drops: on a broken or stalled connection it reconnects with
// capped exponential backoff and asks for the rest with a Range request, so
// the sink sees every byte exactly once. The server must chain to the pinned
// CA (no system store); redirects are followed up to a bound; an optional
// bandwidth limit paces the transfer.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "common/error.h"

namespace boost::asio::ssl {
class context;
}  // namespace boost::asio::ssl

namespace sag::net {

struct DownloadOptions {
  std::filesystem::path ca_file;      // PEM; empty = refuse https (tests may use http)
  std::filesystem::path client_cert;  // optional mutual TLS
  std::filesystem::path client_key;
  std::uint64_t bandwidth_limit = 0;  // bytes per second, 0 = unlimited
  std::chrono::milliseconds connect_timeout{10000};
  std::chrono::milliseconds stall_timeout{30000};  // no byte for this long = stalled
  int max_retries = 10;                            // consecutive failures without progress
  std::chrono::milliseconds initial_backoff{500};
  std::chrono::milliseconds max_backoff{30000};
  int max_redirects = 5;
  // The whole fetch, reconnects and backoff included, must end within this
  // (kNetDeadline); zero = no deadline.
  std::chrono::milliseconds deadline{std::chrono::hours(24)};
  // Below min_rate bytes/s averaged over min_rate_window the fetch ends with
  // kNetTooSlow (a server trickling one byte per stall interval); zero = off.
  std::uint64_t min_rate = 512;
  std::chrono::milliseconds min_rate_window{std::chrono::minutes(5)};
  const std::atomic<bool>* cancel = nullptr;  // set to stop soon with kCancelled
  // What the fetch is for, at the head of its log lines (a retry): the job
  // and its stage when the line is logged, "job j-42: Writing" (one event
  // per line, each naming its job: docs/status.md, Logs). Called on the
  // fetch's thread; null = the lines name the download only.
  std::function<std::string()> log_context;
  // A TLS context made once (from ca_file and the client identity) for many
  // fetches of one server, used instead of one per fetch: the range requests
  // of a delta install share it (RangePrefetcher). Null: each fetch makes
  // its own.
  std::shared_ptr<boost::asio::ssl::context> tls;
};

struct DownloadInfo {
  std::optional<std::uint64_t> total_size;  // from Content-Range / Content-Length
  int attempts = 0;                         // connections made
  std::uint64_t bytes = 0;                  // delivered to the sink by this call
};

// Receives consecutive bytes starting at `offset`; an error stops the fetch
// and is returned by Fetch as is.
using Sink = std::function<Status(std::uint64_t offset, std::span<const std::uint8_t> data)>;

// Downloads `url` (https://, or http:// when no CA is configured: loopback
// tests only) from byte `offset` to the end. Blocking; runs its own event
// loop on the calling thread.
//
// Errors (docs/download.md has the full policy):
//   kInvalidArgument      bad URL, https without a CA, http with a CA
//   kNetTls               CA/client key unusable, server not trusted by the
//                         pinned CA or not valid for the host (not retried)
//   kNetHttpStatus        4xx other than 408/429 (not retried), or 408/429/5xx
//                         still failing after max_retries
//   kNetConnect, kNetStalled  connection failures/stalls after max_retries
//   kNetTooManyRedirects  more than max_redirects hops, or a redirect loop
//   kNetRangeUnsupported  the server answered a Range request with another
//                         start, the offset is past the end, or the file
//                         changed between attempts
//   kNetProtocol          a malformed or unexpected response
//   kNetDeadline          options.deadline passed (not retried)
//   kNetTooSlow           fewer than min_rate * min_rate_window bytes arrived
//                         in a min_rate_window (not retried)
//   kCancelled            options.cancel was set; observed while waiting
//                         for the network, not only between reads
//   anything the sink returns, unchanged
Expected<DownloadInfo> Fetch(const std::string& url, std::uint64_t offset, const Sink& sink,
                             const DownloadOptions& options);

// Downloads bytes [offset, offset + length) of `url` and nothing else: every
// request asks for that closed range (what is left of it after a drop), and
// the server must answer 206 with exactly those bytes. A server that answers
// 200 (it ignores Range) fails with kNetRangeUnsupported before any byte of
// the body is read: for a delta download (docs/delta.md) reading on to the
// wanted bytes would cost up to the whole file per request. Otherwise as
// Fetch (retries, deadline, cancel, errors).
Expected<DownloadInfo> FetchRange(const std::string& url, std::uint64_t offset,
                                  std::uint64_t length, const Sink& sink,
                                  const DownloadOptions& options);

// FetchRange of bytes [offset, offset + length) into memory, for the small
// pieces a delta install reads whole (the reuse index, the dictionary):
// exactly `length` bytes, or an error with the context "fetching <what>"
// (a server that sends more than asked is refused; the codes are
// FetchRange's, kNetRangeUnsupported for a server that answers 200).
// `received`, if not null, is increased by the bytes that arrived, also
// when the fetch fails (byte accounting).
Expected<std::vector<std::uint8_t>> FetchRangeExact(const std::string& url, std::uint64_t offset,
                                                    std::uint64_t length, std::string_view what,
                                                    const DownloadOptions& options,
                                                    std::uint64_t* received = nullptr);

// A list of closed ranges of one URL fetched with up to `parallel` requests
// in flight and consumed strictly in order (docs/delta.md, "Requests in
// flight"). Range i is fetched (FetchRange) by a worker thread once the
// consumer has reached range i - parallel + 1 or further; its bytes wait in
// a buffer of at most `buffer_bytes` (one piece more when the buffer is
// empty) until Consume(i) takes them, and while its buffer is full the
// worker's sink blocks, so TCP flow control pauses the server. Memory:
// about parallel * buffer_bytes of buffered bytes, plus one buffer's worth
// being consumed, whatever the ranges' lengths.
//
// parallel == 1 fetches each range on the consumer's thread when it is
// consumed (no thread, no buffer: a plain FetchRange).
//
// The workers' fetches use `options` with their own cancel flag, set when
// the consumer stops: Finish(), the destructor, or `stopping` returning
// true while Consume waits (it is polled every few tens of ms; it should
// also cover options.cancel). No worker outlives Finish or the destructor.
class RangePrefetcher {
 public:
  struct Range {
    std::uint64_t offset = 0;
    std::uint64_t length = 0;
  };
  RangePrefetcher(std::string url, std::vector<Range> ranges, std::size_t parallel,
                  std::size_t buffer_bytes, DownloadOptions options,
                  std::function<bool()> stopping);
  ~RangePrefetcher();
  RangePrefetcher(const RangePrefetcher&) = delete;
  RangePrefetcher& operator=(const RangePrefetcher&) = delete;

  // Delivers range i's bytes to `sink`, in order, and returns its fetch's
  // result (or the sink's error, or kCancelled when `stopping`). Ranges must
  // be consumed in order, each once: i is the next one.
  Status Consume(std::size_t i, const Sink& sink);

  // Stops and joins the workers; returns the bytes they received that no
  // Consume delivered (for byte accounting). Idempotent.
  std::uint64_t Finish();

  [[nodiscard]] std::size_t size() const { return ranges_.size(); }

 private:
  struct Slot;
  void Work();

  const std::string url_;
  const std::vector<Range> ranges_;
  const std::size_t parallel_;
  const std::size_t buffer_bytes_;
  const DownloadOptions options_;   // as given: the fetches on the consumer's thread
  DownloadOptions worker_options_;  // with cancel = &cancel_
  const std::function<bool()> stopping_;
  std::atomic<bool> cancel_{false};

  std::mutex mu_;
  std::condition_variable cv_;  // any change below
  std::vector<std::unique_ptr<Slot>> slots_;
  std::size_t head_ = 0;        // the range being (or next to be) consumed
  std::size_t next_start_ = 0;  // the next range a worker takes
  bool closed_ = false;
  std::uint64_t received_ = 0;   // by the workers' sinks
  std::uint64_t delivered_ = 0;  // by Consume
  std::vector<std::thread> workers_;
};

}  // namespace sag::net
