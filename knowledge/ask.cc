#include "knowledge/ask.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "knowledge/prompt.h"
#include "knowledge/subject.h"

namespace knowd::knowledge {
namespace {

absl::Time Age(const storage::SearchHit& h) { return h.valid_from.value_or(h.ingest_time); }

}  // namespace

const char* AskModeName(AskMode mode) {
  switch (mode) {
    case AskMode::kClosedBook:
      return "closed-book";
    case AskMode::kRag:
      return "rag";
    case AskMode::kMac:
      return "mac";
    case AskMode::kMacRag:
      return "mac+rag";
  }
  return "mac";
}

absl::StatusOr<QuestionCode> EncodeQuestion(Modulator& modulator, const Tokenizer& tokenizer,
                                            std::string_view question) {
  const std::vector<int32_t> ids = tokenizer.Encode(QuestionPrompt(question), true);
  return modulator.EncodeQuestion(ids);
}

FittedPrompt FitPrompt(const Tokenizer& tokenizer,
                       std::span<const storage::SearchHit* const> ranked, std::string_view question,
                       int budget, bool bos) {
  FittedPrompt out;
  int kept = static_cast<int>(ranked.size());
  while (true) {
    std::vector<const storage::SearchHit*> ordered(ranked.begin(), ranked.begin() + kept);
    std::stable_sort(ordered.begin(), ordered.end(), [](const auto* a, const auto* b) {
      return Age(*a) != Age(*b) ? Age(*a) < Age(*b) : a->passage_id < b->passage_id;
    });
    std::vector<std::string_view> texts;
    for (const storage::SearchHit* h : ordered) texts.push_back(h->text);
    out.ids = tokenizer.Encode(QaPrompt(JoinPassages(texts), question), bos);
    if (static_cast<int>(out.ids.size()) <= budget) break;
    if (kept > 0) {
      --kept;  // the lowest-ranked passage makes room first
      continue;
    }
    // The question alone overflows: keep BOS and the prompt's tail ("...\nA:").
    std::vector<int32_t> tail;
    if (bos && tokenizer.bos_id() >= 0) tail.push_back(tokenizer.bos_id());
    tail.insert(tail.end(), out.ids.end() - (budget - static_cast<int>(tail.size())),
                out.ids.end());
    out.ids = std::move(tail);
    out.truncated = true;
    break;
  }
  out.kept = kept;
  return out;
}

absl::StatusOr<PreparedAsk> PrepareAsk(const AskContext& context, std::string_view name_space,
                                       std::string_view question, const AskParams& params) {
  PreparedAsk out;
  out.mode = params.mode;
  const bool mac = UsesModulation(params.mode);
  const bool text = UsesText(params.mode);
  Modulator* const modulator = context.modulator;
  if (mac && modulator == nullptr) {
    return absl::FailedPreconditionError(absl::StrCat(
        "mode ", AskModeName(params.mode),
        " needs an adapter; this daemon serves without one (closed-book and rag only)"));
  }
  if (params.top_k < 1) return absl::InvalidArgumentError("top_k must be >= 1");
  const absl::Time start = absl::Now();

  // 1. Retrieval.
  std::optional<QuestionCode> code;
  std::vector<storage::SearchHit> hits;
  std::vector<LexicalMarks> marks;  // one per hit
  if (params.mode != AskMode::kClosedBook) {
    if (modulator != nullptr && (mac || params.retrieval != Retrieval::kLexical)) {
      KNOWD_ASSIGN_OR_RETURN(code, EncodeQuestion(*modulator, *context.tokenizer, question));
    }
    int depth = params.top_k;
    if (text && params.subject_passages > 0) depth = std::max(depth, params.subject_depth);
    storage::LexicalTerms terms;
    KNOWD_ASSIGN_OR_RETURN(hits, RetrievePassages(*context.bank, name_space, question,
                                                  code ? &code->retrieval_key : nullptr,
                                                  params.retrieval, depth, params.fusion, &terms));
    // Relevance: the best coverage among the hits themselves, however they were found; a
    // constant cost per hit, whatever the namespace's size.
    marks = MarkLexicalHits(hits, terms);
    out.relevance = std::max(0.0, BestCoverage(marks));
    if (hits.empty() || out.relevance < params.abstain_below) {
      out.nothing_in_memory = true;
      out.retrieval_time = absl::Now() - start;
      return out;
    }
  } else {
    out.relevance = 1;
  }
  const absl::Time retrieved = absl::Now();
  out.retrieval_time = retrieved - start;

  // 2. Modulation: the best top_k passages' latents. A Forget between the search and now leaves
  // the passages still stored (the answer cites only them), as if the search came after it.
  std::vector<const storage::SearchHit*> aggregated;
  if (mac) {
    const int n =
        std::min({params.top_k, modulator->max_candidates(), static_cast<int>(hits.size())});
    std::vector<storage::PassageId> ids;
    for (int i = 0; i < n; ++i) ids.push_back(hits[i].passage_id);
    std::vector<std::shared_ptr<const std::vector<float>>> latents;
    auto all = context.bank->GetLatents(name_space, ids);
    if (absl::IsNotFound(all.status())) {
      for (int i = 0; i < n; ++i) {
        auto one = context.bank->GetLatents(name_space, {&hits[i].passage_id, 1});
        if (absl::IsNotFound(one.status())) continue;
        if (!one.ok()) return one.status();
        latents.push_back((*one)[0]);
        aggregated.push_back(&hits[i]);
      }
    } else if (!all.ok()) {
      return all.status();
    } else {
      latents = *std::move(all);
      for (int i = 0; i < n; ++i) aggregated.push_back(&hits[i]);
    }
    if (latents.empty()) {
      out.nothing_in_memory = true;  // every passage found was forgotten meanwhile
      return out;
    }
    std::vector<std::span<const float>> spans;
    for (const auto& l : latents) spans.emplace_back(*l);
    KNOWD_ASSIGN_OR_RETURN(out.prefix, modulator->Modulate(*code, spans, text));
  }
  out.modulation_time = absl::Now() - retrieved;

  // 3. The prompt.
  std::vector<const storage::SearchHit*> in_prompt;
  if (text) {
    int on_subject = 0;
    const int candidates = static_cast<int>(hits.size());
    for (int i = 0; i < candidates; ++i) {
      if (i < params.rag_passages && i < params.top_k) {
        in_prompt.push_back(&hits[i]);
      } else if (marks[i].same_subject && on_subject < params.subject_passages) {
        in_prompt.push_back(&hits[i]);
        ++on_subject;
      }
    }
  }
  const int budget = context.context_positions - out.prefix.rows - params.max_tokens;
  if (budget < 2) {
    return absl::InvalidArgumentError(absl::StrCat("max_tokens ", params.max_tokens,
                                                   " leaves no room for the prompt in the model's ",
                                                   context.context_positions, " positions"));
  }
  FittedPrompt fitted =
      FitPrompt(*context.tokenizer, in_prompt, question, budget, out.prefix.rows == 0);
  out.prompt = std::move(fitted.ids);
  out.truncated = fitted.truncated;
  out.dropped_passages = static_cast<int>(in_prompt.size()) - fitted.kept;
  in_prompt.resize(fitted.kept);

  // Citations: what was aggregated and what is in the prompt, best first.
  std::vector<const storage::SearchHit*> cited = aggregated;
  for (const storage::SearchHit* h : in_prompt) {
    if (std::find(cited.begin(), cited.end(), h) == cited.end()) cited.push_back(h);
  }
  std::sort(cited.begin(), cited.end());  // hits are stored best first: address order is rank
  for (const storage::SearchHit* h : cited) out.cited.push_back(*h);
  return out;
}

}  // namespace knowd::knowledge
