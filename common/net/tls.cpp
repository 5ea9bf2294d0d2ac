#include "common/net/tls.h"

#include <openssl/x509.h>

#include <array>

namespace sag::net {

namespace {

namespace ssl = boost::asio::ssl;
using ErrorCode = boost::system::error_code;

Status RestrictToTls12(ssl::context& ctx) {
  if (SSL_CTX_set_min_proto_version(ctx.native_handle(), TLS1_2_VERSION) != 1) {
    return Error(Errc::kNetTls, "cannot restrict TLS to version 1.2 and later");
  }
  return Ok();
}

// Loads a certificate chain and its key and checks that they belong together.
Status LoadIdentity(ssl::context& ctx, const std::filesystem::path& cert,
                    const std::filesystem::path& key, std::string_view whose) {
  ErrorCode ec;
  ctx.use_certificate_chain_file(cert.string(), ec);
  if (!ec) ctx.use_private_key_file(key.string(), ssl::context::pem, ec);
  if (ec) {
    return Error(Errc::kNetTls, "cannot load the " + std::string(whose) + " certificate " +
                                    cert.string() + " / key " + key.string() + ": " + ec.message() +
                                    "; check the identity files");
  }
  if (SSL_CTX_check_private_key(ctx.native_handle()) != 1) {
    return Error(Errc::kNetTls, "the " + std::string(whose) + " key " + key.string() +
                                    " does not match the certificate " + cert.string());
  }
  return Ok();
}

}  // namespace

Expected<std::unique_ptr<ssl::context>> MakeTlsClientContext(const TlsClientOptions& options) {
  auto ctx = std::make_unique<ssl::context>(ssl::context::tls_client);
  SAG_TRY_STATUS(RestrictToTls12(*ctx));
  ErrorCode ec;
  ctx->set_verify_mode(ssl::verify_peer, ec);
  if (!ec) ctx->load_verify_file(options.ca_file.string(), ec);
  if (ec) {
    return Error(Errc::kNetTls, "cannot load the pinned CA " + options.ca_file.string() + ": " +
                                    ec.message() + "; check the CA file in the configuration");
  }
  if (options.cert.empty() != options.key.empty()) {
    return Error(Errc::kInvalidArgument,
                 "mutual TLS needs both a client certificate and a key (got only one); set both "
                 "or neither");
  }
  if (!options.cert.empty())
    SAG_TRY_STATUS(LoadIdentity(*ctx, options.cert, options.key, "device"));
  return ctx;
}

Expected<std::unique_ptr<ssl::context>> MakeTlsServerContext(const TlsServerOptions& options) {
  auto ctx = std::make_unique<ssl::context>(ssl::context::tls_server);
  SAG_TRY_STATUS(RestrictToTls12(*ctx));
  SAG_TRY_STATUS(LoadIdentity(*ctx, options.cert_chain, options.key, "server"));
  if (!options.client_ca.empty()) {
    ErrorCode ec;
    ctx->load_verify_file(options.client_ca.string(), ec);
    if (!ec) ctx->set_verify_mode(ssl::verify_peer | ssl::verify_fail_if_no_peer_cert, ec);
    if (ec) {
      return Error(Errc::kNetTls,
                   "cannot load the client CA " + options.client_ca.string() + ": " + ec.message());
    }
    // The CA names sent in the CertificateRequest help a client with several
    // identities pick the right one.
    if (STACK_OF(X509_NAME)* names = SSL_load_client_CA_file(options.client_ca.c_str())) {
      SSL_CTX_set_client_CA_list(ctx->native_handle(), names);
    }
  }
  return ctx;
}

std::string PeerCommonName(SSL* ssl) {
  X509* cert = SSL_get0_peer_certificate(ssl);
  if (cert == nullptr) return {};
  std::array<char, 256> cn{};
  const int n = X509_NAME_get_text_by_NID(X509_get_subject_name(cert), NID_commonName, cn.data(),
                                          static_cast<int>(cn.size()));
  return n > 0 ? std::string(cn.data(), static_cast<std::size_t>(n)) : std::string();
}

}  // namespace sag::net
