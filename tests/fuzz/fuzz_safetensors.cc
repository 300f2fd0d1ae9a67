// Safetensors: each input is opened both as a .safetensors file and as the
// model.safetensors.index.json of a directory whose one shard (a valid two-tensor file written at
// start-up) the index may or may not name correctly.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>

#include "model/tensor_file.h"
#include "tests/fuzz/fuzz_util.h"

namespace {

// The directory holding the fixed shard; the index is rewritten into it for every input.
const std::string& ShardedDir() {
  static const std::string* const dir = [] {
    const std::string path = knowd::fuzz::ScratchDir() + "/sharded";
    std::filesystem::create_directories(path);
    static const float kA[4] = {1, 2, 3, 4};
    static const int32_t kB[2] = {7, 8};
    knowd::HostTensor a{"a.weight", knowd::DType::kF32, {2, 2}, kA, sizeof(kA)};
    knowd::HostTensor b{"b.ids", knowd::DType::kI32, {2}, kB, sizeof(kB)};
    const knowd::HostTensor tensors[] = {a, b};
    if (absl::Status s =
            knowd::WriteSafetensors(path + "/model-00001-of-00001.safetensors", tensors);
        !s.ok()) {
      fprintf(stderr, "fuzz_safetensors: %s\n", std::string(s.message()).c_str());
      abort();
    }
    return new std::string(path);
  }();
  return *dir;
}

uint64_t TouchAll(const knowd::TensorFile& file) {
  uint64_t sum = 0;
  for (const knowd::HostTensor& tensor : file.tensors()) {
    sum += knowd::fuzz::TouchBytes(tensor.data, tensor.bytes);
  }
  return sum;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view bytes = knowd::fuzz::AsText(data, size);
  uint64_t sum = 0;
  const std::string path = knowd::fuzz::WriteScratchFile("model.safetensors", bytes);
  if (auto file = knowd::SafetensorsFile::Open(path); file.ok()) {
    sum += TouchAll(**file);
  } else {
    knowd::fuzz::Report("file", file.status());
  }

  const std::string& dir = ShardedDir();
  knowd::fuzz::WriteScratchFile("sharded/model.safetensors.index.json", bytes);
  if (auto file = knowd::SafetensorsFile::Open(dir); file.ok()) {
    sum += TouchAll(**file);
  } else {
    knowd::fuzz::Report("index", file.status());
  }
  return sum == 1 ? 0 : 0;
}
