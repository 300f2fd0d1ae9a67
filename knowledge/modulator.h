// What the knowledge pipeline needs from a MAC adapter: encode passages into bank entries, encode
// a question, and aggregate stored latents into the reader's prefix. The daemon and the
// evaluation both go through this interface (AdapterModulator over the bundle's model/adapter.h
// networks); tests may stand in a fake.
//
// Not thread-safe: callers serialise, as for the Transformer underneath (the daemon runs every
// call on its ask scheduler's thread).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "model/adapter.h"
#include "storage/memory_bank.h"

namespace knowd::knowledge {

class Modulator {
 public:
  virtual ~Modulator() = default;

  // Shape of a bank entry: latents are latent_rows × latent_cols, keys key_dim.
  virtual int latent_rows() const = 0;
  virtual int latent_cols() const = 0;
  virtual int key_dim() const = 0;
  // The most candidates Modulate aggregates.
  virtual int max_candidates() const = 0;
  // Whether Modulate makes another prefix for prompts that also carry passage text (mac+rag).
  virtual bool has_text_head() const = 0;
  // What a bank written with this modulator records, so it is never read by another.
  virtual storage::Fingerprint fingerprint() const = 0;

  // Encodes passages given as encoder token ids (EncoderTokens); `out` gets one per passage.
  virtual absl::Status EncodePassages(std::span<const std::vector<int32_t>> passages,
                                      std::vector<storage::EncodedPassage>* out) = 0;
  // Encodes a question given as the token ids of QuestionPrompt with BOS.
  virtual absl::StatusOr<QuestionCode> EncodeQuestion(std::span<const int32_t> prompt) = 0;
  // The prefix for `question` aggregated from its candidates' latents (best first; 1 ..
  // max_candidates): rows for KvCache::SetPrefix, row 0 standing for BOS. with_text: the prompt
  // after it also carries passage text (the text head's prefix when there is one).
  virtual absl::StatusOr<PrefixKv> Modulate(const QuestionCode& question,
                                            std::span<const std::span<const float>> latents,
                                            bool with_text) = 0;

  // The text head's prefix key scale (Adapter::SetRagPrefixKeyScale), and its override for
  // calibrating it.
  virtual float text_prefix_key_scale() const { return 1.0f; }
  virtual absl::Status SetTextPrefixKeyScale(float) {
    return absl::FailedPreconditionError("the adapter has no mac+rag head to scale");
  }
};

// The bundle's adapter networks as a Modulator. `adapter` must outlive it.
std::unique_ptr<Modulator> MakeAdapterModulator(Adapter* adapter);
// The same, owning the adapter.
std::unique_ptr<Modulator> MakeAdapterModulator(std::unique_ptr<Adapter> adapter);

// The SHA-256 (hex) of a prefix: its rows, then its keys and values as little-endian f32. Two
// prefixes with the same digest are the same bytes.
std::string PrefixDigest(const PrefixKv& prefix);

// The fingerprint a bank records for `adapter` (null: a bank without modulations, "none").
storage::Fingerprint BankFingerprint(const Adapter* adapter);

}  // namespace knowd::knowledge
