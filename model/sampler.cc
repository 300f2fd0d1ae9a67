#include "model/sampler.h"

#include <algorithm>
#include <cmath>

namespace knowd {

Sampler::Sampler(const SamplingOptions& options) : options_(options), rng_(options.seed) {}

int32_t Sampler::Sample(std::span<const float> logits) {
  if (logits.empty()) return -1;
  const int32_t argmax =
      static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
  if (options_.temperature <= 0.0f) return argmax;

  // Softmax at the temperature, relative to the maximum for stability.
  const float max_logit = logits[argmax];
  candidates_.clear();
  candidates_.reserve(logits.size());
  double total = 0.0;
  for (size_t i = 0; i < logits.size(); ++i) {
    const float p = std::exp((logits[i] - max_logit) / options_.temperature);
    candidates_.emplace_back(p, static_cast<int32_t>(i));
    total += p;
  }
  size_t keep = candidates_.size();
  if (options_.top_p < 1.0f) {
    std::sort(candidates_.begin(), candidates_.end(),
              [](const auto& a, const auto& b) { return a.first > b.first; });
    double mass = 0.0;
    keep = 0;
    while (keep < candidates_.size()) {
      mass += candidates_[keep++].first / total;
      if (mass >= options_.top_p) break;
    }
    total = 0.0;
    for (size_t i = 0; i < keep; ++i) total += candidates_[i].first;
  }
  const double target = std::uniform_real_distribution<double>(0.0, total)(rng_);
  double acc = 0.0;
  for (size_t i = 0; i < keep; ++i) {
    acc += candidates_[i].first;
    if (target < acc) return candidates_[i].second;
  }
  return candidates_[keep - 1].second;
}

}  // namespace knowd
