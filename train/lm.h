// A Llama-architecture language model for training, in libtorch: RMSNorm, RoPE in Hugging Face's
// rotate-half order, grouped-query attention, SwiGLU, tied or untied output. Its parameters carry
// Hugging Face names one for one (model.layers.N.self_attn.q_proj.weight, ...), so an export is a
// plain copy and knowd's engine (model/transformer.h) computes the same logits.
//
// This header does not include libtorch (lm.cc does; the adapter's adapter_*.cc reach the torch
// modules through the private lm_torch.h), so the rest of knowd-train and the tests compile
// quickly. A LanguageModel is driven by one thread at a time.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "model/config.h"

namespace knowd::train {

namespace internal {
struct TorchAccess;
}

// Token sequences of one step, right-padded to a common length.
struct TrainBatch {
  int rows = 0;
  int cols = 0;
  std::vector<int32_t> tokens;  // [rows][cols]; pads may hold any valid id
  // [rows][cols]: the loss weight of predicting tokens[r][c] from tokens[r][0..c); 0 for pads
  // and for c == 0.
  std::vector<float> weights;
};

struct OptimizerOptions {
  double weight_decay = 0.1;  // on matrices and embeddings, never on norm weights
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double grad_clip = 1.0;  // global L2 norm; 0 disables
};

// A parameter copied out of the model, f32, shape outermost first.
struct NamedWeight {
  std::string name;
  std::vector<int64_t> shape;
  std::vector<float> data;
};

class LanguageModel {
 public:
  // A new model with seeded random weights (normal, std 0.02; output projections of each block
  // scaled by 1/sqrt(2 * layers); norms 1). Only rope_style kHalf and no attention bias are
  // supported. Deterministic for a given seed and thread count.
  static absl::StatusOr<std::unique_ptr<LanguageModel>> Create(const LlamaConfig& config,
                                                               uint64_t seed,
                                                               const OptimizerOptions& optimizer);
  ~LanguageModel();

  const LlamaConfig& config() const;
  int64_t ParameterCount() const;

  // One AdamW step at learning rate `lr`. Returns the weighted mean cross-entropy of `batch`
  // before the step.
  absl::StatusOr<double> TrainStep(const TrainBatch& batch, double lr);
  // The weighted mean cross-entropy, without touching the weights.
  absl::StatusOr<double> Loss(const TrainBatch& batch);
  // Logits for every position of one sequence, [tokens.size()][vocab_size], f32.
  absl::StatusOr<std::vector<float>> Logits(std::span<const int32_t> tokens);
  // Greedy continuation of `prompt`: at most max_tokens ids, stopping after any id in `stop`
  // (the stop id is not returned).
  absl::StatusOr<std::vector<int32_t>> Greedy(std::span<const int32_t> prompt, int max_tokens,
                                              std::span<const int32_t> stop);

  // The frozen-LM views an adapter is built on. Host arrays are f32 and use the engine's layouts,
  // so they move to and from KvCache (ReadRows, SetPrefix) unchanged.
  struct SequenceStates {
    int tokens = 0;
    std::vector<std::vector<float>> hidden;  // per layer: the block's output, [tokens][hidden]
    std::vector<float> keys;    // [layers][tokens][kv_dim], after RoPE at positions 0, 1, ...
    std::vector<float> values;  // [layers][tokens][kv_dim]
  };
  // Per-layer hidden states, keys and values of one sequence (the adapter's encoder trunk).
  absl::StatusOr<SequenceStates> States(std::span<const int32_t> tokens);
  // Logits [tokens.size()][vocab_size] of `tokens` after p prefix rows per layer. keys/values are
  // [layers][p][kv_dim], attended to as given (never rotated); the tokens take positions p, p+1,
  // ... — the semantics of KvCache::SetPrefix, so the engine serves what this computes.
  absl::StatusOr<std::vector<float>> LogitsWithPrefix(std::span<const float> keys,
                                                      std::span<const float> values, int p,
                                                      std::span<const int32_t> tokens);

  // Loads a bundle directory (config.json + model.safetensors with Hugging Face names, any float
  // dtype) into a new model with fresh optimizer state. Refuses a missing tensor or a shape that
  // does not match config.json, naming it.
  static absl::StatusOr<std::unique_ptr<LanguageModel>> LoadBundle(const std::string& dir);

  // Weights and optimizer state (torch::serialize archive); Load needs a model of the same shape.
  absl::Status SaveCheckpoint(const std::string& path) const;
  absl::Status LoadCheckpoint(const std::string& path);

  // Every parameter under its Hugging Face name, in registration order (lm_head only if untied).
  std::vector<NamedWeight> Weights() const;

 private:
  friend struct internal::TorchAccess;
  struct Impl;
  explicit LanguageModel(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Sets libtorch's intra-op thread count (results are deterministic for a fixed count).
void SetTorchThreads(int threads);

}  // namespace knowd::train
