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
#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/error.h"

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

}  // namespace sag::net
