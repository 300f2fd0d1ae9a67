#include "storage/lexical_index.h"

#include <xapian.h>

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "storage/records.h"

namespace knowd::storage {
namespace {

std::string UniqueTerm(uint64_t id) { return absl::StrCat("Q", id); }

absl::Status XapianError(std::string_view what, const Xapian::Error& e) {
  return absl::InternalError(
      absl::StrCat("Xapian ", AbslView(what), " failed: ", e.get_description()));
}

}  // namespace

struct LexicalIndex::State {
  Xapian::WritableDatabase db;
  Xapian::TermGenerator indexer;
  Xapian::QueryParser parser;
  Xapian::Stem stemmer{"english"};
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
    state_->indexer.index_text(std::string(text));
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

absl::StatusOr<std::vector<LexicalHit>> LexicalIndex::Search(std::string_view query, int k) {
  std::lock_guard lock(mu_);
  std::vector<LexicalHit> hits;
  try {
    // FLAG_DEFAULT minus boolean operators: user text is words, not a query language, and a
    // stray "AND" or quote must not turn into a syntax error.
    Xapian::Query q = state_->parser.parse_query(
        std::string(query), Xapian::QueryParser::FLAG_PHRASE | Xapian::QueryParser::FLAG_LOVEHATE);
    Xapian::Enquire enquire(state_->db);
    enquire.set_query(q);
    enquire.set_weighting_scheme(Xapian::BM25Weight());
    Xapian::MSet mset = enquire.get_mset(0, static_cast<Xapian::doccount>(k));
    for (auto it = mset.begin(); it != mset.end(); ++it) {
      hits.push_back(
          {std::stoull(it.get_document().get_data()), static_cast<float>(it.get_weight())});
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

}  // namespace knowd::storage
