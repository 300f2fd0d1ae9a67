#include "daemon/scheduler_ask.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "model/generate.h"
#include "model/sampler.h"
#include "spdlog/spdlog.h"

namespace knowd {
namespace {

double Ms(absl::Duration d) { return absl::ToDoubleMilliseconds(d); }

int64_t UnixSeconds(absl::Time t) { return absl::ToUnixSeconds(t); }

v1::Passage ToPassage(const storage::SearchHit& hit) {
  v1::Passage p;
  p.set_document_id(hit.doc_id);
  p.set_index(hit.passage_index);
  p.set_text(hit.text);
  p.set_score(hit.score);
  p.set_ingest_time_unix(UnixSeconds(hit.ingest_time));
  p.set_valid_from_unix(UnixSeconds(hit.valid_from.value_or(hit.ingest_time)));
  return p;
}

}  // namespace

// ---- AskJob -------------------------------------------------------------------------------

void AskJob::Push(Event event) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (done_) return;
    done_ = event.final.has_value() || !event.error.ok();
    events_.push_back(std::move(event));
  }
  cv_.notify_all();
}

void AskJob::EmitText(std::string text) {
  if (!text.empty()) Push({std::move(text), std::nullopt, absl::OkStatus()});
}
void AskJob::Finish(v1::AskFinal final) { Push({"", std::move(final), absl::OkStatus()}); }
void AskJob::Fail(absl::Status error) { Push({"", std::nullopt, std::move(error)}); }

bool AskJob::Wait(absl::Duration timeout, std::vector<Event>* out) {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait_for(lock, absl::ToChronoNanoseconds(timeout), [&] { return !events_.empty(); });
  while (!events_.empty()) {
    out->push_back(std::move(events_.front()));
    events_.pop_front();
  }
  return done_ && events_.empty() && std::any_of(out->begin(), out->end(), [](const Event& e) {
           return e.final.has_value() || !e.error.ok();
         });
}

// ---- requests to the pipeline's parameters ----------------------------------------------

v1::AskMode ToProto(knowledge::AskMode mode) {
  switch (mode) {
    case knowledge::AskMode::kClosedBook:
      return v1::ASK_MODE_CLOSED_BOOK;
    case knowledge::AskMode::kRag:
      return v1::ASK_MODE_RAG;
    case knowledge::AskMode::kMac:
      return v1::ASK_MODE_MAC;
    case knowledge::AskMode::kMacRag:
      return v1::ASK_MODE_MAC_RAG;
  }
  return v1::ASK_MODE_UNSPECIFIED;
}

knowledge::Retrieval FromProto(v1::Retrieval retrieval) {
  switch (retrieval) {
    case v1::RETRIEVAL_DENSE:
      return knowledge::Retrieval::kDense;
    case v1::RETRIEVAL_HYBRID:
      return knowledge::Retrieval::kHybrid;
    default:
      return knowledge::Retrieval::kLexical;
  }
}

knowledge::AskParams AskParamsFor(const v1::AskRequest& r, const knowledge::AskParams& defaults,
                                  const knowledge::RetrievalDefaults& retrieval, bool has_adapter) {
  knowledge::AskParams p = defaults;
  switch (r.mode()) {
    case v1::ASK_MODE_CLOSED_BOOK:
      p.mode = knowledge::AskMode::kClosedBook;
      break;
    case v1::ASK_MODE_RAG:
      p.mode = knowledge::AskMode::kRag;
      break;
    case v1::ASK_MODE_MAC:
      p.mode = knowledge::AskMode::kMac;
      break;
    case v1::ASK_MODE_MAC_RAG:
      p.mode = knowledge::AskMode::kMacRag;
      break;
    default:
      p.mode = has_adapter ? knowledge::AskMode::kMac : knowledge::AskMode::kRag;
  }
  if (r.retrieval() != v1::RETRIEVAL_UNSPECIFIED) {
    p.retrieval = FromProto(r.retrieval());
  } else {
    p.retrieval = has_adapter ? retrieval.For(p.mode) : knowledge::Retrieval::kLexical;
  }
  if (r.top_k() > 0) p.top_k = r.top_k();
  if (r.rag_passages() > 0) p.rag_passages = r.rag_passages();
  if (r.max_tokens() > 0) p.max_tokens = r.max_tokens();
  return p;
}

knowledge::Retrieval AskScheduler::ResolveRetrieval(v1::Retrieval requested) const {
  if (requested != v1::RETRIEVAL_UNSPECIFIED) return FromProto(requested);
  return modulator_ != nullptr ? options_.retrieval.all : knowledge::Retrieval::kLexical;
}

// ---- AskScheduler -------------------------------------------------------------------------------

// A decode lane: one question's place in the batch, its KV cache and decoding state.
struct AskScheduler::Lane {
  std::unique_ptr<KvCache> cache;
  std::shared_ptr<AskJob> job;  // null: the lane is free
  std::vector<int32_t> prompt;
  bool prefilled = false;
  int max_tokens = 0;
  std::optional<Sampler> sampler;
  std::optional<IncrementalDecoder> decoder;
  std::vector<int32_t> generated;
  int32_t next = 0;
  std::string answer;
  v1::AskFinal final;
  absl::Time decode_start;
  // The question's session update (kept between questions, its values replaced), and whether
  // the current question has one.
  std::unique_ptr<LowRankState> update;
  bool with_update = false;
};

AskScheduler::AskScheduler(Transformer* model, const Tokenizer* tokenizer,
                           knowledge::Modulator* modulator, storage::MemoryBank* bank,
                           Metrics* metrics, const AskSchedulerOptions& options)
    : model_(model),
      tokenizer_(tokenizer),
      modulator_(modulator),
      bank_(bank),
      metrics_(metrics),
      options_(options),
      queue_("ask", static_cast<size_t>(options.ask_queue_size)) {}

AskScheduler::~AskScheduler() { Stop(); }

absl::Status AskScheduler::Start() {
  for (int i = 0; i < options_.ask_max_batch; ++i) {
    absl::StatusOr<std::unique_ptr<KvCache>> cache =
        model_->NewCache(model_->config().max_position_embeddings);
    if (!cache.ok()) return cache.status();
    auto lane = std::make_unique<Lane>();
    lane->cache = *std::move(cache);
    lanes_.push_back(std::move(lane));
  }
  thread_ = std::thread([this] { Loop(); });
  return absl::OkStatus();
}

void AskScheduler::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  queue_.Close();
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

absl::Status AskScheduler::Submit(std::shared_ptr<AskJob> job) {
  if (absl::Status s = queue_.TryPush(job); !s.ok()) {
    if (absl::IsResourceExhausted(s)) metrics_->CountRejected("ask");
    return s;
  }
  { std::lock_guard<std::mutex> lock(mu_); }  // the engine is waiting or will see the job
  cv_.notify_all();
  return absl::OkStatus();
}

absl::Status AskScheduler::RunOnEngineThread(std::function<absl::Status()> task) {
  std::promise<absl::Status> done;
  std::future<absl::Status> result = done.get_future();
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) return absl::UnavailableError("the daemon is shutting down");
    tasks_.emplace_back(std::move(task), &done);
  }
  cv_.notify_all();
  return result.get();
}

void AskScheduler::RunTasks() {
  std::deque<std::pair<std::function<absl::Status()>, std::promise<absl::Status>*>> tasks;
  {
    std::lock_guard<std::mutex> lock(mu_);
    tasks.swap(tasks_);
  }
  for (auto& [task, done] : tasks) done->set_value(task());
}

void AskScheduler::Loop() {
  std::vector<std::shared_ptr<AskJob>> admitted;
  // Time tasks have taken beyond the decode steps since; tasks wait while it is positive and
  // questions are decoding. Bounded both ways: a long stretch of questions alone banks little
  // credit for later tasks, and a long stretch of tasks alone makes the next questions wait for
  // at most kMaxDebt of their own steps before tasks run again (the gaps between one client's
  // questions must not reset it, or a steady ingest takes the thread between every two asks).
  absl::Duration task_debt;
  constexpr absl::Duration kMaxCredit = absl::Milliseconds(10);
  constexpr absl::Duration kMaxDebt = absl::Milliseconds(200);
  while (true) {
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] {
        return stopping_ || !tasks_.empty() || running_count_ > 0 ||
               (queue_.size() > 0 && running_count_ < options_.ask_max_batch);
      });
      if (stopping_) break;
    }
    bool answering = running_count_ > 0 || queue_.size() > 0;
    if (!answering && task_debt > absl::ZeroDuration() &&
        options_.ask_hold > absl::ZeroDuration()) {
      // Tasks are ahead of their share and the last question just ended: a client asking one
      // question after another sends its next one within a round trip. Without this wait every
      // one of its questions would queue behind a whole encoder pass, and a steady ingest would
      // take nearly all of the thread from it.
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait_until(lock, absl::ToChronoTime(last_answer_ + options_.ask_hold),
                     [&] { return stopping_ || queue_.size() > 0; });
      if (stopping_) break;
      answering = queue_.size() > 0;
    }
    if (!answering || task_debt <= absl::ZeroDuration()) {
      const absl::Time start = absl::Now();
      RunTasks();
      task_debt = std::min(task_debt + (absl::Now() - start), kMaxDebt);
    }
    admitted.clear();
    queue_.TryPop(static_cast<size_t>(options_.ask_max_batch - running_count_), &admitted);
    for (std::shared_ptr<AskJob>& job : admitted) {
      auto free = std::find_if(lanes_.begin(), lanes_.end(),
                               [](const std::unique_ptr<Lane>& s) { return s->job == nullptr; });
      if (Prepare(job, free->get())) {
        (*free)->job = std::move(job);
        ++running_count_;
      }
    }
    const absl::Time step_start = absl::Now();
    const bool stepped = running_count_ > 0;
    Step();
    const absl::Time step_end = absl::Now();
    task_debt = std::max(task_debt - (step_end - step_start), -kMaxCredit);
    if (stepped || !admitted.empty()) last_answer_ = step_end;
  }
  // Shutdown: the gRPC server has drained its calls by now; anything left is refused.
  const absl::Status unavailable = absl::UnavailableError("the daemon is shutting down");
  RunTasks();
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& [task, done] : tasks_) done->set_value(unavailable);
    tasks_.clear();
  }
  admitted.clear();
  queue_.TryPop(queue_.capacity(), &admitted);
  for (auto& job : admitted) job->Fail(unavailable);
  for (auto& lane : lanes_) {
    if (lane->job) lane->job->Fail(unavailable);
    lane->job.reset();
  }
  running_count_ = 0;
}

bool AskScheduler::Prepare(const std::shared_ptr<AskJob>& job, Lane* lane) {
  const v1::AskRequest& r = job->request();
  const absl::Time start = absl::Now();
  if (job->cancelled()) {
    job->Fail(absl::CancelledError("the call was cancelled"));
    return false;
  }
  if (start > job->deadline()) {
    job->Fail(absl::DeadlineExceededError("the deadline passed while the question was queued"));
    return false;
  }
  const knowledge::AskParams params =
      AskParamsFor(r, options_.defaults, options_.retrieval, modulator_ != nullptr);
  const knowledge::AskContext context{bank_, tokenizer_, modulator_, lane->cache->capacity()};
  absl::StatusOr<knowledge::PreparedAsk> prepared =
      knowledge::PrepareAsk(context, r.namespace_(), r.question(), params);
  if (!prepared.ok()) {
    job->Fail(prepared.status());
    return false;
  }
  v1::AskFinal final;
  final.set_mode(ToProto(params.mode));
  final.set_relevance(static_cast<float>(prepared->relevance));
  for (const storage::SearchHit& h : prepared->cited) *final.add_cited() = ToPassage(h);
  if (r.explain()) {
    v1::Explain* explain = final.mutable_explain();
    for (int32_t id : prepared->prompt) explain->add_prompt_ids(id);
    explain->set_prompt(tokenizer_->Decode(prepared->prompt));
    explain->set_prefix_rows(prepared->prefix.rows);
    if (prepared->prefix.rows > 0) {
      explain->set_prefix_sha256(knowledge::PrefixDigest(prepared->prefix));
    }
  }
  v1::Timings* t = final.mutable_timings();
  t->set_queue_ms(Ms(start - job->enqueued()));
  t->set_retrieval_ms(Ms(prepared->retrieval_time));
  t->set_modulation_ms(Ms(prepared->modulation_time));
  if (prepared->nothing_in_memory) {
    final.set_nothing_in_memory(true);
    final.set_stop_reason("nothing_in_memory");
    t->set_total_ms(Ms(absl::Now() - job->enqueued()));
    job->Finish(std::move(final));
    return false;
  }
  lane->with_update = false;
  if (job->session_state() != nullptr) {
    if (session_factors_ == nullptr) {
      job->Fail(absl::FailedPreconditionError("this daemon serves no session mapper"));
      return false;
    }
    const std::span<const float> state(*job->session_state());
    if (lane->update == nullptr) {
      absl::StatusOr<std::unique_ptr<LowRankState>> created =
          LowRankState::Create(session_factors_, state);
      if (!created.ok()) {
        job->Fail(created.status());
        return false;
      }
      lane->update = *std::move(created);
    } else if (absl::Status set = lane->update->Set(state); !set.ok()) {
      job->Fail(set);
      return false;
    }
    lane->with_update = true;
    final.set_session_id(r.session_id());
  }
  lane->cache->Clear();
  const PrefixKv& prefix = prepared->prefix;
  if (prefix.rows > 0) {
    if (absl::Status s = lane->cache->SetPrefix(prefix.keys, prefix.values, prefix.rows); !s.ok()) {
      job->Fail(s);
      return false;
    }
  }
  lane->prompt = std::move(prepared->prompt);
  lane->prefilled = false;
  lane->max_tokens = params.max_tokens;
  SamplingOptions sampling;
  sampling.temperature = std::max(0.0f, r.temperature());
  sampling.top_p = r.top_p() > 0 && r.top_p() <= 1 ? r.top_p() : 1.0f;
  sampling.seed = r.seed();
  lane->sampler.emplace(sampling);
  const size_t tail = std::min<size_t>(4, lane->prompt.size());
  lane->decoder.emplace(*tokenizer_, std::span<const int32_t>(lane->prompt).last(tail));
  lane->generated.clear();
  lane->answer.clear();
  t->set_prompt_tokens(static_cast<int>(lane->prompt.size()));
  lane->final = std::move(final);
  return true;
}

void AskScheduler::Step() {
  std::vector<SequenceStep> steps;
  std::vector<Lane*> active;
  const absl::Time now = absl::Now();
  for (auto& s : lanes_) {
    Lane* lane = s.get();
    if (lane->job == nullptr) continue;
    if (lane->job->cancelled()) {
      lane->job->Fail(absl::CancelledError("the call was cancelled"));
      lane->job.reset();
      --running_count_;
      continue;
    }
    if (now > lane->job->deadline()) {
      lane->job->Fail(absl::DeadlineExceededError("the deadline passed during generation"));
      lane->job.reset();
      --running_count_;
      continue;
    }
    if (lane->prefilled) {
      steps.push_back({lane->cache.get(), std::span<const int32_t>(&lane->next, 1), false});
    } else {
      steps.push_back({lane->cache.get(), lane->prompt, false});
    }
    if (lane->with_update) steps.back().update = lane->update.get();
    active.push_back(lane);
  }
  if (steps.empty()) return;
  std::vector<float> logits;
  const absl::Status forward = model_->Forward(steps, &logits);
  const absl::Time after = absl::Now();
  if (!forward.ok()) {
    spdlog::warn("engine: forward pass over {} sequences failed: {}", steps.size(),
                 forward.ToString());
    for (Lane* lane : active) {
      lane->job->Fail(forward);
      lane->job.reset();
      --running_count_;
    }
    return;
  }
  metrics_->ObserveAskBatch(static_cast<int>(steps.size()));
  const int vocab = model_->config().vocab_size;
  const int32_t eos = tokenizer_->eos_id();
  for (size_t i = 0; i < active.size(); ++i) {
    Lane* lane = active[i];
    if (!lane->prefilled) {
      lane->prefilled = true;
      lane->final.mutable_timings()->set_prefill_ms(Ms(after - now));
      lane->decode_start = after;
    }
    const int32_t token = lane->sampler->Sample(
        std::span<const float>(logits.data() + i * static_cast<size_t>(vocab), vocab));
    if (token == eos) {
      Retire(lane, "eos");
      continue;
    }
    lane->generated.push_back(token);
    std::string piece = lane->decoder->Push(token);
    const bool full = static_cast<int>(lane->generated.size()) >= lane->max_tokens ||
                      lane->cache->size() >= lane->cache->capacity();
    if (full) piece += lane->decoder->Flush();
    const size_t newline = piece.find('\n');
    if (newline != std::string::npos) piece.resize(newline);
    if (lane->answer.empty()) piece.erase(0, piece.find_first_not_of(' '));
    if (!piece.empty()) {
      lane->answer += piece;
      if (!lane->job->request().has_stream() || lane->job->request().stream()) {
        lane->job->EmitText(piece);
      }
    }
    if (newline != std::string::npos) {
      Retire(lane, "newline");
    } else if (full) {
      Retire(lane, "max_tokens");
    } else {
      lane->next = token;
    }
  }
}

void AskScheduler::Retire(Lane* lane, const char* stop_reason) {
  const absl::Time now = absl::Now();
  v1::Timings* t = lane->final.mutable_timings();
  t->set_decode_ms(Ms(now - lane->decode_start));
  t->set_total_ms(Ms(now - lane->job->enqueued()));
  t->set_generated_tokens(static_cast<int>(lane->generated.size()));
  lane->final.set_answer(lane->answer);
  lane->final.set_stop_reason(stop_reason);
  metrics_->AddGeneratedTokens(static_cast<int64_t>(lane->generated.size()));
  lane->job->Finish(std::move(lane->final));
  lane->final.Clear();
  lane->job.reset();
  --running_count_;
}

}  // namespace knowd
