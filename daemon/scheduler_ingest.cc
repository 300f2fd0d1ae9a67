#include "daemon/scheduler_ingest.h"

#include <set>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "knowledge/modulator.h"
#include "spdlog/spdlog.h"

namespace knowd {
namespace {

constexpr int64_t kTokensPerPass = 8192;

}  // namespace

IngestBatcher::IngestBatcher(AskScheduler* scheduler, storage::MemoryBank* bank, Metrics* metrics,
                             const IngestOptions& options)
    : scheduler_(scheduler),
      bank_(bank),
      metrics_(metrics),
      options_(options),
      queue_("ingest", static_cast<size_t>(options.queue_size)) {}

IngestBatcher::~IngestBatcher() { Stop(); }

void IngestBatcher::Start() {
  thread_ = std::thread([this] { Loop(); });
}

void IngestBatcher::Stop() {
  queue_.Close();
  if (thread_.joinable()) thread_.join();
}

absl::Status IngestBatcher::Submit(std::unique_ptr<IngestJob>& job) {
  absl::Status s = queue_.TryPush(job);
  if (absl::IsResourceExhausted(s)) metrics_->CountRejected("ingest");
  return s;
}

void IngestBatcher::Loop() {
  std::vector<std::unique_ptr<IngestJob>> batch;
  while (queue_.PopBatch(static_cast<size_t>(options_.max_batch),
                         absl::Milliseconds(options_.max_wait_ms), &batch)) {
    Process(batch);
    batch.clear();  // gives the clients' write permits back
  }
}

void IngestBatcher::Process(std::vector<std::unique_ptr<IngestJob>>& batch) {
  const absl::Time now = absl::Now();
  std::vector<IngestJob*> live;
  for (std::unique_ptr<IngestJob>& job : batch) {
    if (job->cancelled != nullptr && job->cancelled->load()) {
      job->done.set_value(absl::CancelledError("the stream was cancelled"));
    } else if (now > job->deadline) {
      job->done.set_value(absl::DeadlineExceededError("the deadline passed while queued"));
    } else {
      live.push_back(job.get());
    }
  }
  if (live.empty()) return;
  if (absl::Status s = Encode(live); !s.ok()) {
    spdlog::warn("ingest: encoding {} documents failed: {}", live.size(), s.ToString());
    for (IngestJob* job : live) job->done.set_value(s);
    return;
  }
  Store(live);
}

absl::Status IngestBatcher::Encode(std::vector<IngestJob*>& jobs) {
  std::vector<std::vector<int32_t>> inputs;
  int64_t tokens = 0;
  for (IngestJob* job : jobs) {
    for (const std::vector<int32_t>& input : job->encoder_inputs) {
      inputs.push_back(input);
      tokens += static_cast<int64_t>(input.size());
    }
  }
  const absl::Time start = absl::Now();
  knowledge::Modulator* modulator = scheduler_ != nullptr ? scheduler_->modulator() : nullptr;
  std::vector<storage::EncodedPassage> codes;
  if (modulator != nullptr) {
    // One encoder pass per batch, cut at kTokensPerPass tokens so that a huge document neither
    // needs its whole trunk state in memory at once nor holds the engine (and every question
    // waiting on it) for the length of its encoding.
    size_t begin = 0;
    while (begin < inputs.size()) {
      size_t end = begin;
      int64_t pass_tokens = 0;
      while (end < inputs.size() &&
             (end == begin ||
              pass_tokens + static_cast<int64_t>(inputs[end].size()) <= kTokensPerPass)) {
        pass_tokens += static_cast<int64_t>(inputs[end++].size());
      }
      std::vector<storage::EncodedPassage> pass;
      const std::span<const std::vector<int32_t>> part(inputs.data() + begin, end - begin);
      if (absl::Status s =
              scheduler_->RunOnEngineThread([&] { return modulator->EncodePassages(part, &pass); });
          !s.ok()) {
        return s;
      }
      for (storage::EncodedPassage& code : pass) codes.push_back(std::move(code));
      begin = end;
    }
    if (codes.size() != inputs.size()) {
      return absl::InternalError(absl::StrCat("the encoder returned ", codes.size(), " codes for ",
                                              inputs.size(), " passages"));
    }
  } else {
    // No adapter: a placeholder modulation; retrieval is BM25 over the text.
    codes.assign(inputs.size(), storage::EncodedPassage{{0.0f}, {1.0f}});
  }
  const double seconds = absl::ToDoubleSeconds(absl::Now() - start);
  size_t next = 0;
  for (IngestJob* job : jobs) {
    for (storage::Passage& p : job->document.passages) {
      p.latents = std::move(codes[next].latents);
      p.key = std::move(codes[next].key);
      ++next;
    }
  }
  metrics_->ObserveIngestBatch(static_cast<int>(jobs.size()), static_cast<int>(inputs.size()),
                               modulator != nullptr ? tokens : 0, seconds);
  return absl::OkStatus();
}

void IngestBatcher::Store(std::vector<IngestJob*>& jobs) {
  // The bank refuses a document twice in one batch: cut the batch before each repeat, so a
  // later version of a document replaces the earlier one in stream order.
  size_t begin = 0;
  while (begin < jobs.size()) {
    std::set<std::pair<std::string, std::string>> seen;
    size_t end = begin;
    while (end < jobs.size() &&
           seen.insert({jobs[end]->document.name_space, jobs[end]->document.id}).second) {
      ++end;
    }
    std::vector<storage::Document> documents;
    for (size_t i = begin; i < end; ++i) documents.push_back(std::move(jobs[i]->document));
    absl::StatusOr<std::vector<storage::DocumentAck>> acks = bank_->Put(documents);
    if (acks.ok()) {
      for (size_t i = begin; i < end; ++i) jobs[i]->done.set_value((*acks)[i - begin]);
    } else if (end - begin == 1) {
      jobs[begin]->done.set_value(acks.status());
    } else {
      // One bad document must not fail its neighbours: store them one by one.
      for (size_t i = begin; i < end; ++i) {
        absl::StatusOr<std::vector<storage::DocumentAck>> one =
            bank_->Put(std::span<const storage::Document>(&documents[i - begin], 1));
        if (one.ok()) {
          jobs[i]->done.set_value(one->front());
        } else {
          jobs[i]->done.set_value(one.status());
        }
      }
    }
    begin = end;
  }
}

}  // namespace knowd
