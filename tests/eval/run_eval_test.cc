// RunEval end to end: a tiny test split of the synthetic world, streamed into a real memory bank
// and answered by the shipped stories260K model. The model knows nothing of the world, so the
// figures are near zero; the test checks the report's structure and invariants, and that the mac
// modes are skipped with a reason, or run through the prefix path (with a stand-in Modulator,
// and with a random-weight adapter in the bundle).
#include <algorithm>
#include <array>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "bench/eval.h"
#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "knowledge/bundle.h"
#include "nlohmann/json.hpp"
#include "tests/model/random_adapter.h"
#include "train/world.h"

namespace knowd::bench {
namespace {

using Json = nlohmann::json;

const std::string kModel = std::string(KNOWD_SOURCE_DIR) + "/models/stories260K-hf";

class RunEvalTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = (std::filesystem::temp_directory_path() / "eval-test-XXXXXX").string();
    ASSERT_NE(mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
    train::WorldOptions world;
    world.people[static_cast<int>(train::Split::kTest)] = 14;
    const train::SplitData split = train::GenerateSplit(world, train::Split::kTest);
    std::ofstream passages(dir_ + "/test.passages.jsonl");
    for (const train::Passage& p : split.passages) passages << train::PassageToJson(p);
    std::ofstream questions(dir_ + "/test.questions.jsonl");
    for (const train::Question& q : split.questions) questions << train::QuestionToJson(q);
    passages_ = static_cast<int>(split.passages.size());
    questions_ = static_cast<int>(split.questions.size());
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  EvalOptions Options() const {
    EvalOptions o;
    o.bundle_dir = kModel;
    o.data_dir = dir_;
    o.report_path = dir_ + "/out/report.json";
    o.threads = 1;
    o.batch = 8;
    o.max_answer_tokens = 8;
    o.retention_passages = 5;
    o.bank_sizes = {10};
    o.print_table = false;
    return o;
  }

  Json ReadReport() const {
    std::ifstream in(dir_ + "/out/report.json");
    std::stringstream text;
    text << in.rdbuf();
    return Json::parse(text.str());
  }

  std::string dir_;
  int passages_ = 0;
  int questions_ = 0;
};

void ExpectScore(const Json& mode, const std::string& name) {
  ASSERT_EQ(mode["status"], "ok") << name;
  EXPECT_GE(mode["em"].get<double>(), 0.0) << name;
  EXPECT_LE(mode["em"].get<double>(), 1.0) << name;
  EXPECT_GE(mode["f1"].get<double>(), mode["em"].get<double>()) << name;
  EXPECT_LE(mode["f1"].get<double>(), 1.0) << name;
}

TEST_F(RunEvalTest, WritesReportTableAndPlotAndSkipsMacWithoutAdapter) {
  EvalOptions o = Options();
  o.limit = 12;
  ASSERT_TRUE(RunEval(o).ok());
  const Json r = ReadReport();
  EXPECT_EQ(r["split"], "test");
  EXPECT_EQ(r["stream_passages"].get<int>(), passages_);
  EXPECT_EQ(r["questions"].get<int>(), 12);
  for (const char* name : {"closed-book", "oracle", "rag-top1", "rag-top3", "rag-subject"}) {
    ExpectScore(r["modes"][name], name);
    EXPECT_EQ(r["modes"][name]["questions"].get<int>(), 12);
  }
  for (const char* name : {"mac", "mac+rag"}) {
    EXPECT_EQ(r["modes"][name]["status"], "skipped") << name;
    EXPECT_EQ(r["modes"][name]["reason"], "mode unavailable: no adapter in the bundle") << name;
    EXPECT_FALSE(r["modes"][name].contains("em")) << name;
    EXPECT_EQ(r["retention"]["modes"][name]["status"], "skipped") << name;
  }

  const Json& ret = r["retrieval"];
  EXPECT_EQ(ret["questions"].get<int>(), 12);
  for (const char* ranking : {"bm25", "dense", "hybrid"}) {
    const double r1 = ret[ranking]["recall_at_1"], r5 = ret[ranking]["recall_at_5"];
    EXPECT_GE(r1, 0.0) << ranking;
    EXPECT_GE(r5, r1) << ranking;
    EXPECT_LE(r5, 1.0) << ranking;
  }
  // Names are unique to a person, so BM25 on the question finds its passage among 16 or so.
  EXPECT_GE(ret["bm25"]["recall_at_5"].get<double>(), 0.5);

  const Json& curve = r["em_vs_stored"];
  EXPECT_EQ(curve["bank_sizes"], Json({5, 10, passages_}));
  for (const char* name : {"closed-book", "oracle", "rag-top1", "rag-top3", "rag-subject"}) {
    ASSERT_EQ(curve["series"][name].size(), 3u) << name;
  }
  EXPECT_FALSE(curve["series"].contains("mac"));
  EXPECT_TRUE(r["retention"]["modes"]["rag-top1"].contains("em_right_after"));
  EXPECT_EQ(r["retention"]["modes"]["oracle"]["status"], "not applicable");
  EXPECT_GE(r["updates"]["questions"].get<int>(), 0);

  const Json& bytes = r["storage_bytes"];
  EXPECT_GT(bytes["mean_passage_tokens"].get<double>(), 10.0);
  // stories260K: 5 layers, kv_dim 32: 2 * 5 * 32 floats per token.
  EXPECT_NEAR(bytes["kv_cache_f32_per_passage"].get<double>(),
              bytes["mean_passage_tokens"].get<double>() * 2 * 5 * 32 * 4, 1e-6);
  EXPECT_EQ(bytes["modulation"]["status"], "skipped");
  EXPECT_EQ(r["examples"].size(), 10u);

  EXPECT_TRUE(std::filesystem::exists(dir_ + "/out/report.md"));
  std::ifstream png(dir_ + "/out/report.png", std::ios::binary);
  std::string head(8, '\0');
  png.read(head.data(), 8);
  EXPECT_EQ(head, std::string("\x89PNG\r\n\x1a\n", 8));
}

// Stands in for a trained adapter: constant keys and a zero prefix of two rows per layer. Counts
// its Modulate calls without and with text (the mac and the mac+rag prefix) in `calls`.
class FakeModulator : public Modulator {
 public:
  FakeModulator(int layers, int kv_dim, std::shared_ptr<std::array<int, 2>> calls)
      : layers_(layers), kv_dim_(kv_dim), calls_(std::move(calls)) {}
  int latent_rows() const override { return 2; }
  int latent_cols() const override { return 4; }
  int key_dim() const override { return 8; }
  int max_candidates() const override { return 16; }
  storage::Fingerprint fingerprint() const override { return {"fake", ""}; }
  absl::Status EncodePassages(std::span<const std::vector<int32_t>> passages,
                              std::vector<storage::EncodedPassage>* out) override {
    out->clear();
    for (const std::vector<int32_t>& ids : passages) {
      storage::EncodedPassage e;
      e.latents.assign(8, 0.5f);
      e.key.assign(8, 0.0f);
      e.key[ids.size() % 8] = 1.0f;
      out->push_back(std::move(e));
    }
    return absl::OkStatus();
  }
  absl::StatusOr<QuestionCode> EncodeQuestion(std::span<const int32_t>) override {
    QuestionCode code;
    code.key.assign(8, 0.25f);
    code.retrieval_key = code.key;
    return code;
  }
  bool has_text_head() const override { return true; }
  absl::StatusOr<PrefixKv> Modulate(const QuestionCode&,
                                    std::span<const std::span<const float>> latents,
                                    bool with_text) override {
    if (latents.empty() || latents[0].size() != 8) {
      return absl::InvalidArgumentError("expected latents of 2x4");
    }
    ++(*calls_)[with_text ? 1 : 0];
    PrefixKv p;
    p.rows = 2;
    p.keys.assign(static_cast<size_t>(layers_) * 2 * kv_dim_, 0.0f);
    p.values = p.keys;
    return p;
  }

 private:
  int layers_;
  int kv_dim_;
  std::shared_ptr<std::array<int, 2>> calls_;
};

TEST_F(RunEvalTest, RunsMacModesThroughAModulator) {
  EvalOptions o = Options();
  o.limit = 6;
  o.examples = 2;
  auto calls = std::make_shared<std::array<int, 2>>();
  o.modulator_loader = [calls](const std::string&, Transformer& model,
                               const Tokenizer&) -> absl::StatusOr<std::unique_ptr<Modulator>> {
    return std::make_unique<FakeModulator>(model.config().num_layers, model.config().kv_dim(),
                                           calls);
  };
  ASSERT_TRUE(RunEval(o).ok());
  // Each mac question gets the mac prefix and the mac+rag prefix (the text head's).
  EXPECT_GT((*calls)[0], 0);
  EXPECT_EQ((*calls)[1], (*calls)[0]);
  const Json r = ReadReport();
  for (const char* name :
       {"closed-book", "oracle", "rag-top1", "rag-top3", "rag-subject", "mac", "mac+rag"}) {
    ExpectScore(r["modes"][name], name);
  }
  EXPECT_EQ(r["retrieval"]["dense_key"], "adapter");
  EXPECT_EQ(r["storage_bytes"]["modulation"]["bytes"].get<int64_t>(), 48);
  EXPECT_TRUE(r["retention"]["modes"]["mac"].contains("em_after_stream"));
  EXPECT_EQ(r["em_vs_stored"]["series"]["mac+rag"].size(), 3u);
}

// The shipped knowd-tiny bundle (which reads this world) answers every question of the split with
// every mode; each relation's scores are those of its questions' listed answers, and the relations
// add up to the whole.
TEST_F(RunEvalTest, ScoresEachRelationAsItsQuestionsAnswers) {
  EvalOptions o = Options();
  o.bundle_dir = std::string(KNOWD_SOURCE_DIR) + "/models/knowd-tiny";
  o.examples = -1;
  o.max_answer_tokens = 12;
  ASSERT_TRUE(RunEval(o).ok());
  const Json r = ReadReport();
  ASSERT_EQ(r["examples"].size(), static_cast<size_t>(questions_));
  const std::vector<std::string> modes = {"closed-book", "oracle", "rag-top1", "rag-top3",
                                          "rag-subject", "mac",    "mac+rag"};
  std::map<std::string, std::map<std::string, std::pair<double, double>>> sums;  // em, f1
  std::map<std::string, int> counts;
  for (const Json& e : r["examples"]) {
    const std::string relation = e["relation"];
    ++counts[relation];
    for (const std::string& m : modes) {
      const std::string predicted = e["predicted"][m];
      sums[relation][m].first += ExactMatch(predicted, e["gold"].get<std::string>());
      sums[relation][m].second += TokenF1(predicted, e["gold"].get<std::string>());
    }
  }
  ASSERT_EQ(r["by_relation"].size(), counts.size());
  EXPECT_GE(counts.size(), 6u);  // a 14-person split asks about most of the nine relations
  for (const std::string& m : modes) {
    double weighted_em = 0;
    for (const auto& [relation, n] : counts) {
      const Json& got = r["by_relation"][relation];
      ASSERT_EQ(got["questions"].get<int>(), n) << relation;
      EXPECT_NEAR(got["modes"][m]["em"].get<double>(), sums[relation][m].first / n, 1e-12)
          << relation << " " << m;
      EXPECT_NEAR(got["modes"][m]["f1"].get<double>(), sums[relation][m].second / n, 1e-12)
          << relation << " " << m;
      weighted_em += got["modes"][m]["em"].get<double>() * n;
    }
    EXPECT_NEAR(weighted_em / questions_, r["modes"][m]["em"].get<double>(), 1e-12) << m;
  }
  // Real answers: the reader with the passage in context gets most right, closed-book next to
  // none (the world's values are invented).
  EXPECT_GT(r["modes"]["oracle"]["em"].get<double>(), 0.5);
  EXPECT_LT(r["modes"]["closed-book"]["em"].get<double>(), 0.2);
  std::ifstream md(dir_ + "/out/report.md");
  std::stringstream table;
  table << md.rdbuf();
  EXPECT_NE(table.str().find("| birth_year | " + std::to_string(counts["birth_year"]) + " |"),
            std::string::npos)
      << table.str();
}

TEST_F(RunEvalTest, AdapterThatCannotLoadIsReportedNotFailed) {
  std::unique_ptr<Backend> backend = MakeCpuBackend(1);
  absl::StatusOr<std::unique_ptr<Transformer>> model = Transformer::Load(kModel, backend.get());
  ASSERT_TRUE(model.ok()) << model.status();
  absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer = LoadTokenizer(kModel);
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  absl::StatusOr<std::unique_ptr<Modulator>> none =
      LoadBundleModulator(kModel, **model, **tokenizer);
  EXPECT_EQ(none.status().message(), "mode unavailable: no adapter in the bundle");
  std::filesystem::create_directories(dir_ + "/bundle/adapter");
  absl::StatusOr<std::unique_ptr<Modulator>> empty =
      LoadBundleModulator(dir_ + "/bundle", **model, **tokenizer);
  EXPECT_FALSE(empty.ok());
  EXPECT_EQ(empty.status().message().rfind("mode unavailable: ", 0), 0u) << empty.status();
  EXPECT_NE(empty.status().message().find("adapter.json"), std::string::npos) << empty.status();
}

// The default loader with a real (random-weight) adapter in the bundle: the mac modes run on
// the engine's adapter networks, and the bank stores its latents and keys.
TEST_F(RunEvalTest, RunsMacModesWithTheBundlesAdapter) {
  const std::string bundle = dir_ + "/bundle";
  std::filesystem::create_directories(bundle);
  for (const char* f : {"config.json", "model.safetensors", "tokenizer.model"}) {
    std::filesystem::create_symlink(kModel + "/" + f, bundle + "/" + f);
  }
  std::unique_ptr<Backend> backend = MakeCpuBackend(1);
  absl::StatusOr<std::unique_ptr<Transformer>> model = Transformer::Load(kModel, backend.get());
  ASSERT_TRUE(model.ok()) << model.status();
  ASSERT_TRUE(testing::WriteRandomAdapter(bundle + "/adapter", (*model)->config(),
                                          testing::SmallAdapterSpec(), 3)
                  .ok());
  EvalOptions o = Options();
  o.bundle_dir = bundle;
  o.limit = 6;
  o.examples = 2;
  ASSERT_TRUE(RunEval(o).ok());
  const Json r = ReadReport();
  for (const char* name :
       {"closed-book", "oracle", "rag-top1", "rag-top3", "rag-subject", "mac", "mac+rag"}) {
    ExpectScore(r["modes"][name], name);
    EXPECT_EQ(r["modes"][name]["questions"].get<int>(), 6) << name;
  }
  EXPECT_EQ(r["retrieval"]["dense_key"], "adapter");
  // 4 x 16 int8 latents (the default format) with an f32 scale per row, and 8 f32 key values.
  EXPECT_EQ(r["storage_bytes"]["modulation"]["bytes"].get<int64_t>(), 4 * 16 + 4 * 4 + 8 * 4);
  EXPECT_EQ(r["storage_bytes"]["modulation"]["latent_format"], "int8");
  EXPECT_TRUE(r["examples"][0]["predicted"].contains("mac"));
  EXPECT_EQ(r["mac"]["text_head"], false);
  EXPECT_EQ(r["mac"]["rag_prefix_key_scale"], 1.0);
  // A key scale for a mac+rag head this adapter does not have is an error, not ignored.
  o.rag_prefix_key_scale = 0.5;
  absl::Status refused = RunEval(o);
  EXPECT_EQ(refused.code(), absl::StatusCode::kFailedPrecondition) << refused;
  EXPECT_NE(refused.message().find("--rag-prefix-key-scale"), std::string::npos) << refused;
}

// "Nothing in memory": with a threshold, the report says how many questions about people never
// streamed (another split), about people forgotten after the stream, and of the split's own
// questions fall below it, and what abstaining costs each memory mode's EM; the table says so.
TEST_F(RunEvalTest, MeasuresNothingInMemory) {
  train::WorldOptions world;
  world.people[static_cast<int>(train::Split::kValid)] = 6;
  const train::SplitData valid = train::GenerateSplit(world, train::Split::kValid);
  {
    std::ofstream passages(dir_ + "/valid.passages.jsonl");
    for (const train::Passage& p : valid.passages) passages << train::PassageToJson(p);
    std::ofstream questions(dir_ + "/valid.questions.jsonl");
    for (const train::Question& q : valid.questions) questions << train::QuestionToJson(q);
  }
  EvalOptions o = Options();
  o.limit = 8;
  o.abstain_below = 0.5;
  o.forget_subjects = 2;
  o.print_table = true;
  ::testing::internal::CaptureStdout();
  const absl::Status ran = RunEval(o);
  const std::string table = ::testing::internal::GetCapturedStdout();
  ASSERT_TRUE(ran.ok()) << ran;
  const Json r = ReadReport();
  ASSERT_TRUE(r.contains("abstention")) << r.dump(2);
  const Json& ab = r["abstention"];
  EXPECT_EQ(ab["threshold"].get<double>(), 0.5);
  EXPECT_EQ(ab["source"], "--abstain-below");
  EXPECT_EQ(ab["unknown"]["split"], "valid");  // the default for the test split
  EXPECT_EQ(ab["forgotten"]["subjects"].get<int>(), 2);
  for (const char* what : {"known", "unknown", "forgotten"}) {
    const Json& m = ab[what];
    const int questions = m["questions"].get<int>(), abstained = m["abstained"].get<int>();
    EXPECT_GT(questions, 0) << what;
    EXPECT_GE(abstained, 0) << what;
    EXPECT_LE(abstained, questions) << what;
    EXPECT_DOUBLE_EQ(m["rate"].get<double>(), abstained / static_cast<double>(questions)) << what;
  }
  // As many unknown questions as the split's own (the valid split has more).
  EXPECT_EQ(ab["unknown"]["questions"].get<int>(), 8);
  // Names the bank never held: (nearly) always refused; the stored people's questions rarely.
  EXPECT_GE(ab["unknown"]["rate"].get<double>(), 0.75) << ab.dump(2);
  EXPECT_LT(ab["known"]["rate"].get<double>(), ab["unknown"]["rate"].get<double>()) << ab.dump(2);
  // Each memory mode the eval ran: EM with and without abstaining, and the difference.
  ASSERT_TRUE(ab["modes"].contains("rag-subject")) << ab.dump(2);
  for (const auto& [mode, m] : ab["modes"].items()) {
    EXPECT_LE(m["em"].get<double>(), m["em_without_abstention"].get<double>()) << mode;
    EXPECT_NEAR(m["em_lost"].get<double>(),
                m["em_without_abstention"].get<double>() - m["em"].get<double>(), 1e-12)
        << mode;
  }
  EXPECT_NE(table.find("Nothing in memory (relevance below "), std::string::npos) << table;
  EXPECT_NE(table.find("questions about people never streamed (valid split)"), std::string::npos)
      << table;

  // Without the other split in the data directory: said, not measured.
  std::filesystem::remove(dir_ + "/valid.questions.jsonl");
  std::filesystem::remove(dir_ + "/valid.passages.jsonl");
  o.print_table = false;
  ASSERT_TRUE(RunEval(o).ok());
  const Json without = ReadReport()["abstention"];
  EXPECT_EQ(without["unknown"]["split"], "valid (not in the data directory: not measured)");
  EXPECT_EQ(without["unknown"]["questions"].get<int>(), 0);
}

// --calibrate-retrieval: recall of every retrieval and fusion weighting on the split, the best
// written to the bundle's knowledge.json (keeping its other keys), no answers; the next eval (and
// the daemon) then retrieves with them.
TEST_F(RunEvalTest, CalibratesRetrievalIntoTheBundle) {
  const std::string bundle = dir_ + "/bundle";
  std::filesystem::copy(kModel, bundle, std::filesystem::copy_options::recursive);
  std::ofstream(bundle + "/knowledge.json") << R"({"abstain_below": 0.25})";
  EvalOptions o = Options();
  o.bundle_dir = bundle;
  o.calibrate_retrieval = true;
  {
    absl::Status s = RunEval(o);
    ASSERT_TRUE(s.ok()) << s;
  }
  EXPECT_FALSE(std::filesystem::exists(o.report_path));
  std::ifstream in(bundle + "/knowledge.json");
  const Json j = Json::parse(in);
  EXPECT_EQ(j["abstain_below"].get<double>(), 0.25);
  const Json& r = j["retrieval"];
  ASSERT_EQ(r["grid"].size(), 49u);
  auto better = [](const Json& a, const Json& b) {
    return a["recall_at_1"].get<double>() != b["recall_at_1"].get<double>()
               ? a["recall_at_1"].get<double>() > b["recall_at_1"].get<double>()
               : a["recall_at_5"].get<double>() > b["recall_at_5"].get<double>();
  };
  // The recorded weighting is the grid's first best, and its figures are the hybrid ones.
  size_t best = 0;
  for (size_t g = 1; g < r["grid"].size(); ++g) {
    if (better(r["grid"][g], r["grid"][best])) best = g;
  }
  EXPECT_EQ(r["rrf_k"], r["grid"][best]["rrf_k"]);
  EXPECT_EQ(r["lexical_weight"], r["grid"][best]["lexical_weight"]);
  EXPECT_EQ(r["dense_weight"].get<double>(), 1.0);
  EXPECT_EQ(r["hybrid"]["recall_at_1"], r["grid"][best]["recall_at_1"]);
  // The default is the best of the three; BM25 finds this world's names (recall@5 >= 0.5 above).
  const std::string chosen = r["default"];
  const Json& chosen_recall = r[chosen];
  for (const char* other : {"lexical", "dense", "hybrid"}) {
    EXPECT_FALSE(better(r[other], chosen_recall)) << other << " beats " << chosen;
  }
  EXPECT_GE(r["lexical"]["recall_at_5"].get<double>(), 0.5);

  // The next eval fuses with the chosen weights; without an adapter it serves lexical retrieval,
  // as the daemon does.
  o.calibrate_retrieval = false;
  o.limit = 4;
  {
    absl::Status s = RunEval(o);
    ASSERT_TRUE(s.ok()) << s;
  }
  const Json report = ReadReport();
  for (const char* mode : {"search", "rag", "mac", "mac+rag"}) {
    EXPECT_EQ(report["retrieval"]["served"][mode], "lexical") << mode;
  }
  EXPECT_EQ(report["retrieval"]["fusion"]["rrf_k"], r["rrf_k"]);
  EXPECT_EQ(report["retrieval"]["fusion"]["lexical_weight"], r["lexical_weight"]);
}

// With an adapter, --calibrate-retrieval also measures every memory mode's EM with each
// retrieval and records each mode's best (ties to the cheaper one); knowledge.json reads back
// with them and the next eval serves them.
TEST_F(RunEvalTest, CalibratesEachModesRetrievalWithTheAdapter) {
  const std::string bundle = dir_ + "/tiny";
  std::filesystem::copy(std::string(KNOWD_SOURCE_DIR) + "/models/knowd-tiny", bundle,
                        std::filesystem::copy_options::recursive);
  std::filesystem::remove(bundle + "/knowledge.json");
  EvalOptions o = Options();
  o.bundle_dir = bundle;
  o.calibrate_retrieval = true;
  {
    absl::Status s = RunEval(o);
    ASSERT_TRUE(s.ok()) << s;
  }
  std::ifstream in(bundle + "/knowledge.json");
  const Json r = Json::parse(in)["retrieval"];
  const std::vector<std::string> order = {"lexical", "dense", "hybrid"};  // cheapest first
  for (const char* mode : {"rag", "mac", "mac+rag"}) {
    std::string best = order[0];
    for (const std::string& retrieval : order) {
      const double em = r["modes_em"][retrieval][mode].get<double>();
      EXPECT_GE(em, 0.0) << mode;
      if (em > r["modes_em"][best][mode].get<double>()) best = retrieval;
    }
    EXPECT_EQ(r["modes"][mode], best) << mode;
  }
  absl::StatusOr<knowledge::Calibration> c = knowledge::ReadCalibration(bundle);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(knowledge::RetrievalName(c->retrieval.For(knowledge::AskMode::kMac)),
            r["modes"]["mac"].get<std::string>());
  EXPECT_EQ(knowledge::RetrievalName(c->retrieval.all), r["default"].get<std::string>());

  o.calibrate_retrieval = false;
  o.limit = 4;
  {
    absl::Status s = RunEval(o);
    ASSERT_TRUE(s.ok()) << s;
  }
  const Json served = ReadReport()["retrieval"]["served"];
  for (const char* mode : {"rag", "mac", "mac+rag"}) EXPECT_EQ(served[mode], r["modes"][mode]);
  EXPECT_EQ(served["search"], r["default"]);
}

TEST_F(RunEvalTest, MissingDataIsAnError) {
  EvalOptions o = Options();
  o.data_dir = dir_ + "/nowhere";
  EXPECT_FALSE(RunEval(o).ok());
  o = Options();
  o.split = "nonsense";
  EXPECT_FALSE(RunEval(o).ok());
}

}  // namespace
}  // namespace knowd::bench
