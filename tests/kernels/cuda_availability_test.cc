// The CUDA entry points on any machine: with no device (or no CUDA in the build) they refuse
// cleanly instead of crashing, so callers can fall back to the CPU.
#include <gtest/gtest.h>

#include <memory>

#include "absl/status/status.h"
#include "kernels/backend.h"

namespace knowd {
namespace {

TEST(CudaAvailabilityTest, MakeCudaBackendAgreesWithCudaAvailable) {
  absl::StatusOr<std::unique_ptr<Backend>> backend = MakeCudaBackend(0);
  if (CudaAvailable()) {
    ASSERT_TRUE(backend.ok()) << backend.status();
    EXPECT_EQ((*backend)->kind(), BackendKind::kCuda);
    EXPECT_TRUE((*backend)->status().ok());
  } else {
    ASSERT_FALSE(backend.ok());
    EXPECT_EQ(backend.status().code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_FALSE(backend.status().message().empty());
  }
}

TEST(CudaAvailabilityTest, MissingDeviceIndexIsRefused) {
  absl::StatusOr<std::unique_ptr<Backend>> backend = MakeCudaBackend(1 << 20);
  ASSERT_FALSE(backend.ok());
  EXPECT_EQ(backend.status().code(), absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace knowd
