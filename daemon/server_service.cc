#include "daemon/server_service.h"

#include <algorithm>
#include <condition_variable>
#include <deque>
#include <future>
#include <map>
#include <random>
#include <set>
#include <thread>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "base/status_macros.h"
#include "knowledge/document_rules.h"
#include "knowledge/passages.h"
#include "knowledge/retrieve.h"
#include "nlohmann/json.hpp"
#include "spdlog/spdlog.h"

namespace knowd {
namespace {

constexpr absl::Duration kCancelPoll = absl::Milliseconds(50);

// The call's deadline; InfiniteFuture when the client set none.
absl::Time DeadlineOf(const grpc::ServerContext* context) {
  const auto deadline = context->deadline();
  if (deadline >= std::chrono::system_clock::now() + std::chrono::hours(24 * 365)) {
    return absl::InfiniteFuture();
  }
  return absl::FromChrono(deadline);
}

// Records and logs a finished call.
void RecordCall(Metrics* metrics, const char* method, absl::Time start, const std::string& peer,
                const absl::Status& status) {
  const double seconds = absl::ToDoubleSeconds(absl::Now() - start);
  metrics->CountRpc(method, absl::StatusCodeToString(status.code()), seconds);
  if (status.ok()) {
    spdlog::debug("rpc {} from {}: OK in {:.1f} ms", method, peer, seconds * 1e3);
  } else {
    spdlog::log(absl::IsInternal(status) || absl::IsDataLoss(status) || absl::IsUnknown(status)
                    ? spdlog::level::err
                    : spdlog::level::warn,
                "rpc {} from {}: {} in {:.1f} ms", method, peer, status.ToString(), seconds * 1e3);
  }
}

// Records and logs a finished RPC and converts its status.
grpc::Status FinishRpc(Metrics* metrics, const char* method, absl::Time start,
                       const grpc::ServerContext* context, const absl::Status& status) {
  RecordCall(metrics, method, start, context->peer(), status);
  return ToGrpcStatus(status);
}

std::string MetadataToJson(const google::protobuf::Map<std::string, std::string>& metadata) {
  if (metadata.empty()) return "";
  nlohmann::json json = nlohmann::json::object();
  for (const auto& [k, v] : metadata) json[k] = v;
  return json.dump();
}

void MetadataFromJson(std::string_view text, google::protobuf::Map<std::string, std::string>* out) {
  if (text.empty()) return;
  nlohmann::json json = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (!json.is_object()) return;
  for (const auto& [k, v] : json.items()) {
    if (v.is_string()) (*out)[k] = v.get<std::string>();
  }
}

int64_t UnixSeconds(absl::Time t) { return absl::ToUnixSeconds(t); }

}  // namespace

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()));
}

// Counts a call in flight for the drain, or refuses it once draining started.
class KnowledgeServiceImpl::CallGuard {
 public:
  explicit CallGuard(KnowledgeServiceImpl* service) : service_(service) {
    std::lock_guard<std::mutex> lock(service_->drain_mu_);
    admitted_ = !service_->draining_;
    if (admitted_) ++service_->in_flight_;
  }
  ~CallGuard() {
    if (!admitted_) return;
    std::lock_guard<std::mutex> lock(service_->drain_mu_);
    if (--service_->in_flight_ == 0) service_->drain_cv_.notify_all();
  }
  bool admitted() const { return admitted_; }
  absl::Status refusal() const { return absl::UnavailableError("the daemon is shutting down"); }

 private:
  KnowledgeServiceImpl* service_;
  bool admitted_ = false;
};

bool KnowledgeServiceImpl::Drain(absl::Time deadline) {
  std::unique_lock<std::mutex> lock(drain_mu_);
  draining_ = true;
  while (in_flight_ > 0) {
    // A stream blocked reading its client's next document ends once its acks are all written.
    for (IngestStream* stream : ingest_streams_) {
      if (stream->unacked.load() == 0) stream->context->TryCancel();
    }
    const absl::Duration left = deadline - absl::Now();
    if (left <= absl::ZeroDuration()) return false;
    drain_cv_.wait_for(lock, absl::ToChronoNanoseconds(std::min(left, kCancelPoll)));
  }
  return true;
}

bool KnowledgeServiceImpl::Draining() {
  std::lock_guard<std::mutex> lock(drain_mu_);
  return draining_;
}

struct KnowledgeServiceImpl::PendingAck {
  std::string id;  // as the ack shows it
  int64_t position = 0;
  int passages = 0;
  uint64_t log_sequence = 0;  // in a cluster: stored in the log; `ack` is not used
  absl::Status error;         // not OK: the ack is this error, `ack` is not used
  std::future<absl::StatusOr<storage::DocumentAck>> ack;
};

KnowledgeServiceImpl::KnowledgeServiceImpl(AskScheduler* scheduler, IngestBatcher* ingest,
                                           ForgetBatcher* forget, storage::MemoryBank* bank,
                                           const Tokenizer* tokenizer, const TokenStore* auth,
                                           Metrics* metrics, ServiceInfo info, ServiceLimits limits,
                                           ClientWriteLimiter* writes)
    : scheduler_(scheduler),
      ingest_(ingest),
      forget_(forget),
      bank_(bank),
      tokenizer_(tokenizer),
      auth_(auth),
      metrics_(metrics),
      info_(std::move(info)),
      limits_(limits),
      writes_(writes) {}

std::optional<std::string_view> KnowledgeServiceImpl::AuthorizationOf(
    const grpc::ServerContext* context) {
  const auto& metadata = context->client_metadata();
  if (auto it = metadata.find("authorization"); it != metadata.end()) {
    return std::string_view(it->second.data(), it->second.size());
  }
  return std::nullopt;
}

std::string KnowledgeServiceImpl::ClientKey(const grpc::ServerContext* context) {
  if (std::optional<std::string_view> authorization = AuthorizationOf(context)) {
    // The token without its scheme, which may be written in any case.
    std::string_view token = *authorization;
    if (const size_t space = token.find(' '); space != std::string_view::npos) {
      token.remove_prefix(space + 1);
    }
    while (!token.empty() && absl::ascii_isspace(static_cast<unsigned char>(token.front()))) {
      token.remove_prefix(1);
    }
    while (!token.empty() && absl::ascii_isspace(static_cast<unsigned char>(token.back()))) {
      token.remove_suffix(1);
    }
    return absl::StrCat("token:", absl::Hex(std::hash<std::string_view>()(token)));
  }
  return absl::StrCat("peer:", context->peer());
}

absl::StatusOr<Grant> KnowledgeServiceImpl::Authenticate(grpc::ServerContext* context) const {
  return auth_->Authenticate(AuthorizationOf(context));
}

// ---- Ingest -------------------------------------------------------------------------------

grpc::Status KnowledgeServiceImpl::Ingest(
    grpc::ServerContext* context,
    grpc::ServerReaderWriter<v1::IngestAck, v1::IngestRequest>* stream) {
  const absl::Time start = absl::Now();
  CallGuard call(this);
  return FinishRpc(metrics_, "Ingest", start, context,
                   call.admitted() ? DoIngest(context, stream) : call.refusal());
}

absl::Status KnowledgeServiceImpl::PrepareIngest(const v1::IngestRequest& request, IngestJob* job) {
  storage::Document& doc = job->document;
  KNOWD_RETURN_IF_ERROR(CheckIngestRequest(request, limits_, absl::Now(), &doc.name_space));
  doc.id = request.id();
  doc.metadata = MetadataToJson(request.metadata());
  if (request.valid_from_unix() > 0)
    doc.valid_from = absl::FromUnixSeconds(request.valid_from_unix());
  knowledge::PassageLimits passage_limits;
  passage_limits.max_passage_tokens = limits_.max_passage_tokens;
  passage_limits.overlap_tokens = limits_.passage_overlap_tokens;
  passage_limits.max_positions = limits_.max_position_embeddings;
  for (knowledge::DocumentPassage& p :
       knowledge::SplitDocument(request.text(), *tokenizer_, passage_limits)) {
    storage::Passage passage;
    passage.text = std::move(p.text);
    passage.context_bytes = p.context_bytes;
    RecordPassageTokens(static_cast<int>(p.encoder_ids.size()));
    doc.passages.push_back(std::move(passage));
    job->encoder_inputs.push_back(std::move(p.encoder_ids));
  }
  if (doc.passages.empty()) return absl::InvalidArgumentError("text has no content");
  return absl::OkStatus();
}

KnowledgeServiceImpl::PendingAck KnowledgeServiceImpl::StartIngest(
    const v1::IngestRequest& request, int64_t position, const Grant& grant, absl::Time deadline,
    const std::shared_ptr<std::atomic<bool>>& cancelled, std::unique_ptr<WritePermit> permit) {
  PendingAck pending;
  pending.id = EscapeInvalidUtf8(request.id());
  pending.position = position;
  if (Draining()) {
    pending.error = absl::UnavailableError(
        "the daemon is shutting down: not stored; send it again to another replica or after the "
        "restart");
    return pending;
  }
  auto job = std::make_unique<IngestJob>();
  const std::string& name_space = job->document.name_space;
  pending.error = PrepareIngest(request, job.get());
  if (pending.error.ok()) pending.error = CheckGrant(grant, name_space, Role::kWrite);
  if (pending.error.ok()) pending.error = CheckShard(name_space);
  if (!pending.error.ok()) return pending;
  pending.passages = static_cast<int>(job->document.passages.size());
  if (cluster_ != nullptr) {
    // Every replica of the shard applies it from the log (ApplyLogRecords), this one included.
    v1::IngestRequest entry = request;
    entry.set_namespace_(name_space);
    absl::StatusOr<uint64_t> sequence =
        cluster_->Publish(entry, std::min(deadline, absl::Now() + absl::Seconds(30)));
    if (sequence.ok()) {
      pending.log_sequence = *sequence;
    } else {
      pending.error = sequence.status();
    }
    return pending;
  }
  job->deadline = deadline;
  job->cancelled = cancelled;
  job->permit = std::move(permit);
  pending.ack = job->done.get_future();
  pending.error = ingest_->Submit(job);
  return pending;
}

absl::Status KnowledgeServiceImpl::DoIngest(
    grpc::ServerContext* context,
    grpc::ServerReaderWriter<v1::IngestAck, v1::IngestRequest>* stream) {
  KNOWD_ASSIGN_OR_RETURN(Grant grant, Authenticate(context));
  const absl::Time deadline = DeadlineOf(context);
  auto cancelled = std::make_shared<std::atomic<bool>>(false);
  IngestStream registration;
  registration.context = context;
  {
    std::lock_guard<std::mutex> lock(drain_mu_);
    ingest_streams_.insert(&registration);
  }
  struct Unregister {
    KnowledgeServiceImpl* service;
    IngestStream* stream;
    ~Unregister() {
      std::lock_guard<std::mutex> lock(service->drain_mu_);
      service->ingest_streams_.erase(stream);
    }
  } unregister{this, &registration};

  // Acks go out in document order from a writer thread, so reading (and batching) goes on
  // while earlier documents are being encoded; at most ingest_in_flight_per_stream wait.
  std::mutex mu;
  std::condition_variable cv;
  std::deque<PendingAck> pending;
  bool reading_done = false;
  bool write_failed = false;
  std::thread writer([&] {
    while (true) {
      PendingAck next;
      {
        std::unique_lock<std::mutex> lock(mu);
        cv.wait(lock, [&] { return !pending.empty() || reading_done; });
        if (pending.empty()) return;
        next = std::move(pending.front());
        pending.pop_front();
      }
      cv.notify_all();
      v1::IngestAck ack;
      ack.set_id(next.id);
      ack.set_position(next.position);
      absl::Status status = next.error;
      if (status.ok() && next.log_sequence > 0) {
        ack.set_passages(next.passages);
        ack.set_log_sequence(next.log_sequence);
      } else if (status.ok()) {
        absl::StatusOr<storage::DocumentAck> stored = next.ack.get();
        if (stored.ok()) {
          ack.set_passages(static_cast<int>(stored->passage_ids.size()));
          ack.set_replaced(stored->replaced);
        } else {
          status = stored.status();
        }
      }
      if (!status.ok()) {
        ack.set_error_code(static_cast<int>(status.code()));
        ack.set_error_message(std::string(status.message()));
      }
      if (!write_failed && !stream->Write(ack)) {
        write_failed = true;
        cancelled->store(true);
      }
      registration.unacked.fetch_sub(1);
    }
  });

  v1::IngestRequest request;
  int64_t position = 0;
  bool refused_for_drain = false;
  const std::string client = writes_ != nullptr ? ClientKey(context) : "";
  while (!cancelled->load() && stream->Read(&request)) {
    registration.unacked.fetch_add(1);
    // The client's write permit: while it has its cap of writes in flight (from any of its
    // streams or Forgets), this stream reads nothing more.
    std::unique_ptr<WritePermit> permit;
    if (writes_ != nullptr) {
      if (writes_->Acquire(client, [&] { return context->IsCancelled() || Draining(); })) {
        permit = std::make_unique<WritePermit>(writes_, client);
      } else if (context->IsCancelled()) {
        registration.unacked.fetch_sub(1);
        break;
      }
    }
    // Once shutting down, StartIngest refuses the document and the stream reads no more.
    refused_for_drain = Draining();
    PendingAck next =
        StartIngest(request, position++, grant, deadline, cancelled, std::move(permit));
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] {
      return static_cast<int>(pending.size()) < limits_.ingest_in_flight_per_stream ||
             context->IsCancelled();
    });
    pending.push_back(std::move(next));
    lock.unlock();
    cv.notify_all();
    if (refused_for_drain) break;
  }
  if (context->IsCancelled()) cancelled->store(true);
  {
    std::lock_guard<std::mutex> lock(mu);
    reading_done = true;
  }
  cv.notify_all();
  writer.join();
  if (refused_for_drain) return absl::UnavailableError("the daemon is shutting down");
  if (cancelled->load()) {
    return Draining() ? absl::UnavailableError("the daemon is shutting down")
                      : absl::CancelledError("the stream was cancelled");
  }
  return absl::OkStatus();
}

// ---- Ask ----------------------------------------------------------------------------------

grpc::Status KnowledgeServiceImpl::Ask(grpc::ServerContext* context, const v1::AskRequest* request,
                                       grpc::ServerWriter<v1::AskChunk>* writer) {
  const absl::Time start = absl::Now();
  CallGuard call(this);
  return FinishRpc(metrics_, "Ask", start, context,
                   call.admitted() ? DoAsk(context, *request, writer) : call.refusal());
}

absl::Status KnowledgeServiceImpl::DoAsk(grpc::ServerContext* context,
                                         const v1::AskRequest& request,
                                         grpc::ServerWriter<v1::AskChunk>* writer) {
  KNOWD_ASSIGN_OR_RETURN(std::shared_ptr<AskJob> job,
                         SubmitAsk(AuthorizationOf(context), request, DeadlineOf(context)));
  return StreamAsk(
      *job, [context] { return context->IsCancelled(); },
      [writer](v1::AskChunk&& chunk) { return writer->Write(chunk); });
}

absl::StatusOr<std::shared_ptr<AskJob>> KnowledgeServiceImpl::SubmitAsk(
    std::optional<std::string_view> authorization, const v1::AskRequest& request,
    absl::Time deadline) {
  KNOWD_ASSIGN_OR_RETURN(Grant grant, auth_->Authenticate(authorization));
  std::string name_space;
  KNOWD_RETURN_IF_ERROR(CheckAskRequest(request, limits_, &name_space));
  KNOWD_RETURN_IF_ERROR(CheckGrant(grant, name_space, Role::kRead));
  KNOWD_RETURN_IF_ERROR(CheckShard(name_space));
  KNOWD_RETURN_IF_ERROR(WaitForLog(request.min_log_sequence(), deadline, nullptr));
  // A session alone (no memory mode named) answers under the plain question prompt.
  const bool session_only =
      !request.session_id().empty() &&
      (request.mode() == v1::ASK_MODE_UNSPECIFIED || request.mode() == v1::ASK_MODE_CLOSED_BOOK);
  std::shared_ptr<const std::vector<float>> session_state;
  if (!request.session_id().empty()) {
    KNOWD_RETURN_IF_ERROR(CheckSessionsServed());
    KNOWD_ASSIGN_OR_RETURN(storage::Session session, LoadSession(name_space, request.session_id()));
    session_state = std::make_shared<const std::vector<float>>(std::move(session.state));
  }
  if (request.mode() != v1::ASK_MODE_CLOSED_BOOK && !session_only) {
    // Memory in a namespace that holds nothing is a mistake (a typo, a wrong tenant), not a
    // question to answer from the model's own weights.
    absl::StatusOr<storage::ScanPage> first = bank_->Scan(name_space, "", 1);
    if (!first.ok()) return first.status();
    if (first->documents.empty()) {
      return absl::NotFoundError(absl::StrCat(
          "namespace \"", name_space, "\" holds no documents; ingest some first, or ask ",
          request.session_id().empty() ? "closed-book (mode CLOSED_BOOK)"
                                       : "with the session alone (no mode)"));
    }
  }
  v1::AskRequest resolved = request;
  resolved.set_namespace_(name_space);
  if (session_only) resolved.set_mode(v1::ASK_MODE_CLOSED_BOOK);

  auto job = std::make_shared<AskJob>(std::move(resolved), deadline);
  job->set_session_state(std::move(session_state));
  KNOWD_RETURN_IF_ERROR(scheduler_->Submit(job));
  return job;
}

absl::Status KnowledgeServiceImpl::StreamAsk(AskJob& job, const std::function<bool()>& cancelled,
                                             const std::function<bool(v1::AskChunk&&)>& write) {
  std::vector<AskJob::Event> events;
  while (true) {
    if (cancelled()) {
      job.Cancel();
      return absl::CancelledError("the call was cancelled");
    }
    events.clear();
    job.Wait(kCancelPoll, &events);
    for (AskJob::Event& e : events) {
      if (!e.error.ok()) return e.error;
      v1::AskChunk chunk;
      if (e.final.has_value()) {
        const int64_t budget =
            limits_.max_response_bytes - static_cast<int64_t>(e.final->ByteSizeLong());
        e.final->set_metadata_trimmed(
            FillMetadata(job.request().namespace_(), e.final->mutable_cited(), budget));
        *chunk.mutable_final() = std::move(*e.final);
      } else {
        chunk.set_text(std::move(e.text));
      }
      const bool last = chunk.has_final();
      if (!write(std::move(chunk))) {
        job.Cancel();
        return absl::CancelledError("the client went away");
      }
      if (last) return absl::OkStatus();
    }
  }
}

absl::StatusOr<std::unique_ptr<KnowledgeServiceImpl::AskCall>> KnowledgeServiceImpl::StartAsk(
    const char* method, std::string peer, std::optional<std::string_view> authorization,
    const v1::AskRequest& request, absl::Time deadline) {
  std::unique_ptr<AskCall> call(new AskCall());
  call->service_ = this;
  call->method_ = method;
  call->peer_ = std::move(peer);
  call->start_ = absl::Now();
  call->guard_ = std::make_unique<CallGuard>(this);
  absl::StatusOr<std::shared_ptr<AskJob>> job =
      call->guard_->admitted() ? SubmitAsk(authorization, request, deadline)
                               : absl::StatusOr<std::shared_ptr<AskJob>>(call->guard_->refusal());
  if (!job.ok()) {
    call->status_ = job.status();
    return job.status();  // ~AskCall records it
  }
  call->job_ = *std::move(job);
  return call;
}

absl::Status KnowledgeServiceImpl::AskCall::Stream(
    const std::function<bool()>& cancelled, const std::function<bool(v1::AskChunk&&)>& write) {
  if (job_ == nullptr) return absl::FailedPreconditionError("the call was not started");
  status_ = service_->StreamAsk(*job_, cancelled, write);
  job_.reset();
  return status_;
}

KnowledgeServiceImpl::AskCall::~AskCall() {
  if (job_ != nullptr) {
    // Never streamed: the question is no longer wanted.
    job_->Cancel();
    status_ = absl::CancelledError("the call ended before its answer was read");
  }
  if (service_ != nullptr) RecordCall(service_->metrics_, method_, start_, peer_, status_);
}

// ---- Search, Get, Forget, Stats -----------------------------------------------------------

bool KnowledgeServiceImpl::FillMetadata(std::string_view name_space,
                                        google::protobuf::RepeatedPtrField<v1::Passage>* passages,
                                        int64_t budget_bytes) {
  // The budget is what the passages may grow by; a map entry costs its bytes plus a few of
  // framing, counted generously.
  std::map<std::string, std::string> by_document;
  bool trimmed = false;
  for (v1::Passage& p : *passages) {
    auto it = by_document.find(p.document_id());
    if (it == by_document.end()) {
      absl::StatusOr<storage::Document> doc = bank_->Get(name_space, p.document_id());
      it = by_document.emplace(p.document_id(), doc.ok() ? doc->metadata : "").first;
    }
    if (it->second.empty()) continue;
    v1::Passage with_metadata;
    MetadataFromJson(it->second, with_metadata.mutable_metadata());
    const int64_t cost = static_cast<int64_t>(with_metadata.ByteSizeLong()) + 16;
    if (cost > budget_bytes) {
      trimmed = true;
      continue;
    }
    budget_bytes -= cost;
    p.mutable_metadata()->swap(*with_metadata.mutable_metadata());
  }
  return trimmed;
}

grpc::Status KnowledgeServiceImpl::Search(grpc::ServerContext* context,
                                          const v1::SearchRequest* request,
                                          v1::SearchResponse* response) {
  const absl::Time start = absl::Now();
  CallGuard call(this);
  return FinishRpc(metrics_, "Search", start, context,
                   call.admitted() ? DoSearch(context, *request, response) : call.refusal());
}

absl::Status KnowledgeServiceImpl::DoSearch(grpc::ServerContext* context,
                                            const v1::SearchRequest& request,
                                            v1::SearchResponse* response) {
  const absl::Time start = absl::Now();
  KNOWD_ASSIGN_OR_RETURN(Grant grant, Authenticate(context));
  std::string name_space;
  KNOWD_RETURN_IF_ERROR(CheckSearchRequest(request, limits_, &name_space));
  KNOWD_RETURN_IF_ERROR(CheckGrant(grant, name_space, Role::kRead));
  KNOWD_RETURN_IF_ERROR(CheckShard(name_space));
  KNOWD_RETURN_IF_ERROR(WaitForLog(request.min_log_sequence(), DeadlineOf(context),
                                   [context] { return context->IsCancelled(); }));
  knowledge::Modulator* modulator = scheduler_->modulator();
  const knowledge::Retrieval retrieval = scheduler_->ResolveRetrieval(request.retrieval());
  std::optional<std::vector<float>> key;
  if (modulator != nullptr && retrieval != knowledge::Retrieval::kLexical) {
    KNOWD_RETURN_IF_ERROR(scheduler_->RunOnEngineThread([&]() -> absl::Status {
      KNOWD_ASSIGN_OR_RETURN(QuestionCode code,
                             knowledge::EncodeQuestion(*modulator, *tokenizer_, request.query()));
      key = std::move(code.retrieval_key);
      return absl::OkStatus();
    }));
  }
  const int k = request.top_k() > 0 ? request.top_k() : 10;
  KNOWD_ASSIGN_OR_RETURN(
      std::vector<storage::SearchHit> hits,
      knowledge::RetrievePassages(*bank_, name_space, request.query(), key ? &*key : nullptr,
                                  retrieval, k, scheduler_->fusion()));
  for (const storage::SearchHit& h : hits) {
    v1::Passage* p = response->add_passages();
    p->set_document_id(h.doc_id);
    p->set_index(h.passage_index);
    p->set_text(h.text);
    p->set_score(h.score);
    p->set_ingest_time_unix(UnixSeconds(h.ingest_time));
    p->set_valid_from_unix(UnixSeconds(h.valid_from.value_or(h.ingest_time)));
  }
  response->set_metadata_trimmed(FillMetadata(
      name_space, response->mutable_passages(),
      limits_.max_response_bytes - static_cast<int64_t>(response->ByteSizeLong()) - 64));
  response->set_took_ms(absl::ToDoubleMilliseconds(absl::Now() - start));
  return absl::OkStatus();
}

grpc::Status KnowledgeServiceImpl::Get(grpc::ServerContext* context, const v1::GetRequest* request,
                                       v1::Document* response) {
  const absl::Time start = absl::Now();
  CallGuard call(this);
  return FinishRpc(metrics_, "Get", start, context,
                   call.admitted() ? DoGet(context, *request, response) : call.refusal());
}

absl::Status KnowledgeServiceImpl::DoGet(grpc::ServerContext* context,
                                         const v1::GetRequest& request, v1::Document* response) {
  KNOWD_ASSIGN_OR_RETURN(Grant grant, Authenticate(context));
  std::string name_space;
  KNOWD_RETURN_IF_ERROR(CheckGetRequest(request, &name_space));
  KNOWD_RETURN_IF_ERROR(CheckGrant(grant, name_space, Role::kRead));
  KNOWD_RETURN_IF_ERROR(CheckShard(name_space));
  KNOWD_RETURN_IF_ERROR(WaitForLog(request.min_log_sequence(), DeadlineOf(context),
                                   [context] { return context->IsCancelled(); }));
  absl::StatusOr<storage::Document> doc = bank_->Get(name_space, request.id());
  if (!doc.ok()) {
    if (absl::IsNotFound(doc.status())) {
      return absl::NotFoundError(
          absl::StrCat("no document \"", request.id(), "\" in namespace \"", name_space, "\""));
    }
    return doc.status();
  }
  response->set_id(doc->id);
  response->set_namespace_(name_space);
  MetadataFromJson(doc->metadata, response->mutable_metadata());
  response->set_ingest_time_unix(UnixSeconds(doc->ingest_time));
  response->set_valid_from_unix(UnixSeconds(doc->valid_from.value_or(doc->ingest_time)));
  // The metadata is the document's, once; passages follow while the response stays within
  // max_response_bytes (a passage costs its fields plus a few bytes of framing).
  int64_t budget = limits_.max_response_bytes - static_cast<int64_t>(response->ByteSizeLong()) - 64;
  for (size_t i = 0; i < doc->passages.size(); ++i) {
    v1::Passage p;
    p.set_document_id(doc->id);
    p.set_index(static_cast<int>(i));
    p.set_text(doc->passages[i].text);
    p.set_ingest_time_unix(response->ingest_time_unix());
    p.set_valid_from_unix(response->valid_from_unix());
    const int64_t cost = static_cast<int64_t>(p.ByteSizeLong()) + 8;
    if (cost > budget) {
      response->set_truncated(true);
      break;
    }
    budget -= cost;
    *response->add_passages() = std::move(p);
  }
  return absl::OkStatus();
}

grpc::Status KnowledgeServiceImpl::Forget(grpc::ServerContext* context,
                                          const v1::ForgetRequest* request,
                                          v1::ForgetResponse* response) {
  const absl::Time start = absl::Now();
  CallGuard call(this);
  return FinishRpc(metrics_, "Forget", start, context,
                   call.admitted() ? DoForget(context, *request, response) : call.refusal());
}

absl::Status KnowledgeServiceImpl::DoForget(grpc::ServerContext* context,
                                            const v1::ForgetRequest& request,
                                            v1::ForgetResponse* response) {
  KNOWD_ASSIGN_OR_RETURN(Grant grant, Authenticate(context));
  std::string name_space;
  KNOWD_RETURN_IF_ERROR(CheckForgetRequest(request, &name_space));
  KNOWD_RETURN_IF_ERROR(CheckGrant(grant, name_space, Role::kWrite));
  KNOWD_RETURN_IF_ERROR(CheckShard(name_space));
  if (cluster_ != nullptr) {
    return ForgetThroughLog(context, request, name_space, DeadlineOf(context), response);
  }
  std::unique_ptr<ForgetJob> job = ForgetJob::ForIds(name_space, request.ids());
  job->deadline = DeadlineOf(context);
  // A refusal for a full queue or the client's cap carries a hint for its backoff, about two
  // batches' time, in its message and as the trailing metadata retry-after-ms.
  auto refuse = [&](const absl::Status& s) {
    const int64_t retry_ms =
        std::clamp<int64_t>(absl::ToInt64Milliseconds(2 * forget_->last_batch()), 10, 1000);
    context->AddTrailingMetadata("retry-after-ms", absl::StrCat(retry_ms));
    return absl::ResourceExhaustedError(
        absl::StrCat(s.message(), "; retry in about ", retry_ms, " ms"));
  };
  if (writes_ != nullptr) {
    const std::string client = ClientKey(context);
    // The client's turn under its Forget rate: waited for here, holding no permit.
    const absl::Time now = absl::Now();
    if (const absl::Duration wait = writes_->ReserveForget(client, now);
        wait > absl::ZeroDuration()) {
      if (now + wait > job->deadline) {
        writes_->CancelForget(client);
        metrics_->CountRejected("client_forget_rate");
        context->AddTrailingMetadata(
            "retry-after-ms", absl::StrCat(std::max<int64_t>(1, absl::ToInt64Milliseconds(wait))));
        return absl::ResourceExhaustedError(
            absl::StrCat("this client's Forget calls are past client-forgets-per-second (",
                         writes_->forgets_per_second(), "); its turn is ",
                         absl::FormatDuration(wait), " away, past the call's deadline"));
      }
      for (const absl::Time turn = now + wait; absl::Now() < turn;) {
        if (context->IsCancelled()) return absl::CancelledError("the call was cancelled");
        absl::SleepFor(std::min(turn - absl::Now(), kCancelPoll));
      }
    }
    if (absl::Status s = writes_->TryAcquire(client); !s.ok()) {
      metrics_->CountRejected("client_writes");
      return refuse(s);
    }
    job->permit = std::make_unique<WritePermit>(writes_, client);
  }
  std::future<absl::StatusOr<ForgetOutcome>> done = job->done.get_future();
  if (absl::Status s = forget_->Submit(job); !s.ok()) {
    return absl::IsResourceExhausted(s) ? refuse(s) : s;
  }
  // The removal is durable once queued work runs; a cancelled call only stops waiting for it.
  while (done.wait_for(absl::ToChronoNanoseconds(kCancelPoll)) != std::future_status::ready) {
    if (context->IsCancelled()) return absl::CancelledError("the call was cancelled");
  }
  KNOWD_ASSIGN_OR_RETURN(ForgetOutcome outcome, done.get());
  for (const std::string& id : outcome.forgotten) response->add_forgotten(id);
  for (const std::string& id : outcome.not_found) response->add_not_found(id);
  response->set_passages(outcome.passages);
  return absl::OkStatus();
}

grpc::Status KnowledgeServiceImpl::Stats(grpc::ServerContext* context,
                                         const v1::StatsRequest* request,
                                         v1::StatsResponse* response) {
  const absl::Time start = absl::Now();
  CallGuard call(this);
  return FinishRpc(metrics_, "Stats", start, context,
                   call.admitted() ? DoStats(context, *request, response) : call.refusal());
}

absl::Status KnowledgeServiceImpl::DoStats(grpc::ServerContext* context,
                                           const v1::StatsRequest& request,
                                           v1::StatsResponse* response) {
  KNOWD_ASSIGN_OR_RETURN(Grant grant, Authenticate(context));
  if (!grant.Allows(Role::kRead)) return CheckGrant(grant, "", Role::kRead);
  std::string name_space;
  KNOWD_RETURN_IF_ERROR(CheckStatsRequest(request, &name_space));
  if (!name_space.empty()) {
    KNOWD_RETURN_IF_ERROR(CheckGrant(grant, name_space, Role::kRead));
    KNOWD_RETURN_IF_ERROR(CheckShard(name_space));
  }
  KNOWD_ASSIGN_OR_RETURN(storage::BankStats stats, bank_->Stats());
  // The same count as the knowd_sessions and knowd_session_bytes metrics, per namespace.
  KNOWD_ASSIGN_OR_RETURN(storage::MemoryBank::SessionTotals sessions,
                         bank_->CountSessions(absl::Now()));
  auto wanted = [&](const std::string& name) {
    return request.namespace_().empty() ? grant.AllowsNamespace(name)
                                        : name == request.namespace_();
  };
  // Every namespace with documents or live sessions, by name.
  std::map<std::string, v1::NamespaceStats> counted;
  for (const storage::NamespaceStats& ns : stats.namespaces) {
    if (!wanted(ns.name_space)) continue;
    v1::NamespaceStats& out = counted[ns.name_space];
    out.set_name(ns.name_space);
    out.set_documents(static_cast<int64_t>(ns.documents));
    out.set_passages(static_cast<int64_t>(ns.passages));
  }
  for (const auto& [name, count] : sessions.namespaces) {
    if (!wanted(name)) continue;
    v1::NamespaceStats& out = counted[name];
    out.set_name(name);
    out.set_sessions(count.sessions);
    out.set_session_bytes(count.state_bytes);
  }
  int64_t documents = 0;
  int64_t passages = 0;
  int64_t session_count = 0;
  int64_t session_bytes = 0;
  for (auto& [name, ns] : counted) {
    documents += ns.documents();
    passages += ns.passages();
    session_count += ns.sessions();
    session_bytes += ns.session_bytes();
    *response->add_namespaces() = std::move(ns);
  }
  response->set_documents(documents);
  response->set_passages(passages);
  response->set_sessions(session_count);
  response->set_session_bytes(session_bytes);
  response->set_disk_bytes(static_cast<int64_t>(stats.disk_bytes));
  response->set_bytes_per_modulation(info_.bytes_per_modulation);
  response->set_modulation_bytes(passages * info_.bytes_per_modulation);
  response->set_model(info_.model);
  response->set_adapter(info_.adapter);
  response->set_fingerprint(info_.fingerprint);
  response->set_version(info_.version);
  response->set_recovery_warning(stats.recovery_warning);
  response->set_uptime_seconds(absl::ToDoubleSeconds(absl::Now() - info_.started));
  if (passages > 0) SamplePassageTokens(stats);
  response->set_kv_bytes_per_median_passage(MedianPassageTokens() * info_.kv_bytes_per_token);
  return absl::OkStatus();
}

void KnowledgeServiceImpl::RecordPassageTokens(int tokens) {
  constexpr size_t kRing = 1024;
  std::lock_guard<std::mutex> lock(passage_tokens_mu_);
  if (passage_tokens_.size() < kRing) {
    passage_tokens_.push_back(tokens);
  } else {
    passage_tokens_[passage_tokens_next_++ % kRing] = tokens;
  }
}

void KnowledgeServiceImpl::SamplePassageTokens(const storage::BankStats& stats) {
  {
    std::lock_guard<std::mutex> lock(passage_tokens_mu_);
    if (!passage_tokens_.empty()) return;
  }
  // After a restart nothing was ingested yet: measure some stored passages instead.
  constexpr int kSampleDocuments = 64;
  for (const storage::NamespaceStats& ns : stats.namespaces) {
    absl::StatusOr<storage::ScanPage> page = bank_->Scan(ns.name_space, "", kSampleDocuments);
    if (!page.ok()) continue;
    for (const storage::DocumentSummary& summary : page->documents) {
      absl::StatusOr<storage::Document> doc = bank_->Get(ns.name_space, summary.id);
      if (!doc.ok()) continue;
      for (const storage::Passage& p : doc->passages) {
        RecordPassageTokens(static_cast<int>(tokenizer_->Encode(p.text, true).size()));
      }
    }
    return;
  }
}

int64_t KnowledgeServiceImpl::MedianPassageTokens() {
  std::vector<int> tokens;
  {
    std::lock_guard<std::mutex> lock(passage_tokens_mu_);
    tokens = passage_tokens_;
  }
  if (tokens.empty()) return 0;
  std::nth_element(tokens.begin(), tokens.begin() + tokens.size() / 2, tokens.end());
  return tokens[tokens.size() / 2];
}

// ---- Sessions ----------------------------------------------------------------------------

namespace {

constexpr size_t kMaxSessionIdBytes = 256;
constexpr size_t kMaxSessionLabelBytes = 256;

// 128 random bits in hex: ids are unguessable, so one is as good as a capability within its
// namespace.
std::string NewSessionId() {
  static std::mutex mu;
  static std::mt19937_64 rng(std::random_device{}());
  uint64_t words[2];
  {
    std::lock_guard<std::mutex> lock(mu);
    words[0] = rng();
    words[1] = rng();
  }
  return absl::BytesToHexString(
      absl::string_view(reinterpret_cast<const char*>(words), sizeof(words)));
}

absl::Status CheckSessionId(std::string_view id) {
  if (id.empty()) return absl::InvalidArgumentError("session_id is empty");
  if (id.size() > kMaxSessionIdBytes || !IsValidUtf8(id)) {
    return absl::InvalidArgumentError(
        absl::StrCat("session_id must be 1..", kMaxSessionIdBytes, " bytes of UTF-8"));
  }
  return absl::OkStatus();
}

void ToProto(const storage::Session& s, v1::Session* out) {
  out->set_id(s.id);
  out->set_namespace_(s.name_space);
  out->set_label(s.label);
  out->set_state_bytes(s.state_bytes);
  out->set_chunks(s.chunks);
  out->set_tokens(s.tokens);
  out->set_created_unix(UnixSeconds(s.created));
  out->set_updated_unix(UnixSeconds(s.updated));
  const std::optional<absl::Time> expires = s.expires();
  out->set_expires_unix(expires.has_value() ? UnixSeconds(*expires) : 0);
  out->set_mapper_sha256(s.mapper_sha256);
}

}  // namespace

absl::Status KnowledgeServiceImpl::CheckSessionsServed() const {
  if (sessions_ == nullptr) {
    return absl::FailedPreconditionError(
        "this bundle has no session mapper (adapter/session_mapper.json); train one with "
        "knowd-train session");
  }
  if (cluster_ != nullptr) {
    return absl::FailedPreconditionError(
        "sessions are kept by a single daemon; a cluster (--cluster-nats) does not serve them");
  }
  return absl::OkStatus();
}

absl::StatusOr<storage::Session> KnowledgeServiceImpl::LoadSession(std::string_view name_space,
                                                                   std::string_view id) {
  KNOWD_RETURN_IF_ERROR(CheckSessionId(id));
  KNOWD_ASSIGN_OR_RETURN(storage::Session session, bank_->GetSession(name_space, id, absl::Now()));
  if (session.mapper_sha256 != sessions_->spec().sha256 ||
      static_cast<int64_t>(session.state.size()) != sessions_->state_floats()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "session '", std::string(id), "' was absorbed by another session mapper (",
        session.mapper_sha256, ") than the one this daemon serves (", sessions_->spec().sha256,
        "); its state means nothing to this one: delete it and create the session again"));
  }
  return session;
}

grpc::Status KnowledgeServiceImpl::CreateSession(grpc::ServerContext* context,
                                                 grpc::ServerReader<v1::SessionChunk>* reader,
                                                 v1::Session* response) {
  const absl::Time start = absl::Now();
  CallGuard call(this);
  return FinishRpc(
      metrics_, "CreateSession", start, context,
      call.admitted() ? DoSessionStream(context, reader, false, response) : call.refusal());
}

grpc::Status KnowledgeServiceImpl::AppendSession(grpc::ServerContext* context,
                                                 grpc::ServerReader<v1::SessionChunk>* reader,
                                                 v1::Session* response) {
  const absl::Time start = absl::Now();
  CallGuard call(this);
  return FinishRpc(
      metrics_, "AppendSession", start, context,
      call.admitted() ? DoSessionStream(context, reader, true, response) : call.refusal());
}

absl::Status KnowledgeServiceImpl::DoSessionStream(grpc::ServerContext* context,
                                                   grpc::ServerReader<v1::SessionChunk>* reader,
                                                   bool append, v1::Session* response) {
  KNOWD_ASSIGN_OR_RETURN(Grant grant, Authenticate(context));
  v1::SessionChunk chunk;
  if (!reader->Read(&chunk)) {
    return absl::InvalidArgumentError("the stream held no chunk: send at least one text");
  }
  std::string name_space;
  KNOWD_RETURN_IF_ERROR(ResolveNamespace(chunk.namespace_(), &name_space));
  KNOWD_RETURN_IF_ERROR(CheckGrant(grant, name_space, Role::kWrite));
  KNOWD_RETURN_IF_ERROR(CheckSessionsServed());
  if (chunk.ttl_seconds() < 0) return absl::InvalidArgumentError("ttl_seconds is negative");
  const absl::Time now = absl::Now();
  storage::Session session;
  if (append) {
    KNOWD_ASSIGN_OR_RETURN(session, LoadSession(name_space, chunk.session_id()));
  } else {
    if (chunk.label().size() > kMaxSessionLabelBytes || !IsValidUtf8(chunk.label())) {
      return absl::InvalidArgumentError(
          absl::StrCat("label must be at most ", kMaxSessionLabelBytes, " bytes of UTF-8"));
    }
    session.name_space = name_space;
    session.id = NewSessionId();
    session.label = chunk.label();
    session.mapper_sha256 = sessions_->spec().sha256;
    session.state.assign(static_cast<size_t>(sessions_->state_floats()), 0.0f);
    session.created = now;
    session.ttl_seconds = session_ttl_seconds_;
  }
  if (chunk.ttl_seconds() > 0) session.ttl_seconds = chunk.ttl_seconds();
  // Each message's text is absorbed as it arrives (its chunks on the engine thread, between
  // questions), so a long context never sits in memory whole; the state is stored once, at the
  // end, so a stream that fails part way stores nothing.
  const int max_chunk_tokens = sessions_->spec().max_chunk_tokens;
  SessionMapper* mapper = sessions_;
  int64_t message = 0;
  do {
    if (context->IsCancelled()) return absl::CancelledError("the call was cancelled");
    KNOWD_RETURN_IF_ERROR(CheckText(absl::StrCat("text of message ", message), chunk.text(),
                                    limits_.max_document_bytes));
    std::vector<std::vector<int32_t>> pieces =
        SessionChunks(*tokenizer_, chunk.text(), max_chunk_tokens);
    if (pieces.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("text of message ", message, " holds no tokens"));
    }
    // A few chunks per engine task, so a long message shares the engine with the questions
    // that arrive meanwhile instead of holding it for its whole length.
    constexpr size_t kChunksPerTask = 16;
    std::vector<float>* state = &session.state;
    for (size_t begin = 0; begin < pieces.size(); begin += kChunksPerTask) {
      const std::span<const std::vector<int32_t>> group =
          std::span<const std::vector<int32_t>>(pieces).subspan(
              begin, std::min(kChunksPerTask, pieces.size() - begin));
      KNOWD_RETURN_IF_ERROR(scheduler_->RunOnEngineThread(
          [mapper, group, state] { return mapper->Absorb(group, state); }));
      if (context->IsCancelled()) return absl::CancelledError("the call was cancelled");
    }
    session.chunks += static_cast<int64_t>(pieces.size());
    for (const std::vector<int32_t>& piece : pieces) {
      session.tokens += static_cast<int64_t>(piece.size());
    }
    ++message;
  } while (reader->Read(&chunk));
  session.updated = absl::Now();
  absl::Status stored = bank_->PutSession(&session, session.updated);
  if (absl::IsAlreadyExists(stored)) {
    return absl::InternalError("a new session id collided with a live one; retry");
  }
  KNOWD_RETURN_IF_ERROR(stored);
  ToProto(session, response);
  return absl::OkStatus();
}

grpc::Status KnowledgeServiceImpl::DeleteSession(grpc::ServerContext* context,
                                                 const v1::DeleteSessionRequest* request,
                                                 v1::DeleteSessionResponse* /*response*/) {
  const absl::Time start = absl::Now();
  CallGuard call(this);
  return FinishRpc(metrics_, "DeleteSession", start, context,
                   call.admitted() ? DoDeleteSession(context, *request) : call.refusal());
}

absl::Status KnowledgeServiceImpl::DoDeleteSession(grpc::ServerContext* context,
                                                   const v1::DeleteSessionRequest& request) {
  KNOWD_ASSIGN_OR_RETURN(Grant grant, Authenticate(context));
  std::string name_space;
  KNOWD_RETURN_IF_ERROR(ResolveNamespace(request.namespace_(), &name_space));
  KNOWD_RETURN_IF_ERROR(CheckGrant(grant, name_space, Role::kWrite));
  KNOWD_RETURN_IF_ERROR(CheckSessionsServed());
  KNOWD_RETURN_IF_ERROR(CheckSessionId(request.session_id()));
  return bank_->DeleteSession(name_space, request.session_id(), absl::Now());
}

grpc::Status KnowledgeServiceImpl::ListSessions(grpc::ServerContext* context,
                                                const v1::ListSessionsRequest* request,
                                                v1::ListSessionsResponse* response) {
  const absl::Time start = absl::Now();
  CallGuard call(this);
  return FinishRpc(metrics_, "ListSessions", start, context,
                   call.admitted() ? DoListSessions(context, *request, response) : call.refusal());
}

absl::Status KnowledgeServiceImpl::DoListSessions(grpc::ServerContext* context,
                                                  const v1::ListSessionsRequest& request,
                                                  v1::ListSessionsResponse* response) {
  KNOWD_ASSIGN_OR_RETURN(Grant grant, Authenticate(context));
  std::string name_space;
  KNOWD_RETURN_IF_ERROR(ResolveNamespace(request.namespace_(), &name_space));
  KNOWD_RETURN_IF_ERROR(CheckGrant(grant, name_space, Role::kRead));
  KNOWD_RETURN_IF_ERROR(CheckSessionsServed());
  KNOWD_ASSIGN_OR_RETURN(std::vector<storage::Session> sessions,
                         bank_->ListSessions(name_space, absl::Now()));
  for (const storage::Session& s : sessions) ToProto(s, response->add_sessions());
  return absl::OkStatus();
}

}  // namespace knowd
