// The service's side of scale-out (daemon/cluster_log.h): the shard check, reads that wait for a
// log position, Forget through the log, and applying the log to this replica's bank.
#include <future>
#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "daemon/request_checks.h"
#include "daemon/server_service.h"
#include "knowledge/document_rules.h"
#include "spdlog/spdlog.h"

namespace knowd {
namespace {

constexpr size_t kMaxForgetOutcomes = 4096;

// Queues a log entry's job. A full queue means the batcher is busy with this replica's own
// backlog, and an entry of the log cannot be refused: wait for room.
template <typename Batcher, typename Job>
absl::Status SubmitWhenRoom(Batcher& batcher, std::unique_ptr<Job>& job) {
  absl::Status submitted;
  while (absl::IsResourceExhausted(submitted = batcher.Submit(job))) {
    absl::SleepFor(absl::Milliseconds(20));
  }
  return submitted;
}

}  // namespace

absl::Status KnowledgeServiceImpl::CheckShard(std::string_view name_space) const {
  if (cluster_ == nullptr) return absl::OkStatus();
  const ClusterOptions& o = cluster_->options();
  const int owner = ShardOf(name_space, o.shards);
  if (owner == o.shard) return absl::OkStatus();
  const absl::string_view ns(name_space.data(), name_space.size());
  return absl::FailedPreconditionError(absl::StrCat(
      "namespace \"", ns, "\" belongs to shard ", owner, " of ", o.shards, "; this replica (",
      o.replica, ") serves shard ", o.shard,
      ": send the call through the cluster's router with the header ", kNamespaceHeader, ": ", ns));
}

absl::Status KnowledgeServiceImpl::WaitForLog(uint64_t sequence, absl::Time deadline,
                                              const std::function<bool()>& cancelled) const {
  if (sequence == 0) return absl::OkStatus();
  if (cluster_ == nullptr) {
    return absl::InvalidArgumentError(
        "min_log_sequence is for a cluster (knowd serve --cluster-nats); this daemon has no log");
  }
  return cluster_->WaitApplied(sequence, deadline, cancelled);
}

absl::Status KnowledgeServiceImpl::ForgetThroughLog(grpc::ServerContext* context,
                                                    const v1::ForgetRequest& request,
                                                    const std::string& name_space,
                                                    absl::Time deadline,
                                                    v1::ForgetResponse* response) {
  v1::ForgetRequest entry = request;
  entry.set_namespace_(name_space);
  KNOWD_ASSIGN_OR_RETURN(
      uint64_t sequence,
      cluster_->Publish(entry, std::min(deadline, absl::Now() + absl::Seconds(30))));
  response->set_log_sequence(sequence);
  // The removal is in the log; the answer (what was removed here) comes once this replica has
  // applied it.
  if (absl::Status s =
          cluster_->WaitApplied(sequence, deadline, [context] { return context->IsCancelled(); });
      !s.ok()) {
    return s;
  }
  std::lock_guard<std::mutex> lock(forget_outcomes_mu_);
  auto it = forget_outcomes_.find(sequence);
  if (it == forget_outcomes_.end()) return absl::OkStatus();  // applied before a restart
  for (const std::string& id : it->second.forgotten) response->add_forgotten(id);
  for (const std::string& id : it->second.not_found) response->add_not_found(id);
  response->set_passages(it->second.passages);
  forget_outcomes_.erase(it);
  return absl::OkStatus();
}

absl::Status KnowledgeServiceImpl::ApplyLogRecords(std::span<const LogRecord> records) {
  size_t i = 0;
  while (i < records.size()) {
    // A run of ingests goes to the batcher together (one encoder pass, one write), up to an id
    // seen twice in the run, which the bank must store in order.
    std::vector<std::unique_ptr<IngestJob>> jobs;
    std::vector<std::future<absl::StatusOr<storage::DocumentAck>>> acks;
    std::set<std::pair<std::string, std::string>> ids;
    while (i < records.size()) {
      const auto* ingest = std::get_if<v1::IngestRequest>(&records[i].request);
      if (ingest == nullptr) break;
      if (!ids.emplace(ingest->namespace_(), ingest->id()).second) break;
      auto job = std::make_unique<IngestJob>();
      if (absl::Status s = PrepareIngest(*ingest, job.get()); !s.ok()) {
        // It passed these checks where it was published; only a replica with other limits
        // refuses it. Applying the rest keeps the replicas as alike as they can be.
        spdlog::error("cluster: log entry {} (document \"{}\") refused here: {}",
                      records[i].sequence, EscapeInvalidUtf8(ingest->id()),
                      std::string(s.message()));
        ++i;
        continue;
      }
      jobs.push_back(std::move(job));
      ++i;
    }
    for (std::unique_ptr<IngestJob>& job : jobs) {
      acks.push_back(job->done.get_future());
      absl::Status submitted = SubmitWhenRoom(*ingest_, job);
      if (!submitted.ok()) {
        acks.pop_back();
        for (auto& ack : acks) ack.wait();
        return submitted;
      }
    }
    absl::Status failed;
    for (auto& ack : acks) {
      absl::StatusOr<storage::DocumentAck> stored = ack.get();
      if (!stored.ok() && failed.ok()) failed = stored.status();
    }
    if (!failed.ok()) return failed;

    if (i < records.size()) {
      const auto* forget = std::get_if<v1::ForgetRequest>(&records[i].request);
      if (forget == nullptr) continue;  // an ingest of an id already in the run: a new run
      std::unique_ptr<ForgetJob> job = ForgetJob::ForIds(forget->namespace_(), forget->ids());
      std::future<absl::StatusOr<ForgetOutcome>> done = job->done.get_future();
      KNOWD_RETURN_IF_ERROR(SubmitWhenRoom(*forget_, job));
      KNOWD_ASSIGN_OR_RETURN(ForgetOutcome outcome, done.get());
      std::lock_guard<std::mutex> lock(forget_outcomes_mu_);
      if (forget_outcomes_.size() >= kMaxForgetOutcomes) {
        forget_outcomes_.erase(forget_outcomes_.begin());
      }
      forget_outcomes_[records[i].sequence] = std::move(outcome);
      ++i;
    }
  }
  return absl::OkStatus();
}

}  // namespace knowd
