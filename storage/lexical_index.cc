#include "storage/lexical_index.h"

#include <xapian.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <iterator>
#include <map>
#include <set>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "storage/records.h"

namespace knowd::storage {
namespace {

std::string UniqueTerm(uint64_t id) { return absl::StrCat("Q", id); }

absl::Status XapianError(std::string_view what, const Xapian::Error& e) {
  return absl::InternalError(
      absl::StrCat("Xapian ", AbslView(what), " failed: ", e.get_description()));
}

// "Sasen's" -> "Sasen": Xapian keeps an apostrophe inside a word, so a possessive would be a term
// of its own that the name's other mentions do not share. Applied to passages and queries alike.
std::string WithoutPossessives(std::string_view text) {
  auto alnum = [](char c) { return std::isalnum(static_cast<unsigned char>(c)) != 0; };
  std::string out;
  out.reserve(text.size());
  size_t i = 0;
  while (i < text.size()) {
    const size_t quote = text.substr(i, 3) == "\xE2\x80\x99" ? 3 : text[i] == '\'' ? 1 : 0;
    const size_t s = i + quote;
    if (quote > 0 && i > 0 && alnum(text[i - 1]) && s < text.size() &&
        (text[s] == 's' || text[s] == 'S') && (s + 1 == text.size() || !alnum(text[s + 1]))) {
      i = s + 1;
      continue;
    }
    out.push_back(text[i++]);
  }
  return out;
}

// English function words: never a subject, however rare a small index makes them.
constexpr std::string_view kFunctionWords[] = {
    "a",    "about", "after", "an",    "and",  "are",  "as",   "at",   "be",   "by",
    "did",  "do",    "does",  "for",   "from", "had",  "has",  "have", "he",   "her",
    "his",  "how",   "i",     "in",    "is",   "it",   "its",  "of",   "on",   "or",
    "she",  "that",  "the",   "their", "they", "this", "to",   "was",  "were", "what",
    "when", "where", "which", "who",   "whom", "why",  "will", "with", "you",  "your"};

// The query terms a function word can become: itself and, stemmed, "Z" + its stem.
std::set<std::string> FunctionWordTerms(const Xapian::Stem& stemmer) {
  std::set<std::string> terms;
  for (std::string_view word : kFunctionWords) {
    terms.emplace(word);
    terms.insert(absl::StrCat("Z", stemmer(std::string(word))));
  }
  return terms;
}

// The terms that say what a query is about, as the top hit answers it (sorted). Of the query
// terms the top hit matches, function words aside: all the names, when the query has some (words
// written with a capital, which the parser leaves unstemmed; a person is their whole name, so
// "Ithhul Voqua" is not "Voqua Wynlem" though Ithhul is also a common city), else the rarest
// terms and the ones at most 4x as frequent. A question's names are rare and its other words
// common, so passages that hold them are about the same person or thing: an update to a fact, or
// the fact's older version.
std::vector<std::string> SubjectTerms(const Xapian::Database& db, const Xapian::Enquire& enquire,
                                      const Xapian::MSet& mset,
                                      const std::set<std::string>& function_words) {
  std::vector<std::string> subject;
  if (mset.empty()) return subject;
  std::vector<std::string> matched;
  bool has_names = false;
  for (auto t = enquire.get_matching_terms_begin(mset.begin());
       t != enquire.get_matching_terms_end(mset.begin()); ++t) {
    if (function_words.contains(*t)) continue;
    matched.push_back(*t);
    has_names |= !(*t).starts_with('Z');
  }
  if (has_names) {
    std::copy_if(matched.begin(), matched.end(), std::back_inserter(subject),
                 [](const std::string& term) { return !term.starts_with('Z'); });
  } else {
    Xapian::doccount rarest = 0;
    std::vector<Xapian::doccount> frequency;
    for (const std::string& term : matched) {
      frequency.push_back(std::max<Xapian::doccount>(1, db.get_termfreq(term)));
      rarest = rarest == 0 ? frequency.back() : std::min(rarest, frequency.back());
    }
    for (size_t i = 0; i < matched.size(); ++i) {
      if (frequency[i] <= 4 * rarest) subject.push_back(matched[i]);
    }
  }
  std::sort(subject.begin(), subject.end());
  return subject;
}

}  // namespace

struct LexicalIndex::State {
  Xapian::WritableDatabase db;
  Xapian::TermGenerator indexer;
  Xapian::QueryParser parser;
  Xapian::Stem stemmer{"english"};
  std::set<std::string> function_words = FunctionWordTerms(stemmer);
  uint64_t removed = 0;  // documents removed since Create()
};

LexicalIndex::LexicalIndex(std::unique_ptr<State> state) : state_(std::move(state)) {}
LexicalIndex::~LexicalIndex() = default;

absl::StatusOr<std::unique_ptr<LexicalIndex>> LexicalIndex::Create() {
  try {
    auto state = std::make_unique<State>();
    state->db = Xapian::WritableDatabase(std::string(), Xapian::DB_BACKEND_INMEMORY);
    state->indexer.set_stemmer(state->stemmer);
    state->indexer.set_stemming_strategy(Xapian::TermGenerator::STEM_SOME);
    state->parser.set_stemmer(state->stemmer);
    state->parser.set_stemming_strategy(Xapian::QueryParser::STEM_SOME);
    state->parser.set_default_op(Xapian::Query::OP_OR);
    state->parser.set_database(state->db);
    return std::unique_ptr<LexicalIndex>(new LexicalIndex(std::move(state)));
  } catch (const Xapian::Error& e) {
    return XapianError("in-memory database creation", e);
  }
}

absl::Status LexicalIndex::Add(uint64_t id, std::string_view text) {
  std::lock_guard lock(mu_);
  try {
    Xapian::Document doc;
    state_->indexer.set_document(doc);
    state_->indexer.index_text(WithoutPossessives(text));
    const std::string term = UniqueTerm(id);
    doc.add_boolean_term(term);
    doc.set_data(std::to_string(id));
    state_->db.replace_document(term, doc);
  } catch (const Xapian::Error& e) {
    return XapianError("add", e);
  }
  return absl::OkStatus();
}

absl::Status LexicalIndex::Remove(std::span<const uint64_t> ids) {
  std::lock_guard lock(mu_);
  try {
    for (uint64_t id : ids) state_->db.delete_document(UniqueTerm(id));
    state_->removed += ids.size();
  } catch (const Xapian::Error& e) {
    return XapianError("delete", e);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<LexicalHit>> LexicalIndex::Search(std::string_view query, int k) {
  std::lock_guard lock(mu_);
  std::vector<LexicalHit> hits;
  try {
    // FLAG_DEFAULT minus boolean operators: user text is words, not a query language, and a
    // stray "AND" or quote must not turn into a syntax error.
    Xapian::Query q = state_->parser.parse_query(
        WithoutPossessives(query),
        Xapian::QueryParser::FLAG_PHRASE | Xapian::QueryParser::FLAG_LOVEHATE);
    Xapian::Enquire enquire(state_->db);
    enquire.set_query(q);
    enquire.set_weighting_scheme(Xapian::BM25Weight());
    Xapian::MSet mset = enquire.get_mset(0, static_cast<Xapian::doccount>(k));
    const std::vector<std::string> subject =
        SubjectTerms(state_->db, enquire, mset, state_->function_words);
    // Coverage weighs the query's exact words (the parser leaves capitalised words and numbers
    // unstemmed: names, years) when it has some, else all its words: what a query is about is
    // named by its names, however rare its phrasing is in a small bank.
    const double docs = static_cast<double>(state_->db.get_doccount());
    std::map<std::string, double> idf;
    bool has_exact = false;
    for (auto t = q.get_unique_terms_begin(); t != q.get_unique_terms_end(); ++t) {
      has_exact |= !state_->function_words.contains(*t) && !(*t).starts_with('Z');
    }
    double total_idf = 0;
    for (auto t = q.get_unique_terms_begin(); t != q.get_unique_terms_end(); ++t) {
      if (state_->function_words.contains(*t)) continue;
      if (has_exact && (*t).starts_with('Z')) continue;
      const Xapian::doccount df = state_->db.get_termfreq(*t);
      // A lower-case word no passage holds ("Z" + stem) is the question's phrasing, not what it
      // is about: no evidence either way. An unknown capitalised word (a name) counts in full.
      if (df == 0 && (*t).starts_with('Z')) continue;
      const double value = std::pow(std::log((docs + 1) / (df + 0.5)), 2);
      idf.emplace(*t, value);
      total_idf += value;
    }
    for (auto it = mset.begin(); it != mset.end(); ++it) {
      std::vector<std::string> matched(enquire.get_matching_terms_begin(it),
                                       enquire.get_matching_terms_end(it));
      std::sort(matched.begin(), matched.end());
      double matched_idf = 0;
      for (const std::string& term : matched) {
        auto found = idf.find(term);
        if (found != idf.end()) matched_idf += found->second;
      }
      hits.push_back({std::stoull(it.get_document().get_data()),
                      static_cast<float>(it.get_weight()),
                      std::includes(matched.begin(), matched.end(), subject.begin(), subject.end()),
                      total_idf > 0 ? static_cast<float>(matched_idf / total_idf) : 0.0f});
    }
  } catch (const Xapian::QueryParserError& e) {
    return absl::InvalidArgumentError(
        absl::StrCat("query text is not understood: ", e.get_description()));
  } catch (const Xapian::Error& e) {
    return XapianError("search", e);
  }
  return hits;
}

absl::StatusOr<std::vector<uint64_t>> LexicalIndex::Ids() {
  std::lock_guard lock(mu_);
  std::vector<uint64_t> ids;
  try {
    // Every document carries exactly one "Q<pid>" term; walk that term prefix.
    for (auto it = state_->db.allterms_begin("Q"); it != state_->db.allterms_end("Q"); ++it) {
      ids.push_back(std::stoull((*it).substr(1)));
    }
  } catch (const Xapian::Error& e) {
    return XapianError("term listing", e);
  }
  std::sort(ids.begin(), ids.end());
  return ids;
}

uint64_t LexicalIndex::size() {
  std::lock_guard lock(mu_);
  return state_->db.get_doccount();
}

bool LexicalIndex::NeedsRebuild() {
  std::lock_guard lock(mu_);
  return state_->removed > std::max<uint64_t>(4096, state_->db.get_doccount());
}

}  // namespace knowd::storage
