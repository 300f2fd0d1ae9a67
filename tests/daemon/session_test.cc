// Sessions end to end: the real daemon on loopback with a real data directory, serving knowd-tiny
// with a session mapper written here (random weights, fixed seed: the test checks the serving
// path, not what a trained mapper learned). A session's answers must equal what the engine gives
// in-process for the same context (SessionMapper::Absorb, LowRankState, greedy decoding of the
// plain question prompt); its stored size must not grow with the context; it must expire, survive
// a restart, be refused to the wrong roles, and be refused with a clear error by a bundle without
// a mapper or with another mapper.
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "httplib.h"
#include "knowledge/bundle.h"
#include "knowledge/prompt.h"
#include "model/low_rank.h"
#include "model/session_mapper.h"
#include "model/tensor_file.h"
#include "nlohmann/json.hpp"
#include "tests/daemon/daemon_process.h"

namespace knowd::testing {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

constexpr int kMaxTokens = 12;
constexpr int kMaxChunkTokens = 96;

// An adapter directory: links to knowd-tiny's adapter files, and (seed != 0) a session mapper with
// random weights drawn from `seed`.
void WriteAdapterDir(const std::string& dir, uint32_t seed, const LlamaConfig& c) {
  fs::create_directories(dir);
  for (const auto& entry : fs::directory_iterator(kTinyModel + "/adapter")) {
    const std::string name = entry.path().filename().string();
    if (name.rfind("session_mapper", 0) == 0) continue;
    fs::create_symlink(entry.path(), fs::path(dir) / name);
  }
  if (seed == 0) return;
  const int r = 4, r2 = 4;
  const int kv = c.kv_dim();
  struct Site {
    int layer;
    const char* projection;
    int in, out;
  };
  const std::vector<Site> sites = {{1, "o", c.q_dim(), c.hidden_size},
                                   {c.num_layers - 1, "down", c.intermediate_size, c.hidden_size}};
  std::mt19937 rng(seed);
  std::vector<std::vector<float>> data;
  std::vector<HostTensor> tensors;
  auto add = [&](const std::string& name, std::vector<int64_t> shape, float scale, float mean) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    std::normal_distribution<float> normal(mean, scale);
    std::vector<float>& values = data.emplace_back(n);
    for (float& v : values) v = normal(rng);
    tensors.push_back({name, DType::kF32, shape, nullptr, n * 4});
  };
  data.reserve(6 * sites.size());
  nlohmann::json json_sites = nlohmann::json::array();
  for (size_t i = 0; i < sites.size(); ++i) {
    const Site& s = sites[i];
    const std::string prefix = absl::StrCat("site", i, ".");
    add(prefix + "query", {r, kv}, 1.0f / std::sqrt(static_cast<float>(kv)), 0);
    add(prefix + "proj", {r2, kv}, 1.0f / std::sqrt(static_cast<float>(kv)), 0);
    add(prefix + "gate_weight", {r2, r2}, 0.3f, 0);
    add(prefix + "gate_bias", {r2}, 0.1f, 1.0f);
    add(prefix + "w2", {r, s.in}, 2.0f / std::sqrt(static_cast<float>(s.in)), 0);
    add(prefix + "w1", {s.out, r2}, 2.0f, 0);
    json_sites.push_back({{"layer", s.layer}, {"projection", s.projection}});
  }
  for (size_t i = 0; i < tensors.size(); ++i) tensors[i].data = data[i].data();
  ASSERT_TRUE(WriteSafetensors(dir + "/session_mapper.safetensors", tensors).ok());
  std::ofstream(dir + "/session_mapper.json") << nlohmann::json{
      {"format", "knowd-session-mapper"},
      {"version", 1},
      {"rank", r},
      {"rank_out", r2},
      {"demos_per_chunk", 4},
      {"max_chunk_tokens", kMaxChunkTokens},
      {"sites", json_sites}}.dump(2);
}

// `count` demonstrations of one in-context task (an occupation -> label rule), as the world's
// in-context tasks write them: "Q: <input>\nA: <output>\n".
std::string Demonstrations(int begin, int count) {
  static const char* kFirst[] = {"Damka", "Coros", "Ruloseth", "Yoxi",   "Mivel", "Risub",
                                 "Invas", "Moqua", "Lorenor",  "Celren", "Kusa",  "Naprape"};
  static const char* kLast[] = {"Gralinvo",  "Zangorbel", "Gilgra",   "Fenbello", "Damxisa",
                                "Wynlintem", "Temwenvo",  "Zelvasmi", "Ithmo",    "Corvel"};
  static const char* kJobs[][2] = {{"accountant", "free"}, {"designer", "fun"}, {"nurse", "new"}};
  std::string out;
  for (int i = begin; i < begin + count; ++i) {
    const auto& job = kJobs[i % 3];
    absl::StrAppend(&out, "Q: ", kFirst[i % 12], " ", kLast[(i / 12) % 10], ": ", job[0],
                    "\nA: ", job[1], "\n");
  }
  return out;
}

// What the engine answers in-process: the messages absorbed one after another (each split by
// SessionChunks, as the daemon does), the state served as a low-rank update under the plain
// question prompt, greedy decoding up to a newline, EOS or kMaxTokens.
class Engine {
 public:
  static Engine& Get() {
    static Engine* engine = new Engine();
    return *engine;
  }
  const LlamaConfig& config() const { return bundle_.model->config(); }
  // Loads `adapter_dir`'s mapper (once per directory).
  SessionMapper& Mapper(const std::string& adapter_dir) {
    auto it = mappers_.find(adapter_dir);
    if (it == mappers_.end()) {
      absl::StatusOr<std::unique_ptr<SessionMapper>> m =
          SessionMapper::Load(adapter_dir, bundle_.model.get());
      EXPECT_TRUE(m.ok()) << m.status();
      it = mappers_.emplace(adapter_dir, std::move(*m)).first;
    }
    return *it->second;
  }
  std::vector<float> State(SessionMapper& mapper, const std::vector<std::string>& messages) {
    std::vector<float> state(mapper.state_floats(), 0.0f);
    for (const std::string& m : messages) {
      auto chunks = SessionChunks(*bundle_.tokenizer, m, mapper.spec().max_chunk_tokens);
      EXPECT_TRUE(mapper.Absorb(chunks, &state).ok());
    }
    return state;
  }
  int Chunks(SessionMapper& mapper, const std::vector<std::string>& messages, int* tokens) {
    int n = 0;
    *tokens = 0;
    for (const std::string& m : messages) {
      for (const auto& c : SessionChunks(*bundle_.tokenizer, m, mapper.spec().max_chunk_tokens)) {
        ++n;
        *tokens += static_cast<int>(c.size());
      }
    }
    return n;
  }
  std::string Answer(SessionMapper& mapper, const std::vector<float>& state,
                     const std::string& question) {
    absl::StatusOr<std::unique_ptr<LowRankState>> update =
        LowRankState::Create(&mapper.factors(), state);
    EXPECT_TRUE(update.ok()) << update.status();
    Transformer& model = *bundle_.model;
    auto cache = model.NewCache(model.config().max_position_embeddings);
    EXPECT_TRUE(cache.ok());
    std::vector<int32_t> tokens =
        bundle_.tokenizer->Encode(knowledge::QuestionPrompt(question), true);
    std::vector<int32_t> generated;
    std::vector<float> logits;
    for (int step = 0; step < kMaxTokens; ++step) {
      SequenceStep s{cache->get(), tokens, false};
      s.update = update->get();
      EXPECT_TRUE(model.Forward(std::span<const SequenceStep>(&s, 1), &logits).ok());
      const int32_t next =
          static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
      if (next == bundle_.tokenizer->eos_id()) break;
      generated.push_back(next);
      std::string text = bundle_.tokenizer->Decode(generated);
      if (text.find('\n') != std::string::npos) break;
      tokens.assign(1, next);
    }
    std::string text = bundle_.tokenizer->Decode(generated);
    text = text.substr(0, text.find('\n'));
    text.erase(0, text.find_first_not_of(' '));
    return text;
  }

 private:
  Engine() {
    knowledge::BundleOptions options;
    options.model = kTinyModel;
    options.adapter = "none";
    options.threads = 1;
    absl::StatusOr<knowledge::Bundle> b = knowledge::LoadBundle(options);
    EXPECT_TRUE(b.ok()) << b.status();
    bundle_ = std::move(*b);
  }
  knowledge::Bundle bundle_;
  std::map<std::string, std::unique_ptr<SessionMapper>> mappers_;
};

std::unique_ptr<client::Client> Connect(const client::ClientOptions& options) {
  absl::StatusOr<std::unique_ptr<client::Client>> c = client::Client::Connect(options);
  EXPECT_TRUE(c.ok()) << c.status();
  return std::move(*c);
}

std::vector<v1::SessionChunk> Chunks(const std::vector<std::string>& messages,
                                     const std::string& name_space = "") {
  std::vector<v1::SessionChunk> out;
  for (const std::string& m : messages) out.emplace_back().set_text(m);
  if (!out.empty()) out.front().set_namespace_(name_space);
  return out;
}

absl::StatusOr<v1::AskFinal> AskWith(client::Client& c, const std::string& session,
                                     const std::string& question,
                                     v1::AskMode mode = v1::ASK_MODE_UNSPECIFIED) {
  v1::AskRequest request;
  request.set_question(question);
  request.set_session_id(session);
  request.set_mode(mode);
  request.set_max_tokens(kMaxTokens);
  return c.Ask(request);
}

// 8 demonstrations in two messages of 4 (the mapper's demos_per_chunk), the questions after them.
const std::vector<std::string> kFirstMessages = {Demonstrations(0, 4), Demonstrations(4, 4)};
const std::vector<std::string> kQuestions = {"Mivel Zangorbel: nurse", "Yoxi Ithmo: designer",
                                             "Kusa Corvel: accountant"};

class SessionTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir();
    const LlamaConfig& c = Engine::Get().config();
    WriteAdapterDir(adapter(), 7, c);
    WriteAdapterDir(other_adapter(), 8, c);
    WriteAdapterDir(no_mapper_adapter(), 0, c);
  }
  static void TearDownTestSuite() { delete dir_; }
  static std::string adapter() { return dir_->path() + "/adapter"; }
  static std::string other_adapter() { return dir_->path() + "/adapter-other"; }
  static std::string no_mapper_adapter() { return dir_->path() + "/adapter-none"; }
  static std::string Data(const std::string& name) { return dir_->path() + "/" + name; }

  static TempDir* dir_;
};
TempDir* SessionTest::dir_ = nullptr;

TEST_F(SessionTest, AnswersAsTheEngineDoesAndAppendListDeleteWork) {
  if (std::getenv("KNOWD_TEST_ADAPTER")) GTEST_SKIP() << "this test brings its own adapter";
  std::unique_ptr<DaemonProcess> daemon =
      StartServingOrFail(Data("data-main"), {"--adapter", adapter()});
  ASSERT_NE(daemon, nullptr);
  auto c = Connect(Options(*daemon));
  Engine& engine = Engine::Get();
  SessionMapper& mapper = engine.Mapper(adapter());

  // Create: the stored size is the state's, the counts are SessionChunks'.
  std::vector<v1::SessionChunk> first = Chunks(kFirstMessages);
  first.front().set_label("occupations");
  absl::StatusOr<v1::Session> s = c->CreateSession(first);
  ASSERT_TRUE(s.ok()) << s.status() << daemon->log();
  int tokens = 0;
  EXPECT_EQ(s->chunks(), engine.Chunks(mapper, kFirstMessages, &tokens));
  EXPECT_EQ(s->tokens(), tokens);
  EXPECT_EQ(s->state_bytes(), mapper.state_floats() * 4);
  EXPECT_EQ(s->label(), "occupations");
  EXPECT_EQ(s->namespace_(), "default");
  EXPECT_EQ(s->mapper_sha256(), mapper.spec().sha256);
  EXPECT_GT(s->expires_unix(), s->created_unix());  // the daemon's default TTL

  // Ask: the daemon's answer is the engine's for the same state.
  const std::vector<float> state8 = engine.State(mapper, kFirstMessages);
  int differs_from_closed_book = 0;
  for (const std::string& q : kQuestions) {
    absl::StatusOr<v1::AskFinal> answer = AskWith(*c, s->id(), q);
    ASSERT_TRUE(answer.ok()) << answer.status();
    EXPECT_EQ(answer->answer(), engine.Answer(mapper, state8, q)) << q;
    EXPECT_EQ(answer->session_id(), s->id());
    EXPECT_EQ(answer->mode(), v1::ASK_MODE_CLOSED_BOOK);
    absl::StatusOr<v1::AskFinal> plain = AskWith(*c, "", q, v1::ASK_MODE_CLOSED_BOOK);
    ASSERT_TRUE(plain.ok()) << plain.status();
    if (plain->answer() != answer->answer()) ++differs_from_closed_book;
  }
  EXPECT_GT(differs_from_closed_book, 0) << "the session's update changed no answer";

  // Append: the state moves on, the size does not.
  const std::vector<std::string> more = {Demonstrations(8, 4), Demonstrations(12, 4)};
  std::vector<v1::SessionChunk> append = Chunks(more);
  append.front().set_session_id(s->id());
  absl::StatusOr<v1::Session> appended = c->AppendSession(append);
  ASSERT_TRUE(appended.ok()) << appended.status();
  int more_tokens = 0;
  EXPECT_EQ(appended->chunks(), s->chunks() + engine.Chunks(mapper, more, &more_tokens));
  EXPECT_EQ(appended->tokens(), s->tokens() + more_tokens);
  EXPECT_EQ(appended->state_bytes(), s->state_bytes());
  std::vector<std::string> all = kFirstMessages;
  all.insert(all.end(), more.begin(), more.end());
  const std::vector<float> state16 = engine.State(mapper, all);
  EXPECT_NE(state16, state8);
  for (const std::string& q : kQuestions) {
    absl::StatusOr<v1::AskFinal> answer = AskWith(*c, s->id(), q);
    ASSERT_TRUE(answer.ok()) << answer.status();
    EXPECT_EQ(answer->answer(), engine.Answer(mapper, state16, q)) << q;
  }

  // A failed append (its second message is empty) leaves the state it found.
  std::vector<v1::SessionChunk> failing = Chunks({Demonstrations(40, 4), ""});
  failing.front().set_session_id(s->id());
  EXPECT_EQ(c->AppendSession(failing).status().code(), absl::StatusCode::kInvalidArgument);
  absl::StatusOr<v1::AskFinal> unchanged = AskWith(*c, s->id(), kQuestions[0]);
  ASSERT_TRUE(unchanged.ok()) << unchanged.status();
  EXPECT_EQ(unchanged->answer(), engine.Answer(mapper, state16, kQuestions[0]));

  // One message longer than a chunk is split, not refused; 64 demonstrations take the bytes 8 do.
  std::vector<v1::SessionChunk> long_one = Chunks({Demonstrations(0, 64)});
  absl::StatusOr<v1::Session> big = c->CreateSession(long_one);
  ASSERT_TRUE(big.ok()) << big.status();
  EXPECT_GT(big->chunks(), 1);
  EXPECT_EQ(big->state_bytes(), s->state_bytes());
  absl::StatusOr<v1::AskFinal> big_answer = AskWith(*c, big->id(), kQuestions[0]);
  ASSERT_TRUE(big_answer.ok()) << big_answer.status();
  EXPECT_EQ(big_answer->answer(),
            engine.Answer(mapper, engine.State(mapper, {Demonstrations(0, 64)}), kQuestions[0]));

  absl::StatusOr<v1::ListSessionsResponse> list = c->ListSessions();
  ASSERT_TRUE(list.ok()) << list.status();
  ASSERT_EQ(list->sessions_size(), 2);
  for (const v1::Session& listed : list->sessions()) {
    EXPECT_EQ(listed.state_bytes(), mapper.state_floats() * 4);
    if (listed.id() == s->id()) {
      EXPECT_EQ(listed.chunks(), appended->chunks());
    }
  }

  // A memory mode in a namespace without documents is refused, pointing at the session alone.
  absl::StatusOr<v1::AskFinal> empty_rag = AskWith(*c, s->id(), kQuestions[0], v1::ASK_MODE_RAG);
  EXPECT_EQ(empty_rag.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(empty_rag.status().message()), HasSubstr("with the session alone"));

  // With a memory mode: that mode's prompt, the session's update on top.
  std::vector<v1::IngestAck> acks;
  ASSERT_TRUE(c->Ingest(
                   [n = 0](v1::IngestRequest* r) mutable -> absl::StatusOr<bool> {
                     if (n++ > 0) return false;
                     r->set_id("doc");
                     r->set_text("Mivel Zangorbel works as a nurse in Dripe.");
                     return true;
                   },
                   [&](const v1::IngestAck& ack) { acks.push_back(ack); })
                  .ok());
  absl::StatusOr<v1::AskFinal> rag = AskWith(*c, s->id(), kQuestions[0], v1::ASK_MODE_RAG);
  ASSERT_TRUE(rag.ok()) << rag.status();
  EXPECT_EQ(rag->mode(), v1::ASK_MODE_RAG);
  EXPECT_EQ(rag->session_id(), s->id());

  // Errors: an empty chunk, no chunk, an unknown session.
  std::vector<v1::SessionChunk> empty = Chunks({""});
  EXPECT_EQ(c->CreateSession(empty).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(c->CreateSession({}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(AskWith(*c, "no-such-session", kQuestions[0]).status().code(),
            absl::StatusCode::kNotFound);

  // Delete: gone for every call.
  v1::DeleteSessionRequest del;
  del.set_session_id(s->id());
  ASSERT_TRUE(c->DeleteSession(del).ok());
  EXPECT_EQ(c->DeleteSession(del).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(AskWith(*c, s->id(), kQuestions[0]).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(c->AppendSession(append).status().code(), absl::StatusCode::kNotFound);
  list = c->ListSessions();
  ASSERT_TRUE(list.ok());
  ASSERT_EQ(list->sessions_size(), 1);
  EXPECT_EQ(list->sessions(0).id(), big->id());

  // The metrics count the live sessions and their bytes.
  const HttpResponse metrics = HttpGet(daemon->http_target(), "/metrics");
  EXPECT_THAT(metrics.body, HasSubstr("knowd_sessions 1"));
  EXPECT_THAT(metrics.body,
              HasSubstr(absl::StrCat("knowd_session_bytes ", mapper.state_floats() * 4)));
  EXPECT_EQ(daemon->Terminate(), 0) << daemon->log();
}

// Questions with different sessions and none, asked at once, share the engine's batches (each
// lane its own update, or none) and each still gets its own answer.
TEST_F(SessionTest, ConcurrentQuestionsWithDifferentSessionsKeepTheirOwnAnswers) {
  if (std::getenv("KNOWD_TEST_ADAPTER")) GTEST_SKIP() << "this test brings its own adapter";
  std::unique_ptr<DaemonProcess> daemon =
      StartServingOrFail(Data("data-batch"), {"--adapter", adapter(), "--ask-max-batch", "8"});
  ASSERT_NE(daemon, nullptr);
  auto c = Connect(Options(*daemon));
  Engine& engine = Engine::Get();
  SessionMapper& mapper = engine.Mapper(adapter());
  const std::vector<std::vector<std::string>> contexts = {
      kFirstMessages, {Demonstrations(20, 8)}, {Demonstrations(40, 16)}};
  std::vector<std::string> ids;
  for (const auto& context : contexts) {
    absl::StatusOr<v1::Session> s = c->CreateSession(Chunks(context));
    ASSERT_TRUE(s.ok()) << s.status();
    ids.push_back(s->id());
  }
  ids.push_back("");  // closed-book, no session
  // Each (session, question) pair asked by 12 threads at once, twice over.
  std::vector<std::pair<size_t, size_t>> asks;
  for (int round = 0; round < 2; ++round) {
    for (size_t s = 0; s < ids.size(); ++s) {
      for (size_t q = 0; q < kQuestions.size(); ++q) asks.emplace_back(s, q);
    }
  }
  std::vector<absl::StatusOr<v1::AskFinal>> answers(asks.size(), absl::UnknownError("not asked"));
  std::vector<std::thread> threads;
  for (size_t i = 0; i < asks.size(); ++i) {
    threads.emplace_back([&, i] {
      auto own = Connect(Options(*daemon));
      answers[i] =
          AskWith(*own, ids[asks[i].first], kQuestions[asks[i].second],
                  ids[asks[i].first].empty() ? v1::ASK_MODE_CLOSED_BOOK : v1::ASK_MODE_UNSPECIFIED);
    });
  }
  for (std::thread& t : threads) t.join();
  // A zero state is no update: closed-book's answer.
  std::map<std::pair<size_t, size_t>, std::string> expected;
  for (size_t s = 0; s < ids.size(); ++s) {
    const std::vector<float> state = s < contexts.size()
                                         ? engine.State(mapper, contexts[s])
                                         : std::vector<float>(mapper.state_floats(), 0.0f);
    for (size_t q = 0; q < kQuestions.size(); ++q) {
      expected[{s, q}] = engine.Answer(mapper, state, kQuestions[q]);
    }
  }
  for (size_t i = 0; i < asks.size(); ++i) {
    ASSERT_TRUE(answers[i].ok()) << answers[i].status();
    EXPECT_EQ(answers[i]->answer(), expected[asks[i]])
        << "session " << asks[i].first << ", question " << asks[i].second;
  }
  // And they did share forward passes: more sequences than passes.
  const std::string metrics = HttpGet(daemon->http_target(), "/metrics").body;
  auto value = [&](const std::string& name) {
    const size_t at = metrics.find("\n" + name + " ");
    return at == std::string::npos ? -1.0 : std::stod(metrics.substr(at + name.size() + 2));
  };
  EXPECT_GT(value("knowd_ask_batch_sequences_sum"), value("knowd_ask_batch_sequences_count"))
      << metrics;
  EXPECT_EQ(daemon->Terminate(), 0) << daemon->log();
}

// The shipped bundle's own session mapper, when it has one: the daemon serves it by default and
// answers as the engine does.
TEST_F(SessionTest, TheBundlesTrainedMapperAnswersAsTheEngineDoes) {
  const std::string shipped = kTinyModel + "/adapter";
  if (!fs::exists(shipped + "/session_mapper.json") || std::getenv("KNOWD_TEST_ADAPTER")) {
    GTEST_SKIP() << "knowd-tiny ships no session mapper";
  }
  std::unique_ptr<DaemonProcess> daemon = StartServingOrFail(Data("data-shipped"));
  ASSERT_NE(daemon, nullptr);
  auto c = Connect(Options(*daemon));
  Engine& engine = Engine::Get();
  SessionMapper& mapper = engine.Mapper(shipped);
  const std::vector<std::string> context = {Demonstrations(0, 8), Demonstrations(8, 8)};
  absl::StatusOr<v1::Session> s = c->CreateSession(Chunks(context));
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->state_bytes(), mapper.state_floats() * 4);
  EXPECT_EQ(s->mapper_sha256(), mapper.spec().sha256);
  const std::vector<float> state = engine.State(mapper, context);
  for (const std::string& q : kQuestions) {
    absl::StatusOr<v1::AskFinal> answer = AskWith(*c, s->id(), q);
    ASSERT_TRUE(answer.ok()) << answer.status();
    EXPECT_EQ(answer->answer(), engine.Answer(mapper, state, q)) << q;
  }
  EXPECT_EQ(daemon->Terminate(), 0) << daemon->log();
}

TEST_F(SessionTest, ExpiresAfterItsTtlAndSurvivesARestart) {
  if (std::getenv("KNOWD_TEST_ADAPTER")) GTEST_SKIP() << "this test brings its own adapter";
  const std::string data = Data("data-ttl");
  std::string lasting_id, lasting_answer;
  {
    std::unique_ptr<DaemonProcess> daemon = StartServingOrFail(data, {"--adapter", adapter()});
    ASSERT_NE(daemon, nullptr);
    auto c = Connect(Options(*daemon));
    std::vector<v1::SessionChunk> brief = Chunks(kFirstMessages);
    brief.front().set_ttl_seconds(1);
    absl::StatusOr<v1::Session> b = c->CreateSession(brief);
    ASSERT_TRUE(b.ok()) << b.status();
    EXPECT_EQ(b->expires_unix(), b->updated_unix() + 1);
    std::vector<v1::SessionChunk> lasting = Chunks(kFirstMessages);
    lasting.front().set_ttl_seconds(3600);
    absl::StatusOr<v1::Session> l = c->CreateSession(lasting);
    ASSERT_TRUE(l.ok()) << l.status();
    lasting_id = l->id();
    absl::StatusOr<v1::AskFinal> answer = AskWith(*c, lasting_id, kQuestions[1]);
    ASSERT_TRUE(answer.ok()) << answer.status();
    lasting_answer = answer->answer();

    std::this_thread::sleep_for(std::chrono::milliseconds(2100));
    EXPECT_EQ(AskWith(*c, b->id(), kQuestions[1]).status().code(), absl::StatusCode::kNotFound);
    std::vector<v1::SessionChunk> append = Chunks({Demonstrations(20, 2)});
    append.front().set_session_id(b->id());
    EXPECT_EQ(c->AppendSession(append).status().code(), absl::StatusCode::kNotFound);
    absl::StatusOr<v1::ListSessionsResponse> list = c->ListSessions();
    ASSERT_TRUE(list.ok());
    ASSERT_EQ(list->sessions_size(), 1);
    EXPECT_EQ(list->sessions(0).id(), lasting_id);
    EXPECT_EQ(daemon->Terminate(), 0) << daemon->log();
  }
  std::unique_ptr<DaemonProcess> restarted = StartServingOrFail(data, {"--adapter", adapter()});
  ASSERT_NE(restarted, nullptr);
  auto c = Connect(Options(*restarted));
  absl::StatusOr<v1::AskFinal> answer = AskWith(*c, lasting_id, kQuestions[1]);
  ASSERT_TRUE(answer.ok()) << answer.status();
  EXPECT_EQ(answer->answer(), lasting_answer);
  EXPECT_EQ(restarted->Terminate(), 0) << restarted->log();

  // Another mapper cannot read the state: FAILED_PRECONDITION, saying to recreate the session.
  std::unique_ptr<DaemonProcess> other = StartServingOrFail(data, {"--adapter", other_adapter()});
  ASSERT_NE(other, nullptr);
  auto o = Connect(Options(*other));
  absl::StatusOr<v1::AskFinal> refused = AskWith(*o, lasting_id, kQuestions[1]);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(refused.status().message()), HasSubstr("create the session again"));
  EXPECT_EQ(other->Terminate(), 0) << other->log();
}

TEST_F(SessionTest, RolesAreThoseOfTheirNeighboursAndNoMapperIsAClearError) {
  if (std::getenv("KNOWD_TEST_ADAPTER")) GTEST_SKIP() << "this test brings its own adapter";
  const std::string tokens = Data("tokens.json");
  std::ofstream(tokens) << R"([
    {"token": "writer-a", "namespaces": ["a"], "roles": ["read", "write"]},
    {"token": "reader-a", "namespaces": ["a"], "roles": ["read"]},
    {"token": "writer-b", "namespaces": ["b"], "roles": ["read", "write"]}
  ])";
  {
    std::unique_ptr<DaemonProcess> daemon =
        StartServingOrFail(Data("data-roles"), {"--adapter", adapter(), "--tokens-file", tokens});
    ASSERT_NE(daemon, nullptr);
    auto writer = Connect(Options(*daemon, "writer-a"));
    auto reader = Connect(Options(*daemon, "reader-a"));
    auto other = Connect(Options(*daemon, "writer-b"));
    auto anonymous = Connect(Options(*daemon));
    absl::StatusOr<v1::Session> s = writer->CreateSession(Chunks(kFirstMessages, "a"));
    ASSERT_TRUE(s.ok()) << s.status();
    EXPECT_EQ(reader->CreateSession(Chunks(kFirstMessages, "a")).status().code(),
              absl::StatusCode::kPermissionDenied);
    EXPECT_EQ(other->CreateSession(Chunks(kFirstMessages, "a")).status().code(),
              absl::StatusCode::kPermissionDenied);
    EXPECT_EQ(anonymous->CreateSession(Chunks(kFirstMessages, "a")).status().code(),
              absl::StatusCode::kUnauthenticated);
    std::vector<v1::SessionChunk> append = Chunks({Demonstrations(8, 4)}, "a");
    append.front().set_session_id(s->id());
    EXPECT_EQ(reader->AppendSession(append).status().code(), absl::StatusCode::kPermissionDenied);

    v1::AskRequest ask;
    ask.set_namespace_("a");
    ask.set_question(kQuestions[0]);
    ask.set_session_id(s->id());
    EXPECT_TRUE(reader->Ask(ask).ok());
    ask.set_namespace_("b");
    EXPECT_EQ(other->Ask(ask).status().code(), absl::StatusCode::kNotFound);  // namespaced
    v1::ListSessionsRequest list;
    list.set_namespace_("a");
    absl::StatusOr<v1::ListSessionsResponse> listed = reader->ListSessions(list);
    ASSERT_TRUE(listed.ok()) << listed.status();
    EXPECT_EQ(listed->sessions_size(), 1);
    EXPECT_EQ(other->ListSessions(list).status().code(), absl::StatusCode::kPermissionDenied);
    v1::DeleteSessionRequest del;
    del.set_namespace_("a");
    del.set_session_id(s->id());
    EXPECT_EQ(reader->DeleteSession(del).code(), absl::StatusCode::kPermissionDenied);
    EXPECT_TRUE(writer->DeleteSession(del).ok());
    EXPECT_EQ(daemon->Terminate(), 0) << daemon->log();
  }
  std::unique_ptr<DaemonProcess> plain =
      StartServingOrFail(Data("data-no-mapper"), {"--adapter", no_mapper_adapter()});
  ASSERT_NE(plain, nullptr);
  auto c = Connect(Options(*plain));
  absl::StatusOr<v1::Session> refused = c->CreateSession(Chunks(kFirstMessages));
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(refused.status().message()),
              HasSubstr("this bundle has no session mapper (adapter/session_mapper.json); train "
                        "one with knowd-train session"));
  EXPECT_EQ(AskWith(*c, "some-id", kQuestions[0]).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(plain->Terminate(), 0) << plain->log();
}

// knowctl session ... and the REST routes, against the same daemon.
// Stats counts the live sessions and their bytes, per namespace and in all, as the metrics do;
// REST's stats and `knowctl stats` carry the same numbers.
TEST_F(SessionTest, StatsCountSessionsAndTheirBytes) {
  if (std::getenv("KNOWD_TEST_ADAPTER")) GTEST_SKIP() << "this test brings its own adapter";
  std::unique_ptr<DaemonProcess> daemon =
      StartServingOrFail(Data("data-stats"), {"--adapter", adapter()});
  ASSERT_NE(daemon, nullptr);
  auto c = Connect(Options(*daemon));
  // A namespace with a document and no session, beside "default" with sessions and no document.
  ASSERT_TRUE(c->Ingest(
                   [n = 0](v1::IngestRequest* r) mutable -> absl::StatusOr<bool> {
                     if (n++ > 0) return false;
                     r->set_namespace_("docs");
                     r->set_id("doc");
                     r->set_text("Mivel Zangorbel works as a nurse in Dripe.");
                     return true;
                   },
                   [](const v1::IngestAck&) {})
                  .ok());
  absl::StatusOr<v1::Session> first = c->CreateSession(Chunks(kFirstMessages));
  ASSERT_TRUE(first.ok()) << first.status();
  absl::StatusOr<v1::Session> second = c->CreateSession(Chunks({Demonstrations(20, 8)}));
  ASSERT_TRUE(second.ok()) << second.status();
  const int64_t size = first->state_bytes();
  ASSERT_GT(size, 0);
  ASSERT_EQ(second->state_bytes(), size);

  absl::StatusOr<v1::StatsResponse> stats = c->Stats();
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_EQ(stats->sessions(), 2);
  EXPECT_EQ(stats->session_bytes(), 2 * size);
  EXPECT_EQ(stats->documents(), 1);
  ASSERT_EQ(stats->namespaces_size(), 2) << stats->DebugString();
  EXPECT_EQ(stats->namespaces(0).name(), "default");
  EXPECT_EQ(stats->namespaces(0).documents(), 0);
  EXPECT_EQ(stats->namespaces(0).sessions(), 2);
  EXPECT_EQ(stats->namespaces(0).session_bytes(), 2 * size);
  EXPECT_EQ(stats->namespaces(1).name(), "docs");
  EXPECT_EQ(stats->namespaces(1).documents(), 1);
  EXPECT_EQ(stats->namespaces(1).sessions(), 0);
  EXPECT_EQ(stats->namespaces(1).session_bytes(), 0);
  v1::StatsRequest docs_only;
  docs_only.set_namespace_("docs");
  absl::StatusOr<v1::StatsResponse> docs = c->Stats(docs_only);
  ASSERT_TRUE(docs.ok()) << docs.status();
  EXPECT_EQ(docs->sessions(), 0);
  EXPECT_EQ(docs->session_bytes(), 0);

  // The metrics count the same.
  const std::string metrics = HttpGet(daemon->http_target(), "/metrics").body;
  EXPECT_THAT(metrics, HasSubstr("\nknowd_sessions 2\n"));
  EXPECT_THAT(metrics, HasSubstr(absl::StrCat("\nknowd_session_bytes ", 2 * size, "\n")));

  // REST: the namespace's stats.
  const HttpResponse rest = HttpGet(daemon->http_target(), "/v1/namespaces/default/stats");
  ASSERT_EQ(rest.status, 200) << rest.body;
  const nlohmann::json rest_stats = nlohmann::json::parse(rest.body, nullptr, false);
  ASSERT_TRUE(rest_stats.is_object()) << rest.body;
  EXPECT_EQ(rest_stats["sessions"], 2) << rest.body;
  EXPECT_EQ(rest_stats["sessionBytes"], 2 * size) << rest.body;
  EXPECT_EQ(rest_stats["namespaces"][0]["sessions"], 2) << rest.body;
  EXPECT_EQ(rest_stats["namespaces"][0]["sessionBytes"], 2 * size) << rest.body;

  // After a delete: one.
  v1::DeleteSessionRequest del;
  del.set_session_id(first->id());
  ASSERT_TRUE(c->DeleteSession(del).ok());
  stats = c->Stats();
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_EQ(stats->sessions(), 1);
  EXPECT_EQ(stats->session_bytes(), size);
  EXPECT_EQ(stats->namespaces(0).sessions(), 1);

  // knowctl stats prints them, in all and per namespace.
  const std::string knowctl = kKnowctlBinary + " --server " + daemon->grpc_target() + " ";
  CommandResult printed = RunCommand(knowctl + "stats");
  ASSERT_EQ(printed.exit_code, 0) << printed.out;
  EXPECT_THAT(printed.out,
              HasSubstr(absl::StrCat("\nsessions             1 (", size, " bytes)\n")));
  EXPECT_THAT(printed.out,
              HasSubstr(absl::StrCat("  default            0 documents, 0 passages, 1 sessions (",
                                     size, " bytes)\n")));
  EXPECT_THAT(printed.out,
              HasSubstr("  docs               1 documents, 1 passages, 0 sessions (0 bytes)\n"));
  CommandResult json = RunCommand(knowctl + "stats --json");
  ASSERT_EQ(json.exit_code, 0) << json.out;
  const nlohmann::json parsed = nlohmann::json::parse(json.out, nullptr, false);
  ASSERT_TRUE(parsed.is_object()) << json.out;
  EXPECT_EQ(parsed["sessions"], "1") << json.out;  // protobuf's JSON: int64 as a string
  EXPECT_EQ(parsed["session_bytes"], std::to_string(size)) << json.out;
  EXPECT_EQ(daemon->Terminate(), 0) << daemon->log();
}

TEST_F(SessionTest, KnowctlAndRestDriveTheSameCalls) {
  if (std::getenv("KNOWD_TEST_ADAPTER")) GTEST_SKIP() << "this test brings its own adapter";
  std::unique_ptr<DaemonProcess> daemon =
      StartServingOrFail(Data("data-cli"), {"--adapter", adapter()});
  ASSERT_NE(daemon, nullptr);
  Engine& engine = Engine::Get();
  SessionMapper& mapper = engine.Mapper(adapter());
  const std::string knowctl = kKnowctlBinary + " --server " + daemon->grpc_target() + " ";
  const std::string demos = Data("demos.txt");
  std::ofstream(demos) << Demonstrations(0, 8);

  // --chunk-lines 8: four demonstrations (two lines each) per message.
  CommandResult created =
      RunCommand(knowctl + "session create " + demos + " --chunk-lines 8 --label cli --json");
  ASSERT_EQ(created.exit_code, 0) << created.out;
  const nlohmann::json session = nlohmann::json::parse(created.out, nullptr, false);
  ASSERT_TRUE(session.is_object()) << created.out;
  const std::string id = session["id"];
  EXPECT_EQ(session["label"], "cli");
  EXPECT_EQ(std::stoll(session["state_bytes"].get<std::string>()), mapper.state_floats() * 4);
  CommandResult asked = RunCommand(knowctl + "session ask " + id + " " + ShellQuote(kQuestions[2]) +
                                   " --max-tokens 12 --json");
  ASSERT_EQ(asked.exit_code, 0) << asked.out;
  const nlohmann::json final_answer = nlohmann::json::parse(asked.out, nullptr, false);
  EXPECT_EQ(final_answer.value("answer", std::string("?")),
            engine.Answer(mapper, engine.State(mapper, kFirstMessages), kQuestions[2]));
  CommandResult appended = RunCommand("printf 'Q: Kusa Ithmo: nurse\\nA: new\\n' | " + knowctl +
                                      "session append " + id + " - --ttl-seconds 600");
  EXPECT_EQ(appended.exit_code, 0) << appended.out;
  CommandResult listed = RunCommand(knowctl + "session list");
  EXPECT_EQ(listed.exit_code, 0);
  EXPECT_THAT(listed.out, HasSubstr(id));

  // REST: create (NDJSON, one chunk per line), list, ask with sessionId, append, delete.
  httplib::Client http("http://" + daemon->http_target());
  std::string ndjson;
  for (const std::string& m : kFirstMessages) {
    ndjson += nlohmann::json{{"text", m}, {"ttlSeconds", 600}}.dump() + "\n";
  }
  auto res = http.Post("/v1/namespaces/default/sessions", ndjson, "application/x-ndjson");
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  const nlohmann::json rest_session = nlohmann::json::parse(res->body, nullptr, false);
  const std::string rest_id = rest_session["id"];
  res = http.Get("/v1/namespaces/default/sessions");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
  EXPECT_EQ(nlohmann::json::parse(res->body)["sessions"].size(), 2u);
  res = http.Post(
      "/v1/namespaces/default/ask",
      nlohmann::json{{"question", kQuestions[2]}, {"sessionId", rest_id}, {"maxTokens", kMaxTokens}}
          .dump(),
      "application/json");
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  EXPECT_EQ(nlohmann::json::parse(res->body)["answer"], final_answer["answer"]);
  res = http.Post("/v1/namespaces/default/sessions/" + rest_id + "/append",
                  nlohmann::json{{"text", Demonstrations(30, 2)}}.dump(), "application/json");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200) << res->body;
  res = http.Delete("/v1/namespaces/default/sessions/" + rest_id);
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200) << res->body;
  res = http.Delete("/v1/namespaces/default/sessions/" + rest_id);
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 404) << res->body;

  CommandResult deleted = RunCommand(knowctl + "session delete " + id);
  EXPECT_EQ(deleted.exit_code, 0) << deleted.out;
  CommandResult again = RunCommand(knowctl + "session ask " + id + " x", /*with_stderr=*/true);
  EXPECT_EQ(again.exit_code, 1);
  EXPECT_THAT(again.out, HasSubstr("NOT_FOUND"));
  EXPECT_EQ(daemon->Terminate(), 0) << daemon->log();
}

}  // namespace
}  // namespace knowd::testing
