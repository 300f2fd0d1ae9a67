// What the daemon accepts in each RPC's request, checked before any work is queued. The one place
// these rules live: the gRPC service calls them, and so does anything else that takes requests.
// Pure functions of the request, the limits and the clock: no model, no bank; safe from any
// thread. Every refusal is INVALID_ARGUMENT naming the field and the rule.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "knowd/v1/knowd.pb.h"

namespace knowd {

// Bounds a request must keep (the daemon's configuration, daemon/serve_config.h).
struct ServiceLimits {
  int64_t max_document_bytes = 1 << 20;
  int64_t max_question_bytes = 4096;
  int64_t max_metadata_bytes = 64 << 10;  // keys and values together
  int max_metadata_entries = 256;
  int64_t max_future_seconds = 24 * 3600;  // valid_from_unix past the daemon's clock, at most
  int64_t max_response_bytes = 4 << 20;    // the largest response the daemon builds
  int max_passage_tokens = 256;
  int passage_overlap_tokens = 32;
  int max_position_embeddings = 1024;    // the encoder's input is cut to this
  int ingest_in_flight_per_stream = 64;  // documents a stream may have awaiting acks
};

inline constexpr int kMaxTopK = 256;
inline constexpr int kMaxRagPassages = 32;
inline constexpr int kMaxAnswerTokens = 1024;
inline constexpr float kMaxTemperature = 100;
inline constexpr int kMaxMetadataKeyBytes = 256;

// Each check resolves the request's namespace ("" is "default") into *name_space.
absl::Status CheckIngestRequest(const v1::IngestRequest& request, const ServiceLimits& limits,
                                absl::Time now, std::string* name_space);
absl::Status CheckAskRequest(const v1::AskRequest& request, const ServiceLimits& limits,
                             std::string* name_space);
absl::Status CheckSearchRequest(const v1::SearchRequest& request, const ServiceLimits& limits,
                                std::string* name_space);
absl::Status CheckGetRequest(const v1::GetRequest& request, std::string* name_space);
absl::Status CheckForgetRequest(const v1::ForgetRequest& request, std::string* name_space);
// An empty namespace here means "every namespace the caller may read": *name_space stays "".
absl::Status CheckStatsRequest(const v1::StatsRequest& request, std::string* name_space);

}  // namespace knowd
