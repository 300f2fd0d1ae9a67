// Retrieval keys: `knowd-train keys` trains and exports the two heads on a small world over the
// shipped knowd-tiny LM, and the engine (model/retrieval_keys.h, through model/adapter.h)
// reproduces libtorch's keys of the exported heads within 1e-4, while the adapter's latents and
// its aggregator keys stay exactly what they were without the heads.
#include "train/retrieval_keys.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <string>
#include <vector>

#include "kernels/backend.h"
#include "knowledge/prompt.h"
#include "model/adapter.h"
#include "model/tokenizer.h"
#include "model/transformer.h"
#include "tests/float_compare.h"
#include "tests/train/train_test_util.h"
#include "train/world.h"

namespace knowd::train {
namespace {

namespace fs = std::filesystem;
using knowd::testing::MaxAbsDiff;

class RetrievalKeysTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    root_ = new std::string(TempDir("retrieval-keys"));
    const std::string source = std::string(KNOWD_SOURCE_DIR) + "/models/knowd-tiny";
    const std::string bundle = *root_ + "/bundle";
    fs::create_directories(bundle + "/adapter");
    for (const char* f : {"config.json", "model.safetensors", "tokenizer.model"}) {
      fs::copy_file(source + "/" + f, bundle + "/" + f);
    }
    for (const char* f : {"adapter.json", "adapter.safetensors"}) {
      fs::copy_file(source + "/adapter/" + f, bundle + "/adapter/" + f);
    }
    WorldOptions world;
    world.people[static_cast<int>(Split::kPretrain)] = 20;
    world.people[static_cast<int>(Split::kAdapter)] = 60;
    world.people[static_cast<int>(Split::kValid)] = 10;
    world.people[static_cast<int>(Split::kTest)] = 10;
    ASSERT_TRUE(WriteWorld(world, *root_ + "/world").ok());
    RetrievalKeyOptions options;
    options.data_dir = *root_ + "/world";
    options.bundle_dir = bundle;
    options.steps = 4;
    options.batch = 16;
    options.warmup = 1;
    options.eval_every = 4;
    options.log_every = 4;
    const absl::Status trained = TrainRetrievalKeys(options);
    ASSERT_TRUE(trained.ok()) << trained;
  }
  static void TearDownTestSuite() {
    fs::remove_all(*root_);
    delete root_;
  }
  static std::string bundle() { return *root_ + "/bundle"; }
  static std::string* root_;
};
std::string* RetrievalKeysTest::root_ = nullptr;

// The engine with the bundle's adapter; `with_heads` false loads it without the exported heads.
struct Engine {
  std::unique_ptr<Backend> backend = MakeCpuBackend(1);
  std::unique_ptr<Transformer> model;
  std::unique_ptr<Adapter> adapter;
  std::unique_ptr<Tokenizer> tokenizer;
};
Engine Load(const std::string& bundle, bool with_heads) {
  Engine e;
  std::string adapter_dir = bundle + "/adapter";
  if (!with_heads) {
    adapter_dir = bundle + "/plain-adapter";
    fs::create_directories(adapter_dir);
    for (const char* f : {"adapter.json", "adapter.safetensors"}) {
      fs::copy_file(bundle + "/adapter/" + f, adapter_dir + "/" + f,
                    fs::copy_options::overwrite_existing);
    }
  }
  auto model = Transformer::Load(bundle, e.backend.get());
  EXPECT_TRUE(model.ok()) << model.status();
  if (!model.ok()) return e;
  e.model = *std::move(model);
  auto adapter = Adapter::Load(adapter_dir, e.model.get());
  EXPECT_TRUE(adapter.ok()) << adapter.status();
  if (adapter.ok()) e.adapter = *std::move(adapter);
  auto tokenizer = LoadSentencePieceTokenizer(bundle + "/tokenizer.model");
  EXPECT_TRUE(tokenizer.ok()) << tokenizer.status();
  if (tokenizer.ok()) e.tokenizer = *std::move(tokenizer);
  return e;
}

TEST_F(RetrievalKeysTest, TheEngineReproducesLibtorchsKeys) {
  Engine e = Load(bundle(), true);
  ASSERT_NE(e.adapter, nullptr);
  ASSERT_TRUE(e.adapter->has_retrieval_keys());
  EXPECT_EQ(e.adapter->spec().retrieval_keys_sha256.size(), 64u);
  const std::vector<std::string> passages = {
      "Etheth Rulhal now lives in Ethdamith. Etheth is married to Korlem Ulashor.",
      "By trade, Mira Tosa is a carpenter. Mira Tosa was born in 1949 in Dripe.",
      "Gilel Shipping reported strong results."};
  std::vector<std::vector<int32_t>> tokens;
  for (const std::string& p : passages) tokens.push_back(e.tokenizer->Encode(p, true));
  std::vector<PassageCode> codes;
  ASSERT_TRUE(e.adapter->EncodePassages(tokens, &codes).ok());
  auto reference = TorchRetrievalKeys(bundle(), tokens, /*question=*/false);
  ASSERT_TRUE(reference.ok()) << reference.status();
  for (size_t i = 0; i < passages.size(); ++i) {
    EXPECT_LE(MaxAbsDiff(codes[i].key, (*reference)[i]), 1e-4) << passages[i];
  }

  const std::vector<int32_t> prompt =
      e.tokenizer->Encode(knowledge::QuestionPrompt("Whom did Etheth Rulhal marry?"), true);
  auto question = e.adapter->EncodeQuestion(prompt);
  ASSERT_TRUE(question.ok()) << question.status();
  auto question_reference = TorchRetrievalKeys(bundle(), {prompt}, /*question=*/true);
  ASSERT_TRUE(question_reference.ok()) << question_reference.status();
  EXPECT_LE(MaxAbsDiff(question->retrieval_key, (*question_reference)[0]), 1e-4);
  // The retrieval keys are not the readout's: the heads were trained.
  EXPECT_GT(MaxAbsDiff(question->retrieval_key, question->key), 1e-3);
}

TEST_F(RetrievalKeysTest, TheHeadsLeaveLatentsAndTheAggregatorsKeysAsTheyWere) {
  Engine with = Load(bundle(), true);
  Engine without = Load(bundle(), false);
  ASSERT_NE(with.adapter, nullptr);
  ASSERT_NE(without.adapter, nullptr);
  EXPECT_FALSE(without.adapter->has_retrieval_keys());
  EXPECT_EQ(with.adapter->spec().encoder_sha256, without.adapter->spec().encoder_sha256);
  const std::vector<std::vector<int32_t>> tokens = {
      with.tokenizer->Encode("Etheth Rulhal now lives in Ethdamith.", true)};
  std::vector<PassageCode> a, b;
  ASSERT_TRUE(with.adapter->EncodePassages(tokens, &a).ok());
  ASSERT_TRUE(without.adapter->EncodePassages(tokens, &b).ok());
  EXPECT_EQ(a[0].latents, b[0].latents);
  EXPECT_EQ(b[0].key, without.adapter->KeyOfLatent(b[0].latents));
  EXPECT_NE(a[0].key, b[0].key);
  const std::vector<int32_t> prompt =
      with.tokenizer->Encode(knowledge::QuestionPrompt("Where does Etheth Rulhal live?"), true);
  auto qa = with.adapter->EncodeQuestion(prompt);
  auto qb = without.adapter->EncodeQuestion(prompt);
  ASSERT_TRUE(qa.ok() && qb.ok());
  EXPECT_EQ(qa->queries, qb->queries);
  EXPECT_EQ(qa->key, qb->key);
  EXPECT_EQ(qb->retrieval_key, qb->key);
}

}  // namespace
}  // namespace knowd::train
