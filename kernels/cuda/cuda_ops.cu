// CUDA kernels of CudaBackend. The per-element arithmetic is kernels/math.h's, the same
// functions the CPU backend calls; these kernels only map elements to threads and reduce.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "kernels/cuda/cuda_ops.h"
#include "kernels/math.h"

namespace knowd::cuda {
namespace {

constexpr int kWarp = 32;
constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kElementwiseThreads = 256;
constexpr int kRowThreads = 256;         // one block per row (RmsNorm, Softmax)
constexpr int kAttentionWarps = 4;       // warps per block; one warp per (query, head)
constexpr int64_t kMaxBlocks = 1 << 20;  // grid-stride loops cover the rest

__device__ float WarpSum(float v) {
  for (int offset = kWarp / 2; offset > 0; offset >>= 1) {
    v += __shfl_xor_sync(kFullMask, v, offset);
  }
  return v;
}

__device__ float WarpMax(float v) {
  for (int offset = kWarp / 2; offset > 0; offset >>= 1) {
    const float other = __shfl_xor_sync(kFullMask, v, offset);
    v = other > v ? other : v;
  }
  return v;
}

// Sum (kMax == false) or max (kMax == true) of `v` over the block; every thread gets the result.
// blockDim.x is a multiple of 32 and at most 1024.
template <bool kMax>
__device__ float BlockReduce(float v) {
  __shared__ float partial[kWarp];
  const int lane = threadIdx.x % kWarp;
  const int warp = threadIdx.x / kWarp;
  v = kMax ? WarpMax(v) : WarpSum(v);
  __syncthreads();  // a previous reduction of this block may still be reading `partial`
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  const int warps = blockDim.x / kWarp;
  const float identity = kMax ? -INFINITY : 0.0f;
  v = lane < warps ? partial[lane] : identity;
  return kMax ? WarpMax(v) : WarpSum(v);
}

int ElementwiseBlocks(int64_t n) {
  return static_cast<int>(
      std::min((n + kElementwiseThreads - 1) / kElementwiseThreads, kMaxBlocks));
}

__device__ int64_t GlobalThread() {
  return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}

__device__ int64_t GridThreads() { return static_cast<int64_t>(gridDim.x) * blockDim.x; }

__global__ void RmsNormKernel(const float* x, const float* weight, float* y, int dim, float eps) {
  const float* in = x + static_cast<int64_t>(blockIdx.x) * dim;
  float* out = y + static_cast<int64_t>(blockIdx.x) * dim;
  float sum_squares = 0.0f;
  for (int c = threadIdx.x; c < dim; c += blockDim.x) sum_squares += in[c] * in[c];
  const float scale = RmsScale(BlockReduce<false>(sum_squares), dim, eps);
  for (int c = threadIdx.x; c < dim; c += blockDim.x) out[c] = RmsApply(in[c], scale, weight[c]);
}

// One thread per (row, pair): the angle is computed once and applied to the pair in every head.
__global__ void RopeKernel(float* x, const int32_t* positions, int rows, int n_heads, int head_dim,
                           int64_t row_stride, float theta, RopeStyle style) {
  const int pairs = head_dim / 2;
  const int64_t total = static_cast<int64_t>(rows) * pairs;
  for (int64_t idx = GlobalThread(); idx < total; idx += GridThreads()) {
    const int64_t r = idx / pairs;
    const int p = static_cast<int>(idx % pairs);
    float c, s;
    RopeCosSin(positions[r], p, head_dim, theta, &c, &s);
    int first, second;
    RopePairIndices(style, p, head_dim, &first, &second);
    float* row = x + r * row_stride;
    for (int h = 0; h < n_heads; ++h) {
      float* head = row + static_cast<int64_t>(h) * head_dim;
      RopeRotate(&head[first], &head[second], c, s);
    }
  }
}

// One warp per (query row, head), one pass over the keys in blocks of 32: lane l scores key
// j0 + l, the warp raises the shared online-softmax state by the block's max, and then every
// lane adds the 32 weighted value rows to the head_dim / 32 output dimensions it owns
// (d = lane + 32 t), so value reads are coalesced. The query sits in shared memory because each
// lane reads all of it.
template <int kPerLane>
__global__ void AttentionKernel(AttentionArgs a) {
  extern __shared__ float q_shared[];
  const int lane = threadIdx.x % kWarp;
  const int warp = threadIdx.x / kWarp;
  const int64_t task = static_cast<int64_t>(blockIdx.x) * kAttentionWarps + warp;
  if (task >= static_cast<int64_t>(a.n_queries) * a.n_heads) return;  // whole warps leave
  const int i = static_cast<int>(task / a.n_heads);
  const int h = static_cast<int>(task % a.n_heads);
  const int group = a.n_heads / a.n_kv_heads;
  const int head_dim = a.head_dim;

  float* q = q_shared + warp * head_dim;
  const float* q_row = a.q + i * a.q_stride + static_cast<int64_t>(h) * head_dim;
  for (int d = lane; d < head_dim; d += kWarp) q[d] = q_row[d];
  __syncwarp();

  const int64_t kv_offset = static_cast<int64_t>(h / group) * head_dim;
  const float* k = a.k + kv_offset;
  const float* v = a.v + kv_offset;
  const int n_keys = a.n_keys > 0 ? a.n_keys : a.n_past + i + 1;  // cross-attention or causal

  OnlineSoftmax state;
  float acc[kPerLane];
#pragma unroll
  for (int t = 0; t < kPerLane; ++t) acc[t] = 0.0f;

  for (int j0 = 0; j0 < n_keys; j0 += kWarp) {
    const int j = j0 + lane;
    float score = -INFINITY;
    if (j < n_keys) {
      const float* key = k + static_cast<int64_t>(j) * a.kv_stride;
      float dot = 0.0f;
      for (int d = 0; d < head_dim; ++d) dot += q[d] * key[d];
      score = dot * a.scale;
    }
    // Every lane holds the same state: the max and the sum are warp-wide.
    const float factor = OnlineSoftmaxRaise(&state, WarpMax(score));
#pragma unroll
    for (int t = 0; t < kPerLane; ++t) acc[t] *= factor;
    const float weight = j < n_keys ? OnlineSoftmaxWeight(state, score) : 0.0f;
    state.sum += WarpSum(weight);
    const int count = min(kWarp, n_keys - j0);
    for (int jj = 0; jj < count; ++jj) {
      const float w = __shfl_sync(kFullMask, weight, jj);
      const float* value = v + static_cast<int64_t>(j0 + jj) * a.kv_stride;
#pragma unroll
      for (int t = 0; t < kPerLane; ++t) {
        const int d = lane + kWarp * t;
        if (d < head_dim) acc[t] += w * value[d];
      }
    }
  }

  const float norm = OnlineSoftmaxFinish(state);
  float* out = a.out + i * a.out_stride + static_cast<int64_t>(h) * head_dim;
#pragma unroll
  for (int t = 0; t < kPerLane; ++t) {
    const int d = lane + kWarp * t;
    if (d < head_dim) out[d] = acc[t] * norm;
  }
}

__global__ void SoftmaxKernel(float* x, int cols) {
  float* row = x + static_cast<int64_t>(blockIdx.x) * cols;
  float row_max = -INFINITY;
  for (int c = threadIdx.x; c < cols; c += blockDim.x) {
    row_max = row[c] > row_max ? row[c] : row_max;
  }
  const float shift = SoftmaxShift(BlockReduce<true>(row_max));
  float sum = 0.0f;
  for (int c = threadIdx.x; c < cols; c += blockDim.x) {
    row[c] = Exp(row[c] - shift);  // each thread rereads only its own elements below
    sum += row[c];
  }
  const float norm = SoftmaxNormalizer(BlockReduce<false>(sum));
  for (int c = threadIdx.x; c < cols; c += blockDim.x) row[c] *= norm;
}

__global__ void SiluMulKernel(const float* gate, const float* up, float* out, int64_t n) {
  for (int64_t i = GlobalThread(); i < n; i += GridThreads()) out[i] = SiluMul(gate[i], up[i]);
}

__global__ void GeluKernel(const float* x, float* out, int64_t n) {
  for (int64_t i = GlobalThread(); i < n; i += GridThreads()) out[i] = Gelu(x[i]);
}

__global__ void AddKernel(const float* a, const float* b, float* out, int64_t n) {
  for (int64_t i = GlobalThread(); i < n; i += GridThreads()) out[i] = a[i] + b[i];
}

__global__ void AddBiasKernel(float* y, int64_t ldy, const float* bias, int rows, int cols) {
  const int64_t total = static_cast<int64_t>(rows) * cols;
  for (int64_t idx = GlobalThread(); idx < total; idx += GridThreads()) {
    const int64_t r = idx / cols;
    const int c = static_cast<int>(idx % cols);
    y[r * ldy + c] += bias[c];
  }
}

// One block per row: its threads compute t = W2·x, then u = hᵀ·t, then y += W1·u, each step's
// elements shared among them through shared memory (the last step's reads of W1ᵀ coalesce). A row
// without an update returns at once (the whole block, so no thread misses a barrier).
__global__ void LowRankUpdateKernel(LowRankUpdateArgs a) {
  __shared__ float t[kMaxLowRank];
  __shared__ float u[kMaxLowRank];
  const int64_t i = blockIdx.x;
  const int32_t g = a.group[i];
  if (g < 0) return;
  const float* x = a.x + i * a.ldx;
  for (int j = threadIdx.x; j < a.rank; j += blockDim.x) {
    t[j] = LowRankColumn(x, a.w2t, a.in, a.rank, j);
  }
  __syncthreads();
  const float* h = a.mats + static_cast<int64_t>(g) * a.rank * a.rank_out;
  for (int c = threadIdx.x; c < a.rank_out; c += blockDim.x) {
    u[c] = LowRankColumn(t, h, a.rank, a.rank_out, c);
  }
  __syncthreads();
  float* y = a.y + i * a.ldy;
  for (int o = threadIdx.x; o < a.out; o += blockDim.x) {
    y[o] += LowRankColumn(u, a.w1t, a.rank_out, a.out, o);
  }
}

__global__ void EmbeddingKernel(const uint8_t* table, DType dtype, int64_t row_bytes,
                                const int32_t* ids, float* out, int n, int dim) {
  const int64_t total = static_cast<int64_t>(n) * dim;
  for (int64_t idx = GlobalThread(); idx < total; idx += GridThreads()) {
    const int64_t i = idx / dim;
    const int c = static_cast<int>(idx % dim);
    out[idx] = LoadAsF32(table + ids[i] * row_bytes, dtype, c);
  }
}

__global__ void DequantizeKernel(const void* src, DType dtype, float* dst, int64_t n) {
  for (int64_t i = GlobalThread(); i < n; i += GridThreads()) dst[i] = LoadAsF32(src, dtype, i);
}

template <bool kBF16>
__global__ void ToHalfRowsKernel(const float* x, int64_t ldx, uint16_t* out, int cols,
                                 int64_t total) {
  for (int64_t idx = GlobalThread(); idx < total; idx += GridThreads()) {
    const float v = x[(idx / cols) * ldx + idx % cols];
    out[idx] = kBF16 ? F32ToBF16(v) : F32ToF16(v);
  }
}

template <int kPerLane>
cudaError_t LaunchAttentionFor(cudaStream_t stream, const AttentionArgs& a) {
  const int64_t tasks = static_cast<int64_t>(a.n_queries) * a.n_heads;
  const int blocks = static_cast<int>((tasks + kAttentionWarps - 1) / kAttentionWarps);
  const size_t shared = sizeof(float) * kAttentionWarps * a.head_dim;
  AttentionKernel<kPerLane><<<blocks, kAttentionWarps * kWarp, shared, stream>>>(a);
  return cudaGetLastError();
}

}  // namespace

cudaError_t LaunchRmsNorm(cudaStream_t stream, const float* x, const float* weight, float* y,
                          int rows, int dim, float eps) {
  if (rows <= 0 || dim <= 0) return cudaSuccess;
  RmsNormKernel<<<rows, kRowThreads, 0, stream>>>(x, weight, y, dim, eps);
  return cudaGetLastError();
}

cudaError_t LaunchRope(cudaStream_t stream, float* x, const int32_t* positions, int rows,
                       int n_heads, int head_dim, int64_t row_stride, float theta,
                       RopeStyle style) {
  const int64_t total = static_cast<int64_t>(rows) * (head_dim / 2);
  if (total <= 0 || n_heads <= 0) return cudaSuccess;
  RopeKernel<<<ElementwiseBlocks(total), kElementwiseThreads, 0, stream>>>(
      x, positions, rows, n_heads, head_dim, row_stride, theta, style);
  return cudaGetLastError();
}

cudaError_t LaunchAttention(cudaStream_t stream, const AttentionArgs& a) {
  if (a.n_queries <= 0 || a.n_heads <= 0) return cudaSuccess;
  if (a.head_dim <= 0 || a.head_dim > kMaxAttentionHeadDim) return cudaErrorInvalidValue;
  if (a.head_dim <= 32) return LaunchAttentionFor<1>(stream, a);
  if (a.head_dim <= 64) return LaunchAttentionFor<2>(stream, a);
  if (a.head_dim <= 128) return LaunchAttentionFor<4>(stream, a);
  return LaunchAttentionFor<8>(stream, a);
}

cudaError_t LaunchSoftmax(cudaStream_t stream, float* x, int rows, int cols) {
  if (rows <= 0 || cols <= 0) return cudaSuccess;
  SoftmaxKernel<<<rows, kRowThreads, 0, stream>>>(x, cols);
  return cudaGetLastError();
}

cudaError_t LaunchSiluMul(cudaStream_t stream, const float* gate, const float* up, float* out,
                          int64_t n) {
  if (n <= 0) return cudaSuccess;
  SiluMulKernel<<<ElementwiseBlocks(n), kElementwiseThreads, 0, stream>>>(gate, up, out, n);
  return cudaGetLastError();
}

cudaError_t LaunchGelu(cudaStream_t stream, const float* x, float* out, int64_t n) {
  if (n <= 0) return cudaSuccess;
  GeluKernel<<<ElementwiseBlocks(n), kElementwiseThreads, 0, stream>>>(x, out, n);
  return cudaGetLastError();
}

cudaError_t LaunchAdd(cudaStream_t stream, const float* a, const float* b, float* out, int64_t n) {
  if (n <= 0) return cudaSuccess;
  AddKernel<<<ElementwiseBlocks(n), kElementwiseThreads, 0, stream>>>(a, b, out, n);
  return cudaGetLastError();
}

cudaError_t LaunchAddBias(cudaStream_t stream, float* y, int64_t ldy, const float* bias, int rows,
                          int cols) {
  const int64_t total = static_cast<int64_t>(rows) * cols;
  if (rows <= 0 || cols <= 0) return cudaSuccess;
  AddBiasKernel<<<ElementwiseBlocks(total), kElementwiseThreads, 0, stream>>>(y, ldy, bias, rows,
                                                                              cols);
  return cudaGetLastError();
}

cudaError_t LaunchLowRankUpdate(cudaStream_t stream, const LowRankUpdateArgs& args) {
  if (args.rows <= 0 || args.out <= 0) return cudaSuccess;
  LowRankUpdateKernel<<<args.rows, 128, 0, stream>>>(args);
  return cudaGetLastError();
}

cudaError_t LaunchEmbedding(cudaStream_t stream, const void* table, DType dtype, int64_t row_bytes,
                            const int32_t* ids, float* out, int n, int dim) {
  const int64_t total = static_cast<int64_t>(n) * dim;
  if (n <= 0 || dim <= 0) return cudaSuccess;
  EmbeddingKernel<<<ElementwiseBlocks(total), kElementwiseThreads, 0, stream>>>(
      static_cast<const uint8_t*>(table), dtype, row_bytes, ids, out, n, dim);
  return cudaGetLastError();
}

cudaError_t LaunchDequantize(cudaStream_t stream, const void* src, DType dtype, float* dst,
                             int64_t n) {
  if (n <= 0) return cudaSuccess;
  DequantizeKernel<<<ElementwiseBlocks(n), kElementwiseThreads, 0, stream>>>(src, dtype, dst, n);
  return cudaGetLastError();
}

cudaError_t LaunchToHalfRows(cudaStream_t stream, const float* x, int64_t ldx, DType dtype,
                             uint16_t* out, int rows, int cols) {
  const int64_t total = static_cast<int64_t>(rows) * cols;
  if (rows <= 0 || cols <= 0) return cudaSuccess;
  if (dtype == DType::kBF16) {
    ToHalfRowsKernel<true>
        <<<ElementwiseBlocks(total), kElementwiseThreads, 0, stream>>>(x, ldx, out, cols, total);
  } else {
    ToHalfRowsKernel<false>
        <<<ElementwiseBlocks(total), kElementwiseThreads, 0, stream>>>(x, ldx, out, cols, total);
  }
  return cudaGetLastError();
}

}  // namespace knowd::cuda
