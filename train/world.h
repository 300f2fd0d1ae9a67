// The synthetic knowledge world of knowd-train: fictional people, organisations, places and pets
// whose names are built from syllables, so no real-world prior helps a model answer about them.
//
// A world is a pure function of WorldOptions: every random choice of a split comes from one
// std::mt19937_64 seeded from (seed, split), drawn through BoundedDraw (never the
// implementation-defined std::uniform_int_distribution), so the same options give byte-identical
// JSONL on every machine. Splits never share a named entity: a name belongs to the split chosen
// by a hash of its text, so each split is also independent of the others' sizes.
//
// This library does not use libtorch or libsentencepiece; tests and the C++ eval link it freely.
#pragma once

#include <cstdint>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace knowd::train {

enum class Split { kPretrain = 0, kAdapter = 1, kValid = 2, kTest = 3 };
inline constexpr int kNumSplits = 4;
// "pretrain", "adapter", "valid", "test".
std::string_view SplitName(Split split);
absl::StatusOr<Split> ParseSplit(std::string_view name);

// The relations a fact can have. Every one has many possible values (closed-book guessing stays
// near chance): cities, organisations, universities, people and pet names are invented per split;
// years span 86 values, occupations and hobbies about 50 each.
inline constexpr const char* kRelations[] = {"birthplace", "birth_year", "hometown",
                                             "employer",   "occupation", "university",
                                             "spouse",     "pet",        "hobby"};
inline constexpr int kNumRelations = 9;

struct WorldOptions {
  uint64_t seed = 20240601;
  // Main people per split; each gets one passage (and maybe one update passage).
  int people[kNumSplits] = {8000, 4000, 300, 1000};
  // Fraction of people whose facts change in a later update passage.
  double update_fraction = 0.15;
  // Questions per main passage in the valid and test splits (pretrain and adapter passages get
  // every phrasing of every stated fact, for training variety).
  int eval_questions_per_passage = 3;
  // In-context tasks (icl.train.jsonl, icl.heldout.jsonl; see "in-context tasks" below): tasks
  // per family, demonstrations and queries per task (passage-QA tasks have as many
  // demonstrations as their context's facts give), passages in a passage-QA context.
  int icl_train_tasks_per_family = 6;
  int icl_heldout_tasks_per_family = 4;
  int icl_demonstrations = 1024;
  int icl_queries = 16;
  int icl_context_passages = 3;
};

struct Fact {
  std::string relation;
  std::string value;
};

struct Passage {
  std::string id;  // "<split>-p<number>"
  Split split = Split::kPretrain;
  int64_t stream_position = 0;  // order in the split's stream (updates come after originals)
  std::string text;
  std::string subject;                // the main person
  std::vector<std::string> entities;  // every name mentioned, subject first
  std::vector<Fact> facts;            // facts about the subject that the text states
  bool is_update = false;
  std::string updates;  // for an update: the id of the passage whose facts it changes
};

struct Question {
  std::string id;  // "<split>-q<number>"
  std::string passage_id;
  Split split = Split::kPretrain;
  std::string subject;
  std::string relation;
  std::string question;
  std::string answer;  // true as of the passage's stream position
  bool is_update = false;
  // The answer at the end of the stream, and the update passage that changed it (empty if none).
  std::string final_answer;
  std::string superseded_by;
};

struct SplitData {
  Split split = Split::kPretrain;
  std::vector<Passage> passages;  // in stream order
  std::vector<Question> questions;
};

// Generates one split. Deterministic in (options, split).
SplitData GenerateSplit(const WorldOptions& options, Split split);

// One JSON object per line, keys in a fixed order, UTF-8, '\n' terminated.
std::string PassageToJson(const Passage& passage);
std::string QuestionToJson(const Question& question);
absl::StatusOr<Passage> PassageFromJson(std::string_view line);
absl::StatusOr<Question> QuestionFromJson(std::string_view line);

// ---- the paraphrase split ------------------------------------------------------------------
//
// One question per test question, about the same passage with the same answers, that names the
// fact with other words: synonyms of the relation's words ("Who is the partner of X?" for
// "Who is X's spouse?"), a description of the person instead of the name where one is unique
// ("the person who came into the world in CITY in YEAR"), reordered clauses ("X was born in which
// city?"). Among the phrasings a question may take, most are chosen to share as few content words
// with the passage as possible. Drawn from its own generator, seeded from (seed, "paraphrase"), so
// no other split changes with it. Its questions keep the test split's schema: `split` is "test"
// (their people are the test split's), ids are "paraphrase-q<n>" for the test split's "test-q<n>".
inline constexpr char kParaphraseSplit[] = "paraphrase";

// How a paraphrase question differs from its test question (not written to the JSONL).
struct ParaphraseInfo {
  std::string test_question_id;
  // The relation is named with words the plain question templates of the relation do not use.
  bool synonym = false;
  // The clauses are reordered ("X was born in which city?").
  bool reordered = false;
  // Non-empty: the person is named by these facts instead of their name; no other person of the
  // test split has all of them stated.
  std::vector<Fact> description;
  // The words that name the person in the question: the name, or the description.
  std::string reference;
};

struct ParaphraseSplit {
  std::vector<Question> questions;   // parallel to the test split's questions
  std::vector<ParaphraseInfo> info;  // parallel to `questions`
};

// The paraphrase questions of `test` (GenerateSplit(options, Split::kTest)). Deterministic in
// (options.seed, test).
ParaphraseSplit GenerateParaphrases(const WorldOptions& options, const SplitData& test);

// ---- in-context tasks ------------------------------------------------------------------------
//
// Many-shot tasks for learning from a stream of demonstrations. A task is a family, a mapping
// drawn fresh for the task, demonstrations (input -> output) and queries with gold outputs:
//   classify_*  "<Full Name>: <value>, <value>" -> a label word; the label is a bijection of one
//               of the two shown attributes' values (2..6 classes), the other is noise; queries
//               are people no demonstration shows.
//   map_*       "<value of relation A>" -> "<value of relation B>": a table of 4..16 pairs from
//               the facts of as many people, A and B values distinct within the task.
//   pick_*      "<First>: <value>; <First>: <value>; <First>: <value>" -> the first name of the
//               one candidate that fits the task's rule (has the task's target value, or the
//               earliest or latest year); the fitting person of a query is in no demonstration.
//   passage_qa* a context of passages; demonstrations ask some of their facts, queries the others.
// Families are either training families (people of the adapter split, label words from one
// list) or held-out families (people of the test split, label words from a disjoint list); no
// family is both. Every value a task shows is the person's value at the end of the split's
// stream. Drawn from generators seeded from (seed, family, task index), so no other file
// changes with them and a task does not depend on the number of tasks.
inline constexpr char kIclTrainFile[] = "icl.train.jsonl";
inline constexpr char kIclHeldoutFile[] = "icl.heldout.jsonl";

enum class IclKind { kClassify = 0, kMap = 1, kPick = 2, kPassageQa = 3 };

struct IclFamily {
  std::string name;  // "classify_occupation", ...
  IclKind kind = IclKind::kClassify;
  bool heldout = false;
  // classify and pick: the attribute the label or the rule depends on ("birth_decade" for
  // classify_birth_decade: the birth year's decade, "1950s"); map: the input's relation.
  std::string relation;
  std::string output_relation;  // map: the output's relation
};
// Every family, training families first.
const std::vector<IclFamily>& IclFamilies();

struct IclExample {
  std::string input, output;
};

struct IclMapping {
  std::string from, to;
};

struct IclTask {
  std::string id;  // "icl-train-t<n>" or "icl-heldout-t<n>"
  std::string family;
  bool heldout = false;
  Split people = Split::kAdapter;  // the split whose people and passages it uses
  // What the task computes, in words (never shown to a model): "occupation -> label",
  // "hobby = chess", "birth_year: earliest", "answers from the context".
  std::string rule;
  // classify: attribute value -> label word; map: input value -> output value; empty otherwise.
  std::vector<IclMapping> mapping;
  std::vector<std::string> context;  // passage_qa*: passage texts, in stream order
  std::vector<IclExample> demonstrations;
  std::vector<IclExample> queries;
};

struct IclTaskSet {
  std::vector<IclTask> train, heldout;
};

// The tasks of every family. `adapter` and `test` are GenerateSplit(options, kAdapter / kTest).
// Deterministic in (options, adapter, test).
IclTaskSet GenerateIclTasks(const WorldOptions& options, const SplitData& adapter,
                            const SplitData& test);

// The one text format of in-context data. A query: "Q: <input>\nA:", the shape of the QA prompt
// the LM was pretrained on (knowledge/prompt.h), whose answer is the greedy continuation up to
// "\n". A demonstration: IclPrompt(input) + " " + output + "\n". With knowd-tiny's tokenizer a
// demonstration is about 20 tokens (12-13 for map_*, 25-33 for pick_*), a label word 1 or 2.
std::string IclPrompt(std::string_view input);
std::string IclDemonstration(const IclExample& example);
// The in-context prompt of a query after the first `demonstrations` demonstrations of `task`:
// the context's passages, each followed by "\n", then the demonstrations, then IclPrompt(input).
std::string IclTaskPrompt(const IclTask& task, int demonstrations, std::string_view input);

// The same context as session chunks (train/session.h): each context passage alone, then the
// first `demonstrations` demonstrations in groups of `per_chunk` (the last group may be short),
// each chunk's text the concatenation of its parts as IclTaskPrompt writes them. Concatenated,
// the chunks are IclTaskPrompt's context.
std::vector<std::string> IclContextChunks(const IclTask& task, int demonstrations, int per_chunk);

// One JSON object per line (keys: id, family, set, people, rule, mapping [{from, to}], context,
// demonstrations [{input, output}], queries [{input, output}]), '\n' terminated.
std::string IclTaskToJson(const IclTask& task);
absl::StatusOr<IclTask> IclTaskFromJson(std::string_view line);
// Reads <dir>/icl.train.jsonl or <dir>/icl.heldout.jsonl.
absl::StatusOr<std::vector<IclTask>> ReadIclTasks(const std::string& dir, bool heldout);

// Writes <dir>/<split>.passages.jsonl and <dir>/<split>.questions.jsonl for every split,
// <dir>/paraphrase.questions.jsonl, <dir>/icl.train.jsonl, <dir>/icl.heldout.jsonl, and
// <dir>/world.json (the options and what each split is). Creates `dir`.
absl::Status WriteWorld(const WorldOptions& options, const std::string& dir);
// Function words ("the", "whom", "was", ...): a paraphrase question may share these with its
// passage and still share no content word.
bool IsStopWord(std::string_view word);

// Reads one split back from `dir`.
absl::StatusOr<SplitData> ReadSplit(const std::string& dir, Split split);
// The split whose passages an evaluation split is asked about: the test split for "paraphrase",
// the split of that name otherwise. INVALID_ARGUMENT for an unknown name.
absl::StatusOr<Split> PassagesOfEvalSplit(std::string_view name);
// Reads an evaluation split: ReadSplit for "pretrain", "adapter", "valid" and "test"; for
// "paraphrase", test.passages.jsonl with paraphrase.questions.jsonl.
absl::StatusOr<SplitData> ReadEvalSplit(const std::string& dir, std::string_view name);

// A draw in [0, n) from `rng`, identical on every platform (rejection sampling on the raw 64-bit
// output). n must be > 0.
uint64_t BoundedDraw(std::mt19937_64& rng, uint64_t n);
// A double in [0, 1) from the top 53 bits.
double UnitDraw(std::mt19937_64& rng);

}  // namespace knowd::train
