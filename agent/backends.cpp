#include "agent/backends.h"

#include <spdlog/spdlog.h>

#include <chrono>
#include <filesystem>

#include "firmware/job.h"
#include "platform/env_boot_control.h"
#include "platform/file_slot_device.h"
#include "platform/linux_rebooter.h"
#include "platform/linux_system_info.h"

namespace sag::agent {

namespace fs = std::filesystem;

namespace {

firmware::InstallerOptions DeviceOptions(const Config& c,
                                         const std::shared_ptr<HelloGate>& hello_gate) {
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
  io.delta.full_fallback = c.download.delta_fallback_full;
  io.delta.parallel = static_cast<std::size_t>(c.download.delta_parallel);
  if (hello_gate) {
    // After the command checks: the new OS's control channel must come up
    // and the cloud answer its hello within cloud_timeout (a server that
    // merely accepts a connection does not count).
    io.cloud_check = [hello_gate, timeout = std::chrono::milliseconds(c.health.cloud_timeout)] {
      return hello_gate->Wait(timeout);
    };
  }
  for (const auto& hc : c.health.checks) {
    io.health_checks.push_back({hc.name, hc.command, hc.timeout});
  }
  if (!c.boot.os_release.empty()) io.os_release = c.boot.os_release;
  return io;
}

}  // namespace

Expected<std::unique_ptr<Backends>> BuildBackends(const Config& c) {
  auto b = std::make_unique<Backends>();
  platform::BootOptions bo;
  bo.backend = c.boot.backend == BootBackend::kGrub ? platform::BootOptions::Backend::kGrub
                                                    : platform::BootOptions::Backend::kUBoot;
  bo.uboot_config = c.boot.uboot_config;
  bo.grubenv = c.boot.grubenv;
  bo.cmdline = c.boot.cmdline;
  bo.cmdline_key = c.boot.cmdline_key;
  SAG_TRY(b->boot, platform::MakeBootControl(bo));
  SAG_TRY(b->slot_a, platform::OpenSlotDevice("A", c.boot.slots.at("A").device));
  SAG_TRY(b->slot_b, platform::OpenSlotDevice("B", c.boot.slots.at("B").device));
  // The simulator plays the power supply (configuration `simulator:`, which
  // sag-sim init writes): a flag file instead of a real reboot, and each
  // simulated boot's own boot id.
  b->rebooter = platform::MakeRebooter(c.simulator.reboot_flag.string());
  platform::SystemInfoOptions si;
  si.serial_number = c.identity.serial_number;
  si.model = c.identity.model;
  if (!c.simulator.boot_id_file.empty()) si.boot_id_file = c.simulator.boot_id_file;
  b->system = std::make_unique<platform::LinuxSystemInfo>(si);

  std::error_code ec;
  fs::create_directories(c.paths.state_dir, ec);
  if (ec) return Error(Errc::kIo, "create " + c.paths.state_dir.string() + ": " + ec.message());
  fs::create_directories(c.paths.runtime_dir, ec);
  if (ec) return Error(Errc::kIo, "create " + c.paths.runtime_dir.string() + ": " + ec.message());

  // Restarts are counted within one boot: a power cut is not a crash.
  auto boot_id = b->system->BootId();
  if (!boot_id)
    spdlog::warn("loop guard: {}; restarts are counted across boots", boot_id.error().ToString());
  b->guard = std::make_unique<StepGuard>(c.paths.state_dir / "step-attempts.json",
                                         boot_id ? *boot_id : std::string());
  StepHookFn on_step = [guard = b->guard.get()](const std::string& job, std::string_view step) {
    if (auto st = guard->Enter(job, step); !st) spdlog::warn("{}", st.error().ToString());
  };

  if (c.health.require_cloud) b->hello_gate = std::make_shared<HelloGate>(c.cloud.endpoint);
  firmware::InstallerOptions io = DeviceOptions(c, b->hello_gate);
  b->trust = io.trust;
  b->download = io.download;
  firmware::Platform p{
      b->boot.get(),
      {{platform::Slot::kA, b->slot_a.get()}, {platform::Slot::kB, b->slot_b.get()}},
      b->rebooter.get(),
      b->system.get()};
  b->device = std::make_unique<DeviceEngine>(std::move(io), p, on_step);

  dpi::Options dopt;
  dopt.model = c.identity.model;
  dopt.store = c.dpi.store;
  dopt.keep = c.dpi.keep;
  dopt.journal = c.paths.state_dir / "dpi-job.json";
  dopt.hooks.validate = {c.dpi.validate.command, c.dpi.validate.timeout};
  dopt.hooks.reload = {c.dpi.reload.command, c.dpi.reload.timeout};
  dopt.hooks.confirm = {c.dpi.confirm.command, c.dpi.confirm.timeout};
  b->dpi = std::make_unique<DpiEngine>(std::move(dopt), b->system.get(), on_step);

  b->outbox = std::make_unique<Outbox>(c.paths.state_dir);
  if (auto st = b->outbox->Load(); !st) {
    // Kept for the operator; the daemon must go on reporting.
    spdlog::error("{}", st.error().ToString());
    const std::string aside = ".damaged-" + firmware::NowUtc();
    for (const auto& f : {b->outbox->LogPath(), b->outbox->AckPath()}) {
      fs::rename(f, f.string() + aside, ec);
    }
    spdlog::warn("outbox files moved aside to *{}; reports start again at #1", aside);
    SAG_TRY_STATUS(b->outbox->Load());
  }
  b->registry = std::make_unique<JobRegistry>(c.paths.state_dir / "jobs.json");
  if (auto st = b->registry->Load(); !st) {
    // Jobs are refused with this error until the file is moved aside: a
    // job id must not run twice because its record was lost.
    spdlog::error("{}", st.error().ToString());
  }
  return b;
}

}  // namespace sag::agent
