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

#if defined(__F16C__) && !defined(__CUDACC__)
#include <immintrin.h>
#endif

// Internal linkage (static): kernels/cpu/ compiles these functions into one object per
// instruction-set family (AVX-512, AVX2, baseline), and a shared inline definition would let the
// linker keep one family's out-of-line copy for every caller, AVX-512 code included.
#ifdef __CUDACC__
#define KNOWD_HD static __host__ __device__
#else
#define KNOWD_HD static
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
#if defined(__F16C__) && !defined(__CUDACC__)
  return _cvtsh_ss(h);  // the same exact conversion, in one instruction
#else
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
#endif
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

// Every element of one q8_0 block, in order.
KNOWD_HD inline void Q8_0DequantBlock(const uint8_t* block, float* out) {
  const float d = Q8_0BlockScale(block);
  for (int j = 0; j < kQ8_0BlockSize; ++j)
    out[j] = Q8_0Dequant(d, static_cast<int8_t>(block[2 + j]));
}

// ---- q4_0 ---------------------------------------------------------------------------------

// The 4-bit code of element j (0..31) of a q4_0 block's 16 code bytes `qs`: byte j % 16, low
// nibble for the first 16 elements and high nibble for the last 16.
KNOWD_HD inline int Q4_0Code(const uint8_t* qs, int j) {
  return j < 16 ? (qs[j] & 0x0f) : (qs[j - 16] >> 4);
}

KNOWD_HD inline float Q4_0Dequant(float d, int code) { return d * static_cast<float>(code - 8); }

KNOWD_HD inline void Q4_0DequantBlock(const uint8_t* block, float* out) {
  const float d = Q8_0BlockScale(block);  // the same leading f16 scale
  const uint8_t* qs = block + 2;
  // Two passes of 16 (not one writing out[j] and out[j + 16]) so each vectorises as one run.
  for (int j = 0; j < 16; ++j) out[j] = Q4_0Dequant(d, qs[j] & 0x0f);
  for (int j = 0; j < 16; ++j) out[j + 16] = Q4_0Dequant(d, qs[j] >> 4);
}

KNOWD_HD inline float Q4_0Element(const uint8_t* blocks, int64_t i) {
  const uint8_t* block = blocks + (i / kQ4_0BlockSize) * kQ4_0BlockBytes;
  return Q4_0Dequant(Q8_0BlockScale(block), Q4_0Code(block + 2, static_cast<int>(i % 32)));
}

// ---- int8 products of quantized activations (q8_0 and q4_0 weights) -----------------------
//
// llama.cpp's scheme for these two types: a row of x is quantized to int8 in blocks of 32 (one
// f32 scale per block, d = max|x| / 127, codes rounded to nearest, ties to even), and each weight
// block's codes are multiplied with the x block's codes in exact integer arithmetic, then scaled
// by both blocks' scales. Each x element then errs by at most d / 2.

// Quantizes 32 activations into `codes`; returns the block's scale. The rounding adds and
// subtracts 1.5·2^23, which leaves the nearest integer (ties to even) of any |v| <= 127.5 in
// float arithmetic, without a libm call, so every CPU family's loop vectorises.
KNOWD_HD inline float QuantizeActivationBlock(const float* x, int8_t* codes) {
  float amax = 0.0f;
  for (int j = 0; j < kQ8_0BlockSize; ++j) {
    const float a = fabsf(x[j]);
    amax = a > amax ? a : amax;
  }
  const float d = amax / 127.0f;
  const float inverse = d != 0.0f ? 1.0f / d : 0.0f;
  constexpr float kRound = 12582912.0f;  // 1.5 · 2^23
  for (int j = 0; j < kQ8_0BlockSize; ++j) {
    codes[j] = static_cast<int8_t>((x[j] * inverse + kRound) - kRound);
  }
  return d;
}

// Σ w_j·x_j over one q8_0 weight block and 32 activation codes of scale dx.
KNOWD_HD inline float Q8_0DotActivations(const uint8_t* block, const int8_t* x, float dx) {
  int32_t sum = 0;
  for (int j = 0; j < kQ8_0BlockSize; ++j) sum += static_cast<int8_t>(block[2 + j]) * x[j];
  return Q8_0BlockScale(block) * dx * static_cast<float>(sum);
}

// Σ w_j·x_j over one q4_0 weight block and 32 activation codes of scale dx.
KNOWD_HD inline float Q4_0DotActivations(const uint8_t* block, const int8_t* x, float dx) {
  int32_t sum = 0;
  for (int j = 0; j < kQ4_0BlockSize; ++j) sum += (Q4_0Code(block + 2, j) - 8) * x[j];
  return Q8_0BlockScale(block) * dx * static_cast<float>(sum);
}

// ---- q4_K ---------------------------------------------------------------------------------

// The 6-bit scale and min of sub-block s (0..7) from a q4_K block's 12 packed bytes: sub-blocks
// 0..3 keep theirs in the low 6 bits of bytes s and s+4; 4..7 split theirs between the nibbles of
// bytes s+4 and the top 2 bits of bytes s-4 (scale) and s (min).
KNOWD_HD inline void Q4_KScaleMin(const uint8_t* scales, int s, int* scale, int* min) {
  if (s < 4) {
    *scale = scales[s] & 63;
    *min = scales[s + 4] & 63;
  } else {
    *scale = (scales[s + 4] & 0x0f) | ((scales[s - 4] >> 6) << 4);
    *min = (scales[s + 4] >> 4) | ((scales[s] >> 6) << 4);
  }
}

// Every element of one q4_K super-block: d at bytes 0-1, dmin at 2-3, packed scales at 4-15,
// codes at 16-143 (run r of 64 elements: 32 low nibbles of bytes 32r.., then 32 high nibbles).
KNOWD_HD inline void Q4_KDequantBlock(const uint8_t* block, float* out) {
  const float d = F16ToF32(static_cast<uint16_t>(block[0] | (block[1] << 8)));
  const float dmin = F16ToF32(static_cast<uint16_t>(block[2] | (block[3] << 8)));
  const uint8_t* scales = block + 4;
  const uint8_t* qs = block + 16;
  for (int run = 0; run < 4; ++run) {
    int sc0, m0, sc1, m1;
    Q4_KScaleMin(scales, 2 * run, &sc0, &m0);
    Q4_KScaleMin(scales, 2 * run + 1, &sc1, &m1);
    const float d0 = d * static_cast<float>(sc0), min0 = dmin * static_cast<float>(m0);
    const float d1 = d * static_cast<float>(sc1), min1 = dmin * static_cast<float>(m1);
    const uint8_t* q = qs + 32 * run;
    float* o = out + 64 * run;
    for (int l = 0; l < 32; ++l) o[l] = d0 * static_cast<float>(q[l] & 0x0f) - min0;
    for (int l = 0; l < 32; ++l) o[l + 32] = d1 * static_cast<float>(q[l] >> 4) - min1;
  }
}

KNOWD_HD inline float Q4_KElement(const uint8_t* blocks, int64_t i) {
  const uint8_t* block = blocks + (i / kQKBlockSize) * kQ4_KBlockBytes;
  const int j = static_cast<int>(i % kQKBlockSize);
  const int run = j / 64, high = (j % 64) / 32, l = j % 32;
  int sc, m;
  Q4_KScaleMin(block + 4, 2 * run + high, &sc, &m);
  const uint8_t q = block[16 + 32 * run + l];
  const float d = F16ToF32(static_cast<uint16_t>(block[0] | (block[1] << 8)));
  const float dmin = F16ToF32(static_cast<uint16_t>(block[2] | (block[3] << 8)));
  return d * static_cast<float>(sc) * static_cast<float>(high ? q >> 4 : q & 0x0f) -
         dmin * static_cast<float>(m);
}

// ---- q6_K ---------------------------------------------------------------------------------

// The 6-bit code (0..63) of element j (0..255) of a q6_K super-block: halves of 128 elements,
// each read from 64 bytes of low nibbles `ql` and 32 bytes of high bit pairs `qh`; quarter g of a
// half takes the low (g = 0, 1) or high (g = 2, 3) nibble of ql[l + 32·(g % 2)] and bits 2g..2g+1
// of qh[l].
KNOWD_HD inline int Q6_KCode(const uint8_t* block, int j) {
  const int half = j / 128, g = (j % 128) / 32, l = j % 32;
  const uint8_t* ql = block + 64 * half;
  const uint8_t* qh = block + 128 + 32 * half;
  const uint8_t low = ql[l + 32 * (g & 1)];
  const int nibble = g < 2 ? (low & 0x0f) : (low >> 4);
  return nibble | (((qh[l] >> (2 * g)) & 3) << 4);
}

// Sub-block scale of element j: 16 int8 scales at bytes 192-207, one per 16 elements (in the
// order element j of quarter g of half h, position l, reads scale 8h + 2g + l / 16).
KNOWD_HD inline int Q6_KScaleIndex(int j) {
  const int half = j / 128, g = (j % 128) / 32, l = j % 32;
  return 8 * half + 2 * g + l / 16;
}

KNOWD_HD inline float Q6_KBlockD(const uint8_t* block) {
  return F16ToF32(static_cast<uint16_t>(block[208] | (block[209] << 8)));
}

KNOWD_HD inline void Q6_KDequantBlock(const uint8_t* block, float* out) {
  const float d = Q6_KBlockD(block);
  const int8_t* scales = reinterpret_cast<const int8_t*>(block + 192);
  // Per half of 128: quarter g, positions l of 16 sharing one scale (8·half + 2g + l / 16), each
  // a straight run of 16 so it vectorises.
  for (int half = 0; half < 2; ++half) {
    const uint8_t* ql = block + 64 * half;
    const uint8_t* qh = block + 128 + 32 * half;
    for (int g = 0; g < 4; ++g) {
      const uint8_t* low = ql + 32 * (g & 1);
      const int shift_low = g < 2 ? 0 : 4;
      const int shift_high = 2 * g;
      for (int part = 0; part < 2; ++part) {
        const float scale = d * static_cast<float>(scales[8 * half + 2 * g + part]);
        float* o = out + 128 * half + 32 * g + 16 * part;
        const uint8_t* lo = low + 16 * part;
        const uint8_t* hi = qh + 16 * part;
        for (int l = 0; l < 16; ++l) {
          const int code = ((lo[l] >> shift_low) & 0x0f) | (((hi[l] >> shift_high) & 3) << 4);
          o[l] = scale * static_cast<float>(code - 32);
        }
      }
    }
  }
}

KNOWD_HD inline float Q6_KElement(const uint8_t* blocks, int64_t i) {
  const uint8_t* block = blocks + (i / kQKBlockSize) * kQ6_KBlockBytes;
  const int j = static_cast<int>(i % kQKBlockSize);
  const int8_t scale = static_cast<int8_t>(block[192 + Q6_KScaleIndex(j)]);
  return Q6_KBlockD(block) * static_cast<float>(scale) *
         static_cast<float>(Q6_KCode(block, j) - 32);
}

// Every element of one block of `dtype` (DTypeBlockSize(dtype) of them; one element for the
// unblocked types).
KNOWD_HD inline void DequantBlock(const void* block, DType dtype, float* out) {
  const uint8_t* b = static_cast<const uint8_t*>(block);
  switch (dtype) {
    case DType::kQ8_0:
      Q8_0DequantBlock(b, out);
      return;
    case DType::kQ4_0:
      Q4_0DequantBlock(b, out);
      return;
    case DType::kQ4_K:
      Q4_KDequantBlock(b, out);
      return;
    case DType::kQ6_K:
      Q6_KDequantBlock(b, out);
      return;
    case DType::kF32:
      *out = *static_cast<const float*>(block);
      return;
    case DType::kF16:
      *out = F16ToF32(*static_cast<const uint16_t*>(block));
      return;
    case DType::kBF16:
      *out = BF16ToF32(*static_cast<const uint16_t*>(block));
      return;
    case DType::kI32:
      *out = static_cast<float>(*static_cast<const int32_t*>(block));
      return;
  }
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
    case DType::kQ4_0:
      return Q4_0Element(static_cast<const uint8_t*>(data), i);
    case DType::kQ4_K:
      return Q4_KElement(static_cast<const uint8_t*>(data), i);
    case DType::kQ6_K:
      return Q6_KElement(static_cast<const uint8_t*>(data), i);
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

// ---- low-rank updates ---------------------------------------------------------------------

// Element c of the vector-matrix product v · m, m [k][n] row-major: Σ_t v[t] · m[t][c] over t in
// [0, k), summed in f32 in order of t. Each of Backend::LowRankUpdate's three steps is one:
// t = x · W2ᵀ, u = t · h (the row's state), y += u · W1ᵀ.
KNOWD_HD inline float LowRankColumn(const float* v, const float* m, int k, int n, int c) {
  float sum = 0.0f;
  for (int t = 0; t < k; ++t) sum += v[t] * m[static_cast<int64_t>(t) * n + c];
  return sum;
}

// Every column of v · m at once, out[c] = LowRankColumn(v, m, k, n, c) for c in [0, n): the same
// sums in the same order of t (up to the compiler fusing some multiply-adds), with the loops
// swapped so the host vectorises along c.
KNOWD_HD inline void LowRankColumns(const float* v, const float* m, int k, int n, float* out) {
  for (int c = 0; c < n; ++c) out[c] = 0.0f;
  for (int t = 0; t < k; ++t) {
    const float vt = v[t];
    const float* row = m + static_cast<int64_t>(t) * n;
#if !defined(__CUDA_ARCH__) && defined(_OPENMP)
#pragma omp simd
#endif
    for (int c = 0; c < n; ++c) out[c] += vt * row[c];
  }
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
