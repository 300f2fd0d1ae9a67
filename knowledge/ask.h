// Preparing a question: everything between the question text and the first forward pass, in one
// function that the daemon's ask scheduler and `knowd eval` both call. Plain structs in, the
// reader's prefix + prompt ids + citations out; no wire types, no scheduling.
//
//   1. Retrieval (memory modes): the top passages for the question (retrieve.h). Their best
//      lexical coverage (subject.h's LexicalMarks::coverage) is the question's relevance; below
//      AskParams::abstain_below the memory has nothing on the question and the ask stops here
//      with nothing_in_memory set, in every memory mode.
//   2. Modulation (mac, mac+rag): the stored latents of the best top_k passages (at most the
//      adapter's max_candidates), aggregated with the question's code into the prefix.
//   3. The prompt (FitPrompt): rag modes put the best rag_passages passages and up to
//      subject_passages more on the best hit's subject in the context, oldest first, dropping
//      the lowest-ranked ones until the prompt fits the context with max_tokens to spare.
#pragma once

#include <cstdint>
#include <map>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "knowledge/modulator.h"
#include "knowledge/retrieve.h"
#include "model/adapter.h"
#include "model/tokenizer.h"
#include "storage/memory_bank.h"

namespace knowd::knowledge {

enum class AskMode {
  kClosedBook,  // the question alone
  kRag,         // retrieved passages as text
  kMac,         // the modulation of retrieved passages as a prefix
  kMacRag,      // both
};

// "closed-book", "rag", "mac", "mac+rag".
const char* AskModeName(AskMode mode);
inline bool UsesModulation(AskMode m) { return m == AskMode::kMac || m == AskMode::kMacRag; }
inline bool UsesText(AskMode m) { return m == AskMode::kRag || m == AskMode::kMacRag; }

// The retrieval a request that names none gets: its mode's own, else one for every mode (and for
// Search). A bundle's calibration chooses them on its valid split (bundle.h).
struct RetrievalDefaults {
  Retrieval all = Retrieval::kLexical;
  std::map<AskMode, Retrieval> by_mode;
  Retrieval For(AskMode mode) const {
    auto it = by_mode.find(mode);
    return it == by_mode.end() ? all : it->second;
  }
};

// The defaults are the daemon's and the figures `knowd eval` reports.
struct AskParams {
  AskMode mode = AskMode::kMac;
  Retrieval retrieval = Retrieval::kLexical;
  int top_k = 3;             // passages retrieved: mac aggregates them, rag takes the best
  int rag_passages = 1;      // rag modes: the best this many passages go in the prompt, with
  int subject_passages = 2;  // up to this many more on the best one's subject, found among
  int subject_depth = 20;    // this many candidates
  Fusion fusion;             // hybrid retrieval's weights
  int max_tokens = 32;       // answer tokens the prompt leaves room for
  // Nothing in memory when the question's relevance is below this (0: always answer).
  double abstain_below = 0;
};

struct AskContext {
  storage::MemoryBank* bank = nullptr;
  const Tokenizer* tokenizer = nullptr;
  Modulator* modulator = nullptr;  // null: closed-book and rag only
  int context_positions = 0;       // the model's context (KV cache capacity)
};

struct PreparedAsk {
  AskMode mode = AskMode::kClosedBook;
  // The memory holds nothing relevant enough: no prompt, no answer (memory modes only).
  bool nothing_in_memory = false;
  // The best lexical coverage among the retrieved passages (0 with no hit; 1 in closed-book mode).
  double relevance = 0;
  PrefixKv prefix;              // rows == 0: none
  std::vector<int32_t> prompt;  // starts with BOS unless a prefix stands for it
  // The passages the answer draws on, best first: those aggregated and those in the prompt.
  std::vector<storage::SearchHit> cited;
  int dropped_passages = 0;  // retrieved for the prompt but left out to fit the context
  bool truncated = false;    // the question alone overflowed: only its tail is kept
  absl::Duration retrieval_time;
  absl::Duration modulation_time;
};

// Prepares `question` for `name_space`. FAILED_PRECONDITION for a mac mode without a modulator,
// INVALID_ARGUMENT when max_tokens leaves no room for a prompt; the bank's errors as they come.
absl::StatusOr<PreparedAsk> PrepareAsk(const AskContext& context, std::string_view name_space,
                                       std::string_view question, const AskParams& params);

// The question's code from the adapter's question encoder (QuestionPrompt with BOS).
absl::StatusOr<QuestionCode> EncodeQuestion(Modulator& modulator, const Tokenizer& tokenizer,
                                            std::string_view question);

// The QA prompt for `question` over `ranked` passages (best first): they go in oldest first (by
// valid_from or ingest time, then passage id), the lowest-ranked dropped until the ids fit
// `budget` tokens; if the question alone overflows, BOS (when `bos`) and the prompt's tail are
// kept. `kept` gets how many of `ranked` are in the prompt.
struct FittedPrompt {
  std::vector<int32_t> ids;
  int kept = 0;
  bool truncated = false;
};
FittedPrompt FitPrompt(const Tokenizer& tokenizer,
                       std::span<const storage::SearchHit* const> ranked, std::string_view question,
                       int budget, bool bos);

}  // namespace knowd::knowledge
