#include "model/generate.h"

namespace knowd {

absl::StatusOr<std::vector<int32_t>> Generate(Transformer& model, KvCache& cache,
                                              std::span<const int32_t> prompt,
                                              const GenerateOptions& options,
                                              const std::function<bool(int32_t)>& on_token) {
  if (prompt.empty()) return absl::InvalidArgumentError("the prompt has no tokens");
  Sampler sampler(options.sampling);
  std::vector<int32_t> generated;
  std::vector<float> logits;
  SequenceStep step{&cache, prompt, false};
  for (int i = 0; i < options.max_tokens; ++i) {
    if (absl::Status s = model.Forward(std::span(&step, 1), &logits); !s.ok()) {
      if (i > 0 && s.code() == absl::StatusCode::kOutOfRange) break;  // context is full
      return s;
    }
    const int32_t next = sampler.Sample(logits);
    if (options.stop_at_eos && next == model.config().eos_token_id) break;
    generated.push_back(next);
    if (on_token && !on_token(next)) break;
    step.tokens = std::span(&generated.back(), 1);
  }
  return generated;
}

namespace {
// Length of the longest prefix of `s` that does not end inside a UTF-8 character.
size_t CompleteUtf8Prefix(const std::string& s) {
  size_t end = s.size();
  for (size_t back = 1; back <= 4 && back <= s.size(); ++back) {
    const unsigned char c = s[s.size() - back];
    if ((c & 0xC0) == 0x80) continue;  // continuation byte: look further back
    const size_t need = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
    if (need > back) end = s.size() - back;
    break;
  }
  return end;
}
}  // namespace

IncrementalDecoder::IncrementalDecoder(const Tokenizer& tokenizer, std::span<const int32_t> context)
    : tokenizer_(tokenizer), ids_(context.begin(), context.end()) {
  emitted_ = ids_.empty() ? 0 : tokenizer_.Decode(ids_).size();
}

std::string IncrementalDecoder::Push(int32_t id) {
  ids_.push_back(id);
  const std::string text = tokenizer_.Decode(ids_);
  const size_t end = CompleteUtf8Prefix(text);
  if (end <= emitted_) return "";
  std::string piece = text.substr(emitted_, end - emitted_);
  emitted_ = end;
  return piece;
}

std::string IncrementalDecoder::Flush() {
  const std::string text = tokenizer_.Decode(ids_);
  std::string rest = emitted_ < text.size() ? text.substr(emitted_) : "";
  emitted_ = text.size();
  return rest;
}

}  // namespace knowd
