// The session mapper `knowd-train session` trains (train/session.h states the math), read from
// <adapter dir>/session_mapper.{json,safetensors}: it folds a context, chunk by chunk, into a
// constant-size state h, and serves that state as a factored low-rank update of the frozen LM
// (model/low_rank.h) under the questions that follow.
//
// Per chunk ("<BOS><chunk text>", its own trunk pass at positions 0..n-1) and per site: r learned
// queries attend over the chunk's keys/values of the site's layer (per key/value head, BOS row
// included, scale 1/sqrt(head_dim)) -> A [r, kv_dim]; S = A · Pᵀ [r, r2]; a = sigmoid(S · Gᵀ + g);
// h = a ⊙ h + S. The state is [sites][r][r2] floats, sites in session_mapper.json order.
//
// Thread-safety: like the Transformer it drives, one thread at a time (callers serialise engine
// work).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "model/low_rank.h"
#include "model/transformer.h"

namespace knowd {

struct SessionMapperSpec {
  std::vector<LowRankSite> sites;
  int rank = 0;      // r
  int rank_out = 0;  // r2
  // How the mapper was trained to read a context: chunks of this many demonstrations (advice for
  // clients), and at most this many tokens per chunk (BOS included; longer chunks are refused).
  int demos_per_chunk = 0;
  int max_chunk_tokens = 0;
  std::string sha256;  // SHA-256 of session_mapper.safetensors: what a stored state depends on
};

class SessionMapper {
 public:
  // Loads <dir>/session_mapper.json and .safetensors for `base`, which must outlive the mapper.
  // NOT_FOUND when the adapter has no mapper; other errors name the file and what is wrong.
  static absl::StatusOr<std::unique_ptr<SessionMapper>> Load(const std::string& dir,
                                                             Transformer* base);
  ~SessionMapper();

  const SessionMapperSpec& spec() const { return spec_; }
  // The shared factors W1, W2 of every site: LowRankState::Create(&factors(), state) makes a
  // state servable (SequenceStep::update).
  const LowRankFactors& factors() const { return *factors_; }
  // Floats (and bytes: 4 each) of one session's state, whatever the context's length.
  int64_t state_floats() const { return factors_->state_floats(); }

  // Folds the chunks (token ids, BOS first, 2 .. max_chunk_tokens each) into `state`, one after
  // another: `state` holds state_floats() floats (zeros for a new session) and is updated in
  // place. Chunks run through the trunk in batches; the result equals absorbing them one at a
  // time. INVALID_ARGUMENT (state unchanged) for a wrong-sized state or a chunk out of bounds.
  absl::Status Absorb(std::span<const std::vector<int32_t>> chunks, std::vector<float>* state);

 private:
  struct Site {
    std::vector<float> query_host;   // [r][kv_dim]
    float* query = nullptr;          // backend copy
    float* proj = nullptr;           // backend [r2][kv_dim]
    std::vector<float> gate_weight;  // host [r2][r2]
    std::vector<float> gate_bias;    // host [r2]
  };
  SessionMapper() = default;

  Transformer* base_ = nullptr;
  SessionMapperSpec spec_;
  std::unique_ptr<LowRankFactors> factors_;
  std::vector<Site> sites_;
  std::vector<void*> allocations_;
};

// The chunks of a context text for `mapper`: the text split at line ends into pieces of at most
// max_chunk_tokens tokens each (BOS included), greedily, each tokenized with BOS. A single line
// longer than that is cut at the token limit.
class Tokenizer;
std::vector<std::vector<int32_t>> SessionChunks(const Tokenizer& tokenizer, std::string_view text,
                                                int max_chunk_tokens);
// The chunks of a context sent as several messages, in order: each message cut by SessionChunks on
// its own, as the daemon cuts each message of a CreateSession stream (no chunk spans two).
std::vector<std::vector<int32_t>> SessionChunksOfMessages(const Tokenizer& tokenizer,
                                                          std::span<const std::string> messages,
                                                          int max_chunk_tokens);

}  // namespace knowd
