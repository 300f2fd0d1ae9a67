// tokenizer.model: knowd's own SentencePiece ModelProto parser, the checks that build a tokenizer
// from the parsed model, and a short encode/decode with it.
#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "model/tokenizer_internal.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  namespace ti = knowd::tokenizer_internal;
  absl::StatusOr<ti::SentencePieceModel> model =
      ti::ParseSentencePieceModel(knowd::fuzz::AsText(data, size), "tokenizer.model");
  knowd::fuzz::Report("ParseSentencePieceModel", model.status());
  if (!model.ok()) return 0;
  // What was parsed must serialize and parse again.
  if (!ti::ParseSentencePieceModel(ti::SerializeSentencePieceModel(*model), "reserialized").ok()) {
    abort();
  }
  absl::StatusOr<std::unique_ptr<knowd::Tokenizer>> tokenizer =
      ti::MakeSentencePieceTokenizer(*std::move(model), "tokenizer.model");
  knowd::fuzz::Report("MakeSentencePieceTokenizer", tokenizer.status());
  if (!tokenizer.ok()) return 0;
  const std::vector<int32_t> ids =
      (*tokenizer)
          ->Encode("Hello  world, <s> \xE2\x96\x81 caf\xC3\xA9 \xF0\x9F\x98\x80 \xFF", true);
  const std::vector<int32_t> odd = {-1, 0, 1, 2, 3, (*tokenizer)->vocab_size(), 1 << 30};
  return (*tokenizer)->Decode(ids).size() + (*tokenizer)->Decode(odd).size() == 1 ? 0 : 0;
}
