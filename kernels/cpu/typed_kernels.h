// The CPU kernels that read weights in their own type (f16, bf16 and the block formats of
// kernels/dtype.h), compiled once per x86-64 instruction-set family and chosen at run time from
// the CPU's feature bits (CPUID), never from its model name: a virtual machine that reports a
// generic model still gets its AVX-512 or AVX2 kernels. The per-block arithmetic is
// kernels/math.h's, shared with the CUDA backend.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kernels/dtype.h"

namespace knowd::cpu {

struct TypedKernels {
  // "avx512" (x86-64-v4: AVX-512 F/BW/CD/DQ/VL), "avx2" (x86-64-v3: AVX2, FMA, F16C) or
  // "x86-64" (SSE2 only).
  const char* family;
  // out[r · k + c] = element c of row r of w (`rows` rows of k elements of `dtype`, any DType but
  // kI32; k a multiple of DTypeBlockSize(dtype)).
  void (*dequantize_rows)(const void* w, DType dtype, int64_t rows, int64_t k, float* out);
  // y[i · ldy + j] = x_i · row j of w (+= when accumulate) for i < m, j < rows: each row of w is
  // dequantized once into `row` (k floats of scratch) and dotted with every x_i.
  void (*dot_rows)(const float* x, int64_t ldx, const void* w, DType dtype, float* y, int64_t ldy,
                   int m, int rows, int k, bool accumulate, float* row);
  // y[i · ldy + j] = x_i · row j of w (+= when accumulate) for w of kQ8_0 or kQ4_0 and each x_i
  // given as QuantizeActivations wrote it: k int8 codes from codes + i·k and k / 32 scales from
  // scales + i·(k / 32). The products are kernels/math.h's Q8_0DotActivations and
  // Q4_0DotActivations.
  void (*dot_rows_int8)(const int8_t* codes, const float* scales, const void* w, DType dtype,
                        float* y, int64_t ldy, int m, int rows, int k, bool accumulate);
};

// True for the weight types dot_rows_int8 takes (q8_0 and q4_0).
bool HasInt8Products(DType dtype);

// m rows of x (k floats each, k a multiple of 32, rows ldx apart) quantized for dot_rows_int8:
// m·k codes and m·k/32 scales (kernels/math.h's QuantizeActivationBlock).
void QuantizeActivations(const float* x, int64_t ldx, int m, int k, int8_t* codes, float* scales);

// The kernels of the widest family this CPU supports (the first call checks CPUID).
const TypedKernels& BestTypedKernels();

// Every family this CPU can run, widest first (tests check each against the same references).
std::vector<const TypedKernels*> SupportedTypedKernels();

// The CPU features the choice was made from, e.g. "avx512f avx512bw avx512vl avx512_vnni
// avx512_bf16 avx2 fma f16c", for logs and benchmark reports.
std::string CpuFeatureList();

}  // namespace knowd::cpu
