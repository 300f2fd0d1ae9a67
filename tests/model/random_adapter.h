// A MAC adapter export with seeded random weights for any base model, in the layout of
// train::Adapter::Export (adapter.json + adapter.safetensors, f32), so tests without libtorch
// can load a real knowd::Adapter (tests/model, tests/eval, tests/storage). Its answers are
// meaningless; its shapes, names and determinism are those of a trained one.
#pragma once

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "model/adapter.h"
#include "model/config.h"
#include "model/tensor_file.h"
#include "nlohmann/json.hpp"

namespace knowd::testing {

// Small hyper-parameters that fit any base.
inline AdapterSpec SmallAdapterSpec() {
  AdapterSpec s;
  s.slots = 4;
  s.latent_dim = 16;
  s.key_dim = 8;
  s.heads = 2;
  s.mlp_ratio = 2;
  s.readout_blocks = 1;
  s.question_blocks = 1;
  s.aggregator_blocks = 1;
  s.max_candidates = 4;
  return s;
}

// Writes <dir>/adapter.json and <dir>/adapter.safetensors for `base`. Norm weights are 1,
// matrices normal(0, 1/sqrt(fan_in)), biases and the sink rows normal(0, 0.1).
inline absl::Status WriteRandomAdapter(const std::string& dir, const LlamaConfig& base,
                                       const AdapterSpec& spec, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const int64_t d = spec.latent_dim, t = spec.slots, layers = base.num_layers;
  const int64_t kv_width = 2 * layers * base.kv_dim(), mlp = int64_t{spec.mlp_ratio} * d;
  std::vector<std::pair<std::string, std::vector<int64_t>>> shapes;
  std::vector<std::vector<float>> data;
  auto add = [&](const std::string& name, std::vector<int64_t> shape, float std_dev, float mean) {
    int64_t n = 1;
    for (int64_t x : shape) n *= x;
    std::vector<float> v(n);
    for (float& x : v) x = mean + std_dev * normal(rng);
    shapes.emplace_back(name, std::move(shape));
    data.push_back(std::move(v));
  };
  auto matrix = [&](const std::string& name, int64_t out, int64_t in) {
    add(name, {out, in}, 1.0f / std::sqrt(static_cast<float>(in)), 0.0f);
  };
  auto norm = [&](const std::string& name) { add(name, {d}, 0.0f, 1.0f); };
  auto block = [&](const std::string& prefix, bool conditioned) {
    norm(prefix + "norm_x.weight");
    norm(prefix + "norm_memory.weight");
    if (conditioned) norm(prefix + "norm_condition.weight");
    for (const char* m : {"q", "k", "v", "o"}) matrix(absl::StrCat(prefix, m, ".weight"), d, d);
    norm(prefix + "norm_mlp.weight");
    matrix(prefix + "up.weight", mlp, d);
    matrix(prefix + "down.weight", d, mlp);
  };
  auto encoder = [&](const std::string& prefix, int blocks) {
    for (int64_t l = 0; l < layers; ++l) {
      matrix(absl::StrCat(prefix, "mix.proj.", l, ".weight"), d, base.hidden_size);
    }
    for (int i = 0; i < blocks; ++i) block(absl::StrCat(prefix, "blocks.", i, "."), false);
    matrix(prefix + "key.weight", spec.key_dim, d);
  };
  add("log_scale", {1}, 0.0f, std::log(20.0f));
  add("readout.pool_queries", {layers, base.num_kv_heads, t, base.head_dim}, 1.0f, 0.0f);
  matrix("readout.compress.weight", d, kv_width);
  add("readout.compress.bias", {d}, 0.1f, 0.0f);
  encoder("readout.", spec.readout_blocks);
  add("question.queries", {t, d}, 1.0f, 0.0f);
  encoder("question.", spec.question_blocks);
  add("aggregator.rank.weight", {spec.max_candidates, d}, 1.0f, 0.0f);
  add("aggregator.score.weight", {d, 1}, 1.0f, 0.0f);
  for (int i = 0; i < spec.aggregator_blocks; ++i) {
    block(absl::StrCat("aggregator.blocks.", i, "."), true);
  }
  add("expander.sink_keys", {layers, base.num_kv_heads, base.head_dim}, 0.1f, 0.0f);
  add("expander.sink_values", {layers, base.num_kv_heads, base.head_dim}, 0.1f, 0.0f);
  matrix("expander.expand.weight", kv_width, d);
  add("expander.expand.bias", {kv_width}, 0.1f, 0.0f);

  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return absl::InternalError(absl::StrCat(dir, ": ", ec.message()));
  std::vector<HostTensor> tensors;
  nlohmann::json list = nlohmann::json::array();
  for (size_t i = 0; i < shapes.size(); ++i) {
    HostTensor h;
    h.name = shapes[i].first;
    h.shape = shapes[i].second;
    h.dtype = DType::kF32;
    h.data = data[i].data();
    h.bytes = static_cast<int64_t>(data[i].size() * sizeof(float));
    tensors.push_back(h);
    list.push_back({{"name", h.name}, {"shape", h.shape}, {"dtype", "F32"}});
  }
  if (absl::Status s = WriteSafetensors(dir + "/adapter.safetensors", tensors); !s.ok()) return s;
  const nlohmann::json j = {{"format", "knowd-adapter"},
                            {"version", 1},
                            {"design", "mac-pooled-kv"},
                            {"base_model",
                             {{"sha256", spec.base_sha256},
                              {"hidden_size", base.hidden_size},
                              {"num_hidden_layers", base.num_layers},
                              {"num_key_value_heads", base.num_kv_heads},
                              {"head_dim", base.head_dim},
                              {"vocab_size", base.vocab_size}}},
                            {"slots", spec.slots},
                            {"prefix_rows", spec.slots + 1},
                            {"latent_dim", spec.latent_dim},
                            {"key_dim", spec.key_dim},
                            {"heads", spec.heads},
                            {"mlp_ratio", spec.mlp_ratio},
                            {"readout_blocks", spec.readout_blocks},
                            {"question_blocks", spec.question_blocks},
                            {"aggregator_blocks", spec.aggregator_blocks},
                            {"max_candidates", spec.max_candidates},
                            {"tensors", list}};
  std::ofstream out(dir + "/adapter.json", std::ios::trunc);
  out << j.dump(2) << "\n";
  if (!out.good()) return absl::InternalError(absl::StrCat(dir, "/adapter.json: write failed"));
  return absl::OkStatus();
}

// Retrieval heads (model/retrieval_keys.h) with seeded random weights beside an adapter in `dir`:
// retrieval_keys.json + retrieval_keys.safetensors (f32) reading the base's first and last layers.
inline absl::Status WriteRandomRetrievalKeys(const std::string& dir, const LlamaConfig& base,
                                             int key_dim, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const std::vector<int> layers = {0, base.num_layers - 1};
  const int64_t heads = 2, dim = static_cast<int64_t>(layers.size()) * base.hidden_size;
  std::vector<std::vector<float>> data;
  std::vector<HostTensor> tensors;
  for (const char* side : {"passage", "question"}) {
    for (auto [name, shape] :
         {std::pair{"query", std::vector<int64_t>{heads, dim}},
          std::pair{"proj.weight", std::vector<int64_t>{key_dim, heads * dim}}}) {
      std::vector<float> v(shape[0] * shape[1]);
      for (float& x : v) x = normal(rng) / std::sqrt(static_cast<float>(shape[1]));
      data.push_back(std::move(v));
      HostTensor t;
      t.name = absl::StrCat(side, ".", name);
      t.shape = shape;
      t.data = data.back().data();
      t.bytes = static_cast<int64_t>(data.back().size() * sizeof(float));
      tensors.push_back(std::move(t));
    }
  }
  if (absl::Status s = WriteSafetensors(dir + "/retrieval_keys.safetensors", tensors); !s.ok()) {
    return s;
  }
  const nlohmann::json j = {{"format", "knowd-retrieval-keys"},
                            {"version", 1},
                            {"layers", layers},
                            {"heads", heads},
                            {"key_dim", key_dim},
                            {"state_dim", dim}};
  std::ofstream out(dir + "/retrieval_keys.json", std::ios::trunc);
  out << j.dump(2) << "\n";
  if (!out.good())
    return absl::InternalError(absl::StrCat(dir, "/retrieval_keys.json: write failed"));
  return absl::OkStatus();
}

}  // namespace knowd::testing
