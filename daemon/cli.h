// `knowd` subcommands (docs/cli.md). Each takes its flags as a plain struct, filled by the command
// line in daemon/main.cc (the only place flags are read; the defaults below are the ones --help
// shows), and returns the process exit code; errors are printed to stderr as
// "knowd <command>: <message>".
#pragma once

#include <cstdint>
#include <string>

namespace knowd {

struct GenerateFlags {
  std::string model;   // a GGUF file or a Hugging Face directory (required)
  std::string prompt;  // "" starts from BOS alone
  int max_tokens = 128;
  double temperature = 0;  // 0 is greedy
  double top_p = 1;
  uint64_t seed = 0;
  std::string backend = "cpu";
  int threads = 0;  // 0: one per core
};
int RunGenerate(const GenerateFlags& flags);

struct TokenizeFlags {
  std::string model;
  std::string tokenizer;  // instead of --model: tokenizer.model, tokenizer.json or a .gguf
  std::string text;
  bool no_bos = false;
};
int RunTokenize(const TokenizeFlags& flags);

// Writes the model at --model to --out (a .gguf file, or a Hugging Face directory) with its weight
// matrices in --dtype: f32, f16, bf16, q8_0, q4_0, q4_K, q6_K or q4_K_M (ConvertModel,
// model/convert.h).
struct ConvertFlags {
  std::string model;  // required
  std::string out;    // required
  std::string dtype = "f16";
};
int RunConvert(const ConvertFlags& flags);

// Re-encodes every passage of the memory bank at --data-dir with the adapter of --bundle (or
// --adapter) and records its fingerprint, so the daemon opens the bank with that adapter.
// Resumable: after an interruption the same command continues where it stopped.
struct ReencodeFlags {
  std::string data_dir;  // required
  std::string bundle = "models/knowd-tiny";
  std::string adapter;  // "" = <bundle>/adapter
  int threads = 0;
  std::string backend = "cpu";
  std::string index = "auto";
  std::string latent_format = "int8";
  // Only the retrieval keys may change (the bank's latents were made by this adapter on this
  // base); refused otherwise, before anything is written.
  bool keys_only = false;
};
int RunReencode(const ReencodeFlags& flags);

}  // namespace knowd
