// End to end: the real `knowd serve` on loopback with knowd-tiny, driven through the C++ client
// library (client/client.h) as an application would.
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <fstream>
#include <map>
#include <mutex>
#include <thread>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/daemon/daemon_process.h"

namespace knowd::testing {
namespace {

namespace v1 = ::knowd::v1;
using client::Client;

std::unique_ptr<Client> Connect(const client::ClientOptions& options) {
  absl::StatusOr<std::unique_ptr<Client>> c = Client::Connect(options);
  EXPECT_TRUE(c.ok()) << c.status();
  return c.ok() ? std::move(*c) : nullptr;
}

std::unique_ptr<DaemonProcess> StartOrDie(const std::string& data_dir,
                                          const std::vector<std::string>& extra_args = {}) {
  absl::StatusOr<std::unique_ptr<DaemonProcess>> daemon =
      DaemonProcess::Start(data_dir, extra_args);
  if (!daemon.ok()) {
    ADD_FAILURE() << daemon.status();
    return nullptr;
  }
  return std::move(*daemon);
}

// A daemon and a client connected to it.
struct ServingDaemon {
  std::unique_ptr<DaemonProcess> daemon;
  std::unique_ptr<Client> client;
};

// Starts the daemon on `data_dir` with `extra_args`, waits until it serves plain-text clients
// without a token, and connects one. Both are null, with the failure recorded, when it does not.
ServingDaemon StartServing(const std::string& data_dir,
                           const std::vector<std::string>& extra_args = {}) {
  std::unique_ptr<DaemonProcess> daemon = StartOrDie(data_dir, extra_args);
  if (daemon == nullptr) return {};
  if (absl::Status serving = WaitUntilServing(Options(*daemon)); !serving.ok()) {
    ADD_FAILURE() << serving << "\n" << daemon->log();
    return {};
  }
  std::unique_ptr<Client> client = Connect(Options(*daemon));
  if (client == nullptr) return {};
  return {std::move(daemon), std::move(client)};
}

// Ingests documents (id, text) and returns the acks.
std::vector<v1::IngestAck> IngestAll(Client& client,
                                     const std::vector<std::pair<std::string, std::string>>& docs,
                                     absl::Status* status, const std::string& name_space = "") {
  size_t next = 0;
  std::vector<v1::IngestAck> acks;
  *status = client.Ingest(
      [&](v1::IngestRequest* request) -> absl::StatusOr<bool> {
        if (next == docs.size()) return false;
        request->set_namespace_(name_space);
        request->set_id(docs[next].first);
        request->set_text(docs[next].second);
        ++next;
        return true;
      },
      [&](const v1::IngestAck& ack) { acks.push_back(ack); });
  return acks;
}

// The first `count` fixture passages as (id, text).
std::vector<std::pair<std::string, std::string>> WorldDocs(size_t count) {
  std::vector<std::pair<std::string, std::string>> docs;
  for (const WorldPassage& p : LoadWorldPassages()) {
    if (docs.size() == count) break;
    docs.emplace_back(p.id, p.text);
  }
  return docs;
}

// Retrieval is BM25 in these checks: it ranks the same with and without the bundle's adapter,
// while dense keys are as good as the adapter that made them.
absl::StatusOr<v1::AskFinal> AskRag(Client& client, const std::string& question) {
  v1::AskRequest request;
  request.set_question(question);
  request.set_mode(v1::ASK_MODE_RAG);
  request.set_retrieval(v1::RETRIEVAL_LEXICAL);
  return client.Ask(request);
}

bool Cites(const v1::AskFinal& answer, const std::string& id) {
  return std::any_of(answer.cited().begin(), answer.cited().end(),
                     [&](const v1::Passage& p) { return p.document_id() == id; });
}

// Fixture questions about the first `passages` passages that knowd-tiny answers right with the
// passage in its prompt.
std::vector<WorldQuestion> AnswerableQuestions(size_t passages) {
  std::vector<std::string> ids;
  for (const auto& [id, text] : WorldDocs(passages)) ids.push_back(id);
  std::vector<WorldQuestion> out;
  for (const WorldQuestion& q : LoadWorldQuestions()) {
    if (q.oracle_correct && std::find(ids.begin(), ids.end(), q.passage_id) != ids.end()) {
      out.push_back(q);
    }
  }
  return out;
}

TEST(DaemonEndToEnd, IngestAskForgetAndRestartKeepsState) {
  TempDir dir;
  const std::string data = dir.path() + "/data";
  auto [daemon, c] = StartServing(data);
  ASSERT_NE(c, nullptr);

  const auto docs = WorldDocs(8);
  absl::Status status;
  std::vector<v1::IngestAck> acks = IngestAll(*c, docs, &status);
  ASSERT_TRUE(status.ok()) << status;
  ASSERT_EQ(acks.size(), docs.size());
  for (size_t i = 0; i < acks.size(); ++i) {
    EXPECT_EQ(acks[i].id(), docs[i].first);
    EXPECT_EQ(acks[i].error_code(), 0) << acks[i].error_message();
    EXPECT_GE(acks[i].passages(), 1);
  }

  // Search puts the passage about the question's subject first.
  const std::vector<WorldQuestion> questions = AnswerableQuestions(8);
  ASSERT_EQ(questions.size(), 23u);
  for (const WorldQuestion& q : questions) {
    v1::SearchRequest search;
    search.set_query(q.question);
    search.set_top_k(3);
    search.set_retrieval(v1::RETRIEVAL_LEXICAL);
    absl::StatusOr<v1::SearchResponse> hits = c->Search(search);
    ASSERT_TRUE(hits.ok()) << hits.status();
    ASSERT_FALSE(hits->passages().empty());
    EXPECT_EQ(hits->passages(0).document_id(), q.passage_id) << q.question;
  }

  // RAG answers every question knowd-tiny reads right with the passage in its prompt (the
  // fixture's oracle_correct; all 23 of the first 8 passages, checked on this daemon).
  for (const WorldQuestion& q : questions) {
    absl::StatusOr<v1::AskFinal> answer = AskRag(*c, q.question);
    ASSERT_TRUE(answer.ok()) << answer.status();
    EXPECT_EQ(answer->mode(), v1::ASK_MODE_RAG);
    EXPECT_TRUE(Cites(*answer, q.passage_id)) << q.question;
    EXPECT_EQ(NormalizeAnswer(answer->answer()), NormalizeAnswer(q.answer)) << q.question;
    EXPECT_NE(answer->stop_reason(), "");
    EXPECT_GT(answer->timings().generated_tokens(), 0);
  }

  // Streaming: the chunks add up to the final answer.
  {
    std::string streamed;
    v1::AskRequest request;
    request.set_question(questions[0].question);
    request.set_mode(v1::ASK_MODE_RAG);
    request.set_retrieval(v1::RETRIEVAL_LEXICAL);
    absl::StatusOr<v1::AskFinal> answer =
        c->Ask(request, [&](std::string_view text) { streamed.append(text); });
    ASSERT_TRUE(answer.ok()) << answer.status();
    EXPECT_EQ(streamed, answer->answer());
  }

  // Health and metrics on the HTTP port.
  EXPECT_EQ(HttpGet(daemon->http_target(), "/healthz").status, 200);
  EXPECT_EQ(HttpGet(daemon->http_target(), "/readyz").status, 200);
  const HttpResponse metrics = HttpGet(daemon->http_target(), "/metrics");
  EXPECT_EQ(metrics.status, 200);
  EXPECT_NE(metrics.body.find("knowd_"), std::string::npos) << metrics.body;

  // Forget the first passage: no longer returned, cited or counted.
  const std::string gone = docs[0].first;
  v1::ForgetRequest forget;
  forget.add_ids(gone);
  forget.add_ids("never-stored");
  absl::StatusOr<v1::ForgetResponse> forgotten = c->Forget(forget);
  ASSERT_TRUE(forgotten.ok()) << forgotten.status();
  ASSERT_EQ(forgotten->forgotten_size(), 1);
  EXPECT_EQ(forgotten->forgotten(0), gone);
  ASSERT_EQ(forgotten->not_found_size(), 1);
  EXPECT_EQ(forgotten->not_found(0), "never-stored");
  EXPECT_GE(forgotten->passages(), 1);
  const WorldQuestion* about_gone = nullptr;
  for (const WorldQuestion& q : questions) {
    if (q.passage_id == gone) about_gone = &q;
  }
  ASSERT_NE(about_gone, nullptr);
  absl::StatusOr<v1::AskFinal> after = AskRag(*c, about_gone->question);
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_FALSE(Cites(*after, gone));
  v1::GetRequest get;
  get.set_id(gone);
  EXPECT_EQ(c->Get(get).status().code(), absl::StatusCode::kNotFound);
  absl::StatusOr<v1::StatsResponse> stats = c->Stats();
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_EQ(stats->documents(), static_cast<int64_t>(docs.size()) - 1);

  // Restart on the same data directory: the bank is as it was.
  c.reset();
  ASSERT_EQ(daemon->Terminate(), 0) << daemon->log();
  ServingDaemon restarted = StartServing(data);
  ASSERT_NE(restarted.client, nullptr);
  daemon = std::move(restarted.daemon);
  c = std::move(restarted.client);
  stats = c->Stats();
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_EQ(stats->documents(), static_cast<int64_t>(docs.size()) - 1);
  EXPECT_EQ(c->Get(get).status().code(), absl::StatusCode::kNotFound);
  get.set_id(docs[1].first);
  absl::StatusOr<v1::Document> kept = c->Get(get);
  ASSERT_TRUE(kept.ok()) << kept.status();
  std::string text;
  for (const v1::Passage& p : kept->passages()) text += p.text();
  EXPECT_EQ(text, docs[1].second);
  for (const WorldQuestion& q : questions) {
    if (q.passage_id == gone) continue;
    absl::StatusOr<v1::AskFinal> answer = AskRag(*c, q.question);
    ASSERT_TRUE(answer.ok()) << answer.status();
    EXPECT_TRUE(Cites(*answer, q.passage_id)) << q.question;
    break;
  }
  EXPECT_EQ(daemon->Terminate(), 0) << daemon->log();
}

// A changed fact: rag reads the update together with the passage it changes (the retrieved
// passages on the best hit's subject join the prompt, oldest first) and answers the new value;
// with --subject-passages 0 only the best BM25 hit, the older passage, is read.
TEST(DaemonEndToEnd, RagReadsAnUpdateWithTheFactItChanges) {
  const std::string question = "What city is Velka Keslemul's home?";
  // Two passages of the world's valid split (knowd-train data --seed 20240601).
  std::vector<std::pair<std::string, std::string>> docs = WorldDocs(8);
  docs.emplace_back(
      "velka",
      "Velka Keslemul works for Senvel Mining. Velka attended Jibra Institute. She was "
      "born in the city of Gorvelris. Velka Keslemul owns a ferret called Zandunor. "
      "Velka Keslemul has made a home in Celxi. She spends weekends on beekeeping. "
      "Wenkes Stowen is married to Velka.");
  docs.emplace_back(
      "velka-moves",
      "Velka Keslemul no longer lives in Celxi; she now lives in Pemoos. The museum in "
      "Pemoos reopened after repairs. The local library holds more than ten thousand "
      "books. Velka graduated from Jibra Institute. She was born in Gorvelris.");
  for (const bool subject : {true, false}) {
    SCOPED_TRACE(subject ? "default subject-passages" : "--subject-passages 0");
    TempDir dir;
    auto [daemon, c] = StartServing(
        dir.path() + "/data",
        subject ? std::vector<std::string>{} : std::vector<std::string>{"--subject-passages", "0"});
    ASSERT_NE(c, nullptr);
    absl::Status status;
    IngestAll(*c, docs, &status);
    ASSERT_TRUE(status.ok()) << status;
    absl::StatusOr<v1::AskFinal> answer = AskRag(*c, question);
    ASSERT_TRUE(answer.ok()) << answer.status();
    EXPECT_TRUE(Cites(*answer, "velka"));
    EXPECT_EQ(Cites(*answer, "velka-moves"), subject);
    EXPECT_EQ(answer->cited_size(), subject ? 2 : 1);
    EXPECT_EQ(NormalizeAnswer(answer->answer()), subject ? "pemoos" : "celxi");
    EXPECT_EQ(daemon->Terminate(), 0) << daemon->log();
  }
}

// The questions the shipped adapter answered exactly in `mode` when the fixture was made (all 40
// fixture documents stored; `label` names the fixture's label) must still be answered — all but a
// tenth of them, so a greedy token flipped by another CPU's summation order does not fail the
// test, while a broken encoder, aggregator, expander or prefix path (which gets close to none
// right) does. Runs when the bundle has an adapter (models/knowd-tiny/adapter, or the one named
// by $KNOWD_TEST_ADAPTER, whose answers are checked for form only).
void ExpectLabelledAnswers(v1::AskMode mode, bool WorldQuestion::*label, const char* label_name) {
  TempDir dir;
  auto [daemon, c] = StartServing(dir.path() + "/data");
  ASSERT_NE(c, nullptr);
  absl::Status status;
  IngestAll(*c, WorldDocs(40), &status);
  ASSERT_TRUE(status.ok()) << status;
  absl::StatusOr<v1::StatsResponse> stats = c->Stats();
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_GT(stats->bytes_per_modulation(), 0);
  EXPECT_GT(stats->modulation_bytes(), 0);
  EXPECT_NE(stats->fingerprint(), "");
  int expected = 0, right = 0;
  std::string missed;
  for (const WorldQuestion& q : LoadWorldQuestions()) {
    if (!(q.*label)) continue;
    ++expected;
    v1::AskRequest request;
    request.set_question(q.question);
    // The daemon's default mode is mac when it has an adapter.
    if (mode != v1::ASK_MODE_MAC) request.set_mode(mode);
    absl::StatusOr<v1::AskFinal> answer = c->Ask(request);
    ASSERT_TRUE(answer.ok()) << answer.status();
    EXPECT_EQ(answer->mode(), mode);
    EXPECT_FALSE(answer->cited().empty());
    EXPECT_GT(answer->timings().modulation_ms(), 0);
    if (NormalizeAnswer(answer->answer()) == NormalizeAnswer(q.answer)) {
      ++right;
    } else {
      absl::StrAppend(&missed, "\n  ", q.question, " => ", answer->answer(), " (", q.answer, ")");
    }
  }
  if (!std::getenv("KNOWD_TEST_ADAPTER")) {  // the labels belong to the shipped adapter
    ASSERT_GT(expected, 0) << "tests/data/world/questions.jsonl has no " << label_name << " labels";
    EXPECT_GE(right * 10, expected * 9) << right << " of " << expected << missed;
  }
  EXPECT_EQ(daemon->Terminate(), 0) << daemon->log();
}

// MAC: the answer comes from the stored modulations alone (`mac_correct`: 77 of 120).
TEST(DaemonEndToEnd, MacModeAnswersFromStoredModulations) {
  if (!HasAdapter()) GTEST_SKIP() << "the bundle has no adapter: mode mac is unavailable";
  ExpectLabelledAnswers(v1::ASK_MODE_MAC, &WorldQuestion::mac_correct, "mac_correct");
}

// mac+rag: the best passage's text (and those on its subject) after the adapter's mac+rag prefix
// (`mac_rag_correct`: 105 of 120).
TEST(DaemonEndToEnd, MacRagModeReadsTextAfterTheModulation) {
  if (!HasAdapter()) GTEST_SKIP() << "the bundle has no adapter: mode mac+rag is unavailable";
  ExpectLabelledAnswers(v1::ASK_MODE_MAC_RAG, &WorldQuestion::mac_rag_correct, "mac_rag_correct");
}

TEST(DaemonEndToEnd, BadInputGetsTheRightCodesAndTheStreamGoesOn) {
  TempDir dir;
  auto [daemon, c] = StartServing(dir.path() + "/data");
  ASSERT_NE(c, nullptr);

  const std::string oversized((1 << 20) + 1, 'a');  // the default max document size + 1
  absl::Status status;
  std::vector<v1::IngestAck> acks = IngestAll(
      *c, {{"empty", ""}, {"oversized", oversized}, {"good", "Ardo Velin now lives in Korvale."}},
      &status);
  ASSERT_TRUE(status.ok()) << status;
  ASSERT_EQ(acks.size(), 3u);
  const int invalid = static_cast<int>(absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(acks[0].error_code(), invalid) << acks[0].error_message();
  EXPECT_EQ(acks[1].error_code(), invalid) << acks[1].error_message();
  EXPECT_EQ(acks[2].error_code(), 0) << acks[2].error_message();
  EXPECT_EQ(acks[2].passages(), 1);

  // The client library refuses invalid UTF-8 before sending; what came before is stored.
  acks = IngestAll(*c,
                   {{"before-bad", "Elra Thune now lives in Ustrin."},
                    {"bad-utf8", std::string("caf\xC3\x28 au lait", 12)}},
                   &status);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  ASSERT_EQ(acks.size(), 1u);
  EXPECT_EQ(acks[0].id(), "before-bad");
  EXPECT_EQ(acks[0].error_code(), 0);

  // Nothing of the rejected documents was stored.
  for (const char* id : {"empty", "oversized", "bad-utf8", "unknown-id"}) {
    v1::GetRequest get;
    get.set_id(id);
    EXPECT_EQ(c->Get(get).status().code(), absl::StatusCode::kNotFound) << id;
  }
  absl::StatusOr<v1::StatsResponse> stats = c->Stats();
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ(stats->documents(), 2);

  v1::AskRequest empty_question;
  EXPECT_EQ(c->Ask(empty_question).status().code(), absl::StatusCode::kInvalidArgument);
  v1::AskRequest bad_mode;
  bad_mode.set_question("Where does Ardo Velin live?");
  bad_mode.set_mode(static_cast<v1::AskMode>(42));
  EXPECT_EQ(c->Ask(bad_mode).status().code(), absl::StatusCode::kInvalidArgument);
  v1::SearchRequest empty_query;
  EXPECT_EQ(c->Search(empty_query).status().code(), absl::StatusCode::kInvalidArgument);
  v1::ForgetRequest no_ids;
  EXPECT_EQ(c->Forget(no_ids).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(daemon->Terminate(), 0) << daemon->log();
}

// Invalid UTF-8 sent on the wire by a client that does not check it (the C++ client library
// refuses to send it). Request text fields are `bytes` in knowd.proto, so the daemon's own check,
// not the protobuf parser, answers: an INVALID_ARGUMENT ack and the stream goes on.
TEST(DaemonEndToEnd, InvalidUtf8OnTheWireIsInvalidArgument) {
  TempDir dir;
  auto [daemon, c] = StartServing(dir.path() + "/data");
  ASSERT_NE(c, nullptr);
  std::vector<v1::IngestAck> acks;
  absl::Status status = RawIngest(daemon->grpc_target(),
                                  {{"bad-utf8", std::string("caf\xC3\x28 au lait", 12)},
                                   {"after-bad", "Dima Orsk now lives in Pellow."}},
                                  &acks);
  ASSERT_TRUE(status.ok()) << status;
  ASSERT_EQ(acks.size(), 2u);
  EXPECT_EQ(acks[0].error_code(), static_cast<int>(absl::StatusCode::kInvalidArgument));
  EXPECT_EQ(acks[1].error_code(), 0);
  EXPECT_EQ(RawSearch(daemon->grpc_target(), std::string("\xFF\xFE", 2)).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(daemon->Terminate(), 0) << daemon->log();
}

TEST(DaemonEndToEnd, TokensAuthenticateAndNamespacesIsolate) {
  TempDir dir;
  const std::string tokens = dir.path() + "/tokens.json";
  std::ofstream(tokens) << R"([
    {"token": "writer-a", "namespaces": ["a"], "roles": ["read", "write"]},
    {"token": "reader-a", "namespaces": ["a"], "roles": ["read"]},
    {"token": "writer-b", "namespaces": ["b"], "roles": ["read", "write"]}
  ])";
  auto daemon = StartOrDie(dir.path() + "/data", {"--tokens-file", tokens});
  ASSERT_NE(daemon, nullptr);
  ASSERT_TRUE(WaitUntilServing(Options(*daemon, "writer-a")).ok()) << daemon->log();
  const std::vector<std::pair<std::string, std::string>> doc = {
      {"secret", "Bessa Kuro now lives in Dripe."}};

  auto anonymous = Connect(Options(*daemon));
  EXPECT_EQ(anonymous->Stats().status().code(), absl::StatusCode::kUnauthenticated);
  auto stranger = Connect(Options(*daemon, "no-such-token"));
  EXPECT_EQ(stranger->Stats().status().code(), absl::StatusCode::kUnauthenticated);
  absl::Status status;
  IngestAll(*anonymous, doc, &status, "a");
  EXPECT_EQ(status.code(), absl::StatusCode::kUnauthenticated) << status;

  auto writer_a = Connect(Options(*daemon, "writer-a"));
  auto reader_a = Connect(Options(*daemon, "reader-a"));
  auto writer_b = Connect(Options(*daemon, "writer-b"));
  std::vector<v1::IngestAck> acks = IngestAll(*writer_a, doc, &status, "a");
  ASSERT_TRUE(status.ok()) << status;
  ASSERT_EQ(acks.size(), 1u);
  EXPECT_EQ(acks[0].error_code(), 0) << acks[0].error_message();

  // A namespace the token does not grant, and a role it lacks.
  acks = IngestAll(*writer_a, doc, &status, "b");
  EXPECT_TRUE(status.code() == absl::StatusCode::kPermissionDenied ||
              (acks.size() == 1 &&
               acks[0].error_code() == static_cast<int>(absl::StatusCode::kPermissionDenied)))
      << status;
  acks = IngestAll(*reader_a, doc, &status, "a");
  EXPECT_TRUE(status.code() == absl::StatusCode::kPermissionDenied ||
              (acks.size() == 1 &&
               acks[0].error_code() == static_cast<int>(absl::StatusCode::kPermissionDenied)))
      << status;
  v1::ForgetRequest forget;
  forget.set_namespace_("a");
  forget.add_ids("secret");
  EXPECT_EQ(reader_a->Forget(forget).status().code(), absl::StatusCode::kPermissionDenied);

  v1::GetRequest get;
  get.set_namespace_("a");
  get.set_id("secret");
  EXPECT_TRUE(reader_a->Get(get).ok());
  EXPECT_EQ(writer_b->Get(get).status().code(), absl::StatusCode::kPermissionDenied);
  // Namespace b cannot see a's document.
  get.set_namespace_("b");
  EXPECT_EQ(writer_b->Get(get).status().code(), absl::StatusCode::kNotFound);
  v1::SearchRequest search;
  search.set_namespace_("b");
  search.set_query("Where does Bessa Kuro live?");
  absl::StatusOr<v1::SearchResponse> hits = writer_b->Search(search);
  ASSERT_TRUE(hits.ok()) << hits.status();
  EXPECT_EQ(hits->passages_size(), 0);
  EXPECT_EQ(daemon->Terminate(), 0) << daemon->log();
}

TEST(DaemonEndToEnd, TlsServesClientsThatTrustItsCa) {
  TempDir dir;
  ASSERT_TRUE(WriteTestCertificates(dir.path()).ok());
  const std::string d = dir.path() + "/";
  auto daemon =
      StartOrDie(d + "data", {"--tls-cert", d + "server.pem", "--tls-key", d + "server.key"});
  ASSERT_NE(daemon, nullptr);
  client::ClientOptions tls = Options(*daemon);
  tls.tls_root_ca_pem = ReadFileOrDie(d + "ca.pem");
  tls.tls_server_name = "localhost";  // gRPC 1.51 does not match IP addresses in certificates
  ASSERT_TRUE(WaitUntilServing(tls).ok()) << daemon->log();
  auto c = Connect(tls);
  absl::Status status;
  std::vector<v1::IngestAck> acks =
      IngestAll(*c, {{"over-tls", "Fenn Oskar now lives in Marrowgate."}}, &status);
  ASSERT_TRUE(status.ok()) << status;
  ASSERT_EQ(acks.size(), 1u);
  EXPECT_EQ(acks[0].error_code(), 0);
  absl::StatusOr<v1::AskFinal> answer = AskRag(*c, "Where does Fenn Oskar live?");
  ASSERT_TRUE(answer.ok()) << answer.status();
  EXPECT_TRUE(Cites(*answer, "over-tls"));
  // A client that does not use TLS, or does not trust the CA, is turned away.
  auto plain = Connect(Options(*daemon));
  EXPECT_EQ(plain->Stats().status().code(), absl::StatusCode::kUnavailable);
  client::ClientOptions untrusting = Options(*daemon);
  untrusting.tls = true;  // system roots only
  untrusting.tls_server_name = "localhost";
  auto stranger = Connect(untrusting);
  EXPECT_EQ(stranger->Stats().status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(daemon->Terminate(), 0) << daemon->log();
}

TEST(DaemonEndToEnd, MutualTlsAcceptsOnlyClientsWithACertificateFromTheCa) {
  TempDir dir;
  ASSERT_TRUE(WriteTestCertificates(dir.path()).ok());
  const std::string d = dir.path() + "/";
  auto daemon = StartOrDie(d + "data", {"--tls-cert", d + "server.pem", "--tls-key",
                                        d + "server.key", "--tls-client-ca", d + "ca.pem"});
  ASSERT_NE(daemon, nullptr);
  client::ClientOptions tls = Options(*daemon);
  tls.tls_root_ca_pem = ReadFileOrDie(d + "ca.pem");
  tls.tls_client_cert_pem = ReadFileOrDie(d + "client.pem");
  tls.tls_client_key_pem = ReadFileOrDie(d + "client.key");
  tls.tls_server_name = "localhost";  // gRPC 1.51 does not match IP addresses in certificates
  ASSERT_TRUE(WaitUntilServing(tls).ok()) << daemon->log();
  auto c = Connect(tls);
  absl::StatusOr<v1::StatsResponse> stats = c->Stats();
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_EQ(stats->documents(), 0);
  absl::Status status;
  std::vector<v1::IngestAck> acks =
      IngestAll(*c, {{"over-tls", "Corin Dalt now lives in Ustrin."}}, &status);
  ASSERT_TRUE(status.ok()) << status;
  ASSERT_EQ(acks.size(), 1u);
  EXPECT_EQ(acks[0].error_code(), 0);

  // Plain text, and TLS without a client certificate, are both turned away.
  auto plain = Connect(Options(*daemon));
  EXPECT_EQ(plain->Stats().status().code(), absl::StatusCode::kUnavailable);
  client::ClientOptions no_cert = Options(*daemon);
  no_cert.tls_root_ca_pem = tls.tls_root_ca_pem;
  no_cert.tls_server_name = "localhost";
  auto anonymous = Connect(no_cert);
  EXPECT_EQ(anonymous->Stats().status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(daemon->Terminate(), 0) << daemon->log();
}

TEST(DaemonEndToEnd, OverloadIsRefusedWithResourceExhaustedAndTheDaemonStaysUp) {
  TempDir dir;
  auto [daemon, c] =
      StartServing(dir.path() + "/data", {"--ask-queue-size", "1", "--ask-max-batch", "1"});
  ASSERT_NE(c, nullptr);
  absl::Status status;
  IngestAll(*c, WorldDocs(4), &status);
  ASSERT_TRUE(status.ok()) << status;

  // Bursts of asks released together; a burst on a fast machine may fit in the queue, so up to
  // ten bursts until one overflows it.
  constexpr int kAsks = 48;
  std::map<absl::StatusCode, int> by_code;
  for (int burst = 0; burst < 10 && by_code[absl::StatusCode::kResourceExhausted] == 0; ++burst) {
    std::vector<absl::StatusCode> codes(kAsks);
    std::atomic<bool> go{false};
    std::vector<std::thread> threads;
    for (int i = 0; i < kAsks; ++i) {
      threads.emplace_back([&, i] {
        v1::AskRequest request;
        request.set_question("Whom did Etheth Rulhal marry?");
        request.set_mode(v1::ASK_MODE_RAG);
        request.set_max_tokens(64);
        while (!go.load()) std::this_thread::yield();
        codes[i] = c->Ask(request).status().code();
      });
    }
    go = true;
    for (std::thread& t : threads) t.join();
    for (absl::StatusCode code : codes) ++by_code[code];
  }
  EXPECT_GT(by_code[absl::StatusCode::kResourceExhausted], 0);
  EXPECT_GT(by_code[absl::StatusCode::kOk], 0);
  // Nothing but answers and refusals: no crash, no other error.
  int total = 0;
  for (const auto& [code, count] : by_code) total += count;
  EXPECT_EQ(by_code[absl::StatusCode::kOk] + by_code[absl::StatusCode::kResourceExhausted], total);

  absl::StatusOr<v1::AskFinal> after = AskRag(*c, "Whom did Etheth Rulhal marry?");
  EXPECT_TRUE(after.ok()) << after.status();
  EXPECT_EQ(daemon->Terminate(), 0) << daemon->log();
}

TEST(DaemonEndToEnd, SigtermLetsTheAskInFlightFinishAndExitsZero) {
  TempDir dir;
  auto [daemon, c] = StartServing(dir.path() + "/data");
  ASSERT_NE(c, nullptr);
  absl::Status status;
  IngestAll(*c, WorldDocs(2), &status);
  ASSERT_TRUE(status.ok()) << status;

  std::mutex mu;
  std::condition_variable cv;
  bool started = false;
  absl::StatusOr<v1::AskFinal> answer;
  std::thread asker([&] {
    v1::AskRequest request;
    request.set_question("Whom did Etheth Rulhal marry?");
    request.set_mode(v1::ASK_MODE_RAG);
    answer = c->Ask(request, [&](std::string_view) {
      std::lock_guard<std::mutex> lock(mu);
      started = true;
      cv.notify_all();
    });
    std::lock_guard<std::mutex> lock(mu);
    started = true;
    cv.notify_all();
  });
  {
    std::unique_lock<std::mutex> lock(mu);
    ASSERT_TRUE(cv.wait_for(lock, std::chrono::seconds(120), [&] { return started; }));
  }
  const int exit_code = daemon->Terminate();
  asker.join();
  EXPECT_EQ(exit_code, 0) << daemon->log();
  ASSERT_TRUE(answer.ok()) << answer.status();
  EXPECT_FALSE(answer->answer().empty());
  EXPECT_NE(answer->stop_reason(), "");
}

}  // namespace
}  // namespace knowd::testing
