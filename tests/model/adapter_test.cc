// knowd::Adapter (model/adapter.h) without libtorch: an adapter of random weights over the
// shipped stories260K model. Parity with the libtorch networks is tests/train/adapter_parity_test;
// this checks the engine-side contract: batching does not change a passage's code, the prefix
// has the promised layout, the aggregator does not depend on the order candidates come in, and
// the engine takes the prefix.
#include "model/adapter.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "kernels/backend.h"
#include "model/transformer.h"
#include "nlohmann/json.hpp"
#include "tests/float_compare.h"
#include "tests/model/random_adapter.h"

namespace knowd {
namespace {

const std::string kModel = std::string(KNOWD_SOURCE_DIR) + "/models/stories260K-hf";

using testing::MaxAbsDiff;

class ModelAdapterTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto model = Transformer::Load(kModel, backend_.get());
    ASSERT_TRUE(model.ok()) << model.status();
    model_ = *std::move(model);
    dir_ = ::testing::TempDir() + "/knowd_model_adapter_" + std::to_string(getpid());
    ASSERT_TRUE(
        testing::WriteRandomAdapter(dir_, model_->config(), testing::SmallAdapterSpec(), 7).ok());
    auto adapter = Adapter::Load(dir_, model_.get());
    ASSERT_TRUE(adapter.ok()) << adapter.status();
    adapter_ = *std::move(adapter);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  // BOS then `n` random token ids.
  std::vector<int32_t> Passage(int n, uint64_t seed) const {
    std::mt19937_64 rng(seed);
    std::vector<int32_t> ids = {model_->config().bos_token_id};
    for (int i = 0; i < n; ++i) ids.push_back(static_cast<int32_t>(3 + rng() % 500));
    return ids;
  }

  nlohmann::json AdapterJson() const {
    std::ifstream in(dir_ + "/adapter.json");
    return nlohmann::json::parse(in);
  }
  // adapter.json with `key` set to each of `bad` in turn: Load refuses it, naming the key.
  void ExpectRefused(const std::string& key, std::initializer_list<nlohmann::json> bad) {
    nlohmann::json j = AdapterJson();
    for (const nlohmann::json& value : bad) {
      j[key] = value;
      std::ofstream(dir_ + "/adapter.json") << j.dump();
      auto refused = Adapter::Load(dir_, model_.get());
      EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument) << key << value;
      EXPECT_NE(refused.status().message().find(key), std::string::npos) << refused.status();
    }
  }

  std::unique_ptr<Backend> backend_ = MakeCpuBackend(1);
  std::unique_ptr<Transformer> model_;
  std::unique_ptr<Adapter> adapter_;
  std::string dir_;
};

TEST_F(ModelAdapterTest, SpecComesFromAdapterJsonAndTheWeights) {
  const AdapterSpec& s = adapter_->spec();
  EXPECT_EQ(s.slots, 4);
  EXPECT_EQ(s.latent_dim, 16);
  EXPECT_EQ(s.key_dim, 8);
  EXPECT_EQ(s.max_candidates, 4);
  EXPECT_EQ(s.adapter_sha256.size(), 64u);
  EXPECT_NEAR(adapter_->score_scale(), 20.0f, 1e-4);
  // Another seed: other weights, another fingerprint.
  ASSERT_TRUE(
      testing::WriteRandomAdapter(dir_ + "/b", model_->config(), testing::SmallAdapterSpec(), 8)
          .ok());
  auto other = Adapter::Load(dir_ + "/b", model_.get());
  ASSERT_TRUE(other.ok()) << other.status();
  EXPECT_NE((*other)->spec().adapter_sha256, s.adapter_sha256);
}

TEST_F(ModelAdapterTest, BatchingAndChunkingDoNotChangeAPassagesCode) {
  // 40 passages of up to 300 tokens: more than one trunk pass of 8192 tokens.
  std::vector<std::vector<int32_t>> passages;
  for (int i = 0; i < 40; ++i) passages.push_back(Passage(150 + (i * 37) % 150, i));
  std::vector<PassageCode> batch;
  ASSERT_TRUE(adapter_->EncodePassages(passages, &batch).ok());
  ASSERT_EQ(batch.size(), passages.size());
  for (int i : {0, 17, 39}) {
    std::vector<PassageCode> alone;
    ASSERT_TRUE(adapter_->EncodePassages({&passages[i], 1}, &alone).ok());
    EXPECT_LE(MaxAbsDiff(alone[0].latents, batch[i].latents), 1e-5) << i;
    EXPECT_LE(MaxAbsDiff(alone[0].key, batch[i].key), 1e-6) << i;
  }
  for (const PassageCode& c : batch) {
    ASSERT_EQ(c.latents.size(), 4u * 16u);
    ASSERT_EQ(c.key.size(), 8u);
    double norm = 0;
    for (float v : c.key) norm += double(v) * v;
    EXPECT_NEAR(norm, 1.0, 1e-5);
    EXPECT_EQ(adapter_->KeyOfLatent(c.latents), c.key);
  }
  EXPECT_GT(MaxAbsDiff(batch[0].latents, batch[1].latents), 1e-3);  // not all the same
}

TEST_F(ModelAdapterTest, PrefixLayoutOrderInvarianceAndTheEngineTakesIt) {
  std::vector<std::vector<int32_t>> passages = {Passage(30, 1), Passage(50, 2), Passage(12, 3)};
  std::vector<PassageCode> codes;
  ASSERT_TRUE(adapter_->EncodePassages(passages, &codes).ok());
  absl::StatusOr<QuestionCode> question = adapter_->EncodeQuestion(Passage(9, 4));
  ASSERT_TRUE(question.ok()) << question.status();
  EXPECT_EQ(question->queries.size(), 4u * 16u);

  const std::span<const float> in_order[] = {codes[0].latents, codes[1].latents, codes[2].latents};
  const std::span<const float> shuffled[] = {codes[2].latents, codes[0].latents, codes[1].latents};
  absl::StatusOr<PrefixKv> a = adapter_->Modulate(*question, in_order);
  absl::StatusOr<PrefixKv> b = adapter_->Modulate(*question, shuffled);
  ASSERT_TRUE(a.ok() && b.ok());
  const LlamaConfig& c = model_->config();
  EXPECT_EQ(a->rows, 5);
  ASSERT_EQ(a->keys.size(), size_t(c.num_layers) * 5 * c.kv_dim());
  ASSERT_EQ(a->values.size(), a->keys.size());
  // Ranks come from the scores, not from the order of the list; attention is a set operation.
  EXPECT_LE(MaxAbsDiff(a->keys, b->keys), 1e-5);
  EXPECT_LE(MaxAbsDiff(a->values, b->values), 1e-5);

  // Row 0 of every layer is the sink, whatever the candidates.
  const std::span<const float> one[] = {codes[1].latents};
  absl::StatusOr<PrefixKv> single = adapter_->Modulate(*question, one);
  ASSERT_TRUE(single.ok());
  EXPECT_GT(MaxAbsDiff(single->keys, a->keys), 1e-4);
  for (int l = 0; l < c.num_layers; ++l) {
    const int64_t row0 = int64_t{l} * 5 * c.kv_dim();
    for (int i = 0; i < c.kv_dim(); ++i) {
      ASSERT_EQ(single->keys[row0 + i], a->keys[row0 + i]);
      ASSERT_EQ(single->values[row0 + i], a->values[row0 + i]);
    }
  }

  auto cache = model_->NewCache(32);
  ASSERT_TRUE(cache.ok());
  ASSERT_TRUE((*cache)->SetPrefix(a->keys, a->values, a->rows).ok());
  const std::vector<int32_t> prompt = {300, 301, 302};
  SequenceStep step{cache->get(), prompt, false};
  std::vector<float> logits;
  ASSERT_TRUE(model_->Forward({&step, 1}, &logits).ok());
  EXPECT_EQ(logits.size(), size_t(c.vocab_size));
  EXPECT_TRUE(std::all_of(logits.begin(), logits.end(), [](float v) { return std::isfinite(v); }));
}

TEST_F(ModelAdapterTest, RefusesAnotherBaseSha256WhenOneIsGiven) {
  auto adapter = Adapter::Load(dir_, model_.get(), std::string(64, 'e'));
  EXPECT_EQ(adapter.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(adapter.status().message().find("(none recorded)"), std::string::npos)
      << adapter.status();
}

TEST_F(ModelAdapterTest, RagPrefixKeyScaleDefaultsToOneAndIsChecked) {
  EXPECT_EQ(adapter_->spec().rag_prefix_key_scale, 1.0f);
  EXPECT_FALSE(adapter_->spec().rag_head);
  EXPECT_EQ(adapter_->SetRagPrefixKeyScale(0.5f).code(), absl::StatusCode::kFailedPrecondition);
  ExpectRefused("rag_prefix_key_scale",
                {nlohmann::json(-1.0), nlohmann::json(0.0), nlohmann::json("x")});
  nlohmann::json j = AdapterJson();
  j["rag_prefix_key_scale"] = 0.5;
  std::ofstream(dir_ + "/adapter.json") << j.dump();
  auto scaled = Adapter::Load(dir_, model_.get());
  ASSERT_TRUE(scaled.ok()) << scaled.status();
  EXPECT_EQ((*scaled)->spec().rag_prefix_key_scale, 0.5f);
}

TEST_F(ModelAdapterTest, RowsPerSlotDefaultsToOneAndIsChecked) {
  EXPECT_EQ(adapter_->spec().rows_per_slot, 1);
  EXPECT_EQ(adapter_->spec().prefix_rows(), 1 + adapter_->spec().slots);
  ExpectRefused("rows_per_slot", {nlohmann::json(0), nlohmann::json(17), nlohmann::json(1.5)});
  nlohmann::json j = AdapterJson();
  // Declared, but the weights make one row per slot: the expander's shape says so.
  j["rows_per_slot"] = 2;
  std::ofstream(dir_ + "/adapter.json") << j.dump();
  auto mismatched = Adapter::Load(dir_, model_.get());
  EXPECT_FALSE(mismatched.ok());
  EXPECT_NE(mismatched.status().message().find("expander.expand.weight"), std::string::npos)
      << mismatched.status();
}

}  // namespace
}  // namespace knowd
