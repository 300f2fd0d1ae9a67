// SQuAD answer normalisation, exact match and token F1, checked against what the official
// evaluation script (normalize_answer, compute_exact, compute_f1 of evaluate-v2.0.py) gives.
#include <string>

#include "bench/eval.h"
#include "gtest/gtest.h"

namespace knowd::bench {
namespace {

TEST(NormalizeAnswer, LowercasesAndDropsPunctuationAndArticles) {
  EXPECT_EQ(NormalizeAnswer("The Cat!"), "cat");
  EXPECT_EQ(NormalizeAnswer("  A  quick,\tbrown fox.  "), "quick brown fox");
  EXPECT_EQ(NormalizeAnswer("an apple"), "apple");
  EXPECT_EQ(NormalizeAnswer("The the THE"), "");
}

TEST(NormalizeAnswer, PunctuationIsDeletedNotReplacedBySpace) {
  EXPECT_EQ(NormalizeAnswer("don't"), "dont");
  EXPECT_EQ(NormalizeAnswer("well-known"), "wellknown");
  EXPECT_EQ(NormalizeAnswer("U.S.A."), "usa");
  EXPECT_EQ(NormalizeAnswer("1,000"), "1000");
  // Punctuation goes first, so "the-end" becomes one word and keeps its "the".
  EXPECT_EQ(NormalizeAnswer("the-end"), "theend");
  EXPECT_EQ(NormalizeAnswer("(a)"), "");
}

TEST(NormalizeAnswer, ArticlesOnlyAsWholeWords) {
  EXPECT_EQ(NormalizeAnswer("theater"), "theater");
  EXPECT_EQ(NormalizeAnswer("Anne and Thea"), "anne and thea");
  EXPECT_EQ(NormalizeAnswer("a1 the2"), "a1 the2");
  // Non-ASCII letters are word characters: "thé" is not an article; the bytes are kept as is.
  EXPECT_EQ(NormalizeAnswer("Café thé the"), "café thé");
}

TEST(ExactMatch, ComparesNormalisedText) {
  EXPECT_TRUE(ExactMatch("The Eiffel Tower.", "eiffel tower"));
  EXPECT_TRUE(ExactMatch(" Ethdamith", "Ethdamith"));
  EXPECT_FALSE(ExactMatch("Ethdamith Rulhal", "Ethdamith"));
  EXPECT_TRUE(ExactMatch("", "the"));  // both normalise to ""
}

TEST(TokenF1, PartialOverlap) {
  // pred {cat, sat}, gold {cat, sat, on, mat}: precision 1, recall 1/2.
  EXPECT_NEAR(TokenF1("the cat sat", "cat sat on the mat"), 2.0 / 3.0, 1e-12);
  EXPECT_DOUBLE_EQ(TokenF1("Korlem Ulashor", "korlem ulashor."), 1.0);
  EXPECT_DOUBLE_EQ(TokenF1("dog", "cat"), 0.0);
}

TEST(TokenF1, CountsRepeatedTokensAtMostAsOftenAsGold) {
  // pred "b b" (articles gone), gold "b c": one common token; precision 1/2, recall 1/2.
  EXPECT_DOUBLE_EQ(TokenF1("a a b b", "b c"), 0.5);
  EXPECT_DOUBLE_EQ(TokenF1("b", "b b b b"), 2 * 1.0 * 0.25 / 1.25);
}

TEST(TokenF1, EmptyAnswersFollowTheV2Rule) {
  EXPECT_DOUBLE_EQ(TokenF1("", ""), 1.0);
  EXPECT_DOUBLE_EQ(TokenF1("the", "."), 1.0);  // both normalise to no tokens
  EXPECT_DOUBLE_EQ(TokenF1("x", ""), 0.0);
  EXPECT_DOUBLE_EQ(TokenF1("", "x"), 0.0);
}

TEST(AnswerScore, AveragesExactMatchAndF1) {
  AnswerScore s;
  EXPECT_EQ(s.count(), 0);
  EXPECT_EQ(s.em(), 0.0);
  s.Add("Paris", "paris");             // EM 1, F1 1
  s.Add("new york city", "new york");  // EM 0, F1 0.8
  s.Add("London", "Berlin");           // EM 0, F1 0
  EXPECT_EQ(s.count(), 3);
  EXPECT_DOUBLE_EQ(s.em(), 1.0 / 3.0);
  EXPECT_NEAR(s.f1(), (1.0 + 0.8 + 0.0) / 3.0, 1e-12);
}

}  // namespace
}  // namespace knowd::bench
