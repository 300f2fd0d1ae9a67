// Helpers shared by the storage tests and the crash-test child: temporary directories and
// deterministic synthetic documents (the encoder does not exist yet, so latents and keys are
// pseudo-random functions of the document id and version).
#pragma once

#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "storage/memory_bank.h"

namespace knowd::storage::testing {

inline constexpr int kKeyDim = 16;
inline constexpr int kRows = 4;
inline constexpr int kCols = 8;

// A fresh directory under the system temp dir, removed on destruction.
class TempDir {
 public:
  TempDir() {
    std::string pattern =
        (std::filesystem::temp_directory_path() / "knowd-storage-XXXXXX").string();
    path_ = mkdtemp(pattern.data());
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }
  std::string Sub(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

inline BankOptions TestOptions(const std::string& dir) {
  BankOptions o;
  o.data_dir = dir;
  o.key_dim = kKeyDim;
  o.latent_rows = kRows;
  o.latent_cols = kCols;
  o.latent_cache_bytes = 1 << 20;
  return o;
}

inline uint64_t Seed(const std::string& id, int version, int passage) {
  uint64_t h = 1469598103934665603ull;
  for (char c : id) h = (h ^ static_cast<uint8_t>(c)) * 1099511628211ull;
  return h ^ (static_cast<uint64_t>(version) << 32) ^ static_cast<uint64_t>(passage);
}

// Unit-norm pseudo-random key.
inline std::vector<float> SyntheticKey(uint64_t seed, int dim = kKeyDim) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal;
  std::vector<float> key(dim);
  float norm = 0;
  for (float& v : key) {
    v = normal(rng);
    norm += v * v;
  }
  for (float& v : key) v /= std::sqrt(norm);
  return key;
}

inline std::vector<float> SyntheticLatents(uint64_t seed, int rows = kRows, int cols = kCols) {
  std::mt19937_64 rng(seed * 31 + 7);
  std::uniform_real_distribution<float> uniform(-2.0f, 2.0f);
  std::vector<float> latents(static_cast<size_t>(rows) * cols);
  for (float& v : latents) v = uniform(rng);
  return latents;
}

inline std::string PassageText(const std::string& id, int version, int passage) {
  return absl::StrCat("passage ", passage, " of ", id, " version ", version);
}

inline Document MakeDoc(const std::string& ns, const std::string& id, int version = 0,
                        int passages = 2) {
  Document d;
  d.name_space = ns;
  d.id = id;
  d.text = absl::StrCat("document ", id, " v", version);
  d.metadata = absl::StrCat("{\"version\":", version, "}");
  for (int p = 0; p < passages; ++p) {
    Passage passage;
    passage.text = PassageText(id, version, p);
    passage.key = SyntheticKey(Seed(id, version, p));
    passage.latents = SyntheticLatents(Seed(id, version, p));
    d.passages.push_back(std::move(passage));
  }
  return d;
}

// One-passage documents in namespace "ns" for lexical search by names: 20 fillers (the first 10
// about Person<i> in Town<i>), then "velka", "velka-update" (she moved from Celxi to Pemoos) and
// "stoul" (also in Celxi).
inline std::vector<Document> NamesFixture() {
  std::vector<Document> docs;
  for (int i = 0; i < 20; ++i) docs.push_back(MakeDoc("ns", absl::StrCat("filler-", i), 0, 1));
  for (int i = 0; i < 10; ++i) {
    docs[i].passages[0].text = absl::StrCat("Person", i, " has made a home in Town", i, ".");
  }
  auto add = [&](const std::string& id, const std::string& text) {
    docs.push_back(MakeDoc("ns", id, 0, 1));
    docs.back().passages[0].text = text;
  };
  add("velka", "Velka Keslemul has made a home in Celxi. Velka's pet is a ferret.");
  add("velka-update", "Velka Keslemul no longer lives in Celxi; she now lives in Pemoos.");
  add("stoul", "Stoul Sasen has made a home in Celxi.");
  return docs;
}

}  // namespace knowd::storage::testing
