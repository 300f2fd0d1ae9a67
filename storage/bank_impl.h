// The MemoryBank implementation (private to storage/). Split by concern:
//   bank_open.cc     Open, layout/fingerprint checks, index load/rebuild, Close
//   bank_write.cc    Put, Delete
//   bank_read.cc     Get, Search, GetLatents, Scan, Stats, VerifyIndexes
//   bank_maintain.cc Snapshot, RestoreSnapshot, Reencode
//   bank_sessions.cc the sessions column family (PutSession ... SweepSessions)
//   index_files.cc   the on-disk FAISS files and their manifest
//   (lexical_index.cc, one on-disk Xapian database per namespace: see bank_open.cc's
//   OpenLexical for when it is loaded or rebuilt)
//
// Locking (always in this order):
//   write_mu_  serializes writers (Put, Delete, Reencode, Snapshot, Close, index rebuilds).
//              Holding it freezes the RocksDB contents, so it also guards next_pid_.
//   index_mu_  guards namespaces_, the latent cache's coherence, closed_ and needs_reencode_.
//              Readers hold it shared for their whole call; writers take it exclusively only
//              to apply an already committed WriteBatch to the in-memory indexes.
// Invariant outside write_mu_: every namespace's VectorIndex (and LexicalIndex) holds exactly
// the passage ids of the "keys" column family under that namespace.
#pragma once

#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "base/status_macros.h"
#include "rocksdb/db.h"
#include "rocksdb/file_system.h"
#include "rocksdb/write_batch.h"
#include "storage/latent_cache.h"
#include "storage/lexical_index.h"
#include "storage/memory_bank.h"
#include "storage/records.h"
#include "storage/rw_mutex.h"
#include "storage/vector_index.h"

namespace knowd::storage {

// Limits on user-supplied names (see Document).
inline constexpr size_t kMaxNamespaceBytes = 255;
inline constexpr size_t kMaxDocIdBytes = 4096;
inline constexpr int kMaxSearchK = 4096;

// Maps a rocksdb::Status to an absl::Status with `context` prepended. A full disk (NoSpace)
// becomes RESOURCE_EXHAUSTED.
absl::Status FromRocks(const rocksdb::Status& s, std::string_view context);

// INVALID_ARGUMENT unless `ns` is a valid namespace name.
absl::Status ValidateNamespace(std::string_view ns);

class BankImpl final : public MemoryBank {
 public:
  static absl::StatusOr<std::unique_ptr<MemoryBank>> OpenImpl(const BankOptions& options);
  ~BankImpl() override;

  int key_dim() const override { return options_.key_dim; }
  absl::StatusOr<std::vector<DocumentAck>> Put(std::span<const Document> batch) override;
  absl::StatusOr<Document> Get(std::string_view name_space, std::string_view id,
                               bool with_latents) override;
  absl::StatusOr<int> Delete(std::string_view name_space, std::span<const std::string> ids,
                             bool purge) override;
  absl::StatusOr<std::vector<SearchHit>> Search(const SearchRequest& request,
                                                LexicalTerms* terms = nullptr) override;
  absl::StatusOr<std::vector<std::shared_ptr<const std::vector<float>>>> GetLatents(
      std::string_view name_space, std::span<const PassageId> ids) override;
  absl::StatusOr<ScanPage> Scan(std::string_view name_space, std::string_view start_after,
                                int limit) override;
  absl::StatusOr<BankStats> Stats() override;
  absl::Status VerifyIndexes() override;
  absl::Status Snapshot(const std::string& snapshot_dir) override;
  absl::Status Reencode(const PassageEncoder& encoder, const ReencodeProgress& progress,
                        int batch_size) override;
  absl::StatusOr<std::optional<std::string>> GetMarker(std::string_view name) override;
  absl::Status SetMarker(std::string_view name, std::string_view value) override;
  absl::Status PutSession(Session* session, absl::Time now) override;
  absl::StatusOr<Session> GetSession(std::string_view name_space, std::string_view id,
                                     absl::Time now) override;
  absl::Status DeleteSession(std::string_view name_space, std::string_view id,
                             absl::Time now) override;
  absl::StatusOr<std::vector<Session>> ListSessions(std::string_view name_space,
                                                    absl::Time now) override;
  absl::StatusOr<int> SweepSessions(absl::Time now) override;
  absl::StatusOr<SessionTotals> CountSessions(absl::Time now) override;
  absl::Status Close() override;

 private:
  struct Namespace {
    NamespaceCounts counts;
    std::unique_ptr<VectorIndex> vectors;
    std::unique_ptr<LexicalIndex> lexical;  // null when BankOptions::lexical_index is off
  };
  using NamespaceMap = std::map<std::string, Namespace, std::less<>>;

  // What one WriteBatch does to one namespace, applied to the in-memory state after commit.
  struct NamespaceDelta {
    NamespaceCounts counts;  // the namespace's counts after the batch
    std::vector<uint64_t> removed;
    std::vector<uint64_t> added;
    std::vector<float> vectors;             // added.size() × key_dim
    std::vector<const std::string*> texts;  // passage text per added id (lexical index)
  };
  using DeltaMap = std::map<std::string, NamespaceDelta, std::less<>>;

  explicit BankImpl(const BankOptions& options);

  // ---- bank_open.cc ----
  absl::Status OpenDatabase();
  // "" when the write-ahead log replays cleanly; else what recovery will skip, for the log and
  // Stats.
  std::string ProbeWriteAheadLog(
      const rocksdb::DBOptions& db_options,
      const std::vector<rocksdb::ColumnFamilyDescriptor>& descriptors) const;
  absl::Status CheckLayout();
  absl::Status CheckFingerprint();
  absl::Status LoadCounts(NamespaceMap* namespaces);
  absl::Status BuildIndexes(uint64_t seqno);
  // Builds one VectorIndex per namespace from the "keys" column family, for the namespaces in
  // `namespaces` (all of them when `only` is empty, else just `only`).
  absl::Status RebuildVectors(NamespaceMap* namespaces, std::string_view only = {});
  // Loads each namespace's saved lexical index when it was committed at `seqno` with the
  // namespace's passage count, else rebuilds it; removes the directories of other namespaces.
  absl::Status OpenLexical(NamespaceMap* namespaces, uint64_t seqno);
  // Every namespace in `namespaces` without a lexical index gets a fresh one built from the
  // passages column family; with `only`, just that one (the passages of other namespaces are
  // skipped). `staged`: each is built beside its namespace's directory (LexicalDir() + ".new"),
  // for InstallStagedLexical(), so that the served index stays intact meanwhile.
  absl::Status RebuildLexical(NamespaceMap* namespaces, std::string_view only = {},
                              bool staged = false);
  // Moves the staged lexical indexes of `fresh` into their namespaces' directories, closing the
  // served indexes of those namespaces first. Requires index_mu_ held exclusively.
  absl::Status InstallStagedLexical(NamespaceMap* fresh);
  // Commits every namespace's lexical index as reflecting `seqno`. Requires write_mu_ (contents
  // frozen) and index_mu_ at least shared.
  absl::Status CommitLexical(uint64_t seqno);
  // DIR/lexical/<hex of the name>: namespace names may hold any byte. A name whose hex exceeds
  // 200 characters is cut into components of 200, each but the last ending in '+', so no
  // component exceeds a file name's limit and no namespace's directory holds another's.
  std::string LexicalDir(std::string_view name_space) const;
  // Rebuilds what NeedsRebuild() asks for. Requires write_mu_ held, index_mu_ not held.
  absl::Status RebuildIfNeeded(std::span<const std::string> touched);

  // ---- bank_write.cc ----  (all require write_mu_ held)
  NamespaceDelta& DeltaFor(DeltaMap* deltas, std::string_view ns);
  void DeleteDocument(std::string_view ns, const DocRecord& record, rocksdb::WriteBatch* wb,
                      NamespaceDelta* delta);
  void PutCounts(const DeltaMap& deltas, rocksdb::WriteBatch* wb);
  // Applies committed deltas to the indexes and cache; on failure rebuilds from RocksDB.
  void ApplyDeltas(DeltaMap* deltas);
  void RecoverIndexes();
  absl::Status PurgeFromDisk(std::string_view ns, const std::set<std::string_view>& ids,
                             std::span<const uint64_t> pids);

  // ---- index_files.cc ----
  // Writes every namespace's vector index and a manifest naming `seqno` into `dir`.
  // Requires write_mu_ (contents frozen) and index_mu_ at least shared.
  absl::Status SaveIndexFiles(const std::string& dir, uint64_t seqno);
  // Loads the index files if they reflect exactly `seqno` and the current configuration;
  // otherwise returns an error saying why (the caller rebuilds).
  absl::Status LoadIndexFiles(const std::string& dir, uint64_t seqno, NamespaceMap* namespaces);

  // ---- helpers ----
  absl::Status CheckOpenLocked() const;  // FAILED_PRECONDITION after Close()
  // Writes `wb` with a synced WAL; `what` names the operation in errors. After a failed write
  // RocksDB refuses every write (a background error) until DB::Resume(): the next call resumes
  // first, so writes succeed again once the cause (a full disk) is gone. Requires write_mu_.
  absl::Status CommitBatch(rocksdb::WriteBatch* wb, std::string_view what);
  // The file system index files are written through (BankOptions::env's, or the default).
  rocksdb::FileSystem& IndexFileSystem() const;
  VectorIndexConfig VectorConfig() const;
  rocksdb::WriteOptions SyncWrite() const;
  absl::StatusOr<std::optional<std::string>> GetMeta(std::string_view key);

  const BankOptions options_;
  const std::string db_dir_;
  const std::string index_dir_;
  const std::string lexical_dir_;

  std::unique_ptr<rocksdb::DB> db_;
  std::vector<rocksdb::ColumnFamilyHandle*> handles_;
  rocksdb::ColumnFamilyHandle* cf_passages_ = nullptr;
  rocksdb::ColumnFamilyHandle* cf_latents_ = nullptr;
  rocksdb::ColumnFamilyHandle* cf_keys_ = nullptr;
  rocksdb::ColumnFamilyHandle* cf_meta_ = nullptr;
  rocksdb::ColumnFamilyHandle* cf_sessions_ = nullptr;

  std::mutex write_mu_;
  uint64_t next_pid_ = 1;       // guarded by write_mu_
  bool index_suspect_ = false;  // guarded by write_mu_: in-memory indexes may disagree; never save
  // Guarded by write_mu_: why the last write failed (OK when it did not); Resume() first.
  absl::Status write_error_;

  // Writer-preferring (glibc's default rwlock prefers readers, and a steady stream of searches
  // would starve the writer's short exclusive section forever); rw_mutex.h says why not
  // absl::Mutex.
  mutable RwMutex index_mu_;
  NamespaceMap namespaces_;
  bool closed_ = false;
  bool needs_reencode_ = false;
  Fingerprint fingerprint_;  // what the bank records

  LatentCache cache_;

  // Set once by Open().
  bool indexes_loaded_ = false;
  std::string rebuild_reason_;
  bool lexical_loaded_ = false;
  std::string lexical_rebuild_reason_;
  std::string recovery_warning_;  // what opening skipped of a damaged write-ahead log; "" = none
  absl::Duration open_time_;
};

}  // namespace knowd::storage
