// One namespace's dense index (private to storage/): a faiss::Index made by index_factory,
// wrapped in IndexIDMap2 so it is addressed by passage id. The bank talks to faiss::Index only;
// what the factory string builds is configuration.
//
// Two FAISS limitations are hidden here:
//  - IndexIDMap2::remove_ids is only correct for sub-indexes that renumber compactly (the
//    flat-codes family: Flat, PQ, SQ). Others (HNSW cannot remove; IVF keeps internal ids) get
//    tombstones: removed ids stay in the index and are filtered out of results (over-fetching).
//    NeedsRebuild() asks the owner to rebuild from the source of truth once tombstones pass a
//    tenth of the index.
//  - Trainable indexes (IVF, PQ) cannot be searched before training. Until a namespace holds
//    train_min vectors it is served by an exact "Flat" index; NeedsRebuild() turns true when the
//    threshold is crossed so the owner rebuilds with training.
//
// The factory "auto" (kAutoIndexFactory, the bank's default) picks by size: an exact "Flat" index
// below auto_threshold vectors, where a flat scan is as fast as any and exact, and an IVF index
// (kAutoLargeFactory with AutoNlist(n) lists, trained on the namespace's own keys) from there,
// where a flat scan's cost grows with the namespace and an IVF search reads a few lists.
// NeedsRebuild() turns true when a namespace crosses the threshold (or falls below half of it),
// and when it has grown to four times the size its lists were trained for (AutoNlist doubles),
// so the owner rebuilds it from the source of truth; a rebuild at any size (crash recovery, a
// changed factory) picks the same way. The saved file records which one is served.
//
// Not thread-safe for writes; Search() may run concurrently with other Search() calls.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_set>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "faiss/IndexIDMap.h"
#include "storage/memory_bank.h"

namespace knowd::storage {

// The factory string that picks Flat or kAutoLargeFactory by size.
inline constexpr char kAutoIndexFactory[] = "auto";
// What "auto" serves from kAutoThreshold vectors on ("{nlist}" is AutoNlist(n)), with
// kAutoLargeSearchParams unless the config names its own search parameters. Chosen by `knowd
// bench scale`; the comparison with HNSW and IVF+PQ is in docs/operations.md ("The vector index
// as a namespace grows") and its figures in docs/reports/bench-scale.json.
inline constexpr char kAutoLargeFactory[] = "IVF{nlist},Flat";
inline constexpr char kAutoLargeSearchParams[] = "nprobe=32";
// Below this many vectors "auto" serves Flat: where Flat stops being the fastest. Measured with
// knowd-tiny's 64-dimensional keys (docs/reports/bench-scale.json): a flat scan of 1,000 keys
// costs about what an IVF search does, and from there a flat scan's cost grows with the
// namespace. Exact search is kept for the smallest namespaces, where it is also cheapest.
inline constexpr int64_t kAutoThreshold = 2000;

// IVF lists for n vectors: the power of two nearest 4·sqrt(n), at least 16, and at most n / 39
// (FAISS's k-means wants 39 training points per list).
int64_t AutoNlist(int64_t n);

// `factory` with "{nlist}" replaced by AutoNlist(n).
std::string ResolveNlist(std::string_view factory, int64_t n);

struct VectorIndexConfig {
  int dim = 0;
  Metric metric = Metric::kInnerProduct;
  std::string factory = "Flat";
  std::string search_params;  // faiss::ParameterSpace string, may be empty
  int64_t train_min = 10000;
  int64_t auto_threshold = kAutoThreshold;  // "auto": Flat below this many vectors
};

struct ScoredId {
  uint64_t id;
  float score;  // higher is better
};

class VectorIndex {
 public:
  // Builds an index over (ids, vectors) in one pass (training first when the factory needs it
  // and there are at least train_min vectors). `vectors` holds ids.size() × dim floats.
  static absl::StatusOr<std::unique_ptr<VectorIndex>> Build(const VectorIndexConfig& config,
                                                            std::span<const uint64_t> ids,
                                                            std::span<const float> vectors);
  // Reads what Serialize() wrote. DATA_LOSS when the bytes are not a valid index for `config`.
  static absl::StatusOr<std::unique_ptr<VectorIndex>> Deserialize(const VectorIndexConfig& config,
                                                                  std::string_view bytes);
  ~VectorIndex();

  absl::Status Add(std::span<const uint64_t> ids, std::span<const float> vectors);
  absl::Status Remove(std::span<const uint64_t> ids);
  absl::StatusOr<std::vector<ScoredId>> Search(const float* query, int k) const;

  bool Contains(uint64_t id) const;       // present and not a tombstone
  int64_t size() const;                   // live vectors (excludes tombstones)
  std::vector<uint64_t> LiveIds() const;  // sorted
  bool NeedsRebuild() const;
  std::string Description() const;
  absl::StatusOr<std::string> Serialize() const;

 private:
  VectorIndex(const VectorIndexConfig& config, faiss::IndexIDMap2* index, bool flat_fallback);
  // Search() for the inner-product Flat and IVF-Flat indexes (the ones "auto" serves): the same
  // keys and lists FAISS would score, scored by OpenBLAS. nullopt for every other index.
  std::optional<std::vector<ScoredId>> ScanSearch(const float* query, int k) const;
  // "auto"'s large index as served: kAutoLargeFactory with its number of lists.
  std::string AutoServedFactory() const;

  VectorIndexConfig config_;
  std::unique_ptr<faiss::IndexIDMap2> index_;
  // Serving "Flat" because the factory index is not trained yet, or because "auto" is below its
  // threshold.
  bool flat_fallback_;
  bool training_failed_ = false;  // do not ask for a rebuild again in this process
  std::unordered_set<uint64_t> tombstones_;
};

}  // namespace knowd::storage
