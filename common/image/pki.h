// A development PKI for the demo and tests (sag-image pki init). Never for
// production: keys are written unencrypted.
//
// InitDevPki writes into DIR (names documented in docs/image-format.md):
//   root-ca.pem / root-ca.key                  self-signed root (pin this one)
//   intermediate-ca.pem / intermediate-ca.key  issued by the root, pathlen 0
//   signer.pem / signer.key / signer-chain.pem code signing (EKU codeSigning)
//   server.pem / server.key / server-chain.pem TLS server for localhost,
//                                              127.0.0.1 and ::1 (serverAuth)
//   device-SERIAL.pem / .key / -chain.pem      TLS client, CN=SERIAL (clientAuth)
// Every leaf is issued by the intermediate; every *-chain.pem holds the leaf
// then the intermediate. Keys are EC P-256.
#pragma once

#include <ctime>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "common/error.h"

namespace sag::image::pki {

struct InitOptions {
  std::vector<std::string> devices{"sag-sim-0001"};  // serial numbers
  std::optional<std::time_t> now;                    // validity reference; unset = now
};

[[nodiscard]] Status InitDevPki(const std::filesystem::path& dir, const InitOptions& options = {});

// Signers that must be refused, for tests and demos.
enum class SignerFlaw {
  kNone,           // a good code-signing certificate
  kExpired,        // valid from now-2y to now-1d
  kNotYetValid,    // valid from now+1y
  kNoCodeSigning,  // EKU serverAuth only
  kOtherRoot,      // chained to a fresh root that is not DIR's (written as NAME-root-ca.pem)
};
[[nodiscard]] Expected<SignerFlaw> ParseSignerFlaw(std::string_view text);

// Writes NAME.pem, NAME.key and NAME-chain.pem into dir, issued by dir's
// intermediate (made by InitDevPki) unless the flaw says otherwise.
[[nodiscard]] Status IssueSigner(const std::filesystem::path& dir, const std::string& name,
                                 SignerFlaw flaw, std::optional<std::time_t> now = {});

}  // namespace sag::image::pki
