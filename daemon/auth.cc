#include "daemon/auth.h"

#include <algorithm>
#include <fstream>
#include <set>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "base/status_macros.h"
#include "model/sha256.h"
#include "nlohmann/json.hpp"

namespace knowd {
namespace {

const char* RoleName(Role role) {
  switch (role) {
    case Role::kRead:
      return "read";
    case Role::kWrite:
      return "write";
    case Role::kAdmin:
      return "admin";
  }
  return "?";
}

// Compares in time independent of where the strings differ, so response times do not reveal how
// much of a guessed token is right.
bool SameToken(std::string_view a, std::string_view b) {
  unsigned char diff = a.size() == b.size() ? 0 : 1;
  const size_t n = std::max(a.size(), b.size());
  for (size_t i = 0; i < n; ++i) {
    const unsigned char x = i < a.size() ? a[i] : 0;
    const unsigned char y = i < b.size() ? b[i] : 0;
    diff |= x ^ y;
  }
  return diff == 0;
}

bool IsSha256Hex(std::string_view s) {
  return s.size() == 64 && std::all_of(s.begin(), s.end(), [](char c) {
           return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
         });
}

std::string Sha256Hex(std::string_view text) {
  Sha256 hash;
  hash.Update(text.data(), text.size());
  return hash.Hex();
}

}  // namespace

bool Grant::Allows(Role role) const {
  switch (role) {
    case Role::kRead:
      return read || admin;
    case Role::kWrite:
      return write || admin;
    case Role::kAdmin:
      return admin;
  }
  return false;
}

bool Grant::AllowsNamespace(std::string_view name_space) const {
  return std::any_of(namespaces.begin(), namespaces.end(),
                     [&](const std::string& n) { return n == "*" || n == name_space; });
}

absl::Status CheckGrant(const Grant& grant, std::string_view name_space, Role role) {
  if (!grant.Allows(role)) {
    return absl::PermissionDeniedError(
        absl::StrCat("the token lacks the ", RoleName(role), " role"));
  }
  if (!grant.AllowsNamespace(name_space)) {
    return absl::PermissionDeniedError(
        absl::StrCat("the token does not grant namespace \"", std::string(name_space), "\""));
  }
  return absl::OkStatus();
}

absl::StatusOr<TokenAuthorizer> TokenAuthorizer::FromFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("tokens file ", path, ": cannot be read"));
  std::stringstream text;
  text << in.rdbuf();
  return FromJson(text.str(), absl::StrCat("tokens file ", path));
}

absl::StatusOr<TokenAuthorizer> TokenAuthorizer::FromJson(std::string_view json_text,
                                                          std::string_view source_view) {
  const std::string source(source_view);
  nlohmann::json json = nlohmann::json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  if (json.is_discarded() || !json.is_array()) {
    return absl::InvalidArgumentError(absl::StrCat(
        source, ": not a JSON array of {\"token\", \"namespaces\", \"roles\"} objects"));
  }
  TokenAuthorizer out;
  std::set<std::string> hashes;  // of every entry's token so far
  for (size_t i = 0; i < json.size(); ++i) {
    const nlohmann::json& e = json[i];
    auto bad = [&](absl::string_view why) {
      return absl::InvalidArgumentError(absl::StrCat(source, ": entry ", i, ": ", why));
    };
    if (!e.is_object()) return bad("not an object");
    Entry entry;
    if (e.contains("token") == e.contains("sha256")) {
      return bad("give the token in clear (\"token\") or as its SHA-256 (\"sha256\"), not both");
    }
    if (e.contains("token")) {
      if (!e["token"].is_string() || e["token"].get<std::string>().empty()) {
        return bad("\"token\" must be a non-empty string");
      }
      entry.token = e["token"].get<std::string>();
    } else {
      if (!e["sha256"].is_string() || !IsSha256Hex(e["sha256"].get<std::string>())) {
        return bad("\"sha256\" must be 64 lowercase hex digits (printf %s TOKEN | sha256sum)");
      }
      entry.sha256 = e["sha256"].get<std::string>();
    }
    // Clear and hashed entries compare by hash, each hashed once.
    if (!hashes.insert(entry.sha256.empty() ? Sha256Hex(entry.token) : entry.sha256).second) {
      return bad("the token appears twice");
    }
    if (!e.contains("namespaces") || !e["namespaces"].is_array() || e["namespaces"].empty()) {
      return bad("\"namespaces\" must be a non-empty array of names (\"*\" = all)");
    }
    for (const nlohmann::json& n : e["namespaces"]) {
      if (!n.is_string() || n.get<std::string>().empty()) {
        return bad("a namespace must be a non-empty string");
      }
      entry.grant.namespaces.push_back(n.get<std::string>());
    }
    if (!e.contains("roles") || !e["roles"].is_array() || e["roles"].empty()) {
      return bad("\"roles\" must be a non-empty array of read, write, admin");
    }
    for (const nlohmann::json& r : e["roles"]) {
      const std::string role = r.is_string() ? r.get<std::string>() : "";
      if (role == "read") {
        entry.grant.read = true;
      } else if (role == "write") {
        entry.grant.write = true;
      } else if (role == "admin") {
        entry.grant.admin = true;
      } else {
        return bad(absl::StrCat("unknown role ", r.dump(), " (read, write or admin)"));
      }
    }
    out.tokens_.push_back(std::move(entry));
  }
  if (out.tokens_.empty()) {
    // An empty file must never mean "open": the operator asked for authentication.
    return absl::InvalidArgumentError(
        absl::StrCat(source,
                     ": holds no token; add one, or drop --tokens-file to serve without "
                     "authentication"));
  }
  return out;
}

absl::StatusOr<Grant> TokenAuthorizer::Authenticate(
    std::optional<std::string_view> authorization) const {
  if (open()) return Grant{{"*"}, true, true, true};
  if (!authorization.has_value()) {
    return absl::UnauthenticatedError(
        "this daemon needs a token: \"authorization: Bearer <token>\"");
  }
  absl::string_view value(authorization->data(), authorization->size());
  // The scheme is case-insensitive (RFC 9110 section 11.1).
  if (value.size() < 7 || !absl::EqualsIgnoreCase(value.substr(0, 7), "bearer ")) {
    return absl::UnauthenticatedError("the authorization metadata must be \"Bearer <token>\"");
  }
  value.remove_prefix(7);
  const std::string_view presented(value.data(), value.size());
  std::string presented_hash;  // computed once, only when some entry is hashed
  const Entry* found = nullptr;
  for (const Entry& e : tokens_) {
    if (e.sha256.empty()) {
      if (SameToken(e.token, presented)) found = &e;
    } else {
      if (presented_hash.empty()) presented_hash = Sha256Hex(presented);
      if (SameToken(e.sha256, presented_hash)) found = &e;
    }
  }
  if (found == nullptr) return absl::UnauthenticatedError("unknown token");
  return found->grant;
}

absl::Status TokenAuthorizer::Authorize(std::optional<std::string_view> authorization,
                                        std::string_view name_space, Role role) const {
  KNOWD_ASSIGN_OR_RETURN(Grant grant, Authenticate(authorization));
  return CheckGrant(grant, name_space, role);
}

absl::StatusOr<std::unique_ptr<TokenStore>> TokenStore::FromFile(const std::string& path) {
  KNOWD_ASSIGN_OR_RETURN(TokenAuthorizer tokens, TokenAuthorizer::FromFile(path));
  auto store = std::make_unique<TokenStore>();
  store->path_ = path;
  store->current_ = std::make_shared<const TokenAuthorizer>(std::move(tokens));
  return store;
}

absl::StatusOr<size_t> TokenStore::Reload() {
  if (path_.empty()) return size_t{0};
  KNOWD_ASSIGN_OR_RETURN(TokenAuthorizer tokens, TokenAuthorizer::FromFile(path_));
  auto next = std::make_shared<const TokenAuthorizer>(std::move(tokens));
  const size_t count = next->size();
  std::lock_guard<std::mutex> lock(mu_);
  current_ = std::move(next);
  return count;
}

std::shared_ptr<const TokenAuthorizer> TokenStore::Current() const {
  std::lock_guard<std::mutex> lock(mu_);
  return current_;
}

absl::StatusOr<Grant> TokenStore::Authenticate(
    std::optional<std::string_view> authorization) const {
  return Current()->Authenticate(authorization);
}

}  // namespace knowd
