// Tokenizers: Llama SentencePiece (a tokenizer.model through libsentencepiece, or the vocabulary
// embedded in a GGUF file) and GPT-2 byte-level BPE (GGUF-embedded, or Hugging Face
// tokenizer.json). Encode/Decode are const and safe to call from many threads at once.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace knowd {

class GgufFile;

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // Token ids of `text`, with the BOS id in front when add_bos (and the vocabulary has one).
  virtual std::vector<int32_t> Encode(std::string_view text, bool add_bos) const = 0;
  // Text of `ids`; control tokens (BOS/EOS) produce no text.
  virtual std::string Decode(std::span<const int32_t> ids) const = 0;

  virtual int32_t vocab_size() const = 0;
  virtual int32_t bos_id() const = 0;  // -1 when none
  virtual int32_t eos_id() const = 0;  // -1 when none
};

// A SentencePiece model file (tokenizer.model).
absl::StatusOr<std::unique_ptr<Tokenizer>> LoadSentencePieceTokenizer(const std::string& path);

// The vocabulary embedded in a GGUF file: tokenizer.ggml.model "llama" (SentencePiece) or
// "gpt2" (byte-level BPE).
absl::StatusOr<std::unique_ptr<Tokenizer>> LoadGgufTokenizer(const GgufFile& gguf);

// A Hugging Face tokenizer.json with a byte-level BPE model (GPT-2 style).
absl::StatusOr<std::unique_ptr<Tokenizer>> LoadHfTokenizerJson(const std::string& path);

// Picks by path: a .gguf file, a tokenizer.model, a tokenizer.json, or a model directory holding
// tokenizer.model or tokenizer.json.
absl::StatusOr<std::unique_ptr<Tokenizer>> LoadTokenizer(const std::string& path);

}  // namespace knowd
