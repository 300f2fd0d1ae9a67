// Every operation of the CPU backend against a straightforward double-precision reference
// written here. The backend's memory is host memory, so inputs are plain vectors. Sizes are
// chosen so that both the single-threaded and the OpenMP paths (>= 32768 elements) run.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <random>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/backend.h"
#include "kernels/cpu/typed_kernels.h"
#include "kernels/dtype.h"

namespace knowd {
namespace {

constexpr float kSentinel = -12345.0f;  // fills padding that an operation must not touch

std::vector<float> Random(size_t n, uint32_t seed, float lo = -1.0f, float hi = 1.0f) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

class CpuBackendTest : public ::testing::Test {
 protected:
  std::unique_ptr<Backend> backend_ = MakeCpuBackend(2);
};

TEST_F(CpuBackendTest, DescribesItself) {
  EXPECT_EQ(backend_->kind(), BackendKind::kCpu);
  EXPECT_EQ(backend_->name(), absl::StrCat("cpu (2 threads, ", cpu::BestTypedKernels().family,
                                           " kernels, oneDNN sgemm, int8 decode)"));
  EXPECT_EQ(
      MakeCpuBackend(CpuOptions{.threads = 1, .int8_activations = false})->name(),
      absl::StrCat("cpu (1 threads, ", cpu::BestTypedKernels().family, " kernels, oneDNN sgemm)"));
  EXPECT_TRUE(backend_->status().ok());
  EXPECT_NE(MakeCpuBackend()->name().find("threads"), std::string::npos);
}

TEST_F(CpuBackendTest, AllocIs64ByteAlignedAndCopiesRoundTrip) {
  for (size_t bytes :
       {size_t{0}, size_t{1}, size_t{63}, size_t{64}, size_t{1000}, size_t{1} << 20}) {
    void* p = backend_->Alloc(bytes);
    ASSERT_NE(p, nullptr) << bytes;
    EXPECT_EQ(reinterpret_cast<uintptr_t>(p) % 64, 0u) << bytes;
    backend_->Free(p);
  }
  const std::vector<float> host = Random(1000, 1);
  float* a = static_cast<float*>(backend_->Alloc(host.size() * sizeof(float)));
  float* b = static_cast<float*>(backend_->Alloc(host.size() * sizeof(float)));
  backend_->Upload(a, host.data(), host.size() * sizeof(float));
  backend_->Copy(b, a, host.size() * sizeof(float));
  std::vector<float> back(host.size());
  backend_->Synchronize();
  backend_->Download(back.data(), b, back.size() * sizeof(float));
  EXPECT_EQ(back, host);
  backend_->Free(a);
  backend_->Free(b);
  EXPECT_EQ(backend_->Alloc(std::numeric_limits<size_t>::max()), nullptr);
}

// ---- MatMul ----

struct MatMulCase {
  int m, n, k;
  int64_t ldx, ldy;
  bool accumulate;
};

class CpuMatMulTest : public CpuBackendTest, public ::testing::WithParamInterface<MatMulCase> {};

TEST_P(CpuMatMulTest, MatchesDoubleReference) {
  const MatMulCase c = GetParam();
  const std::vector<float> x = Random(c.m * c.ldx, 10);
  const std::vector<float> w = Random(static_cast<size_t>(c.n) * c.k, 11);
  // Without accumulate, y starts as NaN: the result must not depend on it.
  std::vector<float> y =
      c.accumulate ? Random(c.m * c.ldy, 12) : std::vector<float>(c.m * c.ldy, NAN);
  for (int r = 0; r < c.m; ++r) {
    for (int64_t col = c.n; col < c.ldy; ++col) y[r * c.ldy + col] = kSentinel;
  }
  const std::vector<float> y0 = y;
  backend_->MatMul(x.data(), c.ldx, w.data(), y.data(), c.ldy, c.m, c.n, c.k, c.accumulate);
  for (int r = 0; r < c.m; ++r) {
    for (int col = 0; col < c.n; ++col) {
      double expected = c.accumulate ? y0[r * c.ldy + col] : 0.0;
      double magnitude = std::fabs(expected);
      for (int i = 0; i < c.k; ++i) {
        const double p =
            static_cast<double>(x[r * c.ldx + i]) * w[static_cast<size_t>(col) * c.k + i];
        expected += p;
        magnitude += std::fabs(p);
      }
      ASSERT_NEAR(y[r * c.ldy + col], expected, 1e-6 * magnitude + 1e-30) << r << "," << col;
    }
    for (int64_t col = c.n; col < c.ldy; ++col) ASSERT_EQ(y[r * c.ldy + col], kSentinel);
  }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, CpuMatMulTest,
    ::testing::Values(MatMulCase{1, 300, 257, 257, 300, false},  // decode: sgemv
                      MatMulCase{1, 300, 257, 260, 300, true}, MatMulCase{3, 19, 33, 33, 19, false},
                      MatMulCase{17, 19, 33, 40, 23, false}, MatMulCase{17, 19, 33, 40, 23, true},
                      MatMulCase{64, 128, 96, 100, 130, false},
                      // batched decode (2..16 rows): the streaming kernel, split across threads
                      MatMulCase{8, 301, 257, 260, 305, true},
                      MatMulCase{5, 67, 130, 130, 70, false},
                      MatMulCase{16, 1030, 512, 512, 1030, false}));

TEST_F(CpuBackendTest, MatMulWithEmptyInnerDimensionZeroesOrKeeps) {
  std::vector<float> y = {NAN, NAN, 5.0f, 6.0f};
  backend_->MatMul(nullptr, 0, nullptr, y.data(), 2, 1, 2, 0, false);
  backend_->MatMul(nullptr, 0, nullptr, y.data() + 2, 2, 1, 2, 0, true);
  EXPECT_EQ(y, (std::vector<float>{0.0f, 0.0f, 5.0f, 6.0f}));
}

// ---- RmsNorm ----

void ExpectRmsNorm(const std::vector<float>& x, const std::vector<float>& weight,
                   const std::vector<float>& y, int rows, int dim, float eps) {
  for (int r = 0; r < rows; ++r) {
    double sum = 0.0;
    for (int c = 0; c < dim; ++c) sum += static_cast<double>(x[r * dim + c]) * x[r * dim + c];
    const double scale = 1.0 / std::sqrt(sum / dim + eps);
    for (int c = 0; c < dim; ++c) {
      const double expected = x[r * dim + c] * scale * weight[c];
      ASSERT_NEAR(y[r * dim + c], expected, 2e-6 * std::fabs(expected) + 1e-7) << r << "," << c;
    }
  }
}

TEST_F(CpuBackendTest, RmsNormMatchesReference) {
  for (auto [rows, dim] : {std::pair{1, 64}, std::pair{3, 2048}, std::pair{40, 1000}}) {
    const std::vector<float> x = Random(rows * dim, 20, -3.0f, 3.0f);
    const std::vector<float> weight = Random(dim, 21, 0.5f, 1.5f);
    std::vector<float> y(x.size());
    backend_->RmsNorm(x.data(), weight.data(), y.data(), rows, dim, 1e-5f);
    ExpectRmsNorm(x, weight, y, rows, dim, 1e-5f);
    std::vector<float> in_place = x;
    backend_->RmsNorm(in_place.data(), weight.data(), in_place.data(), rows, dim, 1e-5f);
    EXPECT_EQ(in_place, y);
  }
}

TEST_F(CpuBackendTest, RmsNormOfZeroRowIsZero) {
  std::vector<float> x(16, 0.0f), w(16, 1.0f), y(16, NAN);
  backend_->RmsNorm(x.data(), w.data(), y.data(), 1, 16, 1e-6f);
  EXPECT_EQ(y, x);
}

// ---- Rope ----

// Rotation of each head in double, from the definition in backend.h.
std::vector<float> RefRope(std::vector<float> x, const std::vector<int32_t>& positions, int rows,
                           int n_heads, int head_dim, int64_t row_stride, double theta,
                           RopeStyle style) {
  for (int r = 0; r < rows; ++r) {
    for (int h = 0; h < n_heads; ++h) {
      float* head = x.data() + r * row_stride + h * head_dim;
      for (int p = 0; p < head_dim / 2; ++p) {
        const double angle = positions[r] * std::pow(theta, -2.0 * p / head_dim);
        const int i0 = style == RopeStyle::kInterleaved ? 2 * p : p;
        const int i1 = style == RopeStyle::kInterleaved ? 2 * p + 1 : p + head_dim / 2;
        const double a = head[i0], b = head[i1];
        head[i0] = static_cast<float>(a * std::cos(angle) - b * std::sin(angle));
        head[i1] = static_cast<float>(a * std::sin(angle) + b * std::cos(angle));
      }
    }
  }
  return x;
}

TEST_F(CpuBackendTest, RopeKnownValuesOfBothStyles) {
  // head_dim 4, theta 10000: pair 0 turns by position radians, pair 1 by position / 100.
  const std::vector<int32_t> position = {1};
  std::vector<float> x = {1.0f, 2.0f, 3.0f, 4.0f};
  backend_->Rope(x.data(), position.data(), 1, 1, 4, 4, 10000.0f, RopeStyle::kInterleaved);
  EXPECT_NEAR(x[0], -1.1426396637476532, 1e-6);  // (x0, x1) by 1 rad
  EXPECT_NEAR(x[1], 1.922075596544176, 1e-6);
  EXPECT_NEAR(x[2], 2.9598506679133294, 1e-6);  // (x2, x3) by 0.01 rad
  EXPECT_NEAR(x[3], 4.029799501669161, 1e-6);
  x = {1.0f, 2.0f, 3.0f, 4.0f};
  backend_->Rope(x.data(), position.data(), 1, 1, 4, 4, 10000.0f, RopeStyle::kHalf);
  EXPECT_NEAR(x[0], -1.9841106485555495, 1e-6);  // (x0, x2) by 1 rad
  EXPECT_NEAR(x[1], 1.959900667496664, 1e-6);    // (x1, x3) by 0.01 rad
  EXPECT_NEAR(x[2], 2.4623779024123156, 1e-6);
  EXPECT_NEAR(x[3], 4.019799668334994, 1e-6);
}

TEST_F(CpuBackendTest, RopeMatchesReferenceAtLargePositionsWithStride) {
  for (RopeStyle style : {RopeStyle::kInterleaved, RopeStyle::kHalf}) {
    for (float theta : {10000.0f, 500000.0f}) {
      const int rows = 300, n_heads = 3, head_dim = 64;
      const int64_t row_stride = n_heads * head_dim + 5;
      std::vector<int32_t> positions(rows);
      for (int r = 0; r < rows; ++r) positions[r] = (r * 7919) % 40000;  // 0 .. ~40k, unordered
      std::vector<float> x = Random(rows * row_stride, 30, -2.0f, 2.0f);
      for (int r = 0; r < rows; ++r) {
        for (int64_t c = n_heads * head_dim; c < row_stride; ++c) x[r * row_stride + c] = kSentinel;
      }
      const std::vector<float> expected =
          RefRope(x, positions, rows, n_heads, head_dim, row_stride, theta, style);
      backend_->Rope(x.data(), positions.data(), rows, n_heads, head_dim, row_stride, theta, style);
      for (size_t i = 0; i < x.size(); ++i) {
        ASSERT_NEAR(x[i], expected[i], 5e-7 * std::fabs(expected[i]) + 5e-7)
            << "style " << static_cast<int>(style) << " theta " << theta << " at " << i;
      }
      // Position 0 (row 0) is the identity.
    }
  }
}

TEST_F(CpuBackendTest, RopeAtPositionZeroIsIdentity) {
  const std::vector<int32_t> positions = {0, 0};
  const std::vector<float> x0 = Random(2 * 128, 31);
  std::vector<float> x = x0;
  backend_->Rope(x.data(), positions.data(), 2, 2, 64, 128, 10000.0f, RopeStyle::kHalf);
  EXPECT_EQ(x, x0);
}

// ---- Attention ----

struct AttentionCase {
  int n_queries, n_past, n_heads, n_kv_heads, head_dim;
  int q_pad, kv_pad, out_pad;  // extra floats per row
  float score_range;           // q and k entries in [-score_range, score_range]
  int cross_keys = 0;          // > 0: cross-attention over this many keys (n_past unused)
};

class CpuAttentionTest : public CpuBackendTest,
                         public ::testing::WithParamInterface<AttentionCase> {};

TEST_P(CpuAttentionTest, MatchesDoubleReference) {
  const AttentionCase c = GetParam();
  const int n_keys = c.cross_keys > 0 ? c.cross_keys : c.n_past + c.n_queries;
  AttentionArgs a;
  a.n_queries = c.n_queries;
  a.n_past = c.n_past;
  a.n_keys = c.cross_keys;
  a.n_heads = c.n_heads;
  a.n_kv_heads = c.n_kv_heads;
  a.head_dim = c.head_dim;
  a.q_stride = c.n_heads * c.head_dim + c.q_pad;
  a.kv_stride = c.n_kv_heads * c.head_dim + c.kv_pad;
  a.out_stride = c.n_heads * c.head_dim + c.out_pad;
  a.scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
  const std::vector<float> q = Random(c.n_queries * a.q_stride, 40, -c.score_range, c.score_range);
  const std::vector<float> k = Random(n_keys * a.kv_stride, 41, -c.score_range, c.score_range);
  const std::vector<float> v = Random(n_keys * a.kv_stride, 42);
  std::vector<float> out(c.n_queries * a.out_stride, kSentinel);
  a.q = q.data();
  a.k = k.data();
  a.v = v.data();
  a.out = out.data();
  backend_->Attention(a);

  const int group = c.n_heads / c.n_kv_heads;
  std::vector<double> scores;
  // Float dot products err by up to ~eps · Σ|q·k| per score, which moves the softmax weights by
  // as much relatively; the values are in [-1, 1].
  const double score_error = 2 * 6e-8 * c.head_dim * c.score_range * c.score_range * a.scale;
  const double tolerance = 2e-6 + score_error;
  for (int i = 0; i < c.n_queries; ++i) {
    for (int h = 0; h < c.n_heads; ++h) {
      const float* qh = q.data() + i * a.q_stride + h * c.head_dim;
      const int64_t kv_offset = (h / group) * c.head_dim;
      const int visible = c.cross_keys > 0 ? c.cross_keys : c.n_past + i + 1;
      scores.assign(visible, 0.0);
      double max = -1e300;
      for (int j = 0; j < visible; ++j) {
        for (int d = 0; d < c.head_dim; ++d) {
          scores[j] += static_cast<double>(qh[d]) * k[j * a.kv_stride + kv_offset + d];
        }
        scores[j] *= a.scale;
        max = std::max(max, scores[j]);
      }
      double sum = 0.0;
      for (double& s : scores) sum += (s = std::exp(s - max));
      for (int d = 0; d < c.head_dim; ++d) {
        double expected = 0.0;
        for (int j = 0; j < visible; ++j)
          expected += scores[j] * v[j * a.kv_stride + kv_offset + d];
        expected /= sum;
        ASSERT_NEAR(out[i * a.out_stride + h * c.head_dim + d], expected, tolerance)
            << "query " << i << " head " << h << " dim " << d;
      }
    }
    for (int64_t col = c.n_heads * c.head_dim; col < a.out_stride; ++col) {
      ASSERT_EQ(out[i * a.out_stride + col], kSentinel);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, CpuAttentionTest,
    ::testing::Values(
        AttentionCase{5, 0, 2, 2, 8, 0, 0, 0, 1.0f},        // prefill from nothing, no GQA
        AttentionCase{3, 7, 8, 2, 64, 16, 8, 4, 1.0f},      // cached context, GQA 4, strides
        AttentionCase{90, 150, 4, 1, 32, 0, 3, 0, 4.0f},    // many key blocks, peaked scores
        AttentionCase{1, 300, 6, 3, 80, 0, 0, 0, 2.0f},     // decode, odd head_dim
        AttentionCase{40, 0, 4, 4, 128, 0, 0, 0, 8.0f},     // very peaked: rescale path
        AttentionCase{8, 5, 4, 4, 20, 0, 60, 0, 2.0f, 3},   // cross: fewer keys than queries
        AttentionCase{40, 0, 2, 1, 40, 3, 0, 5, 2.0f, 150}  // cross: many key blocks, GQA
        ));

// ---- Softmax ----

TEST_F(CpuBackendTest, SoftmaxMatchesReference) {
  const int rows = 70, cols = 1000;
  std::vector<float> x = Random(rows * cols, 50, -20.0f, 20.0f);
  for (int c = 0; c < cols; ++c) x[c] += 1000.0f;             // large logits must not overflow
  for (int c = 0; c < cols; c += 3) x[cols + c] = -INFINITY;  // masked entries
  const std::vector<float> x0 = x;
  backend_->Softmax(x.data(), rows, cols);
  for (int r = 0; r < rows; ++r) {
    double max = -1e300, sum = 0.0;
    for (int c = 0; c < cols; ++c) max = std::max(max, static_cast<double>(x0[r * cols + c]));
    for (int c = 0; c < cols; ++c) sum += std::exp(x0[r * cols + c] - max);
    for (int c = 0; c < cols; ++c) {
      const double shifted = x0[r * cols + c] - max;
      const double expected = std::exp(shifted) / sum;
      if (expected == 0.0) {  // masked
        ASSERT_EQ(x[r * cols + c], 0.0f) << r << "," << c;
        continue;
      }
      // Exp's 2 ulp and the float sum of 1000 terms (~1e-6), plus the float subtraction x - max,
      // which may round by half an ulp of the difference and so move e^(x - max) by as much.
      const double tolerance = (2e-6 + 6e-8 * std::fabs(shifted)) * expected + 1e-30;
      ASSERT_NEAR(x[r * cols + c], expected, tolerance) << r << "," << c;
    }
  }
}

TEST_F(CpuBackendTest, SoftmaxOfAllMaskedRowIsZeros) {
  std::vector<float> x = {-INFINITY, -INFINITY, -INFINITY, 0.0f, 0.0f, -INFINITY};
  backend_->Softmax(x.data(), 2, 3);
  EXPECT_EQ(x, (std::vector<float>{0.0f, 0.0f, 0.0f, 0.5f, 0.5f, 0.0f}));
}

// ---- elementwise ----

TEST_F(CpuBackendTest, SiluMulMatchesReferenceAndWorksInPlace) {
  const int64_t n = 100003;
  const std::vector<float> gate = Random(n, 60, -30.0f, 30.0f);
  const std::vector<float> up = Random(n, 61, -2.0f, 2.0f);
  std::vector<float> out(n);
  backend_->SiluMul(gate.data(), up.data(), out.data(), n);
  for (int64_t i = 0; i < n; ++i) {
    const double g = gate[i];
    const double expected = g / (1.0 + std::exp(-g)) * up[i];
    ASSERT_NEAR(out[i], expected, 1e-6 * std::fabs(expected) + 1e-30) << i;
  }
  std::vector<float> in_place = gate;
  backend_->SiluMul(in_place.data(), up.data(), in_place.data(), n);
  EXPECT_EQ(in_place, out);
  in_place = up;
  backend_->SiluMul(gate.data(), in_place.data(), in_place.data(), n);
  EXPECT_EQ(in_place, out);
}

TEST_F(CpuBackendTest, GeluMatchesErfFormAndWorksInPlace) {
  const int64_t n = 100003;
  const std::vector<float> x = Random(n, 65, -12.0f, 12.0f);
  std::vector<float> out(n);
  backend_->Gelu(x.data(), out.data(), n);
  for (int64_t i = 0; i < n; ++i) {
    const double v = x[i];
    // The float argument -x/sqrt(2) is rounded once; erfc's tail amplifies that rounding (by
    // about x^2), so the reference takes the same argument. Then the result is accurate relative
    // to its size everywhere, the far negative tail (|gelu| down to 1e-32) included.
    const float argument = x[i] * -0.70710678118654752f;
    const double expected = 0.5 * v * std::erfc(static_cast<double>(argument));
    ASSERT_NEAR(out[i], expected, 1e-6 * std::fabs(expected) + 1e-38) << x[i];
  }
  std::vector<float> known = {0.0f, 1.0f, -1.0f, 3.0f};
  backend_->Gelu(known.data(), known.data(), 4);  // in place
  EXPECT_EQ(known[0], 0.0f);
  EXPECT_NEAR(known[1], 0.8413447460685429, 1e-7);
  EXPECT_NEAR(known[2], -0.15865525393145707, 1e-7);
  EXPECT_NEAR(known[3], 2.995950245, 1e-6);
}

TEST_F(CpuBackendTest, AddIsExactAndWorksInPlace) {
  const int64_t n = 70001;
  const std::vector<float> a = Random(n, 70), b = Random(n, 71);
  std::vector<float> out(n);
  backend_->Add(a.data(), b.data(), out.data(), n);
  for (int64_t i = 0; i < n; ++i) ASSERT_EQ(out[i], a[i] + b[i]);
  std::vector<float> acc = a;
  backend_->Add(acc.data(), b.data(), acc.data(), n);
  EXPECT_EQ(acc, out);
}

TEST_F(CpuBackendTest, AddBiasAddsToEveryRowAndLeavesPadding) {
  for (auto [rows, cols] : {std::pair{3, 5}, std::pair{200, 300}}) {
    const int64_t ldy = cols + 2;
    std::vector<float> y = Random(rows * ldy, 80);
    for (int r = 0; r < rows; ++r) y[r * ldy + cols] = y[r * ldy + cols + 1] = kSentinel;
    const std::vector<float> y0 = y;
    const std::vector<float> bias = Random(cols, 81);
    backend_->AddBias(y.data(), ldy, bias.data(), rows, cols);
    for (int r = 0; r < rows; ++r) {
      for (int c = 0; c < cols; ++c) ASSERT_EQ(y[r * ldy + c], y0[r * ldy + c] + bias[c]);
      ASSERT_EQ(y[r * ldy + cols], kSentinel);
      ASSERT_EQ(y[r * ldy + cols + 1], kSentinel);
    }
  }
}

// ---- Embedding and Dequantize ----

// The value of binary16 bits, from the definition.
double RefF16(uint16_t h) {
  const int exponent = (h >> 10) & 0x1f, mantissa = h & 0x3ff;
  double value = exponent == 0    ? std::ldexp(mantissa, -24)
                 : exponent == 31 ? (mantissa ? NAN : INFINITY)
                                  : std::ldexp(1024 + mantissa, exponent - 25);
  return (h & 0x8000) ? -value : value;
}

double RefBF16(uint16_t h) {
  const uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

// Expects `got` to hold exactly the values `expected` (NaN where expected is NaN).
void ExpectSameValues(const std::vector<float>& got, const std::vector<double>& expected) {
  ASSERT_EQ(got.size(), expected.size());
  for (size_t i = 0; i < got.size(); ++i) {
    if (std::isnan(expected[i])) {
      ASSERT_TRUE(std::isnan(got[i])) << i;
    } else {
      ASSERT_EQ(static_cast<double>(got[i]), expected[i]) << i;
    }
  }
}

// y += W1 · hᵀ · W2 · x per row (W1 and W2 given transposed) with the row's own h, rows of negative
// groups untouched, row strides wider than the rows (padding untouched). Sizes for both the
// single-threaded and the OpenMP path, and the largest rank.
TEST_F(CpuBackendTest, LowRankUpdateMatchesDoubleReference) {
  struct Case {
    int rows, in, out, rank, rank_out, groups;
    int64_t ldx, ldy;
  };
  for (const Case& c : {Case{7, 5, 9, 3, 2, 3, 9, 12}, Case{130, 192, 96, 16, 16, 4, 200, 100},
                        Case{3, 40, 33, kMaxLowRank, kMaxLowRank, 2, 40, 35}}) {
    const std::vector<float> x = Random(static_cast<size_t>(c.rows) * c.ldx, 60);
    const std::vector<float> w2t = Random(static_cast<size_t>(c.in) * c.rank, 61);
    const std::vector<float> mats = Random(static_cast<size_t>(c.groups) * c.rank * c.rank_out, 62);
    const std::vector<float> w1t = Random(static_cast<size_t>(c.rank_out) * c.out, 63);
    std::vector<int32_t> group(c.rows);
    for (int i = 0; i < c.rows; ++i) group[i] = i % 5 == 3 ? -1 : (i * 7) % c.groups;
    const std::vector<float> y0 = Random(static_cast<size_t>(c.rows) * c.ldy, 64);
    std::vector<float> y = y0;
    LowRankUpdateArgs a;
    a.x = x.data();
    a.ldx = c.ldx;
    a.w2t = w2t.data();
    a.mats = mats.data();
    a.group = group.data();
    a.w1t = w1t.data();
    a.y = y.data();
    a.ldy = c.ldy;
    a.rows = c.rows;
    a.in = c.in;
    a.out = c.out;
    a.rank = c.rank;
    a.rank_out = c.rank_out;
    backend_->LowRankUpdate(a);
    for (int i = 0; i < c.rows; ++i) {
      std::vector<double> t(c.rank, 0.0), u(c.rank_out, 0.0);
      if (group[i] >= 0) {
        for (int j = 0; j < c.rank; ++j)
          for (int k = 0; k < c.in; ++k) t[j] += double{w2t[k * c.rank + j]} * x[i * c.ldx + k];
        const float* h = mats.data() + int64_t{group[i]} * c.rank * c.rank_out;
        for (int k = 0; k < c.rank_out; ++k)
          for (int j = 0; j < c.rank; ++j) u[k] += t[j] * h[j * c.rank_out + k];
      }
      for (int o = 0; o < c.ldy; ++o) {
        const float got = y[i * c.ldy + o];
        const float before = y0[i * c.ldy + o];
        if (o >= c.out || group[i] < 0) {
          ASSERT_EQ(got, before) << "untouched at " << i << "," << o;
          continue;
        }
        double ref = before;
        for (int k = 0; k < c.rank_out; ++k) ref += double{w1t[k * c.out + o]} * u[k];
        ASSERT_NEAR(got, ref, 1e-5 * c.in * c.rank) << i << "," << o;
      }
    }
  }
}

TEST_F(CpuBackendTest, EmbeddingOfF16RowsDecodesKnownBits) {
  const std::vector<uint16_t> table = {
      0x3c00, 0xc000, 0x0001, 0x7bff,  // 1, -2, 2^-24 (subnormal), 65504
      0x8000, 0x03ff, 0x0400, 0x3555,  // -0, largest subnormal, smallest normal, ~1/3
      0x7c00, 0xfc00, 0x7e00, 0x3800,  // inf, -inf, NaN, 0.5
  };
  const std::vector<int32_t> ids = {2, 0, 1, 0};
  std::vector<float> out(ids.size() * 4);
  backend_->Embedding(table.data(), DType::kF16, ids.data(), out.data(), 4, 4);
  ExpectSameValues(out, {INFINITY, -INFINITY, NAN, 0.5,                                 //
                         1.0, -2.0, 5.9604644775390625e-08, 65504.0,                    //
                         -0.0, 6.097555160522461e-05, 6.103515625e-05, 0.333251953125,  //
                         1.0, -2.0, 5.9604644775390625e-08, 65504.0});
  EXPECT_TRUE(std::signbit(out[8]));
}

TEST_F(CpuBackendTest, EmbeddingOfF32AndBF16Rows) {
  const std::vector<float> f32 = {1.0f, 2.0f, 3.0f, 4.0f, 5.0f, 6.0f};
  const std::vector<int32_t> ids = {1, 1, 0};
  std::vector<float> out(6);
  backend_->Embedding(f32.data(), DType::kF32, ids.data(), out.data(), 3, 2);
  EXPECT_EQ(out, (std::vector<float>{3.0f, 4.0f, 3.0f, 4.0f, 1.0f, 2.0f}));

  const std::vector<uint16_t> bf16 = {0x3f80, 0x4049, 0xbf80, 0x0001};
  const std::vector<int32_t> bf16_ids = {1, 0};
  std::vector<float> bf16_out(4);
  backend_->Embedding(bf16.data(), DType::kBF16, bf16_ids.data(), bf16_out.data(), 2, 2);
  ExpectSameValues(bf16_out, {-1.0, RefBF16(0x0001), 1.0, 3.140625});
}

// q8_0 table of `rows` rows of `dim` values: block b has scale f16 `scales[b % size]`, and
// quant j of block b is (b * 37 + j * 11) mod 256 as int8 (covers -128 and 127).
std::vector<uint8_t> MakeQ8_0(int64_t blocks, const std::vector<uint16_t>& scales) {
  std::vector<uint8_t> data(blocks * kQ8_0BlockBytes);
  for (int64_t b = 0; b < blocks; ++b) {
    uint8_t* block = data.data() + b * kQ8_0BlockBytes;
    const uint16_t scale = scales[b % scales.size()];
    block[0] = scale & 0xff;
    block[1] = scale >> 8;
    for (int j = 0; j < 32; ++j) block[2 + j] = static_cast<uint8_t>((b * 37 + j * 11) & 0xff);
  }
  return data;
}

double RefQ8_0(const std::vector<uint8_t>& data, int64_t i) {
  const uint8_t* block = data.data() + (i / 32) * kQ8_0BlockBytes;
  const double scale = static_cast<float>(RefF16(static_cast<uint16_t>(block[0] | block[1] << 8)));
  // The kernel multiplies in float: scale * q, each exactly representable, rounded once.
  return static_cast<float>(scale * static_cast<int8_t>(block[2 + i % 32]));
}

TEST_F(CpuBackendTest, EmbeddingOfQ8_0Rows) {
  const int rows = 3, dim = 64;  // two blocks per row
  const std::vector<uint8_t> table = MakeQ8_0(rows * 2, {0x3800, 0x2e66, 0xb400});
  const std::vector<int32_t> ids = {2, 0};
  std::vector<float> out(2 * dim);
  backend_->Embedding(table.data(), DType::kQ8_0, ids.data(), out.data(), 2, dim);
  std::vector<double> expected;
  for (int32_t id : ids) {
    for (int c = 0; c < dim; ++c) expected.push_back(RefQ8_0(table, id * dim + c));
  }
  ExpectSameValues(out, expected);
  EXPECT_EQ(out[dim], 0.5f * 0);  // row 0, block 0, j 0: quant 0
  EXPECT_EQ(out[dim + 1], 0.5f * 11);
}

TEST_F(CpuBackendTest, DequantizeEveryF16AndBF16BitPattern) {
  std::vector<uint16_t> all(65536);
  for (uint32_t h = 0; h < all.size(); ++h) all[h] = static_cast<uint16_t>(h);
  std::vector<float> out(all.size());
  std::vector<double> expected(all.size());

  backend_->Dequantize(all.data(), DType::kF16, out.data(), all.size());
  for (uint32_t h = 0; h < all.size(); ++h) expected[h] = RefF16(static_cast<uint16_t>(h));
  ExpectSameValues(out, expected);

  backend_->Dequantize(all.data(), DType::kBF16, out.data(), all.size());
  for (uint32_t h = 0; h < all.size(); ++h) expected[h] = RefBF16(static_cast<uint16_t>(h));
  ExpectSameValues(out, expected);
}

TEST_F(CpuBackendTest, DequantizeQ8_0AndF32) {
  const int64_t blocks = 2048 + 3;  // several parallel chunks and a partial one
  const std::vector<uint8_t> data = MakeQ8_0(blocks, {0x3800, 0x2e66, 0xb400, 0x0001, 0x7bff});
  std::vector<float> out(blocks * 32);
  backend_->Dequantize(data.data(), DType::kQ8_0, out.data(), blocks * 32);
  std::vector<double> expected(out.size());
  for (int64_t i = 0; i < blocks * 32; ++i) expected[i] = RefQ8_0(data, i);
  ExpectSameValues(out, expected);

  const std::vector<float> f32 = Random(40000, 90);
  std::vector<float> f32_out(f32.size());
  backend_->Dequantize(f32.data(), DType::kF32, f32_out.data(), f32.size());
  EXPECT_EQ(f32_out, f32);
}

TEST_F(CpuBackendTest, ThreadCountDoesNotChangeResults) {
  // Each row or element is computed by one thread, so results are bitwise the same whatever
  // the number of threads.
  std::unique_ptr<Backend> one = MakeCpuBackend(1);
  const int rows = 64, dim = 1024;
  const std::vector<float> x = Random(rows * dim, 100, -3.0f, 3.0f);
  const std::vector<float> w = Random(dim, 101);
  std::vector<float> a(x.size()), b(x.size());
  one->RmsNorm(x.data(), w.data(), a.data(), rows, dim, 1e-6f);
  backend_->RmsNorm(x.data(), w.data(), b.data(), rows, dim, 1e-6f);
  EXPECT_EQ(a, b);
  a = x;
  b = x;
  one->Softmax(a.data(), rows, dim);
  backend_->Softmax(b.data(), rows, dim);
  EXPECT_EQ(a, b);
}

}  // namespace
}  // namespace knowd
