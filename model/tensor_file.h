// Model files: GGUF v3 and Hugging Face safetensors (single file or sharded with
// model.safetensors.index.json). Every header field, offset, shape and dtype is validated when a
// file is opened, before any tensor data is touched; a bad file is refused with the file, the
// tensor and the reason. Files are memory-mapped read-only; HostTensor::data points into the
// mapping and lives as long as the file object.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/dtype.h"

namespace knowd {

// A tensor in host memory, shape outermost first (PyTorch order: a Linear weight is
// [out_features, in_features]). GGUF's innermost-first ne[] is reversed into this order.
struct HostTensor {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  const void* data = nullptr;
  int64_t bytes = 0;

  int64_t numel() const;
};

// A GGUF metadata value. Arrays hold one element type.
using GgufValue = std::variant<uint64_t, int64_t, double, bool, std::string,
                               std::vector<std::string>, std::vector<int64_t>, std::vector<double>>;

// A set of named tensors from one or more files, plus the metadata they carried. An opened file
// never changes, so it is safe for concurrent use from multiple threads without synchronization.
class TensorFile {
 public:
  virtual ~TensorFile() = default;

  // All tensors, in file order.
  virtual const std::vector<HostTensor>& tensors() const = 0;
  // The tensor called `name`, or nullptr.
  const HostTensor* Find(std::string_view name) const;
  // Like Find, but NOT_FOUND names the file and tensor; checks the shape when `shape` is given.
  absl::StatusOr<const HostTensor*> Require(std::string_view name,
                                            std::span<const int64_t> shape = {}) const;
  // Path (or directory) this was opened from, for messages.
  virtual const std::string& path() const = 0;
};

class GgufFile : public TensorFile {
 public:
  // Opens and validates a GGUF v2/v3 file. Tensor types other than f32, f16, bf16, q8_0, q4_0,
  // q4_K and q6_K are refused (INVALID_ARGUMENT naming the tensor and its type).
  static absl::StatusOr<std::unique_ptr<GgufFile>> Open(const std::string& path);

  const std::map<std::string, GgufValue, std::less<>>& metadata() const { return metadata_; }
  // Typed metadata access; NOT_FOUND / INVALID_ARGUMENT name the key. Integers of any width
  // convert to int64/uint64; floats to double.
  absl::StatusOr<std::string> GetString(std::string_view key) const;
  absl::StatusOr<int64_t> GetInt(std::string_view key) const;
  absl::StatusOr<double> GetFloat(std::string_view key) const;
  absl::StatusOr<bool> GetBool(std::string_view key) const;
  const GgufValue* GetValue(std::string_view key) const;

  const std::vector<HostTensor>& tensors() const override { return tensors_; }
  const std::string& path() const override { return path_; }
  ~GgufFile() override;

 private:
  GgufFile() = default;
  std::string path_;
  std::map<std::string, GgufValue, std::less<>> metadata_;
  std::vector<HostTensor> tensors_;
  void* map_ = nullptr;
  size_t map_size_ = 0;
};

class SafetensorsFile : public TensorFile {
 public:
  // Opens `path`: a .safetensors file, or a directory holding model.safetensors or
  // model.safetensors.index.json (+ its shards). Supports F32, F16, BF16 (and I32 for
  // non-weight tensors).
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);

  // The "__metadata__" string map of the (first) file.
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const std::vector<HostTensor>& tensors() const override { return tensors_; }
  const std::string& path() const override { return path_; }
  ~SafetensorsFile() override;

 private:
  SafetensorsFile() = default;
  std::string path_;
  std::map<std::string, std::string> metadata_;
  std::vector<HostTensor> tensors_;
  std::vector<std::pair<void*, size_t>> maps_;
};

// Writes tensors (f32, f16, bf16, i32) to a safetensors file, atomically (temp file in the same
// directory, fsync, rename, fsync of the directory): readers see the old file or the new one,
// never a partial one. The header is padded to 8 bytes and tensors are laid out wider elements
// first, so every tensor is aligned to its element size when read back (file order may therefore
// differ from `tensors` order). INVALID_ARGUMENT for other dtypes, duplicate or empty names, or a
// `bytes` that does not match the shape.
absl::Status WriteSafetensors(const std::string& path, std::span<const HostTensor> tensors,
                              const std::map<std::string, std::string>& metadata = {});

// Writes a GGUF v3 file, atomically (as WriteSafetensors). Tensors keep their order; each one's
// data starts at a multiple of `alignment` (a power of two >= 8), and general.alignment is
// written when it is not the default 32 (metadata may carry that key only with the same value).
//
// GgufValue does not say which GGUF type a value came from, so the narrowest type that holds it
// exactly is written; GgufFile::Open then returns the same values. In particular integers that
// fit are written as UINT32 / INT32 and floats as FLOAT32, the types llama.cpp insists on for
// keys such as llama.block_count and llama.attention.layer_norm_rms_epsilon:
//   uint64_t            -> UINT32 if <= UINT32_MAX, else UINT64
//   int64_t             -> INT32 if it fits, else INT64
//   double              -> FLOAT32 if a float holds it exactly (NaN and inf included), else FLOAT64
//   bool, std::string   -> BOOL, STRING
//   vector<std::string> -> ARRAY of STRING
//   vector<int64_t>     -> ARRAY of INT32 if every element fits, else ARRAY of INT64
//   vector<double>      -> ARRAY of FLOAT32 if every element is a float exactly, else FLOAT64
// INVALID_ARGUMENT (naming the key or tensor) for an empty or over-long key, an i32 tensor, a
// name that is empty, repeated or longer than 63 bytes (ggml's GGML_MAX_NAME), a rank outside
// 1..4, a non-positive dimension, quantized rows that are not whole blocks, or `bytes` that do
// not match the shape.
absl::Status WriteGguf(const std::string& path,
                       const std::map<std::string, GgufValue, std::less<>>& metadata,
                       std::span<const HostTensor> tensors, int alignment = 32);

}  // namespace knowd
