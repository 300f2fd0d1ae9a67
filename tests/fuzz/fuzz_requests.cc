// Request validation: each input is one RPC's request on the wire. Its first byte picks the RPC
// (low 3 bits, modulo 6) and, for Ingest, the passage size (the other 5 bits); the rest is parsed
// as that request message and put through the checks the service runs before touching the model
// or the bank.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "daemon/document_rules.h"
#include "knowd/v1/knowd.pb.h"
#include "tests/fuzz/fuzz_util.h"

namespace {

// The service's limits with its defaults (ServeConfig).
constexpr int64_t kMaxDocumentBytes = 1 << 20;
constexpr int64_t kMaxQuestionBytes = 4096;

// A stand-in tokenizer: one token per started 4 bytes of a piece, at least one per piece.
int CountTokens(std::string_view piece) { return static_cast<int>(piece.size() / 4 + 1); }

void CheckIngest(const knowd::v1::IngestRequest& request, int max_tokens, int overlap_tokens) {
  std::string name_space;
  if (!knowd::ResolveNamespace(request.namespace_(), &name_space).ok()) return;
  if (!knowd::CheckDocumentId(request.id()).ok()) return;
  if (!knowd::CheckText("text", request.text(), kMaxDocumentBytes).ok()) return;
  const std::string_view text = request.text();
  const std::vector<knowd::PassageSpan> spans =
      knowd::SplitPassages(text, max_tokens, overlap_tokens, CountTokens);
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

void CheckAsk(const knowd::v1::AskRequest& request) {
  std::string name_space;
  if (!knowd::ResolveNamespace(request.namespace_(), &name_space).ok()) return;
  (void)knowd::CheckText("question", request.question(), kMaxQuestionBytes);
}

void CheckSearch(const knowd::v1::SearchRequest& request) {
  std::string name_space;
  if (!knowd::ResolveNamespace(request.namespace_(), &name_space).ok()) return;
  (void)knowd::CheckText("query", request.query(), kMaxQuestionBytes);
}

void CheckGet(const knowd::v1::GetRequest& request) {
  std::string name_space;
  if (!knowd::ResolveNamespace(request.namespace_(), &name_space).ok()) return;
  (void)knowd::CheckDocumentId(request.id());
}

void CheckForget(const knowd::v1::ForgetRequest& request) {
  std::string name_space;
  if (!knowd::ResolveNamespace(request.namespace_(), &name_space).ok()) return;
  for (const std::string& id : request.ids()) {
    if (!knowd::CheckDocumentId(id).ok()) return;
  }
}

void CheckStats(const knowd::v1::StatsRequest& request) {
  std::string name_space;
  if (!request.namespace_().empty())
    (void)knowd::ResolveNamespace(request.namespace_(), &name_space);
}

template <typename Request>
bool Parse(std::string_view wire, Request* request) {
  return request->ParseFromArray(wire.data(), static_cast<int>(wire.size()));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const std::string_view wire = knowd::fuzz::AsText(data + 1, size - 1);
  switch ((data[0] & 7) % 6) {
    case 0: {
      knowd::v1::IngestRequest request;
      const int max_tokens = 1 + (data[0] >> 3);  // 1..32
      if (Parse(wire, &request)) CheckIngest(request, max_tokens, max_tokens / 2);
      break;
    }
    case 1: {
      knowd::v1::AskRequest request;
      if (Parse(wire, &request)) CheckAsk(request);
      break;
    }
    case 2: {
      knowd::v1::SearchRequest request;
      if (Parse(wire, &request)) CheckSearch(request);
      break;
    }
    case 3: {
      knowd::v1::GetRequest request;
      if (Parse(wire, &request)) CheckGet(request);
      break;
    }
    case 4: {
      knowd::v1::ForgetRequest request;
      if (Parse(wire, &request)) CheckForget(request);
      break;
    }
    case 5: {
      knowd::v1::StatsRequest request;
      if (Parse(wire, &request)) CheckStats(request);
      break;
    }
  }
  return 0;
}
