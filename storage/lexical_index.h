// One namespace's lexical index (private to storage/): BM25 over passage text in an on-disk
// Xapian glass database of its own directory. Each passage is a Xapian document whose unique term
// is "Q<pid>" and whose data is the pid, so Xapian's own 32-bit docids never leak out. English
// stemming; a query's function words (FunctionWords()) are not searched for, and BM25 does not
// normalise by passage length (lexical_index.cc, Bm25()).
//
// Searches see every Add() and Remove() at once, committed or not. Commit() makes the database
// durable and records the RocksDB sequence number it reflects (metadata "knowd-seqno"); Load()
// opens a database only when that number and the passage count are the ones asked for.
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
  // An empty index in `dir`, replacing whatever the directory held.
  static absl::StatusOr<std::unique_ptr<LexicalIndex>> Create(const std::string& dir);
  // The index committed in `dir` if it reflects exactly RocksDB sequence number `seqno` and holds
  // `passages` passages; otherwise an error saying why (the caller rebuilds). Until the next
  // Commit(), any commit Xapian makes on its own records no sequence number.
  static absl::StatusOr<std::unique_ptr<LexicalIndex>> Load(const std::string& dir, uint64_t seqno,
                                                            uint64_t passages);
  // Closes the database; changes not yet committed are committed without a sequence number.
  ~LexicalIndex();

  // Commits every change, recording that the index reflects RocksDB sequence number `seqno`.
  // For the bank's Close() only: a commit Xapian made on its own after it (on a later change)
  // would carry the same number.
  absl::Status Commit(uint64_t seqno);
  // Closes the database, moves its directory to `dir` (replacing what was there) and reopens it.
  absl::Status MoveTo(const std::string& dir);

  absl::Status Add(uint64_t id, std::string_view text);
  absl::Status Remove(std::span<const uint64_t> ids);
  // Top `k` passages for a free-text query (terms OR-ed, stemmed). Empty when nothing matches.
  // With `terms`, also the query's terms and their frequencies (memory_bank.h).
  absl::StatusOr<std::vector<LexicalHit>> Search(std::string_view query, int k,
                                                 LexicalTerms* terms = nullptr);
  // What Search() reports in `terms` without ranking anything (best_match empty): the parse and
  // one frequency look-up per query term, whatever the index's size.
  absl::StatusOr<LexicalTerms> Describe(std::string_view query);
  // The terms of `query` a passage of text `text` holds, sorted: what Search() reports as
  // LexicalHit::matched, for a passage it did not return. Computed from the text, the way Add()
  // indexes it, so its cost does not grow with the namespace.
  static std::vector<std::string> TermsHeld(std::string_view text,
                                            std::span<const QueryTerm> query);
  absl::StatusOr<std::vector<uint64_t>> Ids();  // sorted
  uint64_t size();

 private:
  struct State;
  explicit LexicalIndex(std::unique_ptr<State> state);

  std::mutex mu_;
  std::unique_ptr<State> state_;
};

}  // namespace knowd::storage
