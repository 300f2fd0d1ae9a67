#include "train/world.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string>

namespace knowd::train {
namespace {

WorldOptions SmallWorld() {
  WorldOptions o;
  o.seed = 7;
  o.people[0] = 300;
  o.people[1] = 150;
  o.people[2] = 60;
  o.people[3] = 120;
  o.update_fraction = 0.3;
  return o;
}

std::string Jsonl(const SplitData& d) {
  std::string s;
  for (const Passage& p : d.passages) s += PassageToJson(p);
  for (const Question& q : d.questions) s += QuestionToJson(q);
  return s;
}

int CountSentences(const std::string& text) {
  int n = 0;
  for (size_t i = 0; i < text.size(); ++i) {
    if (text[i] == '.' && (i + 1 == text.size() || text[i + 1] == ' ')) ++n;
  }
  return n;
}

TEST(WorldTest, SameSeedGivesIdenticalJsonl) {
  const WorldOptions o = SmallWorld();
  for (int s = 0; s < kNumSplits; ++s) {
    const std::string a = Jsonl(GenerateSplit(o, static_cast<Split>(s)));
    const std::string b = Jsonl(GenerateSplit(o, static_cast<Split>(s)));
    EXPECT_EQ(a, b) << SplitName(static_cast<Split>(s));
  }
  WorldOptions other = o;
  other.seed = 8;
  EXPECT_NE(Jsonl(GenerateSplit(o, Split::kTest)), Jsonl(GenerateSplit(other, Split::kTest)));
}

TEST(WorldTest, SplitDoesNotDependOnOtherSplitsSizes) {
  WorldOptions a = SmallWorld(), b = SmallWorld();
  b.people[0] = 50;
  EXPECT_EQ(Jsonl(GenerateSplit(a, Split::kTest)), Jsonl(GenerateSplit(b, Split::kTest)));
}

TEST(WorldTest, BoundedDrawIsPinned) {
  // Fixed outputs: the world must not change across machines or library versions.
  std::mt19937_64 rng(42);
  std::vector<uint64_t> draws;
  for (int i = 0; i < 5; ++i) draws.push_back(BoundedDraw(rng, 1000));
  std::mt19937_64 again(42);
  for (int i = 0; i < 5; ++i) {
    const uint64_t raw = again();
    EXPECT_EQ(draws[i], raw % 1000);  // no rejection this close to 2^64
  }
  EXPECT_EQ(std::mt19937_64(42)(), 13930160852258120406ull);
}

TEST(WorldTest, SplitsShareNoEntity) {
  const WorldOptions o = SmallWorld();
  std::map<std::string, int> owner;
  for (int s = 0; s < kNumSplits; ++s) {
    const SplitData d = GenerateSplit(o, static_cast<Split>(s));
    std::set<std::string> names;
    for (const Passage& p : d.passages) names.insert(p.entities.begin(), p.entities.end());
    for (const std::string& name : names) {
      auto [it, inserted] = owner.emplace(name, s);
      EXPECT_TRUE(inserted || it->second == s)
          << name << " is in " << SplitName(static_cast<Split>(it->second)) << " and "
          << SplitName(static_cast<Split>(s));
    }
  }
}

TEST(WorldTest, DefaultTestStreamMeetsMinimums) {
  const SplitData test = GenerateSplit(WorldOptions(), Split::kTest);
  EXPECT_GE(test.passages.size(), 1000u);
  EXPECT_GE(test.questions.size(), 3000u);
  std::set<std::string> relations, phrasings_of_birthplace;
  int updates = 0;
  for (const Question& q : test.questions) {
    relations.insert(q.relation);
    updates += q.is_update;
  }
  for (const Passage& p : test.passages) {
    const int n = CountSentences(p.text);
    EXPECT_GE(n, 3) << p.text;
    EXPECT_LE(n, 8) << p.text;
  }
  EXPECT_GE(relations.size(), 8u);
  EXPECT_GT(updates, 50);
}

TEST(WorldTest, EveryAnswerIsInItsPassage) {
  const WorldOptions o = SmallWorld();
  for (int s = 0; s < kNumSplits; ++s) {
    const SplitData d = GenerateSplit(o, static_cast<Split>(s));
    std::map<std::string, const Passage*> by_id;
    for (const Passage& p : d.passages) by_id[p.id] = &p;
    for (const Question& q : d.questions) {
      ASSERT_TRUE(by_id.count(q.passage_id)) << q.id;
      const Passage& p = *by_id[q.passage_id];
      EXPECT_NE(p.text.find(q.answer), std::string::npos) << q.question << " / " << p.text;
      EXPECT_NE(q.question.find(p.subject), std::string::npos) << q.question;
      const bool stated = std::any_of(p.facts.begin(), p.facts.end(), [&](const Fact& f) {
        return f.relation == q.relation && f.value == q.answer;
      });
      EXPECT_TRUE(stated) << q.id;
    }
  }
}

TEST(WorldTest, UpdatesComeLaterAndChangeTheFact) {
  const SplitData d = GenerateSplit(SmallWorld(), Split::kTest);
  std::map<std::string, const Passage*> by_id;
  for (const Passage& p : d.passages) by_id[p.id] = &p;
  int updates = 0;
  for (const Passage& p : d.passages) {
    if (!p.is_update) continue;
    ++updates;
    ASSERT_TRUE(by_id.count(p.updates));
    const Passage& original = *by_id[p.updates];
    EXPECT_EQ(original.subject, p.subject);
    EXPECT_LT(original.stream_position, p.stream_position);
  }
  EXPECT_GT(updates, 10);
  for (const Question& q : d.questions) {
    const Passage& p = *by_id[q.passage_id];
    if (q.is_update) {
      ASSERT_TRUE(p.is_update);
      const Passage& original = *by_id[p.updates];
      for (const Fact& f : original.facts) {
        if (f.relation == q.relation) {
          EXPECT_NE(f.value, q.answer) << q.id;
        }
      }
      EXPECT_EQ(q.final_answer, q.answer);
    }
    if (!q.superseded_by.empty()) {
      const Passage& update = *by_id[q.superseded_by];
      EXPECT_EQ(update.updates, p.id);
      EXPECT_NE(q.final_answer, q.answer);
      const bool newer = std::any_of(update.facts.begin(), update.facts.end(), [&](const Fact& f) {
        return f.relation == q.relation && f.value == q.final_answer;
      });
      EXPECT_TRUE(newer) << q.id;
    }
  }
}

TEST(WorldTest, WrittenFilesReadBack) {
  const std::string dir =
      (std::filesystem::temp_directory_path() / ("knowd_world_test_" + std::to_string(getpid())))
          .string();
  WorldOptions o = SmallWorld();
  ASSERT_TRUE(WriteWorld(o, dir).ok());
  for (int s = 0; s < kNumSplits; ++s) {
    absl::StatusOr<SplitData> read = ReadSplit(dir, static_cast<Split>(s));
    ASSERT_TRUE(read.ok()) << read.status();
    EXPECT_EQ(Jsonl(*read), Jsonl(GenerateSplit(o, static_cast<Split>(s))));
  }
  std::filesystem::remove_all(dir);
  EXPECT_FALSE(ReadSplit(dir, Split::kTest).ok());
}

// FNV-1a of a text, to pin the bytes a split is written as.
uint64_t Fnv1a64(const std::string& s) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : s) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}

// The paraphrase split must not move a byte of the others: their JSONL, for a fixed seed, is
// pinned here (the FNV-1a of the files `knowd-train data` wrote for these options before the
// paraphrase split existed).
TEST(WorldTest, ExistingSplitsArePinned) {
  const WorldOptions o = SmallWorld();
  const uint64_t expected[kNumSplits] = {0x7f9a1171082e1d82ull, 0xc35f0b262971441full,
                                         0x465590e38dc3f2efull, 0x66cd511a3c01745cull};
  for (int s = 0; s < kNumSplits; ++s) {
    const uint64_t h = Fnv1a64(Jsonl(GenerateSplit(o, static_cast<Split>(s))));
    EXPECT_EQ(h, expected[s]) << SplitName(static_cast<Split>(s)) << ": 0x" << std::hex << h;
  }
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// tests/data/world was cut from the default world's test split; the generator still writes it.
TEST(WorldTest, DefaultTestSplitMatchesTheCommittedFixture) {
  const std::string dir = std::string(KNOWD_SOURCE_DIR) + "/tests/data/world";
  const std::string passages = ReadFile(dir + "/passages.jsonl");
  const std::string questions = ReadFile(dir + "/questions.jsonl");
  ASSERT_FALSE(passages.empty());
  ASSERT_FALSE(questions.empty());
  const SplitData test = GenerateSplit(WorldOptions(), Split::kTest);
  std::set<std::string> fixture_passages;
  int checked = 0;
  for (const Passage& p : test.passages) {
    const std::string line = "{\"id\": \"" + p.id + "\", \"text\": \"" + p.text + "\"";
    if (passages.find(line) == std::string::npos) continue;
    fixture_passages.insert(p.id);
    ++checked;
  }
  EXPECT_EQ(checked, 40);
  int asked = 0;
  for (const Question& q : test.questions) {
    if (!fixture_passages.count(q.passage_id)) continue;
    ++asked;
    const std::string line = "{\"id\": \"" + q.id + "\", \"passage_id\": \"" + q.passage_id +
                             "\", \"relation\": \"" + q.relation + "\", \"question\": \"" +
                             q.question + "\", \"answer\": \"" + q.answer + "\"";
    EXPECT_NE(questions.find(line), std::string::npos) << line;
  }
  EXPECT_EQ(asked, 120);
}

// ---- the paraphrase split ----

// Words of a text, in their case: runs of letters, digits and apostrophes, "'s" dropped.
std::vector<std::string> Words(const std::string& text) {
  std::vector<std::string> out;
  std::string w;
  for (size_t i = 0; i <= text.size(); ++i) {
    const char c = i < text.size() ? text[i] : ' ';
    if (std::isalnum(static_cast<unsigned char>(c)) || c == '\'') {
      w += c;
      continue;
    }
    if (w.size() >= 2 && w.compare(w.size() - 2, 2, "'s") == 0) w.resize(w.size() - 2);
    if (!w.empty()) out.push_back(w);
    w.clear();
  }
  return out;
}

std::string Lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

// Content words: lower-case words that are no function words (capitalised words and numbers
// are names and values).
std::set<std::string> ContentWords(const std::string& text) {
  std::set<std::string> out;
  for (const std::string& w : Words(text)) {
    if (std::islower(static_cast<unsigned char>(w[0])) && !IsStopWord(w)) out.insert(w);
  }
  return out;
}

// "lives" and "live", "employs" and "employed" are one word.
std::string Stem(std::string w) {
  for (const std::string suffix : {"ing", "ed", "es", "s"}) {
    if (w.size() >= suffix.size() + 3 &&
        w.compare(w.size() - suffix.size(), suffix.size(), suffix) == 0) {
      w.resize(w.size() - suffix.size());
      break;
    }
  }
  return w;
}

// Content words of a question its passage holds too (compared as stems).
int SharedContentWords(const std::string& question, const std::string& passage) {
  std::set<std::string> passage_words;
  for (const std::string& w : Words(passage)) passage_words.insert(Stem(Lower(w)));
  int shared = 0;
  for (const std::string& w : ContentWords(question)) shared += passage_words.count(Stem(w));
  return shared;
}

// The content words of the plain split's question templates, per relation (train/world.cc).
const std::map<std::string, std::set<std::string>>& PlainRelationWords() {
  static const auto* words = new std::map<std::string, std::set<std::string>>{
      {"birthplace", {"born", "city", "birthplace"}},
      {"birth_year", {"year", "born", "birth"}},
      {"hometown", {"live", "city", "home"}},
      {"employer", {"work", "company", "employs", "employer"}},
      {"occupation", {"occupation", "living", "job"}},
      {"university", {"study", "university", "attend", "school", "graduate"}},
      {"spouse", {"married", "spouse", "marry"}},
      {"pet",
       {"name", "called", "pet", "named", "dog", "cat", "parrot", "rabbit", "turtle", "hamster",
        "horse", "goat", "ferret", "canary"}},
      {"hobby", {"hobby", "enjoy", "free", "time", "like", "fun"}},
  };
  return *words;
}

TEST(WorldTest, ParaphraseSplitAsksTheTestFactsWithOtherWords) {
  const SplitData test = GenerateSplit(WorldOptions(), Split::kTest);
  const ParaphraseSplit para = GenerateParaphrases(WorldOptions(), test);
  ASSERT_EQ(para.questions.size(), test.questions.size());
  ASSERT_EQ(para.info.size(), para.questions.size());
  std::map<std::string, const Passage*> by_id;
  // What the split states about each person: descriptions must pick out one of them.
  std::map<std::string, std::map<std::string, std::set<std::string>>> stated;
  for (const Passage& p : test.passages) {
    by_id[p.id] = &p;
    for (const Fact& f : p.facts) stated[p.subject][f.relation].insert(f.value);
  }
  const int n = static_cast<int>(para.questions.size());
  int synonym = 0, reordered = 0, described = 0, no_shared = 0, plain_no_shared = 0,
      no_shared_nor_name = 0;
  std::set<std::string> description_kinds;
  for (int i = 0; i < n; ++i) {
    const Question& q = para.questions[i];
    const Question& plain = test.questions[i];
    const ParaphraseInfo& info = para.info[i];
    EXPECT_EQ(q.id, "paraphrase-q" + std::to_string(i));
    EXPECT_EQ(info.test_question_id, plain.id);
    // The same fact of the same passage, and the same answers.
    EXPECT_EQ(q.passage_id, plain.passage_id);
    EXPECT_EQ(q.split, Split::kTest);
    EXPECT_EQ(q.subject, plain.subject);
    EXPECT_EQ(q.relation, plain.relation);
    EXPECT_EQ(q.answer, plain.answer);
    EXPECT_EQ(q.final_answer, plain.final_answer);
    EXPECT_EQ(q.superseded_by, plain.superseded_by);
    EXPECT_EQ(q.is_update, plain.is_update);
    ASSERT_TRUE(by_id.count(q.passage_id)) << q.id;
    const Passage& p = *by_id[q.passage_id];
    EXPECT_EQ(p.subject, q.subject);
    EXPECT_TRUE(std::any_of(p.facts.begin(), p.facts.end(), [&](const Fact& f) {
      return f.relation == q.relation && f.value == q.answer;
    })) << q.id;
    EXPECT_NE(q.question, plain.question);
    EXPECT_EQ(q.question.find(q.answer), std::string::npos) << q.question;
    // The reference opens the question in upper case.
    const size_t reference_at = Lower(q.question).find(Lower(info.reference));
    ASSERT_NE(reference_at, std::string::npos) << q.question;

    // The words about the relation: the question without the words naming the person.
    const std::string rest = q.question.substr(0, reference_at) + " " +
                             q.question.substr(reference_at + info.reference.size());
    const std::set<std::string> relation_words = ContentWords(rest);
    const std::set<std::string>& plain_words = PlainRelationWords().at(q.relation);
    const bool new_word = std::any_of(relation_words.begin(), relation_words.end(),
                                      [&](const std::string& w) { return !plain_words.count(w); });
    if (info.synonym) {
      EXPECT_TRUE(new_word) << q.question;
    }
    synonym += info.synonym;
    reordered += info.reordered;

    if (!info.description.empty()) {
      ++described;
      std::string kind;
      EXPECT_EQ(q.question.find(q.subject), std::string::npos) << q.question;
      for (const Fact& f : info.description) {
        kind += f.relation + " ";
        EXPECT_NE(f.relation, q.relation) << q.question;
        EXPECT_NE(info.reference.find(f.value), std::string::npos) << q.question;
        // Stated by the passage, and the only value the split states for the person.
        EXPECT_TRUE(std::any_of(p.facts.begin(), p.facts.end(), [&](const Fact& g) {
          return g.relation == f.relation && g.value == f.value;
        })) << q.question;
        EXPECT_EQ(stated[q.subject][f.relation], std::set<std::string>{f.value}) << q.question;
      }
      description_kinds.insert(kind);
      // Unique: nobody else of the split has every fact of the description stated.
      int matches = 0;
      for (const auto& [person, facts] : stated) {
        matches +=
            std::all_of(info.description.begin(), info.description.end(), [&](const Fact& f) {
              auto it = facts.find(f.relation);
              return it != facts.end() && it->second.count(f.value);
            });
      }
      EXPECT_EQ(matches, 1) << q.question;
    } else {
      EXPECT_EQ(info.reference, q.subject);
    }
    const bool shares_none = SharedContentWords(q.question, p.text) == 0;
    no_shared += shares_none;
    // Neither the person's name nor a word about the relation in common with the passage.
    no_shared_nor_name += shares_none && !info.description.empty();
    plain_no_shared += SharedContentWords(plain.question, p.text) == 0;
  }
  std::printf(
      "paraphrase split: %d questions; relation synonym %.3f, description %.3f, reordered %.3f; "
      "no content word shared with the passage %.3f (plain test split %.3f), nor the name %.3f\n",
      n, double(synonym) / n, double(described) / n, double(reordered) / n, double(no_shared) / n,
      double(plain_no_shared) / n, double(no_shared_nor_name) / n);
  EXPECT_GE(synonym, n * 70 / 100);
  EXPECT_GE(described, n * 25 / 100);
  EXPECT_GE(reordered, n * 20 / 100);
  EXPECT_GE(description_kinds.size(), 8u);
  EXPECT_GE(no_shared, n * 50 / 100);
  EXPECT_LT(plain_no_shared, no_shared);
  EXPECT_GE(no_shared_nor_name, n * 25 / 100);
}

TEST(WorldTest, ParaphraseSplitIsWrittenAndReadWithTheTestPassages) {
  const std::string dir = (std::filesystem::temp_directory_path() /
                           ("knowd_world_paraphrase_test_" + std::to_string(getpid())))
                              .string();
  const WorldOptions o = SmallWorld();
  ASSERT_TRUE(WriteWorld(o, dir).ok());
  absl::StatusOr<SplitData> read = ReadEvalSplit(dir, "paraphrase");
  ASSERT_TRUE(read.ok()) << read.status();
  const SplitData test = GenerateSplit(o, Split::kTest);
  const ParaphraseSplit para = GenerateParaphrases(o, test);
  EXPECT_EQ(read->split, Split::kTest);
  ASSERT_EQ(read->passages.size(), test.passages.size());
  ASSERT_EQ(read->questions.size(), para.questions.size());
  for (size_t i = 0; i < para.questions.size(); ++i) {
    EXPECT_EQ(QuestionToJson(read->questions[i]), QuestionToJson(para.questions[i]));
  }
  EXPECT_EQ(PassageToJson(read->passages[0]), PassageToJson(test.passages[0]));
  // The same seed gives the same paraphrases; the other splits read as before.
  EXPECT_EQ(QuestionToJson(GenerateParaphrases(o, test).questions.back()),
            QuestionToJson(para.questions.back()));
  absl::StatusOr<SplitData> valid = ReadEvalSplit(dir, "valid");
  ASSERT_TRUE(valid.ok()) << valid.status();
  EXPECT_EQ(Jsonl(*valid), Jsonl(GenerateSplit(o, Split::kValid)));
  const std::string world = ReadFile(dir + "/world.json");
  EXPECT_NE(world.find("\"paraphrase\""), std::string::npos) << world;
  EXPECT_EQ(PassagesOfEvalSplit("paraphrase").value(), Split::kTest);
  EXPECT_FALSE(PassagesOfEvalSplit("paraphrases").ok());
  std::filesystem::remove(dir + "/paraphrase.questions.jsonl");
  const absl::StatusOr<SplitData> missing = ReadEvalSplit(dir, "paraphrase");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find("knowd-train data"), std::string::npos);
  std::filesystem::remove_all(dir);
}

// ---- in-context tasks ----

WorldOptions SmallIclWorld() {
  WorldOptions o = SmallWorld();
  o.icl_train_tasks_per_family = 2;
  o.icl_heldout_tasks_per_family = 2;
  o.icl_demonstrations = 48;
  o.icl_queries = 6;
  return o;
}

IclTaskSet SmallIclTasks(const WorldOptions& o) {
  return GenerateIclTasks(o, GenerateSplit(o, Split::kAdapter), GenerateSplit(o, Split::kTest));
}

std::string IclJsonl(const std::vector<IclTask>& tasks, bool with_ids = true) {
  std::string s;
  for (IclTask t : tasks) {
    if (!with_ids) t.id.clear();
    s += IclTaskToJson(t);
  }
  return s;
}

// Each main person's facts at the end of the split's stream (an update overrides).
std::map<std::string, std::map<std::string, std::string>> FinalFacts(const SplitData& d) {
  std::map<std::string, std::map<std::string, std::string>> out;
  for (const Passage& p : d.passages) {
    for (const Fact& f : p.facts) out[p.subject][f.relation] = f.value;
  }
  return out;
}

const IclFamily& FamilyOf(const IclTask& task) {
  for (const IclFamily& f : IclFamilies()) {
    if (f.name == task.family) return f;
  }
  ADD_FAILURE() << "unknown family " << task.family;
  return IclFamilies()[0];
}

std::vector<std::string> SplitOn(const std::string& s, const std::string& sep) {
  std::vector<std::string> out;
  size_t start = 0;
  for (size_t end; (end = s.find(sep, start)) != std::string::npos; start = end + sep.size()) {
    out.push_back(s.substr(start, end - start));
  }
  out.push_back(s.substr(start));
  return out;
}

TEST(WorldTest, IclTasksAreDeterministicAndIndependentOfTheirCount) {
  const WorldOptions o = SmallIclWorld();
  const IclTaskSet a = SmallIclTasks(o), b = SmallIclTasks(o);
  ASSERT_FALSE(a.train.empty());
  ASSERT_FALSE(a.heldout.empty());
  EXPECT_EQ(IclJsonl(a.train), IclJsonl(b.train));
  EXPECT_EQ(IclJsonl(a.heldout), IclJsonl(b.heldout));
  WorldOptions other = o;
  other.seed = 8;
  EXPECT_NE(IclJsonl(SmallIclTasks(other).train), IclJsonl(a.train));
  // One task per family is the first task of each family when there are two.
  WorldOptions fewer = o;
  fewer.icl_train_tasks_per_family = 1;
  std::map<std::string, std::string> first;
  for (const IclTask& t : a.train) first.emplace(t.family, IclJsonl({t}, false));
  for (const IclTask& t : SmallIclTasks(fewer).train) {
    EXPECT_EQ(IclJsonl({t}, false), first[t.family]) << t.family;
  }
}

TEST(WorldTest, IclHeldoutFamiliesNeverTrain) {
  const WorldOptions o;
  const IclTaskSet tasks =
      GenerateIclTasks(o, GenerateSplit(o, Split::kAdapter), GenerateSplit(o, Split::kTest));
  std::map<std::string, int> train_families, heldout_families;
  std::set<std::string> train_labels, heldout_labels;
  for (const IclTask& t : tasks.train) {
    EXPECT_FALSE(t.heldout);
    EXPECT_FALSE(FamilyOf(t).heldout) << t.family;
    EXPECT_EQ(t.people, Split::kAdapter);
    ++train_families[t.family];
    if (FamilyOf(t).kind == IclKind::kClassify) {
      for (const IclMapping& m : t.mapping) train_labels.insert(m.to);
    }
  }
  for (const IclTask& t : tasks.heldout) {
    EXPECT_TRUE(t.heldout);
    EXPECT_TRUE(FamilyOf(t).heldout) << t.family;
    EXPECT_EQ(t.people, Split::kTest);
    EXPECT_FALSE(train_families.count(t.family)) << t.family;
    ++heldout_families[t.family];
    if (FamilyOf(t).kind == IclKind::kClassify) {
      for (const IclMapping& m : t.mapping) heldout_labels.insert(m.to);
    }
  }
  // The default world gives every family its full count, every kind on both sides.
  std::set<IclKind> train_kinds, heldout_kinds;
  for (const IclFamily& f : IclFamilies()) {
    (f.heldout ? heldout_kinds : train_kinds).insert(f.kind);
    EXPECT_EQ((f.heldout ? heldout_families : train_families)[f.name],
              f.heldout ? o.icl_heldout_tasks_per_family : o.icl_train_tasks_per_family)
        << f.name;
  }
  EXPECT_EQ(train_kinds.size(), 4u);
  EXPECT_EQ(heldout_kinds.size(), 4u);
  ASSERT_FALSE(heldout_labels.empty());
  for (const std::string& w : heldout_labels) EXPECT_FALSE(train_labels.count(w)) << w;
  // A few MB at the default sizes.
  EXPECT_LT(IclJsonl(tasks.train).size(), 4u << 20);
  EXPECT_LT(IclJsonl(tasks.heldout).size(), 2u << 20);
}

// Every demonstration and query follows its task's mapping or rule, and is true of the world.
TEST(WorldTest, IclTasksFollowTheirMappingAndTheWorld) {
  const WorldOptions o;
  const SplitData adapter = GenerateSplit(o, Split::kAdapter);
  const SplitData test = GenerateSplit(o, Split::kTest);
  const IclTaskSet tasks = GenerateIclTasks(o, adapter, test);
  const auto adapter_facts = FinalFacts(adapter), test_facts = FinalFacts(test);
  std::vector<IclTask> all = tasks.train;
  all.insert(all.end(), tasks.heldout.begin(), tasks.heldout.end());
  int checked = 0;
  for (const IclTask& t : all) {
    const IclFamily& family = FamilyOf(t);
    const SplitData& data = t.heldout ? test : adapter;
    const auto& facts = t.heldout ? test_facts : adapter_facts;
    SCOPED_TRACE(t.id + " " + t.family);
    if (family.kind == IclKind::kPassageQa) {  // as many queries as the context's facts allow
      EXPECT_LE(t.queries.size(), static_cast<size_t>(o.icl_queries));
      EXPECT_GE(t.queries.size(), t.context.size());
    } else {
      EXPECT_EQ(t.queries.size(), static_cast<size_t>(o.icl_queries));
      EXPECT_EQ(t.demonstrations.size(), static_cast<size_t>(o.icl_demonstrations));
      EXPECT_TRUE(t.context.empty());
    }
    // map: the (input, output) value pairs some person has; pick: the (first name, value) pairs.
    std::set<std::pair<std::string, std::string>> held;
    for (const auto& [name, f] : facts) {
      if (family.kind == IclKind::kMap && f.count(family.relation) &&
          f.count(family.output_relation)) {
        held.emplace(f.at(family.relation), f.at(family.output_relation));
      }
      if (family.kind == IclKind::kPick && f.count(family.relation)) {
        held.emplace(name.substr(0, name.find(' ')), f.at(family.relation));
      }
    }
    std::map<std::string, std::string> mapping;
    std::set<std::string> outputs;
    for (const IclMapping& m : t.mapping) {
      EXPECT_TRUE(mapping.emplace(m.from, m.to).second) << "twice: " << m.from;
      EXPECT_TRUE(outputs.insert(m.to).second) << "twice: " << m.to;  // a bijection
    }
    std::set<std::string> demonstrated_people;
    for (const bool query : {false, true}) {
      for (const IclExample& e : query ? t.queries : t.demonstrations) {
        SCOPED_TRACE(e.input + " -> " + e.output);
        ++checked;
        switch (family.kind) {
          case IclKind::kClassify: {
            ASSERT_GE(t.mapping.size(), 2u);
            const size_t colon = e.input.find(": ");
            ASSERT_NE(colon, std::string::npos);
            const std::string name = e.input.substr(0, colon);
            ASSERT_TRUE(facts.count(name));
            const bool decade = family.relation == "birth_decade";
            const std::string shown = facts.at(name).at(decade ? "birth_year" : family.relation);
            const std::string value =
                decade ? std::to_string(std::stoi(shown) / 10 * 10) + "s" : shown;
            const std::vector<std::string> values = SplitOn(e.input.substr(colon + 2), ", ");
            ASSERT_EQ(values.size(), 2u);
            EXPECT_TRUE(values[0] == shown || values[1] == shown);
            ASSERT_TRUE(mapping.count(value));
            EXPECT_EQ(e.output, mapping.at(value));
            if (query) {
              EXPECT_FALSE(demonstrated_people.count(name))
                  << "a query shows a demonstrated person";
            } else {
              demonstrated_people.insert(name);
            }
            break;
          }
          case IclKind::kMap: {
            ASSERT_GE(t.mapping.size(), 2u);
            ASSERT_TRUE(mapping.count(e.input));
            EXPECT_EQ(e.output, mapping.at(e.input));
            EXPECT_TRUE(held.count({e.input, e.output}))
                << "nobody has " << e.input << " and " << e.output;
            break;
          }
          case IclKind::kPick: {
            EXPECT_TRUE(t.mapping.empty());
            std::vector<std::pair<std::string, std::string>> candidates;
            for (const std::string& c : SplitOn(e.input, "; ")) {
              const std::vector<std::string> parts = SplitOn(c, ": ");
              ASSERT_EQ(parts.size(), 2u) << c;
              candidates.emplace_back(parts[0], parts[1]);
              // Someone of the split has this first name and value.
              EXPECT_TRUE(held.count({parts[0], parts[1]})) << c;
            }
            ASSERT_EQ(candidates.size(), 3u);
            std::vector<std::string> fitting;
            if (family.relation == "birth_year") {
              const bool earliest = t.rule == "birth_year: earliest";
              EXPECT_TRUE(earliest || t.rule == "birth_year: latest") << t.rule;
              auto best = candidates[0];
              for (const auto& c : candidates) {
                if (earliest ? std::stoi(c.second) < std::stoi(best.second)
                             : std::stoi(c.second) > std::stoi(best.second)) {
                  best = c;
                }
              }
              for (const auto& c : candidates) {
                if (c.second == best.second) fitting.push_back(c.first);
              }
            } else {
              const std::string prefix = family.relation + " = ";
              ASSERT_EQ(t.rule.rfind(prefix, 0), 0u) << t.rule;
              for (const auto& c : candidates) {
                if (c.second == t.rule.substr(prefix.size())) fitting.push_back(c.first);
              }
            }
            ASSERT_EQ(fitting.size(), 1u);
            EXPECT_EQ(e.output, fitting[0]);
            break;
          }
          case IclKind::kPassageQa: {
            ASSERT_EQ(t.context.size(), static_cast<size_t>(o.icl_context_passages));
            // The question names a context passage's subject; that passage states the answer.
            bool stated = false;
            for (const Passage& p : data.passages) {
              if (std::find(t.context.begin(), t.context.end(), p.text) == t.context.end() ||
                  e.input.find(p.subject) == std::string::npos) {
                continue;
              }
              for (const Fact& f : p.facts) stated |= f.value == e.output;
            }
            EXPECT_TRUE(stated);
            break;
          }
        }
      }
    }
    if (family.kind == IclKind::kPassageQa) {
      EXPECT_GE(t.demonstrations.size(), t.context.size());
      // A query asks a fact no demonstration asks: its answer is no demonstration's answer
      // about the same person, unless two of the person's facts share the value.
      for (const IclExample& q : t.queries) {
        for (const IclExample& d : t.demonstrations) {
          for (const Passage& p : data.passages) {
            if (std::find(t.context.begin(), t.context.end(), p.text) == t.context.end()) continue;
            if (q.input.find(p.subject) == std::string::npos ||
                d.input.find(p.subject) == std::string::npos || d.output != q.output) {
              continue;
            }
            int with_value = 0;
            for (const Fact& f : p.facts) with_value += f.value == q.output;
            EXPECT_GE(with_value, 2) << q.input << " is demonstrated by " << d.input;
          }
        }
      }
    }
  }
  EXPECT_GT(checked, 60000);
}

TEST(WorldTest, IclPromptIsTheQaShape) {
  EXPECT_EQ(IclPrompt("Kalo Ren: baker, chess"), "Q: Kalo Ren: baker, chess\nA:");
  EXPECT_EQ(IclDemonstration({"Tosa", "Mimo Labs"}), "Q: Tosa\nA: Mimo Labs\n");
  IclTask task;
  task.context = {"Kalo Ren is a baker.", "Mimo Sa lives in Tosa."};
  task.demonstrations = {{"Where does Mimo Sa live?", "Tosa"}, {"a", "b"}, {"c", "d"}};
  EXPECT_EQ(IclTaskPrompt(task, 2, "What is Kalo Ren's job?"),
            "Kalo Ren is a baker.\nMimo Sa lives in Tosa.\nQ: Where does Mimo Sa live?\nA: "
            "Tosa\nQ: a\nA: b\nQ: What is Kalo Ren's job?\nA:");
  EXPECT_EQ(IclTaskPrompt(task, 99, "x"), IclTaskPrompt(task, 3, "x"));
}

TEST(WorldTest, IclContextChunksSplitTheInContextPrompt) {
  IclTask task;
  task.context = {"Kalo Ren is a baker.", "Mimo Sa lives in Tosa."};
  task.demonstrations = {{"a", "b"}, {"c", "d"}, {"e", "f"}, {"g", "h"}};
  EXPECT_EQ(IclContextChunks(task, 3, 2),
            (std::vector<std::string>{"Kalo Ren is a baker.\n", "Mimo Sa lives in Tosa.\n",
                                      "Q: a\nA: b\nQ: c\nA: d\n", "Q: e\nA: f\n"}));
  for (int n : {0, 1, 3, 4, 9}) {
    std::string joined;
    for (const std::string& chunk : IclContextChunks(task, n, 3)) joined += chunk;
    EXPECT_EQ(joined + IclPrompt("x"), IclTaskPrompt(task, n, "x")) << n;
  }
  task.context.clear();
  EXPECT_TRUE(IclContextChunks(task, 0, 8).empty());
  EXPECT_EQ(IclContextChunks(task, 4, 0).size(), 4u);  // at least one demonstration a chunk
}

TEST(WorldTest, IclFilesAreWrittenAndReadBackBesideTheUnchangedSplits) {
  const std::string dir = (std::filesystem::temp_directory_path() /
                           ("knowd_world_icl_test_" + std::to_string(getpid())))
                              .string();
  const WorldOptions o = SmallIclWorld();
  ASSERT_TRUE(WriteWorld(o, dir).ok());
  const IclTaskSet expected = SmallIclTasks(o);
  for (const bool heldout : {false, true}) {
    absl::StatusOr<std::vector<IclTask>> read = ReadIclTasks(dir, heldout);
    ASSERT_TRUE(read.ok()) << read.status();
    const std::vector<IclTask>& want = heldout ? expected.heldout : expected.train;
    EXPECT_EQ(IclJsonl(*read), IclJsonl(want));
    EXPECT_EQ(ReadFile(dir + "/" + (heldout ? kIclHeldoutFile : kIclTrainFile)), IclJsonl(want));
    for (const IclTask& t : *read) {
      absl::StatusOr<IclTask> again = IclTaskFromJson(IclTaskToJson(t));
      ASSERT_TRUE(again.ok()) << again.status();
      EXPECT_EQ(IclTaskToJson(*again), IclTaskToJson(t));
    }
  }
  // The split files keep the bytes pinned by ExistingSplitsArePinned.
  const uint64_t pinned[kNumSplits] = {0x7f9a1171082e1d82ull, 0xc35f0b262971441full,
                                       0x465590e38dc3f2efull, 0x66cd511a3c01745cull};
  for (int s = 0; s < kNumSplits; ++s) {
    const std::string name(SplitName(static_cast<Split>(s)));
    EXPECT_EQ(Fnv1a64(ReadFile(dir + "/" + name + ".passages.jsonl") +
                      ReadFile(dir + "/" + name + ".questions.jsonl")),
              pinned[s])
        << name;
  }
  const std::string world = ReadFile(dir + "/world.json");
  EXPECT_NE(world.find("\"icl\""), std::string::npos) << world;
  EXPECT_NE(world.find("\"classify_birth_decade\""), std::string::npos) << world;
  EXPECT_FALSE(IclTaskFromJson("{\"id\": \"x\"}").ok());
  EXPECT_FALSE(IclTaskFromJson("not json").ok());
  std::filesystem::remove(dir + "/" + kIclHeldoutFile);
  const absl::StatusOr<std::vector<IclTask>> missing = ReadIclTasks(dir, true);
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find("knowd-train data"), std::string::npos);
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace knowd::train
