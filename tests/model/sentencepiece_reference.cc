// Wraps sentencepiece::SentencePieceProcessor; see sentencepiece_reference.h.
#include "tests/model/sentencepiece_reference.h"

#include <sentencepiece_processor.h>

namespace knowd::tokenizer_testing {

struct SentencePieceReference::Impl {
  sentencepiece::SentencePieceProcessor processor;
};

SentencePieceReference::SentencePieceReference(std::unique_ptr<Impl> impl)
    : impl_(std::move(impl)) {}
SentencePieceReference::~SentencePieceReference() = default;

std::unique_ptr<SentencePieceReference> SentencePieceReference::FromSerialized(
    const std::string& model_proto, std::string* error) {
  auto impl = std::make_unique<Impl>();
  const auto status = impl->processor.LoadFromSerializedProto(model_proto);
  if (!status.ok()) {
    *error = status.ToString();
    return nullptr;
  }
  return std::unique_ptr<SentencePieceReference>(new SentencePieceReference(std::move(impl)));
}

std::vector<int> SentencePieceReference::Encode(const std::string& text) const {
  std::vector<int> ids;
  if (!impl_->processor.Encode(text, &ids).ok()) ids.assign(1, -1000);  // Never expected.
  return ids;
}

std::string SentencePieceReference::Decode(const std::vector<int>& ids) const {
  std::string text;
  if (!impl_->processor.Decode(ids, &text).ok()) return "<decode failed>";
  return text;
}

int SentencePieceReference::bos_id() const { return impl_->processor.bos_id(); }
int SentencePieceReference::eos_id() const { return impl_->processor.eos_id(); }
int SentencePieceReference::vocab_size() const { return impl_->processor.GetPieceSize(); }

}  // namespace knowd::tokenizer_testing
