// The command lines' --help against docs/cli.md: every command of knowd and knowctl prints exactly
// its own flags, the same set the fenced usage block under its heading in docs/cli.md lists (so a
// flag added to the code and not to the docs, or the other way round, fails here); a flag of
// another command is refused with a message that names both commands.
#include <cstdlib>
#include <fstream>
#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/process_util.h"

namespace {

using knowd::testing::CommandResult;
using knowd::testing::RunCommand;
using ::testing::HasSubstr;
using Flags = std::set<std::string>;

// $KNOWD_TEST_KNOWD_BINARY runs the tests against another build of knowd.
const std::string kKnowd = std::getenv("KNOWD_TEST_KNOWD_BINARY") != nullptr
                               ? std::getenv("KNOWD_TEST_KNOWD_BINARY")
                               : std::string(KNOWD_BINARY_DIR) + "/daemon/knowd";
const std::string kKnowctl = std::string(KNOWD_BINARY_DIR) + "/client/knowctl";
const std::string kDocs = std::string(KNOWD_SOURCE_DIR) + "/docs/cli.md";

// Every command, as docs/cli.md's headings name them.
const std::vector<std::string> kCommands = {"knowd serve",
                                            "knowd generate",
                                            "knowd tokenize",
                                            "knowd bench engine",
                                            "knowd bench synth-model",
                                            "knowd bench storage",
                                            "knowd bench scale",
                                            "knowd bench peak",
                                            "knowd eval",
                                            "knowd convert",
                                            "knowd reencode",
                                            "knowctl",
                                            "knowctl ingest",
                                            "knowctl ask",
                                            "knowctl search",
                                            "knowctl get",
                                            "knowctl forget",
                                            "knowctl stats",
                                            "knowctl session create",
                                            "knowctl session append",
                                            "knowctl session ask",
                                            "knowctl session delete",
                                            "knowctl session list",
                                            "knowctl load"};

// "knowctl ask" -> the command line that runs it.
std::string Binary(const std::string& command) {
  return command.rfind("knowctl", 0) == 0 ? kKnowctl + command.substr(7)
                                          : kKnowd + command.substr(5);
}

// Every "--name" in `text`.
Flags FlagsIn(const std::string& text) {
  static const std::regex kFlag("--[a-z0-9][a-z0-9-]*");
  Flags flags;
  for (std::sregex_iterator it(text.begin(), text.end(), kFlag), end; it != end; ++it) {
    flags.insert(it->str());
  }
  return flags;
}

// The flags a --help output lists: the names that start its option lines ("  --max-tokens INT=128
// ...", "  -h,--help ..."), not the ones its descriptions mention. --help itself is left out.
Flags FlagsOfHelp(const std::string& help) {
  Flags flags;
  std::istringstream in(help);
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("  -", 0) != 0) continue;
    const std::string names = line.substr(2, line.find(' ', 2) - 2);
    for (const std::string& flag : FlagsIn(names)) {
      if (flag != "--help") flags.insert(flag);
    }
  }
  return flags;
}

// docs/cli.md: for each "## knowd X" / "### knowctl X" heading, the flags of the first fenced
// block under it (before the next heading).
std::map<std::string, Flags> DocumentedFlags() {
  std::ifstream in(kDocs);
  EXPECT_TRUE(in.good()) << kDocs;
  static const std::regex kHeading("#{1,6} +((knowd|knowctl)( [a-z0-9-]+)*) *");
  std::map<std::string, Flags> out;
  std::string command, block;
  bool in_block = false, block_done = false;
  for (std::string line; std::getline(in, line);) {
    std::smatch m;
    if (!in_block && line.rfind("#", 0) == 0) {
      command = std::regex_match(line, m, kHeading) ? m[1].str() : "";
      block_done = false;
      continue;
    }
    if (line.rfind("```", 0) == 0) {
      if (in_block && !command.empty() && !block_done) {
        out[command] = FlagsIn(block);
        block_done = true;
      }
      in_block = !in_block;
      block.clear();
      continue;
    }
    if (in_block) block += line + "\n";
  }
  return out;
}

std::string Describe(const Flags& flags) {
  std::string out;
  for (const std::string& f : flags) out += (out.empty() ? "" : " ") + f;
  return out.empty() ? "(none)" : out;
}

TEST(CliHelp, EveryCommandsHelpListsTheFlagsItsDocsList) {
  const std::map<std::string, Flags> docs = DocumentedFlags();
  for (const std::string& command : kCommands) {
    SCOPED_TRACE(command);
    const CommandResult help = RunCommand(Binary(command) + " --help");
    ASSERT_EQ(help.exit_code, 0) << help.out;
    const Flags printed = FlagsOfHelp(help.out);
    ASSERT_TRUE(docs.count(command))
        << "docs/cli.md has no usage block under a \"" << command << "\" heading";
    const Flags& documented = docs.at(command);
    Flags undocumented, unknown;
    for (const std::string& f : printed) {
      if (!documented.count(f)) undocumented.insert(f);
    }
    for (const std::string& f : documented) {
      if (!printed.count(f)) unknown.insert(f);
    }
    EXPECT_TRUE(undocumented.empty())
        << "flags of `" << command
        << " --help` missing from docs/cli.md: " << Describe(undocumented);
    EXPECT_TRUE(unknown.empty()) << "flags docs/cli.md gives `" << command
                                 << "` that its --help does not list: " << Describe(unknown);
  }
  // And the docs name no command that does not exist.
  for (const auto& [command, flags] : docs) {
    EXPECT_NE(std::find(kCommands.begin(), kCommands.end(), command), kCommands.end())
        << "docs/cli.md documents \"" << command << "\", which this test does not know";
  }
}

TEST(CliHelp, EvalListsExactlyItsFlagsWithDefaults) {
  const CommandResult help = RunCommand(kKnowd + " eval --help");
  ASSERT_EQ(help.exit_code, 0) << help.out;
  EXPECT_EQ(FlagsOfHelp(help.out), (Flags{"--bundle",
                                          "--data",
                                          "--split",
                                          "--limit",
                                          "--report",
                                          "--batch",
                                          "--threads",
                                          "--backend",
                                          "--mac-top-k",
                                          "--retrieval",
                                          "--latent-format",
                                          "--examples",
                                          "--mac-rag-text",
                                          "--rag-prefix-key-scale",
                                          "--abstain-below",
                                          "--calibrate-abstention",
                                          "--calibrate-retrieval",
                                          "--unknown-split",
                                          "--forget-subjects",
                                          "--sessions",
                                          "--demonstrations",
                                          "--queries",
                                          "--tasks"}))
      << help.out;
  EXPECT_THAT(help.out, HasSubstr("Usage: knowd eval"));
  EXPECT_THAT(help.out, HasSubstr("--bundle TEXT=models/knowd-tiny"));
  EXPECT_THAT(help.out, HasSubstr("--batch INT=16"));
  EXPECT_THAT(help.out, HasSubstr("--retrieval TEXT "));
}

TEST(CliHelp, ServeListsExactlyItsSettingsWithDefaultsAndVariables) {
  const CommandResult help = RunCommand(kKnowd + " serve --help");
  ASSERT_EQ(help.exit_code, 0) << help.out;
  EXPECT_EQ(FlagsOfHelp(help.out), (Flags{"--config",
                                          "--listen",
                                          "--http-listen",
                                          "--data-dir",
                                          "--model",
                                          "--adapter",
                                          "--tokens-file",
                                          "--tls-cert",
                                          "--tls-key",
                                          "--tls-client-ca",
                                          "--log-level",
                                          "--backend",
                                          "--threads",
                                          "--max-message-bytes",
                                          "--max-document-bytes",
                                          "--max-question-bytes",
                                          "--max-response-bytes",
                                          "--max-metadata-bytes",
                                          "--max-metadata-entries",
                                          "--max-future-seconds",
                                          "--http-threads",
                                          "--http-read-timeout-ms",
                                          "--max-passage-tokens",
                                          "--passage-overlap-tokens",
                                          "--ingest-max-batch",
                                          "--ingest-max-wait-ms",
                                          "--ingest-queue-size",
                                          "--forget-queue-size",
                                          "--ask-max-batch",
                                          "--ask-queue-size",
                                          "--ask-hold-ms",
                                          "--client-writes-in-flight",
                                          "--client-forgets-per-second",
                                          "--drain-timeout",
                                          "--session-ttl-seconds",
                                          "--default-top-k",
                                          "--subject-passages",
                                          "--default-max-tokens",
                                          "--default-retrieval",
                                          "--cluster-nats",
                                          "--shards",
                                          "--shard",
                                          "--replica",
                                          "--cluster-stream",
                                          "--cluster-stream-replicas",
                                          "--index-factory",
                                          "--index-search-params",
                                          "--latent-format"}))
      << help.out;
  EXPECT_THAT(help.out, HasSubstr("--listen TEXT=127.0.0.1:7070"));
  EXPECT_THAT(help.out, HasSubstr("[KNOWD_LISTEN]"));
  EXPECT_THAT(help.out, HasSubstr("--ask-max-batch INT=8"));
  EXPECT_THAT(help.out, HasSubstr("--drain-timeout FLOAT=30"));
}

TEST(CliHelp, ReencodeListsExactlyItsFlags) {
  const CommandResult help = RunCommand(kKnowd + " reencode --help");
  ASSERT_EQ(help.exit_code, 0) << help.out;
  EXPECT_EQ(FlagsOfHelp(help.out),
            (Flags{"--data-dir", "--bundle", "--adapter", "--threads", "--backend", "--index",
                   "--latent-format", "--keys-only"}))
      << help.out;
}

TEST(CliHelp, KnowctlAskListsExactlyItsFlags) {
  const CommandResult help = RunCommand(kKnowctl + " ask --help");
  ASSERT_EQ(help.exit_code, 0) << help.out;
  EXPECT_EQ(FlagsOfHelp(help.out),
            (Flags{"--mode", "--top-k", "--max-tokens", "--retrieval", "--explain", "--json"}))
      << help.out;
  EXPECT_THAT(help.out, HasSubstr("--top-k INT=0"));
}

TEST(CliHelp, KnowctlSessionCommandsListExactlyTheirFlags) {
  CommandResult help = RunCommand(kKnowctl + " session create --help");
  ASSERT_EQ(help.exit_code, 0) << help.out;
  EXPECT_EQ(FlagsOfHelp(help.out), (Flags{"--label", "--ttl-seconds", "--chunk-lines", "--json"}))
      << help.out;
  EXPECT_THAT(help.out, HasSubstr("--chunk-lines INT=0"));
  help = RunCommand(kKnowctl + " session append --help");
  ASSERT_EQ(help.exit_code, 0) << help.out;
  EXPECT_EQ(FlagsOfHelp(help.out), (Flags{"--ttl-seconds", "--chunk-lines", "--json"})) << help.out;
  help = RunCommand(kKnowctl + " session ask --help");
  ASSERT_EQ(help.exit_code, 0) << help.out;
  EXPECT_EQ(FlagsOfHelp(help.out), (Flags{"--mode", "--max-tokens", "--json"})) << help.out;
}

TEST(CliHelp, AFlagOfAnotherCommandIsRefusedNamingBoth) {
  CommandResult r = RunCommand(kKnowd + " eval --entries 5", /*with_stderr=*/true);
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.out,
              HasSubstr("knowd eval: unknown flag --entries (a flag of knowd bench storage)"));
  r = RunCommand(kKnowd + " generate --split x", true);
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.out, HasSubstr("knowd generate: unknown flag --split;"));
  r = RunCommand(kKnowd + " serve --max-tokens 4", true);
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.out,
              HasSubstr("knowd serve: unknown flag --max-tokens (a flag of knowd generate)"));
  r = RunCommand(kKnowd + " bench peak --entries 10", true);
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(
      r.out, HasSubstr("knowd bench peak: unknown flag --entries (a flag of knowd bench storage)"));
  r = RunCommand(kKnowctl + " stats --mode mac", true);
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(
      r.out,
      HasSubstr("knowctl stats: unknown flag --mode (a flag of knowctl ask, knowctl session ask)"));
  r = RunCommand(kKnowd + " generate --no-such-flag", true);
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.out, HasSubstr("knowd generate: unknown flag --no-such-flag;"));
}

TEST(CliHelp, UnknownCommandsPrintTheUsage) {
  CommandResult r = RunCommand(kKnowd + " frobnicate", true);
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.out, HasSubstr("knowd: unknown command \"frobnicate\""));
  EXPECT_THAT(r.out, HasSubstr("Usage: knowd"));
  r = RunCommand(kKnowd + " bench frobnicate", true);
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.out, HasSubstr("Usage: knowd bench"));
  r = RunCommand(kKnowd + " bench", true);
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.out, HasSubstr("synth-model"));
  r = RunCommand(kKnowctl + " frobnicate", true);
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.out, HasSubstr("Usage: knowctl"));
}

// Dashes or underscores, in any case, in flag names only: a value that looks like a flag is left
// as it is.
TEST(CliHelp, FlagNamesTakeDashesOrUnderscoresAndValuesStayAsTheyAre) {
  const std::string tokenize =
      kKnowd + " tokenize --tokenizer " + KNOWD_SOURCE_DIR + "/models/stories260K/stories260K.gguf";
  const CommandResult separate = RunCommand(tokenize + " --no_bos --text --Once_upon");
  const CommandResult joined = RunCommand(tokenize + " --No-Bos --text=--Once_upon");
  const CommandResult changed = RunCommand(tokenize + " --no-bos --text=--once-upon");
  ASSERT_EQ(separate.exit_code, 0);
  EXPECT_EQ(separate.out, joined.out);
  EXPECT_NE(separate.out, changed.out);
  // Accepted (not a usage error): eval's own check refuses the value.
  const CommandResult eval = RunCommand(kKnowd + " eval --mac_top_k 0", true);
  EXPECT_EQ(eval.exit_code, 1) << eval.out;
  EXPECT_THAT(eval.out, HasSubstr("knowd eval: --mac-top-k must be >= 1"));
}

}  // namespace
