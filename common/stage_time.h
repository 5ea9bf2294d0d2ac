// Where an install's time goes: per stage of the data path, the wall time
// the stage spent working and the CPU time its thread used meanwhile. Stages
// run on several threads at once; each adds to its own counters.
#pragma once

#include <time.h>

#include <array>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <string>
#include <string_view>

namespace sag {

enum class Stage : std::uint8_t {
  kRead,        // reading the image (a file, the download's queue)
  kDecompress,  // checking frames, the compressed bytes' SHA-256, zstd
  kHash,        // the content's SHA-256 (the reader's second thread)
  kCrc,         // CRC-32C of a checked chunk before it is written (its read-back)
  kWrite,       // pwrite into the slot (into the page cache)
  kFlush,       // fsync of the slot (wall: waiting for the device)
  kReadBack,    // reading the slot back (from the cache or the medium)
  kHashBack,    // SHA-256 / CRC-32C / compare of what was read back
  kCount,
};

inline constexpr std::array<std::string_view, static_cast<std::size_t>(Stage::kCount)> kStageNames =
    {"read", "decompress", "hash", "crc", "write", "flush", "read-back", "hash-back"};

inline std::int64_t ClockNs(clockid_t clock) {
  timespec ts{};
  ::clock_gettime(clock, &ts);
  return static_cast<std::int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

class StageTimes {
 public:
  void Add(Stage s, std::int64_t wall_ns, std::int64_t cpu_ns) {
    auto& t = times_[static_cast<std::size_t>(s)];
    t.wall.fetch_add(wall_ns, std::memory_order_relaxed);
    t.cpu.fetch_add(cpu_ns, std::memory_order_relaxed);
  }
  [[nodiscard]] double WallS(Stage s) const {
    return static_cast<double>(times_[static_cast<std::size_t>(s)].wall.load()) / 1e9;
  }
  [[nodiscard]] double CpuS(Stage s) const {
    return static_cast<double>(times_[static_cast<std::size_t>(s)].cpu.load()) / 1e9;
  }
  // "read 0.10/0.05 s, decompress ..." (wall/CPU), the stages that ran.
  [[nodiscard]] std::string Format() const {
    std::string out;
    for (std::size_t i = 0; i < times_.size(); ++i) {
      const auto wall = times_[i].wall.load();
      const auto cpu = times_[i].cpu.load();
      if (wall == 0 && cpu == 0) continue;
      char buf[96];
      std::snprintf(buf, sizeof buf, "%s%s %.3f/%.3f s", out.empty() ? "" : ", ",
                    std::string(kStageNames[i]).c_str(), static_cast<double>(wall) / 1e9,
                    static_cast<double>(cpu) / 1e9);
      out += buf;
    }
    return out;
  }

 private:
  struct Time {
    std::atomic<std::int64_t> wall{0};
    std::atomic<std::int64_t> cpu{0};
  };
  std::array<Time, static_cast<std::size_t>(Stage::kCount)> times_{};
};

// Times one piece of work of a stage on the calling thread; no-op for null.
class StageTimer {
 public:
  StageTimer(StageTimes* times, Stage stage) : times_(times), stage_(stage) {
    if (times_ != nullptr) {
      wall0_ = ClockNs(CLOCK_MONOTONIC);
      cpu0_ = ClockNs(CLOCK_THREAD_CPUTIME_ID);
    }
  }
  ~StageTimer() {
    if (times_ != nullptr) {
      times_->Add(stage_, ClockNs(CLOCK_MONOTONIC) - wall0_,
                  ClockNs(CLOCK_THREAD_CPUTIME_ID) - cpu0_);
    }
  }
  StageTimer(const StageTimer&) = delete;
  StageTimer& operator=(const StageTimer&) = delete;

 private:
  StageTimes* times_;
  Stage stage_;
  std::int64_t wall0_ = 0;
  std::int64_t cpu0_ = 0;
};

}  // namespace sag
