// MakeCudaBackend, CudaAvailable and MeasureCudaPeak for every build: they load the CUDA module
// (kernels/cuda_module.h) on first use and call through its table. Without the module, or
// without a device, they refuse with FAILED_PRECONDITION and say why, so callers fall back to
// the CPU and GPU tests skip.
#include <dlfcn.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <system_error>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "kernels/backend.h"
#include "kernels/cuda_module.h"
#include "kernels/peak.h"

namespace knowd {
namespace {

namespace fs = std::filesystem;

// Where the module may be: $KNOWD_CUDA_MODULE when set; else beside an installed daemon
// (<prefix>/lib/knowd/bin/knowd loads <prefix>/lib/knowd/backends/libknowd_cuda.so); else, for
// a binary of the build tree, where the build wrote it.
std::vector<std::string> Candidates() {
  std::vector<std::string> paths;
  if (const char* env = std::getenv("KNOWD_CUDA_MODULE"); env != nullptr && *env != '\0') {
    paths.emplace_back(env);
    return paths;  // an explicit choice is the only one tried, so a wrong path is reported
  }
  std::error_code ec;
  const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (ec) return paths;
  const fs::path dir = exe.parent_path();
  // Installed (deploy/CMakeLists.txt): <prefix>/lib/knowd/bin/knowd; the module is the package
  // knowd-cuda's, or there is none: never the build tree's, even for a package unpacked there.
  if (dir.filename() == "bin" && dir.parent_path().filename() == "knowd") {
    paths.push_back((dir.parent_path() / "backends" / kCudaModuleFile).string());
    return paths;
  }
#ifdef KNOWD_CUDA_MODULE_BUILD_PATH
  paths.emplace_back(KNOWD_CUDA_MODULE_BUILD_PATH);
#endif
  return paths;
}

struct Loaded {
  absl::StatusOr<const CudaModuleApi*> api = absl::UnknownError("not loaded");
  std::string path;
};

Loaded Load() {
  Loaded loaded;
  const std::vector<std::string> candidates = Candidates();
  std::string found;
  for (const std::string& path : candidates) {
    if (access(path.c_str(), R_OK) == 0) {
      found = path;
      break;
    }
  }
  if (found.empty()) {
    const char* env = std::getenv("KNOWD_CUDA_MODULE");
    if (env != nullptr && *env != '\0') {
      loaded.api = absl::FailedPreconditionError(
          absl::StrCat("KNOWD_CUDA_MODULE names ", env, ", which cannot be read"));
    } else {
      loaded.api = absl::FailedPreconditionError(absl::StrCat(
#ifdef KNOWD_CUDA_MODULE_BUILD_PATH
          "the CUDA backend is not installed: no ", kCudaModuleFile, " at ",
          absl::StrJoin(candidates, " or "),
          " (install the knowd-cuda package, or set KNOWD_CUDA_MODULE to the module's path)"
#else
          "knowd was built without CUDA, and ",
          candidates.empty()
              ? std::string("no CUDA module is installed beside it")
              : absl::StrCat("no CUDA module is installed at ", absl::StrJoin(candidates, " or ")),
          " (install the knowd-cuda package, or set KNOWD_CUDA_MODULE to the module's path)"
#endif
          ));
    }
    return loaded;
  }
  // RTLD_LOCAL: the module's symbols (its own copies of knowd's kernels, the CUDA runtime's)
  // stay out of the global namespace. Never closed: CUDA tears down at exit.
  void* handle = dlopen(found.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (handle == nullptr) {
    const char* why = dlerror();
    loaded.api = absl::FailedPreconditionError(absl::StrCat(
        "cannot load the CUDA backend ", found, ": ", why != nullptr ? why : "unknown error",
        " (the module needs the CUDA runtime and cuBLAS it was built with on the library path)"));
    return loaded;
  }
  auto entry = reinterpret_cast<CudaModuleEntry>(dlsym(handle, kCudaModuleSymbol));
  const CudaModuleApi* api = entry != nullptr ? entry() : nullptr;
  if (api == nullptr) {
    loaded.api = absl::FailedPreconditionError(
        absl::StrCat(found, " is not a knowd CUDA module (no ", kCudaModuleSymbol, ")"));
    return loaded;
  }
  if (std::string(api->version) != KNOWD_VERSION) {
    loaded.api = absl::FailedPreconditionError(
        absl::StrCat("the CUDA module ", found, " is from knowd ", api->version, ", this is knowd ",
                     KNOWD_VERSION, "; install the matching knowd-cuda"));
    return loaded;
  }
  loaded.api = api;
  loaded.path = found;
  return loaded;
}

const Loaded& Module() {
  static const Loaded* const loaded = new Loaded(Load());
  return *loaded;
}

}  // namespace

absl::StatusOr<const CudaModuleApi*> LoadCudaModule() { return Module().api; }

std::string CudaModulePath() { return Module().path; }

absl::StatusOr<std::unique_ptr<Backend>> MakeCudaBackend(int device) {
  absl::StatusOr<const CudaModuleApi*> api = LoadCudaModule();
  if (!api.ok()) return api.status();
  return (*api)->make_backend(device);
}

bool CudaAvailable() {
  // The answer cannot change while the process runs (devices are not hot-plugged under a
  // running CUDA context), and asking the driver costs milliseconds the first time.
  static const bool available = [] {
    absl::StatusOr<const CudaModuleApi*> api = LoadCudaModule();
    return api.ok() && (*api)->visible_devices().ok();
  }();
  return available;
}

absl::StatusOr<DevicePeak> MeasureCudaPeak(int device) {
  absl::StatusOr<const CudaModuleApi*> api = LoadCudaModule();
  if (!api.ok()) return api.status();
  return (*api)->measure_peak(device);
}

}  // namespace knowd
