// sag-cloud: the reference control plane.
//
//   sag-cloud serve --config FILE [--log-level LEVEL]
//   sag-cloud call --endpoint URL --access-key-id AK --access-key-secret SK
//                  [--ca-file PEM] [--signature acs3|v1] [--method POST|GET] [--format JSON|XML]
//                  [--timeout-ms N] ACTION [Key=Value ...]
//   sag-cloud store dump --config FILE
//   sag-cloud job cancel --config FILE [--timeout-ms N] JOB_ID
//   sag-cloud --version
//
// `call` acts like an Alibaba Cloud SDK client: it signs (ACS3-HMAC-SHA256 by
// default, signature 1.0 with --signature v1), prints the answer's body and
// exits 0 on success, 1 on an error answer (an HTTP error status or a body
// with a Code), 2 on bad usage, 3 when no answer came. The key pair may also
// come from ALIBABA_CLOUD_ACCESS_KEY_ID / ALIBABA_CLOUD_ACCESS_KEY_SECRET, as
// the SDKs read it, to keep the secret off the command line.
#include <algorithm>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/ssl/context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "cloud/fleet_backend.h"
#include "cloud/gateway.h"
#include "cloud/http_server.h"
#include "cloud/lab.h"
#include "cloud/repository.h"
#include "cloud/rpc/client.h"
#include "cloud/rpc/memory_backend.h"
#include "cloud/rpc/rpc_config.h"
#include "cloud/rpc/rpc_service.h"
#include "cloud/sqlite_store.h"
#include "cloud/store.h"
#include "common/atomic_file.h"
#include "common/log.h"
#include "common/net/tls.h"

namespace {

namespace fs = std::filesystem;

using sag::cloud::rpc::ApiBackend;
using sag::cloud::rpc::ApiFileConfig;

constexpr int kExitOk = 0;
constexpr int kExitErrorAnswer = 1;
constexpr int kExitUsage = 2;
constexpr int kExitNoAnswer = 3;

void Usage(std::ostream& out) {
  out << "usage:\n"
         "  sag-cloud serve --config FILE [--log-level LEVEL]\n"
         "  sag-cloud call --endpoint URL [--access-key-id AK] [--access-key-secret SK]\n"
         "                 [--ca-file PEM]\n"
         "                 [--signature acs3|v1] [--method POST|GET] [--format JSON|XML]\n"
         "                 [--timeout-ms N] ACTION [Key=Value ...]\n"
         "  sag-cloud store dump --config FILE\n"
         "  sag-cloud job cancel --config FILE [--timeout-ms N] JOB_ID\n"
         "  sag-cloud lab init DIR [--smartag-id ID] [--serial S [--serial S2]] [--model M]\n"
         "                 [--api-port N] [--gateway-port N] [--repository-port N]\n"
         "  sag-cloud --version\n";
}

// Without `gateway` and `repository` in the configuration, the API runs on
// its `instances` and `catalog`, in memory: devices listed online count as
// having just reported their state (API development, no devices).
std::unique_ptr<ApiBackend> MakeMemoryBackend(const ApiFileConfig& config) {
  auto backend = std::make_unique<sag::cloud::rpc::MemoryBackend>();
  const auto now = sag::cloud::rpc::Clock::now();
  for (auto inst : config.instances) {
    for (auto& d : inst.devices) {
      if (d.online) d.state_reported_at = now;
    }
    backend->PutInstance(std::move(inst));
  }
  for (const auto& e : config.catalog) backend->AddCatalogEntry(e);
  return backend;
}

// The real parts: the gateway's store, the device gateway, the image
// repository and its HTTPS server, and the API's backend over them, all on
// the one io_context.
struct Parts {
  std::unique_ptr<sag::cloud::Store> store;
  std::unique_ptr<sag::cloud::Gateway> gateway;
  std::unique_ptr<sag::cloud::Repository> repository;
  std::unique_ptr<boost::asio::ssl::context> repository_tls;
  std::unique_ptr<sag::cloud::HttpServer> repository_server;
  std::unique_ptr<sag::cloud::FleetBackend> backend;

  void Stop() {
    if (repository_server) repository_server->Stop();
    if (gateway) gateway->Stop();
  }
};

// Admin requests to a running `serve` (docs/cloud.md): `sag-cloud job
// cancel` writes NAME.cancel.json ({"job_id": ...}) into this directory
// beside the store; `serve` looks every kAdminPoll, acts, writes
// NAME.reply.json and removes the request.
constexpr std::chrono::milliseconds kAdminPoll{250};
constexpr std::string_view kCancelSuffix = ".cancel.json";
constexpr std::string_view kReplySuffix = ".reply.json";

fs::path AdminDir(const ApiFileConfig& config) {
  return config.store.parent_path() / "admin-requests";
}

// One cancel request: the gateway's answer as the reply document.
nlohmann::json AnswerCancel(sag::cloud::Gateway& gateway, sag::cloud::Store& store,
                            const std::string& text) {
  using nlohmann::json;
  const json req = json::parse(text, nullptr, false);
  auto error = [](const sag::Error& e) {
    return json{
        {"ok", false},
        {"error",
         {{"code", e.number()}, {"name", sag::ErrcName(e.code())}, {"message", e.message()}}}};
  };
  if (!req.is_object() || !req.contains("job_id") || !req["job_id"].is_string()) {
    return error(sag::Error(sag::Errc::kInvalidArgument,
                            "the request is not {\"job_id\": \"...\"} (written by `sag-cloud job "
                            "cancel`?)"));
  }
  const std::string id = req["job_id"].get<std::string>();
  if (auto st = gateway.Cancel(id); !st) {
    json r = error(st.error());
    r["job_id"] = id;
    return r;
  }
  const auto job = store.FindJob(id);
  json r = {{"ok", true}, {"job_id", id}, {"error", nullptr}};
  if (job) {
    r["state"] = std::string(sag::cloud::JobStateName(job->state));
    r["serial"] = job->serial;
    r["online"] = gateway.IsOnline(job->serial);
  }
  return r;
}

// `serve`'s side of the admin requests: polled on the loop.
void PollAdmin(const fs::path& dir, sag::cloud::Gateway& gateway, sag::cloud::Store& store) {
  std::error_code ec;
  std::vector<fs::path> requests;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    if (name.ends_with(kCancelSuffix) && e.is_regular_file(ec)) requests.push_back(e.path());
  }
  std::sort(requests.begin(), requests.end());
  for (const auto& path : requests) {
    auto text = sag::ReadFile(path, 64U << 10U);
    const std::string name = path.filename().string();
    const std::string base = name.substr(0, name.size() - kCancelSuffix.size());
    const nlohmann::json reply =
        text ? AnswerCancel(gateway, store, *text)
             : nlohmann::json{{"ok", false},
                              {"error",
                               {{"code", text.error().number()},
                                {"name", sag::ErrcName(text.error().code())},
                                {"message", text.error().message()}}}};
    spdlog::info("admin: cancel request {}: {}", name, reply.dump());
    if (auto st = sag::WriteFileAtomic(dir / (base + std::string(kReplySuffix)),
                                       reply.dump(2) + "\n", 0600);
        !st) {
      spdlog::error("admin: {}", st.error().ToString());
    }
    fs::remove(path, ec);
  }
}

sag::Expected<std::unique_ptr<Parts>> StartParts(boost::asio::io_context& io,
                                                 const ApiFileConfig& config) {
  namespace cloud = sag::cloud;
  auto parts = std::make_unique<Parts>();
  const auto& gc = *config.gateway;
  const auto& rc = *config.repository;
  SAG_TRY(parts->store, cloud::OpenSqliteStore(config.store));
  parts->repository = std::make_unique<cloud::Repository>(
      cloud::Repository::Options{rc.dir, {rc.root_ca, std::nullopt}});
  SAG_TRY_STATUS(parts->repository->Scan());
  for (const auto& img : parts->repository->Images()) {
    spdlog::info("image repository: {} {} ({}, {} bytes)", sag::image::ImageTypeName(img.type),
                 img.version, img.file_name, img.size);
  }
  cloud::GatewayOptions go;
  go.listen_address = gc.listen_address;
  go.port = gc.listen_port;
  go.cert_chain = gc.cert_chain;
  go.key = gc.key;
  go.device_ca = gc.device_ca;
  go.heartbeat = gc.heartbeat;
  go.job_silence = gc.job_silence;
  // A silent job ends within a quarter of its limit past it (at most 5 s).
  go.sweep_interval = std::clamp<std::chrono::milliseconds>(
      std::chrono::duration_cast<std::chrono::milliseconds>(gc.job_silence) / 4,
      std::chrono::milliseconds(250), std::chrono::milliseconds(5000));
  parts->gateway = std::make_unique<cloud::Gateway>(io, go, *parts->store);
  cloud::FleetOptions fo;
  fo.instances = config.instances;
  fo.image_base_url = rc.base_url;
  fo.job_deadline = rc.job_deadline;
  parts->backend = std::make_unique<cloud::FleetBackend>(std::move(fo), *parts->store,
                                                         *parts->gateway, *parts->repository);
  SAG_TRY_STATUS(parts->backend->RegisterDevices());
  SAG_TRY_STATUS(parts->gateway->Start());
  SAG_TRY(parts->repository_tls,
          sag::net::MakeTlsServerContext({rc.cert_chain, rc.key, rc.client_ca}));
  cloud::HttpServerOptions ro;
  ro.max_body_bytes = 0;
  const cloud::Repository* repo = parts->repository.get();
  SAG_TRY(parts->repository_server,
          cloud::HttpServer::Start(
              io, rc.listen_address, rc.listen_port,
              [repo](const cloud::HttpRequest& request) { return repo->Serve(request); }, ro,
              parts->repository_tls.get()));
  spdlog::info("device gateway on wss://{}:{}/device/v1; image repository on {} ({} images{})",
               gc.listen_address, parts->gateway->port(), rc.base_url,
               parts->repository->Images().size(),
               rc.client_ca.empty() ? "" : ", device certificates required");
  return parts;
}

int Serve(const std::vector<std::string>& args) {
  std::string config_file;
  std::string level = "info";
  for (std::size_t i = 0; i < args.size(); ++i) {
    if (args[i] == "--config" && i + 1 < args.size()) {
      config_file = args[++i];
    } else if (args[i] == "--log-level" && i + 1 < args.size()) {
      level = args[++i];
    } else {
      std::cerr << "sag-cloud serve: unexpected argument '" << args[i] << "'\n";
      Usage(std::cerr);
      return kExitUsage;
    }
  }
  if (config_file.empty()) {
    std::cerr << "sag-cloud serve: --config FILE is required\n";
    return kExitUsage;
  }
  const auto parsed_level = sag::ParseLogLevel(level);
  if (!parsed_level) {
    std::cerr << "sag-cloud: " << parsed_level.error().ToString() << "\n";
    return kExitUsage;
  }
  sag::SetupLogging(*parsed_level);
  auto config = sag::cloud::rpc::LoadApiConfig(config_file);
  if (!config) {
    spdlog::critical("{}", config.error().ToString());
    return kExitUsage;
  }
  if (config->rpc.access_keys.empty()) {
    spdlog::warn("no access_keys configured: every call will answer InvalidAccessKeyId.NotFound");
  }
  boost::asio::io_context io;
  std::unique_ptr<Parts> parts;
  std::unique_ptr<ApiBackend> memory;
  ApiBackend* backend = nullptr;
  if (config->gateway) {
    auto started = StartParts(io, *config);
    if (!started) {
      spdlog::critical("{}", started.error().ToString());
      return kExitNoAnswer;
    }
    parts = std::move(*started);
    backend = parts->backend.get();
  } else {
    memory = MakeMemoryBackend(*config);
    backend = memory.get();
  }
  // With the real parts, the nonces are kept in their store: a restart does
  // not let a request captured before it be replayed.
  sag::cloud::rpc::RpcService service(config->rpc, *backend, parts ? parts->store.get() : nullptr);

  sag::cloud::HttpServerOptions options;
  options.max_body_bytes = config->max_body_bytes;
  const std::size_t limit = config->max_body_bytes;
  options.refusal = [&service, limit](int status, const std::string&) {
    return service.TransportError(status == 413 ? sag::cloud::rpc::errors::RequestTooLarge(limit)
                                                : sag::cloud::rpc::errors::InternalError());
  };
  std::unique_ptr<boost::asio::ssl::context> tls;
  if (!config->tls_cert.empty()) {
    auto ctx = sag::net::MakeTlsServerContext({config->tls_cert, config->tls_key, {}});
    if (!ctx) {
      spdlog::critical("api TLS: {}", ctx.error().ToString());
      return kExitUsage;
    }
    tls = std::move(*ctx);
  }
  auto server = sag::cloud::HttpServer::Start(io, config->listen_address, config->listen_port,
                                              service.Handler(), options, tls.get());
  if (!server) {
    spdlog::critical("{}", server.error().ToString());
    return kExitNoAnswer;
  }
  spdlog::info("sag-cloud {}: Smartag RPC API on {}://{}:{} ({} access keys, {} instances)",
               SAG_VERSION, tls ? "https" : "http", config->listen_address, (*server)->port(),
               config->rpc.access_keys.size(), config->instances.size());
  boost::asio::signal_set signals(io, SIGINT, SIGTERM);
  signals.async_wait([&](const boost::system::error_code& ec, int signo) {
    if (ec) return;
    spdlog::info("signal {}: stopping", signo);
    (*server)->Stop();
    if (parts) parts->Stop();
    // The closes (WebSocket, TLS) get a moment; then the loop ends.
    boost::asio::post(io, [&io] { io.stop(); });
  });
  // SIGHUP: the image repository is scanned again (new images, removed ones).
  boost::asio::signal_set hup(io, SIGHUP);
  std::function<void()> wait_hup = [&] {
    hup.async_wait([&](const boost::system::error_code& ec, int) {
      if (ec) return;
      if (parts) {
        if (auto st = parts->repository->Scan(); !st) {
          spdlog::error("{}", st.error().ToString());
        } else {
          spdlog::info("image repository rescanned: {} images", parts->repository->Images().size());
        }
      }
      wait_hup();
    });
  };
  wait_hup();
  // Admin requests (`sag-cloud job cancel`), with the real parts.
  boost::asio::steady_timer admin(io);
  std::function<void()> poll_admin;
  if (parts) {
    const fs::path dir = AdminDir(*config);
    std::error_code ec;
    fs::create_directories(dir, ec);
    if (ec) {
      spdlog::critical("cannot create the admin request directory {}: {}", dir.string(),
                       ec.message());
      return kExitNoAnswer;
    }
    fs::permissions(dir, fs::perms::owner_all, ec);
    poll_admin = [&, dir] {
      PollAdmin(dir, *parts->gateway, *parts->store);
      admin.expires_after(kAdminPoll);
      admin.async_wait([&](const boost::system::error_code& e) {
        if (!e) poll_admin();
      });
    };
    poll_admin();
  }
  io.run();  // the signal handler stops it (the admin timer with it)
  return kExitOk;
}

int Call(const std::vector<std::string>& args) {
  using sag::cloud::rpc::SignatureScheme;
  sag::cloud::rpc::SignOptions options;
  std::string endpoint;
  std::string ca_file;
  long timeout_ms = 3000;
  std::string action;
  sag::cloud::rpc::ParamList params;
  if (const char* ak = std::getenv("ALIBABA_CLOUD_ACCESS_KEY_ID")) options.access_key_id = ak;
  if (const char* sk = std::getenv("ALIBABA_CLOUD_ACCESS_KEY_SECRET")) {
    options.access_key_secret = sk;
  }
  const auto bad = [](const std::string& why) {
    std::cerr << "sag-cloud call: " << why << "\n";
    Usage(std::cerr);
    return kExitUsage;
  };
  for (std::size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    const bool has_value = i + 1 < args.size();
    if (a.starts_with("--") && action.empty()) {
      if (!has_value) return bad("option " + a + " needs a value");
      const std::string& v = args[++i];
      if (a == "--endpoint") {
        endpoint = v;
      } else if (a == "--ca-file") {
        ca_file = v;
      } else if (a == "--access-key-id") {
        options.access_key_id = v;
      } else if (a == "--access-key-secret") {
        options.access_key_secret = v;
      } else if (a == "--signature") {
        if (v != "acs3" && v != "v1") return bad("--signature must be acs3 or v1");
        options.scheme = v == "v1" ? SignatureScheme::kV1 : SignatureScheme::kAcs3;
      } else if (a == "--method") {
        if (v != "GET" && v != "POST") return bad("--method must be GET or POST");
        options.method = v;
      } else if (a == "--format") {
        if (v != "JSON" && v != "XML") return bad("--format must be JSON or XML");
        options.format = v;
      } else if (a == "--timeout-ms") {
        char* end = nullptr;
        timeout_ms = std::strtol(v.c_str(), &end, 10);
        if (*end != '\0' || timeout_ms < 1 || timeout_ms > 600000) {
          return bad("--timeout-ms must be 1..600000");
        }
      } else {
        return bad("unknown option " + a);
      }
    } else if (action.empty()) {
      action = a;
    } else {
      const auto eq = a.find('=');
      if (eq == std::string::npos || eq == 0) return bad("'" + a + "' is not Key=Value");
      params.emplace_back(a.substr(0, eq), a.substr(eq + 1));
    }
  }
  if (endpoint.empty()) {
    // As `sag-cloud lab init`'s credentials.env sets it.
    if (const char* e = std::getenv("SAG_CLOUD_ENDPOINT"))
      endpoint = e;  // NOLINT(concurrency-mt-unsafe)
  }
  if (endpoint.empty()) return bad("--endpoint URL (or SAG_CLOUD_ENDPOINT) is required");
  if (action.empty()) return bad("the ACTION is missing");
  if (options.access_key_id.empty() || options.access_key_secret.empty()) {
    return bad(
        "an access key pair is required (--access-key-id/--access-key-secret or "
        "ALIBABA_CLOUD_ACCESS_KEY_ID/_SECRET)");
  }
  auto ep = sag::cloud::rpc::ParseEndpoint(endpoint);
  if (!ep) return bad(ep.error().message());
  if (ep->tls && ca_file.empty()) return bad("an https endpoint needs --ca-file");
  ep->ca_file = ca_file;
  options.host = ep->host.find(':') != std::string::npos
                     ? "[" + ep->host + "]:" + std::to_string(ep->port)
                     : ep->host + ":" + std::to_string(ep->port);
  const auto request =
      sag::cloud::rpc::SignRequest(options, action, params, sag::cloud::rpc::Clock::now());
  const auto response =
      sag::cloud::rpc::SendRequest(*ep, request, std::chrono::milliseconds(timeout_ms));
  if (!response) {
    std::cerr << "sag-cloud call: " << response.error().ToString() << "\n";
    return kExitNoAnswer;
  }
  std::cout << response->body << (response->body.ends_with('\n') ? "" : "\n");
  bool error = response->status < 200 || response->status >= 300;
  if (options.format == "JSON") {
    const auto j = nlohmann::json::parse(response->body, nullptr, false);
    if (j.is_discarded() || !j.is_object()) {
      std::cerr << "sag-cloud call: the answer is not a JSON object (HTTP " << response->status
                << ")\n";
      return error ? kExitErrorAnswer : kExitNoAnswer;
    }
    error = error || (j.contains("Code") && j["Code"] != "200" && j["Code"] != "OK" &&
                      j["Code"] != "Success");
  }
  return error ? kExitErrorAnswer : kExitOk;
}

}  // namespace

// sag-cloud lab init DIR: a control plane for one machine (cloud/lab.h).
int Lab(const std::vector<std::string>& args) {
  if (args.size() < 2 || args[0] != "init") {
    std::cerr << "sag-cloud lab: usage: sag-cloud lab init DIR [options]\n";
    return kExitUsage;
  }
  sag::cloud::LabOptions o;
  o.dir = args[1];
  std::vector<std::string> serials;
  for (std::size_t i = 2; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (i + 1 >= args.size()) {
      std::cerr << "sag-cloud lab init: '" << a << "' needs a value\n";
      return kExitUsage;
    }
    const std::string& v = args[++i];
    auto port = [&](std::uint16_t& out) {
      char* end = nullptr;
      const long n = std::strtol(v.c_str(), &end, 10);
      if (end == v.c_str() || *end != '\0' || n < 0 || n > 65535) return false;
      out = static_cast<std::uint16_t>(n);
      return true;
    };
    bool ok = true;
    if (a == "--smartag-id") {
      o.smartag_id = v;
    } else if (a == "--serial") {
      serials.push_back(v);
    } else if (a == "--model") {
      o.model = v;
    } else if (a == "--api-port") {
      ok = port(o.api_port);
    } else if (a == "--gateway-port") {
      ok = port(o.gateway_port);
    } else if (a == "--repository-port") {
      ok = port(o.repository_port);
    } else {
      std::cerr << "sag-cloud lab init: unknown option '" << a << "'\n";
      return kExitUsage;
    }
    if (!ok) {
      std::cerr << "sag-cloud lab init: " << a << " '" << v << "' is not a port number\n";
      return kExitUsage;
    }
  }
  if (!serials.empty()) o.serials = serials;
  auto lab = sag::cloud::InitLab(o);
  if (!lab) {
    std::cerr << "sag-cloud lab init: " << lab.error().ToString() << "\n";
    return lab.error().code() == sag::Errc::kInvalidArgument ? kExitUsage : kExitErrorAnswer;
  }
  const auto dir = lab->config.parent_path();
  std::cout << "lab in " << dir.string() << "\n"
            << "  configuration   " << lab->config.string() << "\n"
            << "  RPC API         " << lab->api_endpoint << " (access key " << lab->access_key_id
            << "; source " << lab->credentials.string() << ")\n"
            << "  device gateway  " << lab->device_endpoint << "\n"
            << "  images          " << (dir / "images").string() << ", served on "
            << lab->repository_url << "/images/\n"
            << "  PKI             " << (dir / "pki").string()
            << " (root-ca.pem, signer.*, device-SERIAL.*)\n"
            << "next: put signed images (sag-image create) in images/, then\n"
            << "  sag-cloud serve --config " << lab->config.string() << "\n";
  return kExitOk;
}

// sag-cloud store dump --config FILE: the store as JSON on stdout (read
// only; works while `serve` runs).
int StoreCommand(const std::vector<std::string>& args) {
  std::string config_file;
  if (args.size() == 3 && args[0] == "dump" && args[1] == "--config") {
    config_file = args[2];
  } else {
    std::cerr << "usage: sag-cloud store dump --config FILE\n";
    return kExitUsage;
  }
  auto config = sag::cloud::rpc::LoadApiConfig(config_file);
  if (!config) {
    std::cerr << "sag-cloud store: " << config.error().ToString() << "\n";
    return kExitUsage;
  }
  sag::cloud::SqliteOptions options;
  options.read_only = true;
  auto store = sag::cloud::OpenSqliteStore(config->store, options);
  if (!store) {
    std::cerr << "sag-cloud store: " << store.error().ToString() << "\n";
    return kExitErrorAnswer;
  }
  std::cout << sag::cloud::DumpJson(**store);
  return std::cout.flush() ? kExitOk : kExitErrorAnswer;
}

// sag-cloud job cancel --config FILE [--timeout-ms N] JOB_ID: asks the
// running `serve` of that configuration to cancel a job; prints its answer.
int JobCommand(const std::vector<std::string>& args) {
  const auto usage = [](const std::string& why) {
    std::cerr << "sag-cloud job: " << why
              << "\nusage: sag-cloud job cancel --config FILE [--timeout-ms N] JOB_ID\n";
    return kExitUsage;
  };
  if (args.empty() || args[0] != "cancel") return usage("the only job command is 'cancel'");
  std::string config_file;
  std::string job_id;
  long timeout_ms = 10000;
  for (std::size_t i = 1; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "--config" && i + 1 < args.size()) {
      config_file = args[++i];
    } else if (a == "--timeout-ms" && i + 1 < args.size()) {
      char* end = nullptr;
      timeout_ms = std::strtol(args[++i].c_str(), &end, 10);
      if (*end != '\0' || timeout_ms < 1 || timeout_ms > 600000) {
        return usage("--timeout-ms must be 1..600000");
      }
    } else if (a.starts_with("--")) {
      return usage("unknown option or missing value: " + a);
    } else if (job_id.empty()) {
      job_id = a;
    } else {
      return usage("one JOB_ID only ('" + a + "' is extra)");
    }
  }
  if (config_file.empty()) return usage("--config FILE is required");
  if (job_id.empty() || job_id.size() > sag::proto::kMaxId) {
    return usage("JOB_ID must be 1.." + std::to_string(sag::proto::kMaxId) + " characters");
  }
  auto config = sag::cloud::rpc::LoadApiConfig(config_file);
  if (!config) {
    std::cerr << "sag-cloud job: " << config.error().ToString() << "\n";
    return kExitUsage;
  }
  if (!config->gateway) {
    std::cerr << "sag-cloud job: " << config_file
              << " has no gateway: its serve keeps no jobs to cancel\n";
    return kExitUsage;
  }
  const fs::path dir = AdminDir(*config);
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    std::cerr << "sag-cloud job: " << dir.string()
              << " does not exist: is `sag-cloud serve --config " << config_file << "` running?\n";
    return kExitNoAnswer;
  }
  std::random_device rd;
  char name[40];
  std::snprintf(name, sizeof name, "%08x%08x", rd(), rd());
  const fs::path request = dir / (std::string(name) + std::string(kCancelSuffix));
  const fs::path reply = dir / (std::string(name) + std::string(kReplySuffix));
  if (auto st =
          sag::WriteFileAtomic(request, nlohmann::json{{"job_id", job_id}}.dump() + "\n", 0600);
      !st) {
    std::cerr << "sag-cloud job: " << st.error().ToString() << "\n";
    return kExitErrorAnswer;
  }
  const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  std::optional<std::string> text;
  while (std::chrono::steady_clock::now() < until) {
    if (auto t = sag::ReadFile(reply, 64U << 10U)) {
      text = std::move(*t);
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  if (!text) {
    // Taken back, unless serve takes it right now (then its reply stays).
    fs::remove(request, ec);
    std::cerr << "sag-cloud job: no answer within " << timeout_ms
              << " ms: is `sag-cloud serve --config " << config_file << "` running?\n";
    return kExitNoAnswer;
  }
  fs::remove(reply, ec);
  const auto j = nlohmann::json::parse(*text, nullptr, false);
  if (!j.is_object() || !j.value("ok", false)) {
    const std::string why = j.is_object() && j.contains("error") && j["error"].is_object()
                                ? j["error"].value("name", std::string()) + ": " +
                                      j["error"].value("message", std::string())
                                : *text;
    std::cerr << "sag-cloud job cancel " << job_id << ": refused: " << why << "\n";
    return kExitErrorAnswer;
  }
  const std::string state = j.value("state", std::string());
  if (state == "Cancelled") {
    std::cout << "job " << job_id << " cancelled (it had not been offered to the device)\n";
  } else if (j.value("online", false)) {
    std::cout << "job " << job_id << " (" << state << "): cancel sent to "
              << j.value("serial", std::string())
              << "; its answer and the job's end are in the store (sag-cloud store dump)\n";
  } else {
    std::cout << "job " << job_id << " (" << state << "): cancel recorded; sent when "
              << j.value("serial", std::string()) << " connects\n";
  }
  return kExitOk;
}

int main(int argc, char** argv) {
  const std::vector<std::string> all(argv + 1, argv + argc);
  if (all.empty()) {
    Usage(std::cerr);
    return kExitUsage;
  }
  const std::vector<std::string> rest(all.begin() + 1, all.end());
  if (all[0] == "--version") {
    std::cout << "sag-cloud " << SAG_VERSION << "\n";
    return kExitOk;
  }
  if (all[0] == "--help" || all[0] == "-h") {
    Usage(std::cout);
    return kExitOk;
  }
  if (all[0] == "serve") return Serve(rest);
  if (all[0] == "call") return Call(rest);
  if (all[0] == "lab") return Lab(rest);
  if (all[0] == "store") return StoreCommand(rest);
  if (all[0] == "job") return JobCommand(rest);
  std::cerr << "sag-cloud: unknown command '" << all[0] << "'\n";
  Usage(std::cerr);
  return kExitUsage;
}
