// SentencePiece training (libsentencepiece_train) read back by knowd's own tokenizer.
#include "train/tokenizer_train.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "knowledge/prompt.h"
#include "model/tokenizer.h"
#include "train/world.h"

namespace knowd::train {
namespace {

TEST(TokenizerTrainTest, TrainedModelLoadsAndRoundTrips) {
  WorldOptions o;
  o.people[0] = 300;
  const SplitData d = GenerateSplit(o, Split::kPretrain);
  std::vector<std::string> sentences;
  for (const Passage& p : d.passages) sentences.push_back(p.text);
  for (const Question& q : d.questions) {
    sentences.push_back("Q: " + q.question);
    sentences.push_back("A: " + q.answer);
  }
  const std::string path = (std::filesystem::temp_directory_path() /
                            ("knowd_spm_test_" + std::to_string(getpid()) + ".model"))
                               .string();
  TokenizerTrainOptions options;
  options.vocab_size = 600;
  ASSERT_EQ(TrainSentencePiece(sentences, path, options), "");

  absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer = LoadSentencePieceTokenizer(path);
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  EXPECT_EQ((*tokenizer)->vocab_size(), 600);
  EXPECT_EQ((*tokenizer)->bos_id(), 1);
  EXPECT_EQ((*tokenizer)->eos_id(), 2);

  // A prompt in the shared format (with its newlines) and passages of a split never seen.
  const SplitData test = GenerateSplit(o, Split::kTest);
  std::vector<std::string> texts = {
      knowledge::QaPrompt(test.passages[0].text, test.questions[0].question) + " " +
      test.questions[0].answer};
  for (int i = 0; i < 20; ++i) texts.push_back(test.passages[i].text);
  for (const std::string& text : texts) {
    const std::vector<int32_t> ids = (*tokenizer)->Encode(text, true);
    ASSERT_FALSE(ids.empty());
    EXPECT_EQ(ids[0], 1);
    EXPECT_EQ((*tokenizer)->Decode(ids), text);
  }
  // Names are spelled with several syllable pieces, never one opaque token.
  for (int i = 0; i < 50; ++i) {
    const std::string& name = test.passages[i].subject;
    const std::string last = name.substr(name.find(' ') + 1);
    EXPECT_GE((*tokenizer)->Encode(name, false).size(), 3u) << name;
    EXPECT_GE((*tokenizer)->Encode(last, false).size(), 2u) << last;
  }
  std::filesystem::remove(path);
}

// The in-context tasks' lines are short for the shipped knowd-tiny tokenizer (512 positions): the
// label words take one or two tokens, a demonstration about 20.
TEST(TokenizerTrainTest, InContextLinesAreShortForTheShippedTokenizer) {
  const std::string path = std::string(KNOWD_SOURCE_DIR) + "/models/knowd-tiny/tokenizer.model";
  if (!std::filesystem::exists(path)) GTEST_SKIP() << path << " is not in this checkout";
  absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer = LoadSentencePieceTokenizer(path);
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  const Tokenizer& tok = **tokenizer;
  WorldOptions o;
  o.icl_train_tasks_per_family = 2;
  o.icl_heldout_tasks_per_family = 2;
  o.icl_demonstrations = 32;
  const IclTaskSet tasks =
      GenerateIclTasks(o, GenerateSplit(o, Split::kAdapter), GenerateSplit(o, Split::kTest));
  std::vector<IclTask> all = tasks.train;
  all.insert(all.end(), tasks.heldout.begin(), tasks.heldout.end());
  const size_t answer_prefix = tok.Encode("A:", false).size();
  size_t lines = 0, tokens = 0;
  for (const IclTask& t : all) {
    size_t task_tokens = 0;
    for (const IclExample& e : t.demonstrations) {
      task_tokens += tok.Encode(IclDemonstration(e), false).size();
    }
    const double mean = static_cast<double>(task_tokens) / t.demonstrations.size();
    EXPECT_LE(mean, 36.0) << t.id << " " << t.family;
    tokens += task_tokens;
    lines += t.demonstrations.size();
    if (t.family.rfind("classify_", 0) != 0) continue;
    for (const IclMapping& m : t.mapping) {
      EXPECT_LE(tok.Encode("A: " + m.to, false).size() - answer_prefix, 2u) << m.to;
    }
  }
  ASSERT_GT(lines, 0u);
  const double mean = static_cast<double>(tokens) / lines;
  std::printf("in-context demonstrations: %.1f tokens on average (%zu lines)\n", mean, lines);
  EXPECT_LE(mean, 24.0);
}

}  // namespace
}  // namespace knowd::train
