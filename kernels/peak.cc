#include "kernels/peak.h"

#include <dnnl.h>
#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <vector>

namespace knowd {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// Fills with small values so no sum overflows or goes subnormal (either would slow the FPU).
void FillSmall(std::vector<float>& v) {
  for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<float>(i % 17) * 0.01f - 0.08f;
}

// Seconds of one n×n×n sgemm, by oneDNN: the kernel the CPU backend's MatMul uses.
double TimeSgemm(int n, const float* a, const float* b, float* c) {
  const Clock::time_point start = Clock::now();
  dnnl_sgemm('N', 'T', n, n, n, 1.0f, a, n, b, n, 0.0f, c, n);
  return Seconds(start);
}

}  // namespace

double MeasureSgemmPeakGflops(int threads) {
  // oneDNN's OpenMP runtime runs an sgemm on omp_get_max_threads() threads.
  const int saved_threads = omp_get_max_threads();
  // At most OMP_THREAD_LIMIT: oneDNN computes only the shares of the threads it gets
  // (kernels/cpu/cpu_backend.cc).
  omp_set_num_threads(std::min(std::max(threads, 1), omp_get_thread_limit()));
  constexpr int kMaxN = 2048;
  std::vector<float> a(size_t{kMaxN} * kMaxN), b(a.size()), c(a.size());
  FillSmall(a);
  FillSmall(b);
  // Warm up (starts the OpenMP threads, faults in the pages) and pick the size: 2048 unless one
  // run of it would blow the ~1 s budget.
  const double small = TimeSgemm(1024, a.data(), b.data(), c.data());
  const int n = small * 8 < 0.3 ? kMaxN : 1024;
  const double flops = 2.0 * n * n * n;
  double best = 0.0;
  const Clock::time_point start = Clock::now();
  for (int run = 0; run < 10 && (run < 2 || Seconds(start) < 1.0); ++run) {
    const double seconds = TimeSgemm(n, a.data(), b.data(), c.data());
    best = std::max(best, flops / seconds * 1e-9);
  }
  omp_set_num_threads(saved_threads);
  return best;
}

int64_t LastLevelCacheBytes() {
  int64_t llc = sysconf(_SC_LEVEL3_CACHE_SIZE);
  if (llc <= 0) llc = sysconf(_SC_LEVEL2_CACHE_SIZE);
  return llc > 0 ? llc : int64_t{32} << 20;
}

int64_t BandwidthBufferBytes() {
  return std::min(std::max(8 * LastLevelCacheBytes(), int64_t{256} << 20), int64_t{1} << 30);
}

double MeasureMemoryBandwidthGBs(int threads) {
  threads = std::max(threads, 1);
  const int64_t bytes = BandwidthBufferBytes();
  const int64_t n = bytes / static_cast<int64_t>(sizeof(float));
  float* buffer = static_cast<float*>(std::aligned_alloc(64, static_cast<size_t>(bytes)));
  if (buffer == nullptr) return 0.0;
    // First touch by the same threads and split as the timed passes, so pages sit near the cores
    // that read them on NUMA machines.
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t i = 0; i < n; ++i) buffer[i] = static_cast<float>(i & 15) * 0.01f;

  double best = 0.0;
  volatile float sink = 0.0f;  // keeps the sums observable so the passes are not removed
  const Clock::time_point start = Clock::now();
  for (int pass = 0; pass < 50 && (pass < 3 || Seconds(start) < 1.0); ++pass) {
    const Clock::time_point pass_start = Clock::now();
    float total = 0.0f;
#pragma omp parallel for simd num_threads(threads) schedule(static) reduction(+ : total)
    for (int64_t i = 0; i < n; ++i) total += buffer[i];
    const double seconds = Seconds(pass_start);
    sink = sink + total;
    best = std::max(best, static_cast<double>(bytes) / seconds * 1e-9);
  }
  std::free(buffer);
  return best;
}

}  // namespace knowd
