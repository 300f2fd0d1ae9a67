// Fingerprints of model files: the hex SHA-256 that adapter.json records for the base model it
// was trained on, and that a memory bank records for the adapter that encoded it.
#pragma once

#include <string>

#include "absl/status/statusor.h"

namespace knowd {

// Lowercase hex SHA-256 of a file's bytes. NOT_FOUND when it cannot be opened, INTERNAL when a
// read fails.
absl::StatusOr<std::string> Sha256OfFile(const std::string& path);

}  // namespace knowd
