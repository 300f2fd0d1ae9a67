// The table libknowd_cuda.so exports (kernels/cuda_module.h): the only symbol the module makes
// visible, so its copies of knowd's and the CUDA runtime's internals never interpose on knowd's.
#include "kernels/cuda_module.h"

#include "kernels/cuda/cuda_entry.h"

#ifndef KNOWD_VERSION
#error "KNOWD_VERSION must be defined for the CUDA module"
#endif

extern "C" __attribute__((visibility("default"))) const knowd::CudaModuleApi* knowd_cuda_module() {
  static const knowd::CudaModuleApi api = {
      .version = KNOWD_VERSION,
      .make_backend = &knowd::cuda::MakeBackend,
      .visible_devices = &knowd::cuda::VisibleDevices,
      .measure_peak = &knowd::cuda::MeasurePeak,
  };
  return &api;
}
