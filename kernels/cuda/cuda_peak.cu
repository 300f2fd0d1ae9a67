// MeasureCudaPeak (kernels/peak.h), inside the CUDA module: cuBLAS sgemm throughput and
// device-memory copy bandwidth of one device, timed with CUDA events on a stream of its own.
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "kernels/backend.h"
#include "kernels/cuda/cuda_entry.h"
#include "kernels/peak.h"

namespace knowd {
namespace {

// Releases what the measurement allocated, whichever way it ends.
struct PeakResources {
  cudaStream_t stream = nullptr;
  cublasHandle_t blas = nullptr;
  cudaEvent_t start = nullptr, stop = nullptr;
  float* a = nullptr;
  float* b = nullptr;
  float* c = nullptr;
  void* copy_src = nullptr;
  void* copy_dst = nullptr;
  ~PeakResources() {
    if (stream != nullptr) cudaStreamSynchronize(stream);
    for (void* p : {static_cast<void*>(a), static_cast<void*>(b), static_cast<void*>(c), copy_src,
                    copy_dst}) {
      if (p != nullptr) cudaFree(p);
    }
    if (start != nullptr) cudaEventDestroy(start);
    if (stop != nullptr) cudaEventDestroy(stop);
    if (blas != nullptr) cublasDestroy(blas);
    if (stream != nullptr) cudaStreamDestroy(stream);
  }
};

absl::Status CudaFailed(cudaError_t err, const char* what) {
  cudaGetLastError();
  return absl::InternalError(
      absl::StrCat("measuring the CUDA peak: ", what, ": ", cudaGetErrorString(err)));
}

}  // namespace

namespace cuda {

absl::StatusOr<DevicePeak> MeasurePeak(int device) {
  absl::StatusOr<int> count = VisibleDevices();
  if (!count.ok()) return count.status();
  if (device < 0 || device >= *count) {
    return absl::FailedPreconditionError(absl::StrCat("CUDA device ", device, " is not present"));
  }
  PeakResources r;
  constexpr int kN = 4096;
  constexpr size_t kCopyBytes = size_t{512} << 20;
  const size_t matrix_bytes = sizeof(float) * kN * kN;
  cudaError_t err = cudaSetDevice(device);
  if (err == cudaSuccess) err = cudaStreamCreateWithFlags(&r.stream, cudaStreamNonBlocking);
  if (err == cudaSuccess) err = cudaEventCreate(&r.start);
  if (err == cudaSuccess) err = cudaEventCreate(&r.stop);
  if (err == cudaSuccess) err = cudaMalloc(reinterpret_cast<void**>(&r.a), matrix_bytes);
  if (err == cudaSuccess) err = cudaMalloc(reinterpret_cast<void**>(&r.b), matrix_bytes);
  if (err == cudaSuccess) err = cudaMalloc(reinterpret_cast<void**>(&r.c), matrix_bytes);
  if (err == cudaSuccess) err = cudaMalloc(&r.copy_src, kCopyBytes);
  if (err == cudaSuccess) err = cudaMalloc(&r.copy_dst, kCopyBytes);
  // Finite inputs: the GEMM's speed does not depend on the values, but NaNs would be noise.
  if (err == cudaSuccess) err = cudaMemsetAsync(r.a, 0, matrix_bytes, r.stream);
  if (err == cudaSuccess) err = cudaMemsetAsync(r.b, 0, matrix_bytes, r.stream);
  if (err == cudaSuccess) err = cudaMemsetAsync(r.copy_src, 0, kCopyBytes, r.stream);
  if (err != cudaSuccess) return CudaFailed(err, "setting up");
  if (cublasCreate(&r.blas) != CUBLAS_STATUS_SUCCESS ||
      cublasSetStream(r.blas, r.stream) != CUBLAS_STATUS_SUCCESS) {
    return absl::InternalError("measuring the CUDA peak: cannot start cuBLAS");
  }

  // Best of `repeats` timed runs of `body` (after one untimed run), in seconds.
  auto best_of = [&](int repeats, auto body) -> absl::StatusOr<double> {
    double best = 1e30;
    for (int i = 0; i <= repeats; ++i) {
      cudaEventRecord(r.start, r.stream);
      if (!body()) return absl::InternalError("measuring the CUDA peak: a timed call failed");
      cudaEventRecord(r.stop, r.stream);
      if (cudaError_t e = cudaEventSynchronize(r.stop); e != cudaSuccess) {
        return CudaFailed(e, "timing");
      }
      float ms = 0;
      cudaEventElapsedTime(&ms, r.start, r.stop);
      if (i > 0) best = std::min(best, ms / 1e3);
    }
    return best;
  };
  const float one = 1.0f, zero = 0.0f;
  absl::StatusOr<double> gemm_s = best_of(5, [&] {
    return cublasSgemm(r.blas, CUBLAS_OP_N, CUBLAS_OP_N, kN, kN, kN, &one, r.a, kN, r.b, kN, &zero,
                       r.c, kN) == CUBLAS_STATUS_SUCCESS;
  });
  if (!gemm_s.ok()) return gemm_s.status();
  absl::StatusOr<double> copy_s = best_of(5, [&] {
    return cudaMemcpyAsync(r.copy_dst, r.copy_src, kCopyBytes, cudaMemcpyDeviceToDevice,
                           r.stream) == cudaSuccess;
  });
  if (!copy_s.ok()) return copy_s.status();
  DevicePeak peak;
  peak.sgemm_gflops = 2.0 * kN * kN * kN / *gemm_s / 1e9;
  peak.bandwidth_gbs = 2.0 * kCopyBytes / *copy_s / 1e9;
  return peak;
}

}  // namespace cuda
}  // namespace knowd
