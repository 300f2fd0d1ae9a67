#include "daemon/scheduler_engine.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "model/generate.h"
#include "model/qa_prompt.h"
#include "model/sampler.h"
#include "spdlog/spdlog.h"

namespace knowd {
namespace {

double Ms(absl::Duration d) { return absl::ToDoubleMilliseconds(d); }

bool MacMode(v1::AskMode mode) { return mode == v1::ASK_MODE_MAC || mode == v1::ASK_MODE_MAC_RAG; }
bool RagMode(v1::AskMode mode) { return mode == v1::ASK_MODE_RAG || mode == v1::ASK_MODE_MAC_RAG; }

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

// ---- retrieval ----------------------------------------------------------------------------

v1::Retrieval Engine::ResolveRetrieval(v1::Retrieval requested) const {
  if (requested != v1::RETRIEVAL_UNSPECIFIED) return requested;
  return adapter_ != nullptr ? options_.default_retrieval : v1::RETRIEVAL_LEXICAL;
}

absl::StatusOr<std::vector<storage::SearchHit>> RetrievePassages(
    storage::MemoryBank& bank, std::string_view name_space, std::string_view query,
    const std::vector<float>* key, int key_dim, v1::Retrieval retrieval, int k) {
  storage::SearchRequest request;
  request.name_space = std::string(name_space);
  request.k = k;
  request.with_text = true;
  if (retrieval == v1::RETRIEVAL_DENSE || retrieval == v1::RETRIEVAL_HYBRID) {
    if (key == nullptr) {
      return absl::FailedPreconditionError(
          "dense and hybrid retrieval need an adapter; this daemon has none (use lexical)");
    }
    request.key = *key;
    if (retrieval == v1::RETRIEVAL_HYBRID) {
      request.hybrid = true;
      request.query_text = std::string(query);
    }
    return bank.Search(request);
  }
  // The bank has no BM25-only search; a hybrid search whose k covers every lexical candidate,
  // re-ranked by the BM25 weight, is exactly the BM25 top list.
  request.key = key != nullptr ? *key : std::vector<float>(key_dim, 0.0f);
  request.hybrid = true;
  request.query_text = std::string(query);
  request.candidates = k;
  request.k = std::min(4096, 2 * k);
  absl::StatusOr<std::vector<storage::SearchHit>> hits = bank.Search(request);
  if (!hits.ok()) return hits.status();
  std::vector<storage::SearchHit> lexical;
  for (storage::SearchHit& h : *hits) {
    if (!h.lexical_score.has_value()) continue;
    h.score = *h.lexical_score;
    lexical.push_back(std::move(h));
  }
  std::stable_sort(lexical.begin(), lexical.end(),
                   [](const auto& a, const auto& b) { return a.score > b.score; });
  if (static_cast<int>(lexical.size()) > k) lexical.resize(k);
  return lexical;
}

absl::StatusOr<QuestionCode> EncodeQuestion(Adapter& adapter, const Tokenizer& tokenizer,
                                            std::string_view question) {
  const std::vector<int32_t> ids = tokenizer.Encode(Adapter::QuestionPrompt(question), true);
  return adapter.EncodeQuestion(ids);
}

// ---- Engine -------------------------------------------------------------------------------

struct Engine::Slot {
  std::unique_ptr<KvCache> cache;
  std::shared_ptr<AskJob> job;  // null: the slot is free
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
};

Engine::Engine(Transformer* model, const Tokenizer* tokenizer, Adapter* adapter,
               storage::MemoryBank* bank, Metrics* metrics, const EngineOptions& options)
    : model_(model),
      tokenizer_(tokenizer),
      adapter_(adapter),
      bank_(bank),
      metrics_(metrics),
      options_(options),
      queue_("ask", static_cast<size_t>(options.ask_queue_size)) {}

Engine::~Engine() { Stop(); }

absl::Status Engine::Start() {
  for (int i = 0; i < options_.ask_max_batch; ++i) {
    absl::StatusOr<std::unique_ptr<KvCache>> cache =
        model_->NewCache(model_->config().max_position_embeddings);
    if (!cache.ok()) return cache.status();
    auto slot = std::make_unique<Slot>();
    slot->cache = *std::move(cache);
    slots_.push_back(std::move(slot));
  }
  thread_ = std::thread([this] { Loop(); });
  return absl::OkStatus();
}

void Engine::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  queue_.Close();
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

absl::Status Engine::Submit(std::shared_ptr<AskJob> job) {
  if (absl::Status s = queue_.TryPush(job); !s.ok()) {
    if (absl::IsResourceExhausted(s)) metrics_->CountRejected("ask");
    return s;
  }
  { std::lock_guard<std::mutex> lock(mu_); }  // the engine is waiting or will see the job
  cv_.notify_all();
  return absl::OkStatus();
}

absl::Status Engine::RunOnEngine(std::function<absl::Status()> task) {
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

void Engine::RunTasks() {
  std::deque<std::pair<std::function<absl::Status()>, std::promise<absl::Status>*>> tasks;
  {
    std::lock_guard<std::mutex> lock(mu_);
    tasks.swap(tasks_);
  }
  for (auto& [task, done] : tasks) done->set_value(task());
}

void Engine::Loop() {
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
    const bool answering = running_count_ > 0 || queue_.size() > 0;
    if (!answering || task_debt <= absl::ZeroDuration()) {
      const absl::Time start = absl::Now();
      RunTasks();
      task_debt = std::min(task_debt + (absl::Now() - start), kMaxDebt);
    }
    admitted.clear();
    queue_.TryPop(static_cast<size_t>(options_.ask_max_batch - running_count_), &admitted);
    for (std::shared_ptr<AskJob>& job : admitted) {
      auto free = std::find_if(slots_.begin(), slots_.end(),
                               [](const std::unique_ptr<Slot>& s) { return s->job == nullptr; });
      if (Prepare(job, free->get())) {
        (*free)->job = std::move(job);
        ++running_count_;
      }
    }
    const absl::Time step_start = absl::Now();
    Step();
    task_debt = std::max(task_debt - (absl::Now() - step_start), -kMaxCredit);
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
  for (auto& slot : slots_) {
    if (slot->job) slot->job->Fail(unavailable);
    slot->job.reset();
  }
  running_count_ = 0;
}

bool Engine::Prepare(const std::shared_ptr<AskJob>& job, Slot* slot) {
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
  auto fail = [&](absl::Status s) {
    job->Fail(std::move(s));
    return false;
  };
  v1::AskMode mode = r.mode();
  if (mode == v1::ASK_MODE_UNSPECIFIED) {
    mode = adapter_ != nullptr ? v1::ASK_MODE_MAC : v1::ASK_MODE_RAG;
  }
  if (MacMode(mode) && adapter_ == nullptr) {
    return fail(absl::FailedPreconditionError(
        "mode mac needs an adapter; this daemon serves without one (closed-book and rag only)"));
  }
  const v1::Retrieval retrieval = ResolveRetrieval(r.retrieval());
  const int top_k = r.top_k() > 0 ? r.top_k() : options_.default_top_k;
  const int rag_passages = r.rag_passages() > 0 ? r.rag_passages() : 1;
  const int max_tokens = r.max_tokens() > 0 ? r.max_tokens() : options_.default_max_tokens;

  // Retrieval.
  std::optional<QuestionCode> question;
  std::vector<storage::SearchHit> hits;
  if (mode != v1::ASK_MODE_CLOSED_BOOK) {
    if (adapter_ != nullptr && (MacMode(mode) || retrieval != v1::RETRIEVAL_LEXICAL)) {
      absl::StatusOr<QuestionCode> code = EncodeQuestion(*adapter_, *tokenizer_, r.question());
      if (!code.ok()) return fail(code.status());
      question = *std::move(code);
    }
    absl::StatusOr<std::vector<storage::SearchHit>> found =
        RetrievePassages(*bank_, r.namespace_(), r.question(), question ? &question->key : nullptr,
                         adapter_ != nullptr ? adapter_->spec().key_dim : 1, retrieval, top_k);
    if (!found.ok()) return fail(found.status());
    hits = *std::move(found);
  }
  const absl::Time retrieved = absl::Now();

  // Modulation.
  PrefixKv prefix;
  std::vector<std::shared_ptr<const std::vector<float>>> latents;
  if (MacMode(mode) && !hits.empty()) {
    std::vector<storage::PassageId> ids;
    for (const storage::SearchHit& h : hits) {
      if (static_cast<int>(ids.size()) < adapter_->spec().max_candidates) {
        ids.push_back(h.passage_id);
      }
    }
    auto all = bank_->GetLatents(r.namespace_(), ids);
    if (absl::IsNotFound(all.status())) {
      // A Forget between the search and now: answer from the hits still stored (and cite only
      // them), as if the search had come after the Forget.
      std::vector<storage::SearchHit> stored;
      for (storage::SearchHit& h : hits) {
        auto one = bank_->GetLatents(r.namespace_(), {&h.passage_id, 1});
        if (absl::IsNotFound(one.status())) continue;
        if (!one.ok()) return fail(one.status());
        if (static_cast<int>(latents.size()) < adapter_->spec().max_candidates) {
          latents.push_back((*one)[0]);
        }
        stored.push_back(std::move(h));
      }
      hits = std::move(stored);
    } else if (!all.ok()) {
      return fail(all.status());
    } else {
      latents = *std::move(all);
    }
  }
  if (!latents.empty()) {
    std::vector<std::span<const float>> spans;
    for (const auto& l : latents) spans.emplace_back(*l);
    // mac+rag's prompt carries passage text: the adapter's mac+rag head, if it has one.
    absl::StatusOr<PrefixKv> modulated = adapter_->Modulate(*question, spans, RagMode(mode));
    if (!modulated.ok()) return fail(modulated.status());
    prefix = *std::move(modulated);
  }
  const absl::Time modulated = absl::Now();

  // The prompt: the best rag_passages passages and up to subject_passages more on the best BM25
  // hit's subject, oldest first (so the newest facts sit nearest the question), dropping the
  // lowest-ranked ones until it fits the context.
  std::vector<const storage::SearchHit*> in_prompt;
  if (RagMode(mode)) {
    int on_subject = 0;
    for (int i = 0; i < static_cast<int>(hits.size()); ++i) {
      if (i < rag_passages) {
        in_prompt.push_back(&hits[i]);
      } else if (hits[i].same_subject && on_subject < options_.subject_passages) {
        in_prompt.push_back(&hits[i]);
        ++on_subject;
      }
    }
  }
  const int capacity = slot->cache->capacity();
  const int budget = capacity - prefix.rows - max_tokens;
  if (budget < 2) {
    return fail(absl::InvalidArgumentError(
        absl::StrCat("max_tokens ", max_tokens, " leaves no room for the prompt in the model's ",
                     capacity, " positions")));
  }
  const bool bos = prefix.rows == 0;
  std::vector<int32_t> ids;
  while (true) {
    std::vector<const storage::SearchHit*> ordered = in_prompt;
    std::stable_sort(ordered.begin(), ordered.end(), [](const auto* a, const auto* b) {
      return a->valid_from.value_or(a->ingest_time) < b->valid_from.value_or(b->ingest_time);
    });
    std::vector<std::string_view> texts;
    for (const auto* h : ordered) texts.push_back(h->text);
    ids = tokenizer_->Encode(QaPrompt(JoinPassages(texts), r.question()), bos);
    if (static_cast<int>(ids.size()) <= budget) break;
    if (!in_prompt.empty()) {
      in_prompt.pop_back();
      continue;
    }
    // The question alone overflows: keep BOS and its tail ("...\nA:").
    std::vector<int32_t> kept;
    if (bos && tokenizer_->bos_id() >= 0) kept.push_back(tokenizer_->bos_id());
    kept.insert(kept.end(), ids.end() - (budget - static_cast<int>(kept.size())), ids.end());
    ids = std::move(kept);
    break;
  }

  slot->cache->Clear();
  if (prefix.rows > 0) {
    if (absl::Status s = slot->cache->SetPrefix(prefix.keys, prefix.values, prefix.rows); !s.ok()) {
      return fail(s);
    }
  }
  slot->prompt = std::move(ids);
  slot->prefilled = false;
  slot->max_tokens = max_tokens;
  SamplingOptions sampling;
  sampling.temperature = std::max(0.0f, r.temperature());
  sampling.top_p = r.top_p() > 0 && r.top_p() <= 1 ? r.top_p() : 1.0f;
  sampling.seed = r.seed();
  slot->sampler.emplace(sampling);
  const size_t context = std::min<size_t>(4, slot->prompt.size());
  slot->decoder.emplace(*tokenizer_, std::span<const int32_t>(slot->prompt).last(context));
  slot->generated.clear();
  slot->answer.clear();
  slot->final.Clear();
  slot->final.set_mode(mode);
  if (MacMode(mode)) {
    for (const storage::SearchHit& h : hits) *slot->final.add_cited() = ToPassage(h);
  } else {
    for (const storage::SearchHit* h : in_prompt) *slot->final.add_cited() = ToPassage(*h);
  }
  v1::Timings* t = slot->final.mutable_timings();
  t->set_queue_ms(Ms(start - job->enqueued()));
  t->set_retrieval_ms(Ms(retrieved - start));
  t->set_modulation_ms(Ms(modulated - retrieved));
  t->set_prompt_tokens(static_cast<int>(slot->prompt.size()));
  return true;
}

void Engine::Step() {
  std::vector<SequenceStep> steps;
  std::vector<Slot*> active;
  const absl::Time now = absl::Now();
  for (auto& s : slots_) {
    Slot* slot = s.get();
    if (slot->job == nullptr) continue;
    if (slot->job->cancelled()) {
      slot->job->Fail(absl::CancelledError("the call was cancelled"));
      slot->job.reset();
      --running_count_;
      continue;
    }
    if (now > slot->job->deadline()) {
      slot->job->Fail(absl::DeadlineExceededError("the deadline passed during generation"));
      slot->job.reset();
      --running_count_;
      continue;
    }
    if (slot->prefilled) {
      steps.push_back({slot->cache.get(), std::span<const int32_t>(&slot->next, 1), false});
    } else {
      steps.push_back({slot->cache.get(), slot->prompt, false});
    }
    active.push_back(slot);
  }
  if (steps.empty()) return;
  std::vector<float> logits;
  const absl::Status forward = model_->Forward(steps, &logits);
  const absl::Time after = absl::Now();
  if (!forward.ok()) {
    spdlog::warn("engine: forward pass over {} sequences failed: {}", steps.size(),
                 forward.ToString());
    for (Slot* slot : active) {
      slot->job->Fail(forward);
      slot->job.reset();
      --running_count_;
    }
    return;
  }
  metrics_->ObserveAskBatch(static_cast<int>(steps.size()));
  const int vocab = model_->config().vocab_size;
  const int32_t eos = tokenizer_->eos_id();
  for (size_t i = 0; i < active.size(); ++i) {
    Slot* slot = active[i];
    if (!slot->prefilled) {
      slot->prefilled = true;
      slot->final.mutable_timings()->set_prefill_ms(Ms(after - now));
      slot->decode_start = after;
    }
    const int32_t token = slot->sampler->Sample(
        std::span<const float>(logits.data() + i * static_cast<size_t>(vocab), vocab));
    if (token == eos) {
      Retire(slot, "eos");
      continue;
    }
    slot->generated.push_back(token);
    std::string piece = slot->decoder->Push(token);
    const bool full = static_cast<int>(slot->generated.size()) >= slot->max_tokens ||
                      slot->cache->size() >= slot->cache->capacity();
    if (full) piece += slot->decoder->Flush();
    const size_t newline = piece.find('\n');
    if (newline != std::string::npos) piece.resize(newline);
    if (slot->answer.empty()) piece.erase(0, piece.find_first_not_of(' '));
    if (!piece.empty()) {
      slot->answer += piece;
      if (!slot->job->request().has_stream() || slot->job->request().stream()) {
        slot->job->EmitText(piece);
      }
    }
    if (newline != std::string::npos) {
      Retire(slot, "newline");
    } else if (full) {
      Retire(slot, "max_tokens");
    } else {
      slot->next = token;
    }
  }
}

void Engine::Retire(Slot* slot, const char* stop_reason) {
  const absl::Time now = absl::Now();
  v1::Timings* t = slot->final.mutable_timings();
  t->set_decode_ms(Ms(now - slot->decode_start));
  t->set_total_ms(Ms(now - slot->job->enqueued()));
  t->set_generated_tokens(static_cast<int>(slot->generated.size()));
  slot->final.set_answer(slot->answer);
  slot->final.set_stop_reason(stop_reason);
  metrics_->AddGeneratedTokens(static_cast<int64_t>(slot->generated.size()));
  slot->job->Finish(std::move(slot->final));
  slot->final.Clear();
  slot->job.reset();
  --running_count_;
}

}  // namespace knowd
