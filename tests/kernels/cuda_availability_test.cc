// The CUDA entry points on any machine: with no device (or no CUDA in the build) they refuse
// cleanly instead of crashing, so callers can fall back to the CPU. The CUDA kernels are a module
// loaded on first use (kernels/cuda_module.h); ctest runs each test in a process of its own, so
// each test here sees its own first load.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <cstdio>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "kernels/backend.h"
#include "kernels/cuda_module.h"

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

// A CUDA build writes the module and its binaries load it, device or not: the module links the
// CUDA runtime, knowd's binaries do not.
TEST(CudaModuleTest, ABuildWithCudaLoadsItsModule) {
#ifdef KNOWD_TEST_HAVE_CUDA
  absl::StatusOr<const CudaModuleApi*> api = LoadCudaModule();
  ASSERT_TRUE(api.ok()) << api.status();
  EXPECT_STREQ((*api)->version, KNOWD_VERSION);
  EXPECT_TRUE(absl::EndsWith(CudaModulePath(), "/backends/libknowd_cuda.so")) << CudaModulePath();
  // Without a device the module says why; with one it counts it.
  absl::StatusOr<int> devices = (*api)->visible_devices();
  EXPECT_EQ(devices.ok(), CudaAvailable()) << devices.status();
#else
  absl::StatusOr<const CudaModuleApi*> api = LoadCudaModule();
  ASSERT_FALSE(api.ok());
  EXPECT_TRUE(absl::StrContains(api.status().message(), "built without CUDA")) << api.status();
#endif
}

TEST(CudaModuleTest, AnExplicitPathThatIsMissingIsNamed) {
  ASSERT_EQ(setenv("KNOWD_CUDA_MODULE", "/nonexistent/libknowd_cuda.so", 1), 0);
  absl::StatusOr<std::unique_ptr<Backend>> backend = MakeCudaBackend(0);
  ASSERT_FALSE(backend.ok());
  EXPECT_EQ(backend.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(absl::StrContains(backend.status().message(), "/nonexistent/libknowd_cuda.so"))
      << backend.status();
  EXPECT_FALSE(CudaAvailable());
  EXPECT_EQ(CudaModulePath(), "");
}

TEST(CudaModuleTest, AFileThatIsNotAModuleIsRefused) {
  const std::string path = ::testing::TempDir() + "not_a_module.so";
  std::FILE* f = std::fopen(path.c_str(), "w");
  ASSERT_NE(f, nullptr);
  std::fputs("not an ELF file\n", f);
  std::fclose(f);
  ASSERT_EQ(setenv("KNOWD_CUDA_MODULE", path.c_str(), 1), 0);
  absl::StatusOr<DevicePeak> peak = MeasureCudaPeak(0);
  ASSERT_FALSE(peak.ok());
  EXPECT_EQ(peak.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(absl::StrContains(peak.status().message(), "cannot load the CUDA backend"))
      << peak.status();
  EXPECT_FALSE(CudaAvailable());
}

}  // namespace
}  // namespace knowd
