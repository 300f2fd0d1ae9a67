// Ingest batching: documents from every Ingest stream wait in one bounded queue; a batcher thread
// takes up to ingest_max_batch of them (waiting at most ingest_max_wait_ms for the batch to
// fill), encodes all their passages in ONE encoder pass on the engine thread, stores the batch
// with MemoryBank::Put (one synced WriteBatch), and only then completes each document's ack.
#pragma once

#include <atomic>
#include <future>
#include <memory>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "daemon/metrics.h"
#include "daemon/scheduler.h"
#include "daemon/scheduler_ask.h"
#include "storage/memory_bank.h"

namespace knowd {

// One validated document on its way into the bank.
struct IngestJob {
  storage::Document document;  // passages carry their text; latents and keys are filled here
  // Per passage: the token ids the encoder reads (BOS, overlap context, the passage).
  std::vector<std::vector<int32_t>> encoder_inputs;
  absl::Time deadline = absl::InfiniteFuture();
  std::shared_ptr<std::atomic<bool>> cancelled;  // the stream's; may be null
  std::promise<absl::StatusOr<storage::DocumentAck>> done;
  std::unique_ptr<WritePermit> permit;  // the client's write permit, given back once done is set
};

struct IngestOptions {
  int max_batch = 32;
  int max_wait_ms = 5;
  int queue_size = 1024;
};

class IngestBatcher {
 public:
  // `scheduler` may be null when there is no adapter: passages are then stored with a placeholder
  // 1×1 latent and key (the bank serves them through BM25). Everything must outlive the batcher.
  IngestBatcher(AskScheduler* scheduler, storage::MemoryBank* bank, Metrics* metrics,
                const IngestOptions& options);
  ~IngestBatcher();  // Stop()s

  void Start();
  // Finishes what is queued, then joins. Later submissions get UNAVAILABLE.
  void Stop();

  // Queues a document; its ack arrives on the job's `done`. RESOURCE_EXHAUSTED when the queue is
  // full and UNAVAILABLE after Stop(); the job is then left with the caller.
  absl::Status Submit(std::unique_ptr<IngestJob>& job);

  size_t queued() const { return queue_.size(); }

 private:
  void Loop();
  void Process(std::vector<std::unique_ptr<IngestJob>>& batch);
  absl::Status Encode(std::vector<IngestJob*>& jobs);
  void Store(std::vector<IngestJob*>& jobs);

  AskScheduler* const scheduler_;
  storage::MemoryBank* const bank_;
  Metrics* const metrics_;
  const IngestOptions options_;
  BoundedQueue<std::unique_ptr<IngestJob>> queue_;
  std::thread thread_;
};

}  // namespace knowd
