// A small Llama checkpoint with seeded random weights in the Hugging Face layout (config.json +
// model.safetensors), held on the host so tests can change weights and write the model again, and
// random low-rank factors for it (model/low_rank.h) with a float64 reference of their update.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/math.h"
#include "model/low_rank.h"
#include "model/tensor_file.h"

namespace knowd::testing {

struct RandomLlama {
  int vocab = 64, hidden = 32, layers = 2, heads = 4, kv_heads = 2, head_dim = 8, intermediate = 64;
  int q_dim() const { return heads * head_dim; }
  int kv_dim() const { return kv_heads * head_dim; }
  // name -> (shape, f32 values), Hugging Face names.
  std::map<std::string, std::pair<std::vector<int64_t>, std::vector<float>>> tensors;

  static std::string LayerName(int layer, const char* what) {
    return absl::StrCat("model.layers.", layer, ".", what);
  }

  // Norm weights near 1, matrices normal(0, 1/sqrt(fan_in)).
  static RandomLlama Make(uint64_t seed) {
    RandomLlama m;
    std::mt19937_64 rng(seed);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    auto matrix = [&](const std::string& name, int out, int in) {
      std::vector<float> v(static_cast<size_t>(out) * in);
      for (float& x : v) x = normal(rng) / std::sqrt(static_cast<float>(in));
      m.tensors[name] = {{out, in}, std::move(v)};
    };
    auto norm = [&](const std::string& name, int dim) {
      std::vector<float> v(dim);
      for (float& x : v) x = 1.0f + 0.1f * normal(rng);
      m.tensors[name] = {{dim}, std::move(v)};
    };
    matrix("model.embed_tokens.weight", m.vocab, m.hidden);
    norm("model.norm.weight", m.hidden);
    matrix("lm_head.weight", m.vocab, m.hidden);
    for (int l = 0; l < m.layers; ++l) {
      norm(LayerName(l, "input_layernorm.weight"), m.hidden);
      matrix(LayerName(l, "self_attn.q_proj.weight"), m.q_dim(), m.hidden);
      matrix(LayerName(l, "self_attn.k_proj.weight"), m.kv_dim(), m.hidden);
      matrix(LayerName(l, "self_attn.v_proj.weight"), m.kv_dim(), m.hidden);
      matrix(LayerName(l, "self_attn.o_proj.weight"), m.hidden, m.q_dim());
      norm(LayerName(l, "post_attention_layernorm.weight"), m.hidden);
      matrix(LayerName(l, "mlp.gate_proj.weight"), m.intermediate, m.hidden);
      matrix(LayerName(l, "mlp.up_proj.weight"), m.intermediate, m.hidden);
      matrix(LayerName(l, "mlp.down_proj.weight"), m.hidden, m.intermediate);
    }
    return m;
  }

  // Writes <dir>/config.json and <dir>/model.safetensors; dtype_of(name) gives each 2-D tensor's
  // type (f32, f16 or bf16; values rounded to it), 1-D tensors stay f32.
  absl::Status Write(const std::string& dir,
                     const std::function<DType(const std::string&)>& dtype_of) const {
    std::ofstream config(dir + "/config.json");
    config << "{\"model_type\": \"llama\", \"vocab_size\": " << vocab
           << ", \"hidden_size\": " << hidden << ", \"num_hidden_layers\": " << layers
           << ", \"num_attention_heads\": " << heads << ", \"num_key_value_heads\": " << kv_heads
           << ", \"intermediate_size\": " << intermediate
           << ", \"max_position_embeddings\": 64, \"rms_norm_eps\": 1e-5, \"rope_theta\": 10000.0,"
              " \"bos_token_id\": 1, \"eos_token_id\": 2, \"tie_word_embeddings\": false}\n";
    config.close();
    if (!config) return absl::InternalError("cannot write " + dir + "/config.json");
    std::vector<HostTensor> out;
    std::vector<std::vector<uint16_t>> halves;
    halves.reserve(tensors.size());
    for (const auto& [name, t] : tensors) {
      const auto& [shape, values] = t;
      HostTensor h;
      h.name = name;
      h.shape = shape;
      h.dtype = shape.size() == 2 ? dtype_of(name) : DType::kF32;
      if (h.dtype == DType::kF32) {
        h.data = values.data();
        h.bytes = static_cast<int64_t>(values.size() * sizeof(float));
      } else {
        std::vector<uint16_t>& half = halves.emplace_back(values.size());
        for (size_t i = 0; i < values.size(); ++i) {
          half[i] = h.dtype == DType::kF16 ? F32ToF16(values[i]) : F32ToBF16(values[i]);
        }
        h.data = half.data();
        h.bytes = static_cast<int64_t>(half.size() * sizeof(uint16_t));
      }
      out.push_back(h);
    }
    return WriteSafetensors(dir + "/model.safetensors", out);
  }
  absl::Status Write(const std::string& dir) const {
    return Write(dir, [](const std::string&) { return DType::kF32; });
  }

  // Rounds every 2-D tensor's values to its type under dtype_of (what the written file holds).
  void RoundTo(const std::function<DType(const std::string&)>& dtype_of) {
    for (auto& [name, t] : tensors) {
      if (t.first.size() != 2) continue;
      const DType dtype = dtype_of(name);
      for (float& v : t.second) {
        if (dtype == DType::kF16) v = F16ToF32(F32ToF16(v));
        if (dtype == DType::kBF16) v = BF16ToF32(F32ToBF16(v));
      }
    }
  }

  // The Hugging Face tensors that hold (layer, projection), with each one's first row in the
  // projection's out dimension (q, k, v stacked for kQkv).
  std::vector<std::pair<std::string, int>> Targets(int layer, Projection p) const {
    switch (p) {
      case Projection::kQkv:
        return {{LayerName(layer, "self_attn.q_proj.weight"), 0},
                {LayerName(layer, "self_attn.k_proj.weight"), q_dim()},
                {LayerName(layer, "self_attn.v_proj.weight"), q_dim() + kv_dim()}};
      case Projection::kO:
        return {{LayerName(layer, "self_attn.o_proj.weight"), 0}};
      case Projection::kGate:
        return {{LayerName(layer, "mlp.gate_proj.weight"), 0}};
      case Projection::kUp:
        return {{LayerName(layer, "mlp.up_proj.weight"), 0}};
      case Projection::kDown:
        return {{LayerName(layer, "mlp.down_proj.weight"), 0}};
    }
    return {};
  }
  int InSize(Projection p) const {
    return p == Projection::kO ? q_dim() : p == Projection::kDown ? intermediate : hidden;
  }
  int OutSize(Projection p) const {
    return p == Projection::kQkv                            ? q_dim() + 2 * kv_dim()
           : p == Projection::kGate || p == Projection::kUp ? intermediate
                                                            : hidden;
  }
};

// Random shared factors and states for a RandomLlama, on the host.
struct RandomLowRank {
  int rank = 0, rank_out = 0;
  std::vector<LowRankSite> sites;
  std::vector<std::vector<float>> w2, w1;  // per site: [rank, in], [out, rank_out]

  static RandomLowRank Make(const RandomLlama& m, int rank, int rank_out,
                            std::vector<LowRankSite> sites, uint64_t seed) {
    RandomLowRank f;
    f.rank = rank;
    f.rank_out = rank_out;
    f.sites = std::move(sites);
    std::mt19937_64 rng(seed);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    for (const LowRankSite& s : f.sites) {
      const int in = m.InSize(s.projection), out = m.OutSize(s.projection);
      std::vector<float> w2(static_cast<size_t>(rank) * in),
          w1(static_cast<size_t>(out) * rank_out);
      for (float& x : w2) x = normal(rng) / std::sqrt(static_cast<float>(in));
      for (float& x : w1) x = 0.3f * normal(rng) / std::sqrt(static_cast<float>(rank_out));
      f.w2.push_back(std::move(w2));
      f.w1.push_back(std::move(w1));
    }
    return f;
  }

  int64_t state_floats() const { return static_cast<int64_t>(sites.size()) * rank * rank_out; }
  std::vector<float> RandomState(uint64_t seed, float scale = 1.0f) const {
    std::mt19937_64 rng(seed);
    std::normal_distribution<float> normal(0.0f, scale);
    std::vector<float> h(state_floats());
    for (float& x : h) x = normal(rng);
    return h;
  }

  // m's weights with W + W1 · hᵀ · W2 (in double, rounded once to f32) at every site.
  RandomLlama Apply(const RandomLlama& m, const std::vector<float>& h) const {
    RandomLlama out = m;
    for (size_t i = 0; i < sites.size(); ++i) {
      const Projection p = sites[i].projection;
      const int in = m.InSize(p), rows = m.OutSize(p);
      const float* hs = h.data() + static_cast<int64_t>(i) * rank * rank_out;
      for (const auto& [name, first] : m.Targets(sites[i].layer, p)) {
        std::vector<float>& w = out.tensors.at(name).second;
        const int64_t n_rows = static_cast<int64_t>(w.size()) / in;
        for (int64_t r = 0; r < n_rows; ++r) {
          const int64_t o = first + r;
          if (o >= rows) break;
          // a[j] = Σ_b W1[o, b] · h[j, b]
          std::vector<double> a(rank, 0.0);
          for (int j = 0; j < rank; ++j) {
            for (int b = 0; b < rank_out; ++b) {
              a[j] += double{w1[i][o * rank_out + b]} * hs[j * rank_out + b];
            }
          }
          for (int c = 0; c < in; ++c) {
            double delta = 0;
            for (int j = 0; j < rank; ++j) delta += a[j] * w2[i][int64_t{j} * in + c];
            w[r * in + c] = static_cast<float>(w[r * in + c] + delta);
          }
        }
      }
    }
    return out;
  }
};

}  // namespace knowd::testing
