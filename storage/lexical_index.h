// One namespace's lexical index (private to storage/): BM25 over passage text with Xapian's
// in-memory backend. Each passage is a Xapian document whose unique term is "Q<pid>" and whose
// data is the pid, so Xapian's own 32-bit docids never leak out. English stemming.
//
// Xapian database objects are not thread-safe, so every method takes the index's own mutex.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "storage/memory_bank.h"

namespace knowd::storage {

struct LexicalHit {
  uint64_t id;
  float weight;                      // BM25
  std::vector<std::string> matched;  // the query terms it holds, sorted
};

class LexicalIndex {
 public:
  static absl::StatusOr<std::unique_ptr<LexicalIndex>> Create();
  ~LexicalIndex();

  absl::Status Add(uint64_t id, std::string_view text);
  absl::Status Remove(std::span<const uint64_t> ids);
  // Top `k` passages for a free-text query (terms OR-ed, stemmed). Empty when nothing matches.
  // With `terms`, also the query's terms and their frequencies (memory_bank.h).
  absl::StatusOr<std::vector<LexicalHit>> Search(std::string_view query, int k,
                                                 LexicalTerms* terms = nullptr);
  // What Search() reports in `terms` without ranking anything (best_match empty): the parse and
  // one frequency look-up per query term, whatever the index's size.
  absl::StatusOr<LexicalTerms> Describe(std::string_view query);
  // For each of `ids`, the terms of `query` its passage holds, sorted (empty for an id the index
  // does not hold): what Search() reports as LexicalHit::matched, for passages it did not return.
  absl::StatusOr<std::vector<std::vector<std::string>>> MatchedTerms(
      std::span<const uint64_t> ids, std::span<const QueryTerm> query);
  absl::StatusOr<std::vector<uint64_t>> Ids();  // sorted
  uint64_t size();
  // Xapian's in-memory backend keeps what a removed document took (about 3.6 KB per add and
  // remove of a short passage, measured): true once removals outnumber the live passages (and
  // 4,096), when the owner should build the index afresh from the source of truth.
  bool NeedsRebuild();

 private:
  struct State;
  explicit LexicalIndex(std::unique_ptr<State> state);

  std::mutex mu_;
  std::unique_ptr<State> state_;
};

}  // namespace knowd::storage
