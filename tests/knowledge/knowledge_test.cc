// The knowledge pipeline's pieces on real data: the shipped knowd-tiny tokenizer, a real memory
// bank with its lexical index, no adapter (rag and closed-book; tests/daemon/pipeline_test covers
// the adapter modes end to end).
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "knowledge/ask.h"
#include "knowledge/passages.h"
#include "knowledge/prompt.h"
#include "model/tokenizer.h"
#include "storage/memory_bank.h"
#include "tests/storage/bank_test_util.h"

namespace knowd::knowledge {
namespace {

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

}  // namespace
}  // namespace knowd::knowledge
