// The one spelling rule for flag names, shared by every command line and configuration source of
// the project: knowd and its subcommands, knowd serve's flags, environment variables and config
// file keys, knowctl, knowd-train. A name may be written with dashes or underscores, in any case
// ("--max-tokens", "--max_tokens", "--Max-Tokens" are one flag). Depends on the standard library
// only, so anything in the tree may include it.
#pragma once

#include <string>
#include <string_view>

namespace knowd::cli {

// `name` (without the leading "--") as the code declares it: lower case, its words joined by
// `separator`. "max_tokens" -> "max-tokens"; with '_' (absl flags, environment variables):
// "max-tokens" -> "max_tokens".
inline std::string CanonicalFlagName(std::string_view name, char separator = '-') {
  std::string out(name);
  for (char& c : out) {
    if (c == '-' || c == '_') {
      c = separator;
    } else if (c >= 'A' && c <= 'Z') {
      c = static_cast<char>(c - 'A' + 'a');
    }
  }
  return out;
}

}  // namespace knowd::cli
