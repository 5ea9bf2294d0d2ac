#include "agent/agent.h"

#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/inotify.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <boost/asio/io_context.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <cstdlib>
#include <ctime>
#include <deque>
#include <filesystem>
#include <iostream>
#include <mutex>
#include <optional>
#include <random>
#include <string_view>

#include "agent/backends.h"
#include "agent/channel.h"
#include "agent/channel_host.h"
#include "agent/daemon_state.h"
#include "agent/dispatcher.h"
#include "agent/inbox.h"
#include "agent/job.h"
#include "agent/sd_notify.h"
#include "agent/status.h"
#include "common/atomic_file.h"
#include "common/json_reader.h"
#include "common/log.h"
#include "common/parse_decimal.h"
#include "common/stream_source.h"
#include "firmware/job.h"

namespace sag::agent {

namespace {

namespace fs = std::filesystem;
using nlohmann::json;

std::string Getenv(const char* name) {
  const char* v = std::getenv(name);  // NOLINT(concurrency-mt-unsafe)
  return v == nullptr ? std::string() : std::string(v);
}

// The dispatcher over the real backends.
DispatcherParts PartsOf(Backends& b, StatusWriter* status) {
  DispatcherParts parts;
  parts.registry = b.registry.get();
  parts.device = b.device.get();
  parts.dpi = b.dpi.get();
  parts.outbox = b.outbox.get();
  parts.guard = b.guard.get();
  parts.status = status;
  parts.trust = b.trust;
  parts.download = b.download;
  return parts;
}

// status.json's job when no job ran in this process: the Device journal's
// last one.
json DeviceLastJob(Backends& b) {
  auto last = b.device->installer().LastJob();
  if (!last || !*last) return nullptr;
  const EngineJob j = DeviceEngine::JobOf(**last);
  json s = {{"id", j.id},
            {"type", "Device"},
            {"version", j.to},
            {"state", j.state},
            {"percent", IsFinal(j.phase) ? 100 : 0},
            {"from_version", j.from},
            {"target_slot", j.target_slot},
            {"error", nullptr}};
  if (j.error) {
    s["error"] = {{"code", j.error->number()},
                  {"name", ErrcName(j.error->code())},
                  {"message", j.error->message()}};
  }
  return s;
}

// What status.json says about the appliance, refreshed at start and after jobs.
json RefreshStatus(Backends& b, const Dispatcher& d, StatusWriter& status, const Config& c,
                   const std::string& state) {
  json s = {{"agent_version", SAG_VERSION},
            {"smartag_id", c.identity.smartag_id},
            {"serial_number", c.identity.serial_number},
            {"model", c.identity.model},
            {"state", state},
            {"pid", ::getpid()}};
  if (auto v = b.device->CurrentVersion()) {
    s["device_version"] = *v;
  } else {
    s["device_version"] = nullptr;
  }
  if (auto v = b.dpi->CurrentVersion()) {
    s["dpi_version"] = *v;
  } else {
    s["dpi_version"] = nullptr;
  }
  if (auto booted = b.boot->BootedSlot()) {
    s["booted_slot"] = std::string(platform::SlotName(*booted));
  }
  if (auto st = b.boot->ReadState()) {
    std::string order;
    for (auto slot : st->order) {
      if (!order.empty()) order += ' ';
      order += platform::SlotName(slot);
    }
    s["boot"] = {{"order", order}, {"a_left", st->a_left}, {"b_left", st->b_left}};
  }
  // Both slots: what each holds and whether it boots (docs/status.md).
  if (auto slots = b.device->installer().Slots()) {
    json js = json::object();
    for (const auto& [slot, view] : *slots) {
      js[std::string(platform::SlotName(slot))] = {
          {"version", view.version.empty() ? json() : json(view.version)}, {"state", view.state}};
    }
    s["slots"] = std::move(js);
  } else {
    spdlog::warn("status: slots: {}", slots.error().ToString());
  }
  json job = d.LastJobStatus();
  if (job.is_null()) job = DeviceLastJob(b);
  if (!job.is_null()) s["job"] = std::move(job);
  if (b.outbox) s["outbox"] = b.outbox->Summary();
  if (auto st = status.Update(s); !st) spdlog::warn("status: {}", st.error().ToString());
  return s;
}

// What the control channel's hello says, from a status document and the
// registry, taken where the registry and engines are used (start, worker).
DeviceSnapshot SnapshotOf(const json& s, const Backends& b) {
  DeviceSnapshot snap;
  if (auto v = s.find("device_version"); v != s.end() && v->is_string()) snap.device_version = *v;
  if (auto v = s.find("dpi_version"); v != s.end() && v->is_string()) snap.dpi_version = *v;
  if (auto v = s.find("booted_slot"); v != s.end() && v->is_string()) {
    snap.boot.booted_slot = *v;
    snap.boot.slots[*v] = {snap.device_version, "good"};
  }
  if (auto slots = s.find("slots"); slots != s.end() && slots->is_object()) {
    for (const auto& item : slots->items()) {
      const json& slot = item.value();
      if (!slot.is_object()) continue;
      const auto version = slot.find("version");
      const auto state = slot.find("state");
      snap.boot.slots[item.key()] = {
          version != slot.end() && version->is_string() ? version->get<std::string>() : "",
          state != slot.end() && state->is_string() ? state->get<std::string>() : "unknown"};
    }
  }
  snap.jobs = b.registry->jobs();
  return snap;
}

// The wall clock `after` from now, as status.json writes times (UTC, whole
// seconds, rounded up: an attempt is never shown as due before it is).
std::string UtcIn(std::chrono::milliseconds after) {
  const auto at = std::chrono::system_clock::now() + after;
  const std::time_t t =
      std::chrono::system_clock::to_time_t(std::chrono::ceil<std::chrono::seconds>(at));
  std::tm tm{};
  gmtime_r(&t, &tm);
  std::array<char, 32> buf{};
  const std::size_t n = std::strftime(buf.data(), buf.size(), "%Y-%m-%dT%H:%M:%SZ", &tm);
  return {buf.data(), n};
}

// status.json's channel (docs/status.md) from the channel's own status: its
// state, since when, the last error while offline, and while a reconnect is
// scheduled, when (`next_attempt_at`) and after which backoff; null when
// online. `started`: the daemon's first attempt, the "since" of a channel that
// was never up.
json ChannelJson(const std::string& endpoint, const ChannelStatus& cs, const std::string& started,
                 std::optional<std::chrono::milliseconds> retry_in) {
  json ch = {{"state", cs.online ? "online" : "offline"},
             {"endpoint", endpoint},
             {"since", cs.since.empty() ? started : cs.since},
             {"last_error", nullptr},
             {"attempts", cs.online ? 0 : cs.failures},
             {"next_attempt_at", nullptr},
             {"backoff_ms", nullptr}};
  if (!cs.online) {
    if (cs.last_error) ch["last_error"] = cs.last_error->ToString();
    if (retry_in) {
      ch["next_attempt_at"] = UtcIn(*retry_in);
      ch["backoff_ms"] = retry_in->count();
    }
  }
  return ch;
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
  // "1234\n", as the daemon writes it; anything else names no daemon.
  std::string_view digits = *text;
  if (digits.ends_with('\n')) digits.remove_suffix(1);
  const auto parsed = ParseDecimal<pid_t>(digits);
  if (!parsed) return std::nullopt;
  const pid_t pid = *parsed;
  if (pid <= 0 || pid == ::getpid() || ::kill(pid, 0) != 0) return std::nullopt;
  return pid;
}

// `sag-agent install`'s words for an answer: the reply's fields, printed.
int PrintAnswer(const JobAnswer& a, bool as_json, std::ostream& out) {
  const json j = a.ToJson();
  if (as_json) {
    out << j.dump(2) << "\n";
  } else if (a.refused || a.outcome.error) {
    const std::string state = a.refused ? "Refused" : a.outcome.state;
    (a.ok() ? out : std::cerr) << "job " << a.outcome.id << " " << state << ": "
                               << (a.outcome.error ? a.outcome.error->ToString()
                                                   : std::string("no cause"))
                               << "\n";
  } else if (a.outcome.type == JobType::kDpi) {
    out << "job " << a.outcome.id << " " << a.outcome.state << " (DPI database " << a.outcome.to
        << " active)\n";
  } else {
    out << "job " << a.outcome.id << " " << a.outcome.state << " (version " << a.outcome.to
        << (a.target_slot.empty() ? std::string() : " in slot " + a.target_slot) << ")\n";
  }
  return a.ok() ? 0 : 1;
}

// systemd's watchdog interval (WATCHDOG_USEC): pinged at a third of it; none
// when the service has no watchdog, so that an idle daemon does not wake.
std::optional<std::chrono::microseconds> WatchdogPing() {
  const std::string usec = Getenv("WATCHDOG_USEC");
  if (usec.empty()) return std::nullopt;
  const auto v = ParseDecimal<long long>(usec);
  if (!v || *v <= 0) {
    spdlog::warn("WATCHDOG_USEC='{}' is not a count of microseconds: no watchdog pings", usec);
    return std::nullopt;
  }
  return std::chrono::microseconds(std::max<long long>(*v / 3, 100'000));
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
  auto built = BuildBackends(c);
  if (!built) {
    spdlog::critical("cannot start: {}", built.error().ToString());
    return 1;
  }
  Backends& b = **built;
  StatusWriter status(c.paths.runtime_dir / "status.json");
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
  // Replies come on the worker (no `post`): the daemon writes the inbox's
  // reply and status.json there, then posts its own completion to the loop,
  // which never waits for the disk.
  Dispatcher dispatcher(PartsOf(b, &status));
  // Every change of the daemon's state goes through the table
  // (agent/daemon_state.h); the loop thread alone fires events.
  DaemonMachine machine;
  const json first_status =
      RefreshStatus(b, dispatcher, status, c, std::string(DaemonStateName(machine.state())));
  SdNotify("READY=1\nSTATUS=checking jobs");

  // The control channel (docs/protocol.md), when cloud.endpoint is set: its
  // jobs queue here and go to the same dispatcher as the inbox's, first.
  std::unique_ptr<DaemonChannelHost> host;
  std::unique_ptr<Channel> channel;
  struct CloudJob {
    JobSpec spec;
    std::function<void(const JobAnswer&)> reply;
  };
  std::deque<CloudJob> cloud_jobs;
  std::function<void()> scan;
  const std::string channel_started = firmware::NowUtc();
  // `run --once` (a one-shot pass over what is local) keeps no channel,
  // unless a trial boot's health check needs the cloud to answer its hello;
  // it then takes no job from the cloud (the cloud offers it again).
  if (!c.cloud.endpoint.empty() && (!once || b.hello_gate)) {
    DaemonChannelHost::Hooks hooks;
    hooks.submit = [&](JobSpec spec, std::function<void(const JobAnswer&)> reply) {
      if (once) {
        spdlog::info("job {}: from the cloud, left for the daemon (run --once)", spec.id);
        return;
      }
      if (cloud_jobs.size() >= Dispatcher::kMaxQueued) {
        JobAnswer busy;
        busy.outcome.id = spec.id;
        busy.refused = true;
        busy.outcome.error =
            Error(Errc::kJobConflict, "the agent has " + std::to_string(cloud_jobs.size()) +
                                          " jobs waiting; offer it again later");
        reply(busy);
        return;
      }
      cloud_jobs.push_back({std::move(spec), std::move(reply)});
      scan();
    };
    // A cancel (docs/protocol.md): a job still in this queue ends at once
    // (its job.ack says Failed/Cancelled); else the dispatcher decides (the
    // running job before its point of no return).
    hooks.cancel = [&](const std::string& job_id) {
      const auto it = std::find_if(cloud_jobs.begin(), cloud_jobs.end(),
                                   [&](const CloudJob& j) { return j.spec.id == job_id; });
      if (it == cloud_jobs.end()) return dispatcher.CancelJob(job_id);
      JobAnswer ended;
      CancelAnswer a = dispatcher.CancelWaiting(it->spec, &ended);
      if (a.accepted) {
        auto reply = std::move(it->reply);
        cloud_jobs.erase(it);
        boost::asio::post(io,
                          [reply = std::move(reply), ended = std::move(ended)] { reply(ended); });
      }
      return a;
    };
    hooks.agent_state = [&] { return std::string(DaemonStateName(machine.state())); };
    hooks.on_change = [&](bool online) {
      // The channel is set by then; offline, the reconnect that follows
      // posts when it is due.
      if (!channel) return;
      ChannelStatus cs = channel->status();
      cs.online = online;
      status.Post({{"channel", ChannelJson(c.cloud.endpoint, cs, channel_started, std::nullopt)}});
    };
    hooks.on_retry = [&](std::chrono::milliseconds delay, const ChannelStatus& cs) {
      status.Post({{"channel", ChannelJson(c.cloud.endpoint, cs, channel_started, delay)}});
    };
    host = std::make_unique<DaemonChannelHost>(c, *b.outbox, std::move(hooks));
    host->SetSnapshot(SnapshotOf(first_status, b));
    ChannelOptions co;
    co.endpoint = c.cloud.endpoint;
    co.root_ca = c.pki.root_ca;
    co.device_cert = c.pki.device_cert;
    co.device_key = c.pki.device_key;
    co.connect_timeout = c.cloud.connect_timeout;
    co.heartbeat = c.cloud.heartbeat;
    co.max_backoff = c.cloud.max_backoff;
    co.hello_gate = b.hello_gate.get();
    channel = std::make_unique<Channel>(io, co, *host);
    // A report appended (on the worker or the install's threads) wakes the
    // channel on the loop.
    b.outbox->SetOnAppend([&] {
      boost::asio::post(io, [&] {
        if (channel) channel->ReportsAvailable();
      });
    });
    status.Post({{"channel",
                  {{"state", "connecting"},
                   {"endpoint", c.cloud.endpoint},
                   {"since", channel_started},
                   {"last_error", nullptr},
                   {"attempts", 0},
                   {"next_attempt_at", nullptr},
                   {"backoff_ms", nullptr}}}});
  } else {
    status.Post({{"channel", {{"state", "disabled"}}}});
  }
  // On the worker: the snapshot hello reports, and a "device" report in the
  // outbox when what runs changed (once per start, then after a job that
  // changed it): the cloud learns the versions in order with the results.
  std::string reported_versions;
  auto snapshot = [&](const json& s) {
    if (!host) return;
    DeviceSnapshot snap = SnapshotOf(s, b);
    const std::string versions =
        snap.device_version + "\n" + snap.dpi_version + "\n" + snap.boot.booted_slot;
    if (versions != reported_versions) {
      reported_versions = versions;
      if (auto seq = b.outbox->Append("device", "",
                                      {{"device_version", snap.device_version},
                                       {"dpi_version", snap.dpi_version},
                                       {"booted_slot", snap.boot.booted_slot},
                                       {"agent_state", "idle"}});
          !seq) {
        spdlog::error("the device report is not in the outbox: {}", seq.error().ToString());
      }
    }
    host->SetSnapshot(std::move(snap));
  };

  auto stopping = [&] { return machine.state() == DaemonState::kStopping; };
  // The loop's own view: a job or the recovery was handed to the worker and
  // its completion has not come back to the loop yet. (Not
  // dispatcher.busy(): the completion is posted from inside the worker's
  // task, so the loop may run it before the worker counts the task done.)
  bool in_flight = false;
  // On the worker, when a job or the recovery is done.
  auto worker_done = [&] {
    snapshot(
        RefreshStatus(b, dispatcher, status, c, std::string(DaemonStateName(DaemonState::kIdle))));
    boost::asio::post(io, [&] {
      in_flight = false;
      machine.Fire(DaemonEvent::kWorkerDone);
      if (stopping()) {
        io.stop();
        return;
      }
      SdNotify("STATUS=idle");
      scan();
    });
  };
  scan = [&] {
    if (in_flight || machine.state() != DaemonState::kIdle) return;
    if (!cloud_jobs.empty()) {
      CloudJob job = std::move(cloud_jobs.front());
      cloud_jobs.pop_front();
      spdlog::info("job {}: from the cloud for {}", job.spec.id, job.spec.source);
      SdNotify("STATUS=job " + job.spec.id);
      machine.Fire(DaemonEvent::kJobTaken);
      in_flight = true;
      dispatcher.Submit(job.spec, [&, reply = std::move(job.reply)](const JobAnswer& answer) {
        // The job.ack goes out on the loop.
        boost::asio::post(io, [reply, answer] { reply(answer); });
        worker_done();
      });
      return;
    }
    // Local jobs (sag-agent install while the daemon runs) arrive as files.
    auto next = inbox.Next();
    if (!next) {
      spdlog::error("{}", next.error().ToString());
    } else if (*next) {
      const InboxRequest request = std::move(**next);
      spdlog::info("job {}: request for {}", request.spec.id, request.spec.source);
      SdNotify("STATUS=job " + request.spec.id);
      machine.Fire(DaemonEvent::kJobTaken);
      in_flight = true;
      // The request is removed only once the job is answered: a power cut
      // before that must not lose it (offered again, a recorded job is
      // answered with its state, never run twice).
      dispatcher.Submit(request.spec, [&, request](const JobAnswer& answer) {
        if (auto st = inbox.Reply(request.name, answer.ToJson()); !st) {
          spdlog::warn("job {}: {}", request.spec.id, st.error().ToString());
        }
        if (auto st = inbox.Remove(request); !st) {
          spdlog::warn("job {}: {}", request.spec.id, st.error().ToString());
        }
        worker_done();
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
    dispatcher.Cancel();
    if (channel) channel->Stop();
    if (!in_flight) io.stop();  // else the worker's completion stops the loop
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
  // The channel is started (it connects once the loop runs) before the
  // recovery, whose trial-boot health check may wait for its hello.ack.
  if (channel) {
    if (auto st = channel->Start(); !st) {
      // A configuration problem (bad endpoint, unusable certificate): the
      // daemon goes on serving the inbox and says why the channel is down.
      spdlog::error("control channel: {}", st.error().ToString());
      if (b.hello_gate) b.hello_gate->Abandon(st.error());
      // No attempt is scheduled: it takes a new configuration.
      status.Post({{"channel",
                    {{"state", "offline"},
                     {"endpoint", c.cloud.endpoint},
                     {"since", channel_started},
                     {"last_error", st.error().ToString()},
                     {"attempts", 0},
                     {"next_attempt_at", nullptr},
                     {"backoff_ms", nullptr}}}});
      channel.reset();
    }
  }
  // First: whatever the journals hold (a trial boot to check, a download to
  // finish, a job that keeps crashing the agent); the inbox is scanned when
  // it is done.
  in_flight = true;
  dispatcher.Recover(worker_done);
  io.run();
  // The loop's own waits end; the channel closes (WebSocket close, TLS
  // close_notify) and its handlers finish, bounded by its close timeout.
  boost::system::error_code ignored;
  watch.cancel(ignored);
  signals.cancel(ignored);
  watchdog.cancel();
  if (channel) {
    channel->Stop();
    io.restart();
    io.run_for(std::chrono::seconds(3));
  }
  // Stopped: a job still running stops at its next checkpoint (Cancel) and
  // resumes at the next start; the worker is joined before the objects it
  // uses go away.
  dispatcher.Cancel();
  dispatcher.WaitIdle();
  b.outbox->SetOnAppend(nullptr);
  machine.Fire(DaemonEvent::kLoopEnded);
  RefreshStatus(b, dispatcher, status, c, std::string(DaemonStateName(machine.state())));
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
  auto built = BuildBackends(c);
  if (!built) {
    std::cerr << "sag-agent: " << built.error().ToString() << "\n";
    return 1;
  }
  Backends& b = **built;
  StatusWriter status(c.paths.runtime_dir / "status.json");
  JobSpec spec;
  spec.id = id;
  spec.source = source;
  spec.allow_downgrade = args.allow_downgrade;
  spec.reboot = args.reboot;
  Dispatcher dispatcher(PartsOf(b, &status));
  const JobAnswer answer = dispatcher.Run(spec);
  const int rc = PrintAnswer(answer, args.json, std::cout);
  RefreshStatus(b, dispatcher, status, c, "idle");
  return rc;
}

int CmdStatus(const Config& c, StatusOptions options) {
  if (options.file.empty()) options.file = c.paths.runtime_dir / "status.json";
  return RunStatusCommand(options, std::cout, std::cerr);
}

namespace {

// Builds the backends and runs one manual action on the Device installer.
int ManualAction(const Config& c, Status (firmware::DeviceInstaller::*action)(), const char* done) {
  auto built = BuildBackends(c);
  if (!built) {
    std::cerr << "sag-agent: " << built.error().ToString() << "\n";
    return 1;
  }
  if (auto st = ((*built)->device->installer().*action)(); !st) {
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
