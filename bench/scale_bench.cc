#include "bench/scale_bench.h"

#include <omp.h>
#include <stdlib.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <numeric>
#include <random>
#include <span>
#include <string_view>
#include <unordered_map>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "bench/eval.h"
#include "kernels/peak.h"
#include "knowledge/ask.h"
#include "knowledge/bundle.h"
#include "knowledge/passages.h"
#include "storage/memory_bank.h"
#include "storage/vector_index.h"
#include "train/world.h"

namespace knowd {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using Json = nlohmann::json;

constexpr char kNamespace[] = "scale";
constexpr char kCacheMagic[8] = {'K', 'N', 'D', 'S', 'C', 'A', 'L', '1'};
constexpr int64_t kChunk = 4096;            // passages per cache file
constexpr int kEncodeBatch = 256;           // passages per EncodePassageTexts call
constexpr double kPassagesPerPerson = 1.1;  // the world's main passages plus some updates

double SecondsSince(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

// The 1-minute load average (/proc/loadavg): how busy the machine was around the timings.
double LoadAverage() {
  std::ifstream in("/proc/loadavg");
  double load = -1;
  in >> load;
  return load;
}

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(p * static_cast<double>(v.size())))];
}

// Every passage's code, in stream order: key_dim floats of key, then latent floats, per passage.
struct Codes {
  int key_dim = 0;
  int latent_floats = 0;
  int64_t count = 0;
  std::vector<float> keys;     // count × key_dim
  std::vector<float> latents;  // count × latent_floats
};

// The world whose first `n` passages the bench stores: the test split, with enough people.
// Generating a million people's world takes minutes, so with a cache directory what the bench
// reads of it (passage ids and texts, questions with their passage) is kept in world.tsv there.
absl::StatusOr<train::SplitData> MakeWorld(int64_t n, const std::string& cache_dir,
                                           int64_t* people) {
  train::WorldOptions w;
  *people = static_cast<int64_t>(std::ceil(static_cast<double>(n) / kPassagesPerPerson)) + 16;
  w.people[static_cast<int>(train::Split::kTest)] = static_cast<int>(*people);
  const auto t = Clock::now();
  const std::string cached =
      cache_dir.empty()
          ? std::string()
          : (fs::path(cache_dir) / absl::StrCat("world-", w.seed, "-test-", *people, ".tsv"))
                .string();
  train::SplitData data;
  std::ifstream in(cached);
  int64_t passages = 0, questions = 0;
  std::string line;
  if (!cached.empty() && in >> passages >> questions && std::getline(in, line)) {
    data.passages.resize(passages);
    data.questions.resize(questions);
    bool ok = true;
    for (train::Passage& p : data.passages) {
      ok = ok && std::getline(in, p.id, '\t') && std::getline(in, p.text);
    }
    for (train::Question& q : data.questions) {
      ok = ok && std::getline(in, q.passage_id, '\t') && std::getline(in, q.question);
    }
    if (!ok) data = train::SplitData();
  }
  if (data.passages.empty()) {
    data = train::GenerateSplit(w, train::Split::kTest);
    if (!cached.empty()) {
      std::error_code ec;
      fs::create_directories(cache_dir, ec);  // the first run's: the world is cached before codes
      const std::string tmp = cached + ".tmp";
      std::ofstream out(tmp, std::ios::trunc);
      out << data.passages.size() << " " << data.questions.size() << "\n";
      for (const train::Passage& p : data.passages) out << p.id << "\t" << p.text << "\n";
      for (const train::Question& q : data.questions) {
        out << q.passage_id << "\t" << q.question << "\n";
      }
      out.close();
      if (out) fs::rename(tmp, cached, ec);
    }
  }
  std::fprintf(stderr, "world: %lld people, %zu passages, %zu questions (%.1f s)\n",
               static_cast<long long>(*people), data.passages.size(), data.questions.size(),
               SecondsSince(t));
  if (static_cast<int64_t>(data.passages.size()) < n) {
    return absl::InternalError(absl::StrCat("the world made ", data.passages.size(),
                                            " passages, fewer than the ", n, " asked for"));
  }
  return data;
}

std::string ChunkPath(const std::string& dir, int64_t chunk) {
  return (fs::path(dir) / absl::StrCat("codes-", chunk, ".bin")).string();
}

// Reads the first `count` passages of a cache chunk of `whole` passages into codes at `first`.
// False when the file is absent or not that chunk.
bool ReadChunk(const std::string& path, int64_t first, int64_t count, int64_t whole, Codes* codes) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return false;
  char magic[8];
  uint32_t kd = 0, lf = 0;
  int64_t file_first = 0, file_count = 0;
  in.read(magic, 8);
  in.read(reinterpret_cast<char*>(&kd), 4);
  in.read(reinterpret_cast<char*>(&lf), 4);
  in.read(reinterpret_cast<char*>(&file_first), 8);
  in.read(reinterpret_cast<char*>(&file_count), 8);
  if (!in || std::memcmp(magic, kCacheMagic, 8) != 0 ||
      kd != static_cast<uint32_t>(codes->key_dim) ||
      lf != static_cast<uint32_t>(codes->latent_floats) || file_first != first ||
      file_count != whole) {
    return false;
  }
  const std::streamoff header = 8 + 4 + 4 + 8 + 8;
  in.read(reinterpret_cast<char*>(codes->keys.data() + first * kd),
          static_cast<std::streamsize>(count * kd * sizeof(float)));
  in.seekg(header + static_cast<std::streamoff>(whole * kd * sizeof(float)));
  in.read(reinterpret_cast<char*>(codes->latents.data() + first * lf),
          static_cast<std::streamsize>(count * lf * sizeof(float)));
  return static_cast<bool>(in);
}

// Writes one chunk whole (a temporary file renamed into place): a reader never sees half of it.
absl::Status WriteChunk(const std::string& path, int64_t first, int64_t count, int key_dim,
                        int latent_floats, const std::vector<float>& keys,
                        const std::vector<float>& latents) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    const uint32_t kd = key_dim, lf = latent_floats;
    out.write(kCacheMagic, 8);
    out.write(reinterpret_cast<const char*>(&kd), 4);
    out.write(reinterpret_cast<const char*>(&lf), 4);
    out.write(reinterpret_cast<const char*>(&first), 8);
    out.write(reinterpret_cast<const char*>(&count), 8);
    out.write(reinterpret_cast<const char*>(keys.data()),
              static_cast<std::streamsize>(keys.size() * sizeof(float)));
    out.write(reinterpret_cast<const char*>(latents.data()),
              static_cast<std::streamsize>(latents.size() * sizeof(float)));
    out.flush();
    if (!out) return absl::InternalError(absl::StrCat("cannot write ", tmp, " (disk full?)"));
  }
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot rename ", tmp, ": ", ec.message()));
  return absl::OkStatus();
}

// Room for n passages' codes in the bundle's shapes, zeroed.
Codes EmptyCodes(const knowledge::Bundle& bundle, int64_t n) {
  Codes codes;
  codes.key_dim = bundle.modulator->key_dim();
  codes.latent_floats = bundle.modulator->latent_rows() * bundle.modulator->latent_cols();
  codes.count = n;
  codes.keys.resize(static_cast<size_t>(n) * codes.key_dim);
  codes.latents.resize(static_cast<size_t>(n) * codes.latent_floats);
  return codes;
}

// Random codes for the first n passages (ScaleBenchOptions::synthetic_codes): unit-length keys
// and latents of unit variance, from a fixed seed. They cost what encoded ones cost to store,
// index, read and aggregate; what they retrieve means nothing.
Codes SyntheticCodes(const knowledge::Bundle& bundle, int64_t n) {
  Codes codes = EmptyCodes(bundle, n);
  std::mt19937_64 rng(20240601);
  std::normal_distribution<float> normal;
  for (int64_t i = 0; i < n; ++i) {
    const std::span<float> key(codes.keys.data() + i * codes.key_dim, codes.key_dim);
    double norm = 0;
    for (float& v : key) {
      v = normal(rng);
      norm += double{v} * v;
    }
    for (float& v : key) v = static_cast<float>(v / std::sqrt(norm));
  }
  for (float& v : codes.latents) v = normal(rng);
  return codes;
}

// The codes of the first n passages: from the cache where it has them, else encoded now (and
// cached). Reports the encoder's rate.
absl::StatusOr<Codes> EncodeWorld(const ScaleBenchOptions& o, knowledge::Bundle& bundle,
                                  const train::SplitData& world, int64_t people, int64_t n,
                                  Json* report) {
  Codes codes = EmptyCodes(bundle, n);
  std::string dir;
  if (!o.cache_dir.empty()) {
    const storage::Fingerprint fp = bundle.fingerprint();
    dir = (fs::path(o.cache_dir) /
           absl::StrCat("world-", train::WorldOptions().seed, "-test-", people) /
           absl::StrCat("adapter-", fp.adapter_hash.substr(0, 16), "-",
                        fp.base_model_hash.substr(0, 16)))
              .string();
    std::error_code ec;
    fs::create_directories(dir, ec);
    if (ec) return absl::InternalError(absl::StrCat("cannot create ", dir, ": ", ec.message()));
  }
  const int max_positions = bundle.model->config().max_position_embeddings;
  int64_t encoded = 0, cached = 0;
  double encode_s = 0;
  const auto start = Clock::now();
  for (int64_t first = 0; first < n; first += kChunk) {
    const int64_t chunk = first / kChunk;
    const int64_t count = std::min(kChunk, n - first);
    // A chunk is cached whole (kChunk passages) unless it is the world's last.
    const int64_t whole = std::min<int64_t>(kChunk, world.passages.size() - first);
    if (!dir.empty() && ReadChunk(ChunkPath(dir, chunk), first, count, whole, &codes)) {
      cached += count;
      continue;
    }
    const int64_t todo = dir.empty() ? count : whole;
    const auto t = Clock::now();
    Codes part;
    for (int64_t b = first; b < first + todo; b += kEncodeBatch) {
      const int64_t e = std::min(first + todo, b + kEncodeBatch);
      std::vector<std::string_view> texts;
      for (int64_t i = b; i < e; ++i) texts.push_back(world.passages[i].text);
      std::vector<storage::EncodedPassage> out;
      if (absl::Status s = knowledge::EncodePassageTexts(*bundle.modulator, *bundle.tokenizer,
                                                         texts, max_positions, &out);
          !s.ok()) {
        return s;
      }
      for (int64_t i = b; i < e; ++i) {
        const storage::EncodedPassage& p = out[i - b];
        part.keys.insert(part.keys.end(), p.key.begin(), p.key.end());
        part.latents.insert(part.latents.end(), p.latents.begin(), p.latents.end());
      }
    }
    encode_s += SecondsSince(t);
    encoded += todo;
    const int64_t keep = std::min(todo, count);
    std::copy_n(part.keys.begin(), keep * codes.key_dim,
                codes.keys.begin() + first * codes.key_dim);
    std::copy_n(part.latents.begin(), keep * codes.latent_floats,
                codes.latents.begin() + first * codes.latent_floats);
    if (!dir.empty()) {
      if (absl::Status s = WriteChunk(ChunkPath(dir, chunk), first, todo, codes.key_dim,
                                      codes.latent_floats, part.keys, part.latents);
          !s.ok()) {
        return s;
      }
    }
    const double rate = static_cast<double>(encoded) / encode_s;
    const int64_t left = n - first - count;
    std::fprintf(stderr,
                 "encoded %lld passages (%lld from the cache) of %lld: %.1f passages/s, "
                 "%.0f s elapsed, about %.0f s left\n",
                 static_cast<long long>(first + count), static_cast<long long>(cached),
                 static_cast<long long>(n), rate, SecondsSince(start),
                 static_cast<double>(left) / rate);
  }
  (*report)["encode"] = {{"passages", n},
                         {"encoded_now", encoded},
                         {"from_cache", cached},
                         {"threads", o.threads},
                         {"passages_per_s", encoded > 0 ? encoded / encode_s : 0.0}};
  if (encoded > 0) {
    std::printf("encoder: %lld passages in %.1f s, %.1f passages/s (%d threads)\n",
                static_cast<long long>(encoded), encode_s, encoded / encode_s, o.threads);
  }
  return codes;
}

// Questions about the first n passages, spread evenly over them: (question index, passage index).
std::vector<std::pair<int, int64_t>> QuestionsWithin(
    const train::SplitData& world, const std::unordered_map<std::string, int64_t>& passage_of,
    int64_t n, int want) {
  std::vector<std::pair<int, int64_t>> eligible;
  for (size_t q = 0; q < world.questions.size(); ++q) {
    auto it = passage_of.find(world.questions[q].passage_id);
    if (it != passage_of.end() && it->second < n) eligible.emplace_back(q, it->second);
  }
  std::vector<std::pair<int, int64_t>> out;
  if (eligible.empty() || want <= 0) return out;
  const size_t take = std::min(eligible.size(), static_cast<size_t>(want));
  for (size_t i = 0; i < take; ++i) out.push_back(eligible[i * eligible.size() / take]);
  return out;
}

struct IndexFigures {
  std::string factory, search_params, description;
  double build_s = 0;
  int64_t index_bytes = 0;
  double search_p50_ms = 0, search_p99_ms = 0;
  double recall_vs_reference = 0;  // recall@k of the reference's top k
  double gold_recall = 0;          // the question's own passage in the top k
  double ask_p50_ms = 0, ask_p99_ms = 0;
  double ask_retrieval_p50_ms = 0, ask_modulation_p50_ms = 0;
  double baseline_ask_p50_ms = 0;  // the smallest size's, asked in turn (auto only)
  // The same with BM25 retrieval instead of the dense index (auto only).
  double lexical_ask_p50_ms = 0, baseline_lexical_ask_p50_ms = 0;
  double open_s = 0;  // opening the bank with this index (rebuilt from the stored keys)
  // auto only: opening it again, unchanged, as a restart does (its saved files loaded).
  double reopen_s = 0;
  bool reopen_loaded = false;
  int asks = 0, abstained = 0;
};

storage::BankOptions BankOptionsFor(const ScaleBenchOptions& o, const knowledge::Bundle& bundle,
                                    const std::string& dir, const ScaleIndex& index, int64_t n) {
  storage::BankOptions b;
  b.data_dir = dir;
  b.key_dim = bundle.modulator->key_dim();
  b.latent_rows = bundle.modulator->latent_rows();
  b.latent_cols = bundle.modulator->latent_cols();
  b.latent_format = *storage::ParseLatentFormat(o.latent_format);
  b.index_factory = storage::ResolveNlist(index.factory, n);
  b.index_search_params = index.search_params;
  b.index_train_min = 1;   // train at every size: the point is to measure the trained index
  b.lexical_index = true;  // it describes a mac question's terms (the hits' coverage)
  b.fingerprint = bundle.fingerprint();
  return b;
}

absl::Status FillBank(const ScaleBenchOptions& o, const knowledge::Bundle& bundle,
                      const train::SplitData& world, const Codes& codes, int64_t n,
                      const std::string& dir, double* put_s) {
  auto bank = storage::MemoryBank::Open(BankOptionsFor(o, bundle, dir, {"Flat", ""}, n));
  if (!bank.ok()) return bank.status();
  const auto t = Clock::now();
  std::vector<storage::Document> batch;
  for (int64_t first = 0; first < n; first += 1000) {
    batch.clear();
    for (int64_t i = first; i < std::min(n, first + 1000); ++i) {
      const train::Passage& p = world.passages[i];
      storage::Document doc;
      doc.name_space = kNamespace;
      doc.id = p.id;
      storage::Passage passage;
      passage.text = p.text;
      passage.key.assign(codes.keys.begin() + i * codes.key_dim,
                         codes.keys.begin() + (i + 1) * codes.key_dim);
      passage.latents.assign(codes.latents.begin() + i * codes.latent_floats,
                             codes.latents.begin() + (i + 1) * codes.latent_floats);
      doc.passages.push_back(std::move(passage));
      batch.push_back(std::move(doc));
    }
    if (auto acks = (*bank)->Put(batch); !acks.ok()) return acks.status();
  }
  *put_s = SecondsSince(t);
  return (*bank)->Close();
}

// A whole mac question, timed: PrepareAsk (question encode, dense search, the hits' lexical
// coverage, aggregation) and greedy decoding of a few tokens.
struct AskTime {
  bool abstained = false;
  double total_ms = 0, retrieval_ms = 0, modulation_ms = 0;
};

absl::StatusOr<AskTime> TimeAsk(const ScaleBenchOptions& o, knowledge::Bundle& bundle,
                                storage::MemoryBank& bank, const std::string& question,
                                knowledge::Retrieval retrieval) {
  knowledge::AskContext context;
  context.bank = &bank;
  context.tokenizer = bundle.tokenizer.get();
  context.modulator = bundle.modulator.get();
  context.context_positions = bundle.model->config().max_position_embeddings;
  knowledge::AskParams params;
  params.mode = knowledge::AskMode::kMac;
  params.retrieval = retrieval;
  params.top_k = o.mac_top_k;
  params.max_tokens = o.answer_tokens;
  params.abstain_below = 0;
  AskTime out;
  const auto t = Clock::now();
  absl::StatusOr<knowledge::PreparedAsk> prepared =
      knowledge::PrepareAsk(context, kNamespace, question, params);
  if (!prepared.ok()) return prepared.status();
  if (prepared->nothing_in_memory) {
    out.abstained = true;
    return out;
  }
  bench::AnswerRequest request;
  request.prompt = std::move(prepared->prompt);
  request.prefix = std::make_shared<const PrefixKv>(std::move(prepared->prefix));
  auto answers = bench::GreedyAnswers(*bundle.model, *bundle.tokenizer, std::span(&request, 1), 1,
                                      o.answer_tokens);
  if (!answers.ok()) return answers.status();
  out.total_ms = SecondsSince(t) * 1e3;
  out.retrieval_ms = absl::ToDoubleMilliseconds(prepared->retrieval_time);
  out.modulation_ms = absl::ToDoubleMilliseconds(prepared->modulation_time);
  return out;
}

// The smallest size's bank, asked in turn with each measured question, so that a ratio of two
// sizes' latencies compares questions asked at the same moments (the machine's load drifts).
struct Baseline {
  storage::MemoryBank* bank = nullptr;
  const std::vector<std::pair<int, int64_t>>* questions = nullptr;
  std::vector<double> ms;
};

absl::Status MeasureAsks(const ScaleBenchOptions& o, knowledge::Bundle& bundle,
                         storage::MemoryBank& bank, const train::SplitData& world,
                         const std::vector<std::pair<int, int64_t>>& questions,
                         knowledge::Retrieval retrieval, IndexFigures* f, Baseline* baseline) {
  std::vector<double> total_ms, retrieval_ms, modulation_ms;
  const int warmup = std::min<int>(10, questions.size());
  for (int i = 0; i < warmup + static_cast<int>(questions.size()); ++i) {
    const train::Question& q = world.questions[questions[i % questions.size()].first];
    absl::StatusOr<AskTime> a = TimeAsk(o, bundle, bank, q.question, retrieval);
    if (!a.ok()) return a.status();
    if (baseline != nullptr) {
      const auto& bq = *baseline->questions;
      absl::StatusOr<AskTime> b = TimeAsk(
          o, bundle, *baseline->bank, world.questions[bq[i % bq.size()].first].question, retrieval);
      if (!b.ok()) return b.status();
      if (i >= warmup && !b->abstained) baseline->ms.push_back(b->total_ms);
    }
    if (i < warmup) continue;
    if (a->abstained) {
      ++f->abstained;
      continue;
    }
    total_ms.push_back(a->total_ms);
    retrieval_ms.push_back(a->retrieval_ms);
    modulation_ms.push_back(a->modulation_ms);
  }
  f->asks = static_cast<int>(total_ms.size());
  f->ask_p50_ms = Percentile(total_ms, 0.5);
  f->ask_p99_ms = Percentile(total_ms, 0.99);
  f->ask_retrieval_p50_ms = Percentile(retrieval_ms, 0.5);
  f->ask_modulation_p50_ms = Percentile(modulation_ms, 0.5);
  return absl::OkStatus();
}

// One index over the first n keys (ids 0..n-1 are the passages' stream positions), timed.
struct BuiltIndex {
  IndexFigures figures;
  std::unique_ptr<storage::VectorIndex> index;
};

// The configuration an index of `factory` (resolved) is built and served with.
storage::VectorIndexConfig ConfigFor(const Codes& codes, const std::string& factory,
                                     const std::string& search_params) {
  storage::VectorIndexConfig config;
  config.dim = codes.key_dim;
  config.factory = factory;
  config.search_params = search_params;
  config.train_min = 1;
  return config;
}

absl::StatusOr<BuiltIndex> BuildIndex(const Codes& codes, int64_t n, const ScaleIndex& spec) {
  BuiltIndex out;
  IndexFigures& f = out.figures;
  f.factory = storage::ResolveNlist(spec.factory, n);
  f.search_params = spec.search_params;
  const storage::VectorIndexConfig config = ConfigFor(codes, f.factory, f.search_params);
  std::vector<uint64_t> ids(n);
  std::iota(ids.begin(), ids.end(), uint64_t{0});
  const auto t = Clock::now();
  auto built = storage::VectorIndex::Build(
      config, ids, std::span<const float>(codes.keys.data(), static_cast<size_t>(n) * config.dim));
  if (!built.ok()) return built.status();
  f.build_s = SecondsSince(t);
  f.description = (*built)->Description();
  auto bytes = (*built)->Serialize();
  if (!bytes.ok()) return bytes.status();
  f.index_bytes = static_cast<int64_t>(bytes->size());
  out.index = *std::move(built);
  return out;
}

// `built` served with `spec`'s search parameters: its bytes read back with them.
absl::StatusOr<BuiltIndex> CopyIndex(const Codes& codes, const BuiltIndex& built,
                                     const ScaleIndex& spec) {
  BuiltIndex out;
  out.figures = built.figures;
  out.figures.search_params = spec.search_params;
  auto bytes = built.index->Serialize();
  if (!bytes.ok()) return bytes.status();
  auto copy = storage::VectorIndex::Deserialize(
      ConfigFor(codes, built.figures.factory, spec.search_params), *bytes);
  if (!copy.ok()) return copy.status();
  out.index = *std::move(copy);
  return out;
}

// Opens a bank, setting `*seconds` to how long the open took.
absl::StatusOr<std::unique_ptr<storage::MemoryBank>> OpenTimed(const storage::BankOptions& options,
                                                               double* seconds) {
  const auto t = Clock::now();
  auto bank = storage::MemoryBank::Open(options);
  *seconds = SecondsSince(t);
  return bank;
}

// Searches every index with each question key in turn (so the machine's drifting load falls on
// all of them alike): p50/p99, recall@k against the first (Flat) and the gold passage's recall.
absl::Status SearchAll(const ScaleBenchOptions& o, std::vector<BuiltIndex>& built,
                       const std::vector<std::vector<float>>& query_keys,
                       const std::vector<int64_t>& gold) {
  const size_t m = built.size();
  // One query's search is too small to share: with OpenMP's team FAISS forks per call, a busy
  // machine's scheduling delays, not the index's work, made every index's p50 a millisecond or
  // more. Measured on one thread, as the index's own cost; restored after.
  const int omp_threads = omp_get_max_threads();
  omp_set_num_threads(1);
  struct Restore {
    int threads;
    ~Restore() { omp_set_num_threads(threads); }
  } restore{omp_threads};
  std::vector<std::vector<double>> ms(m);
  std::vector<int64_t> overlap(m, 0), gold_found(m, 0);
  int64_t reference_total = 0;
  for (int round = 0; round < 2; ++round) {  // the first round warms caches, unmeasured
    for (size_t q = 0; q < query_keys.size(); ++q) {
      std::vector<uint64_t> reference;
      for (size_t i = 0; i < m; ++i) {
        const auto t = Clock::now();
        auto hits = built[i].index->Search(query_keys[q].data(), o.recall_k);
        const double elapsed = SecondsSince(t) * 1e3;
        if (!hits.ok()) return hits.status();
        if (round == 0) continue;
        ms[i].push_back(elapsed);
        std::vector<uint64_t> got;
        for (const storage::ScoredId& h : *hits) got.push_back(h.id);
        if (i == 0) {
          reference = got;
          reference_total += static_cast<int64_t>(got.size());
        }
        for (uint64_t id : got) {
          overlap[i] += std::find(reference.begin(), reference.end(), id) != reference.end();
        }
        gold_found[i] +=
            std::find(got.begin(), got.end(), static_cast<uint64_t>(gold[q])) != got.end();
      }
    }
  }
  for (size_t i = 0; i < m; ++i) {
    IndexFigures& f = built[i].figures;
    f.search_p50_ms = Percentile(ms[i], 0.5);
    f.search_p99_ms = Percentile(ms[i], 0.99);
    f.recall_vs_reference =
        reference_total > 0 ? static_cast<double>(overlap[i]) / reference_total : 0.0;
    f.gold_recall =
        query_keys.empty() ? 0.0 : static_cast<double>(gold_found[i]) / query_keys.size();
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status RunScaleBench(const ScaleBenchOptions& o) {
  if (o.sizes.empty() || o.indexes.empty() || o.threads < 1 || o.queries < 1 || o.asks < 1 ||
      o.recall_k < 1 || o.answer_tokens < 1) {
    return absl::InvalidArgumentError(
        "bench scale: sizes and indexes must not be empty; threads, queries, asks, recall k and "
        "answer tokens must be >= 1");
  }
  if (!storage::ParseLatentFormat(o.latent_format).has_value()) {
    return absl::InvalidArgumentError("--latent-format must be fp16 or int8");
  }
  if (o.synthetic_codes && o.encode_only) {
    return absl::InvalidArgumentError("--synthetic-codes encodes nothing: drop --encode-only");
  }
  const int64_t max_n = *std::max_element(o.sizes.begin(), o.sizes.end());
  Json report = {{"benchmark", "scale"}, {"bundle", o.bundle}};

  knowledge::BundleOptions bo;
  bo.model = o.bundle;
  bo.threads = o.threads;
  bo.require_adapter = true;
  absl::StatusOr<knowledge::Bundle> loaded = knowledge::LoadBundle(bo);
  if (!loaded.ok()) return loaded.status();
  knowledge::Bundle& bundle = *loaded;

  int64_t people = 0;
  absl::StatusOr<train::SplitData> world_or =
      MakeWorld(std::max(max_n, o.world_passages), o.cache_dir, &people);
  if (!world_or.ok()) return world_or.status();
  const train::SplitData& world = *world_or;
  absl::StatusOr<Codes> codes = o.synthetic_codes
                                    ? SyntheticCodes(bundle, max_n)
                                    : EncodeWorld(o, bundle, world, people, max_n, &report);
  if (!codes.ok()) return codes.status();
  if (o.encode_only) return absl::OkStatus();
  report["codes"] = o.synthetic_codes ? "synthetic" : "encoded";

  std::fprintf(stderr, "measuring memory bandwidth (1 and %d threads)...\n", o.threads);
  const double bw1 = MeasureMemoryBandwidthGBs(1);
  const double bwn = o.threads > 1 ? MeasureMemoryBandwidthGBs(o.threads) : bw1;
  report["machine"] = {
      {"memory_bandwidth_gbs_1thread", bw1}, {"memory_bandwidth_gbs", bwn}, {"threads", o.threads}};
  report["world"] = {{"split", "test"}, {"people", people}, {"passages", world.passages.size()}};
  report["recall_k"] = o.recall_k;
  report["mac_top_k"] = o.mac_top_k;
  report["answer_tokens"] = o.answer_tokens;
  report["latent_format"] = o.latent_format;
  std::printf(
      "knowd bench scale — %s, %skeys d=%d, latents %dx%d (%s stored), recall@%d against %s; "
      "mac: dense top-%d, %d greedy tokens\nmachine (measured now): memory bandwidth %.1f GB/s "
      "(1 thread), %.1f GB/s (%d threads)\n\n",
      o.bundle.c_str(), o.synthetic_codes ? "synthetic (random) " : "", codes->key_dim,
      bundle.modulator->latent_rows(), bundle.modulator->latent_cols(), o.latent_format.c_str(),
      o.recall_k, o.indexes[0].factory.c_str(), o.mac_top_k, o.answer_tokens, bw1, bwn, o.threads);
  std::printf("%9s %-28s %8s %9s %9s %9s %8s %8s %10s %9s %9s %7s\n", "passages", "index",
              "build s", "index MB", "p50 ms", "p99 ms", "recall", "gold", "scan GB/s", "ask p50",
              "ask p99", "open s");

  std::unordered_map<std::string, int64_t> passage_of;
  for (int64_t i = 0; i < max_n; ++i) passage_of[world.passages[i].id] = i;

  std::string root = o.dir;
  const bool temporary = root.empty();
  if (temporary) {
    std::string pattern = (fs::temp_directory_path() / "knowd-bench-scale-XXXXXX").string();
    if (mkdtemp(pattern.data()) == nullptr) return absl::InternalError("mkdtemp failed");
    root = pattern;
  }
  Json sizes = Json::array();
  const storage::LatentFormat format = *storage::ParseLatentFormat(o.latent_format);
  const int64_t modulation_bytes = storage::ModulationBytes(
      codes->key_dim, bundle.modulator->latent_rows(), bundle.modulator->latent_cols(), format);
  absl::Status status;
  // The smallest size's bank (auto) stays open: each larger size's mac questions alternate with
  // questions to it.
  std::unique_ptr<storage::MemoryBank> baseline_bank;
  std::vector<std::pair<int, int64_t>> baseline_questions;
  int64_t baseline_n = 0;
  std::string baseline_dir;
  report["load_average_at_start"] = LoadAverage();
  for (int64_t n : o.sizes) {
    std::fprintf(stderr, "%lld passages...\n", static_cast<long long>(n));
    const auto questions = QuestionsWithin(world, passage_of, n, o.queries);
    const auto ask_questions = QuestionsWithin(world, passage_of, n, o.asks);
    std::vector<std::vector<float>> query_keys;
    std::vector<int64_t> gold;
    for (const auto& [q, p] : questions) {
      // The key the bank's dense index is searched with: the retrieval heads' when the bundle
      // has them (QuestionCode::retrieval_key), as the stored passage keys are.
      absl::StatusOr<QuestionCode> code = knowledge::EncodeQuestion(
          *bundle.modulator, *bundle.tokenizer, world.questions[q].question);
      if (!code.ok()) return code.status();
      query_keys.push_back(std::move(code->retrieval_key));
      gold.push_back(p);
    }
    int64_t text_bytes = 0;
    for (int64_t i = 0; i < n; ++i) text_bytes += world.passages[i].text.size();
    const std::string dir = (fs::path(root) / absl::StrCat("bank-", n)).string();
    std::error_code ec;
    fs::remove_all(dir, ec);
    double put_s = 0;
    if (status = FillBank(o, bundle, world, *codes, n, dir, &put_s); !status.ok()) break;

    Json indexes = Json::array();
    std::vector<IndexFigures> figures;
    {
      std::vector<BuiltIndex> built;
      for (const ScaleIndex& index : o.indexes) {
        const std::string factory = storage::ResolveNlist(index.factory, n);
        // Search parameters are search-time only: an index built already for the same factory
        // is copied and served with this entry's (as a bank reopened with them does).
        auto same = std::find_if(built.begin(), built.end(),
                                 [&](const BuiltIndex& b) { return b.figures.factory == factory; });
        absl::StatusOr<BuiltIndex> b;
        if (same != built.end()) {
          b = CopyIndex(*codes, *same, index);
        } else {
          std::fprintf(stderr, "  building %s...\n", factory.c_str());
          b = BuildIndex(*codes, n, index);
        }
        if (!b.ok()) {
          status = b.status();
          break;
        }
        built.push_back(*std::move(b));
      }
      if (status.ok()) status = SearchAll(o, built, query_keys, gold);
      for (BuiltIndex& b : built) figures.push_back(b.figures);
    }  // the indexes are freed before the banks open
    if (!status.ok()) break;
    std::vector<ScaleIndex> all = o.indexes;
    all.push_back({"auto", ""});  // the bank's default: what it picks for this size
    for (size_t k = 0; k < all.size(); ++k) {
      const ScaleIndex& index = all[k];
      IndexFigures f;
      if (k < figures.size()) {
        f = figures[k];
      } else {
        f.factory = "auto";
      }
      {
        auto bank = OpenTimed(BankOptionsFor(o, bundle, dir, index, n), &f.open_s);
        if (!bank.ok()) {
          status = bank.status();
          break;
        }
        if (auto stats = (*bank)->Stats(); stats.ok() && !stats->namespaces.empty()) {
          if (f.description.empty()) f.description = stats->namespaces[0].index_description;
        }
        Baseline baseline{baseline_bank.get(), &baseline_questions, {}};
        const bool paired = index.factory == "auto" && baseline_bank != nullptr;
        if (status = MeasureAsks(o, bundle, **bank, world, ask_questions,
                                 knowledge::Retrieval::kDense, &f, paired ? &baseline : nullptr);
            !status.ok()) {
          break;
        }
        if (paired) {
          f.baseline_ask_p50_ms = Percentile(baseline.ms, 0.5);
          // The same questions with BM25 retrieval, also asked in turn: how a lexical mac
          // question's cost grows with the namespace.
          IndexFigures lexical;
          Baseline lexical_baseline{baseline_bank.get(), &baseline_questions, {}};
          if (status = MeasureAsks(o, bundle, **bank, world, ask_questions,
                                   knowledge::Retrieval::kLexical, &lexical, &lexical_baseline);
              !status.ok()) {
            break;
          }
          f.lexical_ask_p50_ms = lexical.ask_p50_ms;
          f.baseline_lexical_ask_p50_ms = Percentile(lexical_baseline.ms, 0.5);
        }
        if (status = (*bank)->Close(); !status.ok()) break;
        if (index.factory == "auto") {
          auto again = OpenTimed(BankOptionsFor(o, bundle, dir, index, n), &f.reopen_s);
          if (!again.ok()) {
            status = again.status();
            break;
          }
          if (auto stats = (*again)->Stats(); stats.ok()) {
            f.reopen_loaded = stats->indexes_loaded_from_disk && stats->lexical_loaded_from_disk;
          }
          if (status = (*again)->Close(); !status.ok()) break;
        }
      }
      const double scan_gbs = f.search_p50_ms > 0
                                  ? static_cast<double>(n) * codes->key_dim * sizeof(float) /
                                        (f.search_p50_ms * 1e-3) / 1e9
                                  : 0.0;
      // Random keys retrieve nothing in particular: no recall.
      auto percent = [&](double share) {
        return o.synthetic_codes ? std::string("-") : absl::StrFormat("%.1f%%", 100 * share);
      };
      std::printf("%9lld %-28s %8.2f %9.2f %9.3f %9.3f %8s %8s %10.2f %9.2f %9.2f %7.2f\n",
                  static_cast<long long>(n),
                  (f.search_params.empty() ? f.description
                                           : absl::StrCat(f.description, " ", f.search_params))
                      .c_str(),
                  f.build_s, f.index_bytes / 1e6, f.search_p50_ms, f.search_p99_ms,
                  percent(f.recall_vs_reference).c_str(), percent(f.gold_recall).c_str(), scan_gbs,
                  f.ask_p50_ms, f.ask_p99_ms, f.open_s);
      std::fflush(stdout);
      Json j = {{"factory", f.factory},
                {"search_params", f.search_params},
                {"description", f.description},
                {"mac_ask_p50_ms", f.ask_p50_ms},
                {"mac_ask_p99_ms", f.ask_p99_ms},
                {"mac_ask_retrieval_p50_ms", f.ask_retrieval_p50_ms},
                {"mac_ask_modulation_p50_ms", f.ask_modulation_p50_ms},
                {"mac_asks", f.asks},
                {"mac_abstained", f.abstained},
                {"bank_open_s", f.open_s}};
      if (f.baseline_ask_p50_ms > 0) {
        j.update({{"baseline_passages", baseline_n},
                  {"baseline_mac_ask_p50_ms", f.baseline_ask_p50_ms},
                  {"mac_ask_p50_ratio_to_baseline", f.ask_p50_ms / f.baseline_ask_p50_ms}});
        std::printf(
            "%9s %-28s mac Ask p50 %.2f ms against %.2f ms at %lld passages asked in "
            "turn: x%.2f\n",
            "", "", f.ask_p50_ms, f.baseline_ask_p50_ms, static_cast<long long>(baseline_n),
            f.ask_p50_ms / f.baseline_ask_p50_ms);
      }
      if (index.factory == "auto") {
        j.update({{"bank_reopen_s", f.reopen_s}, {"bank_reopen_loaded_indexes", f.reopen_loaded}});
        std::printf("%9s %-28s reopened unchanged in %.2f s (%s)\n", "", "", f.reopen_s,
                    f.reopen_loaded ? "saved indexes loaded" : "indexes rebuilt");
      }
      if (f.baseline_lexical_ask_p50_ms > 0) {
        j.update({{"mac_ask_lexical_p50_ms", f.lexical_ask_p50_ms},
                  {"baseline_mac_ask_lexical_p50_ms", f.baseline_lexical_ask_p50_ms},
                  {"mac_ask_lexical_p50_ratio_to_baseline",
                   f.lexical_ask_p50_ms / f.baseline_lexical_ask_p50_ms}});
        std::printf(
            "%9s %-28s with BM25 retrieval: %.2f ms against %.2f ms at %lld passages: x%.2f\n", "",
            "", f.lexical_ask_p50_ms, f.baseline_lexical_ask_p50_ms,
            static_cast<long long>(baseline_n),
            f.lexical_ask_p50_ms / f.baseline_lexical_ask_p50_ms);
      }
      if (index.factory != "auto") {
        j.update({{"build_s", f.build_s},
                  {"index_bytes", f.index_bytes},
                  {"index_bytes_per_passage", static_cast<double>(f.index_bytes) / n},
                  {"search_p50_ms", f.search_p50_ms},
                  {"search_p99_ms", f.search_p99_ms},
                  {"scan_gb_per_s", scan_gbs},
                  {"scan_fraction_of_1thread_bandwidth", scan_gbs / bw1}});
        if (!o.synthetic_codes) {
          j.update({{"recall_at_k_vs_reference", f.recall_vs_reference},
                    {"gold_recall_at_k", f.gold_recall}});
        }
      }
      indexes.push_back(j);
    }
    if (status.ok() && baseline_bank == nullptr) {
      auto bank = storage::MemoryBank::Open(BankOptionsFor(o, bundle, dir, {"auto", ""}, n));
      if (!bank.ok()) {
        status = bank.status();
      } else {
        baseline_bank = *std::move(bank);
        baseline_questions = ask_questions;
        baseline_n = n;
        baseline_dir = dir;
      }
    } else {
      fs::remove_all(dir, ec);
    }
    if (!status.ok()) break;
    sizes.push_back({{"passages", n},
                     {"queries", questions.size()},
                     {"put_s", put_s},
                     {"text_bytes", text_bytes},
                     {"latent_and_key_bytes", modulation_bytes * n},
                     {"indexes", indexes}});
  }
  if (baseline_bank != nullptr) {
    if (absl::Status s = baseline_bank->Close(); !s.ok() && status.ok()) status = s;
    baseline_bank.reset();
    std::error_code ec;
    fs::remove_all(baseline_dir, ec);
  }
  if (temporary) {
    std::error_code ec;
    fs::remove_all(root, ec);
  }
  report["load_average_at_end"] = LoadAverage();
  report["sizes"] = sizes;
  // The bank's default index at the largest size against the smallest, asked in turn.
  if (sizes.size() >= 2) {
    for (const Json& i : sizes.back()["indexes"]) {
      if (i["factory"] == "auto" && i.contains("mac_ask_p50_ratio_to_baseline")) {
        report["mac_ask_p50_ratio_largest_to_smallest"] = i["mac_ask_p50_ratio_to_baseline"];
        report["mac_ask_ratio_sizes"] = {baseline_n, sizes.back()["passages"]};
        if (i.contains("mac_ask_lexical_p50_ratio_to_baseline")) {
          report["mac_ask_lexical_p50_ratio_largest_to_smallest"] =
              i["mac_ask_lexical_p50_ratio_to_baseline"];
        }
      }
    }
  }
  std::printf(
      "\nrecall: of the reference's top %d, the share each index returns for the same question "
      "keys; gold: the question's own passage in the top %d.\nscan GB/s: the namespace's key "
      "bytes per search at p50 (a flat search reads them all; others read less).\nask: a whole "
      "mac question (question encode, dense search, the hits' lexical coverage, aggregation, %d "
      "greedy tokens); open s: opening the bank with that index (rebuilt from the stored keys; "
      "the BM25 index loaded from disk).\n",
      o.recall_k, o.recall_k, o.answer_tokens);
  if (!o.output.empty()) std::ofstream(o.output) << report.dump(2) << "\n";
  return status;
}

std::string DefaultScaleIndexes() {
  // "np": no polysemous training, which takes minutes and which a plain IVF+PQ search does not
  // use.
  return absl::StrCat(
      "Flat;HNSW32@efSearch=64;", storage::kAutoLargeFactory, "@", storage::kAutoLargeSearchParams,
      ";IVF{nlist},PQ16np,RFlat@nprobe=32,k_factor_rf=8;IVF{nlist},PQ16np@nprobe=16");
}

int RunBenchScale(const BenchScaleFlags& flags) {
  auto fail = [](const absl::Status& s) {
    std::fprintf(stderr, "knowd bench scale: %s\n", std::string(s.message()).c_str());
    return 1;
  };
  ScaleBenchOptions o;
  o.bundle = flags.bundle;
  o.sizes.clear();
  for (absl::string_view part : absl::StrSplit(flags.sizes, ',', absl::SkipEmpty())) {
    int64_t n = 0;
    if (!absl::SimpleAtoi(part, &n) || n < 100) {
      return fail(absl::InvalidArgumentError(
          absl::StrCat("--sizes: \"", part, "\" is not a count of at least 100 passages")));
    }
    o.sizes.push_back(n);
  }
  o.indexes.clear();
  for (absl::string_view part : absl::StrSplit(flags.indexes, ';', absl::SkipEmpty())) {
    std::pair<std::string, std::string> spec = absl::StrSplit(part, absl::MaxSplits('@', 1));
    o.indexes.push_back({spec.first, spec.second});
  }
  if (o.indexes.empty() || o.indexes[0].factory != "Flat") {
    return fail(absl::InvalidArgumentError(
        "--indexes: the first must be Flat, the exact reference the others' recall is measured "
        "against"));
  }
  o.world_passages = flags.world_passages;
  o.cache_dir = flags.cache;
  o.encode_only = flags.encode_only;
  o.synthetic_codes = flags.synthetic_codes;
  o.threads = flags.threads;
  o.queries = flags.queries;
  o.asks = flags.asks;
  o.dir = flags.dir;
  o.output = flags.out;
  absl::Status s = RunScaleBench(o);
  return s.ok() ? 0 : fail(s);
}

}  // namespace knowd
