#include "train/world.h"

#include <algorithm>
#include <array>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <utility>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace knowd::train {
namespace {

using Rng = std::mt19937_64;

// ---- vocabulary of the world ----------------------------------------------------------------

constexpr std::array<const char*, 60> kSyllables = {
    "ka",  "lo",  "mi",  "ren", "to",  "sa",  "vel", "dri", "fa",  "gor", "hal", "ji",
    "ku",  "lem", "na",  "or",  "pe",  "qua", "ris", "sen", "tu",  "ub",  "vo",  "wyn",
    "xi",  "yo",  "zan", "bra", "cel", "dun", "el",  "fio", "gra", "hul", "in",  "jas",
    "kor", "lin", "mo",  "nev", "os",  "pra", "rul", "sto", "tem", "ul",  "vas", "wen",
    "yra", "zel", "ash", "bel", "cor", "dam", "eth", "fen", "gil", "hor", "ith", "kes"};

constexpr std::array<const char*, 50> kOccupations = {
    "nurse",      "architect",    "baker",        "pilot",       "teacher",   "engineer",
    "chemist",    "librarian",    "carpenter",    "plumber",     "dentist",   "lawyer",
    "journalist", "photographer", "farmer",       "electrician", "surgeon",   "pharmacist",
    "accountant", "translator",   "veterinarian", "geologist",   "economist", "firefighter",
    "mechanic",   "tailor",       "painter",      "sculptor",    "violinist", "chef",
    "florist",    "jeweler",      "locksmith",    "astronomer",  "biologist", "historian",
    "novelist",   "potter",       "welder",       "surveyor",    "optician",  "radiologist",
    "banker",     "programmer",   "designer",     "editor",      "butcher",   "fisherman",
    "shepherd",   "sailor"};

constexpr std::array<const char*, 48> kHobbies = {
    "chess",       "painting",        "sailing",          "gardening",    "fishing",  "knitting",
    "archery",     "pottery",         "cycling",          "birdwatching", "rowing",   "fencing",
    "hiking",      "climbing",        "swimming",         "skiing",       "juggling", "origami",
    "calligraphy", "woodworking",     "photography",      "baking",       "dancing",  "singing",
    "surfing",     "kayaking",        "running",          "tennis",       "golf",     "bowling",
    "cooking",     "sewing",          "stargazing",       "beekeeping",   "quilting", "embroidery",
    "kite flying", "rock collecting", "stamp collecting", "yoga",         "boxing",   "skating",
    "snorkeling",  "canoeing",        "poetry",           "sketching",    "puzzles",  "karate"};

constexpr std::array<const char*, 10> kSpecies = {"dog",     "cat",   "parrot", "rabbit", "turtle",
                                                  "hamster", "horse", "goat",   "ferret", "canary"};

constexpr std::array<const char*, 20> kOrgSuffixes = {
    "Labs",     "Systems", "Industries", "Group",  "Works",     "Foods",    "Motors",
    "Bank",     "Media",   "Logistics",  "Energy", "Textiles",  "Airlines", "Pharmaceuticals",
    "Robotics", "Press",   "Studios",    "Mining", "Insurance", "Shipping"};

constexpr int kFirstYear = 1920;
constexpr int kNumYears = 86;  // 1920..2005

enum Rel {
  kBirthplace,
  kBirthYear,
  kHometown,
  kEmployer,
  kOccupation,
  kUniversity,
  kSpouse,
  kPet,
  kHobby
};
constexpr std::array<Rel, 4> kMutable = {kEmployer, kHometown, kOccupation, kHobby};

// Templates. {S} subject, {P} possessive, {O} object (name or pronoun), {PP} possessive pronoun,
// {V} value, {A} article of the value, {X} pet species, {ALUM} alumnus/alumna, {OLD} old value,
// {AOLD} article of the old value, {S2} subject pronoun.
const std::vector<std::vector<std::string>>& FactTemplates() {
  static const auto* t = new std::vector<std::vector<std::string>>{
      {"{S} was born in {V}.", "{S} was born in the city of {V}.", "{P} birthplace is {V}.",
       "{S} came into the world in {V}.", "{S} was born in a town called {V}."},
      {"{S} was born in the year {V}.", "{S} was born in {V}.", "{P} year of birth is {V}.",
       "{S} was born back in {V}."},
      {"{S} lives in {V}.", "{S} now lives in {V}.", "{S} resides in {V}.",
       "{S} has made a home in {V}.", "{P} home is in {V}."},
      {"{S} works at {V}.", "{S} is employed by {V}.", "{S} works for {V}.", "{V} employs {O}.",
       "{S} has a job at {V}."},
      {"{S} works as {A} {V}.", "{S} is {A} {V} by profession.", "By trade, {S} is {A} {V}.",
       "{S} earns a living as {A} {V}."},
      {"{S} studied at {V}.", "{S} graduated from {V}.", "{S} is an {ALUM} of {V}.",
       "{S} attended {V}.", "{S} holds a degree from {V}."},
      {"{S} is married to {V}.", "{P} spouse is {V}.", "{V} is married to {O}.",
       "{S} married {V}."},
      {"{S} has a {X} named {V}.", "{S} owns a {X} called {V}.", "{P} {X} is named {V}.",
       "{S} keeps a {X} whose name is {V}."},
      {"{S} enjoys {V}.", "{P} favorite hobby is {V}.", "In {PP} free time, {S} enjoys {V}.",
       "{S} spends weekends on {V}."},
  };
  return *t;
}

const std::vector<std::vector<std::string>>& QuestionTemplates() {
  static const auto* t = new std::vector<std::vector<std::string>>{
      {"Where was {N} born?", "In which city was {N} born?", "What is the birthplace of {N}?"},
      {"In what year was {N} born?", "When was {N} born?", "What is {N}'s year of birth?"},
      {"Where does {N} live?", "In which city does {N} live?", "What city is {N}'s home?"},
      {"Where does {N} work?", "Which company employs {N}?", "Who is {N}'s employer?"},
      {"What is {N}'s occupation?", "What does {N} do for a living?", "What is {N}'s job?"},
      {"Where did {N} study?", "Which university did {N} attend?",
       "From which school did {N} graduate?"},
      {"Who is {N} married to?", "Who is {N}'s spouse?", "Whom did {N} marry?"},
      {"What is the name of {N}'s {X}?", "What is {N}'s {X} called?", "What is {N}'s pet named?"},
      {"What is {N}'s hobby?", "What does {N} enjoy in {PP} free time?",
       "What does {N} like to do for fun?"},
  };
  return *t;
}

const std::vector<std::vector<std::string>>& UpdateTemplates() {
  static const auto* t = new std::vector<std::vector<std::string>>{
      {},
      {},
      {"{S} moved from {OLD} to {V}.", "{S} has left {OLD} and now lives in {V}.",
       "{S} recently moved to {V}.", "{S} no longer lives in {OLD}; {S2} now lives in {V}."},
      {"{S} left {OLD} and now works at {V}.", "{S} has joined {V} after leaving {OLD}.",
       "{S} recently started a new job at {V}.",
       "{S} no longer works at {OLD}; {S2} now works at {V}."},
      {"{S} changed careers and now works as {A} {V}.",
       "{S} is no longer {AOLD} {OLD}; {S2} now works as {A} {V}.",
       "After years as {AOLD} {OLD}, {S} became {A} {V}."},
      {},
      {},
      {},
      {"{S} gave up {OLD} and took up {V}.", "These days {S} prefers {V} to {OLD}.",
       "{S} has a new hobby: {V}."},
  };
  return *t;
}

// Sentences that state nothing about the subject. {C}/{C2} cities, {G} an organisation,
// {R} another person, {U} a university, {J} an occupation (with {A}), {X}/{M} a species and name.
const std::vector<std::string>& DistractorTemplates() {
  static const auto* t = new std::vector<std::string>{
      "The weather in {C} was unusually mild that spring.",
      "A new bridge was recently built across the river in {C}.",
      "The local library holds more than ten thousand books.",
      "{C} is known for its busy harbor.",
      "Many visitors come to {C} every summer.",
      "{G} opened a new office last year.",
      "{G} reported strong results this quarter.",
      "The annual festival draws large crowds.",
      "Trains between {C} and {C2} run every hour.",
      "The museum in {C} reopened after repairs.",
      "{R} works at {G}.",
      "{R} was born in {C}.",
      "{R} lives in {C}.",
      "{R} is {A} {J}.",
      "{R} has a {X} named {M}.",
      "{R} studied at {U}.",
  };
  return *t;
}

// ---- helpers --------------------------------------------------------------------------------

uint64_t Fnv1a(std::string_view s) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : s) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}

template <typename T>
const T& Pick(Rng& rng, const std::vector<T>& v) {
  return v[BoundedDraw(rng, v.size())];
}
template <typename T, size_t N>
const T& Pick(Rng& rng, const std::array<T, N>& v) {
  return v[BoundedDraw(rng, N)];
}

template <typename T>
void Shuffle(Rng& rng, std::vector<T>* v) {
  for (size_t i = v->size(); i > 1; --i) std::swap((*v)[i - 1], (*v)[BoundedDraw(rng, i)]);
}

std::string Article(std::string_view word) {
  return (!word.empty() && std::string_view("aeiou").find(word[0]) != std::string_view::npos) ? "an"
                                                                                              : "a";
}

std::string Render(std::string_view tmpl, const std::map<std::string, std::string>& vars) {
  std::string out;
  for (size_t i = 0; i < tmpl.size();) {
    if (tmpl[i] == '{') {
      const size_t end = tmpl.find('}', i);
      auto it = vars.find(std::string(tmpl.substr(i + 1, end - i - 1)));
      out += it == vars.end() ? "?" : it->second;
      i = end + 1;
    } else {
      out += tmpl[i++];
    }
  }
  if (!out.empty()) out[0] = static_cast<char>(std::toupper(static_cast<unsigned char>(out[0])));
  return out;
}

// Invents names for one split. A name is accepted only if its hash selects this split and no
// other entity of the split already has it, so splits never share a name.
class NameFactory {
 public:
  NameFactory(Rng* rng, Split split) : rng_(rng), split_(static_cast<uint64_t>(split)) {}

  std::string Word(int min_syllables, int max_syllables) {
    const int n =
        min_syllables + static_cast<int>(BoundedDraw(*rng_, max_syllables - min_syllables + 1));
    std::string w;
    for (int i = 0; i < n; ++i) w += Pick(*rng_, kSyllables);
    w[0] = static_cast<char>(std::toupper(static_cast<unsigned char>(w[0])));
    return w;
  }

  std::string Person() {
    return Accept(
        [&] { return absl::StrCat(Word(2, BoundedDraw(*rng_, 5) == 0 ? 3 : 2), " ", Word(2, 3)); });
  }
  std::string City() {
    return Accept([&] { return Word(2, 3); });
  }
  std::string PetName() {
    return Accept([&] { return Word(2, 3); });
  }
  std::string Organisation() {
    return Accept([&] { return absl::StrCat(Word(2, 2), " ", Pick(*rng_, kOrgSuffixes)); });
  }
  std::string University() {
    return Accept([&] {
      const std::string w = Word(2, 3);
      switch (BoundedDraw(*rng_, 4)) {
        case 0:
          return absl::StrCat("University of ", w);
        case 1:
          return absl::StrCat(w, " University");
        case 2:
          return absl::StrCat(w, " Institute");
        default:
          return absl::StrCat(w, " College");
      }
    });
  }

 private:
  template <typename F>
  std::string Accept(F make) {
    for (int attempt = 0;; ++attempt) {
      std::string name = make();
      // A crowded name space grows names instead of looping forever.
      for (int extra = attempt / 64; extra > 0; --extra) name += Pick(*rng_, kSyllables);
      if (Fnv1a(name) % kNumSplits != split_) continue;
      if (!used_.insert(name).second) continue;
      return name;
    }
  }
  Rng* rng_;
  uint64_t split_;
  std::set<std::string> used_;
};

struct Person {
  std::string name, first;
  bool female = false;
  std::string values[kNumRelations];
  std::string species;
};

struct Pools {
  std::vector<std::string> cities, orgs, universities;
};

std::string RelationValue(Rng& rng, NameFactory& names, const Pools& pools, Rel rel) {
  switch (rel) {
    case kBirthplace:
    case kHometown:
      return Pick(rng, pools.cities);
    case kBirthYear:
      return std::to_string(kFirstYear + BoundedDraw(rng, kNumYears));
    case kEmployer:
      return Pick(rng, pools.orgs);
    case kOccupation:
      return Pick(rng, kOccupations);
    case kUniversity:
      return Pick(rng, pools.universities);
    case kSpouse:
      return names.Person();
    case kPet:
      return names.PetName();
    case kHobby:
      return Pick(rng, kHobbies);
  }
  return "";
}

// How the subject is named in one sentence.
struct SubjectForm {
  std::string s, p, o;
};

SubjectForm NameForm(const std::string& name) { return {name, name + "'s", name}; }
SubjectForm PronounForm(const Person& person) {
  return person.female ? SubjectForm{"she", "her", "her"} : SubjectForm{"he", "his", "him"};
}

// A passage under construction, before stream ordering assigns its id.
struct Draft {
  Passage passage;
  int person = -1;
  std::vector<Question> questions;
  int update_of = -1;                                // draft index of the original, for updates
  std::vector<std::pair<int, std::string>> changed;  // (relation, new value) for updates
};

class SplitGenerator {
 public:
  SplitGenerator(const WorldOptions& options, Split split)
      : options_(options),
        split_(split),
        rng_(options.seed * 0x9E3779B97F4A7C15ull + static_cast<uint64_t>(split) + 1),
        names_(&rng_, split) {}

  SplitData Generate() {
    const int n = options_.people[static_cast<int>(split_)];
    pools_.cities.reserve(n / 5 + 40);
    for (int i = 0; i < std::max(40, n / 5); ++i) pools_.cities.push_back(names_.City());
    for (int i = 0; i < std::max(40, n / 5); ++i) pools_.orgs.push_back(names_.Organisation());
    for (int i = 0; i < std::max(20, n / 10); ++i) {
      pools_.universities.push_back(names_.University());
    }
    people_.reserve(n);
    for (int i = 0; i < n; ++i) people_.push_back(MakePerson());

    std::vector<Draft> drafts;
    std::vector<std::pair<int64_t, int>> order;  // (stream key, draft index)
    for (int i = 0; i < n; ++i) {
      drafts.push_back(MainPassage(i));
      order.emplace_back(int64_t{2} * i, static_cast<int>(drafts.size()) - 1);
    }
    for (int i = 0; i < n; ++i) {
      if (UnitDraw(rng_) >= options_.update_fraction) continue;
      Draft update = UpdatePassage(i, drafts[i]);
      if (update.changed.empty()) continue;
      update.update_of = i;
      // Placed after a later main passage j-1, j in [i+1, n].
      const int64_t j = i + 1 + static_cast<int64_t>(BoundedDraw(rng_, n - i));
      drafts.push_back(std::move(update));
      order.emplace_back(2 * (j - 1) + 1, static_cast<int>(drafts.size()) - 1);
    }
    std::stable_sort(order.begin(), order.end(),
                     [](const auto& a, const auto& b) { return a.first < b.first; });

    const std::string prefix(SplitName(split_));
    for (size_t pos = 0; pos < order.size(); ++pos) {
      Passage& p = drafts[order[pos].second].passage;
      p.stream_position = static_cast<int64_t>(pos);
      p.id = absl::StrCat(prefix, "-p", pos);
    }
    // Updates point at their originals; superseded questions learn their final answer.
    for (Draft& d : drafts) {
      if (d.update_of < 0) continue;
      Draft& original = drafts[d.update_of];
      d.passage.updates = original.passage.id;
      for (const auto& [rel, value] : d.changed) {
        for (Question& q : original.questions) {
          if (q.relation == kRelations[rel]) {
            q.final_answer = value;
            q.superseded_by = d.passage.id;
          }
        }
      }
    }
    SplitData out;
    out.split = split_;
    for (const auto& [key, index] : order) {
      Draft& d = drafts[index];
      for (Question& q : d.questions) {
        q.id = absl::StrCat(prefix, "-q", out.questions.size());
        q.passage_id = d.passage.id;
        out.questions.push_back(std::move(q));
      }
      out.passages.push_back(std::move(d.passage));
    }
    return out;
  }

 private:
  Person MakePerson() {
    Person p;
    p.name = names_.Person();
    p.first = p.name.substr(0, p.name.find(' '));
    p.female = BoundedDraw(rng_, 2) == 1;
    for (int r = 0; r < kNumRelations; ++r) {
      p.values[r] = RelationValue(rng_, names_, pools_, static_cast<Rel>(r));
    }
    p.species = Pick(rng_, kSpecies);
    return p;
  }

  std::map<std::string, std::string> Vars(const Person& person, const SubjectForm& form) {
    return {{"S", form.s},
            {"P", form.p},
            {"O", form.o},
            {"PP", person.female ? "her" : "his"},
            {"S2", person.female ? "she" : "he"},
            {"ALUM", person.female ? "alumna" : "alumnus"},
            {"X", person.species}};
  }

  // Names the subject of a sentence: the full name first, later a pronoun only right after
  // another sentence about the subject (so a pronoun never points at a distractor's person).
  SubjectForm NextForm(const Person& person, bool first, bool previous_about_subject) {
    if (first) return NameForm(person.name);
    const uint64_t d = BoundedDraw(rng_, 20);
    if (previous_about_subject && d < 9) return PronounForm(person);
    if (d < 13) return NameForm(person.first);
    return NameForm(person.name);
  }

  std::string Distractor(std::vector<std::string>* entities) {
    const std::string& tmpl = Pick(rng_, DistractorTemplates());
    std::map<std::string, std::string> vars;
    auto uses = [&](const char* key) {
      return tmpl.find(absl::StrCat("{", key, "}")) != std::string::npos;
    };
    // Only the names the template needs are drawn (invented names are a finite resource).
    if (uses("C")) vars["C"] = Pick(rng_, pools_.cities);
    if (uses("C2")) vars["C2"] = Pick(rng_, pools_.cities);
    if (uses("G")) vars["G"] = Pick(rng_, pools_.orgs);
    if (uses("U")) vars["U"] = Pick(rng_, pools_.universities);
    if (uses("R")) vars["R"] = names_.Person();  // a bystander, never a main person
    if (uses("J")) vars["J"] = Pick(rng_, kOccupations);
    if (uses("X")) vars["X"] = Pick(rng_, kSpecies);
    if (uses("M")) vars["M"] = names_.PetName();
    vars["A"] = Article(vars["J"]);
    for (const char* key : {"R", "C", "C2", "G", "U", "M"}) {
      if (uses(key)) entities->push_back(vars[key]);
    }
    return Render(tmpl, vars);
  }

  // One question per phrasing (training splits) or one random phrasing.
  void AddQuestions(const Person& person, int rel, const std::string& answer, bool is_update,
                    bool all_phrasings, std::vector<Question>* out) {
    const auto& phrasings = QuestionTemplates()[rel];
    std::map<std::string, std::string> vars = {
        {"N", person.name}, {"X", person.species}, {"PP", person.female ? "her" : "his"}};
    auto add = [&](const std::string& tmpl) {
      Question q;
      q.split = split_;
      q.subject = person.name;
      q.relation = kRelations[rel];
      q.question = Render(tmpl, vars);
      q.answer = answer;
      q.final_answer = answer;
      q.is_update = is_update;
      out->push_back(std::move(q));
    };
    if (all_phrasings) {
      for (const std::string& t : phrasings) add(t);
    } else {
      add(Pick(rng_, phrasings));
    }
  }

  bool TrainingSplit() const { return split_ == Split::kPretrain || split_ == Split::kAdapter; }

  Draft MainPassage(int index) {
    const Person& person = people_[index];
    Draft draft;
    draft.person = index;
    Passage& p = draft.passage;
    p.split = split_;
    p.subject = person.name;
    p.entities.push_back(person.name);

    std::vector<int> rels(kNumRelations);
    for (int r = 0; r < kNumRelations; ++r) rels[r] = r;
    Shuffle(rng_, &rels);
    const int k = 3 + static_cast<int>(BoundedDraw(rng_, 5));  // 3..7 facts
    rels.resize(k);
    int distractors = static_cast<int>(BoundedDraw(rng_, std::min(2, 8 - k) + 1));
    const bool has_place = std::count(rels.begin(), rels.end(), kBirthplace) > 0;
    const bool has_year = std::count(rels.begin(), rels.end(), kBirthYear) > 0;
    // "born in CITY in YEAR" states two facts in one sentence, when 3 sentences remain.
    const bool merge_birth =
        has_place && has_year && k - 1 + distractors >= 3 && BoundedDraw(rng_, 2) == 0;

    // Sentence slots: relation index, or -1 for a distractor.
    std::vector<int> slots;
    for (int r : rels) {
      if (merge_birth && r == kBirthYear) continue;
      slots.push_back(r);
    }
    Shuffle(rng_, &slots);
    for (int i = 0; i < distractors; ++i) {
      slots.insert(slots.begin() + 1 + BoundedDraw(rng_, slots.size()), -1);
    }

    std::vector<std::string> sentences;
    bool previous_about_subject = false;
    for (size_t i = 0; i < slots.size(); ++i) {
      const int r = slots[i];
      if (r < 0) {
        sentences.push_back(Distractor(&p.entities));
        previous_about_subject = false;
        continue;
      }
      const SubjectForm form = NextForm(person, i == 0, previous_about_subject);
      auto vars = Vars(person, form);
      vars["V"] = person.values[r];
      vars["A"] = Article(person.values[r]);
      std::string tmpl = Pick(rng_, FactTemplates()[r]);
      if (merge_birth && r == kBirthplace) {
        static const std::vector<std::string> merged = {"{S} was born in {V} in {Y}.",
                                                        "In {Y}, {S} was born in {V}.",
                                                        "{S} was born in {Y} in {V}."};
        tmpl = Pick(rng_, merged);
        vars["Y"] = person.values[kBirthYear];
      }
      // Templates that open with the value or "In ..." keep the name in the sentence.
      if (tmpl.rfind("{S}", 0) != 0 && tmpl.rfind("{P}", 0) != 0 &&
          (form.s == "he" || form.s == "she")) {
        vars = Vars(person, NameForm(person.first));
        vars["V"] = person.values[r];
        vars["A"] = Article(person.values[r]);
        if (merge_birth && r == kBirthplace) vars["Y"] = person.values[kBirthYear];
      }
      sentences.push_back(Render(tmpl, vars));
      previous_about_subject = true;
    }
    p.text = Join(sentences);

    for (int r : rels) {
      p.facts.push_back({kRelations[r], person.values[r]});
      if (r == kSpouse || r == kPet || r == kBirthplace || r == kHometown || r == kEmployer ||
          r == kUniversity) {
        AddEntity(&p.entities, person.values[r]);
      }
    }
    if (TrainingSplit()) {
      for (int r : rels) AddQuestions(person, r, person.values[r], false, true, &draft.questions);
    } else {
      std::vector<int> asked = rels;
      Shuffle(rng_, &asked);
      asked.resize(std::min<size_t>(asked.size(), options_.eval_questions_per_passage));
      for (int r : asked) AddQuestions(person, r, person.values[r], false, false, &draft.questions);
    }
    return draft;
  }

  // An update changes one or two facts the original passage stated; the person's record keeps
  // the newer values.
  Draft UpdatePassage(int index, const Draft& original) {
    Person& person = people_[index];
    Draft draft;
    draft.person = index;
    std::vector<int> candidates;
    for (Rel r : kMutable) {
      for (const Fact& f : original.passage.facts) {
        if (f.relation == kRelations[r]) candidates.push_back(r);
      }
    }
    if (candidates.empty()) return draft;
    Shuffle(rng_, &candidates);
    candidates.resize(std::min<size_t>(candidates.size(), BoundedDraw(rng_, 3) == 0 ? 2 : 1));

    Passage& p = draft.passage;
    p.split = split_;
    p.subject = person.name;
    p.is_update = true;
    p.entities.push_back(person.name);

    std::vector<std::string> sentences;
    std::vector<int> changed_rels;
    for (int r : candidates) {
      const std::string old_value = person.values[r];
      std::string value;
      do {
        value = RelationValue(rng_, names_, pools_, static_cast<Rel>(r));
      } while (value == old_value);
      const SubjectForm form =
          sentences.empty() ? NameForm(person.name) : NextForm(person, false, true);
      auto vars = Vars(person, form);
      vars["V"] = value;
      vars["A"] = Article(value);
      vars["OLD"] = old_value;
      vars["AOLD"] = Article(old_value);
      sentences.push_back(Render(Pick(rng_, UpdateTemplates()[r]), vars));
      person.values[r] = value;
      draft.changed.emplace_back(r, value);
      changed_rels.push_back(r);
      p.facts.push_back({kRelations[r], value});
      if (r == kEmployer || r == kHometown) AddEntity(&p.entities, value);
    }
    // Restate an unchanged fact or add distractors until the passage has 3..6 sentences.
    const int target = 3 + static_cast<int>(BoundedDraw(rng_, 4));
    bool previous_about_subject = true;
    while (static_cast<int>(sentences.size()) < target) {
      std::vector<int> unchanged;
      for (const Fact& f : original.passage.facts) {
        for (int r = 0; r < kNumRelations; ++r) {
          const bool is_changed =
              std::find(changed_rels.begin(), changed_rels.end(), r) != changed_rels.end();
          const bool already = std::any_of(p.facts.begin(), p.facts.end(),
                                           [&](const Fact& g) { return g.relation == f.relation; });
          if (f.relation == kRelations[r] && !is_changed && !already) unchanged.push_back(r);
        }
      }
      if (!unchanged.empty() && BoundedDraw(rng_, 2) == 0) {
        const int r = Pick(rng_, unchanged);
        const SubjectForm form = NextForm(person, false, previous_about_subject);
        std::string tmpl = Pick(rng_, FactTemplates()[r]);
        if (tmpl.rfind("{S}", 0) != 0 && tmpl.rfind("{P}", 0) != 0) {
          tmpl = FactTemplates()[r][0];  // every relation's first template opens with {S}
        }
        auto vars = Vars(person, form);
        vars["V"] = person.values[r];
        vars["A"] = Article(person.values[r]);
        sentences.push_back(Render(tmpl, vars));
        p.facts.push_back({kRelations[r], person.values[r]});
        previous_about_subject = true;
      } else {
        sentences.push_back(Distractor(&p.entities));
        previous_about_subject = false;
      }
    }
    p.text = Join(sentences);
    for (int r : changed_rels) {
      AddQuestions(person, r, person.values[r], true, TrainingSplit(), &draft.questions);
    }
    return draft;
  }

  static void AddEntity(std::vector<std::string>* entities, const std::string& name) {
    if (std::find(entities->begin(), entities->end(), name) == entities->end()) {
      entities->push_back(name);
    }
  }

  static std::string Join(const std::vector<std::string>& sentences) {
    std::string text;
    for (const std::string& s : sentences) {
      if (!text.empty()) text += ' ';
      text += s;
    }
    return text;
  }

  const WorldOptions& options_;
  Split split_;
  Rng rng_;
  NameFactory names_;
  Pools pools_;
  std::vector<Person> people_;
};

absl::Status WriteLines(const std::string& path, const std::vector<std::string>& lines) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    for (const std::string& line : lines) out << line;
    out.flush();
    if (!out.good()) return absl::InternalError(absl::StrCat(tmp, ": write failed"));
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) return absl::InternalError(absl::StrCat(path, ": rename failed: ", ec.message()));
  return absl::OkStatus();
}

std::string SplitPath(const std::string& dir, Split split, std::string_view kind) {
  return absl::StrCat(dir, "/", std::string(SplitName(split)), ".", std::string(kind), ".jsonl");
}

template <typename T, typename F>
absl::StatusOr<std::vector<T>> ReadJsonl(const std::string& path, F parse) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open"));
  std::vector<T> out;
  std::string line;
  int64_t number = 0;
  while (std::getline(in, line)) {
    ++number;
    if (line.empty()) continue;
    absl::StatusOr<T> item = parse(line);
    if (!item.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ":", number, ": ", item.status().message()));
    }
    out.push_back(*std::move(item));
  }
  return out;
}

// ---- the paraphrase split -------------------------------------------------------------------

// A question phrasing of the paraphrase split. {N} names the person (a name, or a description
// unless the template takes the possessive "{N}'s").
struct ParaphraseTemplate {
  const char* text;
  bool synonym;    // names the relation with words the plain templates do not use
  bool reordered;  // the asked-for part is not in front
};

const std::vector<std::vector<ParaphraseTemplate>>& ParaphraseTemplates() {
  static const auto* t = new std::vector<std::vector<ParaphraseTemplate>>{
      {{"{N} was born in which city?", false, true},
       {"In what place did {N}'s life begin?", true, false},
       {"Which place is {N} originally from?", true, false},
       {"{N} first saw the light of day in which place?", true, true},
       {"Where did {N} come into the world?", true, false},
       {"What is the native city of {N}?", true, false}},
      {{"{N} was born in what year?", false, true},
       {"When did {N}'s life begin?", true, false},
       {"{N} came into the world in which year?", true, true},
       {"In which year did the life of {N} begin?", true, false},
       {"{N} first saw the light of day when?", true, true}},
      {{"{N} lives in which city?", false, true},
       {"Where does {N} reside?", true, false},
       {"{N} calls which place home?", true, true},
       {"In which place has {N} settled?", true, false},
       {"{N} is currently based in which place?", true, true},
       {"Where is the residence of {N}?", true, false}},
      {{"{N} works for which company?", false, true},
       {"Which organisation is {N} on the payroll of?", true, false},
       {"{N} draws a salary from which organisation?", true, true},
       {"Who pays the wages of {N}?", true, false},
       {"{N} is employed by which company?", false, true},
       {"For which firm does {N} labour?", true, false}},
      {{"{N} works as what?", false, true},
       {"What is the vocation of {N}?", true, false},
       {"How does {N} make money?", true, false},
       {"{N} is in what line of business?", true, true},
       {"What kind of professional is {N}?", true, false}},
      {{"{N} studied at which school?", false, true},
       {"Where was {N} educated?", true, false},
       {"{N} earned a diploma from which institution?", true, true},
       {"Which institution is the alma mater of {N}?", true, false},
       {"At which institution did {N} get an education?", true, false}},
      {{"{N} is married to whom?", false, true},
       {"Who is {N}'s wife or husband?", true, false},
       {"Who is the partner of {N}?", true, false},
       {"To whom is {N} wed?", true, false},
       {"{N} tied the knot with whom?", true, true}},
      {{"{N}'s pet is called what?", false, true},
       {"What does {N}'s animal companion answer to?", true, false},
       {"The animal that {N} looks after goes by what?", true, true},
       {"What do people call the pet of {N}?", true, false},
       {"What is the pet of {N} known as?", true, false}},
      {{"{N} enjoys which activity?", false, true},
       {"What pastime does {N} pursue?", true, false},
       {"Which recreation is {N} fond of?", true, false},
       {"How does {N} like to spend leisure hours?", true, false},
       {"{N} is keen on which leisure activity?", true, true}},
  };
  return *t;
}

// A description of a person by facts of their passage: {0}, {1} are the values of `rels`.
struct DescriptionTemplate {
  std::vector<Rel> rels;
  std::vector<const char*> phrasings;
};

const std::vector<DescriptionTemplate>& DescriptionTemplates() {
  static const auto* t = new std::vector<DescriptionTemplate>{
      {{kBirthplace, kBirthYear},
       {"the person who came into the world in {0} in {1}",
        "the native of {0} whose life began in {1}"}},
      {{kPet}, {"the owner of the pet {0}", "the person whose animal answers to {0}"}},
      {{kSpouse}, {"the partner of {0}", "the person wed to {0}"}},
      {{kOccupation, kEmployer},
       {"the {0} on the payroll of {1}", "the {0} who draws a salary from {1}"}},
      {{kEmployer, kHobby},
       {"the {0} employee who is fond of {1}",
        "the person on the payroll of {0} whose pastime is {1}"}},
      {{kOccupation, kHometown}, {"the {0} residing in {1}", "the {0} based in {1}"}},
      {{kOccupation, kUniversity},
       {"the {0} educated at {1}", "the {0} who holds a diploma from {1}"}},
      {{kUniversity, kBirthYear}, {"the alum of {0} whose life began in {1}"}},
      {{kBirthplace, kHobby}, {"the native of {0} who is fond of {1}"}},
      {{kHometown, kHobby}, {"the {0} resident who is fond of {1}"}},
      {{kOccupation, kBirthYear}, {"the {0} whose life began in {1}"}},
  };
  return *t;
}

// The words of a text: runs of ASCII letters, digits and apostrophes, a final "'s" dropped.
std::vector<std::string> TextWords(std::string_view text) {
  std::vector<std::string> out;
  std::string w;
  auto flush = [&] {
    if (w.size() >= 2 && w.compare(w.size() - 2, 2, "'s") == 0) w.resize(w.size() - 2);
    while (!w.empty() && w.back() == '\'') w.pop_back();
    if (!w.empty()) out.push_back(w);
    w.clear();
  };
  for (char c : text) {
    if (std::isalnum(static_cast<unsigned char>(c)) || c == '\'') {
      w += c;
    } else {
      flush();
    }
  }
  flush();
  return out;
}

std::string Lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

// A crude stem, so that "lives" and "live", "employs" and "employed" count as one word.
std::string Stem(std::string w) {
  for (const char* suffix : {"ing", "ed", "es", "s"}) {
    const size_t n = std::char_traits<char>::length(suffix);
    if (w.size() >= n + 3 && w.compare(w.size() - n, n, suffix) == 0) {
      w.resize(w.size() - n);
      break;
    }
  }
  return w;
}

// Content words of a question that its passage holds too (as stems). A question's content words
// are its lower-case words that are not function words; capitalised words (names, and the first
// word) and numbers name the person or a value.
int SharedContentWords(std::string_view question, const std::set<std::string>& passage_words) {
  int shared = 0;
  for (const std::string& w : TextWords(question)) {
    if (!std::islower(static_cast<unsigned char>(w[0])) || IsStopWord(w)) continue;
    shared += passage_words.count(Stem(Lower(w))) > 0;
  }
  return shared;
}

bool Contains(std::string_view text, std::string_view part) {
  return !part.empty() && text.find(part) != std::string_view::npos;
}

int RelationIndex(std::string_view relation) {
  for (int r = 0; r < kNumRelations; ++r) {
    if (relation == kRelations[r]) return r;
  }
  return -1;
}

}  // namespace

bool IsStopWord(std::string_view w) {
  static const auto* words = new std::set<std::string_view>{
      "a",     "an",   "the",   "of",    "in",    "at",    "to",   "for",   "by",   "on",
      "from",  "with", "and",   "or",    "as",    "into",  "is",   "was",   "are",  "were",
      "be",    "been", "has",   "have",  "had",   "do",    "does", "did",   "what", "which",
      "who",   "whom", "whose", "where", "when",  "how",   "that", "this",  "it",   "its",
      "his",   "her",  "he",    "she",   "him",   "their", "they", "there", "than", "now",
      "after", "no",   "not",   "more",  "every", "but",   "very", "also",  "any",  "some"};
  return words->count(w) > 0;
}

std::string_view SplitName(Split split) {
  switch (split) {
    case Split::kPretrain:
      return "pretrain";
    case Split::kAdapter:
      return "adapter";
    case Split::kValid:
      return "valid";
    case Split::kTest:
      return "test";
  }
  return "?";
}

absl::StatusOr<Split> ParseSplit(std::string_view name) {
  for (int i = 0; i < kNumSplits; ++i) {
    if (SplitName(static_cast<Split>(i)) == name) return static_cast<Split>(i);
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown split '", std::string(name),
                                                 "' (expected pretrain, adapter, valid or test)"));
}

uint64_t BoundedDraw(std::mt19937_64& rng, uint64_t n) {
  // Largest multiple of n that fits, so every residue is equally likely.
  const uint64_t limit = UINT64_MAX - UINT64_MAX % n;
  for (;;) {
    const uint64_t x = rng();
    if (x < limit) return x % n;
  }
}

double UnitDraw(std::mt19937_64& rng) {
  return static_cast<double>(rng() >> 11) * (1.0 / 9007199254740992.0);
}

SplitData GenerateSplit(const WorldOptions& options, Split split) {
  return SplitGenerator(options, split).Generate();
}

ParaphraseSplit GenerateParaphrases(const WorldOptions& options, const SplitData& test) {
  Rng rng(options.seed * 0x9E3779B97F4A7C15ull ^ Fnv1a(kParaphraseSplit));
  std::map<std::string, const Passage*> passage_by_id;
  // What the split states about each person, and who has each stated fact (descriptions must be
  // unique among the split's people and stay true to the end of the stream).
  std::map<std::string, std::map<std::string, std::set<std::string>>> stated;
  std::map<std::pair<std::string, std::string>, std::set<std::string>> people_with;
  for (const Passage& p : test.passages) {
    passage_by_id[p.id] = &p;
    for (const Fact& f : p.facts) {
      stated[p.subject][f.relation].insert(f.value);
      people_with[{f.relation, f.value}].insert(p.subject);
    }
  }

  ParaphraseSplit out;
  for (const Question& plain : test.questions) {
    const int rel = RelationIndex(plain.relation);
    auto passage = passage_by_id.find(plain.passage_id);
    Question q = plain;
    q.id = absl::StrCat(kParaphraseSplit, "-q", out.questions.size());
    ParaphraseInfo info;
    info.test_question_id = plain.id;
    if (rel < 0 || passage == passage_by_id.end()) {  // not made by GenerateSplit: kept as is
      out.questions.push_back(std::move(q));
      out.info.push_back(std::move(info));
      continue;
    }
    const Passage& p = *passage->second;
    std::set<std::string> passage_words;
    for (const std::string& w : TextWords(p.text)) passage_words.insert(Stem(Lower(w)));

    // Descriptions from the passage's own facts on other relations, each value the only one the
    // split states for the person, the whole description stated for nobody else.
    std::vector<std::pair<const DescriptionTemplate*, std::vector<std::string>>> descriptions;
    for (const DescriptionTemplate& d : DescriptionTemplates()) {
      std::vector<std::string> values;
      std::set<std::string> holders;
      bool usable = true;
      for (size_t i = 0; i < d.rels.size() && usable; ++i) {
        const std::string relation = kRelations[d.rels[i]];
        auto fact = std::find_if(p.facts.begin(), p.facts.end(),
                                 [&](const Fact& f) { return f.relation == relation; });
        usable =
            d.rels[i] != rel && fact != p.facts.end() && stated[p.subject][relation].size() == 1;
        if (!usable) break;
        values.push_back(fact->value);
        const std::set<std::string>& with = people_with[{relation, fact->value}];
        if (i == 0) {
          holders = with;
        } else {
          std::set<std::string> both;
          std::set_intersection(holders.begin(), holders.end(), with.begin(), with.end(),
                                std::inserter(both, both.end()));
          holders = std::move(both);
        }
      }
      if (usable && holders.size() == 1) descriptions.emplace_back(&d, std::move(values));
    }

    struct Candidate {
      std::string text;
      std::string reference;
      const ParaphraseTemplate* tmpl;
      int shared;
    };
    auto candidates = [&](const DescriptionTemplate* d, const std::vector<std::string>& values) {
      std::vector<std::string> refs;
      if (d == nullptr) {
        refs.push_back(plain.subject);
      } else {
        for (const char* phrasing : d->phrasings) {
          std::map<std::string, std::string> vars;
          for (size_t i = 0; i < values.size(); ++i) vars[std::to_string(i)] = values[i];
          std::string ref = Render(phrasing, vars);
          ref[0] = static_cast<char>(std::tolower(static_cast<unsigned char>(ref[0])));
          refs.push_back(std::move(ref));
        }
      }
      std::vector<Candidate> out;
      for (const ParaphraseTemplate& t : ParaphraseTemplates()[rel]) {
        const bool possessive = std::string_view(t.text).find("{N}'s") != std::string_view::npos;
        if (d != nullptr && possessive) continue;
        for (const std::string& ref : refs) {
          std::string text = Render(t.text, {{"N", ref}});
          // A description never gives the answer away.
          if (d != nullptr &&
              (Contains(text, plain.answer) || Contains(text, plain.final_answer))) {
            continue;
          }
          const int shared = SharedContentWords(text, passage_words);
          out.push_back({std::move(text), ref, &t, shared});
        }
      }
      return out;
    };
    std::vector<Candidate> pool;
    if (!descriptions.empty() && BoundedDraw(rng, 2) == 0) {
      const auto& [d, values] = descriptions[BoundedDraw(rng, descriptions.size())];
      pool = candidates(d, values);
      if (!pool.empty()) {
        for (size_t i = 0; i < d->rels.size(); ++i) {
          info.description.push_back({kRelations[d->rels[i]], values[i]});
        }
      }
    }
    if (pool.empty()) pool = candidates(nullptr, {});
    // Three times in four the phrasing shares the fewest content words with the passage.
    if (BoundedDraw(rng, 4) != 0) {
      int fewest = pool[0].shared;
      for (const Candidate& c : pool) fewest = std::min(fewest, c.shared);
      std::vector<Candidate> best;
      for (Candidate& c : pool) {
        if (c.shared == fewest) best.push_back(std::move(c));
      }
      pool = std::move(best);
    }
    const Candidate& chosen = pool[BoundedDraw(rng, pool.size())];
    q.question = chosen.text;
    info.reference = chosen.reference;
    info.synonym = chosen.tmpl->synonym;
    info.reordered = chosen.tmpl->reordered;
    out.questions.push_back(std::move(q));
    out.info.push_back(std::move(info));
  }
  return out;
}

// ---- in-context tasks -------------------------------------------------------------------------

namespace {

// Label words of the classify families: one or two tokens each with knowd-tiny's tokenizer, none
// a value of the world's relations. Training and held-out families draw from disjoint lists.
constexpr std::array<const char*, 24> kIclTrainLabels = {
    "bridge", "river", "harbor", "museum", "hour", "summer", "office", "free",
    "fun",    "new",   "red",    "white",  "gray", "lime",   "grape",  "west",
    "up",     "down",  "big",    "sun",    "star", "rain",   "corn",   "bird"};
constexpr std::array<const char*, 24> kIclHeldoutLabels = {
    "fish", "tree",  "rose", "sky", "warm", "hot", "dry",  "wet",  "fast", "open", "top", "tall",
    "one",  "three", "four", "hat", "cup",  "pen", "ring", "door", "wall", "car",  "bus", "boat"};

// A main person of a split as its stream leaves them: every stated fact at its last value.
struct IclPerson {
  std::string name, first;
  std::map<std::string, std::string> facts;
};

std::vector<IclPerson> StreamPeople(const SplitData& data) {
  std::map<std::string, size_t> index;
  std::vector<IclPerson> out;
  for (const Passage& p : data.passages) {  // stream order: an update overrides its original
    auto [it, inserted] = index.emplace(p.subject, out.size());
    if (inserted) out.push_back({p.subject, p.subject.substr(0, p.subject.find(' ')), {}});
    for (const Fact& f : p.facts) out[it->second].facts[f.relation] = f.value;
  }
  return out;
}

// The relation whose value a task shows for `relation` (a decade is shown as the year).
std::string ShownRelation(const std::string& relation) {
  return relation == "birth_decade" ? "birth_year" : relation;
}

// The person's value of `relation` ("birth_decade": "1950s"), or "" when the stream never states
// it.
std::string Attribute(const IclPerson& person, const std::string& relation) {
  auto it = person.facts.find(ShownRelation(relation));
  if (it == person.facts.end()) return "";
  if (relation != "birth_decade") return it->second;
  return absl::StrCat(std::stoi(it->second) / 10 * 10, "s");
}

// Indices of the people with a value of `relation`, by value (values in sorted order).
std::map<std::string, std::vector<int>> PeopleByValue(const std::vector<IclPerson>& people,
                                                      const std::string& relation) {
  std::map<std::string, std::vector<int>> out;
  for (size_t i = 0; i < people.size(); ++i) {
    const std::string v = Attribute(people[i], relation);
    if (!v.empty()) out[v].push_back(static_cast<int>(i));
  }
  return out;
}

class IclTaskMaker {
 public:
  IclTaskMaker(const WorldOptions& options, const IclFamily& family, int index,
               const std::vector<IclPerson>& people, const SplitData& data)
      : options_(options),
        family_(family),
        people_(people),
        data_(data),
        rng_(options.seed * 0x9E3779B97F4A7C15ull ^
             Fnv1a(absl::StrCat("icl/", family.name, "/", index))) {
    task_.family = family.name;
    task_.heldout = family.heldout;
    task_.people = data.split;
  }

  // False when the split has too few people for the task.
  bool Make(IclTask* out) {
    bool ok = false;
    switch (family_.kind) {
      case IclKind::kClassify:
        ok = Classify();
        break;
      case IclKind::kMap:
        ok = Map();
        break;
      case IclKind::kPick:
        ok = family_.relation == "birth_year" ? PickExtreme() : PickByValue();
        break;
      case IclKind::kPassageQa:
        ok = PassageQa();
        break;
    }
    if (ok) *out = std::move(task_);
    return ok;
  }

 private:
  int Demonstrations() const { return std::max(0, options_.icl_demonstrations); }
  int Queries() const { return std::max(0, options_.icl_queries); }

  // "<Full Name>: <value>, <other value>" (or the other order): the label is the mapping of the
  // family's attribute; the other value is one of another relation the stream states.
  bool Classify() {
    const std::string shown = ShownRelation(family_.relation);
    std::vector<std::pair<std::string, std::vector<int>>> classes;
    for (auto& [value, holders] : PeopleByValue(people_, family_.relation)) {
      if (holders.size() >= 2) classes.emplace_back(value, holders);  // one query, one demo
    }
    Shuffle(rng_, &classes);
    const size_t k = std::min<size_t>(classes.size(), 2 + BoundedDraw(rng_, 5));  // 2..6
    if (k < 2) return false;
    classes.resize(k);
    std::sort(classes.begin(), classes.end());
    const auto& words = family_.heldout ? kIclHeldoutLabels : kIclTrainLabels;
    std::vector<std::string> labels(words.begin(), words.end());
    Shuffle(rng_, &labels);
    for (size_t c = 0; c < k; ++c) task_.mapping.push_back({classes[c].first, labels[c]});
    task_.rule = absl::StrCat(family_.relation, " -> label");
    const bool value_first = BoundedDraw(rng_, 2) == 0;
    auto example = [&](int person, size_t c) {
      const IclPerson& p = people_[person];
      std::vector<std::string> others;
      for (const auto& [relation, value] : p.facts) {
        if (relation != shown) others.push_back(value);
      }
      const std::string& value = p.facts.at(shown);
      std::string other = others.empty() ? value : Pick(rng_, others);
      return IclExample{absl::StrCat(p.name, ": ", value_first ? value : other, ", ",
                                     value_first ? other : value),
                        task_.mapping[c].to};
    };
    // Queries take people of every class in turn, leaving each class one for demonstrations.
    std::vector<std::vector<int>> demo_people(k);
    for (size_t c = 0; c < k; ++c) {
      demo_people[c] = classes[c].second;
      Shuffle(rng_, &demo_people[c]);
    }
    std::vector<size_t> order(k);
    for (size_t c = 0; c < k; ++c) order[c] = c;
    Shuffle(rng_, &order);
    for (int q = 0, misses = 0;
         static_cast<int>(task_.queries.size()) < Queries() && misses < static_cast<int>(k); ++q) {
      const size_t c = order[q % k];
      if (demo_people[c].size() < 2) {
        ++misses;
        continue;
      }
      misses = 0;
      task_.queries.push_back(example(demo_people[c].back(), c));
      demo_people[c].pop_back();
    }
    for (int d = 0; d < Demonstrations(); ++d) {
      const size_t c = BoundedDraw(rng_, k);
      task_.demonstrations.push_back(example(Pick(rng_, demo_people[c]), c));
    }
    Shuffle(rng_, &task_.queries);
    return !task_.queries.empty();
  }

  // "<value of A>" -> "<value of B>": 4..16 people's pairs, each value once in the task.
  bool Map() {
    const std::string& a = family_.relation;
    const std::string& b = family_.output_relation;
    std::vector<int> holders;
    for (size_t i = 0; i < people_.size(); ++i) {
      if (people_[i].facts.count(a) && people_[i].facts.count(b)) {
        holders.push_back(static_cast<int>(i));
      }
    }
    Shuffle(rng_, &holders);
    const size_t k = 4 + BoundedDraw(rng_, 13);
    std::set<std::string> used_a, used_b;
    for (int i : holders) {
      if (task_.mapping.size() == k) break;
      const std::string& va = people_[i].facts.at(a);
      const std::string& vb = people_[i].facts.at(b);
      if (used_a.count(va) || used_b.count(vb)) continue;
      used_a.insert(va);
      used_b.insert(vb);
      task_.mapping.push_back({va, vb});
    }
    if (task_.mapping.size() < 2) return false;
    task_.rule = absl::StrCat(a, " -> ", b);
    // Shuffled rounds: the first len(mapping) demonstrations show every pair once.
    auto rounds = [&](int n, std::vector<IclExample>* out) {
      std::vector<size_t> round;
      while (static_cast<int>(out->size()) < n) {
        if (round.empty()) {
          for (size_t i = 0; i < task_.mapping.size(); ++i) round.push_back(i);
          Shuffle(rng_, &round);
        }
        const IclMapping& m = task_.mapping[round.back()];
        round.pop_back();
        out->push_back({m.from, m.to});
      }
    };
    rounds(Demonstrations(), &task_.demonstrations);
    rounds(Queries(), &task_.queries);
    return !task_.queries.empty();
  }

  // "<First>: <value>; ..." for `candidates` people with distinct first names; "" if not found.
  std::string Line(const std::vector<int>& candidates, const std::string& relation) {
    std::string line;
    for (int i : candidates) {
      if (!line.empty()) line += "; ";
      absl::StrAppend(&line, people_[i].first, ": ", people_[i].facts.at(relation));
    }
    return line;
  }

  // Up to 100 tries at `n` people of `pool` with distinct first names (and distinct values of
  // `relation` if `distinct_values`) none of whose first names is in `taken`.
  std::vector<int> Draw(const std::vector<int>& pool, size_t n, const std::string& relation,
                        bool distinct_values, std::set<std::string> taken) {
    std::vector<int> out;
    std::set<std::string> values;
    for (int attempt = 0; attempt < 100 && out.size() < n && !pool.empty(); ++attempt) {
      const int i = Pick(rng_, pool);
      const std::string& v = people_[i].facts.at(relation);
      if (taken.count(people_[i].first) || (distinct_values && values.count(v))) continue;
      taken.insert(people_[i].first);
      values.insert(v);
      out.push_back(i);
    }
    return out;
  }

  // Three candidates, exactly one with the task's target value; the one of a query is in no
  // demonstration.
  bool PickByValue() {
    const std::string& relation = family_.relation;
    std::vector<std::pair<std::string, std::vector<int>>> values;
    for (auto& [value, holders] : PeopleByValue(people_, relation)) {
      if (holders.size() >= 2) values.emplace_back(value, holders);
    }
    if (values.empty()) return false;
    auto& [target, fitting] = values[BoundedDraw(rng_, values.size())];
    std::vector<int> others;
    for (size_t i = 0; i < people_.size(); ++i) {
      auto it = people_[i].facts.find(relation);
      if (it != people_[i].facts.end() && it->second != target) others.push_back(i);
    }
    if (others.size() < 2) return false;
    task_.rule = absl::StrCat(relation, " = ", target);
    Shuffle(rng_, &fitting);
    const size_t query_people = std::min<size_t>(Queries(), fitting.size() - 1);
    auto example = [&](int fit) -> std::optional<IclExample> {
      std::vector<int> line = Draw(others, 2, relation, false, {people_[fit].first});
      if (line.size() < 2) return std::nullopt;
      line.insert(line.begin() + BoundedDraw(rng_, 3), fit);
      return IclExample{Line(line, relation), people_[fit].first};
    };
    for (size_t q = 0; q < query_people; ++q) {
      if (auto e = example(fitting[q])) task_.queries.push_back(*e);
    }
    const std::vector<int> demo_people(fitting.begin() + query_people, fitting.end());
    for (int d = 0; d < Demonstrations(); ++d) {
      if (auto e = example(Pick(rng_, demo_people))) task_.demonstrations.push_back(*e);
    }
    return !task_.queries.empty() && !task_.demonstrations.empty();
  }

  // Three candidates with distinct years; the earliest or the latest born (per task). Query
  // lines draw from a quarter of the people that demonstrations never show.
  bool PickExtreme() {
    const std::string relation = "birth_year";
    std::vector<int> pool;
    for (size_t i = 0; i < people_.size(); ++i) {
      if (people_[i].facts.count(relation)) pool.push_back(static_cast<int>(i));
    }
    if (pool.size() < 12) return false;
    Shuffle(rng_, &pool);
    const bool earliest = BoundedDraw(rng_, 2) == 0;
    task_.rule = absl::StrCat(relation, earliest ? ": earliest" : ": latest");
    const std::vector<int> query_pool(pool.begin(), pool.begin() + pool.size() / 4);
    const std::vector<int> demo_pool(pool.begin() + pool.size() / 4, pool.end());
    auto example = [&](const std::vector<int>& from) -> std::optional<IclExample> {
      const std::vector<int> line = Draw(from, 3, relation, true, {});
      if (line.size() < 3) return std::nullopt;
      int best = line[0];
      for (int i : line) {
        const int year = std::stoi(people_[i].facts.at(relation));
        const int best_year = std::stoi(people_[best].facts.at(relation));
        if (earliest ? year < best_year : year > best_year) best = i;
      }
      return IclExample{Line(line, relation), people_[best].first};
    };
    for (int q = 0; q < Queries(); ++q) {
      if (auto e = example(query_pool)) task_.queries.push_back(*e);
    }
    for (int d = 0; d < Demonstrations(); ++d) {
      if (auto e = example(demo_pool)) task_.demonstrations.push_back(*e);
    }
    return !task_.queries.empty() && !task_.demonstrations.empty();
  }

  // Questions on a context of passages: every plain phrasing of half of each passage's facts as
  // demonstrations, one phrasing (plain, or the paraphrase split's for passage_qa_paraphrase) of
  // each other fact as a query.
  bool PassageQa() {
    std::set<std::string> updated;
    for (const Passage& p : data_.passages) {
      if (p.is_update) updated.insert(p.subject);
    }
    std::vector<int> eligible;
    for (size_t i = 0; i < data_.passages.size(); ++i) {
      const Passage& p = data_.passages[i];
      if (!p.is_update && !updated.count(p.subject)) eligible.push_back(static_cast<int>(i));
    }
    const size_t n = std::max(1, options_.icl_context_passages);
    if (eligible.size() < n) return false;
    std::vector<int> chosen;
    for (size_t c = 0; c < n; ++c) {
      const size_t j = c + BoundedDraw(rng_, eligible.size() - c);  // partial Fisher-Yates
      std::swap(eligible[c], eligible[j]);
      chosen.push_back(eligible[c]);
    }
    std::sort(chosen.begin(), chosen.end());  // stream order
    task_.rule = "answers from the context";
    const bool paraphrase = family_.name == "passage_qa_paraphrase";
    // Phrasings that name the person and nothing else the passage record lacks (pet species,
    // pronouns).
    auto phrasings = [&](int rel) {
      std::vector<std::string> out;
      if (paraphrase) {
        for (const ParaphraseTemplate& t : ParaphraseTemplates()[rel]) out.push_back(t.text);
      } else {
        for (const std::string& t : QuestionTemplates()[rel]) {
          if (t.find("{X}") == std::string::npos && t.find("{PP}") == std::string::npos) {
            out.push_back(t);
          }
        }
      }
      return out;
    };
    for (int index : chosen) {
      const Passage& p = data_.passages[index];
      task_.context.push_back(p.text);
      std::vector<Fact> facts = p.facts;
      Shuffle(rng_, &facts);
      const size_t demonstrated = std::max<size_t>(1, facts.size() / 2);
      for (size_t i = 0; i < facts.size(); ++i) {
        const int rel = RelationIndex(facts[i].relation);
        if (rel < 0) continue;
        if (i < demonstrated) {
          for (const std::string& t : QuestionTemplates()[rel]) {
            if (t.find("{X}") != std::string::npos || t.find("{PP}") != std::string::npos) {
              continue;
            }
            task_.demonstrations.push_back({Render(t, {{"N", p.subject}}), facts[i].value});
          }
        } else {
          task_.queries.push_back(
              {Render(Pick(rng_, phrasings(rel)), {{"N", p.subject}}), facts[i].value});
        }
      }
    }
    Shuffle(rng_, &task_.demonstrations);
    Shuffle(rng_, &task_.queries);
    if (static_cast<int>(task_.demonstrations.size()) > Demonstrations()) {
      task_.demonstrations.resize(Demonstrations());
    }
    if (static_cast<int>(task_.queries.size()) > Queries()) task_.queries.resize(Queries());
    return !task_.queries.empty();
  }

  const WorldOptions& options_;
  const IclFamily& family_;
  const std::vector<IclPerson>& people_;
  const SplitData& data_;
  Rng rng_;
  IclTask task_;
};

nlohmann::ordered_json ExamplesToJson(const std::vector<IclExample>& examples) {
  nlohmann::ordered_json out = nlohmann::ordered_json::array();
  for (const IclExample& e : examples) out.push_back({{"input", e.input}, {"output", e.output}});
  return out;
}

std::vector<IclExample> ExamplesFromJson(const nlohmann::json& j) {
  std::vector<IclExample> out;
  for (const auto& e : j) {
    out.push_back({e.at("input").get<std::string>(), e.at("output").get<std::string>()});
  }
  return out;
}

std::string IclPath(const std::string& dir, bool heldout) {
  return absl::StrCat(dir, "/", heldout ? kIclHeldoutFile : kIclTrainFile);
}

}  // namespace

const std::vector<IclFamily>& IclFamilies() {
  static const auto* families = new std::vector<IclFamily>{
      {"classify_occupation", IclKind::kClassify, false, "occupation", ""},
      {"classify_hobby", IclKind::kClassify, false, "hobby", ""},
      {"map_hometown_to_employer", IclKind::kMap, false, "hometown", "employer"},
      {"map_occupation_to_hobby", IclKind::kMap, false, "occupation", "hobby"},
      {"map_birthplace_to_university", IclKind::kMap, false, "birthplace", "university"},
      {"pick_by_occupation", IclKind::kPick, false, "occupation", ""},
      {"pick_by_hobby", IclKind::kPick, false, "hobby", ""},
      {"passage_qa", IclKind::kPassageQa, false, "", ""},
      {"classify_birth_decade", IclKind::kClassify, true, "birth_decade", ""},
      {"map_employer_to_occupation", IclKind::kMap, true, "employer", "occupation"},
      {"map_spouse_to_hometown", IclKind::kMap, true, "spouse", "hometown"},
      {"pick_by_birth_year", IclKind::kPick, true, "birth_year", ""},
      {"passage_qa_paraphrase", IclKind::kPassageQa, true, "", ""},
  };
  return *families;
}

IclTaskSet GenerateIclTasks(const WorldOptions& options, const SplitData& adapter,
                            const SplitData& test) {
  const std::vector<IclPerson> train_people = StreamPeople(adapter);
  const std::vector<IclPerson> heldout_people = StreamPeople(test);
  IclTaskSet out;
  for (const IclFamily& family : IclFamilies()) {
    std::vector<IclTask>& tasks = family.heldout ? out.heldout : out.train;
    const int n =
        family.heldout ? options.icl_heldout_tasks_per_family : options.icl_train_tasks_per_family;
    for (int i = 0; i < n; ++i) {
      IclTask task;
      if (!IclTaskMaker(options, family, i, family.heldout ? heldout_people : train_people,
                        family.heldout ? test : adapter)
               .Make(&task)) {
        continue;
      }
      task.id = absl::StrCat("icl-", family.heldout ? "heldout" : "train", "-t", tasks.size());
      tasks.push_back(std::move(task));
    }
  }
  return out;
}

std::string IclPrompt(std::string_view input) {
  return absl::StrCat("Q: ", std::string(input), "\nA:");
}

std::string IclDemonstration(const IclExample& example) {
  return absl::StrCat(IclPrompt(example.input), " ", example.output, "\n");
}

std::string IclTaskPrompt(const IclTask& task, int demonstrations, std::string_view input) {
  std::string out;
  for (const std::string& passage : task.context) absl::StrAppend(&out, passage, "\n");
  const size_t n = std::min<size_t>(std::max(0, demonstrations), task.demonstrations.size());
  for (size_t i = 0; i < n; ++i) out += IclDemonstration(task.demonstrations[i]);
  return out + IclPrompt(input);
}

std::vector<std::string> IclContextChunks(const IclTask& task, int demonstrations, int per_chunk) {
  std::vector<std::string> out;
  for (const std::string& passage : task.context) out.push_back(passage + "\n");
  const size_t n = std::min<size_t>(std::max(0, demonstrations), task.demonstrations.size());
  const size_t group = static_cast<size_t>(std::max(1, per_chunk));
  for (size_t i = 0; i < n; i += group) {
    std::string chunk;
    for (size_t j = i; j < std::min(n, i + group); ++j) {
      chunk += IclDemonstration(task.demonstrations[j]);
    }
    out.push_back(std::move(chunk));
  }
  return out;
}

std::string IclTaskToJson(const IclTask& task) {
  nlohmann::ordered_json mapping = nlohmann::ordered_json::array();
  for (const IclMapping& m : task.mapping) mapping.push_back({{"from", m.from}, {"to", m.to}});
  nlohmann::ordered_json j = {{"id", task.id},
                              {"family", task.family},
                              {"set", task.heldout ? "heldout" : "train"},
                              {"people", std::string(SplitName(task.people))},
                              {"rule", task.rule},
                              {"mapping", mapping},
                              {"context", task.context},
                              {"demonstrations", ExamplesToJson(task.demonstrations)},
                              {"queries", ExamplesToJson(task.queries)}};
  return j.dump() + "\n";
}

absl::StatusOr<IclTask> IclTaskFromJson(std::string_view line) {
  nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object()) return absl::InvalidArgumentError("not a JSON object");
  try {
    IclTask task;
    task.id = j.at("id").get<std::string>();
    task.family = j.at("family").get<std::string>();
    const std::string set = j.at("set").get<std::string>();
    if (set != "train" && set != "heldout") {
      return absl::InvalidArgumentError(
          absl::StrCat("task ", task.id, ": set '", set, "' (expected train or heldout)"));
    }
    task.heldout = set == "heldout";
    absl::StatusOr<Split> people = ParseSplit(j.at("people").get<std::string>());
    if (!people.ok()) return people.status();
    task.people = *people;
    task.rule = j.at("rule").get<std::string>();
    for (const auto& m : j.at("mapping")) {
      task.mapping.push_back({m.at("from").get<std::string>(), m.at("to").get<std::string>()});
    }
    task.context = j.at("context").get<std::vector<std::string>>();
    task.demonstrations = ExamplesFromJson(j.at("demonstrations"));
    task.queries = ExamplesFromJson(j.at("queries"));
    return task;
  } catch (const nlohmann::json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("in-context task: ", e.what()));
  }
}

std::string PassageToJson(const Passage& p) {
  nlohmann::ordered_json facts = nlohmann::ordered_json::array();
  for (const Fact& f : p.facts) facts.push_back({{"relation", f.relation}, {"value", f.value}});
  nlohmann::ordered_json j = {{"id", p.id},
                              {"split", std::string(SplitName(p.split))},
                              {"stream_position", p.stream_position},
                              {"text", p.text},
                              {"subject", p.subject},
                              {"entities", p.entities},
                              {"facts", facts},
                              {"is_update", p.is_update},
                              {"updates", p.updates}};
  return j.dump() + "\n";
}

std::string QuestionToJson(const Question& q) {
  nlohmann::ordered_json j = {{"id", q.id},
                              {"passage_id", q.passage_id},
                              {"split", std::string(SplitName(q.split))},
                              {"subject", q.subject},
                              {"relation", q.relation},
                              {"question", q.question},
                              {"answer", q.answer},
                              {"is_update", q.is_update},
                              {"final_answer", q.final_answer},
                              {"superseded_by", q.superseded_by}};
  return j.dump() + "\n";
}

absl::StatusOr<Passage> PassageFromJson(std::string_view line) {
  nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object()) return absl::InvalidArgumentError("not a JSON object");
  try {
    Passage p;
    p.id = j.at("id").get<std::string>();
    absl::StatusOr<Split> split = ParseSplit(j.at("split").get<std::string>());
    if (!split.ok()) return split.status();
    p.split = *split;
    p.stream_position = j.at("stream_position").get<int64_t>();
    p.text = j.at("text").get<std::string>();
    p.subject = j.at("subject").get<std::string>();
    p.entities = j.at("entities").get<std::vector<std::string>>();
    for (const auto& f : j.at("facts")) {
      p.facts.push_back({f.at("relation").get<std::string>(), f.at("value").get<std::string>()});
    }
    p.is_update = j.at("is_update").get<bool>();
    p.updates = j.at("updates").get<std::string>();
    return p;
  } catch (const nlohmann::json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("passage: ", e.what()));
  }
}

absl::StatusOr<Question> QuestionFromJson(std::string_view line) {
  nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object()) return absl::InvalidArgumentError("not a JSON object");
  try {
    Question q;
    q.id = j.at("id").get<std::string>();
    q.passage_id = j.at("passage_id").get<std::string>();
    absl::StatusOr<Split> split = ParseSplit(j.at("split").get<std::string>());
    if (!split.ok()) return split.status();
    q.split = *split;
    q.subject = j.at("subject").get<std::string>();
    q.relation = j.at("relation").get<std::string>();
    q.question = j.at("question").get<std::string>();
    q.answer = j.at("answer").get<std::string>();
    q.is_update = j.at("is_update").get<bool>();
    q.final_answer = j.at("final_answer").get<std::string>();
    q.superseded_by = j.at("superseded_by").get<std::string>();
    return q;
  } catch (const nlohmann::json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("question: ", e.what()));
  }
}

absl::Status WriteWorld(const WorldOptions& options, const std::string& dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return absl::InternalError(absl::StrCat(dir, ": cannot create: ", ec.message()));
  ParaphraseSplit paraphrase;
  SplitData adapter, test;  // the people of the in-context tasks
  for (int s = 0; s < kNumSplits; ++s) {
    const SplitData data = GenerateSplit(options, static_cast<Split>(s));
    if (data.split == Split::kTest) paraphrase = GenerateParaphrases(options, data);
    if (data.split == Split::kAdapter) adapter = data;
    if (data.split == Split::kTest) test = data;
    std::vector<std::string> lines;
    lines.reserve(data.passages.size());
    for (const Passage& p : data.passages) lines.push_back(PassageToJson(p));
    if (absl::Status st = WriteLines(SplitPath(dir, data.split, "passages"), lines); !st.ok()) {
      return st;
    }
    lines.clear();
    for (const Question& q : data.questions) lines.push_back(QuestionToJson(q));
    if (absl::Status st = WriteLines(SplitPath(dir, data.split, "questions"), lines); !st.ok()) {
      return st;
    }
  }
  nlohmann::ordered_json j = {{"seed", options.seed},
                              {"update_fraction", options.update_fraction},
                              {"eval_questions_per_passage", options.eval_questions_per_passage}};
  for (int s = 0; s < kNumSplits; ++s) {
    j["people"][std::string(SplitName(static_cast<Split>(s)))] = options.people[s];
  }
  std::vector<std::string> lines;
  int synonym = 0, reordered = 0, described = 0;
  for (size_t i = 0; i < paraphrase.questions.size(); ++i) {
    lines.push_back(QuestionToJson(paraphrase.questions[i]));
    synonym += paraphrase.info[i].synonym;
    reordered += paraphrase.info[i].reordered;
    described += !paraphrase.info[i].description.empty();
  }
  const std::string paraphrase_file = absl::StrCat(kParaphraseSplit, ".questions.jsonl");
  if (absl::Status st = WriteLines(absl::StrCat(dir, "/", paraphrase_file), lines); !st.ok()) {
    return st;
  }
  j["paraphrase"] = {
      {"what",
       "the test split's questions (same passages and answers) asked with other words: relation "
       "synonyms, descriptions of the person instead of the name, reordered clauses"},
      {"passages", "test.passages.jsonl"},
      {"questions", paraphrase_file},
      {"seed", absl::StrCat("(seed, \"", kParaphraseSplit, "\")")},
      {"count", paraphrase.questions.size()},
      {"relation_synonym", synonym},
      {"description", described},
      {"reordered", reordered}};

  const IclTaskSet icl = GenerateIclTasks(options, adapter, test);
  nlohmann::ordered_json families = nlohmann::ordered_json::object();
  for (const bool heldout : {false, true}) {
    const std::vector<IclTask>& tasks = heldout ? icl.heldout : icl.train;
    lines.clear();
    for (const IclTask& task : tasks) {
      lines.push_back(IclTaskToJson(task));
      families[task.family] = families.value(task.family, 0) + 1;
    }
    if (absl::Status st = WriteLines(IclPath(dir, heldout), lines); !st.ok()) return st;
  }
  nlohmann::ordered_json train_families = nlohmann::ordered_json::array();
  nlohmann::ordered_json heldout_families = nlohmann::ordered_json::array();
  for (const IclFamily& f : IclFamilies()) {
    (f.heldout ? heldout_families : train_families).push_back(f.name);
  }
  j["icl"] = {{"what",
               "in-context tasks: a family, a mapping drawn fresh per task, demonstrations and "
               "queries (input -> output); held-out families never appear in the train file"},
              {"train", kIclTrainFile},
              {"heldout", kIclHeldoutFile},
              {"seed", "(seed, \"icl/<family>/<task index>\")"},
              {"format", "Q: <input>\nA: <output>\n"},
              {"train_families", train_families},
              {"heldout_families", heldout_families},
              {"tasks_per_family", families},
              {"demonstrations", options.icl_demonstrations},
              {"queries", options.icl_queries},
              {"context_passages", options.icl_context_passages}};
  return WriteLines(dir + "/world.json", {j.dump(2) + "\n"});
}

absl::StatusOr<std::vector<IclTask>> ReadIclTasks(const std::string& dir, bool heldout) {
  const std::string path = IclPath(dir, heldout);
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) {
    return absl::NotFoundError(absl::StrCat(
        path,
        ": not found; a world written before the in-context tasks existed: regenerate it with "
        "`knowd-train data --out ",
        dir, "` and the flags it was made with (the other splits come out byte-identical)"));
  }
  return ReadJsonl<IclTask>(path, IclTaskFromJson);
}

absl::StatusOr<SplitData> ReadSplit(const std::string& dir, Split split) {
  SplitData data;
  data.split = split;
  absl::StatusOr<std::vector<Passage>> passages =
      ReadJsonl<Passage>(SplitPath(dir, split, "passages"), PassageFromJson);
  if (!passages.ok()) return passages.status();
  absl::StatusOr<std::vector<Question>> questions =
      ReadJsonl<Question>(SplitPath(dir, split, "questions"), QuestionFromJson);
  if (!questions.ok()) return questions.status();
  data.passages = *std::move(passages);
  data.questions = *std::move(questions);
  return data;
}

absl::StatusOr<Split> PassagesOfEvalSplit(std::string_view name) {
  if (name == kParaphraseSplit) return Split::kTest;
  absl::StatusOr<Split> split = ParseSplit(name);
  if (!split.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown split '", std::string(name),
                     "' (expected pretrain, adapter, valid, test or paraphrase)"));
  }
  return split;
}

absl::StatusOr<SplitData> ReadEvalSplit(const std::string& dir, std::string_view name) {
  absl::StatusOr<Split> split = PassagesOfEvalSplit(name);
  if (!split.ok()) return split.status();
  if (name != kParaphraseSplit) return ReadSplit(dir, *split);
  SplitData data;
  data.split = *split;
  absl::StatusOr<std::vector<Passage>> passages =
      ReadJsonl<Passage>(SplitPath(dir, *split, "passages"), PassageFromJson);
  if (!passages.ok()) return passages.status();
  const std::string questions_path = absl::StrCat(dir, "/", kParaphraseSplit, ".questions.jsonl");
  std::error_code ec;
  if (!std::filesystem::exists(questions_path, ec)) {
    return absl::NotFoundError(absl::StrCat(
        questions_path,
        ": not found; a world written before the paraphrase split existed: "
        "regenerate it with `knowd-train data --out ",
        dir, "` and the flags it was made with (the other splits come out byte-identical)"));
  }
  absl::StatusOr<std::vector<Question>> questions =
      ReadJsonl<Question>(questions_path, QuestionFromJson);
  if (!questions.ok()) return questions.status();
  data.passages = *std::move(passages);
  data.questions = *std::move(questions);
  return data;
}

}  // namespace knowd::train
