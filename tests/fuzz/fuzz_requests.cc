// Request validation: each input is one RPC's request on the wire. Its first byte picks the RPC
// (low 3 bits, modulo 6) and, for Ingest, the passage size (the other 5 bits); the rest is parsed
// as that request message and put through daemon/request_checks.h, the checks the service runs
// before any work is queued. An Ingest request that passes is then cut into passages.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/time/time.h"
#include "daemon/request_checks.h"
#include "google/protobuf/stubs/logging.h"
#include "knowd/v1/knowd.pb.h"
#include "knowledge/document_rules.h"
#include "tests/fuzz/fuzz_util.h"

namespace {

// A fixed clock, so an input means the same in every run.
const absl::Time kNow = absl::FromUnixSeconds(1700000000);

// A stand-in tokenizer: one token per started 4 bytes of a piece, at least one per piece.
int CountTokens(std::string_view piece) { return static_cast<int>(piece.size() / 4 + 1); }

void SplitIngest(std::string_view text, const knowd::ServiceLimits& limits) {
  const std::vector<knowd::PassageSpan> spans = knowd::SplitPassages(
      text, limits.max_passage_tokens, limits.passage_overlap_tokens, CountTokens);
  // The passages' own texts are contiguous, cover the text, and each reads its context from
  // inside the text: anything else would store or encode bytes the client never sent.
  size_t next = 0;
  for (const knowd::PassageSpan& span : spans) {
    if (span.begin != next || span.end <= span.begin || span.end > text.size() ||
        span.context_begin > span.begin) {
      abort();
    }
    next = span.end;
  }
  if (!spans.empty() && next != text.size()) abort();
}

template <typename Request>
bool Parse(std::string_view wire, Request* request) {
  return request->ParseFromArray(wire.data(), static_cast<int>(wire.size()));
}

}  // namespace

// Protobuf logs every string field that is not UTF-8; most inputs have one.
extern "C" int LLVMFuzzerInitialize(int*, char***) {
  google::protobuf::SetLogHandler(nullptr);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const std::string_view wire = knowd::fuzz::AsText(data + 1, size - 1);
  knowd::ServiceLimits limits;
  std::string name_space;
  // Unknown until a request parses: bytes that are not a message of the RPC never reach a check.
  absl::Status status = absl::InvalidArgumentError("not parsed");
  switch ((data[0] & 7) % 6) {
    case 0: {
      knowd::v1::IngestRequest request;
      if (!Parse(wire, &request)) return 0;
      limits.max_passage_tokens = 1 + (data[0] >> 3);  // 1..32
      limits.passage_overlap_tokens = limits.max_passage_tokens / 2;
      status = knowd::CheckIngestRequest(request, limits, kNow, &name_space);
      if (status.ok()) SplitIngest(request.text(), limits);
      break;
    }
    case 1: {
      knowd::v1::AskRequest request;
      if (Parse(wire, &request)) status = knowd::CheckAskRequest(request, limits, &name_space);
      break;
    }
    case 2: {
      knowd::v1::SearchRequest request;
      if (Parse(wire, &request)) status = knowd::CheckSearchRequest(request, limits, &name_space);
      break;
    }
    case 3: {
      knowd::v1::GetRequest request;
      if (Parse(wire, &request)) status = knowd::CheckGetRequest(request, &name_space);
      break;
    }
    case 4: {
      knowd::v1::ForgetRequest request;
      if (Parse(wire, &request)) status = knowd::CheckForgetRequest(request, &name_space);
      break;
    }
    case 5: {
      knowd::v1::StatsRequest request;
      if (Parse(wire, &request)) status = knowd::CheckStatsRequest(request, &name_space);
      break;
    }
  }
  knowd::fuzz::Report("check", status);
  // A request that passes names a namespace the bank can key on.
  if (status.ok() && (data[0] & 7) % 6 != 5 && name_space.empty()) abort();
  return 0;
}
