// Command lines built with CLI11 (knowd, knowctl): one set of conventions for every command.
//   - Every subcommand has its own options; `PROGRAM COMMAND --help` prints that command's options
//     with their defaults and exits 0.
//   - Flag names follow CanonicalFlagName (cli/flag_names.h): dashes or underscores, any case.
//   - A flag given twice keeps its last value.
//   - A usage error prints "PROGRAM COMMAND: message" to stderr and exits 2; a flag that belongs to
//     another command is refused with the commands it belongs to; an unknown command prints the
//     usage.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "CLI/CLI.hpp"

namespace knowd::cli {

// Applies the conventions to a root app; call it before adding options and subcommands (they
// inherit the settings).
void Configure(CLI::App& app);

// Parses argv[1..] into `app` (configured with Configure). Returns nullopt when the selected
// command should run: it is the deepest parsed subcommand, and it has no subcommands of its own.
// Otherwise returns the exit code after printing: 0 after --help (the selected command's help, on
// stdout), 2 after a usage error (on stderr).
std::optional<int> Parse(CLI::App& app, int argc, const char* const* argv);

// The flag names in `args` (the arguments after the program name) in their canonical spelling:
// "--max_tokens=5" -> "--max-tokens=5". Values are left as they are, also a value that starts with
// "--" ("--prompt --Why_not"), and so is everything after "--". An empty "--name=" becomes
// "--name" "" (CLI11 would otherwise take the next argument as the value).
std::vector<std::string> NormalizeFlagNames(const CLI::App& app, std::vector<std::string> args);

// A check for an integer option: "needs a non-negative integer, got "-1"" otherwise.
CLI::Validator NonNegativeInteger();

// Prints "knowd COMMAND: MESSAGE" to stderr and returns 1, the exit code of a command that failed.
int CommandFailed(std::string_view command, std::string_view message);

// "knowd bench engine": the names of `app` and its parents.
std::string CommandPath(const CLI::App& app);

// libgomp's default wait policy spins between parallel regions; when anything else runs on the
// same cores (a shared node, a CPU-limited pod) a spinning thread holds the core its partner
// needs, and 2-thread decode drops 50x; fully passive waiting halves decode on an idle machine.
// A short spin (tens of microseconds) then sleep keeps both. libgomp reads it when it loads, so
// it is set by re-executing the program once (`argv` as main got it); OMP_WAIT_POLICY or
// GOMP_SPINCOUNT set by the operator win. Returns only when no re-exec happened.
void ReexecWithShortSpin(char** argv);

}  // namespace knowd::cli
