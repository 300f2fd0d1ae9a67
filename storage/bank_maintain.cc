// Snapshot / restore and the resumable re-encode driver.
#include <spdlog/spdlog.h>

#include <cmath>
#include <filesystem>
#include <shared_mutex>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "rocksdb/utilities/checkpoint.h"
#include "storage/bank_impl.h"
#include "storage/latent_codec.h"

namespace knowd::storage {
namespace {

namespace fs = std::filesystem;

struct ReencodeCursor {
  uint64_t last_pid = 0;  // every passage with id <= last_pid is re-encoded
  uint64_t done = 0;
};

std::string EncodeCursor(const ReencodeCursor& c) {
  return EncodeU64(c.last_pid) + EncodeU64(c.done);
}

absl::StatusOr<ReencodeCursor> DecodeCursor(std::string_view bytes) {
  if (bytes.size() != 16) return absl::DataLossError("corrupt re-encode cursor");
  auto last = DecodeU64(bytes.substr(0, 8));
  auto done = DecodeU64(bytes.substr(8));
  if (!last.ok() || !done.ok()) return absl::DataLossError("corrupt re-encode cursor");
  return ReencodeCursor{*last, *done};
}

}  // namespace

absl::Status BankImpl::Snapshot(const std::string& snapshot_dir) {
  std::lock_guard write(write_mu_);  // writers wait: RocksDB and the indexes stay in step
  std::shared_lock lock(index_mu_);
  KNOWD_RETURN_IF_ERROR(CheckOpenLocked());
  std::error_code ec;
  if (fs::exists(snapshot_dir, ec)) {
    return absl::AlreadyExistsError(
        absl::StrCat("snapshot directory ", snapshot_dir, " already exists; choose a new one"));
  }
  fs::create_directories(snapshot_dir, ec);
  if (ec) {
    return absl::InternalError(absl::StrCat("cannot create ", snapshot_dir, ": ", ec.message()));
  }
  rocksdb::Checkpoint* raw = nullptr;
  KNOWD_RETURN_IF_ERROR(
      FromRocks(rocksdb::Checkpoint::Create(db_.get(), &raw), "snapshot: checkpoint"));
  std::unique_ptr<rocksdb::Checkpoint> checkpoint(raw);
  uint64_t seqno = 0;
  // log_size_for_flush = 0: flush the memtables so the checkpoint needs no WAL replay.
  KNOWD_RETURN_IF_ERROR(
      FromRocks(checkpoint->CreateCheckpoint((fs::path(snapshot_dir) / "db").string(), 0, &seqno),
                "snapshot: checkpoint"));
  if (!index_suspect_) {
    KNOWD_RETURN_IF_ERROR(SaveIndexFiles((fs::path(snapshot_dir) / "index").string(), seqno));
  }
  return absl::OkStatus();
}

absl::Status MemoryBank::RestoreSnapshot(const std::string& snapshot_dir,
                                         const std::string& data_dir) {
  std::error_code ec;
  if (!fs::exists(fs::path(snapshot_dir) / "db" / "CURRENT", ec)) {
    return absl::NotFoundError(absl::StrCat(snapshot_dir, " is not a memory bank snapshot"));
  }
  if (fs::exists(data_dir, ec)) {
    return absl::AlreadyExistsError(absl::StrCat(
        "restore target ", data_dir, " already exists; move it away or choose another"));
  }
  const fs::path staging = fs::path(data_dir).string() + ".restoring";
  fs::remove_all(staging, ec);  // leftovers of an interrupted restore
  fs::copy(snapshot_dir, staging, fs::copy_options::recursive, ec);
  if (ec) {
    return absl::InternalError(absl::StrCat("copying ", snapshot_dir, ": ", ec.message()));
  }
  fs::rename(staging, data_dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("renaming into ", data_dir, ": ", ec.message()));
  return absl::OkStatus();
}

absl::Status BankImpl::Reencode(const PassageEncoder& encoder, const ReencodeProgress& progress,
                                int batch_size) {
  if (options_.fingerprint.empty()) {
    return absl::InvalidArgumentError("Reencode needs BankOptions::fingerprint (the new encoder)");
  }
  if (batch_size < 1) return absl::InvalidArgumentError("batch_size must be positive");
  std::lock_guard write(write_mu_);
  KNOWD_RETURN_IF_ERROR(CheckOpenLocked());
  const Fingerprint& target = options_.fingerprint;
  const std::string target_bytes =
      EncodeFingerprint({target.adapter_hash, target.base_model_hash, target.key_hash});
  // Latents made by the same adapter on the same base are current: only the keys change.
  const bool keys_only = !fingerprint_.empty() &&
                         fingerprint_.adapter_hash == target.adapter_hash &&
                         fingerprint_.base_model_hash == target.base_model_hash;

  // Resume only a run towards the same target; any other recorded run starts over.
  ReencodeCursor cursor;
  KNOWD_ASSIGN_OR_RETURN(auto pending, GetMeta(kMetaReencodeTarget));
  if (pending.has_value() && *pending == target_bytes) {
    KNOWD_ASSIGN_OR_RETURN(auto stored, GetMeta(kMetaReencodeCursor));
    if (stored.has_value()) {
      KNOWD_ASSIGN_OR_RETURN(cursor, DecodeCursor(*stored));
    }
  } else {
    rocksdb::WriteBatch start;
    start.Put(cf_meta_, kMetaReencodeTarget, target_bytes);
    start.Put(cf_meta_, kMetaReencodeCursor, EncodeCursor(cursor));
    KNOWD_RETURN_IF_ERROR(
        FromRocks(db_->Write(SyncWrite(), &start), "re-encode: recording the target"));
    std::unique_lock lock(index_mu_);
    needs_reencode_ = true;  // latents are about to be mixed
  }
  // The in-memory vector indexes hold the old keys until the final rebuild; never save them.
  index_suspect_ = true;
  uint64_t total = 0;
  for (const auto& [name, ns] : namespaces_) total += ns.counts.passages;
  spdlog::info("memory bank {}: re-encoding the {} of {} passages ({} already done)",
               options_.data_dir, keys_only ? "keys" : "latents and keys", total, cursor.done);

  rocksdb::ReadOptions read;
  read.fill_cache = false;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(read, cf_passages_));
  it->Seek(PassageKey(cursor.last_pid + 1));
  const size_t latent_size = static_cast<size_t>(options_.latent_rows) * options_.latent_cols;
  while (true) {
    std::vector<uint64_t> pids;
    std::vector<PassageRecord> records;
    for (; it->Valid() && it->key().starts_with("p") && static_cast<int>(pids.size()) < batch_size;
         it->Next()) {
      auto pid = PidFromPassageKey(it->key().ToStringView());
      auto record = DecodePassage(it->value().ToStringView());
      if (!pid.has_value() || !record.ok()) return absl::DataLossError("malformed passage entry");
      pids.push_back(*pid);
      records.push_back(std::move(*record));
    }
    KNOWD_RETURN_IF_ERROR(FromRocks(it->status(), "re-encode: reading passages"));
    if (pids.empty()) break;
    // Each passage's encoder input: the tail of the passage before it (ids of a document's
    // passages are consecutive), then its own text.
    std::vector<std::string> inputs;
    for (size_t i = 0; i < records.size(); ++i) {
      const PassageRecord& r = records[i];
      std::string input;
      if (r.context_bytes > 0 && r.index > 0) {
        std::string before;
        if (i > 0 && pids[i - 1] + 1 == pids[i]) {
          before = records[i - 1].text;
        } else {
          std::string value;
          KNOWD_RETURN_IF_ERROR(
              FromRocks(db_->Get(read, cf_passages_, PassageKey(pids[i] - 1), &value),
                        "re-encode: reading the passage before"));
          KNOWD_ASSIGN_OR_RETURN(auto previous, DecodePassage(value));
          before = std::move(previous.text);
        }
        const size_t n = std::min<size_t>(r.context_bytes, before.size());
        input = before.substr(before.size() - n);
      }
      input += r.text;
      inputs.push_back(std::move(input));
    }
    std::vector<std::string_view> texts(inputs.begin(), inputs.end());
    std::vector<EncodedPassage> encoded;
    KNOWD_RETURN_IF_ERROR(encoder(texts, &encoded));
    if (encoded.size() != texts.size()) {
      return absl::InternalError(absl::StrCat("re-encode: the encoder returned ", encoded.size(),
                                              " results for ", texts.size(), " passages"));
    }
    rocksdb::WriteBatch wb;
    for (size_t i = 0; i < pids.size(); ++i) {
      const EncodedPassage& e = encoded[i];
      bool key_ok = e.key.size() == static_cast<size_t>(options_.key_dim);
      for (size_t j = 0; key_ok && j < e.key.size(); ++j) key_ok = std::isfinite(e.key[j]);
      if (e.latents.size() != latent_size || !key_ok ||
          !CheckLatentsEncodable(e.latents, options_.latent_format).ok()) {
        return absl::InternalError(absl::StrCat("re-encode: the encoder's output for passage ",
                                                pids[i], " has the wrong shape or bad values"));
      }
      if (!keys_only) {
        wb.Put(cf_latents_, LatentKey(pids[i]),
               EncodeLatents(e.latents, options_.latent_rows, options_.latent_cols,
                             options_.latent_format));
      }
      wb.Put(cf_keys_, KeyKey(records[i].ns, pids[i]),
             EncodeKeyVector(e.key.data(), options_.key_dim));
    }
    cursor.last_pid = pids.back();
    cursor.done += pids.size();
    wb.Put(cf_meta_, kMetaReencodeCursor, EncodeCursor(cursor));
    KNOWD_RETURN_IF_ERROR(FromRocks(db_->Write(SyncWrite(), &wb), "re-encode: writing"));
    {
      std::unique_lock lock(index_mu_);
      cache_.Erase(pids);
    }
    if (progress) progress(cursor.done, total);
  }

  rocksdb::WriteBatch finish;
  finish.Put(cf_meta_, kMetaFingerprint, target_bytes);
  finish.Delete(cf_meta_, kMetaReencodeTarget);
  finish.Delete(cf_meta_, kMetaReencodeCursor);
  KNOWD_RETURN_IF_ERROR(
      FromRocks(db_->Write(SyncWrite(), &finish), "re-encode: recording the new fingerprint"));
  // Every key changed: rebuild the vector indexes wholesale rather than per batch.
  NamespaceMap fresh;
  KNOWD_RETURN_IF_ERROR(LoadCounts(&fresh));
  KNOWD_RETURN_IF_ERROR(RebuildVectors(&fresh));
  std::unique_lock lock(index_mu_);
  for (auto& [name, ns] : namespaces_) {
    ns.vectors = std::move(fresh[name].vectors);
  }
  cache_.Clear();
  fingerprint_ = target;
  needs_reencode_ = false;
  index_suspect_ = false;
  spdlog::info("memory bank {}: re-encode complete", options_.data_dir);
  return absl::OkStatus();
}

}  // namespace knowd::storage
