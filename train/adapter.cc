#include "train/adapter.h"

#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <optional>
#include <random>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "kernels/math.h"
#include "knowledge/prompt.h"
#include "model/adapter.h"
#include "model/tensor_file.h"
#include "nlohmann/json.hpp"
#include "train/lm_torch.h"
#include "train/pretrain.h"

namespace knowd::train {
namespace {

using internal::TorchAccess;
using internal::TorchError;
using internal::TrunkStates;
using Clock = std::chrono::steady_clock;

torch::Tensor RmsNormalize(const torch::Tensor& x) {
  return x * torch::rsqrt(x.pow(2).mean(-1, /*keepdim=*/true) + 1e-6);
}

struct NormImpl : torch::nn::Module {
  explicit NormImpl(int64_t dim) { weight = register_parameter("weight", torch::ones({dim})); }
  torch::Tensor forward(const torch::Tensor& x) { return weight * RmsNormalize(x); }
  torch::Tensor weight;
};
TORCH_MODULE(Norm);

torch::nn::Linear Linear(int64_t in, int64_t out, bool bias = false) {
  return torch::nn::Linear(torch::nn::LinearOptions(in, out).bias(bias));
}

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
torch::Tensor RotateHalf(const torch::Tensor& x, const torch::Tensor& positions, const Sizes& s) {
  const auto inv_freq =
      1.0 / torch::pow(torch::tensor(s.rope_theta),
                       torch::arange(0, s.head_dim, 2, torch::kFloat64) / s.head_dim);
  const auto freqs = torch::outer(positions.reshape({-1}), inv_freq);
  std::vector<int64_t> shape(x.dim(), 1);
  shape[0] = freqs.size(0);
  shape.back() = s.head_dim;
  const auto emb = torch::cat({freqs, freqs}, -1).to(torch::kFloat32).view(shape);
  const int64_t half = s.head_dim / 2;
  return x * emb.cos() + torch::cat({-x.slice(-1, half), x.slice(-1, 0, half)}, -1) * emb.sin();
}

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

int32_t NewlineId(const Tokenizer& tokenizer) {
  const std::vector<int32_t> ids = tokenizer.Encode("\n", false);
  return ids.empty() ? -1 : ids.back();
}

// The prompt format (knowledge/prompt.h). The question encoder reads QuestionPrompt with BOS;
// after the prefix (whose row 0 stands for BOS) it follows without.
using knowledge::JoinPassages;
using knowledge::QaPrompt;
using knowledge::QuestionPrompt;

// Right-padded [rows, max_len] int64 tokens and a validity mask; BOS (position 0) is not valid
// when skip_first (it is an attention sink, not content).
std::pair<torch::Tensor, torch::Tensor> Pad(const std::vector<std::vector<int32_t>>& rows,
                                            int32_t pad, bool skip_first) {
  size_t cols = 1;
  for (const auto& r : rows) cols = std::max(cols, r.size());
  auto tokens = torch::full({static_cast<int64_t>(rows.size()), static_cast<int64_t>(cols)}, pad,
                            torch::kInt64);
  auto valid = torch::zeros_like(tokens, torch::kBool);
  auto t = tokens.accessor<int64_t, 2>();
  auto v = valid.accessor<bool, 2>();
  for (size_t i = 0; i < rows.size(); ++i) {
    for (size_t j = 0; j < rows[i].size(); ++j) {
      t[i][j] = rows[i][j];
      v[i][j] = !(skip_first && j == 0);
    }
  }
  return {tokens, valid};
}

// One question of a step: the student's tokens (prompt + answer + EOS after the prefix), the
// teacher's (passage + the same), and where the answer starts in the student's tokens.
struct QuestionRow {
  std::vector<int32_t> student;  // no BOS: the prefix's sink row stands for it
  std::vector<int32_t> teacher;
  std::vector<int32_t> encoder;  // "<BOS>Q: <question>\nA:" for the question encoder
  size_t answer_begin = 0;
  int gold = 0;           // passage slot in the step
  bool has_text = false;  // the student reads a passage's text after the prefix
};

// `text`: the context the student reads after the prefix (empty: the question prompt alone).
QuestionRow BuildRow(const Tokenizer& tok, const std::string& passage, const Question& q, int gold,
                     std::string_view text = {}) {
  QuestionRow row;
  row.encoder = tok.Encode(QuestionPrompt(q.question), true);
  const std::string prompt = text.empty() ? QuestionPrompt(q.question) : QaPrompt(text, q.question);
  row.answer_begin = tok.Encode(prompt, false).size();
  row.student = tok.Encode(prompt + " " + q.answer, false);
  row.teacher = tok.Encode(QaPrompt(passage, q.question) + " " + q.answer, true);
  if (tok.eos_id() >= 0) {
    row.student.push_back(tok.eos_id());
    row.teacher.push_back(tok.eos_id());
  }
  row.gold = gold;
  row.has_text = !text.empty();
  return row;
}

std::vector<int32_t> PassageTokens(const Tokenizer& tok, const std::string& text, int max_tokens) {
  std::vector<int32_t> ids = tok.Encode(text, true);
  if (static_cast<int>(ids.size()) > max_tokens) ids.resize(max_tokens);
  return ids;
}

torch::Tensor HostToTensor(const HostTensor& t, const std::vector<int64_t>& shape) {
  std::vector<float> data(t.numel());
  for (int64_t i = 0; i < t.numel(); ++i) data[i] = LoadAsF32(t.data, t.dtype, i);
  return torch::from_blob(data.data(), shape, torch::kFloat32).clone();
}

}  // namespace

// ---- corpus ------------------------------------------------------------------------------------

AdapterCorpus::AdapterCorpus(SplitData data, std::shared_ptr<const Tokenizer> tokenizer)
    : data_(std::move(data)), tokenizer_(std::move(tokenizer)) {
  std::unordered_map<std::string, int> index;
  for (size_t i = 0; i < data_.passages.size(); ++i) index[data_.passages[i].id] = int(i);
  questions_of_.resize(data_.passages.size());
  passage_of_.assign(data_.questions.size(), -1);
  for (size_t q = 0; q < data_.questions.size(); ++q) {
    auto it = index.find(data_.questions[q].passage_id);
    if (it == index.end()) continue;
    passage_of_[q] = it->second;
    questions_of_[it->second].push_back(static_cast<int>(q));
  }
  for (size_t p = 0; p < data_.passages.size(); ++p) {
    if (!questions_of_[p].empty()) answerable_.push_back(static_cast<int>(p));
    passages_of_subject_[data_.passages[p].subject].push_back(static_cast<int>(p));
  }
  for (auto& [subject, ps] : passages_of_subject_) {
    std::stable_sort(ps.begin(), ps.end(), [&](int a, int b) {
      return data_.passages[a].stream_position < data_.passages[b].stream_position;
    });
  }
}

std::vector<int> AdapterCorpus::history_of(int p) const {
  const Passage& passage = data_.passages[p];
  std::vector<int> out;
  for (int other : passages_of_subject_.at(passage.subject)) {
    if (data_.passages[other].stream_position <= passage.stream_position) out.push_back(other);
  }
  return out;
}

// ---- adapter -----------------------------------------------------------------------------------

struct Adapter::Impl {
  LanguageModel* base = nullptr;
  LlamaConfig lm;
  AdapterConfig config;
  Sizes sizes{};
  Networks net{nullptr};
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
  TrunkStates Trunk(const torch::Tensor& tokens) {
    torch::NoGradGuard no_grad;
    TrunkStates st;
    TorchAccess::Forward(*base, tokens, {}, {}, &st);
    return st;
  }

  std::pair<torch::Tensor, torch::Tensor> EncodePassages(
      const std::vector<std::vector<int32_t>>& passages) {
    auto [tokens, valid] = Pad(passages, lm.eos_token_id, true);
    return net->readout->forward(Trunk(tokens), valid);
  }
  std::pair<torch::Tensor, torch::Tensor> EncodeQuestions(
      const std::vector<std::vector<int32_t>>& prompts) {
    auto [tokens, valid] = Pad(prompts, lm.eos_token_id, true);
    return net->question->forward(Trunk(tokens), valid);
  }

  // Greedy answer after the prefix (one row): at most 12 tokens, up to "\n" or EOS.
  std::vector<int32_t> Greedy(const torch::Tensor& pk, const torch::Tensor& pv,
                              std::vector<int32_t> sequence, const std::vector<int32_t>& stop) {
    torch::NoGradGuard no_grad;
    std::vector<int32_t> out;
    for (int i = 0; i < 12; ++i) {
      auto t = torch::tensor(std::vector<int64_t>(sequence.begin(), sequence.end())).unsqueeze(0);
      auto logits = TorchAccess::Forward(*base, t, pk, pv, nullptr);
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

  absl::StatusOr<AdapterLosses> Step(const AdapterCorpus& corpus, const AdapterTrainOptions& o,
                                     int step, int candidates, bool train, double lr);
};

Adapter::Adapter(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Adapter::~Adapter() = default;

absl::StatusOr<std::unique_ptr<Adapter>> Adapter::Create(LanguageModel* base,
                                                         const AdapterConfig& config,
                                                         uint64_t seed) {
  if (base == nullptr) return absl::InvalidArgumentError("adapter: no base model");
  const AdapterConfig& c = config;
  if (c.slots < 1 || c.latent_dim < 1 || c.key_dim < 1 || c.heads < 1 ||
      !IsValidRowsPerSlot(c.rows_per_slot) || c.latent_dim % c.heads != 0 || c.mlp_ratio < 1 ||
      c.max_candidates < 1 || c.readout_blocks < 0 || c.question_blocks < 0 ||
      c.aggregator_blocks < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "adapter: slots, latent_dim, key_dim, heads, mlp_ratio, max_candidates must be >= 1, "
        "rows_per_slot in [1, ",
        kMaxRowsPerSlot, "], and heads must divide latent_dim"));
  }
  try {
    torch::manual_seed(seed);
    auto impl = std::make_unique<Impl>();
    impl->base = base;
    impl->lm = base->config();
    impl->config = config;
    const LlamaConfig& lm = impl->lm;
    impl->sizes = Sizes{lm.num_layers, lm.num_kv_heads, lm.head_dim,    lm.hidden_size,
                        c.slots,       c.latent_dim,    c.key_dim,      c.heads,
                        c.mlp_ratio,   lm.rope_theta,   c.rows_per_slot};
    impl->net = Networks(impl->sizes, config);
    TorchAccess::Freeze(*base);
    torch::NoGradGuard no_grad;
    for (auto& p : impl->net->named_parameters()) {
      const std::string& name = p.key();
      if (p.value().dim() < 2 || name.find("pool_queries") != std::string::npos ||
          name.find("question.queries") != std::string::npos) {
        continue;  // norms at 1, biases at 0 (below), queries unit normal
      }
      // Residual outputs start small so the blocks begin close to identity.
      const bool residual = name.ends_with(".o.weight") || name.ends_with(".down.weight");
      p.value().normal_(0.0, residual ? 0.002 : 0.02);
    }
    for (auto& p : impl->net->named_parameters()) {
      if (p.key().ends_with(".bias")) p.value().zero_();
    }
    {
      // The sink row starts as the LM's own BOS key/value (position 0: unrotated).
      const int32_t bos = lm.bos_token_id;
      absl::StatusOr<LanguageModel::SequenceStates> st = base->States({&bos, 1});
      if (!st.ok()) return st.status();
      const std::vector<int64_t> shape = {lm.num_layers, lm.num_kv_heads, lm.head_dim};
      impl->net->expander->sink_keys.copy_(
          torch::from_blob(st->keys.data(), shape, torch::kFloat32));
      impl->net->expander->sink_values.copy_(
          torch::from_blob(st->values.data(), shape, torch::kFloat32));
    }
    impl->MakeOptimizer(0.01);
    return std::unique_ptr<Adapter>(new Adapter(std::move(impl)));
  } catch (const std::exception& e) {
    return TorchError("creating the adapter", e);
  }
}

const AdapterConfig& Adapter::config() const { return impl_->config; }

int64_t Adapter::ParameterCount() const {
  int64_t n = 0;
  for (const auto& p : impl_->net->parameters()) n += p.numel();
  return n;
}

absl::StatusOr<double> Adapter::InitializeFromPassages(
    std::span<const std::vector<int32_t>> passages) {
  if (passages.empty()) return absl::InvalidArgumentError("adapter init: no passages");
  try {
    torch::NoGradGuard no_grad;
    std::vector<torch::Tensor> pooled;
    for (size_t i = 0; i < passages.size(); i += 16) {
      std::vector<std::vector<int32_t>> chunk(passages.begin() + i,
                                              passages.begin() + std::min(passages.size(), i + 16));
      auto [tokens, valid] = Pad(chunk, impl_->lm.eos_token_id, true);
      pooled.push_back(impl_->net->readout->Pool(impl_->Trunk(tokens), valid).flatten(0, 1));
    }
    auto x = torch::cat(pooled, 0).to(torch::kFloat64);  // [rows, kv_width]
    auto mean = x.mean(0);
    auto centered = x - mean;
    auto [u, s, vh] = torch::linalg::svd(centered, /*full_matrices=*/false, c10::nullopt);
    const int64_t d = impl_->config.latent_dim;
    const int64_t r = std::min<int64_t>(d, vh.size(0));
    auto basis = torch::zeros({d, x.size(1)}, torch::kFloat64);
    basis.slice(0, 0, r).copy_(vh.slice(0, 0, r));
    auto& compress = impl_->net->readout->compress;
    auto& expand = impl_->net->expander->expand;
    compress->weight.copy_(basis.to(torch::kFloat32));
    compress->bias.copy_((-torch::matmul(basis, mean)).to(torch::kFloat32));
    // Each slot's first prefix row starts as the pooled KV's reconstruction; further rows
    // (rows_per_slot > 1) near zero, as when an adapter grows them (LoadExport).
    const int64_t width = x.size(1);
    expand->weight.mul_(0.1);
    expand->bias.zero_();
    expand->weight.slice(0, 0, width).copy_(basis.t().to(torch::kFloat32));
    expand->bias.slice(0, 0, width).copy_(mean.to(torch::kFloat32));
    const auto energy = s.pow(2);
    return (energy.slice(0, 0, r).sum() / energy.sum().clamp_min(1e-30)).item<double>();
  } catch (const std::exception& e) {
    return TorchError("adapter init", e);
  }
}

absl::StatusOr<AdapterLosses> Adapter::Impl::Step(const AdapterCorpus& corpus,
                                                  const AdapterTrainOptions& o, int step,
                                                  int candidates, bool train, double lr) {
  const Tokenizer& tok = corpus.tokenizer();
  const SplitData& data = corpus.data();
  if (corpus.answerable().size() < 2) {
    return absl::InvalidArgumentError("adapter training needs >= 2 passages with questions");
  }
  const int batch = std::min<int>(o.batch, static_cast<int>(corpus.answerable().size()));
  candidates = std::clamp(candidates, 1, std::min(batch, config.max_candidates));
  std::mt19937_64 rng(o.seed * 0x9E3779B97F4A7C15ull + static_cast<uint64_t>(step));

  // Distinct passages (by subject: two passages about one person would be ambiguous negatives).
  std::vector<int> chosen;
  std::vector<std::string> subjects;
  for (int tries = 0; static_cast<int>(chosen.size()) < batch && tries < batch * 20; ++tries) {
    const int p = corpus.answerable()[BoundedDraw(rng, corpus.answerable().size())];
    const std::string& subject = data.passages[p].subject;
    if (std::find(subjects.begin(), subjects.end(), subject) != subjects.end()) continue;
    chosen.push_back(p);
    subjects.push_back(subject);
  }
  if (chosen.size() < 2) return absl::InternalError("could not draw distinct passages");
  const int b = static_cast<int>(chosen.size());
  candidates = std::min(candidates, b);
  std::vector<std::vector<int32_t>> passages;
  std::vector<QuestionRow> rows;
  // The text draws have their own stream: the step's passages and questions do not depend on them.
  std::mt19937_64 text_rng(o.seed * 0xD1B54A32D192ED03ull + static_cast<uint64_t>(step));
  for (int i = 0; i < b; ++i) {
    const Passage& p = data.passages[chosen[i]];
    passages.push_back(PassageTokens(tok, p.text, o.max_passage_tokens));
    std::vector<int> qs = corpus.questions_of(chosen[i]);
    for (size_t j = qs.size(); j > 1; --j) std::swap(qs[j - 1], qs[BoundedDraw(rng, j)]);
    for (int j = 0; j < std::min<int>(o.questions_per_passage, qs.size()); ++j) {
      std::string text;
      if (o.text_fraction > 0 && UnitDraw(text_rng) < o.text_fraction) {
        int shown = i;
        if (UnitDraw(text_rng) < o.text_distractor_fraction) {
          shown = (i + 1 + static_cast<int>(BoundedDraw(text_rng, b - 1))) % b;
        }
        if (o.text_subject_history) {
          std::vector<std::string_view> texts;
          for (int h : corpus.history_of(chosen[shown])) texts.push_back(data.passages[h].text);
          text = JoinPassages(texts);
        } else {
          text = data.passages[chosen[shown]].text;
        }
      }
      rows.push_back(BuildRow(tok, p.text, data.questions[qs[j]], i, text));
    }
  }
  const int nq = static_cast<int>(rows.size());
  // Rows with text after the prefix are several times longer: they go last and run as their own
  // group, so the short rows are not padded to their length.
  std::stable_partition(rows.begin(), rows.end(), [](const QuestionRow& r) { return !r.has_text; });
  std::vector<std::pair<int, int>> groups;
  for (int lo = 0, hi = 0; lo < nq; lo = hi) {
    while (hi < nq && rows[hi].has_text == rows[lo].has_text) ++hi;
    groups.emplace_back(lo, hi);
  }

  if (o.rag_head_only && !config.rag_head) {
    return absl::InvalidArgumentError("training the mac+rag head alone needs an adapter with one");
  }
  try {
    if (train) {
      net->train();
      // With rag_head_only everything but the mac+rag head is frozen: no gradient, so AdamW
      // leaves it (and its decay) alone.
      for (auto& p : net->named_parameters()) {
        const bool learns = !o.rag_head_only || p.key().starts_with("rag_");
        p.value().set_requires_grad(learns);
        if (!learns) p.value().mutable_grad() = torch::Tensor();
      }
    } else {
      net->eval();
    }
    std::optional<torch::NoGradGuard> no_grad;
    if (!train) no_grad.emplace();

    // Teacher: the frozen LM reading the passage in context.
    std::vector<std::vector<int32_t>> teacher_rows, student_rows, prompts;
    for (const QuestionRow& r : rows) {
      teacher_rows.push_back(r.teacher);
      student_rows.push_back(r.student);
      prompts.push_back(r.encoder);
    }
    torch::Tensor teacher_logits;
    {
      torch::NoGradGuard teacher_no_grad;
      teacher_logits = TorchAccess::Forward(*base, Pad(teacher_rows, lm.eos_token_id, false).first,
                                            {}, {}, nullptr);
    }

    auto [z, passage_keys] = EncodePassages(passages);   // [b, T, d], [b, key]
    auto [q, question_keys] = EncodeQuestions(prompts);  // [nq, T, d], [nq, key]
    auto scores = net->Scale() * torch::matmul(question_keys, passage_keys.t());  // [nq, b]
    std::vector<int64_t> gold(nq);
    for (int i = 0; i < nq; ++i) gold[i] = rows[i].gold;
    auto gold_t = torch::tensor(gold);
    auto contrastive = torch::nn::functional::cross_entropy(scores, gold_t);
    const double retrieval_acc =
        scores.detach().argmax(-1).eq(gold_t).to(torch::kFloat64).mean().item<double>();

    // Candidates: the gold passage and the hardest in-batch negatives, in shuffled order.
    auto sd = scores.detach();
    std::vector<int64_t> cand(static_cast<size_t>(nq) * candidates);
    std::vector<float> keep_grad(cand.size(), 1.0f);
    for (int i = 0; i < nq; ++i) {
      std::vector<int> order(b);
      std::iota(order.begin(), order.end(), 0);
      auto row = sd[i].contiguous();
      const float* r = row.data_ptr<float>();
      std::stable_sort(order.begin(), order.end(), [&](int x, int y) { return r[x] > r[y]; });
      std::vector<int64_t> mine = {gold[i]};
      for (int p : order) {
        if (static_cast<int>(mine.size()) >= candidates) break;
        if (p != gold[i]) mine.push_back(p);
      }
      for (size_t j = mine.size(); j > 1; --j) std::swap(mine[j - 1], mine[BoundedDraw(rng, j)]);
      for (int j = 0; j < candidates; ++j) {
        cand[i * candidates + j] = mine[j];
        if (train && mine[j] != gold[i] && UnitDraw(rng) < o.backprop_dropout) {
          keep_grad[i * candidates + j] = 0.0f;
        }
      }
    }
    auto cand_t = torch::tensor(cand).view({nq, candidates});
    auto keep = torch::tensor(keep_grad).view({nq, candidates, 1, 1});
    auto flat = cand_t.flatten();
    auto zc = z.index_select(0, flat).view({nq, candidates, z.size(1), z.size(2)});
    auto zc_detached = z.detach().index_select(0, flat).view_as(zc);
    zc = keep * zc + (1 - keep) * zc_detached;  // backprop dropout
    auto sc = scores.gather(1, cand_t);

    auto sink = [&](const torch::Tensor& x, int64_t n) {
      return x.unsqueeze(0).unsqueeze(2).expand(
          {n, lm.num_layers, 1, lm.num_kv_heads, lm.head_dim});
    };
    // Per group: the answer tokens' log-probabilities (answer NLL), the shared question/answer
    // tokens' (distillation), and the closed-book reference (the sink row as the only prefix).
    std::vector<int64_t> ans_row, ans_tpos, ans_target, kd_row, kd_tpos;
    std::vector<torch::Tensor> picked_parts, student_kd_parts, book_parts;
    for (const auto& [lo, hi] : groups) {
      const std::vector<std::vector<int32_t>> part(student_rows.begin() + lo,
                                                   student_rows.begin() + hi);
      auto tokens = Pad(part, lm.eos_token_id, false).first;
      auto [pk, pv] = net->Modulate(q.slice(0, lo, hi), zc.slice(0, lo, hi), sc.slice(0, lo, hi),
                                    rows[lo].has_text);
      auto logits = TorchAccess::Forward(*base, tokens, pk, pv, nullptr);  // [hi - lo, S, V]
      auto log_probs = torch::log_softmax(logits, -1);
      std::vector<int64_t> a_row, a_pos, k_row, k_pos;
      for (int i = lo; i < hi; ++i) {
        const QuestionRow& r = rows[i];
        // The student's position j sits at j + shift in the teacher's sequence.
        const int64_t shift = static_cast<int64_t>(r.teacher.size()) - r.student.size();
        for (size_t j = r.answer_begin; j < r.student.size(); ++j) {
          ans_row.push_back(i);
          ans_tpos.push_back(static_cast<int64_t>(j) - 1 + shift);
          a_row.push_back(i - lo);
          a_pos.push_back(static_cast<int64_t>(j) - 1);
          ans_target.push_back(r.student[j]);
        }
        // The question and answer tokens both sequences share (a common suffix: the first word
        // "Q:" may be tokenized differently after a passage).
        size_t common = 0;
        while (common + 1 < r.student.size() && common + 1 < r.teacher.size() &&
               r.student[r.student.size() - 1 - common] ==
                   r.teacher[r.teacher.size() - 1 - common]) {
          ++common;
        }
        for (size_t j = r.student.size() - common; j < r.student.size(); ++j) {
          kd_row.push_back(i);
          k_row.push_back(i - lo);
          k_pos.push_back(static_cast<int64_t>(j) - 1);
          kd_tpos.push_back(static_cast<int64_t>(j) - 1 + shift);
        }
      }
      picked_parts.push_back(log_probs.index({torch::tensor(a_row), torch::tensor(a_pos)}));
      student_kd_parts.push_back(log_probs.index({torch::tensor(k_row), torch::tensor(k_pos)}));
      torch::NoGradGuard reference_no_grad;
      auto book = torch::log_softmax(
          TorchAccess::Forward(*base, tokens, sink(net->expander->sink_keys, hi - lo),
                               sink(net->expander->sink_values, hi - lo), nullptr),
          -1);
      book_parts.push_back(book.index({torch::tensor(a_row), torch::tensor(a_pos)}));
    }
    auto target = torch::tensor(ans_target).unsqueeze(1);
    auto answer_nll = -torch::cat(picked_parts).gather(1, target).mean();
    auto student_kd = torch::cat(student_kd_parts);
    auto teacher_kd = torch::log_softmax(
        teacher_logits.index({torch::tensor(kd_row), torch::tensor(kd_tpos)}), -1);
    auto distill = (teacher_kd.exp() * (teacher_kd - student_kd)).sum(-1).mean();
    auto total = answer_nll + o.distill_weight * distill + o.contrastive_weight * contrastive;

    torch::Tensor context_nll, closed_book_nll;
    {
      torch::NoGradGuard reference_no_grad;
      auto t = torch::log_softmax(
          teacher_logits.index({torch::tensor(ans_row), torch::tensor(ans_tpos)}), -1);
      context_nll = -t.gather(1, target).mean();
      closed_book_nll = -torch::cat(book_parts).gather(1, target).mean();
    }

    AdapterLosses out;
    out.total = total.item<double>();
    out.answer_nll = answer_nll.item<double>();
    out.distill = distill.item<double>();
    out.contrastive = contrastive.item<double>();
    out.retrieval_acc = retrieval_acc;
    out.context_nll = context_nll.item<double>();
    out.closed_book_nll = closed_book_nll.item<double>();
    if (train) {
      if (weight_decay != o.weight_decay) {
        // A different decay than the current optimizer's: rebuild it (only before any step).
        MakeOptimizer(o.weight_decay);
      }
      for (auto& group : optimizer->param_groups()) {
        static_cast<torch::optim::AdamWOptions&>(group.options()).lr(lr);
      }
      optimizer->zero_grad();
      total.backward();
      if (o.grad_clip > 0) torch::nn::utils::clip_grad_norm_(net->parameters(), o.grad_clip);
      optimizer->step();
    }
    return out;
  } catch (const std::exception& e) {
    return TorchError("adapter step", e);
  }
}

absl::StatusOr<AdapterLosses> Adapter::TrainStep(const AdapterCorpus& corpus,
                                                 const AdapterTrainOptions& options, int step,
                                                 double lr, int candidates) {
  return impl_->Step(corpus, options, step, candidates, true, lr);
}

absl::StatusOr<AdapterLosses> Adapter::Loss(const AdapterCorpus& corpus,
                                            const AdapterTrainOptions& options, int step,
                                            int candidates) {
  return impl_->Step(corpus, options, step, candidates, false, 0);
}

absl::StatusOr<Adapter::PrefixKv> Adapter::Prefix(std::string_view question,
                                                  std::span<const std::vector<int32_t>> passages,
                                                  const Tokenizer& tokenizer, bool with_text) {
  if (passages.empty()) return absl::InvalidArgumentError("adapter prefix: no passages");
  try {
    torch::NoGradGuard no_grad;
    impl_->net->eval();
    PrefixKv out;
    out.prompt = tokenizer.Encode(QuestionPrompt(question), false);
    std::vector<std::vector<int32_t>> ps(passages.begin(), passages.end());
    auto [z, pkeys] = impl_->EncodePassages(ps);
    auto [q, qkey] = impl_->EncodeQuestions({tokenizer.Encode(QuestionPrompt(question), true)});
    auto scores = impl_->net->Scale() * torch::matmul(qkey, pkeys.t());
    auto [pk, pv] = impl_->net->Modulate(q, z.unsqueeze(0), scores, with_text);
    impl_->ScaleServedKeys(pk, with_text);
    // [1, L, T, kvh, hd] is [layers][rows][kv_dim] already.
    pk = pk.contiguous();
    pv = pv.contiguous();
    out.keys.assign(pk.data_ptr<float>(), pk.data_ptr<float>() + pk.numel());
    out.values.assign(pv.data_ptr<float>(), pv.data_ptr<float>() + pv.numel());
    out.rows = static_cast<int>(impl_->sizes.prefix_rows());
    return out;
  } catch (const std::exception& e) {
    return TorchError("adapter prefix", e);
  }
}

absl::StatusOr<Adapter::Trace> Adapter::TraceForTest(std::span<const std::vector<int32_t>> passages,
                                                     std::span<const int32_t> prompt,
                                                     bool with_text) {
  if (passages.empty()) return absl::InvalidArgumentError("adapter trace: no passages");
  try {
    torch::NoGradGuard no_grad;
    impl_->net->eval();
    auto [z, pkeys] = impl_->EncodePassages({passages.begin(), passages.end()});
    auto [q, qkey] = impl_->EncodeQuestions({{prompt.begin(), prompt.end()}});
    auto scores = impl_->net->Scale() * torch::matmul(qkey, pkeys.t());
    auto [pk, pv] = impl_->net->Modulate(q, z.unsqueeze(0), scores, with_text);
    impl_->ScaleServedKeys(pk, with_text);
    auto floats = [](const torch::Tensor& x) {
      const torch::Tensor c = x.contiguous();
      return std::vector<float>(c.data_ptr<float>(), c.data_ptr<float>() + c.numel());
    };
    Trace trace;
    for (int64_t i = 0; i < z.size(0); ++i) {
      trace.latents.push_back(floats(z[i]));
      trace.keys.push_back(floats(pkeys[i]));
    }
    trace.queries = floats(q[0]);
    trace.question_key = floats(qkey[0]);
    trace.prefix.keys = floats(pk);
    trace.prefix.values = floats(pv);
    trace.prefix.rows = static_cast<int>(impl_->sizes.prefix_rows());
    return trace;
  } catch (const std::exception& e) {
    return TorchError("adapter trace", e);
  }
}

absl::StatusOr<AdapterScore> Adapter::Score(const AdapterCorpus& corpus, int questions, int top_k,
                                            uint64_t seed, int max_passage_tokens) {
  const Tokenizer& tok = corpus.tokenizer();
  const SplitData& data = corpus.data();
  AdapterScore score;
  score.top_k = top_k = std::clamp(top_k, 1, impl_->config.max_candidates);
  if (data.passages.empty()) return score;
  try {
    torch::NoGradGuard no_grad;
    impl_->net->eval();
    // Every passage of the split, encoded once (the bank).
    std::vector<torch::Tensor> zs, ks;
    for (size_t i = 0; i < data.passages.size(); i += 16) {
      std::vector<std::vector<int32_t>> chunk;
      for (size_t j = i; j < std::min(data.passages.size(), i + 16); ++j) {
        chunk.push_back(PassageTokens(tok, data.passages[j].text, max_passage_tokens));
      }
      auto [z, k] = impl_->EncodePassages(chunk);
      zs.push_back(z);
      ks.push_back(k);
    }
    auto bank_z = torch::cat(zs, 0), bank_k = torch::cat(ks, 0);
    const int64_t n = bank_z.size(0);
    const std::vector<int32_t> stop = {tok.eos_id(), NewlineId(tok)};
    std::mt19937_64 rng(seed);
    int gold_hits = 0, distractor_hits = 0, retrieved_hits = 0, r1 = 0, rk = 0;
    auto answer = [&](const torch::Tensor& q, const torch::Tensor& qkey,
                      const std::vector<int64_t>& cands, const std::vector<int32_t>& prompt) {
      auto idx = torch::tensor(cands);
      auto z = bank_z.index_select(0, idx).unsqueeze(0);
      auto s = impl_->net->Scale() * torch::matmul(qkey, bank_k.index_select(0, idx).t());
      auto a = impl_->net->aggregator->forward(q, z, s);
      auto [pk, pv] = impl_->net->expander->forward(a);
      return tok.Decode(impl_->Greedy(pk, pv, prompt, stop));
    };
    for (size_t qi = 0; qi < data.questions.size() && score.questions < questions; ++qi) {
      const int gold = corpus.passage_of(static_cast<int>(qi));
      if (gold < 0) continue;
      const Question& question = data.questions[qi];
      const std::vector<int32_t> prompt = tok.Encode(QuestionPrompt(question.question), false);
      auto [q, qkey] =
          impl_->EncodeQuestions({tok.Encode(QuestionPrompt(question.question), true)});
      const std::string gold_answer = answer(q, qkey, {gold}, prompt);
      if (AnswerMatches(gold_answer, question.answer)) ++gold_hits;
      std::vector<int64_t> cands = {gold};
      for (int tries = 0;
           static_cast<int>(cands.size()) < std::min<int64_t>(top_k, n) && tries < 100 * top_k;
           ++tries) {
        const auto p = static_cast<int64_t>(BoundedDraw(rng, n));
        if (std::find(cands.begin(), cands.end(), p) != cands.end() ||
            data.passages[p].subject == data.passages[gold].subject) {
          continue;
        }
        cands.push_back(p);
      }
      for (size_t j = cands.size(); j > 1; --j) std::swap(cands[j - 1], cands[BoundedDraw(rng, j)]);
      if (AnswerMatches(answer(q, qkey, cands, prompt), question.answer)) ++distractor_hits;
      auto sims = torch::matmul(qkey, bank_k.t())[0];
      auto top = std::get<1>(sims.topk(std::min<int64_t>(top_k, n)));
      std::vector<int64_t> retrieved(top.data_ptr<int64_t>(),
                                     top.data_ptr<int64_t>() + top.numel());
      if (retrieved[0] == gold) ++r1;
      if (std::find(retrieved.begin(), retrieved.end(), gold) != retrieved.end()) ++rk;
      const std::string retrieved_answer = answer(q, qkey, retrieved, prompt);
      if (AnswerMatches(retrieved_answer, question.answer)) ++retrieved_hits;
      if (score.examples.size() < 8) {
        score.examples.push_back(absl::StrCat(question.question, " => ", gold_answer, " | ",
                                              retrieved_answer, " (", question.answer, ")"));
      }
      ++score.questions;
    }
    if (score.questions > 0) {
      const double nq = score.questions;
      score.gold_em = gold_hits / nq;
      score.distractor_em = distractor_hits / nq;
      score.retrieved_em = retrieved_hits / nq;
      score.recall_at_1 = r1 / nq;
      score.recall_at_k = rk / nq;
    }
    return score;
  } catch (const std::exception& e) {
    return TorchError("adapter score", e);
  }
}

absl::Status Adapter::SaveCheckpoint(const std::string& path) const {
  return internal::SaveTorchCheckpoint(*impl_->net, *impl_->optimizer, path);
}

absl::Status Adapter::LoadCheckpoint(const std::string& path) {
  return internal::LoadTorchCheckpoint(*impl_->net, *impl_->optimizer, path);
}

absl::Status Adapter::Export(const std::string& dir, DType dtype, const std::string& base_sha256,
                             const std::string& training_json) const {
  if (dtype != DType::kF32 && dtype != DType::kF16) {
    return absl::InvalidArgumentError("adapter export: dtype must be f32 or f16");
  }
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return absl::InternalError(absl::StrCat(dir, ": cannot create: ", ec.message()));
  std::vector<std::vector<float>> f32;
  std::vector<std::vector<uint16_t>> f16;
  std::vector<HostTensor> tensors;
  nlohmann::json list = nlohmann::json::array();
  try {
    torch::NoGradGuard no_grad;
    const auto named = impl_->net->named_parameters();
    f32.reserve(named.size());
    f16.reserve(named.size());
    for (const auto& p : named) {
      const torch::Tensor t = p.value().detach().to(torch::kFloat32).contiguous();
      f32.emplace_back(t.data_ptr<float>(), t.data_ptr<float>() + t.numel());
      HostTensor h;
      h.name = p.key();
      h.shape.assign(t.sizes().begin(), t.sizes().end());
      // Vectors (norms, biases, the scale) stay f32: tiny, and the scale is sensitive.
      if (dtype == DType::kF32 || t.dim() < 2) {
        h.dtype = DType::kF32;
        h.data = f32.back().data();
        h.bytes = static_cast<int64_t>(f32.back().size() * sizeof(float));
      } else {
        f16.emplace_back(f32.back().size());
        for (size_t i = 0; i < f32.back().size(); ++i) f16.back()[i] = F32ToF16(f32.back()[i]);
        h.dtype = DType::kF16;
        h.data = f16.back().data();
        h.bytes = static_cast<int64_t>(f16.back().size() * sizeof(uint16_t));
      }
      list.push_back({{"name", h.name},
                      {"shape", h.shape},
                      {"dtype", h.dtype == DType::kF32 ? "F32" : "F16"}});
      tensors.push_back(std::move(h));
    }
  } catch (const std::exception& e) {
    return TorchError("adapter export", e);
  }
  const AdapterConfig& c = impl_->config;
  const LlamaConfig& lm = impl_->lm;
  nlohmann::json training = nlohmann::json::parse(training_json, nullptr, false);
  if (training.is_discarded()) training = nlohmann::json::object();
  nlohmann::json j = {
      {"format", "knowd-adapter"},
      {"version", 1},
      {"design", "mac-pooled-kv"},
      {"base_model",
       {{"sha256", base_sha256},
        {"hidden_size", lm.hidden_size},
        {"num_hidden_layers", lm.num_layers},
        {"num_key_value_heads", lm.num_kv_heads},
        {"head_dim", lm.head_dim},
        {"vocab_size", lm.vocab_size}}},
      {"slots", c.slots},
      {"rows_per_slot", c.rows_per_slot},
      {"prefix_rows", 1 + c.slots * c.rows_per_slot},
      {"latent_dim", c.latent_dim},
      {"key_dim", c.key_dim},
      {"heads", c.heads},
      {"mlp_ratio", c.mlp_ratio},
      {"readout_blocks", c.readout_blocks},
      {"question_blocks", c.question_blocks},
      {"aggregator_blocks", c.aggregator_blocks},
      {"max_candidates", c.max_candidates},
      {"rag_head", c.rag_head},
      {"rag_prefix_key_scale", c.rag_prefix_key_scale},
      {"norm_eps", 1e-6},
      {"activation", "gelu (erf)"},
      {"passage_input", "<BOS><passage>; BOS and padding are not attended by the readout"},
      {"pooled_key_rotation", "RoPE(slots - n), n = passage tokens with BOS, after pooling"},
      {"question_input", "<BOS>Q: <question>\\nA: for the question encoder"},
      {"prompt_after_prefix", "Q: <question>\\nA: without BOS (prefix row 0 is the BOS sink)"},
      {"rag_head_prompt_after_prefix",
       "<passage>\\nQ: <question>\\nA: without BOS; rag_aggregator/rag_expander make its prefix"},
      {"prefix",
       "keys/values [layers][prefix_rows][kv_dim], slot t's rows_per_slot rows at 1 + t * "
       "rows_per_slot; keys rotated by RoPE(slots * (rows_per_slot - 1)); tokens at positions "
       "P.."},
      {"latent_bytes_f16", LatentBytes(c)},
      {"parameters", ParameterCount()},
      {"tensors", list},
      {"training", training}};
  const std::string json_path = dir + "/adapter.json";
  if (absl::Status st = WriteSafetensors(dir + "/adapter.safetensors", tensors,
                                         {{"format", "pt"}, {"producer", "knowd-train"}});
      !st.ok()) {
    return st;
  }
  {
    std::ofstream out(json_path + ".tmp", std::ios::trunc);
    out << j.dump(2) << "\n";
    if (!out.good()) return absl::InternalError(absl::StrCat(json_path, ": write failed"));
  }
  std::filesystem::rename(json_path + ".tmp", json_path, ec);
  if (ec) return absl::InternalError(absl::StrCat(json_path, ": ", ec.message()));
  return absl::OkStatus();
}

absl::Status Adapter::LoadExport(const std::string& dir, ExportLoad how) {
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file =
      SafetensorsFile::Open(dir + "/adapter.safetensors");
  if (!file.ok()) return file.status();
  try {
    torch::NoGradGuard no_grad;
    for (auto& p : impl_->net->named_parameters()) {
      const std::vector<int64_t> shape(p.value().sizes().begin(), p.value().sizes().end());
      std::string name = p.key();
      if (how.seed_rag_head && name.starts_with("rag_") && (*file)->Find(name) == nullptr) {
        name = name.substr(4);  // the mac head's tensor of the same shape
      }
      const HostTensor* stored = (*file)->Find(name);
      if (!how.grow || (stored != nullptr && stored->shape == shape)) {
        absl::StatusOr<const HostTensor*> t = (*file)->Require(name, shape);
        if (!t.ok()) return t.status();
        p.value().copy_(HostToTensor(**t, shape));
        continue;
      }
      // Growing: a block's residual outputs start at zero, so the block (or the MLP's new
      // columns) adds nothing until training moves them.
      const bool block_output = name.find(".blocks.") != std::string::npos &&
                                (name.ends_with(".o.weight") || name.ends_with(".down.weight"));
      if (stored == nullptr) {
        if (name.find(".blocks.") == std::string::npos) {
          return absl::InvalidArgumentError(
              absl::StrCat(dir, "/adapter.safetensors has no tensor ", name,
                           "; growing an adapter adds blocks or MLP width, nothing else"));
        }
        if (block_output) p.value().zero_();
        continue;
      }
      // More prefix rows per slot: the export's rows are each slot's first (below).
      const bool expander =
          name.ends_with("expander.expand.weight") || name.ends_with("expander.expand.bias");
      bool fits = stored->shape.size() == shape.size();
      for (size_t i = 0; fits && i < shape.size(); ++i) fits = stored->shape[i] <= shape[i];
      if (!fits ||
          (!name.ends_with(".up.weight") && !name.ends_with(".down.weight") && !expander)) {
        return absl::InvalidArgumentError(absl::StrCat(
            dir, "/adapter.safetensors: ", name, " has shape [", absl::StrJoin(stored->shape, ","),
            "], this adapter [", absl::StrJoin(shape, ","),
            "]; only blocks, MLP width and rows_per_slot can grow (slots, latent_dim and key_dim "
            "must match)"));
      }
      if (expander) {
        // Slot t's first rows are the export's; the new rows start near zero: small random
        // weights (a tenth of a fresh start's, so that rows can part) and zero bias. A key near
        // zero takes a small share of attention, so the trained prefix still answers (valid mac EM
        // 0.505 -> 0.501 for knowd-tiny from 1 to 4 rows per slot).
        const int64_t n = stored->shape[0];
        p.value().mul_(0.1);
        p.value().narrow(0, 0, n).copy_(HostToTensor(*stored, stored->shape));
        continue;
      }
      if (block_output) p.value().zero_();
      torch::Tensor part = p.value();
      for (size_t i = 0; i < shape.size(); ++i) part = part.narrow(i, 0, stored->shape[i]);
      part.copy_(HostToTensor(*stored, stored->shape));
    }
    return absl::OkStatus();
  } catch (const std::exception& e) {
    return TorchError(absl::StrCat("loading ", dir), e);
  }
}

// ---- helpers -----------------------------------------------------------------------------------

int64_t PassageKvBytes(const LlamaConfig& base, int tokens) {
  return int64_t{base.num_layers} * tokens * 2 * base.kv_dim() * 2;
}

int64_t LatentBytes(const AdapterConfig& config) {
  return int64_t{config.slots} * config.latent_dim * 2;
}

int CurriculumCandidates(const AdapterRunOptions& o, int step) {
  const double f = o.gold_only_fraction;
  const double progress = double(step) / std::max(1, o.steps);
  if (o.top_k <= 1 || progress < f) return 1;
  if (f <= 0 || progress >= 2 * f) return o.top_k;
  return std::clamp(2 + static_cast<int>((o.top_k - 2) * (progress - f) / f), 2, o.top_k);
}

absl::Status RunAdapterTraining(const AdapterRunOptions& options) {
  SetTorchThreads(options.threads);
  const auto t0 = Clock::now();
  absl::StatusOr<std::unique_ptr<Tokenizer>> tok =
      LoadSentencePieceTokenizer(options.bundle_dir + "/tokenizer.model");
  if (!tok.ok()) return tok.status();
  std::shared_ptr<const Tokenizer> tokenizer = *std::move(tok);
  absl::StatusOr<std::unique_ptr<LanguageModel>> base =
      LanguageModel::LoadBundle(options.bundle_dir);
  if (!base.ok()) return base.status();
  absl::StatusOr<std::string> fingerprint = Sha256OfFile(options.bundle_dir + "/model.safetensors");
  if (!fingerprint.ok()) return fingerprint.status();
  absl::StatusOr<SplitData> train_split = ReadSplit(options.data_dir, Split::kAdapter);
  if (!train_split.ok()) return train_split.status();
  AdapterCorpus corpus(*std::move(train_split), tokenizer);

  absl::StatusOr<std::unique_ptr<Adapter>> created =
      Adapter::Create(base->get(), options.config, options.train.seed);
  if (!created.ok()) return created.status();
  Adapter& adapter = **created;
  const LlamaConfig& lm = (*base)->config();

  // How the stored latent compares with the passage's KV cache (the storage target is <= 1/50).
  std::vector<int> lengths;
  for (const Passage& p : corpus.data().passages) {
    lengths.push_back(static_cast<int>(tokenizer->Encode(p.text, true).size()));
  }
  std::sort(lengths.begin(), lengths.end());
  const int median = lengths.empty() ? 0 : lengths[lengths.size() / 2];
  const int shortest = lengths.empty() ? 0 : lengths.front();
  const double mean_len =
      lengths.empty() ? 0 : std::accumulate(lengths.begin(), lengths.end(), 0.0) / lengths.size();
  // Aggregate over the split: all passages' KV bytes over all their latents' bytes.
  const double aggregate = mean_len * PassageKvBytes(lm, 1) / LatentBytes(options.config);
  std::printf(
      "base: %lld parameters; adapter: %lld parameters (%.1f%%), T %d, d %d\n"
      "storage: latent %lld B vs passage KV %lld B at the median %d tokens (1/%.0f), "
      "1/%.0f at the shortest (%d), 1/%.1f over the split (mean %.1f tokens)\n",
      static_cast<long long>((*base)->ParameterCount()),
      static_cast<long long>(adapter.ParameterCount()),
      100.0 * adapter.ParameterCount() / (*base)->ParameterCount(), options.config.slots,
      options.config.latent_dim, static_cast<long long>(LatentBytes(options.config)),
      static_cast<long long>(PassageKvBytes(lm, median)), median,
      double(PassageKvBytes(lm, median)) / LatentBytes(options.config),
      double(PassageKvBytes(lm, shortest)) / LatentBytes(options.config), shortest, aggregate,
      mean_len);

  std::error_code ec;
  std::filesystem::create_directories(options.work_dir, ec);
  if (ec) return absl::InternalError(absl::StrCat(options.work_dir, ": ", ec.message()));
  const std::string checkpoint = options.work_dir + "/adapter-checkpoint.pt";
  const std::string state_path = options.work_dir + "/adapter-checkpoint.json";
  int start = 0;
  if (options.resume && std::filesystem::exists(state_path)) {
    std::ifstream in(state_path);
    nlohmann::json state = nlohmann::json::parse(in, nullptr, false);
    if (!state.is_object() || !state.contains("step")) {
      return absl::InvalidArgumentError(state_path + ": unreadable");
    }
    if (absl::Status st = adapter.LoadCheckpoint(checkpoint); !st.ok()) return st;
    start = state["step"].get<int>();
    std::printf("resumed at step %d\n", start);
  } else if (!options.init_from.empty()) {
    if (absl::Status st =
            adapter.LoadExport(options.init_from, {.seed_rag_head = true, .grow = true});
        !st.ok()) {
      return st;
    }
    std::printf("init: the weights of %s%s\n", options.init_from.c_str(),
                options.config.rag_head ? " (a missing mac+rag head starts as the mac head)" : "");
  } else {
    std::vector<std::vector<int32_t>> sample;
    std::mt19937_64 rng(options.train.seed + 7);
    for (int i = 0; i < 64 && !corpus.answerable().empty(); ++i) {
      const int p = corpus.answerable()[BoundedDraw(rng, corpus.answerable().size())];
      sample.push_back(PassageTokens(*tokenizer, corpus.data().passages[p].text,
                                     options.train.max_passage_tokens));
    }
    absl::StatusOr<double> kept = adapter.InitializeFromPassages(sample);
    if (!kept.ok()) return kept.status();
    std::printf("init: the latent keeps %.1f%% of the pooled KV slots' variance\n", 100 * *kept);
  }
  std::fflush(stdout);

  auto lr_at = [&](int step) {
    if (step < options.warmup) return options.lr * (step + 1) / options.warmup;
    const double progress =
        std::min(1.0, double(step - options.warmup) / std::max(1, options.steps - options.warmup));
    return options.lr * (options.min_lr_ratio +
                         (1.0 - options.min_lr_ratio) * 0.5 * (1.0 + std::cos(M_PI * progress)));
  };
  auto save = [&](int step) -> absl::Status {
    if (absl::Status st = adapter.SaveCheckpoint(checkpoint); !st.ok()) return st;
    std::ofstream out(state_path + ".tmp", std::ios::trunc);
    out << nlohmann::json{{"step", step}, {"steps", options.steps}}.dump() << "\n";
    out.close();
    std::filesystem::rename(state_path + ".tmp", state_path, ec);
    return ec ? absl::InternalError(ec.message()) : absl::OkStatus();
  };

  AdapterLosses window;
  int window_steps = 0;
  auto window_start = Clock::now();
  const int end =
      options.stop_after > 0 ? std::min(options.stop_after, options.steps) : options.steps;
  for (int step = start; step < end; ++step) {
    const int k = CurriculumCandidates(options, step);
    const double lr = lr_at(step);
    absl::StatusOr<AdapterLosses> l = adapter.TrainStep(corpus, options.train, step, lr, k);
    if (!l.ok()) return l.status();
    if (!std::isfinite(l->total)) {
      return absl::InternalError(absl::StrCat("adapter loss is ", l->total, " at step ", step));
    }
    window.total += l->total;
    window.answer_nll += l->answer_nll;
    window.distill += l->distill;
    window.contrastive += l->contrastive;
    window.retrieval_acc += l->retrieval_acc;
    window.context_nll += l->context_nll;
    window.closed_book_nll += l->closed_book_nll;
    ++window_steps;
    const bool last = step + 1 == end;
    if ((step + 1) % options.log_every == 0 || last) {
      const auto now = Clock::now();
      const double per_step =
          std::chrono::duration<double>(now - window_start).count() / window_steps;
      const double eta = per_step * (options.steps - step - 1);
      const double n = window_steps;
      std::printf(
          "step %d/%d  k %d  loss %.4f  nll %.4f (in context %.3f, closed-book %.3f)  kd %.4f  "
          "nce %.4f  acc %.2f  lr %.2e  %.2f s/step  ETA %dm%02ds\n",
          step + 1, options.steps, k, window.total / n, window.answer_nll / n,
          window.context_nll / n, window.closed_book_nll / n, window.distill / n,
          window.contrastive / n, window.retrieval_acc / n, lr, per_step,
          static_cast<int>(eta) / 60, static_cast<int>(eta) % 60);
      std::fflush(stdout);
      window = AdapterLosses();
      window_steps = 0;
      window_start = now;
    }
    if ((step + 1) % options.checkpoint_every == 0 || last) {
      if (absl::Status st = save(step + 1); !st.ok()) return st;
    }
  }

  if (end < options.steps) {
    std::printf("stopped after step %d of %d; continue with --resume\n", end, options.steps);
    return absl::OkStatus();
  }
  const std::string out_dir = options.bundle_dir + "/adapter";
  nlohmann::json training = {{"steps", options.steps},
                             {"batch", options.train.batch},
                             {"questions_per_passage", options.train.questions_per_passage},
                             {"top_k", options.top_k},
                             {"text_fraction", options.train.text_fraction},
                             {"text_distractor_fraction", options.train.text_distractor_fraction},
                             {"text_subject_history", options.train.text_subject_history},
                             {"rag_head_only", options.train.rag_head_only},
                             {"lr", options.lr},
                             {"seed", options.train.seed}};
  if (!options.init_from.empty()) {
    // The run this one started from, as its export recorded it.
    std::ifstream in(options.init_from + "/adapter.json");
    const nlohmann::json init = nlohmann::json::parse(in, nullptr, false);
    training["init_from"] =
        init.is_object() && init.contains("training") ? init["training"] : nlohmann::json(nullptr);
  }
  if (absl::Status st =
          adapter.Export(out_dir, options.export_dtype, *fingerprint, training.dump());
      !st.ok()) {
    return st;
  }
  std::printf("exported %s (base sha256 %s)\n", out_dir.c_str(), fingerprint->c_str());

  if (options.eval_questions > 0) {
    absl::StatusOr<SplitData> valid = ReadSplit(options.data_dir, Split::kValid);
    if (!valid.ok()) return valid.status();
    absl::StatusOr<ReadingScore> oracle =
        ScoreReading(**base, *tokenizer, *valid, options.eval_questions);
    if (!oracle.ok()) return oracle.status();
    AdapterCorpus valid_corpus(*std::move(valid), tokenizer);
    absl::StatusOr<AdapterScore> s = adapter.Score(
        valid_corpus, options.eval_questions, options.top_k, 99, options.train.max_passage_tokens);
    if (!s.ok()) return s.status();
    std::printf(
        "valid: %d questions  oracle EM %.3f  closed-book EM %.3f  mac EM: gold only %.3f, "
        "gold + %d distractors %.3f, retrieved top-%d %.3f  recall@1 %.3f  recall@%d %.3f\n",
        s->questions, oracle->oracle_em, oracle->closed_book_em, s->gold_em, s->top_k - 1,
        s->distractor_em, s->top_k, s->retrieved_em, s->recall_at_1, s->top_k, s->recall_at_k);
    for (const std::string& e : s->examples) std::printf("  %s\n", e.c_str());
  }
  std::printf("done in %.1f s\n", std::chrono::duration<double>(Clock::now() - t0).count());
  return absl::OkStatus();
}

}  // namespace knowd::train
