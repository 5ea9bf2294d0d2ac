#include "common/stream_source.h"

#include <atomic>
#include <chrono>
#include <cstring>
#include <thread>
#include <vector>

#include "common/bounded_queue.h"

namespace sag {

namespace {

// The fetch thread pushes blocks; Read() pops them. An error from the fetch
// is handed over as the last item.
class UrlSource final : public image::ByteSource {
 public:
  UrlSource(std::string url, std::uint64_t offset, net::DownloadOptions options)
      : queue_(kQueueDepth), options_(std::move(options)), caller_cancel_(options_.cancel) {
    // The fetch stops on our flag: set when the caller's is (seen by Read
    // while it waits) and when this source goes away.
    options_.cancel = &cancel_;
    thread_ = std::thread([this, url = std::move(url), offset] {
      auto result = net::Fetch(
          url, offset,
          [this](std::uint64_t /*offset*/, std::span<const std::uint8_t> data) -> Status {
            // Copy into blocks of at most kBlock bytes; Push blocks while the
            // consumer is behind, which is what bounds memory.
            while (!data.empty()) {
              const std::size_t n = std::min(data.size(), kBlock);
              if (!queue_.Push(
                      Item{std::vector<std::uint8_t>(data.begin(), data.begin() + n), {}})) {
                return Error(Errc::kCancelled, "download stopped by its reader");
              }
              data = data.subspan(n);
            }
            return Ok();
          },
          options_);
      if (!result) queue_.Push(Item{{}, std::move(result).error()});
      queue_.Close();
    });
  }

  ~UrlSource() override { UrlSource::Stop(); }

  // Ends the fetch (its connection closes) and drops what it read ahead.
  void Stop() override {
    cancel_ = true;
    queue_.Close();
    if (thread_.joinable()) thread_.join();
    // Nothing more is read: what was read ahead goes now, not when the
    // reader goes (a delta install keeps the reader of its header).
    while (queue_.Pop()) {
    }
    std::vector<std::uint8_t>().swap(current_);
    pos_ = 0;
  }
  UrlSource(const UrlSource&) = delete;
  UrlSource& operator=(const UrlSource&) = delete;

  Expected<std::size_t> Read(std::span<std::uint8_t> buf) override {
    while (pos_ == current_.size()) {
      // A stalled server must not hold up a stop request (SIGTERM): the
      // caller's flag is looked at while waiting, not only between blocks.
      if (caller_cancel_ != nullptr && caller_cancel_->load()) {
        cancel_ = true;
        return Error(Errc::kCancelled, "download stopped on request");
      }
      bool timed_out = false;
      auto item = queue_.PopFor(kCancelPoll, timed_out);
      if (timed_out) continue;
      if (!item) return std::size_t{0};
      if (item->error) return *item->error;
      current_ = std::move(item->data);
      pos_ = 0;
    }
    const std::size_t n = std::min(buf.size(), current_.size() - pos_);
    std::memcpy(buf.data(), current_.data() + pos_, n);
    pos_ += n;
    return n;
  }

 private:
  static constexpr std::size_t kBlock = 256U << 10U;
  static constexpr std::size_t kQueueDepth = 16;  // 4 MiB in flight at most
  static constexpr std::chrono::milliseconds kCancelPoll{50};
  struct Item {
    std::vector<std::uint8_t> data;
    std::optional<Error> error;
  };
  BoundedQueue<Item> queue_;
  net::DownloadOptions options_;
  const std::atomic<bool>* caller_cancel_;
  std::atomic<bool> cancel_{false};
  std::vector<std::uint8_t> current_;
  std::size_t pos_ = 0;
  std::thread thread_;
};

}  // namespace

bool IsUrl(const std::string& location) {
  return location.starts_with("https://") || location.starts_with("http://");
}

Expected<std::unique_ptr<image::ByteSource>> OpenStreamSource(const std::string& location,
                                                              std::uint64_t offset,
                                                              const net::DownloadOptions& options) {
  if (IsUrl(location)) {
    return std::unique_ptr<image::ByteSource>(
        std::make_unique<UrlSource>(location, offset, options));
  }
  SAG_TRY(auto file, image::FileSource::Open(location, offset));
  return std::unique_ptr<image::ByteSource>(std::move(file));
}

}  // namespace sag
