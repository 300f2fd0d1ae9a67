// End to end: the OpenAI-compatible HTTP API (daemon/openai_api.h) of the real `knowd serve` on
// loopback, through cpp-httplib's client as any HTTP client would call it. The answers must be
// the ones gRPC's Ask gives for the same question and mode, citations included, since both go
// through the same service code; errors must come in OpenAI's shape with the matching status.
#include <signal.h>

#include <chrono>
#include <fstream>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "gtest/gtest.h"
#include "httplib.h"
#include "nlohmann/json.hpp"
#include "tests/daemon/daemon_process.h"

namespace knowd::testing {
namespace {

namespace v1 = ::knowd::v1;
using client::Client;
using json = nlohmann::json;

struct Reply {
  int status = 0;     // 0: no response (error says why)
  std::string error;  // httplib's reason when there was no response
  std::string body;
  json parsed;  // the body as JSON (discarded when it is not)
};

Reply Call(const std::string& target, const std::string& method, const std::string& path,
           const std::string& body = "", const std::string& token = "") {
  httplib::Client http("http://" + target);
  http.set_read_timeout(120, 0);
  http.set_write_timeout(120, 0);
  httplib::Headers headers;
  if (!token.empty()) headers.emplace("Authorization", "Bearer " + token);
  httplib::Result result = method == "GET"
                               ? http.Get(path.c_str(), headers)
                               : http.Post(path.c_str(), headers, body, "application/json");
  Reply reply;
  if (!result) {
    reply.error = httplib::to_string(result.error());
    return reply;
  }
  reply.status = result->status;
  reply.body = result->body;
  reply.parsed = json::parse(reply.body, nullptr, /*allow_exceptions=*/false);
  return reply;
}

Reply Post(const std::string& target, const std::string& path, const json& body,
           const std::string& token = "") {
  return Call(target, "POST", path, body.dump(), token);
}

// The `data:` events of a server-sent-event body; the last must be [DONE], which is left out.
std::vector<json> Events(const std::string& body, bool* done) {
  std::vector<json> events;
  *done = false;
  for (absl::string_view block : absl::StrSplit(body, "\n\n", absl::SkipEmpty())) {
    EXPECT_TRUE(absl::StartsWith(block, "data: ")) << block;
    block.remove_prefix(std::min<size_t>(6, block.size()));
    EXPECT_FALSE(*done) << "an event after [DONE]";
    if (block == "[DONE]") {
      *done = true;
      continue;
    }
    events.push_back(json::parse(std::string(block), nullptr, false));
    EXPECT_FALSE(events.back().is_discarded()) << block;
  }
  return events;
}

// `body` posted to `path` with "stream": true: its events (the last [DONE] checked and left out)
// and the text they carry, completions' text or chat's delta content.
struct Streamed {
  std::vector<json> events;
  std::string text;
};
Streamed PostStreamed(const std::string& target, const std::string& path, json body) {
  body["stream"] = true;
  const Reply r = Post(target, path, body);
  Streamed s;
  EXPECT_EQ(r.status, 200) << r.body;
  bool done = false;
  s.events = Events(r.body, &done);
  EXPECT_TRUE(done) << r.body;
  for (const json& e : s.events) {
    if (!e.contains("choices") || e["choices"].empty()) continue;
    const json& c = e["choices"][0];
    s.text += c.contains("delta") ? c["delta"].value("content", "") : c.value("text", "");
  }
  return s;
}

// An error body in OpenAI's shape: {"error": {"message", "type", "param", "code"}}.
void ExpectOpenAiError(const Reply& reply, int status, const std::string& type) {
  EXPECT_EQ(reply.status, status) << reply.body << reply.error;
  ASSERT_TRUE(reply.parsed.is_object()) << reply.body;
  ASSERT_TRUE(reply.parsed.contains("error")) << reply.body;
  const json& e = reply.parsed["error"];
  EXPECT_TRUE(e["message"].is_string() && !e["message"].get<std::string>().empty()) << reply.body;
  EXPECT_EQ(e["type"], type) << reply.body;
  EXPECT_TRUE(e.contains("param")) << reply.body;
  EXPECT_TRUE(e["code"].is_string()) << reply.body;
}

// The knowd object's citations against gRPC's cited passages.
void ExpectSameCitations(const json& knowd, const v1::AskFinal& grpc) {
  ASSERT_TRUE(knowd["citations"].is_array()) << knowd;
  ASSERT_EQ(knowd["citations"].size(), static_cast<size_t>(grpc.cited_size())) << knowd;
  for (int i = 0; i < grpc.cited_size(); ++i) {
    const json& c = knowd["citations"][i];
    const v1::Passage& p = grpc.cited(i);
    EXPECT_EQ(c["document_id"], p.document_id());
    EXPECT_EQ(c["index"], p.index());
    EXPECT_EQ(c["text"], p.text());
    EXPECT_EQ(static_cast<float>(c["score"].get<double>()), p.score());
  }
  EXPECT_EQ(knowd["nothing_in_memory"], grpc.nothing_in_memory());
  EXPECT_EQ(static_cast<float>(knowd["relevance"].get<double>()), grpc.relevance());
}

const char* ModeName(v1::AskMode mode) {
  switch (mode) {
    case v1::ASK_MODE_CLOSED_BOOK:
      return "closed-book";
    case v1::ASK_MODE_RAG:
      return "rag";
    case v1::ASK_MODE_MAC:
      return "mac";
    case v1::ASK_MODE_MAC_RAG:
      return "mac+rag";
    default:
      return "";
  }
}

std::string FinishReason(const v1::AskFinal& final) {
  return final.stop_reason() == "max_tokens" ? "length" : "stop";
}

struct Serving {
  std::unique_ptr<DaemonProcess> daemon;
  std::unique_ptr<Client> client;
};

Serving Start(const std::string& data_dir, const std::vector<std::string>& args,
              const std::string& token = "") {
  absl::StatusOr<std::unique_ptr<DaemonProcess>> daemon = DaemonProcess::Start(data_dir, args);
  if (!daemon.ok()) {
    ADD_FAILURE() << daemon.status();
    return {};
  }
  if (absl::Status s = WaitUntilServing(Options(**daemon, token)); !s.ok()) {
    ADD_FAILURE() << s << "\n" << (*daemon)->log();
    return {};
  }
  absl::StatusOr<std::unique_ptr<Client>> c = Client::Connect(Options(**daemon, token));
  if (!c.ok()) {
    ADD_FAILURE() << c.status();
    return {};
  }
  return {std::move(*daemon), std::move(*c)};
}

void IngestWorld(Client& client, const std::string& name_space = "") {
  std::vector<WorldPassage> passages = LoadWorldPassages();
  size_t next = 0;
  int stored = 0;
  absl::Status status = client.Ingest(
      [&](v1::IngestRequest* request) -> absl::StatusOr<bool> {
        if (next == passages.size()) return false;
        request->set_namespace_(name_space);
        request->set_id(passages[next].id);
        request->set_text(passages[next].text);
        ++next;
        return true;
      },
      [&](const v1::IngestAck& ack) { stored += ack.error_code() == 0 ? 1 : 0; });
  ASSERT_TRUE(status.ok()) << status;
  ASSERT_EQ(stored, static_cast<int>(passages.size()));
}

TEST(OpenAiEndToEnd, AnswersEqualGrpcAskInEveryMode) {
  TempDir dir;
  Serving s = Start(dir.path() + "/data", {});
  ASSERT_NE(s.client, nullptr);
  IngestWorld(*s.client);
  const std::string http = s.daemon->http_target();

  // One model per served mode, and the bare name.
  std::vector<v1::AskMode> modes = {v1::ASK_MODE_UNSPECIFIED, v1::ASK_MODE_CLOSED_BOOK,
                                    v1::ASK_MODE_RAG};
  if (HasAdapter()) {
    modes.push_back(v1::ASK_MODE_MAC);
    modes.push_back(v1::ASK_MODE_MAC_RAG);
  }
  const Reply models = Call(http, "GET", "/v1/models");
  ASSERT_EQ(models.status, 200) << models.body;
  EXPECT_EQ(models.parsed["object"], "list");
  std::vector<std::string> ids;
  for (const json& m : models.parsed["data"]) ids.push_back(m["id"].get<std::string>());
  std::vector<std::string> expected_ids;
  for (v1::AskMode mode : modes) {
    expected_ids.push_back(mode == v1::ASK_MODE_UNSPECIFIED
                               ? "knowd-tiny"
                               : absl::StrCat("knowd-tiny:", ModeName(mode)));
  }
  EXPECT_EQ(ids, expected_ids);

  // Questions the fixture answers, and one about someone the memory holds nothing on.
  std::vector<std::string> questions;
  for (const WorldQuestion& q : LoadWorldQuestions()) {
    if (q.oracle_correct && questions.size() < 2) questions.push_back(q.question);
  }
  questions.push_back("In which city does Zorbulon Quaxle live?");

  int compared = 0;
  bool saw_nothing_in_memory = false;
  for (const std::string& question : questions) {
    for (size_t m = 0; m < modes.size(); ++m) {
      const v1::AskMode mode = modes[m];
      const std::string model = expected_ids[m];
      SCOPED_TRACE(model + ": " + question);
      v1::AskRequest request;
      request.set_question(question);
      request.set_mode(mode);
      absl::StatusOr<v1::AskFinal> grpc = s.client->Ask(request);
      ASSERT_TRUE(grpc.ok()) << grpc.status();
      saw_nothing_in_memory |= grpc->nothing_in_memory();

      // Chat, one JSON answer.
      const json chat = {{"model", model},
                         {"messages",
                          {{{"role", "system"}, {"content", "Answer briefly."}},
                           {{"role", "user"}, {"content", question}}}}};
      const Reply r = Post(http, "/v1/chat/completions", chat);
      ASSERT_EQ(r.status, 200) << r.body;
      const json& a = r.parsed;
      EXPECT_EQ(a["object"], "chat.completion");
      EXPECT_EQ(a["model"], model);
      EXPECT_TRUE(a["id"].is_string() && a["created"].is_number_integer()) << r.body;
      ASSERT_EQ(a["choices"].size(), 1u) << r.body;
      EXPECT_EQ(a["choices"][0]["message"]["role"], "assistant");
      EXPECT_EQ(a["choices"][0]["message"]["content"], grpc->answer());
      EXPECT_EQ(a["choices"][0]["finish_reason"], FinishReason(*grpc));
      EXPECT_EQ(a["usage"]["prompt_tokens"], grpc->timings().prompt_tokens());
      EXPECT_EQ(a["usage"]["completion_tokens"], grpc->timings().generated_tokens());
      EXPECT_EQ(a["usage"]["total_tokens"],
                grpc->timings().prompt_tokens() + grpc->timings().generated_tokens());
      EXPECT_EQ(a["knowd"]["mode"], ModeName(grpc->mode()));
      ExpectSameCitations(a["knowd"], *grpc);
      if (grpc->nothing_in_memory()) {
        EXPECT_EQ(a["choices"][0]["message"]["content"], "");
      }

      // Chat, streamed: the deltas concatenate to the same answer.
      json streamed = chat;
      streamed["stream"] = true;
      streamed["stream_options"] = {{"include_usage", true}};
      const Reply sr = Post(http, "/v1/chat/completions", streamed);
      ASSERT_EQ(sr.status, 200) << sr.body;
      bool done = false;
      const std::vector<json> events = Events(sr.body, &done);
      EXPECT_TRUE(done) << sr.body;
      ASSERT_GE(events.size(), 3u) << sr.body;
      std::string text;
      for (size_t i = 0; i + 2 < events.size(); ++i) {
        EXPECT_EQ(events[i]["object"], "chat.completion.chunk");
        EXPECT_TRUE(events[i]["choices"][0]["finish_reason"].is_null());
        text += events[i]["choices"][0]["delta"].value("content", "");
      }
      EXPECT_EQ(events[0]["choices"][0]["delta"]["role"], "assistant");
      EXPECT_EQ(text, grpc->answer());
      const json& last = events[events.size() - 2];
      EXPECT_EQ(last["choices"][0]["finish_reason"], FinishReason(*grpc));
      ExpectSameCitations(last["knowd"], *grpc);
      const json& usage = events.back();
      EXPECT_TRUE(usage["choices"].empty()) << usage;
      EXPECT_EQ(usage["usage"]["completion_tokens"], grpc->timings().generated_tokens());

      // Completions, one JSON answer and streamed.
      const json completion = {{"model", model}, {"prompt", question}};
      const Reply cr = Post(http, "/v1/completions", completion);
      ASSERT_EQ(cr.status, 200) << cr.body;
      EXPECT_EQ(cr.parsed["object"], "text_completion");
      EXPECT_EQ(cr.parsed["choices"][0]["text"], grpc->answer());
      ExpectSameCitations(cr.parsed["knowd"], *grpc);
      const Streamed cs = PostStreamed(http, "/v1/completions", completion);
      ASSERT_FALSE(cs.events.empty());
      EXPECT_EQ(cs.text, grpc->answer());
      EXPECT_EQ(cs.events.back()["choices"][0]["finish_reason"], FinishReason(*grpc));
      ++compared;
    }
  }
  EXPECT_EQ(compared, static_cast<int>(questions.size() * modes.size()));
  EXPECT_TRUE(saw_nothing_in_memory) << "the made-up name should find nothing in memory";

  // The request's knowd object and sampling fields reach AskRequest: max_tokens 1 stops at one
  // token ("length"), the mode comes from knowd.mode on the bare model name.
  v1::AskRequest one_token;
  one_token.set_question(questions[0]);
  one_token.set_mode(v1::ASK_MODE_RAG);
  one_token.set_top_k(2);
  one_token.set_max_tokens(1);
  absl::StatusOr<v1::AskFinal> grpc = s.client->Ask(one_token);
  ASSERT_TRUE(grpc.ok()) << grpc.status();
  const Reply r = Post(http, "/v1/chat/completions",
                       {{"model", "knowd-tiny"},
                        {"max_tokens", 1},
                        {"temperature", 0},
                        {"seed", 7},
                        {"knowd", {{"mode", "rag"}, {"top_k", 2}, {"namespace", "default"}}},
                        {"messages", {{{"role", "user"}, {"content", questions[0]}}}}});
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.parsed["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(r.parsed["usage"]["completion_tokens"], 1);
  EXPECT_EQ(r.parsed["choices"][0]["message"]["content"], grpc->answer());
  EXPECT_EQ(r.parsed["knowd"]["mode"], "rag");
  ExpectSameCitations(r.parsed["knowd"], *grpc);

  EXPECT_EQ(s.daemon->Terminate(), 0) << s.daemon->log();
}

TEST(OpenAiEndToEnd, TokensNamespacesAndErrorsInOpenAiShape) {
  TempDir dir;
  const std::string tokens = dir.path() + "/tokens.json";
  std::ofstream(tokens) << R"([{"token": "admin-token", "namespaces": ["*"], "roles": ["admin"]},
             {"token": "team-a-reader", "namespaces": ["team-a"], "roles": ["read"]}])";
  Serving s = Start(dir.path() + "/data", {"--tokens-file", tokens, "--max-message-bytes", "65536"},
                    "admin-token");
  ASSERT_NE(s.client, nullptr);
  IngestWorld(*s.client, "team-a");
  IngestWorld(*s.client, "default");
  const std::string http = s.daemon->http_target();
  const std::string question = LoadWorldQuestions()[0].question;
  auto chat = [&](const std::string& model, const std::string& name_space) {
    json body = {{"model", model}, {"messages", {{{"role", "user"}, {"content", question}}}}};
    if (!name_space.empty()) body["knowd"] = {{"namespace", name_space}};
    return body;
  };

  // The reader's own namespace answers as gRPC does with the same token.
  absl::StatusOr<std::unique_ptr<Client>> reader =
      Client::Connect(Options(*s.daemon, "team-a-reader"));
  ASSERT_TRUE(reader.ok()) << reader.status();
  v1::AskRequest request;
  request.set_namespace_("team-a");
  request.set_question(question);
  request.set_mode(v1::ASK_MODE_RAG);
  absl::StatusOr<v1::AskFinal> grpc = (*reader)->Ask(request);
  ASSERT_TRUE(grpc.ok()) << grpc.status();
  Reply r = Post(http, "/v1/chat/completions", chat("knowd-tiny:rag", "team-a"), "team-a-reader");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.parsed["choices"][0]["message"]["content"], grpc->answer());
  EXPECT_EQ(r.parsed["knowd"]["namespace"], "team-a");
  ExpectSameCitations(r.parsed["knowd"], *grpc);
  EXPECT_EQ(Call(http, "GET", "/v1/models", "", "team-a-reader").status, 200);

  // 401: no token, an unknown one; on the models list too.
  ExpectOpenAiError(Post(http, "/v1/chat/completions", chat("knowd-tiny:rag", "team-a")), 401,
                    "authentication_error");
  ExpectOpenAiError(
      Post(http, "/v1/chat/completions", chat("knowd-tiny:rag", "team-a"), "not-a-token"), 401,
      "authentication_error");
  ExpectOpenAiError(Call(http, "GET", "/v1/models"), 401, "authentication_error");
  // 403: a namespace the token is not granted (default, named or not), streaming or not.
  ExpectOpenAiError(Post(http, "/v1/chat/completions", chat("knowd-tiny:rag", ""), "team-a-reader"),
                    403, "permission_error");
  json streamed = chat("knowd-tiny:rag", "default");
  streamed["stream"] = true;
  ExpectOpenAiError(Post(http, "/v1/chat/completions", streamed, "team-a-reader"), 403,
                    "permission_error");
  // 404: a model this daemon does not serve, or an endpoint it does not have.
  r = Post(http, "/v1/chat/completions", chat("gpt-4o", "team-a"), "team-a-reader");
  ExpectOpenAiError(r, 404, "invalid_request_error");
  EXPECT_EQ(r.parsed["error"]["code"], "model_not_found");
  EXPECT_EQ(r.parsed["error"]["param"], "model");
  ExpectOpenAiError(Post(http, "/v1/completions",
                         {{"model", "knowd-tiny:mystery"}, {"prompt", question}}, "team-a-reader"),
                    404, "invalid_request_error");
  ExpectOpenAiError(Call(http, "GET", "/v1/embeddings", "", "team-a-reader"), 404,
                    "invalid_request_error");
  // 400: a body that is not JSON, fields of the wrong type or out of range, no question.
  ExpectOpenAiError(Call(http, "POST", "/v1/chat/completions", "{\"model\": ", "team-a-reader"),
                    400, "invalid_request_error");
  json bad = chat("knowd-tiny:rag", "team-a");
  bad["temperature"] = "hot";
  r = Post(http, "/v1/chat/completions", bad, "team-a-reader");
  ExpectOpenAiError(r, 400, "invalid_request_error");
  EXPECT_EQ(r.parsed["error"]["param"], "temperature");
  bad = chat("knowd-tiny:rag", "team-a");
  bad["max_tokens"] = 100000;
  ExpectOpenAiError(Post(http, "/v1/chat/completions", bad, "team-a-reader"), 400,
                    "invalid_request_error");
  ExpectOpenAiError(Post(http, "/v1/chat/completions",
                         {{"model", "knowd-tiny:rag"},
                          {"messages", {{{"role", "assistant"}, {"content", "hello"}}}}},
                         "team-a-reader"),
                    400, "invalid_request_error");
  // 413: a body over --max-message-bytes.
  json big = chat("knowd-tiny:rag", "team-a");
  big["messages"][0]["content"] = std::string(100000, 'a');
  ExpectOpenAiError(Post(http, "/v1/chat/completions", big, "team-a-reader"), 413,
                    "invalid_request_error");

  // The daemon still answers after all of that.
  EXPECT_EQ(
      Post(http, "/v1/chat/completions", chat("knowd-tiny:rag", "team-a"), "team-a-reader").status,
      200);
  EXPECT_EQ(s.daemon->Terminate(), 0) << s.daemon->log();
}

// knowd.session_id asks under a session (created here through gRPC with the bundle's session
// mapper): the answers are gRPC Ask's with the same session_id, streamed or not, chat or
// completions, alone and with a memory mode; the knowd object echoes the session; a session id
// of the wrong type is 400 naming the field and an unknown one 404, as gRPC's NOT_FOUND.
TEST(OpenAiEndToEnd, SessionIdAsksUnderTheSessionAsGrpcAskDoes) {
  TempDir dir;
  Serving s = Start(dir.path() + "/data", {});
  ASSERT_NE(s.client, nullptr);
  const std::string http = s.daemon->http_target();
  // Demonstrations of one in-context task ("Q: <name>: <occupation>\nA: <label>\n").
  std::vector<v1::SessionChunk> chunks(2);
  chunks[0].set_text(
      "Q: Damka Gralinvo: accountant\nA: free\nQ: Coros Zangorbel: designer\nA: fun\n"
      "Q: Ruloseth Gilgra: nurse\nA: new\nQ: Yoxi Fenbello: accountant\nA: free\n");
  chunks[1].set_text(
      "Q: Mivel Damxisa: designer\nA: fun\nQ: Risub Wynlintem: nurse\nA: new\n"
      "Q: Invas Temwenvo: accountant\nA: free\nQ: Moqua Zelvasmi: designer\nA: fun\n");
  absl::StatusOr<v1::Session> session = s.client->CreateSession(chunks);
  if (session.status().code() == absl::StatusCode::kFailedPrecondition) {
    GTEST_SKIP() << "the bundle has no session mapper: " << session.status();
  }
  ASSERT_TRUE(session.ok()) << session.status() << s.daemon->log();
  const std::string id = session->id();
  const std::vector<std::string> questions = {"Lorenor Ithmo: nurse", "Celren Corvel: designer",
                                              "Kusa Gralinvo: accountant"};
  auto grpc_ask = [&](const std::string& question, v1::AskMode mode, const std::string& sid) {
    v1::AskRequest request;
    request.set_question(question);
    request.set_mode(mode);
    request.set_session_id(sid);
    return s.client->Ask(request);
  };

  int differs_from_closed_book = 0;
  for (const std::string& question : questions) {
    SCOPED_TRACE(question);
    absl::StatusOr<v1::AskFinal> grpc = grpc_ask(question, v1::ASK_MODE_UNSPECIFIED, id);
    ASSERT_TRUE(grpc.ok()) << grpc.status();
    ASSERT_EQ(grpc->session_id(), id);
    absl::StatusOr<v1::AskFinal> plain = grpc_ask(question, v1::ASK_MODE_CLOSED_BOOK, "");
    ASSERT_TRUE(plain.ok()) << plain.status();
    if (plain->answer() != grpc->answer()) ++differs_from_closed_book;

    // Chat, one JSON answer: the bare model name and a session is the session alone.
    const json chat = {{"model", "knowd-tiny"},
                       {"messages", {{{"role", "user"}, {"content", question}}}},
                       {"knowd", {{"session_id", id}}}};
    const Reply r = Post(http, "/v1/chat/completions", chat);
    ASSERT_EQ(r.status, 200) << r.body;
    EXPECT_EQ(r.parsed["choices"][0]["message"]["content"], grpc->answer());
    EXPECT_EQ(r.parsed["knowd"]["session_id"], id);
    EXPECT_EQ(r.parsed["knowd"]["mode"], "closed-book");
    EXPECT_EQ(r.parsed["usage"]["completion_tokens"], grpc->timings().generated_tokens());

    // Chat, streamed.
    const Streamed ss = PostStreamed(http, "/v1/chat/completions", chat);
    ASSERT_GE(ss.events.size(), 2u);
    EXPECT_EQ(ss.text, grpc->answer());
    EXPECT_EQ(ss.events.back()["knowd"]["session_id"], id);

    // Completions, one JSON answer and streamed.
    const json completion = {
        {"model", "knowd-tiny"}, {"prompt", question}, {"knowd", {{"session_id", id}}}};
    const Reply cr = Post(http, "/v1/completions", completion);
    ASSERT_EQ(cr.status, 200) << cr.body;
    EXPECT_EQ(cr.parsed["choices"][0]["text"], grpc->answer());
    EXPECT_EQ(cr.parsed["knowd"]["session_id"], id);
    const Streamed cs = PostStreamed(http, "/v1/completions", completion);
    ASSERT_FALSE(cs.events.empty());
    EXPECT_EQ(cs.text, grpc->answer());
    EXPECT_EQ(cs.events.back()["knowd"]["session_id"], id);

    // Without a session the knowd object names none.
    const Reply none = Post(http, "/v1/chat/completions",
                            {{"model", "knowd-tiny:closed-book"},
                             {"messages", {{{"role", "user"}, {"content", question}}}}});
    ASSERT_EQ(none.status, 200) << none.body;
    EXPECT_EQ(none.parsed["choices"][0]["message"]["content"], plain->answer());
    EXPECT_FALSE(none.parsed["knowd"].contains("session_id")) << none.body;
  }
  EXPECT_GT(differs_from_closed_book, 0) << "the session changed no answer: was it applied?";

  // With a memory mode: that mode's memory and the session together, as gRPC answers.
  IngestWorld(*s.client);
  const std::string world_question = LoadWorldQuestions()[0].question;
  absl::StatusOr<v1::AskFinal> grpc_rag = grpc_ask(world_question, v1::ASK_MODE_RAG, id);
  ASSERT_TRUE(grpc_rag.ok()) << grpc_rag.status();
  const Reply rag = Post(http, "/v1/chat/completions",
                         {{"model", "knowd-tiny:rag"},
                          {"messages", {{{"role", "user"}, {"content", world_question}}}},
                          {"knowd", {{"session_id", id}}}});
  ASSERT_EQ(rag.status, 200) << rag.body;
  EXPECT_EQ(rag.parsed["choices"][0]["message"]["content"], grpc_rag->answer());
  EXPECT_EQ(rag.parsed["knowd"]["mode"], "rag");
  EXPECT_EQ(rag.parsed["knowd"]["session_id"], id);
  ExpectSameCitations(rag.parsed["knowd"], *grpc_rag);

  // Errors: the wrong type is 400 naming the field; an unknown session is gRPC's NOT_FOUND, 404,
  // streamed or not, and the message names the session.
  Reply bad = Post(http, "/v1/chat/completions",
                   {{"model", "knowd-tiny"},
                    {"messages", {{{"role", "user"}, {"content", questions[0]}}}},
                    {"knowd", {{"session_id", 42}}}});
  ExpectOpenAiError(bad, 400, "invalid_request_error");
  EXPECT_EQ(bad.parsed["error"]["param"], "knowd.session_id");
  EXPECT_EQ(bad.parsed["error"]["message"], "knowd.session_id: must be a string");
  EXPECT_EQ(grpc_ask(questions[0], v1::ASK_MODE_UNSPECIFIED, "no-such-session").status().code(),
            absl::StatusCode::kNotFound);
  json unknown = {{"model", "knowd-tiny"},
                  {"messages", {{{"role", "user"}, {"content", questions[0]}}}},
                  {"knowd", {{"session_id", "no-such-session"}}}};
  for (bool stream : {false, true}) {
    unknown["stream"] = stream;
    const Reply r = Post(http, "/v1/chat/completions", unknown);
    ExpectOpenAiError(r, 404, "invalid_request_error");
    EXPECT_EQ(r.parsed["error"]["code"], "not_found");
    EXPECT_NE(r.parsed["error"]["message"].get<std::string>().find("no-such-session"),
              std::string::npos)
        << r.body;
  }
  // A deleted session is unknown too.
  v1::DeleteSessionRequest del;
  del.set_session_id(id);
  ASSERT_TRUE(s.client->DeleteSession(del).ok());
  ExpectOpenAiError(
      Post(http, "/v1/completions",
           {{"model", "knowd-tiny"}, {"prompt", questions[0]}, {"knowd", {{"session_id", id}}}}),
      404, "invalid_request_error");
  EXPECT_EQ(s.daemon->Terminate(), 0) << s.daemon->log();
}

// mac+rag on the world's first question, at most 32 tokens.
json WorldChat() {
  return {{"model", "knowd-tiny:mac+rag"},
          {"max_tokens", 32},
          {"messages", {{{"role", "user"}, {"content", LoadWorldQuestions()[0].question}}}}};
}

// `n` chat completions of `body` sent at once, each from a thread of its own; Join() waits for
// them and gives their replies (in the order they came back).
class ConcurrentChats {
 public:
  ConcurrentChats(const std::string& http, const json& body, int n) {
    for (int i = 0; i < n; ++i) {
      callers_.emplace_back([this, http, body] {
        Reply r = Post(http, "/v1/chat/completions", body);
        std::lock_guard<std::mutex> lock(mu_);
        replies_.push_back(std::move(r));
      });
    }
  }
  ~ConcurrentChats() { Join(); }
  std::vector<Reply> Join() {
    for (std::thread& t : callers_) t.join();
    callers_.clear();
    return replies_;
  }

 private:
  std::mutex mu_;
  std::vector<Reply> replies_;
  std::vector<std::thread> callers_;
};

// A full ask queue is 429 rate_limit_error, as OpenAI's clients expect to retry it; the calls
// admitted still answer.
TEST(OpenAiEndToEnd, AFullAskQueueIs429InOpenAiShape) {
  TempDir dir;
  Serving s = Start(dir.path() + "/data", {"--ask-queue-size", "1", "--ask-max-batch", "1"});
  ASSERT_NE(s.client, nullptr);
  IngestWorld(*s.client, "default");
  const std::string http = s.daemon->http_target();
  const json body = WorldChat();
  ConcurrentChats chats(http, body, 24);
  const std::vector<Reply> replies = chats.Join();
  int answered = 0;
  int refused = 0;
  for (const Reply& r : replies) {
    if (r.status == 200) {
      ++answered;
    } else {
      ++refused;
      ExpectOpenAiError(r, 429, "rate_limit_error");
    }
  }
  std::printf("24 concurrent chat completions, ask queue 1: %d answered, %d refused with 429\n",
              answered, refused);
  EXPECT_GE(answered, 1);
  EXPECT_GE(refused, 1);
  EXPECT_EQ(s.daemon->Terminate(), 0) << s.daemon->log();
}

// A daemon told to stop answers new calls 503 (server_error) while it finishes the ones it
// admitted, then exits 0.
TEST(OpenAiEndToEnd, ADrainingDaemonAnswers503AndFinishesWhatItAdmitted) {
  TempDir dir;
  Serving s = Start(dir.path() + "/data", {"--ask-max-batch", "1", "--drain-timeout", "30"});
  ASSERT_NE(s.client, nullptr);
  IngestWorld(*s.client, "default");
  const std::string http = s.daemon->http_target();
  const json body = WorldChat();
  ConcurrentChats chats(http, body, 16);
  // The questions queue behind one another (one at a time). Once one is answered and at least
  // 8 wait in the queue (by /metrics), stop the daemon among them: those 8 are admitted and
  // must be answered; any not yet admitted gets 503.
  auto sample = [](const std::string& text, const std::string& name) {
    for (absl::string_view line : absl::StrSplit(text, '\n')) {
      double value = 0;
      if (absl::ConsumePrefix(&line, name + " ") && absl::SimpleAtod(line, &value)) return value;
    }
    return 0.0;
  };
  for (int polls = 0;; ++polls) {
    ASSERT_LT(polls, 2000) << "the questions never queued";
    const std::string m = Call(http, "GET", "/metrics").body;
    if (sample(m, "knowd_rpc_total{method=\"ChatCompletions\",code=\"OK\"}") >= 1 &&
        sample(m, "knowd_queue_depth{queue=\"ask\"}") >= 8) {
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  ASSERT_EQ(::kill(s.daemon->pid(), SIGTERM), 0);
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  ExpectOpenAiError(Post(http, "/v1/chat/completions", body), 503, "server_error");
  const std::vector<Reply> replies = chats.Join();
  int answered = 0;
  int refused = 0;
  for (const Reply& r : replies) {
    if (r.status == 200) {
      ++answered;
      EXPECT_FALSE(r.parsed["choices"][0]["message"]["content"].get<std::string>().empty());
    } else if (r.status != 0) {
      ++refused;
      ExpectOpenAiError(r, 503, "server_error");  // not yet admitted at the stop
    }
    // Status 0: the caller connected only after the daemon had finished and closed its port.
  }
  std::printf("16 chat completions around SIGTERM: %d answered, %d refused with 503\n", answered,
              refused);
  EXPECT_GE(answered, 9);  // the one answered before the stop and the 8 or more queued
  EXPECT_EQ(s.daemon->Terminate(), 0) << s.daemon->log();
}

}  // namespace
}  // namespace knowd::testing
