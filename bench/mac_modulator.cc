// The eval's Modulator: the bundle's adapter networks (knowledge::MakeAdapterModulator).
#include <filesystem>
#include <string>

#include "absl/strings/str_cat.h"
#include "bench/eval.h"
#include "knowledge/bundle.h"

namespace knowd::bench {

absl::StatusOr<std::unique_ptr<Modulator>> LoadBundleModulator(const std::string& bundle_dir,
                                                               Transformer& model,
                                                               const Tokenizer& /*tokenizer*/) {
  const std::filesystem::path dir = std::filesystem::path(bundle_dir) / "adapter";
  std::error_code ec;
  if (!std::filesystem::is_directory(dir, ec)) {
    return absl::FailedPreconditionError("mode unavailable: no adapter in the bundle");
  }
  absl::StatusOr<std::unique_ptr<Modulator>> modulator =
      knowledge::LoadModulator(dir.string(), &model);
  if (!modulator.ok()) {
    return absl::Status(modulator.status().code(),
                        absl::StrCat("mode unavailable: ", modulator.status().message()));
  }
  return modulator;
}

}  // namespace knowd::bench
