#include "model/session_mapper.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "kernels/math.h"
#include "model/json_descriptor.h"
#include "model/sha256.h"
#include "model/tensor_file.h"
#include "model/tokenizer.h"
#include "nlohmann/json.hpp"

namespace knowd {
namespace {

// Trunk passes take at most this many tokens of chunks at once.
constexpr int64_t kBatchTokens = 8192;

}  // namespace

SessionMapper::~SessionMapper() {
  if (base_ == nullptr) return;
  for (void* p : allocations_) base_->backend()->Free(p);
}

absl::StatusOr<std::unique_ptr<SessionMapper>> SessionMapper::Load(const std::string& dir,
                                                                   Transformer* base) {
  const std::string json_path = dir + "/session_mapper.json";
  const std::string tensors_path = dir + "/session_mapper.safetensors";
  absl::StatusOr<nlohmann::json> descriptor =
      internal::ReadJsonDescriptor(json_path, "knowd-session-mapper", 1);
  if (!descriptor.ok()) return descriptor.status();
  const nlohmann::json& j = *descriptor;
  const LlamaConfig& c = base->config();
  auto mapper = std::unique_ptr<SessionMapper>(new SessionMapper());
  SessionMapper& m = *mapper;
  m.base_ = base;
  SessionMapperSpec& spec = m.spec_;
  spec.rank = j.value("rank", 0);
  spec.rank_out = j.value("rank_out", 0);
  spec.demos_per_chunk = j.value("demos_per_chunk", 0);
  spec.max_chunk_tokens = j.value("max_chunk_tokens", 0);
  if (spec.max_chunk_tokens < 2 || spec.max_chunk_tokens > c.max_position_embeddings) {
    return absl::InvalidArgumentError(
        absl::StrCat(json_path, ": max_chunk_tokens must be in 2..", c.max_position_embeddings));
  }
  const auto sites = j.find("sites");
  if (sites == j.end() || !sites->is_array() || sites->empty()) {
    return absl::InvalidArgumentError(absl::StrCat(json_path, ": \"sites\" must list sites"));
  }
  for (const auto& s : *sites) {
    if (!s.is_object() || !s.contains("layer") || !s["layer"].is_number_integer() ||
        !s.contains("projection") || !s["projection"].is_string()) {
      return absl::InvalidArgumentError(
          absl::StrCat(json_path, ": each site needs a \"layer\" and a \"projection\""));
    }
    absl::StatusOr<Projection> p = ParseProjection(s["projection"].get<std::string>());
    if (!p.ok())
      return absl::InvalidArgumentError(absl::StrCat(json_path, ": ", p.status().message()));
    spec.sites.push_back({s["layer"].get<int>(), *p});
  }
  KNOWD_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> file,
                         SafetensorsFile::Open(tensors_path));
  auto read = [&](const std::string& name, std::vector<int64_t> shape, std::vector<float>* out) {
    return internal::ReadF32Tensor(*file, name, shape, out);
  };
  const int64_t r = spec.rank, r2 = spec.rank_out, kv = c.kv_dim();
  if (r < 1 || r2 < 1) {
    return absl::InvalidArgumentError(absl::StrCat(json_path, ": rank and rank_out must be >= 1"));
  }
  // The factors' sizes come from the projections; LowRankFactors::Create checks the sites.
  std::vector<std::vector<float>> w2(spec.sites.size()), w1(spec.sites.size());
  std::vector<std::vector<float>> proj(spec.sites.size());
  m.sites_.resize(spec.sites.size());
  for (size_t i = 0; i < spec.sites.size(); ++i) {
    const Projection p = spec.sites[i].projection;
    const int64_t in = p == Projection::kO      ? c.q_dim()
                       : p == Projection::kDown ? c.intermediate_size
                                                : c.hidden_size;
    const int64_t out = p == Projection::kQkv                           ? c.q_dim() + 2 * c.kv_dim()
                        : p == Projection::kO || p == Projection::kDown ? c.hidden_size
                                                                        : c.intermediate_size;
    const std::string prefix = absl::StrCat("site", i, ".");
    Site& s = m.sites_[i];
    KNOWD_RETURN_IF_ERROR(read(prefix + "query", {r, kv}, &s.query_host));
    KNOWD_RETURN_IF_ERROR(read(prefix + "proj", {r2, kv}, &proj[i]));
    KNOWD_RETURN_IF_ERROR(read(prefix + "gate_weight", {r2, r2}, &s.gate_weight));
    KNOWD_RETURN_IF_ERROR(read(prefix + "gate_bias", {r2}, &s.gate_bias));
    KNOWD_RETURN_IF_ERROR(read(prefix + "w2", {r, in}, &w2[i]));
    KNOWD_RETURN_IF_ERROR(read(prefix + "w1", {out, r2}, &w1[i]));
  }
  absl::StatusOr<std::unique_ptr<LowRankFactors>> factors =
      LowRankFactors::Create(base, spec.rank, spec.rank_out, spec.sites, w2, w1);
  if (!factors.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(json_path, ": ", factors.status().message()));
  }
  m.factors_ = *std::move(factors);
  Backend* backend = base->backend();
  auto upload = [&](const std::vector<float>& host) -> float* {
    auto* p = static_cast<float*>(backend->Alloc(host.size() * sizeof(float)));
    if (p == nullptr) return nullptr;
    m.allocations_.push_back(p);
    backend->Upload(p, host.data(), host.size() * sizeof(float));
    return p;
  };
  for (size_t i = 0; i < m.sites_.size(); ++i) {
    m.sites_[i].query = upload(m.sites_[i].query_host);
    m.sites_[i].proj = upload(proj[i]);
    if (m.sites_[i].query == nullptr || m.sites_[i].proj == nullptr) {
      return absl::ResourceExhaustedError("no backend memory for the session mapper");
    }
  }
  KNOWD_ASSIGN_OR_RETURN(spec.sha256, Sha256OfFile(tensors_path));
  return mapper;
}

absl::Status SessionMapper::Absorb(std::span<const std::vector<int32_t>> chunks,
                                   std::vector<float>* state) {
  const LlamaConfig& c = base_->config();
  if (state == nullptr || static_cast<int64_t>(state->size()) != state_floats()) {
    return absl::InvalidArgumentError(
        absl::StrCat("a session state holds ", state_floats(), " floats"));
  }
  for (size_t i = 0; i < chunks.size(); ++i) {
    if (chunks[i].size() < 2 || static_cast<int>(chunks[i].size()) > spec_.max_chunk_tokens) {
      return absl::InvalidArgumentError(absl::StrCat("chunk ", i, " has ", chunks[i].size(),
                                                     " tokens; a chunk holds 2..",
                                                     spec_.max_chunk_tokens, " (BOS included)"));
    }
  }
  Backend* backend = base_->backend();
  const int r = spec_.rank, r2 = spec_.rank_out, kv = c.kv_dim();
  const size_t sites = spec_.sites.size();
  const int64_t site_floats = int64_t{r} * r2;
  std::vector<float> h = *state;
  auto* attended = static_cast<float*>(backend->Alloc(sizeof(float) * r * kv));
  auto* summary = static_cast<float*>(backend->Alloc(sizeof(float) * site_floats * sites));
  if (attended == nullptr || summary == nullptr) {
    if (attended != nullptr) backend->Free(attended);
    if (summary != nullptr) backend->Free(summary);
    return absl::ResourceExhaustedError("no backend memory for a session chunk");
  }
  absl::Status status;
  std::vector<float> s(site_floats * sites);
  std::vector<float> a(r2);
  for (size_t begin = 0; begin < chunks.size() && status.ok();) {
    // A batch of chunks, each in its own cache.
    size_t end = begin;
    int64_t tokens = 0;
    while (end < chunks.size() &&
           (end == begin || tokens + static_cast<int64_t>(chunks[end].size()) <= kBatchTokens)) {
      tokens += static_cast<int64_t>(chunks[end].size());
      ++end;
    }
    std::vector<std::unique_ptr<KvCache>> caches;
    std::vector<SequenceStep> batch;
    for (size_t i = begin; i < end; ++i) {
      absl::StatusOr<std::unique_ptr<KvCache>> cache =
          base_->NewCache(static_cast<int>(chunks[i].size()));
      if (!cache.ok()) {
        status = cache.status();
        break;
      }
      caches.push_back(*std::move(cache));
      batch.push_back({caches.back().get(), chunks[i], false});
    }
    if (!status.ok()) break;
    status = base_->Forward(batch, nullptr);
    if (!status.ok()) break;
    for (size_t i = begin; i < end; ++i) {
      const KvCache& cache = *caches[i - begin];
      const int n = static_cast<int>(chunks[i].size());
      for (size_t site = 0; site < sites; ++site) {
        const int layer = spec_.sites[site].layer;
        AttentionArgs args;
        args.q = sites_[site].query;
        args.k = cache.layer_keys(layer);
        args.v = cache.layer_values(layer);
        args.out = attended;
        args.n_queries = r;
        args.n_heads = c.num_kv_heads;
        args.n_kv_heads = c.num_kv_heads;
        args.head_dim = c.head_dim;
        args.q_stride = kv;
        args.kv_stride = kv;
        args.out_stride = kv;
        args.scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
        args.n_keys = n;
        backend->Attention(args);
        backend->MatMul(attended, kv, sites_[site].proj, summary + site * site_floats, r2, r, r2,
                        kv, false);
      }
      backend->Download(s.data(), summary, s.size() * sizeof(float));
      if (status = backend->status(); !status.ok()) break;
      // h = sigmoid(S · Gᵀ + g) ⊙ h + S, row by row, on the host: r x r2 per site.
      for (size_t site = 0; site < sites; ++site) {
        const Site& w = sites_[site];
        float* hs = h.data() + site * site_floats;
        const float* ss = s.data() + site * site_floats;
        for (int row = 0; row < r; ++row) {
          const float* srow = ss + int64_t{row} * r2;
          for (int o = 0; o < r2; ++o) {
            float z = w.gate_bias[o];
            const float* g = w.gate_weight.data() + int64_t{o} * r2;
            for (int k = 0; k < r2; ++k) z += srow[k] * g[k];
            a[o] = 1.0f / (1.0f + std::exp(-z));
          }
          float* hrow = hs + int64_t{row} * r2;
          for (int o = 0; o < r2; ++o) hrow[o] = a[o] * hrow[o] + srow[o];
        }
      }
    }
    begin = end;
  }
  backend->Free(attended);
  backend->Free(summary);
  if (!status.ok()) return status;
  *state = std::move(h);
  return absl::OkStatus();
}

std::vector<std::vector<int32_t>> SessionChunks(const Tokenizer& tokenizer, std::string_view text,
                                                int max_chunk_tokens) {
  std::vector<std::vector<int32_t>> out;
  const int limit = std::max(2, max_chunk_tokens);
  // Lines, each with its "\n" (the last may have none).
  std::vector<std::string_view> lines;
  for (size_t begin = 0; begin < text.size();) {
    size_t end = text.find('\n', begin);
    end = end == std::string_view::npos ? text.size() : end + 1;
    lines.push_back(text.substr(begin, end - begin));
    begin = end;
  }
  std::string pending;
  std::vector<int32_t> pending_ids;
  auto flush = [&] {
    if (pending_ids.size() >= 2) out.push_back(std::move(pending_ids));
    pending.clear();
    pending_ids.clear();
  };
  for (std::string_view line : lines) {
    std::string candidate = pending + std::string(line);
    std::vector<int32_t> ids = tokenizer.Encode(candidate, true);
    if (static_cast<int>(ids.size()) <= limit) {
      pending = std::move(candidate);
      pending_ids = std::move(ids);
      continue;
    }
    flush();
    ids = tokenizer.Encode(line, true);
    if (static_cast<int>(ids.size()) > limit) {
      ids.resize(limit);  // one line longer than a chunk: cut at the limit
      out.push_back(std::move(ids));
      continue;
    }
    pending = std::string(line);
    pending_ids = std::move(ids);
  }
  flush();
  return out;
}

std::vector<std::vector<int32_t>> SessionChunksOfMessages(const Tokenizer& tokenizer,
                                                          std::span<const std::string> messages,
                                                          int max_chunk_tokens) {
  std::vector<std::vector<int32_t>> out;
  for (const std::string& message : messages) {
    for (std::vector<int32_t>& c : SessionChunks(tokenizer, message, max_chunk_tokens)) {
      out.push_back(std::move(c));
    }
  }
  return out;
}

}  // namespace knowd
