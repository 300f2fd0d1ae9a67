// The adapter's networks (adapter_networks.h): their helpers, creating and initialising them, and
// running them as the engine does (Prefix, TraceForTest).
#include "train/adapter_networks.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <string>

#include "absl/strings/str_cat.h"
#include "knowledge/prompt.h"
#include "model/adapter.h"
#include "train/lm_torch.h"

namespace knowd::train {
namespace adapter_internal {

torch::Tensor RmsNormalize(const torch::Tensor& x) {
  return x * torch::rsqrt(x.pow(2).mean(-1, /*keepdim=*/true) + 1e-6);
}

torch::nn::Linear Linear(int64_t in, int64_t out, bool bias) {
  return torch::nn::Linear(torch::nn::LinearOptions(in, out).bias(bias));
}

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

}  // namespace adapter_internal

namespace {

using adapter_internal::Networks;
using adapter_internal::Pad;
using adapter_internal::Sizes;
using internal::TorchAccess;
using internal::TorchError;
using knowledge::QuestionPrompt;

}  // namespace

// ---- adapter -----------------------------------------------------------------------------------

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

// ---- helpers -----------------------------------------------------------------------------------

int64_t PassageKvBytes(const LlamaConfig& base, int tokens) {
  return int64_t{base.num_layers} * tokens * 2 * base.kv_dim() * 2;
}

int64_t LatentBytes(const AdapterConfig& config) {
  return int64_t{config.slots} * config.latent_dim * 2;
}

}  // namespace knowd::train
