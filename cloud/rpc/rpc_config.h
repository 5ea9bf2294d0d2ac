// The part of sag-cloud's configuration file (YAML) the RPC API reads:
//
//   api:
//     listen: 127.0.0.1:8080          # address:port, [::1]:8080 for IPv6
//     host_id: smartag.cn-shanghai.aliyuncs.com
//     time_window_s: 900              # |now - Timestamp| allowed
//     state_staleness_s: 300          # older device state: GetSmartAccessGatewayStateError
//     rate_per_second: 0              # per access key; 0 = unlimited
//     rate_burst: 0
//     max_body_bytes: 1048576
//     tls_cert: /etc/sag-cloud/pki/api.crt   # both or neither: HTTPS instead of HTTP
//     tls_key: /etc/sag-cloud/pki/api.key
//   access_keys:
//     - {id: AK, secret: SK, account: "1001", read_only: false}
//   # Until the store and the device gateway are wired in: the state the
//   # in-memory backend starts from.
//   instances:
//     - smartag_id: sag-...            # plus account, region_id, name, description,
//       status: Active                 # instance_type, associated_ccn_id/_name, city,
//       end_time: 2030-01-01T00:00:00Z # max_bandwidth, create_time
//       devices:
//         - {serial_number: sag..., hardware_model: sag-1000, software_version: 2.0.0,
//            dpi_signature_db_version: 20201117_1_0-0.0.1, online: true, ha_state: active}
//   catalog:
//     - {type: Device, version_code: 2.3.1.1, version_name: ..., release_type: release,
//        create_time: 2026-01-01T00:00:00Z, hardware_models: [sag-1000]}
//   # The real parts (both sections, or neither); relative paths are
//   # relative to the configuration file's directory.
//   store: store.db       # the SQLite database of the real parts' state
//   gateway:
//     listen: 127.0.0.1:8444
//     cert_chain: pki/server-chain.pem
//     key: pki/server.key
//     device_ca: pki/root-ca.pem
//     heartbeat_s: 30
//   repository:
//     dir: images
//     root_ca: pki/root-ca.pem
//     listen: 127.0.0.1:8443
//     cert_chain: pki/server-chain.pem
//     key: pki/server.key
//     client_ca: pki/root-ca.pem
//     base_url: https://127.0.0.1:8443
//     job_deadline_s: 7200
//
// Other top-level keys belong to other parts of sag-cloud and are left to
// them. Errors name the file, line and column (kConfig*).
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "cloud/rpc/api_backend.h"
#include "cloud/rpc/rpc_service.h"
#include "common/error.h"

namespace sag::cloud::rpc {

// `gateway:` -- the device channel's server (cloud/gateway.h).
struct GatewayFileConfig {
  std::string listen_address = "127.0.0.1";
  std::uint16_t listen_port = 8444;
  std::filesystem::path cert_chain;  // the server's certificate and intermediates
  std::filesystem::path key;
  std::filesystem::path device_ca;  // device certificates must chain to it
  std::chrono::seconds heartbeat{30};
  // A job offered or accepted with no report about it for this long ends
  // TimedOut (GatewayOptions::job_silence).
  std::chrono::seconds job_silence{3600};
};

// `repository:` -- the signed images and the HTTPS server devices fetch them
// from (cloud/repository.h).
struct RepositoryFileConfig {
  std::filesystem::path dir;
  std::filesystem::path root_ca;  // images must be signed under it
  std::string listen_address = "127.0.0.1";
  std::uint16_t listen_port = 8443;
  std::filesystem::path cert_chain;
  std::filesystem::path key;
  std::filesystem::path client_ca;  // set: only devices with a certificate under it fetch
  std::string base_url;             // what devices are told; default https://LISTEN
  std::chrono::seconds job_deadline{7200};
};

struct ApiFileConfig {
  std::string listen_address = "127.0.0.1";
  std::uint16_t listen_port = 8080;
  std::size_t max_body_bytes = 1U << 20U;
  std::filesystem::path tls_cert;  // PEM chain; set (with tls_key): serve HTTPS
  std::filesystem::path tls_key;
  RpcConfig rpc;
  // With `gateway` and `repository` set, sag-cloud serve runs the real parts
  // and `instances` only names the instances and their boxes (versions and
  // online state come from the devices); without, the in-memory backend
  // starts from `instances` and `catalog`.
  std::vector<InstanceState> instances;
  std::vector<CatalogEntry> catalog;
  std::optional<GatewayFileConfig> gateway;
  std::optional<RepositoryFileConfig> repository;
  std::filesystem::path store = "store.db";  // the real parts' state (SQLite)
};

Expected<ApiFileConfig> LoadApiConfig(const std::filesystem::path& file);
Expected<ApiFileConfig> ParseApiConfig(const std::string& yaml, const std::string& name);

}  // namespace sag::cloud::rpc
