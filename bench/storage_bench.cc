#include "bench/storage_bench.h"

#include <malloc.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>

#include "absl/strings/str_cat.h"
#include "kernels/peak.h"

namespace knowd {
namespace {

namespace fs = std::filesystem;
using storage::Document;
using storage::MemoryBank;
using Clock = std::chrono::steady_clock;

double SecondsSince(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

struct SizeResult {
  int64_t entries = 0;
  double put_seconds = 0, put_docs_per_s = 0, put_mb_per_s = 0;
  int queries = 0;
  double p50_ms = 0, p99_ms = 0, self_recall = 0;
  double scan_gb_per_s = 0;  // key bytes of the namespace per query / p50
  double close_s = 0, open_clean_s = 0, recovery_s = 0;
  bool clean_open_loaded = false, recovery_rebuilt = false;
  uint64_t disk_bytes = 0;
  // Resident memory the process gained by opening the bank cleanly and answering a few queries:
  // what a replica holds in RAM for this many entries (plus fixed costs, which the per-entry
  // slope between two sizes leaves out).
  int64_t open_rss_bytes = 0;
};

// The process's resident set, from /proc/self/statm (pages).
int64_t ResidentBytes() {
  std::ifstream statm("/proc/self/statm");
  int64_t size = 0, resident = 0;
  statm >> size >> resident;
  return resident * sysconf(_SC_PAGESIZE);
}

// Deterministic synthetic entries: everything about entry i is a function of i, so queries
// can regenerate a stored key without keeping a million of them around.
uint64_t Mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

float Uniform(uint64_t& state) {  // in [-1, 1)
  state = Mix(state);
  return static_cast<float>(state >> 40) * 0x1p-23f - 1.0f;
}

std::vector<float> EntryKey(int64_t i, int dim) {
  uint64_t s = Mix(static_cast<uint64_t>(i) * 2 + 1);
  std::vector<float> key(dim);
  float norm = 0;
  for (float& v : key) {
    v = Uniform(s);
    norm += v * v;
  }
  for (float& v : key) v /= std::sqrt(norm);
  return key;
}

Document MakeEntry(int64_t i, const StorageBenchOptions& o) {
  Document d;
  d.name_space = "bench";
  d.id = absl::StrCat("entry-", i);
  d.metadata = absl::StrCat("{\"source\":\"storage-bench\",\"n\":", i, "}");
  storage::Passage p;
  p.text = absl::StrCat("Synthetic passage ", i, " of the storage benchmark, about topic ", i % 997,
                        " and subtopic ", i % 31, ".");
  p.key = EntryKey(i, o.key_dim);
  p.latents.resize(static_cast<size_t>(o.latent_rows) * o.latent_cols);
  uint64_t s = Mix(static_cast<uint64_t>(i) * 2);
  for (float& v : p.latents) v = 4.0f * Uniform(s);
  d.passages.push_back(std::move(p));
  return d;
}

// Bytes the bank stores per entry (payload, not RocksDB overhead): latents as encoded, the f32
// key, the passage text and the metadata.
double PayloadBytes(const Document& d, const StorageBenchOptions& o) {
  return static_cast<double>(
      storage::ModulationBytes(o.key_dim, o.latent_rows, o.latent_cols, o.latent_format) +
      d.passages[0].text.size() + d.metadata.size());
}

storage::BankOptions BankOptionsFor(const StorageBenchOptions& o, const std::string& dir) {
  storage::BankOptions b;
  b.data_dir = dir;
  b.key_dim = o.key_dim;
  b.latent_rows = o.latent_rows;
  b.latent_cols = o.latent_cols;
  b.latent_format = o.latent_format;
  b.index_factory = o.index_factory;
  b.index_search_params = o.index_search_params;
  b.lexical_index = o.lexical_index;
  return b;
}

absl::Status PutRange(MemoryBank& bank, const StorageBenchOptions& o, int64_t begin, int64_t end,
                      double* put_seconds, double* payload) {
  std::vector<Document> batch;
  for (int64_t start = begin; start < end; start += o.batch_docs) {
    batch.clear();
    for (int64_t i = start; i < std::min(end, start + o.batch_docs); ++i) {
      batch.push_back(MakeEntry(i, o));
      *payload += PayloadBytes(batch.back(), o);
    }
    const auto t = Clock::now();
    auto acks = bank.Put(batch);
    *put_seconds += SecondsSince(t);
    if (!acks.ok()) return acks.status();
  }
  return absl::OkStatus();
}

// Leaves the bank as a crash would: a child process opens it, commits one more batch (synced)
// and exits without Close(), so the saved index files are stale. fork() rather than a thread:
// RocksDB allows one opener per directory per process.
absl::Status MakeUncleanShutdown(const StorageBenchOptions& o, const std::string& dir,
                                 int64_t first_new) {
  std::fflush(nullptr);
  pid_t child = fork();
  if (child < 0) return absl::InternalError("fork failed");
  if (child == 0) {
    auto bank = MemoryBank::Open(BankOptionsFor(o, dir));
    double seconds = 0, payload = 0;
    if (!bank.ok() ||
        !PutRange(**bank, o, first_new, first_new + o.batch_docs, &seconds, &payload).ok()) {
      _exit(1);
    }
    (void)bank->release();  // no Close(): that is the point
    _exit(0);
  }
  int status = 0;
  for (int waited_ms = 0; waitpid(child, &status, WNOHANG) == 0; waited_ms += 10) {
    if (waited_ms > 300000) {
      kill(child, SIGKILL);
      waitpid(child, &status, 0);
      return absl::DeadlineExceededError("the unclean-shutdown child hung");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    return absl::InternalError("the unclean-shutdown child failed");
  }
  return absl::OkStatus();
}

absl::StatusOr<SizeResult> RunSize(const StorageBenchOptions& o, int64_t n,
                                   const std::string& dir) {
  SizeResult r;
  r.entries = n;
  const storage::BankOptions options = BankOptionsFor(o, dir);
  {
    auto bank = MemoryBank::Open(options);
    if (!bank.ok()) return bank.status();
    double payload = 0;
    if (absl::Status s = PutRange(**bank, o, 0, n, &r.put_seconds, &payload); !s.ok()) return s;
    r.put_docs_per_s = static_cast<double>(n) / r.put_seconds;
    r.put_mb_per_s = payload / 1e6 / r.put_seconds;

    // Queries: a stored key plus a little noise; the source entry should come first.
    const double scan_bytes = static_cast<double>(n) * o.key_dim * sizeof(float);
    r.queries = static_cast<int>(std::clamp<double>(64e9 / scan_bytes, 20, o.queries));
    std::mt19937_64 rng(42);
    std::normal_distribution<float> noise(0.0f, 0.02f);
    std::vector<double> ms;
    int found = 0;
    for (int q = 0; q < r.queries; ++q) {
      const int64_t target = static_cast<int64_t>(rng() % static_cast<uint64_t>(n));
      storage::SearchRequest req;
      req.name_space = "bench";
      req.key = EntryKey(target, o.key_dim);
      for (float& v : req.key) v += noise(rng);
      req.k = o.k;
      const auto t = Clock::now();
      auto hits = (*bank)->Search(req);
      ms.push_back(SecondsSince(t) * 1e3);
      if (!hits.ok()) return hits.status();
      if (!hits->empty() && (*hits)[0].doc_id == absl::StrCat("entry-", target)) ++found;
    }
    std::sort(ms.begin(), ms.end());
    r.p50_ms = ms[ms.size() / 2];
    r.p99_ms = ms[std::min(ms.size() - 1, ms.size() * 99 / 100)];
    r.self_recall = static_cast<double>(found) / r.queries;
    r.scan_gb_per_s = scan_bytes / (r.p50_ms * 1e-3) / 1e9;
    auto stats = (*bank)->Stats();
    if (stats.ok()) r.disk_bytes = stats->disk_bytes;
    const auto t = Clock::now();
    if (absl::Status s = (*bank)->Close(); !s.ok()) return s;
    r.close_s = SecondsSince(t);
  }
  {
    // What the bank before this one freed goes back to the kernel first, so the growth below is
    // this bank's and not memory the allocator had kept.
    malloc_trim(0);
    const int64_t rss_before = ResidentBytes();
    const auto t = Clock::now();
    auto bank = MemoryBank::Open(options);
    r.open_clean_s = SecondsSince(t);
    if (!bank.ok()) return bank.status();
    r.clean_open_loaded = (*bank)->Stats()->indexes_loaded_from_disk;
    for (int q = 0; q < 20; ++q) {  // a replica that has answered: caches and scratch in use
      storage::SearchRequest req;
      req.name_space = "bench";
      req.key = EntryKey(q * 7919 % n, o.key_dim);
      req.k = o.k;
      req.with_text = true;  // as an ask reads its passages
      if (o.lexical_index) {
        req.hybrid = true;
        req.query_text = absl::StrCat("topic ", q % 997, " subtopic");
      }
      if (auto hits = (*bank)->Search(req); !hits.ok()) return hits.status();
    }
    r.open_rss_bytes = ResidentBytes() - rss_before;
  }  // closed cleanly again
  if (absl::Status s = MakeUncleanShutdown(o, dir, n); !s.ok()) return s;
  {
    const auto t = Clock::now();
    auto bank = MemoryBank::Open(options);
    r.recovery_s = SecondsSince(t);
    if (!bank.ok()) return bank.status();
    auto stats = (*bank)->Stats();
    r.recovery_rebuilt = !stats->indexes_loaded_from_disk;
    if (stats->documents != static_cast<uint64_t>(n + o.batch_docs)) {
      return absl::InternalError(absl::StrCat("after recovery the bank holds ", stats->documents,
                                              " documents, expected ", n + o.batch_docs));
    }
  }
  return r;
}

}  // namespace

absl::Status RunStorageBench(const StorageBenchOptions& o) {
  if (o.entries.empty() || o.key_dim <= 0 || o.batch_docs <= 0 || o.k <= 0 || o.queries <= 0) {
    return absl::InvalidArgumentError("storage bench: entries, key_dim, batch, k, queries > 0");
  }
  const int threads = o.threads > 0
                          ? o.threads
                          : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  std::fprintf(stderr, "measuring memory bandwidth (1 and %d threads)...\n", threads);
  const double bw1 = MeasureMemoryBandwidthGBs(1);
  const double bwn = threads > 1 ? MeasureMemoryBandwidthGBs(threads) : bw1;

  std::string root = o.dir;
  const bool temporary = root.empty();
  if (temporary) {
    std::string pattern = (fs::temp_directory_path() / "knowd-bench-storage-XXXXXX").string();
    if (mkdtemp(pattern.data()) == nullptr) return absl::InternalError("mkdtemp failed");
    root = pattern;
  }
  const char* format = storage::LatentFormatName(o.latent_format);
  std::printf(
      "knowd bench storage — index %s, keys d=%d (f32), latents %dx%d %s, %d docs per "
      "synced Put, top-%d, lexical index %s\n",
      o.index_factory.c_str(), o.key_dim, o.latent_rows, o.latent_cols, format, o.batch_docs, o.k,
      o.lexical_index ? "on" : "off");
  std::printf(
      "machine (measured now): memory bandwidth %.1f GB/s (1 thread), %.1f GB/s "
      "(%d threads)\n\n",
      bw1, bwn, threads);
  std::printf("%9s %11s %9s %8s %9s %9s %7s %10s %8s %8s %9s %9s %9s %8s\n", "entries", "put doc/s",
              "put MB/s", "queries", "p50 ms", "p99 ms", "recall", "scan GB/s", "of 1-thr",
              "close s", "open s", "recover s", "disk MB", "RAM MB");
  nlohmann::json results = nlohmann::json::array();
  std::vector<SizeResult> sizes;
  absl::Status status = absl::OkStatus();
  for (int64_t n : o.entries) {
    const std::string dir = (fs::path(root) / absl::StrCat("bank-", n)).string();
    std::error_code ec;
    fs::remove_all(dir, ec);
    std::fprintf(stderr, "%lld entries...\n", static_cast<long long>(n));
    auto r = RunSize(o, n, dir);
    fs::remove_all(dir, ec);
    if (!r.ok()) {
      status = r.status();
      break;
    }
    std::printf(
        "%9lld %11.0f %9.1f %8d %9.3f %9.3f %6.1f%% %10.2f %7.1f%% %8.2f %9.3f %9.3f %9.1f %8.1f\n",
        static_cast<long long>(n), r->put_docs_per_s, r->put_mb_per_s, r->queries, r->p50_ms,
        r->p99_ms, 100 * r->self_recall, r->scan_gb_per_s, 100 * r->scan_gb_per_s / bw1, r->close_s,
        r->open_clean_s, r->recovery_s, r->disk_bytes / 1e6, r->open_rss_bytes / 1e6);
    std::fflush(stdout);
    if (!r->clean_open_loaded || !r->recovery_rebuilt) {
      std::printf("  note: clean open %s the saved index; recovery %s it\n",
                  r->clean_open_loaded ? "loaded" : "did NOT load",
                  r->recovery_rebuilt ? "rebuilt" : "did NOT rebuild");
    }
    results.push_back({{"entries", n},
                       {"put_docs_per_s", r->put_docs_per_s},
                       {"put_mb_per_s", r->put_mb_per_s},
                       {"queries", r->queries},
                       {"topk_p50_ms", r->p50_ms},
                       {"topk_p99_ms", r->p99_ms},
                       {"self_recall_at_1", r->self_recall},
                       {"flat_scan_gb_per_s", r->scan_gb_per_s},
                       {"flat_scan_fraction_of_1thread_bandwidth", r->scan_gb_per_s / bw1},
                       {"close_s", r->close_s},
                       {"open_clean_s", r->open_clean_s},
                       {"recovery_s", r->recovery_s},
                       {"disk_bytes", r->disk_bytes},
                       {"disk_bytes_per_entry", static_cast<double>(r->disk_bytes) / n},
                       {"open_rss_bytes", r->open_rss_bytes},
                       {"ram_bytes_per_entry", static_cast<double>(r->open_rss_bytes) / n}});
    sizes.push_back(*r);
  }
  std::printf(
      "\nput: one synced WriteBatch per %d documents, payload = encoded latents + key + "
      "text + metadata.\nscan GB/s: key bytes of the namespace (entries x d x 4) per "
      "query at p50; a flat search reads them all on one thread, so 'of 1-thr' is its "
      "fraction of the 1-thread memory bandwidth (other factories read less).\n"
      "recover s: open after an unclean shutdown (WAL replay + index rebuild from the "
      "keys column family%s).\n",
      o.batch_docs, o.lexical_index ? " + Xapian rebuild" : "");
  if (temporary) {
    std::error_code ec;
    fs::remove_all(root, ec);
  }
  // Per passage: the slope between the two largest sizes (what one more passage costs, fixed
  // costs such as RocksDB's caches and the process's own left out); with one size, its average.
  nlohmann::json per_passage;
  if (!sizes.empty()) {
    const SizeResult& b = sizes.back();
    const SizeResult* a = sizes.size() >= 2 ? &sizes[sizes.size() - 2] : nullptr;
    const double dn = static_cast<double>(b.entries - (a ? a->entries : 0));
    const double disk = (static_cast<double>(b.disk_bytes) - (a ? a->disk_bytes : 0)) / dn;
    const double ram = (static_cast<double>(b.open_rss_bytes) - (a ? a->open_rss_bytes : 0)) / dn;
    per_passage = {
        {"from_entries", a ? nlohmann::json{a->entries, b.entries} : nlohmann::json{b.entries}},
        {"disk_bytes", disk},
        {"ram_bytes", ram},
        {"passages_per_gb_disk", disk > 0 ? 1e9 / disk : 0.0},
        {"passages_per_gb_ram", ram > 0 ? 1e9 / ram : 0.0}};
    std::printf(
        "per passage (%s): %.0f bytes on disk, %.0f bytes of RAM (resident growth of the "
        "opened bank); %.2fM passages per GB of disk, %.2fM per GB of RAM\n",
        a ? absl::StrCat("slope ", a->entries, "..", b.entries).c_str()
          : absl::StrCat("average at ", b.entries).c_str(),
        disk, ram, disk > 0 ? 1e3 / disk : 0.0, ram > 0 ? 1e3 / ram : 0.0);
  }
  if (!o.output.empty()) {
    nlohmann::json doc = {{"benchmark", "storage"},
                          {"index_factory", o.index_factory},
                          {"key_dim", o.key_dim},
                          {"latent_rows", o.latent_rows},
                          {"latent_cols", o.latent_cols},
                          {"latent_format", format},
                          {"batch_docs", o.batch_docs},
                          {"k", o.k},
                          {"memory_bandwidth_gbs_1thread", bw1},
                          {"memory_bandwidth_gbs", bwn},
                          {"threads", threads},
                          {"lexical_index", o.lexical_index},
                          {"per_passage", per_passage},
                          {"results", results}};
    std::ofstream(o.output) << doc.dump(2) << "\n";
  }
  return status;
}

}  // namespace knowd
