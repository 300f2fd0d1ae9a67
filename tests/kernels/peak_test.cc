// kernels/peak.h: the measurements return plausible, finite figures. (Their speed is never
// asserted: tests do not judge wall-clock time.)
#include "kernels/peak.h"

#include <gtest/gtest.h>

#include <cmath>

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

}  // namespace
}  // namespace knowd
