// sag-sim: plays bootloader and power supply around a real sag-agent.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <map>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "common/atomic_file.h"
#include "common/unique_fd.h"
#include "platform/boot_env.h"
#include "platform/bootloader.h"
#include "platform/env_boot_control.h"
#include "platform/file_slot_device.h"
#include "platform/linux_rebooter.h"
#include "platform/linux_system_info.h"
#include "tools/sim/appliance.h"
#include "tools/sim/powerloss.h"

namespace {

using sag::Errc;
using sag::Error;
using sag::Expected;
using sag::Status;
using sag::platform::Slot;
using sag::sim::Appliance;
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

constexpr const char* kUsage = R"(usage: sag-sim COMMAND DIR [OPTIONS]

The device simulator: one directory is one appliance (slots A and B as files,
a redundant U-Boot environment, the kernel command line, a boot id).

commands:
  init DIR --slot-size BYTES [--model M] [--serial S] [--smartag-id ID]
           [--endpoint wss://..] [--root-ca PEM] [--slot-a FILE] [--version V]
           [--dpi-engine PATH]
      create the appliance; slot A holds FILE (optional) of version V
      (default 1.0.0, its os-release VERSION_ID), BOOT_ORDER="A B",
      DPI hooks on the fake engine PATH when --dpi-engine PATH is given,
      the device channel to --endpoint when given (none otherwise),
      BOOT_A_LEFT=3, BOOT_B_LEFT=0
  boot DIR [--agent PATH] [--max-boots N] [--cut-after-ms MS | --cut-random MAXMS [--cut-min MS]]
           [--seed S] [--cuts K] [--cut-from start|ready] [--powerloss BIN [--torn 1]]
           [-- AGENT ARGS...]
      power on: run the boot script (platform/bootloader/boot.cmd), write the
      command line and a new boot id, start the agent (default: sag-agent run
      --config DIR/agent.yaml); reboot when it asks to (marker
      run/reboot-requested), stop when it exits without asking. A power cut
      SIGKILLs the agent after MS (or a random time below MAXMS, at least
      --cut-min MS, default 0) on each of
      the first K boots that start it (default 1), then powers on again.
      --cut-from ready counts the time from when the agent's pid file
      (run/agent.pid) names it, not from its start: a slow start (a loaded
      machine, a sanitizer build) then still runs the agent for MS.
      --powerloss BIN (sag-powerloss): the appliance's storage (slots, state/,
      run/, the environment) runs on a medium with a volatile write cache,
      mounted over DIR for the run: a cut loses what was not made durable by
      fsync (data) or a directory fsync (creates, renames, unlinks); --torn 1
      also tears the write in flight at a sector boundary. The bootloader's
      writes and a requested reboot sync; when the agent exits the device is
      powered off the same way (a last cut). Prints what each cut lost and
      the totals ("[sim] medium totals: ...").
  env DIR [NAME=VALUE|NAME= ...]
      print the environment; with arguments, set (or unset) raw variables the
      way fw_setenv does
  fault DIR --slot A|B unhealthy|unbootable|none
      unhealthy: the health check fails on that slot; unbootable: its kernel
      never comes up (the try is counted, the board resets)
  cut-env DIR [--trials N] [--seed S] [--max-us US] [--backend uboot|grub]
          [--powerloss BIN]
      power cuts during environment writes: SIGKILL a writer process at random
      instants, on half the trials also garble the newest U-Boot copy from a
      random byte on (a write cut mid-way); each time the environment must
      read back valid with a bootable slot, and (unless garbled) hold the
      last transition the writer saw return, or the one in flight.
      grub: the same on DIR/grubenv.
      --powerloss BIN: DIR on sag-powerloss, and every kill is followed by a
      cut of the medium that tears the write in flight

exit status: 0 success, 1 failure, 2 bad usage.
)";

void Say(const std::string& line) {
  std::fputs(("[sim] " + line + "\n").c_str(), stdout);
  std::fflush(stdout);
}

int Fail(const Error& e) {
  std::fprintf(stderr, "sag-sim: %s\n", e.ToString().c_str());
  return 1;
}

int Usage(const std::string& problem) {
  std::cerr << "sag-sim: " << problem << " (sag-sim --help for usage)\n";
  return 2;
}

// Options as "--name value" pairs after the directory; "--" ends them.
struct Args {
  std::map<std::string, std::string> opts;
  std::vector<std::string> positional;
  std::vector<std::string> rest;  // after --
  bool has_rest = false;
};

Expected<Args> ParseArgs(const std::vector<std::string>& args, const std::set<std::string>& known) {
  Args out;
  for (std::size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "--") {
      out.has_rest = true;
      out.rest.assign(args.begin() + static_cast<std::ptrdiff_t>(i) + 1, args.end());
      break;
    }
    if (a.starts_with("--")) {
      const std::string name = a.substr(2);
      if (known.count(name) == 0) return Error(Errc::kInvalidArgument, "unknown option " + a);
      if (i + 1 >= args.size()) return Error(Errc::kInvalidArgument, a + " needs a value");
      out.opts[name] = args[++i];
    } else {
      out.positional.push_back(a);
    }
  }
  return out;
}

Expected<std::uint64_t> Number(const Args& a, const std::string& name, std::uint64_t def) {
  const auto it = a.opts.find(name);
  if (it == a.opts.end()) return def;
  try {
    std::size_t used = 0;
    const auto v = std::stoull(it->second, &used);
    if (used != it->second.size()) throw std::invalid_argument(it->second);
    return static_cast<std::uint64_t>(v);
  } catch (const std::exception&) {
    return Error(Errc::kInvalidArgument, "--" + name + " needs a number, got '" + it->second + "'");
  }
}

std::string Get(const Args& a, const std::string& name, const std::string& def = {}) {
  const auto it = a.opts.find(name);
  return it == a.opts.end() ? def : it->second;
}

std::string Var(const sag::platform::EnvVars& env, const char* name) {
  const auto it = env.find(name);
  return it == env.end() ? "<unset>" : it->second;
}

std::string Describe(const sag::platform::EnvVars& env) {
  return "BOOT_ORDER=\"" + Var(env, sag::platform::kVarOrder) +
         "\" A_LEFT=" + Var(env, sag::platform::kVarALeft) +
         " B_LEFT=" + Var(env, sag::platform::kVarBLeft);
}

fs::path SelfExe() { return fs::read_symlink("/proc/self/exe"); }

// --- init -------------------------------------------------------------------

Expected<int> CmdInit(const Args& a) {
  if (a.positional.size() != 1) return Error(Errc::kInvalidArgument, "init needs exactly one DIR");
  sag::sim::InitOptions o;
  SAG_TRY(o.slot_size, Number(a, "slot-size", 0));
  if (o.slot_size == 0) return Error(Errc::kInvalidArgument, "init needs --slot-size BYTES (> 0)");
  o.model = Get(a, "model", o.model);
  o.serial = Get(a, "serial", o.serial);
  o.smartag_id = Get(a, "smartag-id");
  o.endpoint = Get(a, "endpoint", o.endpoint);
  o.root_ca = Get(a, "root-ca");
  o.slot_a = Get(a, "slot-a");
  o.version = Get(a, "version", o.version);
  o.dpi_engine = Get(a, "dpi-engine");
  Appliance app(a.positional[0]);
  SAG_TRY_STATUS(app.Init(o));
  Say("created appliance " + app.dir().string() + ": slots of " + std::to_string(o.slot_size) +
      " bytes, model " + o.model + ", serial " + o.serial +
      ", BOOT_ORDER=\"A B\" A_LEFT=3 B_LEFT=0");
  return 0;
}

// --- env and fault ----------------------------------------------------------

Expected<int> CmdEnv(const Args& a) {
  if (a.positional.empty()) return Error(Errc::kInvalidArgument, "env needs DIR");
  Appliance app(a.positional[0]);
  SAG_TRY_STATUS(app.Load());
  sag::platform::UBootEnv env(app.Path("fw_env.config"));
  if (a.positional.size() > 1) {
    sag::platform::EnvVars set;
    sag::platform::EnvVars unset;
    for (std::size_t i = 1; i < a.positional.size(); ++i) {
      const auto& kv = a.positional[i];
      const auto eq = kv.find('=');
      if (eq == std::string::npos || eq == 0) {
        return Error(Errc::kInvalidArgument, "expected NAME=VALUE, got '" + kv + "'");
      }
      set[kv.substr(0, eq)] = kv.substr(eq + 1);
    }
    SAG_TRY(auto vars, env.Load());
    for (const auto& [n, v] : set) {
      if (v.empty()) {
        vars.erase(n);
      } else {
        vars[n] = v;
      }
    }
    SAG_TRY_STATUS(env.Format(vars));
  }
  SAG_TRY(const auto vars, env.Load());
  for (const auto& [n, v] : vars) std::printf("%s=%s\n", n.c_str(), v.c_str());
  auto state = sag::platform::ParseBootVars(vars, env.name());
  if (!state) {
    std::printf("# the agent would refuse this environment: %s\n", state.error().message().c_str());
  } else if (auto next = state->NextBoot()) {
    std::printf("# next boot: slot %s\n", std::string(sag::platform::SlotName(*next)).c_str());
  } else {
    std::printf("# next boot: no slot has tries left (the script resets both to 3)\n");
  }
  return 0;
}

Expected<int> CmdFault(const Args& a) {
  if (a.positional.size() != 2) {
    return Error(Errc::kInvalidArgument, "fault needs DIR and unhealthy|unbootable|none");
  }
  Appliance app(a.positional[0]);
  SAG_TRY_STATUS(app.Load());
  SAG_TRY(const Slot slot, sag::platform::ParseSlot(Get(a, "slot")));
  const std::string kind = a.positional[1];
  if (kind != "unhealthy" && kind != "unbootable" && kind != "none") {
    return Error(Errc::kInvalidArgument, "unknown fault '" + kind + "': unhealthy|unbootable|none");
  }
  std::error_code ec;
  fs::remove(app.FaultPath(slot, "unhealthy"), ec);
  fs::remove(app.FaultPath(slot, "unbootable"), ec);
  if (kind != "none") SAG_TRY_STATUS(sag::WriteFileAtomic(app.FaultPath(slot, kind), kind + "\n"));
  Say("slot " + std::string(sag::platform::SlotName(slot)) + ": fault " + kind);
  return 0;
}

// --- boot -------------------------------------------------------------------

std::string NewBootId() {
  auto id = sag::ReadFile("/proc/sys/kernel/random/uuid", 64);
  std::string s = id ? *id : "00000000-0000-4000-8000-000000000000\n";
  return s;
}

fs::path DefaultAgent() {
  const fs::path self = SelfExe().parent_path();
  std::error_code ec;
  for (const fs::path& p : {self / "sag-agent", self / ".." / ".." / "agent" / "sag-agent"}) {
    if (fs::exists(p, ec)) return fs::weakly_canonical(p, ec);
  }
  return "sag-agent";  // PATH
}

// fork + exec in its own process group; -1 on failure.
pid_t Spawn(const std::vector<std::string>& argv, const std::vector<std::string>& env_add) {
  std::vector<std::string> env_storage;
  for (char** e = environ; *e != nullptr; ++e) env_storage.emplace_back(*e);
  env_storage.insert(env_storage.end(), env_add.begin(), env_add.end());
  std::vector<char*> args;
  args.reserve(argv.size() + 1);
  for (const auto& s : argv) args.push_back(const_cast<char*>(s.c_str()));
  args.push_back(nullptr);
  std::vector<char*> envp;
  envp.reserve(env_storage.size() + 1);
  for (auto& s : env_storage) envp.push_back(s.data());
  envp.push_back(nullptr);
  std::fflush(stdout);
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::setpgid(0, 0);
    (void)::close_range(3, ~0U, 0);  // the agent starts as systemd starts it: 0-2 only
    ::execvpe(args[0], args.data(), envp.data());
    std::fprintf(stderr, "sag-sim: cannot start %s\n", args[0]);
    ::_exit(127);
  }
  if (pid > 0) ::setpgid(pid, pid);
  return pid;
}

std::string ExitText(int status) {
  if (WIFEXITED(status)) return "exit status " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return "signal " + std::to_string(WTERMSIG(status));
  return "status " + std::to_string(status);
}

// Power goes away for every program of the appliance, not only for the
// agent's process group: its hooks run in groups of their own (a DPI engine
// reload, a health check) and would live on, holding the medium. The
// simulator is their subreaper (PR_SET_CHILD_SUBREAPER at boot), so once the
// agent is gone they are its children: all of them but `keep` (the medium's
// server) are killed and reaped, as long as new orphans appear (bounded).
void KillStrays(pid_t keep) {
  for (int round = 0; round < 50; ++round) {
    std::vector<pid_t> strays;
    std::error_code ec;
    for (const auto& e : fs::directory_iterator("/proc", ec)) {
      const std::string name = e.path().filename().string();
      if (name.empty() || name.find_first_not_of("0123456789") != std::string::npos) continue;
      std::ifstream in(e.path() / "stat");
      std::string stat;
      std::getline(in, stat);
      // pid (comm) state ppid ...: comm may hold spaces, it ends at the last ')'.
      const auto close = stat.rfind(')');
      if (close == std::string::npos) continue;
      std::istringstream rest(stat.substr(close + 1));
      std::string state;
      pid_t ppid = 0;
      if (!(rest >> state >> ppid) || ppid != ::getpid()) continue;
      const auto pid = static_cast<pid_t>(std::stol(name));
      if (pid != keep) strays.push_back(pid);
    }
    if (strays.empty()) return;
    for (const pid_t p : strays) ::kill(p, SIGKILL);
    for (const pid_t p : strays) ::waitpid(p, nullptr, 0);
  }
}

Expected<int> CmdBoot(const Args& a) {
  if (a.positional.size() != 1) return Error(Errc::kInvalidArgument, "boot needs exactly one DIR");
  Appliance app(a.positional[0]);
  SAG_TRY_STATUS(app.Load());
  SAG_TRY(const auto max_boots, Number(a, "max-boots", 10));
  SAG_TRY(const auto cut_after, Number(a, "cut-after-ms", 0));
  SAG_TRY(const auto cut_random, Number(a, "cut-random", 0));
  SAG_TRY(const auto cut_min, Number(a, "cut-min", 0));
  if (a.opts.count("cut-min") != 0 && cut_min >= cut_random) {
    return Error(Errc::kInvalidArgument, "--cut-min must be below --cut-random (a time window)");
  }
  SAG_TRY(const auto seed, Number(a, "seed", 1));
  SAG_TRY(std::uint64_t cuts_left, Number(a, "cuts", 1));
  if (a.opts.count("cut-after-ms") != 0 && a.opts.count("cut-random") != 0) {
    return Error(Errc::kInvalidArgument, "give --cut-after-ms or --cut-random, not both");
  }
  const bool cutting = a.opts.count("cut-after-ms") != 0 || cut_random > 0;
  if (!cutting) cuts_left = 0;
  const std::string cut_from = a.opts.count("cut-from") != 0 ? a.opts.at("cut-from") : "start";
  if (cut_from != "start" && cut_from != "ready") {
    return Error(Errc::kInvalidArgument, "--cut-from is start or ready, not '" + cut_from + "'");
  }
  std::mt19937_64 rng(seed);

  // The hardware must be what the simulator created: same slot sizes.
  for (const Slot s : {Slot::kA, Slot::kB}) {
    SAG_TRY(auto dev, sag::platform::OpenSlotDevice(sag::platform::SlotName(s), app.SlotPath(s),
                                                    app.slot_size()));
  }
  ::prctl(PR_SET_CHILD_SUBREAPER, 1);  // the agent's orphans: see KillStrays
  std::unique_ptr<sag::sim::PowerLossMedium> medium;
  std::vector<std::string> agent_env;  // added to the agent's environment
  if (a.opts.count("powerloss") != 0) {
    SAG_TRY(const auto torn, Number(a, "torn", 0));
    SAG_TRY(medium,
            sag::sim::PowerLossMedium::Mount(Get(a, "powerloss"), app.dir(), torn != 0, seed));
    Say("storage on " + Get(a, "powerloss") + ": a cut loses unsynced data and directory entries" +
        (torn != 0 ? ", tears writes" : ""));
    // syncfs(2) does not reach a FUSE server: the shim built next to
    // sag-powerloss forwards it to the medium as a `sync`, as a disk keeps
    // what syncfs flushed (the DPI staging's one sync; docs/power-loss.md).
    const fs::path shim = fs::path(Get(a, "powerloss")).parent_path() / "sag-powerloss-syncfs.so";
    std::error_code ec;
    if (fs::exists(shim, ec)) {
      const char* asan = std::getenv("ASAN_OPTIONS");
      agent_env = {"LD_PRELOAD=" + fs::absolute(shim).string(),
                   "SAG_POWERLOSS_CONTROL=" + fs::absolute(app.dir() / ".sag-powerloss").string(),
                   // A sanitized agent: its runtime no longer comes first.
                   std::string("ASAN_OPTIONS=") + (asan != nullptr ? asan : "") +
                       (asan != nullptr && *asan != '\0' ? ":" : "") + "verify_asan_link_order=0"};
    } else {
      Say("no " + shim.string() + ": a syncfs(2) does not reach the medium");
    }
  }
  const auto power_off = [&medium](const std::string& why) -> Status {
    if (!medium) return sag::Ok();
    SAG_TRY(const auto figures, medium->Cut());
    Say("medium after " + why + ": " + figures);
    return sag::Ok();
  };
  const auto totals = [&medium] {
    if (!medium) return;
    const auto& f = medium->figures();
    Say("medium totals: cuts=" + std::to_string(f.cuts) +
        " bytes_lost=" + std::to_string(f.bytes_lost) +
        " entries_lost=" + std::to_string(f.entries_lost) + " torn=" + std::to_string(f.torn));
  };
  const fs::path agent = a.opts.count("agent") != 0 ? fs::path(Get(a, "agent")) : DefaultAgent();
  std::vector<std::string> argv{agent.string()};
  if (a.has_rest) {
    argv.insert(argv.end(), a.rest.begin(), a.rest.end());
  } else {
    argv.insert(argv.end(), {"run", "--config", app.Path("agent.yaml").string()});
  }
  sag::platform::UBootEnv env(app.Path("fw_env.config"));
  const fs::path flag = app.Path("run/reboot-requested");

  for (std::uint64_t n = 1; n <= max_boots; ++n) {
    const std::string head = "boot #" + std::to_string(n) + ": ";
    // The bootloader: read the environment (U-Boot uses its built-in default
    // when no copy is valid), run the script, saveenv.
    auto loaded = env.Load();
    sag::platform::EnvVars before;
    if (loaded) {
      before = *loaded;
    } else {
      Say(head + "no valid environment (" + loaded.error().message() +
          "): U-Boot continues with its default environment");
    }
    sag::platform::BootStep step = sag::platform::RunBootScript(before);
    auto saved =
        loaded ? env.Update([&](const sag::platform::EnvVars&) -> Expected<sag::platform::EnvVars> {
          return step.env;
        })
               : env.Format(step.env);
    if (!saved) return saved.error().WithContext("bootloader saveenv");
    if (!step.slot) {
      Say(head + Describe(before) + " -> no slot has tries left: A_LEFT=3 B_LEFT=3, board reset");
      continue;
    }
    const Slot slot = *step.slot;
    const std::string name(sag::platform::SlotName(slot));
    const std::string left = Var(step.env, std::string(sag::platform::LeftVar(slot)).c_str());
    std::string line = head + Describe(before);
    line.append(" -> slot ").append(name).append(step.fallback ? " (fallback)" : "");
    line.append(", ").append(left).append(" tries left");
    Say(line);
    std::error_code ec;
    if (fs::exists(app.FaultPath(slot, "unbootable"), ec)) {
      Say("boot #" + std::to_string(n) + ": kernel of slot " + name +
          " does not come up (fault unbootable); watchdog reset");
      continue;
    }
    SAG_TRY_STATUS(sag::WriteFileAtomic(
        app.Path("cmdline"),
        "console=ttyS0 root=" + app.SlotPath(slot).string() + " rootwait sag.slot=" + name + "\n"));
    SAG_TRY_STATUS(sag::WriteFileAtomic(app.Path("boot_id"), NewBootId()));
    fs::remove(flag, ec);
    if (medium) SAG_TRY_STATUS(medium->Sync());  // U-Boot writes the flash directly

    // sag-agent reads both paths from its configuration (`simulator:`,
    // written by `sag-sim init`); the environment tells them to other
    // programs booted in its place (test scripts).
    std::vector<std::string> env_add{
        std::string("SAG_SIM_REBOOT_FLAG=") + flag.string(),
        std::string("SAG_SIM_BOOT_ID_FILE=") + app.Path("boot_id").string(),
        "SAG_SIM_DIR=" + app.dir().string(),
        "SAG_SIM_SLOT=" + name,
        "SAG_SIM_BOOT=" + std::to_string(n),
        "SAG_SIM_CONFIG=" + app.Path("agent.yaml").string()};
    env_add.insert(env_add.end(), agent_env.begin(), agent_env.end());
    const pid_t pid = Spawn(argv, env_add);
    if (pid < 0) return sag::MakeErrno(Errc::kIo, "fork for " + argv[0]);
    std::optional<std::chrono::milliseconds> cut_in;
    if (cuts_left > 0) {
      cut_in =
          std::chrono::milliseconds(cut_random > 0 ? std::uniform_int_distribution<std::uint64_t>(
                                                         cut_min, cut_random - 1)(rng)
                                                   : cut_after);
      --cuts_left;
    }
    auto started = Clock::now();
    // --cut-from ready: the clock starts when run/agent.pid names this agent
    // (bounded: after 60 s without it, the cut counts from then).
    bool ready = cut_from == "start";
    const auto spawned = started;
    const std::string own_pid = std::to_string(pid) + "\n";
    int status = 0;
    bool cut = false;
    for (;;) {
      const pid_t w = ::waitpid(pid, &status, WNOHANG);
      if (w == pid) break;
      if (w < 0 && errno != EINTR) return sag::MakeErrno(Errc::kIo, "waitpid for the agent");
      if (cut_in && !ready) {
        auto text = sag::ReadFile(app.Path("run/agent.pid"), 64);
        ready = (text && *text == own_pid) || Clock::now() - spawned >= std::chrono::seconds(60);
        if (ready) started = Clock::now();
      }
      if (cut_in && ready && Clock::now() - started >= *cut_in) {
        ::kill(-pid, SIGKILL);
        while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
        }
        cut = true;
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    if (cut) {
      const auto ms =
          std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - started).count();
      Say("power cut " + std::to_string(ms) + " ms after slot " + name +
          (cut_from == "ready" ? " was ready" : " started") + " (agent killed with SIGKILL)");
      ::kill(-pid, SIGKILL);  // anything the agent left behind in its group
      KillStrays(medium ? medium->pid() : 0);
      SAG_TRY_STATUS(power_off("the cut"));
      continue;
    }
    ::kill(-pid, SIGKILL);  // power goes away for the agent's children too
    KillStrays(medium ? medium->pid() : 0);
    if (fs::exists(flag, ec)) {
      Say("agent asked for a reboot (" + ExitText(status) + ")");
      continue;
    }
    Say("agent exited (" + ExitText(status) +
        ") without asking for a reboot; the simulated "
        "device stops here");
    SAG_TRY_STATUS(power_off("power-off"));
    totals();
    return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : 1;
  }
  Say("stopping after " + std::to_string(max_boots) + " boots (--max-boots)");
  SAG_TRY_STATUS(power_off("power-off"));
  totals();
  return 0;
}

// --- power cuts during environment writes -----------------------------------

Expected<std::unique_ptr<sag::platform::BootEnv>> OpenEnv(const Appliance& app,
                                                          const std::string& backend) {
  if (backend == "uboot") {
    return std::unique_ptr<sag::platform::BootEnv>(
        std::make_unique<sag::platform::UBootEnv>(app.Path("fw_env.config")));
  }
  if (backend == "grub") {
    return std::unique_ptr<sag::platform::BootEnv>(
        std::make_unique<sag::platform::GrubEnv>(app.Path("grubenv")));
  }
  return Error(Errc::kInvalidArgument, "--backend must be uboot or grub, got '" + backend + "'");
}

// Temporary files a killed atomic write of the GRUB block left behind.
int StaleTemps(const Appliance& app) {
  int n = 0;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(app.dir(), ec)) {
    if (e.path().filename().string().starts_with(".grubenv.tmp")) ++n;
  }
  return n;
}

// The writer's transitions: the j-th (from 0) of its endless sequence, on
// the control or as the state it leads to (what cut-env expects to find).
struct WriterStep {
  enum Kind { kMarkGood, kSetTrial, kMarkBad } kind;
  Slot slot;
  int attempts;
};

WriterStep WriterStepAt(std::uint64_t j) {
  const int n = static_cast<int>(1 + (j / 5) % 9);
  switch (j % 5) {
    case 0:
      return {WriterStep::kMarkGood, Slot::kA, n};
    case 1:
      return {WriterStep::kSetTrial, Slot::kB, 1 + (n % 9)};
    case 2:
      return {WriterStep::kMarkGood, Slot::kB, n};
    case 3:
      return {WriterStep::kMarkBad, Slot::kA, 0};
    default:
      return {WriterStep::kSetTrial, Slot::kA, n};
  }
}

Expected<sag::platform::BootState> StateAfter(const sag::platform::BootState& s, std::uint64_t j) {
  const WriterStep w = WriterStepAt(j);
  switch (w.kind) {
    case WriterStep::kMarkGood:
      return sag::platform::StateAfterMarkGood(s, w.slot, w.attempts);
    case WriterStep::kSetTrial:
      return sag::platform::StateAfterSetTrial(s, w.slot, w.attempts);
    default:
      return sag::platform::StateAfterMarkBad(s, w.slot);
  }
}

// The writer: the transitions above in a loop, as fast as it can, until
// killed. It writes one byte to stdout after each one returned (so the parent
// knows it got past start-up, and which writes it must find after a cut).
Expected<int> CmdEnvWriter(const Args& a) {
  if (a.positional.size() != 1) return Error(Errc::kInvalidArgument, "env-writer needs DIR");
  Appliance app(a.positional[0]);
  SAG_TRY_STATUS(app.Load());
  SAG_TRY(auto env, OpenEnv(app, Get(a, "backend", "uboot")));
  sag::platform::EnvBootControl control(std::move(env), app.Path("cmdline"), "sag.slot");
  for (std::uint64_t j = 0;; ++j) {
    const WriterStep w = WriterStepAt(j);
    switch (w.kind) {
      case WriterStep::kMarkGood:
        SAG_TRY_STATUS(control.MarkGood(w.slot, w.attempts));
        break;
      case WriterStep::kSetTrial:
        SAG_TRY_STATUS(control.SetTrial(w.slot, w.attempts));
        break;
      case WriterStep::kMarkBad:
        SAG_TRY_STATUS(control.MarkBad(w.slot));
        break;
    }
    if (::write(STDOUT_FILENO, "o", 1) != 1) return 1;
  }
}

// The states a cut may leave after the writer started from `start` and
// completed `done` transitions: the last one that returned, or the one in
// flight if it reached the medium. A write that returned and is gone is a
// missing sync. (Not checked when the newest copy was garbled on purpose:
// that throws away the last write, and the older copy may be older still.)
Expected<std::vector<std::string>> StatesAfterCut(const sag::platform::BootState& start,
                                                  std::uint64_t done) {
  sag::platform::BootState s = start;
  for (std::uint64_t j = 0; j < done; ++j) {
    SAG_TRY(s, StateAfter(s, j));
  }
  std::vector<std::string> allowed{sag::platform::DescribeState(s)};
  if (auto next = StateAfter(s, done)) allowed.push_back(sag::platform::DescribeState(*next));
  return allowed;
}

// Garbles the newest copy (higher flag byte) from a random byte to its end.
Status TearNewest(const Appliance& app, std::mt19937_64& rng, int& copy_out) {
  SAG_TRY(std::string image, sag::ReadFile(app.Path("uboot.env"), 1U << 20U));
  const auto f0 = static_cast<unsigned char>(image[4]);
  const auto f1 = static_cast<unsigned char>(image[sag::sim::kEnvSize + 4]);
  // Incremental flags wrap: 0 after 255 is newer.
  const bool second_newer =
      (f1 == static_cast<unsigned char>(f0 + 1)) || (f1 > f0 && !(f0 == 0 && f1 == 255));
  copy_out = second_newer ? 1 : 0;
  const std::size_t base = second_newer ? sag::sim::kEnvSize : 0;
  const std::size_t from =
      base + std::uniform_int_distribution<std::size_t>(5, sag::sim::kEnvSize - 1)(rng);
  for (std::size_t i = from; i < base + sag::sim::kEnvSize; ++i)
    image[i] = static_cast<char>(image[i] ^ 0xA5);
  // In place, like the interrupted write it stands for, and durable: that
  // write reached the medium before the power came back. Left unsynced, the
  // next trial's cut would undo it and bring the garbled copy back whole
  // (when that trial's writer was killed before its first store), and the
  // check would take the restored copy for a write that was lost.
  const std::string path = app.Path("uboot.env").string();
  const sag::UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CLOEXEC));
  if (fd.get() < 0) return sag::MakeErrno(Errc::kIo, "open " + path, errno);
  if (::pwrite(fd.get(), image.data(), image.size(), 0) != static_cast<ssize_t>(image.size())) {
    return sag::MakeErrno(Errc::kIo, "rewrite " + path, errno);
  }
  if (::fsync(fd.get()) != 0) return sag::MakeErrno(Errc::kIo, "fsync " + path, errno);
  return sag::Ok();
}

Expected<int> CmdCutEnv(const Args& a) {
  if (a.positional.size() != 1)
    return Error(Errc::kInvalidArgument, "cut-env needs exactly one DIR");
  Appliance app(a.positional[0]);
  SAG_TRY_STATUS(app.Load());
  SAG_TRY(const auto trials, Number(a, "trials", 100));
  SAG_TRY(const auto seed, Number(a, "seed", 1));
  SAG_TRY(const auto max_us, Number(a, "max-us", 5000));
  std::mt19937_64 rng(seed);
  const std::string backend = Get(a, "backend", "uboot");
  std::unique_ptr<sag::sim::PowerLossMedium> medium;
  if (a.opts.count("powerloss") != 0) {
    SAG_TRY(medium, sag::sim::PowerLossMedium::Mount(Get(a, "powerloss"), app.dir(), true, seed));
  }
  SAG_TRY(const auto env, OpenEnv(app, backend));
  const bool grub = backend == "grub";
  std::uint64_t valid = 0;
  std::uint64_t torn = 0;
  for (std::uint64_t t = 1; t <= trials; ++t) {
    SAG_TRY(const auto start_vars, env->Load());
    SAG_TRY(const auto start, sag::platform::ParseBootVars(start_vars, env->name()));
    int pipefd[2];
    if (::pipe2(pipefd, O_CLOEXEC) != 0) return sag::MakeErrno(Errc::kIo, "pipe");
    std::fflush(stdout);
    const pid_t pid = ::fork();
    if (pid < 0) return sag::MakeErrno(Errc::kIo, "fork");
    if (pid == 0) {
      ::dup2(pipefd[1], STDOUT_FILENO);
      (void)::close_range(3, ~0U, 0);  // the pipe is on stdout now; the writer needs no other fd
      const std::string self = SelfExe().string();
      const std::string dir = app.dir().string();
      ::execl(self.c_str(), self.c_str(), "env-writer", dir.c_str(), "--backend", backend.c_str(),
              nullptr);
      ::_exit(127);
    }
    ::close(pipefd[1]);
    pollfd pfd{pipefd[0], POLLIN, 0};
    char c = 0;
    const bool ready = ::poll(&pfd, 1, 20000) == 1 && ::read(pipefd[0], &c, 1) == 1;
    const auto delay = std::uniform_int_distribution<std::uint64_t>(0, max_us)(rng);
    if (ready) std::this_thread::sleep_for(std::chrono::microseconds(delay));
    ::kill(pid, SIGKILL);
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    // Every transition the writer saw return (the writer is gone: EOF ends it).
    std::uint64_t done = ready ? 1 : 0;
    for (char buf[4096]; ready;) {
      const ssize_t n = ::read(pipefd[0], buf, sizeof buf);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;
      done += static_cast<std::uint64_t>(n);
    }
    ::close(pipefd[0]);
    std::string what = "writer killed after " + std::to_string(delay) + " us";
    if (medium) {
      SAG_TRY(const auto figures, medium->Cut());
      what += " (medium: " + figures + ")";
    }
    if (!ready || !WIFSIGNALED(status)) {
      Say("cut-env trial " + std::to_string(t) + ": the writer failed before the cut (" +
          ExitText(status) + ")");
      continue;
    }
    // The GRUB block is replaced by rename: there is no copy to garble, but
    // a killed write may leave its temporary file (removed by the next write).
    if (grub && StaleTemps(app) > 1) {
      Say("cut-env trial " + std::to_string(t) + ": " + what + ": stale temporary files pile up");
      continue;
    }
    const bool garble = !grub && rng() % 2 == 0;
    if (garble) {
      int copy = 0;
      SAG_TRY_STATUS(TearNewest(app, rng, copy));
      what += ", newest copy (" + std::to_string(copy) + ") garbled";
      ++torn;
    }
    what += ", " + std::to_string(done) + " writes returned";
    auto vars = env->Load();
    auto state = vars ? sag::platform::ParseBootVars(*vars, env->name())
                      : Expected<sag::platform::BootState>(vars.error());
    SAG_TRY(const auto allowed, StatesAfterCut(start, done));
    const std::string found = state ? sag::platform::DescribeState(*state) : std::string();
    if (state && !garble && std::find(allowed.begin(), allowed.end(), found) == allowed.end()) {
      std::string line = "cut-env trial " + std::to_string(t) + ": " + what;
      line.append(": INVALID: ").append(found);
      line.append(" after the cut, but the last write that returned left ").append(allowed.front());
      line.append(" (a write that returned was lost: a missing sync)");
      Say(line);
    } else if (state && state->NextBoot()) {
      ++valid;
      if (t % 10 == 0 || t == 1)
        Say("cut-env trial " + std::to_string(t) + ": " + what + ": " +
            sag::platform::DescribeState(*state) + " ok");
    } else {
      Say("cut-env trial " + std::to_string(t) + ": " + what +
          ": INVALID: " + (state ? "no bootable slot" : state.error().ToString()));
      // Restore a valid environment so the next trials still measure something.
      SAG_TRY_STATUS(
          env->Update([](const sag::platform::EnvVars&) -> Expected<sag::platform::EnvVars> {
            return sag::platform::FormatBootVars({{Slot::kA, Slot::kB}, 3, 0});
          }));
    }
  }
  Say("cut-env: " + std::to_string(valid) + " of " + std::to_string(trials) +
      " power cuts left a valid environment (" + std::to_string(torn) + " with a garbled copy)");
  if (medium) {
    const auto& f = medium->figures();
    Say("medium totals: cuts=" + std::to_string(f.cuts) +
        " bytes_lost=" + std::to_string(f.bytes_lost) +
        " entries_lost=" + std::to_string(f.entries_lost) + " torn=" + std::to_string(f.torn));
  }
  return valid == trials ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  const std::vector<std::string> args(argv + 1, argv + argc);
  if (args.empty()) return Usage("missing command");
  const std::string& cmd = args[0];
  if (cmd == "--help" || cmd == "-h" || cmd == "help") {
    std::cout << kUsage;
    return 0;
  }
  static const std::map<std::string,
                        std::pair<std::set<std::string>, Expected<int> (*)(const Args&)>>
      commands = {
          {"init",
           {{"slot-size", "model", "serial", "smartag-id", "endpoint", "root-ca", "slot-a",
             "version", "dpi-engine"},
            CmdInit}},
          {"boot",
           {{"agent", "max-boots", "cut-after-ms", "cut-random", "cut-min", "seed", "cuts",
             "cut-from", "powerloss", "torn"},
            CmdBoot}},
          {"env", {{}, CmdEnv}},
          {"fault", {{"slot"}, CmdFault}},
          {"cut-env", {{"trials", "seed", "max-us", "backend", "powerloss"}, CmdCutEnv}},
          {"env-writer", {{"backend"}, CmdEnvWriter}},
      };
  const auto it = commands.find(cmd);
  if (it == commands.end()) return Usage("unknown command '" + cmd + "'");
  auto parsed = ParseArgs({args.begin() + 1, args.end()}, it->second.first);
  if (!parsed) return Usage(parsed.error().message());
  if (parsed->has_rest && cmd != "boot") return Usage("'--' is only for boot");
  auto r = it->second.second(*parsed);
  if (!r) {
    if (r.error().code() == Errc::kInvalidArgument) return Usage(r.error().message());
    return Fail(r.error());
  }
  return *r;
}
