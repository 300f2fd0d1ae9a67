// The tools of `knowd eval` and `knowd bench` (docs/cli.md), built into knowd-bench, which `knowd`
// runs for those commands: the daemon's binary links none of bench/. Each takes its flags as a
// plain struct, filled by the command line in bench/main.cc, and returns the process exit code;
// errors are printed to stderr as "knowd <command>: <message>".
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace knowd::bench {

struct BenchEngineFlags {
  std::string model;  // required
  std::string backend = "cpu";
  int threads = 0;
  int prompt_tokens = 256;
  int decode_tokens = 64;
  bool json = false;
  std::string adapter;  // set: also measure a mac question
  int mac_top_k = 3;
  std::string dtype;  // set: measure the model converted to this weight type
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
  std::string retrieval;  // "": the bundle's (knowledge.json)
  std::string latent_format = "int8";
  int examples = 10;
  std::string mac_rag_text = "subject";
  double rag_prefix_key_scale = 0;    // 0: the adapter's
  double abstain_below = -1;          // < 0: the bundle's calibration (knowledge.json)
  bool calibrate_abstention = false;  // choose the threshold here, write <bundle>/knowledge.json
  bool calibrate_retrieval = false;   // choose retrieval and fusion here, write knowledge.json
  std::string unknown_split;          // "": valid for the test split, test otherwise
  int forget_subjects = 50;
  // --sessions: sessions against in-context reading on the in-context tasks instead
  // (bench/eval_sessions.h).
  bool sessions = false;
  std::vector<int> demonstrations = {0, 4, 16, 64, 256, 1024};
  int queries = 16;
  int tasks = 0;
};
int RunEvalCommand(const EvalFlags& flags);

}  // namespace knowd::bench
