#include "daemon/serve_config.h"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>
#include <variant>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "cli/flag_names.h"
#include "nlohmann/json.hpp"
#include "storage/memory_bank.h"

namespace knowd {
namespace {

using Field = std::variant<std::string ServeConfig::*, int ServeConfig::*, int64_t ServeConfig::*,
                           double ServeConfig::*>;

struct Key {
  const char* name;  // as on the command line, without "--"
  Field field;
  double min = 0;  // numeric keys only
  const char* help;
};

// The single list of settings: flags, environment variables and config-file keys all come from
// it.
const std::vector<Key>& Keys() {
  static const auto* keys = new std::vector<Key>{
      {"config", &ServeConfig::config, 0, "JSON config file (keys as these flags)"},
      {"listen", &ServeConfig::listen, 0, "gRPC address HOST:PORT (port 0 picks a free one)"},
      {"http-listen", &ServeConfig::http_listen, 0,
       "HTTP address for /metrics, /healthz, /readyz (\"\" disables)"},
      {"data-dir", &ServeConfig::data_dir, 0, "memory bank directory"},
      {"model", &ServeConfig::model, 0, "model: bundle directory or GGUF file"},
      {"adapter", &ServeConfig::adapter, 0,
       "adapter directory (default <model>/adapter; \"none\" serves without)"},
      {"tokens-file", &ServeConfig::tokens_file, 0, "JSON bearer tokens; unset = no auth"},
      {"tls-cert", &ServeConfig::tls_cert, 0, "server certificate chain (PEM)"},
      {"tls-key", &ServeConfig::tls_key, 0, "server private key (PEM)"},
      {"tls-client-ca", &ServeConfig::tls_client_ca, 0,
       "CA (PEM) that client certificates must chain to (mTLS)"},
      {"log-level", &ServeConfig::log_level, 0, "trace, debug, info, warn or error"},
      {"backend", &ServeConfig::backend, 0, "compute backend: cpu or cuda"},
      {"threads", &ServeConfig::threads, 0, "CPU compute threads (0: one per core)"},
      {"max-message-bytes", &ServeConfig::max_message_bytes, 1024, "largest gRPC message"},
      {"max-document-bytes", &ServeConfig::max_document_bytes, 1, "largest document text"},
      {"max-question-bytes", &ServeConfig::max_question_bytes, 1, "largest question or query"},
      {"max-response-bytes", &ServeConfig::max_response_bytes, 65536,
       "largest response built (gRPC clients receive 4 MiB by default)"},
      {"max-metadata-bytes", &ServeConfig::max_metadata_bytes, 0,
       "largest document metadata (keys and values together)"},
      {"max-metadata-entries", &ServeConfig::max_metadata_entries, 0,
       "most metadata keys a document may have"},
      {"max-future-seconds", &ServeConfig::max_future_seconds, 0,
       "how far past the daemon's clock a document's valid_from_unix may lie"},
      {"http-threads", &ServeConfig::http_threads, 2,
       "HTTP connections served at once (probes, metrics)"},
      {"http-read-timeout-ms", &ServeConfig::http_read_timeout_ms, 10,
       "how long an HTTP connection may take to send its request"},
      {"max-passage-tokens", &ServeConfig::max_passage_tokens, 8, "tokens per passage at most"},
      {"passage-overlap-tokens", &ServeConfig::passage_overlap_tokens, 0,
       "tokens of the previous passage the encoder also reads"},
      {"ingest-max-batch", &ServeConfig::ingest_max_batch, 1, "documents per encoder pass"},
      {"ingest-max-wait-ms", &ServeConfig::ingest_max_wait_ms, 0,
       "how long a batch waits to fill (ms)"},
      {"ingest-queue-size", &ServeConfig::ingest_queue_size, 1,
       "documents queued before RESOURCE_EXHAUSTED"},
      {"forget-queue-size", &ServeConfig::forget_queue_size, 1,
       "Forget calls queued before RESOURCE_EXHAUSTED"},
      {"ask-max-batch", &ServeConfig::ask_max_batch, 1, "questions decoded together"},
      {"ask-queue-size", &ServeConfig::ask_queue_size, 1,
       "questions queued before RESOURCE_EXHAUSTED"},
      {"ask-hold-ms", &ServeConfig::ask_hold_ms, 0,
       "while encoder work is ahead of its half of the engine, how long it waits after a "
       "question ends for the next question (ms; 0: never)"},
      {"client-writes-in-flight", &ServeConfig::client_writes_in_flight, 0,
       "documents and Forgets one client (token, else connection) may have in flight; more "
       "Forgets get RESOURCE_EXHAUSTED, its streams wait (0: no limit)"},
      {"client-forgets-per-second", &ServeConfig::client_forgets_per_second, 0,
       "Forget calls per second one client (token, else connection) is served at; the calls "
       "past it wait their turn (0: no limit)"},
      {"drain-timeout", &ServeConfig::drain_timeout, 0, "seconds in-flight calls get at shutdown"},
      {"session-ttl-seconds", &ServeConfig::session_ttl_seconds, 1,
       "how long a session lives after its last write when its client names no TTL"},
      {"default-top-k", &ServeConfig::default_top_k, 1, "passages retrieved when top_k is 0"},
      {"subject-passages", &ServeConfig::subject_passages, 0,
       "rag modes: retrieved passages on the best BM25 hit's subject (an update of its fact or "
       "the fact's older version) that join the prompt, at most"},
      {"default-max-tokens", &ServeConfig::default_max_tokens, 1,
       "answer tokens when max_tokens is 0"},
      {"default-retrieval", &ServeConfig::default_retrieval, 0,
       "retrieval when a request leaves it unset: lexical, dense, hybrid, or bundle (the "
       "bundle's knowledge.json)"},
      {"cluster-nats", &ServeConfig::cluster_nats, 0,
       "NATS servers (comma-separated URLs) of the cluster log; unset = a single daemon"},
      {"shards", &ServeConfig::shards, 1, "cluster: shards the namespaces are hashed to"},
      {"shard", &ServeConfig::shard, 0, "cluster: the shard this replica serves, from 0"},
      {"replica", &ServeConfig::replica, 0,
       "cluster: this replica's name, unique and the same across restarts (the pod name)"},
      {"cluster-stream", &ServeConfig::cluster_stream, 0, "cluster: the JetStream stream"},
      {"cluster-stream-replicas", &ServeConfig::cluster_stream_replicas, 1,
       "cluster: copies of the log JetStream keeps (quorum = a majority)"},
      {"index-factory", &ServeConfig::index_factory, 0,
       "FAISS index factory string, or auto (Flat while a namespace is small, then IVF)"},
      {"index-search-params", &ServeConfig::index_search_params, 0,
       "FAISS search settings of the index (efSearch=32, nprobe=16); empty: auto's own"},
      {"latent-format", &ServeConfig::latent_format, 0, "stored latents: fp16 or int8"},
  };
  return *keys;
}

// "http_listen", "HTTP-LISTEN" -> the key "http-listen".
const Key* FindKey(std::string_view name) {
  const std::string canonical = cli::CanonicalFlagName(name);
  for (const Key& key : Keys()) {
    if (canonical == key.name) return &key;
  }
  return nullptr;
}

std::string EnvName(const Key& key) {
  return "KNOWD_" + absl::AsciiStrToUpper(cli::CanonicalFlagName(key.name, '_'));
}

// Sets one key from text; `source` says where the text came from, for the error message.
absl::Status SetFromText(const Key& key, absl::string_view text, absl::string_view source,
                         ServeConfig* config) {
  auto out_of_range = [&](auto value) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": ", value, " is below the minimum ", key.min, " of ", key.name));
  };
  auto not_a_number = [&](absl::string_view kind) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": \"", text, "\" is not ", kind, " (", key.name, ")"));
  };
  if (auto* f = std::get_if<std::string ServeConfig::*>(&key.field)) {
    config->*(*f) = std::string(text);
    return absl::OkStatus();
  }
  if (auto* f = std::get_if<int ServeConfig::*>(&key.field)) {
    int value = 0;
    if (!absl::SimpleAtoi(text, &value)) return not_a_number("an integer");
    if (value < key.min) return out_of_range(value);
    config->*(*f) = value;
    return absl::OkStatus();
  }
  if (auto* f = std::get_if<int64_t ServeConfig::*>(&key.field)) {
    int64_t value = 0;
    if (!absl::SimpleAtoi(text, &value)) return not_a_number("an integer");
    if (value < key.min) return out_of_range(value);
    config->*(*f) = value;
    return absl::OkStatus();
  }
  auto* f = std::get_if<double ServeConfig::*>(&key.field);
  double value = 0;
  absl::string_view number = text;
  if (absl::EndsWith(number, "s")) number.remove_suffix(1);  // "30s" reads as 30
  if (!absl::SimpleAtod(number, &value) || !std::isfinite(value)) return not_a_number("a number");
  if (value < key.min) return out_of_range(value);
  config->*(*f) = value;
  return absl::OkStatus();
}

absl::Status ApplyFile(const std::string& path, ServeConfig* config) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("config file ", path, ": cannot be read"));
  std::stringstream text;
  text << in.rdbuf();
  nlohmann::json json = nlohmann::json::parse(text.str(), nullptr, /*allow_exceptions=*/false);
  if (json.is_discarded() || !json.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat("config file ", path, ": not a JSON object of settings"));
  }
  for (const auto& [name, value] : json.items()) {
    const Key* key = FindKey(name);
    const std::string source = absl::StrCat("config file ", path, ": key \"", name, "\"");
    if (key == nullptr || cli::CanonicalFlagName(name) == "config") {
      return absl::InvalidArgumentError(absl::StrCat(source, " is not a setting"));
    }
    std::string text;
    if (value.is_string()) {
      text = value.get<std::string>();
    } else if (value.is_number_integer()) {
      text = std::to_string(value.get<int64_t>());
    } else if (value.is_number()) {
      text = absl::StrCat(value.get<double>());
    } else {
      return absl::InvalidArgumentError(absl::StrCat(source, " must be a string or a number"));
    }
    KNOWD_RETURN_IF_ERROR(SetFromText(*key, text, source, config));
  }
  return absl::OkStatus();
}

struct FlagValue {
  const Key* key;
  std::string value;
};

absl::StatusOr<std::vector<FlagValue>> ParseFlags(std::span<const std::string> args) {
  std::vector<FlagValue> out;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (arg.size() < 3 || arg.rfind("--", 0) != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("unexpected argument \"", arg, "\" (serve takes only --flags)"));
    }
    std::string name = arg.substr(2);
    std::string value;
    bool has_value = false;
    if (size_t eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name.resize(eq);
      has_value = true;
    }
    const Key* key = FindKey(name);
    if (key == nullptr) return absl::InvalidArgumentError(absl::StrCat("unknown flag --", name));
    if (!has_value) {
      if (i + 1 >= args.size()) {
        return absl::InvalidArgumentError(absl::StrCat("--", name, " needs a value"));
      }
      value = args[++i];
    }
    out.push_back({key, std::move(value)});
  }
  return out;
}

}  // namespace

absl::StatusOr<ServeConfig> LoadServeConfig(std::span<const std::string> args,
                                            const EnvLookup& env) {
  KNOWD_ASSIGN_OR_RETURN(std::vector<FlagValue> flags, ParseFlags(args));
  ServeConfig config;
  // The config file named by the highest-precedence source.
  std::string file;
  if (const char* v = env("KNOWD_CONFIG"); v != nullptr) file = v;
  for (const FlagValue& f : flags) {
    if (std::string_view(f.key->name) == "config") file = f.value;
  }
  if (!file.empty()) {
    KNOWD_RETURN_IF_ERROR(ApplyFile(file, &config));
    config.config = file;
  }
  for (const Key& key : Keys()) {
    const std::string name = EnvName(key);
    if (const char* v = env(name.c_str()); v != nullptr && name != "KNOWD_CONFIG") {
      KNOWD_RETURN_IF_ERROR(SetFromText(key, v, absl::StrCat("environment ", name), &config));
    }
  }
  for (const FlagValue& f : flags) {
    KNOWD_RETURN_IF_ERROR(SetFromText(*f.key, f.value, absl::StrCat("--", f.key->name), &config));
  }
  if (config.tls_cert.empty() != config.tls_key.empty()) {
    return absl::InvalidArgumentError("--tls-cert and --tls-key go together");
  }
  if (!config.tls_client_ca.empty() && config.tls_cert.empty()) {
    return absl::InvalidArgumentError("--tls-client-ca needs --tls-cert and --tls-key");
  }
  if (config.passage_overlap_tokens >= config.max_passage_tokens) {
    return absl::InvalidArgumentError(
        "--passage-overlap-tokens must be smaller than --max-passage-tokens");
  }
  if (config.backend != "cpu" && config.backend != "cuda") {
    return absl::InvalidArgumentError(
        absl::StrCat("--backend must be cpu or cuda, not ", config.backend));
  }
  if (config.default_retrieval != "bundle" && !ParseRetrieval(config.default_retrieval)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--default-retrieval must be lexical, dense, hybrid or bundle, not ",
                     config.default_retrieval));
  }
  if (!storage::ParseLatentFormat(config.latent_format).has_value()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--latent-format must be fp16 or int8, not ", config.latent_format));
  }
  return config;
}

std::optional<v1::Retrieval> ParseRetrieval(std::string_view name) {
  if (name == "lexical") return v1::RETRIEVAL_LEXICAL;
  if (name == "dense") return v1::RETRIEVAL_DENSE;
  if (name == "hybrid") return v1::RETRIEVAL_HYBRID;
  return std::nullopt;
}

std::vector<ServeSetting> ServeSettings() {
  const ServeConfig defaults;
  std::vector<ServeSetting> out;
  for (const Key& key : Keys()) {
    ServeSetting setting{key.name, EnvName(key), "", "", key.help};
    std::visit(
        [&](auto member) {
          using Member = decltype(member);
          if constexpr (std::is_same_v<Member, std::string ServeConfig::*>) {
            setting.type = "TEXT";
            setting.default_value = defaults.*member;
          } else {
            setting.type = std::is_same_v<Member, double ServeConfig::*> ? "FLOAT" : "INT";
            setting.default_value = absl::StrCat(defaults.*member);
          }
        },
        key.field);
    out.push_back(std::move(setting));
  }
  return out;
}

absl::StatusOr<std::string> FindDefaultModel(std::string_view executable_dir) {
  namespace fs = std::filesystem;
  std::vector<fs::path> candidates = {fs::path("models/knowd-tiny")};
  if (!executable_dir.empty()) {
    const fs::path exe(executable_dir);
    candidates.push_back(exe / "../models/knowd-tiny");
    candidates.push_back(exe / "../../models/knowd-tiny");
  }
  std::string tried;
  for (const fs::path& p : candidates) {
    std::error_code ec;
    if (fs::is_regular_file(p / "config.json", ec)) return p.lexically_normal().string();
    absl::StrAppend(&tried, tried.empty() ? "" : ", ", p.lexically_normal().string());
  }
  return absl::NotFoundError(
      absl::StrCat("no --model given and the shipped bundle is not in ", tried));
}

}  // namespace knowd
