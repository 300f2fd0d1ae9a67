// tokenizer.json: the Hugging Face byte-level BPE loader, and a short encode/decode with what it
// loads (Decode(Encode(x)) == x holds for any byte-level BPE vocabulary).
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "model/tokenizer.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path =
      knowd::fuzz::WriteScratchFile("tokenizer.json", knowd::fuzz::AsText(data, size));
  absl::StatusOr<std::unique_ptr<knowd::Tokenizer>> tokenizer = knowd::LoadHfTokenizerJson(path);
  knowd::fuzz::Report("LoadHfTokenizerJson", tokenizer.status());
  if (!tokenizer.ok()) return 0;
  const std::string text = "Hello, y'all! 1234 <|endoftext|>\n\n caf\xC3\xA9";
  const std::vector<int32_t> ids = (*tokenizer)->Encode(text, true);
  const std::vector<int32_t> odd = {-1, 0, 1, (*tokenizer)->vocab_size(), 1 << 30};
  return (*tokenizer)->Decode(ids).size() + (*tokenizer)->Decode(odd).size() == 1 ? 0 : 0;
}
