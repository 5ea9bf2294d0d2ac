// `sag-cloud lab init DIR`: a control plane for one machine, ready to serve.
// Writes a development PKI (root, intermediate, code signing, the server's
// certificate for localhost/127.0.0.1/::1, a client certificate per device
// serial number), an empty image repository, an access key pair and a
// cloud.yaml whose instance names the devices, on loopback ports that are
// free now. Never for production: the keys are written unencrypted.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "common/error.h"

namespace sag::cloud {

struct LabOptions {
  std::filesystem::path dir;
  std::string smartag_id = "sag-lab0000000000001";
  std::vector<std::string> serials{"sag000lab0001"};  // two: an HA instance
  std::string model = "sag-1000";
  std::string region_id = "cn-shanghai";
  std::string account = "1001";
  // 0: a port free on 127.0.0.1 now.
  std::uint16_t api_port = 0;
  std::uint16_t gateway_port = 0;
  std::uint16_t repository_port = 0;
};

struct LabResult {
  std::filesystem::path config;       // DIR/cloud.yaml
  std::filesystem::path credentials;  // DIR/credentials.env (0600)
  std::string api_endpoint;           // http://127.0.0.1:PORT
  std::string device_endpoint;        // wss://127.0.0.1:PORT/device/v1
  std::string repository_url;         // https://127.0.0.1:PORT
  std::string access_key_id;
};

// kInvalidArgument: DIR exists and is not empty, a bad serial or id.
Expected<LabResult> InitLab(const LabOptions& options);

}  // namespace sag::cloud
