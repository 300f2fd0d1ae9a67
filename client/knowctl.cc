// knowctl: the command-line client of a knowd daemon (DESIGN.md, "Command-line contract").
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <set>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/str_replace.h"
#include "client/knowctl_commands.h"

namespace {

using knowd::client::ClientOptions;
using knowd::client::CommandLine;

constexpr char kUsage[] = R"(usage: knowctl [--server HOST:PORT] [--token T] [--namespace NS]
               [--tls] [--tls-ca F] [--tls-cert F --tls-key F] [--tls-server-name NAME]
               COMMAND ...

  ingest FILE|DIR|- [--json]     .txt/.md one document each (id = path relative to DIR),
                                 .jsonl lines {"id","text","metadata"}; - reads stdin
  ask "QUESTION" [--mode closed-book|mac|rag|mac+rag] [--top-k K] [--max-tokens N] [--json]
      [--retrieval dense|lexical|hybrid]
  search "QUERY" [--top-k K] [--retrieval dense|lexical|hybrid] [--json]
  get ID [--json]
  forget ID... [--json]
  stats [--json]
  load --clients N --duration S [--ask-ratio R] [--forget-ratio F] [--report FILE.json]
       [--tolerate CODE,...]       exits 1 when a call fails with a code not listed

The server and token default to $KNOWCTL_SERVER (else 127.0.0.1:7070) and $KNOWCTL_TOKEN.
)";

// Flags that take a value; every other flag is a switch.
const std::set<std::string> kValueFlags = {
    "server",       "token",  "namespace",  "tls-ca",          "tls-cert", "tls-key",
    "mode",         "top-k",  "max-tokens", "clients",         "duration", "ask-ratio",
    "forget-ratio", "report", "tolerate",   "tls-server-name", "retrieval"};
const std::set<std::string> kSwitches = {"json", "tls", "help"};

// Flags may come before or after the command; "--" ends them. Underscores are accepted for
// dashes ("--top_k").
bool Parse(int argc, char** argv, CommandLine* line, std::string* error) {
  bool flags_done = false;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (flags_done || arg.size() < 3 || !absl::StartsWith(arg, "--")) {
      if (arg == "--") {
        flags_done = true;
        continue;
      }
      line->words.push_back(arg);
      continue;
    }
    std::string name = arg.substr(2);
    std::string value;
    bool has_value = false;
    if (size_t eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
      has_value = true;
    }
    name = absl::StrReplaceAll(name, {{"_", "-"}});
    if (kSwitches.count(name)) {
      line->flags[name] = has_value ? value : "true";
    } else if (kValueFlags.count(name)) {
      if (!has_value) {
        if (i + 1 >= argc) {
          *error = "--" + name + " needs a value";
          return false;
        }
        value = argv[++i];
      }
      line->flags[name] = value;
    } else {
      *error = "unknown flag --" + name;
      return false;
    }
  }
  return true;
}

bool ReadFile(const std::string& path, std::string* out, std::string* error) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    *error = path + ": cannot open";
    return false;
  }
  std::ostringstream text;
  text << in.rdbuf();
  *out = text.str();
  return true;
}

std::string Env(const char* name) {
  const char* value = std::getenv(name);
  return value == nullptr ? "" : value;
}

}  // namespace

int main(int argc, char** argv) {
  CommandLine line;
  std::string error;
  if (!Parse(argc, argv, &line, &error)) {
    std::cerr << "knowctl: " << error << "\n" << kUsage;
    return 2;
  }
  if (line.Has("help") || line.words.empty()) {
    (line.Has("help") ? std::cout : std::cerr) << kUsage;
    return line.Has("help") ? 0 : 2;
  }
  const std::string command = line.words.front();
  line.words.erase(line.words.begin());

  ClientOptions options;
  options.target = line.Get("server", Env("KNOWCTL_SERVER"));
  if (options.target.empty()) options.target = "127.0.0.1:7070";
  options.token = line.Get("token", Env("KNOWCTL_TOKEN"));
  options.name_space = line.Get("namespace");
  options.tls = line.Has("tls");
  options.tls_server_name = line.Get("tls-server-name");
  for (const auto& [flag, pem] : {std::pair{"tls-ca", &options.tls_root_ca_pem},
                                  std::pair{"tls-cert", &options.tls_client_cert_pem},
                                  std::pair{"tls-key", &options.tls_client_key_pem}}) {
    if (line.Has(flag) && !ReadFile(line.Get(flag), pem, &error)) {
      std::cerr << "knowctl: --" << flag << " " << error << "\n";
      return 2;
    }
  }

  if (command == "load") return knowd::client::RunLoad(options, line);
  absl::StatusOr<std::unique_ptr<knowd::client::Client>> client =
      knowd::client::Client::Connect(options);
  if (!client.ok()) {
    std::cerr << "knowctl: " << client.status().message() << "\n";
    return 2;
  }
  knowd::client::Client& c = **client;
  if (command == "ingest") return knowd::client::RunIngest(c, line);
  if (command == "ask") return knowd::client::RunAsk(c, line);
  if (command == "search") return knowd::client::RunSearch(c, line);
  if (command == "get") return knowd::client::RunGet(c, line);
  if (command == "forget") return knowd::client::RunForget(c, line);
  if (command == "stats") return knowd::client::RunStats(c, line);
  std::cerr << "knowctl: unknown command \"" << command << "\"\n" << kUsage;
  return 2;
}
