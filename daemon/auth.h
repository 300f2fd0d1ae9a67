// Bearer-token authorization of every RPC. A tokens file (JSON) grants each token namespaces and
// roles:
//   [{"token": "s3cret", "namespaces": ["team-a", "*"], "roles": ["read", "write", "admin"]}]
// "*" grants every namespace; "admin" implies read and write. Calls carry the token as metadata
// "authorization: Bearer <token>". Without a tokens file every call is allowed (the daemon then
// listens on loopback by default).
//
// Thread-safety: immutable after construction; Authorize may be called from any thread.
#pragma once

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

class TokenAuthorizer {
 public:
  // Allows everything (no tokens file).
  TokenAuthorizer() = default;
  // Parses a tokens file. INVALID_ARGUMENT names the entry that is malformed (not an object, an
  // empty or duplicate token, an unknown role, no namespaces); NOT_FOUND when unreadable.
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
    std::string token;
    Grant grant;
  };
  std::vector<Entry> tokens_;
};

// The PERMISSION_DENIED check alone, for a grant already authenticated.
absl::Status CheckGrant(const Grant& grant, std::string_view name_space, Role role);

}  // namespace knowd
