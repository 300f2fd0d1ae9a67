// Forget batching: Forget calls from every client wait in one bounded queue; one thread takes
// up to forget_max_batch of them at a time, looks their ids up, removes the present ones with one
// MemoryBank::Delete per namespace (one synced write, one index update), and completes each call.
// A flood of Forgets therefore costs one thread and one index update per batch, not one of each
// per call; and while questions wait or decode, the thread rests as long as each batch took, so
// asks keep at least half of what Forget would otherwise take.
#pragma once

#include <atomic>
#include <future>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "daemon/metrics.h"
#include "daemon/scheduler.h"
#include "daemon/scheduler_ask.h"
#include "storage/memory_bank.h"

namespace knowd {

// What one Forget call removed.
struct ForgetOutcome {
  std::vector<std::string> forgotten;
  std::vector<std::string> not_found;
  int passages = 0;
};

struct ForgetJob {
  std::string name_space;
  std::vector<std::string> ids;  // validated and unique
  absl::Time deadline = absl::InfiniteFuture();
  std::promise<absl::StatusOr<ForgetOutcome>> done;
  std::unique_ptr<WritePermit> permit;  // the client's write permit, given back once done is set

  // A job for `ids` (already validated) in `name_space`, each id once, in first-given order.
  template <typename Ids>
  static std::unique_ptr<ForgetJob> ForIds(std::string name_space, const Ids& ids) {
    auto job = std::make_unique<ForgetJob>();
    job->name_space = std::move(name_space);
    std::set<std::string> seen;
    for (const std::string& id : ids) {
      if (seen.insert(id).second) job->ids.push_back(id);
    }
    return job;
  }
};

struct ForgetOptions {
  int max_batch = 64;  // calls per batch
  int queue_size = 1024;
};

class ForgetBatcher {
 public:
  // `scheduler` (may be null) tells whether questions are waiting; everything must outlive the
  // batcher.
  ForgetBatcher(storage::MemoryBank* bank, const AskScheduler* scheduler, Metrics* metrics,
                const ForgetOptions& options);
  ~ForgetBatcher();  // Stop()s

  void Start();
  // Finishes what is queued, then joins. Later submissions get UNAVAILABLE.
  void Stop();

  // Queues a call; its outcome arrives on the job's `done`. RESOURCE_EXHAUSTED when the queue is
  // full and UNAVAILABLE after Stop(); the job is then left with the caller.
  absl::Status Submit(std::unique_ptr<ForgetJob>& job);

  size_t queued() const { return queue_.size(); }
  // How long the last batch took to process, for the retry hint of a refused call.
  absl::Duration last_batch() const { return absl::Microseconds(last_batch_us_.load()); }

 private:
  void Loop();
  void Process(std::vector<std::unique_ptr<ForgetJob>>& batch);

  storage::MemoryBank* const bank_;
  const AskScheduler* const scheduler_;
  Metrics* const metrics_;
  const ForgetOptions options_;
  BoundedQueue<std::unique_ptr<ForgetJob>> queue_;
  std::atomic<int64_t> last_batch_us_{0};
  std::thread thread_;
};

}  // namespace knowd
