// The schedulers with real parts: a MemoryBank in a temporary directory and the shipped
// knowd-tiny model (closed-book questions need no adapter).
#include "daemon/scheduler.h"

#include <unistd.h>

#include <filesystem>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "daemon/metrics.h"
#include "daemon/scheduler_ask.h"
#include "daemon/scheduler_ingest.h"
#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "model/tokenizer.h"
#include "model/transformer.h"
#include "storage/memory_bank.h"

namespace knowd {
namespace {

namespace fs = std::filesystem;

const std::string kModel = std::string(KNOWD_SOURCE_DIR) + "/models/knowd-tiny";

TEST(BoundedQueue, RefusesWhenFullAndAfterClose) {
  BoundedQueue<int> queue("ask", 2);
  int a = 1, b = 2, c = 3;
  EXPECT_TRUE(queue.TryPush(a).ok());
  EXPECT_TRUE(queue.TryPush(b).ok());
  absl::Status full = queue.TryPush(c);
  EXPECT_EQ(full.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(full.message(), "the ask queue is full (2 waiting); retry with backoff");
  EXPECT_EQ(queue.size(), 2u);

  std::vector<int> out;
  ASSERT_TRUE(queue.PopBatch(8, absl::ZeroDuration(), &out));
  EXPECT_EQ(out, (std::vector<int>{1, 2}));
  EXPECT_TRUE(queue.TryPush(c).ok());  // room again
  queue.Close();
  int d = 4;
  EXPECT_EQ(queue.TryPush(d).code(), absl::StatusCode::kUnavailable);
  ASSERT_TRUE(queue.PopBatch(8, absl::ZeroDuration(), &out));  // what waited still comes out
  EXPECT_EQ(out, (std::vector<int>{3}));
  EXPECT_FALSE(queue.PopBatch(8, absl::ZeroDuration(), &out));
}

TEST(BoundedQueue, BatchWaitsForCompanyUpToMaxWait) {
  BoundedQueue<int> queue("ingest", 16);
  int first = 1;
  ASSERT_TRUE(queue.TryPush(first).ok());
  std::thread producer([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    for (int i = 2; i <= 4; ++i) {
      int v = i;
      ASSERT_TRUE(queue.TryPush(v).ok());
    }
  });
  std::vector<int> out;
  // max_items 3 fills before the (long) wait ends.
  ASSERT_TRUE(queue.PopBatch(3, absl::Seconds(30), &out));
  producer.join();
  EXPECT_EQ(out, (std::vector<int>{1, 2, 3}));
  ASSERT_TRUE(queue.PopBatch(3, absl::Milliseconds(1), &out));
  EXPECT_EQ(out, (std::vector<int>{4}));
}

class BankTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("scheduler_test_" + std::to_string(getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    storage::BankOptions options;
    options.data_dir = dir_.string();
    options.key_dim = 1;
    options.latent_rows = 1;
    options.latent_cols = 1;
    options.fingerprint = {"none", ""};
    absl::StatusOr<std::unique_ptr<storage::MemoryBank>> bank = storage::MemoryBank::Open(options);
    ASSERT_TRUE(bank.ok()) << bank.status();
    bank_ = *std::move(bank);
  }
  void TearDown() override {
    if (bank_) {
      EXPECT_TRUE(bank_->Close().ok());
    }
    bank_.reset();
    fs::remove_all(dir_);
  }

  static std::unique_ptr<IngestJob> Job(const std::string& id, const std::string& text) {
    auto job = std::make_unique<IngestJob>();
    job->document.name_space = "default";
    job->document.id = id;
    storage::Passage p;
    p.text = text;
    job->document.passages.push_back(p);
    job->encoder_inputs.push_back({1, 2, 3});
    return job;
  }

  fs::path dir_;
  std::unique_ptr<storage::MemoryBank> bank_;
  Metrics metrics_;
};

TEST_F(BankTest, IngestQueueBoundThenEveryQueuedDocumentIsStored) {
  IngestOptions options;
  options.queue_size = 3;
  options.max_batch = 8;
  options.max_wait_ms = 1;
  IngestBatcher batcher(nullptr, bank_.get(), &metrics_, options);  // not started yet
  std::vector<std::future<absl::StatusOr<storage::DocumentAck>>> acks;
  for (int i = 0; i < 3; ++i) {
    std::unique_ptr<IngestJob> job = Job("d" + std::to_string(i), "passage " + std::to_string(i));
    acks.push_back(job->done.get_future());
    ASSERT_TRUE(batcher.Submit(job).ok());
  }
  std::unique_ptr<IngestJob> extra = Job("d3", "one too many");
  EXPECT_EQ(batcher.Submit(extra).code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(extra, nullptr);  // a refused job stays with the caller
  EXPECT_NE(metrics_.Render().find("knowd_rejected_total{queue=\"ingest\"} 1"), std::string::npos);

  batcher.Start();
  for (auto& f : acks) {
    absl::StatusOr<storage::DocumentAck> ack = f.get();
    ASSERT_TRUE(ack.ok()) << ack.status();
    EXPECT_EQ(ack->passage_ids.size(), 1u);
  }
  batcher.Stop();
  absl::StatusOr<storage::BankStats> stats = bank_->Stats();
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ(stats->documents, 3u);
  // All three went through one batch (one encoder pass, one Put).
  EXPECT_NE(metrics_.Render().find("knowd_ingest_batch_documents_count 1\n"), std::string::npos);
}

TEST_F(BankTest, RepeatedIdInOneBatchKeepsTheLaterVersion) {
  IngestBatcher batcher(nullptr, bank_.get(), &metrics_, IngestOptions{8, 50, 16});
  std::unique_ptr<IngestJob> a = Job("same", "first version");
  std::unique_ptr<IngestJob> b = Job("same", "second version");
  auto fa = a->done.get_future();
  auto fb = b->done.get_future();
  ASSERT_TRUE(batcher.Submit(a).ok());
  ASSERT_TRUE(batcher.Submit(b).ok());
  batcher.Start();
  ASSERT_TRUE(fa.get().ok());
  absl::StatusOr<storage::DocumentAck> second = fb.get();
  ASSERT_TRUE(second.ok());
  EXPECT_TRUE(second->replaced);
  absl::StatusOr<storage::Document> doc = bank_->Get("default", "same");
  ASSERT_TRUE(doc.ok());
  EXPECT_EQ(doc->passages[0].text, "second version");
}

TEST_F(BankTest, CancelledAndExpiredDocumentsAreNotStored) {
  IngestBatcher batcher(nullptr, bank_.get(), &metrics_, IngestOptions{8, 1, 16});
  std::unique_ptr<IngestJob> expired = Job("late", "text");
  expired->deadline = absl::Now() - absl::Seconds(1);
  std::unique_ptr<IngestJob> cancelled = Job("gone", "text");
  cancelled->cancelled = std::make_shared<std::atomic<bool>>(true);
  auto fe = expired->done.get_future();
  auto fc = cancelled->done.get_future();
  ASSERT_TRUE(batcher.Submit(expired).ok());
  ASSERT_TRUE(batcher.Submit(cancelled).ok());
  batcher.Start();
  EXPECT_EQ(fe.get().status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(fc.get().status().code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(bank_->Get("default", "late").status().code(), absl::StatusCode::kNotFound);
}

TEST_F(BankTest, OneBadDocumentDoesNotFailItsBatch) {
  IngestBatcher batcher(nullptr, bank_.get(), &metrics_, IngestOptions{8, 50, 16});
  std::unique_ptr<IngestJob> good = Job("good", "fine text");
  std::unique_ptr<IngestJob> bad = Job("bad", "x");
  bad->document.passages.clear();  // the bank refuses a document without passages
  bad->encoder_inputs.clear();
  auto fg = good->done.get_future();
  auto fb = bad->done.get_future();
  ASSERT_TRUE(batcher.Submit(good).ok());
  ASSERT_TRUE(batcher.Submit(bad).ok());
  batcher.Start();
  EXPECT_TRUE(fg.get().ok());
  EXPECT_EQ(fb.get().status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(bank_->Get("default", "good").ok());
  EXPECT_EQ(bank_->Get("default", "bad").status().code(), absl::StatusCode::kNotFound);
}

class EngineTest : public BankTest {
 protected:
  void SetUp() override {
    BankTest::SetUp();
    backend_ = MakeCpuBackend(1);
    absl::StatusOr<std::unique_ptr<Transformer>> model = Transformer::Load(kModel, backend_.get());
    ASSERT_TRUE(model.ok()) << model.status();
    model_ = *std::move(model);
    absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer = LoadTokenizer(kModel);
    ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
    tokenizer_ = *std::move(tokenizer);
  }
  void TearDown() override {
    model_.reset();
    backend_.reset();
    BankTest::TearDown();
  }

  static std::shared_ptr<AskJob> Question(const std::string& q, v1::AskMode mode,
                                          absl::Time deadline = absl::InfiniteFuture()) {
    v1::AskRequest r;
    r.set_namespace_("default");
    r.set_question(q);
    r.set_mode(mode);
    r.set_max_tokens(8);
    return std::make_shared<AskJob>(r, deadline);
  }

  // Waits for the job's last event.
  static std::vector<AskJob::Event> Drain(AskJob& job) {
    std::vector<AskJob::Event> events;
    while (!job.Wait(absl::Seconds(1), &events)) {
    }
    return events;
  }

  std::unique_ptr<Backend> backend_;
  std::unique_ptr<Transformer> model_;
  std::unique_ptr<Tokenizer> tokenizer_;
};

TEST_F(EngineTest, AskQueueBound) {
  AskSchedulerOptions options;
  options.ask_queue_size = 2;
  AskScheduler engine(model_.get(), tokenizer_.get(), nullptr, bank_.get(), &metrics_, options);
  // Not started: nothing drains the queue.
  EXPECT_TRUE(engine.Submit(Question("a?", v1::ASK_MODE_CLOSED_BOOK)).ok());
  EXPECT_TRUE(engine.Submit(Question("b?", v1::ASK_MODE_CLOSED_BOOK)).ok());
  absl::Status full = engine.Submit(Question("c?", v1::ASK_MODE_CLOSED_BOOK));
  EXPECT_EQ(full.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(engine.queued(), 2u);
  engine.Stop();
  EXPECT_EQ(engine.Submit(Question("d?", v1::ASK_MODE_CLOSED_BOOK)).code(),
            absl::StatusCode::kUnavailable);
}

TEST_F(EngineTest, BatchedAnswersMatchOneAtATime) {
  AskSchedulerOptions options;
  options.ask_max_batch = 4;
  AskScheduler engine(model_.get(), tokenizer_.get(), nullptr, bank_.get(), &metrics_, options);
  ASSERT_TRUE(engine.Start().ok());
  const std::vector<std::string> questions = {
      "Where does Etheth Rulhal live?", "Whom did Pelem Jiku marry?", "What is 2?", "Who is Lily?"};
  std::vector<std::string> alone;
  for (const std::string& q : questions) {
    auto job = Question(q, v1::ASK_MODE_CLOSED_BOOK);
    ASSERT_TRUE(engine.Submit(job).ok());
    std::vector<AskJob::Event> events = Drain(*job);
    ASSERT_TRUE(events.back().final.has_value()) << events.back().error;
    const v1::AskFinal& final = *events.back().final;
    EXPECT_EQ(final.mode(), v1::ASK_MODE_CLOSED_BOOK);
    EXPECT_TRUE(final.cited().empty());
    EXPECT_GT(final.timings().prompt_tokens(), 0);
    std::string streamed;
    for (const auto& e : events) streamed += e.text;
    EXPECT_EQ(streamed, final.answer());
    alone.push_back(final.answer());
  }
  std::vector<std::shared_ptr<AskJob>> jobs;
  for (const std::string& q : questions) {
    jobs.push_back(Question(q, v1::ASK_MODE_CLOSED_BOOK));
    ASSERT_TRUE(engine.Submit(jobs.back()).ok());
  }
  for (size_t i = 0; i < jobs.size(); ++i) {
    std::vector<AskJob::Event> events = Drain(*jobs[i]);
    ASSERT_TRUE(events.back().final.has_value());
    EXPECT_EQ(events.back().final->answer(), alone[i]) << questions[i];
  }
  // Without an adapter mac is refused with a reason.
  auto mac = Question("Who?", v1::ASK_MODE_MAC);
  ASSERT_TRUE(engine.Submit(mac).ok());
  std::vector<AskJob::Event> events = Drain(*mac);
  EXPECT_EQ(events.back().error.code(), absl::StatusCode::kFailedPrecondition);
}

TEST_F(EngineTest, ExpiredAndCancelledQuestionsAreDropped) {
  AskScheduler engine(model_.get(), tokenizer_.get(), nullptr, bank_.get(), &metrics_,
                      AskSchedulerOptions{});
  ASSERT_TRUE(engine.Start().ok());
  auto expired = Question("late?", v1::ASK_MODE_CLOSED_BOOK, absl::Now() - absl::Seconds(1));
  ASSERT_TRUE(engine.Submit(expired).ok());
  EXPECT_EQ(Drain(*expired).back().error.code(), absl::StatusCode::kDeadlineExceeded);
  auto cancelled = Question("gone?", v1::ASK_MODE_CLOSED_BOOK);
  cancelled->Cancel();
  ASSERT_TRUE(engine.Submit(cancelled).ok());
  EXPECT_EQ(Drain(*cancelled).back().error.code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(engine.running(), 0);
}

TEST_F(EngineTest, RagCitesThePassageItRead) {
  IngestBatcher batcher(nullptr, bank_.get(), &metrics_, IngestOptions{});
  batcher.Start();
  std::unique_ptr<IngestJob> job =
      Job("p0", "Etheth Rulhal now lives in Ethdamith. By trade, Etheth is a carpenter.");
  auto ack = job->done.get_future();
  ASSERT_TRUE(batcher.Submit(job).ok());
  ASSERT_TRUE(ack.get().ok());
  AskScheduler engine(model_.get(), tokenizer_.get(), nullptr, bank_.get(), &metrics_,
                      AskSchedulerOptions{});
  ASSERT_TRUE(engine.Start().ok());
  auto q = Question("In which city does Etheth Rulhal live?", v1::ASK_MODE_UNSPECIFIED);
  ASSERT_TRUE(engine.Submit(q).ok());
  std::vector<AskJob::Event> events = Drain(*q);
  ASSERT_TRUE(events.back().final.has_value()) << events.back().error;
  const v1::AskFinal& final = *events.back().final;
  EXPECT_EQ(final.mode(), v1::ASK_MODE_RAG);  // the default without an adapter
  ASSERT_EQ(final.cited_size(), 1);
  EXPECT_EQ(final.cited(0).document_id(), "p0");
  EXPECT_EQ(final.answer(), "Ethdamith");
  EXPECT_EQ(final.stop_reason(), "newline");
}

}  // namespace
}  // namespace knowd
