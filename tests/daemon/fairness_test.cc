// One client's write flood against the other clients, end to end on loopback: the questions of
// another client keep their share of the engine beside an ingest flood, a Forget flood meets its
// client's cap of writes in flight (RESOURCE_EXHAUSTED with a retry hint) while another client's
// Forgets do not, and the asks per second beside each flood, printed next to those of the idle
// daemon in the same run.
//
// The regression tests count events (answers, acks, refusals), never time them: the machine they
// run on may be slow or busy. KNOWD_TEST_KNOWD_BINARY runs them against another build of knowd.
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "knowd/v1/knowd.grpc.pb.h"
#include "tests/daemon/daemon_process.h"

namespace knowd::testing {
namespace {

namespace v1 = ::knowd::v1;
using Clock = std::chrono::steady_clock;

void SetDeadline(grpc::ClientContext* context, int seconds = 120) {
  context->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(seconds));
}

std::string FloodText(int i) {
  return absl::StrCat("Corin Dalt visited market ", i, " in Pellow and bought ", i % 7 + 2,
                      " baskets of dried figs there.");
}

// Ingests documents `prefix`from .. `prefix`to-1 on one stream; false unless all were stored.
bool Ingest(v1::KnowledgeService::Stub& stub, const std::string& prefix, int from, int to) {
  grpc::ClientContext context;
  SetDeadline(&context, 600);
  auto stream = stub.Ingest(&context);
  for (int i = from; i < to; ++i) {
    v1::IngestRequest r;
    r.set_id(absl::StrCat(prefix, i));
    r.set_text(FloodText(i));
    if (!stream->Write(r)) break;
  }
  stream->WritesDone();
  int stored = 0;
  v1::IngestAck ack;
  while (stream->Read(&ack)) stored += ack.error_code() == 0 ? 1 : 0;
  return stream->Finish().ok() && stored == to - from;
}

// The fact the questions are about; it is never forgotten.
bool SeedAnswer(v1::KnowledgeService::Stub& stub) {
  grpc::ClientContext context;
  SetDeadline(&context);
  auto stream = stub.Ingest(&context);
  v1::IngestRequest r;
  r.set_id("answer");
  r.set_text("Corin Dalt now lives in Korvale.");
  if (!stream->Write(r)) return false;
  stream->WritesDone();
  v1::IngestAck ack;
  bool stored = false;
  while (stream->Read(&ack)) stored = ack.error_code() == 0;
  return stream->Finish().ok() && stored;
}

// One short question, answered from memory; true when the whole answer arrived.
bool AskOnce(v1::KnowledgeService::Stub& stub) {
  grpc::ClientContext context;
  SetDeadline(&context);
  v1::AskRequest request;
  request.set_question("Where does Corin Dalt live?");
  request.set_mode(v1::ASK_MODE_RAG);
  request.set_max_tokens(4);
  auto reader = stub.Ask(&context, request);
  v1::AskChunk chunk;
  bool final = false;
  while (reader->Read(&chunk)) final = final || chunk.has_final();
  return reader->Finish().ok() && final;
}

// ---- asks beside an ingest flood ---------------------------------------------------------------

// Client A streams kDocs documents as fast as the daemon takes them (one stream, no pause);
// once its first ack is back, client B asks kAsks questions one after another. Each of A's
// encoder passes (a batch of up to 32 documents) holds the engine thread, which the answers need
// too. With the thread shared fairly B's questions take a few passes' worth of documents in all;
// when every question waits for a whole pass first (the engine ran the waiting pass in each gap
// between two of B's questions), B needs about kAsks passes, more than A's kDocs documents make.
TEST(Fairness, AsksKeepTheirShareOfTheEngineBesideAnIngestFlood) {
  if (!HasAdapter()) GTEST_SKIP() << "without an adapter ingest does not use the engine";
  constexpr int kDocs = 480;  // 15 full encoder passes
  constexpr int kAsks = 30;
  TempDir dir;
#if defined(__SANITIZE_THREAD__)
  // The test's premise is relative speed: the gap between two of B's questions (its answer's
  // trip back, the next question's trip in) against the 5 ms hold window. Under ThreadSanitizer
  // both processes run several times slower and that premise, not the scheduler, decides the
  // count, so make test-tsan leaves it out; the forget-cap tests below still run under it.
  GTEST_SKIP() << "relative timing does not hold under ThreadSanitizer";
#endif
  auto daemon = StartServingOrFail(dir.path() + "/data");
  ASSERT_NE(daemon, nullptr);
  auto a = OwnConnectionStub(*daemon, "a");
  auto b = OwnConnectionStub(*daemon, "b");
  ASSERT_TRUE(SeedAnswer(*b));
  ASSERT_TRUE(AskOnce(*b));  // warm

  std::atomic<int> acked{0};
  std::atomic<int> failed{0};
  std::thread flood([&] {
    grpc::ClientContext context;
    SetDeadline(&context, 600);
    auto stream = a->Ingest(&context);
    std::thread reader([&] {
      v1::IngestAck ack;
      while (stream->Read(&ack)) {
        if (ack.error_code() != 0) ++failed;
        ++acked;
      }
    });
    for (int i = 0; i < kDocs; ++i) {
      v1::IngestRequest r;
      r.set_id(absl::StrCat("flood-", i));
      r.set_text(FloodText(i));
      if (!stream->Write(r)) break;
    }
    stream->WritesDone();
    reader.join();
    if (!stream->Finish().ok()) ++failed;
  });
  while (acked.load() == 0 && failed.load() == 0) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  const int acked_at_start = acked.load();
  int answered = 0;
  for (int i = 0; i < kAsks; ++i) answered += AskOnce(*b) ? 1 : 0;
  const int acked_at_end = acked.load();
  flood.join();
  std::printf(
      "%d questions answered while %d of %d flood documents were acknowledged (%d when "
      "they began)\n",
      answered, acked_at_end, kDocs, acked_at_start);
  EXPECT_EQ(failed.load(), 0);
  EXPECT_EQ(acked.load(), kDocs);
  EXPECT_EQ(answered, kAsks);
  // All of B's questions were answered before the flood's last document was acknowledged.
  EXPECT_LT(acked_at_end, kDocs) << "the questions took the whole flood's time";
  EXPECT_EQ(daemon->Terminate(), 0) << daemon->log();
}

// ---- a Forget flood against its client's cap ----------------------------------------------------

// Per call of an asynchronous flood: its outcome, and the retry hint of a refusal.
struct Outcomes {
  std::mutex mu;
  std::map<grpc::StatusCode, int> codes;
  int hinted = 0;  // refusals with a positive retry-after-ms
  std::string example;

  void Add(const grpc::Status& status, const grpc::ClientContext& context) {
    std::lock_guard<std::mutex> lock(mu);
    ++codes[status.error_code()];
    if (status.error_code() != grpc::StatusCode::RESOURCE_EXHAUSTED) return;
    if (example.empty()) example = status.error_message();
    const auto& trailers = context.GetServerTrailingMetadata();
    auto it = trailers.find("retry-after-ms");
    int ms = 0;
    if (it != trailers.end() &&
        absl::SimpleAtoi(std::string(it->second.data(), it->second.size()), &ms) && ms > 0) {
      ++hinted;
    }
  }
  int count(grpc::StatusCode code) {
    std::lock_guard<std::mutex> lock(mu);
    return codes[code];
  }
};

// Keeps `concurrency` Forget calls of `ids` (cycled) in flight on `stub` until `calls` were made
// or `stop` is set, re-sending as soon as one completes (no backoff, whatever the answer).
void ForgetFlood(v1::KnowledgeService::Stub& stub, const std::vector<std::string>& ids,
                 int concurrency, int calls, const std::atomic<bool>& stop, Outcomes* outcomes) {
  struct Call {
    grpc::ClientContext context;
    v1::ForgetRequest request;
    v1::ForgetResponse response;
    grpc::Status status;
    std::unique_ptr<grpc::ClientAsyncResponseReader<v1::ForgetResponse>> reader;
  };
  grpc::CompletionQueue cq;
  int sent = 0;
  int open = 0;
  auto send = [&] {
    auto* call = new Call();
    SetDeadline(&call->context);
    call->request.add_ids(ids[static_cast<size_t>(sent) % ids.size()]);
    call->reader = stub.AsyncForget(&call->context, call->request, &cq);
    call->reader->Finish(&call->response, &call->status, call);
    ++sent;
    ++open;
  };
  while (open < concurrency && sent < calls) send();
  void* tag = nullptr;
  bool ok = false;
  while (open > 0 && cq.Next(&tag, &ok)) {
    auto* call = static_cast<Call*>(tag);
    outcomes->Add(call->status, call->context);
    delete call;
    --open;
    if (!stop.load() && sent < calls) send();
  }
  cq.Shutdown();
  while (cq.Next(&tag, &ok)) {
  }
}

// Client A sends 512 Forgets at once, unthrottled; client B, on its own connection, forgets its
// own documents one call after another and asks, meanwhile. With a cap of 8 writes in flight
// per client, A meets it: some of its calls are refused with RESOURCE_EXHAUSTED and a retry
// hint, the rest succeed. B's calls are all served. Without a per-client cap the shared forget
// queue (1,024) takes all of A's calls and B's wait behind them.
TEST(Fairness, AForgetFloodMeetsItsClientsCapWhileAnotherClientIsServed) {
  constexpr int kFlood = 512;
  constexpr int kTheirs = 16;
  constexpr int kCap = 8;
  TempDir dir;
  auto daemon = StartServingOrFail(dir.path() + "/data",
                                   {"--log-level", "error", "--client-writes-in-flight", "8"});
  ASSERT_NE(daemon, nullptr);
  auto a = OwnConnectionStub(*daemon, "a");
  auto b = OwnConnectionStub(*daemon, "b");
  ASSERT_TRUE(SeedAnswer(*b));
  ASSERT_TRUE(Ingest(*a, "a-", 0, kFlood));
  ASSERT_TRUE(Ingest(*b, "b-", 0, kTheirs));
  std::vector<std::string> ids;
  for (int i = 0; i < kFlood; ++i) ids.push_back(absl::StrCat("a-", i));

  Outcomes flood;
  std::atomic<bool> stop{false};
  std::atomic<bool> started{false};
  std::thread flooder([&] {
    started = true;
    ForgetFlood(*a, ids, kFlood, kFlood, stop, &flood);
  });
  while (!started.load()) std::this_thread::yield();
  std::map<grpc::StatusCode, int> theirs;
  for (int i = 0; i < kTheirs; ++i) {
    grpc::ClientContext context;
    SetDeadline(&context);
    v1::ForgetRequest request;
    request.add_ids(absl::StrCat("b-", i));
    v1::ForgetResponse response;
    const grpc::Status status = b->Forget(&context, request, &response);
    ++theirs[status.error_code()];
    if (status.ok()) {
      EXPECT_EQ(response.forgotten_size(), 1) << "b-" << i;
    }
  }
  const bool answered = AskOnce(*b);
  flooder.join();
  const int refused = flood.count(grpc::StatusCode::RESOURCE_EXHAUSTED);
  const int forgotten = flood.count(grpc::StatusCode::OK);
  std::printf(
      "client A: %d forgotten, %d refused (%d with a retry hint); client B: %d of %d "
      "forgotten\n",
      forgotten, refused, flood.hinted, theirs[grpc::StatusCode::OK], kTheirs);
  EXPECT_EQ(theirs[grpc::StatusCode::OK], kTheirs);
  EXPECT_TRUE(answered);
  EXPECT_EQ(forgotten + refused, kFlood);
  EXPECT_GT(refused, 0) << "no call of the flood met a per-client cap";
  EXPECT_EQ(flood.hinted, refused) << flood.example;
  EXPECT_GE(forgotten, kCap);  // the cap itself is always served
  if (!flood.example.empty()) std::printf("a refusal: %s\n", flood.example.c_str());
  EXPECT_EQ(daemon->Terminate(), 0) << daemon->log();
}

// A client's Ingest streams share its cap: three streams of one client (each may have 64
// documents awaiting acks, together more than the cap of 128) wait on one another, and every
// document is stored.
TEST(Fairness, OneClientsIngestStreamsShareItsCapAndAllComplete) {
  TempDir dir;
  auto daemon = StartServingOrFail(dir.path() + "/data");
  ASSERT_NE(daemon, nullptr);
  auto a = OwnConnectionStub(*daemon, "a");
  std::vector<std::thread> streams;
  std::atomic<int> complete{0};
  for (int t = 0; t < 3; ++t) {
    streams.emplace_back([&, t] {
      if (Ingest(*a, absl::StrCat("s", t, "-"), 0, 200)) ++complete;
    });
  }
  for (std::thread& t : streams) t.join();
  EXPECT_EQ(complete.load(), 3);
  grpc::ClientContext context;
  SetDeadline(&context);
  v1::StatsResponse stats;
  ASSERT_TRUE(a->Stats(&context, v1::StatsRequest(), &stats).ok());
  EXPECT_EQ(stats.documents(), 600);
  EXPECT_EQ(daemon->Terminate(), 0) << daemon->log();
}

// ---- the measurement ---------------------------------------------------------------------------

// Questions answered one after another for `window`.
int AsksIn(v1::KnowledgeService::Stub& stub, std::chrono::milliseconds window) {
  int answered = 0;
  const auto end = Clock::now() + window;
  while (Clock::now() < end) answered += AskOnce(stub) ? 1 : 0;
  return answered;
}

// The Forget flood of AsksPerSecondBesideOneClientsWriteFlood, in a process of its own (this test
// binary, run again with this test's name): a client's gRPC library in the asker's process would
// share its threads with the asker's calls and measure the client, not the daemon. It floods
// $KNOWD_FAIRNESS_FLOOD_TARGET with Forgets of doc-0 .. doc-1999 until its stdin closes, then
// prints "served <n> refused <m>".
TEST(Fairness, DISABLED_ForgetFloodProcess) {
  const char* target = std::getenv("KNOWD_FAIRNESS_FLOOD_TARGET");
  if (target == nullptr) GTEST_SKIP() << "run by AsksPerSecondBesideOneClientsWriteFlood";
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  auto stub = v1::KnowledgeService::NewStub(
      grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args));
  std::vector<std::string> ids;
  for (int i = 0; i < 2000; ++i) ids.push_back(absl::StrCat("doc-", i));
  std::atomic<bool> stop{false};
  std::thread watch([&] {
    char c;
    while (read(STDIN_FILENO, &c, 1) > 0) {
    }
    stop = true;
  });
  Outcomes outcomes;
  ForgetFlood(*stub, ids, 256, std::numeric_limits<int>::max(), stop, &outcomes);
  watch.join();
  std::printf("served %d refused %d\n", outcomes.count(grpc::StatusCode::OK),
              outcomes.count(grpc::StatusCode::RESOURCE_EXHAUSTED));
}

// Runs DISABLED_ForgetFloodProcess against `daemon` in a child process until Stop().
class FloodProcess {
 public:
  explicit FloodProcess(const DaemonProcess& daemon) {
    int in[2];
    int out[2];
    if (pipe(in) != 0 || pipe(out) != 0) return;
    pid_ = fork();
    if (pid_ == 0) {
      dup2(in[0], STDIN_FILENO);
      dup2(out[1], STDOUT_FILENO);
      close(in[1]);
      close(out[0]);
      setenv("KNOWD_FAIRNESS_FLOOD_TARGET", daemon.grpc_target().c_str(), 1);
      execl("/proc/self/exe", "fairness_flood", "--gtest_also_run_disabled_tests",
            "--gtest_filter=Fairness.DISABLED_ForgetFloodProcess", static_cast<char*>(nullptr));
      _exit(127);
    }
    close(in[0]);
    close(out[1]);
    stdin_ = in[1];
    stdout_ = out[0];
  }
  ~FloodProcess() { Stop(); }
  bool started() const { return pid_ > 0; }

  // Ends the flood; the calls it saw served and refused, or {-1, -1} when it failed.
  std::pair<int, int> Stop() {
    if (pid_ <= 0) return {-1, -1};
    close(stdin_);
    std::string output;
    char buffer[4096];
    for (ssize_t n; (n = read(stdout_, buffer, sizeof buffer)) > 0;) output.append(buffer, n);
    close(stdout_);
    int status = 0;
    waitpid(pid_, &status, 0);
    pid_ = -1;
    int served = -1;
    int refused = -1;
    if (const size_t at = output.find("served "); at != std::string::npos) {
      std::sscanf(output.c_str() + at, "served %d refused %d", &served, &refused);
    }
    return {served, refused};
  }

 private:
  pid_t pid_ = -1;
  int stdin_ = -1;
  int stdout_ = -1;
};

// Asks per second of one client asking one question after another: on the idle daemon (the
// bound of this machine, in this run), beside one client's unthrottled Forget flood (256 calls
// kept in flight by another process, each re-sent as soon as it is answered, refusals included),
// and beside one client's unthrottled Ingest stream. $KNOWD_FAIRNESS_SECONDS sets each window
// (default 4). Asserts only that questions keep being answered (a twentieth of the idle figure):
// the flooding clients run on the same cores.
TEST(Fairness, AsksPerSecondBesideOneClientsWriteFlood) {
  const char* seconds_env = std::getenv("KNOWD_FAIRNESS_SECONDS");
  double seconds = 4;
  if (seconds_env != nullptr) {
    ASSERT_TRUE(absl::SimpleAtod(seconds_env, &seconds));
  }
  const auto window = std::chrono::milliseconds(static_cast<int64_t>(seconds * 1000));
  constexpr int kDocs = 2000;
  TempDir dir;
  auto daemon = StartServingOrFail(dir.path() + "/data", {"--log-level", "error"});
  ASSERT_NE(daemon, nullptr);
  auto asker = OwnConnectionStub(*daemon, "asker");
  auto writer = OwnConnectionStub(*daemon, "writer");
  ASSERT_TRUE(SeedAnswer(*asker));
  ASSERT_TRUE(Ingest(*writer, "doc-", 0, kDocs));

  const int alone = AsksIn(*asker, window);

  const auto flood_start = Clock::now();
  FloodProcess flood(*daemon);
  ASSERT_TRUE(flood.started());
  const int beside_forgets = AsksIn(*asker, window);
  const auto [forgets_served, forgets_refused] = flood.Stop();
  const double flood_seconds = std::chrono::duration<double>(Clock::now() - flood_start).count();
  ASSERT_GE(forgets_served, 0) << "the flood's process failed";

  // The stream is cancelled at the end of the window: what it wrote beyond what the daemon read
  // waits in the connection's buffers, and would take long to finish.
  std::atomic<int> ingested{0};
  grpc::ClientContext ingest_context;
  SetDeadline(&ingest_context, 600);
  std::thread ingest_flood([&] {
    auto stream = writer->Ingest(&ingest_context);
    std::thread reader([&] {
      v1::IngestAck ack;
      while (stream->Read(&ack)) ingested += ack.error_code() == 0 ? 1 : 0;
    });
    for (int i = 0;; ++i) {
      v1::IngestRequest r;
      r.set_id(absl::StrCat("doc-", i % kDocs));
      r.set_text(FloodText(i));
      if (!stream->Write(r)) break;
    }
    reader.join();
    stream->Finish();
  });
  const int beside_ingest = AsksIn(*asker, window);
  const int ingested_in_window = ingested.load();
  ingest_context.TryCancel();
  ingest_flood.join();

  const double s = seconds;
  std::printf(
      "asks/s of one client: %.1f on the idle daemon; %.1f (%.0f%%) beside one client's Forget "
      "flood (%.0f forgets/s served, %.0f/s refused at its cap); %.1f (%.0f%%) beside one "
      "client's Ingest stream (%.0f documents/s)\n",
      alone / s, beside_forgets / s, 100.0 * beside_forgets / std::max(alone, 1),
      forgets_served / s, forgets_refused / s, beside_ingest / s,
      100.0 * beside_ingest / std::max(alone, 1), ingested_in_window / s);
  EXPECT_GT(alone, 0);
  EXPECT_GE(beside_forgets * 20, alone);
  // The flood is paced to client-forgets-per-second (1,000 by default, a second's worth at
  // once): without the pacing a 2-core machine served it 5,000–10,000 calls a second.
  EXPECT_LE(forgets_served, 1000 * (1 + flood_seconds));
  EXPECT_GE(beside_ingest * 20, alone);
  EXPECT_EQ(daemon->Terminate(), 0) << daemon->log();
}

}  // namespace
}  // namespace knowd::testing
