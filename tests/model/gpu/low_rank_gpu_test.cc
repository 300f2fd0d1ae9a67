// The factored low-rank update (model/low_rank.h) on CUDA gives the CPU backend's logits: a random
// Llama with factors at every projection, a batch of sequences with different states and one
// without, and MergeLowRank into f32 weights.
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "model/low_rank.h"
#include "model/transformer.h"
#include "tests/float_compare.h"
#include "tests/model/formats_test_util.h"
#include "tests/model/random_llama.h"

namespace knowd {
namespace {

using testing::MaxAbsDiff;

TEST(LowRankGpu, FactoredBatchAndMergeMatchTheCpu) {
  if (!CudaAvailable()) GTEST_SKIP() << "no CUDA device";
  auto cuda = MakeCudaBackend(0);
  ASSERT_TRUE(cuda.ok()) << cuda.status();
  auto cpu = MakeCpuBackend(CpuOptions{.int8_activations = false});  // as the GPU: exact products
  const testing::RandomLlama llama = testing::RandomLlama::Make(11);
  const std::vector<LowRankSite> sites = {{0, Projection::kQkv},
                                          {0, Projection::kDown},
                                          {1, Projection::kO},
                                          {1, Projection::kGate},
                                          {1, Projection::kUp}};
  const testing::RandomLowRank host = testing::RandomLowRank::Make(llama, 4, 3, sites, 12);
  testing::ScratchDir scratch;
  const std::string dir = scratch.File("model");
  std::filesystem::create_directories(dir);
  ASSERT_TRUE(llama.Write(dir).ok());

  const std::vector<std::vector<int32_t>> prompts = {
      {1, 5, 9, 13}, {1, 40, 41, 42, 43, 44, 45}, {1, 63}, {1, 7, 7, 30}};
  std::vector<std::vector<float>> batched, merged;
  for (Backend* backend : {cpu.get(), cuda->get()}) {
    auto model = Transformer::Load(dir, backend);
    ASSERT_TRUE(model.ok()) << model.status();
    auto factors = LowRankFactors::Create(model->get(), host.rank, host.rank_out, host.sites,
                                          host.w2, host.w1);
    ASSERT_TRUE(factors.ok()) << factors.status();
    std::vector<std::unique_ptr<LowRankState>> states;
    for (uint64_t seed : {21, 22, 23}) {
      auto s = LowRankState::Create(factors->get(), host.RandomState(seed));
      ASSERT_TRUE(s.ok()) << s.status();
      states.push_back(std::move(*s));
    }
    const LowRankState* updates[] = {states[0].get(), states[1].get(), nullptr, states[2].get()};
    std::vector<std::unique_ptr<KvCache>> caches;
    std::vector<SequenceStep> batch;
    for (size_t s = 0; s < prompts.size(); ++s) {
      caches.push_back(*(*model)->NewCache(32));
      batch.push_back({caches.back().get(), prompts[s], true, updates[s]});
    }
    std::vector<float> logits;
    ASSERT_TRUE((*model)->Forward(batch, &logits).ok());
    std::vector<float> next;
    const int32_t token[] = {3, 4, 5, 6};
    for (size_t s = 0; s < prompts.size(); ++s) batch[s].tokens = std::span(&token[s], 1);
    ASSERT_TRUE((*model)->Forward(batch, &next).ok());
    logits.insert(logits.end(), next.begin(), next.end());
    batched.push_back(logits);

    ASSERT_TRUE((*model)->MergeLowRank(*states[1]).ok());
    auto cache = (*model)->NewCache(32);
    SequenceStep step{cache->get(), prompts[1], true, nullptr};
    ASSERT_TRUE((*model)->Forward(std::span(&step, 1), &logits).ok());
    merged.push_back(logits);
    ASSERT_TRUE(backend->status().ok()) << backend->status();
  }
  EXPECT_LE(MaxAbsDiff(batched[0], batched[1]), 1e-3f);  // fp32 on both; summation order differs
  EXPECT_LE(MaxAbsDiff(merged[0], merged[1]), 1e-3f);
}

}  // namespace
}  // namespace knowd
