// The only translation unit of knowd-train that includes libtorch.
#include "train/lm.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "kernels/math.h"
#include "model/sha256.h"
#include "model/tensor_file.h"
#include "train/lm_torch.h"

namespace knowd::train {

using internal::TorchError;
namespace {

struct RmsNormImpl : torch::nn::Module {
  RmsNormImpl(int64_t dim, double eps) : eps(eps) {
    weight = register_parameter("weight", torch::ones({dim}));
  }
  torch::Tensor forward(const torch::Tensor& x) {
    return weight * (x * torch::rsqrt(x.pow(2).mean(-1, /*keepdim=*/true) + eps));
  }
  torch::Tensor weight;
  double eps;
};
TORCH_MODULE(RmsNorm);

torch::nn::Linear MakeLinear(int64_t in, int64_t out) {
  return torch::nn::Linear(torch::nn::LinearOptions(in, out).bias(false));
}

// rotate_half of Hugging Face's Llama: (x1, x2) -> (-x2, x1) over the two halves of head_dim.
torch::Tensor RotateHalf(const torch::Tensor& x) {
  const int64_t half = x.size(-1) / 2;
  return torch::cat({-x.slice(-1, half), x.slice(-1, 0, half)}, -1);
}

struct AttentionImpl : torch::nn::Module {
  explicit AttentionImpl(const LlamaConfig& c) : c(c) {
    q_proj = register_module("q_proj", MakeLinear(c.hidden_size, c.q_dim()));
    k_proj = register_module("k_proj", MakeLinear(c.hidden_size, c.kv_dim()));
    v_proj = register_module("v_proj", MakeLinear(c.hidden_size, c.kv_dim()));
    o_proj = register_module("o_proj", MakeLinear(c.q_dim(), c.hidden_size));
  }
  // x [B, T, hidden]; cos/sin [T, head_dim] for the tokens' positions; mask [T, P + T]
  // (true = masked). prefix_k/prefix_v [B, kv_heads, P, head_dim] are attended to as given (never
  // rotated); undefined means P = 0. When `capture` is set, it receives this layer's keys (after
  // RoPE) and values as [B, T, kv_heads, head_dim].
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin,
                        const torch::Tensor& mask, const torch::Tensor& prefix_k = {},
                        const torch::Tensor& prefix_v = {},
                        internal::TrunkStates* capture = nullptr,
                        const internal::LowRankTorch* update = nullptr, int layer = 0) {
    const int64_t b = x.size(0), t = x.size(1);
    auto q = q_proj(x);
    auto k = k_proj(x);
    auto v = v_proj(x);
    if (update != nullptr) {
      if (const torch::Tensor d = update->Delta(layer, 0, x); d.defined()) {
        q = q + d.slice(-1, 0, c.q_dim());
        k = k + d.slice(-1, c.q_dim(), c.q_dim() + c.kv_dim());
        v = v + d.slice(-1, c.q_dim() + c.kv_dim());
      }
    }
    q = q.view({b, t, c.num_heads, c.head_dim}).transpose(1, 2);
    k = k.view({b, t, c.num_kv_heads, c.head_dim}).transpose(1, 2);
    v = v.view({b, t, c.num_kv_heads, c.head_dim}).transpose(1, 2);
    q = q * cos + RotateHalf(q) * sin;
    k = k * cos + RotateHalf(k) * sin;
    if (capture != nullptr) {
      capture->keys.push_back(k.transpose(1, 2));
      capture->values.push_back(v.transpose(1, 2));
    }
    if (prefix_k.defined()) {
      k = torch::cat({prefix_k, k}, 2);
      v = torch::cat({prefix_v, v}, 2);
    }
    const int64_t group = c.num_heads / c.num_kv_heads;
    if (group > 1) {  // Hugging Face repeat_kv: kv head j serves query heads j*group..
      k = k.repeat_interleave(group, 1);
      v = v.repeat_interleave(group, 1);
    }
    auto scores = torch::matmul(q, k.transpose(-2, -1)) / std::sqrt(double(c.head_dim));
    scores = scores.masked_fill(mask, -std::numeric_limits<float>::infinity());
    auto out =
        torch::matmul(torch::softmax(scores, -1), v).transpose(1, 2).reshape({b, t, c.q_dim()});
    auto y = o_proj(out);
    if (update != nullptr) {
      if (const torch::Tensor d = update->Delta(layer, 1, out); d.defined()) y = y + d;
    }
    return y;
  }
  LlamaConfig c;
  torch::nn::Linear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, o_proj{nullptr};
};
TORCH_MODULE(Attention);

struct MlpImpl : torch::nn::Module {
  explicit MlpImpl(const LlamaConfig& c) {
    gate_proj = register_module("gate_proj", MakeLinear(c.hidden_size, c.intermediate_size));
    up_proj = register_module("up_proj", MakeLinear(c.hidden_size, c.intermediate_size));
    down_proj = register_module("down_proj", MakeLinear(c.intermediate_size, c.hidden_size));
  }
  torch::Tensor forward(const torch::Tensor& x, const internal::LowRankTorch* update = nullptr,
                        int layer = 0) {
    if (update == nullptr) return down_proj(torch::silu(gate_proj(x)) * up_proj(x));
    auto gate = gate_proj(x);
    if (const torch::Tensor d = update->Delta(layer, 2, x); d.defined()) gate = gate + d;
    auto up = up_proj(x);
    if (const torch::Tensor d = update->Delta(layer, 3, x); d.defined()) up = up + d;
    const auto act = torch::silu(gate) * up;
    auto y = down_proj(act);
    if (const torch::Tensor d = update->Delta(layer, 4, act); d.defined()) y = y + d;
    return y;
  }
  torch::nn::Linear gate_proj{nullptr}, up_proj{nullptr}, down_proj{nullptr};
};
TORCH_MODULE(Mlp);

struct DecoderLayerImpl : torch::nn::Module {
  explicit DecoderLayerImpl(const LlamaConfig& c) {
    self_attn = register_module("self_attn", Attention(c));
    mlp = register_module("mlp", Mlp(c));
    input_layernorm = register_module("input_layernorm", RmsNorm(c.hidden_size, c.rms_norm_eps));
    post_attention_layernorm =
        register_module("post_attention_layernorm", RmsNorm(c.hidden_size, c.rms_norm_eps));
  }
  torch::Tensor forward(torch::Tensor x, const torch::Tensor& cos, const torch::Tensor& sin,
                        const torch::Tensor& mask, const torch::Tensor& prefix_k = {},
                        const torch::Tensor& prefix_v = {},
                        internal::TrunkStates* capture = nullptr,
                        const internal::LowRankTorch* update = nullptr, int layer = 0) {
    x = x +
        self_attn(input_layernorm(x), cos, sin, mask, prefix_k, prefix_v, capture, update, layer);
    x = x + mlp(post_attention_layernorm(x), update, layer);
    if (capture != nullptr) capture->hidden.push_back(x);
    return x;
  }
  Attention self_attn{nullptr};
  Mlp mlp{nullptr};
  RmsNorm input_layernorm{nullptr}, post_attention_layernorm{nullptr};
};
TORCH_MODULE(DecoderLayer);

struct LlamaModelImpl : torch::nn::Module {
  explicit LlamaModelImpl(const LlamaConfig& c) {
    embed_tokens =
        register_module("embed_tokens", torch::nn::Embedding(c.vocab_size, c.hidden_size));
    layers = register_module("layers", torch::nn::ModuleList());
    for (int i = 0; i < c.num_layers; ++i) layers->push_back(DecoderLayer(c));
    norm = register_module("norm", RmsNorm(c.hidden_size, c.rms_norm_eps));
  }
  torch::nn::Embedding embed_tokens{nullptr};
  torch::nn::ModuleList layers{nullptr};
  RmsNorm norm{nullptr};
};
TORCH_MODULE(LlamaModel);

struct CausalLmImpl : torch::nn::Module {
  explicit CausalLmImpl(const LlamaConfig& c) : c(c) {
    model = register_module("model", LlamaModel(c));
    if (!c.tie_word_embeddings)
      lm_head = register_module("lm_head", MakeLinear(c.hidden_size, c.vocab_size));
    // Hugging Face's rotary embedding, in f32: inv_freq_i = theta^(-2i/head_dim).
    inv_freq = 1.0 / torch::pow(torch::tensor(double(c.rope_theta)),
                                torch::arange(0, c.head_dim, 2, torch::kFloat64) / c.head_dim);
    inv_freq = inv_freq.to(torch::kFloat32);
  }
  // tokens [B, T] int64 -> logits [B, T, vocab].
  torch::Tensor forward(const torch::Tensor& tokens) { return Run(tokens, {}, {}, nullptr); }

  // The general pass behind forward(): prefix_k/prefix_v [B, layers, P, kv_heads, head_dim] (or
  // undefined) precede the tokens in every layer, unrotated, and the tokens take positions
  // P, P+1, ... — KvCache::SetPrefix's semantics. `capture` (optional) receives per-layer states.
  torch::Tensor Run(const torch::Tensor& tokens, const torch::Tensor& prefix_k,
                    const torch::Tensor& prefix_v, internal::TrunkStates* capture,
                    const internal::LowRankTorch* update = nullptr) {
    const int64_t t = tokens.size(1);
    const int64_t p = prefix_k.defined() ? prefix_k.size(2) : 0;
    auto positions = torch::arange(p, p + t, torch::kFloat32);
    auto freqs = torch::outer(positions, inv_freq);
    auto emb = torch::cat({freqs, freqs}, -1);
    auto cos = emb.cos(), sin = emb.sin();
    auto mask = torch::ones({t, t}, torch::kBool).triu(1);
    if (p > 0) mask = torch::cat({torch::zeros({t, p}, torch::kBool), mask}, 1);
    auto x = model->embed_tokens(tokens);
    for (size_t l = 0; l < model->layers->size(); ++l) {
      torch::Tensor pk, pv;
      if (p > 0) {  // [B, L, P, kvh, hd] -> [B, kvh, P, hd]
        pk = prefix_k.select(1, static_cast<int64_t>(l)).transpose(1, 2);
        pv = prefix_v.select(1, static_cast<int64_t>(l)).transpose(1, 2);
      }
      x = model->layers[l]->as<DecoderLayer>()->forward(x, cos, sin, mask, pk, pv, capture, update,
                                                        static_cast<int>(l));
    }
    x = model->norm(x);
    if (c.tie_word_embeddings) return torch::matmul(x, model->embed_tokens->weight.t());
    return lm_head(x);
  }
  LlamaConfig c;
  LlamaModel model{nullptr};
  torch::nn::Linear lm_head{nullptr};
  torch::Tensor inv_freq;
};
TORCH_MODULE(CausalLm);

// Token ids [rows, cols] as the int64 tensor embeddings take (a copy).
torch::Tensor TokenTensor(std::span<const int32_t> ids, int64_t rows, int64_t cols) {
  return torch::from_blob(const_cast<int32_t*>(ids.data()), {rows, cols}, torch::kInt32)
      .to(torch::kInt64);
}

}  // namespace

struct LanguageModel::Impl {
  LlamaConfig config;
  OptimizerOptions optimizer_options;
  CausalLm net{nullptr};
  std::unique_ptr<torch::optim::AdamW> optimizer;

  // Weighted mean cross-entropy over targets tokens[:, 1:].
  torch::Tensor BatchLoss(const TrainBatch& batch) {
    auto tokens = TokenTensor(batch.tokens, batch.rows, batch.cols);
    auto weights = torch::from_blob(const_cast<float*>(batch.weights.data()),
                                    {batch.rows, batch.cols}, torch::kFloat32);
    auto logits = net->forward(tokens.slice(1, 0, batch.cols - 1));
    auto targets = tokens.slice(1, 1);
    auto w = weights.slice(1, 1);
    auto ce = torch::nn::functional::cross_entropy(
        logits.reshape({-1, config.vocab_size}), targets.reshape({-1}),
        torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kNone));
    return (ce * w.reshape({-1})).sum() / w.sum().clamp_min(1e-9);
  }
};

LanguageModel::LanguageModel(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
LanguageModel::~LanguageModel() = default;

absl::StatusOr<std::unique_ptr<LanguageModel>> LanguageModel::Create(
    const LlamaConfig& config, uint64_t seed, const OptimizerOptions& optimizer) {
  if (absl::Status st = ValidateConfig(config, "knowd-train model"); !st.ok()) return st;
  if (config.rope_style != RopeStyle::kHalf || config.attention_bias) {
    return absl::InvalidArgumentError(
        "knowd-train models use Hugging Face (rotate-half) RoPE and no attention bias");
  }
  try {
    torch::manual_seed(seed);
    auto impl = std::make_unique<Impl>();
    impl->config = config;
    impl->optimizer_options = optimizer;
    impl->net = CausalLm(config);
    torch::NoGradGuard no_grad;
    const double residual_scale = 1.0 / std::sqrt(2.0 * config.num_layers);
    std::vector<torch::Tensor> decay, no_decay;
    for (auto& p : impl->net->named_parameters()) {
      if (p.value().dim() < 2) {
        no_decay.push_back(p.value());
        continue;
      }
      const bool residual = p.key().find("o_proj") != std::string::npos ||
                            p.key().find("down_proj") != std::string::npos;
      p.value().normal_(0.0, residual ? 0.02 * residual_scale : 0.02);
      decay.push_back(p.value());
    }
    std::vector<torch::optim::OptimizerParamGroup> groups;
    auto options = [&](double wd) {
      return std::make_unique<torch::optim::AdamWOptions>(
          torch::optim::AdamWOptions(1e-3)
              .betas({optimizer.beta1, optimizer.beta2})
              .eps(optimizer.eps)
              .weight_decay(wd));
    };
    groups.emplace_back(decay, options(optimizer.weight_decay));
    groups.emplace_back(no_decay, options(0.0));
    impl->optimizer =
        std::make_unique<torch::optim::AdamW>(std::move(groups), torch::optim::AdamWOptions(1e-3));
    return std::unique_ptr<LanguageModel>(new LanguageModel(std::move(impl)));
  } catch (const std::exception& e) {
    return TorchError("creating the model", e);
  }
}

const LlamaConfig& LanguageModel::config() const { return impl_->config; }

int64_t LanguageModel::ParameterCount() const {
  int64_t n = 0;
  for (const auto& p : impl_->net->parameters()) n += p.numel();
  return n;
}

absl::StatusOr<double> LanguageModel::TrainStep(const TrainBatch& batch, double lr) {
  try {
    impl_->net->train();
    for (auto& group : impl_->optimizer->param_groups()) {
      static_cast<torch::optim::AdamWOptions&>(group.options()).lr(lr);
    }
    impl_->optimizer->zero_grad();
    auto loss = impl_->BatchLoss(batch);
    loss.backward();
    if (impl_->optimizer_options.grad_clip > 0) {
      torch::nn::utils::clip_grad_norm_(impl_->net->parameters(),
                                        impl_->optimizer_options.grad_clip);
    }
    impl_->optimizer->step();
    return loss.item<double>();
  } catch (const std::exception& e) {
    return TorchError("training step", e);
  }
}

absl::StatusOr<double> LanguageModel::Loss(const TrainBatch& batch) {
  try {
    torch::NoGradGuard no_grad;
    impl_->net->eval();
    return impl_->BatchLoss(batch).item<double>();
  } catch (const std::exception& e) {
    return TorchError("loss", e);
  }
}

absl::StatusOr<std::vector<float>> LanguageModel::Logits(std::span<const int32_t> tokens) {
  try {
    torch::NoGradGuard no_grad;
    impl_->net->eval();
    auto t = TokenTensor(tokens, 1, static_cast<int64_t>(tokens.size()));
    auto logits = impl_->net->forward(t).contiguous();
    const float* p = logits.data_ptr<float>();
    return std::vector<float>(p, p + logits.numel());
  } catch (const std::exception& e) {
    return TorchError("logits", e);
  }
}

absl::StatusOr<std::vector<int32_t>> LanguageModel::Greedy(std::span<const int32_t> prompt,
                                                           int max_tokens,
                                                           std::span<const int32_t> stop) {
  std::vector<int32_t> sequence(prompt.begin(), prompt.end());
  std::vector<int32_t> out;
  try {
    torch::NoGradGuard no_grad;
    impl_->net->eval();
    for (int i = 0; i < max_tokens; ++i) {
      auto t = torch::from_blob(sequence.data(), {1, static_cast<int64_t>(sequence.size())},
                                torch::kInt32)
                   .to(torch::kInt64);
      auto logits = impl_->net->forward(t);
      const int32_t next = static_cast<int32_t>(logits[0][-1].argmax().item<int64_t>());
      if (std::find(stop.begin(), stop.end(), next) != stop.end()) break;
      out.push_back(next);
      sequence.push_back(next);
    }
  } catch (const std::exception& e) {
    return TorchError("greedy decoding", e);
  }
  return out;
}

absl::Status LanguageModel::SaveCheckpoint(const std::string& path) const {
  return internal::SaveTorchCheckpoint(*impl_->net, *impl_->optimizer, path);
}

absl::Status LanguageModel::LoadCheckpoint(const std::string& path) {
  return internal::LoadTorchCheckpoint(*impl_->net, *impl_->optimizer, path);
}

std::vector<NamedWeight> LanguageModel::Weights() const {
  std::vector<NamedWeight> out;
  torch::NoGradGuard no_grad;
  for (const auto& p : impl_->net->named_parameters()) {
    const torch::Tensor t = p.value().detach().to(torch::kFloat32).contiguous();
    NamedWeight w;
    w.name = p.key();
    w.shape.assign(t.sizes().begin(), t.sizes().end());
    w.data.assign(t.data_ptr<float>(), t.data_ptr<float>() + t.numel());
    out.push_back(std::move(w));
  }
  return out;
}

absl::StatusOr<LanguageModel::SequenceStates> LanguageModel::States(
    std::span<const int32_t> tokens) {
  try {
    torch::NoGradGuard no_grad;
    impl_->net->eval();
    auto t = TokenTensor(tokens, 1, static_cast<int64_t>(tokens.size()));
    internal::TrunkStates states;
    impl_->net->Run(t, {}, {}, &states);
    SequenceStates out;
    out.tokens = static_cast<int>(tokens.size());
    auto append = [](const torch::Tensor& x, std::vector<float>* to) {
      const torch::Tensor c = x.contiguous();
      to->insert(to->end(), c.data_ptr<float>(), c.data_ptr<float>() + c.numel());
    };
    for (size_t l = 0; l < states.hidden.size(); ++l) {
      out.hidden.emplace_back();
      append(states.hidden[l][0], &out.hidden.back());
      append(states.keys[l][0], &out.keys);
      append(states.values[l][0], &out.values);
    }
    return out;
  } catch (const std::exception& e) {
    return TorchError("states", e);
  }
}

absl::StatusOr<std::vector<float>> LanguageModel::LogitsWithPrefix(
    std::span<const float> keys, std::span<const float> values, int p,
    std::span<const int32_t> tokens) {
  const LlamaConfig& c = impl_->config;
  const size_t want = size_t{1} * c.num_layers * std::max(p, 0) * c.kv_dim();
  if (p < 0 || keys.size() != want || values.size() != want) {
    return absl::InvalidArgumentError(
        absl::StrCat("prefix needs ", want, " keys and values (", c.num_layers, " layers x ", p,
                     " rows x ", c.kv_dim(), "), got ", keys.size(), " and ", values.size()));
  }
  try {
    torch::NoGradGuard no_grad;
    impl_->net->eval();
    auto t = TokenTensor(tokens, 1, static_cast<int64_t>(tokens.size()));
    torch::Tensor pk, pv;
    if (p > 0) {
      const std::vector<int64_t> shape = {1, c.num_layers, p, c.num_kv_heads, c.head_dim};
      pk = torch::from_blob(const_cast<float*>(keys.data()), shape, torch::kFloat32);
      pv = torch::from_blob(const_cast<float*>(values.data()), shape, torch::kFloat32);
    }
    auto logits = impl_->net->Run(t, pk, pv, nullptr).contiguous();
    const float* out = logits.data_ptr<float>();
    return std::vector<float>(out, out + logits.numel());
  } catch (const std::exception& e) {
    return TorchError("logits with prefix", e);
  }
}

absl::StatusOr<std::unique_ptr<LanguageModel>> LanguageModel::LoadBundle(const std::string& dir) {
  absl::StatusOr<LlamaConfig> config = LlamaConfigFromHfJson(dir + "/config.json");
  if (!config.ok()) return config.status();
  absl::StatusOr<std::unique_ptr<LanguageModel>> model = Create(*config, 0, OptimizerOptions());
  if (!model.ok()) return model.status();
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file = SafetensorsFile::Open(dir);
  if (!file.ok()) return file.status();
  try {
    torch::NoGradGuard no_grad;
    for (auto& p : (*model)->impl_->net->named_parameters()) {
      const std::vector<int64_t> shape(p.value().sizes().begin(), p.value().sizes().end());
      absl::StatusOr<const HostTensor*> t = (*file)->Require(p.key(), shape);
      if (!t.ok()) return t.status();
      std::vector<float> data((*t)->numel());
      for (int64_t i = 0; i < (*t)->numel(); ++i) data[i] = LoadAsF32((*t)->data, (*t)->dtype, i);
      p.value().copy_(torch::from_blob(data.data(), shape, torch::kFloat32));
    }
  } catch (const std::exception& e) {
    return TorchError(absl::StrCat("loading ", dir), e);
  }
  return model;
}

namespace internal {

torch::Tensor TorchAccess::Forward(LanguageModel& model, const torch::Tensor& tokens,
                                   const torch::Tensor& prefix_keys,
                                   const torch::Tensor& prefix_values, TrunkStates* capture,
                                   const LowRankTorch* update) {
  return model.impl_->net->Run(tokens, prefix_keys, prefix_values, capture, update);
}

torch::Tensor LowRankTorch::Delta(int layer, int projection, const torch::Tensor& x) const {
  const size_t i = static_cast<size_t>(layer) * kProjections + projection;
  if (i >= sites.size() || !sites[i].w1.defined()) return {};
  const Site& s = sites[i];
  // [B, T, in] -> [B, T, r] -> [B, T, r2] -> [B, T, out]
  return torch::matmul(torch::bmm(torch::matmul(x, s.w2.t()), s.h), s.w1.t());
}

void TorchAccess::Freeze(LanguageModel& model) {
  for (auto& p : model.impl_->net->parameters()) p.set_requires_grad(false);
  model.impl_->net->eval();
}

}  // namespace internal

void SetTorchThreads(int threads) { at::set_num_threads(std::max(1, threads)); }

namespace internal {

absl::Status TorchError(std::string_view what, const std::exception& e) {
  std::string message = e.what();
  if (const size_t nl = message.find('\n'); nl != std::string::npos) message.resize(nl);
  return absl::InternalError(absl::StrCat(std::string(what), ": ", message));
}

absl::Status SaveTorchCheckpoint(const torch::nn::Module& net,
                                 const torch::optim::Optimizer& optimizer,
                                 const std::string& path) {
  try {
    torch::serialize::OutputArchive archive;
    net.save(archive);
    torch::serialize::OutputArchive optimizer_archive;
    optimizer.save(optimizer_archive);
    archive.write("optimizer", optimizer_archive);
    const std::string tmp = path + ".tmp";
    archive.save_to(tmp);
    if (std::rename(tmp.c_str(), path.c_str()) != 0) {
      return absl::InternalError(absl::StrCat(path, ": rename failed"));
    }
    return absl::OkStatus();
  } catch (const std::exception& e) {
    return TorchError(absl::StrCat("saving ", path), e);
  }
}

absl::StatusOr<std::string> ExportParametersF16(const torch::nn::Module& net,
                                                const std::string& path,
                                                const std::vector<std::string>& skip,
                                                nlohmann::json* list) {
  std::vector<std::vector<uint16_t>> f16;
  std::vector<HostTensor> tensors;
  torch::NoGradGuard no_grad;
  const auto named = net.named_parameters();
  f16.reserve(named.size());
  for (const auto& p : named) {
    if (std::find(skip.begin(), skip.end(), p.key()) != skip.end()) continue;
    const torch::Tensor t = p.value().detach().to(torch::kFloat32).contiguous();
    HostTensor h;
    h.name = p.key();
    h.shape.assign(t.sizes().begin(), t.sizes().end());
    f16.emplace_back(t.numel());
    const float* data = t.data_ptr<float>();
    for (int64_t i = 0; i < t.numel(); ++i) f16.back()[i] = F32ToF16(data[i]);
    h.dtype = DType::kF16;
    h.data = f16.back().data();
    h.bytes = static_cast<int64_t>(f16.back().size() * sizeof(uint16_t));
    if (list != nullptr) list->push_back({{"name", h.name}, {"shape", h.shape}, {"dtype", "F16"}});
    tensors.push_back(std::move(h));
  }
  if (absl::Status s = WriteSafetensors(path, tensors, {}); !s.ok()) return s;
  return Sha256OfFile(path);
}

absl::Status LoadParameters(torch::nn::Module& net, const std::string& path) {
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file = SafetensorsFile::Open(path);
  if (!file.ok()) return file.status();
  try {
    torch::NoGradGuard no_grad;
    auto params = net.named_parameters();
    for (const HostTensor& t : (*file)->tensors()) {
      torch::Tensor* p = params.find(t.name);
      if (p == nullptr) {
        return absl::InvalidArgumentError(absl::StrCat(path, ": unknown tensor ", t.name));
      }
      if (p->numel() != t.numel()) {
        return absl::InvalidArgumentError(
            absl::StrCat(path, ": ", t.name, " has ", t.numel(), " values, not ", p->numel()));
      }
      std::vector<float> data(t.numel());
      for (int64_t i = 0; i < t.numel(); ++i) data[i] = LoadAsF32(t.data, t.dtype, i);
      p->copy_(torch::from_blob(data.data(), p->sizes(), torch::kFloat32));
    }
  } catch (const std::exception& e) {
    return TorchError(absl::StrCat("loading ", path), e);
  }
  return absl::OkStatus();
}

absl::Status LoadTorchCheckpoint(torch::nn::Module& net, torch::optim::Optimizer& optimizer,
                                 const std::string& path) {
  try {
    torch::serialize::InputArchive archive;
    archive.load_from(path);
    net.load(archive);
    torch::serialize::InputArchive optimizer_archive;
    if (!archive.try_read("optimizer", optimizer_archive)) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": no optimizer state"));
    }
    optimizer.load(optimizer_archive);
    return absl::OkStatus();
  } catch (const std::exception& e) {
    return TorchError(absl::StrCat("loading ", path), e);
  }
}

}  // namespace internal

}  // namespace knowd::train
