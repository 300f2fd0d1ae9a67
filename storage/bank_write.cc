// Put and Delete: one synced WriteBatch each, then the in-memory indexes follow.
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <set>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "rocksdb/write_batch.h"
#include "storage/bank_impl.h"
#include "storage/latent_codec.h"

namespace knowd::storage {
namespace {

absl::Status ValidateDocId(std::string_view id) {
  if (id.empty() || id.size() > kMaxDocIdBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("document id must be 1..", kMaxDocIdBytes, " bytes"));
  }
  return absl::OkStatus();
}

absl::Status ValidateDocument(const Document& doc, const BankOptions& o) {
  KNOWD_RETURN_IF_ERROR(ValidateNamespace(doc.name_space));
  KNOWD_RETURN_IF_ERROR(ValidateDocId(doc.id));
  if (doc.passages.empty()) return absl::InvalidArgumentError("document has no passages");
  const size_t latent_size = static_cast<size_t>(o.latent_rows) * o.latent_cols;
  for (size_t p = 0; p < doc.passages.size(); ++p) {
    const Passage& passage = doc.passages[p];
    auto bad = [&](std::string_view what) {
      return absl::InvalidArgumentError(absl::StrCat("passage ", p, ": ", AbslView(what)));
    };
    if (passage.latents.size() != latent_size) {
      return bad(absl::StrCat("latents have ", passage.latents.size(), " floats, the bank stores ",
                              o.latent_rows, "x", o.latent_cols, " = ", latent_size));
    }
    if (passage.key.size() != static_cast<size_t>(o.key_dim)) {
      return bad(absl::StrCat("key has ", passage.key.size(), " floats, the bank's key_dim is ",
                              o.key_dim));
    }
    for (float v : passage.key) {
      if (!std::isfinite(v)) return bad("key has a non-finite value");
    }
    if (absl::Status s = CheckLatentsEncodable(passage.latents, o.latent_format); !s.ok()) {
      return bad(std::string_view(s.message().data(), s.message().size()));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::vector<DocumentAck>> BankImpl::Put(std::span<const Document> batch) {
  std::set<std::pair<std::string_view, std::string_view>> seen;
  for (size_t i = 0; i < batch.size(); ++i) {
    const Document& doc = batch[i];
    if (absl::Status s = ValidateDocument(doc, options_); !s.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("document ", i, " ('", doc.id.substr(0, 64), "'): ", s.message()));
    }
    if (!seen.emplace(doc.name_space, doc.id).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("document '", doc.id.substr(0, 64), "' appears twice in the batch"));
    }
  }
  std::lock_guard write(write_mu_);
  // closed_, needs_reencode_ and namespaces_ change only under write_mu_, which we hold.
  KNOWD_RETURN_IF_ERROR(CheckOpenLocked());
  if (needs_reencode_) {
    return absl::FailedPreconditionError(
        "memory bank is waiting for a re-encode; writes are refused until it completes");
  }
  const int64_t now_us = ToMicros(absl::Now());
  rocksdb::WriteBatch wb;
  DeltaMap deltas;
  std::vector<DocumentAck> acks;
  acks.reserve(batch.size());
  uint64_t next = next_pid_;
  for (const Document& doc : batch) {
    NamespaceDelta& delta = DeltaFor(&deltas, doc.name_space);
    DocumentAck ack{doc.name_space, doc.id, {}, false};
    const std::string doc_key = DocKey(doc.name_space, doc.id);
    std::string old_value;
    rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), cf_passages_, doc_key, &old_value);
    if (s.ok()) {
      KNOWD_ASSIGN_OR_RETURN(auto old, DecodeDoc(old_value));
      DeleteDocument(doc.name_space, old, &wb, &delta);
      ack.replaced = true;
    } else if (!s.IsNotFound()) {
      return FromRocks(s, "reading the previous version of a document");
    }
    DocRecord record{now_us, std::nullopt, doc.metadata, doc.text, {}};
    if (doc.valid_from.has_value()) record.valid_from_us = ToMicros(*doc.valid_from);
    for (size_t p = 0; p < doc.passages.size(); ++p) {
      const Passage& passage = doc.passages[p];
      const uint64_t pid = next++;
      record.passage_ids.push_back(pid);
      wb.Put(cf_passages_, PassageKey(pid),
             EncodePassage({doc.name_space, doc.id, static_cast<uint32_t>(p), now_us,
                            record.valid_from_us, passage.text, passage.context_bytes}));
      wb.Put(cf_latents_, LatentKey(pid),
             EncodeLatents(passage.latents, options_.latent_rows, options_.latent_cols,
                           options_.latent_format));
      wb.Put(cf_keys_, KeyKey(doc.name_space, pid),
             EncodeKeyVector(passage.key.data(), options_.key_dim));
      delta.added.push_back(pid);
      delta.vectors.insert(delta.vectors.end(), passage.key.begin(), passage.key.end());
      delta.texts.push_back(&passage.text);
    }
    delta.counts.documents += 1;
    delta.counts.passages += doc.passages.size();
    wb.Put(cf_passages_, doc_key, EncodeDoc(record));
    ack.passage_ids = record.passage_ids;
    acks.push_back(std::move(ack));
  }
  if (batch.empty()) return acks;
  wb.Put(cf_meta_, kMetaNextPassageId, EncodeU64(next));
  PutCounts(deltas, &wb);
  KNOWD_RETURN_IF_ERROR(CommitBatch(&wb, "writing documents"));
  next_pid_ = next;
  ApplyDeltas(&deltas);
  return acks;
}

absl::StatusOr<int> BankImpl::Delete(std::string_view name_space, std::span<const std::string> ids,
                                     bool purge) {
  KNOWD_RETURN_IF_ERROR(ValidateNamespace(name_space));
  for (const std::string& id : ids) KNOWD_RETURN_IF_ERROR(ValidateDocId(id));
  std::lock_guard write(write_mu_);
  KNOWD_RETURN_IF_ERROR(CheckOpenLocked());
  rocksdb::WriteBatch wb;
  DeltaMap deltas;
  NamespaceDelta& delta = DeltaFor(&deltas, name_space);
  std::set<std::string_view> unique(ids.begin(), ids.end());
  int removed = 0;
  for (std::string_view id : unique) {
    const std::string doc_key = DocKey(name_space, id);
    std::string value;
    rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), cf_passages_, doc_key, &value);
    if (s.IsNotFound()) continue;
    KNOWD_RETURN_IF_ERROR(FromRocks(s, "reading a document to forget"));
    KNOWD_ASSIGN_OR_RETURN(auto record, DecodeDoc(value));
    DeleteDocument(name_space, record, &wb, &delta);
    wb.Delete(cf_passages_, doc_key);
    ++removed;
  }
  if (removed == 0) return 0;
  std::vector<uint64_t> pids = delta.removed;
  PutCounts(deltas, &wb);
  KNOWD_RETURN_IF_ERROR(CommitBatch(&wb, "forgetting documents"));
  ApplyDeltas(&deltas);
  if (purge) {
    absl::Status purged = PurgeFromDisk(name_space, unique, pids);
    // A failed flush or compaction stops RocksDB's writes like a failed write does.
    if (!purged.ok()) write_error_ = purged;
    KNOWD_RETURN_IF_ERROR(purged);
  }
  return removed;
}

BankImpl::NamespaceDelta& BankImpl::DeltaFor(DeltaMap* deltas, std::string_view ns) {
  auto it = deltas->find(ns);
  if (it != deltas->end()) return it->second;
  NamespaceDelta& delta = (*deltas)[std::string(ns)];
  // write_mu_ is held: namespaces_ cannot change under us, so reading it unlocked is safe.
  if (auto existing = namespaces_.find(ns); existing != namespaces_.end()) {
    delta.counts = existing->second.counts;
  }
  return delta;
}

void BankImpl::DeleteDocument(std::string_view ns, const DocRecord& record, rocksdb::WriteBatch* wb,
                              NamespaceDelta* delta) {
  for (uint64_t pid : record.passage_ids) {
    wb->Delete(cf_passages_, PassageKey(pid));
    wb->Delete(cf_latents_, LatentKey(pid));
    wb->Delete(cf_keys_, KeyKey(ns, pid));
    delta->removed.push_back(pid);
  }
  delta->counts.documents -= 1;
  delta->counts.passages -= record.passage_ids.size();
}

void BankImpl::PutCounts(const DeltaMap& deltas, rocksdb::WriteBatch* wb) {
  for (const auto& [ns, delta] : deltas) {
    if (delta.counts.documents == 0) {
      wb->Delete(cf_meta_, NamespaceMetaKey(ns));
    } else {
      wb->Put(cf_meta_, NamespaceMetaKey(ns), EncodeCounts(delta.counts));
    }
  }
}

void BankImpl::ApplyDeltas(DeltaMap* deltas) {
  absl::Status status = absl::OkStatus();
  {
    std::unique_lock lock(index_mu_);
    for (auto& [name, delta] : *deltas) {
      cache_.Erase(delta.removed);
      if (delta.counts.documents == 0) {
        namespaces_.erase(name);  // closes its lexical index, whose directory goes too
        if (options_.lexical_index) {
          std::error_code ec;
          std::filesystem::remove_all(LexicalDir(name), ec);
        }
        continue;
      }
      Namespace& ns = namespaces_[name];
      ns.counts = delta.counts;
      if (ns.vectors == nullptr) {
        auto index = VectorIndex::Build(VectorConfig(), {}, {});
        if (!index.ok()) {
          status = index.status();
          break;
        }
        ns.vectors = std::move(*index);
      }
      status = ns.vectors->Remove(delta.removed);
      if (status.ok()) status = ns.vectors->Add(delta.added, delta.vectors);
      if (status.ok() && options_.lexical_index) {
        if (ns.lexical == nullptr) {
          auto lexical = LexicalIndex::Create(LexicalDir(name));
          if (!lexical.ok()) {
            status = lexical.status();
            break;
          }
          ns.lexical = std::move(*lexical);
        }
        status = ns.lexical->Remove(delta.removed);
        for (size_t i = 0; status.ok() && i < delta.added.size(); ++i) {
          status = ns.lexical->Add(delta.added[i], *delta.texts[i]);
        }
      }
      if (!status.ok()) break;
    }
  }
  std::vector<std::string> touched;
  for (const auto& [name, delta] : *deltas) touched.push_back(name);
  if (status.ok()) status = RebuildIfNeeded(touched);
  if (!status.ok()) {
    // The batch is durable; only the in-memory indexes are behind. Rebuild them from RocksDB.
    spdlog::error("memory bank {}: index update failed ({}); rebuilding from the database",
                  options_.data_dir, status.ToString());
    RecoverIndexes();
  }
}

void BankImpl::RecoverIndexes() {
  index_suspect_ = true;
  NamespaceMap fresh;
  absl::Status s = LoadCounts(&fresh);
  if (s.ok()) s = RebuildVectors(&fresh);
  // Built beside the served lexical indexes, which keep answering until the swap.
  if (s.ok() && options_.lexical_index) s = RebuildLexical(&fresh, {}, /*staged=*/true);
  if (!s.ok()) {
    spdlog::error("memory bank {}: index rebuild failed: {}", options_.data_dir, s.ToString());
    return;
  }
  std::unique_lock lock(index_mu_);
  if (options_.lexical_index) {
    for (auto& [name, ns] : namespaces_) {
      if (fresh.contains(name)) continue;
      ns.lexical.reset();
      std::error_code ec;
      std::filesystem::remove_all(LexicalDir(name), ec);
    }
    s = InstallStagedLexical(&fresh);
  }
  namespaces_ = std::move(fresh);
  if (!s.ok()) {
    spdlog::error("memory bank {}: index rebuild failed: {}", options_.data_dir, s.ToString());
    return;
  }
  index_suspect_ = false;
}

absl::Status BankImpl::PurgeFromDisk(std::string_view ns, const std::set<std::string_view>& ids,
                                     std::span<const uint64_t> pids) {
  // Flushing moves the deleted values and their tombstones out of the memtables (and lets the
  // WAL files that held them be deleted); a forced bottommost compaction of just the affected
  // key ranges then drops values and tombstones together.
  rocksdb::FlushOptions flush;
  flush.wait = true;
  // Every column family: a WAL file is deleted only once no memtable needs it any more.
  KNOWD_RETURN_IF_ERROR(FromRocks(db_->Flush(flush, handles_), "purge: flush"));
  const auto [min_pid, max_pid] = std::minmax_element(pids.begin(), pids.end());
  rocksdb::CompactRangeOptions compact;
  compact.bottommost_level_compaction = rocksdb::BottommostLevelCompaction::kForce;
  auto run = [&](rocksdb::ColumnFamilyHandle* cf, const std::string& lo, const std::string& hi) {
    rocksdb::Slice begin(lo), end(hi);
    return FromRocks(db_->CompactRange(compact, cf, &begin, &end), "purge: compaction");
  };
  KNOWD_RETURN_IF_ERROR(run(cf_passages_, DocKey(ns, *ids.begin()), DocKey(ns, *ids.rbegin())));
  KNOWD_RETURN_IF_ERROR(run(cf_passages_, PassageKey(*min_pid), PassageKey(*max_pid)));
  KNOWD_RETURN_IF_ERROR(run(cf_latents_, LatentKey(*min_pid), LatentKey(*max_pid)));
  KNOWD_RETURN_IF_ERROR(run(cf_keys_, KeyKey(ns, *min_pid), KeyKey(ns, *max_pid)));
  // The saved vector files still hold the forgotten keys; drop them (Close() writes new ones).
  std::error_code ec;
  std::filesystem::remove_all(index_dir_, ec);
  // The namespace's Xapian database may keep the forgotten passages' terms in the free space of
  // its files: build it afresh (beside the served one, then swapped in) so no file holds them.
  // A namespace left without documents has no database any more.
  if (options_.lexical_index && namespaces_.contains(ns)) {
    NamespaceMap scratch;
    scratch[std::string(ns)];
    KNOWD_RETURN_IF_ERROR(RebuildLexical(&scratch, ns, /*staged=*/true));
    std::unique_lock lock(index_mu_);
    absl::Status installed = InstallStagedLexical(&scratch);
    namespaces_.find(ns)->second.lexical = std::move(scratch.begin()->second.lexical);
    KNOWD_RETURN_IF_ERROR(installed);
  }
  return absl::OkStatus();
}

// ---- Markers ------------------------------------------------------------------------------

namespace {

absl::Status CheckMarkerName(std::string_view name) {
  if (name.empty() || name.size() > 128) {
    return absl::InvalidArgumentError(
        absl::StrCat("a marker name is 1-128 bytes, not ", name.size()));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::optional<std::string>> BankImpl::GetMarker(std::string_view name) {
  KNOWD_RETURN_IF_ERROR(CheckMarkerName(name));
  {
    std::lock_guard write(write_mu_);
    KNOWD_RETURN_IF_ERROR(CheckOpenLocked());
  }
  return GetMeta(absl::StrCat(kMetaMarkerPrefix, AbslView(name)));
}

absl::Status BankImpl::SetMarker(std::string_view name, std::string_view value) {
  KNOWD_RETURN_IF_ERROR(CheckMarkerName(name));
  std::lock_guard write(write_mu_);
  KNOWD_RETURN_IF_ERROR(CheckOpenLocked());
  rocksdb::WriteBatch wb;
  wb.Put(cf_meta_, absl::StrCat(kMetaMarkerPrefix, AbslView(name)),
         rocksdb::Slice(value.data(), value.size()));
  return CommitBatch(&wb, absl::StrCat("setting marker '", AbslView(name), "'"));
}

}  // namespace knowd::storage
