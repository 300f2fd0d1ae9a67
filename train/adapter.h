// The MAC adapter networks of knowd-train (train/README.md, "Adapter meta-training"), trained on
// top of a frozen base LM:
//
//   readout (amortizer)  per layer and kv head, T learned queries pool the passage's own keys and
//                        values (the LM's KV space, where a probe learned fastest), a linear map
//                        compresses each pooled slot to d_latent values (initialised to the
//                        principal components of pooled slots, so training starts near the pooled
//                        KV), and cross-attention blocks over the frozen LM's per-layer hidden
//                        states refine it: Z in R^{T x d_latent} (what the bank stores) and the
//                        retrieval key k = normalize(W_k mean(Z)).
//   question encoder     T learned queries over the question's per-layer hidden states -> Q, key q.
//   aggregator           A0 = sum_j softmax_j(s q.k_j) Z_j over the top-k candidates, then blocks
//   in
//                        which Q-conditioned queries cross-attend to all candidates' slots (with
//                        rank and score embeddings): A in R^{T x d_latent}, the shape of a bank
//                        entry.
//   expander             A -> per-layer prefix keys/values (kv_heads x head_dim, unrotated), the
//                        transpose of the compression map at the start: P = 1 + T rows per layer,
//                        row 0 the LM's own BOS key/value (the attention sink, learned from there).
//
// Pooled keys are re-rotated so that the question sees each at the distance it would see it at
// with the passage in context. At question time the frozen LM runs "Q: <question>\nA:" (no BOS:
// row 0 stands for it) after the prefix, at positions P.. — exactly KvCache::SetPrefix in the
// engine — and the greedy continuation up to "\n" or EOS is the answer.
//
// Training (TrainStep): answer NLL under the frozen LM with the prefix, context distillation (KL
// from the same LM reading the passage in context, on the question and answer tokens), InfoNCE
// between question and passage keys within the batch, a curriculum in the number of candidates
// (the caller chooses it per step) and backprop dropout (a distractor's latents carry no gradient
// with some probability). The other passages of a step serve as distractors, hardest first.
//
// This header does not include libtorch. An Adapter is driven by one thread at a time.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/dtype.h"
#include "model/sha256.h"
#include "model/tokenizer.h"
#include "train/lm.h"
#include "train/world.h"

namespace knowd::train {

// Architecture hyper-parameters (written to adapter.json).
struct AdapterConfig {
  int slots = 8;  // T: latent tokens per passage = prefix rows per layer (P)
  // d: values per latent token (what the bank stores per slot). 8 x 80 f16 values are 1/54 of the
  // KV cache of a median knowd-tiny passage (67 tokens x 4 layers x 2 x 64 x 2 bytes).
  int latent_dim = 80;
  // R: prefix rows the expander makes of each aggregated latent row (the prefix has 1 + T * R
  // rows per layer; the bank still stores T x d). Every prefix key is rotated by
  // RoPE(T * (R - 1)), so the question sees the prefix at the distances of a 1 + T row one
  // (model/adapter.h, AdapterSpec::rows_per_slot).
  int rows_per_slot = 1;
  int key_dim = 64;   // retrieval key width
  int heads = 4;      // attention heads of the adapter's blocks (divides latent_dim)
  int mlp_ratio = 2;  // MLP width = mlp_ratio * latent_dim
  int readout_blocks = 2;
  int question_blocks = 2;
  int aggregator_blocks = 2;
  int max_candidates = 16;  // the aggregator's rank embedding covers top-k <= this
  // mac+rag head: a second aggregator and expander ("rag_aggregator.*", "rag_expander.*") over
  // the same stored latents and question code, for a reader that also has passage text after the
  // prefix. Rows with text train it; rows without train the mac head.
  bool rag_head = false;
  // Exported as "rag_prefix_key_scale": the mac+rag head's prefix keys (not the sink) are
  // multiplied by it when served (model/adapter.h). Not used in training; chosen on the valid
  // split.
  double rag_prefix_key_scale = 1.0;
};

// Per-step training hyper-parameters.
struct AdapterTrainOptions {
  int batch = 8;                  // passages per step; each is a distractor for the others
  int questions_per_passage = 2;  // questions asked about each passage in a step
  int max_passage_tokens = 256;
  double distill_weight = 1.0;      // KL to the LM reading the passage in context
  double contrastive_weight = 0.2;  // InfoNCE of question keys vs passage keys
  double backprop_dropout = 0.5;    // probability that a distractor's latents carry no gradient
  // mac+rag: the fraction of questions whose student reads a passage's text after the prefix
  // ("<passage>\nQ: ..." as the engine's mac+rag prompt), so the prefix learns to help a reader
  // that also has text rather than disturb it. The text is another passage of the step (not the
  // gold) for text_distractor_fraction of them: then the answer must come from the prefix.
  double text_fraction = 0.0;
  double text_distractor_fraction = 0.25;
  // The gold text as the daemon's rag-subject prompt shows it: the passage after the earlier
  // passages about its subject, oldest first (an update after the fact it changes).
  bool text_subject_history = false;
  // Only the mac+rag head learns (config.rag_head): the readout, the question encoder, the keys'
  // scale and the mac head keep their weights, so the bank's latents and mac answers are unchanged.
  bool rag_head_only = false;
  double weight_decay = 0.01;
  double grad_clip = 1.0;
  uint64_t seed = 1;
};

// Loss parts of one step (means over the step's questions).
struct AdapterLosses {
  double total = 0;
  double answer_nll = 0;     // per answer token (and the token that ends the answer)
  double distill = 0;        // KL(teacher || student) per question/answer token
  double contrastive = 0;    // InfoNCE
  double retrieval_acc = 0;  // in-batch top-1 of the question keys
  // References on the same answers, from the frozen LM alone: with the passage in context (the
  // teacher; what the adapter should approach) and closed-book (the sink row as the only prefix).
  double context_nll = 0;
  double closed_book_nll = 0;
};

// Exact match of answers generated with the adapter's prefix on one split's questions.
struct AdapterScore {
  int questions = 0;
  int top_k = 0;
  double gold_em = 0;        // the gold passage alone
  double distractor_em = 0;  // gold + (top_k - 1) random other passages
  double retrieved_em = 0;   // the top_k passages the keys retrieve from the whole split
  double recall_at_1 = 0;    // gold retrieved first
  double recall_at_k = 0;    // gold among the top_k
  // The first few questions: "question => gold-only answer | retrieved answer (expected)".
  std::vector<std::string> examples;
};

// A split indexed for adapter training: the passages that have questions, and their questions.
class AdapterCorpus {
 public:
  AdapterCorpus(SplitData data, std::shared_ptr<const Tokenizer> tokenizer);
  const SplitData& data() const { return data_; }
  const Tokenizer& tokenizer() const { return *tokenizer_; }
  // Indices (into data().passages) of passages with at least one question.
  const std::vector<int>& answerable() const { return answerable_; }
  // Question indices of passage `p`.
  const std::vector<int>& questions_of(int p) const { return questions_of_[p]; }
  // The passages about p's subject up to and including p, in stream order.
  std::vector<int> history_of(int p) const;
  // The passage index of question `q`, or -1.
  int passage_of(int q) const { return passage_of_[q]; }

 private:
  SplitData data_;
  std::shared_ptr<const Tokenizer> tokenizer_;
  std::vector<int> answerable_;
  std::vector<std::vector<int>> questions_of_;
  std::unordered_map<std::string, std::vector<int>> passages_of_subject_;  // stream order
  std::vector<int> passage_of_;
};

// How Adapter::LoadExport may differ from the export it reads.
struct ExportLoad {
  // An export without the mac+rag head (config.rag_head) is accepted and the head starts as a copy
  // of the mac head.
  bool seed_rag_head = false;
  // The export may be of a smaller adapter with the same slots, latent and key widths: fewer
  // blocks in any network, a narrower MLP (mlp_ratio), fewer rows_per_slot. Its tensors fill the
  // leading part of ours, and what it lacks starts so that these networks compute exactly what
  // the export's did: a new block's output projections (attention o, MLP down) and a wider MLP's
  // extra down-projection columns are zero (the rest keeps its random start, so they learn). New
  // prefix rows start near zero: the export's rows are unchanged (the key rotation keeps their
  // distances to the question) and the new ones take a small share of attention.
  bool grow = false;
};

class Adapter {
 public:
  // New networks with seeded random weights over `base`, which this freezes for good (its weights
  // get no gradient) and which must outlive the adapter.
  static absl::StatusOr<std::unique_ptr<Adapter>> Create(LanguageModel* base,
                                                         const AdapterConfig& config,
                                                         uint64_t seed);
  ~Adapter();

  const AdapterConfig& config() const;
  int64_t ParameterCount() const;

  // The data-dependent start: sets the compression map (and the expander, its transpose) to the
  // principal components of the pooled key/value slots of `passages` (token ids with BOS).
  // Returns the fraction of the slots' variance the latent keeps.
  absl::StatusOr<double> InitializeFromPassages(std::span<const std::vector<int32_t>> passages);

  // One AdamW step at learning rate `lr` on a batch drawn from `corpus` by (options.seed, step),
  // with `candidates` passages per question (1: the gold passage alone). Returns the step's
  // losses before the update.
  absl::StatusOr<AdapterLosses> TrainStep(const AdapterCorpus& corpus,
                                          const AdapterTrainOptions& options, int step, double lr,
                                          int candidates);
  // The same losses without an update (gradients off, no dropout), for held-out checks.
  absl::StatusOr<AdapterLosses> Loss(const AdapterCorpus& corpus,
                                     const AdapterTrainOptions& options, int step, int candidates);

  // Scores the first `questions` questions of `corpus` (stream order). Distractors are drawn
  // with `seed`; retrieval searches every passage of the split.
  absl::StatusOr<AdapterScore> Score(const AdapterCorpus& corpus, int questions, int top_k,
                                     uint64_t seed, int max_passage_tokens = 256);

  // The prefix for a question given candidate passages (token ids with BOS; at least one), as the
  // engine takes it: keys/values [layers][1 + slots][kv_dim] for KvCache::SetPrefix, and the
  // tokens of the question prompt that follow it (no BOS).
  struct PrefixKv {
    std::vector<float> keys;
    std::vector<float> values;
    int rows = 0;
    std::vector<int32_t> prompt;
  };
  // with_text: the mac+rag head's prefix (config.rag_head), for a prompt with passage text.
  absl::StatusOr<PrefixKv> Prefix(std::string_view question,
                                  std::span<const std::vector<int32_t>> passages,
                                  const Tokenizer& tokenizer, bool with_text = false);

  // Every intermediate the engine's port (model/adapter.h) must reproduce, for its parity test
  // (tests/train/adapter_parity_test): the latents and keys of `passages` (token ids with BOS),
  // the question code of `prompt` (token ids with BOS), and the prefix the aggregator and the
  // expander make of all the passages as candidates (the mac+rag head's when with_text).
  struct Trace {
    std::vector<std::vector<float>> latents;  // per passage: [slots][latent_dim]
    std::vector<std::vector<float>> keys;     // per passage: [key_dim]
    std::vector<float> queries;               // [slots][latent_dim]
    std::vector<float> question_key;          // [key_dim]
    PrefixKv prefix;                          // prompt left empty
  };
  absl::StatusOr<Trace> TraceForTest(std::span<const std::vector<int32_t>> passages,
                                     std::span<const int32_t> prompt, bool with_text = false);

  // Networks and optimizer state (torch::serialize archive); Load needs the same config.
  absl::Status SaveCheckpoint(const std::string& path) const;
  absl::Status LoadCheckpoint(const std::string& path);

  // Writes <dir>/adapter.json (config, base-model fingerprint, prompt format, tensor list) and
  // <dir>/adapter.safetensors (dtype kF32 or kF16), each replaced atomically. `base_sha256` is
  // the hex SHA-256 of the base bundle's model.safetensors.
  absl::Status Export(const std::string& dir, DType dtype, const std::string& base_sha256,
                      const std::string& training_json = "{}") const;
  // Reads the weights of an Export (any float dtype) back; the config must match, except as
  // `how` allows (ExportLoad).
  absl::Status LoadExport(const std::string& dir, ExportLoad how = {});

 private:
  struct Impl;
  explicit Adapter(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Sha256OfFile (model/sha256.h) fingerprints the base model an adapter is trained on.
using knowd::Sha256OfFile;

// Bytes a passage of `tokens` tokens takes in the base LM's KV cache at f16
// (layers x tokens x 2 x kv_dim x 2), and the bytes of its stored latent (slots x d x 2).
int64_t PassageKvBytes(const LlamaConfig& base, int tokens);
int64_t LatentBytes(const AdapterConfig& config);

// `knowd-train adapter`: trains (or resumes) over <bundle>'s frozen LM on the adapter split,
// exports <bundle>/adapter/, and scores the valid split.
struct AdapterRunOptions {
  std::string data_dir;    // knowd-train data output
  std::string bundle_dir;  // the base LM bundle (config.json, model.safetensors, tokenizer.model)
  std::string work_dir;    // checkpoints
  // Non-empty: start from this export (an adapter/ directory) instead of the data-dependent
  // initialisation (InitializeFromPassages); see LoadExport's seed_rag_head.
  std::string init_from;
  AdapterConfig config;
  AdapterTrainOptions train;
  int steps = 2000;
  int warmup = 50;
  double lr = 1e-3;
  double min_lr_ratio = 0.1;
  int top_k = 4;
  double gold_only_fraction = 0.3;  // curriculum: gold alone for this part of the steps
  int threads = 1;
  int log_every = 10;
  int checkpoint_every = 200;
  bool resume = false;
  int eval_questions = 100;  // valid questions scored at the end (0: skip)
  DType export_dtype = DType::kF16;
  // > 0: stop after this step (with a checkpoint; no export), to continue later with --resume,
  // perhaps with another schedule or data. The learning rate and curriculum follow `steps`.
  int stop_after = 0;
};
absl::Status RunAdapterTraining(const AdapterRunOptions& options);

// Candidates per question at `step`: 1 for the first gold_only_fraction of the steps, then rising
// linearly to top_k over the next gold_only_fraction.
int CurriculumCandidates(const AdapterRunOptions& options, int step);

}  // namespace knowd::train
