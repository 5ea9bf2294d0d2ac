// Device channel on loopback (a benchmark, not a test):
//   1. Push(job) -> the agent's OnJob, p50/p99 over `jobs` jobs on one channel;
//   2. the gateway's memory per idle channel: `devices` channels from a child
//      process, the gateway's RSS before and after they are all up.
// Usage: bench_channel [devices=200] [jobs=200]
#include <spdlog/spdlog.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <boost/asio/io_context.hpp>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <fstream>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "agent/channel.h"
#include "bench/bench_util.h"
#include "bench/fake_host.h"
#include "cloud/gateway.h"
#include "cloud/sqlite_store.h"
#include "common/process.h"
#include "tests/support/temp_dir.h"
#include "tests/support/test_http_server.h"

using namespace sag;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

int main(int argc, char** argv) {
  spdlog::set_level(spdlog::level::warn);
  const int devices = argc > 1 ? std::stoi(argv[1]) : 200;
  const int jobs = argc > 2 ? std::stoi(argv[2]) : 200;
  test::TempDir dir;
  auto pki = test::MakeTestPki(dir.path());
  if (!pki) {
    std::fprintf(stderr, "%s\n", pki.error().ToString().c_str());
    return 1;
  }
  const auto p = [&](const std::string& f) { return (dir / f).string(); };
  // One key, one certificate per device (the CN is the serial number).
  if (auto st = CheckCommand({"openssl", "req", "-new", "-config", p("openssl.cnf"), "-newkey",
                              "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout",
                              p("dev.key"), "-out", p("dev.csr"), "-subj", "/CN=x"});
      !st) {
    std::fprintf(stderr, "%s\n", st.error().ToString().c_str());
    return 1;
  }
  auto opened = cloud::OpenSqliteStore(dir / "store.db");
  if (!opened) {
    std::fprintf(stderr, "%s\n", opened.error().ToString().c_str());
    return 1;
  }
  cloud::Store& store = **opened;
  for (int i = 0; i <= devices; ++i) {
    const std::string serial = "dev-" + std::to_string(i);
    if (auto st = CheckCommand({"openssl", "x509", "-req", "-in", p("dev.csr"), "-CA", p("ca.pem"),
                                "-CAkey", p("ca.key"), "-CAcreateserial", "-days", "2", "-subj",
                                "/CN=" + serial, "-out", p(serial + ".pem")});
        !st) {
      std::fprintf(stderr, "%s\n", st.error().ToString().c_str());
      return 1;
    }
    (void)store.RegisterDevice(serial, "sag-" + serial, "sag-1000");
  }

  boost::asio::io_context io(1);
  cloud::GatewayOptions go;
  go.cert_chain = pki->server_cert;
  go.key = pki->server_key;
  go.device_ca = pki->ca_cert;
  go.heartbeat = milliseconds(30000);
  cloud::Gateway gw(io, go, store);
  if (auto st = gw.Start(); !st) {
    std::fprintf(stderr, "%s\n", st.error().ToString().c_str());
    return 1;
  }
  const auto options = [&](int i) {
    agent::ChannelOptions o;
    o.endpoint = "wss://127.0.0.1:" + std::to_string(gw.port()) + "/device/v1";
    o.root_ca = pki->ca_cert;
    o.device_cert = dir / ("dev-" + std::to_string(i) + ".pem");
    o.device_key = dir / "dev.key";
    o.initial_backoff = milliseconds(100);
    o.max_backoff = milliseconds(2000);
    return o;
  };

  // 1. Dispatch latency on one channel.
  bench::FakeHost host("dev-0");
  agent::Channel ch(io, options(0), host);
  (void)ch.Start();
  if (!bench::RunUntil(
          io, [&] { return ch.status().online; }, milliseconds(10000)))
    return 1;
  std::vector<double> ms;
  for (int i = 0; i < jobs; ++i) {
    cloud::JobRecord job;
    job.serial = "dev-0";
    job.spec = {"j-" + std::to_string(i), "Device", "1.0.1", "https://r/x", 1, "", "", false};
    const auto t0 = Clock::now();
    if (!gw.Push(job)) return 1;
    if (!bench::RunUntil(
            io, [&] { return host.got.size() == static_cast<std::size_t>(i) + 1; },
            milliseconds(5000))) {
      return 1;
    }
    ms.push_back(std::chrono::duration<double, std::milli>(host.got.back() - t0).count());
  }
  std::sort(ms.begin(), ms.end());
  std::printf("Push(job) -> OnJob, %d jobs: p50 %.2f ms, p99 %.2f ms, max %.2f ms\n", jobs,
              ms[ms.size() / 2], ms[ms.size() * 99 / 100], ms.back());

  // 2. Idle channels from a child process.
  bench::RunUntil(
      io, [] { return false; }, milliseconds(300));
  const long before = bench::StatusKiB(0, "VmRSS");
  const pid_t child = fork();
  if (child == 0) {
    boost::asio::io_context cio(1);
    std::vector<std::unique_ptr<bench::FakeHost>> hosts;
    std::vector<std::unique_ptr<agent::Channel>> chans;
    for (int i = 1; i <= devices; ++i) {
      hosts.push_back(std::make_unique<bench::FakeHost>("dev-" + std::to_string(i)));
      chans.push_back(std::make_unique<agent::Channel>(cio, options(i), *hosts.back()));
      (void)chans.back()->Start();
    }
    bench::RunUntil(
        cio, [] { return false; }, milliseconds(120000));
    _exit(0);
  }
  const auto t0 = Clock::now();
  const bool up = bench::RunUntil(
      io, [&] { return gw.stats().channels == static_cast<std::size_t>(devices) + 1; },
      milliseconds(90000));
  const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
  bench::RunUntil(
      io, [] { return false; }, milliseconds(1000));
  const long after = bench::StatusKiB(0, "VmRSS");
  std::printf("%d idle channels %s in %.1f s; gateway RSS %ld -> %ld KiB: %.1f KiB per channel\n",
              devices, up ? "up" : "NOT all up", secs, before, after,
              static_cast<double>(after - before) / devices);
  kill(child, SIGKILL);
  waitpid(child, nullptr, 0);
  ch.Stop();
  gw.Stop();
  bench::RunUntil(
      io, [] { return false; }, milliseconds(200));
  return up ? 0 : 1;
}
