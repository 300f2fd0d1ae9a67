// `knowd bench engine`: prefill and decode throughput of the transformer, each next to the bound
// that the same run measures on this machine (sgemm peak for prefill, memory bandwidth for
// decode), so a figure reads as a fraction of what the hardware allows. With an adapter it also
// measures a mac question's own work: encoding passages and the question, aggregating the top-k
// into a prefix, and prefill and decode after that prefix next to the same without one.
#pragma once

#include <string>

#include "absl/status/status.h"
#include "model/config.h"

namespace knowd {

struct EngineBenchOptions {
  std::string model;            // GGUF file or Hugging Face directory
  std::string backend = "cpu";  // cpu, or cuda (device 0)
  int threads = 0;              // 0: one per core (cpu)
  int prompt_tokens = 256;      // prefill length
  int decode_tokens = 64;       // decode steps per measurement
  int repeats = 3;              // best of
  std::string adapter;          // adapter/ directory for the mac question section; empty: none
  int mac_top_k = 3;            // passages aggregated per question (mac section)
  bool json = false;            // one JSON object instead of the table
  // Non-empty: the model is first converted (ConvertModel) to a temporary GGUF whose weight
  // matrices are this type ("q8_0", "q4_K_M", ...; model/convert.h) and measured in it.
  std::string dtype;
};

absl::Status RunEngineBench(const EngineBenchOptions& options);

// A Llama model with random weights (normal, std 0.02; norms 1), for measuring throughput
// where compute matters. Written as config.json + model.safetensors (f32) into `dir`.
struct SyntheticModelOptions {
  LlamaConfig config;
  uint64_t seed = 1234;
};
// The default: about 30M parameters (hidden 512, 8 layers, 8 heads / 4 kv heads, mlp 1408,
// vocab 8192, untied output).
LlamaConfig Synthetic30MConfig();
absl::Status WriteSyntheticModel(const std::string& dir, const SyntheticModelOptions& options);

}  // namespace knowd
