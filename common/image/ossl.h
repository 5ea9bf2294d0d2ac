// Internal helpers for the image module: owning handles for OpenSSL objects
// and the text of OpenSSL's error queue. Not part of the public interface.
#pragma once

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/cms.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/objects.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <memory>
#include <string>
#include <string_view>

#include "common/error.h"

namespace sag::image::ossl {

template <auto Fn>
struct Deleter {
  template <typename T>
  void operator()(T* p) const {
    Fn(p);
  }
};

using BioPtr = std::unique_ptr<BIO, Deleter<BIO_free_all>>;
using X509Ptr = std::unique_ptr<X509, Deleter<X509_free>>;
using PkeyPtr = std::unique_ptr<EVP_PKEY, Deleter<EVP_PKEY_free>>;
using CmsPtr = std::unique_ptr<CMS_ContentInfo, Deleter<CMS_ContentInfo_free>>;
using StorePtr = std::unique_ptr<X509_STORE, Deleter<X509_STORE_free>>;
using StoreCtxPtr = std::unique_ptr<X509_STORE_CTX, Deleter<X509_STORE_CTX_free>>;

inline void FreeX509Stack(STACK_OF(X509) * s) { sk_X509_pop_free(s, X509_free); }
using X509StackPtr = std::unique_ptr<STACK_OF(X509), Deleter<FreeX509Stack>>;

// Drains OpenSSL's error queue into one line ("" when empty).
inline std::string TakeErrors() {
  std::string out;
  unsigned long e = 0;
  while ((e = ERR_get_error()) != 0) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof(buf));
    if (!out.empty()) out += "; ";
    out += buf;
  }
  return out;
}

inline Error Fail(Errc code, std::string_view what) {
  std::string msg(what);
  const auto detail = TakeErrors();
  if (!detail.empty()) msg += " (" + detail + ")";
  return {code, msg};
}

inline BioPtr MemBio(std::string_view data) {
  return BioPtr(BIO_new_mem_buf(data.data(), static_cast<int>(data.size())));
}

inline std::string BioText(BIO* bio) {
  BUF_MEM* mem = nullptr;
  BIO_get_mem_ptr(bio, &mem);
  return mem == nullptr ? std::string() : std::string(mem->data, mem->length);
}

// Whether the ECDSA signature of `si` (by `key`, an EC key) has s > n/2; with
// `make_low` such an s is replaced by n - s, which verifies as well (see
// CheckLowS in image.cpp). kSignatureInvalid when the value is not an
// ECDSA-Sig-Value.
inline Expected<bool> HighS(CMS_SignerInfo* si, EVP_PKEY* key, bool make_low) {
  char group[80] = {};
  std::size_t group_len = 0;
  if (EVP_PKEY_get_group_name(key, group, sizeof group, &group_len) != 1) {
    return Fail(Errc::kSignatureInvalid, "the signer's EC key names no curve");
  }
  std::unique_ptr<EC_GROUP, Deleter<EC_GROUP_free>> ec(
      EC_GROUP_new_by_curve_name(OBJ_txt2nid(group)));
  if (!ec) return Fail(Errc::kSignatureInvalid, "unknown curve " + std::string(group));
  const BIGNUM* n = EC_GROUP_get0_order(ec.get());
  ASN1_OCTET_STRING* os = CMS_SignerInfo_get0_signature(si);
  if (os == nullptr) return Fail(Errc::kSignatureInvalid, "the signer info has no signature");
  const unsigned char* p = ASN1_STRING_get0_data(os);
  const int len = ASN1_STRING_length(os);
  std::unique_ptr<ECDSA_SIG, Deleter<ECDSA_SIG_free>> sig(d2i_ECDSA_SIG(nullptr, &p, len));
  if (!sig || p != ASN1_STRING_get0_data(os) + len) {
    return Fail(Errc::kSignatureInvalid, "the signature value is not an ECDSA signature");
  }
  std::unique_ptr<BIGNUM, Deleter<BN_free>> half(BN_dup(n));
  if (!half || BN_rshift1(half.get(), half.get()) != 1) return Fail(Errc::kInternal, "BN_rshift1");
  const bool high = BN_cmp(ECDSA_SIG_get0_s(sig.get()), half.get()) > 0;
  if (!high || !make_low) return high;
  BIGNUM* low = BN_new();
  BIGNUM* r = BN_dup(ECDSA_SIG_get0_r(sig.get()));
  if (low == nullptr || r == nullptr || BN_sub(low, n, ECDSA_SIG_get0_s(sig.get())) != 1 ||
      ECDSA_SIG_set0(sig.get(), r, low) != 1) {
    BN_free(low);
    BN_free(r);
    return Fail(Errc::kInternal, "computing n - s");
  }
  unsigned char* der = nullptr;
  const int der_len = i2d_ECDSA_SIG(sig.get(), &der);
  if (der_len <= 0) return Fail(Errc::kInternal, "encoding the ECDSA signature");
  const int ok = ASN1_STRING_set(os, der, der_len);
  OPENSSL_free(der);
  if (ok != 1) return Fail(Errc::kInternal, "replacing the signature value");
  return high;
}

}  // namespace sag::image::ossl
