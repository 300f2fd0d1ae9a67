// Private to train/: the libtorch face of LanguageModel, for the translation units that already
// include libtorch (lm.cc and the adapter's adapter_*.cc). Everything else uses train/lm.h, which
// stays free of torch so that it compiles quickly.
//
// These calls run the model as it is: callers that train something on top of a frozen LM call
// Freeze once, and wrap passes that need no gradient in torch::NoGradGuard.
#pragma once

#include <torch/torch.h>

#include <string>
#include <vector>

#include "nlohmann/json.hpp"
#include "train/lm.h"

namespace knowd::train::internal {

// A libtorch exception as a Status ("what: first line of the message").
absl::Status TorchError(std::string_view what, const std::exception& e);

// A module's weights and its optimizer's state in one torch::serialize archive, written to a
// temporary file and renamed into place so an interrupted save keeps the previous checkpoint.
absl::Status SaveTorchCheckpoint(const torch::nn::Module& net,
                                 const torch::optim::Optimizer& optimizer, const std::string& path);
// Loads what SaveTorchCheckpoint wrote into a module and optimizer of the same shape.
absl::Status LoadTorchCheckpoint(torch::nn::Module& net, torch::optim::Optimizer& optimizer,
                                 const std::string& path);

// Writes every parameter of `net` but those named in `skip` to the safetensors file `path` in
// f16 (the shipped model files stay small) and returns the file's SHA-256; `tensors` (optional)
// receives one {"name", "shape", "dtype"} object per tensor, for the file's JSON description.
absl::StatusOr<std::string> ExportParametersF16(const torch::nn::Module& net,
                                                const std::string& path,
                                                const std::vector<std::string>& skip,
                                                nlohmann::json* tensors);
// Copies every tensor of the safetensors file `path` (any float dtype) into the parameter of
// `net` with its name; INVALID_ARGUMENT for a tensor the module does not have.
absl::Status LoadParameters(torch::nn::Module& net, const std::string& path);

// Per-layer states of a batch of sequences, as the frozen LM computes them.
struct TrunkStates {
  std::vector<torch::Tensor> hidden;  // per layer: the block's output, [B, T, hidden]
  std::vector<torch::Tensor> keys;    // per layer: [B, T, kv_heads, head_dim], after RoPE
  std::vector<torch::Tensor> values;  // per layer: [B, T, kv_heads, head_dim]
};

// A low-rank update of chosen projections of the frozen LM, one state per batch row:
// StreamAdapter's weight absorption (model/low_rank.h serves it): y += ((x · w2ᵀ) · h[b]) · w1ᵀ,
// i.e. the weight W + w1 · h[b]ᵀ · w2. Sites are indexed layer * kProjections + projection, in the
// engine's order (qkv, o, gate, up, down); the qkv site's output is q, k and v stacked, before
// RoPE.
struct LowRankTorch {
  static constexpr int kProjections = 5;
  struct Site {
    torch::Tensor w2;  // [r, in]
    torch::Tensor w1;  // [out, r2]
    torch::Tensor h;   // [B, r, r2]
  };
  std::vector<Site> sites;  // layers * kProjections; an undefined w1: no update there
  // The update's addition to projection `projection` of `layer` for input x [B, T, in], or an
  // undefined tensor where the site has none.
  torch::Tensor Delta(int layer, int projection, const torch::Tensor& x) const;
};

struct TorchAccess {
  // Logits [B, T, vocab] of `tokens` ([B, T] int64). prefix_keys / prefix_values
  // [B, layers, P, kv_heads, head_dim] (both undefined for none) are attended to by every token,
  // as given (never rotated), and the tokens take positions P, P+1, ... — exactly
  // KvCache::SetPrefix in the engine. Differentiable with respect to the prefix and `update`.
  // `capture` (optional) receives the per-layer states of the tokens; `update` (optional) adds a
  // low-rank update per batch row.
  static torch::Tensor Forward(LanguageModel& model, const torch::Tensor& tokens,
                               const torch::Tensor& prefix_keys, const torch::Tensor& prefix_values,
                               TrunkStates* capture, const LowRankTorch* update = nullptr);
  // Stops gradients into the model's weights and puts it in eval mode, for good: a frozen base LM
  // under an adapter. The model's own TrainStep must not be used afterwards.
  static void Freeze(LanguageModel& model);
};

}  // namespace knowd::train::internal
