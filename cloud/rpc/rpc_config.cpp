#include "cloud/rpc/rpc_config.h"

#include <yaml-cpp/yaml.h>

#include <fstream>
#include <set>
#include <sstream>
#include <string_view>

#include "common/parse_decimal.h"

namespace sag::cloud::rpc {

namespace {

class Reader {
 public:
  explicit Reader(std::string file) : file_(std::move(file)) {}

  [[nodiscard]] Error At(const YAML::Node& node, Errc code, const std::string& msg) const {
    const auto mark = node.Mark();
    if (mark.is_null()) return {code, file_ + ": " + msg};
    return {code, file_ + ":" + std::to_string(mark.line + 1) + ":" +
                      std::to_string(mark.column + 1) + ": " + msg};
  }

  [[nodiscard]] Status Keys(const YAML::Node& node, const std::string& what,
                            const std::set<std::string>& allowed) const {
    if (!node.IsMap()) return At(node, Errc::kConfigType, "'" + what + "' must be a mapping");
    for (const auto& kv : node) {
      if (!allowed.contains(kv.first.Scalar())) {
        std::string list;
        for (const auto& a : allowed) list += (list.empty() ? "" : ", ") + a;
        std::string msg = "unknown key '" + kv.first.Scalar() + "' in ";
        msg += what;
        msg += " (known: " + list + ")";
        return At(kv.first, Errc::kConfigUnknownKey, msg);
      }
    }
    return Ok();
  }

  [[nodiscard]] Status Str(const YAML::Node& parent, const std::string& key, std::string& out,
                           bool required = false) const {
    const auto n = parent[key];
    if (!n) {
      if (required) return At(parent, Errc::kConfigMissingKey, "'" + key + "' is required here");
      return Ok();
    }
    if (!n.IsScalar()) return At(n, Errc::kConfigType, "'" + key + "' must be a string");
    out = n.Scalar();
    return Ok();
  }

  [[nodiscard]] Status Bool(const YAML::Node& parent, const std::string& key, bool& out) const {
    const auto n = parent[key];
    if (!n) return Ok();
    if (!n.IsScalar() || (n.Scalar() != "true" && n.Scalar() != "false")) {
      return At(n, Errc::kConfigType, "'" + key + "' must be true or false");
    }
    out = n.Scalar() == "true";
    return Ok();
  }

  [[nodiscard]] Status Num(const YAML::Node& parent, const std::string& key, double lo, double hi,
                           double& out) const {
    const auto n = parent[key];
    if (!n) return Ok();
    double v = 0;
    if (!n.IsScalar() || !YAML::convert<double>::decode(n, v)) {
      return At(n, Errc::kConfigType, "'" + key + "' must be a number");
    }
    if (v < lo || v > hi) {
      std::ostringstream range;
      range << lo << ".." << hi;
      return At(n, Errc::kConfigRange, "'" + key + "' must be in " + range.str());
    }
    out = v;
    return Ok();
  }

  [[nodiscard]] Status Time(const YAML::Node& parent, const std::string& key,
                            std::int64_t& out_ms) const {
    std::string text;
    SAG_TRY_STATUS(Str(parent, key, text));
    if (text.empty()) return Ok();
    const auto t = ParseIsoTimestamp(text);
    if (!t) {
      return At(parent[key], Errc::kConfigType,
                "'" + key + "' must be a UTC time like 2030-01-01T00:00:00Z");
    }
    out_ms = std::chrono::duration_cast<std::chrono::milliseconds>(t->time_since_epoch()).count();
    return Ok();
  }

 private:
  std::string file_;
};

Expected<std::pair<std::string, std::uint16_t>> SplitListen(const std::string& text) {
  const auto colon = text.rfind(':');
  if (colon == std::string::npos || colon + 1 == text.size()) {
    return Error(Errc::kConfigRange, "'listen' must be address:port");
  }
  std::string host = text.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  const auto port = ParseDecimal<unsigned>(std::string_view(text).substr(colon + 1));
  if (!port || *port > 65535) {
    return Error(Errc::kConfigRange, "'listen': bad port in '" + text + "'");
  }
  return std::pair{host, static_cast<std::uint16_t>(*port)};
}

// `listen: address:port` of a section, into its two fields.
Status Listen(const Reader& r, const YAML::Node& section, std::string& address,
              std::uint16_t& port) {
  std::string listen;
  SAG_TRY_STATUS(r.Str(section, "listen", listen));
  if (listen.empty()) return Ok();
  auto hp = SplitListen(listen);
  if (!hp) return r.At(section["listen"], Errc::kConfigRange, hp.error().message());
  address = hp->first;
  port = hp->second;
  return Ok();
}

Status Path(const Reader& r, const YAML::Node& section, const std::string& key,
            std::filesystem::path& out, bool required) {
  std::string text;
  SAG_TRY_STATUS(r.Str(section, key, text, required));
  if (!text.empty()) out = text;
  return Ok();
}

// store, gateway, repository: the real parts of `sag-cloud serve`.
Status ParseParts(const Reader& r, const YAML::Node& root, ApiFileConfig& c) {
  if (const auto store = root["store"]) {
    SAG_TRY_STATUS(Path(r, root, "store", c.store, true));
  }
  if (const auto g = root["gateway"]) {
    SAG_TRY_STATUS(
        r.Keys(g, "gateway",
               {"listen", "cert_chain", "key", "device_ca", "heartbeat_s", "job_silence_s"}));
    GatewayFileConfig gw;
    SAG_TRY_STATUS(Listen(r, g, gw.listen_address, gw.listen_port));
    SAG_TRY_STATUS(Path(r, g, "cert_chain", gw.cert_chain, true));
    SAG_TRY_STATUS(Path(r, g, "key", gw.key, true));
    SAG_TRY_STATUS(Path(r, g, "device_ca", gw.device_ca, true));
    auto heartbeat = static_cast<double>(gw.heartbeat.count());
    SAG_TRY_STATUS(r.Num(g, "heartbeat_s", 1, 3600, heartbeat));
    gw.heartbeat = std::chrono::seconds(static_cast<long>(heartbeat));
    auto silence = static_cast<double>(gw.job_silence.count());
    SAG_TRY_STATUS(r.Num(g, "job_silence_s", 1, 7 * 86400, silence));
    gw.job_silence = std::chrono::seconds(static_cast<long>(silence));
    c.gateway = std::move(gw);
  }
  if (const auto p = root["repository"]) {
    SAG_TRY_STATUS(r.Keys(p, "repository",
                          {"dir", "root_ca", "listen", "cert_chain", "key", "client_ca", "base_url",
                           "job_deadline_s"}));
    RepositoryFileConfig repo;
    SAG_TRY_STATUS(Path(r, p, "dir", repo.dir, true));
    SAG_TRY_STATUS(Path(r, p, "root_ca", repo.root_ca, true));
    SAG_TRY_STATUS(Listen(r, p, repo.listen_address, repo.listen_port));
    SAG_TRY_STATUS(Path(r, p, "cert_chain", repo.cert_chain, true));
    SAG_TRY_STATUS(Path(r, p, "key", repo.key, true));
    SAG_TRY_STATUS(Path(r, p, "client_ca", repo.client_ca, false));
    SAG_TRY_STATUS(r.Str(p, "base_url", repo.base_url));
    if (repo.base_url.empty()) {
      const bool v6 = repo.listen_address.find(':') != std::string::npos;
      repo.base_url = "https://" + (v6 ? "[" + repo.listen_address + "]" : repo.listen_address) +
                      ":" + std::to_string(repo.listen_port);
    } else if (!repo.base_url.starts_with("https://")) {
      return r.At(p["base_url"], Errc::kConfigRange, "'base_url' must start with https://");
    }
    while (repo.base_url.ends_with('/')) repo.base_url.pop_back();
    auto deadline = static_cast<double>(repo.job_deadline.count());
    SAG_TRY_STATUS(r.Num(p, "job_deadline_s", 60, 7 * 86400, deadline));
    repo.job_deadline = std::chrono::seconds(static_cast<long>(deadline));
    c.repository = std::move(repo);
  }
  if (c.gateway.has_value() != c.repository.has_value()) {
    return r.At(root, Errc::kConfigMissingKey,
                "'gateway' and 'repository' go together: set both (the real parts) or neither "
                "(the in-memory API)");
  }
  return Ok();
}

}  // namespace

Expected<ApiFileConfig> ParseApiConfig(const std::string& yaml, const std::string& name) {
  YAML::Node root;
  try {
    root = YAML::Load(yaml);
  } catch (const YAML::Exception& e) {
    return Error(Errc::kConfigSyntax, name + ":" + std::to_string(e.mark.line + 1) + ": " + e.msg);
  }
  const Reader r(name);
  if (!root.IsMap()) return r.At(root, Errc::kConfigType, "the configuration must be a mapping");
  ApiFileConfig c;
  if (const auto api = root["api"]) {
    SAG_TRY_STATUS(
        r.Keys(api, "api",
               {"listen", "host_id", "time_window_s", "state_staleness_s", "rate_per_second",
                "rate_burst", "max_body_bytes", "tls_cert", "tls_key"}));
    std::string listen;
    SAG_TRY_STATUS(r.Str(api, "listen", listen));
    if (!listen.empty()) {
      auto hp = SplitListen(listen);
      if (!hp) return r.At(api["listen"], Errc::kConfigRange, hp.error().message());
      c.listen_address = hp->first;
      c.listen_port = hp->second;
    }
    SAG_TRY_STATUS(r.Str(api, "host_id", c.rpc.host_id));
    auto window = static_cast<double>(c.rpc.time_window.count());
    SAG_TRY_STATUS(r.Num(api, "time_window_s", 1, 86400, window));
    c.rpc.time_window = std::chrono::seconds(static_cast<long>(window));
    auto staleness = static_cast<double>(c.rpc.actions.state_staleness.count());
    SAG_TRY_STATUS(r.Num(api, "state_staleness_s", 1, 86400, staleness));
    c.rpc.actions.state_staleness = std::chrono::seconds(static_cast<long>(staleness));
    SAG_TRY_STATUS(r.Num(api, "rate_per_second", 0, 1e6, c.rpc.rate_per_second));
    SAG_TRY_STATUS(r.Num(api, "rate_burst", 0, 1e6, c.rpc.rate_burst));
    auto body = static_cast<double>(c.max_body_bytes);
    SAG_TRY_STATUS(r.Num(api, "max_body_bytes", 1024, 64.0 * 1024 * 1024, body));
    c.max_body_bytes = static_cast<std::size_t>(body);
    std::string cert;
    std::string key;
    SAG_TRY_STATUS(r.Str(api, "tls_cert", cert));
    SAG_TRY_STATUS(r.Str(api, "tls_key", key));
    if (cert.empty() != key.empty()) {
      return r.At(api, Errc::kConfigMissingKey, "'tls_cert' and 'tls_key' go together");
    }
    c.tls_cert = cert;
    c.tls_key = key;
  }
  if (const auto keys = root["access_keys"]) {
    if (!keys.IsSequence()) return r.At(keys, Errc::kConfigType, "'access_keys' must be a list");
    for (const auto& k : keys) {
      SAG_TRY_STATUS(r.Keys(k, "an access key", {"id", "secret", "account", "read_only"}));
      AccessKey key;
      SAG_TRY_STATUS(r.Str(k, "id", key.id, true));
      SAG_TRY_STATUS(r.Str(k, "secret", key.secret, true));
      SAG_TRY_STATUS(r.Str(k, "account", key.account, true));
      SAG_TRY_STATUS(r.Bool(k, "read_only", key.read_only));
      for (const auto& other : c.rpc.access_keys) {
        if (other.id == key.id) {
          return r.At(k, Errc::kConfigRange, "access key '" + key.id + "' is listed twice");
        }
      }
      c.rpc.access_keys.push_back(std::move(key));
    }
  }
  if (const auto instances = root["instances"]) {
    if (!instances.IsSequence()) {
      return r.At(instances, Errc::kConfigType, "'instances' must be a list");
    }
    for (const auto& n : instances) {
      SAG_TRY_STATUS(r.Keys(n, "an instance",
                            {"smartag_id", "account", "region_id", "name", "description", "status",
                             "instance_type", "associated_ccn_id", "associated_ccn_name", "city",
                             "max_bandwidth", "create_time", "end_time", "devices"}));
      InstanceState i;
      SAG_TRY_STATUS(r.Str(n, "smartag_id", i.smartag_id, true));
      SAG_TRY_STATUS(r.Str(n, "account", i.account, true));
      i.region_id = "cn-shanghai";
      SAG_TRY_STATUS(r.Str(n, "region_id", i.region_id));
      SAG_TRY_STATUS(r.Str(n, "name", i.name));
      SAG_TRY_STATUS(r.Str(n, "description", i.description));
      i.status = "Active";
      SAG_TRY_STATUS(r.Str(n, "status", i.status));
      static const std::set<std::string> kStatuses{
          "Ordered", "Delivered", "Received", "Unconfirmed", "Init", "Active", "Arrearage"};
      if (!kStatuses.contains(i.status)) {
        return r.At(n["status"], Errc::kConfigRange,
                    "'status' must be one of Ordered, Delivered, Received, Unconfirmed, Init, "
                    "Active, Arrearage (Offline is derived from the devices)");
      }
      SAG_TRY_STATUS(r.Str(n, "instance_type", i.instance_type));
      SAG_TRY_STATUS(r.Str(n, "associated_ccn_id", i.associated_ccn_id));
      SAG_TRY_STATUS(r.Str(n, "associated_ccn_name", i.associated_ccn_name));
      SAG_TRY_STATUS(r.Str(n, "city", i.city));
      SAG_TRY_STATUS(r.Str(n, "max_bandwidth", i.max_bandwidth));
      SAG_TRY_STATUS(r.Time(n, "create_time", i.create_time_ms));
      SAG_TRY_STATUS(r.Time(n, "end_time", i.end_time_ms));
      if (const auto devices = n["devices"]) {
        if (!devices.IsSequence()) {
          return r.At(devices, Errc::kConfigType, "'devices' must be a list");
        }
        for (const auto& dn : devices) {
          SAG_TRY_STATUS(r.Keys(dn, "a device",
                                {"serial_number", "hardware_model", "software_version",
                                 "dpi_signature_db_version", "online", "ha_state"}));
          DeviceState d;
          SAG_TRY_STATUS(r.Str(dn, "serial_number", d.serial_number, true));
          d.hardware_model = i.instance_type;
          SAG_TRY_STATUS(r.Str(dn, "hardware_model", d.hardware_model));
          SAG_TRY_STATUS(r.Str(dn, "software_version", d.software_version));
          SAG_TRY_STATUS(r.Str(dn, "dpi_signature_db_version", d.dpi_signature_db_version));
          SAG_TRY_STATUS(r.Bool(dn, "online", d.online));
          SAG_TRY_STATUS(r.Str(dn, "ha_state", d.ha_state));
          i.devices.push_back(std::move(d));
        }
      }
      c.instances.push_back(std::move(i));
    }
  }
  if (const auto catalog = root["catalog"]) {
    if (!catalog.IsSequence()) return r.At(catalog, Errc::kConfigType, "'catalog' must be a list");
    for (const auto& n : catalog) {
      SAG_TRY_STATUS(r.Keys(n, "a catalog entry",
                            {"type", "version_code", "version_name", "release_type", "create_time",
                             "hardware_models"}));
      CatalogEntry e;
      std::string type = "Device";
      SAG_TRY_STATUS(r.Str(n, "type", type));
      if (type != "Device" && type != "Dpi") {
        return r.At(n["type"], Errc::kConfigRange, "'type' must be Device or Dpi");
      }
      e.type = type == "Device" ? VersionType::kDevice : VersionType::kDpi;
      SAG_TRY_STATUS(r.Str(n, "version_code", e.version_code, true));
      SAG_TRY_STATUS(r.Str(n, "version_name", e.version_name));
      e.release_type = "release";
      SAG_TRY_STATUS(r.Str(n, "release_type", e.release_type));
      SAG_TRY_STATUS(r.Time(n, "create_time", e.create_time_ms));
      if (const auto models = n["hardware_models"]) {
        if (!models.IsSequence()) {
          return r.At(models, Errc::kConfigType, "'hardware_models' must be a list");
        }
        for (const auto& m : models) e.hardware_models.push_back(m.Scalar());
      }
      c.catalog.push_back(std::move(e));
    }
  }
  SAG_TRY_STATUS(ParseParts(r, root, c));
  return c;
}

Expected<ApiFileConfig> LoadApiConfig(const std::filesystem::path& file) {
  std::ifstream in(file);
  if (!in) return Error(Errc::kConfigMissing, "cannot read the configuration " + file.string());
  std::ostringstream text;
  text << in.rdbuf();
  SAG_TRY(auto c, ParseApiConfig(text.str(), file.string()));
  // Relative paths are the configuration directory's.
  const auto base = std::filesystem::absolute(file).parent_path();
  const auto rebase = [&base](std::filesystem::path& p) {
    if (!p.empty() && p.is_relative()) p = base / p;
  };
  rebase(c.store);
  if (c.gateway) {
    for (auto* p : {&c.gateway->cert_chain, &c.gateway->key, &c.gateway->device_ca}) rebase(*p);
  }
  if (c.repository) {
    for (auto* p : {&c.repository->dir, &c.repository->root_ca, &c.repository->cert_chain,
                    &c.repository->key, &c.repository->client_ca}) {
      rebase(*p);
    }
  }
  return c;
}

}  // namespace sag::cloud::rpc
