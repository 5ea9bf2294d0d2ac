#include "agent/agent.h"

#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/inotify.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <boost/asio/io_context.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <mutex>
#include <random>
#include <sstream>
#include <thread>

#include "agent/daemon_state.h"
#include "agent/inbox.h"
#include "agent/job.h"
#include "agent/outbox.h"
#include "agent/registry.h"
#include "agent/sd_notify.h"
#include "agent/status.h"
#include "common/atomic_file.h"
#include "common/json_reader.h"
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
  std::unique_ptr<JobRegistry> registry;
  std::unique_ptr<Outbox> outbox;
  // Set by SIGTERM: downloads outside the Device installer (the image type
  // lookup, a DPI package) stop waiting on a stalled server at once.
  std::atomic<bool> stopping{false};
};

// The download options of a job the Device installer does not run: `download`
// with the daemon's stop flag.
net::DownloadOptions StoppableDownload(const Runtime& rt) {
  net::DownloadOptions o = rt.download;
  o.cancel = &rt.stopping;
  return o;
}

std::string Getenv(const char* name) {
  const char* v = std::getenv(name);  // NOLINT(concurrency-mt-unsafe)
  return v == nullptr ? std::string() : std::string(v);
}

// Appends a report to the outbox (docs/agent.md); a report that cannot be
// made durable is logged, and the job goes on.
void Emit(Runtime& rt, const char* kind, const std::string& job, json body) {
  if (!rt.outbox) return;
  if (auto seq = rt.outbox->Append(kind, job, std::move(body)); !seq) {
    spdlog::error("job {}: the {} report is not in the outbox: {}", job, kind,
                  seq.error().ToString());
  }
}

JobPhase PhaseOf(firmware::JobState state);

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
  // Reports: every state change (before the job goes on: it may be the last
  // word before a reboot) and every 10 % of a long step.
  if (state_changed) {
    Emit(rt, "state", r.id,
         {{"type", "Device"},
          {"phase", JobPhaseName(PhaseOf(r.state))},
          {"state", state},
          {"to", r.version}});
  } else if (p.total != 0 && percent % 10 == 0) {
    Emit(rt, "progress", r.id, {{"state", state}, {"percent", percent}});
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
  rt->outbox = std::make_unique<Outbox>(c.paths.state_dir);
  if (auto st = rt->outbox->Load(); !st) {
    // Kept for the operator; the daemon must go on reporting.
    spdlog::error("{}", st.error().ToString());
    const std::string aside = ".damaged-" + firmware::NowUtc();
    for (const auto& f : {rt->outbox->LogPath(), rt->outbox->AckPath()}) {
      fs::rename(f, f.string() + aside, ec);
    }
    spdlog::warn("outbox files moved aside to *{}; reports start again at #1", aside);
    SAG_TRY_STATUS(rt->outbox->Load());
  }
  rt->registry = std::make_unique<JobRegistry>(c.paths.state_dir / "jobs.json");
  if (auto st = rt->registry->Load(); !st) {
    // Jobs are refused with this error until the file is moved aside: a
    // job id must not run twice because its record was lost.
    spdlog::error("{}", st.error().ToString());
  }
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
  if (rt.outbox) s["outbox"] = rt.outbox->Summary();
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
  SAG_TRY(auto source, OpenStreamSource(spec.source, 0, StoppableDownload(rt)));
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
  SAG_TRY(auto src, OpenStreamSource(source, 0, StoppableDownload(rt)));
  image::ImageReader reader(*src, rt.trust);
  SAG_TRY(const image::VerifiedHeader* header, reader.ReadHeader());
  return header->manifest.type;
}

// Runs a job of either type to where it goes in this boot; the outcome is
// in status.json and the logs. Returns the process exit code for `install`.
enum class Output { kNone, kText, kJson };

// A job that could not be run or recorded at all (a conflict, a damaged
// state file): what the reply to its request says.
json RefusedJson(const std::string& id, const Error& e) {
  return {{"id", id}, {"state", "Refused"}, {"error", ErrorJson(e)}};
}

int PrintDpiOutcome(const dpi::JobResult& r, bool as_json, std::ostream& out) {
  if (as_json) {
    out << DpiJobJson(r).dump(2) << "\n";
  } else if (r.error) {
    out << "job " << r.job_id << " " << dpi::JobStateName(r.state) << ": " << r.error->ToString()
        << "\n";
  } else {
    out << "job " << r.job_id << " " << dpi::JobStateName(r.state) << " (DPI database " << r.version
        << " active)\n";
  }
  return r.ok() ? 0 : 1;
}

JobPhase PhaseOf(firmware::JobState state) {
  using S = firmware::JobState;
  switch (state) {
    case S::kCommitted:
      return JobPhase::kCommitted;
    case S::kRolledBack:
      return JobPhase::kRolledBack;
    case S::kFailed:
      return JobPhase::kFailed;
    case S::kRebooting:
    case S::kHealthChecking:
    case S::kCommitting:
    case S::kRollingBack:
      return JobPhase::kRebooting;
    default:
      return JobPhase::kRunning;
  }
}

JobPhase PhaseOf(dpi::JobState state) {
  switch (state) {
    case dpi::JobState::kCommitted:
      return JobPhase::kCommitted;
    case dpi::JobState::kRolledBack:
      return JobPhase::kRolledBack;
    case dpi::JobState::kFailed:
      return JobPhase::kFailed;
    default:
      return JobPhase::kRunning;
  }
}

JobOutcome OutcomeOf(const firmware::JobRecord& r, JobOutcome o) {
  o.type = JobType::kDevice;
  o.phase = PhaseOf(r.state);
  o.state = firmware::JobStateName(r.state);
  o.error = r.error;
  o.from = r.from_version;
  o.to = r.version;
  o.updated_at = firmware::NowUtc();
  return o;
}

JobOutcome OutcomeOf(const dpi::JobResult& r, JobOutcome o) {
  o.type = JobType::kDpi;
  o.phase = PhaseOf(r.state);
  o.state = dpi::JobStateName(r.state);
  o.error = r.error;
  o.from = r.previous.value_or("");
  o.to = r.version;
  o.updated_at = firmware::NowUtc();
  return o;
}

// The registry's record of `id` (or a new one), brought up to date with
// what the installers recorded; nullopt when neither knows the id.
Expected<std::optional<JobOutcome>> Recorded(Runtime& rt, const std::string& id) {
  auto known = rt.registry->Find(id);
  JobOutcome base = known.value_or(JobOutcome{});
  base.id = id;
  if (base.accepted_at.empty()) base.accepted_at = firmware::NowUtc();
  SAG_TRY(auto dpi_seen, rt.dpi->Lookup(id));
  if (dpi_seen) return std::optional<JobOutcome>(OutcomeOf(*dpi_seen, base));
  SAG_TRY(auto device_seen, rt.device->Lookup(id));
  if (device_seen) return std::optional<JobOutcome>(OutcomeOf(*device_seen, base));
  return known;
}

// At start, after the installers resumed: jobs the registry holds as
// unfinished get what became of them (a Device job commits or falls back in
// the boot after its trial).
void SyncRegistry(Runtime& rt) {
  const auto jobs = rt.registry->jobs();
  for (const auto& j : jobs) {
    if (IsFinal(j.phase)) continue;
    auto now = Recorded(rt, j.id);
    if (!now) {
      spdlog::error("job {}: {}", j.id, now.error().ToString());
    } else if (*now && ((*now)->phase != j.phase || (*now)->state != j.state)) {
      spdlog::info("job {}: {} ({})", j.id, JobPhaseName((*now)->phase), (*now)->state);
      // A Device job's outcome is known only in the boot after its trial:
      // its result report is made here (unless the daemon made it and was
      // killed before it updated the registry).
      if (!IsFinal((*now)->phase)) {
        Emit(rt, "state", j.id, (*now)->ToJson());
      } else if (!rt.outbox || !rt.outbox->HasPending("result", j.id)) {
        Emit(rt, "result", j.id, (*now)->ToJson());
      }
      if (auto st = rt.registry->Put(**now); !st) spdlog::error("{}", st.error().ToString());
    }
  }
}

// `reply`, when not null, receives the job as the reply to its request says
// it (docs/agent.md): the record's fields, or {"state": "Refused", "error"}.
int RunJob(Runtime& rt, const JobSpec& job, Output output, json* reply = nullptr) {
  const firmware::JobSpec spec{job.id, job.source, job.allow_downgrade, job.reboot};
  const bool as_json = output == Output::kJson;
  std::ostringstream discard;
  std::ostream& out = output == Output::kNone ? static_cast<std::ostream&>(discard) : std::cout;
  json ignored;
  json& answer = reply != nullptr ? *reply : ignored;
  auto refuse = [&](const Error& e) {
    spdlog::error("job {}: {}", spec.id, e.ToString());
    if (!as_json) out << "job " << spec.id << ": " << e.ToString() << "\n";
    answer = RefusedJson(spec.id, e);
    return 1;
  };
  auto record = [&](const JobOutcome& o, bool report = true) {
    // The report first: a kill between the two leaves the registry's record
    // unfinished, and the start-up catch-up then finds the result report
    // pending instead of making a second one.
    if (report) Emit(rt, IsFinal(o.phase) ? "result" : "state", o.id, o.ToJson());
    if (auto st = rt.registry->Put(o); !st) {
      spdlog::error("job {}: {}", o.id, st.error().ToString());
    }
    answer["phase"] = JobPhaseName(o.phase);
  };
  // A job id is run once, whatever its type: one recorded before is answered
  // with its record before the source is even opened (it may be gone, and
  // its type must not be guessed from it).
  auto seen = Recorded(rt, spec.id);
  if (!seen) return refuse(seen.error());
  JobOutcome outcome;
  if (*seen) {
    outcome = **seen;
    if (outcome.phase != JobPhase::kAccepted) {
      spdlog::info("job {}: seen before ({}, {}), not run again", spec.id,
                   JobTypeName(outcome.type), outcome.state);
      int rc = 0;
      if (outcome.type == JobType::kDpi) {
        auto r = rt.dpi->Lookup(spec.id);
        if (r && *r) {
          answer = DpiJobJson(**r);
          rc = PrintDpiOutcome(**r, as_json, out);
        }
      } else if (outcome.type == JobType::kDevice) {
        auto r = rt.device->Lookup(spec.id);
        if (r && *r) {
          answer = JobJson(**r, 100);
          rc = PrintJobOutcome(**r, as_json, out);
        }
      }
      if (answer.is_null()) {
        // Known only to the registry: it failed before reaching an installer.
        answer = outcome.ToJson();
        if (as_json) {
          out << answer.dump(2) << "\n";
        } else {
          out << "job " << spec.id << " " << outcome.state << ": "
              << (outcome.error ? outcome.error->ToString() : std::string("no cause")) << "\n";
        }
        rc = outcome.phase == JobPhase::kCommitted ? 0 : 1;
      }
      record(outcome, /*report=*/false);  // reported when it happened
      return rc;
    }
    // Accepted before a crash and known to no installer: it never started.
  } else {
    outcome.id = spec.id;
    outcome.accepted_at = firmware::NowUtc();
  }
  outcome.phase = JobPhase::kAccepted;
  outcome.state = "Accepted";
  outcome.updated_at = firmware::NowUtc();
  // Recorded before anything runs: a crash from here on finds the id.
  if (auto st = rt.registry->Put(outcome); !st) return refuse(st.error());
  Emit(rt, "state", outcome.id, outcome.ToJson());
  auto forget = [&](const Error& e) {
    // Refused, not run: the same id may be offered again later.
    if (auto st = rt.registry->Remove(spec.id); !st) spdlog::error("{}", st.error().ToString());
    Emit(rt, "state", spec.id, RefusedJson(spec.id, e));
  };

  auto type = ImageTypeOf(rt, spec.source);
  if (!type) {
    // The signed header cannot be read or verified: the job fails here,
    // recorded under the id; neither installer saw it.
    outcome.phase = JobPhase::kFailed;
    outcome.state = "Failed";
    outcome.error = type.error();
    outcome.updated_at = firmware::NowUtc();
    spdlog::error("job {}: {}", spec.id, type.error().ToString());
    rt.last_job_dpi = true;  // status.json's job is this one, not the Device journal's
    answer = outcome.ToJson();
    (void)rt.status->Update({{"job",
                              {{"id", spec.id},
                               {"type", nullptr},
                               {"version", ""},
                               {"state", "Failed"},
                               {"percent", 0},
                               {"error", ErrorJson(type.error())}}}});
    if (as_json) {
      out << answer.dump(2) << "\n";
    } else {
      out << "job " << spec.id << " Failed: " << type.error().ToString() << "\n";
    }
    record(outcome);
    return 1;
  }
  rt.last_job_dpi = *type == image::ImageType::kDpi;
  if (rt.last_job_dpi) {
    auto r = RunDpiJob(rt, spec);
    if (!r) {
      forget(r.error());
      spdlog::error("job {}: {}", spec.id, r.error().ToString());
      if (!as_json) out << "job " << spec.id << " Failed: " << r.error().ToString() << "\n";
      answer = RefusedJson(spec.id, r.error());
      answer["type"] = "Dpi";
      return 1;
    }
    (void)rt.status->Update({{"job", DpiJobJson(*r)}});
    answer = DpiJobJson(*r);
    record(OutcomeOf(*r, outcome));
    return PrintDpiOutcome(*r, as_json, out);
  }
  auto r = rt.device->Start(spec);
  if (!r) {
    forget(r.error());
    return refuse(r.error());
  }
  answer = JobJson(*r, firmware::IsTerminal(r->state) ? 100 : 0);
  record(OutcomeOf(*r, outcome));
  return PrintJobOutcome(*r, as_json, out);
}

}  // namespace

namespace {

// systemd's watchdog interval (WATCHDOG_USEC): pinged at a third of it; none
// when the service has no watchdog, so that an idle daemon does not wake.
std::optional<std::chrono::microseconds> WatchdogPing() {
  const std::string usec = Getenv("WATCHDOG_USEC");
  if (usec.empty()) return std::nullopt;
  const long long v = std::atoll(usec.c_str());
  if (v <= 0) return std::nullopt;
  return std::chrono::microseconds(std::max<long long>(v / 3, 100'000));
}

}  // namespace

// One io_context thread (this one) owns the signals, systemd notification,
// the inbox watch (inotify) and the timers; jobs run on one worker thread,
// which posts its completion back. Idle, the thread sleeps in epoll_wait.
int CmdRun(const Config& c, bool once) {
  spdlog::info("sag-agent {} starting", SAG_VERSION);
  for (const auto& line : DescribeConfig(c)) spdlog::info("{}", line);
  boost::asio::io_context io;
  // Before anything slow: a SIGTERM during start-up stops the daemon once
  // the start is done, instead of killing it mid-write.
  boost::asio::signal_set signals(io, SIGTERM, SIGINT);
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
  Inbox inbox({.dir = InboxDir(c), .agent_uid = ::geteuid()});
  if (auto st = inbox.Prepare(); !st) {
    spdlog::critical("cannot start: {}", st.error().ToString());
    return 1;
  }
  // The inbox watch: a request is renamed into place (WriteFileAtomic) or
  // written and closed; either wakes the loop, which then scans.
  const int in_fd = ::inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
  if (in_fd < 0 || ::inotify_add_watch(in_fd, InboxDir(c).c_str(),
                                       IN_MOVED_TO | IN_CLOSE_WRITE | IN_CREATE | IN_ATTRIB) < 0) {
    spdlog::critical("cannot start: {}", MakeErrno(Errc::kIo, "inotify on the inbox").ToString());
    if (in_fd >= 0) ::close(in_fd);
    return 1;
  }
  boost::asio::posix::stream_descriptor watch(io, in_fd);
  boost::asio::steady_timer watchdog(io);
  // Every change of the daemon's state goes through the table
  // (agent/daemon_state.h); the loop thread alone fires events.
  DaemonMachine machine;
  RefreshStatus(rt, c, std::string(DaemonStateName(machine.state())));
  SdNotify("READY=1\nSTATUS=checking jobs");

  bool busy = false;
  auto stopping = [&] { return machine.state() == DaemonState::kStopping; };
  std::thread worker;
  std::function<void()> scan;
  auto run_in_worker = [&](std::function<void()> fn) {
    busy = true;
    worker = std::thread([&, fn = std::move(fn)] {
      fn();
      RefreshStatus(rt, c, std::string(DaemonStateName(DaemonState::kIdle)));
      boost::asio::post(io, [&] {
        worker.join();
        busy = false;
        machine.Fire(DaemonEvent::kWorkerDone);
        if (stopping()) {
          io.stop();
          return;
        }
        SdNotify("STATUS=idle");
        scan();
      });
    });
  };
  scan = [&] {
    if (busy || machine.state() != DaemonState::kIdle) return;
    // Local jobs (sag-agent install while the daemon runs) arrive as files.
    auto next = inbox.Next();
    if (!next) {
      spdlog::error("{}", next.error().ToString());
    } else if (*next) {
      const InboxRequest request = std::move(**next);
      const JobSpec spec = request.spec;
      spdlog::info("job {}: request for {}", spec.id, spec.source);
      SdNotify("STATUS=job " + spec.id);
      machine.Fire(DaemonEvent::kJobTaken);
      // The request is removed only once the job is answered: a power cut
      // before that must not lose it (offered again, a recorded job is
      // answered with its state, never run twice).
      run_in_worker([&rt, &inbox, spec, request] {
        json reply;
        (void)RunJob(rt, spec, Output::kNone, &reply);
        if (auto st = inbox.Reply(request.name, reply); !st) {
          spdlog::warn("job {}: {}", spec.id, st.error().ToString());
        }
        if (auto st = inbox.Remove(request); !st) {
          spdlog::warn("job {}: {}", spec.id, st.error().ToString());
        }
      });
      return;
    }
    if (once) {
      spdlog::info("nothing left to do, stopping (--once)");
      machine.Fire(DaemonEvent::kStopRequested);
      io.stop();
    }
  };

  std::function<void()> wait_inbox = [&] {
    watch.async_wait(boost::asio::posix::stream_descriptor::wait_read,
                     [&](const boost::system::error_code& e) {
                       if (e) return;
                       std::array<char, 4096> drain{};
                       while (::read(in_fd, drain.data(), drain.size()) > 0) {
                       }
                       scan();
                       wait_inbox();
                     });
  };
  wait_inbox();
  signals.async_wait([&](const boost::system::error_code& e, int sig) {
    if (e) return;
    spdlog::info("received {}, stopping", sig == SIGTERM ? "SIGTERM" : "SIGINT");
    SdNotify("STOPPING=1");
    machine.Fire(DaemonEvent::kStopRequested);
    rt.stopping = true;
    rt.device->Cancel();
    if (!busy) io.stop();  // else the worker's completion stops the loop
  });
  std::function<void()> ping;
  if (const auto every = WatchdogPing()) {
    ping = [&, every = *every] {
      SdNotify("WATCHDOG=1");
      watchdog.expires_after(every);
      watchdog.async_wait([&](const boost::system::error_code& e) {
        if (!e) ping();
      });
    };
    ping();
  }
  machine.Fire(DaemonEvent::kReady);
  // First: whatever the journal holds (a trial boot to check, a download to
  // finish); the inbox is scanned when it is done.
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
    SyncRegistry(rt);
  });
  io.run();
  if (worker.joinable()) worker.join();
  machine.Fire(DaemonEvent::kLoopEnded);
  RefreshStatus(rt, c, std::string(DaemonStateName(machine.state())));
  fs::remove(PidFile(c), ec);
  return 0;
}

namespace {

// The daemon's reply to request `id` (replies/ID.json), once it is there
// and complete: read, printed and removed. nullopt while there is none.
std::optional<int> TakeReply(const Inbox& inbox, const std::string& id, bool as_json) {
  const auto path = inbox.ReplyPath(id);
  auto text = ReadFile(path, 64U << 10U);
  if (!text) return std::nullopt;
  std::error_code ec;
  fs::remove(path, ec);
  auto doc = ParseJson(*text, "reply " + path.string(), Errc::kBadRequest);
  if (!doc) {
    std::cerr << "sag-agent: " << doc.error().ToString() << "\n";
    return 1;
  }
  JsonReader r(*doc, "reply " + path.string(), Errc::kBadRequest);
  const std::string state = r.Str("state");
  std::optional<Error> error;
  if (auto e = r.OptObj("error")) {
    const auto code = e->U64("code");
    auto message = e->Str("message", "");
    error = Error(static_cast<Errc>(code), std::move(message));
  }
  if (auto st = r.Finish(); !st) {
    std::cerr << "sag-agent: " << st.error().ToString() << "\n";
    return 1;
  }
  const bool ok = state == "Committed" || state == "Rebooting";
  if (as_json) {
    std::cout << doc->dump(2) << "\n";
  } else if (error) {
    (ok ? std::cout : std::cerr) << "job " << id << " " << state << ": " << error->ToString()
                                 << "\n";
  } else {
    std::cout << "job " << id << " " << state << "\n";
  }
  return ok ? 0 : 1;
}

}  // namespace

int CmdInstall(const Config& c, const InstallArgs& args) {
  const std::string id = args.id.empty() ? NewJobId() : args.id;
  if (auto st = CheckJobId(id); !st) {
    std::cerr << "sag-agent: --id: " << st.error().message() << "\n";
    return 2;
  }
  std::string source = args.source;
  if (!IsUrl(source)) {
    std::error_code ec;
    source = fs::absolute(source, ec).string();
  }
  if (auto pid = RunningDaemon(c)) {
    // One writer: the running daemon takes the job; we follow its progress
    // in status.json, and its reply says at once when it refused the job.
    json req = {{"id", id},
                {"source", source},
                {"allow_downgrade", args.allow_downgrade},
                {"reboot", args.reboot}};
    const Inbox inbox({.dir = InboxDir(c), .agent_uid = ::geteuid()});
    std::error_code ec;
    fs::remove(inbox.ReplyPath(id), ec);  // a stale reply to an earlier request
    if (auto st = WriteFileAtomic(inbox.RequestPath(id), req.dump(), 0600); !st) {
      std::cerr << "sag-agent: " << st.error().ToString() << "\n";
      return 1;
    }
    if (!args.json)
      std::cout << "job " << id << " handed to the running agent (pid " << *pid << ")\n";
    const StatusFile status(c.paths.runtime_dir / "status.json");
    std::string last;
    for (int i = 0; i < 20 * 60 * 30; ++i) {  // 30 minutes at most
      ::usleep(50'000);
      if (auto rc = TakeReply(inbox, id, args.json)) return *rc;
      auto s = status.Read();
      if (!s || !s->is_object() || !s->contains("job")) continue;
      JsonReader job((*s)["job"], "status.json job", Errc::kBadRequest);
      const std::string job_id = job.Str("id", "");
      const std::string state = job.Str("state", "");
      const std::uint64_t percent = job.U64("percent", 0);
      if (!job.ok() || job_id != id) continue;
      const std::string line = state + " " + std::to_string(percent) + "%";
      if (line != last && !args.json) {
        std::cout << "  " << line << "\n" << std::flush;
        last = line;
      }
      if (state == "Rebooting") {
        // The reply may never come: the reboot can stop the daemon first.
        if (!args.json) std::cout << "job " << id << " Rebooting\n";
        return 0;
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
  JobSpec spec;
  spec.id = id;
  spec.source = source;
  spec.allow_downgrade = args.allow_downgrade;
  spec.reboot = args.reboot;
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
