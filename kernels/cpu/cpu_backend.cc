// The CPU backend: OpenBLAS for MatMul, OpenMP-threaded loops for everything else. The
// per-element arithmetic of every operation comes from kernels/math.h, shared with the CUDA
// backend; this file only decides how the work is split and walked.
#include <cblas.h>
#include <dnnl.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/backend.h"
#include "kernels/cpu/typed_kernels.h"
#include "kernels/math.h"

namespace knowd {
namespace {

// Below this many elements an operation runs on the calling thread: waking the OpenMP team costs
// microseconds, more than the loop itself for decode-time vectors of a few thousand floats.
constexpr int64_t kParallelMin = int64_t{1} << 15;
constexpr int kSmallBatchRows = 16;                       // MatMul with 2..16 rows of x skips sgemm
constexpr int64_t kParallelMatMulMin = int64_t{1} << 17;  // m*n*k below this: one thread
// LowRankUpdate's multiply-adds below this: one thread (a prefill of 25 rows through rank-16
// factors of a 192-wide model ran as fast on one thread as on two).
constexpr int64_t kParallelLowRankMin = int64_t{1} << 19;
// Floats of one dequantized panel of w in MatMulTyped's prefill path: 128 KiB, so a panel stays
// in L2 while sgemm reads it.
constexpr int64_t kTypedPanelFloats = int64_t{1} << 15;

// Keys scored per online-softmax step of Attention: enough to amortise the rescale of the
// accumulators, few enough that the transposed block (head_dim × 64 floats) stays in L1.
constexpr int kAttentionBlock = 64;

// (query row, head) pairs per Attention task. They share each transposed key block, so more
// pairs amortise the transpose; 32 keeps their accumulators (32 × head_dim floats) in L1 and
// still gives prefill hundreds of tasks. Decode (one row) has one task per kv head.
constexpr int kAttentionPairsPerTile = 32;

// Below this many pairs per tile, scoring each key by a dot product beats transposing the block.
constexpr int kAttentionMinPairsToTranspose = 4;

// Elements per task of Dequantize (a multiple of every block size).
constexpr int64_t kDequantizeChunk = int64_t{1} << 14;

// oneDNN 2.6's sgemm splits its work for omp_get_max_threads() threads and computes only the
// shares of the threads it gets: under OMP_THREAD_LIMIT below that count (the sanitizer runs set
// 1) it silently leaves parts of y unwritten. So the calling thread's count is clamped to the
// limit before any product (the setting is per thread, and any thread may drive a backend).
void ClampOmpThreadsToLimit() {
  const int limit = omp_get_thread_limit();
  if (omp_get_max_threads() > limit) omp_set_num_threads(limit);
}

// Rows [begin, end) of w's n that share `part` of `parts` takes: boundaries on multiples of 16
// rows keep each share's rows cache-line aligned; the last share takes the rest.
std::pair<int, int> RowShare(int part, int parts, int n) {
  const int per = (n / 16 + parts - 1) / parts * 16;
  const int begin = std::min(n, part * per);
  return {begin, part == parts - 1 ? n : std::min(n, begin + per)};
}

// `floats` of scratch for the calling thread, kept between calls: MatMulTyped runs hundreds of
// times per second, and a fresh 128 KiB buffer each time is an mmap, page faults and a munmap.
float* ThreadScratch(int64_t floats) {
  thread_local std::vector<float> scratch;
  if (static_cast<int64_t>(scratch.size()) < floats) scratch.resize(static_cast<size_t>(floats));
  return scratch.data();
}

// Converts n consecutive elements of `src` to f32 on the calling thread (n a multiple of the
// dtype's block).
void DequantizeSpan(const void* src, DType dtype, float* dst, int64_t n) {
  cpu::BestTypedKernels().dequantize_rows(src, dtype, 1, n, dst);
}

template <RopeStyle kStyle>
void RotateHead(float* head, const float* cos_table, const float* sin_table, int head_dim) {
  const int pairs = head_dim / 2;
#pragma omp simd
  for (int p = 0; p < pairs; ++p) {
    int first, second;
    RopePairIndices(kStyle, p, head_dim, &first, &second);
    RopeRotate(&head[first], &head[second], cos_table[p], sin_table[p]);
  }
}

// Per-thread scratch of AttendTile.
struct AttentionScratch {
  std::vector<float> key_t;           // head_dim × kAttentionBlock: one key block, transposed
  std::vector<float> scores;          // kAttentionBlock
  std::vector<float> acc;             // one head_dim accumulator per (row, head) of the tile
  std::vector<OnlineSoftmax> states;  // one per (row, head) of the tile
};

// out[i] += Σ_r coef[r] · rows[r·stride + i] for i < len: four rows per sweep, so `out` is loaded
// and stored once per four rows and the inner loop vectorises without horizontal sums.
void AddWeightedRows(const float* coef, const float* rows, int64_t stride, int n_rows, int len,
                     float* out) {
  int r = 0;
  for (; r + 3 < n_rows; r += 4) {
    const float c0 = coef[r], c1 = coef[r + 1], c2 = coef[r + 2], c3 = coef[r + 3];
    const float* r0 = rows + r * stride;
    const float* r1 = r0 + stride;
    const float* r2 = r1 + stride;
    const float* r3 = r2 + stride;
#pragma omp simd
    for (int i = 0; i < len; ++i) out[i] += c0 * r0[i] + c1 * r1[i] + c2 * r2[i] + c3 * r3[i];
  }
  for (; r < n_rows; ++r) {
    const float c0 = coef[r];
    const float* r0 = rows + r * stride;
#pragma omp simd
    for (int i = 0; i < len; ++i) out[i] += c0 * r0[i];
  }
}

// scores[j] = q · key_j for the `count` keys of a transposed block (row d holds element d of
// every key): the query's elements weight the block's rows.
void ScoreBlock(const float* q, const float* key_t, int head_dim, int count, float* scores) {
  std::fill(scores, scores + count, 0.0f);
  AddWeightedRows(q, key_t, kAttentionBlock, head_dim, count, scores);
}

// out[r] = a · row r of b for four rows `stride` apart, n elements each: a is loaded once for the
// four, and their sums stay in registers.
void DotFourRows(const float* a, const float* b, int64_t stride, int n, float out[4]) {
  const float* b0 = b;
  const float* b1 = b0 + stride;
  const float* b2 = b1 + stride;
  const float* b3 = b2 + stride;
  float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
#pragma omp simd reduction(+ : s0, s1, s2, s3)
  for (int t = 0; t < n; ++t) {
    s0 += a[t] * b0[t];
    s1 += a[t] * b1[t];
    s2 += a[t] * b2[t];
    s3 += a[t] * b3[t];
  }
  out[0] = s0;
  out[1] = s1;
  out[2] = s2;
  out[3] = s3;
}

// scores[j] = q · key_j for `count` key rows starting at `k`, one dot product per key: cheaper
// than transposing the block when few (row, head) pairs share it (decode without GQA).
void ScoreRows(const float* q, const float* k, int64_t kv_stride, int head_dim, int count,
               float* scores) {
  int j = 0;
  for (; j + 4 <= count; j += 4) DotFourRows(q, k + j * kv_stride, kv_stride, head_dim, scores + j);
  for (; j < count; ++j) {
    const float* key = k + j * kv_stride;
    float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
    for (int d = 0; d < head_dim; ++d) dot += q[d] * key[d];
    scores[j] = dot;
  }
}

// acc += Σ_j weights[j] · value_j over `count` value rows starting at `v`.
void AccumulateValues(const float* weights, const float* v, int64_t kv_stride, int count,
                      int head_dim, float* acc) {
  AddWeightedRows(weights, v, kv_stride, count, head_dim, acc);
}

// Attention of query rows [row_begin, row_end) for the `group` heads that read kv head
// `kv_head`, in one pass over the keys (online softmax) with fp32 accumulation. Each block of
// keys is transposed once and then scored against every (row, head) pair of the tile, which
// amortises the transpose (tiles of very few pairs score by dot products instead).
void AttendTile(const AttentionArgs& a, int kv_head, int group, int row_begin, int row_end,
                AttentionScratch& scratch) {
  const int head_dim = a.head_dim;
  const int pairs = (row_end - row_begin) * group;
  scratch.key_t.resize(static_cast<size_t>(head_dim) * kAttentionBlock);
  scratch.scores.resize(kAttentionBlock);
  scratch.acc.assign(static_cast<size_t>(pairs) * head_dim, 0.0f);
  scratch.states.assign(pairs, OnlineSoftmax());
  float* key_t = scratch.key_t.data();
  float* scores = scratch.scores.data();
  const float* k = a.k + static_cast<int64_t>(kv_head) * head_dim;
  const float* v = a.v + static_cast<int64_t>(kv_head) * head_dim;
  const bool causal = a.n_keys <= 0;
  const int n_keys = causal ? a.n_past + row_end : a.n_keys;  // what the tile's last row sees
  const bool transpose = pairs >= kAttentionMinPairsToTranspose;

  for (int j0 = 0; j0 < n_keys; j0 += kAttentionBlock) {
    const int count = std::min(kAttentionBlock, n_keys - j0);
    const float* keys = k + static_cast<int64_t>(j0) * a.kv_stride;
    const float* values = v + static_cast<int64_t>(j0) * a.kv_stride;
    if (transpose) {
      for (int j = 0; j < count; ++j) {
        for (int d = 0; d < head_dim; ++d) {
          key_t[d * kAttentionBlock + j] = keys[j * a.kv_stride + d];
        }
      }
    }
    for (int i = row_begin; i < row_end; ++i) {
      const int visible = causal ? std::min(count, a.n_past + i + 1 - j0) : count;
      if (visible <= 0) continue;
      for (int g = 0; g < group; ++g) {
        const int pair = (i - row_begin) * group + g;
        const int h = kv_head * group + g;
        const float* q = a.q + i * a.q_stride + static_cast<int64_t>(h) * head_dim;
        if (transpose) {
          ScoreBlock(q, key_t, head_dim, visible, scores);
        } else {
          ScoreRows(q, keys, a.kv_stride, head_dim, visible, scores);
        }
        float block_max = -INFINITY;
#pragma omp simd reduction(max : block_max)
        for (int j = 0; j < visible; ++j) {
          scores[j] *= a.scale;
          block_max = scores[j] > block_max ? scores[j] : block_max;
        }
        OnlineSoftmax& state = scratch.states[pair];
        float* acc = scratch.acc.data() + static_cast<int64_t>(pair) * head_dim;
        const float factor = OnlineSoftmaxRaise(&state, block_max);
        if (factor != 1.0f) {
#pragma omp simd
          for (int d = 0; d < head_dim; ++d) acc[d] *= factor;
        }
        float block_sum = 0.0f;
#pragma omp simd reduction(+ : block_sum)
        for (int j = 0; j < visible; ++j) {
          scores[j] = OnlineSoftmaxWeight(state, scores[j]);
          block_sum += scores[j];
        }
        state.sum += block_sum;
        AccumulateValues(scores, values, a.kv_stride, visible, head_dim, acc);
      }
    }
  }

  for (int i = row_begin; i < row_end; ++i) {
    for (int g = 0; g < group; ++g) {
      const int pair = (i - row_begin) * group + g;
      const float norm = OnlineSoftmaxFinish(scratch.states[pair]);
      const float* acc = scratch.acc.data() + static_cast<int64_t>(pair) * head_dim;
      float* out = a.out + i * a.out_stride + static_cast<int64_t>(kv_head * group + g) * head_dim;
#pragma omp simd
      for (int d = 0; d < head_dim; ++d) out[d] = acc[d] * norm;
    }
  }
}

class CpuBackend final : public Backend {
 public:
  CpuBackend(int threads, bool int8_activations)
      : threads_(threads), int8_activations_(int8_activations) {
    openblas_set_num_threads(1);
  }

  BackendKind kind() const override { return BackendKind::kCpu; }
  std::string name() const override {
    return absl::StrCat("cpu (", threads_, " threads, ", cpu::BestTypedKernels().family,
                        " kernels, oneDNN sgemm", int8_activations_ ? ", int8 decode" : "", ")");
  }

  void* Alloc(size_t bytes) override {
    if (bytes > SIZE_MAX - 64) return nullptr;
    // aligned_alloc wants a size that is a multiple of the alignment, and a non-zero one so that
    // every successful call returns a distinct pointer.
    const size_t rounded = (std::max<size_t>(bytes, 1) + 63) / 64 * 64;
    return std::aligned_alloc(64, rounded);
  }
  void Free(void* ptr) override { std::free(ptr); }
  void Upload(void* dst, const void* host_src, size_t bytes) override {
    if (bytes > 0) std::memcpy(dst, host_src, bytes);
  }
  void Download(void* host_dst, const void* src, size_t bytes) override {
    if (bytes > 0) std::memcpy(host_dst, src, bytes);
  }
  void Copy(void* dst, const void* src, size_t bytes) override {
    if (bytes > 0) std::memmove(dst, src, bytes);
  }
  void Synchronize() override {}

  void MatMul(const float* x, int64_t ldx, const float* w, float* y, int64_t ldy, int m, int n,
              int k, bool accumulate) override {
    if (m <= 0 || n <= 0) return;
    if (k <= 0) {
      if (!accumulate) {
        for (int r = 0; r < m; ++r) std::fill(y + r * ldy, y + r * ldy + n, 0.0f);
      }
      return;
    }
    ClampOmpThreadsToLimit();
    // One thread pool only: OpenBLAS runs single-threaded inside our OpenMP threads, each thread
    // taking a block of w's rows (y's columns). Two pools (OpenBLAS's pthreads and OpenMP's)
    // on the same cores make each spin while the other works: on 2 cores that cost decode 15x.
    if (openblas_get_num_threads() != 1) openblas_set_num_threads(1);
    const int64_t work = int64_t{m} * n * k;
    const int blocks = work >= kParallelMatMulMin ? std::min(threads_, (n + 15) / 16) : 1;
#pragma omp parallel for num_threads(blocks) schedule(static) if (blocks > 1)
    for (int b = 0; b < blocks; ++b) {
      const auto [begin, end] = RowShare(b, blocks, n);
      if (begin < end)
        MatMulBlock(x, ldx, w + int64_t{begin} * k, y + begin, ldy, m, end - begin, k, accumulate);
    }
  }

  // Few rows of x (decode): each thread takes a share of w's rows, dequantizes one row at a time
  // into L1 and dots it with every row of x, so w is read once, in its own type; for q8_0 and
  // q4_0 (unless the options say otherwise) x is quantized to int8 once and the products are
  // integer ones, with no weight converted to float. More rows
  // (prefill): each thread dequantizes a panel of w's rows and multiplies it with oneDNN's sgemm;
  // the dequantization is then a small fraction of the 2·m flops each weight takes part in.
  void MatMulTyped(const float* x, int64_t ldx, const void* w, DType w_dtype, float* y, int64_t ldy,
                   int m, int n, int k, bool accumulate) override {
    if (w_dtype == DType::kF32 || k <= 0) {
      MatMul(x, ldx, static_cast<const float*>(w), y, ldy, m, n, k, accumulate);
      return;
    }
    if (m <= 0 || n <= 0) return;
    ClampOmpThreadsToLimit();
    const cpu::TypedKernels& kernels = cpu::BestTypedKernels();
    const int64_t row_bytes = DTypeBytes(w_dtype, k);
    const char* rows = static_cast<const char*>(w);
    if (m <= kSmallBatchRows) {
      const int64_t work = int64_t{m} * n * k;
      const int chunks = work >= kParallelMatMulMin ? std::min(threads_ * 4, (n + 15) / 16) : 1;
      if (int8_activations_ && cpu::HasInt8Products(w_dtype) && k % 32 == 0) {
        // x quantized once, by the calling thread, for every share of w's rows.
        thread_local std::vector<int8_t> codes;
        thread_local std::vector<float> scales;
        codes.resize(static_cast<size_t>(m) * k);
        scales.resize(static_cast<size_t>(m) * (k / 32));
        cpu::QuantizeActivations(x, ldx, m, k, codes.data(), scales.data());
        const int8_t* const codes_data = codes.data();
        const float* const scales_data = scales.data();
#pragma omp parallel for num_threads(std::min(threads_, chunks)) schedule(static) if (chunks > 1)
        for (int c = 0; c < chunks; ++c) {
          const auto [begin, end] = RowShare(c, chunks, n);
          if (begin < end) {
            kernels.dot_rows_int8(codes_data, scales_data, rows + begin * row_bytes, w_dtype,
                                  y + begin, ldy, m, end - begin, k, accumulate);
          }
        }
        return;
      }
#pragma omp parallel num_threads(std::min(threads_, chunks)) if (chunks > 1)
      {
        float* row = ThreadScratch(k);
#pragma omp for schedule(static)
        for (int c = 0; c < chunks; ++c) {
          const auto [begin, end] = RowShare(c, chunks, n);
          if (begin < end) {
            kernels.dot_rows(x, ldx, rows + begin * row_bytes, w_dtype, y + begin, ldy, m,
                             end - begin, k, accumulate, row);
          }
        }
      }
      return;
    }
    const int panel = static_cast<int>(std::clamp<int64_t>(kTypedPanelFloats / k, 16, 256));
    const int panels = (n + panel - 1) / panel;
#pragma omp parallel num_threads(std::min(threads_, panels)) if (panels > 1)
    {
      float* dequantized = ThreadScratch(int64_t{panel} * k);
#pragma omp for schedule(dynamic, 1)
      for (int p = 0; p < panels; ++p) {
        const int begin = p * panel;
        const int count = std::min(panel, n - begin);
        kernels.dequantize_rows(rows + begin * row_bytes, w_dtype, count, k, dequantized);
        dnnl_sgemm('N', 'T', m, count, k, 1.0f, x, ldx, dequantized, k, accumulate ? 1.0f : 0.0f,
                   y + begin, ldy);
      }
    }
  }

  void RmsNorm(const float* x, const float* weight, float* y, int rows, int dim,
               float eps) override {
#pragma omp parallel for num_threads(threads_) if (int64_t{rows} * dim >= kParallelMin)
    for (int r = 0; r < rows; ++r) {
      const float* in = x + static_cast<int64_t>(r) * dim;
      float* out = y + static_cast<int64_t>(r) * dim;
      float sum_squares = 0.0f;
#pragma omp simd reduction(+ : sum_squares)
      for (int c = 0; c < dim; ++c) sum_squares += in[c] * in[c];
      const float scale = RmsScale(sum_squares, dim, eps);
#pragma omp simd
      for (int c = 0; c < dim; ++c) out[c] = RmsApply(in[c], scale, weight[c]);
    }
  }

  void Rope(float* x, const int32_t* positions, int rows, int n_heads, int head_dim,
            int64_t row_stride, float theta, RopeStyle style) override {
    const int pairs = head_dim / 2;
    std::vector<double> inv_freq(pairs);
    for (int p = 0; p < pairs; ++p) inv_freq[p] = RopeInvFreq(p, head_dim, theta);
#pragma omp parallel num_threads(threads_) if (int64_t{rows} * n_heads * head_dim >= kParallelMin)
    {
      // The angles depend on (row, pair) only: computed once per row, applied to every head.
      std::vector<float> cos_table(pairs), sin_table(pairs);
#pragma omp for
      for (int r = 0; r < rows; ++r) {
        for (int p = 0; p < pairs; ++p) {
          RopeCosSinAt(positions[r], inv_freq[p], &cos_table[p], &sin_table[p]);
        }
        for (int h = 0; h < n_heads; ++h) {
          float* head = x + r * row_stride + static_cast<int64_t>(h) * head_dim;
          if (style == RopeStyle::kInterleaved) {
            RotateHead<RopeStyle::kInterleaved>(head, cos_table.data(), sin_table.data(), head_dim);
          } else {
            RotateHead<RopeStyle::kHalf>(head, cos_table.data(), sin_table.data(), head_dim);
          }
        }
      }
    }
  }

  void Attention(const AttentionArgs& a) override {
    const int group = a.n_heads / a.n_kv_heads;
    const int rows_per_tile = std::max(1, kAttentionPairsPerTile / group);
    const int tiles = (a.n_queries + rows_per_tile - 1) / rows_per_tile;
    const int64_t tasks = int64_t{tiles} * a.n_kv_heads;
    const int64_t keys = a.n_keys > 0 ? a.n_keys : a.n_past + a.n_queries;
    const int64_t work = int64_t{a.n_queries} * a.n_heads * keys * a.head_dim;
#pragma omp parallel num_threads(threads_) if (work >= kParallelMin)
    {
      thread_local AttentionScratch scratch;  // kept between calls: no allocation per step
      // Last tiles first: their rows see the most keys, so the dynamic schedule ends with short
      // tasks and the threads finish together.
#pragma omp for schedule(dynamic, 1)
      for (int64_t t = 0; t < tasks; ++t) {
        const int tile = tiles - 1 - static_cast<int>(t / a.n_kv_heads);
        const int kv_head = static_cast<int>(t % a.n_kv_heads);
        const int row_begin = tile * rows_per_tile;
        AttendTile(a, kv_head, group, row_begin, std::min(a.n_queries, row_begin + rows_per_tile),
                   scratch);
      }
    }
  }

  void Softmax(float* x, int rows, int cols) override {
#pragma omp parallel for num_threads(threads_) if (int64_t{rows} * cols >= kParallelMin)
    for (int r = 0; r < rows; ++r) {
      float* row = x + static_cast<int64_t>(r) * cols;
      float row_max = -INFINITY;
#pragma omp simd reduction(max : row_max)
      for (int c = 0; c < cols; ++c) row_max = row[c] > row_max ? row[c] : row_max;
      const float shift = SoftmaxShift(row_max);
      // The sum in double: a float SIMD reduction's error grows with cols / lanes (1.3e-5
      // relative over 32,000 columns with SSE's 4 lanes), the device's tree reduction's does not.
      double sum = 0.0;
#pragma omp simd reduction(+ : sum)
      for (int c = 0; c < cols; ++c) {
        row[c] = Exp(row[c] - shift);
        sum += row[c];
      }
      const float norm = SoftmaxNormalizer(static_cast<float>(sum));
#pragma omp simd
      for (int c = 0; c < cols; ++c) row[c] *= norm;
    }
  }

  // Four rows at a time: their t = x · W2ᵀ together (four independent chains of multiply-adds
  // along `in`, which one row alone would wait on), then per row u and y, all in L1 (t, u on the
  // stack, the last step's sums in a per-thread buffer of `out` floats), each step vectorised
  // along its output. Each element is summed in LowRankColumn's order. Rows are shared among the
  // threads when there are enough.
  void LowRankUpdate(const LowRankUpdateArgs& a) override {
    auto rows = [&a](int begin, int end) {
      constexpr int kBlock = 4;
      float t[kBlock][kMaxLowRank];
      float u[kMaxLowRank];
      std::vector<float> sums(a.out);
      for (int i0 = begin; i0 < end; i0 += kBlock) {
        const int n = std::min(kBlock, end - i0);
        if (n == 1) {
          LowRankColumns(a.x + i0 * a.ldx, a.w2t, a.in, a.rank, t[0]);
        } else {
          for (int r = 0; r < n; ++r) std::fill_n(t[r], a.rank, 0.0f);
          for (int k = 0; k < a.in; ++k) {
            const float* w = a.w2t + int64_t{k} * a.rank;
            for (int r = 0; r < n; ++r) {
              const float xk = a.x[(i0 + r) * a.ldx + k];
              float* tr = t[r];
#pragma omp simd
              for (int c = 0; c < a.rank; ++c) tr[c] += xk * w[c];
            }
          }
        }
        for (int r = 0; r < n; ++r) {
          const int32_t g = a.group[i0 + r];
          if (g < 0) continue;
          LowRankColumns(t[r], a.mats + int64_t{g} * a.rank * a.rank_out, a.rank, a.rank_out, u);
          LowRankColumns(u, a.w1t, a.rank_out, a.out, sums.data());
          float* y = a.y + (i0 + r) * a.ldy;
#pragma omp simd
          for (int o = 0; o < a.out; ++o) y[o] += sums[o];
        }
      }
    };
    const int64_t work = int64_t{a.rows} * (int64_t{a.rank} * a.in + int64_t{a.out} * a.rank_out);
    const int blocks = work >= kParallelLowRankMin ? std::min(threads_, a.rows) : 1;
    if (blocks == 1) {
      rows(0, a.rows);
      return;
    }
#pragma omp parallel for num_threads(blocks) schedule(static)
    for (int b = 0; b < blocks; ++b) {
      const auto [begin, end] = RowShare(b, blocks, a.rows);
      rows(begin, end);
    }
  }

  void SiluMul(const float* gate, const float* up, float* out, int64_t n) override {
#pragma omp parallel for simd num_threads(threads_) if (n >= kParallelMin)
    for (int64_t i = 0; i < n; ++i) out[i] = knowd::SiluMul(gate[i], up[i]);
  }

  void Gelu(const float* x, float* out, int64_t n) override {
#pragma omp parallel for simd num_threads(threads_) if (n >= kParallelMin)
    for (int64_t i = 0; i < n; ++i) out[i] = knowd::Gelu(x[i]);
  }

  void Add(const float* a, const float* b, float* out, int64_t n) override {
#pragma omp parallel for simd num_threads(threads_) if (n >= kParallelMin)
    for (int64_t i = 0; i < n; ++i) out[i] = a[i] + b[i];
  }

  void AddBias(float* y, int64_t ldy, const float* bias, int rows, int cols) override {
#pragma omp parallel for num_threads(threads_) if (int64_t{rows} * cols >= kParallelMin)
    for (int r = 0; r < rows; ++r) {
      float* row = y + r * ldy;
#pragma omp simd
      for (int c = 0; c < cols; ++c) row[c] += bias[c];
    }
  }

  void Embedding(const void* table, DType dtype, const int32_t* ids, float* out, int n,
                 int dim) override {
    const int64_t row_bytes = DTypeBytes(dtype, dim);
    const uint8_t* base = static_cast<const uint8_t*>(table);
#pragma omp parallel for num_threads(threads_) if (int64_t{n} * dim >= kParallelMin)
    for (int i = 0; i < n; ++i) {
      DequantizeSpan(base + ids[i] * row_bytes, dtype, out + static_cast<int64_t>(i) * dim, dim);
    }
  }

  void Dequantize(const void* src, DType dtype, float* dst, int64_t n) override {
    const int64_t chunks = (n + kDequantizeChunk - 1) / kDequantizeChunk;
    const uint8_t* base = static_cast<const uint8_t*>(src);
#pragma omp parallel for num_threads(threads_) if (n >= kParallelMin)
    for (int64_t c = 0; c < chunks; ++c) {
      const int64_t start = c * kDequantizeChunk;
      DequantizeSpan(base + DTypeBytes(dtype, start), dtype, dst + start,
                     std::min(kDequantizeChunk, n - start));
    }
  }

 private:
  static void MatMulBlock(const float* x, int64_t ldx, const float* w, float* y, int64_t ldy, int m,
                          int n, int k, bool accumulate) {
    if (m > 1 && m <= kSmallBatchRows) {
      SmallBatchMatMul(x, ldx, w, y, ldy, m, n, k, accumulate);
      return;
    }
    if (m == 1) {
      // OpenBLAS 0.3.21's sgemm does not hand m == 1 to gemv; its gemm path packs all of w for a
      // single row, which makes decode several times slower. y is zeroed by hand rather than
      // with beta = 0 because sgemv's scaling by 0 keeps NaNs of uninitialised memory.
      if (!accumulate) std::fill(y, y + n, 0.0f);
      cblas_sgemv(CblasRowMajor, CblasNoTrans, n, k, 1.0f, w, k, x, 1, 1.0f, y, 1);
      return;
    }
    // oneDNN's sgemm picks its JIT kernel from CPUID (AVX-512 where OpenBLAS, going by the CPU's
    // model name, may pick SSE3 or AVX2 ones); inside our OpenMP threads it runs single-threaded.
    dnnl_sgemm('N', 'T', m, n, k, 1.0f, x, ldx, w, k, accumulate ? 1.0f : 0.0f, y, ldy);
  }

  // Batched decode (a few rows of x): sgemm's packing costs more than the product, and the step
  // is bound by reading w once. Stream w four rows at a time, each against every row of x,
  // with four independent accumulators so the FMA units stay busy.
  static void SmallBatchMatMul(const float* x, int64_t ldx, const float* w, float* y, int64_t ldy,
                               int m, int n, int k, bool accumulate) {
    int j = 0;
    for (; j + 4 <= n; j += 4) {
      for (int i = 0; i < m; ++i) {
        float a[4];
        DotFourRows(x + i * ldx, w + int64_t{j} * k, k, k, a);
        float* yi = y + i * ldy + j;
        yi[0] = a[0] + (accumulate ? yi[0] : 0.0f);
        yi[1] = a[1] + (accumulate ? yi[1] : 0.0f);
        yi[2] = a[2] + (accumulate ? yi[2] : 0.0f);
        yi[3] = a[3] + (accumulate ? yi[3] : 0.0f);
      }
    }
    for (; j < n; ++j) {
      const float* wj = w + int64_t{j} * k;
      for (int i = 0; i < m; ++i) {
        const float* xi = x + i * ldx;
        float a = 0;
#pragma omp simd reduction(+ : a)
        for (int t = 0; t < k; ++t) a += xi[t] * wj[t];
        y[i * ldy + j] = a + (accumulate ? y[i * ldy + j] : 0.0f);
      }
    }
  }

  const int threads_;
  const bool int8_activations_;
};

}  // namespace

std::unique_ptr<Backend> MakeCpuBackend(const CpuOptions& options) {
  const int threads =
      options.threads > 0 ? options.threads : static_cast<int>(std::thread::hardware_concurrency());
  return std::make_unique<CpuBackend>(std::max(threads, 1), options.int8_activations);
}

std::unique_ptr<Backend> MakeCpuBackend(int threads) {
  return MakeCpuBackend(CpuOptions{.threads = threads});
}

}  // namespace knowd
