#pragma once
// What the benchmarks share: /proc readers, percentiles, and an event loop
// run until a condition holds (bounded).
#include <sys/types.h>

#include <boost/asio/io_context.hpp>
#include <chrono>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

namespace sag::bench {

using Clock = std::chrono::steady_clock;

// A field of /proc/PID/status in KiB ("VmRSS", "VmHWM", "RssAnon", ...);
// -1 when the process is gone. pid 0: this process.
long StatusKiB(pid_t pid, std::string_view field);

// utime + stime of a process, in clock ticks; -1 when unreadable.
long CpuTicks(pid_t pid);

double Ms(Clock::duration d);
double Secs(Clock::time_point since);

// The p-th percentile (0-100) of sorted samples; 0 when there are none.
double Percentile(const std::vector<double>& sorted, double p);

// "p50 X ms, p99 Y ms, max Z ms (N samples)".
std::string Percentiles(std::vector<double> ms);

// Runs `io` one handler at a time until `pred` holds (checked right after
// the handler that made it true, so latencies are not rounded up to a
// polling period) or `limit` passed; false on the limit.
bool RunUntil(boost::asio::io_context& io, const std::function<bool()>& pred,
              std::chrono::milliseconds limit);
void RunFor(boost::asio::io_context& io, std::chrono::milliseconds span);

}  // namespace sag::bench
