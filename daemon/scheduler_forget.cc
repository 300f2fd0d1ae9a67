#include "daemon/scheduler_forget.h"

#include <algorithm>
#include <map>
#include <set>
#include <utility>

#include "absl/time/clock.h"

namespace knowd {

ForgetBatcher::ForgetBatcher(storage::MemoryBank* bank, const AskScheduler* scheduler,
                             Metrics* metrics, const ForgetOptions& options)
    : bank_(bank),
      scheduler_(scheduler),
      metrics_(metrics),
      options_(options),
      queue_("forget", static_cast<size_t>(options.queue_size)) {}

ForgetBatcher::~ForgetBatcher() { Stop(); }

void ForgetBatcher::Start() {
  thread_ = std::thread([this] { Loop(); });
}

void ForgetBatcher::Stop() {
  queue_.Close();
  if (thread_.joinable()) thread_.join();
}

absl::Status ForgetBatcher::Submit(std::unique_ptr<ForgetJob>& job) {
  absl::Status s = queue_.TryPush(job);
  if (absl::IsResourceExhausted(s)) metrics_->CountRejected("forget");
  return s;
}

void ForgetBatcher::Loop() {
  std::vector<std::unique_ptr<ForgetJob>> batch;
  while (queue_.PopBatch(static_cast<size_t>(options_.max_batch), absl::ZeroDuration(), &batch)) {
    const absl::Time start = absl::Now();
    Process(batch);
    batch.clear();  // gives the clients' write permits back
    last_batch_us_.store(absl::ToInt64Microseconds(absl::Now() - start));
    // Questions waiting or decoding: rest as long as the batch took (at most half a core).
    if (scheduler_ != nullptr && scheduler_->queued() + scheduler_->running() > 0) {
      absl::SleepFor(std::min(absl::Now() - start, absl::Milliseconds(50)));
    }
  }
}

void ForgetBatcher::Process(std::vector<std::unique_ptr<ForgetJob>>& batch) {
  const absl::Time now = absl::Now();
  struct Removal {
    std::vector<std::string> ids;
    std::vector<ForgetJob*> jobs;
  };
  std::map<std::string, Removal> by_namespace;
  std::map<ForgetJob*, ForgetOutcome> outcomes;
  std::set<std::pair<std::string, std::string>> claimed;  // an id removed by an earlier call
  for (std::unique_ptr<ForgetJob>& job : batch) {
    if (now > job->deadline) {
      job->done.set_value(absl::DeadlineExceededError("the deadline passed while queued"));
      continue;
    }
    ForgetOutcome outcome;
    std::vector<std::pair<std::string, std::string>> mine;
    absl::Status failed;
    for (const std::string& id : job->ids) {
      absl::StatusOr<storage::Document> doc = bank_->Get(job->name_space, id);
      if (doc.ok() && !claimed.contains({job->name_space, id})) {
        outcome.forgotten.push_back(id);
        outcome.passages += static_cast<int>(doc->passages.size());
        mine.emplace_back(job->name_space, id);
      } else if (doc.ok() || absl::IsNotFound(doc.status())) {
        outcome.not_found.push_back(id);  // absent, or removed by a call before it in the batch
      } else {
        failed = doc.status();
        break;
      }
    }
    if (!failed.ok()) {
      job->done.set_value(failed);
      continue;
    }
    Removal& removal = by_namespace[job->name_space];
    for (auto& key : mine) {
      removal.ids.push_back(key.second);
      claimed.insert(std::move(key));
    }
    outcomes[job.get()] = std::move(outcome);
    removal.jobs.push_back(job.get());
  }
  for (auto& [name_space, removal] : by_namespace) {
    absl::Status status;
    if (!removal.ids.empty()) {
      absl::StatusOr<int> removed = bank_->Delete(name_space, removal.ids);
      status = removed.status();
    }
    for (ForgetJob* job : removal.jobs) {
      if (status.ok()) {
        job->done.set_value(std::move(outcomes[job]));
      } else {
        job->done.set_value(status);
      }
    }
  }
}

}  // namespace knowd
