#include "bench/tools.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <optional>
#include <thread>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "bench/engine_bench.h"
#include "bench/eval.h"
#include "bench/eval_sessions.h"
#include "bench/storage_bench.h"
#include "cli/command_line.h"
#include "kernels/peak.h"
#include "model/adapter.h"
#include "storage/memory_bank.h"

namespace knowd::bench {
namespace {

int Fail(std::string_view command, const absl::Status& status) {
  return cli::CommandFailed(command, std::string(status.message()));
}

}  // namespace

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
  o.dtype = flags.dtype;
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
  const std::optional<storage::LatentFormat> format =
      storage::ParseLatentFormat(flags.latent_format);
  if (!format.has_value()) {
    return Fail("bench storage",
                absl::InvalidArgumentError("--latent-format must be fp16 or int8"));
  }
  o.latent_format = *format;
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

int RunEvalCommand(const EvalFlags& flags) {
  EvalOptions o;
  o.bundle_dir = flags.bundle;
  if (o.bundle_dir.empty()) return Fail("eval", absl::InvalidArgumentError("--bundle is empty"));
  o.data_dir = flags.data;
  if (o.data_dir.empty()) o.data_dir = (std::filesystem::path(o.bundle_dir) / "eval").string();
  if (flags.sessions) {
    SessionEvalOptions s;
    s.bundle_dir = o.bundle_dir;
    s.data_dir = o.data_dir;
    s.report_path = flags.report;
    s.demonstrations = flags.demonstrations;
    s.queries = flags.queries;
    s.tasks = flags.tasks;
    s.threads = flags.threads;
    s.progress = true;
    if (s.demonstrations.empty() || s.queries < 1 || s.tasks < 0 ||
        *std::min_element(s.demonstrations.begin(), s.demonstrations.end()) < 0) {
      return Fail("eval", absl::InvalidArgumentError(
                              "--sessions needs --demonstrations >= 0, --queries >= 1 and "
                              "--tasks >= 0"));
    }
    const absl::Status st = RunSessionEval(s);
    return st.ok() ? 0 : Fail("eval", st);
  }
  o.split = flags.split;
  o.limit = flags.limit;
  if (o.limit < 0) return Fail("eval", absl::InvalidArgumentError("--limit must be >= 0"));
  o.report_path = flags.report;
  o.threads = flags.threads;
  o.batch = flags.batch;
  if (o.batch < 1) return Fail("eval", absl::InvalidArgumentError("--batch must be >= 1"));
  const std::optional<storage::LatentFormat> format =
      storage::ParseLatentFormat(flags.latent_format);
  if (!format.has_value()) {
    return Fail("eval", absl::InvalidArgumentError("--latent-format must be fp16 or int8"));
  }
  o.latent_format = *format;
  o.examples = flags.examples;
  o.mac_top_k = flags.mac_top_k;
  if (o.mac_top_k < 1) return Fail("eval", absl::InvalidArgumentError("--mac-top-k must be >= 1"));
  if (!flags.retrieval.empty()) {
    o.retrieval = knowledge::ParseRetrievalName(flags.retrieval);
    if (!o.retrieval.has_value()) {
      return Fail("eval", absl::InvalidArgumentError(
                              absl::StrCat("--retrieval must be lexical, dense or hybrid, not \"",
                                           flags.retrieval, "\"; empty: the bundle's")));
    }
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
  if (flags.abstain_below > 1) {
    return Fail("eval", absl::InvalidArgumentError(
                            "--abstain-below must be in [0, 1], or negative for the bundle's"));
  }
  o.abstain_below = flags.abstain_below;
  o.calibrate_abstention = flags.calibrate_abstention;
  o.calibrate_retrieval = flags.calibrate_retrieval;
  if (o.calibrate_abstention && o.calibrate_retrieval) {
    return Fail("eval", absl::InvalidArgumentError(
                            "--calibrate-retrieval runs alone: give --calibrate-abstention in a "
                            "second run, which then measures with the new retrieval"));
  }
  o.unknown_split = flags.unknown_split;
  o.forget_subjects = flags.forget_subjects;
  if (o.forget_subjects < 0) {
    return Fail("eval", absl::InvalidArgumentError("--forget-subjects must be >= 0"));
  }
  o.progress = true;
  absl::Status s = RunEval(o);
  return s.ok() ? 0 : Fail("eval", s);
}

}  // namespace knowd::bench
