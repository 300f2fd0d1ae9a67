// Helpers shared by the libtorch tests: a tiny Llama configuration, scratch paths and seeded
// token sequences.
#pragma once

#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "model/config.h"
#include "train/world.h"

namespace knowd::train {

inline constexpr int kTinyVocab = 300;

// A 2-layer model with GQA (4 heads, 2 kv heads): small enough for tests to train in seconds.
inline LlamaConfig TinyConfig(int vocab = kTinyVocab, bool tied = true) {
  LlamaConfig c;
  c.vocab_size = vocab;
  c.hidden_size = 64;
  c.num_layers = 2;
  c.num_heads = 4;
  c.num_kv_heads = 2;
  c.head_dim = 16;
  c.intermediate_size = 128;
  c.max_position_embeddings = 256;
  c.tie_word_embeddings = tied;
  return c;
}

// A path under the system temp directory, unique to this process.
inline std::string TempDir(const std::string& name) {
  return (std::filesystem::temp_directory_path() /
          ("knowd_train_test_" + name + "_" + std::to_string(getpid())))
      .string();
}

inline std::vector<int32_t> RandomTokens(int n, int vocab, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<int32_t> t(n);
  for (int32_t& x : t) x = static_cast<int32_t>(BoundedDraw(rng, vocab));
  return t;
}

}  // namespace knowd::train
