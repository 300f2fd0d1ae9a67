// kernels/math.h: the per-element arithmetic shared by the CPU and CUDA kernels, checked against
// exact or double-precision references (so the GPU twin tests only need to compare backends).
#include "kernels/math.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "kernels/dtype.h"

namespace knowd {
namespace {

// The value of binary16 bits, decoded from the definition.
double RefF16(uint16_t h) {
  const int exponent = (h >> 10) & 0x1f;
  const int mantissa = h & 0x3ff;
  double value;
  if (exponent == 0) {
    value = std::ldexp(mantissa, -24);
  } else if (exponent == 31) {
    value = mantissa != 0 ? std::numeric_limits<double>::quiet_NaN()
                          : std::numeric_limits<double>::infinity();
  } else {
    value = std::ldexp(1024 + mantissa, exponent - 25);
  }
  return (h & 0x8000) ? -value : value;
}

// Round-to-nearest-even binary16 bits of a non-NaN float, by searching the (monotonic) table of
// non-negative halves; bits 0x7c00 stand for 65536 here, the next value past the largest finite
// half, which is exactly where IEEE rounding sends overflow.
uint16_t RefF32ToF16(float f) {
  const uint16_t sign = std::signbit(f) ? 0x8000 : 0;
  const double a = std::fabs(static_cast<double>(f));
  auto value = [](uint32_t bits) { return bits == 0x7c00 ? 65536.0 : RefF16(bits); };
  if (a >= 65536.0) return sign | 0x7c00;
  uint32_t lo = 0, hi = 0x7c00;  // value(lo) <= a < value(hi)
  while (hi - lo > 1) {
    const uint32_t mid = (lo + hi) / 2;
    (value(mid) <= a ? lo : hi) = mid;
  }
  const double below = a - value(lo);
  const double above = value(hi) - a;
  uint32_t bits;
  if (below < above) {
    bits = lo;
  } else if (above < below) {
    bits = hi;
  } else {
    bits = (lo & 1) ? hi : lo;
  }
  return static_cast<uint16_t>(sign | bits);
}

// Round-to-nearest-even bfloat16 bits of a non-NaN float.
uint16_t RefF32ToBF16(float f) {
  const uint32_t bits = FloatBits(f);
  const uint32_t sign = bits & 0x80000000u;
  const uint32_t lo = (bits ^ sign) & 0xffff0000u;
  const uint32_t hi = lo + 0x10000u;
  const double a = std::fabs(static_cast<double>(f));
  const double lo_value = BitsToFloat(lo);
  const double hi_value = hi == 0x7f800000u ? std::ldexp(1.0, 128) : BitsToFloat(hi);
  uint32_t chosen;
  if (a - lo_value < hi_value - a) {
    chosen = lo;
  } else if (hi_value - a < a - lo_value) {
    chosen = hi;
  } else {
    chosen = ((lo >> 16) & 1) ? hi : lo;
  }
  return static_cast<uint16_t>((sign | chosen) >> 16);
}

TEST(F16Test, KnownBitPatterns) {
  EXPECT_EQ(F16ToF32(0x3c00), 1.0f);
  EXPECT_EQ(F16ToF32(0xc000), -2.0f);
  EXPECT_EQ(F16ToF32(0x3800), 0.5f);
  EXPECT_EQ(F16ToF32(0x7bff), 65504.0f);
  EXPECT_EQ(F16ToF32(0x0001), 5.9604644775390625e-08f);  // smallest subnormal, 2^-24
  EXPECT_EQ(F16ToF32(0x03ff), 6.097555160522461e-05f);   // largest subnormal
  EXPECT_EQ(F16ToF32(0x0400), 6.103515625e-05f);         // smallest normal, 2^-14
  EXPECT_EQ(F16ToF32(0x3555), 0.333251953125f);
  EXPECT_EQ(F16ToF32(0x7c00), std::numeric_limits<float>::infinity());
  EXPECT_EQ(F16ToF32(0xfc00), -std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(F16ToF32(0x7e00)));
  EXPECT_TRUE(std::isnan(F16ToF32(0x7c01)));            // signalling NaN stays NaN, not inf
  EXPECT_EQ(FloatBits(F16ToF32(0x8000)), 0x80000000u);  // -0 keeps its sign
  EXPECT_EQ(FloatBits(F16ToF32(0x0000)), 0u);
}

TEST(F16Test, EveryBitPatternDecodesExactly) {
  for (uint32_t h = 0; h <= 0xffff; ++h) {
    const double expected = RefF16(static_cast<uint16_t>(h));
    const float got = F16ToF32(static_cast<uint16_t>(h));
    if (std::isnan(expected)) {
      EXPECT_TRUE(std::isnan(got)) << std::hex << h;
    } else {
      ASSERT_EQ(static_cast<double>(got), expected) << std::hex << h;
      ASSERT_EQ(std::signbit(got), std::signbit(expected)) << std::hex << h;
    }
  }
}

TEST(F16Test, EveryNonNaNHalfRoundTrips) {
  for (uint32_t h = 0; h <= 0xffff; ++h) {
    if (std::isnan(RefF16(static_cast<uint16_t>(h)))) continue;
    ASSERT_EQ(F32ToF16(F16ToF32(static_cast<uint16_t>(h))), h) << std::hex << h;
  }
}

TEST(F16Test, RoundsToNearestEvenAtEveryMidpoint) {
  // Midpoints between consecutive halves are exact floats; each must round to the even
  // neighbour, and the floats just beside it to the nearer one.
  for (uint32_t h = 0; h < 0x7bff; ++h) {
    const float mid = static_cast<float>((RefF16(h) + RefF16(h + 1)) / 2);
    const uint16_t even = (h & 1) ? h + 1 : h;
    ASSERT_EQ(F32ToF16(mid), even) << std::hex << h;
    ASSERT_EQ(F32ToF16(-mid), even | 0x8000) << std::hex << h;
    ASSERT_EQ(F32ToF16(std::nextafter(mid, 0.0f)), h) << std::hex << h;
    ASSERT_EQ(F32ToF16(std::nextafter(mid, 1e9f)), h + 1) << std::hex << h;
  }
}

TEST(F16Test, OverflowUnderflowAndSpecials) {
  EXPECT_EQ(F32ToF16(65504.0f), 0x7bff);
  EXPECT_EQ(F32ToF16(65519.99f), 0x7bff);
  EXPECT_EQ(F32ToF16(65520.0f), 0x7c00);  // the tie above the largest half rounds to inf
  EXPECT_EQ(F32ToF16(1e9f), 0x7c00);
  EXPECT_EQ(F32ToF16(-1e9f), 0xfc00);
  EXPECT_EQ(F32ToF16(std::numeric_limits<float>::infinity()), 0x7c00);
  EXPECT_EQ(F32ToF16(-std::numeric_limits<float>::infinity()), 0xfc00);
  EXPECT_EQ(F32ToF16(std::ldexp(1.0f, -25)), 0x0000);  // half the smallest subnormal: tie to 0
  EXPECT_EQ(F32ToF16(std::nextafter(std::ldexp(1.0f, -25), 1.0f)), 0x0001);
  EXPECT_EQ(F32ToF16(std::ldexp(3.0f, -25)), 0x0002);  // 1.5 subnormal ulps: tie to even 2
  EXPECT_EQ(F32ToF16(1e-30f), 0x0000);
  EXPECT_EQ(F32ToF16(-1e-30f), 0x8000);
  EXPECT_EQ(F32ToF16(-0.0f), 0x8000);
  const uint16_t nan = F32ToF16(std::numeric_limits<float>::quiet_NaN());
  EXPECT_TRUE(std::isnan(F16ToF32(nan)));
  EXPECT_TRUE(std::isnan(F16ToF32(F32ToF16(BitsToFloat(0x7f800001u)))));  // payload in low bits
}

TEST(F16Test, RandomFloatsMatchReferenceRounding) {
  std::mt19937 rng(7);
  // Exponents from far below the subnormal range to past overflow.
  std::uniform_int_distribution<uint32_t> exponent(100, 145);
  std::uniform_int_distribution<uint32_t> mantissa(0, (1u << 23) - 1);
  for (int i = 0; i < 200000; ++i) {
    const uint32_t bits = static_cast<uint32_t>(i & 1) << 31 | exponent(rng) << 23 | mantissa(rng);
    const float f = BitsToFloat(bits);
    ASSERT_EQ(F32ToF16(f), RefF32ToF16(f)) << std::hex << bits;
  }
}

TEST(BF16Test, KnownBitPatterns) {
  EXPECT_EQ(BF16ToF32(0x3f80), 1.0f);
  EXPECT_EQ(BF16ToF32(0xbf80), -1.0f);
  EXPECT_EQ(BF16ToF32(0x4049), 3.140625f);
  EXPECT_EQ(BF16ToF32(0x0001), BitsToFloat(0x00010000u));  // subnormal
  EXPECT_EQ(BF16ToF32(0x7f80), std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(BF16ToF32(0x7fc0)));
}

TEST(BF16Test, RoundsToNearestEven) {
  EXPECT_EQ(F32ToBF16(1.0f), 0x3f80);
  EXPECT_EQ(F32ToBF16(BitsToFloat(0x3f808000u)), 0x3f80);  // tie, 0x3f80 is even
  EXPECT_EQ(F32ToBF16(BitsToFloat(0x3f818000u)), 0x3f82);  // tie, 0x3f81 is odd: up
  EXPECT_EQ(F32ToBF16(BitsToFloat(0x3f808001u)), 0x3f81);  // above the tie
  EXPECT_EQ(F32ToBF16(BitsToFloat(0x3f807fffu)), 0x3f80);  // below the tie
  EXPECT_EQ(F32ToBF16(3.14159265f), 0x4049);
  EXPECT_EQ(F32ToBF16(-3.14159265f), 0xc049);
  EXPECT_EQ(F32ToBF16(BitsToFloat(0x7f7fffffu)), 0x7f80);  // FLT_MAX rounds up to inf
  EXPECT_EQ(F32ToBF16(std::numeric_limits<float>::infinity()), 0x7f80);
  EXPECT_EQ(F32ToBF16(BitsToFloat(0x00018000u)), 0x0002);    // subnormal tie to even
  const uint16_t nan = F32ToBF16(BitsToFloat(0x7f800001u));  // would truncate to inf
  EXPECT_TRUE(std::isnan(BF16ToF32(nan)));
}

TEST(BF16Test, RandomFloatsMatchReferenceRounding) {
  std::mt19937 rng(11);
  std::uniform_int_distribution<uint32_t> bits_dist;
  for (int i = 0; i < 200000; ++i) {
    const uint32_t bits = bits_dist(rng);
    const float f = BitsToFloat(bits);
    if (std::isnan(f)) continue;
    ASSERT_EQ(F32ToBF16(f), RefF32ToBF16(f)) << std::hex << bits;
  }
  for (uint32_t h = 0; h <= 0xffff; ++h) {
    if (std::isnan(BF16ToF32(static_cast<uint16_t>(h)))) continue;
    ASSERT_EQ(F32ToBF16(BF16ToF32(static_cast<uint16_t>(h))), h);
  }
}

TEST(Q8_0Test, ElementIsScaleTimesQuant) {
  // Two blocks: scale 0.5 (f16 0x3800) and scale -0.25 (0xb400), little-endian.
  std::vector<uint8_t> blocks(2 * kQ8_0BlockBytes);
  blocks[0] = 0x00;
  blocks[1] = 0x38;
  blocks[kQ8_0BlockBytes] = 0x00;
  blocks[kQ8_0BlockBytes + 1] = 0xb4;
  for (int j = 0; j < 32; ++j) {
    blocks[2 + j] = static_cast<uint8_t>(static_cast<int8_t>(j * 8 - 128));  // -128 .. 120
    blocks[kQ8_0BlockBytes + 2 + j] = static_cast<uint8_t>(static_cast<int8_t>(127 - j));
  }
  EXPECT_EQ(Q8_0BlockScale(blocks.data()), 0.5f);
  EXPECT_EQ(Q8_0BlockScale(blocks.data() + kQ8_0BlockBytes), -0.25f);
  for (int j = 0; j < 32; ++j) {
    EXPECT_EQ(Q8_0Element(blocks.data(), j), 0.5f * (j * 8 - 128));
    EXPECT_EQ(Q8_0Element(blocks.data(), 32 + j), -0.25f * (127 - j));
    EXPECT_EQ(LoadAsF32(blocks.data(), DType::kQ8_0, 32 + j), -0.25f * (127 - j));
  }
}

TEST(LoadAsF32Test, EveryDType) {
  const float f32[] = {1.5f, -2.25f};
  const uint16_t f16[] = {0x3c00, 0xc000};
  const uint16_t bf16[] = {0x3f80, 0x4049};
  const int32_t i32[] = {7, -3};
  EXPECT_EQ(LoadAsF32(f32, DType::kF32, 1), -2.25f);
  EXPECT_EQ(LoadAsF32(f16, DType::kF16, 1), -2.0f);
  EXPECT_EQ(LoadAsF32(bf16, DType::kBF16, 1), 3.140625f);
  EXPECT_EQ(LoadAsF32(i32, DType::kI32, 1), -3.0f);
}

// Distance from `got` to `exact` in units of the float spacing at `exact`.
double UlpError(float got, double exact) {
  const float rounded = static_cast<float>(exact);
  const double ulp = std::nextafter(std::fabs(rounded), std::numeric_limits<float>::infinity()) -
                     std::fabs(rounded);
  return std::fabs(static_cast<double>(got) - exact) / ulp;
}

TEST(ExpTest, WithinTwoUlpOverTheNormalRange) {
  double worst = 0.0;
  for (double x = -86.0; x <= 88.7; x += 0.000731) {
    const float xf = static_cast<float>(x);
    worst = std::max(worst, UlpError(Exp(xf), std::exp(static_cast<double>(xf))));
  }
  EXPECT_LE(worst, 2.0);
  EXPECT_EQ(Exp(0.0f), 1.0f);
}

TEST(ExpTest, EdgesAndSpecials) {
  EXPECT_EQ(Exp(-std::numeric_limits<float>::infinity()), 0.0f);
  EXPECT_EQ(Exp(-100.0f), 0.0f);
  EXPECT_EQ(Exp(std::numeric_limits<float>::infinity()), std::numeric_limits<float>::infinity());
  EXPECT_EQ(Exp(89.0f), std::numeric_limits<float>::infinity());
  EXPECT_NEAR(Exp(88.72f) / std::exp(static_cast<double>(88.72f)), 1.0, 3e-7);
  EXPECT_TRUE(std::isnan(Exp(std::numeric_limits<float>::quiet_NaN())));
}

TEST(SiluMulTest, KnownValues) {
  EXPECT_EQ(SiluMul(0.0f, 5.0f), 0.0f);
  EXPECT_NEAR(SiluMul(1.0f, 1.0f), 0.7310585786300049, 1e-7);
  EXPECT_NEAR(SiluMul(2.0f, 3.0f), 5.284782467867294, 5e-7);
  EXPECT_EQ(SiluMul(100.0f, 2.0f), 200.0f);
  EXPECT_EQ(SiluMul(-100.0f, 2.0f), 0.0f);  // e^100 overflows to inf: -100/inf = -0
  EXPECT_FALSE(std::isnan(SiluMul(-1000.0f, 1.0f)));
}

TEST(RmsTest, ScaleAndApply) {
  // Row (3, 4): mean square 12.5.
  const float scale = RmsScale(25.0f, 2, 0.0f);
  EXPECT_NEAR(scale, 1.0 / std::sqrt(12.5), 1e-7);
  EXPECT_NEAR(RmsApply(3.0f, scale, 2.0f), 6.0 / std::sqrt(12.5), 1e-6);
  EXPECT_NEAR(RmsScale(0.0f, 8, 1e-6f), 1000.0, 1e-3);  // eps keeps a zero row finite
}

TEST(RopeTest, PairIndicesOfBothStyles) {
  int a, b;
  RopePairIndices(RopeStyle::kInterleaved, 3, 16, &a, &b);
  EXPECT_EQ(a, 6);
  EXPECT_EQ(b, 7);
  RopePairIndices(RopeStyle::kHalf, 3, 16, &a, &b);
  EXPECT_EQ(a, 3);
  EXPECT_EQ(b, 11);
}

TEST(RopeTest, AngleIsPositionTimesFrequency) {
  EXPECT_DOUBLE_EQ(RopeInvFreq(0, 64, 10000.0f), 1.0);
  EXPECT_DOUBLE_EQ(RopeInvFreq(16, 64, 10000.0f), 0.01);  // 10000^(-32/64)
  float c, s;
  RopeCosSin(0, 5, 64, 10000.0f, &c, &s);
  EXPECT_EQ(c, 1.0f);
  EXPECT_EQ(s, 0.0f);
  RopeCosSin(3000, 0, 64, 10000.0f, &c, &s);  // large angle keeps float accuracy
  EXPECT_EQ(c, static_cast<float>(std::cos(3000.0)));
  EXPECT_EQ(s, static_cast<float>(std::sin(3000.0)));
  RopeCosSin(77, 16, 64, 10000.0f, &c, &s);
  EXPECT_FLOAT_EQ(c, static_cast<float>(std::cos(0.77)));
  EXPECT_FLOAT_EQ(s, static_cast<float>(std::sin(0.77)));
}

TEST(RopeTest, RotateIsARotation) {
  float x0 = 1.0f, x1 = 2.0f;
  RopeRotate(&x0, &x1, std::cos(1.0f), std::sin(1.0f));
  EXPECT_NEAR(x0, -1.1426396637476532, 1e-6);
  EXPECT_NEAR(x1, 1.922075596544176, 1e-6);
}

TEST(SoftmaxHelpersTest, EmptyRowsGiveZerosNotNaN) {
  EXPECT_EQ(SoftmaxShift(-std::numeric_limits<float>::infinity()), 0.0f);
  EXPECT_EQ(SoftmaxShift(3.0f), 3.0f);
  EXPECT_EQ(SoftmaxNormalizer(0.0f), 0.0f);
  EXPECT_EQ(SoftmaxNormalizer(4.0f), 0.25f);
}

// Weighted mean Σ softmax(s)_i · v_i computed in blocks of `block` scores with the online
// helpers, as the attention kernels do.
double OnlineWeightedMean(const std::vector<float>& scores, const std::vector<float>& values,
                          int block) {
  OnlineSoftmax state;
  float acc = 0.0f;
  for (size_t j0 = 0; j0 < scores.size(); j0 += block) {
    const size_t end = std::min(scores.size(), j0 + block);
    float block_max = -INFINITY;
    for (size_t j = j0; j < end; ++j) block_max = std::max(block_max, scores[j]);
    acc *= OnlineSoftmaxRaise(&state, block_max);
    for (size_t j = j0; j < end; ++j) {
      const float w = OnlineSoftmaxWeight(state, scores[j]);
      state.sum += w;
      acc += w * values[j];
    }
  }
  return acc * OnlineSoftmaxFinish(state);
}

TEST(SoftmaxHelpersTest, OnlineUpdateMatchesTwoPassSoftmax) {
  std::mt19937 rng(3);
  // Scores rising along the row make every block raise the max (the rescale path).
  std::uniform_real_distribution<float> noise(-5.0f, 5.0f);
  std::vector<float> scores(300), values(300);
  for (int j = 0; j < 300; ++j) {
    scores[j] = noise(rng) + 0.2f * j;
    values[j] = noise(rng);
  }
  double max = -1e300, sum = 0.0, weighted = 0.0;
  for (float s : scores) max = std::max(max, static_cast<double>(s));
  for (int j = 0; j < 300; ++j) {
    const double w = std::exp(scores[j] - max);
    sum += w;
    weighted += w * values[j];
  }
  const double expected = weighted / sum;
  for (int block : {1, 7, 32, 64, 300}) {
    EXPECT_NEAR(OnlineWeightedMean(scores, values, block), expected, 1e-5) << block;
  }
}

TEST(SoftmaxHelpersTest, MergeOfTwoHalvesMatchesWhole) {
  const std::vector<float> scores = {1.0f, 3.0f, -2.0f, 10.0f, 4.0f};
  OnlineSoftmax a, b;
  OnlineSoftmaxRaise(&a, 3.0f);
  for (int j = 0; j < 3; ++j) a.sum += OnlineSoftmaxWeight(a, scores[j]);
  OnlineSoftmaxRaise(&b, 10.0f);
  for (int j = 3; j < 5; ++j) b.sum += OnlineSoftmaxWeight(b, scores[j]);
  float own, other;
  OnlineSoftmaxMerge(&a, b, &own, &other);
  double expected_sum = 0.0;
  for (float s : scores) expected_sum += std::exp(s - 10.0);
  EXPECT_EQ(a.max, 10.0f);
  EXPECT_NEAR(a.sum, expected_sum, 1e-6);
  EXPECT_NEAR(own, std::exp(-7.0), 1e-9);
  EXPECT_EQ(other, 1.0f);
  // Merging into an empty state adopts the other state unchanged.
  OnlineSoftmax empty;
  OnlineSoftmaxMerge(&empty, b, &own, &other);
  EXPECT_EQ(empty.max, b.max);
  EXPECT_EQ(empty.sum, b.sum);
  EXPECT_EQ(other, 1.0f);
}

TEST(DTypeTest, NamesAndSizes) {
  EXPECT_EQ(DTypeName(DType::kF32), "f32");
  EXPECT_EQ(DTypeName(DType::kF16), "f16");
  EXPECT_EQ(DTypeName(DType::kBF16), "bf16");
  EXPECT_EQ(DTypeName(DType::kQ8_0), "q8_0");
  EXPECT_EQ(DTypeName(DType::kI32), "i32");
  EXPECT_EQ(DTypeBytes(DType::kF32, 10), 40);
  EXPECT_EQ(DTypeBytes(DType::kI32, 10), 40);
  EXPECT_EQ(DTypeBytes(DType::kF16, 10), 20);
  EXPECT_EQ(DTypeBytes(DType::kBF16, 10), 20);
  EXPECT_EQ(DTypeBytes(DType::kQ8_0, 64), 68);
  EXPECT_EQ(DTypeBytes(DType::kQ8_0, int64_t{32} << 30), int64_t{34} << 30);  // no overflow
}

TEST(LowRankMathTest, ColumnPicksTheMatrixColumnAndSumsInOrder) {
  // A [k=3][n=2] matrix; v = (1, 2, 3).
  const float m[] = {1, 2, 3, 4, 5, 6};
  const float v[] = {1, 2, 3};
  EXPECT_EQ(LowRankColumn(v, m, 3, 2, 0), 1 * 1 + 2 * 3 + 3 * 5);
  EXPECT_EQ(LowRankColumn(v, m, 3, 2, 1), 1 * 2 + 2 * 4 + 3 * 6);
  EXPECT_EQ(LowRankColumn(v, m, 0, 2, 1), 0.0f);  // k == 0: an empty sum
  // In order of t: (1e8 + 1) - 1e8 is 0 in f32, not 1.
  const float big[] = {1e8f, 1.0f, -1e8f};
  const float ones[] = {1, 1, 1};
  EXPECT_EQ(LowRankColumn(big, ones, 3, 1, 0), 0.0f);
}

TEST(LowRankMathTest, ColumnsEqualEachColumn) {
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  // Widths around the vector widths, so the lanes' remainders are covered.
  for (int n : {1, 3, 8, 15, 16, 17, 33, 200}) {
    const int k = 37;
    std::vector<float> v(k), m(static_cast<size_t>(k) * n), out(n);
    for (float& x : v) x = dist(rng);
    for (float& x : m) x = dist(rng);
    LowRankColumns(v.data(), m.data(), k, n, out.data());
    for (int c = 0; c < n; ++c) {
      // The same order of summation; only fused multiply-adds may differ.
      ASSERT_NEAR(out[c], LowRankColumn(v.data(), m.data(), k, n, c), 1e-6) << n << "," << c;
      double ref = 0;
      for (int t = 0; t < k; ++t) ref += double{v[t]} * m[int64_t{t} * n + c];
      EXPECT_NEAR(out[c], ref, 1e-5) << n << "," << c;
    }
  }
}

}  // namespace
}  // namespace knowd
