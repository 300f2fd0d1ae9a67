// `knowd eval`: question-answering accuracy of a model bundle on a split of the synthetic world
// (train/world.h), in every ask mode, as JSON + a markdown table + a PNG plot.
//
// The stream: the split's passages are stored one by one, in stream order, into a fresh memory
// bank (storage/memory_bank.h, lexical index on). Questions are asked at the end of the stream,
// so the gold answer of a question is the value true at the end (`final_answer`: a fact a later
// update passage changed is scored against the new value, and its oracle context is the original
// passage followed by the update, oldest first as in pretraining).
//
// Modes (every memory mode retrieves as the daemon does by default: the bundle's retrieval and
// fusion, knowledge.json, unless EvalOptions names others):
//   closed-book   "<BOS>Q: <question>\nA:"                     (no memory)
//   oracle        "<BOS><gold passage(s)>\nQ: <question>\nA:"   (upper bound for reading)
//   rag-top1/3    the top 1 / 3 passages retrieved for the question, oldest first
//   rag-subject   the top passage and up to two more of the top 20 on its subject
//                 (knowledge::LexicalMarks::same_subject: an update of a fact, or its older
//                 version), oldest first
//   mac           the adapter's prefix aggregated from the top mac_top_k passages, then
//                 "Q: <question>\nA:"
//   mac+rag       the same prefix, then rag-subject's passages as text (or the best
//                 mac_rag_passages of mac's candidates)
//   mac and mac+rag need the bundle's MAC adapter (a Modulator); without one they are reported as
//   skipped with the reason, never as zero.
// Answers are the greedy continuation up to the first newline or EOS, scored with the official
// SQuAD normalisation (exact match and token F1).
//
// Retrieval without an adapter: the bank needs a key per passage, and keys come from the adapter's
// encoder. Until a bundle has one, each passage's key is a hashed bag of its words (256 signed
// feature-hashing buckets, L2-normalised) and its latent a 1×1 placeholder. RAG retrieves by BM25
// alone (the bank's hybrid search, re-ranked by the BM25 weight), so the placeholder keys do not
// influence the RAG figures; recall is also reported for the hashed-key dense ranking and the
// fused hybrid ranking.
//
// Also measured: recall@1/@5 (the gold passage is the one stating the final value); retention
// (RAG EM on the unchanged facts of the first `retention_passages` passages, asked right after
// each passage was stored, then after bank_sizes passages and after the whole stream — the EM vs
// stored-passages plot); update accuracy (questions whose fact a later passage changed: EM
// against the new value, and how often the old value was given); bytes per stored entry: the
// modulation (when an adapter exists), the passage text (what RAG stores) and the KV cache the
// frozen LM would hold for the same passage.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "knowledge/ask.h"
#include "knowledge/modulator.h"
#include "model/adapter.h"
#include "model/tokenizer.h"
#include "model/transformer.h"
#include "storage/memory_bank.h"

namespace knowd::bench {

// ---- SQuAD scoring --------------------------------------------------------------------------

// normalize_answer of the official SQuAD v1.1/v2.0 evaluation script: lower case, remove ASCII
// punctuation (string.punctuation, deleted, not replaced by a space), replace the words a/an/the
// by a space, collapse whitespace. Lower-casing is ASCII only; bytes >= 0x80 count as word
// characters for the article rule (as Python's Unicode \b does for letters).
std::string NormalizeAnswer(std::string_view text);
// Normalised strings equal.
bool ExactMatch(std::string_view prediction, std::string_view gold);
// Token F1 of the normalised strings (bag of whitespace tokens). As in the v2.0 script, when
// either side has no tokens the F1 is 1 if both have none, else 0.
double TokenF1(std::string_view prediction, std::string_view gold);

// Mean EM and F1 over the answers added.
class AnswerScore {
 public:
  void Add(std::string_view prediction, std::string_view gold);
  int count() const { return count_; }
  double em() const { return count_ ? exact_ / count_ : 0.0; }
  double f1() const { return count_ ? f1_ / count_ : 0.0; }

 private:
  int count_ = 0;
  double exact_ = 0.0;
  double f1_ = 0.0;
};

// ---- the adapter hook (mac, mac+rag) ---------------------------------------------------------

// The eval asks through the knowledge pipeline (knowledge/ask.h) as the daemon does; the mac modes
// need the bundle's adapter as a knowledge::Modulator.
using Modulator = knowledge::Modulator;

// Loads the Modulator of a bundle. Errors become the reason the mac modes are skipped.
using ModulatorLoader = std::function<absl::StatusOr<std::unique_ptr<Modulator>>(
    const std::string& bundle_dir, Transformer& model, const Tokenizer& tokenizer)>;

// The default loader (bench/mac_modulator.cc): the bundle's adapter/ (model/adapter.h) over
// `model`, owned by the Modulator returned. FAILED_PRECONDITION "mode unavailable: no adapter in
// the bundle" when <bundle>/adapter/ is missing; Adapter::Load's error, prefixed with "mode
// unavailable: ", when it cannot be loaded. Passages longer than the model's context keep their
// beginning.
absl::StatusOr<std::unique_ptr<Modulator>> LoadBundleModulator(const std::string& bundle_dir,
                                                               Transformer& model,
                                                               const Tokenizer& tokenizer);

// ---- batched greedy answering ----------------------------------------------------------------

struct AnswerRequest {
  std::vector<int32_t> prompt;             // non-empty; with BOS, unless a prefix stands for it
  std::shared_ptr<const PrefixKv> prefix;  // optional modulation
  const LowRankState* update = nullptr;    // optional session update (SequenceStep::update)
};

// Greedy answers for every request: the generated text up to the first newline or EOS, at most
// max_tokens tokens (fewer when the context fills up). Requests run `batch` at a time through
// Transformer::Forward (batched prefill, then batched decode). Fails if a prompt (plus prefix)
// does not fit the model's context.
// `progress` (optional) hears how many requests are answered after each batch.
absl::StatusOr<std::vector<std::string>> GreedyAnswers(
    Transformer& model, const Tokenizer& tokenizer, std::span<const AnswerRequest> requests,
    int batch, int max_tokens,
    const std::function<void(size_t done, size_t total)>& progress = nullptr);

// ---- the evaluation --------------------------------------------------------------------------

struct EvalOptions {
  std::string bundle_dir;  // config.json + model.safetensors + tokenizer.model [+ adapter/]
  std::string data_dir;    // <split>.passages.jsonl + <split>.questions.jsonl
  // pretrain, adapter, valid, test, or paraphrase: the test split's passages with
  // paraphrase.questions.jsonl, its questions in other words (train::ReadEvalSplit).
  std::string split = "test";
  int limit = 0;            // questions, spread evenly over the stream (0: all)
  std::string report_path;  // FILE.json; FILE.md and FILE.png are written beside it ("": none)
  std::string work_dir;     // where the bank lives ("": a temporary directory, removed after)
  int threads = 0;          // CPU threads (0: one per core)
  int batch = 16;           // sequences per Forward
  int max_answer_tokens = 24;
  int retention_passages = 100;
  std::vector<int> bank_sizes = {250, 500};  // extra plot points; the first retention_passages
                                             // and the whole stream are always measured
  int mac_top_k = 3;
  // Where every memory mode's passages come from; nullopt: each mode's from retrieval_defaults,
  // which RunEval sets to the bundle's (knowledge.json; all lexical without an adapter): what a
  // daemon request that names none gets.
  std::optional<knowledge::Retrieval> retrieval;
  knowledge::RetrievalDefaults retrieval_defaults;
  // Hybrid retrieval's fusion weights (knowledge/retrieve.h); nullopt: the bundle's.
  std::optional<knowledge::Fusion> fusion;
  int mac_rag_passages = 1;     // mac+rag: the best this many candidates' texts in the prompt ...
  bool mac_rag_subject = true;  // ... or rag-subject's passages
  // > 0: the mac+rag prefix key scale instead of the adapter's rag_prefix_key_scale (calibration).
  double rag_prefix_key_scale = 0;
  storage::LatentFormat latent_format = storage::LatentFormat::kInt8;  // how the bank stores Z
  int examples = 10;        // predictions of the first questions copied into the report; -1: all
  bool print_table = true;  // the markdown table to stdout
  ModulatorLoader modulator_loader = LoadBundleModulator;

  // "Nothing in memory" (knowledge/ask.h): the threshold on a question's relevance; < 0: the
  // bundle's calibration (knowledge.json). Measured on the split's questions (false abstentions,
  // and the EM they cost), on questions of `unknown_split` about people never streamed ("":
  // valid for the test split, test otherwise), and on the questions of `forget_subjects` people
  // whose passages are all forgotten after the stream.
  double abstain_below = -1;
  std::string unknown_split;
  int forget_subjects = 50;
  // Choose the threshold on this split (known vs unknown questions) and write it to
  // <bundle>/knowledge.json.
  bool calibrate_abstention = false;
  // Instead of the evaluation: stream the split, measure recall@1 / @5 of BM25, the dense keys
  // and hybrid retrieval over a grid of fusion weights (7 rrf_k x 7 lexical weights); then, with
  // an adapter, the EM of every memory mode with each retrieval (three evaluations). Writes the
  // best fusion, the best retrieval (recall@1, then recall@5) and each mode's (EM; ties go to
  // the cheaper retrieval: lexical, dense, hybrid) to <bundle>/knowledge.json.
  bool calibrate_retrieval = false;
  // Progress on stderr (a bar with ETA on a terminal).
  bool progress = false;

  // Called for every question asked at the end of the stream, in every mode the pipeline
  // prepares (closed-book, rag-top1 .. mac+rag; not oracle), with what the pipeline prepared: the
  // daemon reads the same for the same request (tests compare the two).
  std::function<void(const std::string& question, const std::string& mode,
                     const knowledge::AskParams& params, const knowledge::PreparedAsk& prepared)>
      on_prepared;
};

// The pipeline's parameters of an eval mode ("rag-top1", "rag-top3", "rag-subject", "mac",
// "mac+rag"; NOT_FOUND otherwise): what a daemon request with the same fields gets.
absl::StatusOr<knowledge::AskParams> EvalModeParams(const EvalOptions& options,
                                                    std::string_view mode);

// Runs the evaluation and writes the report. Errors: NOT_FOUND / INVALID_ARGUMENT for a missing or
// bad bundle or data file, INTERNAL for I/O. A missing adapter is not an error (see above).
absl::Status RunEval(const EvalOptions& options);

}  // namespace knowd::bench
