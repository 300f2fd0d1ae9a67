// knowctl: the command-line client of a knowd daemon (docs/cli.md, "knowctl"). Every flag is
// declared in main(), into the command's struct (client/knowctl_commands.h).
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <optional>
#include <sstream>
#include <tuple>
#include <utility>

#include "CLI/CLI.hpp"
#include "cli/command_line.h"
#include "client/knowctl_commands.h"

namespace {

constexpr char kDefaultServer[] = "127.0.0.1:7070";

// The connection flags, common to every command.
struct ConnectionFlags {
  std::string server = kDefaultServer;  // also $KNOWCTL_SERVER
  std::string token;                    // also $KNOWCTL_TOKEN
  std::string name_space;
  bool tls = false;
  std::string tls_ca;  // paths of PEM files
  std::string tls_cert;
  std::string tls_key;
  std::string tls_server_name;
};

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

}  // namespace

int main(int argc, char** argv) {
  namespace kc = knowd::client;
  CLI::App app("knowctl: the command-line client of a knowd daemon (docs/cli.md).", "knowctl");
  knowd::cli::Configure(app);
  // The connection flags may also come after the command.
  app.fallthrough();
  app.footer(
      "`knowctl COMMAND --help` lists a command's flags; the connection flags above go before or "
      "after the command. Flags may be written with dashes or underscores (--top-k, --top_k).");
  ConnectionFlags c;
  app.add_option("--server", c.server, "daemon address HOST:PORT")->envname("KNOWCTL_SERVER");
  app.add_option("--token", c.token, "bearer token")->envname("KNOWCTL_TOKEN");
  app.add_option("--namespace", c.name_space, "namespace of every request; empty: \"default\"");
  app.add_flag("--tls", c.tls, "connect with TLS (implied by --tls-ca and --tls-cert)");
  app.add_option("--tls-ca", c.tls_ca, "CA certificate (PEM) the server's must chain to");
  app.add_option("--tls-cert", c.tls_cert, "client certificate (PEM), for mTLS");
  app.add_option("--tls-key", c.tls_key, "client private key (PEM), for mTLS");
  app.add_option("--tls-server-name", c.tls_server_name,
                 "name to check the server's certificate against; empty: the host");
  const std::string connection_footer =
      "The connection flags (--server, --token, --namespace, --tls...): knowctl --help.";

  kc::IngestFlags ingest;
  CLI::App* ingest_cmd = app.add_subcommand(
      "ingest",
      "Sends documents: .txt/.md files (one document each; in a DIR, id = path relative to it), "
      ".jsonl lines {\"id\",\"text\",\"metadata\"}, or - for stdin.");
  ingest_cmd->add_option("source", ingest.source, "FILE, DIR or -")
      ->type_name("FILE|DIR|-")
      ->required();
  ingest_cmd->add_flag("--json", ingest.json, "print each acknowledgement as a JSON line");

  kc::AskFlags ask;
  CLI::App* ask_cmd =
      app.add_subcommand("ask", "Asks a question; streams the answer, then the cited passages.");
  ask_cmd->add_option("question", ask.question, "the question (quote it)")
      ->type_name("QUESTION")
      ->required();
  ask_cmd->add_option("--mode", ask.mode,
                      "closed-book, mac, rag or mac+rag; empty: the daemon's default");
  ask_cmd->add_option("--top-k", ask.top_k, "passages retrieved; 0: the daemon's default")
      ->check(knowd::cli::NonNegativeInteger());
  ask_cmd->add_option("--max-tokens", ask.max_tokens, "answer tokens; 0: the daemon's default")
      ->check(knowd::cli::NonNegativeInteger());
  ask_cmd->add_option("--retrieval", ask.retrieval,
                      "dense, lexical or hybrid; empty: the daemon's default");
  ask_cmd->add_flag("--explain", ask.explain,
                    "also print what the model read: the prompt and the MAC prefix's size");
  ask_cmd->add_flag("--json", ask.json, "print the final answer as JSON (no streaming)");

  kc::SearchFlags search;
  CLI::App* search_cmd = app.add_subcommand("search", "Prints the passages retrieved for a query.");
  search_cmd->add_option("query", search.query, "the query (quote it)")
      ->type_name("QUERY")
      ->required();
  search_cmd->add_option("--top-k", search.top_k, "passages retrieved; 0: the daemon's default")
      ->check(knowd::cli::NonNegativeInteger());
  search_cmd->add_option("--retrieval", search.retrieval,
                         "dense, lexical or hybrid; empty: the daemon's default");
  search_cmd->add_flag("--json", search.json, "print the response as JSON");

  kc::GetFlags get;
  CLI::App* get_cmd = app.add_subcommand("get", "Prints a stored document and its passages.");
  get_cmd->add_option("id", get.id, "document ID")->type_name("ID")->required();
  get_cmd->add_flag("--json", get.json, "print the document as JSON");

  kc::ForgetFlags forget;
  CLI::App* forget_cmd = app.add_subcommand("forget", "Deletes documents and their passages.");
  forget_cmd->add_option("ids", forget.ids, "document IDs")
      ->type_name("ID")
      ->default_str("")
      ->required();
  forget_cmd->add_flag("--json", forget.json, "print the response as JSON");

  kc::StatsFlags stats;
  CLI::App* stats_cmd = app.add_subcommand("stats", "Prints what the daemon stores and serves.");
  stats_cmd->add_flag("--json", stats.json, "print the response as JSON");

  // session create|append|ask|delete|list.
  CLI::App* session_cmd = app.add_subcommand(
      "session",
      "Sessions: a context (demonstrations of a task, a manual, a conversation) absorbed into a "
      "constant-size state that the model applies under later questions.");
  session_cmd->require_subcommand(1);
  kc::SessionWriteFlags session_create;
  CLI::App* session_create_cmd = session_cmd->add_subcommand(
      "create", "Creates a session from a text file (or - for stdin); prints its id and size.");
  session_create_cmd->add_option("source", session_create.source, "FILE or -")
      ->type_name("FILE|-")
      ->required();
  session_create_cmd->add_option("--label", session_create.label, "a label for the session");
  kc::SessionWriteFlags session_append;
  CLI::App* session_append_cmd = session_cmd->add_subcommand(
      "append", "Absorbs more text (a file or - for stdin) into a session.");
  session_append_cmd->add_option("id", session_append.id, "session ID")
      ->type_name("ID")
      ->required();
  session_append_cmd->add_option("source", session_append.source, "FILE or -")
      ->type_name("FILE|-")
      ->required();
  for (auto [command, flags] : {std::pair{session_create_cmd, &session_create},
                                std::pair{session_append_cmd, &session_append}}) {
    command
        ->add_option("--ttl-seconds", flags->ttl_seconds,
                     "seconds the session lives after its last write; 0: the daemon's default "
                     "(create) or the session's own (append)")
        ->check(knowd::cli::NonNegativeInteger());
    command
        ->add_option("--chunk-lines", flags->chunk_lines,
                     "lines per chunk (e.g. demonstrations per chunk); 0: the daemon cuts the "
                     "text at line ends into chunks as long as its session mapper reads")
        ->check(knowd::cli::NonNegativeInteger());
    command->add_flag("--json", flags->json, "print the session as JSON");
  }
  kc::AskFlags session_ask;
  CLI::App* session_ask_cmd = session_cmd->add_subcommand(
      "ask",
      "Asks a question under a session's state (with --mode mac, rag or mac+rag: that mode's "
      "memory too); streams the answer.");
  session_ask_cmd->add_option("id", session_ask.session, "session ID")->type_name("ID")->required();
  session_ask_cmd->add_option("question", session_ask.question, "the question (quote it)")
      ->type_name("QUESTION")
      ->required();
  session_ask_cmd->add_option(
      "--mode", session_ask.mode,
      "empty or closed-book: the session alone; mac, rag or mac+rag: that mode's memory too");
  session_ask_cmd
      ->add_option("--max-tokens", session_ask.max_tokens, "answer tokens; 0: the daemon's default")
      ->check(knowd::cli::NonNegativeInteger());
  session_ask_cmd->add_flag("--json", session_ask.json,
                            "print the final answer as JSON (no streaming)");
  kc::SessionIdFlags session_delete;
  CLI::App* session_delete_cmd = session_cmd->add_subcommand("delete", "Deletes a session.");
  session_delete_cmd->add_option("id", session_delete.id, "session ID")
      ->type_name("ID")
      ->required();
  kc::SessionListFlags session_list;
  CLI::App* session_list_cmd =
      session_cmd->add_subcommand("list", "Lists the namespace's sessions (id, size, expiry).");
  session_list_cmd->add_flag("--json", session_list.json, "print the list as JSON");

  kc::LoadFlags load;
  CLI::App* load_cmd = app.add_subcommand(
      "load",
      "Runs concurrent clients mixing ask, ingest, search and forget; prints calls/s, p50/p99 "
      "latency and errors by code.");
  load_cmd->add_option("--clients", load.clients, "concurrent clients, one channel each");
  load_cmd->add_option("--duration", load.duration, "seconds to run");
  load_cmd->add_option("--ask-ratio", load.ask_ratio, "share of calls that ask");
  load_cmd->add_option("--forget-ratio", load.forget_ratio,
                       "share of calls that forget one of the client's documents");
  load_cmd->add_option("--report", load.report, "also write the results as JSON to this file");
  load_cmd
      ->add_option_function<std::string>(
          "--tolerate", [&](const std::string& codes) { load.tolerate = codes; },
          "status codes, comma-separated (RESOURCE_EXHAUSTED,...): any other failing code "
          "exits 1")
      ->type_name("CODE,...");
  for (CLI::App* command : app.get_subcommands([](CLI::App*) { return true; })) {
    command->footer(connection_footer);
  }
  for (CLI::App* command : session_cmd->get_subcommands([](CLI::App*) { return true; })) {
    command->footer(connection_footer);
  }

  if (std::optional<int> exit_code = knowd::cli::Parse(app, argc, argv)) return *exit_code;

  kc::ClientOptions options;
  options.target = c.server.empty() ? kDefaultServer : c.server;
  options.token = c.token;
  options.name_space = c.name_space;
  options.tls = c.tls;
  options.tls_server_name = c.tls_server_name;
  std::string error;
  for (const auto& [flag, path, pem] :
       {std::tuple{"tls-ca", &c.tls_ca, &options.tls_root_ca_pem},
        std::tuple{"tls-cert", &c.tls_cert, &options.tls_client_cert_pem},
        std::tuple{"tls-key", &c.tls_key, &options.tls_client_key_pem}}) {
    if (!path->empty() && !ReadFile(*path, pem, &error)) {
      std::cerr << "knowctl: --" << flag << " " << error << "\n";
      return 2;
    }
  }

  if (load_cmd->parsed()) return kc::RunLoad(options, load);
  absl::StatusOr<std::unique_ptr<kc::Client>> client = kc::Client::Connect(options);
  if (!client.ok()) {
    std::cerr << "knowctl: " << client.status().message() << "\n";
    return 2;
  }
  kc::Client& connected = **client;
  if (ingest_cmd->parsed()) return kc::RunIngest(connected, ingest);
  if (ask_cmd->parsed()) return kc::RunAsk(connected, ask);
  if (search_cmd->parsed()) return kc::RunSearch(connected, search);
  if (get_cmd->parsed()) return kc::RunGet(connected, get);
  if (forget_cmd->parsed()) return kc::RunForget(connected, forget);
  if (stats_cmd->parsed()) return kc::RunStats(connected, stats);
  if (session_create_cmd->parsed()) return kc::RunSessionWrite(connected, session_create, false);
  if (session_append_cmd->parsed()) return kc::RunSessionWrite(connected, session_append, true);
  if (session_ask_cmd->parsed()) return kc::RunAsk(connected, session_ask);
  if (session_delete_cmd->parsed()) return kc::RunSessionDelete(connected, session_delete);
  if (session_list_cmd->parsed()) return kc::RunSessionList(connected, session_list);
  return 2;  // not reached: Parse returns an exit code unless a command was selected
}
