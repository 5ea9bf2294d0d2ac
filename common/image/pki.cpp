#include "common/image/pki.h"

#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include <algorithm>
#include <cctype>

#include "common/atomic_file.h"
#include "common/image/ossl.h"

namespace sag::image::pki {

namespace {

constexpr std::time_t kDay = std::time_t{24} * 3600;
constexpr std::time_t kYear = 365 * kDay;

enum class Role { kRoot, kIntermediate, kCodeSigning, kServer, kClient };

struct Issued {
  ossl::X509Ptr cert;
  ossl::PkeyPtr key;
};

Status AddExt(X509* cert, X509* issuer, int nid, const char* value) {
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, issuer, cert, nullptr, nullptr, 0);
  X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &ctx, nid, value);
  if (ext == nullptr) return ossl::Fail(Errc::kInternal, std::string("extension ") + value);
  const int ok = X509_add_ext(cert, ext, -1);
  X509_EXTENSION_free(ext);
  if (ok != 1) return ossl::Fail(Errc::kInternal, "adding an extension");
  return Ok();
}

// Issues a certificate for a new P-256 key; `issuer` null = self-signed.
Expected<Issued> Issue(const std::string& cn, Role role, std::time_t not_before,
                       std::time_t not_after, const Issued* issuer, const std::string& san = {}) {
  Issued out;
  out.key.reset(EVP_EC_gen("P-256"));
  out.cert.reset(X509_new());
  if (!out.key || !out.cert) return ossl::Fail(Errc::kInternal, "generating a P-256 key");
  X509* x = out.cert.get();
  X509_set_version(x, 2);
  std::unique_ptr<BIGNUM, ossl::Deleter<BN_free>> serial(BN_new());
  BN_rand(serial.get(), 63, BN_RAND_TOP_ANY, BN_RAND_BOTTOM_ANY);
  BN_to_ASN1_INTEGER(serial.get(), X509_get_serialNumber(x));
  ASN1_TIME_set(X509_getm_notBefore(x), not_before);
  ASN1_TIME_set(X509_getm_notAfter(x), not_after);
  X509_set_pubkey(x, out.key.get());
  X509_NAME* name = X509_get_subject_name(x);
  X509_NAME_add_entry_by_txt(name, "O", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>("sag-agent development"), -1,
                             -1, 0);
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>(cn.c_str()), -1, -1, 0);
  X509_set_issuer_name(x, issuer != nullptr ? X509_get_subject_name(issuer->cert.get()) : name);
  X509* issuer_cert = issuer != nullptr ? issuer->cert.get() : x;
  SAG_TRY_STATUS(AddExt(x, issuer_cert, NID_subject_key_identifier, "hash"));
  SAG_TRY_STATUS(AddExt(x, issuer_cert, NID_authority_key_identifier, "keyid:always"));
  switch (role) {
    case Role::kRoot:
      SAG_TRY_STATUS(AddExt(x, issuer_cert, NID_basic_constraints, "critical,CA:TRUE"));
      SAG_TRY_STATUS(AddExt(x, issuer_cert, NID_key_usage, "critical,keyCertSign,cRLSign"));
      break;
    case Role::kIntermediate:
      SAG_TRY_STATUS(AddExt(x, issuer_cert, NID_basic_constraints, "critical,CA:TRUE,pathlen:0"));
      SAG_TRY_STATUS(AddExt(x, issuer_cert, NID_key_usage, "critical,keyCertSign,cRLSign"));
      break;
    case Role::kCodeSigning:
      SAG_TRY_STATUS(AddExt(x, issuer_cert, NID_basic_constraints, "critical,CA:FALSE"));
      SAG_TRY_STATUS(AddExt(x, issuer_cert, NID_key_usage, "critical,digitalSignature"));
      SAG_TRY_STATUS(AddExt(x, issuer_cert, NID_ext_key_usage, "codeSigning"));
      break;
    case Role::kServer:
      SAG_TRY_STATUS(AddExt(x, issuer_cert, NID_basic_constraints, "critical,CA:FALSE"));
      SAG_TRY_STATUS(AddExt(x, issuer_cert, NID_key_usage, "critical,digitalSignature"));
      SAG_TRY_STATUS(AddExt(x, issuer_cert, NID_ext_key_usage, "serverAuth"));
      break;
    case Role::kClient:
      SAG_TRY_STATUS(AddExt(x, issuer_cert, NID_basic_constraints, "critical,CA:FALSE"));
      SAG_TRY_STATUS(AddExt(x, issuer_cert, NID_key_usage, "critical,digitalSignature"));
      SAG_TRY_STATUS(AddExt(x, issuer_cert, NID_ext_key_usage, "clientAuth"));
      break;
  }
  if (!san.empty()) SAG_TRY_STATUS(AddExt(x, issuer_cert, NID_subject_alt_name, san.c_str()));
  EVP_PKEY* signing_key = issuer != nullptr ? issuer->key.get() : out.key.get();
  if (X509_sign(x, signing_key, EVP_sha256()) == 0) {
    return ossl::Fail(Errc::kInternal, "signing the certificate for " + cn);
  }
  return out;
}

std::string CertPem(X509* x) {
  ossl::BioPtr bio(BIO_new(BIO_s_mem()));
  PEM_write_bio_X509(bio.get(), x);
  return ossl::BioText(bio.get());
}

std::string KeyPem(EVP_PKEY* k) {
  ossl::BioPtr bio(BIO_new(BIO_s_mem()));
  PEM_write_bio_PrivateKey(bio.get(), k, nullptr, nullptr, 0, nullptr, nullptr);
  return ossl::BioText(bio.get());
}

Status Save(const std::filesystem::path& dir, const std::string& name, const Issued& leaf,
            const Issued* chain) {
  SAG_TRY_STATUS(WriteFileAtomic(dir / (name + ".key"), KeyPem(leaf.key.get()), 0600));
  SAG_TRY_STATUS(WriteFileAtomic(dir / (name + ".pem"), CertPem(leaf.cert.get())));
  if (chain != nullptr) {
    SAG_TRY_STATUS(WriteFileAtomic(dir / (name + "-chain.pem"),
                                   CertPem(leaf.cert.get()) + CertPem(chain->cert.get())));
  }
  return Ok();
}

Expected<Issued> Load(const std::filesystem::path& dir, const std::string& name) {
  SAG_TRY(const auto cert, ReadFile(dir / (name + ".pem"), 1U << 20U));
  SAG_TRY(const auto key, ReadFile(dir / (name + ".key"), 1U << 20U));
  Issued out;
  auto cb = ossl::MemBio(cert);
  auto kb = ossl::MemBio(key);
  out.cert.reset(PEM_read_bio_X509(cb.get(), nullptr, nullptr, nullptr));
  out.key.reset(PEM_read_bio_PrivateKey(kb.get(), nullptr, nullptr, nullptr));
  if (!out.cert || !out.key) {
    return ossl::Fail(Errc::kKeyInvalid, (dir / name).string() +
                                             ".pem/.key unusable; run "
                                             "sag-image pki init first");
  }
  return out;
}

bool ValidSerial(std::string_view s) {
  if (s.empty() || s.size() > 64) return false;
  return std::all_of(s.begin(), s.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) != 0 || c == '-' || c == '_' || c == '.';
  });
}

}  // namespace

Status InitDevPki(const std::filesystem::path& dir, const InitOptions& options) {
  for (const auto& d : options.devices) {
    if (!ValidSerial(d)) {
      return Error(Errc::kInvalidArgument,
                   "device serial '" + d + "' must be 1-64 of [A-Za-z0-9._-]");
    }
  }
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return Error(Errc::kIo, "create " + dir.string() + ": " + ec.message());
  ERR_clear_error();
  const std::time_t now = options.now.value_or(std::time(nullptr));
  SAG_TRY(auto root, Issue("sag-agent development root CA", Role::kRoot, now - 3 * kYear,
                           now + 20 * kYear, nullptr));
  SAG_TRY(auto inter, Issue("sag-agent development intermediate CA", Role::kIntermediate,
                            now - 3 * kYear, now + 15 * kYear, &root));
  SAG_TRY(auto signer, Issue("sag-agent development code signing", Role::kCodeSigning, now - kDay,
                             now + 5 * kYear, &inter));
  SAG_TRY(auto server, Issue("localhost", Role::kServer, now - kDay, now + 5 * kYear, &inter,
                             "DNS:localhost,IP:127.0.0.1,IP:::1"));
  SAG_TRY_STATUS(Save(dir, "root-ca", root, nullptr));
  SAG_TRY_STATUS(Save(dir, "intermediate-ca", inter, nullptr));
  SAG_TRY_STATUS(Save(dir, "signer", signer, &inter));
  SAG_TRY_STATUS(Save(dir, "server", server, &inter));
  for (const auto& serial : options.devices) {
    SAG_TRY(auto dev, Issue(serial, Role::kClient, now - kDay, now + 5 * kYear, &inter));
    SAG_TRY_STATUS(Save(dir, "device-" + serial, dev, &inter));
  }
  return Ok();
}

Expected<SignerFlaw> ParseSignerFlaw(std::string_view text) {
  if (text == "none") return SignerFlaw::kNone;
  if (text == "expired") return SignerFlaw::kExpired;
  if (text == "not-yet-valid") return SignerFlaw::kNotYetValid;
  if (text == "no-codesign") return SignerFlaw::kNoCodeSigning;
  if (text == "other-root") return SignerFlaw::kOtherRoot;
  return Error(Errc::kInvalidArgument,
               "unknown signer flaw '" + std::string(text) +
                   "' (none, expired, not-yet-valid, no-codesign, other-root)");
}

Status IssueSigner(const std::filesystem::path& dir, const std::string& name, SignerFlaw flaw,
                   std::optional<std::time_t> now_opt) {
  if (!ValidSerial(name)) return Error(Errc::kInvalidArgument, "bad signer name '" + name + "'");
  ERR_clear_error();
  const std::time_t now = now_opt.value_or(std::time(nullptr));
  Issued inter;
  if (flaw == SignerFlaw::kOtherRoot) {
    SAG_TRY(auto root,
            Issue("another root CA", Role::kRoot, now - 3 * kYear, now + 20 * kYear, nullptr));
    SAG_TRY(inter, Issue("another intermediate CA", Role::kIntermediate, now - 3 * kYear,
                         now + 15 * kYear, &root));
    SAG_TRY_STATUS(WriteFileAtomic(dir / (name + "-root-ca.pem"), CertPem(root.cert.get())));
  } else {
    SAG_TRY(inter, Load(dir, "intermediate-ca"));
  }
  std::time_t from = now - kDay;
  std::time_t to = now + 5 * kYear;
  Role role = Role::kCodeSigning;
  switch (flaw) {
    case SignerFlaw::kExpired:
      from = now - 2 * kYear;
      to = now - kDay;
      break;
    case SignerFlaw::kNotYetValid:
      from = now + kYear;
      to = now + 2 * kYear;
      break;
    case SignerFlaw::kNoCodeSigning:
      role = Role::kServer;
      break;
    case SignerFlaw::kNone:
    case SignerFlaw::kOtherRoot:
      break;
  }
  SAG_TRY(auto leaf, Issue("sag-agent test signer " + name, role, from, to, &inter));
  return Save(dir, name, leaf, &inter);
}

}  // namespace sag::image::pki
