// Tokenizers: Llama SentencePiece (a tokenizer.model, or the vocabulary embedded in a GGUF file)
// and GPT-2 byte-level BPE (GGUF-embedded, or Hugging Face tokenizer.json). Encode/Decode are
// const and safe to call from many threads at once.
//
// SentencePiece models encode and decode exactly as libsentencepiece 0.1.97 does (knowd does not
// link it: Debian's build cannot share a process with libprotobuf, which gRPC needs; tests compare
// the two). Byte-level BPE encodes as Hugging Face tokenizers does, and its Decode(Encode(x)) == x
// for any bytes x. Loaders never crash on bad files: every problem is a Status naming the file.
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
  // Text of `ids`; control tokens (BOS/EOS) produce no text, nor do ids outside
  // [0, vocab_size()). A SentencePiece model drops the dummy-prefix space of the first piece, so
  // Decode(Encode(x)) == x for UTF-8 text without U+2581 (which SentencePiece reads as a space).
  // A byte-level BPE sequence cut inside a character decodes to a partial UTF-8 sequence.
  virtual std::string Decode(std::span<const int32_t> ids) const = 0;

  virtual int32_t vocab_size() const = 0;
  virtual int32_t bos_id() const = 0;  // -1 when none
  virtual int32_t eos_id() const = 0;  // -1 when none
};

// A SentencePiece model file (tokenizer.model). BPE models with identity normalization (the
// Llama family: Llama 1/2, Mistral, TinyLlama, llama2.c) are supported; unigram models,
// precompiled normalization rules (nmt_nfkc) and whitespace-as-suffix are refused with
// INVALID_ARGUMENT. NOT_FOUND when the file does not exist; INVALID_ARGUMENT when it is not a
// SentencePiece model.
absl::StatusOr<std::unique_ptr<Tokenizer>> LoadSentencePieceTokenizer(const std::string& path);

// The vocabulary embedded in a GGUF file: tokenizer.ggml.model "llama" (SentencePiece BPE with
// byte fallback; tokenizer.ggml.add_space_prefix and the *_token_id keys are honoured) or "gpt2"
// (byte-level BPE; tokenizer.ggml.pre "gpt-2"/"default", and also "llama-bpe" and "qwen2").
// NOT_FOUND when the file has no tokenizer.ggml.model; INVALID_ARGUMENT for other tokenizer
// models or inconsistent tokenizer metadata.
absl::StatusOr<std::unique_ptr<Tokenizer>> LoadGgufTokenizer(const GgufFile& gguf);

// A Hugging Face tokenizer.json with a byte-level BPE model (GPT-2 style; also a Split-regex +
// ByteLevel pre-tokenizer as in Llama 3). Added tokens are matched whole before BPE; BOS/EOS come
// from a tokenizer_config.json beside it, else from well-known special tokens (<|endoftext|>,
// <s>, <|begin_of_text|>, ...). Normalizers and SentencePiece-style BPE (byte_fallback) are
// refused with INVALID_ARGUMENT.
absl::StatusOr<std::unique_ptr<Tokenizer>> LoadHfTokenizerJson(const std::string& path);

// Picks by path: a .gguf file, a tokenizer.model, a tokenizer.json, or a model directory holding
// tokenizer.model or tokenizer.json (tokenizer.model first). Files are recognised by content, not
// name. NOT_FOUND when the path does not exist or a directory holds neither file.
absl::StatusOr<std::unique_ptr<Tokenizer>> LoadTokenizer(const std::string& path);

}  // namespace knowd
