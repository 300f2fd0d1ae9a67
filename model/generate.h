// Text generation on top of the transformer: prompt prefill, then token-by-token decode with a
// sampler, streaming each token as it is produced.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "model/sampler.h"
#include "model/tokenizer.h"
#include "model/transformer.h"

namespace knowd {

struct GenerateOptions {
  int max_tokens = 256;
  SamplingOptions sampling;
  bool stop_at_eos = true;
};

// Runs `prompt` (non-empty) after whatever `cache` holds, then generates up to max_tokens.
// on_token, when given, sees each generated token and may return false to stop early. Returns the
// generated ids (without the prompt; the EOS that stopped generation is not included).
absl::StatusOr<std::vector<int32_t>> Generate(
    Transformer& model, KvCache& cache, std::span<const int32_t> prompt,
    const GenerateOptions& options, const std::function<bool(int32_t)>& on_token = nullptr);

// Turns a growing token sequence into text pieces for streaming: each Push returns the text
// that the new token adds, holding back bytes of an incomplete UTF-8 character and the effect
// of SentencePiece's leading-space rule, so the concatenated pieces equal Decode(all ids).
//
// `context` (usually the prompt) is decoded first but not returned, so the first generated piece
// keeps the space that joins it to the prompt ("named" + " Lily").
class IncrementalDecoder {
 public:
  explicit IncrementalDecoder(const Tokenizer& tokenizer, std::span<const int32_t> context = {});
  std::string Push(int32_t id);
  // Whatever is still held back (call at the end).
  std::string Flush();

 private:
  const Tokenizer& tokenizer_;
  std::vector<int32_t> ids_;
  size_t emitted_ = 0;  // bytes of Decode(ids_) already returned
};

}  // namespace knowd
