// Private to model/: the JSON file that describes a safetensors file of trained networks
// (retrieval_keys.json, session_mapper.json): opened, parsed and checked for its format and
// version in one place.
#pragma once

#include <fstream>
#include <sstream>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace knowd::internal {

// NOT_FOUND when `path` does not exist (the networks are optional); INVALID_ARGUMENT when it is
// not a JSON object with "format" == format and "version" == version.
inline absl::StatusOr<nlohmann::json> ReadJsonDescriptor(const std::string& path,
                                                         std::string_view format, int version) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": none"));
  std::stringstream text;
  text << in.rdbuf();
  nlohmann::json j = nlohmann::json::parse(text.str(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object() || j.value("format", "") != format ||
      j.value("version", 0) != version) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": not a ", std::string(format), " version ", version, " file"));
  }
  return j;
}

}  // namespace knowd::internal
