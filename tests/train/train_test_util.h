// Helpers shared by the libtorch tests: a tiny Llama configuration, scratch paths, seeded token
// sequences, and the tokenizer, world and pretrained tiny reader the adapter tests start from.
#pragma once

#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "model/config.h"
#include "model/tokenizer.h"
#include "train/lm.h"
#include "train/pretrain.h"
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

// The SentencePiece tokenizer of the shipped stories260K model.
inline absl::StatusOr<std::unique_ptr<Tokenizer>> LoadStoriesTokenizer() {
  return LoadSentencePieceTokenizer(std::string(KNOWD_SOURCE_DIR) +
                                    "/models/stories260K-hf/tokenizer.model");
}

// The world of the adapter tests: 200 people in the pretraining split, 60 in the adapter split.
inline WorldOptions AdapterTestWorld() {
  WorldOptions world;
  world.people[static_cast<int>(Split::kPretrain)] = 200;
  world.people[static_cast<int>(Split::kAdapter)] = 60;
  return world;
}

// A tiny reader (TinyConfig over `tokenizer`'s vocabulary, BOS and EOS, seed 1) after 10
// reading-comprehension steps on `world`'s pretraining split, so that its states carry something.
inline absl::StatusOr<std::unique_ptr<LanguageModel>> PretrainedTinyReader(
    const WorldOptions& world, std::shared_ptr<const Tokenizer> tokenizer) {
  LlamaConfig c = TinyConfig(tokenizer->vocab_size());
  c.bos_token_id = tokenizer->bos_id();
  c.eos_token_id = tokenizer->eos_id();
  absl::StatusOr<std::unique_ptr<LanguageModel>> lm =
      LanguageModel::Create(c, 1, OptimizerOptions());
  if (!lm.ok()) return lm.status();
  ReadingCorpus reading(GenerateSplit(world, Split::kPretrain), std::move(tokenizer));
  for (int step = 0; step < 10; ++step) {
    std::mt19937_64 rng(step);
    absl::StatusOr<double> loss = (*lm)->TrainStep(reading.Batch(rng, 8, 200, 1.0f), 3e-3);
    if (!loss.ok()) return loss.status();
  }
  return lm;
}

}  // namespace knowd::train
