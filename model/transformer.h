// The Llama-family transformer: RMSNorm, RoPE (rope_theta, either pairing order), grouped-query
// attention, SwiGLU, tied or untied output, optional q/k/v bias. Written once against
// kernels/backend.h, so it runs on the CPU or CUDA backend alike.
//
// Prefix-KV injection — the hook modulations use: a KvCache may start with P prefix key/value
// rows per layer that are stored as given (never rotated). The sequence's real tokens then take
// positions P, P+1, ...; attention treats prefix rows like earlier context.
//
// Thread-safety: a Transformer's weights are immutable after Load, but Forward uses scratch
// space owned by the Transformer: one thread drives it at a time. KvCaches belong to the caller.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/backend.h"
#include "model/config.h"
#include "model/low_rank.h"

namespace knowd {

class Transformer;

// One sequence's keys and values for every layer, in backend memory: rows [0, size) hold the
// prefix (if any) followed by the tokens run so far.
class KvCache {
 public:
  ~KvCache();
  KvCache(const KvCache&) = delete;
  KvCache& operator=(const KvCache&) = delete;

  int size() const { return size_; }           // rows filled (prefix + tokens)
  int prefix_size() const { return prefix_; }  // P
  int capacity() const { return capacity_; }

  // Forgets everything, prefix included.
  void Clear() { size_ = prefix_ = 0; }
  // Keeps the prefix and the first `tokens` token rows (tokens <= size() - prefix_size()).
  absl::Status TruncateTokens(int tokens);

  // Installs P prefix rows per layer, replacing the cache's contents. keys/values are host
  // arrays [num_layers][P][kv_dim] (kv_dim = num_kv_heads * head_dim), used as given.
  absl::Status SetPrefix(std::span<const float> keys, std::span<const float> values, int p);

  // Copies rows [begin, end) of `layer` to host arrays [end-begin][kv_dim].
  absl::Status ReadRows(int layer, int begin, int end, std::vector<float>* keys,
                        std::vector<float>* values) const;

  float* layer_keys(int layer) const { return keys_ + int64_t{layer} * capacity_ * kv_dim_; }
  float* layer_values(int layer) const { return values_ + int64_t{layer} * capacity_ * kv_dim_; }

 private:
  friend class Transformer;
  KvCache() = default;
  Backend* backend_ = nullptr;
  int num_layers_ = 0;
  int kv_dim_ = 0;
  int capacity_ = 0;
  int size_ = 0;
  int prefix_ = 0;
  float* keys_ = nullptr;  // [num_layers][capacity][kv_dim]
  float* values_ = nullptr;
};

// The new tokens of one sequence in a Forward batch.
struct SequenceStep {
  KvCache* cache = nullptr;
  std::span<const int32_t> tokens;  // appended after the cache's current rows
  bool all_logits = false;          // logits for every token, not just the last
  // Optional: a low-rank weight update applied to this sequence's rows only (model/low_rank.h).
  // Every update of one batch must come from the same LowRankFactors, made for this model.
  const LowRankState* update = nullptr;
};

// Optional by-products of Forward for the adapter's encoders (model/adapter.h), which read the
// frozen LM's per-layer states of a passage. Each layer's keys (after RoPE) and values are
// already in the sequences' caches; this adds the hidden states.
struct TrunkCapture {
  // Backend memory for [num_layers][total][hidden_size] floats, total = the batch's new tokens:
  // each layer's output (the residual stream after its MLP) for every new token, sequences in
  // batch order.
  float* hidden = nullptr;
};

class Transformer {
 public:
  // Loads a model: a GGUF file (llama architecture) or a directory with config.json and
  // model.safetensors (or a sharded index). Weight matrices and the token embedding stay in
  // their file's type in backend memory (f32, f16, bf16, q8_0, q4_0, q4_K, q6_K) and are
  // multiplied in it (Backend::MatMulTyped); norms and biases become f32. `backend` must outlive
  // the model.
  static absl::StatusOr<std::unique_ptr<Transformer>> Load(const std::string& path,
                                                           Backend* backend);
  ~Transformer();

  const LlamaConfig& config() const { return config_; }
  Backend* backend() const { return backend_; }
  // Bytes of weights read per decoded token (every matrix once in its type, plus the used
  // embedding row).
  int64_t WeightBytesPerToken() const;
  // Bytes of backend memory the loaded weights take (about the file's size).
  int64_t WeightBytes() const { return weight_bytes_; }
  // The types of the weight matrices, e.g. "q4_K, q6_K" (sorted, distinct).
  std::string WeightTypes() const;

  // A cache for up to `capacity` rows (prefix + tokens); capacity <= max_position_embeddings
  // unless allow_longer.
  absl::StatusOr<std::unique_ptr<KvCache>> NewCache(int capacity, bool allow_longer = false);

  // Runs the new tokens of every sequence in `batch` together (batched prefill and batched
  // decode are the same call) and appends their keys/values to the caches. Returns logits on the
  // host, [n_outputs, vocab_size]: per sequence in order, one row for its last token, or one per
  // token when all_logits; a null `logits` skips the output head (a trunk pass). `capture`
  // (optional) receives per-layer hidden states. Fails (changing no cache) on an empty sequence,
  // a token id out of range, a full cache, one cache appearing twice, or low-rank updates made
  // for another model or from different factors.
  //
  // A sequence with an `update` gets, after each projection its factors target, the rows
  // ((x · W2ᵀ) · h) · W1ᵀ added to that projection's output (one Backend::LowRankUpdate per
  // site for the whole batch, each row with its sequence's h); rows of sequences without one
  // are unchanged.
  absl::Status Forward(std::span<const SequenceStep> batch, std::vector<float>* logits,
                       const TrunkCapture* capture = nullptr);

  // Adds W1 · hᵀ · W2 of every site of `state` into the site's weight matrix, in place, so that
  // Forward without an update computes what Forward with `state` did (up to rounding to the
  // weights' type). Weights in f32, f16 or bf16 (f16 and bf16 are converted, added to in f32 and
  // rounded back); FAILED_PRECONDITION, changing nothing, for a block-quantized site (naming its
  // type) or a state made for another model. Not thread-safe with Forward.
  absl::Status MergeLowRank(const LowRankState& state);

 private:
  // A weight matrix [rows, cols] in backend memory, in its file's type (MatMulTyped reads it).
  struct Matrix {
    const void* data = nullptr;
    DType dtype = DType::kF32;
  };
  // Rows [row, row + rows) of the stacked q, k, v projection.
  struct QkvPart {
    Matrix w;
    int row = 0;
    int rows = 0;
  };
  struct Layer {
    float* attn_norm = nullptr;
    // One part (q, k and v rows stacked) when the three share a type, else one per projection
    // (a q4_K_M file keeps some attn_v in q6_K).
    std::vector<QkvPart> qkv;
    float* bqkv = nullptr;  // optional
    Matrix wo;
    float* ffn_norm = nullptr;
    Matrix w_gate;
    Matrix w_up;
    Matrix w_down;
  };
  Transformer() = default;
  float* Scratch(int slot, int64_t floats);

  LlamaConfig config_;
  Backend* backend_ = nullptr;
  std::vector<void*> allocations_;
  Matrix embedding_;  // [vocab, hidden]; rows dequantized by the Embedding op
  float* output_norm_ = nullptr;
  Matrix output_;             // [vocab, hidden]; the embedding itself when tied
  int64_t weight_bytes_ = 0;  // bytes of backend memory the weights take
  std::vector<Layer> layers_;
  std::vector<std::pair<float*, int64_t>> scratch_;
};

}  // namespace knowd
