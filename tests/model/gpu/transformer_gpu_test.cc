// The whole transformer on CUDA gives the CPU backend's logits and greedy tokens.
#include <cmath>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "model/generate.h"
#include "model/transformer.h"

namespace knowd {
namespace {

const std::string kGguf = std::string(KNOWD_SOURCE_DIR) + "/models/stories260K/stories260K.gguf";

TEST(TransformerGpu, LogitsAndGreedyTokensMatchTheCpu) {
  if (!CudaAvailable()) GTEST_SKIP() << "no CUDA device";
  auto cuda = MakeCudaBackend(0);
  ASSERT_TRUE(cuda.ok()) << cuda.status();
  auto cpu = MakeCpuBackend(CpuOptions{.int8_activations = false});  // as the GPU: exact products
  std::vector<std::vector<float>> logits;
  std::vector<std::vector<int32_t>> tokens;
  for (Backend* backend : {cpu.get(), cuda->get()}) {
    auto model = Transformer::Load(kGguf, backend);
    ASSERT_TRUE(model.ok()) << model.status();
    auto cache = (*model)->NewCache(128);
    ASSERT_TRUE(cache.ok());
    const std::vector<int32_t> prompt = {1, 403, 407, 261, 378, 6, 300, 385, 363, 267};
    SequenceStep step{cache->get(), prompt, true};
    std::vector<float> out;
    ASSERT_TRUE((*model)->Forward(std::span(&step, 1), &out).ok());
    logits.push_back(out);
    (*cache)->Clear();
    GenerateOptions options;
    options.max_tokens = 60;
    options.stop_at_eos = false;
    const int32_t bos = 1;
    auto ids = Generate(**model, **cache, std::span(&bos, 1), options);
    ASSERT_TRUE(ids.ok()) << ids.status();
    tokens.push_back(*ids);
  }
  ASSERT_EQ(logits[0].size(), logits[1].size());
  float max_diff = 0;
  for (size_t i = 0; i < logits[0].size(); ++i) {
    max_diff = std::max(max_diff, std::abs(logits[0][i] - logits[1][i]));
  }
  EXPECT_LE(max_diff, 1e-3f);  // fp32 on both; only summation order differs
  EXPECT_EQ(tokens[0], tokens[1]);
}

}  // namespace
}  // namespace knowd
