#include "bench/bench_util.h"

#include <algorithm>
#include <fstream>
#include <iterator>
#include <sstream>

namespace sag::bench {

long StatusKiB(pid_t pid, std::string_view field) {
  std::ifstream f(pid == 0 ? std::string("/proc/self/status")
                           : "/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(f, line)) {
    if (line.size() > field.size() && line.starts_with(field) && line[field.size()] == ':') {
      return std::stol(line.substr(field.size() + 1));
    }
  }
  return -1;
}

long CpuTicks(pid_t pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/stat");
  const std::string stat((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  const auto paren = stat.rfind(')');
  if (paren == std::string::npos) return -1;
  std::istringstream rest(stat.substr(paren + 2));
  std::string field;
  long utime = 0;
  long stime = 0;
  for (int i = 3; i <= 15 && rest >> field; ++i) {
    if (i == 14) utime = std::stol(field);
    if (i == 15) stime = std::stol(field);
  }
  return utime + stime;
}

double Ms(Clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

double Secs(Clock::time_point since) {
  return std::chrono::duration<double>(Clock::now() - since).count();
}

double Percentile(const std::vector<double>& sorted, double p) {
  if (sorted.empty()) return 0.0;
  const auto at = static_cast<std::size_t>(p / 100.0 * static_cast<double>(sorted.size()));
  return sorted[std::min(sorted.size() - 1, at)];
}

std::string Percentiles(std::vector<double> ms) {
  std::sort(ms.begin(), ms.end());
  std::ostringstream o;
  o.setf(std::ios::fixed);
  o.precision(1);
  o << "p50 " << Percentile(ms, 50) << " ms, p99 " << Percentile(ms, 99) << " ms, max "
    << (ms.empty() ? 0.0 : ms.back()) << " ms (" << ms.size() << " samples)";
  return o.str();
}

bool RunUntil(boost::asio::io_context& io, const std::function<bool()>& pred,
              std::chrono::milliseconds limit) {
  const auto deadline = Clock::now() + limit;
  while (!pred()) {
    if (Clock::now() >= deadline) return false;
    if (io.stopped()) io.restart();
    io.run_one_for(std::chrono::milliseconds(2));
  }
  return true;
}

void RunFor(boost::asio::io_context& io, std::chrono::milliseconds span) {
  RunUntil(
      io, [] { return false; }, span);
}

}  // namespace sag::bench
