#include "actors/http/tls.hpp"

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <cstdio>
#include <filesystem>
#include <random>

namespace tutti::http {

namespace ssl = boost::asio::ssl;

Expected<std::shared_ptr<ssl::context>> make_server_tls_context(const std::string& cert_file, const std::string& key_file) {
  auto ctx = std::make_shared<ssl::context>(ssl::context::tls_server);
  ctx->set_options(ssl::context::default_workarounds | ssl::context::no_sslv2 | ssl::context::no_sslv3 |
                   ssl::context::no_tlsv1 | ssl::context::no_tlsv1_1 | ssl::context::single_dh_use);
  boost::system::error_code ec;
  ctx->use_certificate_chain_file(cert_file, ec);
  if (ec) return Error{"TLS certificate '" + cert_file + "': " + ec.message()};
  ctx->use_private_key_file(key_file, ssl::context::pem, ec);
  if (ec) return Error{"TLS key '" + key_file + "': " + ec.message()};
  if (SSL_CTX_check_private_key(ctx->native_handle()) != 1)
    return Error{"TLS key '" + key_file + "' does not match the certificate '" + cert_file + "'"};
  return ctx;
}

namespace {

struct KeyFree {
  void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};
struct CertFree {
  void operator()(X509* c) const { X509_free(c); }
};
using KeyPtr = std::unique_ptr<EVP_PKEY, KeyFree>;
using CertPtr = std::unique_ptr<X509, CertFree>;

std::string openssl_error(const char* what) {
  char buf[256];
  ERR_error_string_n(ERR_get_error(), buf, sizeof buf);
  return std::string(what) + ": " + buf;
}

bool add_extension(X509* cert, X509* issuer, int nid, const char* value) {
  X509V3_CTX v3;
  X509V3_set_ctx_nodb(&v3);
  X509V3_set_ctx(&v3, issuer, cert, nullptr, nullptr, 0);
  X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &v3, nid, value);
  if (!ext) return false;
  const bool ok = X509_add_ext(cert, ext, -1) == 1;
  X509_EXTENSION_free(ext);
  return ok;
}

// A certificate for `common_name` with `key`, signed by `issuer_key` (issuer null: itself).
Expected<CertPtr> make_certificate(EVP_PKEY* key, const char* common_name, X509* issuer, EVP_PKEY* issuer_key, bool is_ca) {
  CertPtr cert(X509_new());
  if (!cert) return Error{openssl_error("X509_new")};
  X509_set_version(cert.get(), 2);
  std::random_device rd;
  ASN1_INTEGER_set(X509_get_serialNumber(cert.get()), long(rd() & 0x7fffffff));
  X509_gmtime_adj(X509_getm_notBefore(cert.get()), -3600);
  X509_gmtime_adj(X509_getm_notAfter(cert.get()), long(is_ca ? 3650 : 825) * 24 * 3600);
  X509_set_pubkey(cert.get(), key);
  X509_NAME* name = X509_get_subject_name(cert.get());
  X509_NAME_add_entry_by_txt(name, "O", MBSTRING_ASC, reinterpret_cast<const unsigned char*>("tutti development (not for production)"), -1, -1, 0);
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, reinterpret_cast<const unsigned char*>(common_name), -1, -1, 0);
  X509_set_issuer_name(cert.get(), issuer ? X509_get_subject_name(issuer) : name);
  X509* signer = issuer ? issuer : cert.get();
  bool ok = true;
  if (is_ca) {
    ok = ok && add_extension(cert.get(), signer, NID_basic_constraints, "critical,CA:TRUE,pathlen:0");
    ok = ok && add_extension(cert.get(), signer, NID_key_usage, "critical,keyCertSign,cRLSign");
  } else {
    ok = ok && add_extension(cert.get(), signer, NID_basic_constraints, "critical,CA:FALSE");
    ok = ok && add_extension(cert.get(), signer, NID_key_usage, "critical,digitalSignature,keyEncipherment");
    // clientAuth too: cluster nodes present their certificate to each other, and caf::openssl
    // verifies the peer on both sides (actors/cluster/node.hpp).
    ok = ok && add_extension(cert.get(), signer, NID_ext_key_usage, "serverAuth,clientAuth");
    ok = ok && add_extension(cert.get(), signer, NID_subject_alt_name, "DNS:localhost,IP:127.0.0.1,IP:::1");
  }
  ok = ok && add_extension(cert.get(), signer, NID_subject_key_identifier, "hash");
  if (!ok) return Error{openssl_error("certificate extensions")};
  if (X509_sign(cert.get(), issuer_key ? issuer_key : key, EVP_sha256()) == 0) return Error{openssl_error("X509_sign")};
  return cert;
}

Status write_pem(const std::string& path, auto&& write) {
  FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) return Error{"cannot write " + path};
  const bool ok = write(f);
  std::fclose(f);
  if (!ok) return Error{openssl_error(("writing " + path).c_str())};
  return {};
}

// A certificate file that parses and stays valid for at least another day.
bool still_valid(const std::string& path) {
  FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) return false;
  CertPtr cert(PEM_read_X509(f, nullptr, nullptr, nullptr));
  std::fclose(f);
  if (!cert) return false;
  time_t tomorrow = time(nullptr) + 24 * 3600;
  return X509_cmp_time(X509_get0_notAfter(cert.get()), &tomorrow) > 0;
}

}  // namespace

Expected<SelfSignedFiles> make_self_signed(const std::string& dir) {
  std::error_code fs_ec;
  std::filesystem::create_directories(dir, fs_ec);
  if (fs_ec) return Error{"cannot create " + dir + ": " + fs_ec.message()};
  SelfSignedFiles out{dir + "/ca.pem", dir + "/cert.pem", dir + "/key.pem"};
  if (still_valid(out.ca) && still_valid(out.cert) && std::filesystem::exists(out.key) &&
      make_server_tls_context(out.cert, out.key)) {
    out.reused = true;
    return out;
  }
  KeyPtr ca_key(EVP_EC_gen("P-256")), key(EVP_EC_gen("P-256"));
  if (!ca_key || !key) return Error{openssl_error("EC key generation")};
  auto ca = make_certificate(ca_key.get(), "tutti development CA", nullptr, nullptr, true);
  if (!ca) return ca.error();
  auto cert = make_certificate(key.get(), "localhost", ca->get(), ca_key.get(), false);
  if (!cert) return cert.error();
  if (Status s = write_pem(out.ca, [&](FILE* f) { return PEM_write_X509(f, ca->get()) == 1; }); !s) return s.error();
  // The server presents its certificate and then the CA's (a complete chain).
  if (Status s = write_pem(out.cert, [&](FILE* f) { return PEM_write_X509(f, cert->get()) == 1 && PEM_write_X509(f, ca->get()) == 1; }); !s)
    return s.error();
  std::filesystem::permissions(dir, std::filesystem::perms::owner_all, fs_ec);
  if (Status s = write_pem(out.key, [&](FILE* f) { return PEM_write_PrivateKey(f, key.get(), nullptr, nullptr, 0, nullptr, nullptr) == 1; }); !s)
    return s.error();
  std::filesystem::permissions(out.key, std::filesystem::perms::owner_read | std::filesystem::perms::owner_write, fs_ec);
  return out;
}

}  // namespace tutti::http
