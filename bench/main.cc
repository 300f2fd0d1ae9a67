// knowd-bench: the `knowd eval` and `knowd bench` commands (docs/cli.md), which `knowd` runs from
// here so that the daemon's binary links none of bench/. Run directly it takes the same command
// lines: `knowd-bench eval --split valid`, `knowd-bench bench engine --model DIR`.
#include <cstdlib>
#include <optional>
#include <string>

#include "CLI/CLI.hpp"
#include "bench/scale_bench.h"
#include "bench/tools.h"
#include "cli/command_line.h"
#include "model/convert.h"

int main(int argc, char** argv) {
  knowd::cli::ReexecWithShortSpin(argv);
  CLI::App app("knowd's evaluation and benchmarks.", "knowd");
  knowd::cli::Configure(app);
  app.footer(
      "`knowd COMMAND --help` lists a command's flags and their defaults; flags may be written "
      "with dashes or underscores (--max-tokens, --max_tokens). docs/cli.md has the details.");

  CLI::App* bench = app.add_subcommand("bench", "Benchmarks, each beside the machine's peak.");

  knowd::bench::BenchEngineFlags engine;
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
  engine_cmd->add_option("--dtype", engine.dtype,
                         "measure the model converted to one of " + knowd::WeightPlanNames() +
                             " (a temporary GGUF); empty: as the file holds it");

  knowd::bench::BenchSynthModelFlags synth;
  CLI::App* synth_cmd = bench->add_subcommand(
      "synth-model", "Writes a random ~30M-parameter Llama model (config.json + safetensors).");
  synth_cmd->add_option("--out", synth.out, "output directory (required)");
  synth_cmd->add_option("--seed", synth.seed, "seed of the random weights");

  knowd::bench::BenchStorageFlags storage;
  CLI::App* storage_cmd = bench->add_subcommand(
      "storage", "The memory bank: put throughput, top-k latency, open and recovery time.");
  storage_cmd->add_option("--entries", storage.entries, "bank sizes, comma-separated");
  storage_cmd->add_option("--index", storage.index, "FAISS index factory string");
  storage_cmd->add_option("--latent-format", storage.latent_format, "stored latents: fp16 or int8");
  storage_cmd->add_flag("--lexical", storage.lexical, "keep the BM25 index too");
  storage_cmd->add_option("--threads", storage.threads, "CPU threads; 0 is one per core");
  storage_cmd->add_option("--out", storage.out, "also write the results as JSON to this file");

  knowd::BenchScaleFlags scale;
  CLI::App* scale_cmd = bench->add_subcommand(
      "scale",
      "1k..1M real passages under Flat, HNSW, IVF and IVF+PQ: recall, search, memory, mac Ask.");
  scale_cmd->add_option("--bundle", scale.bundle, "model bundle directory (with an adapter)");
  scale_cmd->add_option("--sizes", scale.sizes, "bank sizes in passages, comma-separated");
  scale_cmd->add_option("--indexes", scale.indexes,
                        "FAISS factories, ';'-separated, each FACTORY[@PARAMS]; Flat first; "
                        "{nlist} is chosen per size");
  scale_cmd->add_option("--world-passages", scale.world_passages,
                        "passages of the world the banks draw from (at least the largest size)");
  scale_cmd->add_option("--cache", scale.cache,
                        "directory caching the encoded passages across runs; empty: none");
  scale_cmd->add_flag("--encode-only", scale.encode_only, "encode (and cache) only, then stop");
  scale_cmd->add_flag("--synthetic-codes", scale.synthetic_codes,
                      "random keys and latents instead of the encoder's: costs in minutes, no "
                      "recall");
  scale_cmd->add_option("--threads", scale.threads, "CPU threads of the encoder and model");
  scale_cmd->add_option("--queries", scale.queries, "question keys searched per size and index");
  scale_cmd->add_option("--asks", scale.asks, "mac questions timed per size and index");
  scale_cmd->add_option("--dir", scale.dir,
                        "scratch directory for the banks; empty: a temporary one");
  scale_cmd->add_option("--out", scale.out, "also write the results as JSON to this file");

  knowd::bench::BenchPeakFlags peak;
  CLI::App* peak_cmd =
      bench->add_subcommand("peak", "The machine's sgemm peak and memory bandwidth alone.");
  peak_cmd->add_option("--threads", peak.threads, "CPU threads; 0 is one per core");

  knowd::bench::EvalFlags eval;
  CLI::App* eval_cmd = app.add_subcommand(
      "eval", "Question-answering accuracy of a bundle on a split of the synthetic world.");
  eval_cmd->add_option("--bundle", eval.bundle, "model bundle directory");
  eval_cmd->add_option("--data", eval.data, "world data directory; empty: <bundle>/eval");
  eval_cmd->add_option("--split", eval.split,
                       "world split to evaluate on: valid, test, paraphrase (the test passages, "
                       "their questions in other words), adapter or pretrain");
  eval_cmd->add_option("--limit", eval.limit,
                       "questions to evaluate, spread evenly over the stream; 0 is all");
  eval_cmd->add_option("--report", eval.report,
                       "JSON report path; the .md table and .png plot are written beside it");
  eval_cmd->add_option("--batch", eval.batch, "sequences per forward pass");
  eval_cmd->add_option("--threads", eval.threads, "CPU threads; 0 is one per core");
  eval_cmd->add_option("--backend", eval.backend, "compute backend: cpu only");
  eval_cmd->add_option("--mac-top-k", eval.mac_top_k,
                       "passages the adapter aggregates per question");
  eval_cmd->add_option("--retrieval", eval.retrieval,
                       "where every memory mode's passages come from: lexical (BM25), dense "
                       "(keys) or hybrid; empty: the bundle's default (knowledge.json)");
  eval_cmd->add_option("--latent-format", eval.latent_format, "stored latents: fp16 or int8");
  eval_cmd->add_option("--examples", eval.examples,
                       "questions whose predictions in every mode the report lists; -1 is all");
  eval_cmd->add_option("--mac-rag-text", eval.mac_rag_text,
                       "mac+rag's text: subject (rag-subject's passages) or top1 (the best one)");
  eval_cmd->add_option("--rag-prefix-key-scale", eval.rag_prefix_key_scale,
                       "mac+rag prefix key scale in (0, 4] instead of the adapter's; 0: the "
                       "adapter's");
  eval_cmd->add_option("--abstain-below", eval.abstain_below,
                       "nothing in memory below this relevance; negative: the bundle's "
                       "calibration (knowledge.json)");
  eval_cmd->add_flag("--calibrate-abstention", eval.calibrate_abstention,
                     "choose the threshold on this split and write <bundle>/knowledge.json");
  eval_cmd->add_flag("--calibrate-retrieval", eval.calibrate_retrieval,
                     "choose hybrid's fusion weights and the default retrieval by recall on "
                     "this split, write <bundle>/knowledge.json, and stop");
  eval_cmd->add_option("--unknown-split", eval.unknown_split,
                       "split whose questions are about people never streamed; empty: valid for "
                       "test and paraphrase, else test");
  eval_cmd->add_option("--forget-subjects", eval.forget_subjects,
                       "people whose passages are all forgotten, then asked about");
  eval_cmd->add_flag("--sessions", eval.sessions,
                     "instead: sessions against in-context reading on the in-context tasks "
                     "(icl.train.jsonl, icl.heldout.jsonl)");
  eval_cmd
      ->add_option("--demonstrations", eval.demonstrations,
                   "--sessions: numbers of demonstrations, comma-separated")
      ->delimiter(',');
  eval_cmd->add_option("--queries", eval.queries, "--sessions: queries per task");
  eval_cmd->add_option("--tasks", eval.tasks, "--sessions: tasks per set, the first; 0 is all");

  if (std::optional<int> exit_code = knowd::cli::Parse(app, argc, argv)) return *exit_code;
  if (engine_cmd->parsed()) return knowd::bench::RunBenchEngine(engine);
  if (synth_cmd->parsed()) return knowd::bench::RunBenchSynthModel(synth);
  if (storage_cmd->parsed()) return knowd::bench::RunBenchStorage(storage);
  if (scale_cmd->parsed()) return knowd::RunBenchScale(scale);
  if (peak_cmd->parsed()) return knowd::bench::RunBenchPeak(peak);
  if (eval_cmd->parsed()) return knowd::bench::RunEvalCommand(eval);
  return 2;  // not reached: Parse returns an exit code unless a command was selected
}
