// `knowd eval` as a user runs it: the real binary, its stdout and exit code.
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "gtest/gtest.h"
#include "tests/process_util.h"
#include "train/world.h"

namespace {

const std::string kKnowd = std::string(KNOWD_BINARY_DIR) + "/daemon/knowd";
const std::string kModel = std::string(KNOWD_SOURCE_DIR) + "/models/stories260K-hf";

// Appends its stdout and stderr to `out`; returns the exit code.
int RunKnowd(const std::string& args, std::string* out) {
  knowd::testing::CommandResult r = knowd::testing::RunCommand(kKnowd + " " + args, true);
  out->append(r.out);
  return r.exit_code;
}

TEST(KnowdEvalCli, PrintsTheTableAndWritesTheReportFiles) {
  std::string dir = (std::filesystem::temp_directory_path() / "eval-cli-XXXXXX").string();
  ASSERT_NE(mkdtemp(dir.data()), nullptr);
  knowd::train::WorldOptions world;
  world.people[static_cast<int>(knowd::train::Split::kValid)] = 6;
  const knowd::train::SplitData split =
      knowd::train::GenerateSplit(world, knowd::train::Split::kValid);
  {
    std::ofstream passages(dir + "/valid.passages.jsonl");
    for (const auto& p : split.passages) passages << knowd::train::PassageToJson(p);
    std::ofstream questions(dir + "/valid.questions.jsonl");
    for (const auto& q : split.questions) questions << knowd::train::QuestionToJson(q);
  }
  std::string out;
  EXPECT_EQ(
      RunKnowd("eval --bundle " + kModel + " --data " + dir +
                   " --split valid --limit 4 --batch 4 --threads 1 --report " + dir + "/r.json",
               &out),
      0)
      << out;
  EXPECT_NE(out.find("| rag-top3 |"), std::string::npos) << out;
  EXPECT_NE(out.find("| mac | skipped: mode unavailable: no adapter in the bundle"),
            std::string::npos)
      << out;
  EXPECT_TRUE(std::filesystem::exists(dir + "/r.json"));
  EXPECT_TRUE(std::filesystem::exists(dir + "/r.md"));
  EXPECT_TRUE(std::filesystem::exists(dir + "/r.png"));

  out.clear();
  EXPECT_EQ(RunKnowd("eval --bundle " + kModel + " --data " + dir + "/missing", &out), 1);
  EXPECT_EQ(out.rfind("knowd eval: ", 0), 0u) << out;
  out.clear();
  EXPECT_EQ(RunKnowd("eval --bundle " + kModel + " --data " + dir + " --mac-rag-text top3", &out),
            1);
  EXPECT_NE(out.find("--mac-rag-text must be subject or top1, not \"top3\""), std::string::npos)
      << out;
  std::filesystem::remove_all(dir);
}

}  // namespace
