#include "model/retrieval_keys.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "kernels/math.h"
#include "model/json_descriptor.h"
#include "model/sha256.h"
#include "model/tensor_file.h"
#include "nlohmann/json.hpp"

namespace knowd {

absl::StatusOr<std::unique_ptr<RetrievalKeys>> RetrievalKeys::Load(const std::string& dir,
                                                                   const LlamaConfig& lm) {
  const std::string json_path = dir + "/retrieval_keys.json";
  const std::string tensors_path = dir + "/retrieval_keys.safetensors";
  absl::StatusOr<nlohmann::json> descriptor =
      internal::ReadJsonDescriptor(json_path, "knowd-retrieval-keys", 1);
  if (!descriptor.ok()) return descriptor.status();
  const nlohmann::json& j = *descriptor;
  auto keys = std::unique_ptr<RetrievalKeys>(new RetrievalKeys());
  RetrievalKeys& k = *keys;
  const auto layers = j.find("layers");
  if (layers == j.end() || !layers->is_array() || layers->empty()) {
    return absl::InvalidArgumentError(absl::StrCat(json_path, ": \"layers\" must list layers"));
  }
  for (const auto& l : *layers) {
    if (!l.is_number_integer() || l.get<int>() < 0 || l.get<int>() >= lm.num_layers) {
      return absl::InvalidArgumentError(absl::StrCat(json_path, ": layer ", l.dump(),
                                                     " is not one of the base model's 0..",
                                                     lm.num_layers - 1));
    }
    k.layers_.push_back(l.get<int>());
  }
  k.heads_ = j.value("heads", 0);
  k.key_dim_ = j.value("key_dim", 0);
  k.hidden_ = lm.hidden_size;
  k.dim_ = static_cast<int>(k.layers_.size()) * lm.hidden_size;
  if (k.heads_ < 1 || k.key_dim_ < 1 || j.value("state_dim", 0) != k.dim_) {
    return absl::InvalidArgumentError(absl::StrCat(
        json_path, ": needs heads >= 1, key_dim >= 1 and state_dim = layers x hidden_size (",
        k.dim_, "); it has ", j.value("heads", 0), ", ", j.value("key_dim", 0), " and ",
        j.value("state_dim", 0)));
  }
  KNOWD_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> file,
                         SafetensorsFile::Open(tensors_path));
  auto read = [&](const std::string& name, std::vector<int64_t> shape, std::vector<float>* out) {
    return internal::ReadF32Tensor(*file, name, shape, out);
  };
  for (auto [name, head] :
       {std::pair{"passage", &k.passage_}, std::pair{"question", &k.question_}}) {
    KNOWD_RETURN_IF_ERROR(read(absl::StrCat(name, ".query"), {k.heads_, k.dim_}, &head->query));
    KNOWD_RETURN_IF_ERROR(read(absl::StrCat(name, ".proj.weight"),
                               {k.key_dim_, int64_t{k.heads_} * k.dim_}, &head->proj));
  }
  KNOWD_ASSIGN_OR_RETURN(k.sha256_, Sha256OfFile(tensors_path));
  return keys;
}

std::vector<float> RetrievalKeys::Key(Side side, const float* states, int64_t total_tokens,
                                      int64_t begin, int n) const {
  const Head& head = side == Side::kPassage ? passage_ : question_;
  const int tokens = std::max(0, n - 1);  // BOS is not pooled
  // x [tokens][dim]: each chosen layer's row, RMS-normalized without a weight.
  std::vector<float> x(static_cast<size_t>(tokens) * dim_);
  for (int t = 0; t < tokens; ++t) {
    for (size_t l = 0; l < layers_.size(); ++l) {
      const float* h = states + (int64_t(l) * total_tokens + begin + 1 + t) * hidden_;
      float* out = x.data() + int64_t{t} * dim_ + int64_t(l) * hidden_;
      double squares = 0;
      for (int c = 0; c < hidden_; ++c) squares += double{h[c]} * h[c];
      const float scale = 1.0f / std::sqrt(static_cast<float>(squares / hidden_) + 1e-6f);
      for (int c = 0; c < hidden_; ++c) out[c] = h[c] * scale;
    }
  }
  std::vector<float> pooled(static_cast<size_t>(heads_) * dim_, 0.0f);
  std::vector<float> weights(tokens);
  for (int q = 0; q < heads_ && tokens > 0; ++q) {
    const float* query = head.query.data() + int64_t{q} * dim_;
    float max = -INFINITY;
    for (int t = 0; t < tokens; ++t) {
      float dot = 0.0f;
      const float* row = x.data() + int64_t{t} * dim_;
      for (int c = 0; c < dim_; ++c) dot += query[c] * row[c];
      weights[t] = dot;
      max = std::max(max, dot);
    }
    float sum = 0.0f;
    for (float& w : weights) sum += w = std::exp(w - max);
    float* p = pooled.data() + int64_t{q} * dim_;
    for (int t = 0; t < tokens; ++t) {
      const float w = weights[t] / sum;
      const float* row = x.data() + int64_t{t} * dim_;
      for (int c = 0; c < dim_; ++c) p[c] += w * row[c];
    }
  }
  std::vector<float> key(key_dim_, 0.0f);
  const int64_t width = int64_t{heads_} * dim_;
  double norm = 0;
  for (int o = 0; o < key_dim_; ++o) {
    const float* w = head.proj.data() + o * width;
    float dot = 0.0f;
    for (int64_t c = 0; c < width; ++c) dot += w[c] * pooled[c];
    key[o] = dot;
    norm += double{dot} * dot;
  }
  // torch's normalize: x / max(|x|, 1e-12).
  const float inv = 1.0f / static_cast<float>(std::max(std::sqrt(norm), 1e-12));
  for (float& v : key) v *= inv;
  return key;
}

}  // namespace knowd
