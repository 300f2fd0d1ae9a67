#include "daemon/metrics.h"

#include <string>

#include "daemon/http_server.h"
#include "daemon/server_service.h"
#include "gtest/gtest.h"

namespace knowd {
namespace {

bool Has(const std::string& text, const std::string& line) {
  return text.find(line + "\n") != std::string::npos;
}

TEST(Metrics, RpcCountsAndCumulativeLatencyBuckets) {
  Metrics m;
  m.CountRpc("Ask", "OK", 0.004);
  m.CountRpc("Ask", "OK", 0.2);
  m.CountRpc("Ask", "RESOURCE_EXHAUSTED", 0.0001);
  const std::string text = m.Render();
  for (const char* line : {
           "knowd_rpc_total{method=\"Ask\",code=\"OK\"} 2",
           "knowd_rpc_total{method=\"Ask\",code=\"RESOURCE_EXHAUSTED\"} 1",
           "knowd_rpc_duration_seconds_bucket{method=\"Ask\",le=\"0.001\"} 1",
           "knowd_rpc_duration_seconds_bucket{method=\"Ask\",le=\"0.005\"} 2",
           "knowd_rpc_duration_seconds_bucket{method=\"Ask\",le=\"0.25\"} 3",
           "knowd_rpc_duration_seconds_bucket{method=\"Ask\",le=\"+Inf\"} 3",
           "knowd_rpc_duration_seconds_count{method=\"Ask\"} 3",
           "# TYPE knowd_rpc_duration_seconds histogram",
       }) {
    EXPECT_TRUE(Has(text, line)) << line;
  }
}

TEST(Metrics, BatchesEncoderAndGauges) {
  Metrics m;
  m.ObserveIngestBatch(3, 5, 400, 0.1);
  m.ObserveAskBatch(8);
  m.AddGeneratedTokens(12);
  m.CountRejected("ask");
  m.SetGaugeSource([] {
    return std::vector<Gauge>{{"knowd_queue_depth{queue=\"ask\"}", "Requests waiting", 2},
                              {"knowd_queue_depth{queue=\"ingest\"}", "", 0}};
  });
  const std::string text = m.Render();
  for (const char* line : {
           "knowd_ingest_batch_documents_bucket{le=\"4\"} 1",
           "knowd_ingest_batch_documents_bucket{le=\"2\"} 0",
           "knowd_ingest_batch_passages_sum 5",
           "knowd_ask_batch_sequences_bucket{le=\"8\"} 1",
           "knowd_encoder_tokens_total 400",
           "knowd_encoder_tokens_per_second 4000",
           "knowd_generated_tokens_total 12",
           "knowd_rejected_total{queue=\"ask\"} 1",
           "knowd_rejected_total{queue=\"ingest\"} 0",
           "knowd_queue_depth{queue=\"ask\"} 2",
       }) {
    EXPECT_TRUE(Has(text, line)) << line;
  }
  // One HELP/TYPE header per family.
  EXPECT_EQ(text.find("# TYPE knowd_queue_depth gauge"),
            text.rfind("# TYPE knowd_queue_depth gauge"));
}

TEST(SplitHostPort, Addresses) {
  std::string host;
  int port = -1;
  ASSERT_TRUE(SplitHostPort("127.0.0.1:7071", &host, &port).ok());
  EXPECT_EQ(host, "127.0.0.1");
  EXPECT_EQ(port, 7071);
  ASSERT_TRUE(SplitHostPort("[::1]:0", &host, &port).ok());
  EXPECT_EQ(host, "::1");
  EXPECT_EQ(port, 0);
  EXPECT_FALSE(SplitHostPort("localhost", &host, &port).ok());
  EXPECT_FALSE(SplitHostPort("host:99999", &host, &port).ok());
  EXPECT_FALSE(SplitHostPort(":80", &host, &port).ok());
}

TEST(ToGrpcStatus, KeepsCodeAndMessage) {
  EXPECT_TRUE(ToGrpcStatus(absl::OkStatus()).ok());
  const grpc::Status s = ToGrpcStatus(absl::ResourceExhaustedError("the ask queue is full"));
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_EQ(s.error_message(), "the ask queue is full");
  EXPECT_EQ(ToGrpcStatus(absl::UnauthenticatedError("x")).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(ToGrpcStatus(absl::PermissionDeniedError("x")).error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(ToGrpcStatus(absl::DeadlineExceededError("x")).error_code(),
            grpc::StatusCode::DEADLINE_EXCEEDED);
}

}  // namespace
}  // namespace knowd
