#include "daemon/metrics.h"

#include "absl/strings/str_cat.h"

namespace knowd {
namespace {

const std::vector<double>& LatencyBuckets() {
  static const auto* b = new std::vector<double>{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                                 0.25,  0.5,    1,     2.5,  5,     10,   30};
  return *b;
}

const std::vector<double>& SizeBuckets() {
  static const auto* b = new std::vector<double>{1, 2, 4, 8, 16, 32, 64, 128, 256};
  return *b;
}

std::string Number(double v) { return absl::StrCat(v); }

// The "# HELP" and "# TYPE" lines that open the metric family `name`.
void AppendFamily(absl::string_view name, absl::string_view type, absl::string_view help,
                  std::string* out) {
  absl::StrAppend(out, "# HELP ", name, " ", help, "\n# TYPE ", name, " ", type, "\n");
}

}  // namespace

Histogram::Histogram(std::vector<double> upper_bounds)
    : bounds_(std::move(upper_bounds)), counts_(bounds_.size() + 1, 0) {}

void Histogram::Observe(double value) {
  size_t b = 0;
  while (b < bounds_.size() && value > bounds_[b]) ++b;
  ++counts_[b];
  sum_ += value;
  ++count_;
}

void Histogram::Render(std::string_view name_view, std::string_view labels_view,
                       std::string* out) const {
  const absl::string_view name(name_view.data(), name_view.size());
  const absl::string_view labels(labels_view.data(), labels_view.size());
  const std::string sep = labels.empty() ? "" : ",";
  uint64_t cumulative = 0;
  for (size_t b = 0; b <= bounds_.size(); ++b) {
    cumulative += counts_[b];
    const std::string le = b < bounds_.size() ? Number(bounds_[b]) : "+Inf";
    absl::StrAppend(out, name, "_bucket{", labels, sep, "le=\"", le, "\"} ", cumulative, "\n");
  }
  const std::string braces = labels.empty() ? "" : absl::StrCat("{", labels, "}");
  absl::StrAppend(out, name, "_sum", braces, " ", Number(sum_), "\n");
  absl::StrAppend(out, name, "_count", braces, " ", count_, "\n");
}

Metrics::Metrics()
    : ingest_batch_documents_(SizeBuckets()),
      ingest_batch_passages_(SizeBuckets()),
      ask_batch_sequences_(SizeBuckets()) {}

void Metrics::CountRpc(std::string_view method, std::string_view code, double seconds) {
  std::lock_guard<std::mutex> lock(mu_);
  ++rpc_count_[{std::string(method), std::string(code)}];
  auto it = rpc_seconds_.find(std::string(method));
  if (it == rpc_seconds_.end()) {
    it = rpc_seconds_.emplace(std::string(method), Histogram(LatencyBuckets())).first;
  }
  it->second.Observe(seconds);
}

void Metrics::ObserveIngestBatch(int documents, int passages, int64_t tokens,
                                 double encode_seconds) {
  std::lock_guard<std::mutex> lock(mu_);
  ingest_batch_documents_.Observe(documents);
  ingest_batch_passages_.Observe(passages);
  encoder_tokens_ += tokens;
  encoder_seconds_ += encode_seconds;
  if (encode_seconds > 0) encoder_tokens_per_second_ = tokens / encode_seconds;
}

void Metrics::ObserveAskBatch(int sequences) {
  std::lock_guard<std::mutex> lock(mu_);
  ask_batch_sequences_.Observe(sequences);
}

void Metrics::AddGeneratedTokens(int64_t tokens) {
  std::lock_guard<std::mutex> lock(mu_);
  generated_tokens_ += tokens;
}

void Metrics::CountRejected(std::string_view queue) {
  std::lock_guard<std::mutex> lock(mu_);
  ++rejected_[std::string(queue)];
}

void Metrics::SetGaugeSource(std::function<std::vector<Gauge>()> source) {
  std::lock_guard<std::mutex> lock(mu_);
  gauges_ = std::move(source);
}

std::string Metrics::Render() const {
  std::function<std::vector<Gauge>()> source;
  {
    std::lock_guard<std::mutex> lock(mu_);
    source = gauges_;
  }
  // Gauges first and outside the lock: they may take the bank's locks.
  std::vector<Gauge> gauges = source ? source() : std::vector<Gauge>{};
  std::string out;
  std::string last_family;
  for (const Gauge& g : gauges) {
    const std::string family = g.name.substr(0, g.name.find('{'));
    if (family != last_family) {
      AppendFamily(family, "gauge", g.help, &out);
      last_family = family;
    }
    absl::StrAppend(&out, g.name, " ", Number(g.value), "\n");
  }

  std::lock_guard<std::mutex> lock(mu_);
  AppendFamily("knowd_rpc_total", "counter", "Finished RPCs by method and gRPC code.", &out);
  for (const auto& [key, n] : rpc_count_) {
    absl::StrAppend(&out, "knowd_rpc_total{method=\"", key.first, "\",code=\"", key.second, "\"} ",
                    n, "\n");
  }
  AppendFamily("knowd_rpc_duration_seconds", "histogram", "RPC latency by method.", &out);
  for (const auto& [method, h] : rpc_seconds_) {
    h.Render("knowd_rpc_duration_seconds", absl::StrCat("method=\"", method, "\""), &out);
  }
  AppendFamily("knowd_rejected_total", "counter", "Requests refused because a queue was full.",
               &out);
  for (const char* queue : {"ingest", "ask"}) {
    auto it = rejected_.find(queue);
    absl::StrAppend(&out, "knowd_rejected_total{queue=\"", queue, "\"} ",
                    it == rejected_.end() ? 0 : it->second, "\n");
  }
  const struct {
    const char* name;
    const char* help;
    const Histogram& histogram;
  } batches[] = {
      {"knowd_ingest_batch_documents", "Documents per ingest batch.", ingest_batch_documents_},
      {"knowd_ingest_batch_passages", "Passages per encoder pass.", ingest_batch_passages_},
      {"knowd_ask_batch_sequences", "Questions per engine forward pass.", ask_batch_sequences_},
  };
  for (const auto& b : batches) {
    AppendFamily(b.name, "histogram", b.help, &out);
    b.histogram.Render(b.name, "", &out);
  }
  const struct {
    const char* name;
    const char* type;
    const char* help;
    std::string value;
  } scalars[] = {
      {"knowd_encoder_tokens_total", "counter", "Passage tokens through the encoder.",
       absl::StrCat(encoder_tokens_)},
      {"knowd_encoder_seconds_total", "counter", "Time spent in encoder passes.",
       Number(encoder_seconds_)},
      {"knowd_encoder_tokens_per_second", "gauge", "Encoder throughput of the last pass.",
       Number(encoder_tokens_per_second_)},
      {"knowd_generated_tokens_total", "counter", "Answer tokens generated.",
       absl::StrCat(generated_tokens_)},
  };
  for (const auto& m : scalars) {
    AppendFamily(m.name, m.type, m.help, &out);
    absl::StrAppend(&out, m.name, " ", m.value, "\n");
  }
  return out;
}

}  // namespace knowd
