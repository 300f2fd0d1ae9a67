#include "knowledge/modulator.h"

#include "base/status_macros.h"
#include "model/sha256.h"

namespace knowd::knowledge {
namespace {

class AdapterModulator final : public Modulator {
 public:
  AdapterModulator(Adapter* adapter, std::unique_ptr<Adapter> owned)
      : owned_(std::move(owned)), adapter_(adapter) {}

  int latent_rows() const override { return adapter_->spec().slots; }
  int latent_cols() const override { return adapter_->spec().latent_dim; }
  int key_dim() const override { return adapter_->spec().key_dim; }
  int max_candidates() const override { return adapter_->spec().max_candidates; }
  bool has_text_head() const override { return adapter_->spec().rag_head; }
  storage::Fingerprint fingerprint() const override { return BankFingerprint(adapter_); }

  absl::Status EncodePassages(std::span<const std::vector<int32_t>> passages,
                              std::vector<storage::EncodedPassage>* out) override {
    std::vector<PassageCode> codes;
    KNOWD_RETURN_IF_ERROR(adapter_->EncodePassages(passages, &codes));
    out->clear();
    out->reserve(codes.size());
    for (PassageCode& c : codes) out->push_back({std::move(c.latents), std::move(c.key)});
    return absl::OkStatus();
  }

  absl::StatusOr<QuestionCode> EncodeQuestion(std::span<const int32_t> prompt) override {
    return adapter_->EncodeQuestion(prompt);
  }

  absl::StatusOr<PrefixKv> Modulate(const QuestionCode& question,
                                    std::span<const std::span<const float>> latents,
                                    bool with_text) override {
    return adapter_->Modulate(question, latents, with_text);
  }

  float text_prefix_key_scale() const override {
    return adapter_->spec().rag_head ? adapter_->spec().rag_prefix_key_scale : 1.0f;
  }
  absl::Status SetTextPrefixKeyScale(float scale) override {
    return adapter_->SetRagPrefixKeyScale(scale);
  }

 private:
  const std::unique_ptr<Adapter> owned_;
  Adapter* const adapter_;
};

}  // namespace

std::unique_ptr<Modulator> MakeAdapterModulator(Adapter* adapter) {
  return std::make_unique<AdapterModulator>(adapter, nullptr);
}

std::unique_ptr<Modulator> MakeAdapterModulator(std::unique_ptr<Adapter> adapter) {
  Adapter* raw = adapter.get();
  return std::make_unique<AdapterModulator>(raw, std::move(adapter));
}

storage::Fingerprint BankFingerprint(const Adapter* adapter) {
  if (adapter == nullptr) return {"none", ""};
  return {adapter->spec().encoder_sha256, adapter->spec().base_sha256,
          adapter->spec().retrieval_keys_sha256};
}

std::string PrefixDigest(const PrefixKv& prefix) {
  Sha256 hash;
  hash.Update(&prefix.rows, sizeof(prefix.rows));
  hash.Update(prefix.keys.data(), prefix.keys.size() * sizeof(float));
  hash.Update(prefix.values.data(), prefix.values.size() * sizeof(float));
  return hash.Hex();
}

}  // namespace knowd::knowledge
