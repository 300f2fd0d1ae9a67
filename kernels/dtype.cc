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
  }
  return "unknown";
}

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
  }
  return 0;
}

}  // namespace knowd
