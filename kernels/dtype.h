// Element types of tensors stored in model files and of kernel inputs.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace knowd {

enum class DType : uint8_t {
  kF32,
  kF16,
  kBF16,
  kQ8_0,  // blocks of 32 values: one f16 scale then 32 int8 (34 bytes), as in GGUF.
  kI32,
};

inline constexpr int64_t kQ8_0BlockSize = 32;
inline constexpr int64_t kQ8_0BlockBytes = 2 + kQ8_0BlockSize;

std::string_view DTypeName(DType dtype);

// Bytes taken by `n` consecutive elements of `dtype`. For kQ8_0, `n` must be a multiple of
// kQ8_0BlockSize (callers validate shapes before asking).
int64_t DTypeBytes(DType dtype, int64_t n);

}  // namespace knowd
