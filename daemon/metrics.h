// The daemon's counters and histograms, exposed in the Prometheus text format on /metrics
// (docs/operations.md lists them). Safe for concurrent use from any thread.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

namespace knowd {

class Histogram {
 public:
  explicit Histogram(std::vector<double> upper_bounds);
  void Observe(double value);
  // Appends the _bucket/_sum/_count lines of `name` with `labels` ("" or `a="b",c="d"`).
  void Render(std::string_view name, std::string_view labels, std::string* out) const;

 private:
  std::vector<double> bounds_;
  std::vector<uint64_t> counts_;  // per bucket, not cumulative; last = +Inf
  double sum_ = 0;
  uint64_t count_ = 0;
};

// A value read at scrape time (queue depths, bank counts).
struct Gauge {
  std::string name;  // with labels, e.g. knowd_queue_depth{queue="ask"}
  std::string help;
  double value = 0;
};

class Metrics {
 public:
  Metrics();

  // One finished RPC: `method` (e.g. "Ask"), its gRPC code name (e.g. "OK") and duration.
  void CountRpc(std::string_view method, std::string_view code, double seconds);
  // One encoder pass of the ingest path.
  void ObserveIngestBatch(int documents, int passages, int64_t tokens, double encode_seconds);
  // One engine forward pass over `sequences` questions (prefills and decode steps).
  void ObserveAskBatch(int sequences);
  void AddGeneratedTokens(int64_t tokens);
  // Counts a question or document refused because its queue was full.
  void CountRejected(std::string_view queue);

  // Called at every scrape for the gauges; set once before serving.
  void SetGaugeSource(std::function<std::vector<Gauge>()> source);

  // The Prometheus text exposition (version 0.0.4).
  std::string Render() const;

 private:
  mutable std::mutex mu_;
  std::map<std::pair<std::string, std::string>, uint64_t> rpc_count_;  // (method, code)
  std::map<std::string, Histogram> rpc_seconds_;                       // by method
  std::map<std::string, uint64_t> rejected_;                           // by queue
  Histogram ingest_batch_documents_;
  Histogram ingest_batch_passages_;
  Histogram ask_batch_sequences_;
  uint64_t encoder_tokens_ = 0;
  double encoder_seconds_ = 0;
  double encoder_tokens_per_second_ = 0;  // of the last pass
  uint64_t generated_tokens_ = 0;
  std::function<std::vector<Gauge>()> gauges_;
};

}  // namespace knowd
