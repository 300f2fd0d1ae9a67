// Private to model/: the files of small trained networks beside an adapter (retrieval_keys.*,
// session_mapper.*): the JSON that describes them, opened, parsed and checked for its format and
// version in one place, and their tensors read as f32.
#pragma once

#include <fstream>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "kernels/math.h"
#include "model/tensor_file.h"
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

// The tensor `name` of `file`, of exactly `shape`, widened to f32 into `out` (NOT_FOUND or
// INVALID_ARGUMENT from TensorFile::Require otherwise).
inline absl::Status ReadF32Tensor(const TensorFile& file, std::string_view name,
                                  const std::vector<int64_t>& shape, std::vector<float>* out) {
  KNOWD_ASSIGN_OR_RETURN(const HostTensor* t, file.Require(name, shape));
  out->resize(t->numel());
  for (int64_t i = 0; i < t->numel(); ++i) (*out)[i] = LoadAsF32(t->data, t->dtype, i);
  return absl::OkStatus();
}

}  // namespace knowd::internal
