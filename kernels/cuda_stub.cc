// The CUDA entry points of a build without CUDA (KNOWD_HAVE_CUDA unset): no device is ever
// available, and asking for one says why, so callers and GPU tests fall back or skip.
#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/backend.h"
#include "kernels/peak.h"

namespace knowd {

absl::StatusOr<std::unique_ptr<Backend>> MakeCudaBackend(int /*device*/) {
  return absl::FailedPreconditionError("knowd was built without CUDA");
}

bool CudaAvailable() { return false; }

absl::StatusOr<DevicePeak> MeasureCudaPeak(int /*device*/) {
  return absl::FailedPreconditionError("knowd was built without CUDA");
}

}  // namespace knowd
