// `knowd eval --sessions`: what a session (model/session_mapper.h) is worth against reading the
// same demonstrations in context, on the world's in-context tasks (train/world.h: icl.train.jsonl,
// the families the mapper was trained on, and icl.heldout.jsonl, families it never saw).
//
// Per task and per number of demonstrations n (0, 4, 16, 64, 256, 1024 by default), every query:
//   zero-shot    "<BOS>Q: <input>\nA:"                               (no context)
//   in-context   "<BOS><passages + first k demonstrations>Q: <input>\nA:", k = n or as many as fit
//                the LM's positions with the answer (the largest k <= n for which every query of
//                the task fits)
//   session      the task's passages and first n demonstrations absorbed into a session
//                (train::IclContextChunks, the bundle's demos_per_chunk), then the zero-shot
//                prompt under the session's update
// answered greedily up to "\n" or EOS and scored by SQuAD exact match. Also measured: question
// latency (prefill + 4 decoded tokens, one question at a time, median) zero-shot, in context and
// with the largest session, served factored and merged into a copy of the weights (the
// single-session deployment, Transformer::MergeLowRank); session bytes and the in-context KV
// cache's bytes per n; the machine's sgemm peak and memory bandwidth in the same run. Writes
// FILE.json, FILE.md and FILE.png.
#pragma once

#include <string>
#include <vector>

#include "absl/status/status.h"

namespace knowd::bench {

struct SessionEvalOptions {
  std::string bundle_dir;   // with adapter/session_mapper.json
  std::string data_dir;     // icl.train.jsonl and icl.heldout.jsonl
  std::string report_path;  // FILE.json ("" : print the table only)
  std::vector<int> demonstrations = {0, 4, 16, 64, 256, 1024};
  int queries = 16;  // per task (the task's queries, at most)
  int tasks = 0;     // per set, the first ones (0: all)
  int max_answer_tokens = 16;
  int threads = 0;
  bool progress = false;
};

absl::Status RunSessionEval(const SessionEvalOptions& options);

}  // namespace knowd::bench
