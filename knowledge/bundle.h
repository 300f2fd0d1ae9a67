// Loading what answers questions: the compute backend by name, and a model bundle — the frozen
// LM, its tokenizer, its MAC adapter (when it has one) and the calibration `knowd eval` recorded
// for it. One loader for the daemon and every tool.
//
// A bundle is a directory: config.json + model.safetensors (or a GGUF file instead of the
// directory), tokenizer.model / tokenizer.json, adapter/ (adapter.json + adapter.safetensors) and
// knowledge.json:
//   {"abstain_below": 0.5, "calibrated_on": "...", ...,
//    "retrieval": {"default": "hybrid", "modes": {"mac": "lexical", ...}, "rrf_k": 60,
//                  "dense_weight": 1, "lexical_weight": 0.5, "calibrated_on": "...", ...}}
// abstain_below: the lexical coverage under which a question has nothing in memory (ask.h),
// chosen by `knowd eval --calibrate-abstention` on the valid split. Missing: 0, never abstain.
// retrieval, chosen by `knowd eval --calibrate-retrieval` on the valid split: hybrid retrieval's
// fusion weights (retrieve.h, the best recall@1), the retrieval with the best recall@1
// (`default`: Search, and modes without their own) and each memory mode's retrieval with the
// best EM (`modes`: rag, mac, mac+rag). Missing: lexical, equal weights, rrf_k 60.
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "kernels/backend.h"
#include "knowledge/ask.h"
#include "knowledge/modulator.h"
#include "knowledge/retrieve.h"
#include "model/adapter.h"
#include "model/tokenizer.h"
#include "model/transformer.h"
#include "storage/memory_bank.h"

namespace knowd::knowledge {

// "cpu" (with `threads`, 0: one per core) or "cuda" (device 0). INVALID_ARGUMENT otherwise.
absl::StatusOr<std::unique_ptr<Backend>> MakeBackendByName(std::string_view name, int threads);

struct BundleOptions {
  std::string model;  // the bundle directory, a Hugging Face directory or a GGUF file
  // "": <model>/adapter when it has adapter.json; "none": no adapter; else the adapter directory.
  std::string adapter;
  std::string backend = "cpu";
  int threads = 0;
  bool require_adapter = false;  // FAILED_PRECONDITION when there is none
};

struct Calibration {
  double abstain_below = 0;  // AskParams::abstain_below
  // The retrieval a request that names none gets (with an adapter; lexical without one).
  RetrievalDefaults retrieval;
  Fusion fusion;  // AskParams::fusion
};

struct Bundle {
  std::unique_ptr<Backend> backend;
  std::unique_ptr<Transformer> model;
  std::unique_ptr<Tokenizer> tokenizer;
  std::unique_ptr<Modulator> modulator;  // owns the adapter; null: closed-book and rag only
  Adapter* adapter = nullptr;            // the modulator's networks (spec, benchmarks)
  std::string model_path;
  std::string adapter_path;  // "" without an adapter
  Calibration calibration;
  // What a memory bank written through this bundle records (BankFingerprint).
  storage::Fingerprint fingerprint() const { return BankFingerprint(adapter); }
};

absl::StatusOr<Bundle> LoadBundle(const BundleOptions& options);

// The adapter at `dir` (adapter.json + adapter.safetensors) over `model`, as a Modulator that
// owns it; `adapter` (optional) gets its networks. Errors name the directory.
absl::StatusOr<std::unique_ptr<Modulator>> LoadModulator(const std::string& dir, Transformer* model,
                                                         Adapter** adapter = nullptr);

// <model>/knowledge.json, or the defaults when the file is missing. INVALID_ARGUMENT names the
// file and the bad key.
absl::StatusOr<Calibration> ReadCalibration(const std::string& model);
// Sets the top-level keys of `update` (a JSON object) in <model>/knowledge.json, keeping the
// others; refused, with the file unchanged, when the result would not read back.
absl::Status UpdateCalibration(const std::string& model, const std::string& update_json);

}  // namespace knowd::knowledge
