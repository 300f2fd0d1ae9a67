#include "model/transformer.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <set>

#include "absl/strings/str_cat.h"
#include "kernels/math.h"
#include "model/tensor_file.h"

namespace knowd {
namespace {

// The checkpoint tensors of one layer, and their names in both supported layouts.
enum class LayerTensor {
  kAttnNorm,
  kQ,
  kK,
  kV,
  kO,
  kQBias,
  kKBias,
  kVBias,
  kFfnNorm,
  kGate,
  kUp,
  kDown
};

std::string LayerTensorName(bool gguf, int layer, LayerTensor t) {
  static constexpr const char* kGguf[] = {
      "attn_norm.weight",   "attn_q.weight",   "attn_k.weight", "attn_v.weight",
      "attn_output.weight", "attn_q.bias",     "attn_k.bias",   "attn_v.bias",
      "ffn_norm.weight",    "ffn_gate.weight", "ffn_up.weight", "ffn_down.weight"};
  static constexpr const char* kHf[] = {
      "input_layernorm.weight",  "self_attn.q_proj.weight", "self_attn.k_proj.weight",
      "self_attn.v_proj.weight", "self_attn.o_proj.weight", "self_attn.q_proj.bias",
      "self_attn.k_proj.bias",   "self_attn.v_proj.bias",   "post_attention_layernorm.weight",
      "mlp.gate_proj.weight",    "mlp.up_proj.weight",      "mlp.down_proj.weight"};
  const int i = static_cast<int>(t);
  return gguf ? absl::StrCat("blk.", layer, ".", kGguf[i])
              : absl::StrCat("model.layers.", layer, ".", kHf[i]);
}

}  // namespace

// ---- KvCache ---------------------------------------------------------------------------------

KvCache::~KvCache() {
  if (backend_ != nullptr) {
    backend_->Free(keys_);
    backend_->Free(values_);
  }
}

absl::Status KvCache::TruncateTokens(int tokens) {
  if (tokens < 0 || tokens > size_ - prefix_) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot keep ", tokens, " tokens of ", size_ - prefix_));
  }
  size_ = prefix_ + tokens;
  return absl::OkStatus();
}

absl::Status KvCache::SetPrefix(std::span<const float> keys, std::span<const float> values, int p) {
  const int64_t want = int64_t{num_layers_} * p * kv_dim_;
  if (p < 0 || p > capacity_) {
    return absl::InvalidArgumentError(
        absl::StrCat("prefix of ", p, " rows does not fit a cache of ", capacity_));
  }
  if (static_cast<int64_t>(keys.size()) != want || static_cast<int64_t>(values.size()) != want) {
    return absl::InvalidArgumentError(
        absl::StrCat("prefix needs ", want, " keys and values (", num_layers_, " layers x ", p,
                     " rows x ", kv_dim_, "), got ", keys.size(), " and ", values.size()));
  }
  const size_t layer_bytes = sizeof(float) * p * kv_dim_;
  for (int l = 0; l < num_layers_; ++l) {
    backend_->Upload(layer_keys(l), keys.data() + int64_t{l} * p * kv_dim_, layer_bytes);
    backend_->Upload(layer_values(l), values.data() + int64_t{l} * p * kv_dim_, layer_bytes);
  }
  size_ = prefix_ = p;
  return absl::OkStatus();
}

absl::Status KvCache::ReadRows(int layer, int begin, int end, std::vector<float>* keys,
                               std::vector<float>* values) const {
  if (layer < 0 || layer >= num_layers_ || begin < 0 || begin > end || end > size_) {
    return absl::InvalidArgumentError(
        absl::StrCat("rows [", begin, ", ", end, ") of layer ", layer, " are outside the cache"));
  }
  const int64_t n = int64_t{end - begin} * kv_dim_;
  keys->resize(n);
  values->resize(n);
  backend_->Download(keys->data(), layer_keys(layer) + int64_t{begin} * kv_dim_, n * sizeof(float));
  backend_->Download(values->data(), layer_values(layer) + int64_t{begin} * kv_dim_,
                     n * sizeof(float));
  return absl::OkStatus();
}

// ---- loading ---------------------------------------------------------------------------------

absl::StatusOr<std::unique_ptr<Transformer>> Transformer::Load(const std::string& path,
                                                               Backend* backend) {
  std::unique_ptr<TensorFile> file;
  LlamaConfig config;
  const bool gguf = !std::filesystem::is_directory(path);
  if (gguf) {
    absl::StatusOr<std::unique_ptr<GgufFile>> g = GgufFile::Open(path);
    if (!g.ok()) return g.status();
    absl::StatusOr<LlamaConfig> c = LlamaConfigFromGguf(**g);
    if (!c.ok()) return c.status();
    config = *c;
    file = std::move(*g);
  } else {
    absl::StatusOr<LlamaConfig> c = LlamaConfigFromHfJson(path + "/config.json");
    if (!c.ok()) return c.status();
    config = *c;
    absl::StatusOr<std::unique_ptr<SafetensorsFile>> s = SafetensorsFile::Open(path);
    if (!s.ok()) return s.status();
    file = std::move(*s);
  }

  std::unique_ptr<Transformer> model(new Transformer());
  model->config_ = config;
  model->backend_ = backend;
  const LlamaConfig& c = model->config_;
  const int64_t d = c.hidden_size;

  auto alloc_bytes = [&](int64_t bytes) -> absl::StatusOr<void*> {
    void* p = backend->Alloc(bytes);
    if (p == nullptr) {
      return absl::ResourceExhaustedError(
          absl::StrCat(path, ": out of ", backend->name(), " memory loading ", bytes, " bytes"));
    }
    model->allocations_.push_back(p);
    model->weight_bytes_ += bytes;
    return p;
  };
  auto alloc = [&](int64_t floats) -> absl::StatusOr<float*> {
    absl::StatusOr<void*> p = alloc_bytes(floats * static_cast<int64_t>(sizeof(float)));
    if (!p.ok()) return p.status();
    return static_cast<float*>(*p);
  };
  // Copies `t` into dst as f32, converting on the backend when the file holds another dtype.
  auto load_into = [&](const HostTensor& t, float* dst) -> absl::Status {
    if (t.dtype == DType::kF32) {
      backend->Upload(dst, t.data, t.bytes);
      return absl::OkStatus();
    }
    if (t.dtype == DType::kI32) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": tensor ", t.name, " is i32, expected a float type"));
    }
    void* raw = backend->Alloc(t.bytes);
    if (raw == nullptr) return absl::ResourceExhaustedError("out of memory converting " + t.name);
    backend->Upload(raw, t.data, t.bytes);
    backend->Dequantize(raw, t.dtype, dst, t.numel());
    backend->Synchronize();
    backend->Free(raw);
    return absl::OkStatus();
  };
  auto load = [&](const std::string& name, std::vector<int64_t> shape) -> absl::StatusOr<float*> {
    absl::StatusOr<const HostTensor*> t = file->Require(name, shape);
    if (!t.ok()) return t.status();
    absl::StatusOr<float*> dst = alloc((*t)->numel());
    if (!dst.ok()) return dst.status();
    if (absl::Status s = load_into(**t, *dst); !s.ok()) return s;
    return *dst;
  };
  // A weight matrix, uploaded as its file holds it.
  auto matrix = [&](const HostTensor& t) -> absl::StatusOr<Matrix> {
    if (t.dtype == DType::kI32) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": tensor ", t.name, " is i32, expected a float type"));
    }
    absl::StatusOr<void*> dst = alloc_bytes(static_cast<int64_t>(t.bytes));
    if (!dst.ok()) return dst.status();
    backend->Upload(*dst, t.data, t.bytes);
    return Matrix{*dst, t.dtype};
  };
  auto load_matrix = [&](const std::string& name,
                         std::vector<int64_t> shape) -> absl::StatusOr<Matrix> {
    absl::StatusOr<const HostTensor*> t = file->Require(name, shape);
    if (!t.ok()) return t.status();
    return matrix(**t);
  };
#define KNOWD_ASSIGN(lhs, expr)                 \
  do {                                          \
    auto result_ = (expr);                      \
    if (!result_.ok()) return result_.status(); \
    lhs = *result_;                             \
  } while (0)

  // Token embedding: kept in its file dtype; the Embedding op dequantizes rows on the fly.
  const std::string embed_name = gguf ? "token_embd.weight" : "model.embed_tokens.weight";
  absl::StatusOr<const HostTensor*> embed =
      file->Require(embed_name, std::vector<int64_t>{c.vocab_size, d});
  if (!embed.ok()) return embed.status();
  KNOWD_ASSIGN(model->embedding_, matrix(**embed));

  KNOWD_ASSIGN(model->output_norm_, load(gguf ? "output_norm.weight" : "model.norm.weight", {d}));
  const std::string output_name = gguf ? "output.weight" : "lm_head.weight";
  if (file->Find(output_name) != nullptr) {
    model->config_.tie_word_embeddings = false;
    KNOWD_ASSIGN(model->output_, load_matrix(output_name, {c.vocab_size, d}));
  } else {
    model->config_.tie_word_embeddings = true;
    model->output_ = model->embedding_;
  }

  model->layers_.resize(c.num_layers);
  for (int l = 0; l < c.num_layers; ++l) {
    Layer& layer = model->layers_[l];
    auto name = [&](LayerTensor t) { return LayerTensorName(gguf, l, t); };
    KNOWD_ASSIGN(layer.attn_norm, load(name(LayerTensor::kAttnNorm), {d}));
    const std::pair<LayerTensor, int64_t> parts[] = {
        {LayerTensor::kQ, c.q_dim()}, {LayerTensor::kK, c.kv_dim()}, {LayerTensor::kV, c.kv_dim()}};
    const HostTensor* qkv[3];
    for (int p = 0; p < 3; ++p) {
      absl::StatusOr<const HostTensor*> t =
          file->Require(name(parts[p].first), std::vector{parts[p].second, d});
      if (!t.ok()) return t.status();
      qkv[p] = *t;
    }
    if (qkv[0]->dtype == qkv[1]->dtype && qkv[1]->dtype == qkv[2]->dtype &&
        qkv[0]->dtype != DType::kI32) {
      // One matrix of the stacked rows: one product per layer instead of three.
      const int64_t bytes = static_cast<int64_t>(qkv[0]->bytes + qkv[1]->bytes + qkv[2]->bytes);
      absl::StatusOr<void*> dst = alloc_bytes(bytes);
      if (!dst.ok()) return dst.status();
      size_t offset = 0;
      for (const HostTensor* t : qkv) {
        backend->Upload(static_cast<char*>(*dst) + offset, t->data, t->bytes);
        offset += t->bytes;
      }
      layer.qkv.push_back(
          {Matrix{*dst, qkv[0]->dtype}, 0, static_cast<int>(c.q_dim() + 2 * c.kv_dim())});
    } else {
      int row = 0;
      for (int p = 0; p < 3; ++p) {
        Matrix m;
        KNOWD_ASSIGN(m, matrix(*qkv[p]));
        layer.qkv.push_back({m, row, static_cast<int>(parts[p].second)});
        row += static_cast<int>(parts[p].second);
      }
    }
    if (c.attention_bias) {
      KNOWD_ASSIGN(layer.bqkv, alloc(c.q_dim() + 2 * c.kv_dim()));
      const std::pair<LayerTensor, int64_t> biases[] = {{LayerTensor::kQBias, c.q_dim()},
                                                        {LayerTensor::kKBias, c.kv_dim()},
                                                        {LayerTensor::kVBias, c.kv_dim()}};
      int64_t row = 0;
      for (auto [which, rows] : biases) {
        absl::StatusOr<const HostTensor*> t = file->Require(name(which), std::vector{rows});
        if (!t.ok()) return t.status();
        if (absl::Status s = load_into(**t, layer.bqkv + row); !s.ok()) return s;
        row += rows;
      }
    }
    KNOWD_ASSIGN(layer.wo, load_matrix(name(LayerTensor::kO), {d, c.q_dim()}));
    KNOWD_ASSIGN(layer.ffn_norm, load(name(LayerTensor::kFfnNorm), {d}));
    KNOWD_ASSIGN(layer.w_gate, load_matrix(name(LayerTensor::kGate), {c.intermediate_size, d}));
    KNOWD_ASSIGN(layer.w_up, load_matrix(name(LayerTensor::kUp), {c.intermediate_size, d}));
    KNOWD_ASSIGN(layer.w_down, load_matrix(name(LayerTensor::kDown), {d, c.intermediate_size}));
  }
#undef KNOWD_ASSIGN
  backend->Synchronize();
  return model;
}

Transformer::~Transformer() {
  for (void* p : allocations_) backend_->Free(p);
  for (auto& [p, n] : scratch_) backend_->Free(p);
}

int64_t Transformer::WeightBytesPerToken() const {
  const LlamaConfig& c = config_;
  const int64_t d = c.hidden_size;
  const int64_t ff = c.intermediate_size;
  int64_t bytes = DTypeBytes(embedding_.dtype, d) + DTypeBytes(output_.dtype, c.vocab_size * d) +
                  static_cast<int64_t>(sizeof(float)) * d;
  for (const Layer& w : layers_) {
    for (const QkvPart& p : w.qkv) bytes += DTypeBytes(p.w.dtype, p.rows * d);
    bytes += DTypeBytes(w.wo.dtype, d * c.q_dim()) + DTypeBytes(w.w_gate.dtype, ff * d) +
             DTypeBytes(w.w_up.dtype, ff * d) + DTypeBytes(w.w_down.dtype, d * ff) +
             static_cast<int64_t>(sizeof(float)) * 2 * d;
  }
  return bytes;
}

std::string Transformer::WeightTypes() const {
  std::set<std::string> types = {std::string(DTypeName(output_.dtype))};
  for (const Layer& w : layers_) {
    for (const QkvPart& p : w.qkv) types.insert(std::string(DTypeName(p.w.dtype)));
    for (const Matrix* m : {&w.wo, &w.w_gate, &w.w_up, &w.w_down}) {
      types.insert(std::string(DTypeName(m->dtype)));
    }
  }
  std::string joined;
  for (const std::string& t : types) joined += (joined.empty() ? "" : ", ") + t;
  return joined;
}

absl::StatusOr<std::unique_ptr<KvCache>> Transformer::NewCache(int capacity, bool allow_longer) {
  if (capacity <= 0 || (!allow_longer && capacity > config_.max_position_embeddings)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "cache capacity ", capacity,
        " is outside [1, max_position_embeddings=", config_.max_position_embeddings, "]"));
  }
  std::unique_ptr<KvCache> cache(new KvCache());
  cache->backend_ = backend_;
  cache->num_layers_ = config_.num_layers;
  cache->kv_dim_ = config_.kv_dim();
  cache->capacity_ = capacity;
  const size_t bytes = sizeof(float) * config_.num_layers * int64_t{capacity} * config_.kv_dim();
  cache->keys_ = static_cast<float*>(backend_->Alloc(bytes));
  cache->values_ = static_cast<float*>(backend_->Alloc(bytes));
  if (cache->keys_ == nullptr || cache->values_ == nullptr) {
    return absl::ResourceExhaustedError(
        absl::StrCat("out of ", backend_->name(), " memory for a KV cache of ", capacity, " rows"));
  }
  return cache;
}

float* Transformer::Scratch(int slot, int64_t floats) {
  if (static_cast<int>(scratch_.size()) <= slot) scratch_.resize(slot + 1, {nullptr, 0});
  auto& [ptr, size] = scratch_[slot];
  if (size < floats) {
    backend_->Synchronize();
    backend_->Free(ptr);
    size = std::max(floats, size * 2);
    ptr = static_cast<float*>(backend_->Alloc(size * sizeof(float)));
  }
  return ptr;
}

// ---- forward ---------------------------------------------------------------------------------

absl::Status Transformer::Forward(std::span<const SequenceStep> batch, std::vector<float>* logits,
                                  const TrunkCapture* capture) {
  const LlamaConfig& c = config_;
  if (batch.empty()) return absl::InvalidArgumentError("empty batch");
  int total = 0;
  int n_out = 0;
  std::set<const KvCache*> seen;
  const LowRankFactors* factors = nullptr;  // of the batch's low-rank updates, if any
  for (const SequenceStep& s : batch) {
    if (s.cache == nullptr || s.tokens.empty()) {
      return absl::InvalidArgumentError("every sequence needs a cache and at least one token");
    }
    if (!seen.insert(s.cache).second) {
      return absl::InvalidArgumentError("a cache appears twice in one batch");
    }
    if (s.cache->backend_ != backend_ || s.cache->num_layers_ != c.num_layers ||
        s.cache->kv_dim_ != c.kv_dim()) {
      return absl::InvalidArgumentError("cache was not made by this model");
    }
    if (s.cache->size_ + static_cast<int64_t>(s.tokens.size()) > s.cache->capacity_) {
      return absl::OutOfRangeError(absl::StrCat("sequence of ", s.cache->size_, " + ",
                                                s.tokens.size(), " rows exceeds its cache of ",
                                                s.cache->capacity_));
    }
    for (int32_t id : s.tokens) {
      if (id < 0 || id >= c.vocab_size) {
        return absl::InvalidArgumentError(
            absl::StrCat("token id ", id, " is outside the vocabulary [0, ", c.vocab_size, ")"));
      }
    }
    if (s.update != nullptr) {
      if (s.update->factors()->model() != this) {
        return absl::InvalidArgumentError("a low-rank state was made for another model");
      }
      if (factors != nullptr && s.update->factors() != factors) {
        return absl::InvalidArgumentError(
            "the low-rank states of one batch must share one LowRankFactors");
      }
      factors = s.update->factors();
    }
    total += static_cast<int>(s.tokens.size());
    n_out += s.all_logits ? static_cast<int>(s.tokens.size()) : 1;
  }

  const int64_t d = c.hidden_size;
  const int64_t qkv_dim = c.q_dim() + 2 * c.kv_dim();
  const int64_t ff = c.intermediate_size;
  std::vector<int32_t> ids;
  std::vector<int32_t> positions;
  ids.reserve(total);
  positions.reserve(total);
  for (const SequenceStep& s : batch) {
    for (size_t i = 0; i < s.tokens.size(); ++i) {
      ids.push_back(s.tokens[i]);
      positions.push_back(s.cache->size_ + static_cast<int32_t>(i));
    }
  }
  // Scratch slots: 0 x, 1 normed, 2 qkv, 3 attention out, 4 gate, 5 up, 6 ids, 7 positions,
  // 8 logits.
  float* x = Scratch(0, total * d);
  float* h = Scratch(1, std::max(total, n_out) * d);
  float* qkv = Scratch(2, total * qkv_dim);
  float* attn = Scratch(3, total * int64_t{c.q_dim()});
  float* gate = Scratch(4, total * ff);
  float* up = Scratch(5, total * ff);
  auto* ids_dev = reinterpret_cast<int32_t*>(Scratch(6, total));
  auto* pos_dev = reinterpret_cast<int32_t*>(Scratch(7, total));
  float* logits_dev = logits != nullptr ? Scratch(8, int64_t{n_out} * c.vocab_size) : nullptr;
  backend_->Upload(ids_dev, ids.data(), ids.size() * sizeof(int32_t));
  backend_->Upload(pos_dev, positions.data(), positions.size() * sizeof(int32_t));

  // Low-rank updates: the distinct states side by side in one buffer [groups][sites][r][r2], and
  // per site a row -> matrix index (group * sites + site, or -1 for rows without an update), so
  // LowRankUpdate reads each row's h of that site. Scratch slots 11 the states, 12 the indices.
  float* lr_mats = nullptr;
  int32_t* lr_index = nullptr;
  if (factors != nullptr) {
    const int n_sites = static_cast<int>(factors->sites().size());
    std::vector<const LowRankState*> states;
    std::vector<int32_t> index(static_cast<size_t>(n_sites) * total, -1);
    int row = 0;
    for (const SequenceStep& s : batch) {
      const int n = static_cast<int>(s.tokens.size());
      if (s.update != nullptr) {
        auto it = std::find(states.begin(), states.end(), s.update);
        const int g = static_cast<int>(it - states.begin());
        if (it == states.end()) states.push_back(s.update);
        for (int site = 0; site < n_sites; ++site) {
          std::fill_n(index.begin() + int64_t{site} * total + row, n, g * n_sites + site);
        }
      }
      row += n;
    }
    lr_mats = Scratch(11, static_cast<int64_t>(states.size()) * factors->state_floats());
    lr_index = reinterpret_cast<int32_t*>(Scratch(12, static_cast<int64_t>(index.size())));
    for (size_t g = 0; g < states.size(); ++g) {
      backend_->Copy(lr_mats + g * factors->state_floats(), states[g]->data(),
                     static_cast<size_t>(states[g]->bytes()));
    }
    backend_->Upload(lr_index, index.data(), index.size() * sizeof(int32_t));
  }
  // Adds the low-rank update of (layer, projection), if a site, to `out` given the projection's
  // input `in`.
  auto low_rank = [&](int layer, Projection projection, const float* in, int64_t ld_in, float* out,
                      int64_t ld_out) {
    if (factors == nullptr) return;
    const int site = factors->SiteIndex(layer, projection);
    if (site < 0) return;
    LowRankUpdateArgs a;
    a.x = in;
    a.ldx = ld_in;
    a.w2t = factors->w2t(site);
    a.mats = lr_mats;
    a.group = lr_index + int64_t{site} * total;
    a.w1t = factors->w1t(site);
    a.y = out;
    a.ldy = ld_out;
    a.rows = total;
    a.in = factors->InSize(projection);
    a.out = factors->OutSize(projection);
    a.rank = factors->rank();
    a.rank_out = factors->rank_out();
    backend_->LowRankUpdate(a);
  };

  backend_->Embedding(embedding_.data, embedding_.dtype, ids_dev, x, total, static_cast<int>(d));
  const float scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
  const size_t kv_row_bytes = sizeof(float) * c.kv_dim();
  for (int l = 0; l < c.num_layers; ++l) {
    const Layer& w = layers_[l];
    backend_->RmsNorm(x, w.attn_norm, h, total, static_cast<int>(d), c.rms_norm_eps);
    for (const QkvPart& p : w.qkv) {
      backend_->MatMulTyped(h, d, p.w.data, p.w.dtype, qkv + p.row, qkv_dim, total, p.rows,
                            static_cast<int>(d), false);
    }
    low_rank(l, Projection::kQkv, h, d, qkv, qkv_dim);
    if (w.bqkv != nullptr) {
      backend_->AddBias(qkv, qkv_dim, w.bqkv, total, static_cast<int>(qkv_dim));
    }
    backend_->Rope(qkv, pos_dev, total, c.num_heads, c.head_dim, qkv_dim, c.rope_theta,
                   c.rope_style);
    backend_->Rope(qkv + c.q_dim(), pos_dev, total, c.num_kv_heads, c.head_dim, qkv_dim,
                   c.rope_theta, c.rope_style);
    int row = 0;
    for (const SequenceStep& s : batch) {
      const int n = static_cast<int>(s.tokens.size());
      KvCache& cache = *s.cache;
      float* k_dst = cache.layer_keys(l) + int64_t{cache.size_} * c.kv_dim();
      float* v_dst = cache.layer_values(l) + int64_t{cache.size_} * c.kv_dim();
      const float* src = qkv + int64_t{row} * qkv_dim;
      backend_->CopyRows(k_dst, kv_row_bytes, src + c.q_dim(), qkv_dim * sizeof(float), n,
                         kv_row_bytes);
      backend_->CopyRows(v_dst, kv_row_bytes, src + c.q_dim() + c.kv_dim(), qkv_dim * sizeof(float),
                         n, kv_row_bytes);
      AttentionArgs a;
      a.q = src;
      a.k = cache.layer_keys(l);
      a.v = cache.layer_values(l);
      a.out = attn + int64_t{row} * c.q_dim();
      a.n_queries = n;
      a.n_past = cache.size_;
      a.n_heads = c.num_heads;
      a.n_kv_heads = c.num_kv_heads;
      a.head_dim = c.head_dim;
      a.q_stride = qkv_dim;
      a.kv_stride = c.kv_dim();
      a.out_stride = c.q_dim();
      a.scale = scale;
      backend_->Attention(a);
      row += n;
    }
    backend_->MatMulTyped(attn, c.q_dim(), w.wo.data, w.wo.dtype, x, d, total, static_cast<int>(d),
                          c.q_dim(), true);
    low_rank(l, Projection::kO, attn, c.q_dim(), x, d);
    backend_->RmsNorm(x, w.ffn_norm, h, total, static_cast<int>(d), c.rms_norm_eps);
    backend_->MatMulTyped(h, d, w.w_gate.data, w.w_gate.dtype, gate, ff, total,
                          static_cast<int>(ff), static_cast<int>(d), false);
    backend_->MatMulTyped(h, d, w.w_up.data, w.w_up.dtype, up, ff, total, static_cast<int>(ff),
                          static_cast<int>(d), false);
    low_rank(l, Projection::kGate, h, d, gate, ff);
    low_rank(l, Projection::kUp, h, d, up, ff);
    backend_->SiluMul(gate, up, gate, total * ff);
    backend_->MatMulTyped(gate, ff, w.w_down.data, w.w_down.dtype, x, d, total, static_cast<int>(d),
                          static_cast<int>(ff), true);
    low_rank(l, Projection::kDown, gate, ff, x, d);
    if (capture != nullptr && capture->hidden != nullptr) {
      backend_->Copy(capture->hidden + int64_t{l} * total * d, x, sizeof(float) * total * d);
    }
  }
  if (logits != nullptr) {
    // Gather the rows whose logits were asked for, then the final norm and the output head.
    int out_row = 0;
    int row = 0;
    for (const SequenceStep& s : batch) {
      const int n = static_cast<int>(s.tokens.size());
      const int first = s.all_logits ? row : row + n - 1;
      const int count = s.all_logits ? n : 1;
      backend_->Copy(h + int64_t{out_row} * d, x + int64_t{first} * d, sizeof(float) * d * count);
      out_row += count;
      row += n;
    }
    backend_->RmsNorm(h, output_norm_, h, n_out, static_cast<int>(d), c.rms_norm_eps);
    backend_->MatMulTyped(h, d, output_.data, output_.dtype, logits_dev, c.vocab_size, n_out,
                          c.vocab_size, static_cast<int>(d), false);
    logits->resize(int64_t{n_out} * c.vocab_size);
    backend_->Download(logits->data(), logits_dev, logits->size() * sizeof(float));
  }
  for (const SequenceStep& s : batch) s.cache->size_ += static_cast<int>(s.tokens.size());
  return absl::OkStatus();
}

// ---- low-rank merge --------------------------------------------------------------------------

absl::Status Transformer::MergeLowRank(const LowRankState& state) {
  const LowRankFactors& f = *state.factors();
  if (f.model() != this) {
    return absl::FailedPreconditionError("the low-rank state was made for another model");
  }
  // The matrices of a site: each with its rows [row, row + rows) of the site's out dimension.
  struct Target {
    Matrix m;
    int row = 0;
    int rows = 0;
  };
  auto targets = [&](const LowRankSite& site) {
    std::vector<Target> t;
    const Layer& w = layers_[site.layer];
    const int out = f.OutSize(site.projection);
    switch (site.projection) {
      case Projection::kQkv:
        for (const QkvPart& p : w.qkv) t.push_back({p.w, p.row, p.rows});
        break;
      case Projection::kO:
        t.push_back({w.wo, 0, out});
        break;
      case Projection::kGate:
        t.push_back({w.w_gate, 0, out});
        break;
      case Projection::kUp:
        t.push_back({w.w_up, 0, out});
        break;
      case Projection::kDown:
        t.push_back({w.w_down, 0, out});
        break;
    }
    return t;
  };
  for (const LowRankSite& site : f.sites()) {
    for (const Target& t : targets(site)) {
      const Matrix& m = t.m;
      if (m.dtype != DType::kF32 && m.dtype != DType::kF16 && m.dtype != DType::kBF16) {
        return absl::FailedPreconditionError(absl::StrCat(
            "cannot merge a low-rank update into the ", std::string(DTypeName(m.dtype)),
            " weights of layer ", site.layer, "'s ", std::string(ProjectionName(site.projection)),
            " projection (only f32, f16 and bf16)"));
      }
    }
  }
  const int r = f.rank();
  const int r2 = f.rank_out();
  std::vector<void*> temps;
  auto temp = [&](int64_t floats) {
    temps.push_back(backend_->Alloc(static_cast<size_t>(floats) * sizeof(float)));
    return static_cast<float*>(temps.back());
  };
  auto free_temps = [&] {
    backend_->Synchronize();
    for (void* p : temps) backend_->Free(p);
    temps.clear();
  };
  for (size_t i = 0; i < f.sites().size(); ++i) {
    const LowRankSite& site = f.sites()[i];
    const int in = f.InSize(site.projection);
    const int out = f.OutSize(site.projection);
    // a = W1 · hᵀ [out, r]; delta = a · W2 [out, in], as a product with the factors' W2ᵀ [in, r]
    // (nn.Linear layout). W1 is made on the host from the factors' W1ᵀ.
    std::vector<float> w1t(static_cast<size_t>(r2) * out);
    backend_->Download(w1t.data(), f.w1t(static_cast<int>(i)), w1t.size() * sizeof(float));
    const std::vector<float> w1 = LowRankTransposed(w1t, r2, out);
    float* w1_dev = temp(int64_t{out} * r2);
    float* a = temp(int64_t{out} * r);
    float* delta = temp(int64_t{out} * in);
    if (w1_dev == nullptr || a == nullptr || delta == nullptr) {
      free_temps();
      return absl::ResourceExhaustedError(
          absl::StrCat("out of ", backend_->name(), " memory merging a low-rank update"));
    }
    backend_->Upload(w1_dev, w1.data(), w1.size() * sizeof(float));
    backend_->MatMul(w1_dev, r2, state.data() + i * r * r2, a, r, out, r, r2, false);
    backend_->MatMul(a, r, f.w2t(static_cast<int>(i)), delta, in, out, in, r, false);
    for (const Target& t : targets(site)) {
      const Matrix& m = t.m;
      const int64_t n = int64_t{t.rows} * in;
      const float* d_rows = delta + int64_t{t.row} * in;
      void* weights = const_cast<void*>(m.data);
      if (m.dtype == DType::kF32) {
        backend_->Add(static_cast<float*>(weights), d_rows, static_cast<float*>(weights), n);
        continue;
      }
      float* sum = temp(n);
      if (sum == nullptr) {
        free_temps();
        return absl::ResourceExhaustedError(
            absl::StrCat("out of ", backend_->name(), " memory merging a low-rank update"));
      }
      backend_->Dequantize(weights, m.dtype, sum, n);
      backend_->Add(sum, d_rows, sum, n);
      std::vector<float> host(static_cast<size_t>(n));
      backend_->Download(host.data(), sum, host.size() * sizeof(float));
      std::vector<uint16_t> half(host.size());
      for (size_t j = 0; j < host.size(); ++j) {
        half[j] = m.dtype == DType::kF16 ? F32ToF16(host[j]) : F32ToBF16(host[j]);
      }
      backend_->Upload(weights, half.data(), half.size() * sizeof(uint16_t));
    }
    free_temps();
  }
  if (absl::Status s = backend_->status(); !s.ok()) return s;
  return absl::OkStatus();
}

}  // namespace knowd
