// Low-rank weight updates (model/low_rank.h) on a small random Llama: the factored update in
// Forward against a model whose weights were replaced on the host by W + W1 · hᵀ · W2 (computed
// in double here), batching of sequences with different states and none, MergeLowRank, and the
// refusals.
#include "model/low_rank.h"

#include <algorithm>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "model/convert.h"
#include "model/transformer.h"
#include "tests/float_compare.h"
#include "tests/model/formats_test_util.h"
#include "tests/model/random_llama.h"

namespace knowd {
namespace {

using testing::MaxAbsDiff;
using testing::RandomLlama;
using testing::RandomLowRank;
using testing::ScratchDir;

// Every projection, in both layers.
const std::vector<LowRankSite> kSites = {{0, Projection::kQkv}, {0, Projection::kDown},
                                         {1, Projection::kO},   {1, Projection::kGate},
                                         {1, Projection::kUp},  {0, Projection::kUp}};

const std::vector<int32_t> kPrompt = {1, 17, 42, 5, 33, 60, 8};

class LowRankTest : public ::testing::Test {
 protected:
  void SetUp() override {
    llama_ = RandomLlama::Make(11);
    factors_host_ = RandomLowRank::Make(llama_, 4, 3, kSites, 12);
    backend_ = MakeCpuBackend(CpuOptions{.threads = 2, .int8_activations = false});
  }

  std::unique_ptr<Transformer> Load(const RandomLlama& m, const std::string& name) {
    const std::string dir = scratch_.File(name);
    std::filesystem::create_directories(dir);
    EXPECT_TRUE(m.Write(dir).ok());
    auto model = Transformer::Load(dir, backend_.get());
    EXPECT_TRUE(model.ok()) << model.status();
    return model.ok() ? std::move(*model) : nullptr;
  }

  std::unique_ptr<LowRankFactors> Factors(Transformer* model) {
    auto f = LowRankFactors::Create(model, factors_host_.rank, factors_host_.rank_out,
                                    factors_host_.sites, factors_host_.w2, factors_host_.w1);
    EXPECT_TRUE(f.ok()) << f.status();
    return f.ok() ? std::move(*f) : nullptr;
  }

  static std::unique_ptr<LowRankState> State(const LowRankFactors* f, const std::vector<float>& h) {
    auto s = LowRankState::Create(f, h);
    EXPECT_TRUE(s.ok()) << s.status();
    return s.ok() ? std::move(*s) : nullptr;
  }

  // Logits of every token of `tokens` (a fresh cache), then of one decoded token after them.
  static std::vector<float> Run(Transformer* model, const std::vector<int32_t>& tokens,
                                const LowRankState* update) {
    auto cache = model->NewCache(32);
    EXPECT_TRUE(cache.ok());
    std::vector<float> logits, next;
    SequenceStep step{cache->get(), tokens, true, update};
    EXPECT_TRUE(model->Forward(std::span(&step, 1), &logits).ok());
    const int32_t token = 9;
    step.tokens = std::span(&token, 1);
    EXPECT_TRUE(model->Forward(std::span(&step, 1), &next).ok());
    logits.insert(logits.end(), next.begin(), next.end());
    return logits;
  }

  ScratchDir scratch_;
  RandomLlama llama_;
  RandomLowRank factors_host_;
  std::unique_ptr<Backend> backend_;
};

TEST(ProjectionTest, NamesRoundTripAndUnknownNamesAreRefused) {
  for (Projection p :
       {Projection::kQkv, Projection::kO, Projection::kGate, Projection::kUp, Projection::kDown}) {
    auto parsed = ParseProjection(ProjectionName(p));
    ASSERT_TRUE(parsed.ok()) << ProjectionName(p);
    EXPECT_EQ(*parsed, p);
  }
  EXPECT_EQ(ProjectionName(Projection::kQkv), "qkv");
  EXPECT_EQ(ProjectionName(Projection::kDown), "down");
  auto bad = ParseProjection("k_proj");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("qkv, o, gate, up, down"), std::string::npos)
      << bad.status();
}

// (a) The factored update equals the weights W + W1 · hᵀ · W2 written into the checkpoint.
TEST_F(LowRankTest, FactoredUpdateEqualsWeightsReplacedOnTheHost) {
  auto model = Load(llama_, "base");
  auto factors = Factors(model.get());
  ASSERT_NE(factors, nullptr);
  EXPECT_EQ(factors->state_floats(), 6 * 4 * 3);
  const std::vector<float> h = factors_host_.RandomState(13);
  auto state = State(factors.get(), h);
  ASSERT_NE(state, nullptr);
  EXPECT_EQ(state->bytes(), 6 * 4 * 3 * 4);

  const std::vector<float> factored = Run(model.get(), kPrompt, state.get());
  auto replaced = Load(factors_host_.Apply(llama_, h), "replaced");
  const std::vector<float> expected = Run(replaced.get(), kPrompt, nullptr);
  ASSERT_EQ(factored.size(), expected.size());
  EXPECT_LE(MaxAbsDiff(factored, expected), 1e-4f);
  // The update matters: without it the logits are far off.
  EXPECT_GT(MaxAbsDiff(Run(model.get(), kPrompt, nullptr), expected), 0.1f);

  // Each projection on its own, so a site applied at the wrong place cannot hide behind others.
  for (size_t i = 0; i < kSites.size(); ++i) {
    std::vector<float> only(h.size(), 0.0f);
    const int64_t per = factors->rank() * factors->rank_out();
    std::copy(h.begin() + i * per, h.begin() + (i + 1) * per, only.begin() + i * per);
    auto one = State(factors.get(), only);
    auto ref = Load(factors_host_.Apply(llama_, only), "site" + std::to_string(i));
    const std::vector<float> want = Run(ref.get(), kPrompt, nullptr);
    EXPECT_LE(MaxAbsDiff(Run(model.get(), kPrompt, one.get()), want), 1e-4f)
        << ProjectionName(kSites[i].projection);
    EXPECT_GT(MaxAbsDiff(Run(model.get(), kPrompt, nullptr), want), 1e-3f)
        << ProjectionName(kSites[i].projection);
  }
}

// (b) Sequences with different states (one state twice) and one without batch together.
TEST_F(LowRankTest, BatchWithDifferentStatesEqualsEachSequenceAlone) {
  auto model = Load(llama_, "base");
  auto factors = Factors(model.get());
  ASSERT_NE(factors, nullptr);
  std::vector<std::unique_ptr<LowRankState>> states;
  for (uint64_t seed : {21, 22, 23}) {
    states.push_back(State(factors.get(), factors_host_.RandomState(seed)));
  }
  const std::vector<std::vector<int32_t>> prompts = {
      {1, 5, 9, 13}, {1, 40, 41, 42, 43, 44, 45, 46, 47}, {1, 63}, {1, 7, 7, 7, 30}, {1, 5, 9, 13}};
  const std::vector<const LowRankState*> updates = {states[0].get(), states[1].get(),
                                                    states[2].get(), nullptr, states[0].get()};
  const int vocab = model->config().vocab_size;

  std::vector<std::vector<float>> alone;
  std::vector<std::unique_ptr<KvCache>> alone_caches;
  for (size_t s = 0; s < prompts.size(); ++s) {
    alone_caches.push_back(*model->NewCache(32));
    SequenceStep step{alone_caches.back().get(), prompts[s], false, updates[s]};
    std::vector<float> logits;
    ASSERT_TRUE(model->Forward(std::span(&step, 1), &logits).ok());
    alone.push_back(logits);
  }
  auto run_batch = [&](bool with_updates, std::vector<std::unique_ptr<KvCache>>* caches) {
    std::vector<SequenceStep> batch;
    for (size_t s = 0; s < prompts.size(); ++s) {
      caches->push_back(*model->NewCache(32));
      batch.push_back(
          {caches->back().get(), prompts[s], false, with_updates ? updates[s] : nullptr});
    }
    std::vector<float> logits;
    EXPECT_TRUE(model->Forward(batch, &logits).ok());
    return std::pair{logits, batch};
  };
  std::vector<std::unique_ptr<KvCache>> caches, plain_caches;
  auto [logits, batch] = run_batch(true, &caches);
  auto [plain, plain_batch] = run_batch(false, &plain_caches);
  ASSERT_EQ(logits.size(), prompts.size() * vocab);
  for (size_t s = 0; s < prompts.size(); ++s) {
    const std::vector<float> row(logits.begin() + s * vocab, logits.begin() + (s + 1) * vocab);
    EXPECT_LE(MaxAbsDiff(row, alone[s]), 1e-5f) << "prefill sequence " << s;
  }
  // The stateless sequence is bit for bit what the same batch gives without any update; the
  // others are not.
  const size_t none = 3;
  for (int v = 0; v < vocab; ++v) {
    ASSERT_EQ(logits[none * vocab + v], plain[none * vocab + v]) << v;
  }
  EXPECT_GT(MaxAbsDiff(std::vector<float>(logits.begin(), logits.begin() + vocab),
                       std::vector<float>(plain.begin(), plain.begin() + vocab)),
            1e-2f);

  // One batched decode step.
  const std::vector<int32_t> next = {3, 4, 5, 6, 3};
  for (size_t s = 0; s < prompts.size(); ++s) {
    batch[s].tokens = std::span(&next[s], 1);
    plain_batch[s].tokens = std::span(&next[s], 1);
    SequenceStep step{alone_caches[s].get(), std::span(&next[s], 1), false, updates[s]};
    ASSERT_TRUE(model->Forward(std::span(&step, 1), &alone[s]).ok());
  }
  ASSERT_TRUE(model->Forward(batch, &logits).ok());
  ASSERT_TRUE(model->Forward(plain_batch, &plain).ok());
  for (size_t s = 0; s < prompts.size(); ++s) {
    const std::vector<float> row(logits.begin() + s * vocab, logits.begin() + (s + 1) * vocab);
    EXPECT_LE(MaxAbsDiff(row, alone[s]), 1e-5f) << "decode sequence " << s;
  }
  for (int v = 0; v < vocab; ++v) {
    ASSERT_EQ(logits[none * vocab + v], plain[none * vocab + v]) << v;
  }
}

// (c) Merging the state into the weights, then running without it, gives the factored logits.
TEST_F(LowRankTest, MergeIntoF32WeightsEqualsFactored) {
  auto model = Load(llama_, "base");
  auto merged = Load(llama_, "merged");
  auto factors = Factors(model.get());
  auto merged_factors = Factors(merged.get());
  const std::vector<float> h = factors_host_.RandomState(31);
  auto state = State(factors.get(), h);
  auto merged_state = State(merged_factors.get(), h);
  const std::vector<float> factored = Run(model.get(), kPrompt, state.get());
  ASSERT_TRUE(merged->MergeLowRank(*merged_state).ok());
  EXPECT_LE(MaxAbsDiff(Run(merged.get(), kPrompt, nullptr), factored), 1e-4f);
  EXPECT_GT(MaxAbsDiff(Run(model.get(), kPrompt, nullptr), factored), 0.1f);
  // A state of another model is refused.
  EXPECT_EQ(merged->MergeLowRank(*state).code(), absl::StatusCode::kFailedPrecondition);
}

// f16 weights (false), or f16 with v in bf16 (true) so that the stacked qkv is held as three
// matrices of two types.
class LowRankHalfTest : public LowRankTest, public ::testing::WithParamInterface<bool> {};

TEST_P(LowRankHalfTest, MergeIntoHalfWeightsEqualsFactored) {
  const bool bf16_v = GetParam();
  auto dtype_of = [&](const std::string& name) {
    return bf16_v && name.find("v_proj") != std::string::npos ? DType::kBF16 : DType::kF16;
  };
  auto load = [&](const RandomLlama& m, const std::string& name) {
    const std::string dir = scratch_.File(name);
    std::filesystem::create_directories(dir);
    EXPECT_TRUE(m.Write(dir, dtype_of).ok());
    auto model = Transformer::Load(dir, backend_.get());
    EXPECT_TRUE(model.ok()) << model.status();
    return std::move(*model);
  };
  auto model = load(llama_, "half");
  auto merged = load(llama_, "half_merged");
  EXPECT_EQ(model->WeightTypes(), bf16_v ? "bf16, f16" : "f16");
  auto factors = Factors(model.get());
  auto merged_factors = Factors(merged.get());
  const std::vector<float> h = factors_host_.RandomState(32);
  auto state = State(factors.get(), h);
  auto merged_state = State(merged_factors.get(), h);
  const std::vector<float> factored = Run(model.get(), kPrompt, state.get());
  ASSERT_TRUE(merged->MergeLowRank(*merged_state).ok());
  const std::vector<float> got = Run(merged.get(), kPrompt, nullptr);
  // The merged weights are W + W1 · hᵀ · W2 rounded to the weights' types, as the host rounds
  // them. Where a sum falls between two values of its type, the engine's order of summation (its
  // BLAS kernels differ by CPU) can round it the other way: one step of one weight, which moves
  // the logits by about 1e-5, far inside the type's own rounding below. So the logits agree to
  // 1e-4, not bit for bit.
  RandomLlama sum = llama_;
  sum.RoundTo(dtype_of);
  sum = factors_host_.Apply(sum, h);
  auto reference = load(sum, "half_reference");
  EXPECT_LE(MaxAbsDiff(got, Run(reference.get(), kPrompt, nullptr)), 1e-4f);
  // The factored update adds to the unrounded sum, so the two differ by that one rounding of the
  // weights to their type: no more than a few times what rounding the f32 base to the type moves
  // its logits by (measured with these seeds: 3.2e-3 against 3.5e-3 for f16, 1.8e-2 against
  // 8.8e-3 with v in bf16). An f16 merge cannot come within 1e-4 of the factored logits.
  const float type_rounding = MaxAbsDiff(Run(model.get(), kPrompt, nullptr),
                                         Run(Load(llama_, "f32").get(), kPrompt, nullptr));
  EXPECT_LE(MaxAbsDiff(got, factored), 3 * type_rounding);
  EXPECT_GT(type_rounding, 1e-4f);
  EXPECT_GT(MaxAbsDiff(Run(model.get(), kPrompt, nullptr), factored), 0.1f);
}

INSTANTIATE_TEST_SUITE_P(F16AndBF16, LowRankHalfTest, ::testing::Values(false, true),
                         [](const auto& info) { return info.param ? "BF16V" : "F16"; });

// (d) Refusals.
TEST_F(LowRankTest, BadFactorsAndStatesAreRefused) {
  auto model = Load(llama_, "base");
  const RandomLowRank& f = factors_host_;
  auto create = [&](int rank, int rank_out, std::vector<LowRankSite> sites,
                    const std::vector<std::vector<float>>& w2,
                    const std::vector<std::vector<float>>& w1) {
    return LowRankFactors::Create(model.get(), rank, rank_out, std::move(sites), w2, w1).status();
  };
  // A w2 of the wrong size, named by its site.
  std::vector<std::vector<float>> w2 = f.w2;
  w2[2].pop_back();
  absl::Status s = create(f.rank, f.rank_out, f.sites, w2, f.w1);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("layer 1, o"), std::string::npos) << s;
  // A w1 sized for another projection.
  std::vector<std::vector<float>> w1 = f.w1;
  w1[1] = f.w1[0];  // qkv's [56, 3] for down's [32, 3]
  EXPECT_EQ(create(f.rank, f.rank_out, f.sites, f.w2, w1).code(),
            absl::StatusCode::kInvalidArgument);
  // A layer out of range, a site twice, ranks out of range, too few factors.
  std::vector<LowRankSite> sites = f.sites;
  sites[0].layer = 2;
  s = create(f.rank, f.rank_out, sites, f.w2, f.w1);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("layer 2"), std::string::npos) << s;
  sites = f.sites;
  sites[5] = sites[4];
  EXPECT_EQ(create(f.rank, f.rank_out, sites, f.w2, f.w1).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(create(0, f.rank_out, f.sites, f.w2, f.w1).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(create(f.rank, 257, f.sites, f.w2, f.w1).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(
      create(f.rank, f.rank_out, f.sites, std::vector(f.w2.begin(), f.w2.end() - 1), f.w1).code(),
      absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(create(f.rank, f.rank_out, f.sites, f.w2, f.w1).ok());

  // States of the wrong size.
  auto factors = Factors(model.get());
  std::vector<float> h = f.RandomState(41);
  h.push_back(0.0f);
  EXPECT_EQ(LowRankState::Create(factors.get(), h).status().code(),
            absl::StatusCode::kInvalidArgument);
  h.resize(h.size() - 2);
  auto state = State(factors.get(), f.RandomState(41));
  EXPECT_EQ(state->Set(h).code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(LowRankTest, ForeignAndMixedFactorsInABatchAreRefusedWithoutTouchingCaches) {
  auto model = Load(llama_, "base");
  auto other = Load(llama_, "other");
  auto factors = Factors(model.get());
  auto second = Factors(model.get());
  auto foreign = Factors(other.get());
  const std::vector<float> h = factors_host_.RandomState(51);
  auto a = State(factors.get(), h);
  auto b = State(second.get(), h);
  auto c = State(foreign.get(), h);
  auto cache1 = *model->NewCache(16);
  auto cache2 = *model->NewCache(16);
  std::vector<float> logits;
  SequenceStep step{cache1.get(), kPrompt, false, c.get()};
  absl::Status s = model->Forward(std::span(&step, 1), &logits);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_EQ(cache1->size(), 0);
  SequenceStep mixed[2] = {{cache1.get(), kPrompt, false, a.get()},
                           {cache2.get(), kPrompt, false, b.get()}};
  s = model->Forward(mixed, &logits);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_EQ(cache1->size(), 0);
  EXPECT_EQ(cache2->size(), 0);
  // The same two with one factors run.
  mixed[1].update = a.get();
  EXPECT_TRUE(model->Forward(mixed, &logits).ok());
}

TEST_F(LowRankTest, MergeIntoQ8_0WeightsIsRefusedNamingTheType) {
  const std::string dir = scratch_.File("f32");
  std::filesystem::create_directories(dir);
  ASSERT_TRUE(llama_.Write(dir).ok());
  const std::string gguf = scratch_.File("q8_0.gguf");
  ASSERT_TRUE(ConvertModel(dir, gguf, DType::kQ8_0).ok());
  auto model = Transformer::Load(gguf, backend_.get());
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ((*model)->WeightTypes(), "q8_0");
  auto factors = Factors(model->get());
  auto state = State(factors.get(), factors_host_.RandomState(61));
  const std::vector<float> before = Run(model->get(), kPrompt, nullptr);
  absl::Status s = (*model)->MergeLowRank(*state);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_NE(s.message().find("q8_0"), std::string::npos) << s;
  EXPECT_EQ(Run(model->get(), kPrompt, nullptr), before);  // nothing changed
  // The factored update still runs on quantized weights.
  EXPECT_GT(MaxAbsDiff(Run(model->get(), kPrompt, state.get()), before), 0.1f);
}

// (e) A zero state changes nothing; Set replaces the values.
TEST_F(LowRankTest, ZeroStateChangesNothingAndSetReplacesValues) {
  auto model = Load(llama_, "base");
  auto factors = Factors(model.get());
  const std::vector<float> base = Run(model.get(), kPrompt, nullptr);
  auto state = State(factors.get(), std::vector<float>(factors->state_floats(), 0.0f));
  EXPECT_EQ(Run(model.get(), kPrompt, state.get()), base);
  const std::vector<float> h = factors_host_.RandomState(71);
  ASSERT_TRUE(state->Set(h).ok());
  const std::vector<float> updated = Run(model.get(), kPrompt, state.get());
  EXPECT_GT(MaxAbsDiff(updated, base), 0.1f);
  auto fresh = State(factors.get(), h);
  EXPECT_EQ(Run(model.get(), kPrompt, fresh.get()), updated);
  ASSERT_TRUE(state->Set(std::vector<float>(factors->state_floats(), 0.0f)).ok());
  EXPECT_EQ(Run(model.get(), kPrompt, state.get()), base);
}

}  // namespace
}  // namespace knowd
