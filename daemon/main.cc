// knowd: the daemon and its tools. See docs/cli.md for the command-line contract. Every flag of
// every command is declared here, into the command's struct (daemon/cli.h); serve's come from
// its settings table (daemon/serve_config.h).
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "cli/command_line.h"
#include "daemon/cli.h"
#include "daemon/serve_config.h"
#include "daemon/server.h"
#include "model/convert.h"

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

// Runs `knowd-bench` with the same arguments: beside this binary (an installation), else in the
// build tree's bench/ (bench/main.cc).
int RunTools(int argc, char** argv) {
  std::error_code ec;
  const std::filesystem::path self = std::filesystem::read_symlink("/proc/self/exe", ec);
  for (const std::filesystem::path& candidate :
       {self.parent_path() / "knowd-bench",
        self.parent_path().parent_path() / "bench" / "knowd-bench"}) {
    if (!std::filesystem::exists(candidate, ec)) continue;
    std::vector<char*> args(argv, argv + argc);
    const std::string path = candidate.string();
    args[0] = const_cast<char*>(path.c_str());
    args.push_back(nullptr);
    execv(path.c_str(), args.data());
    std::fprintf(stderr, "knowd %s: cannot run %s: %s\n", argv[1], path.c_str(),
                 std::strerror(errno));
    return 1;
  }
  std::fprintf(stderr,
               "knowd %s: knowd-bench (evaluation and benchmarks) is not installed beside %s\n",
               argv[1], self.string().c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  // serve takes SIGTERM, SIGINT and SIGHUP with sigwait(); block them from the first moment (the
  // mask survives the execv below), so a signal sent while it starts waits for the drain.
  if (argc >= 2 && std::string(argv[1]) == "serve") knowd::BlockServeSignals();
  knowd::cli::ReexecWithShortSpin(argv);
  // eval and bench are knowd-bench's (bench/): the daemon's binary links none of bench/.
  if (argc >= 2 && (std::string(argv[1]) == "eval" || std::string(argv[1]) == "bench")) {
    return RunTools(argc, argv);
  }

  CLI::App app("knowd keeps a frozen LLM's knowledge current.", "knowd");
  Configure(app);
  app.footer(
      "`knowd COMMAND --help` lists a command's flags and their defaults; flags may be written "
      "with dashes or underscores (--max-tokens, --max_tokens). docs/cli.md has the details.");

  CLI::App* serve = AddServe(app);
  // Listed in the usage; run by knowd-bench before parsing gets here.
  app.add_subcommand("bench", "Benchmarks, each beside the machine's peak (knowd-bench).");
  app.add_subcommand("eval",
                     "Question-answering accuracy of a bundle on a split of the synthetic world "
                     "(knowd-bench).");

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

  knowd::ConvertFlags convert;
  CLI::App* convert_cmd = app.add_subcommand(
      "convert", "Writes a model in another format (GGUF, Hugging Face) or weight type.");
  convert_cmd->add_option("--model", convert.model,
                          "a GGUF file or a Hugging Face directory (required)");
  convert_cmd->add_option("--out", convert.out,
                          "a .gguf file, else a Hugging Face directory (required)");
  convert_cmd->add_option("--dtype", convert.dtype,
                          "weight matrices, one of " + knowd::WeightPlanNames() +
                              " (the quantized types to .gguf only)");

  knowd::ReencodeFlags reencode;
  CLI::App* reencode_cmd =
      app.add_subcommand("reencode", "Re-encodes a memory bank with another adapter (resumable).");
  reencode_cmd->add_option("--data-dir", reencode.data_dir, "memory bank directory (required)");
  reencode_cmd->add_option("--bundle", reencode.bundle, "model bundle directory");
  reencode_cmd->add_option("--adapter", reencode.adapter,
                           "adapter directory; empty: <bundle>/adapter");
  reencode_cmd->add_option("--threads", reencode.threads, "CPU threads; 0 is one per core");
  reencode_cmd->add_option("--backend", reencode.backend, "compute backend: cpu or cuda");
  reencode_cmd->add_option("--index", reencode.index,
                           "FAISS index factory string, or auto (the daemon's default)");
  reencode_cmd->add_option("--latent-format", reencode.latent_format,
                           "stored latents: fp16 or int8");
  reencode_cmd->add_flag("--keys-only", reencode.keys_only,
                         "rewrite only the retrieval keys (new retrieval heads, same adapter); "
                         "refused when the latents would change too");

  if (std::optional<int> exit_code = knowd::cli::Parse(app, argc, argv)) return *exit_code;
  if (serve->parsed()) {
    // Parsed again, with the environment and the config file.
    return knowd::RunServe(std::vector<std::string>(argv + 2, argv + argc), argv[0]);
  }
  if (generate_cmd->parsed()) return knowd::RunGenerate(generate);
  if (tokenize_cmd->parsed()) return knowd::RunTokenize(tokenize);
  if (convert_cmd->parsed()) return knowd::RunConvert(convert);
  if (reencode_cmd->parsed()) return knowd::RunReencode(reencode);
  return 2;  // not reached: Parse returns an exit code unless a command was selected
}
