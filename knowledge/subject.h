// What a retrieved passage's lexical match says about a question: whether the passage is on the
// question's subject, and how much of the question it covers. A question-answering heuristic
// over the lexical index's plain statistics (storage::LexicalTerms, SearchHit::matched_terms),
// tuned on questions about people by name; storage/ knows nothing of it.
#pragma once

#include <optional>
#include <span>
#include <vector>

#include "storage/memory_bank.h"

namespace knowd::knowledge {

struct LexicalMarks {
  // On what the best BM25 hit is about: the passage holds every one of the rarest query terms
  // that hit matches (function words aside; only capitalised words when the query has some;
  // those at most 4x as frequent as the rarest): the names a question asks about. True for the
  // best BM25 hit itself. Dense hits are marked by the same rule (their matched_terms), so a
  // fact's update or older version is found however the passage was retrieved; false when the
  // query names nothing a BM25 hit holds.
  bool same_subject = false;
  // How much of the query the passage covers, in [0, 1], however it was found: the sum of
  // idf² = log((N + 1) / (df + 0.5))² over the query terms it holds, divided by the same sum
  // over the query's terms. The terms are the query's exact words (capitalised words and
  // numbers: the names a question asks about) when it has some, else all its words; English
  // function words and lower-case words no passage holds (phrasing) are left out. Squared, so
  // that rare words weigh far more than common ones; an unknown name counts with df = 0, the
  // rarest. 1: it holds every term that counts; near 0: only common ones. How much of a question
  // the memory knows about, whatever the BM25 weight's scale. Read from the hit's own
  // matched_terms: a constant cost per hit, so a dense search need not rank the namespace by
  // BM25 to say whether the memory knows the question.
  std::optional<float> coverage;
};

// The marks of each of `hits` (one per hit, in order), from the search's `terms` (the hits'
// matched_terms must have been asked for with them: RetrievePassages with `terms`).
std::vector<LexicalMarks> MarkLexicalHits(std::span<const storage::SearchHit> hits,
                                          const storage::LexicalTerms& terms);

// The best coverage among `marks`; -1 when none carries one (no hits).
double BestCoverage(std::span<const LexicalMarks> marks);

}  // namespace knowd::knowledge
