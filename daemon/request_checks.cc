#include "daemon/request_checks.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "knowledge/document_rules.h"

namespace knowd {
namespace {

absl::Status CheckMetadata(const google::protobuf::Map<std::string, std::string>& metadata,
                           const ServiceLimits& limits) {
  if (static_cast<int64_t>(metadata.size()) > limits.max_metadata_entries) {
    return absl::InvalidArgumentError(absl::StrCat(
        "metadata has ", metadata.size(), " keys; the limit is ", limits.max_metadata_entries));
  }
  int64_t bytes = 0;
  for (const auto& [key, value] : metadata) {
    KNOWD_RETURN_IF_ERROR(CheckMetadataKey(key));
    if (!IsValidUtf8(value)) {
      return absl::InvalidArgumentError(
          absl::StrCat("metadata value of \"", key, "\" is not valid UTF-8"));
    }
    bytes += static_cast<int64_t>(key.size() + value.size());
  }
  if (bytes > limits.max_metadata_bytes) {
    return absl::InvalidArgumentError(absl::StrCat("metadata has ", bytes,
                                                   " bytes of keys and values; the limit is ",
                                                   limits.max_metadata_bytes));
  }
  return absl::OkStatus();
}

absl::Status CheckTopK(int top_k) {
  if (top_k < 0 || top_k > kMaxTopK) {
    return absl::InvalidArgumentError(absl::StrCat("top_k must be 0..", kMaxTopK));
  }
  return absl::OkStatus();
}

absl::Status CheckRetrieval(int retrieval) {
  if (!v1::Retrieval_IsValid(retrieval)) {
    return absl::InvalidArgumentError(absl::StrCat("unknown retrieval ", retrieval));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status CheckIngestRequest(const v1::IngestRequest& request, const ServiceLimits& limits,
                                absl::Time now, std::string* name_space) {
  KNOWD_RETURN_IF_ERROR(ResolveNamespace(request.namespace_(), name_space));
  KNOWD_RETURN_IF_ERROR(CheckDocumentId(request.id()));
  KNOWD_RETURN_IF_ERROR(CheckText("text", request.text(), limits.max_document_bytes));
  KNOWD_RETURN_IF_ERROR(CheckMetadata(request.metadata(), limits));
  if (request.valid_from_unix() < 0) {
    return absl::InvalidArgumentError("valid_from_unix must not be negative");
  }
  const int64_t latest = absl::ToUnixSeconds(now) + limits.max_future_seconds;
  if (request.valid_from_unix() > latest) {
    return absl::InvalidArgumentError(absl::StrCat(
        "valid_from_unix ", request.valid_from_unix(), " lies more than ",
        limits.max_future_seconds, " s past the daemon's clock (", absl::ToUnixSeconds(now),
        "); a future date would win every later fact (--max-future-seconds)"));
  }
  return absl::OkStatus();
}

absl::Status CheckAskRequest(const v1::AskRequest& request, const ServiceLimits& limits,
                             std::string* name_space) {
  KNOWD_RETURN_IF_ERROR(ResolveNamespace(request.namespace_(), name_space));
  KNOWD_RETURN_IF_ERROR(CheckText("question", request.question(), limits.max_question_bytes));
  if (!v1::AskMode_IsValid(request.mode())) {
    return absl::InvalidArgumentError(absl::StrCat("unknown mode ", request.mode()));
  }
  KNOWD_RETURN_IF_ERROR(CheckRetrieval(request.retrieval()));
  KNOWD_RETURN_IF_ERROR(CheckTopK(request.top_k()));
  if (request.rag_passages() < 0 || request.rag_passages() > kMaxRagPassages) {
    return absl::InvalidArgumentError(absl::StrCat("rag_passages must be 0..", kMaxRagPassages));
  }
  if (request.max_tokens() < 0 || request.max_tokens() > kMaxAnswerTokens) {
    return absl::InvalidArgumentError(absl::StrCat("max_tokens must be 0..", kMaxAnswerTokens));
  }
  // NaN fails both comparisons; infinity fails the bound.
  if (!(request.temperature() >= 0 && request.temperature() <= kMaxTemperature)) {
    return absl::InvalidArgumentError(
        absl::StrCat("temperature must be a number in [0, ", kMaxTemperature, "]"));
  }
  if (!(request.top_p() >= 0 && request.top_p() <= 1)) {
    return absl::InvalidArgumentError("top_p must be a number in [0, 1]");
  }
  return absl::OkStatus();
}

absl::Status CheckSearchRequest(const v1::SearchRequest& request, const ServiceLimits& limits,
                                std::string* name_space) {
  KNOWD_RETURN_IF_ERROR(ResolveNamespace(request.namespace_(), name_space));
  KNOWD_RETURN_IF_ERROR(CheckText("query", request.query(), limits.max_question_bytes));
  KNOWD_RETURN_IF_ERROR(CheckTopK(request.top_k()));
  return CheckRetrieval(request.retrieval());
}

absl::Status CheckGetRequest(const v1::GetRequest& request, std::string* name_space) {
  KNOWD_RETURN_IF_ERROR(ResolveNamespace(request.namespace_(), name_space));
  return CheckDocumentId(request.id());
}

absl::Status CheckForgetRequest(const v1::ForgetRequest& request, std::string* name_space) {
  KNOWD_RETURN_IF_ERROR(ResolveNamespace(request.namespace_(), name_space));
  if (request.ids().empty()) return absl::InvalidArgumentError("ids is empty");
  for (const std::string& id : request.ids()) {
    KNOWD_RETURN_IF_ERROR(CheckDocumentId(id));
  }
  return absl::OkStatus();
}

absl::Status CheckStatsRequest(const v1::StatsRequest& request, std::string* name_space) {
  name_space->clear();
  if (request.namespace_().empty()) return absl::OkStatus();
  return ResolveNamespace(request.namespace_(), name_space);
}

}  // namespace knowd
