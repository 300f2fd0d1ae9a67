#include "daemon/server.h"

#include <pthread.h>
#include <signal.h>
#include <sys/stat.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <span>
#include <sstream>
#include <thread>

#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "base/status_macros.h"
#include "daemon/auth.h"
#include "daemon/cluster_log.h"
#include "daemon/http_server.h"
#include "daemon/metrics.h"
#include "daemon/openai_api.h"
#include "daemon/rest_api.h"
#include "daemon/scheduler_ask.h"
#include "daemon/scheduler_ingest.h"
#include "daemon/serve_config.h"
#include "daemon/server_service.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/health_check_service_interface.h"
#include "kernels/backend.h"
#include "knowledge/bundle.h"
#include "model/session_mapper.h"
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
// Threads gRPC keeps waiting for calls after a burst (see the builder below).
constexpr int kMaxIdleGrpcThreads = 256;

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
  KNOWD_ASSIGN_OR_RETURN(std::string cert, ReadFile(c.tls_cert, "--tls-cert"));
  KNOWD_ASSIGN_OR_RETURN(std::string key, ReadFile(c.tls_key, "--tls-key"));
  grpc::SslServerCredentialsOptions options;
  options.pem_key_cert_pairs.push_back({key, cert});
  if (!c.tls_client_ca.empty()) {
    KNOWD_ASSIGN_OR_RETURN(options.pem_root_certs, ReadFile(c.tls_client_ca, "--tls-client-ca"));
    options.client_certificate_request = GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
  }
  return grpc::SslServerCredentials(options);
}

// The address a client dials: the listen host with the port actually bound.
std::string BoundAddress(const std::string& listen, int port) {
  std::string host;
  int ignored = 0;
  if (!SplitHostPort(listen, &host, &ignored).ok()) host = listen;
  if (host.find(':') != std::string::npos) host = "[" + host + "]";
  return absl::StrCat(host, ":", port);
}

// The model, its tokenizer, its adapter (when there is one) and its calibration, on the
// configured backend. Without --model: the knowd-tiny bundle shipped beside the binary.
absl::StatusOr<knowledge::Bundle> LoadModel(const ServeConfig& config,
                                            const std::string& executable) {
  knowledge::BundleOptions options;
  options.model = config.model;
  if (options.model.empty()) {
    std::error_code ec;
    fs::path exe = fs::read_symlink("/proc/self/exe", ec);
    if (ec) exe = fs::absolute(executable, ec);
    KNOWD_ASSIGN_OR_RETURN(options.model, FindDefaultModel(exe.parent_path().string()));
  }
  options.adapter = config.adapter;
  options.backend = config.backend;
  options.threads = config.threads;
  return knowledge::LoadBundle(options);
}

// Without an adapter passages carry a 1×1 placeholder modulation and are found through BM25; the
// fingerprint "none" makes a later adapter refuse that bank until it is re-encoded.
storage::BankOptions BankOptionsFor(const ServeConfig& config, const Adapter* adapter) {
  storage::BankOptions o;
  o.data_dir = config.data_dir;
  o.index_factory = config.index_factory;
  o.index_search_params = config.index_search_params;
  o.latent_format =
      *storage::ParseLatentFormat(config.latent_format);  // LoadServeConfig checked it
  o.lexical_index = true;
  if (adapter != nullptr) {
    const AdapterSpec& spec = adapter->spec();
    o.key_dim = spec.key_dim;
    o.latent_rows = spec.slots;
    o.latent_cols = spec.latent_dim;
  } else {
    o.key_dim = 1;
    o.latent_rows = 1;
    o.latent_cols = 1;
  }
  o.fingerprint = knowledge::BankFingerprint(adapter);
  return o;
}

// Bytes one passage's modulation takes as stored; 0 without an adapter.
int64_t BytesPerModulation(const storage::BankOptions& o, const Adapter* adapter) {
  if (adapter == nullptr) return 0;
  return storage::ModulationBytes(o.key_dim, o.latent_rows, o.latent_cols, o.latent_format);
}

std::vector<Gauge> Gauges(const std::atomic<bool>& ready, const IngestBatcher& ingest,
                          const ForgetBatcher& forget, const AskScheduler& scheduler,
                          storage::MemoryBank& bank, bool sessions) {
  std::vector<Gauge> g;
  g.push_back({"knowd_ready", "1 when serving, 0 while starting or draining", ready ? 1.0 : 0});
  g.push_back({"knowd_queue_depth{queue=\"ingest\"}", "Requests waiting in a scheduler queue",
               static_cast<double>(ingest.queued())});
  g.push_back({"knowd_queue_depth{queue=\"ask\"}", "", static_cast<double>(scheduler.queued())});
  g.push_back({"knowd_queue_depth{queue=\"forget\"}", "", static_cast<double>(forget.queued())});
  g.push_back(
      {"knowd_ask_running", "Questions decoding now", static_cast<double>(scheduler.running())});
  absl::StatusOr<storage::BankStats> stats = bank.Stats();
  if (stats.ok()) {
    g.push_back({"knowd_bank_documents", "Documents in the memory bank",
                 static_cast<double>(stats->documents)});
    g.push_back({"knowd_bank_passages", "Passages in the memory bank",
                 static_cast<double>(stats->passages)});
    g.push_back({"knowd_bank_disk_bytes", "Bytes of the bank on disk",
                 static_cast<double>(stats->disk_bytes)});
  }
  if (sessions) {
    absl::StatusOr<storage::MemoryBank::SessionTotals> totals = bank.CountSessions(absl::Now());
    if (totals.ok()) {
      g.push_back({"knowd_sessions", "Live sessions, every namespace",
                   static_cast<double>(totals->sessions)});
      g.push_back({"knowd_session_bytes", "Bytes of the live sessions' stored states",
                   static_cast<double>(totals->state_bytes)});
    }
  }
  return g;
}

ClusterOptions ClusterOptionsFor(const ServeConfig& config) {
  ClusterOptions o;
  for (absl::string_view url : absl::StrSplit(config.cluster_nats, ',', absl::SkipWhitespace())) {
    o.servers.emplace_back(absl::StripAsciiWhitespace(url));
  }
  o.shards = config.shards;
  o.shard = config.shard;
  o.replica = config.replica;
  o.stream = config.cluster_stream;
  o.stream_replicas = config.cluster_stream_replicas;
  return o;
}

// The retrieval requests that name none get: --default-retrieval, or the bundle's per mode.
knowledge::RetrievalDefaults ServedRetrieval(const ServeConfig& config,
                                             const knowledge::Bundle& m) {
  if (config.default_retrieval == "bundle") return m.calibration.retrieval;
  knowledge::RetrievalDefaults r;
  r.all = FromProto(*ParseRetrieval(config.default_retrieval));
  return r;
}

// What the daemon serves, on stdout (the first line is the parseable contract) and in the log.
void PrintBanner(const ServeConfig& config, const knowledge::Bundle& m, const TokenStore& auth,
                 const std::string& grpc_address, const std::string& http_address) {
  const LlamaConfig& lm = m.model->config();
  const knowledge::RetrievalDefaults served = ServedRetrieval(config, m);
  using knowledge::RetrievalName;
  const std::string adapter_line =
      m.adapter != nullptr
          ? absl::StrCat("adapter ", m.adapter_path, " (fingerprint ",
                         m.adapter->spec().encoder_sha256.substr(0, 16), ", ",
                         m.adapter->spec().slots, " slots x ", m.adapter->spec().latent_dim,
                         "); default mode mac; retrieval: search ", RetrievalName(served.all),
                         ", rag ", RetrievalName(served.For(knowledge::AskMode::kRag)), ", mac ",
                         RetrievalName(served.For(knowledge::AskMode::kMac)), ", mac+rag ",
                         RetrievalName(served.For(knowledge::AskMode::kMacRag)))
          : "no adapter: serving closed-book and rag with BM25 retrieval only (mode mac is "
            "unavailable)";
  const std::string listening =
      absl::StrCat("listening on ", grpc_address, " (grpc)",
                   http_address.empty() ? "" : absl::StrCat(", ", http_address, " (http)"));
  const std::string model_line =
      absl::StrCat("model ", m.model_path, " (", lm.num_layers, " layers, hidden ", lm.hidden_size,
                   ", vocab ", lm.vocab_size, ", weights ", m.model->WeightTypes(), ", ",
                   absl::StrFormat("%.1f", m.model->WeightBytes() / 1048576.0), " MiB) on ",
                   m.model->backend()->name(), "; ", adapter_line);
  const std::string security =
      absl::StrCat("memory bank ", config.data_dir, "; auth ",
                   auth.open() ? "off (no tokens file)"
                               : absl::StrCat(auth.size(), " tokens from ", config.tokens_file),
                   "; tls ",
                   config.tls_cert.empty()        ? "off"
                   : config.tls_client_ca.empty() ? "on"
                                                  : "on (mTLS)");
  std::printf("knowd: %s\nknowd: %s\nknowd: %s\n", listening.c_str(), model_line.c_str(),
              security.c_str());
  std::fflush(stdout);
  spdlog::info("{}", listening);
  spdlog::info("{}", model_line);
  spdlog::info("{}", security);
}

}  // namespace

sigset_t BlockServeSignals() {
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  return signals;
}

int RunServe(const std::vector<std::string>& args, const std::string& executable) {
  // Signals are taken by sigwait() below; block them before anything else, so a SIGTERM that
  // arrives while the model or the bank is still loading waits for the drain instead of killing
  // the process, and so no thread started later (gRPC's, OpenMP's) receives one.
  sigset_t signals = BlockServeSignals();
  // Stored text is private: every file and directory the daemon creates is owner-only,
  // whatever umask it was started with.
  ::umask(077);

  // `knowd serve --help` is answered by the command line (daemon/main.cc), from ServeSettings().
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
  const ClusterOptions cluster_options = ClusterOptionsFor(config);
  if (absl::Status s = CheckClusterOptions(cluster_options); !s.ok()) return Fail(2, s);

  // The tokens first: a bad tokens file is a configuration error, found before minutes of loading.
  std::unique_ptr<TokenStore> tokens = std::make_unique<TokenStore>();
  if (!config.tokens_file.empty()) {
    absl::StatusOr<std::unique_ptr<TokenStore>> a = TokenStore::FromFile(config.tokens_file);
    if (!a.ok()) return Fail(2, a.status());
    tokens = *std::move(a);
  }
  const TokenStore& auth = *tokens;

  absl::StatusOr<knowledge::Bundle> loaded_model = LoadModel(config, executable);
  if (!loaded_model.ok()) return Fail(1, loaded_model.status());
  knowledge::Bundle& m = *loaded_model;
  const LlamaConfig& lm = m.model->config();
  const int encoder_window = config.max_passage_tokens + config.passage_overlap_tokens + 1;
  if (encoder_window > lm.max_position_embeddings) {
    return Fail(2,
                absl::InvalidArgumentError(absl::StrCat(
                    "--max-passage-tokens + --passage-overlap-tokens + 1 (BOS) = ", encoder_window,
                    " exceeds the model's context of ", lm.max_position_embeddings, " positions")));
  }
  storage::BankOptions bank_options = BankOptionsFor(config, m.adapter);
  absl::StatusOr<std::unique_ptr<storage::MemoryBank>> bank =
      storage::MemoryBank::Open(bank_options);
  if (!bank.ok()) {
    return Fail(1, absl::Status(bank.status().code(), absl::StrCat("memory bank ", config.data_dir,
                                                                   ": ", bank.status().message())));
  }

  // Owner-only, also for a bank created before the umask above was set.
  std::error_code perm_error;
  fs::permissions(config.data_dir, fs::perms::owner_all, fs::perm_options::replace, perm_error);
  if (perm_error) {
    spdlog::warn("memory bank {}: cannot make it owner-only: {}", config.data_dir,
                 perm_error.message());
  }

  // The schedulers.
  Metrics metrics;
  std::atomic<bool> ready{false};
  AskSchedulerOptions scheduler_options;
  scheduler_options.ask_max_batch = config.ask_max_batch;
  scheduler_options.ask_queue_size = config.ask_queue_size;
  scheduler_options.ask_hold = absl::Milliseconds(config.ask_hold_ms);
  scheduler_options.defaults.top_k = config.default_top_k;
  scheduler_options.defaults.subject_passages = config.subject_passages;
  scheduler_options.defaults.max_tokens = config.default_max_tokens;
  scheduler_options.retrieval = ServedRetrieval(config, m);
  scheduler_options.defaults.fusion = m.calibration.fusion;
  scheduler_options.defaults.abstain_below = m.calibration.abstain_below;
  // Sessions: the adapter directory's session mapper, when it has one (before the scheduler,
  // which applies its factors and so must stop first).
  std::unique_ptr<SessionMapper> session_mapper;
  if (!m.adapter_path.empty()) {
    absl::StatusOr<std::unique_ptr<SessionMapper>> loaded =
        SessionMapper::Load(m.adapter_path, m.model.get());
    if (loaded.ok()) {
      session_mapper = *std::move(loaded);
      spdlog::info("sessions: mapper {} ({} floats of state per session)",
                   session_mapper->spec().sha256.substr(0, 16), session_mapper->state_floats());
    } else if (!absl::IsNotFound(loaded.status())) {
      return Fail(1, loaded.status());
    }
  }
  AskScheduler scheduler(m.model.get(), m.tokenizer.get(), m.modulator.get(), bank->get(), &metrics,
                         scheduler_options);
  if (session_mapper != nullptr) scheduler.SetSessionFactors(&session_mapper->factors());
  if (absl::Status s = scheduler.Start(); !s.ok()) return Fail(1, s);
  IngestOptions ingest_options;
  ingest_options.max_batch = config.ingest_max_batch;
  ingest_options.max_wait_ms = config.ingest_max_wait_ms;
  ingest_options.queue_size = config.ingest_queue_size;
  IngestBatcher ingest(&scheduler, bank->get(), &metrics, ingest_options);
  ingest.Start();
  ForgetOptions forget_options;
  forget_options.queue_size = config.forget_queue_size;
  ForgetBatcher forget(bank->get(), &scheduler, &metrics, forget_options);
  forget.Start();
  storage::MemoryBank* bank_ptr = bank->get();
  metrics.SetGaugeSource([&] {
    return Gauges(ready, ingest, forget, scheduler, *bank_ptr, session_mapper != nullptr);
  });

  ServiceInfo info;
  info.model = m.model_path;
  info.adapter = m.adapter_path;
  info.fingerprint = bank_options.fingerprint.adapter_hash;
  info.version = KNOWD_VERSION;
  info.bytes_per_modulation = BytesPerModulation(bank_options, m.adapter);
  info.kv_bytes_per_token = int64_t{2} * lm.num_layers * lm.kv_dim() * 2;
  ServiceLimits limits;
  limits.max_response_bytes = std::min(config.max_response_bytes, config.max_message_bytes);
  limits.max_metadata_bytes = config.max_metadata_bytes;
  limits.max_metadata_entries = config.max_metadata_entries;
  limits.max_future_seconds = config.max_future_seconds;
  limits.max_document_bytes = config.max_document_bytes;
  limits.max_question_bytes = config.max_question_bytes;
  limits.max_passage_tokens = config.max_passage_tokens;
  limits.passage_overlap_tokens = config.passage_overlap_tokens;
  limits.max_position_embeddings = lm.max_position_embeddings;
  limits.ingest_in_flight_per_stream = std::max(8, 2 * config.ingest_max_batch);
  ClientWriteLimiter client_writes(config.client_writes_in_flight,
                                   config.client_forgets_per_second);
  KnowledgeServiceImpl service(&scheduler, &ingest, &forget, bank->get(), m.tokenizer.get(), &auth,
                               &metrics, info, limits, &client_writes);
  service.SetSessions(session_mapper.get(), config.session_ttl_seconds);

  // Scale-out: writes go through the cluster log, and this replica applies its shard's entries.
  std::unique_ptr<ClusterLog> cluster;
  if (cluster_options.enabled()) {
    absl::StatusOr<std::unique_ptr<ClusterLog>> opened =
        ClusterLog::Open(cluster_options, bank->get());
    if (!opened.ok()) return Fail(1, opened.status());
    cluster = *std::move(opened);
    service.SetCluster(cluster.get());
    if (absl::Status s = cluster->Start([&service](std::span<const LogRecord> records) {
          return service.ApplyLogRecords(records);
        });
        !s.ok()) {
      return Fail(1, s);
    }
  }

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
  // gRPC's sync server ends a thread whose call finished once more than MAX_POLLERS poll, and
  // starts one for each call that finds none: under a flood of short calls (thousands of Forgets
  // a second) that is a thread created and destroyed per call, stack faults and TLB shootdowns
  // included, on the cores questions need. Idle pollers cost nothing but their stacks.
  builder.SetSyncServerOption(grpc::ServerBuilder::SyncServerOption::MIN_POLLERS, 2);
  builder.SetSyncServerOption(grpc::ServerBuilder::SyncServerOption::MAX_POLLERS,
                              kMaxIdleGrpcThreads);
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || grpc_port == 0) {
    return Fail(1, absl::UnavailableError(absl::StrCat("cannot listen on ", config.listen,
                                                       " (grpc): address in use or invalid")));
  }
  // The OpenAI-compatible API asks through the service, as gRPC's Ask does; it outlives the HTTP
  // server that calls it.
  OpenAiOptions openai_options;
  openai_options.model_name = ServedModelName(m.model_path);
  openai_options.has_adapter = m.adapter != nullptr;
  OpenAiApi openai(&service, openai_options);
  HttpServer http(&metrics, &ready, config.http_threads,
                  absl::Milliseconds(config.http_read_timeout_ms));
  http.ServeOpenAi(&openai, config.max_message_bytes);
  // The REST API calls the service through the server's in-process channel: each call is the
  // gRPC call itself (tokens, checks, queues, drain, durability), without a socket or TLS.
  grpc::ChannelArguments rest_channel_args;
  rest_channel_args.SetMaxReceiveMessageSize(
      static_cast<int>(std::min<int64_t>(config.max_message_bytes, INT32_MAX)));
  rest_channel_args.SetMaxSendMessageSize(
      static_cast<int>(std::min<int64_t>(config.max_message_bytes, INT32_MAX)));
  RestApi rest(server->InProcessChannel(rest_channel_args));
  http.ServeRest(&rest, config.max_message_bytes);
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
  // A replica is ready once it has applied what its shard's log held (a router then sends it
  // reads that see every acknowledged write); a single daemon at once.
  std::atomic<bool> stopping{false};
  // Expired sessions are gone for every call at once; this removes their records, each minute.
  std::thread session_sweeper;
  if (session_mapper != nullptr) {
    session_sweeper = std::thread([&] {
      absl::Time next = absl::Now() + absl::Minutes(1);
      while (!stopping.load()) {
        absl::SleepFor(absl::Milliseconds(200));
        if (absl::Now() < next) continue;
        next = absl::Now() + absl::Minutes(1);
        absl::StatusOr<int> swept = bank_ptr->SweepSessions(absl::Now());
        if (!swept.ok()) {
          spdlog::warn("sessions: sweeping expired ones failed: {}", swept.status().ToString());
        } else if (*swept > 0) {
          spdlog::info("sessions: removed {} expired", *swept);
        }
      }
    });
  }
  std::thread readiness;
  if (cluster == nullptr) {
    ready = true;
  } else {
    readiness = std::thread([&] {
      while (!stopping.load() && !cluster->caught_up()) absl::SleepFor(absl::Milliseconds(50));
      if (stopping.load()) return;
      ready = true;
      spdlog::info("cluster: caught up with the log at sequence {}; ready", cluster->applied());
    });
  }
  // The server as a whole ("") and the service by name, for probes that ask for either.
  server->GetHealthCheckService()->SetServingStatus(kServiceName, true);
  server->GetHealthCheckService()->SetServingStatus(true);
  PrintBanner(config, m, auth, grpc_address, http_address);

  int signal = 0;
  while (true) {
    sigwait(&signals, &signal);
    if (signal != SIGHUP) break;
    // SIGHUP: the tokens file again, without a restart. A broken file keeps the tokens in use.
    absl::StatusOr<size_t> reloaded = tokens->Reload();
    if (config.tokens_file.empty()) {
      spdlog::info("SIGHUP: no --tokens-file to reload");
    } else if (reloaded.ok()) {
      spdlog::info("SIGHUP: {} tokens reloaded from {}", *reloaded, config.tokens_file);
    } else {
      spdlog::error("SIGHUP: {}; the {} tokens in use stay",
                    std::string(reloaded.status().message()), tokens->size());
    }
  }
  const absl::Time stop_deadline = absl::Now() + absl::Seconds(config.drain_timeout);
  spdlog::info("{}: draining (at most {} s)", signal == SIGTERM ? "SIGTERM" : "SIGINT",
               config.drain_timeout);
  stopping = true;
  if (readiness.joinable()) readiness.join();
  ready = false;
  server->GetHealthCheckService()->SetServingStatus(false);
  // New calls get UNAVAILABLE and open Ingest streams take no new document; in-flight calls may
  // finish until the drain deadline, then the server cancels what is left. The deadline leaves
  // part of --drain-timeout for stopping the schedulers and saving the index, so the process
  // exits within --drain-timeout. (gRPC's own Shutdown(deadline) would also wait out idle client
  // connections, seconds each.)
  const absl::Duration stop_reserve =
      std::min(absl::Seconds(config.drain_timeout) / 2, absl::Seconds(5));
  if (!service.Drain(stop_deadline - stop_reserve)) {
    spdlog::warn("calls still running after {:.1f} s: cancelling them",
                 absl::ToDoubleSeconds(absl::Seconds(config.drain_timeout) - stop_reserve));
  }
  // A handler that has returned may not have sent its status yet: a short grace lets those
  // finish instead of reaching their clients as cancelled, and bounds the wait for idle
  // connections.
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::milliseconds(250));
  // The log's consumer before the batchers it feeds: an apply in progress finishes, and the
  // bank's marker says where the next start resumes.
  if (cluster != nullptr) cluster->Stop();
  spdlog::info("calls drained; stopping the schedulers");
  ingest.Stop();
  forget.Stop();
  scheduler.Stop();
  http.Stop();
  // Joined here, not before the drain: it sleeps in 200 ms steps, and new calls would be admitted
  // while it wakes up. It only needs to be gone before the bank closes.
  if (session_sweeper.joinable()) session_sweeper.join();
  spdlog::info("saving the index");
  if (absl::Status s = (*bank)->Close(); !s.ok()) return Fail(1, s);
  spdlog::info("stopped; index saved ({:.1f} s of the {} s drain timeout left)",
               absl::ToDoubleSeconds(stop_deadline - absl::Now()), config.drain_timeout);
  return 0;
}

}  // namespace knowd
