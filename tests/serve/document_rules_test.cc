#include "knowledge/document_rules.h"

#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace knowd {
namespace {

TEST(IsValidUtf8, AcceptsWellFormedText) {
  EXPECT_TRUE(IsValidUtf8(""));
  EXPECT_TRUE(IsValidUtf8("plain ascii"));
  EXPECT_TRUE(IsValidUtf8("caf\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80"));  // é € 😀
  EXPECT_TRUE(IsValidUtf8("\xF4\x8F\xBF\xBF"));                           // U+10FFFF
}

TEST(IsValidUtf8, RefusesMalformedText) {
  EXPECT_FALSE(IsValidUtf8("\x80"));              // lone continuation byte
  EXPECT_FALSE(IsValidUtf8("\xC0\xAF"));          // overlong '/'
  EXPECT_FALSE(IsValidUtf8("\xE0\x80\xAF"));      // overlong, 3 bytes
  EXPECT_FALSE(IsValidUtf8("\xED\xA0\x80"));      // surrogate U+D800
  EXPECT_FALSE(IsValidUtf8("\xF4\x90\x80\x80"));  // U+110000
  EXPECT_FALSE(IsValidUtf8("\xE2\x82"));          // truncated €
  EXPECT_FALSE(IsValidUtf8("ok\xFF"));
}

TEST(CheckText, EmptyOversizedAndInvalid) {
  EXPECT_TRUE(CheckText("text", "hello", 5).ok());
  EXPECT_EQ(CheckText("text", "", 5).message(), "text is empty");
  EXPECT_EQ(CheckText("text", "hello!", 5).message(), "text has 6 bytes; the limit is 5");
  EXPECT_EQ(CheckText("question", "\xC0\xAF", 5).message(), "question is not valid UTF-8");
}

// Text with nothing to say is not a document, a question or a query.
TEST(CheckText, BlankAndControlOnlyTextIsRefused) {
  const std::string blanks[] = {" ",
                                " \t\r\n ",
                                std::string(3, '\0'),
                                std::string("\0 \0\n", 4),
                                "\xC2\xA0\xE2\x80\x83\xE3\x80\x80",  // NBSP, em space, ideographic
                                "\xEF\xBB\xBF\xE2\x80\x8B",          // BOM, zero-width space
                                "\x01\x7F\xC2\x85"};                 // C0, DEL, C1
  for (const std::string& blank : blanks) {
    const absl::Status s = CheckText("text", blank, 100);
    EXPECT_EQ(s.message(), "text has no visible character (only whitespace or control characters)")
        << testing::PrintToString(blank);
  }
  EXPECT_TRUE(CheckText("text", std::string(" x\0", 3), 100).ok());
  EXPECT_TRUE(CheckText("text", "\xC2\xA0\xC3\xA9", 100).ok());  // NBSP then é
}

TEST(EscapeInvalidUtf8, ValidTextIsKeptAndBadBytesAreWrittenAsHex) {
  EXPECT_EQ(EscapeInvalidUtf8("caf\xC3\xA9"), "caf\xC3\xA9");
  EXPECT_EQ(EscapeInvalidUtf8("id-\xFF\xFE"), "id-\\xff\\xfe");
  EXPECT_EQ(EscapeInvalidUtf8("\xC3(x"), "\\xc3(x");
  EXPECT_TRUE(IsValidUtf8(EscapeInvalidUtf8("\xED\xA0\x80 \xF4\x90\x80\x80")));
}

TEST(CheckDocumentId, Rules) {
  EXPECT_TRUE(CheckDocumentId("doc-1/\xC3\xA9t\xC3\xA9").ok());
  EXPECT_TRUE(CheckDocumentId(std::string(256, 'x')).ok());
  EXPECT_EQ(CheckDocumentId("").code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CheckDocumentId(std::string(257, 'x')).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CheckDocumentId("a\nb").code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CheckDocumentId("a\x7F").code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CheckDocumentId("a\xC2\x85").code(), absl::StatusCode::kInvalidArgument);  // C1 NEL
  EXPECT_EQ(CheckDocumentId("\xFF").code(), absl::StatusCode::kInvalidArgument);
}

TEST(ResolveNamespace, EmptyIsDefault) {
  std::string ns;
  ASSERT_TRUE(ResolveNamespace("", &ns).ok());
  EXPECT_EQ(ns, "default");
  ASSERT_TRUE(ResolveNamespace("team-a", &ns).ok());
  EXPECT_EQ(ns, "team-a");
  EXPECT_FALSE(ResolveNamespace(std::string(256, 'n'), &ns).ok());
  EXPECT_FALSE(ResolveNamespace(std::string("a\0b", 3), &ns).ok());
}

// One token per started 5 code points of each word: a stand-in tokenizer with known counts.
int CountTokens(std::string_view text) {
  int tokens = 0;
  int run = 0;
  for (size_t i = 0; i <= text.size(); ++i) {
    const bool end = i == text.size() || text[i] == ' ' || text[i] == '\n';
    if (end) {
      tokens += (run + 4) / 5;
      run = 0;
    } else if ((static_cast<unsigned char>(text[i]) & 0xC0) != 0x80) {
      ++run;
    }
  }
  return tokens;
}

std::string Text(std::string_view text, const PassageSpan& s) {
  return std::string(text.substr(s.begin, s.end - s.begin));
}

TEST(SplitPassages, ShortTextIsOnePassage) {
  const std::string text = "Lily Moss was born in Varn.";
  std::vector<PassageSpan> spans = SplitPassages(text, 64, 8, CountTokens);
  ASSERT_EQ(spans.size(), 1u);
  EXPECT_EQ(Text(text, spans[0]), text);
  EXPECT_EQ(spans[0].context_begin, 0u);
  EXPECT_TRUE(SplitPassages("", 64, 8, CountTokens).empty());
}

TEST(SplitPassages, CoversTheTextWithinTheLimitAndPrefersSentenceEnds) {
  const std::string text = "one two three four. five six seven eight nine ten";
  std::vector<PassageSpan> spans = SplitPassages(text, 6, 0, CountTokens);
  ASSERT_EQ(spans.size(), 2u);
  EXPECT_EQ(Text(text, spans[0]), "one two three four. ");
  EXPECT_EQ(Text(text, spans[1]), "five six seven eight nine ten");
  std::string joined;
  for (const PassageSpan& s : spans) {
    EXPECT_LE(CountTokens(Text(text, s)), 6);
    EXPECT_EQ(s.context_begin, s.begin);
    joined += Text(text, s);
  }
  EXPECT_EQ(joined, text);
}

TEST(SplitPassages, EncoderContextOverlapsThePreviousPassage) {
  const std::string text = "a b c d e f g h i j k l";
  std::vector<PassageSpan> spans = SplitPassages(text, 4, 2, CountTokens);
  ASSERT_EQ(spans.size(), 3u);
  EXPECT_EQ(Text(text, spans[0]), "a b c d ");
  EXPECT_EQ(Text(text, spans[1]), "e f g h ");
  EXPECT_EQ(text.substr(spans[1].context_begin, spans[1].end - spans[1].context_begin),
            "c d e f g h ");
  EXPECT_EQ(text.substr(spans[2].context_begin, spans[2].end - spans[2].context_begin),
            "g h i j k l");
}

TEST(SplitPassages, LongWordIsCutBetweenCharacters) {
  std::string word;
  for (int i = 0; i < 30; ++i) word += "\xC3\xA9";  // 30 × é = 6 tokens
  const std::string text = "start " + word + " end";
  std::vector<PassageSpan> spans = SplitPassages(text, 4, 0, CountTokens);
  std::string joined;
  for (const PassageSpan& s : spans) {
    EXPECT_TRUE(IsValidUtf8(Text(text, s))) << Text(text, s);
    EXPECT_LE(CountTokens(Text(text, s)), 4);
    joined += Text(text, s);
  }
  EXPECT_EQ(joined, text);
  EXPECT_GE(spans.size(), 3u);
}

}  // namespace
}  // namespace knowd
