#include "agent/agent.h"

#include <signal.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <mutex>
#include <random>
#include <sstream>
#include <thread>

#include "agent/sd_notify.h"
#include "agent/status.h"
#include "common/atomic_file.h"
#include "common/log.h"
#include "common/net/probe.h"
#include "common/stream_source.h"
#include "dpi/installer.h"
#include "firmware/installer.h"
#include "platform/env_boot_control.h"
#include "platform/file_slot_device.h"
#include "platform/linux_rebooter.h"
#include "platform/linux_system_info.h"

namespace sag::agent {

namespace {

constexpr std::chrono::milliseconds kStatusInterval{500};

namespace fs = std::filesystem;
using nlohmann::json;

// The real objects, built once from the configuration.
struct Runtime {
  std::unique_ptr<platform::BootControl> boot;
  std::unique_ptr<platform::SlotDevice> slot_a;
  std::unique_ptr<platform::SlotDevice> slot_b;
  std::unique_ptr<platform::Rebooter> rebooter;
  std::unique_ptr<platform::SystemInfo> system;
  std::unique_ptr<firmware::DeviceInstaller> device;
  std::unique_ptr<dpi::DpiInstaller> dpi;
  image::Trust trust;
  net::DownloadOptions download;
  std::unique_ptr<StatusWriter> status;
  std::mutex status_mu;  // guards the next three (OnProgress's)
  int last_percent = -1;
  std::string last_state;
  std::chrono::steady_clock::time_point last_status_write{};
  bool last_job_dpi = false;  // status.json's "job" is a DPI job
};

std::string Getenv(const char* name) {
  const char* v = std::getenv(name);  // NOLINT(concurrency-mt-unsafe)
  return v == nullptr ? std::string() : std::string(v);
}

// A job's error as status.json reports it: code, name, message; or null.
json ErrorJson(const std::optional<Error>& error) {
  if (!error) return nullptr;
  return {
      {"code", error->number()}, {"name", ErrcName(error->code())}, {"message", error->message()}};
}

json JobJson(const firmware::JobRecord& r, int percent) {
  json j = {{"id", r.id},
            {"type", "Device"},
            {"version", r.version},
            {"state", firmware::JobStateName(r.state)},
            {"percent", percent},
            {"from_version", r.from_version},
            {"target_slot", r.target_slot}};
  j["error"] = ErrorJson(r.error);
  return j;
}

void OnProgress(Runtime& rt, const firmware::JobRecord& r, const firmware::Progress& p) {
  const int percent = p.total == 0 ? (firmware::IsTerminal(r.state) ? 100 : 0)
                                   : static_cast<int>(100 * p.done / p.total);
  const std::string state(firmware::JobStateName(r.state));
  const std::lock_guard lock(rt.status_mu);
  if (percent == rt.last_percent && state == rt.last_state) return;
  const bool state_changed = state != rt.last_state;
  const bool log_it = state_changed || percent % 10 == 0;
  rt.last_percent = percent;
  rt.last_state = state;
  if (log_it && p.total != 0) {
    spdlog::info("job {}: {} {}% ({}/{})", r.id, state, percent, p.done, p.total);
  }
  // status.json follows every state change and the end of a step, and the
  // percentage in between at most every kStatusInterval: it is read by people
  // and the cloud, and a file replacement for every percent would cost the
  // install real time. A state change is written before the job goes on (it
  // is the last word before a reboot); the percentage is posted, because it
  // comes from the install's writer thread, which must not wait for the file
  // system.
  const auto now = std::chrono::steady_clock::now();
  if (!state_changed && percent != 100 && now - rt.last_status_write < kStatusInterval) return;
  rt.last_status_write = now;
  if (!rt.status) return;
  if (state_changed) {
    (void)rt.status->Update({{"job", JobJson(r, percent)}});
  } else {
    rt.status->Post({{"job", JobJson(r, percent)}});
  }
}

Expected<std::unique_ptr<Runtime>> BuildRuntime(const Config& c) {
  auto rt = std::make_unique<Runtime>();
  platform::BootOptions bo;
  bo.backend = c.boot.backend == BootBackend::kGrub ? platform::BootOptions::Backend::kGrub
                                                    : platform::BootOptions::Backend::kUBoot;
  bo.uboot_config = c.boot.uboot_config;
  bo.grubenv = c.boot.grubenv;
  bo.cmdline = c.boot.cmdline;
  bo.cmdline_key = c.boot.cmdline_key;
  SAG_TRY(rt->boot, platform::MakeBootControl(bo));
  SAG_TRY(rt->slot_a, platform::OpenSlotDevice("A", c.boot.slots.at("A").device));
  SAG_TRY(rt->slot_b, platform::OpenSlotDevice("B", c.boot.slots.at("B").device));
  // The simulator plays the power supply: it asks for a flag file instead of
  // a real reboot, and gives each simulated boot its own boot id.
  rt->rebooter = platform::MakeRebooter(Getenv(platform::FlagFileRebooter::kRebootFlagEnv));
  platform::SystemInfoOptions si;
  si.serial_number = c.identity.serial_number;
  si.model = c.identity.model;
  if (const auto boot_id = Getenv(platform::LinuxSystemInfo::kBootIdEnv); !boot_id.empty()) {
    si.boot_id_file = boot_id;
  }
  rt->system = std::make_unique<platform::LinuxSystemInfo>(si);

  std::error_code ec;
  fs::create_directories(c.paths.state_dir, ec);
  if (ec) return Error(Errc::kIo, "create " + c.paths.state_dir.string() + ": " + ec.message());
  fs::create_directories(c.paths.runtime_dir, ec);
  if (ec) return Error(Errc::kIo, "create " + c.paths.runtime_dir.string() + ": " + ec.message());

  firmware::InstallerOptions io;
  io.state_dir = c.paths.state_dir;
  io.model = c.identity.model;
  io.trust.root_ca = c.pki.root_ca;
  io.download.ca_file = c.pki.root_ca;
  io.download.client_cert = c.pki.device_cert;
  io.download.client_key = c.pki.device_key;
  io.download.bandwidth_limit = c.download.bandwidth_limit;
  io.download.stall_timeout = c.download.stall_timeout;
  io.download.max_retries = c.download.max_retries;
  io.download.deadline = c.download.deadline;
  io.download.min_rate = c.download.min_rate;
  io.download.min_rate_window = c.download.min_rate_window;
  io.trial_attempts = c.boot.trial_attempts;
  io.read_back = c.boot.read_back_medium ? firmware::InstallerOptions::ReadBack::kMedium
                                         : firmware::InstallerOptions::ReadBack::kCache;
  io.checkpoint_bytes = c.download.checkpoint_bytes;
  io.checkpoint_interval = c.download.checkpoint_interval;
  if (c.health.require_cloud) {
    // After the command checks: the new OS must reach the control channel's
    // endpoint with this device's certificate within cloud_timeout.
    io.cloud_check = [endpoint = c.cloud.endpoint, tls = io.download,
                      deadline = c.health.cloud_timeout] {
      return net::ProbeEndpoint(endpoint, tls, deadline);
    };
  }
  for (const auto& hc : c.health.checks) {
    io.health_checks.push_back({hc.name, hc.command, hc.timeout});
  }
  if (!c.boot.os_release.empty()) io.os_release = c.boot.os_release;
  firmware::Platform p{
      rt->boot.get(),
      {{platform::Slot::kA, rt->slot_a.get()}, {platform::Slot::kB, rt->slot_b.get()}},
      rt->rebooter.get(),
      rt->system.get()};
  rt->trust = io.trust;
  rt->download = io.download;
  dpi::Options dopt;
  dopt.model = c.identity.model;
  dopt.store = c.dpi.store;
  dopt.keep = c.dpi.keep;
  dopt.journal = c.paths.state_dir / "dpi-job.json";
  dopt.hooks.validate = {c.dpi.validate.command, c.dpi.validate.timeout};
  dopt.hooks.reload = {c.dpi.reload.command, c.dpi.reload.timeout};
  dopt.hooks.confirm = {c.dpi.confirm.command, c.dpi.confirm.timeout};
  rt->dpi = std::make_unique<dpi::DpiInstaller>(std::move(dopt), rt->system.get());
  Runtime* raw = rt.get();
  rt->device = std::make_unique<firmware::DeviceInstaller>(
      std::move(io), p, [raw](const firmware::JobRecord& r, const firmware::Progress& pr) {
        OnProgress(*raw, r, pr);
      });
  return rt;
}

// What status.json says about the appliance, refreshed at start and after jobs.
void RefreshStatus(Runtime& rt, const Config& c, const std::string& state) {
  json s = {{"agent_version", SAG_VERSION},
            {"smartag_id", c.identity.smartag_id},
            {"serial_number", c.identity.serial_number},
            {"model", c.identity.model},
            {"state", state},
            {"pid", ::getpid()}};
  if (auto v = rt.device->CurrentVersion()) {
    s["device_version"] = *v;
  } else {
    s["device_version"] = nullptr;
  }
  if (auto v = rt.dpi->CurrentVersion()) {
    s["dpi_version"] = *v;
  } else {
    s["dpi_version"] = nullptr;
  }
  if (auto b = rt.boot->BootedSlot()) s["booted_slot"] = std::string(platform::SlotName(*b));
  if (auto st = rt.boot->ReadState()) {
    std::string order;
    for (auto slot : st->order) {
      if (!order.empty()) order += ' ';
      order += platform::SlotName(slot);
    }
    s["boot"] = {{"order", order}, {"a_left", st->a_left}, {"b_left", st->b_left}};
  }
  if (rt.last_job_dpi) {
    // RunJob reported the DPI job itself.
  } else if (auto last = rt.device->LastJob(); last && *last) {
    const int pct = firmware::IsTerminal((*last)->state) ? 100 : rt.last_percent;
    s["job"] = JobJson(**last, std::max(pct, 0));
  }
  if (auto st = rt.status->Update(s); !st) spdlog::warn("status: {}", st.error().ToString());
}

std::string NewJobId() {
  std::random_device rd;
  char buf[32];
  std::snprintf(buf, sizeof buf, "local-%08x", rd());
  return buf;
}

fs::path InboxDir(const Config& c) { return c.paths.state_dir / "inbox"; }
fs::path PidFile(const Config& c) { return c.paths.runtime_dir / "agent.pid"; }

// The pid of a running daemon for this configuration, if any.
std::optional<pid_t> RunningDaemon(const Config& c) {
  auto text = ReadFile(PidFile(c), 64);
  if (!text) return std::nullopt;
  const pid_t pid = std::atoi(text->c_str());
  if (pid <= 0 || pid == ::getpid() || ::kill(pid, 0) != 0) return std::nullopt;
  return pid;
}

int PrintJobOutcome(const firmware::JobRecord& r, bool as_json, std::ostream& out) {
  if (as_json) {
    out << r.ToJson().dump(2) << "\n";
  } else if (r.error) {
    out << "job " << r.id << " " << firmware::JobStateName(r.state) << ": " << r.error->ToString()
        << "\n";
  } else {
    out << "job " << r.id << " " << firmware::JobStateName(r.state) << " (version " << r.version
        << " in slot " << r.target_slot << ")\n";
  }
  return r.state == firmware::JobState::kFailed ? 1 : 0;
}

json DpiJobJson(const dpi::JobResult& r) {
  json j = {{"id", r.job_id},
            {"type", "Dpi"},
            {"version", r.version},
            {"state", dpi::JobStateName(r.state)},
            {"percent", 100},
            {"from_version", r.previous ? *r.previous : ""},
            {"active", r.active ? *r.active : ""}};
  j["error"] = ErrorJson(r.error);
  return j;
}

// A DPI package: verified chunk by chunk as it streams into the installer.
Expected<dpi::JobResult> RunDpiJob(Runtime& rt, const firmware::JobSpec& spec) {
  if (auto seen = rt.dpi->Lookup(spec.id); seen && *seen) return **seen;
  SAG_TRY(auto source, OpenStreamSource(spec.source, 0, rt.download));
  image::ImageReader reader(*source, rt.trust);
  SAG_TRY(const image::VerifiedHeader* header, reader.ReadHeader());
  (void)rt.status->Update({{"job",
                            {{"id", spec.id},
                             {"type", "Dpi"},
                             {"version", header->manifest.version},
                             {"state", "Staging"},
                             {"percent", 0},
                             {"error", nullptr}}}});
  spdlog::info("job {}: DPI database {} (signed by {})", spec.id, header->manifest.version,
               header->signer.subject);
  dpi::CallbackPayloadSource payload(
      [&reader]() -> Expected<std::optional<std::span<const std::uint8_t>>> {
        SAG_TRY(auto chunk, reader.NextChunk());
        if (!chunk) return std::optional<std::span<const std::uint8_t>>();
        return std::optional<std::span<const std::uint8_t>>(chunk->data);
      });
  SAG_TRY(auto result, rt.dpi->Install({spec.id, "", spec.allow_downgrade},
                                       dpi::PackageInfo::FromManifest(header->manifest), payload));
  if (result.ok()) {
    spdlog::info("job {}: DPI database {} active and confirmed by the engine", spec.id,
                 result.version);
  } else {
    spdlog::error("job {}: DPI {} {}: {}", spec.id, result.version, dpi::JobStateName(result.state),
                  result.error ? result.error->ToString() : std::string("no cause"));
  }
  return result;
}

// What the image says it is decides the installer: the type is part of the
// signed manifest, so it is read (and verified) first.
Expected<image::ImageType> ImageTypeOf(Runtime& rt, const std::string& source) {
  SAG_TRY(auto src, OpenStreamSource(source, 0, rt.download));
  image::ImageReader reader(*src, rt.trust);
  SAG_TRY(const image::VerifiedHeader* header, reader.ReadHeader());
  return header->manifest.type;
}

// Runs a job of either type to where it goes in this boot; the outcome is
// in status.json and the logs. Returns the process exit code for `install`.
enum class Output { kNone, kText, kJson };

int RunJob(Runtime& rt, const firmware::JobSpec& spec, Output output) {
  const bool as_json = output == Output::kJson;
  std::ostringstream discard;
  std::ostream& out = output == Output::kNone ? static_cast<std::ostream&>(discard) : std::cout;
  auto type = ImageTypeOf(rt, spec.source);
  rt.last_job_dpi = type && *type == image::ImageType::kDpi;
  if (rt.last_job_dpi) {
    auto r = RunDpiJob(rt, spec);
    if (!r) {
      spdlog::error("job {}: {}", spec.id, r.error().ToString());
      if (!as_json) out << "job " << spec.id << " Failed: " << r.error().ToString() << "\n";
      return 1;
    }
    (void)rt.status->Update({{"job", DpiJobJson(*r)}});
    if (as_json) {
      out << DpiJobJson(*r).dump(2) << "\n";
    } else if (r->error) {
      out << "job " << r->job_id << " " << dpi::JobStateName(r->state) << ": "
          << r->error->ToString() << "\n";
    } else {
      out << "job " << r->job_id << " " << dpi::JobStateName(r->state) << " (DPI database "
          << r->version << " active)\n";
    }
    return r->ok() ? 0 : 1;
  }
  // Device images, and anything whose header cannot be read: the Device
  // installer records the refusal under the job id.
  auto r = rt.device->Start(spec);
  if (!r) {
    spdlog::error("job {}: {}", spec.id, r.error().ToString());
    if (!as_json) out << "job " << spec.id << ": " << r.error().ToString() << "\n";
    return 1;
  }
  return PrintJobOutcome(*r, as_json, out);
}

sigset_t StopSignals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  return set;
}

}  // namespace

int CmdRun(const Config& c, bool once) {
  // Block the stop signals in every thread; the main thread collects them.
  const sigset_t stop = StopSignals();
  pthread_sigmask(SIG_BLOCK, &stop, nullptr);
  spdlog::info("sag-agent {} starting", SAG_VERSION);
  for (const auto& line : DescribeConfig(c)) spdlog::info("{}", line);
  auto built = BuildRuntime(c);
  if (!built) {
    spdlog::critical("cannot start: {}", built.error().ToString());
    return 1;
  }
  Runtime& rt = **built;
  rt.status = std::make_unique<StatusWriter>(c.paths.runtime_dir / "status.json");
  if (auto st = WriteFileAtomic(PidFile(c), std::to_string(::getpid()) + "\n"); !st) {
    spdlog::warn("{}", st.error().ToString());
  }
  std::error_code ec;
  fs::create_directories(InboxDir(c), ec);
  RefreshStatus(rt, c, "starting");
  SdNotify("READY=1\nSTATUS=checking jobs");

  std::atomic<bool> busy{false};
  std::thread worker;
  auto run_in_worker = [&](std::function<void()> fn) {
    busy = true;
    worker = std::thread([&, fn = std::move(fn)] {
      fn();
      RefreshStatus(rt, c, "idle");
      busy = false;
    });
  };
  // First: whatever the journal holds (a trial boot to check, a download to
  // finish).
  run_in_worker([&] {
    auto resumed = rt.device->Resume();
    if (!resumed) spdlog::error("resuming the Device job: {}", resumed.error().ToString());
    auto dpi_resumed = rt.dpi->Resume();
    if (!dpi_resumed) {
      spdlog::error("resuming the DPI job: {}", dpi_resumed.error().ToString());
    } else if (*dpi_resumed && !(*dpi_resumed)->replayed) {
      spdlog::warn("DPI job {} was interrupted: {}", (*dpi_resumed)->job_id,
                   dpi::JobStateName((*dpi_resumed)->state));
    }
  });

  int exit_code = 0;
  for (;;) {
    timespec tick{0, 250'000'000};
    const int sig = sigtimedwait(&stop, nullptr, &tick);
    if (sig == SIGTERM || sig == SIGINT) {
      spdlog::info("received {}, stopping", sig == SIGTERM ? "SIGTERM" : "SIGINT");
      SdNotify("STOPPING=1");
      rt.device->Cancel();
      break;
    }
    SdNotify("WATCHDOG=1");
    if (busy) continue;
    if (worker.joinable()) worker.join();
    bool started = false;
    // Local jobs (sag-agent install while the daemon runs) arrive as files.
    for (const auto& entry : fs::directory_iterator(InboxDir(c), ec)) {
      if (entry.path().extension() != ".json") continue;
      // A copy: the worker outlives the directory iterator.
      const fs::path request = entry.path();  // NOLINT(performance-unnecessary-copy-initialization)
      auto text = ReadFile(request, 64U << 10U);
      auto req = text ? json::parse(*text, nullptr, false) : json();
      if (!req.is_object() || !req.contains("id") || !req["id"].is_string() ||
          !req.contains("source") || !req["source"].is_string()) {
        spdlog::error(R"(ignoring malformed job request {}: expected {{"id": ..., "source": ...}})",
                      request.string());
        fs::remove(request, ec);
        continue;
      }
      firmware::JobSpec spec{req["id"].get<std::string>(), req["source"].get<std::string>(),
                             req.value("allow_downgrade", false), req.value("reboot", true)};
      spdlog::info("job {}: request for {}", spec.id, spec.source);
      // The request is removed only once the job is in its journal: a power
      // cut before that must not lose it (offered again, a recorded job is
      // answered with its state, never run twice).
      run_in_worker([&rt, spec, request] {
        (void)RunJob(rt, spec, Output::kNone);
        std::error_code rm;
        fs::remove(request, rm);
      });
      started = true;
      break;
    }
    if (once && !started) {
      spdlog::info("nothing left to do, stopping (--once)");
      break;
    }
  }
  if (worker.joinable()) worker.join();
  RefreshStatus(rt, c, "stopped");
  fs::remove(PidFile(c), ec);
  return exit_code;
}

int CmdInstall(const Config& c, const InstallArgs& args) {
  const std::string id = args.id.empty() ? NewJobId() : args.id;
  std::string source = args.source;
  if (!IsUrl(source)) {
    std::error_code ec;
    source = fs::absolute(source, ec).string();
  }
  if (auto pid = RunningDaemon(c)) {
    // One writer: the running daemon takes the job; we follow its progress.
    json req = {{"id", id},
                {"source", source},
                {"allow_downgrade", args.allow_downgrade},
                {"reboot", args.reboot}};
    std::error_code ec;
    fs::create_directories(InboxDir(c), ec);
    if (auto st = WriteFileAtomic(InboxDir(c) / (id + ".json"), req.dump()); !st) {
      std::cerr << "sag-agent: " << st.error().ToString() << "\n";
      return 1;
    }
    std::cout << "job " << id << " handed to the running agent (pid " << *pid << ")\n";
    const StatusFile status(c.paths.runtime_dir / "status.json");
    std::string last;
    for (int i = 0; i < 20 * 60 * 30; ++i) {  // 30 minutes at most
      ::usleep(50'000);
      auto s = status.Read();
      if (!s || !s->contains("job") || !(*s)["job"].is_object()) continue;
      const auto& j = (*s)["job"];
      if (j.value("id", "") != id) continue;
      const std::string state = j.value("state", "");
      const std::string line = state + " " + std::to_string(j.value("percent", 0)) + "%";
      if (line != last) {
        std::cout << "  " << line << "\n" << std::flush;
        last = line;
      }
      if (state == "Rebooting" || state == "Committed" || state == "RolledBack" ||
          state == "Failed") {
        if (j.contains("error") && j["error"].is_object()) {
          std::cout << "job " << id << " " << state << ": E" << j["error"].value("code", 0) << " "
                    << j["error"].value("name", "") << ": " << j["error"].value("message", "")
                    << "\n";
        }
        return state == "Failed" ? 1 : 0;
      }
      if (!RunningDaemon(c)) {
        std::cout << "the agent stopped while job " << id << " was " << state << "\n";
        return state == "Failed" ? 1 : 0;
      }
    }
    std::cerr << "sag-agent: job " << id << " did not finish within 30 minutes\n";
    return 1;
  }
  auto built = BuildRuntime(c);
  if (!built) {
    std::cerr << "sag-agent: " << built.error().ToString() << "\n";
    return 1;
  }
  Runtime& rt = **built;
  rt.status = std::make_unique<StatusWriter>(c.paths.runtime_dir / "status.json");
  firmware::JobSpec spec{id, source, args.allow_downgrade, args.reboot};
  const int rc = RunJob(rt, spec, args.json ? Output::kJson : Output::kText);
  RefreshStatus(rt, c, "idle");
  return rc;
}

int CmdStatus(const Config& c, StatusOptions options) {
  if (options.file.empty()) options.file = c.paths.runtime_dir / "status.json";
  return RunStatusCommand(options, std::cout, std::cerr);
}

namespace {

// Builds the runtime and runs one manual action on the Device installer.
int ManualAction(const Config& c, Status (firmware::DeviceInstaller::*action)(), const char* done) {
  auto built = BuildRuntime(c);
  if (!built) {
    std::cerr << "sag-agent: " << built.error().ToString() << "\n";
    return 1;
  }
  if (auto st = ((*built)->device.get()->*action)(); !st) {
    std::cerr << "sag-agent: " << st.error().ToString() << "\n";
    return 1;
  }
  std::cout << done << "\n";
  return 0;
}

}  // namespace

int CmdMarkGood(const Config& c) {
  return ManualAction(c, &firmware::DeviceInstaller::MarkGood, "booted slot marked good");
}

int CmdRollback(const Config& c) {
  return ManualAction(c, &firmware::DeviceInstaller::Rollback,
                      "the other slot boots next; reboot requested");
}

}  // namespace sag::agent
