#include "daemon/server.h"

#include <pthread.h>
#include <signal.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "daemon/auth.h"
#include "daemon/http_server.h"
#include "daemon/metrics.h"
#include "daemon/scheduler_engine.h"
#include "daemon/scheduler_ingest.h"
#include "daemon/serve_config.h"
#include "daemon/server_service.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/health_check_service_interface.h"
#include "kernels/backend.h"
#include "model/adapter.h"
#include "model/tokenizer.h"
#include "model/transformer.h"
#include "spdlog/sinks/stdout_color_sinks.h"
#include "spdlog/spdlog.h"
#include "storage/memory_bank.h"

#ifndef KNOWD_VERSION
#define KNOWD_VERSION "dev"
#endif

namespace knowd {
namespace {

namespace fs = std::filesystem;

constexpr const char* kServiceName = "knowd.v1.KnowledgeService";

int Fail(int code, const absl::Status& status) {
  spdlog::error("knowd serve: {}", std::string(status.message()));
  return code;
}

absl::StatusOr<std::string> ReadFile(const std::string& path, absl::string_view what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(what, " ", path, ": cannot be read"));
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> Credentials(const ServeConfig& c) {
  if (c.tls_cert.empty()) return grpc::InsecureServerCredentials();
  absl::StatusOr<std::string> cert = ReadFile(c.tls_cert, "--tls-cert");
  if (!cert.ok()) return cert.status();
  absl::StatusOr<std::string> key = ReadFile(c.tls_key, "--tls-key");
  if (!key.ok()) return key.status();
  grpc::SslServerCredentialsOptions options;
  options.pem_key_cert_pairs.push_back({*key, *cert});
  if (!c.tls_client_ca.empty()) {
    absl::StatusOr<std::string> ca = ReadFile(c.tls_client_ca, "--tls-client-ca");
    if (!ca.ok()) return ca.status();
    options.pem_root_certs = *ca;
    options.client_certificate_request = GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
  }
  return grpc::SslServerCredentials(options);
}

// <model>/adapter when the model is a bundle directory that has one.
std::string DefaultAdapter(const std::string& model) {
  std::error_code ec;
  const fs::path dir = fs::path(model) / "adapter";
  return fs::is_regular_file(dir / "adapter.json", ec) ? dir.string() : "";
}

// The address a client dials: the listen host with the port actually bound.
std::string BoundAddress(const std::string& listen, int port) {
  std::string host;
  int ignored = 0;
  if (!SplitHostPort(listen, &host, &ignored).ok()) host = listen;
  if (host.find(':') != std::string::npos) host = "[" + host + "]";
  return absl::StrCat(host, ":", port);
}

}  // namespace

int RunServe(const std::vector<std::string>& args, const std::string& executable) {
  for (const std::string& a : args) {
    if (a == "--help" || a == "-h") {
      std::printf(
          "usage: knowd serve [flags]   (no flags: the shipped knowd-tiny bundle, ./knowd-data)\n"
          "Every flag is also an environment variable and a config-file key; precedence is\n"
          "flag > environment > config file > default.\n\n%s",
          ServeConfigHelp().c_str());
      return 0;
    }
  }
  absl::StatusOr<ServeConfig> loaded = LoadServeConfig(
      args, [](const char* name) { return static_cast<const char*>(std::getenv(name)); });
  spdlog::set_default_logger(spdlog::stderr_color_mt("knowd"));
  if (!loaded.ok()) return Fail(2, loaded.status());
  const ServeConfig config = *std::move(loaded);
  const spdlog::level::level_enum level = spdlog::level::from_str(config.log_level);
  if (level == spdlog::level::off && config.log_level != "off") {
    return Fail(
        2, absl::InvalidArgumentError(absl::StrCat(
               "--log-level must be trace, debug, info, warn or error, not ", config.log_level)));
  }
  spdlog::set_level(level);

  // Signals are taken by sigwait() below; block them before any thread starts so none of them
  // (gRPC's, OpenMP's) receives one.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  // The model.
  std::string model_path = config.model;
  if (model_path.empty()) {
    std::error_code ec;
    fs::path exe = fs::read_symlink("/proc/self/exe", ec);
    if (ec) exe = fs::absolute(executable, ec);
    absl::StatusOr<std::string> found = FindDefaultModel(exe.parent_path().string());
    if (!found.ok()) return Fail(1, found.status());
    model_path = *found;
  }
  std::unique_ptr<Backend> backend;
  if (config.backend == "cpu") {
    backend = MakeCpuBackend(config.threads);
  } else if (config.backend == "cuda") {
    absl::StatusOr<std::unique_ptr<Backend>> cuda = MakeCudaBackend(0);
    if (!cuda.ok()) return Fail(1, cuda.status());
    backend = *std::move(cuda);
  } else {
    return Fail(2, absl::InvalidArgumentError(
                       absl::StrCat("--backend must be cpu or cuda, not ", config.backend)));
  }
  absl::StatusOr<std::unique_ptr<Transformer>> model = Transformer::Load(model_path, backend.get());
  if (!model.ok()) return Fail(1, model.status());
  absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer = LoadTokenizer(model_path);
  if (!tokenizer.ok()) return Fail(1, tokenizer.status());

  const int encoder_window = config.max_passage_tokens + config.passage_overlap_tokens + 1;
  if (encoder_window > (*model)->config().max_position_embeddings) {
    return Fail(2, absl::InvalidArgumentError(
                       absl::StrCat("--max-passage-tokens + --passage-overlap-tokens + 1 (BOS) = ",
                                    encoder_window, " exceeds the model's context of ",
                                    (*model)->config().max_position_embeddings, " positions")));
  }
  std::string adapter_path = config.adapter == "none" ? "" : config.adapter;
  if (config.adapter.empty()) adapter_path = DefaultAdapter(model_path);
  std::unique_ptr<Adapter> adapter;
  if (!adapter_path.empty()) {
    absl::StatusOr<std::unique_ptr<Adapter>> a = Adapter::Load(adapter_path, model->get());
    if (!a.ok()) {
      return Fail(1, absl::Status(a.status().code(), absl::StrCat("adapter ", adapter_path, ": ",
                                                                  a.status().message())));
    }
    adapter = *std::move(a);
  }

  // The bank. Without an adapter passages carry a 1×1 placeholder modulation and are found
  // through BM25; the fingerprint "none" makes a later adapter refuse that bank until it is
  // re-encoded.
  const LlamaConfig& lm = (*model)->config();
  storage::BankOptions bank_options;
  bank_options.data_dir = config.data_dir;
  bank_options.index_factory = config.index_factory;
  bank_options.latent_format =
      config.latent_format == "int8" ? storage::LatentFormat::kInt8 : storage::LatentFormat::kFp16;
  bank_options.lexical_index = true;
  int64_t bytes_per_modulation = 0;
  if (adapter != nullptr) {
    const AdapterSpec& spec = adapter->spec();
    bank_options.key_dim = spec.key_dim;
    bank_options.latent_rows = spec.slots;
    bank_options.latent_cols = spec.latent_dim;
    bank_options.fingerprint = {spec.adapter_sha256, spec.base_sha256};
    const int64_t cells = int64_t{spec.slots} * spec.latent_dim;
    bytes_per_modulation = (bank_options.latent_format == storage::LatentFormat::kInt8
                                ? cells + int64_t{spec.slots} * 4
                                : cells * 2) +
                           int64_t{spec.key_dim} * 4;
  } else {
    bank_options.key_dim = 1;
    bank_options.latent_rows = 1;
    bank_options.latent_cols = 1;
    bank_options.fingerprint = {"none", ""};
  }
  absl::StatusOr<std::unique_ptr<storage::MemoryBank>> bank =
      storage::MemoryBank::Open(bank_options);
  if (!bank.ok()) {
    return Fail(1, absl::Status(bank.status().code(), absl::StrCat("memory bank ", config.data_dir,
                                                                   ": ", bank.status().message())));
  }

  TokenAuthorizer auth;
  if (!config.tokens_file.empty()) {
    absl::StatusOr<TokenAuthorizer> a = TokenAuthorizer::FromFile(config.tokens_file);
    if (!a.ok()) return Fail(2, a.status());
    auth = *std::move(a);
  }

  // The schedulers.
  Metrics metrics;
  std::atomic<bool> ready{false};
  EngineOptions engine_options;
  engine_options.ask_max_batch = config.ask_max_batch;
  engine_options.ask_queue_size = config.ask_queue_size;
  engine_options.default_top_k = config.default_top_k;
  engine_options.default_max_tokens = config.default_max_tokens;
  Engine engine(model->get(), tokenizer->get(), adapter.get(), bank->get(), &metrics,
                engine_options);
  if (absl::Status s = engine.Start(); !s.ok()) return Fail(1, s);
  IngestOptions ingest_options;
  ingest_options.max_batch = config.ingest_max_batch;
  ingest_options.max_wait_ms = config.ingest_max_wait_ms;
  ingest_options.queue_size = config.ingest_queue_size;
  IngestBatcher ingest(&engine, bank->get(), &metrics, ingest_options);
  ingest.Start();
  storage::MemoryBank* bank_ptr = bank->get();
  metrics.SetGaugeSource([&]() {
    std::vector<Gauge> g;
    g.push_back({"knowd_ready", "1 when serving, 0 while starting or draining", ready ? 1.0 : 0});
    g.push_back({"knowd_queue_depth{queue=\"ingest\"}", "Requests waiting in a scheduler queue",
                 static_cast<double>(ingest.queued())});
    g.push_back({"knowd_queue_depth{queue=\"ask\"}", "", static_cast<double>(engine.queued())});
    g.push_back(
        {"knowd_ask_running", "Questions decoding now", static_cast<double>(engine.running())});
    absl::StatusOr<storage::BankStats> stats = bank_ptr->Stats();
    if (stats.ok()) {
      g.push_back({"knowd_bank_documents", "Documents in the memory bank",
                   static_cast<double>(stats->documents)});
      g.push_back({"knowd_bank_passages", "Passages in the memory bank",
                   static_cast<double>(stats->passages)});
      g.push_back({"knowd_bank_disk_bytes", "Bytes of the bank on disk",
                   static_cast<double>(stats->disk_bytes)});
    }
    return g;
  });

  ServiceInfo info;
  info.model = model_path;
  info.adapter = adapter_path;
  info.fingerprint = bank_options.fingerprint.adapter_hash;
  info.version = KNOWD_VERSION;
  info.bytes_per_modulation = bytes_per_modulation;
  info.kv_bytes_per_token = int64_t{2} * lm.num_layers * lm.kv_dim() * 2;
  ServiceLimits limits;
  limits.max_document_bytes = config.max_document_bytes;
  limits.max_question_bytes = config.max_question_bytes;
  limits.max_passage_tokens = config.max_passage_tokens;
  limits.passage_overlap_tokens = config.passage_overlap_tokens;
  limits.max_position_embeddings = lm.max_position_embeddings;
  limits.ingest_in_flight_per_stream = std::max(8, 2 * config.ingest_max_batch);
  KnowledgeServiceImpl service(&engine, &ingest, bank->get(), tokenizer->get(), &auth, &metrics,
                               info, limits);

  // gRPC.
  absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> credentials = Credentials(config);
  if (!credentials.ok()) return Fail(2, credentials.status());
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int grpc_port = 0;
  builder.AddListeningPort(config.listen, *credentials, &grpc_port);
  builder.SetMaxReceiveMessageSize(
      static_cast<int>(std::min<int64_t>(config.max_message_bytes, INT32_MAX)));
  builder.SetMaxSendMessageSize(
      static_cast<int>(std::min<int64_t>(config.max_message_bytes, INT32_MAX)));
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || grpc_port == 0) {
    return Fail(1, absl::UnavailableError(absl::StrCat("cannot listen on ", config.listen,
                                                       " (grpc): address in use or invalid")));
  }
  HttpServer http(&metrics, &ready);
  std::string http_address;
  if (!config.http_listen.empty()) {
    absl::StatusOr<int> http_port = http.Start(config.http_listen);
    if (!http_port.ok()) {
      server->Shutdown();
      return Fail(1, http_port.status());
    }
    http_address = BoundAddress(config.http_listen, *http_port);
  }

  const std::string grpc_address = BoundAddress(config.listen, grpc_port);
  ready = true;
  // The server as a whole ("") and the service by name, for probes that ask for either.
  server->GetHealthCheckService()->SetServingStatus(kServiceName, true);
  server->GetHealthCheckService()->SetServingStatus(true);
  const std::string adapter_line =
      adapter != nullptr
          ? absl::StrCat("adapter ", adapter_path, " (fingerprint ",
                         adapter->spec().adapter_sha256.substr(0, 16), ", ", adapter->spec().slots,
                         " slots x ", adapter->spec().latent_dim, "); default mode mac")
          : "no adapter: serving closed-book and rag with BM25 retrieval only (mode mac is "
            "unavailable)";
  std::printf("knowd: listening on %s (grpc)%s\n", grpc_address.c_str(),
              http_address.empty() ? "" : absl::StrCat(", ", http_address, " (http)").c_str());
  std::printf("knowd: model %s (%d layers, hidden %d, vocab %d); %s\n", model_path.c_str(),
              lm.num_layers, lm.hidden_size, lm.vocab_size, adapter_line.c_str());
  std::printf("knowd: memory bank %s; auth %s; tls %s\n", config.data_dir.c_str(),
              auth.open() ? "off (no tokens file)"
                          : absl::StrCat(auth.size(), " tokens from ", config.tokens_file).c_str(),
              config.tls_cert.empty()        ? "off"
              : config.tls_client_ca.empty() ? "on"
                                             : "on (mTLS)");
  std::fflush(stdout);
  spdlog::info("listening on {} (grpc){}", grpc_address,
               http_address.empty() ? "" : absl::StrCat(", ", http_address, " (http)"));
  spdlog::info("model {}; {}", model_path, adapter_line);

  int signal = 0;
  sigwait(&signals, &signal);
  spdlog::info("{}: draining (at most {} s)", signal == SIGTERM ? "SIGTERM" : "SIGINT",
               config.drain_timeout);
  ready = false;
  server->GetHealthCheckService()->SetServingStatus(false);
  // New calls get UNAVAILABLE; in-flight ones may finish until the drain deadline, then the
  // server cancels what is left. (gRPC's own Shutdown(deadline) would also wait out idle client
  // connections, seconds each.)
  const absl::Time drain_deadline = absl::Now() + absl::Seconds(config.drain_timeout);
  if (!service.Drain(drain_deadline)) {
    spdlog::warn("calls still running after {} s: cancelling them", config.drain_timeout);
  }
  server->Shutdown(std::chrono::system_clock::now());
  spdlog::info("calls drained; stopping the schedulers");
  ingest.Stop();
  engine.Stop();
  http.Stop();
  spdlog::info("saving the index");
  if (absl::Status s = (*bank)->Close(); !s.ok()) return Fail(1, s);
  spdlog::info("stopped; index saved");
  return 0;
}

}  // namespace knowd
