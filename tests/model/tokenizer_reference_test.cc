// knowd's SentencePiece tokenizer against libsentencepiece itself: the same ids from Encode and
// the same text from Decode, on llama.cpp's vectors and on thousands of random strings, for the
// shipped models and for variants that switch on the options those models leave off
// (extra-whitespace removal, no dummy prefix, user-defined and unused pieces, no byte fallback).
// Also checks that the ModelProto knowd writes for a GGUF vocabulary is one libsentencepiece
// accepts and tokenizes identically with.
#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "model/tensor_file.h"
#include "model/tokenizer.h"
#include "model/tokenizer_internal.h"
#include "tests/model/sentencepiece_reference.h"
#include "tests/model/tokenizer_test_util.h"

namespace knowd {
namespace {

using tokenizer_internal::PieceType;
using tokenizer_internal::SentencePieceModel;
using tokenizer_testing::Ids;
using tokenizer_testing::Quoted;
using tokenizer_testing::SentencePieceReference;

struct Subjects {
  std::unique_ptr<Tokenizer> ours;
  std::unique_ptr<SentencePieceReference> reference;
};

Subjects FromModel(const SentencePieceModel& model) {
  Subjects s;
  std::string error;
  s.reference = SentencePieceReference::FromSerialized(
      tokenizer_internal::SerializeSentencePieceModel(model), &error);
  EXPECT_NE(s.reference, nullptr) << error;
  absl::StatusOr<std::unique_ptr<Tokenizer>> ours =
      tokenizer_internal::MakeSentencePieceTokenizer(model, "test model");
  EXPECT_TRUE(ours.ok()) << ours.status();
  if (ours.ok()) s.ours = *std::move(ours);
  return s;
}

SentencePieceModel StoriesModel() {
  const std::string path = tokenizer_testing::StoriesTokenizerModel();
  absl::StatusOr<SentencePieceModel> model =
      tokenizer_internal::ParseSentencePieceModel(tokenizer_testing::ReadBytes(path), path);
  EXPECT_TRUE(model.ok()) << model.status();
  return model.ok() ? *model : SentencePieceModel();
}

SentencePieceModel GgufModel(const std::string& path) {
  absl::StatusOr<std::unique_ptr<GgufFile>> gguf = GgufFile::Open(path);
  EXPECT_TRUE(gguf.ok()) << gguf.status();
  if (!gguf.ok()) return {};
  absl::StatusOr<SentencePieceModel> model = tokenizer_internal::SentencePieceModelFromGguf(**gguf);
  EXPECT_TRUE(model.ok()) << model.status();
  return model.ok() ? *model : SentencePieceModel();
}

std::vector<std::string> TestTexts(uint32_t seed, int random_count) {
  std::vector<std::string> texts;
  for (const auto& c : tokenizer_testing::ReadVocabCases(tokenizer_testing::SpmVocabGguf())) {
    texts.push_back(c.input);
  }
  std::mt19937 rng(seed);
  for (int i = 0; i < random_count; ++i) {
    texts.push_back(tokenizer_testing::RandomText(rng, /*malformed=*/i % 4 == 0));
  }
  return texts;
}

// Same ids and same decoded text for every text, and the same text for random id sequences.
void ExpectSameAsReference(const Subjects& s, uint32_t seed) {
  ASSERT_NE(s.ours, nullptr);
  ASSERT_NE(s.reference, nullptr);
  EXPECT_EQ(s.ours->vocab_size(), s.reference->vocab_size());
  EXPECT_EQ(s.ours->bos_id(), s.reference->bos_id());
  EXPECT_EQ(s.ours->eos_id(), s.reference->eos_id());
  int failures = 0;
  const std::vector<std::string> texts = TestTexts(seed, 2000);
  for (const std::string& text : texts) {
    const std::vector<int32_t> ours = s.ours->Encode(text, /*add_bos=*/false);
    const std::vector<int> theirs = s.reference->Encode(text);
    const std::vector<int32_t> expected(theirs.begin(), theirs.end());
    if (ours != expected && ++failures <= 10) {
      ADD_FAILURE() << "input " << Quoted(text) << "\n  libsentencepiece " << Ids(expected)
                    << "\n  knowd            " << Ids(ours);
    }
    EXPECT_EQ(s.ours->Decode(ours), s.reference->Decode(theirs)) << Quoted(text);
  }
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> length(0, 12);
  std::uniform_int_distribution<int> id(0, s.ours->vocab_size() - 1);
  for (int i = 0; i < 2000; ++i) {
    std::vector<int> ids(length(rng));
    for (int& v : ids) v = id(rng);
    const std::vector<int32_t> ids32(ids.begin(), ids.end());
    EXPECT_EQ(s.ours->Decode(ids32), s.reference->Decode(ids)) << Ids(ids32);
  }
  EXPECT_EQ(failures, 0) << "of " << texts.size() << " texts";
}

TEST(SentencePieceReference, StoriesTokenizerModel) {
  Subjects s;
  std::string error;
  s.reference = SentencePieceReference::FromSerialized(
      tokenizer_testing::ReadBytes(tokenizer_testing::StoriesTokenizerModel()), &error);
  ASSERT_NE(s.reference, nullptr) << error;
  absl::StatusOr<std::unique_ptr<Tokenizer>> ours =
      LoadSentencePieceTokenizer(tokenizer_testing::StoriesTokenizerModel());
  ASSERT_TRUE(ours.ok()) << ours.status();
  s.ours = *std::move(ours);
  ExpectSameAsReference(s, 1);
}

TEST(SentencePieceReference, RewrittenStoriesModelIsEquivalent) {
  // Parse + serialize keeps everything libsentencepiece looks at.
  ExpectSameAsReference(FromModel(StoriesModel()), 2);
}

TEST(SentencePieceReference, LlamaGgufVocabulary) {
  ExpectSameAsReference(FromModel(GgufModel(tokenizer_testing::SpmVocabGguf())), 3);
}

TEST(SentencePieceReference, StoriesGgufVocabulary) {
  ExpectSameAsReference(FromModel(GgufModel(tokenizer_testing::StoriesGguf())), 4);
}

TEST(SentencePieceReference, ExtraWhitespaceRemovalWithoutDummyPrefix) {
  SentencePieceModel model = StoriesModel();
  model.remove_extra_whitespaces = true;
  model.add_dummy_prefix = false;
  ExpectSameAsReference(FromModel(model), 5);
  model.add_dummy_prefix = true;
  ExpectSameAsReference(FromModel(model), 6);
}

TEST(SentencePieceReference, UserDefinedAndUnusedPieces) {
  SentencePieceModel model = GgufModel(tokenizer_testing::SpmVocabGguf());
  // Whole-piece matches, overlapping ones (the longest wins), and pieces BPE would otherwise
  // build by merging; unused pieces are split back into what they were merged from.
  int user_defined = 0, unused = 0;
  for (SentencePieceModel::Piece& p : model.pieces) {
    if (p.type != PieceType::kNormal) continue;
    if (p.text == "Hello" || p.text == "ing" || p.text == "▁▁" || p.text == "...") {
      p.type = PieceType::kUserDefined;
      ++user_defined;
    } else if (p.text == "▁the" || p.text == "▁world" || p.text == "or" || p.text == "на") {
      p.type = PieceType::kUnused;
      ++unused;
    }
  }
  EXPECT_EQ(user_defined, 4);
  EXPECT_EQ(unused, 4);
  model.pieces.push_back({"<|user|>", 0.0f, PieceType::kUserDefined});
  model.pieces.push_back({"<|user|>x", 0.0f, PieceType::kUserDefined});
  ExpectSameAsReference(FromModel(model), 7);
}

TEST(SentencePieceReference, UnknownRunsWithoutByteFallback) {
  SentencePieceModel model = StoriesModel();
  ASSERT_TRUE(model.byte_fallback);
  model.byte_fallback = false;
  for (SentencePieceModel::Piece& p : model.pieces) {
    if (p.type == PieceType::kByte) p.type = PieceType::kNormal;
  }
  ExpectSameAsReference(FromModel(model), 8);
}

TEST(SentencePieceProto, SerializeThenParseKeepsTheModel) {
  const SentencePieceModel model = GgufModel(tokenizer_testing::SpmVocabGguf());
  absl::StatusOr<SentencePieceModel> back = tokenizer_internal::ParseSentencePieceModel(
      tokenizer_internal::SerializeSentencePieceModel(model), "round trip");
  ASSERT_TRUE(back.ok()) << back.status();
  ASSERT_EQ(back->pieces.size(), model.pieces.size());
  for (size_t i = 0; i < model.pieces.size(); ++i) {
    EXPECT_EQ(back->pieces[i].text, model.pieces[i].text);
    EXPECT_EQ(back->pieces[i].score, model.pieces[i].score);
    EXPECT_EQ(back->pieces[i].type, model.pieces[i].type);
  }
  EXPECT_EQ(back->model_type, model.model_type);
  EXPECT_EQ(back->byte_fallback, model.byte_fallback);
  EXPECT_EQ(back->unk_id, model.unk_id);
  EXPECT_EQ(back->bos_id, model.bos_id);
  EXPECT_EQ(back->eos_id, model.eos_id);
  EXPECT_EQ(back->pad_id, model.pad_id);
  EXPECT_EQ(back->bos_piece, model.bos_piece);
  EXPECT_EQ(back->eos_piece, model.eos_piece);
  EXPECT_EQ(back->normalizer_name, model.normalizer_name);
  EXPECT_EQ(back->add_dummy_prefix, model.add_dummy_prefix);
  EXPECT_EQ(back->remove_extra_whitespaces, model.remove_extra_whitespaces);
  EXPECT_EQ(back->escape_whitespaces, model.escape_whitespaces);
}

}  // namespace
}  // namespace knowd
