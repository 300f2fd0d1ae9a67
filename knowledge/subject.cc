#include "knowledge/subject.h"

#include <algorithm>
#include <cmath>
#include <iterator>
#include <map>
#include <set>
#include <string>
#include <string_view>

namespace knowd::knowledge {
namespace {

// The query terms a function word (storage::FunctionWords()) can become: never a subject, however
// rare a small bank makes them. The lexical index searches them only in a query of nothing else.
const std::set<std::string>& FunctionWordTerms() {
  static const std::set<std::string>* const terms = [] {
    auto* out = new std::set<std::string>;
    for (std::string_view word : storage::FunctionWords()) {
      for (std::string& term : storage::QueryTermsOfWord(word)) out->insert(std::move(term));
    }
    return out;
  }();
  return *terms;
}

// The terms that say what a query is about, as the best BM25 hit answers it (sorted). Of the
// query terms that hit matches, function words aside: all the names, when the query has some
// (exact words: written with a capital; a person is their whole name, so "Ithhul Voqua" is not
// "Voqua Wynlem" though Ithhul is also a common city), else the rarest terms and the ones at most
// 4x as frequent. A question's names are rare and its other words common, so passages that hold
// them are about the same person or thing: an update to a fact, or the fact's older version.
std::vector<std::string> SubjectTerms(const storage::LexicalTerms& terms) {
  const std::set<std::string>& function_words = FunctionWordTerms();
  std::vector<const storage::QueryTerm*> matched;
  bool has_names = false;
  for (const storage::QueryTerm& t : terms.best_match) {
    if (function_words.contains(t.term)) continue;
    matched.push_back(&t);
    has_names |= t.exact;
  }
  std::vector<std::string> subject;
  if (has_names) {
    for (const storage::QueryTerm* t : matched) {
      if (t->exact) subject.push_back(t->term);
    }
  } else {
    uint64_t rarest = 0;
    std::vector<uint64_t> frequency;
    for (const storage::QueryTerm* t : matched) {
      frequency.push_back(std::max<uint64_t>(1, t->passages));
      rarest = rarest == 0 ? frequency.back() : std::min(rarest, frequency.back());
    }
    for (size_t i = 0; i < matched.size(); ++i) {
      if (frequency[i] <= 4 * rarest) subject.push_back(matched[i]->term);
    }
  }
  std::sort(subject.begin(), subject.end());
  return subject;
}

}  // namespace

std::vector<LexicalMarks> MarkLexicalHits(std::span<const storage::SearchHit> hits,
                                          const storage::LexicalTerms& terms) {
  const std::set<std::string>& function_words = FunctionWordTerms();
  const std::vector<std::string> subject = SubjectTerms(terms);
  // Coverage weighs the query's exact words (names, years) when it has some, else all its
  // words: what a query is about is named by its names, however rare its phrasing is in a small
  // bank.
  const double docs = static_cast<double>(terms.passages);
  std::map<std::string, double> idf;
  bool has_exact = false;
  for (const storage::QueryTerm& t : terms.query) {
    has_exact |= !function_words.contains(t.term) && t.exact;
  }
  double total_idf = 0;
  for (const storage::QueryTerm& t : terms.query) {
    if (function_words.contains(t.term)) continue;
    if (has_exact && !t.exact) continue;
    // A lower-case word no passage holds is the question's phrasing, not what it is about: no
    // evidence either way. An unknown capitalised word (a name) counts in full.
    if (t.passages == 0 && !t.exact) continue;
    const double value =
        std::pow(std::log((docs + 1) / (static_cast<double>(t.passages) + 0.5)), 2);
    idf.emplace(t.term, value);
    total_idf += value;
  }
  std::vector<LexicalMarks> marks(hits.size());
  for (size_t i = 0; i < hits.size(); ++i) {
    const storage::SearchHit& hit = hits[i];
    // A dense hit is on no subject when the query has none; a lexical one holds an empty subject.
    const bool holds_subject = std::includes(hit.matched_terms.begin(), hit.matched_terms.end(),
                                             subject.begin(), subject.end());
    marks[i].same_subject = holds_subject && (hit.lexical_score.has_value() || !subject.empty());
    double matched_idf = 0;
    for (const std::string& term : hit.matched_terms) {  // sorted
      auto found = idf.find(term);
      if (found != idf.end()) matched_idf += found->second;
    }
    marks[i].coverage = total_idf > 0 ? static_cast<float>(matched_idf / total_idf) : 0.0f;
  }
  return marks;
}

double BestCoverage(std::span<const LexicalMarks> marks) {
  double best = -1;
  for (const LexicalMarks& m : marks) {
    if (m.coverage.has_value()) best = std::max(best, double{*m.coverage});
  }
  return best;
}

}  // namespace knowd::knowledge
