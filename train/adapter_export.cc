// The adapter's export (train/adapter.h): adapter.json + adapter.safetensors for the engine
// (model/adapter.h), and reading them back. The networks are in adapter_networks.h.
#include <torch/torch.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "kernels/math.h"
#include "model/tensor_file.h"
#include "nlohmann/json.hpp"
#include "train/adapter.h"
#include "train/adapter_networks.h"
#include "train/lm_torch.h"

namespace knowd::train {
namespace {

using internal::TorchError;

torch::Tensor HostToTensor(const HostTensor& t, const std::vector<int64_t>& shape) {
  std::vector<float> data(t.numel());
  for (int64_t i = 0; i < t.numel(); ++i) data[i] = LoadAsF32(t.data, t.dtype, i);
  return torch::from_blob(data.data(), shape, torch::kFloat32).clone();
}

}  // namespace

// ---- export ------------------------------------------------------------------------------------

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

}  // namespace knowd::train
