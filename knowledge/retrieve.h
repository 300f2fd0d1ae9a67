// Retrieval over the memory bank, shared by Ask, Search and the evaluation.
#pragma once

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

// The top `k` passages of `name_space` for `query`, best first, with their text. `key` (the
// question's dense key) is needed for dense and hybrid retrieval; lexical retrieval is BM25 alone
// and ignores it. With `terms` (lexical and hybrid retrieval), also what the lexical index made
// of the query, and lexical hits carry their matched_terms: subject.h marks them.
absl::StatusOr<std::vector<storage::SearchHit>> RetrievePassages(
    storage::MemoryBank& bank, std::string_view name_space, std::string_view query,
    const std::vector<float>* key, Retrieval retrieval, int k,
    storage::LexicalTerms* terms = nullptr);

}  // namespace knowd::knowledge
