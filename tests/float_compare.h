// Comparing float results in tests: the largest element-wise difference, the largest magnitude.
#pragma once

#include <algorithm>
#include <cmath>
#include <span>

#include "gtest/gtest.h"

namespace knowd::testing {

// max |a[i] - b[i]| over the common length; a length mismatch is a test failure.
inline double MaxAbsDiff(std::span<const float> a, std::span<const float> b) {
  EXPECT_EQ(a.size(), b.size());
  double m = 0;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) {
    m = std::max(m, double(std::fabs(a[i] - b[i])));
  }
  return m;
}

// max |a[i]|, 0 for an empty span.
inline double MaxAbs(std::span<const float> a) {
  double m = 0;
  for (float v : a) m = std::max(m, double(std::fabs(v)));
  return m;
}

}  // namespace knowd::testing
