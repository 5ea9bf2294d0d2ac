#include "agent/config.h"

#include <yaml-cpp/yaml.h>

#include <functional>
#include <set>

#include "common/atomic_file.h"
#include "common/log.h"

namespace sag::agent {

namespace {

// Walks the YAML tree with the schema in code: each section names its keys,
// each key its type and range. The first violation becomes the error.
class Reader {
 public:
  explicit Reader(std::string file) : file_(std::move(file)) {}

  [[nodiscard]] Error At(const YAML::Mark& mark, Errc code, const std::string& msg) const {
    if (mark.is_null()) return {code, file_ + ": " + msg};
    return {code, file_ + ":" + std::to_string(mark.line + 1) + ":" +
                      std::to_string(mark.column + 1) + ": " + msg};
  }

  // Checks that `node` is a mapping whose keys are all in `allowed`.
  Status Section(const YAML::Node& node, const std::string& path,
                 const std::set<std::string>& allowed) const {
    if (!node.IsMap()) {
      return At(node.Mark(), Errc::kConfigType, "'" + path + "' must be a mapping of keys");
    }
    for (const auto& kv : node) {
      const auto key = kv.first.Scalar();
      if (!allowed.contains(key)) {
        std::string list;
        for (const auto& a : allowed) list += (list.empty() ? "" : ", ") + a;
        return At(kv.first.Mark(), Errc::kConfigUnknownKey,
                  "unknown key '" + Join(path, key) + "' (known keys here: " + list + ")");
      }
    }
    return Ok();
  }

  Status String(const YAML::Node& parent, const std::string& path, const std::string& key,
                std::string& out, bool required = false) const {
    const auto node = parent[key];
    if (!node) {
      if (required) return Missing(parent, Join(path, key), "a string");
      return Ok();
    }
    if (!node.IsScalar() || node.Scalar().empty()) {
      return At(node.Mark(), Errc::kConfigType,
                "'" + Join(path, key) + "' must be a non-empty string");
    }
    out = node.Scalar();
    return Ok();
  }

  Status Path(const YAML::Node& parent, const std::string& path, const std::string& key,
              std::filesystem::path& out, bool required = false) const {
    std::string s = out.string();
    SAG_TRY_STATUS(String(parent, path, key, s, required));
    const auto node = parent[key];
    if (node && (s.empty() || s.front() != '/')) {
      return At(node.Mark(), Errc::kConfigRange,
                "'" + Join(path, key) + "' must be an absolute path, got '" + s + "'");
    }
    out = s;
    return Ok();
  }

  template <typename Int>
  Status Integer(const YAML::Node& parent, const std::string& path, const std::string& key,
                 Int& out, long long min, long long max) const {
    const auto node = parent[key];
    if (!node) return Ok();
    long long v = 0;
    if (!node.IsScalar() || !YAML::convert<long long>::decode(node, v)) {
      return At(node.Mark(), Errc::kConfigType,
                "'" + Join(path, key) + "' must be an integer, got '" + Text(node) + "'");
    }
    if (v < min || v > max) {
      return At(node.Mark(), Errc::kConfigRange,
                "'" + Join(path, key) + "' must be between " + std::to_string(min) + " and " +
                    std::to_string(max) + ", got " + std::to_string(v));
    }
    out = static_cast<Int>(v);
    return Ok();
  }

  Status Seconds(const YAML::Node& parent, const std::string& path, const std::string& key,
                 std::chrono::seconds& out, long long min, long long max) const {
    long long v = out.count();
    SAG_TRY_STATUS(Integer(parent, path, key, v, min, max));
    out = std::chrono::seconds(v);
    return Ok();
  }

  Status Bool(const YAML::Node& parent, const std::string& path, const std::string& key,
              bool& out) const {
    const auto node = parent[key];
    if (!node) return Ok();
    if (!node.IsScalar() || !YAML::convert<bool>::decode(node, out)) {
      return At(node.Mark(), Errc::kConfigType,
                "'" + Join(path, key) + "' must be true or false, got '" + Text(node) + "'");
    }
    return Ok();
  }

  Status Argv(const YAML::Node& parent, const std::string& path, const std::string& key,
              std::vector<std::string>& out, bool required) const {
    const auto node = parent[key];
    if (!node) {
      if (required) return Missing(parent, Join(path, key), "a command as a list of strings");
      return Ok();
    }
    if (!node.IsSequence() || node.size() == 0) {
      return At(node.Mark(), Errc::kConfigType,
                "'" + Join(path, key) +
                    R"(' must be a non-empty list of strings, e.g. ["/usr/bin/check", "--quick"])");
    }
    out.clear();
    for (const auto& item : node) {
      if (!item.IsScalar()) {
        return At(item.Mark(), Errc::kConfigType,
                  "'" + Join(path, key) + "' items must be strings");
      }
      out.push_back(item.Scalar());
    }
    return Ok();
  }

  [[nodiscard]] Error Missing(const YAML::Node& parent, const std::string& key,
                              const std::string& what) const {
    return At(parent.Mark(), Errc::kConfigMissingKey,
              "missing required key '" + key + "' (" + what + ")");
  }

  static std::string Join(const std::string& path, const std::string& key) {
    return path.empty() ? key : path + "." + key;
  }

 private:
  static std::string Text(const YAML::Node& node) {
    if (node.IsScalar()) return node.Scalar();
    if (node.IsSequence()) return "a list";
    if (node.IsMap()) return "a mapping";
    return "nothing";
  }

  std::string file_;
};

// Each section: a check of its keys, then its fields.
using SectionFn = std::function<Status(const YAML::Node&)>;

Status Optional(const YAML::Node& root, const Reader& r, const std::string& name,
                const std::set<std::string>& keys, const SectionFn& fn, bool required = false) {
  const auto node = root[name];
  if (!node) {
    if (required) return r.Missing(root, name, "a section");
    return Ok();
  }
  SAG_TRY_STATUS(r.Section(node, name, keys));
  return fn(node);
}

Status ReadHook(const Reader& r, const YAML::Node& hooks, const std::string& name,
                HookConfig& out) {
  const auto node = hooks[name];
  if (!node) return Ok();
  const std::string path = "dpi.hooks." + name;
  SAG_TRY_STATUS(r.Section(node, path, {"command", "timeout_s"}));
  SAG_TRY_STATUS(r.Argv(node, path, "command", out.command, true));
  return r.Seconds(node, path, "timeout_s", out.timeout, 1, 3600);
}

Expected<Config> ParseTree(const YAML::Node& root, const Reader& r) {
  Config c;
  if (!root.IsDefined() || root.IsNull()) {
    return r.At(root.Mark(), Errc::kConfigMissingKey, "the configuration is empty");
  }
  SAG_TRY_STATUS(r.Section(root, "",
                           {"identity", "cloud", "pki", "paths", "boot", "dpi", "health",
                            "download", "simulator", "log"}));

  SAG_TRY_STATUS(Optional(
      root, r, "identity", {"smartag_id", "serial_number", "model"},
      [&](const YAML::Node& n) -> Status {
        SAG_TRY_STATUS(r.String(n, "identity", "smartag_id", c.identity.smartag_id, true));
        if (!c.identity.smartag_id.starts_with("sag-")) {
          return r.At(
              n["smartag_id"].Mark(), Errc::kConfigRange,
              "'identity.smartag_id' must start with 'sag-', got '" + c.identity.smartag_id + "'");
        }
        SAG_TRY_STATUS(r.String(n, "identity", "serial_number", c.identity.serial_number, true));
        SAG_TRY_STATUS(r.String(n, "identity", "model", c.identity.model, true));
        return Ok();
      },
      true));

  SAG_TRY_STATUS(Optional(
      root, r, "cloud", {"endpoint", "connect_timeout_s", "heartbeat_s", "max_backoff_s"},
      [&](const YAML::Node& n) -> Status {
        SAG_TRY_STATUS(r.String(n, "cloud", "endpoint", c.cloud.endpoint));
        if (!c.cloud.endpoint.empty() && !c.cloud.endpoint.starts_with("wss://")) {
          return r.At(n["endpoint"].Mark(), Errc::kConfigRange,
                      "'cloud.endpoint' must be a wss:// URL, got '" + c.cloud.endpoint + "'");
        }
        SAG_TRY_STATUS(r.Seconds(n, "cloud", "connect_timeout_s", c.cloud.connect_timeout, 1, 300));
        SAG_TRY_STATUS(r.Seconds(n, "cloud", "heartbeat_s", c.cloud.heartbeat, 1, 3600));
        return r.Seconds(n, "cloud", "max_backoff_s", c.cloud.max_backoff, 1, 86400);
      }));

  SAG_TRY_STATUS(Optional(
      root, r, "pki", {"root_ca", "device_cert", "device_key"},
      [&](const YAML::Node& n) -> Status {
        SAG_TRY_STATUS(r.Path(n, "pki", "root_ca", c.pki.root_ca, true));
        SAG_TRY_STATUS(r.Path(n, "pki", "device_cert", c.pki.device_cert));
        return r.Path(n, "pki", "device_key", c.pki.device_key);
      },
      true));

  SAG_TRY_STATUS(
      Optional(root, r, "paths", {"state_dir", "runtime_dir"}, [&](const YAML::Node& n) -> Status {
        SAG_TRY_STATUS(r.Path(n, "paths", "state_dir", c.paths.state_dir));
        return r.Path(n, "paths", "runtime_dir", c.paths.runtime_dir);
      }));

  SAG_TRY_STATUS(Optional(
      root, r, "boot",
      {"backend", "uboot_config", "grubenv", "cmdline", "cmdline_key", "os_release",
       "trial_attempts", "read_back", "slots"},
      [&](const YAML::Node& n) -> Status {
        std::string backend = "uboot";
        SAG_TRY_STATUS(r.String(n, "boot", "backend", backend));
        if (backend == "uboot") {
          c.boot.backend = BootBackend::kUBoot;
        } else if (backend == "grub") {
          c.boot.backend = BootBackend::kGrub;
        } else {
          return r.At(n["backend"].Mark(), Errc::kConfigRange,
                      "'boot.backend' must be 'uboot' or 'grub', got '" + backend + "'");
        }
        SAG_TRY_STATUS(r.Path(n, "boot", "uboot_config", c.boot.uboot_config));
        SAG_TRY_STATUS(r.Path(n, "boot", "grubenv", c.boot.grubenv));
        SAG_TRY_STATUS(r.Path(n, "boot", "cmdline", c.boot.cmdline));
        SAG_TRY_STATUS(r.String(n, "boot", "cmdline_key", c.boot.cmdline_key));
        SAG_TRY_STATUS(r.Path(n, "boot", "os_release", c.boot.os_release));
        SAG_TRY_STATUS(r.Integer(n, "boot", "trial_attempts", c.boot.trial_attempts, 1, 9));
        std::string read_back = "medium";
        SAG_TRY_STATUS(r.String(n, "boot", "read_back", read_back));
        if (read_back == "medium") {
          c.boot.read_back_medium = true;
        } else if (read_back == "cache") {
          c.boot.read_back_medium = false;
        } else {
          return r.At(n["read_back"].Mark(), Errc::kConfigRange,
                      "'boot.read_back' must be 'medium' (read the slot back from the device "
                      "before the trial boot) or 'cache', got '" +
                          read_back + "'");
        }
        const auto slots = n["slots"];
        if (!slots) return r.Missing(n, "boot.slots", "slots A and B, each with a device");
        SAG_TRY_STATUS(r.Section(slots, "boot.slots", {"A", "B"}));
        for (const std::string name : {"A", "B"}) {
          const auto s = slots[name];
          if (!s) return r.Missing(slots, "boot.slots." + name, "a slot with a device");
          SAG_TRY_STATUS(r.Section(s, "boot.slots." + name, {"device"}));
          SAG_TRY_STATUS(
              r.Path(s, "boot.slots." + name, "device", c.boot.slots[name].device, true));
        }
        if (c.boot.slots["A"].device == c.boot.slots["B"].device) {
          return r.At(slots.Mark(), Errc::kConfigRange,
                      "'boot.slots' A and B must be different devices, both are " +
                          c.boot.slots["A"].device.string());
        }
        return Ok();
      },
      true));

  SAG_TRY_STATUS(
      Optional(root, r, "dpi", {"store", "keep", "hooks"}, [&](const YAML::Node& n) -> Status {
        SAG_TRY_STATUS(r.Path(n, "dpi", "store", c.dpi.store));
        SAG_TRY_STATUS(r.Integer(n, "dpi", "keep", c.dpi.keep, 2, 16));
        const auto hooks = n["hooks"];
        if (!hooks) return Ok();
        SAG_TRY_STATUS(r.Section(hooks, "dpi.hooks", {"validate", "reload", "confirm"}));
        SAG_TRY_STATUS(ReadHook(r, hooks, "validate", c.dpi.validate));
        SAG_TRY_STATUS(ReadHook(r, hooks, "reload", c.dpi.reload));
        return ReadHook(r, hooks, "confirm", c.dpi.confirm);
      }));

  SAG_TRY_STATUS(Optional(
      root, r, "health", {"checks", "require_cloud", "cloud_timeout_s"},
      [&](const YAML::Node& n) -> Status {
        SAG_TRY_STATUS(r.Bool(n, "health", "require_cloud", c.health.require_cloud));
        // The check after a trial boot probes cloud.endpoint (read above):
        // without one every upgrade would roll back.
        if (c.health.require_cloud && c.cloud.endpoint.empty()) {
          return r.At(n["require_cloud"].Mark(), Errc::kConfigMissingKey,
                      "'health.require_cloud: true' needs 'cloud.endpoint', the control "
                      "channel to reach after a trial boot: add cloud: {endpoint: "
                      "wss://HOST:PORT/device/v1}, or set require_cloud: false");
        }
        SAG_TRY_STATUS(r.Seconds(n, "health", "cloud_timeout_s", c.health.cloud_timeout, 1, 3600));
        const auto checks = n["checks"];
        if (!checks) return Ok();
        if (!checks.IsSequence()) {
          return r.At(checks.Mark(), Errc::kConfigType, "'health.checks' must be a list of checks");
        }
        for (std::size_t i = 0; i < checks.size(); ++i) {
          const auto item = checks[i];
          const std::string path = "health.checks[" + std::to_string(i) + "]";
          SAG_TRY_STATUS(r.Section(item, path, {"name", "command", "timeout_s"}));
          HealthCheck hc;
          SAG_TRY_STATUS(r.String(item, path, "name", hc.name, true));
          SAG_TRY_STATUS(r.Argv(item, path, "command", hc.command, true));
          SAG_TRY_STATUS(r.Seconds(item, path, "timeout_s", hc.timeout, 1, 3600));
          c.health.checks.push_back(std::move(hc));
        }
        return Ok();
      }));

  SAG_TRY_STATUS(Optional(
      root, r, "download",
      {"bandwidth_limit", "stall_timeout_s", "max_retries", "checkpoint_bytes",
       "checkpoint_interval_ms", "deadline_s", "min_rate", "min_rate_window_s", "delta_fallback",
       "delta_parallel"},
      [&](const YAML::Node& n) -> Status {
        SAG_TRY_STATUS(r.Integer(n, "download", "bandwidth_limit", c.download.bandwidth_limit, 0,
                                 10'000'000'000LL));
        SAG_TRY_STATUS(
            r.Seconds(n, "download", "stall_timeout_s", c.download.stall_timeout, 1, 3600));
        SAG_TRY_STATUS(r.Integer(n, "download", "checkpoint_bytes", c.download.checkpoint_bytes,
                                 64LL << 10, 1LL << 30));
        std::int64_t interval_ms = c.download.checkpoint_interval.count();
        SAG_TRY_STATUS(r.Integer(n, "download", "checkpoint_interval_ms", interval_ms, 0, 60'000));
        c.download.checkpoint_interval = std::chrono::milliseconds(interval_ms);
        SAG_TRY_STATUS(
            r.Seconds(n, "download", "deadline_s", c.download.deadline, 0, 365LL * 86400));
        SAG_TRY_STATUS(
            r.Integer(n, "download", "min_rate", c.download.min_rate, 0, 10'000'000'000LL));
        SAG_TRY_STATUS(
            r.Seconds(n, "download", "min_rate_window_s", c.download.min_rate_window, 1, 86400));
        std::string fallback = c.download.delta_fallback_full ? "full" : "fail";
        SAG_TRY_STATUS(r.String(n, "download", "delta_fallback", fallback));
        if (fallback == "full" || fallback == "fail") {
          c.download.delta_fallback_full = fallback == "full";
        } else {
          return r.At(n["delta_fallback"].Mark(), Errc::kConfigRange,
                      "'download.delta_fallback' must be 'fail' (a delta install from a server "
                      "without Range support fails) or 'full' (it downloads the whole image), "
                      "got '" +
                          fallback + "'");
        }
        SAG_TRY_STATUS(
            r.Integer(n, "download", "delta_parallel", c.download.delta_parallel, 1, 16));
        return r.Integer(n, "download", "max_retries", c.download.max_retries, 0, 1000);
      }));

  SAG_TRY_STATUS(Optional(
      root, r, "simulator", {"reboot_flag", "boot_id_file"}, [&](const YAML::Node& n) -> Status {
        SAG_TRY_STATUS(r.Path(n, "simulator", "reboot_flag", c.simulator.reboot_flag));
        return r.Path(n, "simulator", "boot_id_file", c.simulator.boot_id_file);
      }));

  SAG_TRY_STATUS(Optional(root, r, "log", {"level"}, [&](const YAML::Node& n) -> Status {
    std::string level = "info";
    SAG_TRY_STATUS(r.String(n, "log", "level", level));
    auto parsed = ParseLogLevel(level);
    if (!parsed)
      return r.At(n["level"].Mark(), Errc::kConfigRange,
                  "'log.level': " + parsed.error().message());
    c.log_level = *parsed;
    return Ok();
  }));

  return c;
}

}  // namespace

Expected<Config> ParseConfig(const std::string& yaml, const std::string& name) {
  const Reader r(name);
  YAML::Node root;
  try {
    root = YAML::Load(yaml);
  } catch (const YAML::ParserException& e) {
    return r.At(e.mark, Errc::kConfigSyntax, "invalid YAML: " + e.msg);
  }
  // yaml-cpp throws only from conversions we do not use unguarded, but no
  // exception may leave this module.
  try {
    return ParseTree(root, r);
  } catch (const YAML::Exception& e) {
    return r.At(e.mark, Errc::kConfigSyntax, "invalid configuration: " + e.msg);
  }
}

Expected<Config> LoadConfig(const std::filesystem::path& path) {
  auto text = ReadFile(path, 1U << 20U);
  if (!text) {
    return Error(Errc::kConfigMissing, "cannot read configuration " + path.string() + ": " +
                                           text.error().message() +
                                           " (pass --config FILE or create it from the example)");
  }
  auto config = ParseConfig(*text, path.string());
  if (config) config->source = path;
  return config;
}

std::vector<std::string> DescribeConfig(const Config& c) {
  std::vector<std::string> out;
  out.push_back("configuration " + c.source.string());
  out.push_back("identity: " + c.identity.smartag_id + " serial " + c.identity.serial_number +
                " model " + c.identity.model);
  out.push_back("cloud: " + (c.cloud.endpoint.empty() ? std::string("none (local jobs only)")
                                                      : c.cloud.endpoint));
  out.push_back(std::string("boot: ") +
                (c.boot.backend == BootBackend::kUBoot ? "uboot " + c.boot.uboot_config.string()
                                                       : "grub " + c.boot.grubenv.string()) +
                ", slot A " + c.boot.slots.at("A").device.string() + ", slot B " +
                c.boot.slots.at("B").device.string() + ", " +
                std::to_string(c.boot.trial_attempts) + " trial attempts");
  out.push_back("state " + c.paths.state_dir.string() + ", runtime " +
                c.paths.runtime_dir.string() + ", dpi store " + c.dpi.store.string() + " (keep " +
                std::to_string(c.dpi.keep) + ")");
  out.push_back("health: " + std::to_string(c.health.checks.size()) + " check(s)" +
                (c.health.require_cloud ? ", cloud required" : ""));
  out.push_back("download: " + (c.download.bandwidth_limit == 0
                                    ? std::string("unlimited")
                                    : std::to_string(c.download.bandwidth_limit) + " B/s"));
  if (!c.simulator.reboot_flag.empty() || !c.simulator.boot_id_file.empty()) {
    out.push_back("simulator: reboot flag " + c.simulator.reboot_flag.string() + ", boot id " +
                  c.simulator.boot_id_file.string());
  }
  return out;
}

}  // namespace sag::agent
