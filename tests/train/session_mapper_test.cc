// Sessions: `knowd-train session` trains and exports a mapper on a small world's in-context tasks
// over the shipped knowd-tiny LM, and the engine (model/session_mapper.h with model/low_rank.h)
// reproduces libtorch's state after every chunk and the logits of a question under the final
// state within 1e-4. The state's size does not depend on the context's length.
#include "model/session_mapper.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "kernels/backend.h"
#include "knowledge/prompt.h"
#include "model/low_rank.h"
#include "model/tokenizer.h"
#include "model/transformer.h"
#include "nlohmann/json.hpp"
#include "tests/float_compare.h"
#include "tests/train/train_test_util.h"
#include "train/session.h"
#include "train/world.h"

namespace knowd::train {
namespace {

namespace fs = std::filesystem;
using knowd::testing::MaxAbsDiff;

class SessionTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    root_ = new std::string(TempDir("session"));
    const std::string source = std::string(KNOWD_SOURCE_DIR) + "/models/knowd-tiny";
    const std::string bundle = *root_ + "/bundle";
    fs::create_directories(bundle + "/adapter");
    for (const char* f : {"config.json", "model.safetensors", "tokenizer.model"}) {
      fs::copy_file(source + "/" + f, bundle + "/" + f);
    }
    WorldOptions world;
    world.people[static_cast<int>(Split::kPretrain)] = 20;
    world.people[static_cast<int>(Split::kAdapter)] = 120;
    world.people[static_cast<int>(Split::kValid)] = 10;
    world.people[static_cast<int>(Split::kTest)] = 120;
    world.icl_train_tasks_per_family = 1;
    world.icl_heldout_tasks_per_family = 1;
    world.icl_demonstrations = 48;
    world.icl_queries = 4;
    ASSERT_TRUE(WriteWorld(world, *root_ + "/world").ok());
    SessionTrainOptions options;
    options.data_dir = *root_ + "/world";
    options.bundle_dir = bundle;
    options.work_dir = *root_ + "/work";
    options.sites = "o,1.down,3.qkv";
    options.rank = 4;
    options.rank_out = 3;
    options.demos_per_chunk = 4;
    options.max_train_demos = 16;
    options.tasks_per_step = 2;
    options.queries_per_task = 2;
    options.steps = 6;
    options.lr = 2e-2;  // a few large steps: the exported factors are far from their start
    options.warmup = 1;
    options.eval_every = 0;
    options.log_every = 3;
    options.eval_demos = {0, 4};
    options.eval_queries = 2;
    const absl::Status trained = TrainSession(options);
    ASSERT_TRUE(trained.ok()) << trained;
  }
  static void TearDownTestSuite() {
    fs::remove_all(*root_);
    delete root_;
  }
  static std::string bundle() { return *root_ + "/bundle"; }
  static std::string* root_;
};
std::string* SessionTest::root_ = nullptr;

struct Engine {
  std::unique_ptr<Backend> backend = MakeCpuBackend(1);
  std::unique_ptr<Transformer> model;
  std::unique_ptr<SessionMapper> mapper;
  std::unique_ptr<Tokenizer> tokenizer;
};

Engine Load(const std::string& bundle) {
  Engine e;
  auto model = Transformer::Load(bundle, e.backend.get());
  EXPECT_TRUE(model.ok()) << model.status();
  if (!model.ok()) return e;
  e.model = *std::move(model);
  auto mapper = SessionMapper::Load(bundle + "/adapter", e.model.get());
  EXPECT_TRUE(mapper.ok()) << mapper.status();
  if (mapper.ok()) e.mapper = *std::move(mapper);
  auto tokenizer = LoadSentencePieceTokenizer(bundle + "/tokenizer.model");
  EXPECT_TRUE(tokenizer.ok()) << tokenizer.status();
  if (tokenizer.ok()) e.tokenizer = *std::move(tokenizer);
  return e;
}

// Logits of every token of `tokens` under `state` (or none).
std::vector<float> Logits(Engine& e, const std::vector<int32_t>& tokens,
                          const LowRankState* state) {
  auto cache = e.model->NewCache(static_cast<int>(tokens.size()));
  EXPECT_TRUE(cache.ok());
  SequenceStep step{cache->get(), tokens, true};
  step.update = state;
  std::vector<float> logits;
  EXPECT_TRUE(e.model->Forward({&step, 1}, &logits).ok());
  return logits;
}

TEST_F(SessionTest, TheExportedMapperDescribesItself) {
  std::ifstream in(bundle() + "/adapter/session_mapper.json");
  const nlohmann::json j = nlohmann::json::parse(in);
  EXPECT_EQ(j["format"], "knowd-session-mapper");
  EXPECT_EQ(j["rank"], 4);
  EXPECT_EQ(j["rank_out"], 3);
  // "o" on every layer of knowd-tiny (4), 1.down and 3.qkv, sorted by layer then projection.
  ASSERT_EQ(j["sites"].size(), 6u);
  EXPECT_EQ(j["sites"][0]["layer"], 0);
  EXPECT_EQ(j["sites"][0]["projection"], "o");
  EXPECT_EQ(j["sites"][2]["projection"], "down");
  EXPECT_EQ(j["sites"][4]["projection"], "qkv");
  EXPECT_EQ(j["sha256"].get<std::string>().size(), 64u);
  // The figures of the run: in-context and session accuracy per demonstration count.
  EXPECT_EQ(j["training"]["heldout"].size(), 2u);
  EXPECT_TRUE(j["training"]["heldout"][1].contains("session"));
}

TEST_F(SessionTest, TheEngineReproducesLibtorchsStatesAndLogits) {
  Engine e = Load(bundle());
  ASSERT_NE(e.mapper, nullptr);
  EXPECT_EQ(e.mapper->spec().sites.size(), 6u);
  EXPECT_EQ(e.mapper->state_floats(), 6 * 4 * 3);
  auto tasks = ReadIclTasks(*root_ + "/world", /*heldout=*/true);
  ASSERT_TRUE(tasks.ok()) << tasks.status();
  ASSERT_FALSE(tasks->empty());
  const IclTask& task = tasks->front();
  std::vector<std::vector<int32_t>> chunks;
  for (const std::string& text : IclContextChunks(task, 12, 4)) {
    chunks.push_back(e.tokenizer->Encode(text, true));
  }
  ASSERT_EQ(chunks.size(), task.context.size() + 3);
  const std::vector<int32_t> question =
      e.tokenizer->Encode(knowledge::QuestionPrompt(task.queries[0].input), true);
  auto reference = TorchSession(bundle(), chunks, question);
  ASSERT_TRUE(reference.ok()) << reference.status();
  ASSERT_EQ(reference->states.size(), chunks.size());

  // Chunk by chunk, as a session's appends arrive.
  std::vector<float> state(e.mapper->state_floats(), 0.0f);
  for (size_t i = 0; i < chunks.size(); ++i) {
    ASSERT_TRUE(e.mapper->Absorb({&chunks[i], 1}, &state).ok());
    EXPECT_LE(MaxAbsDiff(state, reference->states[i]), 1e-4) << "after chunk " << i;
  }
  // All at once (batched trunk passes): the same state.
  std::vector<float> at_once(e.mapper->state_floats(), 0.0f);
  ASSERT_TRUE(e.mapper->Absorb(chunks, &at_once).ok());
  EXPECT_LE(MaxAbsDiff(at_once, state), 1e-5);

  auto served = LowRankState::Create(&e.mapper->factors(), state);
  ASSERT_TRUE(served.ok()) << served.status();
  const std::vector<float> logits = Logits(e, question, served->get());
  EXPECT_LE(MaxAbsDiff(logits, reference->logits), 1e-4);
  // The update is not nothing: the question's logits moved.
  EXPECT_GT(MaxAbsDiff(logits, Logits(e, question, nullptr)), 1e-3);
}

TEST_F(SessionTest, TheStateIsTheSameSizeWhateverTheContext) {
  Engine e = Load(bundle());
  ASSERT_NE(e.mapper, nullptr);
  auto tasks = ReadIclTasks(*root_ + "/world", /*heldout=*/false);
  ASSERT_TRUE(tasks.ok());
  const IclTask& task = tasks->front();
  std::vector<float> small(e.mapper->state_floats(), 0.0f), large = small;
  std::vector<std::vector<int32_t>> few, many;
  for (const std::string& t : IclContextChunks(task, 4, 4))
    few.push_back(e.tokenizer->Encode(t, true));
  for (const std::string& t : IclContextChunks(task, 48, 4))
    many.push_back(e.tokenizer->Encode(t, true));
  ASSERT_TRUE(e.mapper->Absorb(few, &small).ok());
  ASSERT_TRUE(e.mapper->Absorb(many, &large).ok());
  EXPECT_EQ(small.size(), large.size());
  EXPECT_GT(MaxAbsDiff(small, large), 1e-4);  // more demonstrations, another state
}

TEST_F(SessionTest, BadChunksAndStatesAreRefusedAndChangeNothing) {
  Engine e = Load(bundle());
  ASSERT_NE(e.mapper, nullptr);
  std::vector<float> state(e.mapper->state_floats(), 0.5f);
  const std::vector<float> before = state;
  const std::vector<std::vector<int32_t>> too_short = {{e.tokenizer->bos_id()}};
  EXPECT_EQ(e.mapper->Absorb(too_short, &state).code(), absl::StatusCode::kInvalidArgument);
  std::vector<std::vector<int32_t>> too_long = {
      std::vector<int32_t>(e.mapper->spec().max_chunk_tokens + 1, 5)};
  too_long[0][0] = e.tokenizer->bos_id();
  EXPECT_EQ(e.mapper->Absorb(too_long, &state).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(state, before);
  std::vector<float> wrong(3, 0.0f);
  EXPECT_EQ(e.mapper->Absorb({}, &wrong).code(), absl::StatusCode::kInvalidArgument);
  // No mapper in an adapter directory: NOT_FOUND, which the daemon reports as "no sessions".
  EXPECT_EQ(SessionMapper::Load(*root_ + "/world", e.model.get()).status().code(),
            absl::StatusCode::kNotFound);
}

TEST_F(SessionTest, SessionChunksSplitTextAtLineEndsWithinTheLimit) {
  Engine e = Load(bundle());
  ASSERT_NE(e.tokenizer, nullptr);
  std::string text;
  for (int i = 0; i < 40; ++i) text += "Q: Kalo Ren: baker, chess\nA: blue\n";
  const int limit = 64;
  const auto chunks = SessionChunks(*e.tokenizer, text, limit);
  ASSERT_GT(chunks.size(), 1u);
  std::string joined;
  for (const auto& c : chunks) {
    EXPECT_LE(static_cast<int>(c.size()), limit);
    EXPECT_EQ(c[0], e.tokenizer->bos_id());
    const std::string piece = e.tokenizer->Decode({c.data() + 1, c.size() - 1});
    EXPECT_EQ(piece.back(), '\n');  // never mid-line
    joined += piece;
  }
  EXPECT_EQ(joined, text);
  // One line longer than a chunk is cut at the limit.
  const auto cut = SessionChunks(*e.tokenizer, std::string(2000, 'x'), limit);
  ASSERT_FALSE(cut.empty());
  EXPECT_EQ(static_cast<int>(cut[0].size()), limit);
  EXPECT_TRUE(SessionChunks(*e.tokenizer, "", limit).empty());
  // Messages are cut each on its own, in order: no chunk spans two.
  const std::vector<std::string> messages = {text, "Q: Ana Bel: pilot, golf\nA: red\n", ""};
  const auto of_messages = SessionChunksOfMessages(*e.tokenizer, messages, limit);
  ASSERT_EQ(of_messages.size(), chunks.size() + 1);
  for (size_t i = 0; i < chunks.size(); ++i) EXPECT_EQ(of_messages[i], chunks[i]) << i;
  EXPECT_EQ(of_messages.back(), SessionChunks(*e.tokenizer, messages[1], limit)[0]);
}

}  // namespace
}  // namespace knowd::train
