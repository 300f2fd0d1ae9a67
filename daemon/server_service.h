// The gRPC KnowledgeService (proto/knowd/v1/knowd.proto is the contract): request validation,
// authorization, and hand-off to the schedulers. Handlers run on gRPC's threads; they never touch
// the Transformer or the Adapter (the AskScheduler does), only the tokenizer and the bank, which
// are thread-safe.
#pragma once

#include <chrono>
#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "daemon/auth.h"
#include "daemon/cluster_log.h"
#include "daemon/metrics.h"
#include "daemon/request_checks.h"
#include "daemon/scheduler_ask.h"
#include "daemon/scheduler_forget.h"
#include "daemon/scheduler_ingest.h"
#include "grpcpp/grpcpp.h"
#include "knowd/v1/knowd.grpc.pb.h"
#include "model/session_mapper.h"
#include "model/tokenizer.h"
#include "storage/memory_bank.h"

namespace knowd {

// The one place an absl::Status becomes a grpc::Status (the codes share their numbers).
grpc::Status ToGrpcStatus(const absl::Status& status);

// What Stats reports about the daemon itself.
struct ServiceInfo {
  std::string model;
  std::string adapter;      // "" when none
  std::string fingerprint;  // the bank's adapter fingerprint
  std::string version;
  int64_t bytes_per_modulation = 0;
  int64_t kv_bytes_per_token = 0;  // K and V of every layer in f16
  absl::Time started = absl::Now();
};

class KnowledgeServiceImpl final : public v1::KnowledgeService::Service {
  class CallGuard;

 public:
  // Everything must outlive the service. `writes` (null: no limit) caps each client's writes in
  // flight: Forget calls past it get RESOURCE_EXHAUSTED with a retry-after-ms hint, Ingest
  // streams wait.
  KnowledgeServiceImpl(AskScheduler* scheduler, IngestBatcher* ingest, ForgetBatcher* forget,
                       storage::MemoryBank* bank, const Tokenizer* tokenizer,
                       const TokenStore* auth, Metrics* metrics, ServiceInfo info,
                       ServiceLimits limits, ClientWriteLimiter* writes = nullptr);

  // Refuses new calls (UNAVAILABLE), makes open Ingest streams refuse further documents, and
  // waits until the calls in flight have finished or `deadline` passed. An Ingest stream whose
  // documents are all acknowledged is cancelled rather than waited for (an idle client may hold
  // it open indefinitely). Returns false when calls were still running at the deadline.
  bool Drain(absl::Time deadline);

  // OK when `authorization` (an Authorization header's value; nullopt when absent) carries a
  // known token, or no tokens are configured; UNAUTHENTICATED otherwise.
  absl::Status CheckToken(std::optional<std::string_view> authorization) const {
    return auth_->Authenticate(authorization).status();
  }

  // One Ask from a transport other than gRPC (the OpenAI-compatible HTTP API,
  // daemon/openai_api.h), through the same code as gRPC's Ask. While it lives it counts as a call
  // in flight for the drain; when it ends it is counted in knowd_rpc_total under its method.
  class AskCall {
   public:
    ~AskCall();
    // Streams the answer: every chunk to `write` (false: the client went away, the question is
    // cancelled), the last one with `final` set (its passages' metadata filled in as gRPC's).
    // `cancelled` is polled between chunks. The question's error otherwise.
    absl::Status Stream(const std::function<bool()>& cancelled,
                        const std::function<bool(v1::AskChunk&&)>& write);

   private:
    friend class KnowledgeServiceImpl;
    AskCall() = default;
    KnowledgeServiceImpl* service_ = nullptr;
    std::unique_ptr<CallGuard> guard_;
    std::shared_ptr<AskJob> job_;
    const char* method_ = "";
    std::string peer_;
    absl::Time start_;
    absl::Status status_;
  };
  // What gRPC's Ask does before its answer streams: admission (UNAVAILABLE once draining), the
  // caller's token from `authorization` (the value of its Authorization header; nullopt when
  // absent), the request checks (daemon/request_checks.h), the read role on the namespace, a
  // memory mode's non-empty namespace (NOT_FOUND), and the ask queue (RESOURCE_EXHAUSTED when
  // full). A refused call is counted under `method` and `peer` and its error returned.
  absl::StatusOr<std::unique_ptr<AskCall>> StartAsk(const char* method, std::string peer,
                                                    std::optional<std::string_view> authorization,
                                                    const v1::AskRequest& request,
                                                    absl::Time deadline = absl::InfiniteFuture());

  // Scale-out (daemon/cluster_log.h): from now on writes go through `cluster`'s log, namespaces
  // of other shards are refused, and reads may wait for a log position. Call before serving.
  void SetCluster(ClusterLog* cluster) { cluster_ = cluster; }
  // Sessions (CreateSession ... ListSessions, AskRequest.session_id) through `mapper` (null: the
  // bundle has none, and session calls get FAILED_PRECONDITION); `default_ttl_seconds` is a
  // session's TTL when its client names none. Call before serving.
  void SetSessions(SessionMapper* mapper, int64_t default_ttl_seconds) {
    sessions_ = mapper;
    session_ttl_seconds_ = default_ttl_seconds;
  }
  // Applies entries of the cluster log to this replica's bank, in order, through the same
  // batchers as a single daemon's writes (daemon/server_cluster.cc). The ClusterLog's Applier.
  absl::Status ApplyLogRecords(std::span<const LogRecord> records);

  grpc::Status Ingest(grpc::ServerContext* context,
                      grpc::ServerReaderWriter<v1::IngestAck, v1::IngestRequest>* stream) override;
  grpc::Status Ask(grpc::ServerContext* context, const v1::AskRequest* request,
                   grpc::ServerWriter<v1::AskChunk>* writer) override;
  grpc::Status Search(grpc::ServerContext* context, const v1::SearchRequest* request,
                      v1::SearchResponse* response) override;
  grpc::Status Get(grpc::ServerContext* context, const v1::GetRequest* request,
                   v1::Document* response) override;
  grpc::Status Forget(grpc::ServerContext* context, const v1::ForgetRequest* request,
                      v1::ForgetResponse* response) override;
  grpc::Status Stats(grpc::ServerContext* context, const v1::StatsRequest* request,
                     v1::StatsResponse* response) override;
  grpc::Status CreateSession(grpc::ServerContext* context,
                             grpc::ServerReader<v1::SessionChunk>* reader,
                             v1::Session* response) override;
  grpc::Status AppendSession(grpc::ServerContext* context,
                             grpc::ServerReader<v1::SessionChunk>* reader,
                             v1::Session* response) override;
  grpc::Status DeleteSession(grpc::ServerContext* context, const v1::DeleteSessionRequest* request,
                             v1::DeleteSessionResponse* response) override;
  grpc::Status ListSessions(grpc::ServerContext* context, const v1::ListSessionsRequest* request,
                            v1::ListSessionsResponse* response) override;

 private:
  absl::Status DoIngest(grpc::ServerContext* context,
                        grpc::ServerReaderWriter<v1::IngestAck, v1::IngestRequest>* stream);
  absl::Status DoAsk(grpc::ServerContext* context, const v1::AskRequest& request,
                     grpc::ServerWriter<v1::AskChunk>* writer);
  absl::Status DoSearch(grpc::ServerContext* context, const v1::SearchRequest& request,
                        v1::SearchResponse* response);
  absl::Status DoGet(grpc::ServerContext* context, const v1::GetRequest& request,
                     v1::Document* response);
  absl::Status DoForget(grpc::ServerContext* context, const v1::ForgetRequest& request,
                        v1::ForgetResponse* response);
  absl::Status DoStats(grpc::ServerContext* context, const v1::StatsRequest& request,
                       v1::StatsResponse* response);
  // CreateSession (append = false) and AppendSession.
  absl::Status DoSessionStream(grpc::ServerContext* context,
                               grpc::ServerReader<v1::SessionChunk>* reader, bool append,
                               v1::Session* response);
  absl::Status DoDeleteSession(grpc::ServerContext* context,
                               const v1::DeleteSessionRequest& request);
  absl::Status DoListSessions(grpc::ServerContext* context, const v1::ListSessionsRequest& request,
                              v1::ListSessionsResponse* response);
  // FAILED_PRECONDITION when the bundle has no session mapper; the cluster's refusal.
  absl::Status CheckSessionsServed() const;
  // The stored session `id` of `name_space`, checked against the mapper: NOT_FOUND when unknown
  // or expired, FAILED_PRECONDITION when another mapper wrote it.
  absl::StatusOr<storage::Session> LoadSession(std::string_view name_space, std::string_view id);

  // The checks and queueing that StartAsk describes, shared by gRPC's Ask and StartAsk.
  absl::StatusOr<std::shared_ptr<AskJob>> SubmitAsk(std::optional<std::string_view> authorization,
                                                    const v1::AskRequest& request,
                                                    absl::Time deadline);
  // A queued question's chunks to `write` until the final one (AskCall::Stream).
  absl::Status StreamAsk(AskJob& job, const std::function<bool()>& cancelled,
                         const std::function<bool(v1::AskChunk&&)>& write);
  // Validates one document and queues it (refuses it UNAVAILABLE once draining); the returned
  // future gives its ack.
  struct PendingAck;
  PendingAck StartIngest(const v1::IngestRequest& request, int64_t position, const Grant& grant,
                         absl::Time deadline, const std::shared_ptr<std::atomic<bool>>& cancelled,
                         std::unique_ptr<WritePermit> permit);
  // Whose writes a call's are, for the per-client cap: its bearer token (hashed), else its
  // connection (gRPC's peer address).
  static std::string ClientKey(const grpc::ServerContext* context);
  // An open Ingest stream, for the drain.
  struct IngestStream {
    grpc::ServerContext* context = nullptr;
    std::atomic<int> unacked{0};  // documents read whose ack is not written yet
  };
  absl::StatusOr<Grant> Authenticate(grpc::ServerContext* context) const;
  // In a cluster: FAILED_PRECONDITION for a namespace of another shard. OK otherwise.
  absl::Status CheckShard(std::string_view name_space) const;
  // In a cluster: waits until this replica has applied the log up to `sequence` (0: no wait).
  absl::Status WaitForLog(uint64_t sequence, absl::Time deadline,
                          const std::function<bool()>& cancelled) const;
  absl::Status ForgetThroughLog(grpc::ServerContext* context, const v1::ForgetRequest& request,
                                const std::string& name_space, absl::Time deadline,
                                v1::ForgetResponse* response);
  // Validates one document and splits it into the job the ingest batcher stores.
  absl::Status PrepareIngest(const v1::IngestRequest& request, IngestJob* job);
  static std::optional<std::string_view> AuthorizationOf(const grpc::ServerContext* context);
  bool Draining();
  // Fills each passage's metadata from its document while the passages stay within
  // `budget_bytes` in all; returns true when some metadata was left out for that.
  bool FillMetadata(std::string_view name_space,
                    google::protobuf::RepeatedPtrField<v1::Passage>* passages,
                    int64_t budget_bytes);
  void RecordPassageTokens(int tokens);
  int64_t MedianPassageTokens();
  void SamplePassageTokens(const storage::BankStats& stats);

  AskScheduler* const scheduler_;
  IngestBatcher* const ingest_;
  ForgetBatcher* const forget_;
  storage::MemoryBank* const bank_;
  const Tokenizer* const tokenizer_;
  const TokenStore* const auth_;
  Metrics* const metrics_;
  const ServiceInfo info_;
  const ServiceLimits limits_;
  ClientWriteLimiter* const writes_;

  std::mutex drain_mu_;
  std::condition_variable drain_cv_;
  bool draining_ = false;
  int in_flight_ = 0;
  std::set<IngestStream*> ingest_streams_;

  ClusterLog* cluster_ = nullptr;
  SessionMapper* sessions_ = nullptr;
  int64_t session_ttl_seconds_ = 24 * 3600;
  // Outcomes of Forgets applied from the log, by sequence, until the call that published each
  // takes its own (bounded: an abandoned one is dropped when full).
  std::mutex forget_outcomes_mu_;
  std::map<uint64_t, ForgetOutcome> forget_outcomes_;

  std::mutex passage_tokens_mu_;
  std::vector<int> passage_tokens_;  // a ring of recent passages' lengths, for Stats
  size_t passage_tokens_next_ = 0;
};

}  // namespace knowd
