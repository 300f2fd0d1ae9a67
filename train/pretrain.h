// Pretraining of the base LM on one split of the synthetic world: every training sequence is a
// reading-comprehension example in the prompt format of knowledge/prompt.h (QaPrompt):
//
//   <BOS><context>\nQ: <question 1>\nA: <answer 1>[\nQ: <question 2>\nA: <answer 2>...]<EOS>
//
// The context is one passage, or for an update passage the original passage followed by the
// update (the questions then take the newer values), so the model learns both to read and that
// the later statement wins. The loss covers every token (language modelling of passages and
// questions); answer tokens and the token that ends each answer ("\n" or EOS) are weighted by
// answer_weight on top.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <unordered_map>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "model/config.h"
#include "model/tokenizer.h"
#include "train/lm.h"
#include "train/world.h"

namespace knowd::train {

// Builds tokenized reading-comprehension batches from one split.
class ReadingCorpus {
 public:
  ReadingCorpus(SplitData data, std::shared_ptr<const Tokenizer> tokenizer);

  // `rows` examples, each of at most max_len tokens, drawn with `rng`. A `distractor_fraction` of
  // them read their passage among 1-2 passages about other people (in random order), as a RAG
  // prompt with several retrieved passages does.
  // A `counterfactual_fraction` of them (not updates) have their asked facts replaced, in the
  // passage and the answer alike, by a value made of the words of other values of the relation
  // (e.g. "Gilel Shipping" -> "Tosa Mining"), so that the answer can only be read, never
  // remembered: the LM learns to copy a fact from its context even where it has a prior for it.
  TrainBatch Batch(std::mt19937_64& rng, int rows, int max_len, float answer_weight,
                   double distractor_fraction = 0, double counterfactual_fraction = 0) const;

  // Token ids and per-position loss weights of one example (exposed for tests).
  struct Example {
    std::vector<int32_t> tokens;
    std::vector<float> weights;
  };
  Example Build(const std::string& context,
                const std::vector<std::pair<std::string, std::string>>& qa,
                float answer_weight) const;

  const SplitData& data() const { return data_; }
  const Tokenizer& tokenizer() const { return *tokenizer_; }

 private:
  SplitData data_;
  std::shared_ptr<const Tokenizer> tokenizer_;
  std::unordered_map<std::string, int> passage_index_;
  std::vector<std::vector<int>> questions_of_;  // per passage
  // Per relation, its distinct answers split into words, grouped by word count.
  std::map<std::string, std::map<size_t, std::vector<std::vector<std::string>>>> values_;
};

// Exact match after trimming spaces and a final period, case-insensitive.
bool AnswerMatches(std::string_view predicted, std::string_view gold);

// Oracle (gold passage in context) and closed-book exact match of a model on `questions`
// questions of `data` (the first ones in stream order).
struct ReadingScore {
  int questions = 0;
  double oracle_em = 0;
  double closed_book_em = 0;
};
absl::StatusOr<ReadingScore> ScoreReading(LanguageModel& model, const Tokenizer& tokenizer,
                                          const SplitData& data, int questions);

struct PretrainOptions {
  std::string data_dir;        // knowd-train data output
  std::string tokenizer_path;  // knowd-train tokenizer output (tokenizer.model)
  std::string work_dir;        // checkpoints, progress
  std::string bundle_dir;      // exported bundle (empty: <work_dir>/bundle)
  LlamaConfig config;          // sizes; vocab and special ids come from the tokenizer
  int steps = 3000;
  int batch = 32;
  int max_len = 320;
  int warmup = 100;
  double lr = 2e-3;
  double min_lr_ratio = 0.1;  // cosine decay to lr * min_lr_ratio
  double answer_weight = 2.0;
  double distractor_fraction = 0;      // examples whose context adds 1-2 other people's passages
  double counterfactual_fraction = 0;  // examples whose asked facts are replaced (see Batch)
  OptimizerOptions optimizer;
  uint64_t seed = 1;
  int threads = 1;
  int log_every = 10;
  int checkpoint_every = 200;
  bool resume = false;
  int eval_questions = 200;  // valid-split questions scored at the end (0: skip)
};

// Trains (or resumes) and exports an f32 bundle. Prints progress lines to stdout.
absl::Status RunPretrain(const PretrainOptions& options);

// The learning rate of `step` (0-based): linear warmup, then cosine decay.
double ScheduledLr(const PretrainOptions& options, int step);

}  // namespace knowd::train
