// From a document's text to the bank's passages: the one path ingest, `knowd reencode` and
// `knowd eval` share.
//
//   SplitDocument   cuts the text into passages (SplitPassages) and gives each its encoder input:
//                   the passage with `context_bytes` of the text before it (the overlap), as
//                   token ids with BOS, cut to the model's context (EncoderTokens).
//   EncodePassages  runs the adapter over encoder inputs: latents and retrieval key per passage.
//
// The bank stores each passage's text and context_bytes, so a re-encode rebuilds exactly the
// input ingest encoded (storage::MemoryBank::Reencode hands the encoder context + text).
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "knowledge/modulator.h"
#include "model/tokenizer.h"
#include "storage/memory_bank.h"

namespace knowd::knowledge {

struct PassageLimits {
  int max_passage_tokens = 256;  // a passage's own tokens at most
  int overlap_tokens = 32;       // tokens of the previous passage the encoder also reads
  int max_positions = 0;         // the model's context: encoder inputs are cut to it (> 1)
};

struct DocumentPassage {
  std::string text;                  // the passage's own text; the texts joined are the document
  uint32_t context_bytes = 0;        // bytes of the document before `text` the encoder reads
  std::vector<int32_t> encoder_ids;  // EncoderTokens(context + text)
};

// The passages of `text` (valid UTF-8; empty gives none).
std::vector<DocumentPassage> SplitDocument(std::string_view text, const Tokenizer& tokenizer,
                                           const PassageLimits& limits);

// The encoder input of one passage: the token ids of `input` (its context then its text) with
// BOS, cut to max_positions; an input with no token after BOS gets EOS, so every passage encodes.
std::vector<int32_t> EncoderTokens(const Tokenizer& tokenizer, std::string_view input,
                                   int max_positions);

// Encodes passage inputs (context + text each) into bank entries: EncoderTokens, then the
// modulator's encoder. `out` gets one entry per input, in order.
absl::Status EncodePassageTexts(Modulator& modulator, const Tokenizer& tokenizer,
                                std::span<const std::string_view> inputs, int max_positions,
                                std::vector<storage::EncodedPassage>* out);

}  // namespace knowd::knowledge
