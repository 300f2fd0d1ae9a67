// The `knowd` command-line contract (docs/cli.md), run as a user would: the real binary, its
// stdout and its exit code.
#include <filesystem>
#include <fstream>
#include <string>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/process_util.h"

namespace {

const std::string kKnowd = std::string(KNOWD_BINARY_DIR) + "/daemon/knowd";
const std::string kModels = std::string(KNOWD_SOURCE_DIR) + "/models";

using knowd::testing::CommandResult;

CommandResult RunKnowd(const std::string& args, bool with_stderr = false) {
  return knowd::testing::RunCommand(kKnowd + " " + args, with_stderr);
}

TEST(KnowdCli, GenerateGreedyFromBosOnGguf) {
  CommandResult r = RunKnowd("generate --model " + kModels +
                             "/stories260K/stories260K.gguf --prompt '' "
                             "--max-tokens 16");
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_EQ(r.out.rfind("Once upon a time, there was a little girl named Lily.", 0), 0u) << r.out;
}

TEST(KnowdCli, GenerateContinuesAPromptInHfLayoutAndDashOrUnderscoreFlags) {
  const std::string base = "generate --model " + kModels + "/stories260K-hf --prompt " +
                           "'Once upon a time, there was a little girl named'";
  CommandResult dash = RunKnowd(base + " --max-tokens 4");
  CommandResult underscore = RunKnowd(base + " --max_tokens 4");
  EXPECT_EQ(dash.exit_code, 0);
  EXPECT_EQ(dash.out.rfind(" Lily.", 0), 0u) << dash.out;
  EXPECT_EQ(dash.out, underscore.out);
}

TEST(KnowdCli, SamplingIsReproducibleWithASeed) {
  const std::string base = "generate --model " + kModels + "/stories260K-hf --prompt 'Once' " +
                           "--max-tokens 40 --temperature 1.0 ";
  CommandResult a = RunKnowd(base + "--seed 11");
  CommandResult b = RunKnowd(base + "--seed 11");
  CommandResult c = RunKnowd(base + "--seed 12");
  EXPECT_EQ(a.exit_code, 0);
  EXPECT_EQ(a.out, b.out);
  EXPECT_NE(a.out, c.out);
}

TEST(KnowdCli, TokenizePrintsIdsWithAndWithoutBos) {
  CommandResult r =
      RunKnowd("tokenize --model " + kModels + "/stories260K-hf --text 'Hello world'");
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_EQ(r.out, "1 346 306 414 263 304 341\n");
  CommandResult no_bos = RunKnowd("tokenize --tokenizer " + kModels +
                                  "/stories260K/stories260K.gguf --text 'Hello world' --no-bos");
  EXPECT_EQ(no_bos.exit_code, 0);
  EXPECT_EQ(no_bos.out, "346 306 414 263 304 341\n");
}

TEST(KnowdCli, CorruptModelIsRefusedWithTheReason) {
  const std::string dir = ::testing::TempDir() + "/knowd_cli_corrupt";
  std::filesystem::create_directories(dir);
  const std::string path = dir + "/truncated.gguf";
  {
    std::ifstream in(kModels + "/stories260K/stories260K.gguf", std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::ofstream out(path, std::ios::binary);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size() / 2));
  }
  CommandResult r = RunKnowd("generate --model " + path + " --prompt hi", /*with_stderr=*/true);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.out.find("truncated.gguf"), std::string::npos) << r.out;
  CommandResult missing = RunKnowd("generate --model /nonexistent/model.gguf --prompt hi", true);
  EXPECT_EQ(missing.exit_code, 1);
  EXPECT_NE(missing.out.find("/nonexistent/model.gguf"), std::string::npos) << missing.out;
}

// The mac question section of `knowd bench engine` runs the shipped adapter end to end: its
// prefix has the adapter's rows (1 + 8 slots x 4 rows per slot), and every stage reports a rate.
TEST(KnowdCli, BenchEngineMeasuresTheMacQuestionOfTheShippedAdapter) {
  const std::string bundle = kModels + "/knowd-tiny";
  CommandResult r = RunKnowd("bench engine --model " + bundle + " --adapter " + bundle +
                             "/adapter --mac-top-k 2 --threads 1 --prompt-tokens 32 "
                             "--decode-tokens 4 --json");
  ASSERT_EQ(r.exit_code, 0) << r.out;
  const nlohmann::json report = nlohmann::json::parse(r.out);
  EXPECT_EQ(report["parameters"], 1771200);
  const nlohmann::json& mac = report.at("mac");
  EXPECT_EQ(mac["prefix_rows"], 33);
  EXPECT_EQ(mac["top_k"], 2);
  for (const char* figure :
       {"passages_per_s", "passage_encode_gflops", "question_ms", "question_prefill_tokens_per_s",
        "question_prefill_after_prefix_tokens_per_s", "decode_b1_after_prefix_tokens_per_s",
        "decode_b8_after_prefix_tokens_per_s"}) {
    EXPECT_GT(mac[figure].get<double>(), 0) << figure;
  }
  // Without --adapter there is no mac section; a missing adapter is refused before measuring.
  CommandResult plain = RunKnowd("bench engine --model " + bundle +
                                 " --threads 1 --prompt-tokens 32 --decode-tokens 4 --json");
  ASSERT_EQ(plain.exit_code, 0) << plain.out;
  EXPECT_FALSE(nlohmann::json::parse(plain.out).contains("mac"));
  CommandResult missing = RunKnowd(
      "bench engine --model " + bundle + " --adapter /nonexistent/adapter --threads 1", true);
  EXPECT_EQ(missing.exit_code, 1);
  EXPECT_NE(missing.out.find("/nonexistent/adapter/adapter.json"), std::string::npos)
      << missing.out;
  EXPECT_EQ(missing.out.find("measuring"), std::string::npos) << missing.out;
  CommandResult too_many = RunKnowd("bench engine --model " + bundle + " --adapter " + bundle +
                                        "/adapter --mac-top-k 17 --threads 1",
                                    true);
  EXPECT_EQ(too_many.exit_code, 1);
  EXPECT_NE(too_many.out.find("--mac-top-k must be in [1, 16]"), std::string::npos) << too_many.out;
}

// `knowd bench scale` on a small world: the question keys find their own passages (the stored
// keys and the question keys come from the same retrieval heads), Flat is its own reference, and
// every mac question is answered, none abstained.
TEST(KnowdCli, BenchScaleFindsTheQuestionsOwnPassages) {
  const std::string out = ::testing::TempDir() + "/knowd_cli_bench_scale.json";
  CommandResult r = RunKnowd("bench scale --bundle " + kModels +
                             "/knowd-tiny --sizes 300 --world-passages 400 --indexes 'Flat;HNSW32' "
                             "--queries 60 --asks 5 --threads 1 --out " +
                             out);
  ASSERT_EQ(r.exit_code, 0) << r.out;
  std::ifstream in(out);
  const nlohmann::json report = nlohmann::json::parse(in);
  ASSERT_EQ(report["sizes"].size(), 1u);
  const nlohmann::json& size = report["sizes"][0];
  EXPECT_EQ(size["passages"], 300);
  const nlohmann::json& flat = size["indexes"][0];
  EXPECT_EQ(flat["factory"], "Flat");
  EXPECT_EQ(flat["recall_at_k_vs_reference"], 1.0);
  // The shipped heads find 99.5% of 200 questions' passages in the top 5 at 1,000 passages.
  EXPECT_GE(flat["gold_recall_at_k"].get<double>(), 0.9);
  EXPECT_EQ(size["indexes"][1]["factory"], "HNSW32");
  EXPECT_GE(size["indexes"][1]["recall_at_k_vs_reference"].get<double>(), 0.95);
  for (const nlohmann::json& index : size["indexes"]) {
    EXPECT_EQ(index["mac_asks"], 5) << index.dump();
    EXPECT_EQ(index["mac_abstained"], 0) << index.dump();
  }
  // The default index, reopened unchanged as a restart does, loads its saved FAISS file and BM25
  // database instead of rebuilding them.
  const nlohmann::json& automatic = size["indexes"].back();
  EXPECT_EQ(automatic["factory"], "auto");
  EXPECT_EQ(automatic["bank_reopen_loaded_indexes"], true) << automatic.dump();
}

// `knowd bench scale --synthetic-codes`: the world's text with random keys and latents, so costs
// only: no recall figures, every mac question still answered at both sizes and the two sizes'
// BM25 and dense mac questions compared. A cache directory that does not exist yet is created
// and keeps the world's text.
TEST(KnowdCli, BenchScaleWithSyntheticCodesMeasuresCostsOnly) {
  const std::string out = ::testing::TempDir() + "/knowd_cli_bench_scale_synthetic.json";
  const std::string cache = ::testing::TempDir() + "/knowd_cli_bench_scale_cache/new";
  std::filesystem::remove_all(cache);
  CommandResult r = RunKnowd("bench scale --bundle " + kModels +
                             "/knowd-tiny --sizes 200,400 --world-passages 400 --indexes Flat "
                             "--synthetic-codes --queries 20 --asks 5 --threads 1 --cache " +
                             cache + " --out " + out);
  ASSERT_EQ(r.exit_code, 0) << r.out;
  EXPECT_NE(r.out.find("synthetic (random) keys"), std::string::npos) << r.out;
  std::ifstream in(out);
  const nlohmann::json report = nlohmann::json::parse(in);
  EXPECT_EQ(report["codes"], "synthetic");
  ASSERT_EQ(report["sizes"].size(), 2u);
  for (const nlohmann::json& size : report["sizes"]) {
    for (const nlohmann::json& index : size["indexes"]) {
      EXPECT_FALSE(index.contains("recall_at_k_vs_reference")) << index.dump();
      EXPECT_FALSE(index.contains("gold_recall_at_k")) << index.dump();
      EXPECT_EQ(index["mac_asks"], 5) << index.dump();
    }
  }
  EXPECT_GT(report["mac_ask_p50_ratio_largest_to_smallest"].get<double>(), 0);
  EXPECT_GT(report["mac_ask_lexical_p50_ratio_largest_to_smallest"].get<double>(), 0);
  int tsv = 0;
  for (const auto& entry : std::filesystem::directory_iterator(cache)) {
    tsv += entry.path().extension() == ".tsv";
  }
  EXPECT_EQ(tsv, 1);

  CommandResult both = RunKnowd(
      "bench scale --bundle " + kModels + "/knowd-tiny --sizes 200 --synthetic-codes --encode-only",
      true);
  EXPECT_EQ(both.exit_code, 1);
  EXPECT_NE(both.out.find("drop --encode-only"), std::string::npos) << both.out;
}

// `knowd convert` writes a quantized GGUF that `knowd bench engine` then holds in that type, in
// about the file's bytes; `--dtype` converts on the way; an unknown type is refused by name.
TEST(KnowdCli, ConvertWritesQuantizedModelsThatStayQuantized) {
  const std::string out = ::testing::TempDir() + "/knowd_cli_convert_q8_0.gguf";
  CommandResult convert =
      RunKnowd("convert --model " + kModels + "/knowd-tiny --out " + out + " --dtype q8_0");
  ASSERT_EQ(convert.exit_code, 0) << convert.out;
  EXPECT_NE(convert.out.find("wrote " + out), std::string::npos) << convert.out;
  CommandResult bench = RunKnowd("bench engine --model " + out +
                                 " --threads 1 --prompt-tokens 32 --decode-tokens 4 --json");
  ASSERT_EQ(bench.exit_code, 0) << bench.out;
  const nlohmann::json report = nlohmann::json::parse(bench.out);
  EXPECT_EQ(report["weight_types"], "q8_0");
  const double file_bytes = report["file_bytes"].get<double>();
  EXPECT_EQ(file_bytes, static_cast<double>(std::filesystem::file_size(out)));
  EXPECT_LE(report["weight_bytes"].get<double>(), 1.1 * file_bytes);
  EXPECT_GE(report["weight_bytes"].get<double>(), 0.9 * file_bytes);
  EXPECT_GT(report["decode_b1_tokens_per_s"].get<double>(), 0);

  // knowd-tiny's rows of 192 are not whole 256-element super-blocks and fall back to q8_0; its
  // ffn_down rows of 512 take q4_K, or q6_K on the layers llama.cpp gives more bits.
  CommandResult mixed = RunKnowd("bench engine --model " + kModels +
                                 "/knowd-tiny --dtype q4_K_M --threads 1 --prompt-tokens 32 "
                                 "--decode-tokens 4 --json");
  ASSERT_EQ(mixed.exit_code, 0) << mixed.out;
  EXPECT_EQ(nlohmann::json::parse(mixed.out)["weight_types"], "q4_K, q6_K, q8_0");

  CommandResult unknown =
      RunKnowd("convert --model " + kModels + "/knowd-tiny --out " + out + " --dtype q4_1", true);
  EXPECT_EQ(unknown.exit_code, 1);
  EXPECT_NE(unknown.out.find("--dtype \"q4_1\" is not one of"), std::string::npos) << unknown.out;
}

TEST(KnowdCli, UsageErrorsExitWithTwo) {
  EXPECT_EQ(RunKnowd("").exit_code, 2);
  EXPECT_EQ(RunKnowd("frobnicate").exit_code, 2);
}

}  // namespace
