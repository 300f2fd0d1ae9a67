#include "knowledge/retrieve.h"

#include <algorithm>

#include "base/status_macros.h"

namespace knowd::knowledge {

const char* RetrievalName(Retrieval r) {
  switch (r) {
    case Retrieval::kLexical:
      return "lexical";
    case Retrieval::kDense:
      return "dense";
    case Retrieval::kHybrid:
      return "hybrid";
  }
  return "lexical";
}

std::optional<Retrieval> ParseRetrievalName(std::string_view name) {
  for (Retrieval r : {Retrieval::kLexical, Retrieval::kDense, Retrieval::kHybrid}) {
    if (name == RetrievalName(r)) return r;
  }
  return std::nullopt;
}

absl::StatusOr<std::vector<storage::SearchHit>> RetrievePassages(
    storage::MemoryBank& bank, std::string_view name_space, std::string_view query,
    const std::vector<float>* key, Retrieval retrieval, int k, const Fusion& fusion,
    storage::LexicalTerms* terms) {
  if (terms != nullptr) *terms = storage::LexicalTerms();
  if (k < 1) return absl::InvalidArgumentError("retrieval needs k >= 1");
  storage::SearchRequest request;
  request.name_space = std::string(name_space);
  request.k = k;
  request.with_text = true;
  if (retrieval != Retrieval::kLexical) {
    if (key == nullptr) {
      return absl::FailedPreconditionError(
          "dense and hybrid retrieval need an adapter; this daemon has none (use lexical)");
    }
    request.key = *key;
    if (retrieval == Retrieval::kHybrid) {
      request.hybrid = true;
      request.query_text = std::string(query);
      request.rrf_k = fusion.rrf_k;
      request.dense_weight = fusion.dense_weight;
      request.lexical_weight = fusion.lexical_weight;
      return bank.Search(request, terms);
    }
    if (terms == nullptr) return bank.Search(request);
    // Dense, with what the lexical index makes of the query: a hybrid search whose lexical
    // ranking weighs nothing keeps the dense order; the hits are dense ones.
    request.hybrid = true;
    request.query_text = std::string(query);
    request.lexical_weight = 0;
    request.candidates = k;
    KNOWD_ASSIGN_OR_RETURN(std::vector<storage::SearchHit> hits, bank.Search(request, terms));
    std::vector<storage::SearchHit> dense;
    for (storage::SearchHit& h : hits) {
      if (!h.dense_score.has_value()) continue;
      h.score = *h.dense_score;
      h.lexical_score.reset();
      dense.push_back(std::move(h));
    }
    return dense;
  }
  // BM25 alone: a hybrid search whose dense ranking weighs nothing runs no dense search (the key
  // is not read), so its hits are the lexical top k.
  request.key.assign(std::max(1, bank.key_dim()), 0.0f);
  request.hybrid = true;
  request.query_text = std::string(query);
  request.dense_weight = 0;
  request.candidates = k;
  KNOWD_ASSIGN_OR_RETURN(std::vector<storage::SearchHit> hits, bank.Search(request, terms));
  std::vector<storage::SearchHit> lexical;
  for (storage::SearchHit& h : hits) {
    if (!h.lexical_score.has_value()) continue;
    h.score = *h.lexical_score;
    lexical.push_back(std::move(h));
  }
  // Equal BM25 weights: the older passage first, whatever the dense ranking said.
  std::sort(lexical.begin(), lexical.end(), [](const auto& a, const auto& b) {
    return a.score != b.score ? a.score > b.score : a.passage_id < b.passage_id;
  });
  if (static_cast<int>(lexical.size()) > k) lexical.resize(k);
  return lexical;
}

}  // namespace knowd::knowledge
