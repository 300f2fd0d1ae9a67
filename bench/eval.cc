#include "bench/eval.h"

#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <numeric>
#include <optional>
#include <unordered_map>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "bench/eval_internal.h"
#include "cli/progress.h"
#include "kernels/backend.h"
#include "knowledge/ask.h"
#include "knowledge/bundle.h"
#include "knowledge/passages.h"
#include "knowledge/retrieve.h"
#include "nlohmann/json.hpp"
#include "train/world.h"

namespace knowd::bench {
namespace {

using internal::Fixed;
using internal::Json;
using internal::kClosedBook;
using internal::kMac;
using internal::kMacRag;
using internal::kModeNames;
using internal::kNumModes;
using internal::kOracle;
using internal::kRagSubject;
using internal::kRagTop1;
using internal::kRagTop3;
using Clock = std::chrono::steady_clock;

// ---- modes and stages ----

bool UsesMemory(int mode) { return mode >= kRagTop1; }
bool NeedsModulator(int mode) { return mode >= kMac; }

// When a question was asked: at the end of the stream (the main figures, gold = final value),
// right after its passage was stored, or after the first bank_sizes[i] passages (retention).
constexpr int kAtEnd = 0;
constexpr int kRightAfter = 1;
int AtBankSize(int point) { return 2 + point; }

constexpr const char* kNamespace = "eval";
constexpr int kHashedKeyDim = 256;
constexpr int kRecallDepth = 5;
// The fusion weights --calibrate-retrieval tries (dense weight 1): every rrf_k with every
// lexical weight.
constexpr int kFusionRrfK[] = {1, 5, 10, 20, 40, 60, 100};
constexpr float kFusionLexicalWeight[] = {0.25f, 0.5f, 0.75f, 1.0f, 1.5f, 2.0f, 4.0f};

// Feature hashing of the lower-cased alphanumeric words, L2-normalised: a stand-in retrieval key
// until the bundle has an adapter whose encoder produces real keys.
std::vector<float> HashedKey(std::string_view text) {
  std::vector<float> key(kHashedKeyDim, 0.0f);
  size_t i = 0;
  while (i < text.size()) {
    while (i < text.size() && !std::isalnum(static_cast<unsigned char>(text[i]))) ++i;
    uint64_t h = 1469598103934665603ull;
    size_t j = i;
    while (j < text.size() && std::isalnum(static_cast<unsigned char>(text[j]))) {
      h = (h ^ static_cast<uint64_t>(std::tolower(static_cast<unsigned char>(text[j])))) *
          1099511628211ull;
      ++j;
    }
    if (j > i) key[h % kHashedKeyDim] += (h >> 63) ? -1.0f : 1.0f;
    i = j;
  }
  double norm = 0.0;
  for (float v : key) norm += double{v} * v;
  if (norm > 0.0) {
    for (float& v : key) v = static_cast<float>(v / std::sqrt(norm));
  }
  return key;
}

// The retrieval rankings recall is measured on (passage indices, best first).
struct Retrieved {
  std::vector<int> bm25;
  std::vector<int> dense;   // the adapter's keys (hashed words without one)
  std::vector<int> hybrid;  // both, fused
};

struct Asked {
  int question;
  int mode;
  int stage;
  int request;  // -1: nothing in memory, no answer
};

struct RecallCounts {
  int at1 = 0;
  int at5 = 0;
  void Add(const std::vector<int>& ranking, int gold) {
    for (int r = 0; r < std::min<int>(kRecallDepth, ranking.size()); ++r) {
      if (ranking[r] == gold) {
        at1 += r == 0;
        ++at5;
        break;
      }
    }
  }
};

class Evaluator {
 public:
  Evaluator(const EvalOptions& options, train::SplitData data, Transformer& model,
            const Tokenizer& tokenizer, Modulator* modulator, std::string modulator_reason)
      : o_(options),
        data_(std::move(data)),
        model_(model),
        tokenizer_(tokenizer),
        modulator_(modulator),
        modulator_reason_(std::move(modulator_reason)) {}

  absl::Status Run(const std::string& bank_dir);
  // The report Run() wrote (null after a retrieval calibration).
  const Json& report() const { return report_; }

 private:
  const train::Passage& PassageOf(const train::Question& q) const {
    return data_.passages[passage_index_.at(q.passage_id)];
  }
  std::string FinalAnswer(const train::Question& q) const {
    return q.final_answer.empty() ? q.answer : q.final_answer;
  }
  int GoldPassage(const train::Question& q, int stage) const;

  absl::Status StorePassages(int begin, int end);
  absl::StatusOr<std::vector<float>> QuestionKey(const train::Question& q);
  // The indices of the top kRecallDepth passages for `q`.
  absl::StatusOr<std::vector<int>> Ranking(const train::Question& q, const std::vector<float>& key,
                                           knowledge::Retrieval retrieval,
                                           const knowledge::Fusion& fusion);
  absl::StatusOr<Retrieved> Retrieve(const train::Question& q);
  // EvalOptions::calibrate_retrieval, in place of the evaluation.
  absl::Status CalibrateRetrieval();
  knowledge::AskContext Context() const {
    return {bank_.get(), &tokenizer_, modulator_, model_.config().max_position_embeddings};
  }
  int AddRequest(std::vector<int32_t> prompt, std::shared_ptr<const PrefixKv> prefix);
  absl::Status AskMemoryModes(int question, int stage);
  absl::Status AskNoMemoryModes(int question, int stage);
  // Relevance of unknown-subject and forgotten-subject questions; calibration (EvalOptions).
  absl::Status MeasureAbstention();
  Json AbstentionReport(const std::vector<std::string>& answers);
  Json Report(const std::vector<std::string>& answers, double generation_seconds);

  const EvalOptions& o_;
  train::SplitData data_;
  Transformer& model_;
  const Tokenizer& tokenizer_;
  Modulator* modulator_;  // null: mac modes skipped with modulator_reason_
  std::string modulator_reason_;

  std::unique_ptr<storage::MemoryBank> bank_;
  std::unordered_map<std::string, int> passage_index_;
  std::vector<storage::PassageId> passage_ids_;
  std::vector<int> main_questions_;
  std::vector<std::vector<int>> retention_by_passage_;
  std::vector<int> retention_questions_;
  std::vector<int> curve_sizes_;

  std::vector<AnswerRequest> requests_;
  std::unordered_map<std::string, int> request_by_prompt_;
  std::vector<Asked> asked_;
  RecallCounts recall_bm25_, recall_dense_, recall_hybrid_;
  int recall_questions_ = 0;
  int dropped_passages_ = 0;
  int truncated_prompts_ = 0;

  std::unordered_map<int, double> relevance_;  // main question -> relevance at the end
  std::vector<double> unknown_relevance_;
  std::string unknown_split_;
  std::vector<double> forgotten_relevance_;
  int forgotten_subjects_ = 0;
  double threshold_ = 0;
  std::string threshold_source_;
  Json calibration_;
  Json report_;
};

int Evaluator::GoldPassage(const train::Question& q, int stage) const {
  if (stage == kAtEnd && !q.superseded_by.empty()) {
    auto it = passage_index_.find(q.superseded_by);
    if (it != passage_index_.end()) return it->second;
  }
  return passage_index_.at(q.passage_id);
}

absl::Status Evaluator::StorePassages(int begin, int end) {
  std::vector<storage::EncodedPassage> encoded;
  if (modulator_ != nullptr) {
    // A world passage is one passage of its document (no overlap context): what ingest encodes.
    std::vector<std::string_view> texts;
    for (int i = begin; i < end; ++i) texts.push_back(data_.passages[i].text);
    if (absl::Status s = knowledge::EncodePassageTexts(
            *modulator_, tokenizer_, texts, model_.config().max_position_embeddings, &encoded);
        !s.ok()) {
      return s;
    }
  }
  std::vector<storage::Document> batch;
  for (int i = begin; i < end; ++i) {
    const train::Passage& p = data_.passages[i];
    storage::Document doc;
    doc.name_space = kNamespace;
    doc.id = p.id;
    doc.metadata = Json{{"stream_position", p.stream_position}}.dump();
    storage::Passage passage;
    passage.text = p.text;
    if (modulator_ != nullptr) {
      passage.latents = std::move(encoded[i - begin].latents);
      passage.key = std::move(encoded[i - begin].key);
    } else {
      passage.latents = {0.0f};
      passage.key = HashedKey(p.text);
    }
    doc.passages.push_back(std::move(passage));
    batch.push_back(std::move(doc));
  }
  absl::StatusOr<std::vector<storage::DocumentAck>> acks = bank_->Put(batch);
  if (!acks.ok()) return acks.status();
  for (int i = begin; i < end; ++i) passage_ids_[i] = (*acks)[i - begin].passage_ids.at(0);
  return absl::OkStatus();
}

absl::StatusOr<std::vector<float>> Evaluator::QuestionKey(const train::Question& q) {
  if (modulator_ == nullptr) return HashedKey(q.question);
  absl::StatusOr<QuestionCode> code =
      knowledge::EncodeQuestion(*modulator_, tokenizer_, q.question);
  if (!code.ok()) return code.status();
  return std::move(code->retrieval_key);
}

absl::StatusOr<std::vector<int>> Evaluator::Ranking(const train::Question& q,
                                                    const std::vector<float>& key,
                                                    knowledge::Retrieval retrieval,
                                                    const knowledge::Fusion& fusion) {
  absl::StatusOr<std::vector<storage::SearchHit>> hits = knowledge::RetrievePassages(
      *bank_, kNamespace, q.question, &key, retrieval, kRecallDepth, fusion);
  if (!hits.ok()) return hits.status();
  std::vector<int> out;
  for (const storage::SearchHit& h : *hits) {
    auto it = passage_index_.find(h.doc_id);
    if (it != passage_index_.end()) out.push_back(it->second);
  }
  return out;
}

absl::StatusOr<Retrieved> Evaluator::Retrieve(const train::Question& q) {
  absl::StatusOr<std::vector<float>> key = QuestionKey(q);
  if (!key.ok()) return key.status();
  Retrieved r;
  for (auto [retrieval, out] : {std::pair{knowledge::Retrieval::kLexical, &r.bm25},
                                std::pair{knowledge::Retrieval::kDense, &r.dense},
                                std::pair{knowledge::Retrieval::kHybrid, &r.hybrid}}) {
    absl::StatusOr<std::vector<int>> ranked = Ranking(q, *key, retrieval, *o_.fusion);
    if (!ranked.ok()) return ranked.status();
    *out = *std::move(ranked);
  }
  return r;
}

absl::Status Evaluator::CalibrateRetrieval() {
  const int total = static_cast<int>(data_.passages.size());
  std::optional<cli::ProgressBar> bar;
  if (o_.progress) bar.emplace("streaming", "passages", isatty(STDERR_FILENO) != 0);
  for (int stored = 0; stored < total; stored += 64) {
    if (bar) bar->Update(stored, total);
    if (absl::Status s = StorePassages(stored, std::min(total, stored + 64)); !s.ok()) return s;
  }
  if (bar) bar->Finish();
  if (o_.progress) bar.emplace("searching", "questions", isatty(STDERR_FILENO) != 0);
  // The usual weighting (rrf_k 60, equal weights) first, so that it stays when nothing beats it.
  std::vector<knowledge::Fusion> grid = {knowledge::Fusion()};
  for (int rrf_k : kFusionRrfK) {
    for (float lexical_weight : kFusionLexicalWeight) {
      if (rrf_k != grid[0].rrf_k || lexical_weight != grid[0].lexical_weight) {
        grid.push_back({rrf_k, 1.0f, lexical_weight});
      }
    }
  }
  RecallCounts lexical, dense;
  std::vector<RecallCounts> hybrid(grid.size());
  for (size_t i = 0; i < main_questions_.size(); ++i) {
    if (bar) bar->Update(i, main_questions_.size());
    const train::Question& q = data_.questions[main_questions_[i]];
    const int gold = GoldPassage(q, kAtEnd);
    absl::StatusOr<std::vector<float>> key = QuestionKey(q);
    if (!key.ok()) return key.status();
    auto add = [&](knowledge::Retrieval retrieval, const knowledge::Fusion& fusion,
                   RecallCounts& counts) -> absl::Status {
      absl::StatusOr<std::vector<int>> ranked = Ranking(q, *key, retrieval, fusion);
      if (!ranked.ok()) return ranked.status();
      counts.Add(*ranked, gold);
      return absl::OkStatus();
    };
    if (absl::Status s = add(knowledge::Retrieval::kLexical, {}, lexical); !s.ok()) return s;
    if (absl::Status s = add(knowledge::Retrieval::kDense, {}, dense); !s.ok()) return s;
    for (size_t g = 0; g < grid.size(); ++g) {
      if (absl::Status s = add(knowledge::Retrieval::kHybrid, grid[g], hybrid[g]); !s.ok())
        return s;
    }
  }
  if (bar) bar->Finish();
  if (absl::Status s = bank_->Close(); !s.ok()) return s;

  // The best by recall@1, then recall@5; the first in grid order among equals (the usual
  // weighting, when it is among them).
  auto better = [](const RecallCounts& a, const RecallCounts& b) {
    return a.at1 != b.at1 ? a.at1 > b.at1 : a.at5 > b.at5;
  };
  size_t best = 0;
  for (size_t g = 1; g < grid.size(); ++g) {
    if (better(hybrid[g], hybrid[best])) best = g;
  }
  knowledge::Retrieval chosen = knowledge::Retrieval::kHybrid;
  const RecallCounts* chosen_counts = &hybrid[best];
  if (better(dense, *chosen_counts)) {
    chosen = knowledge::Retrieval::kDense;
    chosen_counts = &dense;
  }
  if (better(lexical, *chosen_counts)) chosen = knowledge::Retrieval::kLexical;

  const double n = std::max<size_t>(1, main_questions_.size());
  auto recall = [&](const RecallCounts& r) {
    return Json{{"recall_at_1", r.at1 / n}, {"recall_at_5", r.at5 / n}};
  };
  Json tried = Json::array();
  for (size_t g = 0; g < grid.size(); ++g) {
    Json row = recall(hybrid[g]);
    row["rrf_k"] = grid[g].rrf_k;
    row["lexical_weight"] = grid[g].lexical_weight;
    tried.push_back(row);
  }
  const Json retrieval = {
      {"default", knowledge::RetrievalName(chosen)},
      {"rrf_k", grid[best].rrf_k},
      {"dense_weight", grid[best].dense_weight},
      {"lexical_weight", grid[best].lexical_weight},
      {"calibrated_on", absl::StrCat(o_.split, " split of ", o_.data_dir, ", ",
                                     main_questions_.size(), " questions")},
      {"rule",
       "the best recall@1, then recall@5, of lexical, dense and hybrid over the fusion grid "
       "(knowd eval --calibrate-retrieval)"},
      {"lexical", recall(lexical)},
      {"dense", recall(dense)},
      {"hybrid", recall(hybrid[best])},
      {"grid", tried}};
  std::printf("retrieval on the %s split, %zu questions (recall@1 / @5):\n", o_.split.c_str(),
              main_questions_.size());
  std::printf("  lexical %.3f / %.3f\n  dense   %.3f / %.3f\n", lexical.at1 / n, lexical.at5 / n,
              dense.at1 / n, dense.at5 / n);
  std::printf("  hybrid  %.3f / %.3f (rrf_k %d, lexical weight %.2f, the best of %zu)\n",
              hybrid[best].at1 / n, hybrid[best].at5 / n, grid[best].rrf_k,
              grid[best].lexical_weight, grid.size());
  std::printf("default retrieval: %s; written to %s/knowledge.json\n",
              knowledge::RetrievalName(chosen), o_.bundle_dir.c_str());
  return knowledge::UpdateCalibration(o_.bundle_dir, Json{{"retrieval", retrieval}}.dump());
}

int Evaluator::AddRequest(std::vector<int32_t> prompt, std::shared_ptr<const PrefixKv> prefix) {
  std::string key;
  if (prefix == nullptr) {
    // Greedy decoding is a function of the prompt, so identical prompts (the same passages
    // retrieved at two bank sizes) are generated once.
    key.assign(reinterpret_cast<const char*>(prompt.data()), prompt.size() * sizeof(int32_t));
    auto it = request_by_prompt_.find(key);
    if (it != request_by_prompt_.end()) return it->second;
  }
  requests_.push_back({std::move(prompt), std::move(prefix)});
  const int id = static_cast<int>(requests_.size()) - 1;
  if (!key.empty()) request_by_prompt_.emplace(std::move(key), id);
  return id;
}

absl::Status Evaluator::AskNoMemoryModes(int question, int stage) {
  const train::Question& q = data_.questions[question];
  knowledge::AskParams closed;
  closed.mode = knowledge::AskMode::kClosedBook;
  closed.max_tokens = o_.max_answer_tokens;
  absl::StatusOr<knowledge::PreparedAsk> prepared =
      knowledge::PrepareAsk(Context(), kNamespace, q.question, closed);
  if (!prepared.ok()) return prepared.status();
  if (stage == kAtEnd && o_.on_prepared)
    o_.on_prepared(q.question, "closed-book", closed, *prepared);
  asked_.push_back(
      {question, kClosedBook, stage, AddRequest(std::move(prepared->prompt), nullptr)});

  // Oracle context: the passage holding the gold answer first, then the one it updates or that
  // updates it (dropped first if the context is short); the prompt orders them oldest first.
  const train::Passage& own = PassageOf(q);
  std::vector<int> gold;
  const int gold_index = GoldPassage(q, stage);
  gold.push_back(gold_index);
  if (gold_index != passage_index_.at(q.passage_id))
    gold.push_back(passage_index_.at(q.passage_id));
  if (own.is_update && passage_index_.contains(own.updates)) {
    gold.push_back(passage_index_.at(own.updates));
  }
  std::vector<storage::SearchHit> hits(gold.size());
  std::vector<const storage::SearchHit*> ranked;
  for (size_t i = 0; i < gold.size(); ++i) {
    hits[i].passage_id = passage_ids_[gold[i]];  // stream order: oldest first
    hits[i].text = data_.passages[gold[i]].text;
    ranked.push_back(&hits[i]);
  }
  const int budget = model_.config().max_position_embeddings - o_.max_answer_tokens;
  if (budget < 2) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the model's context (", model_.config().max_position_embeddings,
        " positions) leaves no room for a prompt and ", o_.max_answer_tokens, " answer tokens"));
  }
  knowledge::FittedPrompt oracle =
      knowledge::FitPrompt(tokenizer_, ranked, q.question, budget, true);
  dropped_passages_ += static_cast<int>(ranked.size()) - oracle.kept;
  truncated_prompts_ += oracle.truncated;
  asked_.push_back({question, kOracle, stage, AddRequest(std::move(oracle.ids), nullptr)});
  return absl::OkStatus();
}

absl::Status Evaluator::AskMemoryModes(int question, int stage) {
  const train::Question& q = data_.questions[question];
  if (stage == kAtEnd) {
    absl::StatusOr<Retrieved> r = Retrieve(q);
    if (!r.ok()) return r.status();
    const int gold = GoldPassage(q, stage);
    recall_bm25_.Add(r->bm25, gold);
    recall_dense_.Add(r->dense, gold);
    recall_hybrid_.Add(r->hybrid, gold);
    ++recall_questions_;
  }
  for (int mode = kRagTop1; mode < kNumModes; ++mode) {
    if (NeedsModulator(mode) && modulator_ == nullptr) continue;
    absl::StatusOr<knowledge::AskParams> params = EvalModeParams(o_, kModeNames[mode]);
    if (!params.ok()) return params.status();
    absl::StatusOr<knowledge::PreparedAsk> prepared =
        knowledge::PrepareAsk(Context(), kNamespace, q.question, *params);
    if (!prepared.ok()) return prepared.status();
    if (stage == kAtEnd && o_.on_prepared)
      o_.on_prepared(q.question, kModeNames[mode], *params, *prepared);
    if (stage == kAtEnd && mode == kRagSubject) relevance_[question] = prepared->relevance;
    dropped_passages_ += prepared->dropped_passages;
    truncated_prompts_ += prepared->truncated;
    if (prepared->nothing_in_memory) {
      asked_.push_back({question, mode, stage, -1});
      continue;
    }
    std::shared_ptr<const PrefixKv> prefix;
    if (prepared->prefix.rows > 0) {
      prefix = std::make_shared<const PrefixKv>(std::move(prepared->prefix));
    }
    asked_.push_back({question, mode, stage, AddRequest(std::move(prepared->prompt), prefix)});
  }
  return absl::OkStatus();
}

absl::Status Evaluator::Run(const std::string& bank_dir) {
  const Clock::time_point t0 = Clock::now();
  const int total = static_cast<int>(data_.passages.size());
  if (total == 0) return absl::InvalidArgumentError("the split has no passages");
  for (int i = 0; i < total; ++i) passage_index_[data_.passages[i].id] = i;
  passage_ids_.assign(total, 0);

  const int limit = o_.limit > 0 ? o_.limit : static_cast<int>(data_.questions.size());
  const int retention_passages = std::clamp(o_.retention_passages, 1, total);
  retention_by_passage_.assign(retention_passages, {});
  for (int i = 0; i < static_cast<int>(data_.questions.size()); ++i) {
    const train::Question& q = data_.questions[i];
    auto it = passage_index_.find(q.passage_id);
    if (it == passage_index_.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("question ", q.id, " refers to unknown passage ", q.passage_id));
    }
    // A limit takes questions spread evenly over the stream, so late passages (updates among
    // them) are represented too.
    const int64_t n = static_cast<int64_t>(data_.questions.size());
    if (limit >= n || (int64_t{i} * limit) / n != (int64_t{i + 1} * limit) / n) {
      main_questions_.push_back(i);
    }
    // Retention is about keeping what was stored: only facts no later passage changes.
    if (it->second < retention_passages && q.superseded_by.empty()) {
      retention_by_passage_[it->second].push_back(i);
      retention_questions_.push_back(i);
    }
  }
  curve_sizes_ = {retention_passages, total};
  for (int s : o_.bank_sizes) {
    if (s > retention_passages && s < total) curve_sizes_.push_back(s);
  }
  std::sort(curve_sizes_.begin(), curve_sizes_.end());
  curve_sizes_.erase(std::unique(curve_sizes_.begin(), curve_sizes_.end()), curve_sizes_.end());

  storage::BankOptions bank_options;
  bank_options.data_dir = bank_dir;
  bank_options.key_dim = modulator_ ? modulator_->key_dim() : kHashedKeyDim;
  bank_options.latent_rows = modulator_ ? modulator_->latent_rows() : 1;
  bank_options.latent_cols = modulator_ ? modulator_->latent_cols() : 1;
  bank_options.latent_format = o_.latent_format;
  bank_options.lexical_index = true;
  bank_options.latent_cache_bytes = 16u << 20;
  absl::StatusOr<std::unique_ptr<storage::MemoryBank>> bank =
      storage::MemoryBank::Open(bank_options);
  if (!bank.ok()) return bank.status();
  bank_ = *std::move(bank);
  if (o_.calibrate_retrieval) return CalibrateRetrieval();

  // The stream. The first retention_passages passages go in one at a time so their questions can
  // be asked right after; later ones in batches up to the next plot point.
  std::optional<cli::ProgressBar> streaming;
  if (o_.progress) streaming.emplace("streaming", "passages", isatty(STDERR_FILENO) != 0);
  int stored = 0;
  while (stored < total) {
    if (streaming) streaming->Update(stored, total);
    const int next_point = *std::upper_bound(curve_sizes_.begin(), curve_sizes_.end(), stored);
    const int end = stored < retention_passages ? stored + 1 : std::min(next_point, stored + 64);
    if (absl::Status s = StorePassages(stored, end); !s.ok()) return s;
    for (int i = stored; i < std::min(end, retention_passages); ++i) {
      for (int q : retention_by_passage_[i]) {
        if (absl::Status s = AskMemoryModes(q, kRightAfter); !s.ok()) return s;
      }
    }
    stored = end;
    auto point = std::find(curve_sizes_.begin(), curve_sizes_.end(), stored);
    if (point == curve_sizes_.end()) continue;
    const int stage = AtBankSize(static_cast<int>(point - curve_sizes_.begin()));
    for (int q : retention_questions_) {
      if (absl::Status s = AskMemoryModes(q, stage); !s.ok()) return s;
    }
    if (stored == total) {
      if (streaming) {
        streaming->Update(total, total);
        streaming->Finish();
      }
      // Every question through the pipeline in every mode (retrieval, modulation, prompt).
      std::optional<cli::ProgressBar> preparing;
      if (o_.progress) preparing.emplace("preparing", "questions", isatty(STDERR_FILENO) != 0);
      for (size_t i = 0; i < main_questions_.size(); ++i) {
        if (preparing) preparing->Update(i, main_questions_.size());
        if (absl::Status s = AskMemoryModes(main_questions_[i], kAtEnd); !s.ok()) return s;
      }
      if (preparing) preparing->Update(main_questions_.size(), main_questions_.size());
    }
  }
  for (int q : main_questions_) {
    if (absl::Status s = AskNoMemoryModes(q, kAtEnd); !s.ok()) return s;
  }
  // Without memory the answer does not depend on the bank: asked once for the retention set.
  for (int q : retention_questions_) {
    if (absl::Status s = AskNoMemoryModes(q, kRightAfter); !s.ok()) return s;
  }
  if (absl::Status s = MeasureAbstention(); !s.ok()) return s;
  if (absl::Status s = bank_->Close(); !s.ok()) return s;
  const double stream_seconds = std::chrono::duration<double>(Clock::now() - t0).count();

  const Clock::time_point g0 = Clock::now();
  std::optional<cli::ProgressBar> generating;
  if (o_.progress) generating.emplace("answering", "prompts", isatty(STDERR_FILENO) != 0);
  absl::StatusOr<std::vector<std::string>> answers =
      GreedyAnswers(model_, tokenizer_, requests_, o_.batch, o_.max_answer_tokens,
                    [&](size_t done, size_t total) {
                      if (generating) generating->Update(done, total);
                    });
  if (generating) generating->Finish();
  if (!answers.ok()) return answers.status();
  const double generation_seconds = std::chrono::duration<double>(Clock::now() - g0).count();

  Json report = Report(*answers, generation_seconds);
  report["abstention"] = AbstentionReport(*answers);
  report["seconds"] = {{"stream_and_retrieval", stream_seconds},
                       {"generation", generation_seconds},
                       {"total", std::chrono::duration<double>(Clock::now() - t0).count()}};

  report_ = report;
  return internal::WriteReport(report, o_, total);
}

absl::Status Evaluator::MeasureAbstention() {
  // The threshold: given, or the bundle's calibration.
  if (o_.abstain_below >= 0) {
    threshold_ = o_.abstain_below;
    threshold_source_ = "--abstain-below";
  } else {
    absl::StatusOr<knowledge::Calibration> c = knowledge::ReadCalibration(o_.bundle_dir);
    if (!c.ok()) return c.status();
    threshold_ = c->abstain_below;
    threshold_source_ = "bundle knowledge.json";
  }
  absl::StatusOr<knowledge::AskParams> rag = EvalModeParams(o_, "rag-subject");
  if (!rag.ok()) return rag.status();
  const knowledge::AskParams params = *rag;  // the daemon's default rag ask
  auto relevance = [&](const std::string& question) -> absl::StatusOr<double> {
    absl::StatusOr<knowledge::PreparedAsk> p =
        knowledge::PrepareAsk(Context(), kNamespace, question, params);
    if (!p.ok()) return p.status();
    return p->relevance;
  };
  // Unknown people: another split's questions (its people never streamed here), as many as the
  // main questions, spread over it.
  const bool test_people =
      o_.split == "test" || o_.split == train::kParaphraseSplit;  // paraphrase: test's passages
  unknown_split_ = !o_.unknown_split.empty() ? o_.unknown_split : test_people ? "valid" : "test";
  absl::StatusOr<train::Split> split = train::ParseSplit(unknown_split_);
  if (!split.ok()) return split.status();
  std::error_code ec;
  if (!std::filesystem::exists(
          std::filesystem::path(o_.data_dir) / absl::StrCat(unknown_split_, ".questions.jsonl"),
          ec)) {
    unknown_split_ += " (not in the data directory: not measured)";
  } else {
    absl::StatusOr<train::SplitData> unknown = train::ReadSplit(o_.data_dir, *split);
    if (!unknown.ok()) return unknown.status();
    const size_t n = unknown->questions.size();
    const size_t want = std::min(n, main_questions_.size());
    for (size_t i = 0; i < want; ++i) {
      absl::StatusOr<double> r = relevance(unknown->questions[i * n / want].question);
      if (!r.ok()) return r.status();
      unknown_relevance_.push_back(*r);
    }
  }
  // Forgotten people: every passage of `forget_subjects` subjects of the main questions deleted,
  // then their questions asked.
  std::vector<std::string> subjects;
  for (int q : main_questions_) {
    const std::string& subject = data_.questions[q].subject;
    if (std::find(subjects.begin(), subjects.end(), subject) == subjects.end()) {
      subjects.push_back(subject);
    }
  }
  std::vector<std::string> forgotten;
  const int want_subjects = std::min<int>(o_.forget_subjects, subjects.size());
  for (int i = 0; i < want_subjects; ++i) {
    forgotten.push_back(subjects[static_cast<size_t>(i) * subjects.size() / want_subjects]);
  }
  std::vector<std::string> doc_ids;
  for (const train::Passage& p : data_.passages) {
    if (std::find(forgotten.begin(), forgotten.end(), p.subject) != forgotten.end()) {
      doc_ids.push_back(p.id);
    }
  }
  if (!doc_ids.empty()) {
    absl::StatusOr<int> deleted = bank_->Delete(kNamespace, doc_ids, /*purge=*/false);
    if (!deleted.ok()) return deleted.status();
  }
  forgotten_subjects_ = static_cast<int>(forgotten.size());
  for (const train::Question& q : data_.questions) {
    if (std::find(forgotten.begin(), forgotten.end(), q.subject) == forgotten.end()) continue;
    absl::StatusOr<double> r = relevance(q.question);
    if (!r.ok()) return r.status();
    forgotten_relevance_.push_back(*r);
  }

  if (o_.calibrate_abstention) {
    // The threshold that best separates this split's questions (known) from the unknown ones,
    // a false abstention weighing ten missed ones: max over t of
    // unknown_abstained(t) - 10 * known_abstained(t), over t between observed relevances.
    std::vector<double> known;
    for (const auto& [q, r] : relevance_) known.push_back(r);
    std::vector<double> candidates = known;
    candidates.insert(candidates.end(), unknown_relevance_.begin(), unknown_relevance_.end());
    std::sort(candidates.begin(), candidates.end());
    auto below = [](const std::vector<double>& v, double t) {
      return v.empty() ? 0.0 : std::count_if(v.begin(), v.end(), [&](double r) {
                                 return r < t;
                               }) / static_cast<double>(v.size());
    };
    double best_t = 0, best = 0;
    for (size_t i = 0; i + 1 < candidates.size(); ++i) {
      if (candidates[i + 1] <= candidates[i]) continue;
      const double t = (candidates[i] + candidates[i + 1]) / 2;
      const double value = below(unknown_relevance_, t) - 10 * below(known, t);
      if (value > best) {
        best = value;
        best_t = t;
      }
    }
    threshold_ = best_t;
    threshold_source_ = absl::StrCat("calibrated on the ", o_.split, " split");
    calibration_ = {{"abstain_below", best_t},
                    {"calibrated_on", absl::StrCat(o_.split, " split of ", o_.data_dir)},
                    {"known_questions", known.size()},
                    {"known_abstained", below(known, best_t)},
                    {"unknown_split", unknown_split_},
                    {"unknown_questions", unknown_relevance_.size()},
                    {"unknown_abstained", below(unknown_relevance_, best_t)},
                    {"rule",
                     "max over t of unknown_abstained(t) - 10 * known_abstained(t) "
                     "(knowd eval --calibrate-abstention)"}};
    if (absl::Status s = knowledge::UpdateCalibration(o_.bundle_dir, calibration_.dump());
        !s.ok()) {
      return s;
    }
  }
  return absl::OkStatus();
}

Json Evaluator::AbstentionReport(const std::vector<std::string>& answers) {
  auto rate = [&](const std::vector<double>& v) {
    const auto n = std::count_if(v.begin(), v.end(), [&](double r) { return r < threshold_; });
    return Json{{"questions", v.size()},
                {"abstained", n},
                {"rate", v.empty() ? 0.0 : n / static_cast<double>(v.size())}};
  };
  std::vector<double> known;
  for (int q : main_questions_) {
    auto it = relevance_.find(q);
    if (it != relevance_.end()) known.push_back(it->second);
  }
  Json report = {{"threshold", threshold_},
                 {"source", threshold_source_},
                 {"relevance",
                  "lexical coverage of the best passage: the share of the question's names "
                  "(else words) it holds, weighted by squared inverse document frequency"},
                 {"known", rate(known)},
                 {"unknown", rate(unknown_relevance_)},
                 {"forgotten", rate(forgotten_relevance_)}};
  report["unknown"]["split"] = unknown_split_;
  report["forgotten"]["subjects"] = forgotten_subjects_;
  if (!calibration_.is_null()) report["calibration"] = calibration_;
  // EM of each memory mode when abstained questions count as unanswered.
  Json modes = Json::object();
  std::map<int, AnswerScore> with, without;
  for (const Asked& a : asked_) {
    if (a.stage != kAtEnd || !UsesMemory(a.mode)) continue;
    const train::Question& q = data_.questions[a.question];
    const std::string predicted = a.request >= 0 ? answers[a.request] : "";
    auto it = relevance_.find(a.question);
    const bool abstained = it != relevance_.end() && it->second < threshold_;
    without[a.mode].Add(predicted, FinalAnswer(q));
    with[a.mode].Add(abstained ? "" : predicted, FinalAnswer(q));
  }
  for (const auto& [mode, score] : with) {
    modes[kModeNames[mode]] = {{"em", score.em()},
                               {"em_without_abstention", without[mode].em()},
                               {"em_lost", without[mode].em() - score.em()}};
  }
  report["modes"] = modes;
  return report;
}

Json Evaluator::Report(const std::vector<std::string>& answers, double generation_seconds) {
  const int num_stages = 2 + static_cast<int>(curve_sizes_.size());
  std::vector<std::vector<AnswerScore>> scores(kNumModes, std::vector<AnswerScore>(num_stages));
  std::vector<AnswerScore> update(kNumModes), stale(kNumModes);
  std::map<std::string, std::vector<AnswerScore>> by_relation;  // relation -> per mode
  std::map<std::pair<int, int>, std::string> main_answer;       // (question, mode)
  int update_questions = 0;
  for (int q : main_questions_) update_questions += !data_.questions[q].superseded_by.empty();
  for (const Asked& a : asked_) {
    const train::Question& q = data_.questions[a.question];
    static const std::string kNoAnswer;
    const std::string& predicted = a.request >= 0 ? answers[a.request] : kNoAnswer;
    if (a.stage == kAtEnd) {
      scores[a.mode][a.stage].Add(predicted, FinalAnswer(q));
      auto [relation, added] = by_relation.try_emplace(q.relation, kNumModes);
      relation->second[a.mode].Add(predicted, FinalAnswer(q));
      main_answer[{a.question, a.mode}] = predicted;
      if (!q.superseded_by.empty()) {
        update[a.mode].Add(predicted, FinalAnswer(q));
        stale[a.mode].Add(predicted, q.answer);
      }
    } else {
      scores[a.mode][a.stage].Add(predicted, q.answer);
    }
  }

  const LlamaConfig& c = model_.config();
  Json report;
  report["bundle"] = o_.bundle_dir;
  report["data"] = o_.data_dir;
  report["split"] = o_.split;
  report["passages"] = std::string(train::SplitName(data_.split)) + ".passages.jsonl";
  report["model"] = {{"parameters", c.ParameterCount()},
                     {"layers", c.num_layers},
                     {"hidden_size", c.hidden_size},
                     {"kv_dim", c.kv_dim()},
                     {"context", c.max_position_embeddings}};
  report["stream_passages"] = data_.passages.size();
  report["questions"] = main_questions_.size();
  report["max_answer_tokens"] = o_.max_answer_tokens;
  if (modulator_ != nullptr) {
    report["mac"] = {{"top_k", o_.mac_top_k},
                     {"rag_text", o_.mac_rag_subject ? "subject" : "top1"},
                     {"text_head", modulator_->has_text_head()},
                     {"rag_prefix_key_scale", modulator_->text_prefix_key_scale()}};
  }
  report["gold"] =
      "final_answer: the value at the end of the stream (SQuAD-normalised EM and token F1)";

  auto recall = [&](const RecallCounts& r) {
    const double n = std::max(1, recall_questions_);
    return Json{{"recall_at_1", r.at1 / n}, {"recall_at_5", r.at5 / n}};
  };
  const knowledge::Retrieval search = o_.retrieval.value_or(o_.retrieval_defaults.all);
  const RecallCounts& served = search == knowledge::Retrieval::kHybrid  ? recall_hybrid_
                               : search == knowledge::Retrieval::kDense ? recall_dense_
                                                                        : recall_bm25_;
  report["retrieval"] = {
      {"questions", recall_questions_},
      {"served",
       {{"search", knowledge::RetrievalName(search)},
        {"rag", knowledge::RetrievalName(EvalModeParams(o_, "rag-subject")->retrieval)},
        {"mac", knowledge::RetrievalName(EvalModeParams(o_, "mac")->retrieval)},
        {"mac+rag", knowledge::RetrievalName(EvalModeParams(o_, "mac+rag")->retrieval)}}},
      {"fusion",
       {{"rrf_k", o_.fusion->rrf_k},
        {"dense_weight", o_.fusion->dense_weight},
        {"lexical_weight", o_.fusion->lexical_weight}}},
      {"recall_at_1", recall(served)["recall_at_1"]},
      {"recall_at_5", recall(served)["recall_at_5"]},
      {"dense_key", modulator_ == nullptr ? "hashed bag of words (no adapter)"
                    : modulator_->fingerprint().key_hash.empty() ? "adapter"
                                                                 : "retrieval heads"},
      {"bm25", recall(recall_bm25_)},
      {"dense", recall(recall_dense_)},
      {"hybrid", recall(recall_hybrid_)}};

  Json modes = Json::object();
  Json retention_modes = Json::object();
  Json update_modes = Json::object();
  Json curve_series = Json::object();
  const Json skipped = {{"status", "skipped"}, {"reason", modulator_reason_}};
  for (int m = 0; m < kNumModes; ++m) {
    const char* name = kModeNames[m];
    if (NeedsModulator(m) && modulator_ == nullptr) {
      modes[name] = skipped;
      retention_modes[name] = skipped;
      update_modes[name] = skipped;
      continue;
    }
    const AnswerScore& s = scores[m][kAtEnd];
    modes[name] = {{"status", "ok"}, {"em", s.em()}, {"f1", s.f1()}, {"questions", s.count()}};
    update_modes[name] = {
        {"em", update[m].em()}, {"f1", update[m].f1()}, {"stale_em", stale[m].em()}};
    std::vector<double> points;
    for (size_t i = 0; i < curve_sizes_.size(); ++i) {
      points.push_back(UsesMemory(m) ? scores[m][AtBankSize(static_cast<int>(i))].em()
                                     : scores[m][kRightAfter].em());
    }
    curve_series[name] = points;
    if (!UsesMemory(m)) {
      retention_modes[name] = {{"status", "not applicable"},
                               {"reason", "no memory: the prompt does not depend on the bank"},
                               {"em", scores[m][kRightAfter].em()}};
      continue;
    }
    const double after = scores[m][kRightAfter].em();
    const double end = scores[m][AtBankSize(static_cast<int>(curve_sizes_.size()) - 1)].em();
    retention_modes[name] = {{"em_right_after", after},
                             {"em_after_stream", end},
                             {"retained_fraction", after > 0 ? Json(end / after) : Json()}};
  }
  report["modes"] = modes;
  report["retention"] = {{"passages", retention_by_passage_.size()},
                         {"questions", retention_questions_.size()},
                         {"note",
                          "questions of the first passages whose fact no later passage changes, "
                          "asked right after their passage was stored and after the whole stream"},
                         {"modes", retention_modes}};
  report["updates"] = {{"questions", update_questions},
                       {"note",
                        "questions whose fact a later passage changed, asked after the whole "
                        "stream: em against the new value, stale_em against the old one"},
                       {"modes", update_modes}};
  // Where a mode's answers go wrong: its scores on each relation's questions (the whole-stream
  // questions, scored as report["modes"] is).
  Json relations = Json::object();
  for (const auto& [relation, per_mode] : by_relation) {
    Json r_modes = Json::object();
    int count = 0;
    for (int m = 0; m < kNumModes; ++m) {
      if (modes[kModeNames[m]]["status"] != "ok") continue;
      r_modes[kModeNames[m]] = {{"em", per_mode[m].em()}, {"f1", per_mode[m].f1()}};
      count = std::max(count, per_mode[m].count());
    }
    relations[relation] = {{"questions", count}, {"modes", r_modes}};
  }
  report["by_relation"] = relations;
  report["em_vs_stored"] = {{"questions", retention_questions_.size()},
                            {"bank_sizes", curve_sizes_},
                            {"series", curve_series}};

  // Storage per passage. The KV cache is what the frozen LM would hold to keep the passage in its
  // context (every layer's keys and values for its tokens).
  double tokens = 0.0, text = 0.0;
  for (const train::Passage& p : data_.passages) {
    tokens += static_cast<double>(tokenizer_.Encode(p.text, false).size());
    text += static_cast<double>(p.text.size());
  }
  tokens /= data_.passages.size();
  text /= data_.passages.size();
  const double kv_row_floats = 2.0 * c.num_layers * c.kv_dim();
  const int64_t modulation_bytes =
      modulator_ ? storage::ModulationBytes(modulator_->key_dim(), modulator_->latent_rows(),
                                            modulator_->latent_cols(), o_.latent_format)
                 : 0;
  const int64_t latent_bytes = modulator_ ? modulation_bytes - 4 * modulator_->key_dim() : 0;
  Json modulation = modulator_
                        ? Json{{"bytes", modulation_bytes},
                               {"latent_bytes", latent_bytes},
                               {"key_bytes", 4 * modulator_->key_dim()},
                               {"latent_format", storage::LatentFormatName(o_.latent_format)}}
                        : Json{{"status", "skipped"}, {"reason", modulator_reason_}};
  report["storage_bytes"] = {{"mean_passage_tokens", tokens},
                             {"text_per_passage", text},
                             {"kv_cache_f32_per_passage", tokens * kv_row_floats * 4},
                             {"kv_cache_f16_per_passage", tokens * kv_row_floats * 2},
                             {"modulation", modulation}};
  if (modulator_) {
    report["storage_bytes"]["modulation_vs_kv_f16"] =
        modulation_bytes / (tokens * kv_row_floats * 2);
    report["storage_bytes"]["latent_vs_kv_f16"] = latent_bytes / (tokens * kv_row_floats * 2);
  }

  int64_t prompt_tokens = 0;
  for (const AnswerRequest& r : requests_) prompt_tokens += static_cast<int64_t>(r.prompt.size());
  report["generation"] = {{"asked", asked_.size()},
                          {"generated", requests_.size()},
                          {"prompt_tokens", prompt_tokens},
                          {"batch", o_.batch},
                          {"prompt_tokens_per_second",
                           generation_seconds > 0 ? prompt_tokens / generation_seconds : 0.0},
                          {"dropped_passages", dropped_passages_},
                          {"truncated_prompts", truncated_prompts_}};

  Json examples = Json::array();
  const int example_count = o_.examples < 0 ? static_cast<int>(main_questions_.size())
                                            : std::min<int>(o_.examples, main_questions_.size());
  for (int i = 0; i < example_count; ++i) {
    const train::Question& q = data_.questions[main_questions_[i]];
    Json predicted = Json::object();
    for (int m = 0; m < kNumModes; ++m) {
      auto it = main_answer.find({main_questions_[i], m});
      if (it != main_answer.end()) predicted[kModeNames[m]] = it->second;
    }
    examples.push_back({{"id", q.id},
                        {"relation", q.relation},
                        {"changed_later", !q.superseded_by.empty()},
                        {"question", q.question},
                        {"gold", FinalAnswer(q)},
                        {"predicted", predicted}});
  }
  report["examples"] = examples;
  return report;
}

}  // namespace

absl::StatusOr<knowledge::AskParams> EvalModeParams(const EvalOptions& o, std::string_view mode) {
  knowledge::AskParams p;
  p.max_tokens = o.max_answer_tokens;
  p.fusion = o.fusion.value_or(knowledge::Fusion());
  if (mode == "rag-top1" || mode == "rag-top3") {
    p.mode = knowledge::AskMode::kRag;
    p.top_k = p.rag_passages = mode == "rag-top1" ? 1 : 3;
    p.subject_passages = 0;
  } else if (mode == "rag-subject") {
    p.mode = knowledge::AskMode::kRag;  // the daemon's rag mode with its defaults
  } else if (mode == "mac" || mode == "mac+rag") {
    p.mode = mode == "mac" ? knowledge::AskMode::kMac : knowledge::AskMode::kMacRag;
    p.top_k = o.mac_top_k;
    if (!o.mac_rag_subject) {
      p.rag_passages = o.mac_rag_passages;
      p.subject_passages = 0;
    }
  } else {
    return absl::NotFoundError(absl::StrCat("no eval mode \"", std::string(mode), "\""));
  }
  p.retrieval = o.retrieval.value_or(o.retrieval_defaults.For(p.mode));
  return p;
}

namespace {

// --calibrate-retrieval's second part, after the recall grid wrote the fusion and the default:
// every memory mode's EM with each retrieval (evaluations of the same split); each mode's best
// joins knowledge.json's retrieval object, ties going to the cheaper retrieval (lexical needs no
// encoder pass for a rag question, dense no lexical search).
absl::Status CalibrateModeRetrieval(
    const EvalOptions& options,
    const std::function<absl::Status(const EvalOptions&, Json*)>& evaluate) {
  absl::StatusOr<knowledge::Calibration> calibration =
      knowledge::ReadCalibration(options.bundle_dir);
  if (!calibration.ok()) return calibration.status();
  std::ifstream in(std::filesystem::path(options.bundle_dir) / "knowledge.json");
  Json written = Json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (!written.is_object() || !written["retrieval"].is_object()) {
    return absl::InternalError("knowledge.json lost its retrieval calibration");
  }
  Json retrieval = written["retrieval"];
  // Cheapest first.
  const knowledge::Retrieval order[] = {
      knowledge::Retrieval::kLexical, knowledge::Retrieval::kDense, knowledge::Retrieval::kHybrid};
  const std::pair<const char*, knowledge::AskMode> modes[] = {
      {"rag-subject", knowledge::AskMode::kRag},
      {"mac", knowledge::AskMode::kMac},
      {"mac+rag", knowledge::AskMode::kMacRag}};
  std::map<knowledge::Retrieval, Json> em;
  for (knowledge::Retrieval r : order) {
    EvalOptions o = options;
    o.calibrate_retrieval = false;
    o.calibrate_abstention = false;
    o.retrieval = r;
    o.fusion = calibration->fusion;
    o.report_path.clear();
    o.print_table = false;
    o.on_prepared = nullptr;
    Json report;
    if (absl::Status s = evaluate(o, &report); !s.ok()) return s;
    for (const auto& [eval_name, mode] : modes) {
      em[r][knowledge::AskModeName(mode)] = report["modes"][eval_name]["em"].get<double>();
    }
  }
  Json chosen = Json::object(), by_retrieval = Json::object();
  for (knowledge::Retrieval r : order) by_retrieval[knowledge::RetrievalName(r)] = em[r];
  std::printf("EM on the %s split with each retrieval:\n", options.split.c_str());
  for (const auto& [eval_name, mode] : modes) {
    const char* name = knowledge::AskModeName(mode);
    knowledge::Retrieval best = order[0];
    for (knowledge::Retrieval r : order) {
      if (em[r][name].get<double>() > em[best][name].get<double>()) best = r;
    }
    chosen[name] = knowledge::RetrievalName(best);
    std::printf("  %-8s", name);
    for (knowledge::Retrieval r : order) {
      std::printf(" %s %.3f", knowledge::RetrievalName(r), em[r][name].get<double>());
    }
    std::printf(" -> %s\n", knowledge::RetrievalName(best));
  }
  retrieval["modes"] = chosen;
  retrieval["modes_em"] = by_retrieval;
  retrieval["modes_rule"] =
      "each mode's best EM on the split (rag: rag-subject), ties to the cheaper retrieval "
      "(lexical, dense, hybrid)";
  return knowledge::UpdateCalibration(options.bundle_dir, Json{{"retrieval", retrieval}}.dump());
}

}  // namespace

absl::Status RunEval(const EvalOptions& options) {
  // "paraphrase" asks the test split's passages (train::ReadEvalSplit).
  absl::StatusOr<train::SplitData> data = train::ReadEvalSplit(options.data_dir, options.split);
  if (!data.ok()) return data.status();
  // The model and tokenizer; the adapter comes through the modulator loader (tests stand in
  // theirs), and a missing one skips the mac modes rather than failing.
  knowledge::BundleOptions bundle_options;
  bundle_options.model = options.bundle_dir;
  bundle_options.adapter = "none";
  bundle_options.threads = options.threads;
  absl::StatusOr<knowledge::Bundle> bundle = knowledge::LoadBundle(bundle_options);
  if (!bundle.ok()) return bundle.status();
  std::unique_ptr<Transformer>* model = &bundle->model;
  std::unique_ptr<Tokenizer>* tokenizer = &bundle->tokenizer;

  std::unique_ptr<Modulator> modulator;
  std::string reason;
  if (options.modulator_loader) {
    absl::StatusOr<std::unique_ptr<Modulator>> loaded =
        options.modulator_loader(options.bundle_dir, **model, **tokenizer);
    if (loaded.ok()) {
      modulator = *std::move(loaded);
      if (options.rag_prefix_key_scale > 0) {
        absl::Status s =
            modulator->SetTextPrefixKeyScale(static_cast<float>(options.rag_prefix_key_scale));
        if (!s.ok()) {
          return absl::Status(s.code(), absl::StrCat("--rag-prefix-key-scale: ", s.message()));
        }
      }
    } else {
      reason = std::string(loaded.status().message());
    }
  } else {
    reason = "mode unavailable: no adapter loader";
  }

  std::string bank_dir = options.work_dir;
  std::string temp_dir;
  if (bank_dir.empty()) {
    std::string pattern = (std::filesystem::temp_directory_path() / "knowd-eval-XXXXXX").string();
    if (mkdtemp(pattern.data()) == nullptr) {
      return absl::InternalError(absl::StrCat("cannot create a temporary directory ", pattern));
    }
    temp_dir = pattern;
    bank_dir = temp_dir + "/bank";
  } else {
    bank_dir = (std::filesystem::path(bank_dir) / "bank").string();
    std::error_code ec;
    std::filesystem::remove_all(bank_dir, ec);  // every run streams into an empty bank
  }
  // What a daemon request that names no retrieval gets: the bundle's, lexical without an adapter
  // (dense keys need one; the hashed stand-in keys are only for the recall figures).
  EvalOptions resolved = options;
  if (modulator != nullptr) resolved.retrieval_defaults = bundle->calibration.retrieval;
  if (!resolved.fusion.has_value()) resolved.fusion = bundle->calibration.fusion;
  auto evaluate = [&](const EvalOptions& o, Json* report) -> absl::Status {
    absl::Status status;
    {
      Evaluator evaluator(o, *data, **model, **tokenizer, modulator.get(), reason);
      status = evaluator.Run(bank_dir);
      if (report != nullptr) *report = evaluator.report();
    }  // the bank is closed before the next one opens in its directory
    std::error_code ec;
    std::filesystem::remove_all(bank_dir, ec);
    return status;
  };
  absl::Status status = evaluate(resolved, nullptr);
  if (status.ok() && options.calibrate_retrieval && modulator != nullptr) {
    status = CalibrateModeRetrieval(resolved, evaluate);
  }
  if (!temp_dir.empty()) {
    std::error_code ec;
    std::filesystem::remove_all(temp_dir, ec);
  }
  return status;
}

}  // namespace knowd::bench
