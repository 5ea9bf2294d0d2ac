// The whole control plane under a fleet (a benchmark, not a test):
//   1. `devices` device channels (agent::Channel: real TLS 1.3 with a client
//      certificate per serial, WebSocket, hello, heartbeats) from `procs`
//      child processes against ONE real `sag-cloud serve` (gateway + API in
//      one process); the time to connect them all, then that process's RSS
//      and CPU% while they heartbeat for `hold` seconds;
//   2. while they stay connected: signed API calls (ACS3-HMAC-SHA256,
//      DescribeSmartAccessGatewayAttribute and DescribeSmartAccessGateways
//      alternately) from `conns` client threads for `api` seconds (one
//      connection per request, as rpc::SendRequest does): requests per
//      second, p50/p99 latency, and the sag-cloud process's peak RSS.
// The lab is `sag-cloud lab init` (InitLab) with its PKI re-made for every
// serial (InitDevPki, in-process) and one instance per device appended to
// its cloud.yaml. Every wait is bounded. Prints the machine's limits too.
//
// Usage: bench_fleet [--devices N=10000] [--procs P=2] [--heartbeat-s S=10]
//                    [--hold S=20] [--api S=10] [--conns C=4] [--connect-s S=600]
//                    [--rate R=0 (channels started per second; 0: all at once)]
//                    [--sag-cloud PATH (default: ../cloud/sag-cloud next to this binary)]
#include <utility>
// (utility first: boost/asio/awaitable.hpp misses it)
#include <fcntl.h>
#include <poll.h>
#include <spdlog/spdlog.h>
#include <sys/resource.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <boost/asio/io_context.hpp>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "agent/channel.h"
#include "bench/bench_util.h"
#include "bench/fake_host.h"
#include "cloud/lab.h"
#include "cloud/rpc/client.h"
#include "common/image/pki.h"

namespace {

using namespace sag;
namespace fs = std::filesystem;
namespace rpc = sag::cloud::rpc;
using bench::Clock;
using bench::CpuTicks;
using bench::Percentile;
using bench::Secs;
using bench::StatusKiB;
using std::chrono::milliseconds;

struct Args {
  int devices = 10000;
  int procs = 2;
  int heartbeat_s = 10;
  int hold_s = 20;
  int api_s = 10;
  int conns = 4;
  int connect_s = 600;
  int rate = 0;
  std::string sag_cloud;
};

std::string Serial(int i) {
  char b[32];
  std::snprintf(b, sizeof b, "bench%05d", i);
  return b;
}
std::string SmartagId(int i) {
  char b[32];
  std::snprintf(b, sizeof b, "sag-bench%011d", i);
  return b;
}

// A device child: channels [first, last), one io thread. Writes
// "up <n> <secs>" when all are online (or "partial <n> <secs>" at the
// connect deadline), then "online <n>" every second, until killed (at most
// `life`).
[[noreturn]] void DeviceChild(const Args& a, const fs::path& pki, const std::string& endpoint,
                              int first, int last, int out, std::chrono::seconds life) {
  spdlog::set_level(spdlog::level::err);  // reconnects are counted, not logged
  boost::asio::io_context io(1);
  std::vector<std::unique_ptr<bench::FakeHost>> hosts;
  std::vector<std::unique_ptr<agent::Channel>> chans;
  const auto t0 = Clock::now();
  for (int i = first; i < last; ++i) {
    agent::ChannelOptions o;
    o.endpoint = endpoint;
    o.root_ca = pki / "root-ca.pem";
    o.device_cert = pki / ("device-" + Serial(i) + "-chain.pem");
    o.device_key = pki / ("device-" + Serial(i) + ".key");
    o.heartbeat = std::chrono::seconds(a.heartbeat_s);
    o.connect_timeout = milliseconds(30000);
    o.initial_backoff = milliseconds(500);
    o.max_backoff = milliseconds(5000);
    hosts.push_back(std::make_unique<bench::FakeHost>(Serial(i)));
    chans.push_back(std::make_unique<agent::Channel>(io, o, *hosts.back()));
  }
  // --rate: channels started at that many per second (over all children);
  // 0: all at once (a thundering herd, as after a gateway restart).
  const double rate = a.rate > 0 ? static_cast<double>(a.rate) / a.procs : 0.0;
  std::size_t started = 0;
  const auto start_due = [&] {
    const double due = rate > 0 ? Secs(t0) * rate + 1 : static_cast<double>(chans.size());
    while (started < chans.size() && static_cast<double>(started) < due) {
      (void)chans[started++]->Start();
    }
  };
  const auto online = [&] {
    return std::count_if(chans.begin(), chans.end(),
                         [](const auto& c) { return c->status().online; });
  };
  const auto say = [&](const std::string& s) {
    const std::string line = s + "\n";
    (void)!write(out, line.data(), line.size());
  };
  const int want = last - first;
  bool told = false;
  int ticks = 0;
  auto next = Clock::now() + milliseconds(200);
  const auto connect_deadline = t0 + std::chrono::seconds(a.connect_s);
  while (Clock::now() - t0 < life) {
    if (io.stopped()) io.restart();
    start_due();
    io.run_for(milliseconds(20));
    if (Clock::now() < next) continue;
    next = Clock::now() + (told ? milliseconds(1000) : milliseconds(200));
    const auto n = online();
    if (!told && ++ticks % 10 == 0) {
      std::uint64_t connects = 0;
      for (const auto& c : chans) connects += c->status().connects;
      char b[96];
      std::snprintf(b, sizeof b, "progress %ld %.1f %llu", static_cast<long>(n), Secs(t0),
                    static_cast<unsigned long long>(connects));
      say(b);
    }
    if (!told && (n == want || Clock::now() > connect_deadline)) {
      char b[96];
      std::snprintf(b, sizeof b, "%s %ld %.3f", n == want ? "up" : "partial", static_cast<long>(n),
                    Secs(t0));
      say(b);
      told = true;
    } else if (told) {
      say("online " + std::to_string(n));
    }
  }
  _exit(0);
}

// Lines from the children's pipes, for up to `limit`, until `done` says so.
void ReadLines(const std::vector<int>& fds, std::vector<std::string>& buf,
               const std::function<void(std::size_t, const std::string&)>& line,
               const std::function<bool()>& done, milliseconds limit) {
  const auto deadline = Clock::now() + limit;
  while (!done() && Clock::now() < deadline) {
    std::vector<pollfd> p;
    p.reserve(fds.size());
    for (int fd : fds) p.push_back({fd, POLLIN, 0});
    if (poll(p.data(), p.size(), 100) <= 0) continue;
    for (std::size_t i = 0; i < p.size(); ++i) {
      if ((p[i].revents & POLLIN) == 0) continue;
      char b[4096];
      const ssize_t n = read(fds[i], b, sizeof b);
      if (n <= 0) continue;
      buf[i].append(b, static_cast<std::size_t>(n));
      for (auto nl = buf[i].find('\n'); nl != std::string::npos; nl = buf[i].find('\n')) {
        line(i, buf[i].substr(0, nl));
        buf[i].erase(0, nl + 1);
      }
    }
  }
}

int Fail(const std::string& why) {
  std::fprintf(stderr, "bench_fleet: %s\n", why.c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  spdlog::set_level(spdlog::level::warn);
  Args a;
  a.sag_cloud =
      (fs::absolute(argv[0]).parent_path().parent_path() / "cloud" / "sag-cloud").string();
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i];
    const std::string v = argv[i + 1];
    if (k == "--devices")
      a.devices = std::stoi(v);
    else if (k == "--procs")
      a.procs = std::stoi(v);
    else if (k == "--heartbeat-s")
      a.heartbeat_s = std::stoi(v);
    else if (k == "--hold")
      a.hold_s = std::stoi(v);
    else if (k == "--api")
      a.api_s = std::stoi(v);
    else if (k == "--conns")
      a.conns = std::stoi(v);
    else if (k == "--connect-s")
      a.connect_s = std::stoi(v);
    else if (k == "--rate")
      a.rate = std::stoi(v);
    else if (k == "--sag-cloud")
      a.sag_cloud = v;
    else
      return Fail("unknown option " + k);
  }
  if (a.devices < 1 || a.procs < 1 || a.procs > a.devices || a.conns < 1 || a.heartbeat_s < 1)
    return Fail("bad arguments");
  if (!fs::exists(a.sag_cloud)) return Fail(a.sag_cloud + " not found (--sag-cloud PATH)");

  // Machine limits; file descriptors raised to the hard limit (children inherit).
  rlimit nofile{};
  getrlimit(RLIMIT_NOFILE, &nofile);
  const rlim_t soft_before = nofile.rlim_cur;
  nofile.rlim_cur = nofile.rlim_max;
  setrlimit(RLIMIT_NOFILE, &nofile);
  getrlimit(RLIMIT_NOFILE, &nofile);
  long mem_total = 0;
  {
    std::ifstream f("/proc/meminfo");
    std::string line;
    while (std::getline(f, line)) {
      if (line.starts_with("MemTotal:")) mem_total = std::stol(line.substr(9));
    }
  }
  std::printf("machine: nproc %u, MemTotal %ld MiB, ulimit -n %lu (raised to %lu, hard %lu)\n",
              std::thread::hardware_concurrency(), mem_total / 1024,
              static_cast<unsigned long>(soft_before), static_cast<unsigned long>(nofile.rlim_cur),
              static_cast<unsigned long>(nofile.rlim_max));
  const auto per_proc = static_cast<rlim_t>(a.devices) / static_cast<rlim_t>(a.procs) + 64;
  if (nofile.rlim_cur < static_cast<rlim_t>(a.devices) + 256 || nofile.rlim_cur < per_proc)
    return Fail("ulimit -n too low for " + std::to_string(a.devices) + " channels");
  std::printf(
      "setup: %d devices from %d child processes, started at %d/s (0: all at once), heartbeat "
      "%d s, hold %d s, API %d s x %d connections\n",
      a.devices, a.procs, a.rate, a.heartbeat_s, a.hold_s, a.api_s, a.conns);
  std::fflush(stdout);

  // The lab, then a certificate per serial and an instance per device.
  char tmpl[] = "/tmp/bench_fleet.XXXXXX";
  if (mkdtemp(tmpl) == nullptr) return Fail("mkdtemp");
  const fs::path root = tmpl;
  struct Cleanup {
    fs::path p;
    ~Cleanup() {
      std::error_code ec;
      fs::remove_all(p, ec);
    }
  } cleanup{root};
  const fs::path lab_dir = root / "lab";
  cloud::LabOptions lo;
  lo.dir = lab_dir;
  lo.smartag_id = SmartagId(0);
  lo.serials = {Serial(0)};
  auto lab = cloud::InitLab(lo);
  if (!lab) return Fail(lab.error().ToString());
  auto t0 = Clock::now();
  {
    std::error_code ec;
    fs::remove_all(lab_dir / "pki", ec);
    image::pki::InitOptions po;
    for (int i = 0; i < a.devices; ++i) po.devices.push_back(Serial(i));
    if (auto st = image::pki::InitDevPki(lab_dir / "pki", po); !st)
      return Fail(st.error().ToString());
  }
  std::printf("PKI: %d device certificates (own EC P-256 key each) in %.1f s\n", a.devices,
              Secs(t0));
  {
    std::ifstream f(lab->config);
    std::string yaml((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    std::string more;
    for (int i = 1; i < a.devices; ++i) {
      more += "  - smartag_id: " + SmartagId(i) +
              "\n    account: \"1001\"\n    region_id: cn-shanghai\n    name: bench " +
              std::to_string(i) +
              "\n    status: Active\n    instance_type: sag-1000\n"
              "    associated_ccn_id: ccn-lab0000000000001\n    associated_ccn_name: lab network\n"
              "    end_time: 2099-01-01T00:00:00Z\n    devices:\n"
              "      - {serial_number: " +
              Serial(i) + ", hardware_model: sag-1000}\n";
    }
    const auto at = yaml.find("store: store.db\n");
    const auto hb = yaml.find("heartbeat_s: 10\n");
    if (at == std::string::npos || hb == std::string::npos)
      return Fail("unexpected lab cloud.yaml");
    yaml.replace(hb, 16, "heartbeat_s: " + std::to_string(a.heartbeat_s) + "\n");
    yaml.insert(yaml.find("store: store.db\n"), more);
    std::ofstream(lab->config, std::ios::trunc) << yaml;
  }
  std::string secret;
  {
    std::ifstream f(lab->credentials);
    std::string line;
    const std::string key = "export ALIBABA_CLOUD_ACCESS_KEY_SECRET=";
    while (std::getline(f, line)) {
      if (line.starts_with(key)) secret = line.substr(key.size());
    }
  }
  auto api = rpc::ParseEndpoint(lab->api_endpoint);
  if (!api || secret.empty()) return Fail("lab endpoint or credentials unreadable");

  // sag-cloud serve, output to a log file.
  t0 = Clock::now();
  const pid_t serve = fork();
  if (serve == 0) {
    const int log = open((root / "serve.log").c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (log >= 0) {
      dup2(log, 1);
      dup2(log, 2);
    }
    execl(a.sag_cloud.c_str(), a.sag_cloud.c_str(), "serve", "--config", lab->config.c_str(),
          "--log-level", "warn", static_cast<char*>(nullptr));
    _exit(127);
  }
  std::vector<pid_t> kids;
  const auto finish = [&](int rc) {
    for (pid_t k : kids) kill(k, SIGKILL);
    for (pid_t k : kids) waitpid(k, nullptr, 0);
    kill(serve, SIGTERM);
    for (int i = 0; i < 100 && waitpid(serve, nullptr, WNOHANG) == 0; ++i)
      std::this_thread::sleep_for(milliseconds(100));
    kill(serve, SIGKILL);
    waitpid(serve, nullptr, WNOHANG);
    if (rc != 0) {
      std::ifstream f(root / "serve.log");
      std::string l;
      for (int i = 0; i < 20 && std::getline(f, l); ++i)
        std::fprintf(stderr, "serve: %s\n", l.c_str());
    }
    return rc;
  };
  rpc::SignOptions so;
  so.host = api->host + ":" + std::to_string(api->port);
  so.access_key_id = lab->access_key_id;
  so.access_key_secret = secret;
  const auto call = [&](int i) {
    rpc::ParamList params{{"RegionId", "cn-shanghai"}};
    std::string action = "DescribeSmartAccessGateways";
    if (i % 2 == 0) {
      action = "DescribeSmartAccessGatewayAttribute";
      params.emplace_back("SmartAGId", SmartagId(i / 2 % a.devices));
    } else {
      params.emplace_back("PageSize", "10");
      params.emplace_back("PageNumber", std::to_string(1 + i / 2 % 50));
    }
    return rpc::SendRequest(*api, rpc::SignRequest(so, action, params, rpc::Clock::now()),
                            milliseconds(10000));
  };
  bool ready = false;
  while (Secs(t0) < 120) {
    auto r = call(0);
    if (r && r->status == 200) {
      ready = true;
      break;
    }
    if (waitpid(serve, nullptr, WNOHANG) != 0) break;
    std::this_thread::sleep_for(milliseconds(100));
  }
  if (!ready) return finish(Fail("sag-cloud serve did not answer within 120 s"));
  const long base_rss = StatusKiB(serve, "VmRSS");
  std::printf(
      "sag-cloud serve (pid %d): API answering after %.1f s; RSS %ld KiB (%d devices "
      "registered, no channel yet)\n",
      serve, Secs(t0), base_rss, a.devices);
  std::fflush(stdout);

  // 1. The device channels.
  std::vector<int> fds;
  t0 = Clock::now();
  const auto life = std::chrono::seconds(a.connect_s + 60 + a.hold_s + a.api_s);
  for (int p = 0; p < a.procs; ++p) {
    int pipefd[2];
    if (pipe(pipefd) != 0) return finish(Fail("pipe"));
    const int first = a.devices * p / a.procs;
    const int last = a.devices * (p + 1) / a.procs;
    const pid_t k = fork();
    if (k == 0) {
      close(pipefd[0]);
      DeviceChild(a, lab_dir / "pki", lab->device_endpoint, first, last, pipefd[1], life);
    }
    close(pipefd[1]);
    fds.push_back(pipefd[0]);
    kids.push_back(k);
  }
  std::vector<std::string> buf(fds.size());
  std::vector<long> up(fds.size(), -1);
  std::vector<long> online(fds.size(), -1);
  long min_online = a.devices;
  bool partial = false;
  const auto on_line = [&](std::size_t i, const std::string& l) {
    long n = 0;
    double s = 0;
    char word[16] = {};
    // The children's own lines; the count sscanf returns says what it read.
    // NOLINTNEXTLINE(cert-err34-c,bugprone-unchecked-string-to-number-conversion)
    if (std::sscanf(l.c_str(), "%15s %ld %lf", word, &n, &s) < 2) return;
    const std::string w = word;
    if (w == "up" || w == "partial") {
      up[i] = n;
      partial = partial || w == "partial";
    } else if (w == "progress") {
      unsigned long long connects = 0;
      // NOLINTNEXTLINE(cert-err34-c,bugprone-unchecked-string-to-number-conversion)
      (void)std::sscanf(l.c_str(), "%15s %ld %lf %llu", word, &n, &s, &connects);
      std::printf(
          "   child %zu at %.0f s: %ld online, %llu hello.acks so far (reconnects "
          "included)\n",
          i, s, n, connects);
      std::fflush(stdout);
    } else if (w == "online") {
      online[i] = n;
    }
  };
  long peak_rss = 0;
  const auto sample = [&] { peak_rss = std::max(peak_rss, StatusKiB(serve, "VmRSS")); };
  ReadLines(
      fds, buf, on_line,
      [&] {
        sample();
        return std::all_of(up.begin(), up.end(), [](long n) { return n >= 0; });
      },
      std::chrono::seconds(a.connect_s + 10));
  const double connect_s = Secs(t0);
  long total_up = 0;
  for (long n : up) total_up += std::max(0L, n);
  std::printf("1. %ld/%d channels online in %.1f s%s; sag-cloud RSS now %ld KiB\n", total_up,
              a.devices, connect_s, partial || total_up < a.devices ? " (NOT all)" : "",
              StatusKiB(serve, "VmRSS"));
  std::fflush(stdout);
  if (total_up == 0) return finish(Fail("no channel came up"));

  // Heartbeating for hold_s: RSS and CPU% of sag-cloud.
  const long ticks = sysconf(_SC_CLK_TCK);
  long c0 = CpuTicks(serve);
  t0 = Clock::now();
  std::fill(online.begin(), online.end(), -1);
  const auto track_min = [&](std::size_t i, const std::string& l) {
    on_line(i, l);
    if (std::all_of(online.begin(), online.end(), [](long n) { return n >= 0; })) {
      long sum = 0;
      for (long n : online) sum += n;
      min_online = std::min(min_online, sum);
    }
  };
  ReadLines(
      fds, buf, track_min,
      [&] {
        sample();
        return false;
      },
      std::chrono::seconds(a.hold_s));
  double wall = Secs(t0);
  const double hold_cpu =
      100.0 * static_cast<double>(CpuTicks(serve) - c0) / static_cast<double>(ticks) / wall;
  const long hold_rss = StatusKiB(serve, "VmRSS");
  std::printf(
      "   heartbeating %.0f s: sag-cloud RSS %ld KiB (+%.1f KiB per channel over the "
      "registered-only baseline), CPU %.1f%% of one core; fewest online seen %ld\n",
      wall, hold_rss, static_cast<double>(hold_rss - base_rss) / static_cast<double>(total_up),
      hold_cpu, min_online);
  std::fflush(stdout);

  // 2. The API under load, channels still up.
  std::vector<std::vector<double>> lat(static_cast<std::size_t>(a.conns));
  std::atomic<long> errors{0};
  std::atomic<bool> stop{false};
  std::vector<std::thread> workers;
  workers.reserve(static_cast<std::size_t>(a.conns));
  c0 = CpuTicks(serve);
  t0 = Clock::now();
  for (int w = 0; w < a.conns; ++w) {
    workers.emplace_back([&, w] {
      for (int i = w; !stop.load(); i += a.conns) {
        const auto s = Clock::now();
        auto r = call(i);
        const double ms = std::chrono::duration<double, std::milli>(Clock::now() - s).count();
        if (!r || r->status != 200) {
          if (errors.fetch_add(1) == 0)
            std::fprintf(stderr, "first API error: %s\n",
                         r ? (std::to_string(r->status) + " " + r->body.substr(0, 200)).c_str()
                           : r.error().ToString().c_str());
          continue;
        }
        lat[static_cast<std::size_t>(w)].push_back(ms);
      }
    });
  }
  ReadLines(
      fds, buf, track_min,
      [&] {
        sample();
        return false;
      },
      std::chrono::seconds(a.api_s));
  stop = true;
  for (auto& t : workers) t.join();
  wall = Secs(t0);
  const double api_cpu =
      100.0 * static_cast<double>(CpuTicks(serve) - c0) / static_cast<double>(ticks) / wall;
  std::vector<double> all;
  for (auto& v : lat) all.insert(all.end(), v.begin(), v.end());
  std::sort(all.begin(), all.end());
  sample();
  std::printf(
      "2. API, %d connections (a new one per request) for %.1f s: %zu OK, %ld errors, "
      "%.0f requests/s; latency p50 %.2f ms, p99 %.2f ms, max %.2f ms; sag-cloud CPU "
      "%.1f%%\n",
      a.conns, wall, all.size(), errors.load(), static_cast<double>(all.size()) / wall,
      Percentile(all, 50), Percentile(all, 99), all.empty() ? 0.0 : all.back(), api_cpu);
  std::printf(
      "   sag-cloud peak RSS: VmHWM %ld KiB (sampled max VmRSS %ld KiB); fewest channels "
      "online seen during hold+API %ld/%d\n",
      StatusKiB(serve, "VmHWM"), peak_rss, min_online, a.devices);
  std::fflush(stdout);
  for (int fd : fds) close(fd);
  return finish(total_up == a.devices && errors.load() == 0 ? 0 : 1);
}
