// Configuration of `knowd serve`. Every setting has one name, used in four places:
//   command line   --http-listen 127.0.0.1:7071   (or --http-listen=..., or --http_listen)
//   environment    KNOWD_HTTP_LISTEN=127.0.0.1:7071
//   config file    {"http-listen": "127.0.0.1:7071"}   (JSON object; "http_listen" also accepted)
//   default        the value in ServeConfig below
// Precedence: flag > environment > config file > default. The config file itself comes from
// --config, else KNOWD_CONFIG. docs/operations.md lists every key.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "knowd/v1/knowd.pb.h"

namespace knowd {

struct ServeConfig {
  std::string config;                          // the JSON config file read (if any)
  std::string listen = "127.0.0.1:7070";       // gRPC; port 0 picks a free port
  std::string http_listen = "127.0.0.1:7071";  // metrics and health; "" disables
  std::string data_dir = "./knowd-data";
  std::string model;        // "" = the shipped knowd-tiny bundle (FindDefaultModel)
  std::string adapter;      // "" = <model>/adapter when present; "none" serves without one
  std::string tokens_file;  // "" = no authentication (keep the loopback listen address)
  std::string tls_cert;
  std::string tls_key;
  std::string tls_client_ca;       // set: clients must present a certificate signed by it (mTLS)
  std::string log_level = "info";  // trace, debug, info, warn, error
  std::string backend = "cpu";     // cpu or cuda
  int threads = 0;                 // CPU compute threads; 0 = one per core

  // Limits.
  int64_t max_message_bytes = 16 << 20;  // gRPC receive/send message size
  // Responses are kept within this (gRPC clients' default receive limit): metadata, then passages
  // beyond it are left out and the response says so.
  int64_t max_response_bytes = 4 << 20;
  int64_t max_document_bytes = 1 << 20;
  int64_t max_question_bytes = 4096;
  int64_t max_metadata_bytes = 64 << 10;  // keys and values of one document, together
  int max_metadata_entries = 256;
  // valid_from_unix may lie at most this far past the daemon's clock: a far-future date would
  // make its document win every later "newer fact".
  int64_t max_future_seconds = 24 * 3600;

  // HTTP (/healthz, /readyz, /metrics): connections served at once, and how long one may take to
  // send its request before it is closed (idle connections must not starve the probes).
  int http_threads = 128;
  int http_read_timeout_ms = 2000;

  // Passages: a document is cut into passages of at most max_passage_tokens tokens; the encoder
  // also reads up to passage_overlap_tokens tokens of the previous passage as context.
  int max_passage_tokens = 256;
  int passage_overlap_tokens = 32;

  // Scheduling.
  int ingest_max_batch = 32;     // documents per encoder pass
  int ingest_max_wait_ms = 5;    // how long the first document of a batch waits for company
  int ingest_queue_size = 1024;  // documents waiting; more get RESOURCE_EXHAUSTED
  int forget_queue_size = 1024;  // Forget calls waiting; more get RESOURCE_EXHAUSTED
  int ask_max_batch = 8;         // sequences per engine forward pass
  int ask_queue_size = 256;      // questions waiting; more get RESOURCE_EXHAUSTED
  // While encoder passes have taken more than their half of the engine thread, how long the
  // engine keeps them waiting after a question ends for the next one (0: not at all).
  int ask_hold_ms = 5;
  int64_t session_ttl_seconds = 24 * 3600;  // a session's TTL when its client names none
  // Writes (documents and Forget calls) one client, i.e. one token, else one connection, may
  // have queued or in progress; past it Forgets get RESOURCE_EXHAUSTED and its Ingest streams
  // wait (0: no limit).
  int client_writes_in_flight = 128;
  // Forget calls per second one client is served at; past it a call waits its turn (up to its
  // deadline, else RESOURCE_EXHAUSTED with a retry hint). A call may name many ids (0: no limit).
  double client_forgets_per_second = 1000;
  double drain_timeout = 30;  // seconds in-flight calls get at shutdown

  // Answer defaults (used when a request leaves them 0).
  int default_top_k = 3;
  int subject_passages = 2;
  int default_max_tokens = 32;
  // Retrieval when a request leaves it unspecified and an adapter is loaded: lexical (BM25),
  // dense (the adapter's keys), hybrid (both, fused by weighted reciprocal rank) or bundle (the
  // one the bundle's knowledge.json names, chosen by recall on its valid split; lexical when it
  // names none). Hybrid fuses with the bundle's weights. Without an adapter retrieval is always
  // lexical.
  std::string default_retrieval = "bundle";

  // Scale-out (daemon/cluster_log.h): "" = a single daemon.
  std::string cluster_nats;  // comma-separated NATS URLs
  int shards = 1;
  int shard = 0;
  std::string replica;  // this replica's name (its durable consumer)
  std::string cluster_stream = "knowd";
  int cluster_stream_replicas = 3;

  // Memory bank.
  // FAISS index_factory string, or auto: exact Flat while a namespace is small, IVF past the
  // size where Flat stops being the fastest (storage::BankOptions::index_factory).
  std::string index_factory = "auto";
  // FAISS ParameterSpace settings for it ("efSearch=32", "nprobe=16"); empty: auto's own, or
  // FAISS's defaults. Search-time only: a change applies at the next start without a rebuild.
  std::string index_search_params;
  std::string latent_format = "int8";  // int8 (+ a scale per row) or fp16
};

// "lexical", "dense" or "hybrid" as the API's enum; nullopt for anything else.
std::optional<v1::Retrieval> ParseRetrieval(std::string_view name);

// Reads the environment variable `name`, or null. Tests pass their own.
using EnvLookup = std::function<const char*(const char* name)>;

// Builds the configuration from `args` (the arguments after "serve"), the environment and the
// config file they name. INVALID_ARGUMENT names the bad flag, variable or key and why (unknown
// name, a value that is not a number, a number out of range, a positional argument);
// NOT_FOUND / INVALID_ARGUMENT for a config file that cannot be read or is not a JSON object.
absl::StatusOr<ServeConfig> LoadServeConfig(std::span<const std::string> args,
                                            const EnvLookup& env);

// One setting as `knowd serve --help` shows it, read from the table LoadServeConfig parses with.
struct ServeSetting {
  std::string name;           // the flag without "--", also the config-file key: "http-listen"
  std::string env;            // its environment variable: "KNOWD_HTTP_LISTEN"
  std::string type;           // TEXT, INT or FLOAT
  std::string default_value;  // ServeConfig's default as text ("" when empty)
  std::string help;
};
std::vector<ServeSetting> ServeSettings();

// The shipped bundle: models/knowd-tiny under the working directory, else beside the executable
// (<exe dir>/../models/knowd-tiny, <exe dir>/../../models/knowd-tiny). NOT_FOUND lists where it
// looked.
absl::StatusOr<std::string> FindDefaultModel(std::string_view executable_dir);

}  // namespace knowd
