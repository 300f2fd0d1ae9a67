// The hyper-parameters of a Llama-family model, read from a Hugging Face config.json or from a
// GGUF file's metadata, and validated so the transformer can trust them.
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "kernels/backend.h"

namespace knowd {

class GgufFile;

struct LlamaConfig {
  int vocab_size = 0;
  int hidden_size = 0;
  int num_layers = 0;
  int num_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;  // hidden_size / num_heads unless the checkpoint says otherwise
  int intermediate_size = 0;
  int max_position_embeddings = 2048;
  float rms_norm_eps = 1e-5f;
  float rope_theta = 10000.0f;
  RopeStyle rope_style = RopeStyle::kHalf;
  bool tie_word_embeddings = false;
  bool attention_bias = false;  // q/k/v projections carry a bias (Qwen2)
  int bos_token_id = 1;
  int eos_token_id = 2;

  int q_dim() const { return num_heads * head_dim; }
  int kv_dim() const { return num_kv_heads * head_dim; }
  // Parameters of the base model (embeddings counted once when tied).
  int64_t ParameterCount() const;
};

// Checks the invariants the transformer relies on (positive sizes, heads divide evenly, ...).
absl::Status ValidateConfig(const LlamaConfig& config, const std::string& source);

// A Hugging Face config.json of a LlamaForCausalLM / MistralForCausalLM / Qwen2ForCausalLM.
absl::StatusOr<LlamaConfig> LlamaConfigFromHfJson(const std::string& path);

// The "llama.*" metadata of a GGUF file (GGUF "llama" checkpoints use the interleaved RoPE order).
absl::StatusOr<LlamaConfig> LlamaConfigFromGguf(const GgufFile& gguf);

// Writes `config` as a Hugging Face config.json (LlamaForCausalLM), atomically.
absl::Status WriteHfConfigJson(const LlamaConfig& config, const std::string& path);

}  // namespace knowd
