// SentencePiece training for knowd-train (libsentencepiece_train). knowd reads the result with
// its own LoadSentencePieceTokenizer.
//
// This header uses only std types: libsentencepiece's headers define an absl::string_view of
// their own that clashes with Abseil's, and its bundled protobuf runtime cannot share a process
// with libprotobuf (libtorch, gRPC) — so training runs in its own executable, knowd-train-spm.
#pragma once

#include <string>
#include <vector>

namespace knowd::train {

struct TokenizerTrainOptions {
  int vocab_size = 1024;
  int threads = 2;
};

// Trains a BPE model with identity normalization and byte fallback (the Llama recipe, so any
// text — "\n" included — encodes) on `sentences` and writes it to `model_path` (a tokenizer.model)
// atomically. Returns an empty string on success, else the reason.
std::string TrainSentencePiece(const std::vector<std::string>& sentences,
                               const std::string& model_path, const TokenizerTrainOptions& options);

}  // namespace knowd::train
