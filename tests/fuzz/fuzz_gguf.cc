// GGUF files: GgufFile::Open, then what the daemon reads from an opened file (the llama.*
// hyper-parameters and the embedded tokenizer), and every tensor's bytes.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "model/config.h"
#include "model/tensor_file.h"
#include "model/tokenizer.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path =
      knowd::fuzz::WriteScratchFile("model.gguf", knowd::fuzz::AsText(data, size));
  absl::StatusOr<std::unique_ptr<knowd::GgufFile>> gguf = knowd::GgufFile::Open(path);
  knowd::fuzz::Report("GgufFile::Open", gguf.status());
  if (!gguf.ok()) return 0;
  uint64_t sum = 0;
  for (const knowd::HostTensor& tensor : (*gguf)->tensors()) {
    sum += knowd::fuzz::TouchBytes(tensor.data, tensor.bytes);
  }
  knowd::fuzz::Report("LlamaConfigFromGguf", knowd::LlamaConfigFromGguf(**gguf).status());
  absl::StatusOr<std::unique_ptr<knowd::Tokenizer>> tokenizer = knowd::LoadGgufTokenizer(**gguf);
  knowd::fuzz::Report("LoadGgufTokenizer", tokenizer.status());
  if (tokenizer.ok()) {
    const std::vector<int32_t> ids = (*tokenizer)->Encode("Hello, world! 12 \xE2\x96\x81x", true);
    sum += (*tokenizer)->Decode(ids).size();
  }
  return sum == 1 ? 0 : 0;
}
