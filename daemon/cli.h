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

struct BenchEngineFlags {
  std::string model;  // required
  std::string backend = "cpu";
  int threads = 0;
  int prompt_tokens = 256;
  int decode_tokens = 64;
  bool json = false;
  std::string adapter;  // set: also measure a mac question
  int mac_top_k = 3;
};
int RunBenchEngine(const BenchEngineFlags& flags);

struct BenchSynthModelFlags {
  std::string out;  // required
  uint64_t seed = 1234;
};
int RunBenchSynthModel(const BenchSynthModelFlags& flags);

struct BenchStorageFlags {
  std::string entries = "10000,100000,1000000";
  std::string index = "Flat";
  std::string latent_format = "int8";
  bool lexical = false;
  int threads = 0;
  std::string out;  // set: the JSON report
};
int RunBenchStorage(const BenchStorageFlags& flags);

struct BenchPeakFlags {
  int threads = 0;
};
int RunBenchPeak(const BenchPeakFlags& flags);

// Accuracy evaluation on a world split (bench/eval.h).
struct EvalFlags {
  std::string bundle = "models/knowd-tiny";
  std::string data;  // "" = <bundle>/eval
  std::string split = "test";
  int limit = 0;       // questions spread evenly over the stream; 0 is all
  std::string report;  // JSON report path; .md and .png beside it
  int batch = 16;
  int threads = 0;
  std::string backend = "cpu";  // eval runs on the cpu backend only
  int mac_top_k = 3;
  std::string mac_retrieval = "lexical";
  std::string latent_format = "int8";
  int examples = 10;
  std::string mac_rag_text = "subject";
  double rag_prefix_key_scale = 0;  // 0: the adapter's
};
int RunEval(const EvalFlags& flags);

// Re-encodes every passage of the memory bank at --data-dir with the adapter of --bundle (or
// --adapter) and records its fingerprint, so the daemon opens the bank with that adapter.
// Resumable: after an interruption the same command continues where it stopped.
struct ReencodeFlags {
  std::string data_dir;  // required
  std::string bundle = "models/knowd-tiny";
  std::string adapter;  // "" = <bundle>/adapter
  int threads = 0;
  std::string backend = "cpu";
  std::string index = "Flat";
  std::string latent_format = "int8";
};
int RunReencode(const ReencodeFlags& flags);

}  // namespace knowd
