// Private to model/: the weights of a loaded Adapter and the scratch its networks run in, shared
// by adapter_load.cc (which fills them) and adapter.cc (which runs the networks).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/backend.h"
#include "model/adapter.h"
#include "model/config.h"
#include "model/retrieval_keys.h"
#include "model/transformer.h"

namespace knowd {

// The RMS normalisation of every adapter norm (train/adapter_networks.cc: RmsNormalize).
inline constexpr float kAdapterNormEps = 1e-6f;

// One pre-norm cross-attention + MLP block (train/adapter_networks.h: CrossBlock), in backend
// memory. Linear weights are [out, in] (nn.Linear layout), without biases.
struct AdapterBlock {
  float* norm_x = nullptr;          // [d]
  float* norm_memory = nullptr;     // [d]
  float* norm_condition = nullptr;  // [d]; the aggregator's blocks only
  float* q = nullptr;               // [d, d]
  float* kv = nullptr;              // [2d, d]: the k rows, then the v rows
  float* o = nullptr;               // [d, d]
  float* norm_mlp = nullptr;        // [d]
  float* up = nullptr;              // [mlp_ratio * d, d]
  float* down = nullptr;            // [d, mlp_ratio * d]
};

// An encoder over the frozen LM's hidden states (the readout's refinement and the question
// encoder): the layer mix, the blocks, and the key head.
struct AdapterEncoder {
  std::vector<float*> mix;  // per layer [d, hidden_size], backend memory
  std::vector<AdapterBlock> blocks;
  std::vector<float> key;  // [key_dim, d], host memory (keys are computed on the host)
};

// The aggregator and the expander (train/adapter_networks.h: Aggregator, Expander): the mac head,
// or the mac+rag head ("rag_aggregator.*", "rag_expander.*") for prompts with passage text.
struct AdapterHead {
  std::vector<AdapterBlock> aggregator;  // backend memory
  float* expand = nullptr;               // [kv_width, d], backend memory
  float* expand_bias = nullptr;          // [kv_width], backend memory
  std::vector<float> rank;               // [max_candidates, d], host memory
  std::vector<float> score;              // [d]: aggregator.score.weight, Linear(1, d)
  std::vector<float> sink_keys;          // [layers][kv_dim]
  std::vector<float> sink_values;        // [layers][kv_dim]
};

// The slots of one sequence (a passage, a question, or a question's candidates) and the memory
// rows they attend to, within the rows of a batch.
struct AdapterSegment {
  int x_begin = 0;
  int x_rows = 0;
  int memory_begin = 0;
  int memory_rows = 0;
};

struct Adapter::Impl {
  ~Impl();

  // ---- the networks (adapter.cc), written once against the Backend interface ----
  // A scratch buffer of `floats` in backend memory (nullptr when out of memory); a later call
  // for the same buffer (adapter.cc's enum Buffer) with a larger size invalidates it.
  float* Scratch(int buffer, int64_t floats);
  // The frozen LM over `sequences` (each in its own new cache) in one Forward: the per-layer
  // hidden states [layers][tokens][hidden_size], sequences in order.
  absl::StatusOr<float*> Trunk(std::span<const std::span<const int32_t>> sequences,
                               std::vector<std::unique_ptr<KvCache>>* caches);
  // The layers of Trunk's hidden states the retrieval heads read, in host memory:
  // [retrieval->layers()][tokens][hidden_size]; empty without retrieval heads.
  std::vector<float> RetrievalStates(const float* hidden, int64_t tokens) const;
  // LayerMix: [tokens][d] = sum over layers of proj_l · rmsnorm(hidden_l).
  absl::StatusOr<float*> Mix(const AdapterEncoder& encoder, const float* hidden, int tokens);
  // CrossBlocks applied in order to x [x_rows][d]; `condition` [x_rows][d] or null.
  absl::Status Blocks(std::span<const AdapterBlock> blocks, float* x, int x_rows,
                      const float* memory, int memory_rows,
                      std::span<const AdapterSegment> segments, const float* condition);
  // The readout of passages that went through Trunk: Z [passages * slots][d].
  absl::StatusOr<float*> Readout(std::span<const std::span<const int32_t>> passages,
                                 const std::vector<std::unique_ptr<KvCache>>& caches,
                                 const float* hidden, int tokens);
  // Waits for the backend; its first error, if any.
  absl::Status Finish();

  Transformer* base = nullptr;
  Backend* backend = nullptr;
  LlamaConfig lm;
  AdapterSpec spec;
  float scale = 0.0f;  // min(exp(log_scale), 100)

  // Backend memory.
  float* pool_queries = nullptr;   // [layers][slots][kv_dim] (the export's [layers][kv][slots][hd])
  float* compress = nullptr;       // [d, kv_width]
  float* compress_bias = nullptr;  // [d]
  AdapterEncoder readout;
  AdapterEncoder question;
  float* question_queries = nullptr;  // [slots, d]
  AdapterHead mac;
  AdapterHead rag;        // empty (no aggregator blocks, expand null) without spec.rag_head
  float* ones = nullptr;  // [max(hidden_size, d)]: the weight of a plain RMS normalisation
  // The retrieval heads (model/retrieval_keys.h), or null: the readout's keys are then stored.
  std::unique_ptr<RetrievalKeys> retrieval;
  std::vector<void*> allocations;

  // Scratch buffers in backend memory, grown on demand (see Scratch in adapter.cc).
  std::vector<std::pair<float*, int64_t>> scratch;

  // Floats of one pooled slot: every layer's keys then values.
  int64_t kv_width() const { return int64_t{2} * lm.num_layers * lm.kv_dim(); }
};

}  // namespace knowd
