#include "daemon/cli.h"

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <optional>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "cli/command_line.h"
#include "cli/progress.h"
#include "kernels/backend.h"
#include "knowledge/bundle.h"
#include "knowledge/passages.h"
#include "model/convert.h"
#include "model/generate.h"
#include "model/tensor_file.h"
#include "model/tokenizer.h"
#include "model/transformer.h"
#include "storage/memory_bank.h"

namespace knowd {
namespace {

int Fail(std::string_view command, const absl::Status& status) {
  return cli::CommandFailed(command, std::string(status.message()));
}

}  // namespace

int RunGenerate(const GenerateFlags& flags) {
  const std::string path = flags.model;
  if (path.empty()) return Fail("generate", absl::InvalidArgumentError("--model is required"));
  knowledge::BundleOptions bundle_options;
  bundle_options.model = path;
  bundle_options.adapter = "none";  // generate runs the plain model
  bundle_options.backend = flags.backend;
  bundle_options.threads = flags.threads;
  absl::StatusOr<knowledge::Bundle> bundle = knowledge::LoadBundle(bundle_options);
  if (!bundle.ok()) return Fail("generate", bundle.status());
  std::unique_ptr<Tokenizer>* tokenizer = &bundle->tokenizer;
  std::unique_ptr<Transformer>* model = &bundle->model;

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

int RunConvert(const ConvertFlags& flags) {
  if (flags.model.empty() || flags.out.empty()) {
    return Fail("convert", absl::InvalidArgumentError("--model and --out are required"));
  }
  const std::optional<WeightPlan> plan = ParseWeightPlan(flags.dtype);
  if (!plan.has_value()) {
    return Fail("convert", absl::InvalidArgumentError(absl::StrCat(
                               "--dtype \"", flags.dtype, "\" is not one of ", WeightPlanNames())));
  }
  std::fprintf(stderr, "converting %s to %s (%s)...\n", flags.model.c_str(), flags.out.c_str(),
               flags.dtype.c_str());
  if (absl::Status s = ConvertModel(flags.model, flags.out, *plan); !s.ok()) {
    return Fail("convert", s);
  }
  std::printf("wrote %s\n", flags.out.c_str());
  return 0;
}

int RunReencode(const ReencodeFlags& flags) {
  const std::string data_dir = flags.data_dir;
  if (data_dir.empty()) {
    return Fail("reencode", absl::InvalidArgumentError("--data-dir (the memory bank) is required"));
  }
  const std::optional<storage::LatentFormat> format =
      storage::ParseLatentFormat(flags.latent_format);
  if (!format.has_value()) {
    return Fail("reencode", absl::InvalidArgumentError("--latent-format must be fp16 or int8"));
  }
  knowledge::BundleOptions bundle_options;
  bundle_options.model = flags.bundle;
  bundle_options.adapter = flags.adapter;
  bundle_options.backend = flags.backend;
  bundle_options.threads = flags.threads;
  bundle_options.require_adapter = true;
  absl::StatusOr<knowledge::Bundle> bundle = knowledge::LoadBundle(bundle_options);
  if (!bundle.ok()) return Fail("reencode", bundle.status());
  knowledge::Modulator& modulator = *bundle->modulator;

  storage::BankOptions options;
  options.data_dir = data_dir;
  options.create_if_missing = false;
  options.key_dim = modulator.key_dim();
  options.latent_rows = modulator.latent_rows();
  options.latent_cols = modulator.latent_cols();
  options.latent_format = *format;
  options.index_factory = flags.index;
  // The texts do not change, but the sequence number does: with the BM25 index open (loaded
  // from disk), Close() saves it at the new one, so the daemon's next start loads it.
  options.lexical_index = true;
  options.fingerprint = bundle->fingerprint();
  options.open_for_reencode = true;
  absl::StatusOr<std::unique_ptr<storage::MemoryBank>> bank = storage::MemoryBank::Open(options);
  if (!bank.ok()) return Fail("reencode", bank.status());
  absl::StatusOr<storage::BankStats> stats = (*bank)->Stats();
  if (!stats.ok()) return Fail("reencode", stats.status());
  const std::string adapter_label = options.fingerprint.adapter_hash.substr(0, 12);
  // Same adapter on the same base: the latents are current and only the keys are rewritten.
  const bool keys_only = stats->fingerprint.adapter_hash == options.fingerprint.adapter_hash &&
                         stats->fingerprint.base_model_hash == options.fingerprint.base_model_hash;
  if (flags.keys_only && !keys_only) {
    absl::Status closed = (*bank)->Close();
    (void)closed;
    return Fail("reencode",
                absl::FailedPreconditionError(absl::StrCat(
                    data_dir, "'s latents were made by adapter '",
                    stats->fingerprint.adapter_hash.substr(0, 12), "' on base '",
                    stats->fingerprint.base_model_hash.substr(0, 12), "', not by adapter '",
                    adapter_label, "' on base '", options.fingerprint.base_model_hash.substr(0, 12),
                    "': --keys-only would leave them stale; run without --keys-only")));
  }
  if (!stats->needs_reencode && stats->fingerprint == options.fingerprint) {
    std::printf("%s: already encoded by adapter %s; nothing to do\n", data_dir.c_str(),
                adapter_label.c_str());
    absl::Status closed = (*bank)->Close();
    return closed.ok() ? 0 : Fail("reencode", closed);
  }

  // Each passage's encoder input as ingest made it (its overlap context, then its text), through
  // the pipeline's one passage encoder.
  const int max_positions = bundle->model->config().max_position_embeddings;
  uint64_t this_run = 0;
  const auto start = std::chrono::steady_clock::now();
  auto seconds = [&] {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  };
  storage::PassageEncoder encoder = [&](std::span<const std::string_view> inputs,
                                        std::vector<storage::EncodedPassage>* out) {
    absl::Status s =
        knowledge::EncodePassageTexts(modulator, *bundle->tokenizer, inputs, max_positions, out);
    if (s.ok()) this_run += inputs.size();
    return s;
  };
  cli::ProgressBar bar(keys_only ? "re-encoding keys" : "re-encoding", "passages",
                       isatty(STDERR_FILENO) != 0);
  bool first = true;
  uint64_t resumed_from = 0;
  storage::ReencodeProgress progress = [&](uint64_t done, uint64_t total) {
    if (first && done > this_run) {
      resumed_from = done - this_run;
      std::fprintf(stderr, "resuming: %llu of %llu passages were re-encoded before\n",
                   static_cast<unsigned long long>(resumed_from),
                   static_cast<unsigned long long>(total));
    }
    first = false;
    bar.Update(done, total, resumed_from);
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
      "%s: re-encoded the %s of %llu passages in %.1f s (%.1f passages/s); the bank now "
      "belongs to adapter %s%s\n",
      data_dir.c_str(), keys_only ? "keys" : "latents and keys",
      static_cast<unsigned long long>(this_run), elapsed, elapsed > 0 ? this_run / elapsed : 0.0,
      adapter_label.c_str(),
      options.fingerprint.key_hash.empty()
          ? ""
          : absl::StrCat(" with retrieval keys ", options.fingerprint.key_hash.substr(0, 12))
                .c_str());
  return 0;
}

}  // namespace knowd
