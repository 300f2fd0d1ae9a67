// The libtorch Llama of knowd-train: its export runs in knowd's engine with the same logits, and
// a few training steps lower the loss.
#include "train/lm.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "kernels/backend.h"
#include "model/tokenizer.h"
#include "model/transformer.h"
#include "tests/train/train_test_util.h"
#include "train/export.h"
#include "train/pretrain.h"
#include "train/world.h"

namespace knowd::train {
namespace {

// Max |logit difference| between libtorch and knowd's engine on `tokens`.
double EngineDifference(LanguageModel& model, const std::vector<int32_t>& tokens,
                        const std::string& dir) {
  EXPECT_TRUE(ExportBundle(model, dir, ExportOptions()).ok());
  std::unique_ptr<Backend> backend = MakeCpuBackend(1);
  absl::StatusOr<std::unique_ptr<Transformer>> engine = Transformer::Load(dir, backend.get());
  EXPECT_TRUE(engine.ok()) << engine.status();
  if (!engine.ok()) return 1e9;
  absl::StatusOr<std::unique_ptr<KvCache>> cache = (*engine)->NewCache(64);
  EXPECT_TRUE(cache.ok());
  SequenceStep step{cache->get(), tokens, true};
  std::vector<float> engine_logits;
  EXPECT_TRUE((*engine)->Forward({&step, 1}, &engine_logits).ok());
  absl::StatusOr<std::vector<float>> torch_logits = model.Logits(tokens);
  EXPECT_TRUE(torch_logits.ok());
  EXPECT_EQ(engine_logits.size(), torch_logits->size());
  double worst = 0;
  for (size_t i = 0; i < engine_logits.size() && i < torch_logits->size(); ++i) {
    worst = std::max(worst, double(std::fabs(engine_logits[i] - (*torch_logits)[i])));
  }
  std::filesystem::remove_all(dir);
  std::printf("max |engine - libtorch| logit difference: %.3g\n", worst);
  return worst;
}

// Reading-comprehension examples of 200 pretraining-split people, in the stories tokenizer.
absl::StatusOr<ReadingCorpus> SmallReadingCorpus() {
  absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer = LoadStoriesTokenizer();
  if (!tokenizer.ok()) return tokenizer.status();
  WorldOptions world;
  world.people[0] = 200;
  return ReadingCorpus(GenerateSplit(world, Split::kPretrain),
                       std::shared_ptr<const Tokenizer>(*std::move(tokenizer)));
}

TrainBatch RandomBatch(int rows, int cols, int vocab, uint64_t seed) {
  TrainBatch b;
  b.rows = rows;
  b.cols = cols;
  b.tokens = RandomTokens(rows * cols, vocab, seed);
  b.weights.assign(rows * cols, 1.0f);
  for (int r = 0; r < rows; ++r) b.weights[r * cols] = 0.0f;
  return b;
}

TEST(LmTest, EngineMatchesLibtorchLogits) {
  SetTorchThreads(1);
  for (bool tied : {false, true}) {
    absl::StatusOr<std::unique_ptr<LanguageModel>> model =
        LanguageModel::Create(TinyConfig(kTinyVocab, tied), 5, OptimizerOptions());
    ASSERT_TRUE(model.ok()) << model.status();
    const std::vector<int32_t> tokens = RandomTokens(32, 300, 11);
    EXPECT_LE(EngineDifference(**model, tokens, TempDir("init")), 1e-4) << "tied " << tied;

    // After training steps the weights are no longer the tidy initial ones.
    for (int i = 0; i < 5; ++i) {
      ASSERT_TRUE((*model)->TrainStep(RandomBatch(4, 24, 300, 100 + i), 1e-2).ok());
    }
    EXPECT_LE(EngineDifference(**model, tokens, TempDir("trained")), 1e-4) << "tied " << tied;
  }
}

TEST(LmTest, HalfPrecisionExportLoadsInTheEngine) {
  SetTorchThreads(1);
  auto model = LanguageModel::Create(TinyConfig(kTinyVocab, false), 6, OptimizerOptions());
  ASSERT_TRUE(model.ok());
  const std::string dir = TempDir("f16");
  ExportOptions options;
  options.dtype = DType::kF16;
  ASSERT_TRUE(ExportBundle(**model, dir, options).ok());
  std::unique_ptr<Backend> backend = MakeCpuBackend(1);
  absl::StatusOr<std::unique_ptr<Transformer>> engine = Transformer::Load(dir, backend.get());
  ASSERT_TRUE(engine.ok()) << engine.status();
  const std::vector<int32_t> tokens = RandomTokens(16, 300, 3);
  absl::StatusOr<std::unique_ptr<KvCache>> cache = (*engine)->NewCache(32);
  ASSERT_TRUE(cache.ok());
  SequenceStep step{cache->get(), tokens, true};
  std::vector<float> engine_logits;
  ASSERT_TRUE((*engine)->Forward({&step, 1}, &engine_logits).ok());
  const std::vector<float> torch_logits = *(*model)->Logits(tokens);
  ASSERT_EQ(engine_logits.size(), torch_logits.size());
  for (size_t i = 0; i < torch_logits.size(); ++i) {
    ASSERT_NEAR(engine_logits[i], torch_logits[i], 2e-2) << i;
  }
  std::filesystem::remove_all(dir);
}

TEST(LmTest, ParametersHaveHuggingFaceNames) {
  absl::StatusOr<std::unique_ptr<LanguageModel>> model =
      LanguageModel::Create(TinyConfig(kTinyVocab, false), 1, OptimizerOptions());
  ASSERT_TRUE(model.ok());
  std::vector<std::string> names;
  for (const NamedWeight& w : (*model)->Weights()) names.push_back(w.name);
  for (const char* expected :
       {"model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight",
        "model.layers.1.self_attn.k_proj.weight", "model.layers.1.mlp.gate_proj.weight",
        "model.layers.1.mlp.down_proj.weight", "model.layers.0.input_layernorm.weight",
        "model.layers.0.post_attention_layernorm.weight", "model.norm.weight", "lm_head.weight"}) {
    EXPECT_NE(std::find(names.begin(), names.end(), expected), names.end()) << expected;
  }
  EXPECT_EQ(names.size(), 3u + 2u * 9u);  // embedding, final norm, lm_head + 9 per layer
}

TEST(LmTest, CheckpointRestoresTheModel) {
  SetTorchThreads(1);
  auto a = LanguageModel::Create(TinyConfig(kTinyVocab, true), 3, OptimizerOptions());
  auto b = LanguageModel::Create(TinyConfig(kTinyVocab, true), 4, OptimizerOptions());
  ASSERT_TRUE(a.ok() && b.ok());
  ASSERT_TRUE((*a)->TrainStep(RandomBatch(2, 16, 300, 1), 1e-2).ok());
  const std::string path = TempDir("ckpt") + ".pt";
  ASSERT_TRUE((*a)->SaveCheckpoint(path).ok());
  ASSERT_TRUE((*b)->LoadCheckpoint(path).ok());
  const std::vector<int32_t> tokens = RandomTokens(16, 300, 2);
  EXPECT_EQ(*(*a)->Logits(tokens), *(*b)->Logits(tokens));
  // The optimizer state came along: the next step is the same too.
  const TrainBatch next = RandomBatch(2, 16, 300, 9);
  EXPECT_EQ(*(*a)->TrainStep(next, 1e-2), *(*b)->TrainStep(next, 1e-2));
  std::filesystem::remove(path);
}

// The CI smoke test of pretraining: 20 steps of reading-comprehension batches on a tiny model.
TEST(LmTest, PretrainingSmokeLossGoesDown) {
  SetTorchThreads(1);
  absl::StatusOr<ReadingCorpus> corpus = SmallReadingCorpus();
  ASSERT_TRUE(corpus.ok()) << corpus.status();
  const Tokenizer& tokenizer = corpus->tokenizer();

  // Answer tokens are weighted on top of every other token; the weights mark exactly the answer.
  const ReadingCorpus::Example ex =
      corpus->Build("Alo Ben works at Kada Labs.", {{"Where does Alo Ben work?", "Kada Labs"}}, 2);
  std::vector<int32_t> answer;
  for (size_t i = 0; i < ex.tokens.size(); ++i) {
    if (ex.weights[i] > 1.5f && ex.tokens[i] != tokenizer.eos_id()) answer.push_back(ex.tokens[i]);
  }
  EXPECT_EQ(tokenizer.Decode(answer), "Kada Labs");
  EXPECT_EQ(ex.tokens.back(), tokenizer.eos_id());
  EXPECT_FLOAT_EQ(ex.weights.back(), 3.0f);

  LlamaConfig c = TinyConfig(kTinyVocab, true);
  c.vocab_size = tokenizer.vocab_size();
  auto model = LanguageModel::Create(c, 1, OptimizerOptions());
  ASSERT_TRUE(model.ok());
  std::mt19937_64 held_out(99);
  const TrainBatch probe = corpus->Batch(held_out, 8, 256, 1.0f);
  const double before = *(*model)->Loss(probe);
  for (int step = 0; step < 20; ++step) {
    std::mt19937_64 rng(step);
    absl::StatusOr<double> loss = (*model)->TrainStep(corpus->Batch(rng, 8, 256, 1.0f), 3e-3);
    ASSERT_TRUE(loss.ok()) << loss.status();
    ASSERT_TRUE(std::isfinite(*loss));
  }
  const double after = *(*model)->Loss(probe);
  std::printf("smoke: held-out loss %.3f -> %.3f after 20 steps\n", before, after);
  EXPECT_LT(after, before - 0.5);
}

TEST(LmTest, ContextDistractorsAddOtherPeoplesPassages) {
  absl::StatusOr<ReadingCorpus> corpus = SmallReadingCorpus();
  ASSERT_TRUE(corpus.ok()) << corpus.status();
  const Tokenizer& tokenizer = corpus->tokenizer();
  // Passages per context: the lines before the first question.
  auto passages_per_row = [&](double distractor_fraction) {
    std::mt19937_64 rng(5);
    // (The stories tokenizer spells the names in many pieces: room for three passages.)
    const TrainBatch batch = corpus->Batch(rng, 16, 1024, 2.0f, distractor_fraction);
    std::vector<int> counts;
    for (int r = 0; r < batch.rows; ++r) {
      const std::vector<int32_t> row(
          batch.tokens.begin() + static_cast<size_t>(r) * batch.cols,
          batch.tokens.begin() + static_cast<size_t>(r + 1) * batch.cols);
      const std::string text = tokenizer.Decode(row);
      const std::string context = text.substr(0, text.find("Q:"));
      counts.push_back(static_cast<int>(std::count(context.begin(), context.end(), '\n')));
    }
    return counts;
  };
  const std::vector<int> plain = passages_per_row(0);
  const std::vector<int> mixed = passages_per_row(1);
  // Without distractors a context is one passage (two for an update and its original); with
  // them every context that fits gains one or two more.
  EXPECT_LE(*std::max_element(plain.begin(), plain.end()), 2);
  EXPECT_GE(*std::min_element(mixed.begin(), mixed.end()), 2);
  EXPECT_GE(*std::max_element(mixed.begin(), mixed.end()), 3);
}

TEST(LmTest, CounterfactualsReplaceTheAskedFactsInPassageAndAnswer) {
  absl::StatusOr<ReadingCorpus> corpus = SmallReadingCorpus();
  ASSERT_TRUE(corpus.ok()) << corpus.status();
  // question -> its answers in the split (an original and its update share the question).
  std::map<std::string, std::set<std::string>> true_answers;
  for (const Question& q : corpus->data().questions) true_answers[q.question].insert(q.answer);
  // (question, answer, context) of every question in a batch's rows.
  struct Asked {
    std::string question, answer, context;
  };
  auto asked = [&](double counterfactual_fraction) {
    std::mt19937_64 rng(9);
    const TrainBatch batch = corpus->Batch(rng, 24, 1024, 2.0f, 0, counterfactual_fraction);
    std::vector<Asked> out;
    for (int r = 0; r < batch.rows; ++r) {
      std::vector<int32_t> row(batch.tokens.begin() + static_cast<size_t>(r) * batch.cols,
                               batch.tokens.begin() + static_cast<size_t>(r + 1) * batch.cols);
      row.erase(std::find(row.begin(), row.end(), corpus->tokenizer().eos_id()), row.end());
      const std::vector<std::string> lines = absl::StrSplit(corpus->tokenizer().Decode(row), '\n');
      std::string context;  // the lines before the first question
      size_t i = 0;
      for (; i < lines.size() && !absl::StartsWith(lines[i], "Q: "); ++i) {
        absl::StrAppend(&context, lines[i], "\n");
      }
      for (; i + 1 < lines.size(); i += 2) {
        out.push_back({lines[i].substr(3),
                       std::string(absl::StripAsciiWhitespace(lines[i + 1].substr(3))), context});
      }
    }
    return out;
  };
  int plain = 0;
  for (const Asked& a : asked(0)) {
    ASSERT_TRUE(true_answers.contains(a.question)) << a.question;
    EXPECT_TRUE(true_answers[a.question].contains(a.answer)) << a.question << " => " << a.answer;
    ++plain;
  }
  EXPECT_GT(plain, 24);
  int changed = 0, total = 0;
  for (const Asked& a : asked(1)) {
    ++total;
    // The answer is always in the context it is read from, and but for updates (kept as they
    // are) it is a made-up value.
    EXPECT_NE(a.context.find(a.answer), std::string::npos) << a.question << " => " << a.answer;
    changed += !true_answers[a.question].contains(a.answer);
  }
  EXPECT_GT(changed * 4, total * 3) << changed << " of " << total;
}

}  // namespace
}  // namespace knowd::train
