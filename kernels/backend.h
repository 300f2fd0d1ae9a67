// The compute backend: one table of operations that the transformer and the adapter networks
// are written against once. kernels/cpu/ and kernels/cuda/ implement the same operations under
// the same names; tests compare each CUDA operation with its CPU twin.
//
// Conventions (every operation):
//  - Pointers are in the backend's memory (host memory for the CPU backend, device memory for
//    CUDA). Move data in and out with Upload/Download.
//  - Matrices are row-major, f32 unless a DType says otherwise. Shapes are in elements.
//  - Operations are enqueued in order on the backend's single stream; results are visible to
//    later operations on the same backend. Download() and Synchronize() wait for completion.
//  - A Backend is NOT thread-safe: one thread drives it at a time.
//  - Arguments are validated by callers (model/ checks shapes at load); kernels assume valid
//    shapes and non-overlapping outputs unless an operation says "in place".
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "kernels/dtype.h"

namespace knowd {

enum class BackendKind : uint8_t { kCpu, kCuda };

// How RoPE pairs the dimensions of a head. kInterleaved rotates (x[2i], x[2i+1]) — the order of
// Meta's checkpoints and GGUF "llama". kHalf rotates (x[i], x[i + head_dim/2]) — Hugging Face's
// rotate_half order (and GGUF "neox"). Frequencies are theta^(-2i/head_dim) in both.
enum class RopeStyle : uint8_t { kInterleaved, kHalf };

// Attention of one sequence's new queries over its cached keys/values.
// Causal (n_keys == 0): key/value rows [0, n_past) are earlier context (including an injected
// prefix); query i (0-based among the n_queries new tokens) sees key rows [0, n_past + i].
// Cross-attention (n_keys > 0): every query sees key rows [0, n_keys) and n_past is unused (the
// adapter networks' blocks, whose queries are learned slots, not tokens of the keys' sequence).
struct AttentionArgs {
  const float* q = nullptr;  // [n_queries, n_heads * head_dim]
  const float* k = nullptr;  // [n_past + n_queries, n_kv_heads * head_dim] (row stride kv_stride)
  const float* v = nullptr;  // same layout as k
  float* out = nullptr;      // [n_queries, n_heads * head_dim]
  int n_queries = 0;
  int n_past = 0;
  int n_heads = 0;
  int n_kv_heads = 0;  // n_heads % n_kv_heads == 0; head h reads kv head h / (n_heads / n_kv_heads)
  int head_dim = 0;
  int64_t q_stride = 0;   // floats between consecutive query rows (>= n_heads * head_dim)
  int64_t kv_stride = 0;  // floats between consecutive key/value rows (>= n_kv_heads * head_dim)
  int64_t out_stride = 0;
  float scale = 0.0f;  // usually 1/sqrt(head_dim)
  int n_keys = 0;      // > 0: cross-attention over exactly this many key rows (see above)
};

// Backend::LowRankUpdate's operands.
struct LowRankUpdateArgs {
  const float* x = nullptr;  // [rows, in], row stride ldx
  int64_t ldx = 0;
  const float* w2t = nullptr;      // W2 transposed: [in, rank]
  const float* mats = nullptr;     // [groups][rank][rank_out]
  const int32_t* group = nullptr;  // [rows]; negative: the row has no update
  const float* w1t = nullptr;      // W1 transposed: [rank_out, out]
  float* y = nullptr;              // [rows, out], row stride ldy; accumulated into
  int64_t ldy = 0;
  int rows = 0;
  int in = 0;
  int out = 0;
  int rank = 0;      // at most kMaxLowRank
  int rank_out = 0;  // at most kMaxLowRank
};
inline constexpr int kMaxLowRank = 256;

class Backend {
 public:
  virtual ~Backend() = default;

  virtual BackendKind kind() const = 0;
  virtual std::string name() const = 0;  // e.g. "cpu (2 threads, OpenBLAS)", "cuda:0 (H100)"

  // ---- memory ----
  // Returns `bytes` of backend memory (64-byte aligned), or nullptr when it cannot be had.
  virtual void* Alloc(size_t bytes) = 0;
  virtual void Free(void* ptr) = 0;
  virtual void Upload(void* dst, const void* host_src, size_t bytes) = 0;
  virtual void Download(void* host_dst, const void* src, size_t bytes) = 0;
  virtual void Copy(void* dst, const void* src, size_t bytes) = 0;  // within the backend
  virtual void Synchronize() = 0;

  // The first failure of an enqueued call since the backend was made (a CUDA launch, cuBLAS or
  // copy error; an Alloc failure is reported by its nullptr instead), or OK. Operations return
  // void so a model can enqueue many without checking each: check this after Synchronize() or
  // Download(). Once it is not OK the backend's results are undefined; discard the backend.
  // Always OK on the CPU backend.
  virtual absl::Status status() const { return absl::OkStatus(); }
  // Copies `rows` rows of `row_bytes` each between strided buffers of this backend.
  virtual void CopyRows(void* dst, size_t dst_stride_bytes, const void* src,
                        size_t src_stride_bytes, int rows, size_t row_bytes) {
    for (int r = 0; r < rows; ++r) {
      Copy(static_cast<char*>(dst) + r * dst_stride_bytes,
           static_cast<const char*>(src) + r * src_stride_bytes, row_bytes);
    }
  }

  // ---- operations ----
  // y[m, n] = x[m, k] · w[n, k]ᵀ (+ y when accumulate). w is a weight matrix in nn.Linear
  // layout. ldx/ldy are the row strides of x and y in floats (>= k and >= n).
  virtual void MatMul(const float* x, int64_t ldx, const float* w, float* y, int64_t ldy, int m,
                      int n, int k, bool accumulate) = 0;

  // MatMul with w held in `w_dtype` (any DType but kI32; for the block formats k is a multiple
  // of DTypeBlockSize(w_dtype), so each row is whole blocks). w is read in its own type and
  // dequantized block by block inside the kernel, never whole: y equals MatMul on the exactly
  // dequantized w up to f32 summation order, except that the CUDA backend multiplies f16 and
  // bf16 weights on the tensor cores after rounding x to the weights' type (fp32 accumulation).
  // kF32 is MatMul itself.
  virtual void MatMulTyped(const float* x, int64_t ldx, const void* w, DType w_dtype, float* y,
                           int64_t ldy, int m, int n, int k, bool accumulate) = 0;

  // A batched low-rank update of one linear layer (model/low_rank.h), fused:
  // y[i, :] += W1 · mats[group[i]]ᵀ · W2 · x[i, :] for rows i in [0, rows), i.e. per row
  // t = W2·x (rank), u[c] = Σ_j t[j]·h[j][c] (rank_out) with h = mats[group[i]], y += W1·u. A row
  // whose group is negative is left as it is. All pointers are backend memory.
  virtual void LowRankUpdate(const LowRankUpdateArgs& args) = 0;

  // y[r, :] = x[r, :] / sqrt(mean(x[r, :]²) + eps) * weight. In place allowed (y == x).
  virtual void RmsNorm(const float* x, const float* weight, float* y, int rows, int dim,
                       float eps) = 0;

  // Rotates, in place, each head of x[rows, n_heads * head_dim] by the position of its row.
  // positions[rows] is in backend memory.
  virtual void Rope(float* x, const int32_t* positions, int rows, int n_heads, int head_dim,
                    int64_t row_stride, float theta, RopeStyle style) = 0;

  // Softmax(q·kᵀ · scale) · v per head, fp32 accumulation, one pass (online softmax). The CUDA
  // backend supports head_dim <= 256 (every Llama-family model).
  virtual void Attention(const AttentionArgs& args) = 0;

  // Row-wise softmax, in place: x[rows, cols]. -inf entries get weight 0; a row of only -inf
  // becomes all zeros (not NaN).
  virtual void Softmax(float* x, int rows, int cols) = 0;

  // out[i] = silu(gate[i]) * up[i]. In place allowed (out == gate or out == up).
  virtual void SiluMul(const float* gate, const float* up, float* out, int64_t n) = 0;

  // out[i] = gelu(x[i]) = x[i] / 2 * (1 + erf(x[i] / sqrt(2))), the exact (erf) form. In place
  // allowed.
  virtual void Gelu(const float* x, float* out, int64_t n) = 0;

  // out[i] = a[i] + b[i]. In place allowed.
  virtual void Add(const float* a, const float* b, float* out, int64_t n) = 0;

  // y[r, c] += bias[c] for y[rows, cols] with row stride ldy.
  virtual void AddBias(float* y, int64_t ldy, const float* bias, int rows, int cols) = 0;

  // out[i, :] = dequantized row ids[i] of table[vocab, dim] (any DType but kI32).
  // ids[n] is in backend memory.
  virtual void Embedding(const void* table, DType dtype, const int32_t* ids, float* out, int n,
                         int dim) = 0;

  // dst[n] = src[n] converted to f32 (src of any DType but kI32).
  virtual void Dequantize(const void* src, DType dtype, float* dst, int64_t n) = 0;
};

// The CPU backend: oneDNN sgemm for f32 MatMul, the typed kernels of cpu/typed_kernels.h (chosen
// from CPUID) for weights in other types, OpenMP threads for the rest.
struct CpuOptions {
  int threads = 0;  // <= 0: one per core
  // Products of q8_0 and q4_0 weights with a few rows of x (decode) quantize x to int8 in blocks
  // of 32 and multiply in int8, as llama.cpp does: about twice as fast as f32 products, and the
  // logits then lie within about 0.2 of llama.cpp's rather than within 1e-5 of the exact
  // product's. false: every product in f32 from exactly dequantized weights.
  bool int8_activations = true;
};
std::unique_ptr<Backend> MakeCpuBackend(const CpuOptions& options);
std::unique_ptr<Backend> MakeCpuBackend(int threads = 0);

// The CUDA backend on `device`. Fails with FAILED_PRECONDITION when knowd was built without
// CUDA or no device is present, so callers (and GPU tests) can fall back or skip.
absl::StatusOr<std::unique_ptr<Backend>> MakeCudaBackend(int device = 0);

// True when knowd was built with the CUDA backend and a device is visible.
bool CudaAvailable();

}  // namespace knowd
