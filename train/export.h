// Writes a trained LanguageModel as a knowd model bundle: config.json (Hugging Face
// LlamaConfig keys), model.safetensors (Hugging Face tensor names) and tokenizer.model.
#pragma once

#include <string>

#include "absl/status/status.h"
#include "kernels/dtype.h"
#include "train/lm.h"

namespace knowd::train {

struct ExportOptions {
  DType dtype = DType::kF32;    // kF32 (exact, for parity) or kF16 (shipping) or kBF16
  std::string tokenizer_model;  // copied to <dir>/tokenizer.model when not empty
};

// Creates `dir` and writes the bundle; each file is replaced atomically.
absl::Status ExportBundle(const LanguageModel& model, const std::string& dir,
                          const ExportOptions& options);

}  // namespace knowd::train
