// Retrieval keys: a passage head and a question head that turn the frozen LM's hidden states into
// unit-norm keys for the memory bank's dense index, trained contrastively apart from the MAC
// adapter (whose latents, aggregator keys and answers they leave untouched).
//
// Each head reads the block outputs of chosen layers, RMS-normalized per layer and concatenated
// (D = layers x hidden per token), pools them with H learned queries (softmax over the sequence's
// tokens, BOS excluded) and projects the H pooled vectors to key_dim:
//   a_h = softmax_t(w_h . x_t),  p_h = sum_t a_h,t x_t,  key = normalize(W [p_1 .. p_H]).
// The passage head reads "<BOS><passage text>"; the question head "<BOS>" + QuestionPrompt.
//
// Training (InfoNCE, both directions) draws batches with hard negatives: each anchor passage
// brings the same person's other passage (an update), people sharing a first or a last name, and
// passages stating the asked relation about other people; the rest of the batch are in-batch
// negatives. The frozen LM's states are computed once and kept (f16) for the whole run.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace knowd::train {

struct RetrievalKeyOptions {
  std::string data_dir;    // `knowd-train data` output: adapter (+ pretrain) to train, valid, test
  std::string bundle_dir;  // the base LM and tokenizer; the heads are exported to <bundle>/adapter
  std::string work_dir;    // checkpoint and log
  std::vector<int> layers = {1, 3};  // block outputs read (0-based)
  int heads = 4;
  int key_dim = 64;
  int steps = 2000;
  int batch = 256;  // passages per step (one question each)
  double lr = 2e-3;
  int warmup = 50;
  uint64_t seed = 20240601;
  int threads = 1;
  int max_passage_tokens = 256;
  int max_train_passages = 0;     // 0: all of the adapter and pretrain splits
  int questions_per_passage = 4;  // kept per training passage
  int log_every = 50;
  int eval_every = 500;
  bool export_heads = true;  // write retrieval_keys.* beside the adapter
};

// Trains the heads, reports recall@1/@5 on valid and test (and the adapter's own keys' figures
// beside them), and exports <bundle>/adapter/retrieval_keys.{json,safetensors}.
absl::Status TrainRetrievalKeys(const RetrievalKeyOptions& options);

// The keys libtorch computes for `sequences` (token ids, BOS first) with the bundle's LM and the
// heads exported to <bundle_dir>/adapter (as stored: f16 matrices widened to f32): what the
// engine (model/retrieval_keys.h) must reproduce. `question`: the question head, else the
// passage head.
absl::StatusOr<std::vector<std::vector<float>>> TorchRetrievalKeys(
    const std::string& bundle_dir, const std::vector<std::vector<int32_t>>& sequences,
    bool question);

}  // namespace knowd::train
