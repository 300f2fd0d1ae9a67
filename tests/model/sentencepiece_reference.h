// libsentencepiece behind a plain C++ interface, as the reference knowd's own SentencePiece code
// is compared with. Its header cannot share a translation unit with Abseil's (both define
// absl::string_view), hence this wrapper.
//
// A process that loads libsentencepiece must not load libprotobuf (see model/CMakeLists.txt), so
// only tokenizer_reference_test links it.
#pragma once

#include <memory>
#include <string>
#include <vector>

namespace knowd::tokenizer_testing {

class SentencePieceReference {
 public:
  // From a serialized ModelProto; nullptr with *error set when libsentencepiece refuses it.
  static std::unique_ptr<SentencePieceReference> FromSerialized(const std::string& model_proto,
                                                                std::string* error);
  ~SentencePieceReference();

  std::vector<int> Encode(const std::string& text) const;
  std::string Decode(const std::vector<int>& ids) const;
  int bos_id() const;
  int eos_id() const;
  int vocab_size() const;

 private:
  struct Impl;
  explicit SentencePieceReference(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace knowd::tokenizer_testing
