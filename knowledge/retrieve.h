// Retrieval over the memory bank, shared by Ask, Search and the evaluation.
#pragma once

#include <optional>
#include <span>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "storage/memory_bank.h"

namespace knowd::knowledge {

enum class Retrieval {
  kLexical,  // BM25 over the passages' text
  kDense,    // the adapter's keys (FAISS)
  kHybrid,   // both, fused by reciprocal rank
};

// "lexical", "dense", "hybrid".
const char* RetrievalName(Retrieval r);
// The inverse of RetrievalName; nullopt for anything else.
std::optional<Retrieval> ParseRetrievalName(std::string_view name);

// How hybrid retrieval weighs its two rankings: storage::SearchRequest's weighted reciprocal
// rank fusion. A bundle's own is chosen on its valid split by `knowd eval
// --calibrate-retrieval` and recorded in knowledge.json (bundle.h).
struct Fusion {
  int rrf_k = 60;
  float dense_weight = 1.0f;
  float lexical_weight = 1.0f;
};

// The top `k` passages of `name_space` for `query`, best first, with their text. `key` (the
// question's dense key) is needed for dense and hybrid retrieval; lexical retrieval is BM25 alone
// and ignores it; hybrid fuses the two by `fusion`. With `terms`, also what the lexical index
// made of the query, and every hit carries its matched_terms (the query terms it holds, however
// it was found): subject.h marks them. Only lexical and hybrid hits carry a lexical_score.
absl::StatusOr<std::vector<storage::SearchHit>> RetrievePassages(
    storage::MemoryBank& bank, std::string_view name_space, std::string_view query,
    const std::vector<float>* key, Retrieval retrieval, int k, const Fusion& fusion = {},
    storage::LexicalTerms* terms = nullptr);

}  // namespace knowd::knowledge
