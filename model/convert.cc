// ConvertModel: decode every tensor to f32, rename and permute it for the target format, encode
// it in the target dtype, and write the target format's files.
#include "model/convert.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "kernels/math.h"
#include "model/config.h"
#include "model/quantize.h"
#include "model/tensor_file.h"
#include "model/tensor_file_internal.h"
#include "model/tokenizer_internal.h"

namespace knowd {
namespace {

using Metadata = std::map<std::string, GgufValue, std::less<>>;
using tokenizer_internal::SentencePieceModel;

enum class Format { kGguf, kHf };

absl::string_view Str(std::string_view s) { return internal::ToAbsl(s); }

// ---- tensor names ------------------------------------------------------------------------

// {GGUF name, Hugging Face name}, model-wide and per layer (after "blk.N." /
// "model.layers.N.").
constexpr std::pair<std::string_view, std::string_view> kGlobalNames[] = {
    {"token_embd.weight", "model.embed_tokens.weight"},
    {"output_norm.weight", "model.norm.weight"},
    {"output.weight", "lm_head.weight"},
};
constexpr std::pair<std::string_view, std::string_view> kLayerNames[] = {
    {"attn_norm.weight", "input_layernorm.weight"},
    {"attn_q.weight", "self_attn.q_proj.weight"},
    {"attn_k.weight", "self_attn.k_proj.weight"},
    {"attn_v.weight", "self_attn.v_proj.weight"},
    {"attn_output.weight", "self_attn.o_proj.weight"},
    {"attn_q.bias", "self_attn.q_proj.bias"},
    {"attn_k.bias", "self_attn.k_proj.bias"},
    {"attn_v.bias", "self_attn.v_proj.bias"},
    {"ffn_norm.weight", "post_attention_layernorm.weight"},
    {"ffn_gate.weight", "mlp.gate_proj.weight"},
    {"ffn_up.weight", "mlp.up_proj.weight"},
    {"ffn_down.weight", "mlp.down_proj.weight"},
};

std::string_view LayerPrefix(Format f) { return f == Format::kGguf ? "blk." : "model.layers."; }

// `name` (in format `from`) as format `to` names it; nullopt when it has no counterpart.
std::optional<std::string> RenameTensor(std::string_view name, Format from, Format to) {
  if (from == to) return std::string(name);
  const bool from_gguf = from == Format::kGguf;
  for (const auto& [gguf, hf] : kGlobalNames) {
    if (name == (from_gguf ? gguf : hf)) return std::string(from_gguf ? hf : gguf);
  }
  const std::string_view prefix = LayerPrefix(from);
  if (!name.starts_with(prefix)) return std::nullopt;
  std::string_view rest = name.substr(prefix.size());
  int layer = 0;
  const auto [end, ec] = std::from_chars(rest.data(), rest.data() + rest.size(), layer);
  if (ec != std::errc() || end == rest.data() + rest.size() || *end != '.') return std::nullopt;
  rest = rest.substr(end - rest.data() + 1);
  for (const auto& [gguf, hf] : kLayerNames) {
    if (rest == (from_gguf ? gguf : hf)) {
      return absl::StrCat(Str(LayerPrefix(to)), layer, ".", Str(from_gguf ? hf : gguf));
    }
  }
  return std::nullopt;
}

// Whether `name` is a Q or K projection (weight or bias); sets the head count it is split into.
bool IsRotated(std::string_view name, Format format, const LlamaConfig& c, int* heads) {
  const std::string_view q = format == Format::kGguf ? ".attn_q." : ".self_attn.q_proj.";
  const std::string_view k = format == Format::kGguf ? ".attn_k." : ".self_attn.k_proj.";
  if (name.find(q) != std::string_view::npos) {
    *heads = c.num_heads;
    return true;
  }
  if (name.find(k) != std::string_view::npos) {
    *heads = c.num_kv_heads;
    return true;
  }
  return false;
}

// ---- tensor data -------------------------------------------------------------------------

std::vector<float> DecodeF32(const HostTensor& t) {
  const int64_t n = t.numel();
  std::vector<float> out(n);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) out[i] = LoadAsF32(t.data, t.dtype, i);
  return out;
}

// Reorders the rows of every head of a Q or K projection ([heads * head_dim, cols], or a bias
// with cols = 1) between the RoPE pairings: a head's row j * head_dim/2 + i (rotate-half) is row
// 2i + j in the interleaved order, as llama.cpp's converter permutes Hugging Face weights.
std::vector<float> PermuteHeads(const std::vector<float>& w, int heads, int64_t cols,
                                RopeStyle to) {
  const int64_t rows = static_cast<int64_t>(w.size()) / cols;
  const int64_t head_dim = rows / heads;
  const int64_t half = head_dim / 2;
  std::vector<float> out(w.size());
  for (int64_t h = 0; h < heads; ++h) {
    for (int64_t i = 0; i < half; ++i) {
      for (int64_t j = 0; j < 2; ++j) {
        const int64_t interleaved = h * head_dim + 2 * i + j;
        const int64_t rotate_half = h * head_dim + j * half + i;
        const int64_t dst = to == RopeStyle::kInterleaved ? interleaved : rotate_half;
        const int64_t src = to == RopeStyle::kInterleaved ? rotate_half : interleaved;
        std::memcpy(out.data() + dst * cols, w.data() + src * cols, cols * sizeof(float));
      }
    }
  }
  return out;
}

std::vector<uint8_t> Encode(std::span<const float> x, DType dtype) {
  const int64_t n = static_cast<int64_t>(x.size());
  std::vector<uint8_t> out(DTypeBytes(dtype, n));
  switch (dtype) {
    case DType::kF32:
      std::memcpy(out.data(), x.data(), out.size());
      break;
    case DType::kF16:
    case DType::kBF16: {
      uint16_t* h = reinterpret_cast<uint16_t*>(out.data());
      const bool f16 = dtype == DType::kF16;
#pragma omp parallel for schedule(static)
      for (int64_t i = 0; i < n; ++i) h[i] = f16 ? F32ToF16(x[i]) : F32ToBF16(x[i]);
      break;
    }
    case DType::kQ8_0:
    case DType::kQ4_0:
    case DType::kQ4_K:
    case DType::kQ6_K:
      QuantizeRow(x, dtype, out.data());
      break;
    case DType::kI32:
      break;  // refused by the caller
  }
  return out;
}

// A converted tensor and the bytes it points at.
struct OwnedTensor {
  HostTensor tensor;
  std::vector<uint8_t> storage;
};

// ---- sources -----------------------------------------------------------------------------

struct Source {
  Format format = Format::kGguf;
  LlamaConfig config;
  std::unique_ptr<GgufFile> gguf;            // when format == kGguf
  std::unique_ptr<SafetensorsFile> weights;  // when format == kHf
  const TensorFile& file() const {
    return gguf != nullptr ? static_cast<const TensorFile&>(*gguf) : *weights;
  }
};

absl::StatusOr<Source> OpenSource(const std::string& in) {
  Source source;
  if (std::filesystem::is_directory(in)) {
    source.format = Format::kHf;
    KNOWD_ASSIGN_OR_RETURN(source.config, LlamaConfigFromHfJson(in + "/config.json"));
    KNOWD_ASSIGN_OR_RETURN(source.weights, SafetensorsFile::Open(in));
  } else {
    KNOWD_ASSIGN_OR_RETURN(std::unique_ptr<GgufFile> file, GgufFile::Open(in));
    KNOWD_ASSIGN_OR_RETURN(source.config, LlamaConfigFromGguf(*file));
    source.gguf = std::move(file);
  }
  return source;
}

// ---- weight types ------------------------------------------------------------------------

// The layer of a GGUF per-layer tensor name ("blk.N. ..."), or -1.
int GgufLayer(std::string_view name) {
  if (!name.starts_with("blk.")) return -1;
  name.remove_prefix(4);
  int layer = -1;
  const auto [end, ec] = std::from_chars(name.data(), name.data() + name.size(), layer);
  if (ec != std::errc() || end == name.data() + name.size() || *end != '.') return -1;
  return layer;
}

// llama.cpp's use_more_bits: the first and last eighth of the layers and every third between.
bool UseMoreBits(int i, int n) { return i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2; }

// The type `plan` gives the matrix `gguf_name` of a model of `layers` layers (`has_output`: it
// has an output.weight, rather than reusing token_embd.weight).
DType PlannedType(const WeightPlan& plan, std::string_view gguf_name, int layers, bool has_output) {
  if (plan.mix == WeightPlan::Mix::kUniform) return plan.dtype;
  if (gguf_name == "output.weight" || (!has_output && gguf_name == "token_embd.weight")) {
    return DType::kQ6_K;
  }
  if (gguf_name.ends_with(".attn_v.weight") || gguf_name.ends_with(".ffn_down.weight")) {
    const int layer = GgufLayer(gguf_name);
    if (layer >= 0 && UseMoreBits(layer, layers)) return DType::kQ6_K;
  }
  return DType::kQ4_K;
}

// `dtype` for a matrix of rows of `cols` elements: quantized rows must be whole blocks, so the
// k-quants fall back to q8_0 (rows a multiple of 32) and the 32-blocks to f16.
DType FitRows(DType dtype, int64_t cols) {
  if (!DTypeIsQuantized(dtype) || cols % DTypeBlockSize(dtype) == 0) return dtype;
  if (cols % kQ8_0BlockSize == 0) return DType::kQ8_0;
  return DType::kF16;
}

// ---- tensors -----------------------------------------------------------------------------

// The tensors of `source`, renamed for `to`, in the types of `plan` (2-D) or f32 (the rest).
absl::StatusOr<std::vector<OwnedTensor>> ConvertTensors(const Source& source, Format to,
                                                        const WeightPlan& plan) {
  const bool has_output =
      source.file().Find(source.format == Format::kGguf ? "output.weight" : "lm_head.weight") !=
      nullptr;
  std::vector<OwnedTensor> result;
  for (const HostTensor& t : source.file().tensors()) {
    // Old Hugging Face checkpoints store RoPE's inverse frequencies; they follow from the config.
    if (source.format == Format::kHf && t.name.ends_with("rotary_emb.inv_freq")) continue;
    if (t.dtype == DType::kI32) {
      return absl::InvalidArgumentError(absl::StrCat(internal::FileLabel(source.file().path()),
                                                     ": tensor ", t.name,
                                                     " is i32; only float tensors convert"));
    }
    std::optional<std::string> name = RenameTensor(t.name, source.format, to);
    if (!name.has_value()) {
      return absl::InvalidArgumentError(
          absl::StrCat(internal::FileLabel(source.file().path()), ": tensor ", t.name,
                       " has no name in ", to == Format::kGguf ? "GGUF" : "Hugging Face"));
    }
    std::vector<float> values = DecodeF32(t);
    int heads = 0;
    if (source.format != to && IsRotated(t.name, source.format, source.config, &heads)) {
      const int64_t cols = t.shape.size() == 2 ? t.shape[1] : 1;
      values = PermuteHeads(values, heads, cols,
                            to == Format::kGguf ? RopeStyle::kInterleaved : RopeStyle::kHalf);
    }
    // Blocks run along rows; a row that does not split into blocks takes a finer type.
    const DType dtype =
        t.shape.size() == 2
            ? FitRows(PlannedType(plan, *name, source.config.num_layers, has_output), t.shape[1])
            : DType::kF32;
    OwnedTensor& out = result.emplace_back();
    out.storage = Encode(values, dtype);
    out.tensor.name = *std::move(name);
    out.tensor.dtype = dtype;
    out.tensor.shape = t.shape;
    out.tensor.bytes = static_cast<int64_t>(out.storage.size());
  }
  // Pointers are taken last: `result` reallocated while it grew.
  for (OwnedTensor& t : result) t.tensor.data = t.storage.data();
  return result;
}

std::vector<HostTensor> Views(const std::vector<OwnedTensor>& tensors) {
  std::vector<HostTensor> views;
  views.reserve(tensors.size());
  for (const OwnedTensor& t : tensors) views.push_back(t.tensor);
  return views;
}

// ---- GGUF metadata -----------------------------------------------------------------------

// llama.cpp's general.file_type (enum llama_ftype) for a file whose matrices follow `plan`. A
// uniform q4_K file is called Q4_K_S, the llama.cpp type mostly made of q4_K.
uint64_t LlamaFileType(const WeightPlan& plan) {
  if (plan.mix == WeightPlan::Mix::kQ4_K_M) return 15;
  switch (plan.dtype) {
    case DType::kF16:
      return 1;
    case DType::kQ4_0:
      return 2;
    case DType::kQ8_0:
      return 7;
    case DType::kQ4_K:
      return 14;
    case DType::kQ6_K:
      return 18;
    case DType::kBF16:
      return 32;
    case DType::kF32:
    case DType::kI32:
      return 0;
  }
  return 0;
}

// A SentencePiece tokenizer.model as a GGUF "llama" vocabulary of `vocab_size` tokens, laid out
// as llama.cpp's convert_hf_to_gguf.py writes it.
absl::Status AddSentencePieceVocab(const SentencePieceModel& spm, int vocab_size,
                                   const std::string& label, Metadata* metadata) {
  if (spm.model_type != tokenizer_internal::kModelTypeBpe) {
    return absl::InvalidArgumentError(absl::StrCat(
        label, ": a unigram SentencePiece model cannot become a GGUF \"llama\" vocabulary (BPE)"));
  }
  if (static_cast<int64_t>(spm.pieces.size()) > vocab_size) {
    return absl::InvalidArgumentError(
        absl::StrCat(label, ": ", spm.pieces.size(), " pieces, more than vocab_size ", vocab_size));
  }
  std::vector<std::string> tokens;
  std::vector<double> scores;
  std::vector<int64_t> types;
  for (const SentencePieceModel::Piece& p : spm.pieces) {
    tokens.push_back(p.text);
    scores.push_back(p.score);
    types.push_back(static_cast<int64_t>(p.type));
  }
  // Embedding rows past the tokenizer's pieces (vocab padded for speed) get unused tokens.
  for (int i = static_cast<int>(tokens.size()), pad = 1; i < vocab_size; ++i, ++pad) {
    tokens.push_back(absl::StrCat("[PAD", pad, "]"));
    scores.push_back(-1000.0);
    types.push_back(static_cast<int64_t>(tokenizer_internal::PieceType::kUnused));
  }
  (*metadata)["tokenizer.ggml.model"] = std::string("llama");
  (*metadata)["tokenizer.ggml.pre"] = std::string("default");
  (*metadata)["tokenizer.ggml.tokens"] = std::move(tokens);
  (*metadata)["tokenizer.ggml.scores"] = std::move(scores);
  (*metadata)["tokenizer.ggml.token_type"] = std::move(types);
  if (spm.unk_id >= 0) {
    (*metadata)["tokenizer.ggml.unknown_token_id"] = static_cast<uint64_t>(spm.unk_id);
  }
  if (spm.pad_id >= 0) {
    (*metadata)["tokenizer.ggml.padding_token_id"] = static_cast<uint64_t>(spm.pad_id);
  }
  (*metadata)["tokenizer.ggml.add_space_prefix"] = spm.add_dummy_prefix;
  (*metadata)["tokenizer.ggml.remove_extra_whitespaces"] = spm.remove_extra_whitespaces;
  (*metadata)["tokenizer.ggml.add_bos_token"] = true;
  (*metadata)["tokenizer.ggml.add_eos_token"] = false;
  return absl::OkStatus();
}

// The metadata of a GGUF made from a Hugging Face directory: the "llama" hyperparameters and,
// when the directory has a tokenizer.model, its vocabulary.
absl::StatusOr<Metadata> MetadataFromHf(const std::string& dir, const LlamaConfig& c) {
  if (c.head_dim * c.num_heads != c.hidden_size) {
    return absl::InvalidArgumentError(
        absl::StrCat(dir, ": head_dim ", c.head_dim, " is not hidden_size / num_attention_heads (",
                     c.hidden_size, " / ", c.num_heads, "), which GGUF \"llama\" files assume"));
  }
  Metadata m;
  m["general.architecture"] = std::string("llama");
  m["general.name"] = internal::FileLabel(dir);
  // Counts as uint64 (written UINT32) and floats as exact floats (written FLOAT32): the types
  // llama.cpp requires for these keys.
  m["llama.context_length"] = static_cast<uint64_t>(c.max_position_embeddings);
  m["llama.embedding_length"] = static_cast<uint64_t>(c.hidden_size);
  m["llama.block_count"] = static_cast<uint64_t>(c.num_layers);
  m["llama.feed_forward_length"] = static_cast<uint64_t>(c.intermediate_size);
  m["llama.attention.head_count"] = static_cast<uint64_t>(c.num_heads);
  m["llama.attention.head_count_kv"] = static_cast<uint64_t>(c.num_kv_heads);
  m["llama.rope.dimension_count"] = static_cast<uint64_t>(c.head_dim);
  m["llama.rope.freq_base"] = double{c.rope_theta};
  m["llama.attention.layer_norm_rms_epsilon"] = double{c.rms_norm_eps};
  m["llama.vocab_size"] = static_cast<uint64_t>(c.vocab_size);
  if (c.bos_token_id >= 0) m["tokenizer.ggml.bos_token_id"] = static_cast<uint64_t>(c.bos_token_id);
  if (c.eos_token_id >= 0) m["tokenizer.ggml.eos_token_id"] = static_cast<uint64_t>(c.eos_token_id);

  const std::string spm_path = dir + "/tokenizer.model";
  if (!std::filesystem::exists(spm_path)) {
    m["tokenizer.ggml.model"] = std::string("no_vocab");
    return m;
  }
  KNOWD_ASSIGN_OR_RETURN(std::string bytes, tokenizer_internal::ReadWholeFile(spm_path));
  KNOWD_ASSIGN_OR_RETURN(SentencePieceModel spm,
                         tokenizer_internal::ParseSentencePieceModel(bytes, spm_path));
  KNOWD_RETURN_IF_ERROR(AddSentencePieceVocab(spm, c.vocab_size, spm_path, &m));
  return m;
}

// ---- writers -----------------------------------------------------------------------------

absl::Status WriteBytesAtomically(const std::string& path, std::string_view bytes) {
  return internal::WriteFileAtomically(path, [&](int fd) {
    return internal::WriteAll(fd, bytes.data(), bytes.size(), internal::FileLabel(path));
  });
}

absl::Status WriteGgufModel(const Source& source, const std::string& in, const std::string& out,
                            const WeightPlan& plan) {
  Metadata metadata;
  if (source.format == Format::kGguf) {
    metadata = source.gguf->metadata();
    metadata.erase("general.alignment");  // written with the default alignment
  } else {
    KNOWD_ASSIGN_OR_RETURN(metadata, MetadataFromHf(in, source.config));
  }
  metadata["general.file_type"] = LlamaFileType(plan);
  if (DTypeIsQuantized(plan.dtype)) metadata["general.quantization_version"] = uint64_t{2};

  KNOWD_ASSIGN_OR_RETURN(std::vector<OwnedTensor> tensors,
                         ConvertTensors(source, Format::kGguf, plan));
  return WriteGguf(out, metadata, Views(tensors));
}

absl::Status WriteHfModel(const Source& source, const std::string& in, const std::string& out,
                          DType weights) {
  std::error_code ec;
  std::filesystem::create_directories(out, ec);
  if (ec) return absl::InternalError(absl::StrCat(out, ": cannot create: ", ec.message()));
  KNOWD_ASSIGN_OR_RETURN(std::vector<OwnedTensor> tensors,
                         ConvertTensors(source, Format::kHf, WeightPlan::Uniform(weights)));
  KNOWD_RETURN_IF_ERROR(WriteSafetensors(out + "/model.safetensors", Views(tensors)));
  KNOWD_RETURN_IF_ERROR(WriteHfConfigJson(source.config, out + "/config.json"));

  if (source.format == Format::kHf) {
    for (const char* name : {"tokenizer.model", "tokenizer.json"}) {
      const std::string from = absl::StrCat(in, "/", name);
      if (!std::filesystem::exists(from)) continue;
      KNOWD_ASSIGN_OR_RETURN(std::string bytes, tokenizer_internal::ReadWholeFile(from));
      KNOWD_RETURN_IF_ERROR(WriteBytesAtomically(absl::StrCat(out, "/", name), bytes));
    }
    return absl::OkStatus();
  }
  // A GGUF "llama" vocabulary is a SentencePiece BPE model; knowd writes it back as one.
  absl::StatusOr<std::string> model = source.gguf->GetString("tokenizer.ggml.model");
  if (!model.ok() || *model != "llama") return absl::OkStatus();
  KNOWD_ASSIGN_OR_RETURN(SentencePieceModel spm,
                         tokenizer_internal::SentencePieceModelFromGguf(*source.gguf));
  return WriteBytesAtomically(out + "/tokenizer.model",
                              tokenizer_internal::SerializeSentencePieceModel(spm));
}

}  // namespace

// The types a plan may give every matrix, by the name ParseWeightPlan takes (DTypeName's).
constexpr DType kUniformPlanTypes[] = {DType::kF32,  DType::kF16,  DType::kBF16, DType::kQ8_0,
                                       DType::kQ4_0, DType::kQ4_K, DType::kQ6_K};
constexpr std::string_view kQ4_K_MName = "q4_K_M";

std::optional<WeightPlan> ParseWeightPlan(std::string_view name) {
  if (name == kQ4_K_MName) return WeightPlan::Q4_K_M();
  for (DType dtype : kUniformPlanTypes) {
    if (name == DTypeName(dtype)) return WeightPlan::Uniform(dtype);
  }
  return std::nullopt;
}

std::string WeightPlanNames() {
  std::string names;
  for (DType dtype : kUniformPlanTypes) names += std::string(DTypeName(dtype)) + ", ";
  return names + std::string(kQ4_K_MName);
}

absl::Status ConvertModel(const std::string& in, const std::string& out, WeightPlan plan) {
  const bool to_gguf = out.ends_with(".gguf");
  if (plan.dtype == DType::kI32 ||
      (plan.mix == WeightPlan::Mix::kQ4_K_M && plan.dtype != DType::kQ4_K)) {
    return absl::InvalidArgumentError(
        absl::StrCat("ConvertModel: weights must be one of ", WeightPlanNames()));
  }
  if (!to_gguf && DTypeIsQuantized(plan.dtype)) {
    const std::string_view name =
        plan.mix == WeightPlan::Mix::kQ4_K_M ? kQ4_K_MName : DTypeName(plan.dtype);
    return absl::InvalidArgumentError(
        absl::StrCat(out, ": safetensors has no ", Str(name), "; write a .gguf file instead"));
  }
  KNOWD_ASSIGN_OR_RETURN(Source source, OpenSource(in));
  return to_gguf ? WriteGgufModel(source, in, out, plan)
                 : WriteHfModel(source, in, out, plan.dtype);
}

}  // namespace knowd
