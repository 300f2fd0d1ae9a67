#include "daemon/auth.h"

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

}  // namespace
}  // namespace knowd
