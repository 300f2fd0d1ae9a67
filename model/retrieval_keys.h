// Retrieval keys: the passage and question heads `knowd-train keys` trains (train/retrieval_keys.h)
// for the memory bank's dense index, read from <adapter dir>/retrieval_keys.{json,safetensors}.
// They read the frozen LM's block outputs of a few layers, so a passage's key comes from the same
// trunk pass as its latents, and they leave the adapter's latents and answers unchanged.
//
// Per token t after BOS: x_t = [rmsnorm(h_l,t) for l in layers] (no weight, eps 1e-6); per pooling
// query h: a_h = softmax_t(query_h . x_t), p_h = sum_t a_h,t x_t; key = normalize(proj [p_1..p_H]).
#pragma once

#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "model/config.h"

namespace knowd {

class RetrievalKeys {
 public:
  enum class Side { kPassage, kQuestion };

  // Loads <dir>/retrieval_keys.json and .safetensors for a base model of `lm`'s shape. NOT_FOUND
  // when the adapter has none (its readout's keys are then the retrieval keys); other errors name
  // the file and what is wrong.
  static absl::StatusOr<std::unique_ptr<RetrievalKeys>> Load(const std::string& dir,
                                                             const LlamaConfig& lm);

  // The key of one sequence (BOS first, n >= 2 tokens) from the trunk's hidden states of
  // layers() only: `states` [layers().size()][total_tokens][hidden_size] holds it at rows
  // begin .. begin + n - 1.
  std::vector<float> Key(Side side, const float* states, int64_t total_tokens, int64_t begin,
                         int n) const;

  const std::vector<int>& layers() const { return layers_; }
  int key_dim() const { return key_dim_; }
  // SHA-256 of retrieval_keys.safetensors: what a bank's stored keys depend on besides the base.
  const std::string& sha256() const { return sha256_; }

 private:
  struct Head {
    std::vector<float> query;  // [heads][dim]
    std::vector<float> proj;   // [key_dim][heads * dim]
  };
  RetrievalKeys() = default;

  std::vector<int> layers_;
  int heads_ = 0, dim_ = 0, key_dim_ = 0, hidden_ = 0;
  Head passage_, question_;
  std::string sha256_;
};

}  // namespace knowd
