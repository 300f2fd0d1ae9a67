// The subcommands of `knowctl` (docs/cli.md). Each returns the process exit
// code: 0 on success, 1 when the daemon or the input failed, 2 on a usage error. Results go to
// stdout; progress and errors go to stderr as "knowctl <command>: <message>".
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "client/client.h"

namespace knowd::client {

// Each command's flags, filled by the command line in client/knowctl.cc (the only place flags
// are read; the defaults below are the ones --help shows). The connection flags (--server,
// --token, ...) are common to all commands and reach them as ClientOptions.
struct IngestFlags {
  std::string source;  // FILE, DIR or - (stdin)
  bool json = false;
};
struct AskFlags {
  std::string question;
  std::string session;    // a session's id (`session ask`); "" = none
  std::string mode;       // closed-book, mac, rag or mac+rag; "" = the daemon's default
  int top_k = 0;          // 0 = the daemon's --default-top-k
  int max_tokens = 0;     // 0 = the daemon's --default-max-tokens
  std::string retrieval;  // dense, lexical or hybrid; "" = the daemon's default
  bool explain = false;   // print what the model read: the prompt and the prefix
  bool json = false;
};
struct SearchFlags {
  std::string query;
  int top_k = 0;
  std::string retrieval;
  bool json = false;
};
struct GetFlags {
  std::string id;
  bool json = false;
};
struct ForgetFlags {
  std::vector<std::string> ids;
  bool json = false;
};
struct StatsFlags {
  bool json = false;
};
// `session create SOURCE` and `session append ID SOURCE`.
struct SessionWriteFlags {
  std::string id;           // append: the session
  std::string source;       // FILE or - (stdin)
  std::string label;        // create: the client's label
  int64_t ttl_seconds = 0;  // 0: the daemon's default (create) or the session's (append)
  int chunk_lines = 0;      // lines per message (a chunk boundary); 0: the daemon splits the text
  bool json = false;
};
struct SessionIdFlags {
  std::string id;
};
struct SessionListFlags {
  bool json = false;
};
struct LoadFlags {
  int clients = 1;
  double duration = 10;  // seconds
  double ask_ratio = 0.5;
  double forget_ratio = 0;
  std::string report;  // set: the JSON report
  // Status code names (RESOURCE_EXHAUSTED,...); with the flag given, a failure with any other
  // code exits 1.
  std::optional<std::string> tolerate;
};

int RunIngest(Client& client, const IngestFlags& flags);
int RunAsk(Client& client, const AskFlags& flags);
int RunSearch(Client& client, const SearchFlags& flags);
int RunGet(Client& client, const GetFlags& flags);
int RunForget(Client& client, const ForgetFlags& flags);
int RunStats(Client& client, const StatsFlags& flags);
int RunSessionWrite(Client& client, const SessionWriteFlags& flags, bool append);
int RunSessionDelete(Client& client, const SessionIdFlags& flags);
int RunSessionList(Client& client, const SessionListFlags& flags);
// `load`: connects its own clients with `options` (one channel each).
int RunLoad(const ClientOptions& options, const LoadFlags& flags);

// Prints `status` for `command` to stderr in the form a user can act on ("knowctl: cannot reach
// 127.0.0.1:7070: ..." when the daemon is unreachable) and returns 1.
int ReportError(const std::string& command, const ClientOptions& options,
                const absl::Status& status);

}  // namespace knowd::client
