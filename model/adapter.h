// The MAC adapter networks of a bundle (adapter/adapter.json + adapter/adapter.safetensors, written
// by `knowd-train adapter`), run on the engine's kernels over a frozen Transformer:
//
//   EncodePassages   the amortizer: one trunk pass of the frozen LM over each passage, pooled
//                    per-layer keys/values compressed to a latent Z (slots x latent_dim) refined
//                    by cross-attention blocks over the hidden states, and the retrieval key
//                    k = normalize(W_k rmsnorm(mean(Z))). Z and k are what the memory bank stores.
//   EncodeQuestion   the question encoder: learned queries over the question's hidden states ->
//                    Q (slots x latent_dim) and the question key q.
//   Modulate         the aggregator over the top-k candidates' latents (with rank and score
//                    embeddings), then the expander: per-layer prefix keys/values for
//                    KvCache::SetPrefix (row 0: the attention sink, then one row per slot).
//                    An adapter with a mac+rag head has a second aggregator and expander, trained
//                    for a prompt that also carries passage text after the prefix.
//
// After the prefix the reader runs the question prompt (knowledge/prompt.h) WITHOUT BOS (row 0
// stands for it) and decodes greedily up to "\n" or EOS. train/README.md states the contract; the
// libtorch networks in train/adapter_networks.h are the reference and
// tests/train/adapter_parity_test checks this port against them.
//
// An Adapter is immutable after Load; Encode/Modulate calls may run concurrently only if the
// Transformer's Forward may (it may not: callers serialise engine work).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "model/transformer.h"

namespace knowd {

// Hyper-parameters read from adapter.json.
struct AdapterSpec {
  int slots = 0;       // T: latent rows per passage
  int latent_dim = 0;  // d
  // R: prefix rows the expander makes of each aggregated latent row ("rows_per_slot" in
  // adapter.json; default 1). The prefix has 1 + T * R rows per layer, so the reader has more
  // positions to copy a multi-token answer along than the bank stores latent rows. With R > 1
  // every prefix key (the sink's too) is served rotated by RoPE(T * (R - 1)), as if it sat that
  // many positions later: the question, at positions 1 + T * R.., then sees the prefix at the
  // distances it would after a 1 + T row prefix.
  int rows_per_slot = 1;
  int key_dim = 0;
  int heads = 0;  // attention heads of the adapter's blocks
  int mlp_ratio = 0;
  int readout_blocks = 0;
  int question_blocks = 0;
  int aggregator_blocks = 0;
  int max_candidates = 0;  // the aggregator takes at most this many candidates
  // A second aggregator and expander for prompts with passage text after the prefix (mac+rag),
  // over the same stored latents and question code ("rag_head" in adapter.json).
  bool rag_head = false;
  // The mac+rag head's prefix keys (the slots, not the sink) are multiplied by this: a
  // temperature on how strongly the reader attends to the prefix beside the text, calibrated on
  // the valid split's EM after training ("rag_prefix_key_scale" in adapter.json; default 1).
  float rag_prefix_key_scale = 1.0f;
  std::string base_sha256;     // SHA-256 of the base model.safetensors it was trained on
  std::string adapter_sha256;  // SHA-256 of adapter.safetensors
  // SHA-256 of the readout's weights (names, shapes and values as loaded): all that a passage's
  // stored latents and key depend on besides the base model. A memory bank's storage::Fingerprint
  // is {adapter_hash = encoder_sha256, base_model_hash = base_sha256} (what `knowd reencode`
  // writes), so an adapter whose question encoder or heads changed (a mac+rag head added, say)
  // serves a bank its predecessor encoded without re-encoding it.
  std::string encoder_sha256;
  // SHA-256 of retrieval_keys.safetensors when the adapter has retrieval heads
  // (model/retrieval_keys.h), else empty: the stored keys are then the readout's. A bank's keys
  // depend on it, its latents do not (`knowd reencode --keys-only` re-encodes the keys alone).
  std::string retrieval_keys_sha256;

  int prefix_rows() const { return 1 + slots * rows_per_slot; }
  // By how many positions the prefix keys are rotated (see rows_per_slot).
  int prefix_key_shift() const { return slots * (rows_per_slot - 1); }
};

// One passage as the bank stores it.
struct PassageCode {
  std::vector<float> latents;  // slots * latent_dim, row-major
  std::vector<float> key;      // key_dim, unit norm: the retrieval key the bank stores
};

// One question, encoded.
struct QuestionCode {
  std::vector<float> queries;  // slots * latent_dim
  std::vector<float> key;      // key_dim, unit norm: the aggregator's (pairs with KeyOfLatent)
  // key_dim, unit norm: what the bank's dense index is searched with (pairs with PassageCode's
  // key). The retrieval heads' when the adapter has them, else equal to `key`.
  std::vector<float> retrieval_key;
};

// The bounds of AdapterSpec::rag_prefix_key_scale: (0, 4].
inline bool IsValidRagPrefixKeyScale(double scale) { return scale > 0 && scale <= 4; }
// The bounds of AdapterSpec::rows_per_slot: [1, kMaxRowsPerSlot].
inline constexpr int kMaxRowsPerSlot = 16;
inline bool IsValidRowsPerSlot(int rows) { return rows >= 1 && rows <= kMaxRowsPerSlot; }

// Prefix keys/values for KvCache::SetPrefix: [layers][rows][kv_dim] each.
struct PrefixKv {
  std::vector<float> keys;
  std::vector<float> values;
  int rows = 0;
};

class Adapter {
 public:
  // Loads <dir>/adapter.json and <dir>/adapter.safetensors (any float dtype; weights converted to
  // f32) for `base`, which must outlive the adapter. Refuses (FAILED_PRECONDITION) an adapter
  // trained for another base architecture; a different base SHA-256 is refused only when
  // `base_sha256` is given and differs.
  static absl::StatusOr<std::unique_ptr<Adapter>> Load(const std::string& dir, Transformer* base,
                                                       std::string_view base_sha256 = {});
  ~Adapter();

  const AdapterSpec& spec() const;
  // The similarity scale: aggregator scores are scale * dot(q, k).
  float score_scale() const;

  // Encodes passages (token ids, BOS first, at least one token after it; at most
  // max_position_embeddings) in batched trunk passes (one Transformer::Forward per up to 8192
  // tokens). `out` gets one code per passage, in order. INVALID_ARGUMENT for a passage out of
  // those bounds.
  absl::Status EncodePassages(std::span<const std::vector<int32_t>> passages,
                              std::vector<PassageCode>* out);
  // Encodes a question prompt (token ids of knowledge::QuestionPrompt with BOS first).
  absl::StatusOr<QuestionCode> EncodeQuestion(std::span<const int32_t> prompt);
  // The readout's key of a latent, which the aggregator scores candidates with. Without
  // retrieval heads it is also the stored retrieval key (what EncodePassages returned with it).
  std::vector<float> KeyOfLatent(std::span<const float> latents) const;
  // Whether the adapter has retrieval heads (model/retrieval_keys.h).
  bool has_retrieval_keys() const;

  // Aggregates the candidates (best first; 1 .. max_candidates; each slots * latent_dim floats)
  // for the question and expands the result into the prefix. with_text: the prompt after the
  // prefix also carries passage text (mac+rag); the mac+rag head makes the prefix when the
  // adapter has one (spec().rag_head), else the mac head.
  absl::StatusOr<PrefixKv> Modulate(const QuestionCode& question,
                                    std::span<const std::span<const float>> latents,
                                    bool with_text = false);

  // Overrides spec().rag_prefix_key_scale (to calibrate it: `knowd eval --rag-prefix-key-scale`).
  // INVALID_ARGUMENT outside (0, 4]; FAILED_PRECONDITION without a mac+rag head.
  absl::Status SetRagPrefixKeyScale(float scale);

 private:
  struct Impl;
  explicit Adapter(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace knowd
