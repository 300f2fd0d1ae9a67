// The MAC adapter of knowd-train and the frozen-LM views it is built on: the libtorch prefix path
// has exactly the engine's KvCache::SetPrefix semantics (so the engine can serve what training
// produced), a short training run lowers the losses, and an export reads back as declared.
#include "train/adapter.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "kernels/backend.h"
#include "kernels/math.h"
#include "knowledge/prompt.h"
#include "model/adapter.h"
#include "model/tensor_file.h"
#include "model/tokenizer.h"
#include "model/transformer.h"
#include "nlohmann/json.hpp"
#include "tests/float_compare.h"
#include "tests/train/train_test_util.h"
#include "train/export.h"
#include "train/lm.h"
#include "train/pretrain.h"
#include "train/world.h"

namespace knowd::train {
namespace {

using knowd::testing::MaxAbsDiff;

// A tiny LM whose weights moved away from the tidy initial ones.
std::unique_ptr<LanguageModel> TrainedTinyModel(uint64_t seed) {
  auto model = LanguageModel::Create(TinyConfig(), seed, OptimizerOptions());
  EXPECT_TRUE(model.ok()) << model.status();
  for (int i = 0; i < 5; ++i) {
    TrainBatch b;
    b.rows = 4;
    b.cols = 24;
    b.tokens = RandomTokens(b.rows * b.cols, 300, 100 + i);
    b.weights.assign(b.tokens.size(), 1.0f);
    EXPECT_TRUE((*model)->TrainStep(b, 1e-2).ok());
  }
  return *std::move(model);
}

TEST(AdapterLmTest, PrefixOfRealKeysValuesEqualsRunningThoseTokensInFront) {
  SetTorchThreads(1);
  std::unique_ptr<LanguageModel> model = TrainedTinyModel(5);
  const std::vector<int32_t> front = RandomTokens(7, 300, 1);
  const std::vector<int32_t> question = RandomTokens(6, 300, 2);
  const int p = static_cast<int>(front.size());
  const int vocab = model->config().vocab_size;

  std::vector<int32_t> both = front;
  both.insert(both.end(), question.begin(), question.end());
  const std::vector<float> full = *model->Logits(both);
  const std::vector<float> expected(full.begin() + int64_t{p} * vocab, full.end());

  absl::StatusOr<LanguageModel::SequenceStates> states = model->States(front);
  ASSERT_TRUE(states.ok()) << states.status();
  EXPECT_EQ(states->tokens, p);
  ASSERT_EQ(states->hidden.size(), 2u);
  EXPECT_EQ(states->hidden[0].size(), size_t{7} * 64);
  ASSERT_EQ(states->keys.size(), size_t{2} * 7 * 32);

  absl::StatusOr<std::vector<float>> got =
      model->LogitsWithPrefix(states->keys, states->values, p, question);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_LE(MaxAbsDiff(*got, expected), 1e-5);

  // Without the prefix the logits differ: the check above is not vacuous.
  EXPECT_GT(MaxAbsDiff(*model->Logits(question), expected), 1e-3);
  // A prefix of the wrong size is refused.
  EXPECT_FALSE(model->LogitsWithPrefix(states->keys, states->values, p - 1, question).ok());
}

TEST(AdapterLmTest, TorchPrefixPathMatchesTheEngine) {
  SetTorchThreads(1);
  std::unique_ptr<LanguageModel> model = TrainedTinyModel(6);
  const std::string dir = TempDir("engine");
  ASSERT_TRUE(ExportBundle(*model, dir, ExportOptions()).ok());
  std::unique_ptr<Backend> backend = MakeCpuBackend(1);
  absl::StatusOr<std::unique_ptr<Transformer>> engine = Transformer::Load(dir, backend.get());
  ASSERT_TRUE(engine.ok()) << engine.status();

  const int p = 5, layers = 2, kv_dim = 32;
  std::mt19937_64 rng(3);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> keys(layers * p * kv_dim), values(keys.size());
  for (float& x : keys) x = normal(rng);
  for (float& x : values) x = normal(rng);
  const std::vector<int32_t> tokens = RandomTokens(9, 300, 4);

  absl::StatusOr<std::unique_ptr<KvCache>> cache = (*engine)->NewCache(32);
  ASSERT_TRUE(cache.ok());
  ASSERT_TRUE((*cache)->SetPrefix(keys, values, p).ok());
  SequenceStep step{cache->get(), tokens, true};
  std::vector<float> engine_logits;
  ASSERT_TRUE((*engine)->Forward({&step, 1}, &engine_logits).ok());
  absl::StatusOr<std::vector<float>> torch_logits =
      model->LogitsWithPrefix(keys, values, p, tokens);
  ASSERT_TRUE(torch_logits.ok()) << torch_logits.status();
  const double diff = MaxAbsDiff(engine_logits, *torch_logits);
  std::printf("random prefix: max |engine - libtorch| logit difference %.3g\n", diff);
  EXPECT_LE(diff, 1e-4);

  // LoadBundle reads the export back into an identical libtorch model.
  absl::StatusOr<std::unique_ptr<LanguageModel>> loaded = LanguageModel::LoadBundle(dir);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(*(*loaded)->Logits(tokens), *model->Logits(tokens));
  std::filesystem::remove_all(dir);
}

TEST(AdapterTest, Sha256OfFile) {
  const std::string path = TempDir("sha") + ".txt";
  std::ofstream(path) << "abc";
  absl::StatusOr<std::string> digest = Sha256OfFile(path);
  ASSERT_TRUE(digest.ok()) << digest.status();
  EXPECT_EQ(*digest, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  std::filesystem::remove(path);
  EXPECT_FALSE(Sha256OfFile(path).ok());
}

TEST(AdapterTest, CurriculumStartsWithTheGoldPassageAlone) {
  AdapterRunOptions o;
  o.steps = 100;
  o.top_k = 4;
  o.gold_only_fraction = 0.3;
  EXPECT_EQ(CurriculumCandidates(o, 0), 1);
  EXPECT_EQ(CurriculumCandidates(o, 29), 1);
  EXPECT_EQ(CurriculumCandidates(o, 30), 2);
  EXPECT_EQ(CurriculumCandidates(o, 59), 3);
  EXPECT_EQ(CurriculumCandidates(o, 60), 4);
  EXPECT_EQ(CurriculumCandidates(o, 99), 4);
}

TEST(AdapterTest, StorageRatioOfTheDefaultConfig) {
  // knowd-tiny: 4 layers, 2 kv heads x 32; 8 x 80 latent values at f16.
  LlamaConfig base;
  base.num_layers = 4;
  base.num_kv_heads = 2;
  base.head_dim = 32;
  EXPECT_EQ(PassageKvBytes(base, 100), 4 * 100 * 2 * 64 * 2);
  EXPECT_EQ(LatentBytes(AdapterConfig()), 8 * 80 * 2);
  // At the median passage length of the synthetic world (67 tokens) that is under 1/50.
  EXPECT_LE(50 * LatentBytes(AdapterConfig()), PassageKvBytes(base, 67));
}

class AdapterTrainingTest : public ::testing::Test {
 protected:
  void SetUp() override {
    SetTorchThreads(1);
    absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer = LoadStoriesTokenizer();
    ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
    tokenizer_ = *std::move(tokenizer);
    const WorldOptions world = AdapterTestWorld();
    absl::StatusOr<std::unique_ptr<LanguageModel>> lm = PretrainedTinyReader(world, tokenizer_);
    ASSERT_TRUE(lm.ok()) << lm.status();
    lm_ = *std::move(lm);
    corpus_ = std::make_unique<AdapterCorpus>(GenerateSplit(world, Split::kAdapter), tokenizer_);
    config_.slots = 4;
    config_.latent_dim = 32;
    config_.key_dim = 16;
    config_.heads = 2;
    config_.readout_blocks = 1;
    config_.question_blocks = 1;
    config_.aggregator_blocks = 1;
    config_.max_candidates = 4;
  }
  std::unique_ptr<Adapter> NewAdapter(uint64_t seed) {
    auto a = Adapter::Create(lm_.get(), config_, seed);
    EXPECT_TRUE(a.ok()) << a.status();
    return a.ok() ? *std::move(a) : nullptr;
  }
  std::vector<std::vector<int32_t>> SomePassages(int n) {
    std::vector<std::vector<int32_t>> out;
    for (int i = 0; i < n; ++i) {
      out.push_back(tokenizer_->Encode(corpus_->data().passages[i].text, true));
    }
    return out;
  }
  std::shared_ptr<const Tokenizer> tokenizer_;
  std::unique_ptr<LanguageModel> lm_;
  std::unique_ptr<AdapterCorpus> corpus_;
  AdapterConfig config_;
};

TEST_F(AdapterTrainingTest, SmokeLossGoesDown) {
  std::unique_ptr<Adapter> adapter = NewAdapter(2);
  ASSERT_NE(adapter, nullptr);
  EXPECT_LT(adapter->ParameterCount(), lm_->ParameterCount());
  absl::StatusOr<double> kept = adapter->InitializeFromPassages(SomePassages(24));
  ASSERT_TRUE(kept.ok()) << kept.status();
  EXPECT_GT(*kept, 0.3);
  EXPECT_LE(*kept, 1.0 + 1e-9);

  AdapterTrainOptions options;
  options.batch = 4;
  options.questions_per_passage = 2;
  // Held-out batches: steps the training loop never draws.
  auto held_out = [&]() {
    double sum = 0;
    for (int s = 0; s < 3; ++s) sum += adapter->Loss(*corpus_, options, 100000 + s, 2)->total;
    return sum / 3;
  };
  const double before = held_out();
  for (int step = 0; step < 30; ++step) {
    absl::StatusOr<AdapterLosses> l =
        adapter->TrainStep(*corpus_, options, step, 3e-3, step < 10 ? 1 : 2);
    ASSERT_TRUE(l.ok()) << l.status();
    ASSERT_TRUE(std::isfinite(l->total));
    EXPECT_GE(l->answer_nll, 0);
    EXPECT_GE(l->distill, -1e-6);
    EXPECT_GE(l->contrastive, 0);
  }
  const double after = held_out();
  std::printf("adapter smoke: held-out loss %.4f -> %.4f after 30 steps\n", before, after);
  EXPECT_LT(after, before);

  // The base LM stayed frozen: nothing of it moved.
  const std::vector<int32_t> probe = RandomTokens(8, tokenizer_->vocab_size(), 7);
  const std::vector<float> logits = *lm_->Logits(probe);
  ASSERT_TRUE(adapter->TrainStep(*corpus_, options, 31, 3e-3, 2).ok());
  EXPECT_EQ(*lm_->Logits(probe), logits);

  absl::StatusOr<AdapterScore> score = adapter->Score(*corpus_, 4, 2, 1);
  ASSERT_TRUE(score.ok()) << score.status();
  EXPECT_EQ(score->questions, 4);
  EXPECT_EQ(score->top_k, 2);
}

TEST_F(AdapterTrainingTest, TextAfterThePrefixIsReadLikeTheMacRagPrompt) {
  std::unique_ptr<Adapter> adapter = NewAdapter(3);
  ASSERT_NE(adapter, nullptr);
  AdapterTrainOptions options;
  options.batch = 4;
  options.text_fraction = 1;
  // With the gold passage's text after it, the closed-book reference (the BOS sink row alone as
  // the prefix, which starts as the LM's own BOS key/value) reads exactly the teacher's sequence
  // "<BOS><passage>\nQ: <question>\nA: <answer>" at the teacher's positions.
  options.text_distractor_fraction = 0;
  absl::StatusOr<AdapterLosses> gold = adapter->Loss(*corpus_, options, 200000, 2);
  ASSERT_TRUE(gold.ok()) << gold.status();
  EXPECT_NEAR(gold->closed_book_nll, gold->context_nll, 1e-5);
  // Another passage's text: not the teacher's sequence (this barely trained test LM reads little,
  // so the difference is small, but it is 25x the tolerance above).
  options.text_distractor_fraction = 1;
  absl::StatusOr<AdapterLosses> other = adapter->Loss(*corpus_, options, 200000, 2);
  ASSERT_TRUE(other.ok()) << other.status();
  EXPECT_NEAR(other->context_nll, gold->context_nll, 1e-6);
  EXPECT_GT(std::abs(other->closed_book_nll - other->context_nll), 1e-4);
  // Without text, the questions alone follow the sink.
  options.text_fraction = 0;
  absl::StatusOr<AdapterLosses> none = adapter->Loss(*corpus_, options, 200000, 2);
  ASSERT_TRUE(none.ok()) << none.status();
  EXPECT_GT(std::abs(none->closed_book_nll - none->context_nll), 1e-4);
}

TEST_F(AdapterTrainingTest, SubjectHistoryIsTheSubjectsPassagesUpToThisOneOldestFirst) {
  const SplitData& data = corpus_->data();
  int updates = 0;
  for (size_t p = 0; p < data.passages.size(); ++p) {
    const Passage& passage = data.passages[p];
    const std::vector<int> history = corpus_->history_of(static_cast<int>(p));
    ASSERT_FALSE(history.empty());
    EXPECT_EQ(history.back(), static_cast<int>(p));
    for (size_t i = 0; i < history.size(); ++i) {
      EXPECT_EQ(data.passages[history[i]].subject, passage.subject);
      if (i > 0) {
        EXPECT_LT(data.passages[history[i - 1]].stream_position,
                  data.passages[history[i]].stream_position);
      }
    }
    // An update is read after the passage whose fact it changes.
    if (passage.is_update) {
      ++updates;
      ASSERT_GE(history.size(), 2u) << passage.id;
      EXPECT_FALSE(data.passages[history.front()].is_update);
    }
  }
  EXPECT_GT(updates, 0);
}

TEST_F(AdapterTrainingTest, RagHeadStartsAsTheMacHeadAndLearnsAlone) {
  // A trained mac-only adapter, exported.
  std::unique_ptr<Adapter> mac = NewAdapter(5);
  ASSERT_NE(mac, nullptr);
  ASSERT_TRUE(mac->InitializeFromPassages(SomePassages(8)).ok());
  AdapterTrainOptions options;
  options.batch = 4;
  for (int step = 0; step < 3; ++step)
    ASSERT_TRUE(mac->TrainStep(*corpus_, options, step, 3e-3, 2).ok());
  const std::string dir = TempDir("rag-head");
  ASSERT_TRUE(mac->Export(dir, DType::kF32, std::string(64, 'a')).ok());

  // The same networks plus a mac+rag head seeded from that export.
  config_.rag_head = true;
  std::unique_ptr<Adapter> both = NewAdapter(6);
  ASSERT_NE(both, nullptr);
  EXPECT_FALSE(both->LoadExport(dir).ok());  // the export has no rag_* tensors
  ASSERT_TRUE(both->LoadExport(dir, {.seed_rag_head = true}).ok());
  const std::vector<std::vector<int32_t>> passages = SomePassages(3);
  const std::vector<int32_t> prompt = tokenizer_->Encode(
      knowd::knowledge::QuestionPrompt(corpus_->data().questions[0].question), true);
  auto trace = [&](bool with_text) {
    absl::StatusOr<Adapter::Trace> t = both->TraceForTest(passages, prompt, with_text);
    EXPECT_TRUE(t.ok()) << t.status();
    return t.ok() ? *std::move(t) : Adapter::Trace();
  };
  const Adapter::Trace mac_before = trace(false);
  ASSERT_FALSE(mac_before.prefix.values.empty());
  EXPECT_EQ(trace(true).prefix.values, mac_before.prefix.values);  // a copy of the mac head
  absl::StatusOr<Adapter::Trace> original = mac->TraceForTest(passages, prompt);
  ASSERT_TRUE(original.ok());
  EXPECT_EQ(mac_before.prefix.values, original->prefix.values);
  EXPECT_EQ(mac_before.latents, original->latents);

  // Trained alone on prompts with text, the mac+rag head moves; the readout, the question encoder
  // and the mac head do not.
  options.rag_head_only = true;
  options.text_fraction = 1;
  for (int step = 10; step < 13; ++step) {
    ASSERT_TRUE(both->TrainStep(*corpus_, options, step, 3e-3, 2).ok());
  }
  const Adapter::Trace mac_after = trace(false);
  EXPECT_EQ(mac_after.latents, mac_before.latents);
  EXPECT_EQ(mac_after.keys, mac_before.keys);
  EXPECT_EQ(mac_after.queries, mac_before.queries);
  EXPECT_EQ(mac_after.prefix.keys, mac_before.prefix.keys);
  EXPECT_EQ(mac_after.prefix.values, mac_before.prefix.values);
  EXPECT_NE(trace(true).prefix.values, mac_before.prefix.values);

  // Exported, the adapter declares the head; a mac-only adapter refuses to train it alone.
  ASSERT_TRUE(both->Export(dir + "/both", DType::kF32, std::string(64, 'a')).ok());
  std::ifstream in(dir + "/both/adapter.json");
  const nlohmann::json j = nlohmann::json::parse(in, nullptr, false);
  EXPECT_EQ(j["rag_head"], true);
  absl::StatusOr<AdapterLosses> refused = mac->TrainStep(*corpus_, options, 20, 3e-3, 2);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument) << refused.status();
  std::filesystem::remove_all(dir);
}

TEST_F(AdapterTrainingTest, GrownFromAnExportItComputesTheSameAndItsNewBlocksLearn) {
  // A trained adapter with one block per network and an MLP twice as wide as the latent, exported.
  config_.rag_head = true;
  std::unique_ptr<Adapter> small = NewAdapter(7);
  ASSERT_NE(small, nullptr);
  ASSERT_TRUE(small->InitializeFromPassages(SomePassages(8)).ok());
  AdapterTrainOptions options;
  options.batch = 4;
  options.text_fraction = 0.5;
  for (int step = 0; step < 3; ++step)
    ASSERT_TRUE(small->TrainStep(*corpus_, options, step, 3e-3, 2).ok());
  const std::string dir = TempDir("grow");
  ASSERT_TRUE(small->Export(dir + "/small", DType::kF32, std::string(64, 'a')).ok());

  // Two blocks per network and an MLP three times as wide.
  config_.readout_blocks = 2;
  config_.question_blocks = 2;
  config_.aggregator_blocks = 2;
  config_.mlp_ratio = 3;
  std::unique_ptr<Adapter> grown = NewAdapter(8);
  ASSERT_NE(grown, nullptr);
  EXPECT_FALSE(grown->LoadExport(dir + "/small").ok());  // shapes differ unless growing
  ASSERT_TRUE(grown->LoadExport(dir + "/small", {.grow = true}).ok());
  const std::vector<std::vector<int32_t>> passages = SomePassages(3);
  const std::vector<int32_t> prompt = tokenizer_->Encode(
      knowd::knowledge::QuestionPrompt(corpus_->data().questions[0].question), true);
  for (bool with_text : {false, true}) {
    absl::StatusOr<Adapter::Trace> want = small->TraceForTest(passages, prompt, with_text);
    absl::StatusOr<Adapter::Trace> got = grown->TraceForTest(passages, prompt, with_text);
    ASSERT_TRUE(want.ok() && got.ok());
    for (size_t i = 0; i < passages.size(); ++i) {
      EXPECT_LE(MaxAbsDiff(got->latents[i], want->latents[i]), 1e-5);
      EXPECT_LE(MaxAbsDiff(got->keys[i], want->keys[i]), 1e-5);
    }
    EXPECT_LE(MaxAbsDiff(got->queries, want->queries), 1e-5);
    EXPECT_LE(MaxAbsDiff(got->prefix.keys, want->prefix.keys), 1e-4);
    EXPECT_LE(MaxAbsDiff(got->prefix.values, want->prefix.values), 1e-4);
  }

  // The new blocks' zero outputs are trained away from zero.
  for (int step = 3; step < 5; ++step)
    ASSERT_TRUE(grown->TrainStep(*corpus_, options, step, 3e-3, 2).ok());
  ASSERT_TRUE(grown->Export(dir + "/grown", DType::kF32, std::string(64, 'a')).ok());
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file =
      SafetensorsFile::Open(dir + "/grown/adapter.safetensors");
  ASSERT_TRUE(file.ok()) << file.status();
  for (const char* name : {"readout.blocks.1.o.weight", "readout.blocks.1.down.weight",
                           "aggregator.blocks.1.o.weight", "rag_aggregator.blocks.1.down.weight"}) {
    const HostTensor* t = (*file)->Find(name);
    ASSERT_NE(t, nullptr) << name;
    double sum = 0;
    for (int64_t i = 0; i < t->numel(); ++i)
      sum += std::abs(knowd::LoadAsF32(t->data, t->dtype, i));
    EXPECT_GT(sum, 0) << name;
  }

  // Only blocks and MLP width grow.
  config_.latent_dim = 48;
  std::unique_ptr<Adapter> wider = NewAdapter(9);
  ASSERT_NE(wider, nullptr);
  absl::Status refused = wider->LoadExport(dir + "/small", {.grow = true});
  EXPECT_EQ(refused.code(), absl::StatusCode::kInvalidArgument) << refused;
  EXPECT_NE(refused.message().find("latent_dim"), std::string::npos) << refused;
  std::filesystem::remove_all(dir);
}

TEST_F(AdapterTrainingTest, ExportReadsBackAsDeclaredAndTheEngineServesIt) {
  std::unique_ptr<Adapter> adapter = NewAdapter(3);
  ASSERT_NE(adapter, nullptr);
  ASSERT_TRUE(adapter->InitializeFromPassages(SomePassages(8)).ok());
  const std::string dir = TempDir("export");
  const std::string sha(64, 'a');
  ASSERT_TRUE(adapter->Export(dir + "/adapter", DType::kF32, sha, R"({"steps":0})").ok());

  std::ifstream in(dir + "/adapter/adapter.json");
  nlohmann::json j = nlohmann::json::parse(in, nullptr, false);
  ASSERT_TRUE(j.is_object());
  EXPECT_EQ(j["format"], "knowd-adapter");
  EXPECT_EQ(j["base_model"]["sha256"], sha);
  EXPECT_EQ(j["slots"], 4);
  EXPECT_EQ(j["latent_dim"], 32);
  EXPECT_EQ(j["training"]["steps"], 0);
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file =
      SafetensorsFile::Open(dir + "/adapter/adapter.safetensors");
  ASSERT_TRUE(file.ok()) << file.status();
  ASSERT_EQ(j["tensors"].size(), (*file)->tensors().size());
  int64_t params = 0;
  for (const auto& t : j["tensors"]) {
    const std::vector<int64_t> shape = t["shape"].get<std::vector<int64_t>>();
    absl::StatusOr<const HostTensor*> h = (*file)->Require(t["name"].get<std::string>(), shape);
    ASSERT_TRUE(h.ok()) << h.status();
    params += (*h)->numel();
  }
  EXPECT_EQ(params, adapter->ParameterCount());
  EXPECT_EQ(j["parameters"], params);
  // The expander maps a latent token to every layer's key and value rows.
  EXPECT_TRUE(
      (*file)->Require("expander.expand.weight", std::vector<int64_t>{2 * 2 * 32, 32}).ok());

  // A fresh adapter (other seed) loaded from the export computes the same prefix.
  const std::vector<std::vector<int32_t>> passages = SomePassages(3);
  const std::string question = corpus_->data().questions[0].question;
  absl::StatusOr<Adapter::PrefixKv> want = adapter->Prefix(question, passages, *tokenizer_);
  ASSERT_TRUE(want.ok()) << want.status();
  std::unique_ptr<Adapter> other = NewAdapter(4);
  ASSERT_NE(other, nullptr);
  ASSERT_TRUE(other->LoadExport(dir + "/adapter").ok());
  absl::StatusOr<Adapter::PrefixKv> got = other->Prefix(question, passages, *tokenizer_);
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->keys, want->keys);
  EXPECT_EQ(got->values, want->values);
  EXPECT_EQ(got->prompt, want->prompt);
  EXPECT_EQ(got->rows, 5);  // the BOS sink row + 4 slots
  EXPECT_NE(got->prompt.front(), tokenizer_->bos_id());

  // The engine, given that prefix, computes what libtorch computes.
  ASSERT_TRUE(ExportBundle(*lm_, dir, ExportOptions()).ok());
  std::unique_ptr<Backend> backend = MakeCpuBackend(1);
  absl::StatusOr<std::unique_ptr<Transformer>> engine = Transformer::Load(dir, backend.get());
  ASSERT_TRUE(engine.ok()) << engine.status();
  absl::StatusOr<std::unique_ptr<KvCache>> cache = (*engine)->NewCache(64);
  ASSERT_TRUE(cache.ok());
  ASSERT_TRUE((*cache)->SetPrefix(want->keys, want->values, want->rows).ok());
  SequenceStep step{cache->get(), want->prompt, true};
  std::vector<float> engine_logits;
  ASSERT_TRUE((*engine)->Forward({&step, 1}, &engine_logits).ok());
  absl::StatusOr<std::vector<float>> torch_logits =
      lm_->LogitsWithPrefix(want->keys, want->values, want->rows, want->prompt);
  ASSERT_TRUE(torch_logits.ok());
  EXPECT_LE(MaxAbsDiff(engine_logits, *torch_logits), 1e-4);

  // Half precision: the same tensors, f16 matrices.
  ASSERT_TRUE(adapter->Export(dir + "/adapter16", DType::kF16, sha).ok());
  auto half = SafetensorsFile::Open(dir + "/adapter16/adapter.safetensors");
  ASSERT_TRUE(half.ok());
  EXPECT_EQ((*half)->Find("expander.expand.weight")->dtype, DType::kF16);
  EXPECT_TRUE(other->LoadExport(dir + "/adapter16").ok());
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace knowd::train
