// Element types of tensors stored in model files and of kernel inputs.
//
// The quantized types are GGUF's (ggml's) block formats, bit for bit, so a GGUF file's tensor
// data is used as it lies in the file:
//   q8_0  blocks of 32: f16 scale d, then 32 int8 q.                  x = d·q            34 bytes
//   q4_0  blocks of 32: f16 scale d, then 16 bytes of 4-bit q; byte j holds element j (low nibble)
//         and element j+16 (high nibble).                             x = d·(q − 8)      18 bytes
//   q4_K  super-blocks of 256: f16 d, f16 dmin, 12 bytes packing eight 6-bit (scale, min) pairs,
//         then 128 bytes of 4-bit q (four runs of 64 elements: 32 low nibbles, then 32 high).
//                                  x = d·scale_s·q − dmin·min_s (s: the 32-element sub-block)
//                                                                                         144 bytes
//   q6_K  super-blocks of 256: 128 bytes of low 4 bits, 64 bytes of high 2 bits, 16 int8
//         sub-block scales (16 elements each), f16 d.               x = d·scale_s·(q − 32)
//                                                                                         210 bytes
// kernels/math.h holds the per-block arithmetic, shared by the CPU and CUDA backends.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace knowd {

enum class DType : uint8_t {
  kF32,
  kF16,
  kBF16,
  kQ8_0,
  kI32,
  kQ4_0,
  kQ4_K,
  kQ6_K,
};

inline constexpr int64_t kQ8_0BlockSize = 32;
inline constexpr int64_t kQ8_0BlockBytes = 2 + kQ8_0BlockSize;
inline constexpr int64_t kQ4_0BlockSize = 32;
inline constexpr int64_t kQ4_0BlockBytes = 2 + kQ4_0BlockSize / 2;
inline constexpr int64_t kQKBlockSize = 256;  // the k-quants' super-block
inline constexpr int64_t kQ4_KBlockBytes = 2 + 2 + 12 + kQKBlockSize / 2;
inline constexpr int64_t kQ6_KBlockBytes =
    kQKBlockSize / 2 + kQKBlockSize / 4 + kQKBlockSize / 16 + 2;

std::string_view DTypeName(DType dtype);

// Elements per block: 1 for f32, f16, bf16 and i32; 32 for q8_0 and q4_0; 256 for q4_K and q6_K.
// Rows of a quantized matrix are whole blocks.
int64_t DTypeBlockSize(DType dtype);

// True for the block formats (q8_0, q4_0, q4_K, q6_K).
bool DTypeIsQuantized(DType dtype);

// Bytes taken by `n` consecutive elements of `dtype`. `n` must be a multiple of
// DTypeBlockSize(dtype) (callers validate shapes before asking).
int64_t DTypeBytes(DType dtype, int64_t n);

}  // namespace knowd
