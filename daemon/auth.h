// Bearer-token authorization of every RPC. A tokens file (JSON) grants each token namespaces and
// roles:
//   [{"token": "s3cret", "namespaces": ["team-a", "*"], "roles": ["read", "write", "admin"]},
//    {"sha256": "<64 hex digits>", "namespaces": ["team-b"], "roles": ["read"]}]
// An entry names its token in clear ("token") or by the lowercase hex SHA-256 of the token
// ("sha256", e.g. `printf %s "$TOKEN" | sha256sum`), so the file need not hold secrets. "*" grants
// every namespace; "admin" implies read and write. Calls carry the token as metadata
// "authorization: Bearer <token>" (the scheme in any case). Without a tokens file every call is
// allowed (the daemon then listens on loopback by default); a tokens file that holds no token is
// refused, never taken to mean "open".
#pragma once

#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace knowd {

enum class Role { kRead, kWrite, kAdmin };

// What one token may do.
struct Grant {
  std::vector<std::string> namespaces;  // "*" = all
  bool read = false;
  bool write = false;
  bool admin = false;

  bool Allows(Role role) const;
  bool AllowsNamespace(std::string_view name_space) const;
};

// Thread-safety: immutable after construction; Authorize may be called from any thread.
class TokenAuthorizer {
 public:
  // Allows everything (no tokens file).
  TokenAuthorizer() = default;
  // Parses a tokens file. INVALID_ARGUMENT names the entry that is malformed (not an object, an
  // empty or duplicate token, a "sha256" that is not 64 hex digits, an unknown role, no
  // namespaces), or says the file holds no token at all; NOT_FOUND when unreadable.
  static absl::StatusOr<TokenAuthorizer> FromFile(const std::string& path);
  static absl::StatusOr<TokenAuthorizer> FromJson(std::string_view json, std::string_view source);

  bool open() const { return tokens_.empty(); }
  size_t size() const { return tokens_.size(); }

  // The caller's grant from its "authorization" metadata value (absent: nullopt).
  // UNAUTHENTICATED when tokens are configured and the value is absent, not "Bearer <token>", or
  // an unknown token.
  absl::StatusOr<Grant> Authenticate(std::optional<std::string_view> authorization) const;

  // Authenticate, then PERMISSION_DENIED unless the grant has `role` on `name_space`.
  absl::Status Authorize(std::optional<std::string_view> authorization, std::string_view name_space,
                         Role role) const;

 private:
  struct Entry {
    std::string token;   // in clear; "" when the entry gives its hash
    std::string sha256;  // lowercase hex; "" when the entry gives the token in clear
    Grant grant;
  };
  std::vector<Entry> tokens_;
};

// The tokens the daemon serves with, replaceable while it serves: SIGHUP reloads the file, and
// calls that already authenticated keep the grant they got.
//
// Thread-safety: every method may be called from any thread.
class TokenStore {
 public:
  // Open: every call is allowed, Reload does nothing.
  TokenStore() = default;
  // The tokens of `path` (TokenAuthorizer::FromFile's errors).
  static absl::StatusOr<std::unique_ptr<TokenStore>> FromFile(const std::string& path);

  // Reads the file again. On any error (unreadable, malformed, no token) the tokens in use stay
  // and the error is returned; OK with the new count otherwise.
  absl::StatusOr<size_t> Reload();

  bool open() const { return Current()->open(); }
  size_t size() const { return Current()->size(); }
  const std::string& path() const { return path_; }
  absl::StatusOr<Grant> Authenticate(std::optional<std::string_view> authorization) const;

 private:
  std::shared_ptr<const TokenAuthorizer> Current() const;

  std::string path_;
  mutable std::mutex mu_;
  std::shared_ptr<const TokenAuthorizer> current_ = std::make_shared<TokenAuthorizer>();
};

// The PERMISSION_DENIED check alone, for a grant already authenticated.
absl::Status CheckGrant(const Grant& grant, std::string_view name_space, Role role);

}  // namespace knowd
