#include "model/low_rank.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "model/transformer.h"

namespace knowd {
namespace {

constexpr std::string_view kProjectionNames[kNumProjections] = {"qkv", "o", "gate", "up", "down"};
constexpr int kMaxRank = 256;

std::string SiteName(const LowRankSite& site) {
  return absl::StrCat("site (layer ", site.layer, ", ",
                      std::string(ProjectionName(site.projection)), ")");
}

}  // namespace

std::vector<float> LowRankTransposed(std::span<const float> m, int rows, int cols) {
  std::vector<float> t(m.size());
  for (int r = 0; r < rows; ++r) {
    for (int c = 0; c < cols; ++c) t[int64_t{c} * rows + r] = m[int64_t{r} * cols + c];
  }
  return t;
}

std::string_view ProjectionName(Projection projection) {
  const int i = static_cast<int>(projection);
  return i >= 0 && i < kNumProjections ? kProjectionNames[i] : "?";
}

absl::StatusOr<Projection> ParseProjection(std::string_view name) {
  for (int i = 0; i < kNumProjections; ++i) {
    if (name == kProjectionNames[i]) return static_cast<Projection>(i);
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown projection \"", std::string(name),
                                                 "\" (one of qkv, o, gate, up, down)"));
}

// ---- LowRankFactors -----------------------------------------------------------------------

int LowRankFactors::InSize(Projection projection) const {
  const LlamaConfig& c = model_->config();
  switch (projection) {
    case Projection::kQkv:
    case Projection::kGate:
    case Projection::kUp:
      return c.hidden_size;
    case Projection::kO:
      return c.q_dim();
    case Projection::kDown:
      return c.intermediate_size;
  }
  return 0;
}

int LowRankFactors::OutSize(Projection projection) const {
  const LlamaConfig& c = model_->config();
  switch (projection) {
    case Projection::kQkv:
      return c.q_dim() + 2 * c.kv_dim();
    case Projection::kO:
    case Projection::kDown:
      return c.hidden_size;
    case Projection::kGate:
    case Projection::kUp:
      return c.intermediate_size;
  }
  return 0;
}

absl::StatusOr<std::unique_ptr<LowRankFactors>> LowRankFactors::Create(
    Transformer* model, int rank, int rank_out, std::vector<LowRankSite> sites,
    std::span<const std::vector<float>> w2, std::span<const std::vector<float>> w1) {
  if (model == nullptr) return absl::InvalidArgumentError("low-rank factors need a model");
  if (rank < 1 || rank > kMaxRank || rank_out < 1 || rank_out > kMaxRank) {
    return absl::InvalidArgumentError(absl::StrCat("low-rank rank ", rank, " and rank_out ",
                                                   rank_out, " must be in [1, ", kMaxRank, "]"));
  }
  if (sites.empty()) return absl::InvalidArgumentError("low-rank factors need at least one site");
  if (w2.size() != sites.size() || w1.size() != sites.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat(sites.size(), " low-rank sites need as many w2 and w1 factors, got ",
                     w2.size(), " and ", w1.size()));
  }
  std::unique_ptr<LowRankFactors> f(new LowRankFactors());
  f->model_ = model;
  f->rank_ = rank;
  f->rank_out_ = rank_out;
  const int layers = model->config().num_layers;
  std::array<int, kNumProjections> none;
  none.fill(-1);
  f->by_layer_.assign(layers, none);
  for (size_t i = 0; i < sites.size(); ++i) {
    const LowRankSite& s = sites[i];
    const int p = static_cast<int>(s.projection);
    if (p < 0 || p >= kNumProjections) {
      return absl::InvalidArgumentError(
          absl::StrCat("low-rank site ", i, ": unknown projection ", p));
    }
    if (s.layer < 0 || s.layer >= layers) {
      return absl::InvalidArgumentError(
          absl::StrCat("low-rank ", SiteName(s), ": layer outside [0, ", layers, ")"));
    }
    if (f->by_layer_[s.layer][p] >= 0) {
      return absl::InvalidArgumentError(absl::StrCat("low-rank ", SiteName(s), " is given twice"));
    }
    f->by_layer_[s.layer][p] = static_cast<int>(i);
    const int64_t want_w2 = int64_t{rank} * f->InSize(s.projection);
    const int64_t want_w1 = int64_t{f->OutSize(s.projection)} * rank_out;
    if (static_cast<int64_t>(w2[i].size()) != want_w2 ||
        static_cast<int64_t>(w1[i].size()) != want_w1) {
      return absl::InvalidArgumentError(
          absl::StrCat("low-rank ", SiteName(s), ": w2 must be [", rank, ", ",
                       f->InSize(s.projection), "] and w1 [", f->OutSize(s.projection), ", ",
                       rank_out, "], got ", w2[i].size(), " and ", w1[i].size(), " floats"));
    }
  }
  f->sites_ = std::move(sites);
  Backend* backend = model->backend();
  for (size_t i = 0; i < f->sites_.size(); ++i) {
    const int in = f->InSize(f->sites_[i].projection);
    const int out = f->OutSize(f->sites_[i].projection);
    const std::vector<float> w2t = LowRankTransposed(w2[i], rank, in);
    const std::vector<float> w1t = LowRankTransposed(w1[i], out, rank_out);
    for (auto [host, dst] : {std::pair{&w2t, &f->w2t_}, std::pair{&w1t, &f->w1t_}}) {
      const size_t bytes = host->size() * sizeof(float);
      auto* p = static_cast<float*>(backend->Alloc(bytes));
      if (p == nullptr) {
        return absl::ResourceExhaustedError(absl::StrCat("out of ", backend->name(),
                                                         " memory for the low-rank factors of ",
                                                         SiteName(f->sites_[i])));
      }
      dst->push_back(p);
      backend->Upload(p, host->data(), bytes);
    }
  }
  backend->Synchronize();
  return f;
}

LowRankFactors::~LowRankFactors() {
  if (model_ == nullptr) return;
  Backend* backend = model_->backend();
  backend->Synchronize();
  for (float* p : w2t_) backend->Free(p);
  for (float* p : w1t_) backend->Free(p);
}

// ---- LowRankState -------------------------------------------------------------------------

absl::StatusOr<std::unique_ptr<LowRankState>> LowRankState::Create(const LowRankFactors* factors,
                                                                   std::span<const float> h_host) {
  if (factors == nullptr) return absl::InvalidArgumentError("a low-rank state needs its factors");
  std::unique_ptr<LowRankState> state(new LowRankState());
  state->factors_ = factors;
  Backend* backend = factors->model()->backend();
  state->data_ = static_cast<float*>(backend->Alloc(state->bytes()));
  if (state->data_ == nullptr) {
    return absl::ResourceExhaustedError(
        absl::StrCat("out of ", backend->name(), " memory for a low-rank state"));
  }
  if (absl::Status s = state->Set(h_host); !s.ok()) return s;
  return state;
}

LowRankState::~LowRankState() {
  if (data_ == nullptr) return;
  Backend* backend = factors_->model()->backend();
  backend->Synchronize();
  backend->Free(data_);
}

absl::Status LowRankState::Set(std::span<const float> h_host) {
  if (static_cast<int64_t>(h_host.size()) != factors_->state_floats()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "a low-rank state holds ", factors_->state_floats(), " floats (", factors_->sites().size(),
        " sites x ", factors_->rank(), " x ", factors_->rank_out(), "), got ", h_host.size()));
  }
  Backend* backend = factors_->model()->backend();
  backend->Upload(data_, h_host.data(), bytes());
  backend->Synchronize();
  return absl::OkStatus();
}

}  // namespace knowd
