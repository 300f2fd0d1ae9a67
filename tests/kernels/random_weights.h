// Random test inputs for the kernels' tests: floats, and weight matrices in every weight type
// (the block formats as random bytes with finite scales, so every code and packed scale occurs).
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "kernels/dtype.h"
#include "kernels/math.h"

namespace knowd {

template <typename T>
inline std::vector<T> Random(size_t n, uint32_t seed, float lo = -1.0f, float hi = 1.0f) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<T> v(n);
  for (T& x : v) x = static_cast<T>(dist(rng));
  return v;
}

template <typename T>
inline std::vector<uint8_t> AsBytes(const std::vector<T>& v) {
  std::vector<uint8_t> bytes(v.size() * sizeof(T));
  std::memcpy(bytes.data(), v.data(), bytes.size());
  return bytes;
}

// `n` elements (a multiple of the block size) of the block format `dtype`: random bytes, so
// every 4- and 6-bit code and every packed sub-block scale and min occurs, with each f16 scale
// field (q8_0, q4_0: d; q4_K: d, dmin; q6_K: d) replaced by a finite value in [-0.05, 0.05].
inline std::vector<uint8_t> RandomBlocks(DType dtype, int64_t n, uint32_t seed) {
  std::vector<uint8_t> bytes(static_cast<size_t>(DTypeBytes(dtype, n)));
  std::mt19937 rng(seed);
  for (uint8_t& b : bytes) b = static_cast<uint8_t>(rng() >> 24);
  std::vector<int> scale_offsets;
  switch (dtype) {
    case DType::kQ8_0:
    case DType::kQ4_0:
      scale_offsets = {0};
      break;
    case DType::kQ4_K:
      scale_offsets = {0, 2};
      break;
    case DType::kQ6_K:
      scale_offsets = {kQ6_KBlockBytes - 2};
      break;
    default:
      ADD_FAILURE() << "not a block format: " << DTypeName(dtype);
      return bytes;
  }
  std::uniform_real_distribution<float> scale(-0.05f, 0.05f);
  const size_t block_bytes = static_cast<size_t>(DTypeBytes(dtype, DTypeBlockSize(dtype)));
  for (size_t b = 0; b < bytes.size(); b += block_bytes) {
    for (int offset : scale_offsets) {
      const uint16_t h = F32ToF16(scale(rng));
      bytes[b + offset] = static_cast<uint8_t>(h & 0xff);
      bytes[b + offset + 1] = static_cast<uint8_t>(h >> 8);
    }
  }
  return bytes;
}

// A weight matrix [n, k] in `dtype` (any DType but kI32): values in [-1, 1] for the unblocked
// types, RandomBlocks for the block formats.
inline std::vector<uint8_t> RandomWeights(DType dtype, int n, int k, uint32_t seed) {
  const size_t count = static_cast<size_t>(n) * k;
  if (DTypeIsQuantized(dtype)) return RandomBlocks(dtype, static_cast<int64_t>(count), seed);
  const std::vector<float> values = Random<float>(count, seed);
  if (dtype == DType::kF32) return AsBytes(values);
  std::vector<uint16_t> halves(count);
  for (size_t i = 0; i < count; ++i) {
    halves[i] = dtype == DType::kBF16 ? F32ToBF16(values[i]) : F32ToF16(values[i]);
  }
  return AsBytes(halves);
}

}  // namespace knowd
