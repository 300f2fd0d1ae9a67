// kernels/peak.h: the measurements return plausible, finite figures. (Their speed is never
// asserted: tests do not judge wall-clock time.)
#include "kernels/peak.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>

#include "kernels/backend.h"

namespace knowd {
namespace {

TEST(PeakTest, SgemmPeakIsPositiveAndFinite) {
  const double gflops = MeasureSgemmPeakGflops(2);
  EXPECT_GT(gflops, 0.1);
  EXPECT_TRUE(std::isfinite(gflops));
}

TEST(PeakTest, MemoryBandwidthIsPositiveAndFinite) {
  const double gbs = MeasureMemoryBandwidthGBs(2);
  EXPECT_GT(gbs, 0.1);
  EXPECT_TRUE(std::isfinite(gbs));
}

// The device's bounds: plausible figures with a device, a reason without one.
TEST(PeakTest, CudaPeakIsPositiveOrSaysWhyNot) {
  absl::StatusOr<DevicePeak> peak = MeasureCudaPeak(0);
  if (!CudaAvailable()) {
    EXPECT_EQ(peak.status().code(), absl::StatusCode::kFailedPrecondition) << peak.status();
    return;
  }
  ASSERT_TRUE(peak.ok()) << peak.status();
  std::printf("cuda: sgemm %.0f GFLOP/s, copy %.0f GB/s\n", peak->sgemm_gflops,
              peak->bandwidth_gbs);
  EXPECT_GT(peak->sgemm_gflops, 1.0);
  EXPECT_GT(peak->bandwidth_gbs, 1.0);
  EXPECT_TRUE(std::isfinite(peak->sgemm_gflops) && std::isfinite(peak->bandwidth_gbs));
  EXPECT_EQ(MeasureCudaPeak(99).status().code(), absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace knowd
