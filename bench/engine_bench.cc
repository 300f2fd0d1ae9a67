#include "bench/engine_bench.h"

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <optional>
#include <random>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "kernels/backend.h"
#include "kernels/cpu/typed_kernels.h"
#include "kernels/peak.h"
#include "knowledge/bundle.h"
#include "model/adapter.h"
#include "model/convert.h"
#include "model/transformer.h"

namespace knowd {
namespace {

// The process's resident memory (/proc/self/statm), in bytes.
int64_t ResidentBytes() {
  std::FILE* f = std::fopen("/proc/self/statm", "r");
  if (f == nullptr) return 0;
  long long pages_total = 0, pages_resident = 0;
  const int read = std::fscanf(f, "%lld %lld", &pages_total, &pages_resident);
  std::fclose(f);
  return read == 2 ? pages_resident * sysconf(_SC_PAGESIZE) : 0;
}

// Bytes of the model's files: the GGUF file, or a directory's *.safetensors.
int64_t ModelFileBytes(const std::string& path) {
  std::error_code error;
  if (!std::filesystem::is_directory(path, error)) {
    const auto size = std::filesystem::file_size(path, error);
    return error ? 0 : static_cast<int64_t>(size);
  }
  int64_t bytes = 0;
  for (const auto& entry : std::filesystem::directory_iterator(path, error)) {
    if (entry.path().extension() == ".safetensors") {
      bytes += static_cast<int64_t>(entry.file_size(error));
    }
  }
  return bytes;
}

double Seconds(std::chrono::steady_clock::time_point since) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - since).count();
}

// FLOPs of one forward pass over `n` new tokens that follow `past` cached rows: every matrix
// product (2 per weight per token) plus attention scores and weighted sums.
double ForwardFlops(const LlamaConfig& c, int64_t n, int64_t past) {
  const double d = c.hidden_size;
  const double matmul_params =
      d * (c.q_dim() + 2.0 * c.kv_dim()) + d * c.q_dim() + 3.0 * d * c.intermediate_size;
  double attention = 0;  // sum over new tokens of the keys each sees
  attention = static_cast<double>(n) * past + static_cast<double>(n) * (n + 1) / 2.0;
  const double per_layer = 2.0 * matmul_params * n + 4.0 * c.q_dim() * attention;
  return per_layer * c.num_layers + 2.0 * d * c.vocab_size;  // logits for the last token only
}

// A mac question's own work on the adapter, beside the same model without a prefix.
struct MacFigures {
  int prefix_rows = 0;
  int top_k = 0;                  // candidates aggregated per question
  int passage_tokens = 68;        // the world's median passage, BOS included
  int question_tokens = 16;       // "Q: <question>\nA:" with BOS
  double passages_per_s = 0;      // EncodePassages, 8 per call
  double encode_gflops = 0;       // of those, the trunk's share of FLOPs per second
  double question_ms = 0;         // EncodeQuestion + Modulate (top-k candidates)
  double prefill_plain_tps = 0;   // the question's prompt, no prefix
  double prefill_prefix_tps = 0;  // the same after the prefix
  double decode1_prefix_tps = 0;  // decode after prefix + 64 tokens, batch 1 and 8
  double decode8_prefix_tps = 0;
};

// Best wall time of `repeats` runs of `iterations` calls of f, per call.
template <typename F>
absl::StatusOr<double> BestSecondsPerCall(int repeats, int iterations, F&& f) {
  double best = 1e30;
  for (int r = 0; r < std::max(1, repeats); ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < iterations; ++i) {
      if (absl::Status s = f(); !s.ok()) return s;
    }
    best = std::min(best, Seconds(t0) / iterations);
  }
  return best;
}

}  // namespace

absl::Status RunEngineBench(const EngineBenchOptions& options) {
  EngineBenchOptions o = options;
  // --dtype: the model converted into a scratch directory, removed when the bench ends.
  struct ScratchDir {
    std::filesystem::path path;
    ~ScratchDir() {
      std::error_code ignored;
      if (!path.empty()) std::filesystem::remove_all(path, ignored);
    }
  } scratch;
  if (!o.dtype.empty()) {
    const std::optional<WeightPlan> plan = ParseWeightPlan(o.dtype);
    if (!plan.has_value()) {
      return absl::InvalidArgumentError(
          absl::StrCat("--dtype \"", o.dtype, "\" is not one of ", WeightPlanNames()));
    }
    scratch.path = std::filesystem::temp_directory_path() /
                   absl::StrCat("knowd-bench-", getpid(), "-", o.dtype);
    std::error_code error;
    std::filesystem::create_directories(scratch.path, error);
    if (error) {
      return absl::InternalError(absl::StrCat("cannot create ", scratch.path.string()));
    }
    const std::string converted = (scratch.path / "model.gguf").string();
    std::fprintf(stderr, "converting %s to %s...\n", o.model.c_str(), o.dtype.c_str());
    // In a child process, so the conversion's freed buffers do not sit in this process's heap
    // and hide the resident memory the load adds.
    std::fflush(nullptr);
    const pid_t child = fork();
    if (child < 0) return absl::InternalError("fork failed");
    if (child == 0) {
      const absl::Status s = ConvertModel(o.model, converted, *plan);
      if (!s.ok()) std::fprintf(stderr, "%s\n", s.ToString().c_str());
      std::fflush(nullptr);
      _exit(s.ok() ? 0 : 1);
    }
    int status = 0;
    if (waitpid(child, &status, 0) != child || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("converting ", o.model, " to ", o.dtype, " failed (the reason is above)"));
    }
    o.model = converted;
  }
  const std::string model_label =
      o.dtype.empty() ? options.model : absl::StrCat(options.model, " as ", o.dtype);
  const int threads = o.threads > 0
                          ? o.threads
                          : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  absl::StatusOr<std::unique_ptr<Backend>> made = knowledge::MakeBackendByName(o.backend, threads);
  if (!made.ok()) return made.status();
  std::unique_ptr<Backend> backend = *std::move(made);
  const int64_t resident_before = ResidentBytes();
  absl::StatusOr<std::unique_ptr<Transformer>> loaded = Transformer::Load(o.model, backend.get());
  if (!loaded.ok()) return loaded.status();
  Transformer& model = **loaded;
  // What loading the model added to the process's resident memory (host memory: on CUDA the
  // weights live on the device and this is only the host's share).
  const int64_t resident_model = ResidentBytes() - resident_before;
  const int64_t file_bytes = ModelFileBytes(o.model);
  const LlamaConfig& c = model.config();
  if (o.prompt_tokens + o.decode_tokens + 1 > c.max_position_embeddings) {
    return absl::InvalidArgumentError(absl::StrCat("prompt + decode tokens exceed the model's ",
                                                   c.max_position_embeddings, " positions"));
  }

  std::unique_ptr<Adapter> adapter;  // the mac question section's, loaded before measuring
  if (!o.adapter.empty()) {
    absl::StatusOr<std::unique_ptr<Adapter>> a = Adapter::Load(o.adapter, &model);
    if (!a.ok()) return a.status();
    adapter = *std::move(a);
    if (o.mac_top_k < 1 || o.mac_top_k > adapter->spec().max_candidates) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--mac-top-k must be in [1, ", adapter->spec().max_candidates, "] for ", o.adapter));
    }
  }

  std::fprintf(stderr, "measuring machine bounds (sgemm peak, memory bandwidth)...\n");
  double peak_gflops = 0, bandwidth_gbs = 0;
  if (backend->kind() == BackendKind::kCuda) {
    absl::StatusOr<DevicePeak> peak = MeasureCudaPeak(0);
    if (!peak.ok()) return peak.status();
    peak_gflops = peak->sgemm_gflops;
    bandwidth_gbs = peak->bandwidth_gbs;
  } else {
    peak_gflops = MeasureSgemmPeakGflops(threads);
    bandwidth_gbs = MeasureMemoryBandwidthGBs(threads);
  }
  // Where the bounds come from, for the report.
  const std::string bounds = backend->kind() == BackendKind::kCuda
                                 ? "cuBLAS sgemm (fp32), device-to-device copy"
                                 : "oneDNN sgemm, read-only sum over DRAM";

  std::mt19937 rng(7);
  std::uniform_int_distribution<int32_t> token(3, c.vocab_size - 1);
  auto random_tokens = [&](int n) {
    std::vector<int32_t> t(n);
    for (int32_t& x : t) x = token(rng);
    return t;
  };

  // Prefill: one sequence of prompt_tokens, best of `repeats`.
  absl::StatusOr<std::unique_ptr<KvCache>> cache =
      model.NewCache(o.prompt_tokens + o.decode_tokens + 1);
  if (!cache.ok()) return cache.status();
  const std::vector<int32_t> prompt = random_tokens(o.prompt_tokens);
  std::vector<float> logits;
  double prefill_s = 1e30;
  for (int r = 0; r < std::max(1, o.repeats); ++r) {
    (*cache)->Clear();
    SequenceStep step{cache->get(), prompt, false};
    const auto t0 = std::chrono::steady_clock::now();
    if (absl::Status s = model.Forward(std::span(&step, 1), &logits); !s.ok()) return s;
    prefill_s = std::min(prefill_s, Seconds(t0));
  }
  const double prefill_tps = o.prompt_tokens / prefill_s;
  const double prefill_gflops = ForwardFlops(c, o.prompt_tokens, 0) / prefill_s / 1e9;

  // Decode at batch B: B sequences with a short prompt each (after `prefix`'s rows when given),
  // then decode_tokens steps together.
  auto decode = [&](int batch_size, const PrefixKv* prefix) -> absl::StatusOr<double> {
    std::vector<std::unique_ptr<KvCache>> caches;
    std::vector<std::vector<int32_t>> next(batch_size);
    std::vector<SequenceStep> steps;
    for (int b = 0; b < batch_size; ++b) {
      const int prefix_rows = prefix != nullptr ? prefix->rows : 0;
      absl::StatusOr<std::unique_ptr<KvCache>> kv =
          model.NewCache(prefix_rows + o.decode_tokens + 65);
      if (!kv.ok()) return kv.status();
      if (prefix != nullptr) {
        absl::Status s = (*kv)->SetPrefix(prefix->keys, prefix->values, prefix->rows);
        if (!s.ok()) return s;
      }
      caches.push_back(std::move(*kv));
      next[b] = random_tokens(64);
      steps.push_back({caches.back().get(), next[b], false});
    }
    if (absl::Status s = model.Forward(steps, &logits); !s.ok()) return s;
    double best = 1e30;
    for (int r = 0; r < std::max(1, o.repeats); ++r) {
      for (auto& kv : caches) {
        if (absl::Status s = kv->TruncateTokens(64); !s.ok()) return s;
      }
      const auto t0 = std::chrono::steady_clock::now();
      for (int i = 0; i < o.decode_tokens; ++i) {
        for (int b = 0; b < batch_size; ++b) {
          next[b].assign(1, token(rng));
          steps[b].tokens = next[b];
        }
        if (absl::Status s = model.Forward(steps, &logits); !s.ok()) return s;
      }
      best = std::min(best, Seconds(t0));
    }
    return batch_size * o.decode_tokens / best;  // tokens/s over all sequences
  };
  absl::StatusOr<double> decode1 = decode(1, nullptr);
  if (!decode1.ok()) return decode1.status();
  absl::StatusOr<double> decode8 = decode(8, nullptr);
  if (!decode8.ok()) return decode8.status();

  // The mac question: real codes of random passages, aggregated for a random question.
  MacFigures mac;
  if (adapter != nullptr) {
    std::fprintf(stderr, "measuring the mac question path (%s)...\n", o.adapter.c_str());
    mac.top_k = o.mac_top_k;
    auto with_bos = [&](int n) {
      std::vector<int32_t> t = random_tokens(n);
      t[0] = c.bos_token_id;
      return t;
    };
    std::vector<std::vector<int32_t>> passages;
    for (int i = 0; i < 8; ++i) passages.push_back(with_bos(mac.passage_tokens));
    std::vector<PassageCode> codes;
    absl::StatusOr<double> encode_s =
        BestSecondsPerCall(o.repeats, 4, [&] { return adapter->EncodePassages(passages, &codes); });
    if (!encode_s.ok()) return encode_s.status();
    mac.passages_per_s = passages.size() / *encode_s;
    mac.encode_gflops = passages.size() * ForwardFlops(c, mac.passage_tokens, 0) / *encode_s / 1e9;

    const std::vector<int32_t> question = with_bos(mac.question_tokens);
    std::vector<std::span<const float>> candidates;
    for (int i = 0; i < mac.top_k; ++i) candidates.emplace_back(codes[i % codes.size()].latents);
    absl::StatusOr<PrefixKv> prefix = absl::InternalError("no question measured");
    absl::StatusOr<double> question_s = BestSecondsPerCall(o.repeats, 20, [&] {
      absl::StatusOr<QuestionCode> code = adapter->EncodeQuestion(question);
      if (!code.ok()) return code.status();
      prefix = adapter->Modulate(*code, candidates);
      return prefix.status();
    });
    if (!question_s.ok()) return question_s.status();
    mac.question_ms = *question_s * 1e3;
    mac.prefix_rows = prefix->rows;

    // The question's prompt (without BOS: the prefix's row 0 is the sink), with and without it.
    const std::span<const int32_t> prompt_tokens(question.data() + 1, question.size() - 1);
    absl::StatusOr<std::unique_ptr<KvCache>> qcache = model.NewCache(prefix->rows + 64);
    if (!qcache.ok()) return qcache.status();
    auto prefill_question = [&](const PrefixKv* p) {
      return BestSecondsPerCall(o.repeats, 50, [&]() -> absl::Status {
        (*qcache)->Clear();
        if (p != nullptr) {
          if (absl::Status s = (*qcache)->SetPrefix(p->keys, p->values, p->rows); !s.ok()) {
            return s;
          }
        }
        SequenceStep step{qcache->get(), prompt_tokens, false};
        return model.Forward(std::span(&step, 1), &logits);
      });
    };
    absl::StatusOr<double> plain_s = prefill_question(nullptr);
    if (!plain_s.ok()) return plain_s.status();
    absl::StatusOr<double> prefixed_s = prefill_question(&*prefix);
    if (!prefixed_s.ok()) return prefixed_s.status();
    mac.prefill_plain_tps = prompt_tokens.size() / *plain_s;
    mac.prefill_prefix_tps = prompt_tokens.size() / *prefixed_s;

    absl::StatusOr<double> d1 = decode(1, &*prefix);
    if (!d1.ok()) return d1.status();
    absl::StatusOr<double> d8 = decode(8, &*prefix);
    if (!d8.ok()) return d8.status();
    mac.decode1_prefix_tps = *d1;
    mac.decode8_prefix_tps = *d8;
  }

  // Decode bound (roofline): a step reads every weight once whatever the batch size, and does
  // 2 FLOPs per weight per sequence; it can go no faster than the slower of the two.
  const double bytes_per_step = static_cast<double>(model.WeightBytesPerToken());
  const double step_flops1 = ForwardFlops(c, 1, 64 + o.decode_tokens / 2);
  auto decode_bound = [&](int b) {
    const double step_s =
        std::max(bytes_per_step / (bandwidth_gbs * 1e9), b * step_flops1 / (peak_gflops * 1e9));
    return b / step_s;
  };
  const double bound1 = decode_bound(1);
  const double bound8 = decode_bound(8);
  const double decode1_gflops = *decode1 * step_flops1 / 1e9;
  const double decode8_gflops = *decode8 * step_flops1 / 1e9;

  if (o.json) {
    std::printf(
        "{\"model\":\"%s\",\"backend\":\"%s\",\"parameters\":%lld,\"threads\":%d,"
        "\"sgemm_peak_gflops\":%.2f,"
        "\"memory_bandwidth_gbs\":%.2f,\"prefill_tokens_per_s\":%.1f,\"prefill_gflops\":%.2f,"
        "\"decode_b1_tokens_per_s\":%.1f,\"decode_b1_bound_tokens_per_s\":%.1f,"
        "\"decode_b8_tokens_per_s\":%.1f,\"decode_b8_bound_tokens_per_s\":%.1f,"
        "\"weight_types\":\"%s\",\"weight_bytes\":%lld,\"file_bytes\":%lld,"
        "\"resident_model_bytes\":%lld,\"weight_bytes_per_step\":%.0f,"
        "\"bandwidth_buffer_bytes\":%lld,\"last_level_cache_bytes\":%lld",
        model_label.c_str(), backend->name().c_str(), static_cast<long long>(c.ParameterCount()),
        threads, peak_gflops, bandwidth_gbs, prefill_tps, prefill_gflops, *decode1, bound1,
        *decode8, bound8, model.WeightTypes().c_str(), static_cast<long long>(model.WeightBytes()),
        static_cast<long long>(file_bytes), static_cast<long long>(resident_model), bytes_per_step,
        static_cast<long long>(BandwidthBufferBytes()),
        static_cast<long long>(LastLevelCacheBytes()));
    if (adapter != nullptr) {
      std::printf(
          ",\"mac\":{\"adapter\":\"%s\",\"prefix_rows\":%d,\"top_k\":%d,"
          "\"passages_per_s\":%.1f,\"passage_encode_gflops\":%.2f,\"question_ms\":%.3f,"
          "\"question_prefill_tokens_per_s\":%.1f,"
          "\"question_prefill_after_prefix_tokens_per_s\":%.1f,"
          "\"decode_b1_after_prefix_tokens_per_s\":%.1f,"
          "\"decode_b8_after_prefix_tokens_per_s\":%.1f}",
          o.adapter.c_str(), mac.prefix_rows, mac.top_k, mac.passages_per_s, mac.encode_gflops,
          mac.question_ms, mac.prefill_plain_tps, mac.prefill_prefix_tps, mac.decode1_prefix_tps,
          mac.decode8_prefix_tps);
    }
    std::printf("}\n");
    return absl::OkStatus();
  }
  std::printf("knowd bench engine — %s\n", model_label.c_str());
  std::printf("model: %.1fM parameters, hidden %d, %d layers, %d/%d heads, vocab %d; %s\n",
              c.ParameterCount() / 1e6, c.hidden_size, c.num_layers, c.num_heads, c.num_kv_heads,
              c.vocab_size, backend->name().c_str());
  std::printf(
      "weights: %s, %.1f MB held (file %.1f MB, %.2fx); resident memory +%.1f MB "
      "after loading (%.2fx the file)\n",
      model.WeightTypes().c_str(), model.WeightBytes() / 1e6, file_bytes / 1e6,
      file_bytes > 0 ? static_cast<double>(model.WeightBytes()) / file_bytes : 0.0,
      resident_model / 1e6,
      file_bytes > 0 ? static_cast<double>(resident_model) / file_bytes : 0.0);
  if (backend->kind() == BackendKind::kCpu) {
    std::printf("cpu features: %s\n", cpu::CpuFeatureList().c_str());
  }
  std::printf(
      "machine (measured now): sgemm peak %.1f GFLOP/s, memory bandwidth %.1f GB/s (%s; "
      "bandwidth over %.0f MiB, %.0fx the %.0f MiB last-level cache)\n\n",
      peak_gflops, bandwidth_gbs, bounds.c_str(), BandwidthBufferBytes() / 1048576.0,
      static_cast<double>(BandwidthBufferBytes()) / LastLevelCacheBytes(),
      LastLevelCacheBytes() / 1048576.0);
  std::printf("%-28s %14s %14s %10s\n", "measurement", "figure", "bound", "fraction");
  std::printf("%-28s %10.1f tok/s %9.1f GFLOP/s %8.1f%%   (%.1f GFLOP/s of sgemm peak)\n",
              absl::StrFormat("prefill (%d tokens)", o.prompt_tokens).c_str(), prefill_tps,
              prefill_gflops, 100.0 * prefill_gflops / peak_gflops, peak_gflops);
  std::printf(
      "%-28s %10.1f tok/s %10.1f tok/s %8.1f%%   (%.1f MB of weights per step, %.1f GFLOP/s)\n",
      "decode, batch 1", *decode1, bound1, 100.0 * *decode1 / bound1, bytes_per_step / 1e6,
      decode1_gflops);
  std::printf(
      "%-28s %10.1f tok/s %10.1f tok/s %8.1f%%   (roofline of bandwidth and sgemm peak, %.1f "
      "GFLOP/s)\n",
      "decode, batch 8", *decode8, bound8, 100.0 * *decode8 / bound8, decode8_gflops);
  if (adapter == nullptr) return absl::OkStatus();

  std::printf("\nmac question — %s: top-%d, %d prefix rows per layer\n", o.adapter.c_str(),
              mac.top_k, mac.prefix_rows);
  std::printf(
      "%-28s %10.1f pass/s %8.1f GFLOP/s %8.1f%%   (%d-token passages, 8 per call; trunk "
      "FLOPs of sgemm peak)\n",
      "encode passages", mac.passages_per_s, mac.encode_gflops,
      100.0 * mac.encode_gflops / peak_gflops, mac.passage_tokens);
  std::printf("%-28s %10.3f ms      (question encoder + aggregator + expander)\n",
              "encode question, modulate", mac.question_ms);
  std::printf("%-28s %10.1f tok/s %10.1f tok/s %8.1f%%   (after the prefix / without it)\n",
              absl::StrFormat("prefill (%d-token question)", mac.question_tokens - 1).c_str(),
              mac.prefill_prefix_tps, mac.prefill_plain_tps,
              100.0 * mac.prefill_prefix_tps / mac.prefill_plain_tps);
  std::printf("%-28s %10.1f tok/s %10.1f tok/s %8.1f%%   (of the roofline bound above)\n",
              "decode after prefix, b 1", mac.decode1_prefix_tps, bound1,
              100.0 * mac.decode1_prefix_tps / bound1);
  std::printf("%-28s %10.1f tok/s %10.1f tok/s %8.1f%%   (without the prefix: %.1f tok/s)\n",
              "decode after prefix, b 8", mac.decode8_prefix_tps, bound8,
              100.0 * mac.decode8_prefix_tps / bound8, *decode8);
  return absl::OkStatus();
}

}  // namespace knowd
