#include <filesystem>
#include <random>
#include <vector>

#include "absl/strings/str_cat.h"
#include "bench/engine_bench.h"
#include "model/tensor_file.h"

namespace knowd {

LlamaConfig Synthetic30MConfig() {
  LlamaConfig c;
  c.vocab_size = 8192;
  c.hidden_size = 512;
  c.num_layers = 8;
  c.num_heads = 8;
  c.num_kv_heads = 4;
  c.head_dim = 64;
  c.intermediate_size = 1408;
  c.max_position_embeddings = 2048;
  c.rope_theta = 10000.0f;
  c.tie_word_embeddings = false;
  return c;
}

absl::Status WriteSyntheticModel(const std::string& dir, const SyntheticModelOptions& options) {
  const LlamaConfig& c = options.config;
  if (absl::Status s = ValidateConfig(c, "synthetic model"); !s.ok()) return s;
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return absl::InternalError(absl::StrCat(dir, ": ", ec.message()));

  std::mt19937_64 rng(options.seed);
  std::normal_distribution<float> normal(0.0f, 0.02f);
  std::vector<std::vector<float>> storage;
  std::vector<HostTensor> tensors;
  auto add = [&](std::string name, std::vector<int64_t> shape, bool ones) {
    int64_t n = 1;
    for (int64_t s : shape) n *= s;
    std::vector<float>& data = storage.emplace_back(n);
    for (float& v : data) v = ones ? 1.0f : normal(rng);
    HostTensor t;
    t.name = std::move(name);
    t.dtype = DType::kF32;
    t.shape = std::move(shape);
    t.data = data.data();
    t.bytes = n * static_cast<int64_t>(sizeof(float));
    tensors.push_back(std::move(t));
  };
  storage.reserve(4 + 9 * c.num_layers);
  const int64_t d = c.hidden_size;
  add("model.embed_tokens.weight", {c.vocab_size, d}, false);
  for (int l = 0; l < c.num_layers; ++l) {
    const std::string p = absl::StrCat("model.layers.", l, ".");
    add(p + "input_layernorm.weight", {d}, true);
    add(p + "self_attn.q_proj.weight", {c.q_dim(), d}, false);
    add(p + "self_attn.k_proj.weight", {c.kv_dim(), d}, false);
    add(p + "self_attn.v_proj.weight", {c.kv_dim(), d}, false);
    add(p + "self_attn.o_proj.weight", {d, c.q_dim()}, false);
    add(p + "post_attention_layernorm.weight", {d}, true);
    add(p + "mlp.gate_proj.weight", {c.intermediate_size, d}, false);
    add(p + "mlp.up_proj.weight", {c.intermediate_size, d}, false);
    add(p + "mlp.down_proj.weight", {d, c.intermediate_size}, false);
  }
  add("model.norm.weight", {d}, true);
  if (!c.tie_word_embeddings) add("lm_head.weight", {c.vocab_size, d}, false);
  if (absl::Status s = WriteSafetensors(dir + "/model.safetensors", tensors); !s.ok()) return s;
  return WriteHfConfigJson(c, dir + "/config.json");
}

}  // namespace knowd
