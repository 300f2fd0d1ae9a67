// Converting a checkpoint between formats (GGUF, Hugging Face safetensors) and weight types
// (f32, f16, bf16, q8_0, q4_0, q4_K, q6_K, and llama.cpp's q4_K_M mixture): what tests and tools
// use to make the same model in every layout the loaders accept.
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "kernels/dtype.h"

namespace knowd {

// The types a conversion gives the 2-D weight matrices: one type for all of them, or a mixture.
struct WeightPlan {
  enum class Mix : uint8_t {
    kUniform,  // every matrix is `dtype`
    // llama.cpp's Q4_K_M: q6_K for output.weight (for token_embd.weight when there is no
    // output.weight) and for attn_v.weight and ffn_down.weight of the layers i of n where
    // i < n/8 || i >= 7n/8 || (i - n/8) % 3 == 2 (llama.cpp's use_more_bits); q4_K elsewhere.
    kQ4_K_M,
  };
  DType dtype = DType::kF16;  // the uniform type; q4_K for kQ4_K_M
  Mix mix = Mix::kUniform;

  static WeightPlan Uniform(DType dtype) { return {dtype, Mix::kUniform}; }
  static WeightPlan Q4_K_M() { return {DType::kQ4_K, Mix::kQ4_K_M}; }
};

// The plan named `name`: "f32", "f16", "bf16", "q8_0", "q4_0", "q4_K", "q6_K" or "q4_K_M" (as
// llama.cpp spells them); nullopt for anything else.
std::optional<WeightPlan> ParseWeightPlan(std::string_view name);

// The names ParseWeightPlan accepts, for messages and --help: "f32, f16, bf16, q8_0, q4_0, q4_K,
// q6_K, q4_K_M".
std::string WeightPlanNames();

// Reads the Llama checkpoint at `in` (a GGUF file, or a Hugging Face directory with config.json)
// and writes it to `out`: a GGUF file when `out` ends in ".gguf", else a Hugging Face directory
// (created if needed) holding model.safetensors, config.json and the tokenizer.
//
// Every 2-D weight matrix (embeddings and output included) becomes the type `plan` gives it; 1-D
// tensors (norms, biases) stay f32. The quantized types are written by QuantizeRow
// (model/quantize.h); q8_0 and q4_0 round as llama.cpp does. A matrix whose rows are not whole
// blocks of its type is stored q8_0 instead when they are a multiple of 32 (for q4_K and q6_K),
// else f16. general.file_type is llama.cpp's llama_ftype (f32 0, f16 1, q4_0 2, q8_0 7, q4_K 14
// (Q4_K_S, llama.cpp's nearest), q4_K_M 15, q6_K 18, bf16 32) and quantized files carry
// general.quantization_version 2. Hugging Face output takes f32, f16 or bf16 only.
//
// Between the two formats, tensors are renamed and the Q/K rows of each head are permuted between
// GGUF's interleaved RoPE order and Hugging Face's rotate-half order, so both files compute the
// same function. Tokenizers follow the model:
//   GGUF -> GGUF: all metadata is kept (general.file_type updated);
//   HF -> GGUF:   a SentencePiece tokenizer.model is embedded as tokenizer.ggml.model "llama"
//                 (padded with [PADn] tokens up to vocab_size, as llama.cpp's converter does);
//                 without one the file says "no_vocab" and carries llama.vocab_size, which
//                 llama.cpp accepts (knowd's LoadTokenizer then reports that there is none);
//   GGUF -> HF:   a "llama" GGUF vocabulary is written as tokenizer.model (a "gpt2" one is not
//                 converted: the directory then has no tokenizer);
//   HF -> HF:     tokenizer.model and tokenizer.json are copied.
//
// The converted tensors are held in memory until written; `out` is replaced atomically file by
// file. INVALID_ARGUMENT for an unsupported type, a quantized one to Hugging Face, a tensor that
// has no name in the other format, or a config GGUF "llama" cannot express (head_dim other than
// hidden_size / num_heads); loader errors pass through.
absl::Status ConvertModel(const std::string& in, const std::string& out, WeightPlan plan);
inline absl::Status ConvertModel(const std::string& in, const std::string& out, DType weights) {
  return ConvertModel(in, out, WeightPlan::Uniform(weights));
}

}  // namespace knowd
