// The transformer against an independent float64 implementation of the Llama formulas written
// here (it shares no code with the engine beyond reading the GGUF file), on the real pretrained
// stories260K model, in both checkpoint layouts.
#include "model/transformer.h"

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "model/generate.h"
#include "model/tensor_file.h"
#include "model/tokenizer.h"
#include "tests/float_compare.h"

namespace knowd {
namespace {

using testing::MaxAbsDiff;

const std::string kGguf = std::string(KNOWD_SOURCE_DIR) + "/models/stories260K/stories260K.gguf";
const std::string kHfDir = std::string(KNOWD_SOURCE_DIR) + "/models/stories260K-hf";

// ---- float64 reference -----------------------------------------------------------------------

struct RefModel {
  int dim = 0, layers = 0, heads = 0, kv_heads = 0, hidden = 0, vocab = 0;
  double eps = 0, theta = 0;
  std::vector<double> embed, out_norm, output;
  struct Layer {
    std::vector<double> attn_norm, wq, wk, wv, wo, ffn_norm, w1, w2, w3;
  };
  std::vector<Layer> blk;
};

std::vector<double> ToDouble(const GgufFile& f, const std::string& name) {
  const HostTensor* t = f.Find(name);
  EXPECT_NE(t, nullptr) << name;
  EXPECT_EQ(t->dtype, DType::kF32) << name;
  std::vector<double> out(t->numel());
  const float* p = static_cast<const float*>(t->data);
  for (size_t i = 0; i < out.size(); ++i) out[i] = p[i];
  return out;
}

RefModel LoadRef() {
  auto f = GgufFile::Open(kGguf);
  EXPECT_TRUE(f.ok()) << f.status();
  const GgufFile& g = **f;
  RefModel m;
  m.dim = static_cast<int>(*g.GetInt("llama.embedding_length"));
  m.layers = static_cast<int>(*g.GetInt("llama.block_count"));
  m.heads = static_cast<int>(*g.GetInt("llama.attention.head_count"));
  m.kv_heads = static_cast<int>(*g.GetInt("llama.attention.head_count_kv"));
  m.hidden = static_cast<int>(*g.GetInt("llama.feed_forward_length"));
  m.eps = *g.GetFloat("llama.attention.layer_norm_rms_epsilon");
  auto theta = g.GetFloat("llama.rope.freq_base");
  m.theta = theta.ok() ? *theta : 10000.0;
  m.embed = ToDouble(g, "token_embd.weight");
  m.vocab = static_cast<int>(m.embed.size() / m.dim);
  m.out_norm = ToDouble(g, "output_norm.weight");
  m.output = g.Find("output.weight") ? ToDouble(g, "output.weight") : m.embed;
  for (int l = 0; l < m.layers; ++l) {
    auto n = [&](const char* s) { return "blk." + std::to_string(l) + "." + s; };
    m.blk.push_back({ToDouble(g, n("attn_norm.weight")), ToDouble(g, n("attn_q.weight")),
                     ToDouble(g, n("attn_k.weight")), ToDouble(g, n("attn_v.weight")),
                     ToDouble(g, n("attn_output.weight")), ToDouble(g, n("ffn_norm.weight")),
                     ToDouble(g, n("ffn_gate.weight")), ToDouble(g, n("ffn_down.weight")),
                     ToDouble(g, n("ffn_up.weight"))});
  }
  return m;
}

// y = W x for W [rows, cols] row-major.
std::vector<double> MatVec(const std::vector<double>& w, const std::vector<double>& x, int rows) {
  const int cols = static_cast<int>(x.size());
  std::vector<double> y(rows, 0.0);
  for (int r = 0; r < rows; ++r) {
    for (int c = 0; c < cols; ++c) y[r] += w[static_cast<size_t>(r) * cols + c] * x[c];
  }
  return y;
}

std::vector<double> RmsNorm(const std::vector<double>& x, const std::vector<double>& w,
                            double eps) {
  double ss = 0;
  for (double v : x) ss += v * v;
  const double inv = 1.0 / std::sqrt(ss / x.size() + eps);
  std::vector<double> y(x.size());
  for (size_t i = 0; i < x.size(); ++i) y[i] = x[i] * inv * w[i];
  return y;
}

// Greedy generation with a plain KV cache; GGUF "llama" RoPE rotates adjacent pairs.
std::vector<int> RefGreedy(const RefModel& m, int bos, int steps) {
  const int hd = m.dim / m.heads;
  const int kvd = m.kv_heads * hd;
  std::vector<std::vector<std::vector<double>>> kc(m.layers), vc(m.layers);
  std::vector<int> out;
  int token = bos;
  for (int pos = 0; pos < steps; ++pos) {
    std::vector<double> x(m.embed.begin() + static_cast<size_t>(token) * m.dim,
                          m.embed.begin() + static_cast<size_t>(token + 1) * m.dim);
    for (int l = 0; l < m.layers; ++l) {
      const auto& b = m.blk[l];
      auto h = RmsNorm(x, b.attn_norm, m.eps);
      auto q = MatVec(b.wq, h, m.dim);
      auto k = MatVec(b.wk, h, kvd);
      auto v = MatVec(b.wv, h, kvd);
      auto rotate = [&](std::vector<double>& t, int n_heads) {
        for (int hh = 0; hh < n_heads; ++hh) {
          for (int i = 0; i < hd / 2; ++i) {
            const double freq = std::pow(m.theta, -2.0 * i / hd);
            const double a = pos * freq;
            double& x0 = t[hh * hd + 2 * i];
            double& x1 = t[hh * hd + 2 * i + 1];
            const double r0 = x0 * std::cos(a) - x1 * std::sin(a);
            const double r1 = x0 * std::sin(a) + x1 * std::cos(a);
            x0 = r0;
            x1 = r1;
          }
        }
      };
      rotate(q, m.heads);
      rotate(k, m.kv_heads);
      kc[l].push_back(k);
      vc[l].push_back(v);
      std::vector<double> att(m.dim, 0.0);
      for (int hh = 0; hh < m.heads; ++hh) {
        const int kvh = hh / (m.heads / m.kv_heads);
        std::vector<double> s(pos + 1);
        double mx = -1e300;
        for (int t = 0; t <= pos; ++t) {
          double dot = 0;
          for (int i = 0; i < hd; ++i) dot += q[hh * hd + i] * kc[l][t][kvh * hd + i];
          s[t] = dot / std::sqrt(static_cast<double>(hd));
          mx = std::max(mx, s[t]);
        }
        double sum = 0;
        for (double& e : s) sum += (e = std::exp(e - mx));
        for (int t = 0; t <= pos; ++t) {
          for (int i = 0; i < hd; ++i) att[hh * hd + i] += s[t] / sum * vc[l][t][kvh * hd + i];
        }
      }
      auto o = MatVec(b.wo, att, m.dim);
      for (int i = 0; i < m.dim; ++i) x[i] += o[i];
      h = RmsNorm(x, b.ffn_norm, m.eps);
      auto g = MatVec(b.w1, h, m.hidden);
      auto u = MatVec(b.w3, h, m.hidden);
      for (int i = 0; i < m.hidden; ++i) g[i] = g[i] / (1.0 + std::exp(-g[i])) * u[i];
      auto dn = MatVec(b.w2, g, m.dim);
      for (int i = 0; i < m.dim; ++i) x[i] += dn[i];
    }
    auto logits = MatVec(m.output, RmsNorm(x, m.out_norm, m.eps), m.vocab);
    token = static_cast<int>(std::max_element(logits.begin(), logits.end()) - logits.begin());
    out.push_back(token);
  }
  return out;
}

std::vector<int> EngineGreedy(const std::string& path, int steps) {
  auto backend = MakeCpuBackend();
  auto model = Transformer::Load(path, backend.get());
  EXPECT_TRUE(model.ok()) << model.status();
  auto cache = (*model)->NewCache(steps + 1);
  EXPECT_TRUE(cache.ok());
  GenerateOptions opts;
  opts.max_tokens = steps;
  opts.stop_at_eos = false;
  const int32_t bos = (*model)->config().bos_token_id;
  auto ids = Generate(**model, **cache, std::span(&bos, 1), opts);
  EXPECT_TRUE(ids.ok()) << ids.status();
  return std::vector<int>(ids->begin(), ids->end());
}

constexpr int kSteps = 120;

TEST(TransformerReference, GgufGreedyMatchesFloat64ReferenceTokenForToken) {
  const RefModel ref = LoadRef();
  const std::vector<int> expected = RefGreedy(ref, 1, kSteps);
  const std::vector<int> got = EngineGreedy(kGguf, kSteps);
  ASSERT_EQ(got.size(), expected.size());
  for (int i = 0; i < kSteps; ++i) ASSERT_EQ(got[i], expected[i]) << "token " << i;
}

TEST(TransformerReference, HuggingFaceLayoutGivesTheSameTokens) {
  const RefModel ref = LoadRef();
  const std::vector<int> expected = RefGreedy(ref, 1, kSteps);
  const std::vector<int> got = EngineGreedy(kHfDir, kSteps);
  ASSERT_EQ(got.size(), expected.size());
  for (int i = 0; i < kSteps; ++i) ASSERT_EQ(got[i], expected[i]) << "token " << i;
}

TEST(TransformerReference, GreedyStoryStartsAsPublished) {
  auto tok = LoadTokenizer(kHfDir);
  ASSERT_TRUE(tok.ok()) << tok.status();
  std::vector<int> ids = EngineGreedy(kGguf, 16);
  std::vector<int32_t> ids32(ids.begin(), ids.end());
  EXPECT_EQ((*tok)->Decode(ids32).rfind("Once upon a time, there was a little girl named Lily.", 0),
            0u)
      << (*tok)->Decode(ids32);
}

// ---- prefix injection, batching --------------------------------------------------------------

class TransformerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    backend_ = MakeCpuBackend();
    auto m = Transformer::Load(kGguf, backend_.get());
    ASSERT_TRUE(m.ok()) << m.status();
    model_ = std::move(*m);
  }
  std::unique_ptr<KvCache> Cache(int n = 256) { return *model_->NewCache(n); }
  std::vector<float> Run(KvCache* cache, const std::vector<int32_t>& tokens, bool all = false) {
    std::vector<float> logits;
    SequenceStep step{cache, tokens, all};
    EXPECT_TRUE(model_->Forward(std::span(&step, 1), &logits).ok());
    return logits;
  }
  std::unique_ptr<Backend> backend_;
  std::unique_ptr<Transformer> model_;
};

TEST_F(TransformerTest, PrefixOfRealKeysValuesEqualsRunningThoseTokensInFront) {
  const std::vector<int32_t> front = {1, 403, 407, 261, 378, 6, 300};  // P = 7 tokens
  const std::vector<int32_t> question = {385, 363, 267, 377, 28, 270};
  const int p = static_cast<int>(front.size());
  const int layers = model_->config().num_layers;

  auto full = Cache();
  Run(full.get(), front);
  const std::vector<float> expected = Run(full.get(), question, /*all=*/true);

  // The keys/values the front tokens produced (already rotated at positions 0..P-1).
  std::vector<float> keys, values;
  for (int l = 0; l < layers; ++l) {
    std::vector<float> k, v;
    ASSERT_TRUE(full->ReadRows(l, 0, p, &k, &v).ok());
    keys.insert(keys.end(), k.begin(), k.end());
    values.insert(values.end(), v.begin(), v.end());
  }
  auto injected = Cache();
  ASSERT_TRUE(injected->SetPrefix(keys, values, p).ok());
  EXPECT_EQ(injected->prefix_size(), p);
  const std::vector<float> got = Run(injected.get(), question, /*all=*/true);
  EXPECT_LE(MaxAbsDiff(got, expected), 1e-5f);

  // Without the prefix the answer differs: the check above is not vacuous.
  auto bare = Cache();
  EXPECT_GT(MaxAbsDiff(Run(bare.get(), question, true), expected), 1e-2f);
}

TEST_F(TransformerTest, BatchedPrefillAndDecodeEqualOneSequenceAtATime) {
  const std::vector<std::vector<int32_t>> prompts = {
      {1, 403, 407, 261}, {1, 385, 363, 267, 377, 28, 270, 300, 6}, {1, 50}};
  std::vector<std::vector<float>> single;
  std::vector<std::unique_ptr<KvCache>> single_caches;
  for (const auto& p : prompts) {
    single_caches.push_back(Cache());
    single.push_back(Run(single_caches.back().get(), p));
  }
  std::vector<std::unique_ptr<KvCache>> caches;
  std::vector<SequenceStep> batch;
  for (const auto& p : prompts) {
    caches.push_back(Cache());
    batch.push_back({caches.back().get(), p, false});
  }
  std::vector<float> logits;
  ASSERT_TRUE(model_->Forward(batch, &logits).ok());
  // sgemm blocks differently for a different number of rows, so sums round differently: allow
  // float rounding of logits of magnitude ~10, not more.
  constexpr float kTolerance = 1e-4f;
  const int vocab = model_->config().vocab_size;
  for (size_t s = 0; s < prompts.size(); ++s) {
    std::vector<float> row(logits.begin() + s * vocab, logits.begin() + (s + 1) * vocab);
    EXPECT_LE(MaxAbsDiff(row, single[s]), kTolerance) << "prefill sequence " << s;
  }
  // One batched decode step with a different token per sequence.
  const std::vector<int32_t> next = {300, 6, 407};
  for (size_t s = 0; s < prompts.size(); ++s) {
    batch[s].tokens = std::span(&next[s], 1);
    single[s] = Run(single_caches[s].get(), {next[s]});
  }
  ASSERT_TRUE(model_->Forward(batch, &logits).ok());
  for (size_t s = 0; s < prompts.size(); ++s) {
    std::vector<float> row(logits.begin() + s * vocab, logits.begin() + (s + 1) * vocab);
    EXPECT_LE(MaxAbsDiff(row, single[s]), kTolerance) << "decode sequence " << s;
  }
}

TEST_F(TransformerTest, BadStepsAreRefusedWithoutTouchingTheCache) {
  auto cache = Cache(8);
  std::vector<float> logits;
  const std::vector<int32_t> bad_id = {1, 512};
  SequenceStep step{cache.get(), bad_id, false};
  EXPECT_EQ(model_->Forward(std::span(&step, 1), &logits).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(cache->size(), 0);
  const std::vector<int32_t> too_long(9, 5);
  step.tokens = too_long;
  EXPECT_EQ(model_->Forward(std::span(&step, 1), &logits).code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(cache->size(), 0);
  const std::vector<int32_t> one = {1};
  SequenceStep twice[2] = {{cache.get(), one, false}, {cache.get(), one, false}};
  EXPECT_EQ(model_->Forward(twice, &logits).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(cache->size(), 0);
}

TEST(SamplerTest, GreedyTemperatureAndSeed) {
  const std::vector<float> logits = {0.1f, 2.0f, 1.9f, -3.0f};
  Sampler greedy({});
  EXPECT_EQ(greedy.Sample(logits), 1);
  SamplingOptions hot{1.0f, 1.0f, 42};
  Sampler a(hot), b(hot);
  std::vector<int> counts(4, 0);
  for (int i = 0; i < 2000; ++i) {
    const int x = a.Sample(logits);
    EXPECT_EQ(x, b.Sample(logits));  // same seed, same draws
    counts[x]++;
  }
  EXPECT_GT(counts[2], 600);  // p(2) ≈ 0.45
  EXPECT_GT(counts[0], 50);   // p(0) ≈ 0.07
  Sampler nucleus({1.0f, 0.4f, 7});
  for (int i = 0; i < 200; ++i) EXPECT_EQ(nucleus.Sample(logits), 1);  // top-p keeps only id 1
}

}  // namespace
}  // namespace knowd
