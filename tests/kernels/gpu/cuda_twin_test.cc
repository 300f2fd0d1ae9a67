// Every CUDA operation against its CPU twin on the same random inputs. The CPU backend is
// checked against double references (cpu_backend_test.cc) and both share kernels/math.h, so
// these tests look for indexing, striding and reduction errors; tolerances allow only for
// different summation orders. Each test skips itself when no CUDA device is present.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <random>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/backend.h"
#include "kernels/dtype.h"
#include "kernels/math.h"
#include "tests/kernels/random_weights.h"

namespace knowd {
namespace {

// The same bytes in the memory of both backends.
class TwinBuffer {
 public:
  template <typename T>
  TwinBuffer(Backend& cpu, Backend& gpu, const std::vector<T>& host)
      : cpu_(cpu), gpu_(gpu), bytes_(host.size() * sizeof(T)) {
    cpu_ptr_ = cpu_.Alloc(bytes_);
    gpu_ptr_ = gpu_.Alloc(bytes_);
    cpu_.Upload(cpu_ptr_, host.data(), bytes_);
    gpu_.Upload(gpu_ptr_, host.data(), bytes_);
  }
  TwinBuffer(const TwinBuffer&) = delete;
  TwinBuffer& operator=(const TwinBuffer&) = delete;
  ~TwinBuffer() {
    cpu_.Free(cpu_ptr_);
    gpu_.Free(gpu_ptr_);
  }

  template <typename T = float>
  T* on(Backend& backend) const {
    return static_cast<T*>(&backend == &cpu_ ? cpu_ptr_ : gpu_ptr_);
  }

  std::vector<float> Floats(Backend& backend) const {
    std::vector<float> out(bytes_ / sizeof(float));
    backend.Download(out.data(), on(backend), bytes_);
    return out;
  }

 private:
  Backend& cpu_;
  Backend& gpu_;
  size_t bytes_;
  void* cpu_ptr_ = nullptr;
  void* gpu_ptr_ = nullptr;
};

class CudaTwinTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!CudaAvailable()) GTEST_SKIP() << "no CUDA device";
    absl::StatusOr<std::unique_ptr<Backend>> gpu = MakeCudaBackend(0);
    ASSERT_TRUE(gpu.ok()) << gpu.status();
    gpu_ = *std::move(gpu);
    // The exact products: the GPU does not quantize activations.
    cpu_ = MakeCpuBackend(CpuOptions{.int8_activations = false});
  }

  void TearDown() override {
    if (gpu_ != nullptr) {
      EXPECT_TRUE(gpu_->status().ok()) << gpu_->status();
    }
  }

  // Runs `op` on both backends, then expects the buffer `out` to agree within
  // rel * |cpu| + abs, element by element (NaN and infinities must match exactly).
  template <typename Op>
  void ExpectTwins(const TwinBuffer& out, Op op, double rel, double abs) {
    op(*cpu_);
    op(*gpu_);
    const std::vector<float> expected = out.Floats(*cpu_);
    const std::vector<float> got = out.Floats(*gpu_);
    ASSERT_TRUE(gpu_->status().ok()) << gpu_->status();
    ASSERT_EQ(got.size(), expected.size());
    for (size_t i = 0; i < got.size(); ++i) {
      if (!std::isfinite(expected[i])) {
        ASSERT_TRUE(std::isnan(expected[i]) ? std::isnan(got[i]) : got[i] == expected[i]) << i;
      } else {
        ASSERT_NEAR(got[i], expected[i], rel * std::fabs(expected[i]) + abs) << "at " << i;
      }
    }
  }

  std::unique_ptr<Backend> cpu_;
  std::unique_ptr<Backend> gpu_;
};

TEST_F(CudaTwinTest, NameAndCopies) {
  EXPECT_EQ(gpu_->kind(), BackendKind::kCuda);
  EXPECT_EQ(gpu_->name().rfind("cuda:0", 0), 0u) << gpu_->name();
  const std::vector<float> host = Random<float>(1000, 1);
  TwinBuffer a(*cpu_, *gpu_, host);
  TwinBuffer b(*cpu_, *gpu_, std::vector<float>(1000, 0.0f));
  gpu_->Copy(b.on(*gpu_), a.on(*gpu_), 1000 * sizeof(float));
  gpu_->Synchronize();
  EXPECT_EQ(b.Floats(*gpu_), host);
}

TEST_F(CudaTwinTest, CopyRowsBetweenStrides) {
  // 7 rows of 5 floats from a source with rows of 9 into a destination with rows of 6 (the KV
  // cache taking a prompt's key rows out of the qkv rows); the rest of the destination stays.
  TwinBuffer src(*cpu_, *gpu_, Random<float>(7 * 9, 5));
  TwinBuffer dst(*cpu_, *gpu_, Random<float>(7 * 6, 6));
  ExpectTwins(
      dst,
      [&](Backend& b) {
        b.CopyRows(dst.on(b), 6 * sizeof(float), src.on(b) + 2, 9 * sizeof(float), 7,
                   5 * sizeof(float));
      },
      0.0, 0.0);
}

TEST_F(CudaTwinTest, MatMul) {
  struct Case {
    int m, n, k;
    int64_t ldx, ldy;
    bool accumulate;
  };
  for (const Case& c : {Case{1, 300, 257, 257, 300, false}, Case{1, 300, 257, 260, 304, true},
                        Case{17, 19, 33, 40, 23, false}, Case{64, 512, 384, 390, 520, true},
                        Case{3, 5, 0, 1, 7, false}}) {
    TwinBuffer x(*cpu_, *gpu_, Random<float>(c.m * c.ldx, 10));
    TwinBuffer w(*cpu_, *gpu_, Random<float>(static_cast<size_t>(c.n) * c.k, 11));
    TwinBuffer y(*cpu_, *gpu_, Random<float>(c.m * c.ldy, 12));
    ExpectTwins(
        y,
        [&](Backend& b) {
          b.MatMul(x.on(b), c.ldx, w.on(b), y.on(b), c.ldy, c.m, c.n, c.k, c.accumulate);
        },
        1e-5, 1e-5);
  }
}

TEST_F(CudaTwinTest, RmsNorm) {
  const int rows = 33, dim = 2048;
  TwinBuffer x(*cpu_, *gpu_, Random<float>(rows * dim, 20, -3.0f, 3.0f));
  TwinBuffer w(*cpu_, *gpu_, Random<float>(dim, 21));
  TwinBuffer y(*cpu_, *gpu_, std::vector<float>(rows * dim));
  ExpectTwins(
      y, [&](Backend& b) { b.RmsNorm(x.on(b), w.on(b), y.on(b), rows, dim, 1e-5f); }, 1e-5, 1e-7);
  // In place.
  ExpectTwins(
      x, [&](Backend& b) { b.RmsNorm(x.on(b), w.on(b), x.on(b), rows, dim, 1e-5f); }, 1e-5, 1e-7);
}

TEST_F(CudaTwinTest, RopeBothStyles) {
  const int rows = 50, n_heads = 5, head_dim = 128;
  const int64_t row_stride = n_heads * head_dim + 7;
  std::vector<int32_t> positions(rows);
  for (int r = 0; r < rows; ++r) positions[r] = (r * 7919) % 30000;
  TwinBuffer pos(*cpu_, *gpu_, positions);
  for (RopeStyle style : {RopeStyle::kInterleaved, RopeStyle::kHalf}) {
    TwinBuffer x(*cpu_, *gpu_, Random<float>(rows * row_stride, 30, -2.0f, 2.0f));
    ExpectTwins(
        x,
        [&](Backend& b) {
          b.Rope(x.on(b), pos.on<int32_t>(b), rows, n_heads, head_dim, row_stride, 500000.0f,
                 style);
        },
        1e-6, 1e-6);
  }
}

TEST_F(CudaTwinTest, Attention) {
  struct Case {
    int n_queries, n_past, n_heads, n_kv_heads, head_dim, pad;
    int cross_keys = 0;  // > 0: cross-attention over this many keys
  };
  for (const Case& c :
       {Case{5, 0, 2, 2, 8, 0}, Case{3, 7, 8, 2, 64, 8}, Case{90, 150, 4, 1, 32, 3},
        Case{1, 300, 6, 3, 80, 0}, Case{40, 20, 4, 4, 128, 4}, Case{7, 33, 4, 2, 256, 0},
        Case{8, 0, 4, 4, 20, 0, 3}, Case{40, 0, 2, 1, 40, 3, 150}}) {
    const int n_keys = c.cross_keys > 0 ? c.cross_keys : c.n_past + c.n_queries;
    AttentionArgs a;
    a.n_queries = c.n_queries;
    a.n_past = c.n_past;
    a.n_keys = c.cross_keys;
    a.n_heads = c.n_heads;
    a.n_kv_heads = c.n_kv_heads;
    a.head_dim = c.head_dim;
    a.q_stride = c.n_heads * c.head_dim + c.pad;
    a.kv_stride = c.n_kv_heads * c.head_dim + c.pad;
    a.out_stride = c.n_heads * c.head_dim + c.pad;
    a.scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
    // The backends sum q·k in different orders; each order errs by up to ~eps · Σ|q·k| per
    // score (q, k in [-3, 3]), which moves the softmax weights by as much relatively.
    const double score_error = 2 * 6e-8 * c.head_dim * 9.0 * a.scale;
    TwinBuffer q(*cpu_, *gpu_, Random<float>(c.n_queries * a.q_stride, 40, -3.0f, 3.0f));
    TwinBuffer k(*cpu_, *gpu_, Random<float>(n_keys * a.kv_stride, 41, -3.0f, 3.0f));
    TwinBuffer v(*cpu_, *gpu_, Random<float>(n_keys * a.kv_stride, 42));
    TwinBuffer out(*cpu_, *gpu_, std::vector<float>(c.n_queries * a.out_stride, -7.0f));
    ExpectTwins(
        out,
        [&](Backend& b) {
          AttentionArgs args = a;
          args.q = q.on(b);
          args.k = k.on(b);
          args.v = v.on(b);
          args.out = out.on(b);
          b.Attention(args);
        },
        1e-5, score_error + 2e-6);
  }
}

TEST_F(CudaTwinTest, Softmax) {
  const int rows = 20, cols = 32000;
  std::vector<float> x = Random<float>(rows * cols, 50, -20.0f, 20.0f);
  for (int c = 0; c < cols; c += 5) x[c] = -INFINITY;
  for (int c = 0; c < cols; ++c) x[cols + c] = -INFINITY;  // an all-masked row
  TwinBuffer buf(*cpu_, *gpu_, x);
  ExpectTwins(
      buf, [&](Backend& b) { b.Softmax(buf.on(b), rows, cols); }, 1e-5, 1e-12);
}

TEST_F(CudaTwinTest, Elementwise) {
  const int64_t n = 100003;
  TwinBuffer gate(*cpu_, *gpu_, Random<float>(n, 60, -30.0f, 30.0f));
  TwinBuffer up(*cpu_, *gpu_, Random<float>(n, 61));
  TwinBuffer out(*cpu_, *gpu_, std::vector<float>(n));
  ExpectTwins(
      out, [&](Backend& b) { b.SiluMul(gate.on(b), up.on(b), out.on(b), n); }, 1e-6, 0.0);
  ExpectTwins(
      out, [&](Backend& b) { b.Add(gate.on(b), up.on(b), out.on(b), n); }, 0.0, 0.0);
  ExpectTwins(
      out, [&](Backend& b) { b.Gelu(gate.on(b), out.on(b), n); }, 2e-6, 1e-37);
  const int rows = 70, cols = 300;
  const int64_t ldy = cols + 9;
  TwinBuffer y(*cpu_, *gpu_, Random<float>(rows * ldy, 62));
  TwinBuffer bias(*cpu_, *gpu_, Random<float>(cols, 63));
  ExpectTwins(
      y, [&](Backend& b) { b.AddBias(y.on(b), ldy, bias.on(b), rows, cols); }, 0.0, 0.0);
}

TEST_F(CudaTwinTest, LowRankUpdate) {
  // 37 rows over 3 states [16][12] (rows of group -1 untouched), with padded row strides; y starts
  // random so a row the kernel skips or overwrites shows.
  const int rows = 37, in = 70, out = 45, rank = 16, rank_out = 12, groups = 3;
  const int64_t ldx = 75, ldy = 50;
  std::vector<int32_t> group_host(rows);
  for (int i = 0; i < rows; ++i) group_host[i] = i % 4 == 1 ? -1 : (i * 5) % groups;
  TwinBuffer x(*cpu_, *gpu_, Random<float>(rows * ldx, 70));
  TwinBuffer w2t(*cpu_, *gpu_, Random<float>(in * rank, 71));
  TwinBuffer mats(*cpu_, *gpu_, Random<float>(static_cast<size_t>(groups) * rank * rank_out, 72));
  TwinBuffer w1t(*cpu_, *gpu_, Random<float>(rank_out * out, 73));
  TwinBuffer group(*cpu_, *gpu_, group_host);
  TwinBuffer y(*cpu_, *gpu_, Random<float>(rows * ldy, 74));
  ExpectTwins(
      y,
      [&](Backend& b) {
        LowRankUpdateArgs a;
        a.x = x.on(b);
        a.ldx = ldx;
        a.w2t = w2t.on(b);
        a.mats = mats.on(b);
        a.group = group.on<int32_t>(b);
        a.w1t = w1t.on(b);
        a.y = y.on(b);
        a.ldy = ldy;
        a.rows = rows;
        a.in = in;
        a.out = out;
        a.rank = rank;
        a.rank_out = rank_out;
        b.LowRankUpdate(a);
      },
      1e-4, 1e-3);  // |y| reaches ~40; the sums of 70 and 16 terms differ in order
}

TEST_F(CudaTwinTest, EmbeddingAndDequantizeOfEveryDType) {
  const int vocab = 50, dim = 256;  // rows of whole q4_K / q6_K super-blocks
  std::vector<uint16_t> half_bits(vocab * dim);
  for (size_t i = 0; i < half_bits.size(); ++i)
    half_bits[i] = static_cast<uint16_t>(i * 2654435761u >> 16);
  std::vector<uint8_t> q8(vocab * dim / kQ8_0BlockSize * kQ8_0BlockBytes);
  for (size_t i = 0; i < q8.size(); ++i) q8[i] = static_cast<uint8_t>(i * 40503u >> 3);
  for (size_t b = 0; b < q8.size(); b += kQ8_0BlockBytes) q8[b + 1] &= 0x3b;  // finite scales
  const std::vector<int32_t> id_values = {49, 0, 7, 7, 23};
  TwinBuffer ids(*cpu_, *gpu_, id_values);
  TwinBuffer f32(*cpu_, *gpu_, Random<float>(vocab * dim, 70));
  TwinBuffer halves(*cpu_, *gpu_, half_bits);
  TwinBuffer q8_0(*cpu_, *gpu_, q8);
  TwinBuffer q4_0(*cpu_, *gpu_, RandomBlocks(DType::kQ4_0, vocab * dim, 71));
  TwinBuffer q4_k(*cpu_, *gpu_, RandomBlocks(DType::kQ4_K, vocab * dim, 72));
  TwinBuffer q6_k(*cpu_, *gpu_, RandomBlocks(DType::kQ6_K, vocab * dim, 73));
  TwinBuffer out(*cpu_, *gpu_, std::vector<float>(vocab * dim));
  // Exact agreement for every type: the GPU converts one element at a time (LoadAsF32) and the
  // CPU a block at a time (the *DequantBlock functions), with the same products in the same
  // order. q4_K's d·scale·q − dmin·min may be fused into an FMA by one compiler and not the
  // other, but d·scale·q needs 11 + 6 + 4 significant bits, so it is exact either way and only
  // the subtraction rounds.
  const struct {
    DType dtype;
    const TwinBuffer* table;
  } tables[] = {{DType::kF32, &f32},   {DType::kF16, &halves}, {DType::kBF16, &halves},
                {DType::kQ8_0, &q8_0}, {DType::kQ4_0, &q4_0},  {DType::kQ4_K, &q4_k},
                {DType::kQ6_K, &q6_k}};
  for (const auto& t : tables) {
    SCOPED_TRACE(DTypeName(t.dtype));
    ExpectTwins(
        out,
        [&](Backend& b) {
          b.Embedding(t.table->on<void>(b), t.dtype, ids.on<int32_t>(b), out.on(b),
                      static_cast<int>(id_values.size()), dim);
        },
        0.0, 0.0);
    ExpectTwins(
        out,
        [&](Backend& b) { b.Dequantize(t.table->on<void>(b), t.dtype, out.on(b), vocab * dim); },
        0.0, 0.0);
  }
}

// MatMulTyped against the CPU backend's for every weight type, at decode (m = 1), small-batch and
// prefill (m = 64) sizes, with strided x and y and with accumulate. The tolerance of y[r, c] is
// a bound in terms of S = Σ_i |x[r, i]·w[c, i]| (+ |y[r, c]| when accumulating), w being the
// exactly dequantized weights (both backends dequantize to the same f32 values, see above):
//  - f32 and the block formats (f32 sgemm on the GPU; the CPU's dot products or sgemm):
//    16·2^-24·S. Both form the same products and sum them (with FMAs) in different orders. The
//    worst case of a k-term sum is about k·2^-24·S, but with random signs the error of any
//    order stays near 2^-24·S (the CPU backend alone: at most 2.7·2^-24·S against a double
//    reference on such data), so 16 leaves a wide margin while still catching any indexing
//    error (which moves y by about S / k = 2^-9·S or more).
//  - f16 and bf16 (tensor cores; x rounded to w's type, see cuda_backend.cu): 2^-11·S (f16) or
//    2^-8·S (bf16) for rounding x, since each product x·w then errs by at most that fraction
//    (the half-precision products themselves are exact in fp32), plus 2^-25·Σ|w| for the x
//    that land among f16's subnormals (absolute error up to half their spacing, 2^-25), plus
//    64·2^-24·S for the fp32 accumulation, looser than above because tensor cores may align
//    and add their partial products with truncation rather than round-to-nearest. Simulated on
//    the CPU (x rounded, then f32 products) on data like this, the error stays under a tenth of
//    the rounding term.
TEST_F(CudaTwinTest, MatMulTypedOfEveryWeightType) {
  const int n = 100, k = 512;  // k: whole q4_K / q6_K super-blocks
  const int64_t ldx = k + 3, ldy = n + 5;
  uint32_t seed = 80;
  for (DType dtype : {DType::kF32, DType::kF16, DType::kBF16, DType::kQ8_0, DType::kQ4_0,
                      DType::kQ4_K, DType::kQ6_K}) {
    SCOPED_TRACE(DTypeName(dtype));
    TwinBuffer w(*cpu_, *gpu_, RandomWeights(dtype, n, k, ++seed));
    std::vector<float> w_f32(static_cast<size_t>(n) * k);
    cpu_->Dequantize(w.on<void>(*cpu_), dtype, w_f32.data(), int64_t{n} * k);  // host memory
    double rounding = 0.0, subnormal = 0.0, accumulation = 16.0;
    if (dtype == DType::kF16) {
      rounding = std::ldexp(1.0, -11);
      subnormal = std::ldexp(1.0, -25);
      accumulation = 64.0;
    } else if (dtype == DType::kBF16) {
      rounding = std::ldexp(1.0, -8);
      accumulation = 64.0;
    }
    const double rel = rounding + accumulation * std::ldexp(1.0, -24);
    for (int m : {1, 8, 64}) {
      for (bool accumulate : {false, true}) {
        SCOPED_TRACE(testing::Message() << "m = " << m << ", accumulate = " << accumulate);
        const std::vector<float> x_host = Random<float>(m * ldx, ++seed);
        const std::vector<float> y_host = Random<float>(m * ldy, ++seed);
        TwinBuffer x(*cpu_, *gpu_, x_host);
        TwinBuffer y(*cpu_, *gpu_, y_host);
        for (Backend* b : {cpu_.get(), gpu_.get()}) {
          b->MatMulTyped(x.on(*b), ldx, w.on<void>(*b), dtype, y.on(*b), ldy, m, n, k, accumulate);
        }
        const std::vector<float> expected = y.Floats(*cpu_);
        const std::vector<float> got = y.Floats(*gpu_);
        ASSERT_TRUE(gpu_->status().ok()) << gpu_->status();
        for (int r = 0; r < m; ++r) {
          for (int c = 0; c < ldy; ++c) {
            const size_t at = static_cast<size_t>(r) * ldy + c;
            if (c >= n) {  // the padding of y's rows stays as it was
              ASSERT_EQ(got[at], y_host[at]) << "row " << r << " padding " << c;
              continue;
            }
            double s = accumulate ? std::fabs(y_host[at]) : 0.0, w_sum = 0.0;
            for (int i = 0; i < k; ++i) {
              const double wi = std::fabs(w_f32[static_cast<size_t>(c) * k + i]);
              s += std::fabs(x_host[static_cast<size_t>(r) * ldx + i]) * wi;
              w_sum += wi;
            }
            ASSERT_TRUE(std::isfinite(expected[at])) << "row " << r << " col " << c;
            ASSERT_NEAR(got[at], expected[at], rel * s + subnormal * w_sum)
                << "row " << r << " col " << c;
          }
        }
      }
    }
  }
}

}  // namespace
}  // namespace knowd
