// Helpers shared by the model-file readers and writers (format_*.cc) and the converter
// (convert.cc). Private to model/: nothing outside the folder includes this.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <utility>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace knowd::internal {

// GGUF constants (ggml docs/gguf.md), shared by the reader (format_gguf.cc) and the writer
// (format_gguf_writer.cc).
inline constexpr uint32_t kGgufMagic = 0x46554747;  // "GGUF" read as a little-endian uint32.
inline constexpr uint64_t kGgufDefaultAlignment = 32;
inline constexpr uint32_t kGgufMaxDims = 4;  // GGML_MAX_DIMS.
inline constexpr uint64_t kGgufMaxKeyBytes = 65535;

// Metadata value types.
enum GgufType : uint32_t {
  kUint8 = 0,
  kInt8 = 1,
  kUint16 = 2,
  kInt16 = 3,
  kUint32 = 4,
  kInt32 = 5,
  kFloat32 = 6,
  kBool = 7,
  kString = 8,
  kArray = 9,
  kUint64 = 10,
  kInt64 = 11,
  kFloat64 = 12,
};

// ggml tensor type numbers of the dtypes knowd reads and writes.
inline constexpr uint32_t kGgmlF32 = 0;
inline constexpr uint32_t kGgmlF16 = 1;
inline constexpr uint32_t kGgmlQ4_0 = 2;
inline constexpr uint32_t kGgmlQ8_0 = 8;
inline constexpr uint32_t kGgmlQ4_K = 12;
inline constexpr uint32_t kGgmlQ6_K = 14;
inline constexpr uint32_t kGgmlBF16 = 30;

// A whole file mapped read-only. Unmaps on destruction unless Release() handed the mapping to
// a longer-lived owner (GgufFile, SafetensorsFile), which then calls Unmap().
class MappedFile {
 public:
  // Maps a regular file. An empty file maps to data() == nullptr, size() == 0.
  static absl::StatusOr<MappedFile> Open(const std::string& path);

  MappedFile() = default;
  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  ~MappedFile();

  const uint8_t* data() const { return static_cast<const uint8_t*>(addr_); }
  uint64_t size() const { return size_; }
  // Gives up ownership: the caller must Unmap(first, second) later.
  std::pair<void*, size_t> Release();

 private:
  void* addr_ = nullptr;
  size_t size_ = 0;
};

void Unmap(void* addr, size_t size);

// Debian's Abseil has its own string_view, and StrCat does not take a std::string_view.
inline absl::string_view ToAbsl(std::string_view s) {
  return absl::string_view(s.data(), s.size());
}

// The file's base name: what error messages call a file ("stories260K.gguf: ...").
std::string FileLabel(std::string_view path);

// Product of `dims` (1 for no dims); nullopt-like false when a dim is negative or the product
// overflows int64.
bool CheckedNumel(std::span<const int64_t> dims, int64_t* numel);

// "[512, 64]".
std::string ShapeString(std::span<const int64_t> shape);

// Writes all of [data, data + n) to `fd`, retrying short writes. Errors start with `label`.
absl::Status WriteAll(int fd, const void* data, size_t n, absl::string_view label);

// Replaces `path` atomically with what `write` puts into the descriptor it is given: a temp file
// in the same directory (so the rename cannot cross file systems), mode 0644, fsynced, renamed
// over `path`, then the directory fsynced so the rename itself is durable. Readers see the old
// file or the new one, never a partial one. On any failure the temp file is removed and `path`
// is left as it was. Errors start with FileLabel(path).
absl::Status WriteFileAtomically(const std::string& path,
                                 const std::function<absl::Status(int fd)>& write);

}  // namespace knowd::internal
