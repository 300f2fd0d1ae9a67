// Row quantizers: one function per block format, each writing one block from its elements, and
// QuantizeRow running them over a row's blocks in parallel.
#include "model/quantize.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "kernels/math.h"

namespace knowd {
namespace {

void PutF16(uint8_t* p, uint16_t h) {
  p[0] = static_cast<uint8_t>(h & 0xff);
  p[1] = static_cast<uint8_t>(h >> 8);
}

// The f16 nearest to `v` (>= 0) from above: the scales of the k-quants are rounded up so that
// the grids they span still cover the values they were computed from.
uint16_t F16AtLeast(float v) {
  uint16_t h = F32ToF16(v);
  if (F16ToF32(h) < v) ++h;  // next larger f16 (positive values order as their bits)
  return h;
}

// The smallest integer count of `step` reaching `need` (>= 0), at most `limit`; 0 when step is 0.
int StepsAtLeast(float need, float step, int limit) {
  if (step <= 0.0f) return 0;
  return std::min(limit, static_cast<int>(std::ceil(need / step)));
}

// ggml's quantize_row_q8_0_ref: the scale is computed and applied in f32 and stored as f16.
void QuantizeQ8_0Block(const float* v, uint8_t* block) {
  float amax = 0.0f;
  for (int64_t j = 0; j < kQ8_0BlockSize; ++j) amax = std::max(amax, std::fabs(v[j]));
  const float d = amax / 127.0f;
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  PutF16(block, F32ToF16(d));
  for (int64_t j = 0; j < kQ8_0BlockSize; ++j) {
    block[2 + j] = static_cast<uint8_t>(static_cast<int8_t>(std::round(v[j] * id)));
  }
}

// ggml's quantize_row_q4_0_ref: the signed value of largest magnitude maps to code 0 (-8·d);
// codes are x/d + 8 rounded half up, the top one (16, for -max) clamped to 15.
void QuantizeQ4_0Block(const float* v, uint8_t* block) {
  float amax = 0.0f, signed_max = 0.0f;
  for (int64_t j = 0; j < kQ4_0BlockSize; ++j) {
    if (amax < std::fabs(v[j])) {
      amax = std::fabs(v[j]);
      signed_max = v[j];
    }
  }
  const float d = signed_max / -8.0f;
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  PutF16(block, F32ToF16(d));
  for (int j = 0; j < 16; ++j) {
    // x·id + 8.5 lies in [0.5, 16.5], so truncation is floor.
    const int lo = std::min(15, static_cast<int>(v[j] * id + 8.5f));
    const int hi = std::min(15, static_cast<int>(v[j + 16] * id + 8.5f));
    block[2 + j] = static_cast<uint8_t>(lo | (hi << 4));
  }
}

// q4_K: per 32-element sub-block an offset m (the negated minimum, or 0 when every value is
// positive) and a step covering the rest of the range in 15 steps; both rounded up onto the
// 6-bit grids of dmin and d, which are max/63 rounded up to f16.
void QuantizeQ4_KBlock(const float* v, uint8_t* block) {
  constexpr int kSub = 8, kLen = 32;
  float offset[kSub], top[kSub];
  float max_offset = 0.0f;
  for (int s = 0; s < kSub; ++s) {
    float lo = 0.0f, hi = -INFINITY;
    for (int l = 0; l < kLen; ++l) {
      lo = std::min(lo, v[kLen * s + l]);
      hi = std::max(hi, v[kLen * s + l]);
    }
    offset[s] = -lo;
    top[s] = hi;
    max_offset = std::max(max_offset, offset[s]);
  }
  const uint16_t dmin16 = F16AtLeast(max_offset / 63.0f);
  const float dmin = F16ToF32(dmin16);
  int sc[kSub], mc[kSub];
  float need[kSub], max_need = 0.0f;
  for (int s = 0; s < kSub; ++s) {
    mc[s] = StepsAtLeast(offset[s], dmin, 63);
    // With the rounded-up offset the grid starts at or below the minimum; 15 steps must reach
    // the maximum from there.
    need[s] = std::max(0.0f, (top[s] + dmin * static_cast<float>(mc[s])) / 15.0f);
    max_need = std::max(max_need, need[s]);
  }
  const uint16_t d16 = F16AtLeast(max_need / 63.0f);
  const float d = F16ToF32(d16);
  for (int s = 0; s < kSub; ++s) sc[s] = StepsAtLeast(need[s], d, 63);

  PutF16(block, d16);
  PutF16(block + 2, dmin16);
  uint8_t* scales = block + 4;
  for (int j = 0; j < 4; ++j) {
    scales[j] = static_cast<uint8_t>(sc[j] | ((sc[j + 4] >> 4) << 6));
    scales[j + 4] = static_cast<uint8_t>(mc[j] | ((mc[j + 4] >> 4) << 6));
    scales[j + 8] = static_cast<uint8_t>((sc[j + 4] & 0x0f) | ((mc[j + 4] & 0x0f) << 4));
  }
  uint8_t codes[kQKBlockSize];
  for (int s = 0; s < kSub; ++s) {
    // The step and offset exactly as the dequantizer forms them.
    const float step = d * static_cast<float>(sc[s]);
    const float shift = dmin * static_cast<float>(mc[s]);
    const float inv = step > 0.0f ? 1.0f / step : 0.0f;
    for (int l = 0; l < kLen; ++l) {
      const float q = std::nearbyint((v[kLen * s + l] + shift) * inv);
      codes[kLen * s + l] = static_cast<uint8_t>(std::clamp(q, 0.0f, 15.0f));
    }
  }
  // Run r of 64 elements: sub-block 2r in the low nibbles, 2r + 1 in the high ones.
  uint8_t* qs = block + 16;
  for (int run = 0; run < 4; ++run) {
    for (int l = 0; l < 32; ++l) {
      qs[32 * run + l] =
          static_cast<uint8_t>(codes[64 * run + l] | (codes[64 * run + 32 + l] << 4));
    }
  }
}

// q6_K: per 16-element sub-block a step of max|x| / 31.5, so every value rounds into -32..31;
// steps rounded up onto the int8 grid of d, which is the largest step / 127 rounded up to f16.
void QuantizeQ6_KBlock(const float* v, uint8_t* block) {
  constexpr int kSub = 16, kLen = 16;
  float need[kSub], max_need = 0.0f;
  for (int s = 0; s < kSub; ++s) {
    float amax = 0.0f;
    for (int l = 0; l < kLen; ++l) amax = std::max(amax, std::fabs(v[kLen * s + l]));
    need[s] = amax / 31.5f;
    max_need = std::max(max_need, need[s]);
  }
  const uint16_t d16 = F16AtLeast(max_need / 127.0f);
  const float d = F16ToF32(d16);
  uint8_t codes[kQKBlockSize];
  for (int s = 0; s < kSub; ++s) {
    const int sc = StepsAtLeast(need[s], d, 127);
    block[192 + s] = static_cast<uint8_t>(static_cast<int8_t>(sc));
    const float step = d * static_cast<float>(sc);
    const float inv = step > 0.0f ? 1.0f / step : 0.0f;
    for (int l = 0; l < kLen; ++l) {
      const float q = std::nearbyint(v[kLen * s + l] * inv);
      codes[kLen * s + l] = static_cast<uint8_t>(std::clamp(q, -32.0f, 31.0f) + 32.0f);
    }
  }
  PutF16(block + 208, d16);
  // Half h (128 elements): quarter g's low 4 bits in ql (quarters 0, 1 low nibbles of bytes
  // 0..31, 32..63; quarters 2, 3 their high nibbles), its top 2 bits in bits 2g of qh.
  for (int half = 0; half < 2; ++half) {
    uint8_t* ql = block + 64 * half;
    uint8_t* qh = block + 128 + 32 * half;
    const uint8_t* c = codes + 128 * half;
    for (int l = 0; l < 32; ++l) {
      ql[l] = static_cast<uint8_t>((c[l] & 0x0f) | ((c[l + 64] & 0x0f) << 4));
      ql[l + 32] = static_cast<uint8_t>((c[l + 32] & 0x0f) | ((c[l + 96] & 0x0f) << 4));
      qh[l] = static_cast<uint8_t>((c[l] >> 4) | ((c[l + 32] >> 4) << 2) | ((c[l + 64] >> 4) << 4) |
                                   ((c[l + 96] >> 4) << 6));
    }
  }
}

}  // namespace

void QuantizeRow(std::span<const float> x, DType dtype, uint8_t* out) {
  void (*quantize_block)(const float*, uint8_t*) = nullptr;
  switch (dtype) {
    case DType::kQ8_0:
      quantize_block = QuantizeQ8_0Block;
      break;
    case DType::kQ4_0:
      quantize_block = QuantizeQ4_0Block;
      break;
    case DType::kQ4_K:
      quantize_block = QuantizeQ4_KBlock;
      break;
    case DType::kQ6_K:
      quantize_block = QuantizeQ6_KBlock;
      break;
    case DType::kF32:
    case DType::kF16:
    case DType::kBF16:
    case DType::kI32:
      return;
  }
  const int64_t block_size = DTypeBlockSize(dtype);
  const int64_t block_bytes = DTypeBytes(dtype, block_size);
  const int64_t blocks = static_cast<int64_t>(x.size()) / block_size;
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < blocks; ++b) {
    quantize_block(x.data() + b * block_size, out + b * block_bytes);
  }
}

}  // namespace knowd
