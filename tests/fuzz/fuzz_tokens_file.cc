// The tokens file (--tokens-file): TokenAuthorizer::FromJson, then a few authorizations against
// whatever it accepted.
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

#include "daemon/auth.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  absl::StatusOr<knowd::TokenAuthorizer> auth =
      knowd::TokenAuthorizer::FromJson(knowd::fuzz::AsText(data, size), "tokens.json");
  knowd::fuzz::Report("TokenAuthorizer::FromJson", auth.status());
  if (!auth.ok()) return 0;
  for (std::optional<std::string_view> header :
       {std::optional<std::string_view>(), std::optional<std::string_view>("Bearer s3cret"),
        std::optional<std::string_view>("Bearer "), std::optional<std::string_view>("bearer x"),
        std::optional<std::string_view>("Bearer a")}) {
    for (knowd::Role role : {knowd::Role::kRead, knowd::Role::kWrite, knowd::Role::kAdmin}) {
      (void)auth->Authorize(header, "default", role);
      (void)auth->Authorize(header, "team-a", role);
    }
  }
  return 0;
}
