// Per-element arithmetic shared by the CPU and CUDA kernels. Each operation's math is written
// once here, as an inline host/device function, so the CPU tests (which check these against
// double-precision references) also vouch for the arithmetic the GPU runs, and the GPU twin
// tests only have to catch indexing and reduction-order differences.
//
// Everything here is branch-light and free of libm calls on the hot paths (Exp is a polynomial),
// so that GCC vectorises the CPU loops that call it without -ffast-math.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "kernels/backend.h"
#include "kernels/dtype.h"

#ifdef __CUDACC__
#define KNOWD_HD __host__ __device__
#else
#define KNOWD_HD
#endif

namespace knowd {

// ---- bit casts ----------------------------------------------------------------------------

KNOWD_HD inline uint32_t FloatBits(float f) {
#ifdef __CUDA_ARCH__
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
#endif
}

KNOWD_HD inline float BitsToFloat(uint32_t u) {
#ifdef __CUDA_ARCH__
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
#endif
}

// ---- f16 / bf16 ---------------------------------------------------------------------------

// IEEE binary16 bits -> float. Exact for every input: zeros keep their sign, subnormals become
// normal floats, infinities stay infinite and NaNs stay NaN (payload kept in the top bits).
KNOWD_HD inline float F16ToF32(uint16_t h) {
  // Move exponent and mantissa into place and rebias; then fix the two special exponents.
  const uint32_t shifted = (static_cast<uint32_t>(h) & 0x7fffu) << 13;
  const uint32_t exponent = shifted & 0x0f800000u;  // the f16 exponent field, shifted
  uint32_t bits = shifted + ((127u - 15u) << 23);
  if (exponent == 0x0f800000u) {
    bits += (128u - 16u) << 23;  // inf / NaN: exponent becomes 255
  } else if (exponent == 0) {
    // Zero or subnormal: value = mantissa * 2^-24. Adding one to the exponent makes the bits a
    // normal float equal to 2^-14 * (1 + m/1024); subtracting 2^-14 leaves m * 2^-24 exactly.
    bits += 1u << 23;
    bits = FloatBits(BitsToFloat(bits) - BitsToFloat(113u << 23));
  }
  return BitsToFloat(bits | ((static_cast<uint32_t>(h) & 0x8000u) << 16));
}

// float -> IEEE binary16 bits, rounding to nearest, ties to even. Values at or above 65520 in
// magnitude become infinity; values below half the smallest subnormal become (signed) zero; NaN
// becomes a quiet NaN with the same sign.
KNOWD_HD inline uint16_t F32ToF16(float f) {
  uint32_t bits = FloatBits(f);
  const uint32_t sign = bits & 0x80000000u;
  bits ^= sign;
  uint32_t out;
  if (bits >= (143u << 23)) {  // |f| >= 2^16 (or inf / NaN): beyond rounding range
    out = bits > 0x7f800000u ? (0x7e00u | ((bits >> 13) & 0x3ffu)) : 0x7c00u;
  } else if (bits < (113u << 23)) {  // |f| < 2^-14: result is subnormal or zero
    // Adding 0.5 (2^-1) puts the f16 subnormal grid (2^-24) on the float's last mantissa bit, so
    // the FPU's own round-to-nearest-even rounds the value onto it.
    const float magic = BitsToFloat(126u << 23);
    out = FloatBits(BitsToFloat(bits) + magic) - (126u << 23);
  } else {
    // Normal: rebias, then round the 13 dropped bits to nearest even. A carry out of the mantissa
    // correctly bumps the exponent (up to infinity for values in [65520, 65536)).
    const uint32_t odd = (bits >> 13) & 1u;
    bits += ((15u - 127u) << 23) + 0xfffu + odd;
    out = bits >> 13;
  }
  return static_cast<uint16_t>(out | (sign >> 16));
}

// bfloat16 bits -> float (exact: bf16 is the top half of a float).
KNOWD_HD inline float BF16ToF32(uint16_t h) { return BitsToFloat(static_cast<uint32_t>(h) << 16); }

// float -> bfloat16 bits, rounding to nearest, ties to even; NaN stays a (quiet) NaN.
KNOWD_HD inline uint16_t F32ToBF16(float f) {
  const uint32_t bits = FloatBits(f);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40u);
  return static_cast<uint16_t>((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
}

// ---- q8_0 ---------------------------------------------------------------------------------

// Scale of the q8_0 block starting at `block` (its first two bytes, f16, little-endian as GGUF
// stores it; read bytewise because blocks are 34 bytes and so unaligned).
KNOWD_HD inline float Q8_0BlockScale(const uint8_t* block) {
  return F16ToF32(static_cast<uint16_t>(block[0] | (block[1] << 8)));
}

KNOWD_HD inline float Q8_0Dequant(float scale, int8_t q) { return scale * static_cast<float>(q); }

// Element `i` of a q8_0 array (used by kernels that convert one element per thread).
KNOWD_HD inline float Q8_0Element(const uint8_t* blocks, int64_t i) {
  const uint8_t* block = blocks + (i / kQ8_0BlockSize) * kQ8_0BlockBytes;
  return Q8_0Dequant(Q8_0BlockScale(block), static_cast<int8_t>(block[2 + i % kQ8_0BlockSize]));
}

// Element `i` of `data` of `dtype`, as f32 (kI32 values are converted arithmetically).
KNOWD_HD inline float LoadAsF32(const void* data, DType dtype, int64_t i) {
  switch (dtype) {
    case DType::kF32:
      return static_cast<const float*>(data)[i];
    case DType::kF16:
      return F16ToF32(static_cast<const uint16_t*>(data)[i]);
    case DType::kBF16:
      return BF16ToF32(static_cast<const uint16_t*>(data)[i]);
    case DType::kQ8_0:
      return Q8_0Element(static_cast<const uint8_t*>(data), i);
    case DType::kI32:
      return static_cast<float>(static_cast<const int32_t*>(data)[i]);
  }
  return 0.0f;
}

// ---- exp, silu ----------------------------------------------------------------------------

// e^x for float, within 2 ulp where the result is a normal float. Below -86.5 (results under
// 3e-38) it returns 0, so Exp(-inf) == 0; above 88.72 it returns inf; NaN stays NaN. A polynomial
// rather than expf so that CPU loops vectorise and CPU and GPU compute the same values.
KNOWD_HD inline float Exp(float x) {
  constexpr float kHi = 88.72283f;
  constexpr float kLo = -86.5f;  // keeps n - 1 >= -126 below
  constexpr float kLog2e = 1.44269504088896341f;
  constexpr float kLn2Hi = 0.693359375f;  // ln 2 split so n * kLn2Hi is exact
  constexpr float kLn2Lo = -2.12194440e-4f;
  constexpr float kRound = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  // Comparisons rather than fminf/fmaxf so a NaN passes through.
  const float xc = x > kHi ? kHi : (x < kLo ? kLo : x);
  const float t = xc * kLog2e + kRound;
  const float n = t - kRound;                               // round(x / ln 2)
  const uint32_t n_int = FloatBits(t) - FloatBits(kRound);  // the same, as a two's complement int
  float r = xc - n * kLn2Hi;
  r = r - n * kLn2Lo;  // |r| <= ln(2)/2
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  // 2^n as two factors 2 * 2^(n-1) so that n = 128 (x near kHi) stays representable.
  const float scale = BitsToFloat((n_int + 126u) << 23);
  const float result = p * scale * 2.0f;
  return x < kLo ? 0.0f : (x > kHi ? INFINITY : result);
}

// silu(gate) * up, silu(g) = g / (1 + e^-g).
KNOWD_HD inline float SiluMul(float gate, float up) { return gate / (1.0f + Exp(-gate)) * up; }

// gelu(x) = x / 2 * (1 + erf(x / sqrt(2))): the exact form (PyTorch's default, not the tanh
// approximation), written as x / 2 * erfc(-x / sqrt(2)). For x < 0 "1 + erf" cancels: erf near -1
// carries an absolute error of an ulp of 1, which libm's and CUDA's erff spend differently
// (1e-7 apart at x = -4, where gelu is -4e-5). erfc keeps its relative accuracy there, so the
// host and the device agree to a few ulp of the result everywhere.
KNOWD_HD inline float Gelu(float x) { return 0.5f * x * erfcf(x * -0.70710678118654752f); }

// ---- rms norm -----------------------------------------------------------------------------

// The factor 1 / sqrt(mean(x²) + eps) of a row whose squares sum to `sum_squares`.
KNOWD_HD inline float RmsScale(float sum_squares, int dim, float eps) {
  return 1.0f / sqrtf(sum_squares / static_cast<float>(dim) + eps);
}

// One normalised element, in Hugging Face's order: (x * scale) * weight.
KNOWD_HD inline float RmsApply(float x, float scale, float weight) { return x * scale * weight; }

// ---- rope ---------------------------------------------------------------------------------

// Indices, within one head, of the two dimensions that pair `pair` (0 <= pair < head_dim / 2)
// rotates together. The styles differ only in this.
KNOWD_HD inline void RopePairIndices(RopeStyle style, int pair, int head_dim, int* first,
                                     int* second) {
  if (style == RopeStyle::kInterleaved) {
    *first = 2 * pair;
    *second = 2 * pair + 1;
  } else {
    *first = pair;
    *second = pair + head_dim / 2;
  }
}

// theta^(-2 pair / head_dim): the angular frequency of pair `pair`. In double, as is the angle
// below, so that large positions keep full float accuracy (a float angle is off by about
// position * 2^-24 radians).
KNOWD_HD inline double RopeInvFreq(int pair, int head_dim, float theta) {
  return pow(static_cast<double>(theta), -2.0 * pair / head_dim);
}

// cos and sin of the angle position * inv_freq.
KNOWD_HD inline void RopeCosSinAt(int32_t position, double inv_freq, float* cos_out,
                                  float* sin_out) {
  const double angle = static_cast<double>(position) * inv_freq;
  *cos_out = static_cast<float>(cos(angle));
  *sin_out = static_cast<float>(sin(angle));
}

// cos and sin of pair `pair`'s angle at `position` (RopeInvFreq then RopeCosSinAt; callers that
// rotate many rows may compute RopeInvFreq once per pair).
KNOWD_HD inline void RopeCosSin(int32_t position, int pair, int head_dim, float theta,
                                float* cos_out, float* sin_out) {
  RopeCosSinAt(position, RopeInvFreq(pair, head_dim, theta), cos_out, sin_out);
}

// Rotates the pair (x0, x1) by the angle whose cos and sin are given.
KNOWD_HD inline void RopeRotate(float* x0, float* x1, float c, float s) {
  const float a = *x0;
  const float b = *x1;
  *x0 = a * c - b * s;
  *x1 = a * s + b * c;
}

// ---- softmax (plain and online) -----------------------------------------------------------

// The max to subtract before exponentiating a row: its max, or 0 when every entry is -inf, so
// such a row gives Exp(-inf) == 0 everywhere instead of NaN.
KNOWD_HD inline float SoftmaxShift(float row_max) { return row_max == -INFINITY ? 0.0f : row_max; }

// 1 / sum, or 0 for an empty (all -inf) row so that it normalises to zeros.
KNOWD_HD inline float SoftmaxNormalizer(float sum) { return sum > 0.0f ? 1.0f / sum : 0.0f; }

// Running state of a one-pass softmax-weighted sum (online softmax, as in FlashAttention):
// after seeing scores s_1..s_j, max = max_i s_i and sum = Σ exp(s_i - max). An accumulator
// Σ exp(s_i - max) v_i kept alongside must be rescaled whenever the max rises.
struct OnlineSoftmax {
  float max = -INFINITY;
  float sum = 0.0f;
};

// Raises the running max to cover a block of new scores whose max is `block_max`, rescales the
// running sum, and returns the factor (<= 1) by which the caller must rescale its accumulator.
KNOWD_HD inline float OnlineSoftmaxRaise(OnlineSoftmax* state, float block_max) {
  const float new_max = block_max > state->max ? block_max : state->max;
  // While nothing finite has been seen, the sum and accumulator are zero: any factor works, and
  // 1 avoids Exp(-inf - -inf) = NaN.
  const float factor = state->max == new_max ? 1.0f : Exp(state->max - new_max);
  state->max = new_max;
  state->sum *= factor;
  return factor;
}

// Weight of one score under the current max (after OnlineSoftmaxRaise covered it); the caller
// adds it to state->sum and weight * v to its accumulator.
KNOWD_HD inline float OnlineSoftmaxWeight(const OnlineSoftmax& state, float score) {
  return Exp(score - SoftmaxShift(state.max));
}

// Folds `other` (a state over a disjoint set of scores) into `state`; returns through the
// pointers the factors by which the two accumulators must be scaled before they are added.
KNOWD_HD inline void OnlineSoftmaxMerge(OnlineSoftmax* state, const OnlineSoftmax& other,
                                        float* own_factor, float* other_factor) {
  const float new_max = other.max > state->max ? other.max : state->max;
  *own_factor = state->max == new_max ? 1.0f : Exp(state->max - new_max);
  *other_factor = other.max == new_max ? 1.0f : Exp(other.max - new_max);
  state->sum = state->sum * *own_factor + other.sum * *other_factor;
  state->max = new_max;
}

// The factor that turns the accumulator into the weighted mean.
KNOWD_HD inline float OnlineSoftmaxFinish(const OnlineSoftmax& state) {
  return SoftmaxNormalizer(state.sum);
}

}  // namespace knowd
