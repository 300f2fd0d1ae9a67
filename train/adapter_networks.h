// Private to train/ (not an interface): the adapter's libtorch networks behind train/adapter.h,
// and Adapter::Impl, shared by the adapter's three translation units:
//   adapter_networks.cc  the networks' helpers, creating and initialising them, running them as the
//                        engine does (Prefix, TraceForTest)
//   adapter_trainer.cc   the data rows and batching, the training step, scoring, checkpoints and
//                        `knowd-train adapter` (RunAdapterTraining)
//   adapter_export.cc    writing adapter.json + adapter.safetensors for the engine, and reading
//                        them back
// Nothing else includes it: everything else uses train/adapter.h, which stays free of libtorch.
#pragma once

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "train/adapter.h"
#include "train/lm_torch.h"

namespace knowd::train {
namespace adapter_internal {

using internal::TrunkStates;

torch::Tensor RmsNormalize(const torch::Tensor& x);

struct NormImpl : torch::nn::Module {
  explicit NormImpl(int64_t dim) { weight = register_parameter("weight", torch::ones({dim})); }
  torch::Tensor forward(const torch::Tensor& x) { return weight * RmsNormalize(x); }
  torch::Tensor weight;
};
TORCH_MODULE(Norm);

torch::nn::Linear Linear(int64_t in, int64_t out, bool bias = false);

// Pre-norm cross-attention + MLP block: x attends to a memory; with `conditioned`, the queries
// also see a per-slot condition (the question's tokens in the aggregator).
struct CrossBlockImpl : torch::nn::Module {
  CrossBlockImpl(int64_t d, int64_t heads, int64_t mlp_ratio, bool conditioned) : heads(heads) {
    norm_x = register_module("norm_x", Norm(d));
    norm_memory = register_module("norm_memory", Norm(d));
    if (conditioned) norm_condition = register_module("norm_condition", Norm(d));
    q = register_module("q", Linear(d, d));
    k = register_module("k", Linear(d, d));
    v = register_module("v", Linear(d, d));
    o = register_module("o", Linear(d, d));
    norm_mlp = register_module("norm_mlp", Norm(d));
    up = register_module("up", Linear(d, d * mlp_ratio));
    down = register_module("down", Linear(d * mlp_ratio, d));
  }
  // x [B, T, d]; memory [B, N, d]; valid [B, N] bool (undefined: all); condition [B, T, d].
  torch::Tensor forward(torch::Tensor x, const torch::Tensor& memory, const torch::Tensor& valid,
                        const torch::Tensor& condition) {
    const int64_t b = x.size(0), t = x.size(1), n = memory.size(1), d = x.size(2);
    const int64_t hd = d / heads;
    auto h = norm_x(x);
    if (condition.defined() && !norm_condition.is_empty()) h = h + norm_condition(condition);
    auto m = norm_memory(memory);
    auto qh = q(h).view({b, t, heads, hd}).transpose(1, 2);
    auto kh = k(m).view({b, n, heads, hd}).transpose(1, 2);
    auto vh = v(m).view({b, n, heads, hd}).transpose(1, 2);
    auto scores = torch::matmul(qh, kh.transpose(-2, -1)) / std::sqrt(double(hd));
    if (valid.defined()) {
      scores = scores.masked_fill(valid.logical_not().view({b, 1, 1, n}),
                                  -std::numeric_limits<float>::infinity());
    }
    auto out = torch::matmul(torch::softmax(scores, -1), vh).transpose(1, 2).reshape({b, t, d});
    x = x + o(out);
    return x + down(torch::gelu(up(norm_mlp(x))));
  }
  int64_t heads;
  Norm norm_x{nullptr}, norm_memory{nullptr}, norm_condition{nullptr}, norm_mlp{nullptr};
  torch::nn::Linear q{nullptr}, k{nullptr}, v{nullptr}, o{nullptr}, up{nullptr}, down{nullptr};
};
TORCH_MODULE(CrossBlock);

// Sum over layers of a learned projection of each (normalised) hidden state: the memory the
// readout blocks attend to.
struct LayerMixImpl : torch::nn::Module {
  LayerMixImpl(int64_t layers, int64_t hidden, int64_t d) {
    proj = register_module("proj", torch::nn::ModuleList());
    for (int64_t l = 0; l < layers; ++l) proj->push_back(Linear(hidden, d));
  }
  torch::Tensor forward(const std::vector<torch::Tensor>& hidden) {
    torch::Tensor sum;
    for (size_t l = 0; l < hidden.size(); ++l) {
      auto y = proj[l]->as<torch::nn::Linear>()->forward(RmsNormalize(hidden[l]));
      sum = sum.defined() ? sum + y : y;
    }
    return sum;
  }
  torch::nn::ModuleList proj{nullptr};
};
TORCH_MODULE(LayerMix);

struct Sizes {
  int64_t layers, kv_heads, head_dim, hidden, slots, d, key_dim, heads, mlp_ratio;
  double rope_theta;
  int64_t rows_per_slot;
  int64_t kv_width() const { return layers * 2 * kv_heads * head_dim; }  // one pooled slot
  int64_t prefix_rows() const { return 1 + slots * rows_per_slot; }
};

// x [N, ..., head_dim] rotated by RoPE(positions[i]) along its first dimension (positions: [N]
// doubles, or one for all), in Hugging Face's rotate_half pairing, as the LM.
torch::Tensor RotateHalf(const torch::Tensor& x, const torch::Tensor& positions, const Sizes& s);

// The amortizer: passage states -> latents Z [B, T, d] and keys [B, key_dim].
struct ReadoutImpl : torch::nn::Module {
  ReadoutImpl(const Sizes& s, int blocks_n) : s(s) {
    pool_queries = register_parameter("pool_queries",
                                      torch::randn({s.layers, s.kv_heads, s.slots, s.head_dim}));
    compress = register_module("compress", Linear(s.kv_width(), s.d, true));
    mix = register_module("mix", LayerMix(s.layers, s.hidden, s.d));
    blocks = register_module("blocks", torch::nn::ModuleList());
    for (int i = 0; i < blocks_n; ++i)
      blocks->push_back(CrossBlock(s.d, s.heads, s.mlp_ratio, false));
    key = register_module("key", Linear(s.d, s.key_dim));
  }
  // Per layer and kv head, the slots' learned queries attend over the passage's keys; the pooled
  // keys and values of all layers, [B, T, layers * 2 * kv_dim] (layer-major, keys then values).
  //
  // The pooled keys are then rotated by RoPE(P - n), n = the passage's tokens with BOS: a key
  // the passage produced at position j sits at j - n + P, so the question tokens (at P + 1 + m
  // after the prefix) see it at the distance they would see it at with the passage in context
  // (at n + 1 + m) — the teacher's geometry, never a key "from the future".
  torch::Tensor Pool(const TrunkStates& st, const torch::Tensor& valid) {
    std::vector<torch::Tensor> parts;
    const auto masked = valid.logical_not().unsqueeze(1).unsqueeze(1);  // [B, 1, 1, N]
    const auto n = valid.sum(1).to(torch::kFloat64) + 1;                // BOS is not valid
    for (int64_t l = 0; l < s.layers; ++l) {
      auto k = st.keys[l].transpose(1, 2);    // [B, kvh, N, hd]
      auto v = st.values[l].transpose(1, 2);  // [B, kvh, N, hd]
      auto scores = torch::matmul(pool_queries[l].unsqueeze(0), k.transpose(-2, -1)) /
                    std::sqrt(double(s.head_dim));  // [B, kvh, T, N]
      auto a = torch::softmax(scores.masked_fill(masked, -1e9), -1);
      auto pk = RotateHalf(torch::matmul(a, k), double(s.slots) - n, s);  // [B, kvh, T, hd]
      pk = pk.transpose(1, 2);                                            // [B, T, kvh, hd]
      auto pv = torch::matmul(a, v).transpose(1, 2);
      parts.push_back(pk.flatten(2));
      parts.push_back(pv.flatten(2));
    }
    return torch::cat(parts, -1);
  }
  std::pair<torch::Tensor, torch::Tensor> forward(const TrunkStates& st,
                                                  const torch::Tensor& valid) {
    auto z = compress(Pool(st, valid));
    auto memory = mix(st.hidden);
    for (const auto& block : *blocks) z = block->as<CrossBlock>()->forward(z, memory, valid, {});
    return {
        z, torch::nn::functional::normalize(key(RmsNormalize(z.mean(1))),
                                            torch::nn::functional::NormalizeFuncOptions().dim(-1))};
  }
  Sizes s;
  torch::Tensor pool_queries;
  torch::nn::Linear compress{nullptr}, key{nullptr};
  LayerMix mix{nullptr};
  torch::nn::ModuleList blocks{nullptr};
};
TORCH_MODULE(Readout);

// The question encoder: question states -> Q [B, T, d] and keys [B, key_dim].
struct QuestionEncoderImpl : torch::nn::Module {
  QuestionEncoderImpl(const Sizes& s, int blocks_n) {
    queries = register_parameter("queries", torch::randn({s.slots, s.d}));
    mix = register_module("mix", LayerMix(s.layers, s.hidden, s.d));
    blocks = register_module("blocks", torch::nn::ModuleList());
    for (int i = 0; i < blocks_n; ++i)
      blocks->push_back(CrossBlock(s.d, s.heads, s.mlp_ratio, false));
    key = register_module("key", Linear(s.d, s.key_dim));
  }
  std::pair<torch::Tensor, torch::Tensor> forward(const TrunkStates& st,
                                                  const torch::Tensor& valid) {
    auto memory = mix(st.hidden);
    auto x = queries.unsqueeze(0).expand({memory.size(0), -1, -1});
    for (const auto& block : *blocks) x = block->as<CrossBlock>()->forward(x, memory, valid, {});
    return {
        x, torch::nn::functional::normalize(key(RmsNormalize(x.mean(1))),
                                            torch::nn::functional::NormalizeFuncOptions().dim(-1))};
  }
  torch::Tensor queries;
  LayerMix mix{nullptr};
  torch::nn::ModuleList blocks{nullptr};
  torch::nn::Linear key{nullptr};
};
TORCH_MODULE(QuestionEncoder);

// Q and the candidates' latents -> A [B, T, d].
struct AggregatorImpl : torch::nn::Module {
  AggregatorImpl(const Sizes& s, int blocks_n, int max_candidates) {
    rank = register_module("rank", torch::nn::Embedding(max_candidates, s.d));
    score = register_module("score", Linear(1, s.d));
    blocks = register_module("blocks", torch::nn::ModuleList());
    for (int i = 0; i < blocks_n; ++i)
      blocks->push_back(CrossBlock(s.d, s.heads, s.mlp_ratio, true));
  }
  // q [B, T, d]; z [B, K, T, d]; scores [B, K] (scaled key similarities).
  torch::Tensor forward(const torch::Tensor& q, const torch::Tensor& z,
                        const torch::Tensor& scores) {
    const int64_t b = z.size(0), k = z.size(1), t = z.size(2), d = z.size(3);
    auto w = torch::softmax(scores, -1);
    auto x = (w.view({b, k, 1, 1}) * z).sum(1);
    // Rank of each candidate by score (0 = best), as a retriever would order them.
    auto ranks = scores.detach().argsort(-1, /*descending=*/true).argsort(-1, false);
    auto tag = rank(ranks) + score(w.unsqueeze(-1));  // [B, K, d]
    auto memory = (z + tag.unsqueeze(2)).reshape({b, k * t, d});
    for (const auto& block : *blocks) x = block->as<CrossBlock>()->forward(x, memory, {}, q);
    return x;
  }
  torch::nn::Embedding rank{nullptr};
  torch::nn::Linear score{nullptr};
  torch::nn::ModuleList blocks{nullptr};
};
TORCH_MODULE(Aggregator);

// A -> per-layer prefix keys and values, each [B, layers, 1 + T, kv_heads, head_dim]. Row 0 is
// the attention sink: the frozen LM's own BOS key/value at position 0 (learned from there), so
// the question after the prefix starts without BOS and every token sees the sink the LM was
// trained with; a BOS after the prefix would attend to the prefix and move the sink.
struct ExpanderImpl : torch::nn::Module {
  explicit ExpanderImpl(const Sizes& s) : s(s) {
    expand = register_module("expand", Linear(s.d, s.rows_per_slot * s.kv_width(), true));
    sink_keys = register_parameter("sink_keys", torch::zeros({s.layers, s.kv_heads, s.head_dim}));
    sink_values =
        register_parameter("sink_values", torch::zeros({s.layers, s.kv_heads, s.head_dim}));
  }
  // [B, L, 1 + T * R, kvh, hd] keys and values: the sink row, then slot t's R rows at 1 + t R.
  std::pair<torch::Tensor, torch::Tensor> forward(const torch::Tensor& a) {
    const int64_t b = a.size(0), rows = s.slots * s.rows_per_slot;
    auto y = expand(a).view({b, rows, s.layers, 2, s.kv_heads, s.head_dim});
    y = y.permute({0, 2, 3, 1, 4, 5});  // [B, L, 2, T * R, kvh, hd]
    auto sink = [&](const torch::Tensor& x) {
      return x.unsqueeze(0).unsqueeze(2).expand({b, s.layers, 1, s.kv_heads, s.head_dim});
    };
    auto keys = torch::cat({sink(sink_keys), y.select(2, 0)}, 2);
    const int64_t shift = s.slots * (s.rows_per_slot - 1);
    if (shift != 0) keys = RotateHalf(keys, torch::tensor(double(shift), torch::kFloat64), s);
    return {keys, torch::cat({sink(sink_values), y.select(2, 1)}, 2)};
  }
  Sizes s;
  torch::nn::Linear expand{nullptr};
  torch::Tensor sink_keys, sink_values;
};
TORCH_MODULE(Expander);

struct NetworksImpl : torch::nn::Module {
  NetworksImpl(const Sizes& s, const AdapterConfig& c) {
    readout = register_module("readout", Readout(s, c.readout_blocks));
    question = register_module("question", QuestionEncoder(s, c.question_blocks));
    aggregator =
        register_module("aggregator", Aggregator(s, c.aggregator_blocks, c.max_candidates));
    expander = register_module("expander", Expander(s));
    if (c.rag_head) {
      rag_aggregator =
          register_module("rag_aggregator", Aggregator(s, c.aggregator_blocks, c.max_candidates));
      rag_expander = register_module("rag_expander", Expander(s));
    }
    // Similarity scale of the keys (InfoNCE temperature 1/exp(.)), learned.
    log_scale = register_parameter("log_scale", torch::full({1}, std::log(20.0)));
  }
  torch::Tensor Scale() { return log_scale.exp().clamp_max(100.0); }
  // The prefix keys/values of the candidates for the questions: the mac+rag head's when
  // `with_text` and there is one, else the mac head's.
  std::pair<torch::Tensor, torch::Tensor> Modulate(const torch::Tensor& q, const torch::Tensor& z,
                                                   const torch::Tensor& scores, bool with_text) {
    if (with_text && rag_aggregator)
      return rag_expander->forward(rag_aggregator->forward(q, z, scores));
    return expander->forward(aggregator->forward(q, z, scores));
  }
  Readout readout{nullptr};
  QuestionEncoder question{nullptr};
  Aggregator aggregator{nullptr};
  Expander expander{nullptr};
  Aggregator rag_aggregator{nullptr};  // null without config.rag_head
  Expander rag_expander{nullptr};
  torch::Tensor log_scale;
};
TORCH_MODULE(Networks);

// Right-padded [rows, max_len] int64 tokens and a validity mask; BOS (position 0) is not valid
// when skip_first (it is an attention sink, not content).
std::pair<torch::Tensor, torch::Tensor> Pad(const std::vector<std::vector<int32_t>>& rows,
                                            int32_t pad, bool skip_first);

}  // namespace adapter_internal

// The adapter's state: the networks over the frozen base LM, and their optimizer.
struct Adapter::Impl {
  LanguageModel* base = nullptr;
  LlamaConfig lm;
  AdapterConfig config;
  adapter_internal::Sizes sizes{};
  adapter_internal::Networks net{nullptr};
  std::unique_ptr<torch::optim::AdamW> optimizer;
  double weight_decay = -1;

  // The exported rag_prefix_key_scale, as the engine applies it to a served mac+rag prefix
  // (model/adapter.cc): the slots' keys, not the sink's. Training never applies it.
  void ScaleServedKeys(torch::Tensor& prefix_keys, bool with_text) const {
    if (with_text && config.rag_head && config.rag_prefix_key_scale != 1.0) {
      prefix_keys.slice(2, 1).mul_(config.rag_prefix_key_scale);
    }
  }

  // Frozen trunk states of padded sequences.
  internal::TrunkStates Trunk(const torch::Tensor& tokens) {
    torch::NoGradGuard no_grad;
    internal::TrunkStates st;
    internal::TorchAccess::Forward(*base, tokens, {}, {}, &st);
    return st;
  }

  std::pair<torch::Tensor, torch::Tensor> EncodePassages(
      const std::vector<std::vector<int32_t>>& passages) {
    auto [tokens, valid] = adapter_internal::Pad(passages, lm.eos_token_id, true);
    return net->readout->forward(Trunk(tokens), valid);
  }
  std::pair<torch::Tensor, torch::Tensor> EncodeQuestions(
      const std::vector<std::vector<int32_t>>& prompts) {
    auto [tokens, valid] = adapter_internal::Pad(prompts, lm.eos_token_id, true);
    return net->question->forward(Trunk(tokens), valid);
  }

  // Greedy answer after the prefix (one row): at most 12 tokens, up to "\n" or EOS.
  std::vector<int32_t> Greedy(const torch::Tensor& pk, const torch::Tensor& pv,
                              std::vector<int32_t> sequence, const std::vector<int32_t>& stop) {
    torch::NoGradGuard no_grad;
    std::vector<int32_t> out;
    for (int i = 0; i < 12; ++i) {
      auto t = torch::tensor(std::vector<int64_t>(sequence.begin(), sequence.end())).unsqueeze(0);
      auto logits = internal::TorchAccess::Forward(*base, t, pk, pv, nullptr);
      const auto next = static_cast<int32_t>(logits[0][-1].argmax().item<int64_t>());
      if (std::find(stop.begin(), stop.end(), next) != stop.end()) break;
      out.push_back(next);
      sequence.push_back(next);
    }
    return out;
  }

  void MakeOptimizer(double wd) {
    weight_decay = wd;
    std::vector<torch::Tensor> decay, no_decay;
    for (auto& p : net->parameters()) (p.dim() < 2 ? no_decay : decay).push_back(p);
    std::vector<torch::optim::OptimizerParamGroup> groups;
    groups.emplace_back(decay,
                        std::make_unique<torch::optim::AdamWOptions>(
                            torch::optim::AdamWOptions(1e-3).betas({0.9, 0.98}).weight_decay(wd)));
    groups.emplace_back(no_decay,
                        std::make_unique<torch::optim::AdamWOptions>(
                            torch::optim::AdamWOptions(1e-3).betas({0.9, 0.98}).weight_decay(0)));
    optimizer =
        std::make_unique<torch::optim::AdamW>(std::move(groups), torch::optim::AdamWOptions(1e-3));
  }

  // TrainStep (train) and Loss (adapter_trainer.cc).
  absl::StatusOr<AdapterLosses> Step(const AdapterCorpus& corpus, const AdapterTrainOptions& o,
                                     int step, int candidates, bool train, double lr);
};

}  // namespace knowd::train
