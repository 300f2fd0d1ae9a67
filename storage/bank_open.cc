// Open, validation of what the bank records, index load-or-rebuild, Close.
#include <spdlog/spdlog.h>

#include <cstdarg>
#include <cstdio>
#include <filesystem>
#include <set>
#include <shared_mutex>
#include <string_view>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "storage/bank_impl.h"

namespace knowd::storage {
namespace {

namespace fs = std::filesystem;

absl::Status ValidateOptions(const BankOptions& o) {
  auto bad = [](std::string_view what) {
    return absl::InvalidArgumentError(absl::StrCat("memory bank options: ", AbslView(what)));
  };
  if (o.data_dir.empty()) return bad("data_dir is empty");
  if (o.key_dim <= 0 || o.key_dim > 65536) return bad("key_dim must be in [1, 65536]");
  if (o.latent_rows <= 0 || o.latent_cols <= 0 ||
      static_cast<int64_t>(o.latent_rows) * o.latent_cols > (1 << 24)) {
    return bad("latent_rows and latent_cols must be positive with rows*cols <= 2^24");
  }
  if (o.metric != Metric::kInnerProduct && o.metric != Metric::kL2) return bad("unknown metric");
  if (o.latent_format != LatentFormat::kFp16 && o.latent_format != LatentFormat::kInt8) {
    return bad("unknown latent format");
  }
  if (o.index_factory.empty()) return bad("index_factory is empty");
  if (o.index_train_min < 1) return bad("index_train_min must be >= 1");
  return absl::OkStatus();
}

std::string Describe(const Fingerprint& f) {
  return absl::StrCat("adapter '", f.adapter_hash, "' on base model '", f.base_model_hash, "'",
                      f.key_hash.empty() ? std::string(" (the readout's keys)")
                                         : absl::StrCat(" with retrieval keys '", f.key_hash, "'"));
}

FingerprintRecord ToRecord(const Fingerprint& f) {
  return {f.adapter_hash, f.base_model_hash, f.key_hash};
}
Fingerprint FromRecord(const FingerprintRecord& r) {
  return {r.adapter_hash, r.base_model_hash, r.key_hash};
}

}  // namespace

absl::Status FromRocks(const rocksdb::Status& s, std::string_view context) {
  if (s.ok()) return absl::OkStatus();
  const std::string msg = absl::StrCat(AbslView(context), ": ", s.ToString());
  if (s.IsNoSpace()) return absl::ResourceExhaustedError(absl::StrCat(msg, " (the disk is full)"));
  if (s.IsCorruption()) return absl::DataLossError(msg);
  if (s.IsNotFound()) return absl::NotFoundError(msg);
  if (s.IsInvalidArgument()) return absl::InvalidArgumentError(msg);
  return absl::InternalError(msg);
}

absl::Status ValidateNamespace(std::string_view ns) {
  if (ns.empty() || ns.size() > kMaxNamespaceBytes || ns.find('\0') != std::string_view::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("namespace must be 1..", kMaxNamespaceBytes, " bytes without NUL"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<MemoryBank>> MemoryBank::Open(const BankOptions& options) {
  return BankImpl::OpenImpl(options);
}

BankImpl::BankImpl(const BankOptions& options)
    : options_(options),
      db_dir_((fs::path(options.data_dir) / "db").string()),
      index_dir_((fs::path(options.data_dir) / "index").string()),
      lexical_dir_((fs::path(options.data_dir) / "lexical").string()),
      cache_(options.latent_cache_bytes) {
  closed_ = true;  // until OpenImpl() completes; the destructor must not save half-built state
}

BankImpl::~BankImpl() {
  if (absl::Status s = Close(); !s.ok()) {
    spdlog::error("memory bank {}: close failed: {}", options_.data_dir, s.ToString());
  }
}

absl::StatusOr<std::unique_ptr<MemoryBank>> BankImpl::OpenImpl(const BankOptions& options) {
  KNOWD_RETURN_IF_ERROR(ValidateOptions(options));
  const absl::Time start = absl::Now();
  std::unique_ptr<BankImpl> bank(new BankImpl(options));
  KNOWD_RETURN_IF_ERROR(bank->OpenDatabase());
  KNOWD_RETURN_IF_ERROR(bank->CheckLayout());
  KNOWD_RETURN_IF_ERROR(bank->CheckFingerprint());
  // Read after the (creation-only) writes above: the index files must match this number.
  KNOWD_RETURN_IF_ERROR(bank->BuildIndexes(bank->db_->GetLatestSequenceNumber()));
  bank->open_time_ = absl::Now() - start;
  bank->closed_ = false;
  // Expired sessions are gone for every call already; this removes their records.
  if (absl::StatusOr<int> swept = bank->SweepSessions(absl::Now()); !swept.ok()) {
    return swept.status();
  } else if (*swept > 0) {
    spdlog::info("memory bank {}: removed {} expired sessions", options.data_dir, *swept);
  }
  return std::unique_ptr<MemoryBank>(std::move(bank));
}

namespace {

// Keeps what RocksDB says about the records it drops while replaying a write-ahead log
// ("<file>: dropping N bytes; Corruption: ...").
class RecoveryLog : public rocksdb::Logger {
 public:
  RecoveryLog() : rocksdb::Logger(rocksdb::InfoLogLevel::WARN_LEVEL) {}
  using rocksdb::Logger::Logv;
  void Logv(const char* format, va_list ap) override {
    char line[1024];
    std::vsnprintf(line, sizeof(line), format, ap);
    // "[WARN] [db/db_impl/db_impl_open.cc:982] <file>: dropping N bytes; ...": keep from <file>.
    std::string_view text(line);
    if (text.find("dropping") == std::string_view::npos) return;
    if (const size_t source = text.find("] /"); source != std::string_view::npos) {
      text.remove_prefix(source + 2);
    }
    lines_.emplace_back(text);
  }
  const std::vector<std::string>& lines() const { return lines_; }

 private:
  std::vector<std::string> lines_;
};

}  // namespace

std::string BankImpl::ProbeWriteAheadLog(
    const rocksdb::DBOptions& db_options,
    const std::vector<rocksdb::ColumnFamilyDescriptor>& descriptors) const {
  // Point-in-time recovery silently stops at the first damaged record; a WAL cut short (a
  // truncated file, a disk that lost its tail) then loses acknowledged writes without a word.
  // Replaying the WAL once more, read-only and strictly, tells whether anything will be skipped.
  // After a clean Close() there is no WAL to replay, so this costs nothing then.
  std::error_code ec;
  uintmax_t wal_bytes = 0;
  for (const auto& entry : fs::directory_iterator(db_dir_, ec)) {
    if (entry.path().extension() == ".log") wal_bytes += entry.file_size(ec);
  }
  if (ec || wal_bytes == 0) return "";
  rocksdb::DBOptions strict = db_options;
  strict.wal_recovery_mode = rocksdb::WALRecoveryMode::kAbsoluteConsistency;
  strict.create_if_missing = false;
  auto log = std::make_shared<RecoveryLog>();
  strict.info_log = log;
  std::vector<rocksdb::ColumnFamilyHandle*> handles;
  rocksdb::DB* raw = nullptr;
  rocksdb::Status s = rocksdb::DB::OpenForReadOnly(strict, db_dir_, descriptors, &handles, &raw);
  if (s.ok()) {
    for (rocksdb::ColumnFamilyHandle* h : handles) raw->DestroyColumnFamilyHandle(h);
    delete raw;
    return "";
  }
  if (!s.IsCorruption()) return "";  // not a damaged log; the real open reports it
  std::string warning =
      absl::StrCat("the write-ahead log is damaged (", s.ToString(),
                   "); recovery keeps every write before the damage and skips the rest");
  for (const std::string& line : log->lines()) absl::StrAppend(&warning, "; ", line);
  absl::StrAppend(&warning,
                  ". Writes acknowledged after the damaged point are lost: re-ingest documents "
                  "acknowledged just before the crash, or restore a snapshot");
  return warning;
}

absl::Status BankImpl::OpenDatabase() {
  std::error_code ec;
  if (!fs::exists(fs::path(db_dir_) / "CURRENT", ec)) {
    if (!options_.create_if_missing) {
      return absl::NotFoundError(absl::StrCat("no memory bank at ", options_.data_dir));
    }
    fs::create_directories(db_dir_, ec);
    if (ec) {
      return absl::InternalError(absl::StrCat("cannot create ", db_dir_, ": ", ec.message()));
    }
  }
  rocksdb::DBOptions db_options;
  if (options_.env != nullptr) db_options.env = options_.env.get();
  db_options.create_if_missing = options_.create_if_missing;
  db_options.create_missing_column_families = true;
  db_options.IncreaseParallelism(2);
  db_options.keep_log_file_num = 4;
  // Bounded memory under a steady write load: RocksDB's defaults give each of the five column
  // families a 64 MiB memtable and never force a flush, so a daemon that only ingests and forgets
  // grows by every byte written (a 10-minute soak: +113% resident memory, a 75 MB WAL and no
  // SST). All memtables together stay under 16 MiB, and a WAL past 64 MiB flushes the column
  // families that pin it.
  db_options.db_write_buffer_size = 16 << 20;
  db_options.max_total_wal_size = 64 << 20;
  // Point-in-time recovery (the default) drops a torn WAL tail from a crash mid-write; every
  // acknowledged batch precedes it because each was synced before Put() returned.
  db_options.wal_recovery_mode = rocksdb::WALRecoveryMode::kPointInTimeRecovery;

  rocksdb::ColumnFamilyOptions text_cf;  // default compression: text compresses well
  text_cf.write_buffer_size = 8 << 20;
  rocksdb::ColumnFamilyOptions vector_cf;
  vector_cf.write_buffer_size = 8 << 20;
  vector_cf.compression = rocksdb::kNoCompression;  // quantized floats do not
  std::vector<rocksdb::ColumnFamilyDescriptor> descriptors = {
      {rocksdb::kDefaultColumnFamilyName, text_cf},
      {kCfPassages, text_cf},
      {kCfLatents, vector_cf},
      {kCfKeys, vector_cf},
      {kCfMeta, text_cf},
      {kCfSessions, vector_cf}};
  recovery_warning_ = ProbeWriteAheadLog(db_options, descriptors);
  if (!recovery_warning_.empty()) {
    spdlog::error("memory bank {}: {}", options_.data_dir, recovery_warning_);
  }
  rocksdb::DB* raw = nullptr;
  rocksdb::Status s = rocksdb::DB::Open(db_options, db_dir_, descriptors, &handles_, &raw);
  if (!s.ok()) {
    if (s.IsIOError() && s.ToString().find("lock") != std::string::npos) {
      return absl::UnavailableError(absl::StrCat(
          "memory bank ", options_.data_dir, " is in use by another process (", s.ToString(), ")"));
    }
    return FromRocks(s, absl::StrCat("opening memory bank ", options_.data_dir));
  }
  db_.reset(raw);
  cf_passages_ = handles_[1];
  cf_latents_ = handles_[2];
  cf_keys_ = handles_[3];
  cf_meta_ = handles_[4];
  cf_sessions_ = handles_[5];
  return absl::OkStatus();
}

absl::StatusOr<std::optional<std::string>> BankImpl::GetMeta(std::string_view key) {
  std::string value;
  rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), cf_meta_, key, &value);
  if (s.IsNotFound()) return std::optional<std::string>();
  KNOWD_RETURN_IF_ERROR(FromRocks(s, absl::StrCat("reading meta '", AbslView(key), "'")));
  return std::optional<std::string>(std::move(value));
}

absl::Status BankImpl::CommitBatch(rocksdb::WriteBatch* wb, std::string_view what) {
  auto error = [&](const rocksdb::Status& s) {
    if (!s.IsNoSpace()) {
      return FromRocks(s, absl::StrCat(AbslView(what), " in memory bank ", options_.data_dir));
    }
    return absl::ResourceExhaustedError(absl::StrCat(
        AbslView(what), " failed: the disk holding memory bank ", options_.data_dir, " is full (",
        s.ToString(),
        "); nothing of this write was stored and every acknowledged write is safe; free space "
        "on that disk and retry: writes resume without a restart"));
  };
  if (!write_error_.ok()) {
    // After a failed write RocksDB refuses writes until it recovers: Resume() flushes the
    // memtables and starts a fresh WAL, and fails while the disk is still full. Busy: RocksDB's
    // own recovery of a full disk is under way (it retries every few seconds once the disk
    // reports free space), and writes work again once it succeeds.
    rocksdb::Status s = db_->Resume();
    if (s.IsBusy()) {
      return absl::Status(write_error_.code(),
                          absl::StrCat(write_error_.message(), " (recovery in progress)"));
    }
    if (!s.ok()) return write_error_ = error(s);
    spdlog::info("memory bank {}: writes resumed", options_.data_dir);
    write_error_ = absl::OkStatus();
  }
  rocksdb::Status s = db_->Write(SyncWrite(), wb);
  if (!s.ok()) {
    spdlog::error("memory bank {}: {}: {}", options_.data_dir, what, s.ToString());
    return write_error_ = error(s);
  }
  return absl::OkStatus();
}

rocksdb::FileSystem& BankImpl::IndexFileSystem() const {
  return options_.env != nullptr ? *options_.env->GetFileSystem() : *rocksdb::FileSystem::Default();
}

rocksdb::WriteOptions BankImpl::SyncWrite() const {
  rocksdb::WriteOptions w;
  w.sync = true;
  return w;
}

absl::Status BankImpl::CheckLayout() {
  LayoutRecord want{
      static_cast<uint32_t>(options_.key_dim), static_cast<uint32_t>(options_.latent_rows),
      static_cast<uint32_t>(options_.latent_cols), static_cast<uint8_t>(options_.metric)};
  KNOWD_ASSIGN_OR_RETURN(auto stored, GetMeta(kMetaLayout));
  if (!stored.has_value()) {
    // A new bank: record what it is, once, atomically.
    rocksdb::WriteBatch batch;
    batch.Put(cf_meta_, kMetaLayout, EncodeLayout(want));
    batch.Put(cf_meta_, kMetaNextPassageId, EncodeU64(1));
    batch.Put(cf_meta_, kMetaFingerprint, EncodeFingerprint(ToRecord(options_.fingerprint)));
    next_pid_ = 1;
    return FromRocks(db_->Write(SyncWrite(), &batch), "initializing memory bank");
  }
  KNOWD_ASSIGN_OR_RETURN(auto have, DecodeLayout(*stored));
  auto mismatch = [&](std::string_view what, uint64_t was, uint64_t asked) {
    return absl::FailedPreconditionError(absl::StrCat(
        "memory bank ", options_.data_dir, " was created with ", AbslView(what), " ", was,
        " but the options ask for ", asked, "; use a new data directory or the original settings"));
  };
  if (have.key_dim != want.key_dim) return mismatch("key_dim", have.key_dim, want.key_dim);
  if (have.latent_rows != want.latent_rows) {
    return mismatch("latent_rows", have.latent_rows, want.latent_rows);
  }
  if (have.latent_cols != want.latent_cols) {
    return mismatch("latent_cols", have.latent_cols, want.latent_cols);
  }
  if (have.metric != want.metric) return mismatch("metric", have.metric, want.metric);
  KNOWD_ASSIGN_OR_RETURN(auto next, GetMeta(kMetaNextPassageId));
  if (!next.has_value()) return absl::DataLossError("memory bank meta lacks the id counter");
  KNOWD_ASSIGN_OR_RETURN(next_pid_, DecodeU64(*next));
  return absl::OkStatus();
}

absl::Status BankImpl::CheckFingerprint() {
  auto stored = GetMeta(kMetaFingerprint);
  if (!stored.ok()) return stored.status();
  if (stored->has_value()) {
    KNOWD_ASSIGN_OR_RETURN(auto f, DecodeFingerprint(**stored));
    fingerprint_ = FromRecord(f);
  }
  KNOWD_ASSIGN_OR_RETURN(auto pending, GetMeta(kMetaReencodeTarget));
  if (options_.fingerprint.empty()) return absl::OkStatus();  // caller does not encode
  if (!pending.has_value() && fingerprint_ == options_.fingerprint) return absl::OkStatus();

  std::string why;
  if (pending.has_value()) {
    KNOWD_ASSIGN_OR_RETURN(auto target, DecodeFingerprint(*pending));
    why = absl::StrCat("memory bank ", options_.data_dir, " has an interrupted re-encode to ",
                       Describe(FromRecord(target)),
                       " (its latents are mixed); finish it with `knowd reencode --data-dir ",
                       options_.data_dir, "`, which resumes where it stopped");
  } else if (fingerprint_.adapter_hash == options_.fingerprint.adapter_hash &&
             fingerprint_.base_model_hash == options_.fingerprint.base_model_hash) {
    why = absl::StrCat("memory bank ", options_.data_dir, "'s retrieval keys were made by ",
                       Describe(fingerprint_), " but this process uses ",
                       Describe(options_.fingerprint),
                       "; its latents are current: re-encode the keys alone with `knowd reencode "
                       "--keys-only --data-dir ",
                       options_.data_dir, "`, or run with the adapter that encoded it");
  } else {
    why = absl::StrCat("memory bank ", options_.data_dir, " was encoded with ",
                       Describe(fingerprint_), " but this process uses ",
                       Describe(options_.fingerprint),
                       "; re-encode it from the stored text with `knowd reencode --data-dir ",
                       options_.data_dir, "`, or run with the adapter that encoded it");
  }
  if (!options_.open_for_reencode) return absl::FailedPreconditionError(why);
  spdlog::warn("{}; opened for re-encoding", why);
  needs_reencode_ = true;
  return absl::OkStatus();
}

absl::Status BankImpl::LoadCounts(NamespaceMap* namespaces) {
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions(), cf_meta_));
  const std::string_view prefix = kMetaNamespacePrefix;
  for (it->Seek(prefix); it->Valid() && it->key().starts_with(prefix); it->Next()) {
    auto counts = DecodeCounts(it->value().ToStringView());
    if (!counts.ok()) return counts.status();
    (*namespaces)[it->key().ToString().substr(prefix.size())].counts = *counts;
  }
  return FromRocks(it->status(), "reading namespace counts");
}

VectorIndexConfig BankImpl::VectorConfig() const {
  return {options_.key_dim, options_.metric, options_.index_factory, options_.index_search_params,
          options_.index_train_min};
}

absl::Status BankImpl::BuildIndexes(uint64_t seqno) {
  // Refuse a bad factory string or parameter now rather than at the first Put().
  if (auto probe = VectorIndex::Build(VectorConfig(), {}, {}); !probe.ok()) return probe.status();
  NamespaceMap fresh;
  KNOWD_RETURN_IF_ERROR(LoadCounts(&fresh));
  absl::Status loaded = LoadIndexFiles(index_dir_, seqno, &fresh);
  indexes_loaded_ = loaded.ok();
  if (!loaded.ok()) {
    rebuild_reason_ = std::string(loaded.message());
    if (!fresh.empty())
      spdlog::info("memory bank {}: rebuilding vector indexes ({})", options_.data_dir,
                   rebuild_reason_);
    for (auto& [name, ns] : fresh) ns.vectors.reset();  // drop any partly loaded state
    KNOWD_RETURN_IF_ERROR(RebuildVectors(&fresh));
  }
  // Off, the lexical directory is left as it is: any write from now on makes it stale, and the
  // next open with the lexical index on then rebuilds it.
  if (options_.lexical_index) KNOWD_RETURN_IF_ERROR(OpenLexical(&fresh, seqno));
  namespaces_ = std::move(fresh);
  return absl::OkStatus();
}

std::string BankImpl::LexicalDir(std::string_view name_space) const {
  constexpr size_t kComponent = 200;
  const std::string hex = absl::BytesToHexString(AbslView(name_space));
  fs::path dir(lexical_dir_);
  for (size_t at = 0; at < hex.size(); at += kComponent) {
    const bool last = at + kComponent >= hex.size();
    dir /= last ? hex.substr(at) : hex.substr(at, kComponent) + "+";
  }
  return dir.string();
}

namespace {

// Removes everything under `dir` that is not one of `keep` (or a '+' directory on the way to
// one; see LexicalDir()), and '+' directories left empty.
void PruneLexicalDirs(const fs::path& dir, const std::set<std::string>& keep) {
  std::error_code ec;
  std::vector<fs::path> entries;
  for (const auto& entry : fs::directory_iterator(dir, ec)) entries.push_back(entry.path());
  for (const fs::path& path : entries) {
    if (keep.count(path.string())) continue;
    if (path.filename().string().ends_with('+') && fs::is_directory(path, ec)) {
      PruneLexicalDirs(path, keep);
      if (fs::is_empty(path, ec)) fs::remove(path, ec);
    } else {
      fs::remove_all(path, ec);
    }
  }
}

}  // namespace

absl::Status BankImpl::OpenLexical(NamespaceMap* namespaces, uint64_t seqno) {
  // The rule of the vector index files (index_files.cc): a namespace's Xapian database is loaded
  // only when Close() committed it at the sequence number the database is at now. Xapian also
  // commits on its own every so many changes; such a commit records no sequence number (see
  // LexicalIndex::Load), so after a crash the database is rebuilt, never served stale.
  std::set<std::string> keep;
  for (const auto& [name, ns] : *namespaces) keep.insert(LexicalDir(name));
  PruneLexicalDirs(lexical_dir_, keep);
  size_t rebuild = 0;
  lexical_rebuild_reason_.clear();
  for (auto& [name, ns] : *namespaces) {
    auto loaded = LexicalIndex::Load(LexicalDir(name), seqno, ns.counts.passages);
    if (loaded.ok()) {
      ns.lexical = std::move(*loaded);
    } else if (rebuild++ == 0) {
      lexical_rebuild_reason_ =
          absl::StrCat("namespace '", absl::CHexEscape(name), "': ", loaded.status().message());
    }
  }
  lexical_loaded_ = rebuild == 0;
  if (rebuild == 0) return absl::OkStatus();
  spdlog::info("memory bank {}: rebuilding the lexical indexes of {} of {} namespaces ({})",
               options_.data_dir, rebuild, namespaces->size(), lexical_rebuild_reason_);
  return RebuildLexical(namespaces);
}

absl::Status BankImpl::InstallStagedLexical(NamespaceMap* fresh) {
  absl::Status first = absl::OkStatus();
  for (auto& [name, ns] : *fresh) {
    if (ns.lexical == nullptr) continue;
    if (auto served = namespaces_.find(name); served != namespaces_.end()) {
      served->second.lexical.reset();  // closes its database
    }
    absl::Status moved = ns.lexical->MoveTo(LexicalDir(name));
    if (first.ok()) first = moved;
  }
  return first;
}

absl::Status BankImpl::CommitLexical(uint64_t seqno) {
  for (const auto& [name, ns] : namespaces_) {
    if (ns.lexical != nullptr) KNOWD_RETURN_IF_ERROR(ns.lexical->Commit(seqno));
  }
  return absl::OkStatus();
}

absl::Status BankImpl::RebuildVectors(NamespaceMap* namespaces, std::string_view only) {
  const VectorIndexConfig config = VectorConfig();
  const int dim = options_.key_dim;
  std::string current;
  std::vector<uint64_t> ids;
  std::vector<float> vectors;
  auto flush = [&]() -> absl::Status {
    if (!current.empty() || !ids.empty()) {
      KNOWD_ASSIGN_OR_RETURN(auto index, VectorIndex::Build(config, ids, vectors));
      (*namespaces)[current].vectors = std::move(index);
    }
    ids.clear();
    vectors.clear();
    return absl::OkStatus();
  };
  rocksdb::ReadOptions read;
  read.fill_cache = false;  // one sequential pass; do not evict the hot set
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(read, cf_keys_));
  const std::string prefix = only.empty() ? std::string() : KeyPrefix(only);
  for (it->Seek(prefix); it->Valid() && it->key().starts_with(prefix); it->Next()) {
    const std::string_view key = it->key().ToStringView();
    auto pid = PidFromKeySuffix(key);
    if (!pid.has_value()) return absl::DataLossError("malformed entry in the keys column family");
    const std::string_view ns = key.substr(0, key.size() - 9);
    if (ns != current) {
      KNOWD_RETURN_IF_ERROR(flush());
      current = std::string(ns);
    }
    ids.push_back(*pid);
    vectors.resize(vectors.size() + dim);
    KNOWD_RETURN_IF_ERROR(
        DecodeKeyVector(it->value().ToStringView(), dim, vectors.data() + vectors.size() - dim));
  }
  KNOWD_RETURN_IF_ERROR(FromRocks(it->status(), "reading the keys column family"));
  if (!current.empty()) KNOWD_RETURN_IF_ERROR(flush());
  // Namespaces with no keys at all still get an (empty) index.
  for (auto& [name, ns] : *namespaces) {
    if ((only.empty() || name == only) && ns.vectors == nullptr) {
      KNOWD_ASSIGN_OR_RETURN(ns.vectors, VectorIndex::Build(config, {}, {}));
    }
  }
  return absl::OkStatus();
}

absl::Status BankImpl::RebuildLexical(NamespaceMap* namespaces, std::string_view only,
                                      bool staged) {
  std::set<std::string, std::less<>> building;
  for (auto& [name, ns] : *namespaces) {
    if (ns.lexical != nullptr || (!only.empty() && name != only)) continue;
    std::string dir = LexicalDir(name);
    if (staged) dir += ".new";
    KNOWD_ASSIGN_OR_RETURN(ns.lexical, LexicalIndex::Create(dir));
    building.insert(name);
  }
  if (building.empty()) return absl::OkStatus();
  rocksdb::ReadOptions read;
  read.fill_cache = false;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(read, cf_passages_));
  for (it->Seek("p"); it->Valid() && it->key().starts_with("p"); it->Next()) {
    auto pid = PidFromPassageKey(it->key().ToStringView());
    auto passage = DecodePassage(it->value().ToStringView());
    if (!pid.has_value() || !passage.ok()) {
      return absl::DataLossError("malformed entry in the passages column family");
    }
    if (!only.empty() && passage->ns != only) continue;
    auto ns = namespaces->find(passage->ns);
    if (ns == namespaces->end() || ns->second.lexical == nullptr) {
      return absl::DataLossError(absl::StrCat("passage ", *pid, " names namespace '", passage->ns,
                                              "' which has no recorded counts"));
    }
    if (!building.contains(passage->ns)) continue;  // loaded from disk
    KNOWD_RETURN_IF_ERROR(ns->second.lexical->Add(*pid, passage->text));
  }
  return FromRocks(it->status(), "reading the passages column family");
}

absl::Status BankImpl::RebuildIfNeeded(std::span<const std::string> touched) {
  for (const std::string& name : touched) {
    bool vectors = false;
    {
      std::shared_lock lock(index_mu_);
      auto it = namespaces_.find(name);
      if (it == namespaces_.end()) continue;
      vectors = it->second.vectors->NeedsRebuild();
    }
    // write_mu_ is held, so the column families cannot change while we read them unlocked.
    if (vectors) {
      NamespaceMap scratch;
      scratch[name];
      KNOWD_RETURN_IF_ERROR(RebuildVectors(&scratch, name));
      std::unique_lock lock(index_mu_);
      namespaces_[name].vectors = std::move(scratch[name].vectors);
    }
  }
  return absl::OkStatus();
}

absl::Status BankImpl::CheckOpenLocked() const {
  if (closed_) return absl::FailedPreconditionError("memory bank is closed");
  return absl::OkStatus();
}

absl::Status BankImpl::Close() {
  std::lock_guard write(write_mu_);
  absl::Status saved = absl::OkStatus();
  {
    std::shared_lock lock(index_mu_);
    if (db_ != nullptr && !closed_) {
      if (index_suspect_) {
        // Never persist indexes that may disagree with RocksDB; the next Open() rebuilds. The
        // lexical indexes record no sequence number then (none was committed with one since
        // they were loaded or built), so they are rebuilt too.
        std::error_code ec;
        fs::remove(fs::path(index_dir_) / "MANIFEST", ec);
      } else {
        const uint64_t seqno = db_->GetLatestSequenceNumber();
        saved = SaveIndexFiles(index_dir_, seqno);
        absl::Status committed = CommitLexical(seqno);
        if (saved.ok()) saved = committed;
      }
    }
  }
  {
    std::unique_lock lock(index_mu_);
    closed_ = true;
    namespaces_.clear();
  }
  cache_.Clear();
  if (db_ == nullptr) return saved;
  if (!handles_.empty()) {
    // Flush so the next Open() has no WAL to replay; the data is durable either way.
    rocksdb::FlushOptions flush;
    flush.wait = true;
    if (rocksdb::Status s = db_->Flush(flush, handles_); !s.ok()) {
      spdlog::warn("memory bank {}: flush at close failed: {}", options_.data_dir, s.ToString());
    }
  }
  for (rocksdb::ColumnFamilyHandle* handle : handles_) db_->DestroyColumnFamilyHandle(handle);
  handles_.clear();
  rocksdb::Status s = db_->Close();
  db_.reset();
  if (!saved.ok()) return saved;
  return FromRocks(s, "closing memory bank");
}

}  // namespace knowd::storage
