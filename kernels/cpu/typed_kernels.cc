#include "kernels/cpu/typed_kernels.h"

#include <cpuid.h>

#include <vector>

#include "absl/strings/str_join.h"
#include "kernels/math.h"

namespace knowd::cpu {

namespace avx512 {
extern const TypedKernels kKernels;
}
namespace avx2 {
extern const TypedKernels kKernels;
}
namespace generic {
extern const TypedKernels kKernels;
}

namespace {

// F16C from CPUID leaf 1 (ECX bit 29): not every compiler's __builtin_cpu_supports knows it.
bool HasF16c() {
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  return __get_cpuid(1, &eax, &ebx, &ecx, &edx) != 0 && (ecx & bit_F16C) != 0;
}

bool HasAvx2() {
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
         __builtin_cpu_supports("bmi2") && HasF16c();
}

bool HasAvx512() {
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
         __builtin_cpu_supports("avx512cd") && HasAvx2();
}

}  // namespace

std::vector<const TypedKernels*> SupportedTypedKernels() {
  __builtin_cpu_init();
  std::vector<const TypedKernels*> supported;
  if (HasAvx512()) supported.push_back(&avx512::kKernels);
  if (HasAvx2()) supported.push_back(&avx2::kKernels);
  supported.push_back(&generic::kKernels);
  return supported;
}

const TypedKernels& BestTypedKernels() {
  static const TypedKernels* const best = SupportedTypedKernels().front();
  return *best;
}

std::string CpuFeatureList() {
  __builtin_cpu_init();
  std::vector<const char*> present;
#define KNOWD_FEATURE(name) \
  if (__builtin_cpu_supports(name)) present.push_back(name)
  KNOWD_FEATURE("avx512f");
  KNOWD_FEATURE("avx512bw");
  KNOWD_FEATURE("avx512vl");
  KNOWD_FEATURE("avx512vnni");
  KNOWD_FEATURE("avx512bf16");
  KNOWD_FEATURE("avx2");
  KNOWD_FEATURE("fma");
#undef KNOWD_FEATURE
  if (HasF16c()) present.push_back("f16c");
  return present.empty() ? "sse2" : absl::StrJoin(present, " ");
}

bool HasInt8Products(DType dtype) { return dtype == DType::kQ8_0 || dtype == DType::kQ4_0; }

void QuantizeActivations(const float* x, int64_t ldx, int m, int k, int8_t* codes, float* scales) {
  const int blocks = k / static_cast<int>(kQ8_0BlockSize);
  for (int i = 0; i < m; ++i) {
    for (int b = 0; b < blocks; ++b) {
      scales[int64_t{i} * blocks + b] = QuantizeActivationBlock(x + i * ldx + b * kQ8_0BlockSize,
                                                                codes + int64_t{i} * k + b * 32);
    }
  }
}

}  // namespace knowd::cpu
