// `knowctl` as a user runs it against the real daemon: its stdout, stderr and exit codes.
#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/daemon/daemon_process.h"

namespace knowd::testing {
namespace {

std::vector<nlohmann::json> JsonLines(const std::string& out) {
  std::vector<nlohmann::json> lines;
  std::istringstream in(out);
  for (std::string line; std::getline(in, line);) {
    if (!line.empty()) lines.push_back(nlohmann::json::parse(line, nullptr, false));
  }
  return lines;
}

// A question of the world's test split about `passage_id` that the oracle answers, or null.
const WorldQuestion* OracleQuestionAbout(const std::vector<WorldQuestion>& questions,
                                         const std::string& passage_id) {
  for (const WorldQuestion& q : questions) {
    if (q.passage_id == passage_id && q.oracle_correct) return &q;
  }
  return nullptr;
}

// `knowctl ask --mode rag --retrieval lexical --json` of `question` (`knowctl`: the command and its
// connection flags): the parsed answer, not an object when the command failed or printed no JSON.
nlohmann::json AskRagJson(const std::string& knowctl, const WorldQuestion& question,
                          CommandResult* result) {
  *result = RunCommand(knowctl + "ask " + ShellQuote(question.question) +
                       " --mode rag --retrieval lexical --json");
  EXPECT_EQ(result->exit_code, 0) << result->out;
  return nlohmann::json::parse(result->out, nullptr, false);
}

TEST(Knowctl, IngestsADirectoryAsksSearchesAndForgets) {
  TempDir dir;
  std::unique_ptr<DaemonProcess> started = StartServingOrFail(dir.path() + "/data");
  ASSERT_NE(started, nullptr);
  DaemonProcess& daemon = *started;

  // A directory of .txt/.md documents (one nested) and a .jsonl with the rest; other files are
  // skipped.
  const std::string docs = dir.path() + "/docs";
  std::filesystem::create_directories(docs + "/people");
  const std::vector<WorldPassage> passages = LoadWorldPassages();
  std::ofstream(docs + "/p0.txt") << passages[0].text;
  std::ofstream(docs + "/people/p1.md") << passages[1].text;
  std::ofstream(docs + "/notes.csv") << "not a document";
  {
    std::ofstream jsonl(docs + "/more.jsonl");
    for (int i = 2; i < 5; ++i) {
      jsonl << nlohmann::json{{"id", passages[i].id},
                              {"text", passages[i].text},
                              {"metadata", {{"source", "fixture"}}}}
                   .dump()
            << "\n";
    }
  }
  const std::string knowctl = kKnowctlBinary + " --server " + daemon.grpc_target() + " ";
  CommandResult ingest = RunCommand(knowctl + "ingest " + docs + " --json");
  ASSERT_EQ(ingest.exit_code, 0) << ingest.out << daemon.log();
  std::vector<nlohmann::json> acks = JsonLines(ingest.out);
  ASSERT_EQ(acks.size(), 5u) << ingest.out;
  std::vector<std::string> ids;
  for (const nlohmann::json& ack : acks) {
    ids.push_back(ack["id"]);
    EXPECT_EQ(ack["error_code"], 0) << ack.dump();
    EXPECT_GE(ack["passages"].get<int>(), 1) << ack.dump();
  }
  // Sorted walk: more.jsonl's lines, then p0.txt, then people/p1.md.
  EXPECT_EQ(ids, (std::vector<std::string>{passages[2].id, passages[3].id, passages[4].id, "p0.txt",
                                           "people/p1.md"}));

  // Without --json (stderr is not a terminal): one summary line.
  CommandResult again = RunCommand(knowctl + "ingest " + docs + "/p0.txt", true);
  EXPECT_EQ(again.exit_code, 0) << again.out;
  EXPECT_NE(again.out.find("1 documents stored (1 passages, 1 replaced), 0 failed"),
            std::string::npos)
      << again.out;

  // ask --json: the answer, the mode and the passage cited.
  const std::vector<WorldQuestion> questions = LoadWorldQuestions();
  const WorldQuestion* question = OracleQuestionAbout(questions, passages[3].id);
  ASSERT_NE(question, nullptr);
  CommandResult ask;
  const nlohmann::json answer = AskRagJson(knowctl, *question, &ask);
  ASSERT_TRUE(answer.is_object()) << ask.out;
  EXPECT_EQ(answer["mode"], "ASK_MODE_RAG");
  EXPECT_EQ(NormalizeAnswer(answer["answer"]), NormalizeAnswer(question->answer)) << ask.out;
  ASSERT_FALSE(answer["cited"].empty()) << ask.out;
  EXPECT_EQ(answer["cited"][0]["document_id"], passages[3].id);
  EXPECT_EQ(answer["cited"][0]["metadata"]["source"], "fixture");

  // Plain ask: the answer on the first line, then the cited passages.
  CommandResult plain = RunCommand(knowctl + "ask " + ShellQuote(question->question) +
                                   " --mode rag --retrieval lexical");
  ASSERT_EQ(plain.exit_code, 0) << plain.out;
  EXPECT_EQ(plain.out.substr(0, plain.out.find('\n')), answer["answer"].get<std::string>());
  EXPECT_NE(plain.out.find(passages[3].id + "#0"), std::string::npos) << plain.out;

  CommandResult search = RunCommand(knowctl + "search " + ShellQuote(question->question) +
                                    " --top-k 2 --retrieval lexical "
                                    "--json");
  ASSERT_EQ(search.exit_code, 0) << search.out;
  const nlohmann::json hits = nlohmann::json::parse(search.out, nullptr, false);
  ASSERT_TRUE(hits.is_object()) << search.out;
  ASSERT_FALSE(hits["passages"].empty());
  EXPECT_EQ(hits["passages"][0]["document_id"], passages[3].id);

  CommandResult forget = RunCommand(knowctl + "forget p0.txt nothing-here");
  EXPECT_EQ(forget.exit_code, 0) << forget.out;
  EXPECT_EQ(forget.out, "forgot 1 documents (1 passages); not stored: nothing-here\n");
  CommandResult get = RunCommand(knowctl + "get p0.txt", true);
  EXPECT_EQ(get.exit_code, 1);
  EXPECT_NE(get.out.find("knowctl get: NOT_FOUND"), std::string::npos) << get.out;

  CommandResult stats = RunCommand(knowctl + "stats --json");
  ASSERT_EQ(stats.exit_code, 0) << stats.out;
  const nlohmann::json counts = nlohmann::json::parse(stats.out, nullptr, false);
  ASSERT_TRUE(counts.is_object()) << stats.out;
  // proto3 JSON writes int64 as a string.
  EXPECT_EQ(counts["documents"], "4") << stats.out;

  // A document the daemon rejects: reported, and the exit code says so.
  std::ofstream(dir.path() + "/empty.txt") << "";
  CommandResult rejected = RunCommand(knowctl + "ingest " + dir.path() + "/empty.txt", true);
  EXPECT_EQ(rejected.exit_code, 1);
  EXPECT_NE(rejected.out.find("empty.txt: INVALID_ARGUMENT"), std::string::npos) << rejected.out;
  EXPECT_EQ(daemon.Terminate(), 0) << daemon.log();
}

TEST(Knowctl, TokenAndMutualTlsFromFlagsAndEnvironment) {
  TempDir dir;
  ASSERT_TRUE(WriteTestCertificates(dir.path()).ok());
  const std::string d = dir.path() + "/";
  std::ofstream(d + "tokens.json")
      << R"([{"token": "t0k", "namespaces": ["team"], "roles": ["read", "write"]}])";
  auto started = DaemonProcess::Start(
      d + "data", {"--tls-cert", d + "server.pem", "--tls-key", d + "server.key", "--tls-client-ca",
                   d + "ca.pem", "--tokens-file", d + "tokens.json"});
  ASSERT_TRUE(started.ok()) << started.status();
  auto& daemon = **started;
  const std::string tls = " --tls-ca " + d + "ca.pem --tls-cert " + d + "client.pem --tls-key " +
                          d + "client.key --tls-server-name localhost ";
  const std::string knowctl = kKnowctlBinary + " --server " + daemon.grpc_target() + tls;
  // Bounded wait for the daemon to serve (the token is needed from the first call).
  CommandResult stats;
  for (int i = 0; i < 600; ++i) {
    stats = RunCommand(knowctl + "--token t0k --namespace team stats --json", true);
    if (stats.exit_code == 0) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ASSERT_EQ(stats.exit_code, 0) << stats.out << daemon.log();

  std::ofstream(d + "doc.txt") << "Gala Mirr now lives in Korvale.";
  CommandResult ingest =
      RunCommand("KNOWCTL_TOKEN=t0k " + knowctl + "--namespace team ingest " + d + "doc.txt", true);
  EXPECT_EQ(ingest.exit_code, 0) << ingest.out;
  CommandResult get = RunCommand(knowctl + "--token t0k --namespace team get doc.txt");
  EXPECT_EQ(get.exit_code, 0) << get.out;
  EXPECT_NE(get.out.find("Gala Mirr now lives in Korvale."), std::string::npos) << get.out;

  CommandResult no_token = RunCommand(knowctl + "--namespace team get doc.txt", true);
  EXPECT_EQ(no_token.exit_code, 1);
  EXPECT_EQ(no_token.out.rfind("knowctl get: UNAUTHENTICATED: ", 0), 0u) << no_token.out;
  CommandResult other = RunCommand(knowctl + "--token t0k --namespace other get doc.txt", true);
  EXPECT_EQ(other.exit_code, 1);
  EXPECT_EQ(other.out.rfind("knowctl get: PERMISSION_DENIED: ", 0), 0u) << other.out;
  EXPECT_EQ(daemon.Terminate(), 0) << daemon.log();
}

TEST(Knowctl, LoadMixesForgetIntoItsCallsAndWritesAReport) {
  TempDir dir;
  std::unique_ptr<DaemonProcess> started = StartServingOrFail(dir.path() + "/data");
  ASSERT_NE(started, nullptr);
  DaemonProcess& daemon = *started;
  const std::string knowctl = kKnowctlBinary + " --server " + daemon.grpc_target() + " ";
  const std::string report_path = dir.path() + "/load.json";
  CommandResult load = RunCommand(knowctl +
                                      "load --clients 2 --duration 1 --ask-ratio 0 "
                                      "--forget-ratio 0.5 --tolerate RESOURCE_EXHAUSTED --report " +
                                      report_path,
                                  true);
  ASSERT_EQ(load.exit_code, 0) << load.out << daemon.log();
  EXPECT_NE(load.out.find("forget "), std::string::npos) << load.out;
  const nlohmann::json report = nlohmann::json::parse(ReadFileOrDie(report_path), nullptr, false);
  ASSERT_TRUE(report.is_object()) << ReadFileOrDie(report_path);
  EXPECT_EQ(report["clients"], 2);
  EXPECT_EQ(report["untolerated_errors"], 0) << report.dump(2);
  for (const char* call : {"ask", "ingest", "search", "forget"}) {
    ASSERT_TRUE(report["calls"].contains(call)) << report.dump(2);
    EXPECT_LE(report["calls"][call]["p50_ms"].get<double>(),
              report["calls"][call]["p99_ms"].get<double>());
  }
  // Each client made at least its first call; a forget removes a document that client
  // ingested, so what is stored is what was ingested less what was forgotten.
  EXPECT_GE(report["all"]["ok"].get<int>(), 2) << report.dump(2);
  EXPECT_EQ(report["calls"]["ask"]["ok"], 0);
  const int64_t stored = report["calls"]["ingest"]["ok"].get<int64_t>() -
                         report["calls"]["forget"]["ok"].get<int64_t>();
  CommandResult stats = RunCommand(knowctl + "stats --json");
  ASSERT_EQ(stats.exit_code, 0) << stats.out;
  const nlohmann::json counts = nlohmann::json::parse(stats.out, nullptr, false);
  ASSERT_TRUE(counts.is_object()) << stats.out;
  EXPECT_EQ(counts["documents"], std::to_string(stored)) << stats.out << report.dump(2);
  EXPECT_EQ(daemon.Terminate(), 0) << daemon.log();
}

// A question about someone never stored: the daemon generates nothing, in every memory mode and
// whatever the retrieval, and `knowctl ask` says so (plain: the "nothing in memory" line; --json:
// nothing_in_memory with no answer and no citations). A question about a stored person is still
// answered.
TEST(Knowctl, AskSaysNothingInMemoryAboutSomeoneNeverStored) {
  TempDir dir;
  std::unique_ptr<DaemonProcess> started = StartServingOrFail(dir.path() + "/data");
  ASSERT_NE(started, nullptr);
  DaemonProcess& daemon = *started;
  const std::string knowctl = kKnowctlBinary + " --server " + daemon.grpc_target() + " ";
  const std::vector<WorldPassage> passages = LoadWorldPassages();
  {
    std::ofstream jsonl(dir.path() + "/people.jsonl");
    for (int i = 0; i < 8; ++i) {
      jsonl << nlohmann::json{{"id", passages[i].id}, {"text", passages[i].text}}.dump() << "\n";
    }
  }
  CommandResult ingest = RunCommand(knowctl + "ingest " + dir.path() + "/people.jsonl --json");
  ASSERT_EQ(ingest.exit_code, 0) << ingest.out << daemon.log();
  ASSERT_EQ(JsonLines(ingest.out).size(), 8u) << ingest.out;

  const std::string unknown = ShellQuote("In which city does Quillon Brastovik live?");
  std::vector<std::string> modes = {"rag"};
  std::vector<std::string> retrievals = {"lexical"};
  if (HasAdapter()) {  // mac modes and dense keys need the adapter
    modes = {"rag", "mac", "mac+rag"};
    retrievals = {"lexical", "dense", "hybrid"};
  }
  for (const std::string& mode : modes) {
    for (const std::string& retrieval : retrievals) {
      const std::string what = mode + " / " + retrieval;
      const std::string flags = " --mode " + ShellQuote(mode) + " --retrieval " + retrieval;
      CommandResult plain = RunCommand(knowctl + "ask " + unknown + flags);
      ASSERT_EQ(plain.exit_code, 0) << what << ": " << plain.out;
      EXPECT_EQ(plain.out.rfind("nothing in memory: no stored passage is about this question "
                                "(relevance 0.",
                                0),
                0u)
          << what << ": " << plain.out;
      EXPECT_EQ(plain.out.find("cited"), std::string::npos) << what << ": " << plain.out;

      CommandResult json = RunCommand(knowctl + "ask " + unknown + flags + " --json");
      ASSERT_EQ(json.exit_code, 0) << what << ": " << json.out;
      const nlohmann::json answer = nlohmann::json::parse(json.out, nullptr, false);
      ASSERT_TRUE(answer.is_object()) << what << ": " << json.out;
      EXPECT_EQ(answer.value("nothing_in_memory", false), true) << what << ": " << json.out;
      EXPECT_EQ(answer.value("answer", ""), "") << what << ": " << json.out;
      EXPECT_TRUE(answer.value("cited", nlohmann::json::array()).empty()) << what;
      EXPECT_EQ(answer.value("stop_reason", ""), "nothing_in_memory") << what << ": " << json.out;
    }
  }

  // A stored person: answered, not abstained on.
  const std::vector<WorldQuestion> questions = LoadWorldQuestions();
  const WorldQuestion* known = OracleQuestionAbout(questions, passages[2].id);
  ASSERT_NE(known, nullptr);
  CommandResult answered;
  const nlohmann::json answer = AskRagJson(knowctl, *known, &answered);
  ASSERT_TRUE(answer.is_object()) << answered.out;
  EXPECT_EQ(answer.value("nothing_in_memory", false), false) << answered.out;
  EXPECT_EQ(NormalizeAnswer(answer.value("answer", "")), NormalizeAnswer(known->answer))
      << answered.out;
  EXPECT_EQ(daemon.Terminate(), 0) << daemon.log();
}

TEST(Knowctl, SaysWhenTheDaemonCannotBeReached) {
  // Port 1 on loopback: nothing listens there.
  CommandResult r = RunCommand(kKnowctlBinary + " --server 127.0.0.1:1 stats", true);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.out.rfind("knowctl: cannot reach 127.0.0.1:1: ", 0), 0u) << r.out;
  CommandResult env = RunCommand("KNOWCTL_SERVER=127.0.0.1:1 " + kKnowctlBinary + " stats", true);
  EXPECT_EQ(env.out.rfind("knowctl: cannot reach 127.0.0.1:1: ", 0), 0u) << env.out;
}

TEST(Knowctl, UsageErrorsExitTwo) {
  EXPECT_EQ(RunCommand(kKnowctlBinary).exit_code, 2);
  EXPECT_EQ(RunCommand(kKnowctlBinary + " frobnicate").exit_code, 2);
  EXPECT_EQ(RunCommand(kKnowctlBinary + " ask 'Q' --mode sideways").exit_code, 2);
  EXPECT_EQ(RunCommand(kKnowctlBinary + " ask 'Q' --top-k many").exit_code, 2);
  EXPECT_EQ(RunCommand(kKnowctlBinary + " --bogus stats").exit_code, 2);
  EXPECT_EQ(RunCommand(kKnowctlBinary + " load --ask-ratio 0.6 --forget-ratio 0.5").exit_code, 2);
  EXPECT_EQ(RunCommand(kKnowctlBinary + " load --tolerate SLOWNESS").exit_code, 2);
  EXPECT_EQ(RunCommand(kKnowctlBinary + " --help").exit_code, 0);
}

}  // namespace
}  // namespace knowd::testing
