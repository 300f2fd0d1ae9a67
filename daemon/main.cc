// knowd: the daemon and its tools. See docs/cli.md for the command-line contract.
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "daemon/cli.h"
#include "daemon/flags.h"
#include "daemon/server.h"

ABSL_FLAG(std::string, model, "", "Model: a GGUF file or a Hugging Face directory");
ABSL_FLAG(std::string, adapter, "", "Adapter directory (adapter.json + adapter.safetensors)");
ABSL_FLAG(std::string, tokenizer, "", "Tokenizer: tokenizer.model, tokenizer.json or .gguf");
ABSL_FLAG(std::string, prompt, "", "Prompt text; empty starts from BOS");
ABSL_FLAG(std::string, text, "", "Text to tokenize");
ABSL_FLAG(int, max_tokens, 128, "Most tokens to generate");
ABSL_FLAG(double, temperature, 0.0, "Sampling temperature; 0 is greedy");
ABSL_FLAG(double, top_p, 1.0, "Nucleus sampling mass");
ABSL_FLAG(uint64_t, seed, 0, "Sampling seed");
ABSL_FLAG(bool, no_bos, false, "Do not prepend the BOS token");
ABSL_FLAG(int, threads, 0, "CPU threads; 0 is one per core");
ABSL_FLAG(std::string, backend, "cpu", "Compute backend: cpu or cuda");
ABSL_FLAG(std::string, out, "", "Output path (bench synth-model)");
ABSL_FLAG(int, prompt_tokens, 256, "Prefill length (bench engine)");
ABSL_FLAG(int, decode_tokens, 64, "Decode steps (bench engine)");
ABSL_FLAG(bool, json, false, "Print JSON instead of a table");
ABSL_FLAG(std::string, entries, "10000,100000,1000000", "Bank sizes (bench storage)");
ABSL_FLAG(std::string, index, "Flat", "FAISS index factory string (bench storage, reencode)");
ABSL_FLAG(std::string, latent_format, "int8",
          "Stored latents: fp16 or int8 (bench storage, reencode)");
ABSL_FLAG(bool, lexical, false, "Keep the BM25 index too (bench storage)");
ABSL_FLAG(std::string, bundle, "models/knowd-tiny", "Model bundle directory (eval, reencode)");
ABSL_FLAG(std::string, data, "", "World data directory (eval); empty: <bundle>/eval");
ABSL_FLAG(std::string, split, "test", "World split to evaluate on (eval)");
ABSL_FLAG(int, limit, 0, "Questions to evaluate, spread evenly over the stream; 0 is all (eval)");
ABSL_FLAG(std::string, report, "", "JSON report path; .md and .png are written beside it (eval)");
ABSL_FLAG(int, batch, 16, "Sequences per forward pass (eval)");
ABSL_FLAG(int, examples, 10,
          "Questions whose predictions in every mode the report lists; -1 is all (eval)");
ABSL_FLAG(int, mac_top_k, 3, "Passages the adapter aggregates per question (eval, bench engine)");
ABSL_FLAG(std::string, mac_retrieval, "lexical",
          "Where mac's passages come from: lexical (BM25), dense (keys) or hybrid (eval)");
ABSL_FLAG(std::string, mac_rag_text, "subject",
          "mac+rag's text: subject (rag-subject's passages) or top1 (the best passage) (eval)");
ABSL_FLAG(double, rag_prefix_key_scale, 0,
          "mac+rag prefix key scale instead of the adapter's rag_prefix_key_scale, in (0, 4] "
          "(eval; 0: the adapter's)");
ABSL_FLAG(std::string, data_dir, "", "Memory bank directory (reencode)");

namespace {
constexpr const char* kUsage =
    "knowd — keeps a frozen LLM's knowledge current.\n\n"
    "usage:\n"
    "  knowd serve [--config FILE] [--listen 127.0.0.1:7070] [--http-listen 127.0.0.1:7071]\n"
    "              [--data-dir DIR] [--model PATH] [--adapter PATH] [--tokens-file FILE]\n"
    "              [--tls-cert F --tls-key F [--tls-client-ca F]]   (knowd serve --help: all)\n"
    "  knowd generate --model PATH [--adapter PATH] --prompt TEXT [--max-tokens N]\n"
    "                 [--temperature T] [--seed S]\n"
    "  knowd tokenize (--model PATH | --tokenizer PATH) --text TEXT [--no-bos]\n"
    "  knowd bench engine --model PATH [--backend cpu|cuda] [--threads N] [--prompt-tokens N]\n"
    "                     [--decode-tokens N] [--adapter DIR [--mac-top-k 3]]\n"
    "  knowd bench synth-model --out DIR      (a ~30M-parameter random Llama for benchmarks)\n"
    "  knowd bench storage [--entries 10000,100000,1000000] [--index Flat] [--latent-format int8]\n"
    "                      [--lexical] [--out FILE.json]\n"
    "  knowd eval [--bundle DIR] [--data DIR] [--split test] [--limit N] [--report FILE.json]\n"
    "             [--batch N] [--threads N] [--mac-top-k 3] [--mac-retrieval "
    "lexical|dense|hybrid]\n"
    "             [--latent-format int8|fp16] [--examples N] [--mac-rag-text subject|top1]\n"
    "             [--rag-prefix-key-scale F]\n"
    "  knowd reencode --data-dir DIR [--bundle DIR] [--adapter DIR]   (resumable)\n";
}  // namespace

int main(int argc, char** argv) {
  // serve takes SIGTERM, SIGINT and SIGHUP with sigwait(); block them from the first moment (the
  // mask survives the execv below), so a signal sent while it starts waits for the drain.
  if (argc >= 2 && std::string(argv[1]) == "serve") knowd::BlockServeSignals();
  // libgomp's default wait policy spins between parallel regions; when anything else runs on the
  // same cores (a shared node, a CPU-limited pod) a spinning thread holds the core its partner
  // needs, and 2-thread decode drops 50x; fully passive waiting halves decode on an idle machine.
  // A short spin (tens of microseconds) then sleep keeps both. libgomp reads it when it loads, so
  // it is set by re-executing once; OMP_WAIT_POLICY or GOMP_SPINCOUNT set by the operator win.
  if (std::getenv("OMP_WAIT_POLICY") == nullptr && std::getenv("GOMP_SPINCOUNT") == nullptr) {
    setenv("GOMP_SPINCOUNT", "20000", 1);
    execv("/proc/self/exe", argv);  // returns only on failure: carry on with the default
  }
  // serve has its own configuration (flags, environment, config file: daemon/serve_config.h).
  if (argc >= 2 && std::string(argv[1]) == "serve") {
    return knowd::RunServe(std::vector<std::string>(argv + 2, argv + argc), argv[0]);
  }
  absl::SetProgramUsageMessage(kUsage);
  std::vector<std::string> storage;
  std::vector<char*> args = knowd::NormalizeFlagNames(argc, argv, &storage);
  std::vector<char*> positional =
      absl::ParseCommandLine(static_cast<int>(args.size()), args.data());
  if (positional.size() < 2) {
    std::fputs(kUsage, stderr);
    return 2;
  }
  const std::string command = positional[1];
  std::vector<std::string> rest(positional.begin() + 2, positional.end());
  if (command == "generate") return knowd::RunGenerate();
  if (command == "tokenize") return knowd::RunTokenize();
  if (command == "bench") return knowd::RunBench(rest);
  if (command == "eval") return knowd::RunEval();
  if (command == "reencode") return knowd::RunReencode();
  std::fprintf(stderr, "knowd: unknown command \"%s\"\n\n%s", command.c_str(), kUsage);
  return 2;
}
