#include "model/config.h"

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>
#include <type_traits>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "model/tensor_file.h"
#include "nlohmann/json.hpp"

namespace knowd {

int64_t LlamaConfig::ParameterCount() const {
  const int64_t d = hidden_size;
  const int64_t attn = d * q_dim() * 2 + d * kv_dim() * 2;
  const int64_t mlp = 3 * d * intermediate_size;
  const int64_t per_layer = attn + mlp + 2 * d;
  const int64_t embeddings = int64_t{vocab_size} * d * (tie_word_embeddings ? 1 : 2);
  return per_layer * num_layers + embeddings + d;
}

absl::Status ValidateConfig(const LlamaConfig& c, const std::string& source) {
  auto bad = [&](absl::string_view what) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": ", what));
  };
  if (c.vocab_size <= 0) return bad("vocab_size must be positive");
  if (c.hidden_size <= 0) return bad("hidden_size must be positive");
  if (c.num_layers <= 0) return bad("num_hidden_layers must be positive");
  if (c.num_heads <= 0 || c.num_kv_heads <= 0) return bad("head counts must be positive");
  if (c.num_heads % c.num_kv_heads != 0) {
    return bad(absl::StrCat("num_attention_heads (", c.num_heads,
                            ") is not a multiple of num_key_value_heads (", c.num_kv_heads, ")"));
  }
  if (c.head_dim <= 0 || c.head_dim % 2 != 0) return bad("head_dim must be positive and even");
  // q_dim() and kv_dim() are ints.
  if (int64_t{c.num_heads} * c.head_dim > std::numeric_limits<int>::max()) {
    return bad(absl::StrCat("num_attention_heads x head_dim (", c.num_heads, " x ", c.head_dim,
                            ") is too large"));
  }
  if (c.intermediate_size <= 0) return bad("intermediate_size must be positive");
  if (c.max_position_embeddings <= 0) return bad("max_position_embeddings must be positive");
  if (!(c.rms_norm_eps > 0)) return bad("rms_norm_eps must be positive");
  if (!(c.rope_theta > 0)) return bad("rope_theta must be positive");
  return absl::OkStatus();
}

absl::StatusOr<LlamaConfig> LlamaConfigFromHfJson(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open"));
  std::stringstream text;
  text << in.rdbuf();
  nlohmann::json j = nlohmann::json::parse(text.str(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a JSON object"));
  }
  LlamaConfig c;
  // Reads an optional numeric field; a present field of the wrong type is an error.
  absl::Status status;
  auto number = [&](const char* key, auto* out, bool required) {
    auto it = j.find(key);
    if (it == j.end() || it->is_null()) {
      if (required && status.ok()) {
        status = absl::InvalidArgumentError(absl::StrCat(path, ": missing \"", key, "\""));
      }
      return;
    }
    if (!it->is_number()) {
      if (status.ok()) {
        status = absl::InvalidArgumentError(absl::StrCat(path, ": \"", key, "\" is not a number"));
      }
      return;
    }
    // Converting a JSON number the field's type cannot hold is undefined (1e300 to int) or
    // wraps (4294967360 to int): refuse it instead.
    using T = std::remove_pointer_t<decltype(out)>;
    const double value = it->get<double>();
    if constexpr (std::is_integral_v<T>) {
      if (!(value >= std::numeric_limits<T>::min() && value <= std::numeric_limits<T>::max()) ||
          value != std::floor(value)) {
        if (status.ok()) {
          status = absl::InvalidArgumentError(absl::StrCat(
              path, ": \"", key, "\" is ", it->dump(), ", not an integer in [",
              std::numeric_limits<T>::min(), ", ", std::numeric_limits<T>::max(), "]"));
        }
        return;
      }
    } else if (!(std::fabs(value) <= std::numeric_limits<T>::max())) {
      if (status.ok()) {
        status = absl::InvalidArgumentError(
            absl::StrCat(path, ": \"", key, "\" is ", it->dump(), ", out of range"));
      }
      return;
    }
    *out = it->get<T>();
  };
  number("vocab_size", &c.vocab_size, true);
  number("hidden_size", &c.hidden_size, true);
  number("num_hidden_layers", &c.num_layers, true);
  number("num_attention_heads", &c.num_heads, true);
  c.num_kv_heads = c.num_heads;
  number("num_key_value_heads", &c.num_kv_heads, false);
  number("intermediate_size", &c.intermediate_size, true);
  number("max_position_embeddings", &c.max_position_embeddings, false);
  number("rms_norm_eps", &c.rms_norm_eps, false);
  number("rope_theta", &c.rope_theta, false);
  number("bos_token_id", &c.bos_token_id, false);
  number("eos_token_id", &c.eos_token_id, false);
  if (!status.ok()) return status;
  c.head_dim = c.num_heads > 0 ? c.hidden_size / c.num_heads : 0;
  number("head_dim", &c.head_dim, false);
  if (!status.ok()) return status;
  if (auto it = j.find("tie_word_embeddings"); it != j.end() && it->is_boolean()) {
    c.tie_word_embeddings = it->get<bool>();
  }
  const auto model_type = j.find("model_type");
  if (model_type != j.end() && !model_type->is_string()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": \"model_type\" is ", model_type->dump(), ", not a string"));
  }
  c.attention_bias = model_type != j.end() && *model_type == "qwen2";
  if (auto it = j.find("attention_bias"); it != j.end() && it->is_boolean()) {
    c.attention_bias = it->get<bool>();
  }
  if (auto it = j.find("hidden_act"); it != j.end() && *it != "silu") {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": hidden_act ", it->dump(), " is not supported (only silu)"));
  }
  if (auto it = j.find("rope_scaling"); it != j.end() && !it->is_null()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": rope_scaling is not supported"));
  }
  c.rope_style = RopeStyle::kHalf;  // Hugging Face checkpoints use rotate_half.
  KNOWD_RETURN_IF_ERROR(ValidateConfig(c, path));
  return c;
}

absl::StatusOr<LlamaConfig> LlamaConfigFromGguf(const GgufFile& gguf) {
  KNOWD_ASSIGN_OR_RETURN(std::string arch, gguf.GetString("general.architecture"));
  if (arch != "llama") {
    return absl::InvalidArgumentError(
        absl::StrCat(gguf.path(), ": architecture \"", arch, "\" is not supported (only llama)"));
  }
  LlamaConfig c;
  auto get_int = [&](const char* key, int* out) -> absl::Status {
    KNOWD_ASSIGN_OR_RETURN(int64_t v, gguf.GetInt(key));
    if (v <= 0 || v > (int64_t{1} << 30)) {
      return absl::InvalidArgumentError(
          absl::StrCat(gguf.path(), ": ", key, " = ", v, " is out of range"));
    }
    *out = static_cast<int>(v);
    return absl::OkStatus();
  };
  for (auto [key, out] : {std::pair{"llama.embedding_length", &c.hidden_size},
                          std::pair{"llama.block_count", &c.num_layers},
                          std::pair{"llama.attention.head_count", &c.num_heads},
                          std::pair{"llama.feed_forward_length", &c.intermediate_size}}) {
    KNOWD_RETURN_IF_ERROR(get_int(key, out));
  }
  c.num_kv_heads = c.num_heads;
  if (gguf.GetValue("llama.attention.head_count_kv") != nullptr) {
    KNOWD_RETURN_IF_ERROR(get_int("llama.attention.head_count_kv", &c.num_kv_heads));
  }
  if (gguf.GetValue("llama.context_length") != nullptr) {
    KNOWD_RETURN_IF_ERROR(get_int("llama.context_length", &c.max_position_embeddings));
  }
  c.head_dim = c.hidden_size / c.num_heads;
  if (gguf.GetValue("llama.rope.dimension_count") != nullptr) {
    int rope_dims = 0;
    KNOWD_RETURN_IF_ERROR(get_int("llama.rope.dimension_count", &rope_dims));
    if (rope_dims != c.head_dim) {
      return absl::InvalidArgumentError(absl::StrCat(gguf.path(), ": partial rotary embeddings (",
                                                     rope_dims, " of ", c.head_dim,
                                                     " dimensions) are not supported"));
    }
  }
  if (auto eps = gguf.GetFloat("llama.attention.layer_norm_rms_epsilon"); eps.ok()) {
    c.rms_norm_eps = static_cast<float>(*eps);
  }
  if (auto theta = gguf.GetFloat("llama.rope.freq_base"); theta.ok()) {
    c.rope_theta = static_cast<float>(*theta);
  }
  if (const GgufValue* tokens = gguf.GetValue("tokenizer.ggml.tokens");
      tokens != nullptr && std::holds_alternative<std::vector<std::string>>(*tokens)) {
    c.vocab_size = static_cast<int>(std::get<std::vector<std::string>>(*tokens).size());
  } else if (auto v = gguf.GetInt("llama.vocab_size"); v.ok()) {
    c.vocab_size = static_cast<int>(*v);
  } else if (const HostTensor* embd = gguf.Find("token_embd.weight"); embd != nullptr) {
    c.vocab_size = static_cast<int>(embd->shape[0]);
  }
  if (auto bos = gguf.GetInt("tokenizer.ggml.bos_token_id"); bos.ok()) c.bos_token_id = *bos;
  if (auto eos = gguf.GetInt("tokenizer.ggml.eos_token_id"); eos.ok()) c.eos_token_id = *eos;
  c.tie_word_embeddings = gguf.Find("output.weight") == nullptr;
  c.attention_bias = gguf.Find("blk.0.attn_q.bias") != nullptr;
  c.rope_style = RopeStyle::kInterleaved;  // GGUF "llama" keeps Meta's adjacent-pair order.
  KNOWD_RETURN_IF_ERROR(ValidateConfig(c, gguf.path()));
  return c;
}

absl::Status WriteHfConfigJson(const LlamaConfig& c, const std::string& path) {
  nlohmann::json j = {
      {"architectures", {"LlamaForCausalLM"}},
      {"model_type", "llama"},
      {"vocab_size", c.vocab_size},
      {"hidden_size", c.hidden_size},
      {"num_hidden_layers", c.num_layers},
      {"num_attention_heads", c.num_heads},
      {"num_key_value_heads", c.num_kv_heads},
      {"head_dim", c.head_dim},
      {"intermediate_size", c.intermediate_size},
      {"max_position_embeddings", c.max_position_embeddings},
      {"rms_norm_eps", c.rms_norm_eps},
      {"rope_theta", c.rope_theta},
      {"tie_word_embeddings", c.tie_word_embeddings},
      {"attention_bias", c.attention_bias},
      {"bos_token_id", c.bos_token_id},
      {"eos_token_id", c.eos_token_id},
      {"hidden_act", "silu"},
      {"torch_dtype", "float32"},
  };
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << j.dump(2) << "\n";
    if (!out.good()) return absl::InternalError(absl::StrCat(tmp, ": write failed"));
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) return absl::InternalError(absl::StrCat(path, ": rename failed: ", ec.message()));
  return absl::OkStatus();
}

}  // namespace knowd
