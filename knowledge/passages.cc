#include "knowledge/passages.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "knowledge/document_rules.h"

namespace knowd::knowledge {

std::vector<DocumentPassage> SplitDocument(std::string_view text, const Tokenizer& tokenizer,
                                           const PassageLimits& limits) {
  const std::vector<PassageSpan> spans = SplitPassages(
      text, limits.max_passage_tokens, limits.overlap_tokens, [&](std::string_view piece) {
        return static_cast<int>(tokenizer.Encode(piece, false).size());
      });
  std::vector<DocumentPassage> out;
  out.reserve(spans.size());
  for (const PassageSpan& span : spans) {
    DocumentPassage p;
    p.text = std::string(text.substr(span.begin, span.end - span.begin));
    p.context_bytes = static_cast<uint32_t>(span.begin - span.context_begin);
    p.encoder_ids =
        EncoderTokens(tokenizer, text.substr(span.context_begin, span.end - span.context_begin),
                      limits.max_positions);
    out.push_back(std::move(p));
  }
  return out;
}

std::vector<int32_t> EncoderTokens(const Tokenizer& tokenizer, std::string_view input,
                                   int max_positions) {
  std::vector<int32_t> ids = tokenizer.Encode(input, true);
  if (max_positions > 1 && static_cast<int>(ids.size()) > max_positions) ids.resize(max_positions);
  if (ids.size() < 2) ids.push_back(std::max(0, tokenizer.eos_id()));
  return ids;
}

absl::Status EncodePassageTexts(Modulator& modulator, const Tokenizer& tokenizer,
                                std::span<const std::string_view> inputs, int max_positions,
                                std::vector<storage::EncodedPassage>* out) {
  std::vector<std::vector<int32_t>> ids;
  ids.reserve(inputs.size());
  for (std::string_view input : inputs) {
    ids.push_back(EncoderTokens(tokenizer, input, max_positions));
  }
  KNOWD_RETURN_IF_ERROR(modulator.EncodePassages(ids, out));
  if (out->size() != inputs.size()) {
    return absl::InternalError(
        absl::StrCat("the adapter encoded ", out->size(), " of ", inputs.size(), " passages"));
  }
  return absl::OkStatus();
}

}  // namespace knowd::knowledge
