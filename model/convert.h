// Converting a checkpoint between formats (GGUF, Hugging Face safetensors) and weight types
// (f32, f16, bf16, q8_0): what tests and tools use to make the same model in every layout the
// loaders accept.
#pragma once

#include <string>

#include "absl/status/status.h"
#include "kernels/dtype.h"

namespace knowd {

// Reads the Llama checkpoint at `in` (a GGUF file, or a Hugging Face directory with config.json)
// and writes it to `out`: a GGUF file when `out` ends in ".gguf", else a Hugging Face directory
// (created if needed) holding model.safetensors, config.json and the tokenizer.
//
// Every 2-D weight matrix (embeddings and output included) becomes `weights`; 1-D tensors (norms,
// biases) stay f32. q8_0 rounds as llama.cpp does (blocks of 32, f16 scale max|x| / 127, values
// rounded to nearest, halves away from zero); a matrix whose rows are not a multiple of 32 is
// stored f16 instead. Hugging Face output takes f32, f16 or bf16 only.
//
// Between the two formats, tensors are renamed and the Q/K rows of each head are permuted between
// GGUF's interleaved RoPE order and Hugging Face's rotate-half order, so both files compute the
// same function. Tokenizers follow the model:
//   GGUF -> GGUF: all metadata is kept (general.file_type updated);
//   HF -> GGUF:   a SentencePiece tokenizer.model is embedded as tokenizer.ggml.model "llama"
//                 (padded with [PADn] tokens up to vocab_size, as llama.cpp's converter does);
//                 without one the file says "no_vocab" and carries llama.vocab_size, which
//                 llama.cpp accepts (knowd's LoadTokenizer then reports that there is none);
//   GGUF -> HF:   a "llama" GGUF vocabulary is written as tokenizer.model (a "gpt2" one is not
//                 converted: the directory then has no tokenizer);
//   HF -> HF:     tokenizer.model and tokenizer.json are copied.
//
// The converted tensors are held in memory until written; `out` is replaced atomically file by
// file. INVALID_ARGUMENT for an unsupported `weights`, q8_0 to Hugging Face, a tensor that has
// no name in the other format, or a config GGUF "llama" cannot express (head_dim other than
// hidden_size / num_heads); loader errors pass through.
absl::Status ConvertModel(const std::string& in, const std::string& out, DType weights);

}  // namespace knowd
