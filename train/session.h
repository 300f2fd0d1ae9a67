// Sessions (StreamAdapter): a context stream absorbed into a low-rank update of the frozen LM's
// weights, so the questions that follow cost what a zero-shot question costs however long the
// context was. `knowd-train session` trains the mapper; model/session_mapper.h serves it.
//
// The mapper, per site s (a layer and one of its projections: qkv, o, gate, up, down):
//   chunk i       "<BOS><chunk text>", run by the frozen LM alone (positions 0, 1, ...); its
//                 keys K and values V of the site's layer are read ([n, kv_dim], after RoPE).
//   summary S_i   r learned queries attend over the chunk per key/value head (softmax over the
//                 chunk's n rows, BOS included, scale 1/sqrt(head_dim)), giving A [r, kv_dim];
//                 S_i = A · Pᵀ, P [r2, kv_dim]: an [r, r2] matrix.
//   state h       h_0 = 0, a_i = sigmoid(S_i · Gᵀ + g) (row-wise, G [r2, r2], g [r2]),
//                 h_i = a_i ⊙ h_{i-1} + S_i: constant in size whatever the number of chunks.
//   update        the site's weight becomes W + W1 · hᵀ · W2 (W2 [r, in], W1 [out, r2]), applied
//                 factored: y += ((x · W2ᵀ) · h) · W1ᵀ (model/low_rank.h).
// A question is then "<BOS>Q: <question>\nA:" (knowledge::QuestionPrompt, no context) answered
// greedily by the updated LM. Only the mapper (queries, P, G, g, W1, W2) is trained: the answer
// loss of held-back demonstrations given the update, plus (where the context fits the teacher's
// window) a KL term towards the same LM reading the demonstrations in context.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace knowd::train {

struct SessionTrainOptions {
  std::string data_dir;    // `knowd-train data` output: icl.train.jsonl, icl.heldout.jsonl
  std::string bundle_dir;  // the base LM and tokenizer; the mapper goes to <bundle>/adapter
  std::string work_dir;    // checkpoint and log
  // Sites: "<projection>" for every layer or "<layer>.<projection>", comma-separated.
  std::string sites = "o,down";
  int rank = 16;
  int rank_out = 16;
  int demos_per_chunk = 8;  // demonstrations per context chunk
  int max_chunk_tokens = 512;
  int steps = 1500;
  int tasks_per_step = 4;
  int queries_per_task = 8;
  int max_train_demos = 256;  // demonstrations drawn per training context: 1..this, log-uniform
  double lr = 2e-3;
  int warmup = 50;
  double distill = 0.0;  // weight of the KL term towards in-context reading (0: answer loss only)
  int teacher_tokens = 320;  // the longest in-context teacher sequence
  uint64_t seed = 20240601;
  int threads = 1;
  int log_every = 25;
  int eval_every = 250;
  int checkpoint_every = 100;
  bool resume = false;
  bool export_mapper = true;
  // Evaluation only (no training): zero-shot and in-context accuracy of the base LM.
  bool measure_only = false;
  std::vector<int> eval_demos = {0, 4, 16, 64, 256, 1024};
  int eval_queries = 8;  // per task
  int eval_tasks = 48;   // per set, evenly spaced
};

// Trains the mapper, reports accuracy (teacher-forced greedy exact match, see session.cc) of
// zero-shot, in-context and session answers on the training and held-out families, and exports
// <bundle>/adapter/session_mapper.{json,safetensors}.
absl::Status TrainSession(const SessionTrainOptions& options);

// What libtorch computes with the bundle's LM and the exported mapper (f16 weights widened), for
// the engine's parity tests: the state after each chunk (chunks: token ids, BOS first), sites in
// session_mapper.json order, each [rank][rank_out]; and the logits [tokens][vocab] of `question`
// (BOS first) under the final state.
struct TorchSessionReference {
  std::vector<std::vector<float>> states;  // per chunk: the whole state after it
  std::vector<float> logits;
};
absl::StatusOr<TorchSessionReference> TorchSession(const std::string& bundle_dir,
                                                   const std::vector<std::vector<int32_t>>& chunks,
                                                   const std::vector<int32_t>& question);

// Parses --session-sites for a model of `layers` layers: (layer, projection) pairs, projection in
// the engine's order 0..4 = qkv, o, gate, up, down. INVALID_ARGUMENT names a bad entry.
absl::StatusOr<std::vector<std::pair<int, int>>> ParseSessionSites(const std::string& text,
                                                                   int layers);

}  // namespace knowd::train
