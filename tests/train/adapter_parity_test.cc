// The engine's MAC adapter (model/adapter.h) against its libtorch reference (train/adapter.h):
// a tiny base LM and an adapter with trained (not initial) weights are exported as f32, loaded by
// the engine, and every stage must agree — the trunk's per-layer states, passage latents and
// keys, the question code, the prefix, and the greedy answer after it. Also: Load's refusals.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
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
#include "train/adapter.h"
#include "train/export.h"
#include "train/lm.h"
#include "train/pretrain.h"
#include "train/world.h"

namespace knowd::train {
namespace {

using knowd::testing::MaxAbs;
using knowd::testing::MaxAbsDiff;

// One tiny world, LM and adapter for every test of the suite (training them takes seconds).
class AdapterParityTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    SetTorchThreads(1);
    absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer = LoadStoriesTokenizer();
    ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
    tokenizer_ = tokenizer->release();
    std::shared_ptr<const Tokenizer> shared(tokenizer_, [](const Tokenizer*) {});
    const WorldOptions world = AdapterTestWorld();
    absl::StatusOr<std::unique_ptr<LanguageModel>> lm = PretrainedTinyReader(world, shared);
    ASSERT_TRUE(lm.ok()) << lm.status();
    lm_ = lm->release();
    corpus_ = new AdapterCorpus(GenerateSplit(world, Split::kAdapter), shared);
    AdapterConfig config;
    config.slots = 4;
    config.latent_dim = 32;
    config.key_dim = 16;
    config.heads = 2;
    config.readout_blocks = 2;
    config.question_blocks = 2;
    config.aggregator_blocks = 2;
    config.max_candidates = 4;
    config.rag_head = true;
    config.rag_prefix_key_scale = 0.75;  // exported; the engine applies it as libtorch's trace does
    auto adapter = Adapter::Create(lm_, config, 11);
    ASSERT_TRUE(adapter.ok()) << adapter.status();
    reference_ = adapter->release();
    ASSERT_TRUE(reference_->InitializeFromPassages(Passages(0, 16)).ok());
    AdapterTrainOptions options;
    options.batch = 4;
    options.text_fraction = 0.5;  // both heads learn
    for (int step = 0; step < 3; ++step) {
      ASSERT_TRUE(reference_->TrainStep(*corpus_, options, step, 3e-3, 2).ok());
    }
    dir_ = TempDir("parity");
    ASSERT_TRUE(ExportBundle(*lm_, dir_, ExportOptions()).ok());
    ASSERT_TRUE(reference_->Export(dir_ + "/adapter", DType::kF32, std::string(64, 'b')).ok());
  }
  static void TearDownTestSuite() {
    std::filesystem::remove_all(dir_);
    delete reference_;
    delete corpus_;
    delete lm_;
    delete tokenizer_;
  }

  void SetUp() override {
    absl::StatusOr<std::unique_ptr<Transformer>> engine = Transformer::Load(dir_, backend_.get());
    ASSERT_TRUE(engine.ok()) << engine.status();
    engine_ = *std::move(engine);
    absl::StatusOr<std::unique_ptr<knowd::Adapter>> adapter =
        knowd::Adapter::Load(dir_ + "/adapter", engine_.get());
    ASSERT_TRUE(adapter.ok()) << adapter.status();
    adapter_ = *std::move(adapter);
  }

  // Token ids (with BOS) of the adapter split's passages [begin, end).
  static std::vector<std::vector<int32_t>> Passages(int begin, int end) {
    std::vector<std::vector<int32_t>> out;
    for (int i = begin; i < end; ++i) {
      out.push_back(tokenizer_->Encode(corpus_->data().passages[i].text, true));
    }
    return out;
  }
  static std::string Question(int i) { return corpus_->data().questions[i].question; }

  // Greedy continuation (at most 12 tokens, up to EOS or a newline) after a prefix: by the
  // engine, and by libtorch.
  std::vector<int32_t> EngineGreedy(const PrefixKv& prefix, std::vector<int32_t> prompt) {
    auto cache = engine_->NewCache(prefix.rows + static_cast<int>(prompt.size()) + 12);
    EXPECT_TRUE(cache.ok());
    EXPECT_TRUE((*cache)->SetPrefix(prefix.keys, prefix.values, prefix.rows).ok());
    std::vector<int32_t> out;
    std::vector<float> logits;
    const int vocab = engine_->config().vocab_size;
    for (int i = 0; i < 12; ++i) {
      SequenceStep step{cache->get(), prompt, false};
      EXPECT_TRUE(engine_->Forward({&step, 1}, &logits).ok());
      const int32_t next = static_cast<int32_t>(
          std::max_element(logits.begin(), logits.begin() + vocab) - logits.begin());
      if (std::find(stops_.begin(), stops_.end(), next) != stops_.end()) break;
      out.push_back(next);
      prompt = {next};
    }
    return out;
  }
  std::vector<int32_t> TorchGreedy(const Adapter::PrefixKv& prefix, std::vector<int32_t> sequence) {
    std::vector<int32_t> out;
    const int vocab = lm_->config().vocab_size;
    for (int i = 0; i < 12; ++i) {
      absl::StatusOr<std::vector<float>> logits =
          lm_->LogitsWithPrefix(prefix.keys, prefix.values, prefix.rows, sequence);
      EXPECT_TRUE(logits.ok()) << logits.status();
      const auto last = logits->end() - vocab;
      const int32_t next = static_cast<int32_t>(std::max_element(last, logits->end()) - last);
      if (std::find(stops_.begin(), stops_.end(), next) != stops_.end()) break;
      out.push_back(next);
      sequence.push_back(next);
    }
    return out;
  }

  static inline Tokenizer* tokenizer_ = nullptr;
  static inline LanguageModel* lm_ = nullptr;
  static inline AdapterCorpus* corpus_ = nullptr;
  static inline Adapter* reference_ = nullptr;
  static inline std::string dir_;
  std::unique_ptr<Backend> backend_ = MakeCpuBackend(1);
  std::unique_ptr<Transformer> engine_;
  std::unique_ptr<knowd::Adapter> adapter_;
  std::vector<int32_t> stops_ = {tokenizer_->eos_id(), tokenizer_->Encode("\n", false).back()};
};

TEST_F(AdapterParityTest, TrunkCaptureMatchesLibtorchStates) {
  const std::vector<int32_t> tokens = Passages(5, 6)[0];
  const int n = static_cast<int>(tokens.size());
  const LlamaConfig& c = engine_->config();
  absl::StatusOr<LanguageModel::SequenceStates> want = lm_->States(tokens);
  ASSERT_TRUE(want.ok()) << want.status();
  // Two sequences in one batch: the capture holds both, in batch order.
  const std::vector<int32_t> other = RandomTokens(9, c.vocab_size, 3);
  auto cache_a = engine_->NewCache(n);
  auto cache_b = engine_->NewCache(9);
  ASSERT_TRUE(cache_a.ok() && cache_b.ok());
  const SequenceStep steps[] = {{cache_b->get(), other, false}, {cache_a->get(), tokens, false}};
  std::vector<float> hidden(int64_t{c.num_layers} * (n + 9) * c.hidden_size);
  const TrunkCapture capture{hidden.data()};
  ASSERT_TRUE(engine_->Forward(steps, nullptr, &capture).ok());
  EXPECT_EQ((*cache_a)->size(), n);
  double hidden_diff = 0, kv_diff = 0;
  for (int l = 0; l < c.num_layers; ++l) {
    const std::span<const float> got(hidden.data() + (int64_t{l} * (n + 9) + 9) * c.hidden_size,
                                     int64_t{n} * c.hidden_size);
    hidden_diff = std::max(hidden_diff, MaxAbsDiff(got, want->hidden[l]));
    std::vector<float> keys, values;
    ASSERT_TRUE((*cache_a)->ReadRows(l, 0, n, &keys, &values).ok());
    const int64_t layer = int64_t{n} * c.kv_dim();
    kv_diff = std::max(kv_diff, MaxAbsDiff(keys, {want->keys.data() + l * layer, size_t(layer)}));
    kv_diff =
        std::max(kv_diff, MaxAbsDiff(values, {want->values.data() + l * layer, size_t(layer)}));
  }
  std::printf("trunk: max |engine - libtorch| hidden %.3g, keys/values %.3g\n", hidden_diff,
              kv_diff);
  EXPECT_LE(hidden_diff, 1e-4);
  EXPECT_LE(kv_diff, 1e-4);
}

TEST_F(AdapterParityTest, LatentsKeysQuestionCodeAndPrefixMatchLibtorch) {
  const knowd::AdapterSpec& spec = adapter_->spec();
  EXPECT_EQ(spec.slots, 4);
  EXPECT_EQ(spec.latent_dim, 32);
  EXPECT_EQ(spec.base_sha256, std::string(64, 'b'));
  EXPECT_EQ(spec.adapter_sha256.size(), 64u);
  // Three passages of different lengths as one batch, and as candidates in that order.
  const std::vector<std::vector<int32_t>> passages = Passages(20, 23);
  ASSERT_NE(passages[0].size(), passages[1].size());
  const std::vector<int32_t> prompt =
      tokenizer_->Encode(knowd::knowledge::QuestionPrompt(Question(40)), true);
  absl::StatusOr<Adapter::Trace> want = reference_->TraceForTest(passages, prompt);
  ASSERT_TRUE(want.ok()) << want.status();

  std::vector<PassageCode> codes;
  ASSERT_TRUE(adapter_->EncodePassages(passages, &codes).ok());
  ASSERT_EQ(codes.size(), 3u);
  double latent_diff = 0, key_diff = 0, latent_scale = 0;
  for (size_t i = 0; i < codes.size(); ++i) {
    latent_diff = std::max(latent_diff, MaxAbsDiff(codes[i].latents, want->latents[i]));
    key_diff = std::max(key_diff, MaxAbsDiff(codes[i].key, want->keys[i]));
    latent_scale = std::max(latent_scale, MaxAbs(want->latents[i]));
    EXPECT_EQ(adapter_->KeyOfLatent(codes[i].latents), codes[i].key);
  }
  absl::StatusOr<QuestionCode> question = adapter_->EncodeQuestion(prompt);
  ASSERT_TRUE(question.ok()) << question.status();
  const double query_diff = MaxAbsDiff(question->queries, want->queries);
  const double question_key_diff = MaxAbsDiff(question->key, want->question_key);

  std::vector<std::span<const float>> candidates;
  for (const PassageCode& c : codes) candidates.push_back(c.latents);
  absl::StatusOr<PrefixKv> prefix = adapter_->Modulate(*question, candidates);
  ASSERT_TRUE(prefix.ok()) << prefix.status();
  EXPECT_EQ(prefix->rows, 5);
  const double prefix_key_diff = MaxAbsDiff(prefix->keys, want->prefix.keys);
  const double prefix_value_diff = MaxAbsDiff(prefix->values, want->prefix.values);
  std::printf(
      "adapter: max |engine - libtorch| latents %.3g (of values up to %.3g), passage keys %.3g, "
      "question queries %.3g, question key %.3g, prefix keys %.3g, prefix values %.3g\n",
      latent_diff, latent_scale, key_diff, query_diff, question_key_diff, prefix_key_diff,
      prefix_value_diff);
  EXPECT_GT(latent_scale, 0.1);  // not vacuous
  EXPECT_LE(latent_diff, 1e-4);
  EXPECT_LE(key_diff, 1e-4);
  EXPECT_LE(query_diff, 1e-4);
  EXPECT_LE(question_key_diff, 1e-4);
  EXPECT_LE(prefix_key_diff, 1e-4);
  EXPECT_LE(prefix_value_diff, 1e-4);

  // A passage encoded alone gets the code it gets in a batch.
  std::vector<PassageCode> alone;
  ASSERT_TRUE(adapter_->EncodePassages({&passages[1], 1}, &alone).ok());
  EXPECT_LE(MaxAbsDiff(alone[0].latents, codes[1].latents), 1e-5);
}

TEST_F(AdapterParityTest, MacRagHeadPrefixMatchesLibtorchAndDiffersFromTheMacHead) {
  ASSERT_TRUE(adapter_->spec().rag_head);
  EXPECT_EQ(adapter_->spec().rag_prefix_key_scale, 0.75f);
  const std::vector<std::vector<int32_t>> passages = Passages(20, 23);
  const std::vector<int32_t> prompt =
      tokenizer_->Encode(knowd::knowledge::QuestionPrompt(Question(40)), true);
  absl::StatusOr<Adapter::Trace> want = reference_->TraceForTest(passages, prompt, true);
  ASSERT_TRUE(want.ok()) << want.status();
  std::vector<PassageCode> codes;
  ASSERT_TRUE(adapter_->EncodePassages(passages, &codes).ok());
  absl::StatusOr<QuestionCode> question = adapter_->EncodeQuestion(prompt);
  ASSERT_TRUE(question.ok()) << question.status();
  std::vector<std::span<const float>> candidates;
  for (const PassageCode& c : codes) candidates.push_back(c.latents);
  absl::StatusOr<PrefixKv> rag = adapter_->Modulate(*question, candidates, /*with_text=*/true);
  ASSERT_TRUE(rag.ok()) << rag.status();
  absl::StatusOr<PrefixKv> mac = adapter_->Modulate(*question, candidates, /*with_text=*/false);
  ASSERT_TRUE(mac.ok()) << mac.status();
  EXPECT_EQ(rag->rows, 5);
  const double key_diff = MaxAbsDiff(rag->keys, want->prefix.keys);
  const double value_diff = MaxAbsDiff(rag->values, want->prefix.values);
  std::printf("mac+rag head: max |engine - libtorch| prefix keys %.3g, values %.3g\n", key_diff,
              value_diff);
  EXPECT_LE(key_diff, 1e-4);
  EXPECT_LE(value_diff, 1e-4);
  // The heads are different networks: the mac+rag prefix is not the mac prefix.
  EXPECT_GT(MaxAbsDiff(rag->values, mac->values), 1e-3);

  // The key scale applies to the slots' keys alone: at 1, the slots' keys are the exported
  // ones / 0.75 and the sink row and the values are unchanged.
  EXPECT_EQ(adapter_->SetRagPrefixKeyScale(5).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(adapter_->SetRagPrefixKeyScale(0).code(), absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(adapter_->SetRagPrefixKeyScale(1).ok());
  absl::StatusOr<PrefixKv> unscaled = adapter_->Modulate(*question, candidates, true);
  ASSERT_TRUE(adapter_->SetRagPrefixKeyScale(0.75f).ok());
  ASSERT_TRUE(unscaled.ok()) << unscaled.status();
  EXPECT_EQ(unscaled->values, rag->values);
  const int64_t kv_dim =
      static_cast<int64_t>(rag->keys.size()) / (rag->rows * lm_->config().num_layers);
  int scaled_rows = 0;
  for (size_t i = 0; i < rag->keys.size(); ++i) {
    const bool sink = (static_cast<int64_t>(i) / kv_dim) % rag->rows == 0;
    if (sink) {
      EXPECT_EQ(unscaled->keys[i], rag->keys[i]) << i;
    } else {
      EXPECT_NEAR(unscaled->keys[i] * 0.75f, rag->keys[i], 1e-6f * (1 + std::fabs(rag->keys[i])));
      scaled_rows += unscaled->keys[i] != rag->keys[i];
    }
  }
  EXPECT_GT(scaled_rows, 0);
}

TEST_F(AdapterParityTest, GreedyAnswersAfterThePrefixMatchLibtorch) {
  int nonempty = 0;
  for (int q = 0; q < 4; ++q) {
    const int gold = corpus_->passage_of(q);
    ASSERT_GE(gold, 0);
    const std::vector<std::vector<int32_t>> passages = {Passages(gold, gold + 1)[0],
                                                        Passages(30 + q, 31 + q)[0]};
    const std::string prompt_text = knowd::knowledge::QuestionPrompt(Question(q));
    const std::vector<int32_t> with_bos = tokenizer_->Encode(prompt_text, true);
    const std::vector<int32_t> after_prefix = tokenizer_->Encode(prompt_text, false);
    ASSERT_NE(after_prefix.front(), tokenizer_->bos_id());
    absl::StatusOr<Adapter::Trace> want = reference_->TraceForTest(passages, with_bos);
    ASSERT_TRUE(want.ok()) << want.status();
    std::vector<PassageCode> codes;
    ASSERT_TRUE(adapter_->EncodePassages(passages, &codes).ok());
    absl::StatusOr<QuestionCode> question = adapter_->EncodeQuestion(with_bos);
    ASSERT_TRUE(question.ok());
    const std::span<const float> candidates[] = {codes[0].latents, codes[1].latents};
    absl::StatusOr<PrefixKv> prefix = adapter_->Modulate(*question, candidates);
    ASSERT_TRUE(prefix.ok()) << prefix.status();
    const std::vector<int32_t> engine_answer = EngineGreedy(*prefix, after_prefix);
    const std::vector<int32_t> torch_answer = TorchGreedy(want->prefix, after_prefix);
    EXPECT_EQ(engine_answer, torch_answer) << Question(q);
    nonempty += !engine_answer.empty();
  }
  EXPECT_GT(nonempty, 0);
}

// rows_per_slot 3 grown from the suite's export: before training, slot t's first row is the
// export's row t (keys rotated on by the 8 rows added before the question, the sink's too) and
// the new rows are small; after training steps the engine makes libtorch's prefix and answers.
TEST_F(AdapterParityTest, MoreRowsPerSlotGrowFromAnExportAndMatchLibtorch) {
  AdapterConfig config = reference_->config();
  config.rows_per_slot = 3;
  auto grown_or = Adapter::Create(lm_, config, 12);
  ASSERT_TRUE(grown_or.ok()) << grown_or.status();
  std::unique_ptr<Adapter> grown = *std::move(grown_or);
  ASSERT_TRUE(grown->LoadExport(dir_ + "/adapter", {.grow = true}).ok());

  const std::vector<std::vector<int32_t>> passages = Passages(20, 23);
  const std::vector<int32_t> prompt =
      tokenizer_->Encode(knowd::knowledge::QuestionPrompt(Question(40)), true);
  const LlamaConfig& c = lm_->config();
  const int t = config.slots, r = 3, kv_dim = c.kv_dim(), shift = t * (r - 1);
  for (bool with_text : {false, true}) {
    absl::StatusOr<Adapter::Trace> before = reference_->TraceForTest(passages, prompt, with_text);
    absl::StatusOr<Adapter::Trace> after = grown->TraceForTest(passages, prompt, with_text);
    ASSERT_TRUE(before.ok() && after.ok());
    ASSERT_EQ(after->prefix.rows, 1 + t * r);
    double key_diff = 0, value_diff = 0, extra = 0, scale = 0, scale_values = 0;
    for (int l = 0; l < c.num_layers; ++l) {
      for (int row = 0; row < after->prefix.rows; ++row) {
        const bool first = row == 0 || (row - 1) % r == 0;
        const int64_t at = (int64_t{l} * after->prefix.rows + row) * kv_dim;
        if (!first) {
          extra = std::max(extra, MaxAbs({after->prefix.values.data() + at, size_t(kv_dim)}));
          continue;
        }
        const int old_row = row == 0 ? 0 : 1 + (row - 1) / r;
        const int64_t from = (int64_t{l} * before->prefix.rows + old_row) * kv_dim;
        std::vector<float> key(before->prefix.keys.begin() + from,
                               before->prefix.keys.begin() + from + kv_dim);
        for (int pair = 0; pair < c.head_dim / 2; ++pair) {
          float cs, sn;
          RopeCosSin(shift, pair, c.head_dim, c.rope_theta, &cs, &sn);
          for (int h = 0; h < c.num_kv_heads; ++h) {
            RopeRotate(&key[h * c.head_dim + pair], &key[h * c.head_dim + pair + c.head_dim / 2],
                       cs, sn);
          }
        }
        key_diff =
            std::max(key_diff, MaxAbsDiff({after->prefix.keys.data() + at, size_t(kv_dim)}, key));
        value_diff =
            std::max(value_diff, MaxAbsDiff({after->prefix.values.data() + at, size_t(kv_dim)},
                                            {before->prefix.values.data() + from, size_t(kv_dim)}));
        scale = std::max(scale, MaxAbs(key));
        scale_values =
            std::max(scale_values, MaxAbs({before->prefix.values.data() + from, size_t(kv_dim)}));
      }
    }
    EXPECT_GT(scale, 0.02);  // not vacuous
    EXPECT_LE(key_diff, 1e-4 * scale) << with_text;
    EXPECT_LE(value_diff, 1e-5) << with_text;
    // The new rows' values are small next to the export's, and not zero (so that rows can part).
    EXPECT_GT(extra, 0.0) << with_text;
    EXPECT_LT(extra, 0.5 * scale_values) << with_text;
  }

  AdapterTrainOptions options;
  options.batch = 4;
  options.text_fraction = 0.5;
  for (int step = 0; step < 2; ++step) {
    ASSERT_TRUE(grown->TrainStep(*corpus_, options, step, 3e-3, 2).ok());
  }
  const std::string dir = dir_ + "/adapter-rows3";
  ASSERT_TRUE(grown->Export(dir, DType::kF32, std::string(64, 'b')).ok());
  absl::StatusOr<std::unique_ptr<knowd::Adapter>> engine_adapter =
      knowd::Adapter::Load(dir, engine_.get());
  ASSERT_TRUE(engine_adapter.ok()) << engine_adapter.status();
  EXPECT_EQ((*engine_adapter)->spec().rows_per_slot, 3);
  EXPECT_EQ((*engine_adapter)->spec().prefix_rows(), 1 + t * r);
  std::vector<PassageCode> codes;
  ASSERT_TRUE((*engine_adapter)->EncodePassages(passages, &codes).ok());
  absl::StatusOr<QuestionCode> question = (*engine_adapter)->EncodeQuestion(prompt);
  ASSERT_TRUE(question.ok()) << question.status();
  std::vector<std::span<const float>> candidates;
  for (const PassageCode& code : codes) candidates.push_back(code.latents);
  const std::vector<int32_t> after_prefix =
      tokenizer_->Encode(knowd::knowledge::QuestionPrompt(Question(40)), false);
  for (bool with_text : {false, true}) {
    absl::StatusOr<Adapter::Trace> want = grown->TraceForTest(passages, prompt, with_text);
    ASSERT_TRUE(want.ok()) << want.status();
    absl::StatusOr<PrefixKv> got = (*engine_adapter)->Modulate(*question, candidates, with_text);
    ASSERT_TRUE(got.ok()) << got.status();
    ASSERT_EQ(got->rows, 1 + t * r);
    EXPECT_LE(MaxAbsDiff(got->keys, want->prefix.keys), 1e-4) << with_text;
    EXPECT_LE(MaxAbsDiff(got->values, want->prefix.values), 1e-4) << with_text;
    if (!with_text) {
      EXPECT_EQ(EngineGreedy(*got, after_prefix), TorchGreedy(want->prefix, after_prefix));
    }
  }
}

TEST_F(AdapterParityTest, EncodeAndModulateRefuseBadInputs) {
  std::vector<PassageCode> codes;
  const std::vector<std::vector<int32_t>> only_bos = {{tokenizer_->bos_id()}};
  EXPECT_EQ(adapter_->EncodePassages(only_bos, &codes).code(), absl::StatusCode::kInvalidArgument);
  const std::vector<std::vector<int32_t>> no_bos = {{5, 6, 7}};
  absl::Status s = adapter_->EncodePassages(no_bos, &codes);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("BOS"), std::string::npos) << s;
  const std::vector<std::vector<int32_t>> too_long = {
      std::vector<int32_t>(engine_->config().max_position_embeddings + 1, tokenizer_->bos_id())};
  EXPECT_FALSE(adapter_->EncodePassages(too_long, &codes).ok());
  EXPECT_TRUE(adapter_->EncodePassages({}, &codes).ok());
  EXPECT_TRUE(codes.empty());

  const std::vector<int32_t> prompt = tokenizer_->Encode("Q: who?\nA:", true);
  absl::StatusOr<QuestionCode> question = adapter_->EncodeQuestion(prompt);
  ASSERT_TRUE(question.ok());
  EXPECT_FALSE(adapter_->Modulate(*question, {}).ok());
  const std::vector<float> short_latent(10);
  const std::span<const float> bad[] = {short_latent};
  EXPECT_EQ(adapter_->Modulate(*question, bad).status().code(), absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(adapter_->EncodePassages(Passages(0, 1), &codes).ok());
  const std::vector<std::span<const float>> too_many(5, codes[0].latents);
  EXPECT_EQ(adapter_->Modulate(*question, too_many).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// ---- Load's refusals ----

class AdapterLoadTest : public AdapterParityTest {
 protected:
  // A copy of the export to damage.
  std::string CopyOfExport(const std::string& name) {
    const std::string copy = dir_ + "/" + name;
    std::filesystem::remove_all(copy);
    std::filesystem::copy(dir_ + "/adapter", copy);
    return copy;
  }
  void EditJson(const std::string& dir, const std::function<void(nlohmann::json&)>& edit) {
    nlohmann::json j;
    {
      std::ifstream in(dir + "/adapter.json");
      j = nlohmann::json::parse(in);
    }
    edit(j);
    std::ofstream(dir + "/adapter.json", std::ios::trunc) << j.dump(2);
  }
  absl::Status LoadStatus(const std::string& dir, std::string_view sha = {}) {
    return knowd::Adapter::Load(dir, engine_.get(), sha).status();
  }
};

TEST_F(AdapterLoadTest, MissingDirectoryOrWeights) {
  absl::Status s = LoadStatus(dir_ + "/no-such-adapter");
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound) << s;
  EXPECT_NE(s.message().find("adapter.json"), std::string::npos) << s;
  const std::string copy = CopyOfExport("no-weights");
  std::filesystem::remove(copy + "/adapter.safetensors");
  s = LoadStatus(copy);
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("adapter.safetensors"), std::string::npos) << s;
}

TEST_F(AdapterLoadTest, AnotherBaseArchitectureOrFingerprint) {
  // stories260K has 5 layers; the adapter was trained on a 2-layer base.
  absl::StatusOr<std::unique_ptr<Transformer>> other =
      Transformer::Load(std::string(KNOWD_SOURCE_DIR) + "/models/stories260K-hf", backend_.get());
  ASSERT_TRUE(other.ok()) << other.status();
  absl::Status s = knowd::Adapter::Load(dir_ + "/adapter", other->get()).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_NE(s.message().find("num_hidden_layers 2; this model has 5"), std::string::npos) << s;

  s = LoadStatus(dir_ + "/adapter", std::string(64, 'c'));
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_NE(s.message().find("sha256"), std::string::npos) << s;
  EXPECT_TRUE(LoadStatus(dir_ + "/adapter", std::string(64, 'b')).ok());
}

TEST_F(AdapterLoadTest, TruncatedWeights) {
  const std::string copy = CopyOfExport("truncated");
  const std::string path = copy + "/adapter.safetensors";
  std::filesystem::resize_file(path, std::filesystem::file_size(path) / 2);
  absl::Status s = LoadStatus(copy);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find("adapter.safetensors"), std::string::npos) << s;
}

// The bank's fingerprint follows the weights its latents and keys come from (the readout), not
// the file: another head leaves it, another readout changes it.
TEST_F(AdapterLoadTest, EncoderFingerprintFollowsTheReadoutOnly) {
  // The export with every value of one tensor negated.
  auto negated = [&](const std::string& tensor) {
    const std::string copy = CopyOfExport("negated-" + tensor);
    absl::StatusOr<std::unique_ptr<SafetensorsFile>> file =
        SafetensorsFile::Open(dir_ + "/adapter/adapter.safetensors");
    EXPECT_TRUE(file.ok()) << file.status();
    std::vector<HostTensor> tensors = (*file)->tensors();
    std::vector<std::vector<float>> values;
    values.reserve(tensors.size());
    for (HostTensor& t : tensors) {
      EXPECT_EQ(t.dtype, DType::kF32);
      values.emplace_back(static_cast<const float*>(t.data),
                          static_cast<const float*>(t.data) + t.numel());
      if (t.name == tensor) {
        for (float& v : values.back()) v = -v;
      }
      t.data = values.back().data();
    }
    EXPECT_TRUE(WriteSafetensors(copy + "/adapter.safetensors", tensors, {}).ok());
    auto adapter = knowd::Adapter::Load(copy, engine_.get());
    EXPECT_TRUE(adapter.ok()) << adapter.status();
    return adapter.ok() ? (*adapter)->spec() : knowd::AdapterSpec();
  };
  const knowd::AdapterSpec& original = adapter_->spec();
  ASSERT_EQ(original.encoder_sha256.size(), 64u);
  const knowd::AdapterSpec head = negated("rag_expander.expand.weight");
  EXPECT_NE(head.adapter_sha256, original.adapter_sha256);
  EXPECT_EQ(head.encoder_sha256, original.encoder_sha256);
  const knowd::AdapterSpec question = negated("question.key.weight");
  EXPECT_EQ(question.encoder_sha256, original.encoder_sha256);
  const knowd::AdapterSpec readout = negated("readout.key.weight");
  EXPECT_NE(readout.encoder_sha256, original.encoder_sha256);
}

TEST_F(AdapterLoadTest, ShapesThatDisagreeWithAdapterJson) {
  std::string copy = CopyOfExport("key-dim");
  EditJson(copy, [](nlohmann::json& j) { j["key_dim"] = 17; });
  absl::Status s = LoadStatus(copy);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find("readout.key.weight has shape [16, 32], expected [17, 32]"),
            std::string::npos)
      << s;

  copy = CopyOfExport("fewer-blocks");
  EditJson(copy, [](nlohmann::json& j) { j["readout_blocks"] = 1; });
  s = LoadStatus(copy);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find("unexpected tensor readout.blocks.1."), std::string::npos) << s;

  copy = CopyOfExport("not-adapter");
  EditJson(copy, [](nlohmann::json& j) { j["format"] = "something-else"; });
  EXPECT_EQ(LoadStatus(copy).code(), absl::StatusCode::kInvalidArgument);

  // Weights of a mac+rag head that adapter.json does not declare, or a malformed declaration.
  copy = CopyOfExport("undeclared-rag-head");
  EditJson(copy, [](nlohmann::json& j) { j["rag_head"] = false; });
  s = LoadStatus(copy);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find("unexpected tensor rag_"), std::string::npos) << s;
  copy = CopyOfExport("rag-head-string");
  EditJson(copy, [](nlohmann::json& j) { j["rag_head"] = "yes"; });
  s = LoadStatus(copy);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find("\"rag_head\" must be true or false"), std::string::npos) << s;

  copy = CopyOfExport("heads");
  EditJson(copy, [](nlohmann::json& j) { j["heads"] = 3; });
  s = LoadStatus(copy);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find("heads must divide latent_dim"), std::string::npos) << s;
}

}  // namespace
}  // namespace knowd::train
