// The shipped knowd-tiny adapter on CUDA gives the CPU backend's passage latents and keys, question
// code and prefixes (the mac head's, and the mac+rag head's when the adapter has one).
#include <algorithm>
#include <cmath>
#include <fstream>
#include <span>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "knowledge/prompt.h"
#include "model/adapter.h"
#include "model/tokenizer.h"
#include "model/transformer.h"
#include "nlohmann/json.hpp"

namespace knowd {
namespace {

const std::string kBundle = std::string(KNOWD_SOURCE_DIR) + "/models/knowd-tiny";
const std::string kPassages = std::string(KNOWD_SOURCE_DIR) + "/tests/data/world/passages.jsonl";

// Largest |a - b| over |b|'s largest value (a relative error of the whole vector).
double RelativeDiff(std::span<const float> a, std::span<const float> b) {
  EXPECT_EQ(a.size(), b.size());
  double diff = 0, scale = 1e-30;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) {
    diff = std::max(diff, double{std::fabs(a[i] - b[i])});
    scale = std::max(scale, double{std::fabs(b[i])});
  }
  return diff / scale;
}

struct Outputs {
  std::vector<PassageCode> codes;
  QuestionCode question;
  std::vector<PrefixKv> prefixes;  // mac, then mac+rag
};

TEST(AdapterGpu, CodesAndPrefixesMatchTheCpu) {
  if (!CudaAvailable()) GTEST_SKIP() << "no CUDA device";
  auto cuda = MakeCudaBackend(0);
  ASSERT_TRUE(cuda.ok()) << cuda.status();
  auto cpu = MakeCpuBackend(CpuOptions{.int8_activations = false});  // as the GPU: exact products
  auto tokenizer = LoadTokenizer(kBundle + "/tokenizer.model");
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  std::vector<std::vector<int32_t>> passages;
  std::ifstream in(kPassages);
  for (std::string line; passages.size() < 3 && std::getline(in, line);) {
    passages.push_back(
        (*tokenizer)->Encode(nlohmann::json::parse(line)["text"].get<std::string>(), true));
  }
  ASSERT_EQ(passages.size(), 3u);
  const std::vector<int32_t> prompt =
      (*tokenizer)
          ->Encode(knowledge::QuestionPrompt("In which city does Etheth Rulhal live?"), true);

  std::vector<Outputs> runs;
  bool rag_head = false;
  for (Backend* backend : {cpu.get(), cuda->get()}) {
    auto model = Transformer::Load(kBundle, backend);
    ASSERT_TRUE(model.ok()) << model.status();
    auto adapter = Adapter::Load(kBundle + "/adapter", model->get());
    ASSERT_TRUE(adapter.ok()) << adapter.status();
    rag_head = (*adapter)->spec().rag_head;
    Outputs out;
    ASSERT_TRUE((*adapter)->EncodePassages(passages, &out.codes).ok());
    auto question = (*adapter)->EncodeQuestion(prompt);
    ASSERT_TRUE(question.ok()) << question.status();
    out.question = *std::move(question);
    std::vector<std::span<const float>> candidates;
    for (const PassageCode& c : out.codes) candidates.push_back(c.latents);
    for (bool with_text : {false, true}) {
      auto prefix = (*adapter)->Modulate(out.question, candidates, with_text);
      ASSERT_TRUE(prefix.ok()) << prefix.status();
      out.prefixes.push_back(*std::move(prefix));
    }
    runs.push_back(std::move(out));
  }
  const Outputs& want = runs[0];
  const Outputs& got = runs[1];
  // knowd-tiny's base LM is f16: the CPU multiplies its exactly widened weights in fp32, the GPU
  // rounds the activations to f16 for the tensor cores (fp32 accumulation). Simulating that
  // rounding on the CPU moved these outputs by 5e-5 to 3.6e-4 relative; 1e-3 allows for it
  // while a wrong row or layer still moves them by far more.
  constexpr double kTolerance = 1e-3;
  for (size_t i = 0; i < want.codes.size(); ++i) {
    EXPECT_LE(RelativeDiff(got.codes[i].latents, want.codes[i].latents), kTolerance) << i;
    EXPECT_LE(RelativeDiff(got.codes[i].key, want.codes[i].key), kTolerance) << i;
  }
  EXPECT_LE(RelativeDiff(got.question.queries, want.question.queries), kTolerance);
  EXPECT_LE(RelativeDiff(got.question.key, want.question.key), kTolerance);
  for (size_t h = 0; h < want.prefixes.size(); ++h) {
    EXPECT_EQ(got.prefixes[h].rows, want.prefixes[h].rows);
    EXPECT_LE(RelativeDiff(got.prefixes[h].keys, want.prefixes[h].keys), kTolerance) << h;
    EXPECT_LE(RelativeDiff(got.prefixes[h].values, want.prefixes[h].values), kTolerance) << h;
  }
  // With a mac+rag head the two prefixes differ; without one they are the same.
  EXPECT_EQ(want.prefixes[0].values != want.prefixes[1].values, rag_head);
}

}  // namespace
}  // namespace knowd
