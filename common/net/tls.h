// TLS set-up shared by everything that speaks TLS: the downloader, the device
// channel (both ends) and the cloud's HTTPS listeners. TLS 1.2 or later; trust
// comes from one pinned CA file, never the system store.
#pragma once

#include <openssl/ssl.h>

#include <boost/asio/ssl/context.hpp>
#include <filesystem>
#include <memory>
#include <string>

#include "common/error.h"

namespace sag::net {

struct TlsClientOptions {
  std::filesystem::path ca_file;  // PEM: the pinned root the server must chain to
  std::filesystem::path cert;     // optional client identity (mutual TLS): both or neither
  std::filesystem::path key;
};

// A client context: verify_peer against ca_file, the client identity loaded
// and checked against its key. The host name is checked per connection
// (ssl::host_name_verification), with SNI for names. kNetTls / kInvalidArgument
// with what to fix.
Expected<std::unique_ptr<boost::asio::ssl::context>> MakeTlsClientContext(
    const TlsClientOptions& options);

struct TlsServerOptions {
  std::filesystem::path cert_chain;  // PEM: the server certificate, then intermediates
  std::filesystem::path key;
  // Non-empty: a client certificate chaining to this CA is required
  // (verify_peer | verify_fail_if_no_peer_cert).
  std::filesystem::path client_ca;
};

Expected<std::unique_ptr<boost::asio::ssl::context>> MakeTlsServerContext(
    const TlsServerOptions& options);

// The subject common name of the verified peer certificate of `ssl`; "" when
// the peer presented none.
std::string PeerCommonName(SSL* ssl);

}  // namespace sag::net
