// The memory bank: where knowd's knowledge lives. It stores, per document, the text, metadata
// and, per passage, the latent matrix (T×d) and the retrieval key (d_key) produced by the
// encoder, and answers top-k queries by key within a namespace. storage/ knows nothing of the
// model: latents and keys are plain floats, text is plain bytes.
//
// On disk (DIR = BankOptions::data_dir):
//   DIR/db/     RocksDB; column families "passages" (document + passage records), "latents"
//               (fp16, or int8 with a per-row scale), "keys" (f32) and "meta" (options,
//               fingerprint, id counter, per-namespace counts, re-encode cursor, markers),
//               "sessions" (each session's state and bookkeeping, keyed by namespace and id).
//   DIR/index/  one FAISS file per namespace plus a MANIFEST naming the RocksDB sequence number
//               the files reflect and a CRC per file. Written on Close() and by Snapshot().
//   DIR/lexical/<hex of the namespace name>/  one Xapian glass database per namespace (a name
//               whose hex exceeds 200 characters is cut into directories of 200, each but the
//               last ending in '+'). Committed on Close() with the RocksDB sequence number it
//               reflects ("knowd-seqno" metadata). Not created while BankOptions::lexical_index is
//               off.
//
// Durability: Put() and Delete() return only after their single RocksDB WriteBatch is in the
// synced WAL. After a crash (kill -9, power loss) every acknowledged write is present and no
// partial batch is. A write that fails (a full disk: RESOURCE_EXHAUSTED) stores nothing and
// leaves the bank readable; writes work again once the cause is gone, without reopening. The
// FAISS files are a cache of the "keys" column family: Open() loads them only when their
// sequence number equals the database's and every CRC matches; otherwise (crash, missing, stale
// or corrupt files, changed index factory) it rebuilds them from RocksDB.
//
// Lexical index: BM25 over passage text, one on-disk Xapian database per namespace, a cache of
// the "passages" column family under the FAISS files' rule: Open() loads a namespace's database
// only when Close() committed it at the sequence number the database is at now and it holds the
// namespace's passage count; otherwise (crash, a snapshot, missing or damaged files) it rebuilds
// it from RocksDB. Each write updates it uncommitted (searches see it at once); Xapian commits on
// its own every 10,000 changes, and such a commit records no sequence number, so it can never be
// loaded stale. Stats() says whether the last Open() loaded or rebuilt it. A purging Delete
// rebuilds the namespace's database, since its files may keep a forgotten passage's terms in
// their free space. Disable it with BankOptions::lexical_index.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace rocksdb {
class Env;
}  // namespace rocksdb

namespace knowd::storage {

// Stable id of one passage, unique in the bank for its lifetime and never reused. Allocated by
// Put() from a persistent counter; used as the FAISS and Xapian id.
using PassageId = uint64_t;

enum class LatentFormat : uint8_t {
  // IEEE half precision. Values must satisfy |x| <= 65504. Round trip error per element is at
  // most |x| * 2^-11 (plus 2^-25 for subnormals).
  kFp16 = 1,
  // int8 with one f32 scale per row (scale = max|row| / 127). Round trip error per element is
  // at most max|row| / 254.
  kInt8 = 2,
};

// "fp16" or "int8" (the names flags and config files use); nullopt for anything else. Inline, so
// that code checking a configuration needs the header only, not the bank.
inline std::optional<LatentFormat> ParseLatentFormat(std::string_view name) {
  if (name == "fp16") return LatentFormat::kFp16;
  if (name == "int8") return LatentFormat::kInt8;
  return std::nullopt;
}
inline const char* LatentFormatName(LatentFormat format) {
  return format == LatentFormat::kInt8 ? "int8" : "fp16";
}

enum class Metric : uint8_t {
  kInnerProduct = 1,  // score = <q, k>; use with normalized keys for cosine
  kL2 = 2,            // score = -|q - k|^2
};

// Identifies the encoder that produced a bank's latents and keys (hashes chosen by the caller).
struct Fingerprint {
  std::string adapter_hash;
  std::string base_model_hash;
  // The retrieval heads' hash when they, not the adapter's readout, made the keys (empty
  // otherwise). Only the keys depend on it: a bank that differs in it alone needs its keys
  // re-encoded (Reencode with keys_only), not its latents.
  std::string key_hash;

  bool empty() const { return adapter_hash.empty() && base_model_hash.empty(); }
  friend bool operator==(const Fingerprint&, const Fingerprint&) = default;
};

struct BankOptions {
  std::string data_dir;  // created when missing and create_if_missing is set
  bool create_if_missing = true;

  // Shape of what is stored. Fixed when the bank is created and recorded in it; reopening with
  // other values is refused (FAILED_PRECONDITION).
  int key_dim = 0;      // d_key, > 0
  int latent_rows = 0;  // T, > 0
  int latent_cols = 0;  // d, > 0
  Metric metric = Metric::kInnerProduct;

  // Applies to latents written from now on; every stored matrix records its own format, so a
  // bank may hold both.
  LatentFormat latent_format = LatentFormat::kFp16;

  // FAISS index_factory string for each namespace's index ("Flat", "HNSW32", "IVF1024,Flat"),
  // or "auto": an exact Flat index while a namespace is small, IVF-Flat once it is large enough
  // that a flat scan is slower, its lists retrained as it grows (the rule, measured, is in
  // docs/operations.md; the namespace's index is rebuilt when it crosses a step). May change
  // between opens (the indexes are then rebuilt). Trainable factories (IVF, PQ) serve from an exact
  // flat index until a namespace holds index_train_min vectors, then train.
  std::string index_factory = "auto";
  // FAISS ParameterSpace settings applied to every index, e.g. "efSearch=64" or "nprobe=16"
  // ("auto": applied to its large index; empty gives it kAutoLargeSearchParams). Search-time
  // only: changing them between opens loads the saved indexes and applies the new settings.
  std::string index_search_params;
  int64_t index_train_min = 10000;

  bool lexical_index = true;              // Xapian BM25 for hybrid search (DIR/lexical)
  size_t latent_cache_bytes = 64u << 20;  // LRU cache of decoded latents

  // The encoder this process uses. A bank created with a fingerprint records it; opening a bank
  // whose recorded fingerprint differs is refused with FAILED_PRECONDITION unless
  // open_for_reencode is set. An empty fingerprint skips the check (tools that do not encode).
  Fingerprint fingerprint;
  // Open a bank recorded with another fingerprint (or with an interrupted re-encode) so that
  // Reencode() can bring it to `fingerprint`. Until Reencode() completes, Put() and Search()
  // return FAILED_PRECONDITION; Get(), Scan(), Delete() and Stats() work.
  bool open_for_reencode = false;

  // For tests and fault injection only: the environment (and through it the file system) that
  // the database and the index files are written through, e.g. one whose writes fail as on a
  // full disk. Null, as in production: the local file system.
  std::shared_ptr<rocksdb::Env> env;
};

// Bytes one passage's modulation occupies as stored, without headers: its latents in `format`
// (fp16: 2 per value; int8: 1 per value plus a 4-byte scale per row) and its f32 key.
int64_t ModulationBytes(int key_dim, int latent_rows, int latent_cols, LatentFormat format);

struct Passage {
  std::string text;
  // Bytes of the document's text just before `text` that the encoder read with it (the overlap
  // from the previous passage; at most that passage's length). Stored, so that Reencode hands
  // the encoder the same input.
  uint32_t context_bytes = 0;
  std::vector<float> latents;  // latent_rows × latent_cols, row-major
  std::vector<float> key;      // key_dim
  PassageId id = 0;            // set by the bank; ignored by Put()
};

struct Document {
  std::string name_space;  // 1..255 bytes, no NUL
  std::string id;          // 1..4096 bytes
  std::string text;        // the whole document (optional; passages carry their own text)
  std::string metadata;    // opaque to the bank (JSON by convention)
  std::optional<absl::Time> valid_from;  // when the content becomes true, if the source says
  absl::Time ingest_time;                // set by Put(); ignored on input
  std::vector<Passage> passages;         // at least one
};

struct DocumentAck {
  std::string name_space;
  std::string id;
  std::vector<PassageId> passage_ids;  // in passage order
  bool replaced = false;               // the document existed and its passages were replaced
};

struct SearchRequest {
  std::string name_space;
  std::vector<float> key;  // key_dim query key
  int k = 10;              // 1..4096
  // Hybrid retrieval: fuse the dense ranking with Xapian BM25 over `query_text` by weighted
  // reciprocal rank fusion, score = dense_weight / (rrf_k + dense rank) + lexical_weight /
  // (rrf_k + lexical rank), ranks starting at 1 (a ranking a passage is not in adds nothing).
  // Each ranking contributes its top `candidates` (default 4k). lexical_weight 0 keeps the dense
  // order and runs no BM25 ranking at all (the cost stays the dense index's, however large the
  // namespace), while the lexical index still reports on the query (Search()'s `terms`).
  // dense_weight 0 is BM25 alone: no dense search, the hits are the lexical candidates in BM25
  // order, and `key` is not read (it must still have key_dim floats).
  bool hybrid = false;
  std::string query_text;
  int rrf_k = 60;
  float dense_weight = 1.0f;    // >= 0, finite
  float lexical_weight = 1.0f;  // >= 0, finite; not both 0
  int candidates = 0;
  bool with_text = false;  // fill SearchHit::text
};

struct SearchHit {
  PassageId passage_id = 0;
  std::string doc_id;
  int passage_index = 0;  // position of the passage in its document
  // Higher is better. Dense: the metric's score. Hybrid: the fused RRF score.
  float score = 0.0f;
  std::optional<float> dense_score;    // set when the passage was in the dense candidates
  std::optional<float> lexical_score;  // BM25 weight, set when it was in the lexical candidates
  // When a hybrid Search() is given a LexicalTerms: the query terms the passage holds
  // (LexicalTerms::query's spelling), sorted; for every hit, a lexical candidate or not.
  std::vector<std::string> matched_terms;
  absl::Time ingest_time;
  std::optional<absl::Time> valid_from;
  std::string text;  // when SearchRequest::with_text
};

// A term of a hybrid search's query text, as the lexical index parsed it.
struct QueryTerm {
  std::string term;       // as indexed: the word, or its English stem; compare, do not parse
  bool exact = false;     // left unstemmed: a word written with a capital, or a number
  uint64_t passages = 0;  // how many of the namespace's passages hold it
};

// What the lexical index made of a hybrid search's query text (Search()'s `terms`): its terms
// and how common each is, and the terms its best candidate holds (the best BM25 one; with
// lexical_weight 0, the best dense hit). Plain statistics of the
// index; what they mean for a question is the caller's business (knowledge/subject.h).
struct LexicalTerms {
  uint64_t passages = 0;              // passages in the namespace's lexical index
  std::vector<QueryTerm> query;       // the query's distinct terms, in the index's term order
  std::vector<QueryTerm> best_match;  // those the best candidate holds (empty: no candidate)
};

// The terms a lower-case word can become in a query's LexicalTerms: the word itself (written
// with a capital, which the parser leaves unstemmed) and its English stem.
std::vector<std::string> QueryTermsOfWord(std::string_view word);

// English function words ("what", "is", "the", ...), lower case. Passages are indexed with them,
// but a query's are not searched for: most passages hold them, so theirs are the longest posting
// lists BM25 would read, for a weight near nothing. A query of function words only is searched
// as it is. knowledge/subject.h never takes one for what a question is about.
std::span<const std::string_view> FunctionWords();

struct DocumentSummary {
  std::string id;
  std::string metadata;
  absl::Time ingest_time;
  std::optional<absl::Time> valid_from;
  int num_passages = 0;
};

struct ScanPage {
  std::vector<DocumentSummary> documents;  // in byte order of id
  std::string next_start_after;            // pass back to continue; empty when done
};

struct NamespaceStats {
  std::string name_space;
  uint64_t documents = 0;
  uint64_t passages = 0;
  std::string index_description;  // e.g. "Flat" or "Flat (untrained IVF fallback)"
};

struct BankStats {
  std::vector<NamespaceStats> namespaces;  // sorted by name
  uint64_t documents = 0;
  uint64_t passages = 0;
  uint64_t disk_bytes = 0;  // SST + WAL + index files + Xapian databases, approximate
  uint64_t latent_cache_hits = 0;
  uint64_t latent_cache_misses = 0;
  // How the last Open() got its vector indexes, and how long it took.
  bool indexes_loaded_from_disk = false;  // false: rebuilt from RocksDB
  std::string index_rebuild_reason;       // empty when loaded
  // The same for the lexical indexes (BankOptions::lexical_index): true when every namespace's
  // saved Xapian database was loaded (none rebuilt); the reason names the first one rebuilt.
  bool lexical_loaded_from_disk = false;
  std::string lexical_rebuild_reason;  // empty when loaded or when the lexical index is off
  // Not empty when the last Open() found a damaged write-ahead log: what RocksDB said and that
  // the writes after the damage were skipped (acknowledged documents among them are lost).
  std::string recovery_warning;
  absl::Duration open_time;
  Fingerprint fingerprint;
  bool needs_reencode = false;
};

// A session (StreamAdapter): a context absorbed into a constant-size state by the caller's model.
// The bank stores the state as plain floats with its bookkeeping; what it means is the caller's.
struct Session {
  std::string name_space;  // 1..255 bytes, no NUL
  std::string id;          // 1..256 bytes
  std::string label;       // the client's, at most 256 bytes
  // What computed `state` (the caller's model hash): a state is only valid for it.
  std::string mapper_sha256;
  std::vector<float> state;  // empty in ListSessions' results
  int64_t state_bytes = 0;   // set by the bank: bytes of `state` as stored (4 per float)
  int64_t chunks = 0;
  int64_t tokens = 0;
  absl::Time created;
  absl::Time updated;
  // Seconds the session lives after `updated`; 0: forever. A session whose updated + ttl has
  // passed is gone for every call (NOT_FOUND) and its record is removed by SweepSessions.
  int64_t ttl_seconds = 0;
  // Set by the bank: how many times the session was written. PutSession stores only over the
  // revision it was read at (0: a new session).
  uint64_t revision = 0;

  std::optional<absl::Time> expires() const {
    if (ttl_seconds <= 0) return std::nullopt;
    return updated + absl::Seconds(ttl_seconds);
  }
};

// Re-encoding support: maps passage texts to new latents and keys. `out` has texts.size()
// entries on success, each with latents of latent_rows × latent_cols and a key of key_dim.
struct EncodedPassage {
  std::vector<float> latents;
  std::vector<float> key;
};
// Gets each passage's encoder input as Put stored it: its context_bytes of the previous passage's
// text, then its own text.
using PassageEncoder = std::function<absl::Status(std::span<const std::string_view> inputs,
                                                  std::vector<EncodedPassage>* out)>;
using ReencodeProgress = std::function<void(uint64_t done, uint64_t total)>;

// A MemoryBank is safe for concurrent use from many threads without external synchronization.
// Reads (Get, Search, GetLatents, Scan, Stats) run in parallel; writes (Put, Delete, Reencode,
// Snapshot, Close) are serialized among themselves and block readers only while the in-memory
// indexes are updated. A read concurrent with a write sees it entirely or not at all for each
// passage; once Put() or Delete() has returned, every later read sees its effect.
class MemoryBank {
 public:
  // Opens (or creates) the bank at options.data_dir. On success the caller owns the bank.
  // Errors: INVALID_ARGUMENT for bad options; FAILED_PRECONDITION when the bank was created with
  // other dimensions or metric, or encoded with another fingerprint; NOT_FOUND when it does not
  // exist and create_if_missing is false; INTERNAL/DATA_LOSS for I/O or corruption that
  // recovery cannot repair. Another process holding the bank gives UNAVAILABLE.
  static absl::StatusOr<std::unique_ptr<MemoryBank>> Open(const BankOptions& options);

  // Copies the snapshot at `snapshot_dir` (made by Snapshot()) to `data_dir`, which must not
  // exist. The copy is assembled beside data_dir and renamed into place, so a crash leaves
  // either no data_dir or a complete one. The restored bank is opened with Open() as usual.
  static absl::Status RestoreSnapshot(const std::string& snapshot_dir, const std::string& data_dir);

  // The dimension of the retrieval keys (BankOptions::key_dim).
  virtual int key_dim() const = 0;

  // Closes the bank (see Close()) if the caller did not; errors are logged.
  virtual ~MemoryBank() = default;

  // Stores a batch of documents atomically: one RocksDB WriteBatch, WAL synced before return.
  // A document whose (name_space, id) exists replaces all its passages (upsert). On error
  // nothing of the batch is written. Returns one ack per document, in order.
  // Errors: INVALID_ARGUMENT (empty or oversized name_space/id, no passages, wrong latent or
  // key size, non-finite values, fp16 overflow, a document twice in the batch);
  // FAILED_PRECONDITION while a re-encode is pending; RESOURCE_EXHAUSTED when the disk holding
  // data_dir is full (nothing of the batch is stored, the bank stays readable, and writes
  // succeed again within seconds of space returning, without reopening it); INTERNAL on other
  // I/O failure.
  virtual absl::StatusOr<std::vector<DocumentAck>> Put(std::span<const Document> batch) = 0;

  // Returns the document with its passages (text, key and id; latents when with_latents).
  // NOT_FOUND when absent.
  virtual absl::StatusOr<Document> Get(std::string_view name_space, std::string_view id,
                                       bool with_latents = false) = 0;

  // Forgets documents: text, metadata, latents, keys and both index entries, atomically for the
  // whole list, WAL synced before return. Ids that do not exist are skipped. Returns how many
  // documents were removed. After return no API returns them. The bytes leave the disk at the
  // next RocksDB compaction of their range; pass purge=true to force that compaction now (and
  // a WAL flush) so no file under data_dir still holds them. Errors as for Put().
  virtual absl::StatusOr<int> Delete(std::string_view name_space, std::span<const std::string> ids,
                                     bool purge = false) = 0;

  // Top-k passages of one namespace by key (and optionally BM25 text). Returns at most k hits,
  // best first; an unknown namespace gives an empty result. Errors: INVALID_ARGUMENT (wrong key
  // size, non-finite key, k out of range, hybrid without lexical index or query text),
  // FAILED_PRECONDITION while a re-encode is pending.
  // With `terms` (hybrid only), also says what the lexical index made of query_text, and each
  // lexical candidate carries its SearchHit::matched_terms.
  virtual absl::StatusOr<std::vector<SearchHit>> Search(const SearchRequest& request,
                                                        LexicalTerms* terms = nullptr) = 0;

  // Decoded latents (latent_rows × latent_cols floats) of passages of `name_space`, in the order
  // asked, served from the LRU cache when possible. The returned buffers are immutable and
  // shared with the cache. NOT_FOUND names the first id that is absent or in another namespace.
  virtual absl::StatusOr<std::vector<std::shared_ptr<const std::vector<float>>>> GetLatents(
      std::string_view name_space, std::span<const PassageId> ids) = 0;

  // Up to `limit` documents of a namespace with id > start_after, in id byte order.
  virtual absl::StatusOr<ScanPage> Scan(std::string_view name_space, std::string_view start_after,
                                        int limit) = 0;

  virtual absl::StatusOr<BankStats> Stats() = 0;

  // Checks that every namespace's FAISS index (and Xapian index, when enabled) holds exactly the
  // passage ids of the RocksDB "keys" column family, no more, no fewer. DATA_LOSS names the
  // first difference. O(bank size); meant for tests, tools and operators.
  virtual absl::Status VerifyIndexes() = 0;

  // Writes a consistent copy of the bank into `snapshot_dir` (which must not exist): a RocksDB
  // checkpoint (hard links where possible) plus the FAISS files and manifest of the same
  // sequence number. Writers wait while it runs; readers do not. The result is itself a bank
  // directory; restore it with RestoreSnapshot(). It holds no lexical index: the restored bank's
  // first Open() builds it from the passages.
  virtual absl::Status Snapshot(const std::string& snapshot_dir) = 0;

  // Rebuilds every passage's latents and key from its stored text with `encoder`, in batches of
  // `batch_size` passages, each batch one synced WriteBatch that also records a resume cursor.
  // If interrupted (crash, error from encoder), calling Reencode() again with the same target
  // fingerprint (BankOptions::fingerprint) continues after the last committed batch. On
  // completion the bank records the new fingerprint and rebuilds its vector indexes. Writers
  // wait while it runs. `progress` (optional) is called after each batch. When the recorded
  // fingerprint differs from the target in its key_hash alone, the latents are current and only
  // the keys are rewritten (the stored latents stay byte for byte).
  virtual absl::Status Reencode(const PassageEncoder& encoder, const ReencodeProgress& progress,
                                int batch_size = 256) = 0;

  // A small named value the bank keeps for its owner, uninterpreted: e.g. how far into a
  // replicated log the bank has applied entries. SetMarker returns once the value is in the synced
  // WAL (so it survives a crash) and is ordered after every Put and Delete that returned before
  // it. GetMarker gives nullopt for a name never set. Names are 1-128 bytes.
  virtual absl::StatusOr<std::optional<std::string>> GetMarker(std::string_view name) = 0;
  virtual absl::Status SetMarker(std::string_view name, std::string_view value) = 0;

  // Sessions (struct Session). Every call treats a session past its expiry as absent, whatever
  // `now` the caller gives (tests pass their own clock; the daemon absl::Now()).
  //
  // Stores `session` in one synced write, atomically: a failed write leaves the previous record.
  // session.revision must be the stored revision it was read at (0 for a new session, which an
  // expired one counts as); otherwise ABORTED (another writer got there first: read and retry)
  // or ALREADY_EXISTS (creating an id that is live). On success sets session->revision and
  // state_bytes. INVALID_ARGUMENT for a bad namespace, id or label, or a non-finite state.
  virtual absl::Status PutSession(Session* session, absl::Time now) = 0;
  // The session with its state. NOT_FOUND when absent or expired.
  virtual absl::StatusOr<Session> GetSession(std::string_view name_space, std::string_view id,
                                             absl::Time now) = 0;
  // Removes a session (synced). NOT_FOUND when absent or expired.
  virtual absl::Status DeleteSession(std::string_view name_space, std::string_view id,
                                     absl::Time now) = 0;
  // The live sessions of a namespace by id, without their states (state_bytes is set).
  virtual absl::StatusOr<std::vector<Session>> ListSessions(std::string_view name_space,
                                                            absl::Time now) = 0;
  // Removes every expired session's record (also done by Open()); returns how many.
  virtual absl::StatusOr<int> SweepSessions(absl::Time now) = 0;
  // Live sessions and their stored state bytes: all namespaces together, and each namespace's
  // (only namespaces that hold a live session appear).
  struct SessionCount {
    int64_t sessions = 0;
    int64_t state_bytes = 0;
  };
  struct SessionTotals : SessionCount {
    std::map<std::string, SessionCount, std::less<>> namespaces;
  };
  virtual absl::StatusOr<SessionTotals> CountSessions(absl::Time now) = 0;

  // Saves the vector indexes with the current sequence number, so the next Open() loads them
  // instead of rebuilding, and closes the database. Later calls on the bank return
  // FAILED_PRECONDITION. Idempotent.
  virtual absl::Status Close() = 0;
};

}  // namespace knowd::storage
