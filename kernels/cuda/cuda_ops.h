// Launchers of the CUDA kernels behind CudaBackend (private to kernels/cuda/). Each enqueues one
// kernel on `stream` and returns the launch's error (cudaSuccess when it was enqueued); an empty
// operation launches nothing. Arguments follow the matching Backend operation in backend.h.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/backend.h"
#include "kernels/dtype.h"

namespace knowd::cuda {

// Largest head_dim LaunchAttention supports: each lane of a warp keeps head_dim / 32 values of
// the output accumulator in registers.
inline constexpr int kMaxAttentionHeadDim = 256;

cudaError_t LaunchRmsNorm(cudaStream_t stream, const float* x, const float* weight, float* y,
                          int rows, int dim, float eps);
cudaError_t LaunchRope(cudaStream_t stream, float* x, const int32_t* positions, int rows,
                       int n_heads, int head_dim, int64_t row_stride, float theta, RopeStyle style);
cudaError_t LaunchAttention(cudaStream_t stream, const AttentionArgs& args);
cudaError_t LaunchSoftmax(cudaStream_t stream, float* x, int rows, int cols);
cudaError_t LaunchSiluMul(cudaStream_t stream, const float* gate, const float* up, float* out,
                          int64_t n);
cudaError_t LaunchGelu(cudaStream_t stream, const float* x, float* out, int64_t n);
cudaError_t LaunchAdd(cudaStream_t stream, const float* a, const float* b, float* out, int64_t n);
cudaError_t LaunchAddBias(cudaStream_t stream, float* y, int64_t ldy, const float* bias, int rows,
                          int cols);
cudaError_t LaunchLowRankUpdate(cudaStream_t stream, const LowRankUpdateArgs& args);
// `row_bytes` is DTypeBytes(dtype, dim), computed by the caller on the host.
cudaError_t LaunchEmbedding(cudaStream_t stream, const void* table, DType dtype, int64_t row_bytes,
                            const int32_t* ids, float* out, int n, int dim);
cudaError_t LaunchDequantize(cudaStream_t stream, const void* src, DType dtype, float* dst,
                             int64_t n);
// out[r * cols + c] = x[r * ldx + c] rounded to `dtype` (kF16 or kBF16, round to nearest even,
// kernels/math.h's F32ToF16 / F32ToBF16): the f32 rows of x packed as the half-precision operand
// of a tensor-core product.
cudaError_t LaunchToHalfRows(cudaStream_t stream, const float* x, int64_t ldx, DType dtype,
                             uint16_t* out, int rows, int cols);

}  // namespace knowd::cuda
