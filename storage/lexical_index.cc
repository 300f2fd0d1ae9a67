#include "storage/lexical_index.h"

#include <xapian.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <iterator>
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

}  // namespace

std::vector<std::string> QueryTermsOfWord(std::string_view word) {
  const Xapian::Stem stemmer("english");
  return {std::string(word), absl::StrCat("Z", stemmer(std::string(word)))};
}

struct LexicalIndex::State {
  Xapian::WritableDatabase db;
  Xapian::TermGenerator indexer;
  Xapian::QueryParser parser;
  Xapian::Stem stemmer{"english"};
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

namespace {

// User text is words, not a query language: FLAG_DEFAULT minus boolean operators, so a stray
// "AND" or quote never turns into a syntax error.
Xapian::Query ParseQuery(Xapian::QueryParser& parser, std::string_view query) {
  return parser.parse_query(WithoutPossessives(query),
                            Xapian::QueryParser::FLAG_PHRASE | Xapian::QueryParser::FLAG_LOVEHATE);
}

// Query terms: "Z" + stem for a stemmed word; a capitalised word or a number as it is.
QueryTerm TermOf(const Xapian::Database& db, const std::string& term) {
  return QueryTerm{term, !term.starts_with('Z'), db.get_termfreq(term)};
}

void DescribeQuery(const Xapian::Database& db, const Xapian::Query& q, LexicalTerms* terms) {
  *terms = LexicalTerms();
  terms->passages = db.get_doccount();
  for (auto t = q.get_unique_terms_begin(); t != q.get_unique_terms_end(); ++t) {
    terms->query.push_back(TermOf(db, *t));
  }
}

}  // namespace

absl::StatusOr<std::vector<LexicalHit>> LexicalIndex::Search(std::string_view query, int k,
                                                             LexicalTerms* terms) {
  std::lock_guard lock(mu_);
  std::vector<LexicalHit> hits;
  try {
    const Xapian::Query q = ParseQuery(state_->parser, query);
    Xapian::Enquire enquire(state_->db);
    enquire.set_query(q);
    enquire.set_weighting_scheme(Xapian::BM25Weight());
    Xapian::MSet mset = enquire.get_mset(0, static_cast<Xapian::doccount>(k));
    if (terms != nullptr) {
      DescribeQuery(state_->db, q, terms);
      if (!mset.empty()) {
        for (auto t = enquire.get_matching_terms_begin(mset.begin());
             t != enquire.get_matching_terms_end(mset.begin()); ++t) {
          auto found = std::find_if(terms->query.begin(), terms->query.end(),
                                    [&](const QueryTerm& qt) { return qt.term == *t; });
          terms->best_match.push_back(found != terms->query.end() ? *found
                                                                  : TermOf(state_->db, *t));
        }
      }
    }
    for (auto it = mset.begin(); it != mset.end(); ++it) {
      LexicalHit hit{
          std::stoull(it.get_document().get_data()), static_cast<float>(it.get_weight()), {}};
      if (terms != nullptr) {
        hit.matched.assign(enquire.get_matching_terms_begin(it),
                           enquire.get_matching_terms_end(it));
        std::sort(hit.matched.begin(), hit.matched.end());
      }
      hits.push_back(std::move(hit));
    }
  } catch (const Xapian::QueryParserError& e) {
    return absl::InvalidArgumentError(
        absl::StrCat("query text is not understood: ", e.get_description()));
  } catch (const Xapian::Error& e) {
    return XapianError("search", e);
  }
  return hits;
}

absl::StatusOr<LexicalTerms> LexicalIndex::Describe(std::string_view query) {
  std::lock_guard lock(mu_);
  LexicalTerms terms;
  try {
    DescribeQuery(state_->db, ParseQuery(state_->parser, query), &terms);
  } catch (const Xapian::QueryParserError& e) {
    return absl::InvalidArgumentError(
        absl::StrCat("query text is not understood: ", e.get_description()));
  } catch (const Xapian::Error& e) {
    return XapianError("query description", e);
  }
  return terms;
}

absl::StatusOr<std::vector<std::vector<std::string>>> LexicalIndex::MatchedTerms(
    std::span<const uint64_t> ids, std::span<const QueryTerm> query) {
  std::vector<std::string> wanted;
  for (const QueryTerm& t : query) wanted.push_back(t.term);
  std::sort(wanted.begin(), wanted.end());
  wanted.erase(std::unique(wanted.begin(), wanted.end()), wanted.end());
  std::lock_guard lock(mu_);
  std::vector<std::vector<std::string>> out(ids.size());
  try {
    for (size_t i = 0; i < ids.size(); ++i) {
      Xapian::PostingIterator post = state_->db.postlist_begin(UniqueTerm(ids[i]));
      if (post == state_->db.postlist_end(UniqueTerm(ids[i]))) continue;
      // The passage's terms, sorted like `wanted`: one forward walk.
      Xapian::TermIterator term = state_->db.termlist_begin(*post);
      const Xapian::TermIterator end = state_->db.termlist_end(*post);
      for (const std::string& w : wanted) {
        term.skip_to(w);
        if (term == end) break;
        if (*term == w) out[i].push_back(w);
      }
    }
  } catch (const Xapian::Error& e) {
    return XapianError("term lookup", e);
  }
  return out;
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
