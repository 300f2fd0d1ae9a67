// The subcommands of `knowctl` (DESIGN.md, "Command-line contract"). Each returns the process exit
// code: 0 on success, 1 when the daemon or the input failed, 2 on a usage error. Results go to
// stdout; progress and errors go to stderr as "knowctl <command>: <message>".
#pragma once

#include <map>
#include <string>
#include <vector>

#include "client/client.h"

namespace knowd::client {

// A parsed command line: the words that are not flags, and each flag's value ("true" for
// switches). Flag names use dashes ("top-k").
struct CommandLine {
  std::vector<std::string> words;
  std::map<std::string, std::string> flags;

  bool Has(const std::string& name) const { return flags.count(name) > 0; }
  std::string Get(const std::string& name, const std::string& fallback = "") const;
};

int RunIngest(Client& client, const CommandLine& line);
int RunAsk(Client& client, const CommandLine& line);
int RunSearch(Client& client, const CommandLine& line);
int RunGet(Client& client, const CommandLine& line);
int RunForget(Client& client, const CommandLine& line);
int RunStats(Client& client, const CommandLine& line);
// `load`: connects its own clients with `options` (one channel each).
int RunLoad(const ClientOptions& options, const CommandLine& line);

// Prints `status` for `command` to stderr in the form a user can act on ("knowctl: cannot reach
// 127.0.0.1:7070: ..." when the daemon is unreachable) and returns 1.
int ReportError(const std::string& command, const ClientOptions& options,
                const absl::Status& status);

// Parses a flag's integer or decimal value; a usage error names the flag.
absl::StatusOr<int> IntFlag(const CommandLine& line, const std::string& name, int fallback);
absl::StatusOr<double> DoubleFlag(const CommandLine& line, const std::string& name,
                                  double fallback);

}  // namespace knowd::client
