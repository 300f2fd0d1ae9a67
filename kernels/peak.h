// The machine's own bounds, measured in the running process, so that benchmarks can print each
// figure as a fraction of what this machine can do (DESIGN: "Performance is measured in
// benchmarks"). Each call takes about one second and uses `threads` threads; run them while the
// machine is otherwise idle. Not for use on a serving path.
#pragma once

#include <cstdint>

#include "absl/status/statusor.h"

namespace knowd {

// Best observed single-precision matrix-multiply throughput, in GFLOP/s (1e9 floating-point
// operations per second, counting a multiply-add as 2): the best of several timed calls of
// oneDNN's dnnl_sgemm (the CPU backend's MatMul, its JIT kernel chosen from CPUID) on square
// row-major matrices (2048×2048, or 1024×1024 on a machine too slow for that in ~1 s) on
// `threads` OpenMP threads. This is the compute roof for MatMul-bound work such as prefill.
double MeasureSgemmPeakGflops(int threads);

// Best observed memory read bandwidth, in GB/s (1e9 bytes per second): the best of several
// timed passes of a read-only float sum, split over `threads` OpenMP threads, over one buffer
// at least 8 times the last-level cache (and at least 256 MiB), so it measures DRAM rather than
// cache. Read-only because decode streams weights and writes almost nothing; a STREAM triad
// would also count write-allocate traffic. This is the roof for memory-bound work such as decode.
double MeasureMemoryBandwidthGBs(int threads);

// The bytes of the buffer MeasureMemoryBandwidthGBs reads (8 × the last-level cache, 256 MiB to
// 1 GiB), and the last-level cache it is sized from (sysconf; 32 MiB when the system does not
// say), for reports.
int64_t BandwidthBufferBytes();
int64_t LastLevelCacheBytes();

// The same two bounds for a CUDA device, for the CUDA backend's benchmarks: the best of several
// timed cuBLAS sgemm calls on 4096x4096 matrices in the backend's math mode (fp32, no TF32), and
// the device-memory bandwidth of a device-to-device copy of 512 MiB, counting the bytes read and
// written (HBM traffic). About a second. FAILED_PRECONDITION when knowd was built without CUDA or
// `device` is not present.
struct DevicePeak {
  double sgemm_gflops = 0;
  double bandwidth_gbs = 0;
};
absl::StatusOr<DevicePeak> MeasureCudaPeak(int device = 0);

}  // namespace knowd
