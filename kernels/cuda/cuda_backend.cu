// The CUDA backend: cuBLAS sgemm for MatMul, tensor-core cublasGemmEx for f16 and bf16 weights,
// kernels/cuda/cuda_ops.cu for the rest, all on one stream per backend. Operations return void
// (backend.h), so a CUDA or cuBLAS error is kept as the backend's first error and reported by
// status().
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <memory>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "kernels/backend.h"
#include "kernels/cuda/cuda_entry.h"
#include "kernels/cuda/cuda_ops.h"

namespace knowd {
namespace {

class CudaBackend final : public Backend {
 public:
  CudaBackend(int device, std::string device_name, cudaStream_t stream, cublasHandle_t blas)
      : device_(device), device_name_(std::move(device_name)), stream_(stream), blas_(blas) {}

  ~CudaBackend() override {
    cudaSetDevice(device_);
    cudaStreamSynchronize(stream_);
    if (scratch_ != nullptr) cudaFree(scratch_);
    cublasDestroy(blas_);
    cudaStreamDestroy(stream_);
  }

  BackendKind kind() const override { return BackendKind::kCuda; }
  std::string name() const override {
    return absl::StrCat("cuda:", device_, " (", device_name_, ")");
  }
  absl::Status status() const override { return status_; }

  void* Alloc(size_t bytes) override {
    Activate();
    void* ptr = nullptr;
    if (cudaMalloc(&ptr, bytes == 0 ? 1 : bytes) != cudaSuccess) {
      // Running out of memory is answered by nullptr; clear it so the next launch's check does not
      // report it as that launch's failure.
      cudaGetLastError();
      return nullptr;
    }
    return ptr;  // cudaMalloc aligns to at least 256 bytes
  }

  void Free(void* ptr) override {
    if (ptr == nullptr) return;
    Activate();
    Check(cudaFree(ptr), "cudaFree");
  }

  // Synchronous: the caller may reuse host_src as soon as this returns.
  void Upload(void* dst, const void* host_src, size_t bytes) override {
    if (bytes == 0) return;
    Activate();
    Check(cudaMemcpyAsync(dst, host_src, bytes, cudaMemcpyHostToDevice, stream_), "upload");
    Check(cudaStreamSynchronize(stream_), "upload");
  }

  void Download(void* host_dst, const void* src, size_t bytes) override {
    if (bytes == 0) return;
    Activate();
    Check(cudaMemcpyAsync(host_dst, src, bytes, cudaMemcpyDeviceToHost, stream_), "download");
    Check(cudaStreamSynchronize(stream_), "download");
  }

  void Copy(void* dst, const void* src, size_t bytes) override {
    if (bytes == 0) return;
    Activate();
    Check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream_), "copy");
  }

  // One strided copy: the base class's row-by-row copies cost a call each (thousands per prefill
  // when the KV cache takes a prompt's rows).
  void CopyRows(void* dst, size_t dst_stride_bytes, const void* src, size_t src_stride_bytes,
                int rows, size_t row_bytes) override {
    if (rows <= 0 || row_bytes == 0) return;
    Activate();
    Check(cudaMemcpy2DAsync(dst, dst_stride_bytes, src, src_stride_bytes, row_bytes, rows,
                            cudaMemcpyDeviceToDevice, stream_),
          "copy rows");
  }

  void Synchronize() override {
    Activate();
    Check(cudaStreamSynchronize(stream_), "synchronize");
  }

  void MatMul(const float* x, int64_t ldx, const float* w, float* y, int64_t ldy, int m, int n,
              int k, bool accumulate) override {
    if (m <= 0 || n <= 0) return;
    Activate();
    if (k <= 0) {  // cuBLAS rejects lda = 0; the product of nothing is zero
      if (!accumulate) {
        Check(cudaMemset2DAsync(y, ldy * sizeof(float), 0, n * sizeof(float), m, stream_),
              "MatMul");
      }
      return;
    }
    // cuBLAS is column-major: row-major y[m, n] is column-major yᵀ[n, m], so compute
    // yᵀ = w · xᵀ, where w's row-major [n, k] storage read column-major is wᵀ (hence OP_T) and
    // x's row-major [m, k] storage read column-major is already xᵀ. Full fp32 (cuBLAS's default
    // math mode, no TF32) so results match the CPU backend.
    const float alpha = 1.0f;
    const float beta = accumulate ? 1.0f : 0.0f;
    CheckBlas(cublasSgemm(blas_, CUBLAS_OP_T, CUBLAS_OP_N, n, m, k, &alpha, w, k, x,
                          static_cast<int>(ldx), &beta, y, static_cast<int>(ldy)),
              "cublasSgemm");
  }

  void RmsNorm(const float* x, const float* weight, float* y, int rows, int dim,
               float eps) override {
    Activate();
    Check(cuda::LaunchRmsNorm(stream_, x, weight, y, rows, dim, eps), "RmsNorm");
  }

  void Rope(float* x, const int32_t* positions, int rows, int n_heads, int head_dim,
            int64_t row_stride, float theta, RopeStyle style) override {
    Activate();
    Check(
        cuda::LaunchRope(stream_, x, positions, rows, n_heads, head_dim, row_stride, theta, style),
        "Rope");
  }

  void Attention(const AttentionArgs& args) override {
    if (args.head_dim > cuda::kMaxAttentionHeadDim) {
      Fail(absl::InvalidArgumentError(
          absl::StrCat("CUDA Attention supports head_dim <= ", cuda::kMaxAttentionHeadDim, ", got ",
                       args.head_dim)));
      return;
    }
    Activate();
    Check(cuda::LaunchAttention(stream_, args), "Attention");
  }

  void Softmax(float* x, int rows, int cols) override {
    Activate();
    Check(cuda::LaunchSoftmax(stream_, x, rows, cols), "Softmax");
  }

  void SiluMul(const float* gate, const float* up, float* out, int64_t n) override {
    Activate();
    Check(cuda::LaunchSiluMul(stream_, gate, up, out, n), "SiluMul");
  }

  void Gelu(const float* x, float* out, int64_t n) override {
    Activate();
    Check(cuda::LaunchGelu(stream_, x, out, n), "Gelu");
  }

  void Add(const float* a, const float* b, float* out, int64_t n) override {
    Activate();
    Check(cuda::LaunchAdd(stream_, a, b, out, n), "Add");
  }

  void AddBias(float* y, int64_t ldy, const float* bias, int rows, int cols) override {
    Activate();
    Check(cuda::LaunchAddBias(stream_, y, ldy, bias, rows, cols), "AddBias");
  }

  void LowRankUpdate(const LowRankUpdateArgs& args) override {
    Activate();
    Check(cuda::LaunchLowRankUpdate(stream_, args), "LowRankUpdate");
  }

  void Embedding(const void* table, DType dtype, const int32_t* ids, float* out, int n,
                 int dim) override {
    Activate();
    Check(cuda::LaunchEmbedding(stream_, table, dtype, DTypeBytes(dtype, dim), ids, out, n, dim),
          "Embedding");
  }

  void Dequantize(const void* src, DType dtype, float* dst, int64_t n) override {
    Activate();
    Check(cuda::LaunchDequantize(stream_, src, dtype, dst, n), "Dequantize");
  }

  // f16 and bf16 weights: x is rounded to w's type (kernels/math.h's F32ToF16 / F32ToBF16) into
  // the scratch buffer, a chunk of its rows at a time, and multiplied by cublasGemmEx on the
  // tensor cores (half-precision products, exact in fp32, accumulated in fp32). The block formats:
  // tiles of w's rows are dequantized (the per-block math of kernels/math.h) into the scratch
  // buffer and multiplied by cuBLAS sgemm in full fp32. Either way device memory holds the weights
  // in their own type plus at most kScratchBytes.
  void MatMulTyped(const float* x, int64_t ldx, const void* w, DType w_dtype, float* y, int64_t ldy,
                   int m, int n, int k, bool accumulate) override {
    if (w_dtype == DType::kF32) {
      MatMul(x, ldx, static_cast<const float*>(w), y, ldy, m, n, k, accumulate);
      return;
    }
    if (m <= 0 || n <= 0) return;
    if (k <= 0) {
      MatMul(x, ldx, nullptr, y, ldy, m, n, k, accumulate);
      return;
    }
    if (w_dtype == DType::kF16 || w_dtype == DType::kBF16) {
      MatMulHalf(x, ldx, w, w_dtype, y, ldy, m, n, k, accumulate);
      return;
    }
    const int64_t tile_rows =
        std::max<int64_t>(1, std::min<int64_t>(n, kScratchBytes / sizeof(float) / k));
    float* tile = static_cast<float*>(Scratch(tile_rows * k * sizeof(float)));
    if (tile == nullptr) return;
    const int64_t row_bytes = DTypeBytes(w_dtype, k);
    for (int64_t begin = 0; begin < n; begin += tile_rows) {
      const int rows = static_cast<int>(std::min<int64_t>(tile_rows, n - begin));
      Dequantize(static_cast<const char*>(w) + begin * row_bytes, w_dtype, tile, int64_t{rows} * k);
      MatMul(x, ldx, tile, y + begin, ldy, m, rows, k, accumulate);
    }
  }

 private:
  // MatMulTyped for w of kF16 or kBF16 (m, n, k > 0). Rounding x to w's type costs it 11 (f16) or
  // 8 (bf16) significant bits, so results differ from the CPU's f32 x · f32 w by up to 2^-11 or
  // 2^-8 of Σ|x·w| (tests/kernels/gpu/cuda_twin_test.cc); in exchange the product runs on the
  // tensor cores. Layout as in MatMul: column-major yᵀ[n, rows] = w · xᵀ.
  void MatMulHalf(const float* x, int64_t ldx, const void* w, DType w_dtype, float* y, int64_t ldy,
                  int m, int n, int k, bool accumulate) {
    const int64_t chunk_rows =
        std::max<int64_t>(1, std::min<int64_t>(m, kScratchBytes / sizeof(uint16_t) / k));
    uint16_t* x_half = static_cast<uint16_t*>(Scratch(chunk_rows * k * sizeof(uint16_t)));
    if (x_half == nullptr) return;
    const cudaDataType type = w_dtype == DType::kBF16 ? CUDA_R_16BF : CUDA_R_16F;
    const float alpha = 1.0f;
    const float beta = accumulate ? 1.0f : 0.0f;
    for (int64_t begin = 0; begin < m; begin += chunk_rows) {
      const int rows = static_cast<int>(std::min<int64_t>(chunk_rows, m - begin));
      Check(cuda::LaunchToHalfRows(stream_, x + begin * ldx, ldx, w_dtype, x_half, rows, k),
            "MatMulTyped (x to half)");
      // CUBLAS_COMPUTE_32F keeps fp32 accumulation; CUBLAS_GEMM_DEFAULT picks tensor-core
      // kernels for half-precision inputs (falling back to others where strides or alignment
      // rule them out).
      CheckBlas(cublasGemmEx(blas_, CUBLAS_OP_T, CUBLAS_OP_N, n, rows, k, &alpha, w, type, k,
                             x_half, type, k, &beta, y + begin * ldy, CUDA_R_32F,
                             static_cast<int>(ldy), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                "cublasGemmEx");
    }
  }

  // MatMulTyped's scratch buffer of at least `bytes` (<= kScratchBytes, or one row's worth when
  // a single row needs more), grown on first use and kept; nullptr, with the backend failed, when
  // device memory runs out. Work enqueued earlier that still reads the old buffer is safe:
  // cudaFree waits for the device to finish with it.
  void* Scratch(int64_t bytes) {
    if (scratch_ != nullptr && scratch_bytes_ >= bytes) return scratch_;
    Free(scratch_);
    scratch_bytes_ = bytes;
    scratch_ = Alloc(static_cast<size_t>(bytes));
    if (scratch_ == nullptr) {
      scratch_bytes_ = 0;
      Fail(absl::ResourceExhaustedError(absl::StrCat(
          "out of device memory for MatMulTyped's scratch buffer (", bytes, " bytes)")));
    }
    return scratch_;
  }

  // The current device is per host thread, and any thread may drive the backend (one at a time).
  void Activate() { Check(cudaSetDevice(device_), "cudaSetDevice"); }

  void Fail(const absl::Status& status) { status_.Update(status); }  // keeps the first error

  void Check(cudaError_t err, const char* what) {
    if (err == cudaSuccess) return;
    Fail(absl::InternalError(absl::StrCat("cuda:", device_, " ", what, ": ", cudaGetErrorName(err),
                                          " (", cudaGetErrorString(err), ")")));
  }

  void CheckBlas(cublasStatus_t status, const char* what) {
    if (status == CUBLAS_STATUS_SUCCESS) return;
    Fail(absl::InternalError(absl::StrCat("cuda:", device_, " ", what, ": ",
                                          cublasGetStatusName(status), " (",
                                          cublasGetStatusString(status), ")")));
  }

  const int device_;
  const std::string device_name_;
  cudaStream_t stream_;
  cublasHandle_t blas_;
  absl::Status status_;
  // MatMulTyped's scratch: a dequantized tile of w or x rounded to half precision, 64 MiB at
  // most (unless one row of k floats is larger), grown on first use.
  static constexpr int64_t kScratchBytes = int64_t{64} << 20;
  void* scratch_ = nullptr;
  int64_t scratch_bytes_ = 0;
};

}  // namespace

namespace cuda {

// Number of visible devices, or the reason there are none usable (no driver, no device).
absl::StatusOr<int> VisibleDevices() {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    cudaGetLastError();  // not sticky: clear it so it does not surface at a later call
    return absl::FailedPreconditionError(
        absl::StrCat("no usable CUDA device: ", cudaGetErrorString(err)));
  }
  if (count == 0) return absl::FailedPreconditionError("no CUDA device is present");
  return count;
}

absl::StatusOr<std::unique_ptr<Backend>> MakeBackend(int device) {
  absl::StatusOr<int> count = VisibleDevices();
  if (!count.ok()) return count.status();
  if (device < 0 || device >= *count) {
    return absl::FailedPreconditionError(
        absl::StrCat("CUDA device ", device, " requested but ", *count, " present"));
  }
  cudaError_t err = cudaSetDevice(device);
  cudaDeviceProp prop;
  if (err == cudaSuccess) err = cudaGetDeviceProperties(&prop, device);
  cudaStream_t stream = nullptr;
  if (err == cudaSuccess) err = cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking);
  if (err != cudaSuccess) {
    cudaGetLastError();
    return absl::FailedPreconditionError(
        absl::StrCat("cannot use CUDA device ", device, ": ", cudaGetErrorString(err)));
  }
  cublasHandle_t blas = nullptr;
  cublasStatus_t blas_status = cublasCreate(&blas);
  if (blas_status == CUBLAS_STATUS_SUCCESS) blas_status = cublasSetStream(blas, stream);
  if (blas_status != CUBLAS_STATUS_SUCCESS) {
    if (blas != nullptr) cublasDestroy(blas);
    cudaStreamDestroy(stream);
    return absl::FailedPreconditionError(absl::StrCat("cannot start cuBLAS on CUDA device ", device,
                                                      ": ", cublasGetStatusString(blas_status)));
  }
  return std::unique_ptr<Backend>(
      std::make_unique<CudaBackend>(device, std::string(prop.name), stream, blas));
}

}  // namespace cuda
}  // namespace knowd
