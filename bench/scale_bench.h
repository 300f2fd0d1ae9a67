// `knowd bench scale`: the memory bank at 1k .. 1M passages of the synthetic world, encoded by
// the bundle's real adapter, under several FAISS indexes. Per size and index: recall@5 against
// an exact (Flat) search on the world's questions' keys, search p50/p99, index bytes and build
// time; and per size and index, the latency of a whole mac question (question encode, search,
// the hits' lexical coverage, aggregation, a few greedy tokens: knowledge::PrepareAsk and
// GreedyAnswers, the path `knowd eval` takes). Beside them, the machine's memory bandwidth
// measured in the same run.
//
// Encoding a million passages takes hours on a few cores, so the codes (key + latents per
// passage) can be cached: `cache_dir` holds them in chunk files named by the world and the
// adapter's fingerprint, each written whole (renamed into place), so an interrupted encode
// resumes at its first missing chunk and reruns skip encoding. `synthetic_codes` skips the
// encoder altogether: the passages' real text with random keys and latents, for what costs
// scale (BM25 retrieval, reading latents, aggregation) in minutes; what the dense index
// retrieves then means nothing, so no recall is reported, and IVF lists over uniform keys are
// more even than over real ones.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"

namespace knowd {

// One index to measure: a FAISS factory string, in which "{nlist}" stands for the number of IVF
// lists "auto" would train for the bank's size (storage::AutoNlist), and FAISS
// ParameterSpace settings ("efSearch=64", "nprobe=16"; empty: FAISS's defaults).
struct ScaleIndex {
  std::string factory;
  std::string search_params;
};

struct ScaleBenchOptions {
  std::string bundle = "models/knowd-tiny";
  std::vector<int64_t> sizes = {1000, 10000, 100000, 1000000};
  // The first is the reference the others' recall is measured against; it must be exact. The
  // defaults are BenchScaleFlags::indexes.
  std::vector<ScaleIndex> indexes;
  // The world's passages: the banks hold its first `size` passages, so every size draws from the
  // same stream and the cache serves every run (at least the largest size).
  int64_t world_passages = 1000000;
  std::string cache_dir;  // encoded passages; empty: encode in memory for this run only
  bool encode_only = false;
  bool synthetic_codes = false;  // random keys and latents instead of encoded ones (costs only)
  int threads = 2;
  int queries = 200;      // questions whose keys search each index (recall, p50/p99)
  int asks = 100;         // mac questions per size and index (after 10 unmeasured ones)
  int answer_tokens = 4;  // greedy tokens per mac question
  int mac_top_k = 3;      // passages the adapter aggregates
  int recall_k = 5;       // recall@k against the reference index
  std::string latent_format = "int8";
  std::string dir;     // scratch directory for the banks; empty: a temporary one
  std::string output;  // JSON report; empty: none
};

absl::Status RunScaleBench(const ScaleBenchOptions& options);

// The default --indexes: Flat, HNSW32, what "auto" serves from its threshold on
// (storage::kAutoLargeFactory with kAutoLargeSearchParams), and IVF+PQ with and without exact
// re-ranking.
std::string DefaultScaleIndexes();

// `knowd bench scale`'s flags, as typed: sizes comma-separated; indexes ';'-separated, each
// FACTORY[@PARAMS] ("HNSW32@efSearch=64"). Returns the exit code; errors go to stderr.
struct BenchScaleFlags {
  std::string bundle = "models/knowd-tiny";
  std::string sizes = "1000,10000,100000,1000000";
  std::string indexes = DefaultScaleIndexes();
  int64_t world_passages = 1000000;
  std::string cache;
  bool encode_only = false;
  bool synthetic_codes = false;
  int threads = 2;
  int queries = 200;
  int asks = 100;
  std::string dir;
  std::string out;
};
int RunBenchScale(const BenchScaleFlags& flags);

}  // namespace knowd
