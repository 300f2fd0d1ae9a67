// Fingerprints of model files: the hex SHA-256 that adapter.json records for the base model it
// was trained on, and that a memory bank records for the adapter that encoded it.
#pragma once

#include <cstddef>
#include <string>

#include "absl/status/statusor.h"

struct evp_md_ctx_st;  // OpenSSL's EVP_MD_CTX

namespace knowd {

// SHA-256 of bytes given in pieces.
class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;
  void Update(const void* data, size_t bytes);
  // Lowercase hex of everything given so far; the hasher is spent afterwards.
  std::string Hex();

 private:
  ::evp_md_ctx_st* ctx_;
};

// Lowercase hex SHA-256 of a file's bytes. NOT_FOUND when it cannot be opened, INTERNAL when a
// read fails.
absl::StatusOr<std::string> Sha256OfFile(const std::string& path);

}  // namespace knowd
