// `knowd` subcommands. Each returns the process exit code; errors are printed to stderr as
// "knowd <command>: <message>".
#pragma once

#include <string>
#include <vector>

namespace knowd {

int RunGenerate();
int RunTokenize();
int RunBench(const std::vector<std::string>& args);
// Accuracy evaluation on a world split (bench/eval.h); --data defaults to <bundle>/eval.
int RunEval();
// Re-encodes every passage of the memory bank at --data-dir with the adapter of --bundle (or
// --adapter) and records its fingerprint, so the daemon opens the bank with that adapter.
// Resumable: after an interruption the same command continues where it stopped.
int RunReencode();

// Rewrites "--max-tokens=5" style flags to absl's "--max_tokens=5" (the command-line contract
// uses dashes; absl flag names cannot contain them). Arguments after "--" are left alone.
std::vector<char*> NormalizeFlagNames(int argc, char** argv, std::vector<std::string>* storage);

}  // namespace knowd
