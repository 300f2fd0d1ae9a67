// The knowledge pipeline's pieces on real data: the shipped knowd-tiny tokenizer, a real memory
// bank with its lexical index, no adapter (rag and closed-book; tests/daemon/pipeline_test covers
// the adapter modes end to end).
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "knowledge/ask.h"
#include "knowledge/bundle.h"
#include "knowledge/passages.h"
#include "knowledge/prompt.h"
#include "knowledge/retrieve.h"
#include "knowledge/subject.h"
#include "model/tokenizer.h"
#include "storage/memory_bank.h"
#include "tests/storage/bank_test_util.h"

namespace knowd::knowledge {
namespace {

using ::testing::ElementsAre;

const std::string kTiny = std::string(KNOWD_SOURCE_DIR) + "/models/knowd-tiny";

std::unique_ptr<Tokenizer> TinyTokenizer() {
  auto t = LoadTokenizer(kTiny);
  EXPECT_TRUE(t.ok()) << t.status();
  return t.ok() ? *std::move(t) : nullptr;
}

TEST(Prompt, OneFormatWithAndWithoutContext) {
  EXPECT_EQ(QaPrompt("", "Where?"), "Q: Where?\nA:");
  EXPECT_EQ(QuestionPrompt("Where?"), "Q: Where?\nA:");
  EXPECT_EQ(QaPrompt("Ann lives in Rome.", "Where?"), "Ann lives in Rome.\nQ: Where?\nA:");
  const std::vector<std::string_view> passages = {"One.", "Two."};
  EXPECT_EQ(JoinPassages(passages), "One.\nTwo.");
}

TEST(Passages, EachPassageAfterTheFirstIsEncodedWithTheTailOfTheOneBefore) {
  std::unique_ptr<Tokenizer> tok = TinyTokenizer();
  ASSERT_NE(tok, nullptr);
  const std::string text =
      "Ulla Marsk grew up in the harbour town of Vellin, where her father mended nets. She left "
      "at sixteen to study glass making in Orrey and opened her own workshop there. Her blue "
      "bowls are sold in three countries.";
  const std::vector<DocumentPassage> passages = SplitDocument(text, *tok, {16, 6, 512});
  ASSERT_GE(passages.size(), 3u);
  std::string joined;
  for (size_t i = 0; i < passages.size(); ++i) {
    const DocumentPassage& p = passages[i];
    if (i == 0) {
      EXPECT_EQ(p.context_bytes, 0u);
    } else {
      EXPECT_GT(p.context_bytes, 0u) << i;
      EXPECT_LE(p.context_bytes, passages[i - 1].text.size()) << i;
    }
    // The encoder input is the context (the end of the text so far) and the passage.
    const std::string input = joined.substr(joined.size() - p.context_bytes) + p.text;
    EXPECT_EQ(p.encoder_ids, EncoderTokens(*tok, input, 512)) << i;
    EXPECT_EQ(p.encoder_ids.front(), tok->bos_id());
    joined += p.text;
  }
  EXPECT_EQ(joined, text);
  // Cut to the model's context; an empty input still encodes (BOS, EOS).
  EXPECT_EQ(EncoderTokens(*tok, text, 8).size(), 8u);
  EXPECT_EQ(EncoderTokens(*tok, "", 8), (std::vector<int32_t>{tok->bos_id(), tok->eos_id()}));
}

class AskTest : public ::testing::Test {
 protected:
  void SetUp() override {
    tokenizer_ = TinyTokenizer();
    ASSERT_NE(tokenizer_, nullptr);
    storage::BankOptions o;
    o.data_dir = dir_.Sub("bank");
    o.key_dim = 1;
    o.latent_rows = 1;
    o.latent_cols = 1;
    o.lexical_index = true;
    auto bank = storage::MemoryBank::Open(o);
    ASSERT_TRUE(bank.ok()) << bank.status();
    bank_ = *std::move(bank);
    const std::vector<std::pair<std::string, std::string>> docs = {
        {"ann", "Ann Velor lives in Rome. Ann Velor was born in 1950."},
        {"ann-update", "Ann Velor now lives in Oslo."},
        {"bo", "Bo Thrane lives in Lima. Bo Thrane is a baker."},
        {"cy", "Cy Ormond is married to Dee Ormond. Cy Ormond lives in Kiev."}};
    for (const auto& [id, text] : docs) {
      storage::Document d;
      d.name_space = "ns";
      d.id = id;
      storage::Passage p;
      p.text = text;
      p.latents = {0.0f};
      p.key = {1.0f};
      d.passages.push_back(p);
      ASSERT_TRUE(bank_->Put({&d, 1}).ok());
    }
  }
  AskContext Context() { return {bank_.get(), tokenizer_.get(), nullptr, 512}; }

  storage::testing::TempDir dir_;
  std::unique_ptr<Tokenizer> tokenizer_;
  std::unique_ptr<storage::MemoryBank> bank_;
};

TEST_F(AskTest, RagReadsTheBestPassageAndItsSubjectOldestFirst) {
  AskParams p;
  p.mode = AskMode::kRag;
  absl::StatusOr<PreparedAsk> a = PrepareAsk(Context(), "ns", "Where does Ann Velor live?", p);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_FALSE(a->nothing_in_memory);
  ASSERT_EQ(a->cited.size(), 2u);  // the best hit and the other passage on Ann Velor
  EXPECT_EQ(tokenizer_->Decode(a->prompt),
            "Ann Velor lives in Rome. Ann Velor was born in 1950.\nAnn Velor now lives in "
            "Oslo.\nQ: Where does Ann Velor live?\nA:");
  EXPECT_GT(a->relevance, 0.9);
  // Without the subject passages: the best hit alone.
  p.subject_passages = 0;
  a = PrepareAsk(Context(), "ns", "Where does Ann Velor live?", p);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->cited.size(), 1u);
}

TEST_F(AskTest, AQuestionAboutSomeoneNeverStoredHasNothingInMemory) {
  AskParams p;
  p.mode = AskMode::kRag;
  p.abstain_below = 0.5;
  absl::StatusOr<PreparedAsk> unknown =
      PrepareAsk(Context(), "ns", "Where does Gil Pardoe live?", p);
  ASSERT_TRUE(unknown.ok()) << unknown.status();
  EXPECT_LT(unknown->relevance, 0.5);  // only "lives" matches: the names are unknown
  EXPECT_TRUE(unknown->nothing_in_memory);
  EXPECT_TRUE(unknown->prompt.empty());
  EXPECT_TRUE(unknown->cited.empty());
  absl::StatusOr<PreparedAsk> known = PrepareAsk(Context(), "ns", "Where does Bo Thrane live?", p);
  ASSERT_TRUE(known.ok()) << known.status();
  EXPECT_FALSE(known->nothing_in_memory);
  EXPECT_GT(known->relevance, 0.5);
  // Forgotten: the same question once Bo's passage is deleted.
  const std::string bo = "bo";
  ASSERT_TRUE(bank_->Delete("ns", {&bo, 1}, false).ok());
  absl::StatusOr<PreparedAsk> forgotten =
      PrepareAsk(Context(), "ns", "Where does Bo Thrane live?", p);
  ASSERT_TRUE(forgotten.ok()) << forgotten.status();
  EXPECT_TRUE(forgotten->nothing_in_memory);
  // Closed-book never consults the memory.
  p.mode = AskMode::kClosedBook;
  absl::StatusOr<PreparedAsk> closed = PrepareAsk(Context(), "ns", "Where does Gil live?", p);
  ASSERT_TRUE(closed.ok()) << closed.status();
  EXPECT_FALSE(closed->nothing_in_memory);
  EXPECT_EQ(tokenizer_->Decode(closed->prompt), "Q: Where does Gil live?\nA:");
}

TEST_F(AskTest, MacNeedsAnAdapterAndPromptsMustFit) {
  AskParams p;
  p.mode = AskMode::kMac;
  EXPECT_EQ(PrepareAsk(Context(), "ns", "Where?", p).status().code(),
            absl::StatusCode::kFailedPrecondition);
  p.mode = AskMode::kRag;
  p.max_tokens = 511;
  EXPECT_EQ(PrepareAsk(Context(), "ns", "Where does Ann live?", p).status().code(),
            absl::StatusCode::kInvalidArgument);
  // A short context drops the lowest-ranked passage first.
  p.max_tokens = 32;
  absl::StatusOr<PreparedAsk> both = PrepareAsk(Context(), "ns", "Where does Ann Velor live?", p);
  ASSERT_TRUE(both.ok()) << both.status();
  ASSERT_EQ(both->cited.size(), 2u);
  const int needed = static_cast<int>(both->prompt.size());
  p.max_tokens = 512 - (needed - 1);
  absl::StatusOr<PreparedAsk> a = PrepareAsk(Context(), "ns", "Where does Ann Velor live?", p);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_LT(static_cast<int>(a->prompt.size()), needed);
  EXPECT_EQ(a->dropped_passages, 1);
  ASSERT_EQ(a->cited.size(), 1u);
  EXPECT_EQ(a->cited[0].doc_id, both->cited[0].doc_id);  // the best hit stays
}

// Subject marking (subject.h) over a real bank's lexical statistics.
std::vector<std::string> OnSubject(storage::MemoryBank& bank, const storage::SearchRequest& req,
                                   std::vector<storage::SearchHit>* hits_out = nullptr,
                                   std::vector<LexicalMarks>* marks_out = nullptr) {
  storage::LexicalTerms terms;
  auto hits = bank.Search(req, &terms);
  EXPECT_TRUE(hits.ok()) << hits.status();
  if (!hits.ok()) return {};
  const std::vector<LexicalMarks> marks = MarkLexicalHits(*hits, terms);
  EXPECT_EQ(marks.size(), hits->size());
  // In BM25 order, as the lexical candidates rank.
  std::vector<size_t> order;
  for (size_t i = 0; i < hits->size(); ++i) {
    if ((*hits)[i].lexical_score.has_value()) order.push_back(i);
  }
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return *(*hits)[a].lexical_score > *(*hits)[b].lexical_score;
  });
  std::vector<std::string> on_subject;
  for (size_t i : order) {
    if (marks[i].same_subject) on_subject.push_back((*hits)[i].doc_id);
  }
  for (size_t i = 0; i < hits->size(); ++i) {  // every hit's coverage, however it was found
    EXPECT_TRUE(marks[i].coverage.has_value()) << (*hits)[i].doc_id;
  }
  if (hits_out != nullptr) *hits_out = *hits;
  if (marks_out != nullptr) *marks_out = marks;
  return on_subject;
}

TEST(Subject, LexicalHitsOnTheBestHitsSubjectAreMarked) {
  storage::testing::TempDir dir;
  auto opened = storage::MemoryBank::Open(storage::testing::TestOptions(dir.path()));
  ASSERT_TRUE(opened.ok()) << opened.status();
  std::unique_ptr<storage::MemoryBank> bank = *std::move(opened);
  std::vector<storage::Document> docs = storage::testing::NamesFixture();
  ASSERT_TRUE(bank->Put(docs).ok());

  storage::SearchRequest req;
  req.name_space = "ns";
  req.key = docs[0].passages[0].key;
  req.k = 10;
  req.hybrid = true;
  req.query_text = "What city is Velka Keslemul's home?";
  std::vector<storage::SearchHit> hits;
  std::vector<LexicalMarks> marks;
  // Both names are the subject; "home" (in 12 passages) and "city" are not: the update, which
  // says "lives", is on it, Stoul's home in Celxi and the other homes are not.
  EXPECT_THAT(OnSubject(*bank, req, &hits, &marks), ElementsAre("velka", "velka-update"));
  // Coverage: the velka passages hold both names, the question's exact words; Stoul's none.
  for (size_t i = 0; i < hits.size(); ++i) {
    if (hits[i].doc_id == "velka" || hits[i].doc_id == "velka-update") {
      EXPECT_FLOAT_EQ(marks[i].coverage.value_or(-1), 1.0f) << hits[i].doc_id;
    } else if (hits[i].doc_id == "stoul") {
      EXPECT_FLOAT_EQ(marks[i].coverage.value_or(-1), 0.0f);
    }
  }
  EXPECT_FLOAT_EQ(BestCoverage(marks), 1.0f);
  EXPECT_EQ(BestCoverage(std::vector<LexicalMarks>(2)), -1.0);

  // A person is their whole name: with Ithhul a common city (in 14 of 250 passages, over 4x as
  // many as Voqua's 3), Ithhul Voqua's subject is still both names, not Voqua Wynlem's.
  docs.clear();
  auto add = [&](const std::string& id, const std::string& text) {
    docs.push_back(storage::testing::MakeDoc("ns", id, 0, 1));
    docs.back().passages[0].text = text;
  };
  for (int i = 0; i < 200; ++i) {  // a stream's worth of other people
    add(absl::StrCat("other-", i),
        absl::StrCat("Worker", i, " works at Firm", i, ". Their hobby is chess."));
  }
  for (int i = 0; i < 13; ++i) {
    add(absl::StrCat("ithhul-", i), absl::StrCat("Resident", i, " lives in Ithhul."));
  }
  add("ithhul-voqua",
      "Ithhul Voqua came into the world in Nafa. She is a shepherd by profession. Ithhul's "
      "home is in Corvonev. She spends weekends on cooking.");
  add("voqua-wynlem",
      "Voqua Wynlem has made a home in Wenlem. She works for Wynhul Press. Voqua Wynlem "
      "enjoys cooking. By trade, Voqua is a dentist.");
  add("voqua-wynlem-update",
      "Voqua Wynlem has a new hobby: birdwatching. Voqua Wynlem is married to Vosto Oshul. "
      "Trains between Zelor and Velnafio run every hour.");
  ASSERT_TRUE(bank->Put(docs).ok());
  req.query_text = "What is Ithhul Voqua's hobby?";
  req.k = 300;  // every passage: the dense ranks (ties here) must not push a lexical hit out
  EXPECT_THAT(OnSubject(*bank, req), ElementsAre("ithhul-voqua"));

  // No names: the rarest matched words and those at most 4x as frequent are the subject.
  // Here all three ("spends", "weekends": 1 passage; "cooking": 2); Voqua Wynlem's cooking is
  // not on it.
  req.query_text = "who spends weekends cooking?";
  EXPECT_THAT(OnSubject(*bank, req), ElementsAre("ithhul-voqua"));
}

// Dense retrieval marks its hits by the same rule: the passage about the question's subject is
// found by its key and marked by the names it shares with the question, as a lexical hit would
// be; the others are not. Dense hits carry their own coverage (the question's relevance, with no
// BM25 ranking of the namespace), and the best dense hit stands for the best candidate.
TEST(Subject, DenseHitsOnTheBestHitsSubjectAreMarked) {
  storage::testing::TempDir dir;
  auto opened = storage::MemoryBank::Open(storage::testing::TestOptions(dir.path()));
  ASSERT_TRUE(opened.ok()) << opened.status();
  std::unique_ptr<storage::MemoryBank> bank = *std::move(opened);
  const std::vector<storage::Document> docs = storage::testing::NamesFixture();
  ASSERT_TRUE(bank->Put(docs).ok());
  const std::vector<float>& key = docs[21].passages[0].key;  // velka-update's
  ASSERT_EQ(docs[21].id, "velka-update");
  const std::string question = "What city is Velka Keslemul's home?";

  auto plain = RetrievePassages(*bank, "ns", question, &key, Retrieval::kDense, 6);
  ASSERT_TRUE(plain.ok()) << plain.status();
  storage::LexicalTerms terms;
  auto hits = RetrievePassages(*bank, "ns", question, &key, Retrieval::kDense, 6, {}, &terms);
  ASSERT_TRUE(hits.ok()) << hits.status();
  ASSERT_EQ(hits->size(), plain->size());
  for (size_t i = 0; i < hits->size(); ++i) {  // the dense ranking, unchanged by the terms
    EXPECT_EQ((*hits)[i].doc_id, (*plain)[i].doc_id) << i;
    EXPECT_FLOAT_EQ((*hits)[i].score, (*plain)[i].score) << i;
    EXPECT_FALSE((*hits)[i].lexical_score.has_value()) << i;
  }
  ASSERT_EQ((*hits)[0].doc_id, "velka-update");
  // The best candidate is the best dense hit: the query terms velka-update holds.
  std::vector<std::string> best;
  for (const storage::QueryTerm& t : terms.best_match) best.push_back(t.term);
  EXPECT_EQ(best, (*hits)[0].matched_terms);
  EXPECT_THAT(best, ::testing::IsSupersetOf({"keslemul", "velka"}));
  const std::vector<LexicalMarks> marks = MarkLexicalHits(*hits, terms);
  for (size_t i = 0; i < hits->size(); ++i) {
    const std::string& id = (*hits)[i].doc_id;
    const bool velka = id == "velka" || id == "velka-update";
    EXPECT_EQ(marks[i].same_subject, velka) << id;
    // Both names are the question's exact words: the velka passages hold both, the others
    // neither (their coverage is 0, whatever common words they share).
    EXPECT_FLOAT_EQ(marks[i].coverage.value_or(-1), velka ? 1.0f : 0.0f) << id;
  }
  EXPECT_FLOAT_EQ(BestCoverage(marks), 1.0f);
  // A query that names nothing the bank holds has no subject: no dense hit is on it.
  hits = RetrievePassages(*bank, "ns", "Who is Qorbin Vantelix?", &key, Retrieval::kDense, 6, {},
                          &terms);
  ASSERT_TRUE(hits.ok()) << hits.status();
  for (const LexicalMarks& m : MarkLexicalHits(*hits, terms)) {
    EXPECT_FALSE(m.same_subject);
    EXPECT_FLOAT_EQ(m.coverage.value_or(-1), 0.0f);  // an unknown name: nothing covers it
  }
}

// knowledge.json: a calibration update keeps the keys it does not name, reads back as written,
// and one that would not read back is refused with the file unchanged.
TEST(Calibration, UpdatesKeepOtherKeysAndRefuseWhatWouldNotReadBack) {
  storage::testing::TempDir dir;
  const std::string bundle = dir.path();
  absl::StatusOr<Calibration> none = ReadCalibration(bundle);
  ASSERT_TRUE(none.ok()) << none.status();
  EXPECT_EQ(none->abstain_below, 0);
  EXPECT_EQ(none->retrieval.all, Retrieval::kLexical);
  EXPECT_TRUE(none->retrieval.by_mode.empty());
  EXPECT_EQ(none->fusion.rrf_k, 60);

  ASSERT_TRUE(UpdateCalibration(bundle, R"({"abstain_below": 0.75, "rule": "r"})").ok());
  ASSERT_TRUE(UpdateCalibration(bundle, R"({"retrieval": {"default": "hybrid", "rrf_k": 20,
      "dense_weight": 1, "lexical_weight": 0.5, "modes": {"mac": "lexical"}}})")
                  .ok());
  absl::StatusOr<Calibration> c = ReadCalibration(bundle);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_DOUBLE_EQ(c->abstain_below, 0.75);
  EXPECT_EQ(c->retrieval.all, Retrieval::kHybrid);
  EXPECT_EQ(c->retrieval.For(AskMode::kMac), Retrieval::kLexical);
  EXPECT_EQ(c->retrieval.For(AskMode::kRag), Retrieval::kHybrid);
  EXPECT_EQ(c->fusion.rrf_k, 20);
  EXPECT_FLOAT_EQ(c->fusion.dense_weight, 1.0f);
  EXPECT_FLOAT_EQ(c->fusion.lexical_weight, 0.5f);

  for (const char* bad :
       {R"({"retrieval": {"default": "fuzzy"}})", R"({"retrieval": {"lexical_weight": -1}})",
        R"({"retrieval": {"dense_weight": 0, "lexical_weight": 0}})", R"({"retrieval": 3})",
        R"({"retrieval": {"modes": {"closed-book": "dense"}}})",
        R"({"retrieval": {"modes": {"mac": "bm25"}}})", R"({"abstain_below": 2})", R"([1])"}) {
    absl::Status s = UpdateCalibration(bundle, bad);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << bad;
    if (std::string(bad) != "[1]") {
      EXPECT_THAT(std::string(s.message()), ::testing::HasSubstr("knowledge.json")) << bad;
    }
  }
  c = ReadCalibration(bundle);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->retrieval.all, Retrieval::kHybrid);
  EXPECT_FLOAT_EQ(c->fusion.lexical_weight, 0.5f);
}

}  // namespace
}  // namespace knowd::knowledge
