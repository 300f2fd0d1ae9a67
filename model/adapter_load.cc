// Adapter::Load: adapter.json (hyper-parameters and the base it was trained for) and
// adapter.safetensors (train/adapter_export.cc: Adapter::Export), validated before anything is
// allocated, then converted to f32 in backend memory.
#include <algorithm>
#include <cmath>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "kernels/math.h"
#include "model/adapter.h"
#include "model/adapter_internal.h"
#include "model/sha256.h"
#include "model/tensor_file.h"
#include "nlohmann/json.hpp"

namespace knowd {
namespace {

// Rotates `rows` x `heads` heads of x [rows][heads][head_dim], in place, by RoPE(position).
void RotateHeads(float* x, int rows, int heads, int head_dim, int32_t position, float theta,
                 RopeStyle style) {
  if (position == 0) return;
  for (int pair = 0; pair < head_dim / 2; ++pair) {
    float c, s;
    RopeCosSin(position, pair, head_dim, theta, &c, &s);
    int first, second;
    RopePairIndices(style, pair, head_dim, &first, &second);
    for (int h = 0; h < rows * heads; ++h) {
      float* head = x + int64_t{h} * head_dim;
      RopeRotate(head + first, head + second, c, s);
    }
  }
}

// adapter.json -> AdapterSpec, checked against the base model it is loaded for.
absl::StatusOr<AdapterSpec> ReadSpec(const std::string& path, const LlamaConfig& base,
                                     std::string_view base_sha256) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open"));
  std::stringstream text;
  text << in.rdbuf();
  const nlohmann::json j = nlohmann::json::parse(text.str(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a JSON object"));
  }
  if (j.value("format", "") != "knowd-adapter" || j.value("version", 0) != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": not a knowd-adapter version 1 file (format \"", j.value("format", ""),
                     "\", version ", j.value("version", 0), ")"));
  }
  absl::Status status;
  auto integer = [&](const nlohmann::json& object, const char* key, const std::string& where) {
    auto it = object.find(key);
    if (it == object.end() || !it->is_number_integer()) {
      if (status.ok()) {
        status = absl::InvalidArgumentError(
            absl::StrCat(path, ": missing integer \"", where, key, "\""));
      }
      return 0;
    }
    return it->get<int>();
  };
  AdapterSpec spec;
  spec.slots = integer(j, "slots", "");
  spec.latent_dim = integer(j, "latent_dim", "");
  spec.key_dim = integer(j, "key_dim", "");
  spec.heads = integer(j, "heads", "");
  spec.mlp_ratio = integer(j, "mlp_ratio", "");
  spec.readout_blocks = integer(j, "readout_blocks", "");
  spec.question_blocks = integer(j, "question_blocks", "");
  spec.aggregator_blocks = integer(j, "aggregator_blocks", "");
  spec.max_candidates = integer(j, "max_candidates", "");
  if (auto it = j.find("rows_per_slot"); it != j.end()) {
    if (!it->is_number_integer() || !IsValidRowsPerSlot(it->get<int>())) {
      return absl::InvalidArgumentError(absl::StrCat(
          path, ": \"rows_per_slot\" must be an integer in [1, ", kMaxRowsPerSlot, "]"));
    }
    spec.rows_per_slot = it->get<int>();
  }
  if (auto it = j.find("rag_head"); it != j.end()) {
    if (!it->is_boolean()) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": \"rag_head\" must be true or false"));
    }
    spec.rag_head = it->get<bool>();
  }
  if (auto it = j.find("rag_prefix_key_scale"); it != j.end()) {
    if (!it->is_number() || !IsValidRagPrefixKeyScale(it->get<double>())) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": \"rag_prefix_key_scale\" must be a number in (0, 4]"));
    }
    spec.rag_prefix_key_scale = it->get<float>();
  }
  const nlohmann::json none = nlohmann::json::object();
  const nlohmann::json& b = j.contains("base_model") ? j["base_model"] : none;
  const int hidden = integer(b, "hidden_size", "base_model.");
  const int layers = integer(b, "num_hidden_layers", "base_model.");
  const int kv_heads = integer(b, "num_key_value_heads", "base_model.");
  const int head_dim = integer(b, "head_dim", "base_model.");
  const int vocab = integer(b, "vocab_size", "base_model.");
  if (!status.ok()) return status;
  if (b.contains("sha256") && b["sha256"].is_string()) {
    spec.base_sha256 = b["sha256"].get<std::string>();
  }
  if (spec.slots < 1 || spec.latent_dim < 1 || spec.key_dim < 1 || spec.heads < 1 ||
      spec.latent_dim % spec.heads != 0 || spec.mlp_ratio < 1 || spec.max_candidates < 1 ||
      spec.readout_blocks < 0 || spec.question_blocks < 0 || spec.aggregator_blocks < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        path, ": slots, latent_dim, key_dim, heads, mlp_ratio and max_candidates must be >= 1, ",
        "block counts >= 0, and heads must divide latent_dim"));
  }
  const std::pair<const char*, std::pair<int, int>> architecture[] = {
      {"hidden_size", {hidden, base.hidden_size}},
      {"num_hidden_layers", {layers, base.num_layers}},
      {"num_key_value_heads", {kv_heads, base.num_kv_heads}},
      {"head_dim", {head_dim, base.head_dim}},
      {"vocab_size", {vocab, base.vocab_size}}};
  for (const auto& [key, values] : architecture) {
    if (values.first != values.second) {
      return absl::FailedPreconditionError(
          absl::StrCat(path, ": the adapter was trained for a base model with ", key, " ",
                       values.first, "; this model has ", values.second));
    }
  }
  if (!base_sha256.empty() && spec.base_sha256 != base_sha256) {
    return absl::FailedPreconditionError(
        absl::StrCat(path, ": the adapter was trained on base model sha256 ",
                     spec.base_sha256.empty() ? "(none recorded)" : spec.base_sha256,
                     "; this model is ", std::string(base_sha256)));
  }
  return spec;
}

// Reads tensors of one file as f32 host arrays, remembering which were used.
class WeightReader {
 public:
  explicit WeightReader(const SafetensorsFile& file) : file_(file) {}

  // The hex SHA-256 of the readout's tensors read so far (see AdapterSpec::encoder_sha256).
  std::string EncoderSha256() { return encoder_.Hex(); }

  absl::StatusOr<std::vector<float>> Read(const std::string& name,
                                          const std::vector<int64_t>& shape) {
    KNOWD_ASSIGN_OR_RETURN(const HostTensor* t, file_.Require(name, shape));
    if ((t)->dtype == DType::kI32) {
      return absl::InvalidArgumentError(
          absl::StrCat(file_.path(), ": tensor ", name, " is i32, expected a float type"));
    }
    used_.insert(name);
    std::vector<float> out((t)->numel());
    for (int64_t i = 0; i < (t)->numel(); ++i) out[i] = LoadAsF32((t)->data, (t)->dtype, i);
    for (float v : out) {
      if (!std::isfinite(v)) {
        return absl::InvalidArgumentError(
            absl::StrCat(file_.path(), ": tensor ", name, " holds a non-finite value"));
      }
    }
    if (name.starts_with("readout.")) {
      encoder_.Update(name.data(), name.size() + 1);  // with the terminating NUL
      encoder_.Update(shape.data(), shape.size() * sizeof(int64_t));
      encoder_.Update(out.data(), out.size() * sizeof(float));
    }
    return out;
  }

  // Every tensor of the file was read: a tensor left over means the file was written for other
  // hyper-parameters than adapter.json states.
  absl::Status CheckAllUsed() const {
    for (const HostTensor& t : file_.tensors()) {
      if (!used_.contains(t.name)) {
        return absl::InvalidArgumentError(absl::StrCat(file_.path(), ": unexpected tensor ", t.name,
                                                       " (not in adapter.json's architecture)"));
      }
    }
    return absl::OkStatus();
  }

 private:
  const SafetensorsFile& file_;
  std::set<std::string> used_;
  Sha256 encoder_;
};

}  // namespace

Adapter::Impl::~Impl() {
  if (backend == nullptr) return;
  backend->Synchronize();
  for (void* p : allocations) backend->Free(p);
  for (auto& [p, n] : scratch) backend->Free(p);
}

Adapter::Adapter(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Adapter::~Adapter() = default;

const AdapterSpec& Adapter::spec() const { return impl_->spec; }
float Adapter::score_scale() const { return impl_->scale; }

absl::StatusOr<std::unique_ptr<Adapter>> Adapter::Load(const std::string& dir, Transformer* base,
                                                       std::string_view base_sha256) {
  if (base == nullptr) return absl::InvalidArgumentError("adapter: no base model");
  const LlamaConfig& lm = base->config();
  absl::StatusOr<AdapterSpec> spec = ReadSpec(dir + "/adapter.json", lm, base_sha256);
  if (!spec.ok()) return spec.status();
  const std::string weights_path = dir + "/adapter.safetensors";
  KNOWD_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> file,
                         SafetensorsFile::Open(weights_path));
  KNOWD_ASSIGN_OR_RETURN(spec->adapter_sha256, Sha256OfFile(weights_path));

  auto impl = std::make_unique<Impl>();
  impl->base = base;
  impl->backend = base->backend();
  impl->lm = lm;
  impl->spec = *spec;
  Impl& a = *impl;
  const AdapterSpec& s = a.spec;
  const int64_t d = s.latent_dim, t = s.slots, layers = lm.num_layers, kv_dim = lm.kv_dim();
  const int64_t hidden = lm.hidden_size, mlp = int64_t{s.mlp_ratio} * s.latent_dim;
  WeightReader reader(*file);

  auto upload = [&](const std::vector<float>& host) -> absl::StatusOr<float*> {
    void* p = a.backend->Alloc(host.size() * sizeof(float));
    if (p == nullptr) {
      return absl::ResourceExhaustedError(absl::StrCat(weights_path, ": out of ", a.backend->name(),
                                                       " memory loading the adapter"));
    }
    a.allocations.push_back(p);
    a.backend->Upload(p, host.data(), host.size() * sizeof(float));
    return static_cast<float*>(p);
  };
  // The tensor `name` of `shape`, in backend memory.
  auto load = [&](const std::string& name, std::vector<int64_t> shape) -> absl::StatusOr<float*> {
    KNOWD_ASSIGN_OR_RETURN(std::vector<float> host, reader.Read(name, shape));
    return upload(host);
  };
  auto load_block = [&](const std::string& prefix, bool conditioned,
                        AdapterBlock* block) -> absl::Status {
    KNOWD_ASSIGN_OR_RETURN(block->norm_x, load(prefix + "norm_x.weight", {d}));
    KNOWD_ASSIGN_OR_RETURN(block->norm_memory, load(prefix + "norm_memory.weight", {d}));
    if (conditioned) {
      KNOWD_ASSIGN_OR_RETURN(block->norm_condition, load(prefix + "norm_condition.weight", {d}));
    }
    KNOWD_ASSIGN_OR_RETURN(block->q, load(prefix + "q.weight", {d, d}));
    std::vector<float> k, v;
    KNOWD_ASSIGN_OR_RETURN(k, reader.Read(prefix + "k.weight", {d, d}));
    KNOWD_ASSIGN_OR_RETURN(v, reader.Read(prefix + "v.weight", {d, d}));
    k.insert(k.end(), v.begin(), v.end());
    KNOWD_ASSIGN_OR_RETURN(block->kv, upload(k));
    KNOWD_ASSIGN_OR_RETURN(block->o, load(prefix + "o.weight", {d, d}));
    KNOWD_ASSIGN_OR_RETURN(block->norm_mlp, load(prefix + "norm_mlp.weight", {d}));
    KNOWD_ASSIGN_OR_RETURN(block->up, load(prefix + "up.weight", {mlp, d}));
    KNOWD_ASSIGN_OR_RETURN(block->down, load(prefix + "down.weight", {d, mlp}));
    return absl::OkStatus();
  };
  auto load_encoder = [&](const std::string& prefix, int blocks,
                          AdapterEncoder* encoder) -> absl::Status {
    for (int64_t l = 0; l < layers; ++l) {
      float* proj = nullptr;
      KNOWD_ASSIGN_OR_RETURN(proj,
                             load(absl::StrCat(prefix, "mix.proj.", l, ".weight"), {d, hidden}));
      encoder->mix.push_back(proj);
    }
    encoder->blocks.resize(blocks);
    for (int i = 0; i < blocks; ++i) {
      KNOWD_RETURN_IF_ERROR(
          load_block(absl::StrCat(prefix, "blocks.", i, "."), false, &encoder->blocks[i]));
    }
    KNOWD_ASSIGN_OR_RETURN(encoder->key, reader.Read(prefix + "key.weight", {s.key_dim, d}));
    return absl::OkStatus();
  };

  std::vector<float> log_scale;
  KNOWD_ASSIGN_OR_RETURN(log_scale, reader.Read("log_scale", {1}));
  a.scale = std::min(std::exp(log_scale[0]), 100.0f);

  // Readout. The pooling queries are stored [layers][kv_heads][slots][head_dim]; the Attention
  // op wants each layer's slots as query rows [slots][kv_heads * head_dim].
  std::vector<float> pool;
  KNOWD_ASSIGN_OR_RETURN(
      pool, reader.Read("readout.pool_queries", {layers, lm.num_kv_heads, t, lm.head_dim}));
  std::vector<float> pool_rows(pool.size());
  for (int64_t l = 0; l < layers; ++l) {
    for (int64_t h = 0; h < lm.num_kv_heads; ++h) {
      for (int64_t slot = 0; slot < t; ++slot) {
        std::copy_n(pool.begin() + ((l * lm.num_kv_heads + h) * t + slot) * lm.head_dim,
                    lm.head_dim, pool_rows.begin() + (l * t + slot) * kv_dim + h * lm.head_dim);
      }
    }
  }
  KNOWD_ASSIGN_OR_RETURN(a.pool_queries, upload(pool_rows));
  KNOWD_ASSIGN_OR_RETURN(a.compress, load("readout.compress.weight", {d, a.kv_width()}));
  KNOWD_ASSIGN_OR_RETURN(a.compress_bias, load("readout.compress.bias", {d}));
  KNOWD_RETURN_IF_ERROR(load_encoder("readout.", s.readout_blocks, &a.readout));

  // Question encoder.
  KNOWD_ASSIGN_OR_RETURN(a.question_queries, load("question.queries", {t, d}));
  KNOWD_RETURN_IF_ERROR(load_encoder("question.", s.question_blocks, &a.question));

  // The aggregator and the expander of a head; `prefix` is "" (mac) or "rag_" (mac+rag).
  auto load_head = [&](const std::string& prefix, AdapterHead* head) -> absl::Status {
    KNOWD_ASSIGN_OR_RETURN(head->rank,
                           reader.Read(prefix + "aggregator.rank.weight", {s.max_candidates, d}));
    KNOWD_ASSIGN_OR_RETURN(head->score, reader.Read(prefix + "aggregator.score.weight", {d, 1}));
    head->aggregator.resize(s.aggregator_blocks);
    for (int i = 0; i < s.aggregator_blocks; ++i) {
      KNOWD_RETURN_IF_ERROR(load_block(absl::StrCat(prefix, "aggregator.blocks.", i, "."), true,
                                       &head->aggregator[i]));
    }
    // The prefix keys' rotation (AdapterSpec::rows_per_slot) is linear and the same for every
    // question, so it is folded into the expander's key rows here rather than applied per prefix.
    const int64_t expand_width = a.kv_width() * s.rows_per_slot;
    std::vector<float> weight, bias;
    KNOWD_ASSIGN_OR_RETURN(weight,
                           reader.Read(prefix + "expander.expand.weight", {expand_width, d}));
    KNOWD_ASSIGN_OR_RETURN(bias, reader.Read(prefix + "expander.expand.bias", {expand_width}));
    if (const int shift = s.prefix_key_shift(); shift != 0) {
      std::vector<float> column(kv_dim);
      for (int64_t row = 0; row < expand_width; row += 2 * kv_dim) {  // one layer's keys, values
        RotateHeads(bias.data() + row, 1, lm.num_kv_heads, lm.head_dim, shift, lm.rope_theta,
                    lm.rope_style);
        for (int64_t c = 0; c < d; ++c) {
          for (int64_t i = 0; i < kv_dim; ++i) column[i] = weight[(row + i) * d + c];
          RotateHeads(column.data(), 1, lm.num_kv_heads, lm.head_dim, shift, lm.rope_theta,
                      lm.rope_style);
          for (int64_t i = 0; i < kv_dim; ++i) weight[(row + i) * d + c] = column[i];
        }
      }
    }
    KNOWD_ASSIGN_OR_RETURN(head->expand, upload(weight));
    KNOWD_ASSIGN_OR_RETURN(head->expand_bias, upload(bias));
    KNOWD_ASSIGN_OR_RETURN(head->sink_keys, reader.Read(prefix + "expander.sink_keys",
                                                        {layers, lm.num_kv_heads, lm.head_dim}));
    // The sink key is served rotated like the others (AdapterSpec::rows_per_slot), once here.
    RotateHeads(head->sink_keys.data(), layers, lm.num_kv_heads, lm.head_dim, s.prefix_key_shift(),
                lm.rope_theta, lm.rope_style);
    KNOWD_ASSIGN_OR_RETURN(head->sink_values, reader.Read(prefix + "expander.sink_values",
                                                          {layers, lm.num_kv_heads, lm.head_dim}));
    return absl::OkStatus();
  };
  KNOWD_RETURN_IF_ERROR(load_head("", &a.mac));
  if (s.rag_head) {
    KNOWD_RETURN_IF_ERROR(load_head("rag_", &a.rag));
  }
  KNOWD_RETURN_IF_ERROR(reader.CheckAllUsed());
  a.spec.encoder_sha256 = reader.EncoderSha256();

  absl::StatusOr<std::unique_ptr<RetrievalKeys>> retrieval = RetrievalKeys::Load(dir, lm);
  if (retrieval.ok()) {
    if ((*retrieval)->key_dim() != s.key_dim) {
      return absl::InvalidArgumentError(absl::StrCat(
          dir, "/retrieval_keys.json: key_dim ", (*retrieval)->key_dim(),
          " differs from the adapter's key_dim ", s.key_dim, " (the memory bank's key width)"));
    }
    a.spec.retrieval_keys_sha256 = (*retrieval)->sha256();
    a.retrieval = *std::move(retrieval);
  } else if (!absl::IsNotFound(retrieval.status())) {
    return retrieval.status();
  }

  KNOWD_ASSIGN_OR_RETURN(a.ones, upload(std::vector<float>(std::max(hidden, d), 1.0f)));
  a.backend->Synchronize();
  KNOWD_RETURN_IF_ERROR(a.backend->status());
  return std::unique_ptr<Adapter>(new Adapter(std::move(impl)));
}

}  // namespace knowd
