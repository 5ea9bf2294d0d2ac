// The real agent on its control channel (a benchmark, not a test), on
// loopback, with the release binaries next to this one:
//   1. the agent's idle RSS and CPU with the channel up: a simulated
//      appliance (sag-sim boot, the real sag-agent daemon) connected to a
//      device gateway in this process, heartbeating, no job;
//   2. job dispatch -> first `progress`: Gateway::Push of a DPI job, to the
//      moment the gateway records the device's first progress report about
//      it (saved in the store, as sag-cloud does before it acknowledges);
//      p50/p99 over `jobs` jobs, each run to its result before the next
//      (DPI packages from the cloud's image repository in this process,
//      installed by the agent with the fake engine);
//   3. reconnect after a gateway restart: the gateway stopped (its channels
//      closed), a new one started on the same port, the time until the
//      device's hello was answered again; `restarts` times, with the agent's
//      own backoff settings (printed).
// The gateway, the store (SQLite) and the repository run as `sag-cloud
// serve` runs them; the store is wrapped to time the reports it records.
// Every wait is bounded.
//
// Usage: bench_dispatch [--jobs N=100] [--restarts R=10] [--idle-s S=20]
//                       [--build DIR (default: the build this binary is in)]
#include <utility>
// (utility first: boost/asio/awaitable.hpp misses it)
#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ssl/context.hpp>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "bench/bench_util.h"
#include "cloud/gateway.h"
#include "cloud/http_server.h"
#include "cloud/lab.h"
#include "cloud/repository.h"
#include "cloud/sqlite_store.h"
#include "cloud/store.h"
#include "common/net/tls.h"
#include "common/process.h"

namespace {

using namespace sag;
namespace fs = std::filesystem;
using bench::Clock;
using bench::CpuTicks;
using bench::Ms;
using bench::Percentiles;
using bench::RunFor;
using bench::RunUntil;
using bench::StatusKiB;
using std::chrono::milliseconds;

constexpr const char* kSerial = "sagbench0001";
constexpr const char* kSmartAgId = "sag-bench000000000001";

// The store sag-cloud uses, with the time each job's first progress report
// and its result were recorded (after the write returned).
class TimingStore : public cloud::Store {
 public:
  explicit TimingStore(cloud::Store& inner) : inner_(inner) {}
  struct Times {
    std::optional<Clock::time_point> first_progress;
    std::optional<Clock::time_point> result;
    std::string outcome;
  };
  std::map<std::string, Times> times;

  Status RegisterDevices(const std::vector<cloud::DeviceIdentity>& devices) override {
    return inner_.RegisterDevices(devices);
  }
  std::optional<cloud::DeviceRecord> FindDevice(std::string_view serial) override {
    return inner_.FindDevice(serial);
  }
  std::vector<cloud::DeviceRecord> Devices() override { return inner_.Devices(); }
  Status MarkOffline(const std::vector<std::string>& serials) override {
    return inner_.MarkOffline(serials);
  }
  Status TouchDevices(const std::vector<std::pair<std::string, std::string>>& seen) override {
    return inner_.TouchDevices(seen);
  }
  Status AddJob(cloud::JobRecord job) override { return inner_.AddJob(std::move(job)); }
  std::optional<cloud::JobRecord> FindJob(std::string_view job_id) override {
    return inner_.FindJob(job_id);
  }
  std::vector<cloud::JobRecord> JobsOf(std::string_view serial) override {
    return inner_.JobsOf(serial);
  }
  std::vector<cloud::JobRecord> OpenJobs() override { return inner_.OpenJobs(); }
  std::vector<cloud::JobRecord> Jobs() override { return inner_.Jobs(); }
  Expected<cloud::WriteResult> Write(const cloud::StoreWrite& write) override {
    auto r = inner_.Write(write);
    if (r && *r == cloud::WriteResult::kWritten && write.report && !write.report->job_id.empty()) {
      const auto now = Clock::now();
      Times& t = times[write.report->job_id];
      if (write.report->type == "progress" && !t.first_progress) t.first_progress = now;
      if (write.report->type == "result") {
        t.result = now;
        t.outcome = write.report->detail;
      }
    }
    return r;
  }
  std::vector<cloud::ReportRecord> Reports(std::string_view serial) override {
    return inner_.Reports(serial);
  }
  Expected<bool> Remember(const std::string& key, cloud::rpc::Clock::time_point now,
                          cloud::rpc::Clock::time_point expires) override {
    return inner_.Remember(key, now, expires);
  }

 private:
  cloud::Store& inner_;
};

// "RSS N KiB (anonymous N, file-backed N), PSS N KiB" of a process: the
// file-backed part is mapped code, mostly shared libraries every process on
// the appliance that maps them shares; PSS charges the process its share.
std::string Memory(pid_t pid) {
  long pss = -1;
  std::ifstream f("/proc/" + std::to_string(pid) + "/smaps_rollup");
  std::string line;
  while (std::getline(f, line)) {
    if (line.starts_with("Pss:")) pss = std::stol(line.substr(4));
  }
  return "RSS " + std::to_string(StatusKiB(pid, "VmRSS")) + " KiB (anonymous " +
         std::to_string(StatusKiB(pid, "RssAnon")) + ", file-backed " +
         std::to_string(StatusKiB(pid, "RssFile")) + "), PSS " + std::to_string(pss) + " KiB";
}

// The largest resident mappings, "name KiB, ...".
std::string LargestMappings(pid_t pid, std::size_t n) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/smaps");
  std::map<std::string, long> rss;
  std::string line;
  std::string name;
  while (std::getline(f, line)) {
    std::istringstream fields(line);
    std::string first;
    fields >> first;
    if (!first.empty() && first.back() != ':') {  // "start-end perms offset dev inode [name]"
      std::string skip;
      fields >> skip >> skip >> skip >> skip;
      std::string path;
      std::getline(fields >> std::ws, path);
      name = path.empty()            ? "[anon]"
             : path.starts_with("/") ? fs::path(path).filename().string()
                                     : path;
    } else if (line.starts_with("Rss:")) {
      rss[name] += std::stol(line.substr(4));
    }
  }
  std::vector<std::pair<long, std::string>> v;
  v.reserve(rss.size());
  for (const auto& [k, kib] : rss) v.emplace_back(kib, k);
  std::sort(v.rbegin(), v.rend());
  std::string out;
  for (std::size_t i = 0; i < std::min(n, v.size()); ++i) {
    out += (i ? ", " : "") + v[i].second + " " + std::to_string(v[i].first);
  }
  return out;
}

std::string ReadFile(const fs::path& p) {
  std::ifstream f(p);
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

int Fail(const std::string& why) {
  std::fprintf(stderr, "bench_dispatch: %s\n", why.c_str());
  return 1;
}

struct Args {
  int jobs = 100;
  int restarts = 10;
  int idle_s = 20;
  fs::path build;
};

std::optional<Args> ParseArgs(int argc, char** argv) {
  Args a;
  a.build = fs::canonical("/proc/self/exe").parent_path().parent_path();
  for (int i = 1; i < argc; ++i) {
    const std::string k = argv[i];
    if (i + 1 >= argc) return std::nullopt;
    const std::string v = argv[++i];
    if (k == "--jobs") {
      a.jobs = std::stoi(v);
    } else if (k == "--restarts") {
      a.restarts = std::stoi(v);
    } else if (k == "--idle-s") {
      a.idle_s = std::stoi(v);
    } else if (k == "--build") {
      a.build = v;
    } else {
      return std::nullopt;
    }
  }
  if (a.jobs < 1 || a.restarts < 0 || a.idle_s < 1) return std::nullopt;
  return a;
}

}  // namespace

int main(int argc, char** argv) {
  spdlog::set_level(spdlog::level::warn);
  const auto args = ParseArgs(argc, argv);
  if (!args) {
    return Fail(
        "usage: bench_dispatch [--jobs N=100] [--restarts R=10] [--idle-s S=20] [--build DIR]");
  }
  const fs::path agent = args->build / "agent/sag-agent";
  const fs::path sim = args->build / "tools/sim/sag-sim";
  const fs::path image = args->build / "tools/image/sag-image";
  const fs::path engine = args->build / "dpi/fake_engine/sag-fake-dpi-engine";
  for (const auto& p : {agent, sim, image, engine}) {
    if (!fs::exists(p)) return Fail(p.string() + " is missing: build the release tree first");
  }
  char tmpl[] = "/var/tmp/sag-dispatch-bench.XXXXXX";
  if (mkdtemp(tmpl) == nullptr) return Fail("mkdtemp failed");
  const fs::path work = tmpl;
  const fs::path lab = work / "cloud";
  const fs::path dev = work / "appliance";
  pid_t simpid = -1;
  const auto cleanup = [&] {
    if (simpid > 0) {
      const std::string pid = ReadFile(dev / "run/agent.pid");
      if (!pid.empty()) kill(static_cast<pid_t>(std::stol(pid)), SIGTERM);
      int status = 0;
      for (int i = 0; i < 100 && waitpid(simpid, &status, WNOHANG) == 0; ++i) usleep(50000);
      kill(simpid, SIGKILL);
      waitpid(simpid, &status, 0);
    }
    std::error_code ec;
    fs::remove_all(work, ec);
  };
  const auto fail = [&](const std::string& why) {
    cleanup();
    return Fail(why);
  };

  // The lab: PKI, configuration; images signed with its code-signing key.
  cloud::LabOptions lo;
  lo.dir = lab;
  lo.smartag_id = kSmartAgId;
  lo.serials = {kSerial};
  if (auto r = cloud::InitLab(lo); !r) return fail(r.error().ToString());
  const fs::path pki = lab / "pki";
  std::vector<std::string> versions = {"20261201_1_0-0.0.2", "20261201_1_0-0.0.3"};
  for (const auto& v : versions) {
    const fs::path tree = work / ("dpi-" + v);
    fs::create_directories(tree / "rules");
    std::ofstream(tree / "version") << v << "\n";
    for (int i = 0; i < 200; ++i) {
      std::ofstream(tree / "rules" / ("app-" + std::to_string(i) + ".rule"))
          << "app-" << i << ": port " << 1000 + i << " signature " << v << "\n";
    }
    const fs::path pkg = work / ("dpi-" + v + ".tar.zst");
    if (auto st = CheckCommand({"tar", "--zstd", "-C", tree.string(), "-cf", pkg.string(), "."});
        !st) {
      return fail(st.error().ToString());
    }
    if (auto st = CheckCommand(
            {image.string(), "create", "--type", "Dpi", "--version", v, "--compatible", "sag-1000",
             "--payload", pkg.string(), "--key", (pki / "signer.key").string(), "--cert",
             (pki / "signer.pem").string(), "--chain", (pki / "signer-chain.pem").string(),
             "--output", (lab / "images" / ("sag-dpi-" + v + ".sagimg")).string()});
        !st) {
      return fail(st.error().ToString());
    }
  }

  // The cloud's parts, as `sag-cloud serve` starts them.
  boost::asio::io_context io(1);
  auto opened = cloud::OpenSqliteStore(lab / "store.db");
  if (!opened) return fail(opened.error().ToString());
  TimingStore store(**opened);
  if (auto st = store.RegisterDevice(kSerial, kSmartAgId, "sag-1000"); !st) {
    return fail(st.error().ToString());
  }
  cloud::Repository repo({lab / "images", {pki / "root-ca.pem", std::nullopt}});
  if (auto st = repo.Scan(); !st) return fail(st.error().ToString());
  if (repo.Images().size() != versions.size()) return fail("the repository refused an image");
  auto repo_tls = net::MakeTlsServerContext(
      {pki / "server-chain.pem", pki / "server.key", pki / "root-ca.pem"});
  if (!repo_tls) return fail(repo_tls.error().ToString());
  cloud::HttpServerOptions ro;
  ro.max_body_bytes = 0;
  auto repo_server = cloud::HttpServer::Start(
      io, "127.0.0.1", 0, [&repo](const cloud::HttpRequest& r) { return repo.Serve(r); }, ro,
      repo_tls->get());
  if (!repo_server) return fail(repo_server.error().ToString());
  cloud::GatewayOptions go;
  go.cert_chain = pki / "server-chain.pem";
  go.key = pki / "server.key";
  go.device_ca = pki / "root-ca.pem";
  go.heartbeat = milliseconds(10000);
  auto gw = std::make_unique<cloud::Gateway>(io, go, store);
  if (auto st = gw->Start(); !st) return fail(st.error().ToString());
  go.port = gw->port();  // a restarted gateway listens where the device knows it
  const std::string endpoint = "wss://127.0.0.1:" + std::to_string(go.port) + "/device/v1";

  // The appliance: sag-sim with the real daemon, its channel to the gateway.
  if (auto st =
          CheckCommand({sim.string(), "init", dev.string(), "--slot-size", "1048576", "--serial",
                        kSerial, "--smartag-id", kSmartAgId, "--endpoint", endpoint, "--root-ca",
                        (pki / "root-ca.pem").string(), "--dpi-engine", engine.string()});
      !st) {
    return fail(st.error().ToString());
  }
  fs::copy_file(pki / ("device-" + std::string(kSerial) + "-chain.pem"), dev / "pki/device.pem",
                fs::copy_options::overwrite_existing);
  fs::copy_file(pki / ("device-" + std::string(kSerial) + ".key"), dev / "pki/device.key",
                fs::copy_options::overwrite_existing);
  {
    std::string yaml = ReadFile(dev / "agent.yaml");
    if (const auto at = yaml.find("level: debug"); at != std::string::npos) {
      yaml.replace(at, 12, "level: info");
    }
    std::ofstream(dev / "agent.yaml") << yaml;
  }
  const std::string yaml = ReadFile(dev / "agent.yaml");
  const auto setting = [&](const std::string& key) {
    const auto at = yaml.find(key + ": ");
    if (at == std::string::npos) return std::string("?");
    return yaml.substr(at + key.size() + 2, yaml.find('\n', at) - at - key.size() - 2);
  };
  simpid = fork();
  if (simpid == 0) {
    const std::string log = (work / "appliance.log").string();
    (void)std::freopen(log.c_str(), "a", stdout);
    (void)std::freopen(log.c_str(), "a", stderr);
    (void)close_range(3, ~0U, 0);  // not the gateway's listening socket
    execl(sim.c_str(), sim.c_str(), "boot", dev.c_str(), "--agent", agent.c_str(), "--max-boots",
          "1", static_cast<char*>(nullptr));
    _exit(127);
  }
  if (simpid < 0) return fail("fork failed");
  const auto t_boot = Clock::now();
  if (!RunUntil(
          io, [&] { return gw->IsOnline(kSerial); }, milliseconds(30000))) {
    return fail("the appliance did not come online within 30 s; its log: " +
                (work / "appliance.log").string());
  }
  const double boot_ms = Ms(Clock::now() - t_boot);
  const std::string pid_text = ReadFile(dev / "run/agent.pid");
  if (pid_text.empty()) return fail("no run/agent.pid");
  const auto pid = static_cast<pid_t>(std::stol(pid_text));

  std::printf("== machine: %ld cores, load average %s", sysconf(_SC_NPROCESSORS_ONLN),
              ReadFile("/proc/loadavg").substr(0, 15).c_str());
  std::printf("\n== %s (pid %d), channel to %s\n", agent.c_str(), pid, endpoint.c_str());
  std::printf("power-on -> online (hello answered): %.0f ms\n", boot_ms);

  // 1. Idle with the channel up.
  RunFor(io, milliseconds(2000));
  const long c0 = CpuTicks(pid);
  const auto w0 = Clock::now();
  RunFor(io, std::chrono::seconds(args->idle_s));
  const long c1 = CpuTicks(pid);
  const double wall = std::chrono::duration<double>(Clock::now() - w0).count();
  const auto tck = static_cast<double>(sysconf(_SC_CLK_TCK));
  std::printf("idle, channel up (heartbeat %s s): %s (target: RSS < 8192 KiB)\n",
              setting("heartbeat_s").c_str(), Memory(pid).c_str());
  std::printf("  largest mappings (KiB): %s\n", LargestMappings(pid, 7).c_str());
  std::printf("  CPU %.3f %% of one core over %.0f s\n",
              100.0 * static_cast<double>(c1 - c0) / tck / wall, wall);

  // 2. Dispatch -> first progress.
  const auto images = repo.Images();
  const std::string base = "https://127.0.0.1:" + std::to_string((*repo_server)->port());
  std::vector<double> first;
  std::vector<double> whole;
  std::map<std::string, int> outcomes;
  for (int i = 0; i < args->jobs; ++i) {
    // The running version is never offered again: alternate the two.
    const auto& img = images[(i + 1) % images.size()];
    cloud::JobRecord job;
    job.serial = kSerial;
    job.spec.job_id = "bench-" + std::to_string(i);
    job.spec.job_type = "Dpi";
    job.spec.version = img.version;
    job.spec.url = base + cloud::Repository::PathOf(img);
    job.spec.size = img.size;
    job.spec.sha256 = img.sha256;
    job.spec.allow_downgrade = true;
    const std::string id = job.spec.job_id;
    const auto t0 = Clock::now();
    if (auto st = gw->Push(std::move(job)); !st) return fail(st.error().ToString());
    if (!RunUntil(
            io, [&] { return store.times[id].result.has_value(); }, milliseconds(60000))) {
      return fail("job " + id + " had no result within 60 s; the appliance's log: " +
                  (work / "appliance.log").string());
    }
    const auto& t = store.times[id];
    if (!t.first_progress) return fail("job " + id + " ended without a progress report");
    first.push_back(Ms(*t.first_progress - t0));
    whole.push_back(Ms(*t.result - t0));
    ++outcomes[t.outcome];
  }
  std::printf("job dispatch -> first progress recorded: %s (target p99 < 50 ms)\n",
              Percentiles(first).c_str());
  std::printf("job dispatch -> result recorded (a 20 kB DPI package, fake engine): %s\n",
              Percentiles(whole).c_str());
  for (const auto& [outcome, n] : outcomes) std::printf("  %d x %s\n", n, outcome.c_str());
  RunFor(io, milliseconds(2000));
  std::printf("after the jobs, idle: %s; peak RSS (VmHWM) %ld KiB\n", Memory(pid).c_str(),
              StatusKiB(pid, "VmHWM"));
  std::printf("  largest mappings (KiB): %s\n", LargestMappings(pid, 7).c_str());

  // 3. Reconnect after a gateway restart.
  std::vector<double> back;
  for (int r = 0; r < args->restarts; ++r) {
    gw->Stop();
    RunFor(io, milliseconds(300));  // the closes finish
    gw.reset();
    gw = std::make_unique<cloud::Gateway>(io, go, store);
    Status started = gw->Start();
    for (int attempt = 0; attempt < 50 && !started; ++attempt) {
      RunFor(io, milliseconds(100));
      started = gw->Start();
    }
    if (!started) return fail(started.error().ToString());
    const auto t0 = Clock::now();
    if (!RunUntil(
            io, [&] { return gw->IsOnline(kSerial); }, milliseconds(120000))) {
      return fail("the appliance did not come back within 120 s");
    }
    back.push_back(Ms(Clock::now() - t0));
  }
  if (!back.empty()) {
    std::printf(
        "gateway restart (its channels closed, a new gateway on the same port) -> the device "
        "online again: %s; agent backoff: capped exponential with full jitter, max_backoff_s %s\n",
        Percentiles(back).c_str(), setting("max_backoff_s").c_str());
  }
  std::printf("at the end: %s\n", Memory(pid).c_str());
  gw->Stop();
  (*repo_server)->Stop();
  RunFor(io, milliseconds(200));
  cleanup();
  return 0;
}
