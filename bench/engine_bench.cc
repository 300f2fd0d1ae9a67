#include "bench/engine_bench.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <random>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "kernels/backend.h"
#include "kernels/peak.h"
#include "model/transformer.h"

namespace knowd {
namespace {

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

}  // namespace

absl::Status RunEngineBench(const EngineBenchOptions& o) {
  const int threads = o.threads > 0
                          ? o.threads
                          : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  std::unique_ptr<Backend> backend;
  if (o.backend == "cuda") {
    absl::StatusOr<std::unique_ptr<Backend>> cuda = MakeCudaBackend(0);
    if (!cuda.ok()) return cuda.status();
    backend = *std::move(cuda);
  } else if (o.backend == "cpu") {
    backend = MakeCpuBackend(threads);
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("--backend must be cpu or cuda, not ", o.backend));
  }
  absl::StatusOr<std::unique_ptr<Transformer>> loaded = Transformer::Load(o.model, backend.get());
  if (!loaded.ok()) return loaded.status();
  Transformer& model = **loaded;
  const LlamaConfig& c = model.config();
  if (o.prompt_tokens + o.decode_tokens + 1 > c.max_position_embeddings) {
    return absl::InvalidArgumentError(absl::StrCat("prompt + decode tokens exceed the model's ",
                                                   c.max_position_embeddings, " positions"));
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
                                 : "OpenBLAS sgemm, read-only sum over DRAM";

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

  // Decode at batch B: B sequences with a short prompt each, then decode_tokens steps together.
  auto decode = [&](int batch_size) -> absl::StatusOr<double> {
    std::vector<std::unique_ptr<KvCache>> caches;
    std::vector<std::vector<int32_t>> next(batch_size);
    std::vector<SequenceStep> steps;
    for (int b = 0; b < batch_size; ++b) {
      absl::StatusOr<std::unique_ptr<KvCache>> kv = model.NewCache(o.decode_tokens + 65);
      if (!kv.ok()) return kv.status();
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
  absl::StatusOr<double> decode1 = decode(1);
  if (!decode1.ok()) return decode1.status();
  absl::StatusOr<double> decode8 = decode(8);
  if (!decode8.ok()) return decode8.status();

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
        "\"decode_b8_tokens_per_s\":%.1f,\"decode_b8_bound_tokens_per_s\":%.1f}\n",
        o.model.c_str(), backend->name().c_str(), static_cast<long long>(c.ParameterCount()),
        threads, peak_gflops, bandwidth_gbs, prefill_tps, prefill_gflops, *decode1, bound1,
        *decode8, bound8);
    return absl::OkStatus();
  }
  std::printf("knowd bench engine — %s\n", o.model.c_str());
  std::printf("model: %.1fM parameters, hidden %d, %d layers, %d/%d heads, vocab %d; %s\n",
              c.ParameterCount() / 1e6, c.hidden_size, c.num_layers, c.num_heads, c.num_kv_heads,
              c.vocab_size, backend->name().c_str());
  std::printf(
      "machine (measured now): sgemm peak %.1f GFLOP/s, memory bandwidth %.1f GB/s (%s)\n\n",
      peak_gflops, bandwidth_gbs, bounds.c_str());
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
  return absl::OkStatus();
}

}  // namespace knowd
