#include "train/export.h"

#include <cstring>
#include <filesystem>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/math.h"
#include "model/config.h"
#include "model/tensor_file.h"

namespace knowd::train {

absl::Status ExportBundle(const LanguageModel& model, const std::string& dir,
                          const ExportOptions& options) {
  if (options.dtype != DType::kF32 && options.dtype != DType::kF16 &&
      options.dtype != DType::kBF16) {
    return absl::InvalidArgumentError("export: dtype must be f32, f16 or bf16");
  }
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return absl::InternalError(absl::StrCat(dir, ": cannot create: ", ec.message()));

  const std::vector<NamedWeight> weights = model.Weights();
  std::vector<std::vector<uint16_t>> halves(weights.size());
  std::vector<HostTensor> tensors;
  for (size_t i = 0; i < weights.size(); ++i) {
    const NamedWeight& w = weights[i];
    HostTensor t;
    t.name = w.name;
    t.shape = w.shape;
    // Norm weights stay f32 in every export: they are tiny and the engine reads any dtype.
    if (options.dtype == DType::kF32 || w.shape.size() < 2) {
      t.dtype = DType::kF32;
      t.data = w.data.data();
      t.bytes = static_cast<int64_t>(w.data.size() * sizeof(float));
    } else {
      halves[i].resize(w.data.size());
      for (size_t j = 0; j < w.data.size(); ++j) {
        if (options.dtype == DType::kF16) {
          halves[i][j] = F32ToF16(w.data[j]);
        } else {
          uint32_t bits;
          std::memcpy(&bits, &w.data[j], 4);
          bits += 0x7fffu + ((bits >> 16) & 1u);  // round to nearest even
          halves[i][j] = static_cast<uint16_t>(bits >> 16);
        }
      }
      t.dtype = options.dtype;
      t.data = halves[i].data();
      t.bytes = static_cast<int64_t>(halves[i].size() * sizeof(uint16_t));
    }
    tensors.push_back(std::move(t));
  }
  if (absl::Status st = WriteHfConfigJson(model.config(), dir + "/config.json"); !st.ok()) {
    return st;
  }
  if (absl::Status st = WriteSafetensors(dir + "/model.safetensors", tensors,
                                         {{"format", "pt"}, {"producer", "knowd-train"}});
      !st.ok()) {
    return st;
  }
  if (!options.tokenizer_model.empty()) {
    const std::string tmp = dir + "/tokenizer.model.tmp";
    std::filesystem::copy_file(options.tokenizer_model, tmp,
                               std::filesystem::copy_options::overwrite_existing, ec);
    if (!ec) std::filesystem::rename(tmp, dir + "/tokenizer.model", ec);
    if (ec) {
      return absl::InternalError(
          absl::StrCat("copying ", options.tokenizer_model, ": ", ec.message()));
    }
  }
  return absl::OkStatus();
}

}  // namespace knowd::train
