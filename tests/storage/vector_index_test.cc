// The "auto" index factory: Flat below its threshold, IVF-Flat from there, a rebuild asked for
// when a namespace crosses it, and the choice kept through save and load and through a bank's
// reopen. The scanned search of Flat and IVF-Flat returns what FAISS's own search returns.
#include "storage/vector_index.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <numeric>
#include <random>
#include <vector>

#include "faiss/IndexIVF.h"
#include "faiss/index_factory.h"
#include "storage/memory_bank.h"
#include "tests/storage/bank_test_util.h"

namespace knowd::storage {
namespace {

using ::testing::HasSubstr;
using testing::kKeyDim;
using testing::SyntheticKey;

constexpr int kDim = 32;

// n unit vectors in a few dozen clusters, as retrieval keys are: ids 0..n-1.
std::vector<float> ClusteredVectors(int64_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<std::vector<float>> centres(40, std::vector<float>(kDim));
  for (auto& c : centres) {
    for (float& v : c) v = normal(rng);
  }
  std::vector<float> out(static_cast<size_t>(n) * kDim);
  for (int64_t i = 0; i < n; ++i) {
    const auto& c = centres[i % centres.size()];
    float norm = 0;
    for (int d = 0; d < kDim; ++d) {
      float& v = out[i * kDim + d];
      v = c[d] + 0.5f * normal(rng);
      norm += v * v;
    }
    for (int d = 0; d < kDim; ++d) out[i * kDim + d] /= std::sqrt(norm);
  }
  return out;
}

std::vector<uint64_t> Iota(int64_t n, uint64_t from = 0) {
  std::vector<uint64_t> ids(n);
  std::iota(ids.begin(), ids.end(), from);
  return ids;
}

VectorIndexConfig AutoConfig(int64_t threshold) {
  VectorIndexConfig c;
  c.dim = kDim;
  c.factory = kAutoIndexFactory;
  c.auto_threshold = threshold;
  return c;
}

std::vector<uint64_t> TopIds(const VectorIndex& index, const float* query, int k) {
  auto hits = index.Search(query, k);
  EXPECT_TRUE(hits.ok()) << hits.status();
  std::vector<uint64_t> ids;
  if (hits.ok()) {
    for (const ScoredId& h : *hits) ids.push_back(h.id);
  }
  return ids;
}

// Share of Flat's top 5 that `index` returns, over 100 queries near stored vectors.
double RecallAgainstFlat(const VectorIndex& index, const std::vector<float>& vectors, int64_t n) {
  VectorIndexConfig flat_config;
  flat_config.dim = kDim;
  flat_config.factory = "Flat";
  auto flat = VectorIndex::Build(flat_config, Iota(n), vectors);
  EXPECT_TRUE(flat.ok());
  std::mt19937_64 rng(7);
  std::normal_distribution<float> noise(0.0f, 0.05f);
  int found = 0, total = 0;
  for (int q = 0; q < 100; ++q) {
    const int64_t at = static_cast<int64_t>(rng() % n);
    std::vector<float> query(vectors.begin() + at * kDim, vectors.begin() + (at + 1) * kDim);
    for (float& v : query) v += noise(rng);
    const auto want = TopIds(**flat, query.data(), 5);
    const auto got = TopIds(index, query.data(), 5);
    for (uint64_t id : want) found += std::count(got.begin(), got.end(), id);
    total += static_cast<int>(want.size());
  }
  return static_cast<double>(found) / total;
}

TEST(VectorIndexTest, AutoServesFlatBelowItsThresholdAndAsksForARebuildAtIt) {
  const std::vector<float> vectors = ClusteredVectors(3000, 1);
  const VectorIndexConfig config = AutoConfig(2000);
  auto small = VectorIndex::Build(config, Iota(1999), {vectors.data(), 1999 * kDim});
  ASSERT_TRUE(small.ok()) << small.status();
  EXPECT_THAT((*small)->Description(), HasSubstr("Flat (auto"));
  EXPECT_FALSE((*small)->NeedsRebuild());
  // Exact below the threshold.
  EXPECT_DOUBLE_EQ(RecallAgainstFlat(**small, vectors, 1999), 1.0);
  ASSERT_TRUE((*small)->Add(Iota(1, 1999), {vectors.data() + 1999 * kDim, kDim}).ok());
  EXPECT_TRUE((*small)->NeedsRebuild());

  auto large = VectorIndex::Build(config, Iota(3000), vectors);
  ASSERT_TRUE(large.ok()) << large.status();
  EXPECT_EQ(AutoNlist(3000), 64);
  EXPECT_EQ((*large)->Description(), "IVF64,Flat (auto)");
  EXPECT_FALSE((*large)->NeedsRebuild());
  EXPECT_GE(RecallAgainstFlat(**large, vectors, 3000), 0.95);
  EXPECT_EQ((*large)->size(), 3000);

  // A few removals are tombstones; shrinking below half the threshold asks for a rebuild, which
  // at that size serves Flat again.
  ASSERT_TRUE((*large)->Remove(Iota(100)).ok());
  EXPECT_FALSE((*large)->NeedsRebuild());
  ASSERT_TRUE((*large)->Remove(Iota(1901, 100)).ok());
  EXPECT_EQ((*large)->size(), 999);
  EXPECT_TRUE((*large)->NeedsRebuild());
  auto rebuilt =
      VectorIndex::Build(config, (*large)->LiveIds(), {vectors.data() + 2001 * kDim, 999 * kDim});
  ASSERT_TRUE(rebuilt.ok()) << rebuilt.status();
  EXPECT_THAT((*rebuilt)->Description(), HasSubstr("Flat (auto"));
  EXPECT_FALSE((*rebuilt)->NeedsRebuild());
}

// Flat and IVF-Flat inner-product indexes are searched by VectorIndex's own scan of FAISS's
// lists. It must return FAISS's own results: the same ids in the same order, the same scores up
// to float rounding, with removed ids (IVF tombstones) left out.
TEST(VectorIndexTest, ScannedSearchReturnsWhatFaissReturns) {
  constexpr int64_t kN = 3000;
  constexpr uint64_t kFirstId = 5000;
  constexpr int kK = 10;
  // Unclustered, so that a query's neighbours lie in several IVF lists and which lists are
  // probed shows in the results.
  std::vector<float> vectors(kN * kDim);
  std::mt19937_64 data_rng(3);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (float& v : vectors) v = normal(data_rng);
  const std::vector<uint64_t> ids = Iota(kN, kFirstId);
  for (const std::string factory : {"Flat", "IVF64,Flat"}) {
    SCOPED_TRACE(factory);
    const bool ivf = factory != "Flat";
    VectorIndexConfig config;
    config.dim = kDim;
    config.factory = factory;
    config.train_min = 1000;
    if (ivf) config.search_params = "nprobe=8";
    auto index = VectorIndex::Build(config, ids, vectors);
    ASSERT_TRUE(index.ok()) << index.status();
    ASSERT_EQ((*index)->Description(), factory);
    // FAISS alone, trained on the same vectors in the same order (its k-means is seeded).
    std::unique_ptr<faiss::Index> reference(
        faiss::index_factory(kDim, factory.c_str(), faiss::METRIC_INNER_PRODUCT));
    reference->train(kN, vectors.data());
    reference->add(kN, vectors.data());
    if (ivf) dynamic_cast<faiss::IndexIVF*>(reference.get())->nprobe = 8;
    // Remove every seventh vector: IVF keeps them as tombstones, Flat drops them.
    std::vector<uint64_t> removed;
    for (int64_t i = 0; i < kN; i += 7) removed.push_back(kFirstId + i);
    ASSERT_TRUE((*index)->Remove(removed).ok());

    std::mt19937_64 rng(11);
    std::normal_distribution<float> noise(0.0f, 0.1f);
    int compared = 0;
    for (int q = 0; q < 50; ++q) {
      const int64_t at = static_cast<int64_t>(rng() % kN);
      std::vector<float> query(vectors.begin() + at * kDim, vectors.begin() + (at + 1) * kDim);
      for (float& v : query) v += noise(rng);
      // FAISS's top 2k, removed ids filtered out, cut to k.
      std::vector<float> distances(2 * kK);
      std::vector<faiss::Index::idx_t> labels(2 * kK);
      reference->search(1, query.data(), 2 * kK, distances.data(), labels.data());
      std::vector<std::pair<uint64_t, float>> want;
      for (int i = 0; i < 2 * kK && static_cast<int>(want.size()) < kK; ++i) {
        if (labels[i] < 0 || labels[i] % 7 == 0) continue;
        want.emplace_back(kFirstId + labels[i], distances[i]);
      }
      auto got = (*index)->Search(query.data(), kK);
      ASSERT_TRUE(got.ok()) << got.status();
      ASSERT_EQ(got->size(), want.size());
      for (size_t i = 0; i < want.size(); ++i) {
        EXPECT_EQ((*got)[i].id, want[i].first) << "query " << q << " rank " << i;
        EXPECT_NEAR((*got)[i].score, want[i].second, 1e-5);
      }
      compared += static_cast<int>(want.size());
    }
    EXPECT_EQ(compared, 50 * kK);
  }
}

TEST(VectorIndexTest, AutoNlistFollowsTheSquareRootOfTheSize) {
  EXPECT_EQ(AutoNlist(2000), 32);  // capped by 39 training points per list
  EXPECT_EQ(AutoNlist(10000), 256);
  EXPECT_EQ(AutoNlist(100000), 1024);
  EXPECT_EQ(AutoNlist(400000), 2048);   // 4·sqrt(n) = 2530: nearer 2048 than 4096
  EXPECT_EQ(AutoNlist(1000000), 4096);  // 4·sqrt(n) = 4000
  EXPECT_EQ(ResolveNlist("IVF{nlist},PQ16np", 100000), "IVF1024,PQ16np");
  EXPECT_EQ(ResolveNlist("HNSW32", 100000), "HNSW32");
}

// An IVF index's lists are trained for the size it was built at; once the namespace has grown so
// far that AutoNlist doubles, the owner is asked to rebuild it with more lists.
TEST(VectorIndexTest, AutoAsksForMoreListsWhenTheNamespaceOutgrowsThem) {
  const std::vector<float> vectors = ClusteredVectors(5000, 3);
  const VectorIndexConfig config = AutoConfig(2000);
  auto index = VectorIndex::Build(config, Iota(3000), {vectors.data(), 3000 * kDim});
  ASSERT_TRUE(index.ok()) << index.status();
  EXPECT_EQ((*index)->Description(), "IVF64,Flat (auto)");
  const int64_t grown = 4992;  // the first size for which AutoNlist is 128
  ASSERT_EQ(AutoNlist(grown - 1), 64);
  ASSERT_EQ(AutoNlist(grown), 128);
  ASSERT_TRUE(
      (*index)
          ->Add(Iota(grown - 1 - 3000, 3000),
                {vectors.data() + 3000 * kDim, static_cast<size_t>(grown - 1 - 3000) * kDim})
          .ok());
  EXPECT_FALSE((*index)->NeedsRebuild());
  ASSERT_TRUE((*index)->Add(Iota(1, grown - 1), {vectors.data() + (grown - 1) * kDim, kDim}).ok());
  EXPECT_TRUE((*index)->NeedsRebuild());
  // Vectors added since training are found all the same.
  EXPECT_GE(RecallAgainstFlat(**index, vectors, grown), 0.95);
  auto rebuilt =
      VectorIndex::Build(config, Iota(grown), {vectors.data(), static_cast<size_t>(grown) * kDim});
  ASSERT_TRUE(rebuilt.ok()) << rebuilt.status();
  EXPECT_EQ((*rebuilt)->Description(), "IVF128,Flat (auto)");
  EXPECT_FALSE((*rebuilt)->NeedsRebuild());
  EXPECT_GE(RecallAgainstFlat(**rebuilt, vectors, grown), 0.95);
}

// A file saved while "auto" served another kind of index is not served: the owner rebuilds.
TEST(VectorIndexTest, AutoRefusesASavedIndexOfAnotherKind) {
  const std::vector<float> vectors = ClusteredVectors(3000, 4);
  VectorIndexConfig hnsw;
  hnsw.dim = kDim;
  hnsw.factory = "HNSW32";
  auto built = VectorIndex::Build(hnsw, Iota(3000), vectors);
  ASSERT_TRUE(built.ok()) << built.status();
  auto bytes = (*built)->Serialize();
  ASSERT_TRUE(bytes.ok());
  auto loaded = VectorIndex::Deserialize(AutoConfig(2000), *bytes);
  EXPECT_EQ(loaded.status().code(), absl::StatusCode::kFailedPrecondition) << loaded.status();
  EXPECT_THAT(loaded.status().message(), HasSubstr("auto"));
}

TEST(VectorIndexTest, AutoRoundTripsThroughSaveAndLoad) {
  const std::vector<float> vectors = ClusteredVectors(3000, 2);
  const VectorIndexConfig config = AutoConfig(2000);
  for (int64_t n : {500, 3000}) {
    auto built =
        VectorIndex::Build(config, Iota(n), {vectors.data(), static_cast<size_t>(n) * kDim});
    ASSERT_TRUE(built.ok()) << built.status();
    auto bytes = (*built)->Serialize();
    ASSERT_TRUE(bytes.ok()) << bytes.status();
    auto loaded = VectorIndex::Deserialize(config, *bytes);
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    EXPECT_EQ((*loaded)->Description(), (*built)->Description());
    EXPECT_EQ((*loaded)->LiveIds(), (*built)->LiveIds());
    for (int64_t at : {int64_t{0}, n / 2, n - 1}) {
      const float* query = vectors.data() + at * kDim;
      EXPECT_EQ(TopIds(**loaded, query, 5), TopIds(**built, query, 5)) << n;
    }
    EXPECT_GE(RecallAgainstFlat(**loaded, vectors, n), 0.95) << n;
    // A loaded Flat still knows it is "auto" below the threshold.
    if (n < config.auto_threshold) {
      ASSERT_TRUE((*loaded)
                      ->Add(Iota(2000 - n, n),
                            {vectors.data() + n * kDim, static_cast<size_t>(2000 - n) * kDim})
                      .ok());
      EXPECT_TRUE((*loaded)->NeedsRebuild());
    }
  }
}

Document KeyedDoc(int64_t i) {
  Document d;
  d.name_space = "ns";
  d.id = absl::StrCat("doc-", i);
  Passage p;
  p.text = absl::StrCat("passage ", i);
  p.key = SyntheticKey(static_cast<uint64_t>(i) * 7 + 1);
  p.latents.assign(testing::kRows * testing::kCols, 0.5f);
  d.passages.push_back(std::move(p));
  return d;
}

void PutRange(MemoryBank& bank, int64_t begin, int64_t end) {
  std::vector<Document> batch;
  for (int64_t i = begin; i < end; i += 5000) {
    batch.clear();
    for (int64_t j = i; j < std::min(end, i + 5000); ++j) batch.push_back(KeyedDoc(j));
    ASSERT_TRUE(bank.Put(batch).ok());
  }
}

void ExpectFinds(MemoryBank& bank, int64_t i) {
  SearchRequest r;
  r.name_space = "ns";
  r.key = SyntheticKey(static_cast<uint64_t>(i) * 7 + 1);
  r.k = 3;
  auto hits = bank.Search(r);
  ASSERT_TRUE(hits.ok()) << hits.status();
  ASSERT_FALSE(hits->empty());
  EXPECT_EQ((*hits)[0].doc_id, absl::StrCat("doc-", i));
}

// The bank's default: a namespace switches to IVF when it reaches the threshold, keeps it
// through a clean reopen (loaded from the index files) and through a rebuild from the stored
// keys (index files gone, as after a crash).
TEST(VectorIndexTest, BankDefaultSwitchesAtTheThresholdAndKeepsItAcrossReopens) {
  testing::TempDir dir;
  BankOptions options = testing::TestOptions(dir.path());
  options.lexical_index = false;
  ASSERT_EQ(options.index_factory, kAutoIndexFactory);
  const std::string flat_auto = "Flat (auto";
  const std::string ivf_auto = absl::StrCat("IVF", AutoNlist(kAutoThreshold + 10), ",Flat (auto)");
  {
    auto bank = MemoryBank::Open(options);
    ASSERT_TRUE(bank.ok()) << bank.status();
    PutRange(**bank, 0, kAutoThreshold - 1);
    EXPECT_THAT((*bank)->Stats()->namespaces[0].index_description, HasSubstr(flat_auto));
    PutRange(**bank, kAutoThreshold - 1, kAutoThreshold + 10);
    EXPECT_EQ((*bank)->Stats()->namespaces[0].index_description, ivf_auto);
    EXPECT_TRUE((*bank)->VerifyIndexes().ok());
    ExpectFinds(**bank, kAutoThreshold / 2);
    ASSERT_TRUE((*bank)->Close().ok());
  }
  {
    auto bank = MemoryBank::Open(options);
    ASSERT_TRUE(bank.ok()) << bank.status();
    EXPECT_TRUE((*bank)->Stats()->indexes_loaded_from_disk);
    EXPECT_EQ((*bank)->Stats()->namespaces[0].index_description, ivf_auto);
    ExpectFinds(**bank, kAutoThreshold + 5);
    ASSERT_TRUE((*bank)->Close().ok());
  }
  std::filesystem::remove_all(std::filesystem::path(dir.path()) / "index");
  {
    auto bank = MemoryBank::Open(options);
    ASSERT_TRUE(bank.ok()) << bank.status();
    EXPECT_FALSE((*bank)->Stats()->indexes_loaded_from_disk);
    EXPECT_EQ((*bank)->Stats()->namespaces[0].index_description, ivf_auto);
    EXPECT_TRUE((*bank)->VerifyIndexes().ok());
    ExpectFinds(**bank, kAutoThreshold / 3);
  }
}

}  // namespace
}  // namespace knowd::storage
