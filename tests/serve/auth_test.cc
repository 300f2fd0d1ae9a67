#include "daemon/auth.h"

#include <cstdio>
#include <fstream>

#include "gtest/gtest.h"

namespace knowd {
namespace {

constexpr const char* kTokens = R"([
  {"token": "reader-a", "namespaces": ["a"], "roles": ["read"]},
  {"token": "writer-ab", "namespaces": ["a", "b"], "roles": ["read", "write"]},
  {"token": "root", "namespaces": ["*"], "roles": ["admin"]}
])";

TokenAuthorizer Tokens() {
  absl::StatusOr<TokenAuthorizer> a = TokenAuthorizer::FromJson(kTokens, "test");
  EXPECT_TRUE(a.ok()) << a.status();
  return *a;
}

TEST(TokenAuthorizer, WithoutTokensEverythingIsAllowed) {
  TokenAuthorizer open;
  EXPECT_TRUE(open.open());
  EXPECT_TRUE(open.Authorize(std::nullopt, "any", Role::kAdmin).ok());
}

TEST(TokenAuthorizer, MissingOrUnknownTokenIsUnauthenticated) {
  TokenAuthorizer a = Tokens();
  EXPECT_EQ(a.Authorize(std::nullopt, "a", Role::kRead).code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(a.Authorize("Bearer nope", "a", Role::kRead).code(),
            absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(a.Authorize("Basic cm9vdA==", "a", Role::kRead).code(),
            absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(a.Authorize("Bearer ", "a", Role::kRead).code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(a.Authorize("Bearer reader-a-and-more", "a", Role::kRead).code(),
            absl::StatusCode::kUnauthenticated);
}

TEST(TokenAuthorizer, RolesAndNamespaces) {
  TokenAuthorizer a = Tokens();
  EXPECT_TRUE(a.Authorize("Bearer reader-a", "a", Role::kRead).ok());
  EXPECT_EQ(a.Authorize("Bearer reader-a", "a", Role::kWrite).code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(a.Authorize("Bearer reader-a", "b", Role::kRead).code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_TRUE(a.Authorize("Bearer writer-ab", "b", Role::kWrite).ok());
  EXPECT_EQ(a.Authorize("Bearer writer-ab", "c", Role::kWrite).code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(a.Authorize("Bearer writer-ab", "a", Role::kAdmin).code(),
            absl::StatusCode::kPermissionDenied);
  // admin implies read and write; "*" is every namespace.
  EXPECT_TRUE(a.Authorize("Bearer root", "anything", Role::kWrite).ok());
  EXPECT_TRUE(a.Authorize("bearer root", "x", Role::kRead).ok());
}

TEST(TokenAuthorizer, MalformedFilesAreRefusedWithTheEntry) {
  auto error = [](const char* json) {
    absl::StatusOr<TokenAuthorizer> a = TokenAuthorizer::FromJson(json, "tokens.json");
    EXPECT_FALSE(a.ok());
    return std::string(a.status().message());
  };
  EXPECT_NE(error("{}").find("not a JSON array"), std::string::npos);
  EXPECT_NE(error(R"([{"token": "", "namespaces": ["a"], "roles": ["read"]}])").find("entry 0"),
            std::string::npos);
  EXPECT_NE(error(R"([{"token": "t", "namespaces": ["a"], "roles": ["read"]},
                      {"token": "t", "namespaces": ["a"], "roles": ["read"]}])")
                .find("entry 1: the token appears twice"),
            std::string::npos);
  EXPECT_NE(error(R"([{"token": "t", "namespaces": ["a"], "roles": ["root"]}])")
                .find("unknown role \"root\""),
            std::string::npos);
  EXPECT_NE(error(R"([{"token": "t", "namespaces": [], "roles": ["read"]}])").find("namespaces"),
            std::string::npos);
  EXPECT_EQ(TokenAuthorizer::FromFile("/nonexistent/tokens.json").status().code(),
            absl::StatusCode::kNotFound);
}

// A tokens file that grants nothing must never mean "no authentication".
TEST(TokenAuthorizer, AFileWithNoTokenIsRefusedNotOpen) {
  for (const char* json : {"[]", " [ ] \n"}) {
    absl::StatusOr<TokenAuthorizer> a = TokenAuthorizer::FromJson(json, "tokens.json");
    ASSERT_FALSE(a.ok()) << json;
    EXPECT_EQ(a.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(a.status().message().find("tokens.json: holds no token"), std::string::npos)
        << a.status();
  }
}

TEST(TokenAuthorizer, TheBearerSchemeIsCaseInsensitive) {
  TokenAuthorizer a = Tokens();
  for (const char* header : {"Bearer root", "bearer root", "BEARER root", "bEaReR root"}) {
    EXPECT_TRUE(a.Authorize(header, "x", Role::kAdmin).ok()) << header;
  }
  // The token itself is not.
  EXPECT_EQ(a.Authorize("Bearer ROOT", "x", Role::kRead).code(),
            absl::StatusCode::kUnauthenticated);
}

// The file holds `printf %s s3cret | sha256sum`, not the token.
constexpr const char* kHashedTokens = R"([
  {"sha256": "1ec1c26b50d5d3c58d9583181af8076655fe00756bf7285940ba3670f99fcba0",
   "namespaces": ["a"], "roles": ["read"]},
  {"token": "writer", "namespaces": ["*"], "roles": ["write"]}
])";

TEST(TokenAuthorizer, HashedTokensAreAcceptedByTheirSha256) {
  absl::StatusOr<TokenAuthorizer> a = TokenAuthorizer::FromJson(kHashedTokens, "tokens.json");
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_TRUE(a->Authorize("Bearer s3cret", "a", Role::kRead).ok());
  EXPECT_EQ(a->Authorize("Bearer s3cret", "a", Role::kWrite).code(),
            absl::StatusCode::kPermissionDenied);
  // The hash is not a token.
  EXPECT_EQ(a->Authorize("Bearer 1ec1c26b50d5d3c58d9583181af8076655fe00756bf7285940ba3670f99fcba0",
                         "a", Role::kRead)
                .code(),
            absl::StatusCode::kUnauthenticated);
  EXPECT_TRUE(a->Authorize("Bearer writer", "b", Role::kWrite).ok());
}

TEST(TokenAuthorizer, BadHashesAndAmbiguousEntriesAreRefused) {
  auto error = [](const std::string& json) {
    absl::StatusOr<TokenAuthorizer> a = TokenAuthorizer::FromJson(json, "tokens.json");
    EXPECT_FALSE(a.ok()) << json;
    return std::string(a.status().message());
  };
  EXPECT_NE(error(R"([{"sha256": "1EC1", "namespaces": ["a"], "roles": ["read"]}])")
                .find("entry 0: \"sha256\" must be 64 lowercase hex digits"),
            std::string::npos);
  EXPECT_NE(error(R"([{"token": "t", "sha256": "1ec1", "namespaces": ["a"], "roles": ["read"]}])")
                .find("not both"),
            std::string::npos);
  // The same token in clear and hashed is a duplicate.
  EXPECT_NE(error(R"([{"token": "s3cret", "namespaces": ["a"], "roles": ["read"]},
                      {"sha256": "1ec1c26b50d5d3c58d9583181af8076655fe00756bf7285940ba3670f99fcba0",
                       "namespaces": ["a"], "roles": ["read"]}])")
                .find("entry 1: the token appears twice"),
            std::string::npos);
}

TEST(TokenStore, ReloadSwapsTokensAndKeepsThemWhenTheFileBreaks) {
  const std::string path = ::testing::TempDir() + "/reload_tokens.json";
  auto write = [&](const std::string& json) { std::ofstream(path, std::ios::trunc) << json; };
  write(R"([{"token": "old", "namespaces": ["*"], "roles": ["read"]}])");
  absl::StatusOr<std::unique_ptr<TokenStore>> store = TokenStore::FromFile(path);
  ASSERT_TRUE(store.ok()) << store.status();
  EXPECT_TRUE((*store)->Authenticate("Bearer old").ok());

  write(R"([{"token": "new", "namespaces": ["*"], "roles": ["read"]},
            {"token": "newer", "namespaces": ["*"], "roles": ["read"]}])");
  absl::StatusOr<size_t> reloaded = (*store)->Reload();
  ASSERT_TRUE(reloaded.ok()) << reloaded.status();
  EXPECT_EQ(*reloaded, 2u);
  EXPECT_EQ((*store)->Authenticate("Bearer old").status().code(),
            absl::StatusCode::kUnauthenticated);
  EXPECT_TRUE((*store)->Authenticate("Bearer new").ok());

  // A broken or empty file is refused and the tokens in use stay: never open, never locked out.
  for (const char* broken : {"[", "[]"}) {
    write(broken);
    EXPECT_EQ((*store)->Reload().status().code(), absl::StatusCode::kInvalidArgument) << broken;
    EXPECT_TRUE((*store)->Authenticate("Bearer new").ok()) << broken;
    EXPECT_FALSE((*store)->open());
  }
  std::remove(path.c_str());
}

}  // namespace
}  // namespace knowd
