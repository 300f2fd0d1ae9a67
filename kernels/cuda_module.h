// The CUDA backend lives in a module of its own, libknowd_cuda.so, that knowd loads when a CUDA
// backend is asked for (cuda_loader.cc). knowd itself never links the CUDA runtime, so one build
// runs on machines without CUDA; the module, and the CUDA runtime it links, are installed only
// where a GPU is used (the knowd-cuda package). This is the one table the module exports.
#pragma once

#include <memory>

#include "absl/status/statusor.h"
#include "kernels/backend.h"
#include "kernels/peak.h"

namespace knowd {

// The module's file name, and the C symbol that returns its table.
inline constexpr char kCudaModuleFile[] = "libknowd_cuda.so";
inline constexpr char kCudaModuleSymbol[] = "knowd_cuda_module";

struct CudaModuleApi {
  // The knowd version the module was built with. The table passes C++ types (Status, Backend)
  // between the two, so the loader refuses a module of any other build version.
  const char* version;
  absl::StatusOr<std::unique_ptr<Backend>> (*make_backend)(int device);
  // OK with the number of visible devices, or why there is none.
  absl::StatusOr<int> (*visible_devices)();
  absl::StatusOr<DevicePeak> (*measure_peak)(int device);
};

// What the module's knowd_cuda_module() returns.
using CudaModuleEntry = const CudaModuleApi* (*)();

// Where the module was found and loaded from, or why it could not be (no file in the places
// searched, a dlopen error such as a missing libcudart, a version mismatch). Loads it once.
absl::StatusOr<const CudaModuleApi*> LoadCudaModule();

// The path LoadCudaModule loaded, or "" before a successful load.
std::string CudaModulePath();

}  // namespace knowd
