// JSON configuration: each input is read both as a model's Hugging Face config.json and as the
// config file of `knowd serve --config`.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "daemon/serve_config.h"
#include "model/config.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path =
      knowd::fuzz::WriteScratchFile("config.json", knowd::fuzz::AsText(data, size));
  absl::StatusOr<knowd::LlamaConfig> config = knowd::LlamaConfigFromHfJson(path);
  knowd::fuzz::Report("LlamaConfigFromHfJson", config.status());
  // What the transformer sizes its buffers with.
  if (config.ok() && (config->q_dim() <= 0 || config->kv_dim() <= 0)) abort();
  const std::vector<std::string> args = {"--config", path};
  knowd::fuzz::Report(
      "LoadServeConfig",
      knowd::LoadServeConfig(args, [](const char*) -> const char* { return nullptr; }).status());
  return 0;
}
