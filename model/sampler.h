// Picks the next token from logits: greedy (temperature 0), or temperature + top-p (nucleus)
// sampling from a seeded generator, so a seed reproduces a generation exactly.
#pragma once

#include <cstdint>
#include <random>
#include <span>
#include <utility>
#include <vector>

namespace knowd {

struct SamplingOptions {
  float temperature = 0.0f;  // 0: greedy (argmax; ties go to the lowest id)
  float top_p = 1.0f;        // keep the smallest set of tokens whose probability reaches top_p
  uint64_t seed = 0;
};

// Not thread-safe: one Sampler per sequence.
class Sampler {
 public:
  explicit Sampler(const SamplingOptions& options);
  int32_t Sample(std::span<const float> logits);

 private:
  SamplingOptions options_;
  std::mt19937_64 rng_;
  std::vector<std::pair<float, int32_t>> candidates_;
};

}  // namespace knowd
