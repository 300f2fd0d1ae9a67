#include "daemon/cli.h"

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <thread>

#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "bench/engine_bench.h"
#include "bench/eval.h"
#include "bench/storage_bench.h"
#include "kernels/backend.h"
#include "kernels/peak.h"
#include "model/adapter.h"
#include "model/generate.h"
#include "model/tensor_file.h"
#include "model/tokenizer.h"
#include "model/transformer.h"
#include "storage/memory_bank.h"

namespace knowd {
namespace {

int Fail(std::string_view command, const absl::Status& status) {
  std::fprintf(stderr, "knowd %.*s: %s\n", static_cast<int>(command.size()), command.data(),
               std::string(status.message()).c_str());
  return 1;
}

absl::StatusOr<std::unique_ptr<Backend>> MakeBackend(const std::string& kind, int threads) {
  if (kind == "cpu") return MakeCpuBackend(threads);
  if (kind == "cuda") return MakeCudaBackend(0);
  return absl::InvalidArgumentError(absl::StrCat("--backend must be cpu or cuda, not ", kind));
}

// Progress of a re-encode on stderr. On a terminal, one line redrawn in place:
// "re-encoding [#####.....] 1200/5000 passages  24%  310.5 passages/s  ETA 0:12"; otherwise a
// plain line at every tenth of the work, so logs stay readable.
class ReencodeProgressBar {
 public:
  explicit ReencodeProgressBar(bool terminal) : terminal_(terminal) {}

  // `done` of `total` passages are re-encoded, `this_run` of them by this process in `seconds`.
  void Update(uint64_t done, uint64_t total, uint64_t this_run, double seconds) {
    const auto now = std::chrono::steady_clock::now();
    const int tenth = total > 0 ? static_cast<int>(10 * done / total) : 10;
    if (terminal_ ? done < total && now - last_ < std::chrono::milliseconds(100)
                  : tenth == last_tenth_ && done < total) {
      return;
    }
    last_ = now;
    last_tenth_ = tenth;
    const double rate = seconds > 0 ? this_run / seconds : 0.0;
    const int64_t eta = rate > 0 ? static_cast<int64_t>((total - done) / rate + 0.5) : 0;
    const int width = 30;
    const int filled = total > 0 ? static_cast<int>(width * done / total) : width;
    const std::string line =
        absl::StrFormat("re-encoding [%s%s] %d/%d passages  %d%%  %.1f passages/s  ETA %d:%02d",
                        std::string(filled, '#'), std::string(width - filled, '.'), done, total,
                        total > 0 ? 100 * done / total : 100, rate, eta / 60, eta % 60);
    if (terminal_) {
      std::fprintf(stderr, "\r%s\033[K", line.c_str());
      drawn_ = true;
    } else {
      std::fprintf(stderr, "%s\n", line.c_str());
    }
    std::fflush(stderr);
  }

  void Finish() {
    if (drawn_) std::fputc('\n', stderr);
    drawn_ = false;
  }

 private:
  const bool terminal_;
  bool drawn_ = false;
  int last_tenth_ = -1;
  std::chrono::steady_clock::time_point last_{};
};

}  // namespace

int RunGenerate(const GenerateFlags& flags) {
  const std::string path = flags.model;
  if (path.empty()) return Fail("generate", absl::InvalidArgumentError("--model is required"));
  absl::StatusOr<std::unique_ptr<Backend>> backend = MakeBackend(flags.backend, flags.threads);
  if (!backend.ok()) return Fail("generate", backend.status());
  absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer = LoadTokenizer(path);
  if (!tokenizer.ok()) return Fail("generate", tokenizer.status());
  absl::StatusOr<std::unique_ptr<Transformer>> model = Transformer::Load(path, backend->get());
  if (!model.ok()) return Fail("generate", model.status());

  std::vector<int32_t> prompt = (*tokenizer)->Encode(flags.prompt, true);
  if (prompt.empty()) prompt.push_back((*model)->config().bos_token_id);
  const int max_tokens = std::max(0, flags.max_tokens);
  const int capacity = std::min<int>((*model)->config().max_position_embeddings,
                                     static_cast<int>(prompt.size()) + max_tokens);
  if (static_cast<int>(prompt.size()) >= (*model)->config().max_position_embeddings) {
    return Fail("generate", absl::InvalidArgumentError(absl::StrCat(
                                "the prompt has ", prompt.size(), " tokens; the model takes ",
                                (*model)->config().max_position_embeddings)));
  }
  absl::StatusOr<std::unique_ptr<KvCache>> cache = (*model)->NewCache(capacity);
  if (!cache.ok()) return Fail("generate", cache.status());

  GenerateOptions options;
  options.max_tokens = max_tokens;
  options.sampling.temperature = static_cast<float>(flags.temperature);
  options.sampling.top_p = static_cast<float>(flags.top_p);
  options.sampling.seed = flags.seed;
  IncrementalDecoder decoder(**tokenizer, prompt);
  absl::StatusOr<std::vector<int32_t>> ids =
      Generate(**model, **cache, prompt, options, [&](int32_t id) {
        const std::string piece = decoder.Push(id);
        std::fwrite(piece.data(), 1, piece.size(), stdout);
        std::fflush(stdout);
        return true;
      });
  if (!ids.ok()) return Fail("generate", ids.status());
  const std::string rest = decoder.Flush();
  std::fwrite(rest.data(), 1, rest.size(), stdout);
  std::fputc('\n', stdout);
  return 0;
}

int RunTokenize(const TokenizeFlags& flags) {
  std::string path = flags.tokenizer;
  if (path.empty()) path = flags.model;
  if (path.empty()) {
    return Fail("tokenize", absl::InvalidArgumentError("--model or --tokenizer is required"));
  }
  absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer = LoadTokenizer(path);
  if (!tokenizer.ok()) return Fail("tokenize", tokenizer.status());
  const std::vector<int32_t> ids = (*tokenizer)->Encode(flags.text, !flags.no_bos);
  std::string line;
  for (size_t i = 0; i < ids.size(); ++i) absl::StrAppend(&line, i ? " " : "", ids[i]);
  std::printf("%s\n", line.c_str());
  return 0;
}

int RunBenchEngine(const BenchEngineFlags& flags) {
  EngineBenchOptions o;
  o.model = flags.model;
  if (o.model.empty()) {
    return Fail("bench engine", absl::InvalidArgumentError("--model is required"));
  }
  o.backend = flags.backend;
  o.threads = flags.threads;
  o.prompt_tokens = flags.prompt_tokens;
  o.decode_tokens = flags.decode_tokens;
  o.json = flags.json;
  o.adapter = flags.adapter;
  o.mac_top_k = flags.mac_top_k;
  absl::Status s = RunEngineBench(o);
  return s.ok() ? 0 : Fail("bench engine", s);
}

int RunBenchSynthModel(const BenchSynthModelFlags& flags) {
  const std::string out = flags.out;
  if (out.empty()) {
    return Fail("bench synth-model", absl::InvalidArgumentError("--out DIR is required"));
  }
  SyntheticModelOptions o;
  o.config = Synthetic30MConfig();
  o.seed = flags.seed;
  absl::Status s = WriteSyntheticModel(out, o);
  if (!s.ok()) return Fail("bench synth-model", s);
  std::printf("wrote %s (%.1fM parameters)\n", out.c_str(), o.config.ParameterCount() / 1e6);
  return 0;
}

int RunBenchStorage(const BenchStorageFlags& flags) {
  StorageBenchOptions o;
  o.entries.clear();
  for (absl::string_view part : absl::StrSplit(flags.entries, ',')) {
    int64_t n = 0;
    if (!absl::SimpleAtoi(part, &n) || n <= 0) {
      return Fail("bench storage", absl::InvalidArgumentError(absl::StrCat(
                                       "--entries: \"", part, "\" is not a positive count")));
    }
    o.entries.push_back(n);
  }
  o.index_factory = flags.index;
  const std::string format = flags.latent_format;
  if (format != "fp16" && format != "int8") {
    return Fail("bench storage",
                absl::InvalidArgumentError("--latent-format must be fp16 or int8"));
  }
  o.latent_format = format == "int8" ? storage::LatentFormat::kInt8 : storage::LatentFormat::kFp16;
  o.lexical_index = flags.lexical;
  o.threads = flags.threads;
  o.output = flags.out;
  absl::Status s = RunStorageBench(o);
  return s.ok() ? 0 : Fail("bench storage", s);
}

int RunBenchPeak(const BenchPeakFlags& flags) {
  // The machine's bounds alone, for benchmarks run outside this process (knowctl load).
  const int threads =
      flags.threads > 0 ? flags.threads : static_cast<int>(std::thread::hardware_concurrency());
  const double gflops = MeasureSgemmPeakGflops(threads);
  const double gbs = MeasureMemoryBandwidthGBs(threads);
  std::printf("machine: %d threads, sgemm peak %.1f GFLOP/s, memory bandwidth %.1f GB/s\n", threads,
              gflops, gbs);
  return 0;
}

int RunEval(const EvalFlags& flags) {
  bench::EvalOptions o;
  o.bundle_dir = flags.bundle;
  if (o.bundle_dir.empty()) return Fail("eval", absl::InvalidArgumentError("--bundle is empty"));
  o.data_dir = flags.data;
  if (o.data_dir.empty()) o.data_dir = (std::filesystem::path(o.bundle_dir) / "eval").string();
  o.split = flags.split;
  o.limit = flags.limit;
  if (o.limit < 0) return Fail("eval", absl::InvalidArgumentError("--limit must be >= 0"));
  o.report_path = flags.report;
  o.threads = flags.threads;
  o.batch = flags.batch;
  if (o.batch < 1) return Fail("eval", absl::InvalidArgumentError("--batch must be >= 1"));
  const std::string format = flags.latent_format;
  if (format != "fp16" && format != "int8") {
    return Fail("eval", absl::InvalidArgumentError("--latent-format must be fp16 or int8"));
  }
  o.latent_format = format == "int8" ? storage::LatentFormat::kInt8 : storage::LatentFormat::kFp16;
  o.examples = flags.examples;
  o.mac_top_k = flags.mac_top_k;
  if (o.mac_top_k < 1) return Fail("eval", absl::InvalidArgumentError("--mac-top-k must be >= 1"));
  const std::string retrieval = flags.mac_retrieval;
  if (retrieval == "hybrid") {
    o.mac_retrieval = bench::MacRetrieval::kHybrid;
  } else if (retrieval == "dense") {
    o.mac_retrieval = bench::MacRetrieval::kDense;
  } else if (retrieval == "lexical") {
    o.mac_retrieval = bench::MacRetrieval::kLexical;
  } else {
    return Fail("eval",
                absl::InvalidArgumentError(absl::StrCat(
                    "--mac-retrieval must be hybrid, dense or lexical, not \"", retrieval, "\"")));
  }
  const std::string mac_rag_text = flags.mac_rag_text;
  if (mac_rag_text != "subject" && mac_rag_text != "top1") {
    return Fail("eval", absl::InvalidArgumentError(absl::StrCat(
                            "--mac-rag-text must be subject or top1, not \"", mac_rag_text, "\"")));
  }
  o.mac_rag_subject = mac_rag_text == "subject";
  o.rag_prefix_key_scale = flags.rag_prefix_key_scale;
  if (o.rag_prefix_key_scale != 0 && !IsValidRagPrefixKeyScale(o.rag_prefix_key_scale)) {
    return Fail("eval", absl::InvalidArgumentError(
                            "--rag-prefix-key-scale must be in (0, 4], or 0 for the adapter's"));
  }
  if (flags.backend != "cpu") {
    return Fail("eval", absl::InvalidArgumentError("eval runs on the cpu backend only"));
  }
  absl::Status s = bench::RunEval(o);
  return s.ok() ? 0 : Fail("eval", s);
}

int RunReencode(const ReencodeFlags& flags) {
  const std::string data_dir = flags.data_dir;
  if (data_dir.empty()) {
    return Fail("reencode", absl::InvalidArgumentError("--data-dir (the memory bank) is required"));
  }
  const std::string bundle = flags.bundle;
  std::string adapter_dir = flags.adapter;
  if (adapter_dir.empty()) adapter_dir = (std::filesystem::path(bundle) / "adapter").string();
  const std::string format = flags.latent_format;
  if (format != "fp16" && format != "int8") {
    return Fail("reencode", absl::InvalidArgumentError("--latent-format must be fp16 or int8"));
  }
  absl::StatusOr<std::unique_ptr<Backend>> backend = MakeBackend(flags.backend, flags.threads);
  if (!backend.ok()) return Fail("reencode", backend.status());
  absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer = LoadTokenizer(bundle);
  if (!tokenizer.ok()) return Fail("reencode", tokenizer.status());
  absl::StatusOr<std::unique_ptr<Transformer>> model = Transformer::Load(bundle, backend->get());
  if (!model.ok()) return Fail("reencode", model.status());
  absl::StatusOr<std::unique_ptr<Adapter>> adapter = Adapter::Load(adapter_dir, model->get());
  if (!adapter.ok()) return Fail("reencode", adapter.status());
  const AdapterSpec& spec = (*adapter)->spec();

  storage::BankOptions options;
  options.data_dir = data_dir;
  options.create_if_missing = false;
  options.key_dim = spec.key_dim;
  options.latent_rows = spec.slots;
  options.latent_cols = spec.latent_dim;
  options.latent_format =
      format == "int8" ? storage::LatentFormat::kInt8 : storage::LatentFormat::kFp16;
  options.index_factory = flags.index;
  options.lexical_index = false;  // rebuilt from the texts at every open; not needed here
  options.fingerprint = {spec.encoder_sha256, spec.base_sha256};
  options.open_for_reencode = true;
  absl::StatusOr<std::unique_ptr<storage::MemoryBank>> bank = storage::MemoryBank::Open(options);
  if (!bank.ok()) return Fail("reencode", bank.status());
  absl::StatusOr<storage::BankStats> stats = (*bank)->Stats();
  if (!stats.ok()) return Fail("reencode", stats.status());
  const std::string adapter_label = spec.encoder_sha256.substr(0, 12);
  if (!stats->needs_reencode && stats->fingerprint == options.fingerprint) {
    std::printf("%s: already encoded by adapter %s; nothing to do\n", data_dir.c_str(),
                adapter_label.c_str());
    absl::Status closed = (*bank)->Close();
    return closed.ok() ? 0 : Fail("reencode", closed);
  }

  // The passages' text as the bank stores it, with BOS, cut to the model's context (what the
  // daemon encodes when it ingests).
  const int max_tokens = (*model)->config().max_position_embeddings;
  uint64_t this_run = 0;
  const auto start = std::chrono::steady_clock::now();
  auto seconds = [&] {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  };
  storage::PassageEncoder encoder = [&](std::span<const std::string_view> texts,
                                        std::vector<storage::EncodedPassage>* out) {
    std::vector<std::vector<int32_t>> passages;
    for (std::string_view text : texts) {
      std::vector<int32_t> ids = (*tokenizer)->Encode(text, true);
      if (static_cast<int>(ids.size()) > max_tokens) ids.resize(max_tokens);
      if (ids.size() < 2) ids.push_back((*model)->config().eos_token_id);  // an empty passage
      passages.push_back(std::move(ids));
    }
    std::vector<PassageCode> codes;
    if (absl::Status s = (*adapter)->EncodePassages(passages, &codes); !s.ok()) return s;
    out->clear();
    for (PassageCode& c : codes) out->push_back({std::move(c.latents), std::move(c.key)});
    this_run += texts.size();
    return absl::OkStatus();
  };
  ReencodeProgressBar bar(isatty(STDERR_FILENO) != 0);
  bool first = true;
  storage::ReencodeProgress progress = [&](uint64_t done, uint64_t total) {
    if (first && done > this_run) {
      bar.Finish();
      std::fprintf(stderr, "resuming: %llu of %llu passages were re-encoded before\n",
                   static_cast<unsigned long long>(done - this_run),
                   static_cast<unsigned long long>(total));
    }
    first = false;
    bar.Update(done, total, this_run, seconds());
    if (done >= total) bar.Finish();  // the bank logs while it rebuilds its indexes
  };
  absl::Status status = (*bank)->Reencode(encoder, progress, /*batch_size=*/64);
  bar.Finish();
  if (!status.ok()) {
    return Fail("reencode",
                absl::Status(status.code(),
                             absl::StrCat(status.message(), " (run the command again to resume)")));
  }
  if (absl::Status closed = (*bank)->Close(); !closed.ok()) return Fail("reencode", closed);
  const double elapsed = seconds();
  std::printf(
      "%s: re-encoded %llu passages in %.1f s (%.1f passages/s); the bank now belongs to "
      "adapter %s\n",
      data_dir.c_str(), static_cast<unsigned long long>(this_run), elapsed,
      elapsed > 0 ? this_run / elapsed : 0.0, adapter_label.c_str());
  return 0;
}

}  // namespace knowd
