// The typed kernels (kernels/cpu/typed_kernels.h) of every instruction-set family this CPU can
// run, and the CPU backend's MatMulTyped, against references written from kernels/math.h's
// element functions and double arithmetic. Each family is a separate compilation of the same
// source, so each must give bit-identical dequantized values (every weight type's dequantization
// is one rounding at most: f16/bf16 widen exactly; q8_0 and q4_0 are one product; q4_K's
// d·scale·code needs 21 bits, so it is exact whether or not it is fused with the min's
// subtraction; q6_K is the same two products in the same order everywhere).
#include "kernels/cpu/typed_kernels.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "kernels/backend.h"
#include "kernels/dtype.h"
#include "kernels/math.h"
#include "tests/kernels/random_weights.h"

namespace knowd {
namespace {

constexpr DType kWeightTypes[] = {DType::kF32,  DType::kF16,  DType::kBF16, DType::kQ8_0,
                                  DType::kQ4_0, DType::kQ4_K, DType::kQ6_K};

// Columns of the test matrices: whole super-blocks for the k-quants; 32 more for the rest, so
// the dot products' 32-wide main loop and its tail are both exercised.
int ColumnsFor(DType dtype) { return DTypeBlockSize(dtype) == kQKBlockSize ? 512 : 544; }

TEST(TypedKernelsTest, TheBestFamilyIsOneThisCpuRuns) {
  const std::vector<const cpu::TypedKernels*> supported = cpu::SupportedTypedKernels();
  ASSERT_FALSE(supported.empty());
  EXPECT_EQ(&cpu::BestTypedKernels(), supported.front());
  EXPECT_STREQ(supported.back()->family, "x86-64");  // every x86-64 CPU runs the baseline
  std::printf("families: ");
  for (const cpu::TypedKernels* k : supported) std::printf("%s ", k->family);
  std::printf("(features: %s)\n", cpu::CpuFeatureList().c_str());
}

TEST(TypedKernelsTest, EveryFamilyDequantizesEveryTypeAsTheElementFunctions) {
  constexpr int kRows = 3;
  for (DType dtype : kWeightTypes) {
    const int k = ColumnsFor(dtype);
    const std::vector<uint8_t> w = RandomWeights(dtype, kRows, k, 11);
    std::vector<float> expected(static_cast<size_t>(kRows) * k);
    for (size_t i = 0; i < expected.size(); ++i) expected[i] = LoadAsF32(w.data(), dtype, i);
    for (const cpu::TypedKernels* kernels : cpu::SupportedTypedKernels()) {
      std::vector<float> got(expected.size(), -1.0f);
      kernels->dequantize_rows(w.data(), dtype, kRows, k, got.data());
      int mismatches = 0;
      for (size_t i = 0; i < got.size(); ++i)
        mismatches += FloatBits(got[i]) != FloatBits(expected[i]);
      EXPECT_EQ(mismatches, 0) << DTypeName(dtype) << " on " << kernels->family;
    }
  }
}

// y = x · wᵀ in double from the exactly dequantized w, and the bound of an f32 evaluation:
// |error| <= 1e-5 · Σ|x·w| (+ |y0| when accumulating) covers a 544-term float sum in any order
// (about (k/32 + 32)·2⁻²⁴ = 3e-6 of it with 32 partial sums), while a wrong element or block
// moves y by about 1/k of Σ|x·w|, 2e-3 of it.
struct Expected {
  std::vector<double> y;
  std::vector<double> bound;
};

Expected Reference(const std::vector<float>& x, const std::vector<uint8_t>& w, DType dtype,
                   const std::vector<float>& y0, int m, int n, int k, int64_t ldy) {
  Expected e{std::vector<double>(static_cast<size_t>(m) * n),
             std::vector<double>(static_cast<size_t>(m) * n)};
  for (int i = 0; i < m; ++i) {
    for (int j = 0; j < n; ++j) {
      double sum = 0.0, magnitude = 0.0;
      for (int c = 0; c < k; ++c) {
        const double p = double{x[static_cast<size_t>(i) * k + c]} *
                         LoadAsF32(w.data(), dtype, static_cast<int64_t>(j) * k + c);
        sum += p;
        magnitude += std::fabs(p);
      }
      const double prior = y0.empty() ? 0.0 : y0[i * ldy + j];
      e.y[static_cast<size_t>(i) * n + j] = sum + prior;
      e.bound[static_cast<size_t>(i) * n + j] = 1e-5 * (magnitude + std::fabs(prior)) + 1e-30;
    }
  }
  return e;
}

TEST(TypedKernelsTest, EveryFamilyDotsRowsOfEveryType) {
  constexpr int kM = 3, kN = 5;
  for (DType dtype : kWeightTypes) {
    const int k = ColumnsFor(dtype);
    const std::vector<uint8_t> w = RandomWeights(dtype, kN, k, 21);
    const std::vector<float> x = Random<float>(static_cast<size_t>(kM) * k, 22);
    const Expected e = Reference(x, w, dtype, {}, kM, kN, k, kN);
    for (const cpu::TypedKernels* kernels : cpu::SupportedTypedKernels()) {
      std::vector<float> y(static_cast<size_t>(kM) * kN, NAN);
      std::vector<float> row(k);
      kernels->dot_rows(x.data(), k, w.data(), dtype, y.data(), kN, kM, kN, k, false, row.data());
      for (size_t i = 0; i < y.size(); ++i) {
        EXPECT_NEAR(y[i], e.y[i], e.bound[i]) << DTypeName(dtype) << " on " << kernels->family;
      }
    }
  }
}

// The backend's MatMulTyped on both of its exact paths (a few rows of x: one weight row at a
// time; many rows: dequantized panels through sgemm), with a padded y and accumulation.
TEST(TypedKernelsTest, CpuMatMulTypedOfEveryTypeOnBothPaths) {
  auto backend = MakeCpuBackend(CpuOptions{.threads = 2, .int8_activations = false});
  constexpr int kN = 300;  // more than one panel and not a multiple of the row chunks
  for (DType dtype : kWeightTypes) {
    const int k = ColumnsFor(dtype);
    const std::vector<uint8_t> w = RandomWeights(dtype, kN, k, 31);
    for (int m : {1, 8, 17, 64}) {
      for (bool accumulate : {false, true}) {
        const int64_t ldy = kN + 3;
        const std::vector<float> x = Random<float>(static_cast<size_t>(m) * k, 32 + m);
        std::vector<float> y0 = Random<float>(static_cast<size_t>(m) * ldy, 33);
        std::vector<float> y = y0;
        backend->MatMulTyped(x.data(), k, w.data(), dtype, y.data(), ldy, m, kN, k, accumulate);
        const Expected e =
            Reference(x, w, dtype, accumulate ? y0 : std::vector<float>{}, m, kN, k, ldy);
        int bad = 0;
        for (int i = 0; i < m; ++i) {
          for (int j = 0; j < kN; ++j) {
            const size_t r = static_cast<size_t>(i) * kN + j;
            bad += std::fabs(y[i * ldy + j] - e.y[r]) > e.bound[r];
          }
          for (int j = kN; j < ldy; ++j)
            bad += FloatBits(y[i * ldy + j]) != FloatBits(y0[i * ldy + j]);
        }
        EXPECT_EQ(bad, 0) << DTypeName(dtype) << " m=" << m << " accumulate=" << accumulate;
      }
    }
  }
}

// Every family's int8 products against kernels/math.h's block functions summed in double: each
// block's product is exact integer arithmetic scaled once, so the families differ only in the
// order of the per-block float sums.
TEST(TypedKernelsTest, EveryFamilyDotsQuantizedActivationsAsTheBlockFunctions) {
  constexpr int kM = 5, kN = 7, kK = 544;
  const std::vector<float> x = Random<float>(static_cast<size_t>(kM) * kK, 41);
  std::vector<int8_t> codes(static_cast<size_t>(kM) * kK);
  std::vector<float> scales(static_cast<size_t>(kM) * kK / 32);
  cpu::QuantizeActivations(x.data(), kK, kM, kK, codes.data(), scales.data());
  for (DType dtype : {DType::kQ8_0, DType::kQ4_0}) {
    ASSERT_TRUE(cpu::HasInt8Products(dtype));
    const std::vector<uint8_t> w = RandomWeights(dtype, kN, kK, 42);
    const int64_t row_bytes = DTypeBytes(dtype, kK), block_bytes = DTypeBytes(dtype, 32);
    for (const cpu::TypedKernels* kernels : cpu::SupportedTypedKernels()) {
      std::vector<float> y(static_cast<size_t>(kM) * kN, NAN);
      kernels->dot_rows_int8(codes.data(), scales.data(), w.data(), dtype, y.data(), kN, kM, kN, kK,
                             false);
      for (int i = 0; i < kM; ++i) {
        for (int j = 0; j < kN; ++j) {
          double sum = 0.0, magnitude = 0.0;
          for (int b = 0; b < kK / 32; ++b) {
            const uint8_t* block = w.data() + j * row_bytes + b * block_bytes;
            const int8_t* c = codes.data() + i * kK + 32 * b;
            const float s = scales[i * kK / 32 + b];
            const double p = dtype == DType::kQ8_0 ? Q8_0DotActivations(block, c, s)
                                                   : Q4_0DotActivations(block, c, s);
            sum += p;
            magnitude += std::fabs(p);
          }
          EXPECT_NEAR(y[i * kN + j], sum, 1e-6 * magnitude + 1e-30)
              << DTypeName(dtype) << " on " << kernels->family << " row " << i << " col " << j;
        }
      }
    }
  }
  EXPECT_FALSE(cpu::HasInt8Products(DType::kQ4_K));
  EXPECT_FALSE(cpu::HasInt8Products(DType::kF16));
}

// Activation quantization itself: codes within [-127, 127], the block's largest magnitude at
// ±127, and every element within half a step of its value.
TEST(TypedKernelsTest, QuantizedActivationsLieWithinHalfAStep) {
  std::vector<float> x = Random<float>(64, 43);
  x[40] = 0.0f;
  std::fill(x.begin() + 32, x.begin() + 64, 0.0f);  // an all-zero block: scale 0, codes 0
  x[5] = -3.0f;                                     // the first block's largest magnitude
  std::vector<int8_t> codes(64);
  std::vector<float> scales(2);
  cpu::QuantizeActivations(x.data(), 64, 1, 64, codes.data(), scales.data());
  EXPECT_FLOAT_EQ(scales[0], 3.0f / 127.0f);
  EXPECT_EQ(codes[5], -127);
  EXPECT_EQ(scales[1], 0.0f);
  for (int j = 0; j < 32; ++j) {
    EXPECT_LE(std::fabs(codes[j] * scales[0] - x[j]), 0.5f * scales[0] * (1 + 1e-6f)) << j;
    EXPECT_EQ(codes[32 + j], 0);
  }
}

// The backend's default decode path for q8_0 and q4_0 (int8 products, up to 16 rows of x): within
// the error its rounding of x allows, Σ_c |w_c|·d_c/2 for each x element's step d_c, plus the
// float sums' 1e-5·Σ|x·w|; an indexing error would move y by about Σ|x·w| / k, far more.
TEST(TypedKernelsTest, CpuMatMulTypedInt8DecodeWithinTheActivationRounding) {
  auto backend = MakeCpuBackend(2);
  constexpr int kN = 300, kK = 544;
  for (DType dtype : {DType::kQ8_0, DType::kQ4_0}) {
    const std::vector<uint8_t> w = RandomWeights(dtype, kN, kK, 51);
    for (int m : {1, 3, 8, 16}) {
      for (bool accumulate : {false, true}) {
        const int64_t ldy = kN + 3, ldx = kK + 5;
        const std::vector<float> x = Random<float>(static_cast<size_t>(m) * ldx, 52 + m);
        const std::vector<float> y0 = Random<float>(static_cast<size_t>(m) * ldy, 53);
        std::vector<float> y = y0;
        backend->MatMulTyped(x.data(), ldx, w.data(), dtype, y.data(), ldy, m, kN, kK, accumulate);
        int bad = 0;
        for (int i = 0; i < m; ++i) {
          for (int j = 0; j < kN; ++j) {
            double exact = accumulate ? y0[i * ldy + j] : 0.0, magnitude = std::fabs(exact);
            double rounding = 0.0;
            for (int b = 0; b < kK / 32; ++b) {
              float amax = 0.0f;
              for (int c = 32 * b; c < 32 * b + 32; ++c)
                amax = std::max(amax, std::fabs(x[i * ldx + c]));
              for (int c = 32 * b; c < 32 * b + 32; ++c) {
                const double wc = LoadAsF32(w.data(), dtype, static_cast<int64_t>(j) * kK + c);
                exact += wc * x[i * ldx + c];
                magnitude += std::fabs(wc * x[i * ldx + c]);
                rounding += std::fabs(wc) * (amax / 127.0) / 2;
              }
            }
            bad += std::fabs(y[i * ldy + j] - exact) > rounding * (1 + 1e-5) + 1e-5 * magnitude;
          }
          for (int j = kN; j < ldy; ++j)
            bad += FloatBits(y[i * ldy + j]) != FloatBits(y0[i * ldy + j]);
        }
        EXPECT_EQ(bad, 0) << DTypeName(dtype) << " m=" << m << " accumulate=" << accumulate;
      }
    }
  }
}

}  // namespace
}  // namespace knowd
