// The eval's Modulator over a bundle's MAC adapter (model/adapter.h): LoadBundleModulator.
#include <algorithm>
#include <filesystem>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "bench/eval.h"
#include "model/adapter.h"

namespace knowd::bench {
namespace {

class AdapterModulator final : public Modulator {
 public:
  AdapterModulator(std::unique_ptr<Adapter> adapter, const Tokenizer& tokenizer, int max_tokens)
      : adapter_(std::move(adapter)), tokenizer_(tokenizer), max_tokens_(max_tokens) {}

  int latent_rows() const override { return adapter_->spec().slots; }
  int latent_cols() const override { return adapter_->spec().latent_dim; }
  int key_dim() const override { return adapter_->spec().key_dim; }

  absl::Status EncodePassages(std::span<const std::string_view> texts,
                              std::vector<storage::EncodedPassage>* out) override {
    std::vector<std::vector<int32_t>> passages;
    for (std::string_view text : texts) {
      std::vector<int32_t> ids = tokenizer_.Encode(text, true);
      // The trunk reads at most the model's context; a longer passage keeps its beginning.
      if (static_cast<int>(ids.size()) > max_tokens_) ids.resize(max_tokens_);
      passages.push_back(std::move(ids));
    }
    std::vector<PassageCode> codes;
    if (absl::Status s = adapter_->EncodePassages(passages, &codes); !s.ok()) return s;
    out->clear();
    for (PassageCode& c : codes) out->push_back({std::move(c.latents), std::move(c.key)});
    return absl::OkStatus();
  }

  absl::StatusOr<std::vector<float>> QuestionKey(std::string_view question) override {
    absl::StatusOr<const QuestionCode*> code = Encode(question);
    if (!code.ok()) return code.status();
    return (*code)->key;
  }

  bool has_text_head() const override { return adapter_->spec().rag_head; }
  float text_prefix_key_scale() const override {
    return adapter_->spec().rag_head ? adapter_->spec().rag_prefix_key_scale : 1.0f;
  }
  absl::Status SetTextPrefixKeyScale(float scale) override {
    return adapter_->SetRagPrefixKeyScale(scale);
  }

  absl::StatusOr<PrefixKv> Modulate(
      std::string_view question, std::span<const std::shared_ptr<const std::vector<float>>> latents,
      bool with_text) override {
    absl::StatusOr<const QuestionCode*> code = Encode(question);
    if (!code.ok()) return code.status();
    std::vector<std::span<const float>> candidates;
    for (const auto& l : latents) candidates.emplace_back(*l);
    return adapter_->Modulate(**code, candidates, with_text);
  }

  // Latents as the bank stores them (f16) plus the f32 key.
 private:
  // The question's code; the eval asks for the key and then the modulation of one question, so
  // the last one is kept.
  absl::StatusOr<const QuestionCode*> Encode(std::string_view question) {
    if (question != last_question_ || last_code_.key.empty()) {
      absl::StatusOr<QuestionCode> code =
          adapter_->EncodeQuestion(tokenizer_.Encode(Adapter::QuestionPrompt(question), true));
      if (!code.ok()) return code.status();
      last_code_ = *std::move(code);
      last_question_ = std::string(question);
    }
    return &last_code_;
  }

  std::unique_ptr<Adapter> adapter_;
  const Tokenizer& tokenizer_;
  const int max_tokens_;
  std::string last_question_;
  QuestionCode last_code_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Modulator>> LoadBundleModulator(const std::string& bundle_dir,
                                                               Transformer& model,
                                                               const Tokenizer& tokenizer) {
  const std::filesystem::path dir = std::filesystem::path(bundle_dir) / "adapter";
  std::error_code ec;
  if (!std::filesystem::is_directory(dir, ec)) {
    return absl::FailedPreconditionError("mode unavailable: no adapter in the bundle");
  }
  absl::StatusOr<std::unique_ptr<Adapter>> adapter = Adapter::Load(dir.string(), &model);
  if (!adapter.ok()) {
    return absl::Status(adapter.status().code(),
                        absl::StrCat("mode unavailable: ", adapter.status().message()));
  }
  return std::make_unique<AdapterModulator>(*std::move(adapter), tokenizer,
                                            model.config().max_position_embeddings);
}

}  // namespace knowd::bench
