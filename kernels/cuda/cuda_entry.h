// What the CUDA module implements behind its table (kernels/cuda_module.h); private to
// kernels/cuda/. Everyone else reaches these through MakeCudaBackend, CudaAvailable and
// MeasureCudaPeak, which load the module.
#pragma once

#include <memory>

#include "absl/status/statusor.h"
#include "kernels/backend.h"
#include "kernels/peak.h"

namespace knowd::cuda {

absl::StatusOr<std::unique_ptr<Backend>> MakeBackend(int device);
absl::StatusOr<int> VisibleDevices();
absl::StatusOr<DevicePeak> MeasurePeak(int device);

}  // namespace knowd::cuda
