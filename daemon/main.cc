// knowd: the daemon and its tools. See docs/cli.md for the command-line contract. Every flag of
// every command is declared here, into the command's struct (daemon/cli.h); serve's come from
// its settings table (daemon/serve_config.h).
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "cli/command_line.h"
#include "daemon/cli.h"
#include "daemon/serve_config.h"
#include "daemon/server.h"

namespace {

using knowd::cli::Configure;

// `knowd serve` parses its own flags, with the environment and the config file
// (daemon/serve_config.h); here they are declared from the same table, for --help and so that a
// flag of another command is refused like everywhere else.
CLI::App* AddServe(CLI::App& app) {
  CLI::App* serve = app.add_subcommand(
      "serve",
      "The daemon: the gRPC KnowledgeService plus /metrics, /healthz and /readyz over HTTP. "
      "Without flags it serves the shipped knowd-tiny bundle from ./knowd-data on loopback.");
  for (const knowd::ServeSetting& s : knowd::ServeSettings()) {
    serve->add_option("--" + s.name)
        ->description(s.help + " [" + s.env + "]")
        ->type_name(s.type)
        ->default_str(s.default_value);
  }
  serve->footer(
      "Every flag is also an environment variable (in brackets) and a key of the --config JSON "
      "file; a flag beats the environment, which beats the file, which beats the default.");
  return serve;
}

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

  CLI::App app("knowd keeps a frozen LLM's knowledge current.", "knowd");
  Configure(app);
  app.footer(
      "`knowd COMMAND --help` lists a command's flags and their defaults; flags may be written "
      "with dashes or underscores (--max-tokens, --max_tokens). docs/cli.md has the details.");

  CLI::App* serve = AddServe(app);

  knowd::GenerateFlags generate;
  CLI::App* generate_cmd = app.add_subcommand(
      "generate", "Runs the model on the prompt and prints the generated text (not the prompt).");
  generate_cmd->add_option("--model", generate.model,
                           "a GGUF file or a Hugging Face directory (required)");
  generate_cmd->add_option("--prompt", generate.prompt, "prompt text; empty starts from BOS");
  generate_cmd->add_option("--max-tokens", generate.max_tokens, "most tokens to generate");
  generate_cmd->add_option("--temperature", generate.temperature,
                           "sampling temperature; 0 is greedy");
  generate_cmd->add_option("--top-p", generate.top_p, "nucleus sampling mass");
  generate_cmd->add_option("--seed", generate.seed, "sampling seed");
  generate_cmd->add_option("--backend", generate.backend, "compute backend: cpu or cuda");
  generate_cmd->add_option("--threads", generate.threads, "CPU threads; 0 is one per core");

  knowd::TokenizeFlags tokenize;
  CLI::App* tokenize_cmd =
      app.add_subcommand("tokenize", "Prints the token ids of --text, BOS first.");
  tokenize_cmd->add_option("--model", tokenize.model, "model whose tokenizer to use");
  tokenize_cmd->add_option("--tokenizer", tokenize.tokenizer,
                           "instead of --model: tokenizer.model, tokenizer.json or a .gguf");
  tokenize_cmd->add_option("--text", tokenize.text, "text to tokenize");
  tokenize_cmd->add_flag("--no-bos", tokenize.no_bos, "do not prepend the BOS token");

  CLI::App* bench = app.add_subcommand("bench", "Benchmarks, each beside the machine's peak.");

  knowd::BenchEngineFlags engine;
  CLI::App* engine_cmd = bench->add_subcommand(
      "engine", "Prefill and decode throughput, as fractions of the sgemm peak and bandwidth.");
  engine_cmd->add_option("--model", engine.model, "model: GGUF file or directory (required)");
  engine_cmd->add_option("--backend", engine.backend, "compute backend: cpu or cuda");
  engine_cmd->add_option("--threads", engine.threads, "CPU threads; 0 is one per core");
  engine_cmd->add_option("--prompt-tokens", engine.prompt_tokens, "prefill length");
  engine_cmd->add_option("--decode-tokens", engine.decode_tokens, "decode steps");
  engine_cmd->add_flag("--json", engine.json, "print JSON instead of a table");
  engine_cmd->add_option("--adapter", engine.adapter,
                         "adapter directory: also measure a mac question's own work");
  engine_cmd->add_option("--mac-top-k", engine.mac_top_k,
                         "stored codes the adapter aggregates per question");

  knowd::BenchSynthModelFlags synth;
  CLI::App* synth_cmd = bench->add_subcommand(
      "synth-model", "Writes a random ~30M-parameter Llama model (config.json + safetensors).");
  synth_cmd->add_option("--out", synth.out, "output directory (required)");
  synth_cmd->add_option("--seed", synth.seed, "seed of the random weights");

  knowd::BenchStorageFlags storage;
  CLI::App* storage_cmd = bench->add_subcommand(
      "storage", "The memory bank: put throughput, top-k latency, open and recovery time.");
  storage_cmd->add_option("--entries", storage.entries, "bank sizes, comma-separated");
  storage_cmd->add_option("--index", storage.index, "FAISS index factory string");
  storage_cmd->add_option("--latent-format", storage.latent_format, "stored latents: fp16 or int8");
  storage_cmd->add_flag("--lexical", storage.lexical, "keep the BM25 index too");
  storage_cmd->add_option("--threads", storage.threads, "CPU threads; 0 is one per core");
  storage_cmd->add_option("--out", storage.out, "also write the results as JSON to this file");

  knowd::BenchPeakFlags peak;
  CLI::App* peak_cmd =
      bench->add_subcommand("peak", "The machine's sgemm peak and memory bandwidth alone.");
  peak_cmd->add_option("--threads", peak.threads, "CPU threads; 0 is one per core");

  knowd::EvalFlags eval;
  CLI::App* eval_cmd = app.add_subcommand(
      "eval", "Question-answering accuracy of a bundle on a split of the synthetic world.");
  eval_cmd->add_option("--bundle", eval.bundle, "model bundle directory");
  eval_cmd->add_option("--data", eval.data, "world data directory; empty: <bundle>/eval");
  eval_cmd->add_option("--split", eval.split, "world split to evaluate on");
  eval_cmd->add_option("--limit", eval.limit,
                       "questions to evaluate, spread evenly over the stream; 0 is all");
  eval_cmd->add_option("--report", eval.report,
                       "JSON report path; the .md table and .png plot are written beside it");
  eval_cmd->add_option("--batch", eval.batch, "sequences per forward pass");
  eval_cmd->add_option("--threads", eval.threads, "CPU threads; 0 is one per core");
  eval_cmd->add_option("--backend", eval.backend, "compute backend: cpu only");
  eval_cmd->add_option("--mac-top-k", eval.mac_top_k,
                       "passages the adapter aggregates per question");
  eval_cmd->add_option("--mac-retrieval", eval.mac_retrieval,
                       "where mac's passages come from: lexical (BM25), dense (keys) or hybrid");
  eval_cmd->add_option("--latent-format", eval.latent_format, "stored latents: fp16 or int8");
  eval_cmd->add_option("--examples", eval.examples,
                       "questions whose predictions in every mode the report lists; -1 is all");
  eval_cmd->add_option("--mac-rag-text", eval.mac_rag_text,
                       "mac+rag's text: subject (rag-subject's passages) or top1 (the best one)");
  eval_cmd->add_option("--rag-prefix-key-scale", eval.rag_prefix_key_scale,
                       "mac+rag prefix key scale in (0, 4] instead of the adapter's; 0: the "
                       "adapter's");

  knowd::ReencodeFlags reencode;
  CLI::App* reencode_cmd =
      app.add_subcommand("reencode", "Re-encodes a memory bank with another adapter (resumable).");
  reencode_cmd->add_option("--data-dir", reencode.data_dir, "memory bank directory (required)");
  reencode_cmd->add_option("--bundle", reencode.bundle, "model bundle directory");
  reencode_cmd->add_option("--adapter", reencode.adapter,
                           "adapter directory; empty: <bundle>/adapter");
  reencode_cmd->add_option("--threads", reencode.threads, "CPU threads; 0 is one per core");
  reencode_cmd->add_option("--backend", reencode.backend, "compute backend: cpu or cuda");
  reencode_cmd->add_option("--index", reencode.index, "FAISS index factory string");
  reencode_cmd->add_option("--latent-format", reencode.latent_format,
                           "stored latents: fp16 or int8");

  if (std::optional<int> exit_code = knowd::cli::Parse(app, argc, argv)) return *exit_code;
  if (serve->parsed()) {
    // Parsed again, with the environment and the config file.
    return knowd::RunServe(std::vector<std::string>(argv + 2, argv + argc), argv[0]);
  }
  if (generate_cmd->parsed()) return knowd::RunGenerate(generate);
  if (tokenize_cmd->parsed()) return knowd::RunTokenize(tokenize);
  if (engine_cmd->parsed()) return knowd::RunBenchEngine(engine);
  if (synth_cmd->parsed()) return knowd::RunBenchSynthModel(synth);
  if (storage_cmd->parsed()) return knowd::RunBenchStorage(storage);
  if (peak_cmd->parsed()) return knowd::RunBenchPeak(peak);
  if (eval_cmd->parsed()) return knowd::RunEval(eval);
  if (reencode_cmd->parsed()) return knowd::RunReencode(reencode);
  return 2;  // not reached: Parse returns an exit code unless a command was selected
}
