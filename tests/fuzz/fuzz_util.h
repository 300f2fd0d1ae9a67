// Helpers shared by the fuzz targets: a scratch directory of the process's own for the loaders
// that read a path.
#pragma once

#include <stdlib.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>

#include "absl/status/status.h"

namespace knowd::fuzz {

// A directory under $TMPDIR (else /tmp) made once per process and removed when it exits, so
// parallel fuzzer processes never read each other's files.
inline const std::string& ScratchDir() {
  static const std::string* const dir = [] {
    const char* tmp = getenv("TMPDIR");
    std::string pattern =
        std::string(tmp != nullptr && *tmp != '\0' ? tmp : "/tmp") + "/knowd_fuzz_XXXXXX";
    if (mkdtemp(pattern.data()) == nullptr) {
      perror("knowd fuzz: mkdtemp");
      abort();
    }
    auto* path = new std::string(pattern);
    atexit([] {
      std::error_code ec;
      std::filesystem::remove_all(*dir, ec);
    });
    return path;
  }();
  return *dir;
}

// Writes `bytes` to `name` in the scratch directory (replacing it) and returns the file's path.
inline std::string WriteScratchFile(std::string_view name, std::string_view bytes) {
  const std::string path = ScratchDir() + "/" + std::string(name);
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  out.close();
  if (!out) {
    perror(path.c_str());
    abort();
  }
  return path;
}

// With KNOWD_FUZZ_VERBOSE set, prints what a loader said about an input (`what` names the step):
// the way to see why a seed is refused. Silent otherwise, so fuzzing runs at full speed.
inline void Report(std::string_view what, const absl::Status& status) {
  static const bool verbose = getenv("KNOWD_FUZZ_VERBOSE") != nullptr;
  if (verbose) {
    fprintf(stderr, "%.*s: %s\n", static_cast<int>(what.size()), what.data(),
            status.ToString().c_str());
  }
}

inline std::string_view AsText(const uint8_t* data, size_t size) {
  return std::string_view(reinterpret_cast<const char*>(data), size);
}

// Reads every byte of [data, data + bytes) so that a tensor pointing outside its file faults here
// rather than in some later kernel; returns a value the compiler cannot drop.
inline uint64_t TouchBytes(const void* data, int64_t bytes) {
  const auto* p = static_cast<const volatile uint8_t*>(data);
  uint64_t sum = 0;
  for (int64_t i = 0; i < bytes; ++i) sum += p[i];
  return sum;
}

}  // namespace knowd::fuzz
