#include "cloud/lab.h"

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include "cloud/rpc/client.h"
#include "common/atomic_file.h"
#include "common/image/pki.h"

namespace sag::cloud {

namespace fs = std::filesystem;

namespace {

// A TCP port free on 127.0.0.1 now (the kernel's choice for port 0).
Expected<std::uint16_t> FreePort() {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return MakeErrno(Errc::kIo, "socket");
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  // NOLINTBEGIN(cppcoreguidelines-pro-type-reinterpret-cast)
  const bool ok = ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0 &&
                  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0;
  // NOLINTEND(cppcoreguidelines-pro-type-reinterpret-cast)
  Error e = ok ? Error() : MakeErrno(Errc::kIo, "bind a loopback port");
  ::close(fd);
  if (!ok) return e;
  return ntohs(a.sin_port);
}

bool PlainId(const std::string& s) {
  if (s.empty() || s.size() > 64) return false;
  for (const char c : s) {
    if ((std::isalnum(static_cast<unsigned char>(c)) == 0) && c != '-' && c != '_') return false;
  }
  return true;
}

}  // namespace

Expected<LabResult> InitLab(const LabOptions& o) {
  std::error_code ec;
  if (fs::exists(o.dir, ec) && !fs::is_empty(o.dir, ec)) {
    return Error(Errc::kInvalidArgument,
                 o.dir.string() + " exists and is not empty; give a new directory");
  }
  if (!PlainId(o.smartag_id)) {
    return Error(Errc::kInvalidArgument,
                 "--smartag-id '" + o.smartag_id + "': letters, digits, '-' and '_' only");
  }
  if (o.serials.empty() || o.serials.size() > 2) {
    return Error(Errc::kInvalidArgument, "an instance has one device or two (HA)");
  }
  for (const auto& s : o.serials) {
    if (!PlainId(s)) {
      return Error(Errc::kInvalidArgument,
                   "serial number '" + s + "': letters, digits, '-' and '_' only");
    }
  }
  const fs::path dir = fs::absolute(o.dir);
  for (const char* sub : {"", "images"}) {
    fs::create_directories(dir / sub, ec);
    if (ec) return Error(Errc::kIo, "create " + (dir / sub).string() + ": " + ec.message());
  }
  image::pki::InitOptions pki;
  pki.devices = o.serials;
  SAG_TRY_STATUS(image::pki::InitDevPki(dir / "pki", pki));

  std::uint16_t api = o.api_port;
  std::uint16_t gateway = o.gateway_port;
  std::uint16_t repo = o.repository_port;
  for (auto* port : {&api, &gateway, &repo}) {
    if (*port != 0) continue;
    SAG_TRY(const std::uint16_t free, FreePort());
    *port = free;
  }
  LabResult r;
  r.config = dir / "cloud.yaml";
  r.credentials = dir / "credentials.env";
  r.api_endpoint = "http://127.0.0.1:" + std::to_string(api);
  r.device_endpoint = "wss://127.0.0.1:" + std::to_string(gateway) + "/device/v1";
  r.repository_url = "https://127.0.0.1:" + std::to_string(repo);
  r.access_key_id = "LTAIlab" + rpc::NewNonce().substr(0, 17);
  const std::string secret = rpc::NewNonce() + rpc::NewNonce().substr(0, 8);

  std::string devices;
  for (std::size_t i = 0; i < o.serials.size(); ++i) {
    devices += "      - {serial_number: " + o.serials[i] + ", hardware_model: " + o.model;
    if (o.serials.size() == 2) devices += i == 0 ? ", ha_state: active" : ", ha_state: standby";
    devices += "}\n";
  }
  const std::string yaml =
      "# sag-cloud lab (sag-cloud lab init): one machine, loopback only, development PKI.\n"
      "# Relative paths are relative to this file. docs/cloud.md explains every key.\n"
      "api:\n"
      "  listen: 127.0.0.1:" +
      std::to_string(api) +
      "\n"
      "  host_id: smartag." +
      o.region_id +
      ".aliyuncs.com\n"
      "access_keys:\n"
      "  - {id: " +
      r.access_key_id + ", secret: " + secret + ", account: \"" + o.account +
      "\"}\n"
      "instances:\n"
      "  - smartag_id: " +
      o.smartag_id + "\n    account: \"" + o.account + "\"\n    region_id: " + o.region_id +
      "\n    name: lab appliance\n    status: Active\n    instance_type: " + o.model +
      "\n    associated_ccn_id: ccn-lab0000000000001\n    associated_ccn_name: lab network" +
      "\n    end_time: 2099-01-01T00:00:00Z\n    devices:\n" + devices +
      "store: store.db\n"
      "gateway:\n"
      "  listen: 127.0.0.1:" +
      std::to_string(gateway) +
      "\n"
      "  cert_chain: pki/server-chain.pem\n"
      "  key: pki/server.key\n"
      "  device_ca: pki/root-ca.pem\n"
      "  heartbeat_s: 10\n"
      "repository:\n"
      "  dir: images\n"
      "  root_ca: pki/root-ca.pem\n"
      "  listen: 127.0.0.1:" +
      std::to_string(repo) +
      "\n"
      "  cert_chain: pki/server-chain.pem\n"
      "  key: pki/server.key\n"
      "  client_ca: pki/root-ca.pem\n";
  SAG_TRY_STATUS(WriteFileAtomic(r.config, yaml, 0600));
  SAG_TRY_STATUS(WriteFileAtomic(r.credentials,
                                 "# the lab's access key pair, as the Alibaba Cloud SDKs read it\n"
                                 "export ALIBABA_CLOUD_ACCESS_KEY_ID=" +
                                     r.access_key_id +
                                     "\n"
                                     "export ALIBABA_CLOUD_ACCESS_KEY_SECRET=" +
                                     secret + "\nexport SAG_CLOUD_ENDPOINT=" + r.api_endpoint +
                                     "\n",
                                 0600));
  return r;
}

}  // namespace sag::cloud
