// Readers: Get, Search, GetLatents, Scan, Stats, VerifyIndexes. Each holds index_mu_ shared for
// its whole call, so a concurrent Delete cannot interleave between index lookup and record read
// in a way that resurrects a forgotten passage (see bank_impl.h).
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <shared_mutex>
#include <unordered_map>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "storage/bank_impl.h"
#include "storage/latent_codec.h"

namespace knowd::storage {
namespace {

// Releases a RocksDB snapshot when it goes out of scope.
class ScopedSnapshot {
 public:
  explicit ScopedSnapshot(rocksdb::DB* db) : db_(db), snapshot_(db->GetSnapshot()) {}
  ~ScopedSnapshot() { db_->ReleaseSnapshot(snapshot_); }
  ScopedSnapshot(const ScopedSnapshot&) = delete;
  ScopedSnapshot& operator=(const ScopedSnapshot&) = delete;
  rocksdb::ReadOptions Read() const {
    rocksdb::ReadOptions r;
    r.snapshot = snapshot_;
    return r;
  }

 private:
  rocksdb::DB* db_;
  const rocksdb::Snapshot* snapshot_;
};

std::optional<absl::Time> OptionalTime(const std::optional<int64_t>& us) {
  if (!us.has_value()) return std::nullopt;
  return FromMicros(*us);
}

// Finds the first id present in one sorted list and not the other, for DATA_LOSS messages.
std::string FirstDifference(const std::vector<uint64_t>& want, const std::vector<uint64_t>& have) {
  std::vector<uint64_t> missing, extra;
  std::set_difference(want.begin(), want.end(), have.begin(), have.end(),
                      std::back_inserter(missing));
  std::set_difference(have.begin(), have.end(), want.begin(), want.end(),
                      std::back_inserter(extra));
  if (!missing.empty()) {
    return absl::StrCat("lacks passage ", missing[0], " (", missing.size(), " missing, ",
                        extra.size(), " extra)");
  }
  if (!extra.empty()) return absl::StrCat("has extra passage ", extra[0], " (", extra.size(), ")");
  return "matches";
}

// The bytes of the regular files under `dir`, at any depth (0 when it does not exist).
uint64_t FileBytesUnder(const std::string& dir) {
  uint64_t total = 0;
  std::error_code walk, ec;
  for (std::filesystem::recursive_directory_iterator it(dir, walk), end; !walk && it != end;
       it.increment(walk)) {
    if (!it->is_regular_file(ec)) continue;
    const uintmax_t bytes = it->file_size(ec);
    if (!ec) total += bytes;
  }
  return total;
}

}  // namespace

absl::StatusOr<Document> BankImpl::Get(std::string_view name_space, std::string_view id,
                                       bool with_latents) {
  KNOWD_RETURN_IF_ERROR(ValidateNamespace(name_space));
  std::shared_lock lock(index_mu_);
  KNOWD_RETURN_IF_ERROR(CheckOpenLocked());
  ScopedSnapshot snapshot(db_.get());
  const rocksdb::ReadOptions read = snapshot.Read();
  std::string value;
  rocksdb::Status s = db_->Get(read, cf_passages_, DocKey(name_space, id), &value);
  if (s.IsNotFound()) {
    return absl::NotFoundError(absl::StrCat(
        "document '", AbslView(id), "' not found in namespace '", AbslView(name_space), "'"));
  }
  KNOWD_RETURN_IF_ERROR(FromRocks(s, "reading a document"));
  KNOWD_ASSIGN_OR_RETURN(auto record, DecodeDoc(value));

  Document doc;
  doc.name_space = std::string(name_space);
  doc.id = std::string(id);
  doc.text = std::move(record.text);
  doc.metadata = std::move(record.metadata);
  doc.ingest_time = FromMicros(record.ingest_us);
  doc.valid_from = OptionalTime(record.valid_from_us);

  const size_t n = record.passage_ids.size();
  std::vector<std::string> key_storage;
  std::vector<rocksdb::ColumnFamilyHandle*> cfs;
  for (uint64_t pid : record.passage_ids) {
    key_storage.push_back(PassageKey(pid));
    key_storage.push_back(KeyKey(name_space, pid));
    if (with_latents) key_storage.push_back(LatentKey(pid));
    cfs.push_back(cf_passages_);
    cfs.push_back(cf_keys_);
    if (with_latents) cfs.push_back(cf_latents_);
  }
  std::vector<rocksdb::Slice> keys(key_storage.begin(), key_storage.end());
  std::vector<std::string> values;
  std::vector<rocksdb::Status> statuses = db_->MultiGet(read, cfs, keys, &values);
  const size_t stride = with_latents ? 3 : 2;
  for (size_t i = 0; i < n; ++i) {
    for (size_t j = 0; j < stride; ++j) {
      KNOWD_RETURN_IF_ERROR(
          FromRocks(statuses[i * stride + j],
                    absl::StrCat("document '", AbslView(id), "' passage ", i, " is damaged")));
    }
    KNOWD_ASSIGN_OR_RETURN(auto passage, DecodePassage(values[i * stride]));
    Passage out;
    out.id = record.passage_ids[i];
    out.text = std::move(passage.text);
    out.context_bytes = passage.context_bytes;
    out.key.resize(options_.key_dim);
    KNOWD_RETURN_IF_ERROR(
        DecodeKeyVector(values[i * stride + 1], options_.key_dim, out.key.data()));
    if (with_latents) {
      KNOWD_ASSIGN_OR_RETURN(
          out.latents,
          DecodeLatents(values[i * stride + 2], options_.latent_rows, options_.latent_cols));
    }
    doc.passages.push_back(std::move(out));
  }
  return doc;
}

absl::StatusOr<std::vector<SearchHit>> BankImpl::Search(const SearchRequest& request,
                                                        LexicalTerms* terms) {
  if (terms != nullptr) *terms = LexicalTerms();
  KNOWD_RETURN_IF_ERROR(ValidateNamespace(request.name_space));
  if (request.key.size() != static_cast<size_t>(options_.key_dim)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "query key has ", request.key.size(), " floats, the bank's key_dim is ", options_.key_dim));
  }
  for (float v : request.key) {
    if (!std::isfinite(v)) return absl::InvalidArgumentError("query key has a non-finite value");
  }
  if (request.k < 1 || request.k > kMaxSearchK) {
    return absl::InvalidArgumentError(absl::StrCat("k must be in [1, ", kMaxSearchK, "]"));
  }
  if (request.hybrid && !options_.lexical_index) {
    return absl::InvalidArgumentError("hybrid search needs the lexical index, which is disabled");
  }
  if (request.hybrid && request.query_text.empty()) {
    return absl::InvalidArgumentError("hybrid search needs query_text");
  }
  if (request.candidates < 0 || request.rrf_k < 0) {
    return absl::InvalidArgumentError("candidates and rrf_k must be non-negative");
  }
  if (!std::isfinite(request.dense_weight) || !std::isfinite(request.lexical_weight) ||
      request.dense_weight < 0 || request.lexical_weight < 0 ||
      (request.dense_weight == 0 && request.lexical_weight == 0)) {
    return absl::InvalidArgumentError(
        "dense_weight and lexical_weight must be finite, non-negative and not both 0");
  }
  std::shared_lock lock(index_mu_);
  KNOWD_RETURN_IF_ERROR(CheckOpenLocked());
  if (needs_reencode_) {
    return absl::FailedPreconditionError(
        "memory bank is waiting for a re-encode; its keys do not match this encoder");
  }
  auto ns = namespaces_.find(request.name_space);
  if (ns == namespaces_.end()) return std::vector<SearchHit>();

  struct Candidate {
    uint64_t id;
    float score;
    std::optional<float> dense, lexical;
    std::vector<std::string> matched_terms;
  };
  std::vector<Candidate> ranked;
  // lexical_weight 0 ranks by the dense index alone: no BM25 ranking, whose cost grows with the
  // namespace; the lexical index only describes the query.
  const bool lexical_ranking = request.hybrid && request.lexical_weight > 0;
  // dense_weight 0 is BM25 alone: no dense search, which would only add candidates scored 0.
  const bool dense_ranking = !request.hybrid || request.dense_weight > 0;
  const int pool =
      request.hybrid
          ? std::min(kMaxSearchK, request.candidates > 0 ? request.candidates : 4 * request.k)
          : request.k;
  absl::StatusOr<std::vector<ScoredId>> dense = std::vector<ScoredId>();
  if (dense_ranking) dense = ns->second.vectors->Search(request.key.data(), pool);
  if (!dense.ok()) return dense.status();
  if (!request.hybrid) {
    for (const ScoredId& hit : *dense) ranked.push_back({hit.id, hit.score, hit.score, {}, {}});
  } else if (!lexical_ranking) {
    for (size_t r = 0; r < dense->size(); ++r) {
      const float fused = request.dense_weight / static_cast<float>(request.rrf_k + r + 1);
      ranked.push_back({(*dense)[r].id, fused, (*dense)[r].score, {}, {}});
    }
    if (terms != nullptr) {
      KNOWD_ASSIGN_OR_RETURN(*terms, ns->second.lexical->Describe(request.query_text));
    }
  } else {
    auto lexical = ns->second.lexical->Search(request.query_text, pool, terms);
    if (!lexical.ok()) return lexical.status();
    std::unordered_map<uint64_t, size_t> position;
    auto entry = [&](uint64_t id) -> Candidate& {
      auto [it, inserted] = position.emplace(id, ranked.size());
      if (inserted) ranked.push_back({id, 0.0f, {}, {}, {}});
      return ranked[it->second];
    };
    for (size_t r = 0; r < dense->size(); ++r) {
      Candidate& c = entry((*dense)[r].id);
      c.score += request.dense_weight / static_cast<float>(request.rrf_k + r + 1);
      c.dense = (*dense)[r].score;
    }
    for (size_t r = 0; r < lexical->size(); ++r) {
      Candidate& c = entry((*lexical)[r].id);
      c.score += request.lexical_weight / static_cast<float>(request.rrf_k + r + 1);
      c.lexical = (*lexical)[r].weight;
      c.matched_terms = std::move((*lexical)[r].matched);
    }
    std::stable_sort(ranked.begin(), ranked.end(),
                     [](const Candidate& a, const Candidate& b) { return a.score > b.score; });
  }

  // Resolve ids to passage records in chunks of k; an id whose record is gone (a writer between
  // its commit and its index update) is skipped.
  std::vector<SearchHit> hits;
  const rocksdb::ReadOptions read;
  for (size_t start = 0; start < ranked.size() && static_cast<int>(hits.size()) < request.k;
       start += request.k) {
    const size_t end = std::min(ranked.size(), start + request.k);
    std::vector<std::string> key_storage;
    for (size_t i = start; i < end; ++i) key_storage.push_back(PassageKey(ranked[i].id));
    std::vector<rocksdb::Slice> keys(key_storage.begin(), key_storage.end());
    std::vector<rocksdb::ColumnFamilyHandle*> cfs(keys.size(), cf_passages_);
    std::vector<std::string> values;
    std::vector<rocksdb::Status> statuses = db_->MultiGet(read, cfs, keys, &values);
    for (size_t i = 0; i < keys.size() && static_cast<int>(hits.size()) < request.k; ++i) {
      if (statuses[i].IsNotFound()) continue;
      KNOWD_RETURN_IF_ERROR(FromRocks(statuses[i], "reading a search hit"));
      KNOWD_ASSIGN_OR_RETURN(auto passage, DecodePassage(values[i]));
      if (passage.ns != request.name_space) continue;  // cannot happen; isolation is absolute
      const Candidate& c = ranked[start + i];
      SearchHit hit;
      hit.passage_id = c.id;
      hit.doc_id = std::move(passage.doc_id);
      hit.passage_index = static_cast<int>(passage.index);
      hit.score = c.score;
      hit.dense_score = c.dense;
      hit.lexical_score = c.lexical;
      hit.matched_terms = c.matched_terms;
      if (request.hybrid && terms != nullptr && !c.lexical.has_value()) {
        // A dense-only hit's matched terms too: what it holds of the query says whether it is on
        // the query's subject (knowledge/subject.h), however it was found.
        hit.matched_terms = LexicalIndex::TermsHeld(passage.text, terms->query);
      }
      hit.ingest_time = FromMicros(passage.ingest_us);
      hit.valid_from = OptionalTime(passage.valid_from_us);
      if (request.with_text) hit.text = std::move(passage.text);
      hits.push_back(std::move(hit));
    }
  }
  if (request.hybrid && terms != nullptr && !lexical_ranking && !hits.empty()) {
    // The best candidate is the best dense hit.
    for (const QueryTerm& t : terms->query) {
      if (std::binary_search(hits[0].matched_terms.begin(), hits[0].matched_terms.end(), t.term)) {
        terms->best_match.push_back(t);
      }
    }
  }
  return hits;
}

absl::StatusOr<std::vector<std::shared_ptr<const std::vector<float>>>> BankImpl::GetLatents(
    std::string_view name_space, std::span<const PassageId> ids) {
  KNOWD_RETURN_IF_ERROR(ValidateNamespace(name_space));
  std::shared_lock lock(index_mu_);
  KNOWD_RETURN_IF_ERROR(CheckOpenLocked());
  auto ns = namespaces_.find(name_space);
  std::vector<std::shared_ptr<const std::vector<float>>> out(ids.size());
  std::vector<size_t> misses;
  for (size_t i = 0; i < ids.size(); ++i) {
    out[i] = cache_.Lookup(ids[i], name_space);
    if (out[i] != nullptr) continue;
    // The namespace's vector index holds exactly its live passages (bank_impl.h invariant).
    if (ns == namespaces_.end() || !ns->second.vectors->Contains(ids[i])) {
      return absl::NotFoundError(
          absl::StrCat("passage ", ids[i], " not found in namespace '", AbslView(name_space), "'"));
    }
    misses.push_back(i);
  }
  if (misses.empty()) return out;
  std::vector<std::string> key_storage;
  for (size_t i : misses) key_storage.push_back(LatentKey(ids[i]));
  std::vector<rocksdb::Slice> keys(key_storage.begin(), key_storage.end());
  std::vector<rocksdb::ColumnFamilyHandle*> cfs(keys.size(), cf_latents_);
  std::vector<std::string> values;
  std::vector<rocksdb::Status> statuses = db_->MultiGet(rocksdb::ReadOptions(), cfs, keys, &values);
  for (size_t m = 0; m < misses.size(); ++m) {
    const uint64_t pid = ids[misses[m]];
    if (statuses[m].IsNotFound()) {
      return absl::NotFoundError(absl::StrCat("passage ", pid, " has been forgotten"));
    }
    KNOWD_RETURN_IF_ERROR(FromRocks(statuses[m], "reading latents"));
    KNOWD_ASSIGN_OR_RETURN(auto latents,
                           DecodeLatents(values[m], options_.latent_rows, options_.latent_cols));
    auto shared = std::make_shared<const std::vector<float>>(std::move(latents));
    cache_.Insert(pid, std::string(name_space), shared);
    out[misses[m]] = std::move(shared);
  }
  return out;
}

absl::StatusOr<ScanPage> BankImpl::Scan(std::string_view name_space, std::string_view start_after,
                                        int limit) {
  KNOWD_RETURN_IF_ERROR(ValidateNamespace(name_space));
  if (limit < 1) return absl::InvalidArgumentError("scan limit must be positive");
  std::shared_lock lock(index_mu_);
  KNOWD_RETURN_IF_ERROR(CheckOpenLocked());
  const std::string prefix = DocKeyPrefix(name_space);
  const std::string first = DocKey(name_space, start_after);
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions(), cf_passages_));
  it->Seek(first);
  if (!start_after.empty() && it->Valid() && it->key() == first) it->Next();
  ScanPage page;
  for (; it->Valid() && it->key().starts_with(prefix); it->Next()) {
    if (static_cast<int>(page.documents.size()) == limit) {
      page.next_start_after = page.documents.back().id;
      break;
    }
    KNOWD_ASSIGN_OR_RETURN(auto record, DecodeDoc(it->value().ToStringView()));
    DocumentSummary summary;
    summary.id = it->key().ToString().substr(prefix.size());
    summary.metadata = std::move(record.metadata);
    summary.ingest_time = FromMicros(record.ingest_us);
    summary.valid_from = OptionalTime(record.valid_from_us);
    summary.num_passages = static_cast<int>(record.passage_ids.size());
    page.documents.push_back(std::move(summary));
  }
  KNOWD_RETURN_IF_ERROR(FromRocks(it->status(), "scanning documents"));
  return page;
}

absl::StatusOr<BankStats> BankImpl::Stats() {
  std::shared_lock lock(index_mu_);
  KNOWD_RETURN_IF_ERROR(CheckOpenLocked());
  BankStats stats;
  for (const auto& [name, ns] : namespaces_) {
    stats.namespaces.push_back(
        {name, ns.counts.documents, ns.counts.passages, ns.vectors->Description()});
    stats.documents += ns.counts.documents;
    stats.passages += ns.counts.passages;
  }
  for (rocksdb::ColumnFamilyHandle* cf : handles_) {
    uint64_t bytes = 0;
    if (db_->GetIntProperty(cf, "rocksdb.total-sst-files-size", &bytes)) stats.disk_bytes += bytes;
  }
  rocksdb::VectorLogPtr wal_files;
  if (db_->GetSortedWalFiles(wal_files).ok()) {
    for (const auto& wal : wal_files) stats.disk_bytes += wal->SizeFileBytes();
  }
  stats.disk_bytes += FileBytesUnder(index_dir_) + FileBytesUnder(lexical_dir_);
  stats.latent_cache_hits = cache_.hits();
  stats.latent_cache_misses = cache_.misses();
  stats.indexes_loaded_from_disk = indexes_loaded_;
  stats.index_rebuild_reason = rebuild_reason_;
  stats.lexical_loaded_from_disk = lexical_loaded_;
  stats.lexical_rebuild_reason = lexical_rebuild_reason_;
  stats.recovery_warning = recovery_warning_;
  stats.open_time = open_time_;
  stats.fingerprint = fingerprint_;
  stats.needs_reencode = needs_reencode_;
  return stats;
}

absl::Status BankImpl::VerifyIndexes() {
  std::lock_guard write(write_mu_);  // freeze RocksDB while we compare
  std::shared_lock lock(index_mu_);
  KNOWD_RETURN_IF_ERROR(CheckOpenLocked());
  std::map<std::string, std::vector<uint64_t>, std::less<>> keys, passages;
  {
    std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions(), cf_keys_));
    for (it->SeekToFirst(); it->Valid(); it->Next()) {
      const std::string_view key = it->key().ToStringView();
      auto pid = PidFromKeySuffix(key);
      if (!pid.has_value()) return absl::DataLossError("malformed key entry");
      keys[std::string(key.substr(0, key.size() - 9))].push_back(*pid);
    }
    KNOWD_RETURN_IF_ERROR(FromRocks(it->status(), "reading keys"));
  }
  {
    std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions(), cf_passages_));
    for (it->Seek("p"); it->Valid() && it->key().starts_with("p"); it->Next()) {
      auto pid = PidFromPassageKey(it->key().ToStringView());
      auto record = DecodePassage(it->value().ToStringView());
      if (!pid.has_value() || !record.ok()) return absl::DataLossError("malformed passage entry");
      passages[record->ns].push_back(*pid);
    }
    KNOWD_RETURN_IF_ERROR(FromRocks(it->status(), "reading passages"));
  }
  std::set<std::string> names;
  for (const auto& [name, ids] : keys) names.insert(name);
  for (const auto& [name, ids] : passages) names.insert(name);
  for (const auto& [name, ns] : namespaces_) names.insert(name);
  for (const std::string& name : names) {
    const std::vector<uint64_t>& want = keys[name];
    auto fail = [&](std::string_view what, const std::vector<uint64_t>& have) {
      return absl::DataLossError(absl::StrCat("namespace '", name, "': ", AbslView(what), " ",
                                              FirstDifference(want, have),
                                              " compared with the keys column family"));
    };
    if (passages[name] != want) return fail("the passage records", passages[name]);
    auto ns = namespaces_.find(name);
    if (ns == namespaces_.end()) return fail("the in-memory index set", {});
    if (ns->second.counts.passages != want.size()) {
      return absl::DataLossError(absl::StrCat("namespace '", name, "': counts say ",
                                              ns->second.counts.passages, " passages, keys ",
                                              want.size()));
    }
    if (std::vector<uint64_t> have = ns->second.vectors->LiveIds(); have != want) {
      return fail("the FAISS index", have);
    }
    if (ns->second.lexical != nullptr) {
      KNOWD_ASSIGN_OR_RETURN(auto have, ns->second.lexical->Ids());
      if (have != want) return fail("the Xapian index", have);
    }
  }
  return absl::OkStatus();
}

}  // namespace knowd::storage
