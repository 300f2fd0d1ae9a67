// The engine thread: the only thread that touches the Transformer and the Adapter (neither is
// safe for concurrent use). It runs, in a loop:
//   1. engine tasks posted by other threads (the ingest batcher's encoder passes, Search's
//      question encoding), oldest first;
//   2. admission: questions from the bounded ask queue fill the free decode lanes (at most
//      ask_max_batch); each is prepared by the knowledge pipeline (knowledge::PrepareAsk:
//      retrieval, modulation, prompt) — a question the memory has nothing on is answered at once;
//   3. one Transformer::Forward over every lane: the prompts of newly admitted questions
//      (prefill) and the next token of running ones (decode) in the same batch.
// A question whose call was cancelled or whose deadline passed is dropped before the next step,
// so it stops consuming compute.
#pragma once

#include <atomic>
#include <condition_variable>
#include <deque>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "daemon/metrics.h"
#include "daemon/scheduler.h"
#include "knowd/v1/knowd.pb.h"
#include "knowledge/ask.h"
#include "knowledge/modulator.h"
#include "model/low_rank.h"
#include "model/tokenizer.h"
#include "model/transformer.h"
#include "storage/memory_bank.h"

namespace knowd {

// One question in flight: the request (namespace resolved, defaults filled in), and the channel
// its answer comes back on. The gRPC handler owns one reference and waits on it; the engine
// owns another while the question is queued or decoding.
class AskJob {
 public:
  struct Event {
    std::string text;                   // new answer text
    std::optional<v1::AskFinal> final;  // set on the last event
    absl::Status error;                 // not OK: the question failed (last event)
  };

  AskJob(v1::AskRequest request, absl::Time deadline)
      : request_(std::move(request)), deadline_(deadline), enqueued_(absl::Now()) {}

  const v1::AskRequest& request() const { return request_; }
  absl::Time deadline() const { return deadline_; }
  // A session's state (AskRequest.session_id): the engine applies it as a low-rank update
  // (AskScheduler::SetSessionFactors) to this question's rows. Null: none. Set before Submit.
  void set_session_state(std::shared_ptr<const std::vector<float>> state) {
    session_state_ = std::move(state);
  }
  const std::shared_ptr<const std::vector<float>>& session_state() const { return session_state_; }
  absl::Time enqueued() const { return enqueued_; }

  // The caller went away: the engine drops the question at its next step.
  void Cancel() { cancelled_ = true; }
  bool cancelled() const { return cancelled_; }

  // AskScheduler side.
  void EmitText(std::string text);
  void Finish(v1::AskFinal final);
  void Fail(absl::Status error);

  // Handler side: waits up to `timeout` for events and moves them into `out`. Returns true once
  // the last event (final or error) has been delivered.
  bool Wait(absl::Duration timeout, std::vector<Event>* out);

 private:
  void Push(Event event);
  const v1::AskRequest request_;
  const absl::Time deadline_;
  std::shared_ptr<const std::vector<float>> session_state_;
  const absl::Time enqueued_;
  std::atomic<bool> cancelled_{false};
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Event> events_;
  bool done_ = false;
};

struct AskSchedulerOptions {
  int ask_max_batch = 8;
  int ask_queue_size = 256;
  // While engine tasks (encoder passes) have taken more than their share of the thread, how long
  // the engine keeps them waiting after a question ends for the next question to arrive: the
  // client that asks one question after another keeps its share. Zero: tasks run whenever no
  // question is queued or decoding.
  absl::Duration ask_hold = absl::Milliseconds(5);
  // What a request leaves at 0 (knowledge/ask.h): top_k, rag_passages, subject_passages,
  // max_tokens; and hybrid's fusion weights and the abstention threshold (the bundle's
  // calibration). Its `retrieval` is not read: `retrieval` below resolves it per mode.
  knowledge::AskParams defaults;
  // The retrieval a request that names none gets, per mode (with an adapter; lexical without).
  knowledge::RetrievalDefaults retrieval;
};

// The pipeline's parameters for `request` (mode and retrieval resolved: an unspecified retrieval
// takes the mode's from `retrieval`; 0s take `defaults`).
// `has_adapter`: the default mode is mac with one, rag without; dense keys need one.
knowledge::AskParams AskParamsFor(const v1::AskRequest& request,
                                  const knowledge::AskParams& defaults,
                                  const knowledge::RetrievalDefaults& retrieval, bool has_adapter);

v1::AskMode ToProto(knowledge::AskMode mode);
knowledge::Retrieval FromProto(v1::Retrieval retrieval);

class AskScheduler {
 public:
  // `modulator` may be null (closed-book and rag with BM25 only). Everything must outlive the
  // engine. The thread starts in Start().
  AskScheduler(Transformer* model, const Tokenizer* tokenizer, knowledge::Modulator* modulator,
               storage::MemoryBank* bank, Metrics* metrics, const AskSchedulerOptions& options);
  ~AskScheduler();  // Stop()s

  absl::Status Start();
  // The session mapper's factors (model/session_mapper.h), which a question's session state
  // (AskJob::session_state) is applied through; null (the default): questions with a session
  // fail. Call before Start().
  void SetSessionFactors(const LowRankFactors* factors) { session_factors_ = factors; }
  // Refuses new work (UNAVAILABLE), fails what still waits, and joins the thread. Idempotent.
  void Stop();

  // Queues a question. RESOURCE_EXHAUSTED when the ask queue is full, UNAVAILABLE after Stop().
  absl::Status Submit(std::shared_ptr<AskJob> job);

  // Runs `task` on the engine thread and returns its status. Call from any thread but the engine
  // thread. While questions are decoding, tasks (ingest's encoder passes, Search's question
  // encoding) and decode steps share the thread's time about equally: a task waits until the
  // steps since the last tasks have taken as long as those tasks did (and, while they are ahead,
  // up to ask_hold after a question ends for the next one), so a stream of ingests cannot stall
  // the answers, nor answers the ingests.
  absl::Status RunOnEngineThread(std::function<absl::Status()> task);

  size_t queued() const { return queue_.size(); }
  int running() const { return running_count_.load(); }

  knowledge::Modulator* modulator() const { return modulator_; }
  // The retrieval a Search gets: its own, else the configured default for every mode (lexical
  // without an adapter: dense keys need one).
  knowledge::Retrieval ResolveRetrieval(v1::Retrieval requested) const;
  // Hybrid retrieval's weights (the bundle's).
  const knowledge::Fusion& fusion() const { return options_.defaults.fusion; }
  const Tokenizer& tokenizer() const { return *tokenizer_; }

 private:
  struct Lane;
  void Loop();
  void RunTasks();
  // Prepares an admitted question on lane `lane`: retrieval, modulation, prompt. False when the
  // question failed (its job has been told).
  bool Prepare(const std::shared_ptr<AskJob>& job, Lane* lane);
  void Step();
  void Retire(Lane* lane, const char* stop_reason);

  Transformer* const model_;
  const Tokenizer* const tokenizer_;
  knowledge::Modulator* const modulator_;
  storage::MemoryBank* const bank_;
  Metrics* const metrics_;
  const AskSchedulerOptions options_;
  const LowRankFactors* session_factors_ = nullptr;

  BoundedQueue<std::shared_ptr<AskJob>> queue_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::pair<std::function<absl::Status()>, std::promise<absl::Status>*>> tasks_;
  bool stopping_ = false;
  std::thread thread_;
  std::vector<std::unique_ptr<Lane>> lanes_;
  std::atomic<int> running_count_{0};
  absl::Time last_answer_ = absl::InfinitePast();  // engine thread: the last step or admission
};

}  // namespace knowd
