// Quantizing f32 rows into GGUF's block formats (q8_0, q4_0, q4_K, q6_K). The layouts are those of
// kernels/dtype.h, and kernels/math.h's dequantizers decode what is written here.
//
//   q8_0  llama.cpp's reference rounding: d = max|x| / 127 (f16), q = round(x / d), halves away
//         from zero.
//   q4_0  llama.cpp's reference rounding: `max` is the value of largest magnitude (with its sign),
//         d = max / -8 (f16), q = min(15, trunc(x / d + 8.5)): `max` itself gets code 0 (-8·d).
//   q4_K  per 32-element sub-block s a grid of 16 points, -dmin·m_s + d·sc_s·q (q = 0..15), whose
//         6-bit sc_s and m_s are rounded up so the grid covers the sub-block's values (its
//         minimum, or 0 when all are positive, up to its maximum); the super-block's d and dmin
//         (f16) are rounded up likewise. Each value takes the nearest grid point, so it is off by
//         at most half of its sub-block's step d·sc_s.
//   q6_K  per 16-element sub-block s a symmetric grid d·sc_s·(q - 32) (q = 0..63) whose int8 sc_s
//         is rounded up so that ±max|x_s| lies within 31.5 steps; the super-block d (f16) is
//         rounded up so sc_s <= 127. Each value is off by at most half of d·sc_s.
//
// The k-quant grids are chosen from each sub-block's range (a simpler search than llama.cpp's
// weighted least-squares fit of scale and min), which bounds every element's error rather than
// minimising the mean squared error.
#pragma once

#include <cstdint>
#include <span>

#include "kernels/dtype.h"

namespace knowd {

// Writes `x`, whole blocks of `dtype` (DTypeBlockSize elements each), as DTypeBytes(dtype,
// x.size()) bytes at `out`. `dtype` is q8_0, q4_0, q4_K or q6_K; for any other type nothing is
// written. Values must be finite, and small enough for the f16 scales (|x| below about 65504
// times the block's code range).
void QuantizeRow(std::span<const float> x, DType dtype, uint8_t* out);

}  // namespace knowd
