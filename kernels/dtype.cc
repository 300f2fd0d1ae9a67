#include "kernels/dtype.h"

namespace knowd {

std::string_view DTypeName(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return "f32";
    case DType::kF16:
      return "f16";
    case DType::kBF16:
      return "bf16";
    case DType::kQ8_0:
      return "q8_0";
    case DType::kI32:
      return "i32";
    case DType::kQ4_0:
      return "q4_0";
    case DType::kQ4_K:
      return "q4_K";
    case DType::kQ6_K:
      return "q6_K";
  }
  return "unknown";
}

int64_t DTypeBlockSize(DType dtype) {
  switch (dtype) {
    case DType::kQ8_0:
      return kQ8_0BlockSize;
    case DType::kQ4_0:
      return kQ4_0BlockSize;
    case DType::kQ4_K:
    case DType::kQ6_K:
      return kQKBlockSize;
    default:
      return 1;
  }
}

bool DTypeIsQuantized(DType dtype) { return DTypeBlockSize(dtype) > 1; }

int64_t DTypeBytes(DType dtype, int64_t n) {
  switch (dtype) {
    case DType::kF32:
    case DType::kI32:
      return 4 * n;
    case DType::kF16:
    case DType::kBF16:
      return 2 * n;
    case DType::kQ8_0:
      return n / kQ8_0BlockSize * kQ8_0BlockBytes;
    case DType::kQ4_0:
      return n / kQ4_0BlockSize * kQ4_0BlockBytes;
    case DType::kQ4_K:
      return n / kQKBlockSize * kQ4_KBlockBytes;
    case DType::kQ6_K:
      return n / kQKBlockSize * kQ6_KBlockBytes;
  }
  return 0;
}

}  // namespace knowd
