// Factored low-rank weight updates (StreamAdapter's "weight absorption"). For chosen linear layers
// ("sites") of a frozen Transformer the effective weight is W' = W + W1 · hᵀ · W2, where W is
// [out, in] (nn.Linear layout, y = x·Wᵀ), W2 [rank, in] and W1 [out, rank_out] are shared by
// every session, and h [rank, rank_out] is one session's state. Forward applies it factored,
// y += ((x · W2ᵀ) · h) · W1ᵀ, so sessions share one copy of W and batch together
// (SequenceStep::update); Transformer::MergeLowRank folds one state into the weights instead.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <span>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace knowd {

class Transformer;

// The linear layers of a transformer layer a low-rank update may target, with their in -> out
// sizes: kQkv hidden -> q_dim + 2 * kv_dim (the stacked q, k, v output before RoPE), kO q_dim ->
// hidden, kGate and kUp hidden -> intermediate, kDown intermediate -> hidden (its input is
// silu(gate) * up).
enum class Projection : uint8_t { kQkv, kO, kGate, kUp, kDown };
inline constexpr int kNumProjections = 5;

// "qkv", "o", "gate", "up", "down".
std::string_view ProjectionName(Projection projection);
// The inverse of ProjectionName; INVALID_ARGUMENT naming the valid names otherwise.
absl::StatusOr<Projection> ParseProjection(std::string_view name);

// m [rows][cols] row-major, transposed: [cols][rows]. The factors are kept transposed in backend
// memory; merging transposes W1ᵀ back.
std::vector<float> LowRankTransposed(std::span<const float> m, int rows, int cols);

struct LowRankSite {
  int layer = 0;
  Projection projection = Projection::kO;
};

// The shared factors W2 and W1 of every site, uploaded once to the model's backend. The model
// must outlive them.
class LowRankFactors {
 public:
  // w2[i]: host [rank, in] floats, w1[i]: host [out, rank_out] floats for sites[i], validated
  // against model->config(). INVALID_ARGUMENT (naming the offending site) for a layer out of range,
  // a site given twice or factors of the wrong size; also for rank or rank_out outside [1, 256], no
  // sites, or not one w2 and one w1 per site. RESOURCE_EXHAUSTED when the backend has no memory.
  static absl::StatusOr<std::unique_ptr<LowRankFactors>> Create(
      Transformer* model, int rank, int rank_out, std::vector<LowRankSite> sites,
      std::span<const std::vector<float>> w2, std::span<const std::vector<float>> w1);
  ~LowRankFactors();
  LowRankFactors(const LowRankFactors&) = delete;
  LowRankFactors& operator=(const LowRankFactors&) = delete;

  int rank() const { return rank_; }
  int rank_out() const { return rank_out_; }
  const std::vector<LowRankSite>& sites() const { return sites_; }
  // sites * rank * rank_out: one session's h, every site.
  int64_t state_floats() const { return static_cast<int64_t>(sites_.size()) * rank_ * rank_out_; }
  Transformer* model() const { return model_; }

  // Backend memory: sites()[i]'s factors transposed, W2ᵀ [in, rank] and W1ᵀ [rank_out, out], the
  // layout Backend::LowRankUpdate reads (each of its steps runs along its output).
  const float* w2t(int site) const { return w2t_[site]; }
  const float* w1t(int site) const { return w1t_[site]; }
  // The index in sites() of (layer, projection), or -1 when no site targets it.
  int SiteIndex(int layer, Projection projection) const {
    return by_layer_[layer][static_cast<int>(projection)];
  }
  // The in and out sizes of `projection` in this model.
  int InSize(Projection projection) const;
  int OutSize(Projection projection) const;

 private:
  LowRankFactors() = default;
  Transformer* model_ = nullptr;
  int rank_ = 0;
  int rank_out_ = 0;
  std::vector<LowRankSite> sites_;
  std::vector<float*> w2t_;
  std::vector<float*> w1t_;
  std::vector<std::array<int, kNumProjections>> by_layer_;
};

// One session's state in backend memory: for each site, in LowRankFactors::sites() order,
// h [rank, rank_out]. The factors must outlive it.
class LowRankState {
 public:
  // h_host holds factors->state_floats() floats; INVALID_ARGUMENT otherwise.
  static absl::StatusOr<std::unique_ptr<LowRankState>> Create(const LowRankFactors* factors,
                                                              std::span<const float> h_host);
  ~LowRankState();
  LowRankState(const LowRankState&) = delete;
  LowRankState& operator=(const LowRankState&) = delete;

  // Replaces the values (the same size as Create's).
  absl::Status Set(std::span<const float> h_host);
  const LowRankFactors* factors() const { return factors_; }
  int64_t bytes() const { return factors_->state_floats() * static_cast<int64_t>(sizeof(float)); }
  // Backend memory: [sites][rank][rank_out].
  const float* data() const { return data_; }

 private:
  LowRankState() = default;
  const LowRankFactors* factors_ = nullptr;
  float* data_ = nullptr;
};

}  // namespace knowd
