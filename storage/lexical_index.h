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

namespace knowd::storage {

struct LexicalHit {
  uint64_t id;
  float weight;  // BM25
  // The hit matches every *subject term* of the top hit: of the query terms the top hit matches
  // (function words aside; only the capitalised ones when there are some), the rarest and those
  // at most 4x as frequent: the names a question asks about. True for the top hit itself.
  bool same_subject = false;
  // How much of the query the hit covers: the sum of idf² = log((N + 1) / (df + 0.5))² over the
  // query terms it holds, divided by the same sum over the query's terms. The terms are the
  // query's exact words (capitalised words and numbers, which the parser leaves unstemmed: the
  // names a question asks about) when it has some, else all its words; English function words
  // and lower-case words no passage holds (phrasing) are left out. Squared, so that rare words
  // weigh far more than common ones; an unknown name counts with df = 0, the rarest. 1: it holds
  // every term that counts; near 0: only common ones.
  float coverage = 0.0f;
};

class LexicalIndex {
 public:
  static absl::StatusOr<std::unique_ptr<LexicalIndex>> Create();
  ~LexicalIndex();

  absl::Status Add(uint64_t id, std::string_view text);
  absl::Status Remove(std::span<const uint64_t> ids);
  // Top `k` passages for a free-text query (terms OR-ed, stemmed). Empty when nothing matches.
  absl::StatusOr<std::vector<LexicalHit>> Search(std::string_view query, int k);
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
