// Helpers shared by the model-file loaders (format_gguf.cc, format_safetensors.cc). Private to
// model/: nothing outside the folder includes this.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <utility>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace knowd::internal {

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

}  // namespace knowd::internal
