#include "storage/lexical_index.h"

#include <xapian.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <filesystem>
#include <iterator>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "storage/records.h"

namespace knowd::storage {
namespace {

namespace fs = std::filesystem;

// The metadata key holding the RocksDB sequence number the committed index reflects.
constexpr char kSeqnoKey[] = "knowd-seqno";
constexpr int kGlass = Xapian::DB_BACKEND_GLASS;

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

// How a passage's text becomes terms: English stems for lower-case words, capitalised words and
// numbers as they are.
Xapian::TermGenerator MakeIndexer() {
  Xapian::TermGenerator indexer;
  indexer.set_stemmer(Xapian::Stem("english"));
  indexer.set_stemming_strategy(Xapian::TermGenerator::STEM_SOME);
  return indexer;
}

constexpr std::string_view kFunctionWords[] = {
    "a",    "about", "after", "an",    "and",  "are",  "as",   "at",   "be",   "by",
    "did",  "do",    "does",  "for",   "from", "had",  "has",  "have", "he",   "her",
    "his",  "how",   "i",     "in",    "is",   "it",   "its",  "of",   "on",   "or",
    "she",  "that",  "the",   "their", "they", "this", "to",   "was",  "were", "what",
    "when", "where", "which", "who",   "whom", "why",  "will", "with", "you",  "your"};

// BM25 as Xapian's defaults have it (k1 1, k2 0, k3 1, min_normlen 0.5) but without length
// normalisation (b 0): passages are chunks of a bounded length, and normalising by length reads
// every candidate's length from the database, one random read per passage holding any query
// term. At 1M passages that was most of a search's time (docs/operations.md).
Xapian::BM25Weight Bm25() { return Xapian::BM25Weight(1, 0, 1, 0, 0.5); }

}  // namespace

std::span<const std::string_view> FunctionWords() { return kFunctionWords; }

std::vector<std::string> QueryTermsOfWord(std::string_view word) {
  const Xapian::Stem stemmer("english");
  return {std::string(word), absl::StrCat("Z", stemmer(std::string(word)))};
}

struct LexicalIndex::State {
  std::string dir;
  Xapian::WritableDatabase db;
  Xapian::TermGenerator indexer = MakeIndexer();
  Xapian::SimpleStopper stopper;  // FunctionWords(): not searched for
  Xapian::QueryParser parser;
  Xapian::Stem stemmer{"english"};

  explicit State(std::string d, Xapian::WritableDatabase database)
      : dir(std::move(d)), db(std::move(database)) {
    parser.set_stemmer(stemmer);
    parser.set_stemming_strategy(Xapian::QueryParser::STEM_SOME);
    for (std::string_view word : kFunctionWords) stopper.add(std::string(word));
    parser.set_stopper(&stopper);
    parser.set_default_op(Xapian::Query::OP_OR);
    parser.set_database(db);
  }
};

LexicalIndex::LexicalIndex(std::unique_ptr<State> state) : state_(std::move(state)) {}
LexicalIndex::~LexicalIndex() = default;

absl::StatusOr<std::unique_ptr<LexicalIndex>> LexicalIndex::Create(const std::string& dir) {
  std::error_code ec;
  fs::remove_all(dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot remove ", dir, ": ", ec.message()));
  fs::create_directories(dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create ", dir, ": ", ec.message()));
  try {
    Xapian::WritableDatabase db(dir, Xapian::DB_CREATE_OR_OVERWRITE | kGlass);
    return std::unique_ptr<LexicalIndex>(
        new LexicalIndex(std::make_unique<State>(dir, std::move(db))));
  } catch (const Xapian::Error& e) {
    return XapianError(absl::StrCat("database creation in ", dir), e);
  }
}

absl::StatusOr<std::unique_ptr<LexicalIndex>> LexicalIndex::Load(const std::string& dir,
                                                                 uint64_t seqno,
                                                                 uint64_t passages) {
  std::error_code ec;
  if (!fs::exists(fs::path(dir) / "iamglass", ec)) {
    return absl::NotFoundError("no saved lexical index");
  }
  try {
    Xapian::WritableDatabase db(dir, Xapian::DB_OPEN | kGlass);
    const std::string recorded = db.get_metadata(kSeqnoKey);
    if (recorded.empty()) {
      return absl::FailedPreconditionError(
          "the saved lexical index records no sequence number (unclean shutdown)");
    }
    if (recorded != std::to_string(seqno)) {
      return absl::FailedPreconditionError(
          absl::StrCat("the saved lexical index reflects sequence number ", recorded,
                       ", the database is at ", seqno, " (unclean shutdown or stale files)"));
    }
    if (db.get_doccount() != passages) {
      return absl::DataLossError(absl::StrCat("the saved lexical index holds ", db.get_doccount(),
                                              " passages, the database ", passages));
    }
    // Xapian commits on its own every so many changes, and on close. Such a commit must not
    // claim a sequence number: the index then holds changes the recorded number does not.
    db.set_metadata(kSeqnoKey, std::string());
    return std::unique_ptr<LexicalIndex>(
        new LexicalIndex(std::make_unique<State>(dir, std::move(db))));
  } catch (const Xapian::Error& e) {
    return absl::DataLossError(
        absl::StrCat("the saved lexical index is unreadable: ", e.get_description()));
  }
}

absl::Status LexicalIndex::Commit(uint64_t seqno) {
  std::lock_guard lock(mu_);
  try {
    state_->db.set_metadata(kSeqnoKey, std::to_string(seqno));
    state_->db.commit();
  } catch (const Xapian::Error& e) {
    return XapianError(absl::StrCat("commit in ", state_->dir), e);
  }
  return absl::OkStatus();
}

absl::Status LexicalIndex::MoveTo(const std::string& dir) {
  std::lock_guard lock(mu_);
  try {
    state_->db.close();  // commits what is pending
  } catch (const Xapian::Error& e) {
    return XapianError(absl::StrCat("close of ", state_->dir), e);
  }
  std::error_code ec;
  fs::remove_all(dir, ec);
  if (!ec) fs::rename(state_->dir, dir, ec);
  absl::Status moved = absl::OkStatus();
  if (ec) {
    moved = absl::InternalError(
        absl::StrCat("cannot move ", state_->dir, " to ", dir, ": ", ec.message()));
  } else {
    state_->dir = dir;
  }
  try {
    state_->db = Xapian::WritableDatabase(state_->dir, Xapian::DB_OPEN | kGlass);
    state_->parser.set_database(state_->db);
  } catch (const Xapian::Error& e) {
    return XapianError(absl::StrCat("reopening ", state_->dir), e);
  }
  return moved;
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
    enquire.set_weighting_scheme(Bm25());
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

std::vector<std::string> LexicalIndex::TermsHeld(std::string_view text,
                                                 std::span<const QueryTerm> query) {
  std::vector<std::string> wanted;
  for (const QueryTerm& t : query) wanted.push_back(t.term);
  std::sort(wanted.begin(), wanted.end());
  wanted.erase(std::unique(wanted.begin(), wanted.end()), wanted.end());
  // The terms Add() gives the passage, in an in-memory document: no database read, whatever the
  // namespace's size. A TermGenerator is not thread-safe: one per thread.
  thread_local Xapian::TermGenerator indexer = MakeIndexer();
  Xapian::Document doc;
  indexer.set_document(doc);
  indexer.index_text_without_positions(WithoutPossessives(text));
  // The passage's terms, sorted like `wanted`: one forward walk.
  std::vector<std::string> out;
  Xapian::TermIterator term = doc.termlist_begin();
  const Xapian::TermIterator end = doc.termlist_end();
  for (const std::string& w : wanted) {
    term.skip_to(w);
    if (term == end) break;
    if (*term == w) out.push_back(w);
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

}  // namespace knowd::storage
