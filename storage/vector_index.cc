#include "storage/vector_index.h"

#include <cblas.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <exception>
#include <limits>
#include <typeinfo>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "base/status_macros.h"
#include "faiss/AutoTune.h"
#include "faiss/IndexFlat.h"
#include "faiss/IndexFlatCodes.h"
#include "faiss/IndexIVF.h"
#include "faiss/IndexIVFFlat.h"
#include "faiss/IndexRefine.h"
#include "faiss/impl/IDSelector.h"
#include "faiss/impl/io.h"
#include "faiss/index_factory.h"
#include "faiss/index_io.h"
#include "storage/records.h"

namespace knowd::storage {
namespace {

// File layout: magic, u8 flat_fallback, u64 #tombstones, tombstones (u64 each), FAISS bytes.
using FaissId = faiss::Index::idx_t;

constexpr char kMagic[8] = {'K', 'N', 'D', 'V', 'I', 'D', 'X', '1'};

// Train on at most this many vectors: k-means quality saturates long before, time does not.
constexpr int64_t kMaxTrainVectors = 200000;

faiss::MetricType ToFaiss(Metric m) {
  return m == Metric::kL2 ? faiss::METRIC_L2 : faiss::METRIC_INNER_PRODUCT;
}

absl::Status FaissError(std::string_view what, const std::exception& e) {
  return absl::InternalError(absl::StrCat("FAISS ", AbslView(what), " failed: ", e.what()));
}

std::vector<FaissId> ToFaissIds(std::span<const uint64_t> ids) {
  return std::vector<FaissId>(ids.begin(), ids.end());
}

bool IsAuto(const VectorIndexConfig& config) { return config.factory == kAutoIndexFactory; }

// What index_factory builds for `config` over n vectors when not serving Flat.
std::string FactoryOf(const VectorIndexConfig& config, int64_t n) {
  return IsAuto(config) ? ResolveNlist(kAutoLargeFactory, n) : config.factory;
}

// `factory` with "{nlist}" replaced by `nlist`.
std::string WithNlist(std::string_view factory, int64_t nlist) {
  return absl::StrReplaceAll(AbslView(factory), {{"{nlist}", absl::StrCat(nlist)}});
}

// The IVF index inside `index` (directly, or under a refinement), or null.
const faiss::IndexIVF* IvfOf(const faiss::Index* index) {
  if (const auto* refine = dynamic_cast<const faiss::IndexRefine*>(index)) {
    index = refine->base_index;
  }
  return dynamic_cast<const faiss::IndexIVF*>(index);
}

const std::string& SearchParamsOf(const VectorIndexConfig& config) {
  static const std::string* const kAuto = new std::string(kAutoLargeSearchParams);
  return IsAuto(config) && config.search_params.empty() ? *kAuto : config.search_params;
}

// Makes an empty IndexIDMap2 around index_factory(config) for n vectors; `flat` forces "Flat".
absl::StatusOr<std::unique_ptr<faiss::IndexIDMap2>> MakeEmpty(const VectorIndexConfig& config,
                                                              bool flat, int64_t n) {
  try {
    std::unique_ptr<faiss::Index> inner(faiss::index_factory(
        config.dim, flat ? "Flat" : FactoryOf(config, n).c_str(), ToFaiss(config.metric)));
    const std::string& params = SearchParamsOf(config);
    if (!flat && !params.empty()) {
      faiss::ParameterSpace().set_index_parameters(inner.get(), params.c_str());
    }
    auto map = std::make_unique<faiss::IndexIDMap2>(inner.release());
    map->own_fields = true;
    return map;
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("index factory '", config.factory,
                                                   "' with parameters '", config.search_params,
                                                   "' is not usable: ", e.what()));
  }
}

// The k best (score, label) pairs seen, kept as a min-heap on the score.
class TopK {
 public:
  explicit TopK(int k) : k_(k) { heap_.reserve(k); }
  // Scores at or below this cannot enter.
  float threshold() const {
    return static_cast<int>(heap_.size()) < k_ ? -std::numeric_limits<float>::infinity()
                                               : heap_.front().first;
  }
  void Push(float score, FaissId label) {
    if (static_cast<int>(heap_.size()) == k_) {
      std::pop_heap(heap_.begin(), heap_.end(), Worse);
      heap_.pop_back();
    }
    heap_.emplace_back(score, label);
    std::push_heap(heap_.begin(), heap_.end(), Worse);
  }
  // Best first.
  std::vector<std::pair<float, FaissId>> Take() && {
    std::sort_heap(heap_.begin(), heap_.end(), Worse);
    return std::move(heap_);
  }

 private:
  static bool Worse(const std::pair<float, FaissId>& a, const std::pair<float, FaissId>& b) {
    return a.first > b.first;
  }
  int k_;
  std::vector<std::pair<float, FaissId>> heap_;
};

// Inner products of `n` row-major keys with `query`, in blocks that stay in cache, offered to
// `offer(score, row)` when they beat `top`'s threshold. OpenBLAS picks its kernels for the CPU
// (model) at run time, where Debian's FAISS is a generic build (why, and by how much:
// docs/operations.md, "The vector index as a namespace grows").
template <typename Offer>
void ScanKeys(const float* keys, int64_t n, int dim, const float* query, const TopK& top,
              std::vector<float>& scores, Offer&& offer) {
  constexpr int64_t kBlock = 1024;
  // One thread pool only, as in the CPU backend: OpenBLAS runs in the calling thread.
  if (openblas_get_num_threads() != 1) openblas_set_num_threads(1);
  for (int64_t first = 0; first < n; first += kBlock) {
    const int64_t rows = std::min(kBlock, n - first);
    scores.resize(rows);
    cblas_sgemv(CblasRowMajor, CblasNoTrans, static_cast<int>(rows), dim, 1.0f, keys + first * dim,
                dim, query, 1, 0.0f, scores.data(), 1);
    for (int64_t i = 0; i < rows; ++i) {
      if (scores[i] > top.threshold()) offer(scores[i], first + i);
    }
  }
}

// The flat inner-product index whose keys ScanKeys can read, or null.
const faiss::IndexFlat* FlatIpOf(const faiss::Index* index) {
  const auto& type = typeid(*index);
  if (type != typeid(faiss::IndexFlat) && type != typeid(faiss::IndexFlatIP)) return nullptr;
  return index->metric_type == faiss::METRIC_INNER_PRODUCT
             ? static_cast<const faiss::IndexFlat*>(index)
             : nullptr;
}

}  // namespace

int64_t AutoNlist(int64_t n) {
  int64_t nlist = 16;
  // Double while twice as many lists is nearer 4·sqrt(n) (by ratio) than the current count.
  const double target = 4.0 * std::sqrt(static_cast<double>(n)) * std::sqrt(2.0);
  while (static_cast<double>(nlist * 2) <= target && nlist * 2 * 39 <= n) nlist *= 2;
  return nlist;
}

std::string ResolveNlist(std::string_view factory, int64_t n) {
  return WithNlist(factory, AutoNlist(n));
}

VectorIndex::VectorIndex(const VectorIndexConfig& config, faiss::IndexIDMap2* index,
                         bool flat_fallback)
    : config_(config), index_(index), flat_fallback_(flat_fallback) {}

VectorIndex::~VectorIndex() = default;

absl::StatusOr<std::unique_ptr<VectorIndex>> VectorIndex::Build(const VectorIndexConfig& config,
                                                                std::span<const uint64_t> ids,
                                                                std::span<const float> vectors) {
  const auto n = static_cast<int64_t>(ids.size());
  KNOWD_ASSIGN_OR_RETURN(auto probe, MakeEmpty(config, /*flat=*/false, n));
  const bool needs_training = !(probe)->is_trained;
  const bool fallback = IsAuto(config)
                            ? n < config.auto_threshold
                            : needs_training && n < std::max<int64_t>(config.train_min, 1);
  std::unique_ptr<faiss::IndexIDMap2> index;
  if (fallback) {
    KNOWD_ASSIGN_OR_RETURN(index, MakeEmpty(config, /*flat=*/true, n));
  } else {
    index = std::move(probe);
  }
  bool training_failed = false;
  if (needs_training && !fallback) {
    // Train on an evenly strided sample; deterministic, so rebuilds are reproducible.
    const int64_t step = std::max<int64_t>(1, n / kMaxTrainVectors);
    std::vector<float> sample;
    for (int64_t i = 0; i < n; i += step) {
      sample.insert(sample.end(), vectors.begin() + i * config.dim,
                    vectors.begin() + (i + 1) * config.dim);
    }
    try {
      index->train(static_cast<FaissId>(sample.size() / config.dim), sample.data());
    } catch (const std::exception& e) {
      // E.g. fewer training points than IVF lists. Serving exactly beats not serving; the next
      // Open() tries again.
      spdlog::warn("FAISS '{}' could not train on {} vectors ({}); serving a flat index",
                   config.factory, sample.size() / config.dim, e.what());
      KNOWD_ASSIGN_OR_RETURN(index, MakeEmpty(config, /*flat=*/true, n));
      training_failed = true;
    }
  }
  try {
    if (n > 0) {
      auto fids = ToFaissIds(ids);
      index->add_with_ids(n, vectors.data(), fids.data());
    }
  } catch (const std::exception& e) {
    return FaissError("build", e);
  }
  auto out = std::unique_ptr<VectorIndex>(
      new VectorIndex(config, index.release(), fallback || training_failed));
  out->training_failed_ = training_failed;
  return out;
}

absl::StatusOr<std::unique_ptr<VectorIndex>> VectorIndex::Deserialize(
    const VectorIndexConfig& config, std::string_view bytes) {
  const size_t header = sizeof(kMagic) + 1 + 8;
  if (bytes.size() < header || std::memcmp(bytes.data(), kMagic, sizeof(kMagic)) != 0) {
    return absl::DataLossError("index file has no knowd header");
  }
  const bool fallback = bytes[sizeof(kMagic)] != 0;
  uint64_t n_tomb;
  std::memcpy(&n_tomb, bytes.data() + sizeof(kMagic) + 1, 8);
  if (n_tomb > (bytes.size() - header) / 8) return absl::DataLossError("index file is truncated");
  std::unordered_set<uint64_t> tombstones;
  for (uint64_t i = 0; i < n_tomb; ++i) {
    uint64_t id;
    std::memcpy(&id, bytes.data() + header + 8 * i, 8);
    tombstones.insert(id);
  }
  faiss::VectorIOReader reader;
  const size_t faiss_start = header + 8 * n_tomb;
  reader.data.assign(bytes.begin() + faiss_start, bytes.end());
  std::unique_ptr<faiss::Index> index;
  try {
    index.reset(faiss::read_index(&reader));
  } catch (const std::exception& e) {
    return absl::DataLossError(absl::StrCat("index file is not readable by FAISS: ", e.what()));
  }
  auto* map = dynamic_cast<faiss::IndexIDMap2*>(index.get());
  if (map == nullptr || map->d != config.dim || map->metric_type != ToFaiss(config.metric) ||
      reader.rp != reader.data.size()) {
    return absl::DataLossError("index file does not match the bank's dimension and metric");
  }
  index.release();
  if (IsAuto(config) && !fallback && IvfOf(map->index) == nullptr) {
    // Written when "auto" served another index (HNSW before IVF): rebuild what it serves now.
    delete map;
    return absl::FailedPreconditionError(
        "the saved index is not the IVF index \"auto\" serves now");
  }
  try {
    const std::string& params = SearchParamsOf(config);
    if (!fallback && !params.empty()) {
      faiss::ParameterSpace().set_index_parameters(map->index, params.c_str());
    }
  } catch (const std::exception& e) {
    delete map;
    return absl::InvalidArgumentError(
        absl::StrCat("index parameters '", SearchParamsOf(config), "': ", e.what()));
  }
  auto out = std::unique_ptr<VectorIndex>(new VectorIndex(config, map, fallback));
  out->tombstones_ = std::move(tombstones);
  return out;
}

absl::StatusOr<std::string> VectorIndex::Serialize() const {
  faiss::VectorIOWriter writer;
  try {
    faiss::write_index(index_.get(), &writer);
  } catch (const std::exception& e) {
    return FaissError("write_index", e);
  }
  std::string out(kMagic, sizeof(kMagic));
  out.push_back(flat_fallback_ ? 1 : 0);
  const uint64_t n_tomb = tombstones_.size();
  out.append(reinterpret_cast<const char*>(&n_tomb), 8);
  for (uint64_t id : tombstones_) out.append(reinterpret_cast<const char*>(&id), 8);
  out.append(reinterpret_cast<const char*>(writer.data.data()), writer.data.size());
  return out;
}

absl::Status VectorIndex::Add(std::span<const uint64_t> ids, std::span<const float> vectors) {
  if (ids.empty()) return absl::OkStatus();
  auto fids = ToFaissIds(ids);
  try {
    index_->add_with_ids(static_cast<FaissId>(ids.size()), vectors.data(), fids.data());
  } catch (const std::exception& e) {
    return FaissError("add", e);
  }
  return absl::OkStatus();
}

absl::Status VectorIndex::Remove(std::span<const uint64_t> ids) {
  if (ids.empty()) return absl::OkStatus();
  // IndexIDMap2::remove_ids assumes the sub-index renumbers its remaining vectors compactly,
  // which only the flat-codes family (Flat, PQ, SQ, LSH) does; IVF keeps its internal ids and
  // HNSW cannot remove at all. Everything else gets tombstones.
  if (dynamic_cast<const faiss::IndexFlatCodes*>(index_->index) != nullptr) {
    auto fids = ToFaissIds(ids);
    faiss::IDSelectorBatch selector(fids.size(), fids.data());
    try {
      index_->remove_ids(selector);
    } catch (const std::exception& e) {
      return FaissError("remove", e);
    }
    return absl::OkStatus();
  }
  for (uint64_t id : ids) {
    if (index_->rev_map.count(static_cast<FaissId>(id))) tombstones_.insert(id);
  }
  return absl::OkStatus();
}

std::optional<std::vector<ScoredId>> VectorIndex::ScanSearch(const float* query, int k) const {
  const faiss::Index* inner = index_->index;
  const int dim = config_.dim;
  std::vector<float> scores;
  TopK top(k);
  // Offers row `row` of a scan whose rows carry internal labels `labels` (null: the row is the
  // label), skipping tombstones.
  auto scan = [&](const float* keys, const FaissId* labels, int64_t n) {
    ScanKeys(keys, n, dim, query, top, scores, [&](float score, int64_t row) {
      const FaissId label = labels == nullptr ? row : labels[row];
      if (!tombstones_.empty() &&
          tombstones_.count(static_cast<uint64_t>(index_->id_map[label])) != 0) {
        return;
      }
      top.Push(score, label);
    });
  };
  if (const faiss::IndexFlat* flat = FlatIpOf(inner)) {
    scan(flat->get_xb(), nullptr, flat->ntotal);
  } else if (typeid(*inner) == typeid(faiss::IndexIVFFlat) &&
             inner->metric_type == faiss::METRIC_INNER_PRODUCT) {
    const auto* ivf = static_cast<const faiss::IndexIVFFlat*>(inner);
    const int nprobe = static_cast<int>(std::min<size_t>(ivf->nprobe, ivf->nlist));
    // The nprobe lists whose centroids score highest, as FAISS's own search picks them.
    std::vector<FaissId> lists(nprobe, -1);
    if (const faiss::IndexFlat* centroids = FlatIpOf(ivf->quantizer)) {
      TopK nearest(nprobe);
      std::vector<float> centroid_scores;
      ScanKeys(centroids->get_xb(), centroids->ntotal, dim, query, nearest, centroid_scores,
               [&](float score, int64_t row) { nearest.Push(score, row); });
      auto best = std::move(nearest).Take();
      for (size_t i = 0; i < best.size(); ++i) lists[i] = best[i].second;
    } else {
      std::vector<float> distances(nprobe);
      ivf->quantizer->search(1, query, nprobe, distances.data(), lists.data());
    }
    for (FaissId list : lists) {
      if (list < 0) continue;
      const size_t n = ivf->invlists->list_size(list);
      if (n == 0) continue;
      faiss::InvertedLists::ScopedCodes codes(ivf->invlists, list);
      faiss::InvertedLists::ScopedIds ids(ivf->invlists, list);
      scan(reinterpret_cast<const float*>(codes.get()), ids.get(), static_cast<int64_t>(n));
    }
  } else {
    return std::nullopt;
  }
  std::vector<ScoredId> out;
  for (const auto& [score, label] : std::move(top).Take()) {
    out.push_back({static_cast<uint64_t>(index_->id_map[label]), score});
  }
  return out;
}

absl::StatusOr<std::vector<ScoredId>> VectorIndex::Search(const float* query, int k) const {
  if (k <= 0) return std::vector<ScoredId>();
  try {
    if (auto scanned = ScanSearch(query, k)) return *std::move(scanned);
  } catch (const std::exception& e) {
    return FaissError("search", e);
  }
  const int64_t total = index_->ntotal;
  std::vector<ScoredId> out;
  // With tombstones, over-fetch and widen until k live results or the index is exhausted.
  // Tombstones stay under a tenth of the index (NeedsRebuild), so one round is the norm.
  int64_t want = std::min<int64_t>(total, tombstones_.empty() ? k : 2 * k + 16);
  const bool l2 = config_.metric == Metric::kL2;
  while (want > 0) {
    std::vector<float> distances(want);
    std::vector<FaissId> labels(want);
    try {
      index_->search(1, query, want, distances.data(), labels.data());
    } catch (const std::exception& e) {
      return FaissError("search", e);
    }
    out.clear();
    bool exhausted = want == total;
    for (int64_t i = 0; i < want && static_cast<int>(out.size()) < k; ++i) {
      if (labels[i] < 0) {  // fewer results than asked (IVF with small nprobe, HNSW)
        exhausted = true;
        break;
      }
      const auto id = static_cast<uint64_t>(labels[i]);
      if (tombstones_.count(id)) continue;
      out.push_back({id, l2 ? -distances[i] : distances[i]});
    }
    if (static_cast<int>(out.size()) >= k || exhausted) break;
    want = std::min<int64_t>(total, want * 4);
  }
  return out;
}

bool VectorIndex::Contains(uint64_t id) const {
  return index_->rev_map.count(static_cast<FaissId>(id)) && !tombstones_.count(id);
}

int64_t VectorIndex::size() const {
  return index_->ntotal - static_cast<int64_t>(tombstones_.size());
}

std::vector<uint64_t> VectorIndex::LiveIds() const {
  std::vector<uint64_t> ids;
  ids.reserve(index_->id_map.size());
  for (FaissId id : index_->id_map) {
    if (!tombstones_.count(static_cast<uint64_t>(id))) ids.push_back(static_cast<uint64_t>(id));
  }
  std::sort(ids.begin(), ids.end());
  return ids;
}

bool VectorIndex::NeedsRebuild() const {
  if (IsAuto(config_)) {
    // Up at the threshold; down only at half of it, so a namespace hovering around the threshold
    // is not rebuilt on every write.
    if (flat_fallback_ && size() >= config_.auto_threshold) return true;
    if (!flat_fallback_ && size() * 2 < config_.auto_threshold) return true;
    // Grown to four times what its lists were trained for: twice as many lists serve it now.
    const faiss::IndexIVF* ivf = IvfOf(index_->index);
    if (!flat_fallback_ && !training_failed_ && ivf != nullptr &&
        AutoNlist(size()) >= 2 * static_cast<int64_t>(ivf->nlist)) {
      return true;
    }
  } else if (flat_fallback_ && !training_failed_ && size() >= config_.train_min) {
    return true;
  }
  return !tombstones_.empty() && tombstones_.size() * 10 > static_cast<size_t>(index_->ntotal);
}

std::string VectorIndex::AutoServedFactory() const {
  const faiss::IndexIVF* ivf = IvfOf(index_->index);
  return ivf == nullptr ? std::string(kAutoLargeFactory)
                        : WithNlist(kAutoLargeFactory, static_cast<int64_t>(ivf->nlist));
}

std::string VectorIndex::Description() const {
  if (IsAuto(config_)) {
    const std::string served =
        flat_fallback_ ? absl::StrCat("Flat (auto: IVF from ", config_.auto_threshold, " vectors)")
                       : absl::StrCat(AutoServedFactory(), " (auto)");
    if (tombstones_.empty()) return served;
    return absl::StrCat(served, " (", tombstones_.size(), " tombstones)");
  }
  if (flat_fallback_)
    return absl::StrCat("Flat (until ", config_.train_min, " vectors: ", config_.factory, ")");
  if (!tombstones_.empty()) {
    return absl::StrCat(config_.factory, " (", tombstones_.size(), " tombstones)");
  }
  return config_.factory;
}

}  // namespace knowd::storage
