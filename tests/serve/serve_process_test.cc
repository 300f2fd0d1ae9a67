// The real `knowd serve` binary: the listening line, grpc.health.v1, server reflection, the HTTP
// probes, a streamed answer, and a clean exit on SIGTERM. (tests/daemon/ drives the full API
// through knowctl and the client library.)
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <regex>
#include <string>

#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "httplib.h"
#include "knowd/v1/knowd.grpc.pb.h"

namespace knowd {
namespace {

namespace fs = std::filesystem;

class ServeProcess {
 public:
  explicit ServeProcess(const fs::path& data_dir) {
    int out[2];
    if (pipe(out) != 0) return;
    pid_ = fork();
    if (pid_ == 0) {
      dup2(out[1], 1);
      close(out[0]);
      const std::string knowd = std::string(KNOWD_BINARY_DIR) + "/daemon/knowd";
      const std::string model = std::string(KNOWD_SOURCE_DIR) + "/models/knowd-tiny";
      execl(knowd.c_str(), knowd.c_str(), "serve", "--listen", "127.0.0.1:0", "--http-listen",
            "127.0.0.1:0", "--data-dir", data_dir.c_str(), "--model", model.c_str(), "--threads",
            "1", "--log-level", "warn", static_cast<char*>(nullptr));
      _exit(127);
    }
    close(out[1]);
    stdout_ = fdopen(out[0], "r");
    char line[4096];
    const std::regex listening(
        R"(^knowd: listening on 127\.0\.0\.1:(\d+) \(grpc\), 127\.0\.0\.1:(\d+) \(http\)\n$)");
    while (fgets(line, sizeof(line), stdout_) != nullptr) {
      std::cmatch m;
      if (std::regex_match(line, m, listening)) {
        grpc_port_ = std::stoi(m[1]);
        http_port_ = std::stoi(m[2]);
        break;
      }
    }
  }
  ~ServeProcess() {
    if (pid_ > 0 && exit_code_ < 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
    if (stdout_ != nullptr) fclose(stdout_);
  }
  // SIGTERM, then the exit code.
  int Stop() {
    kill(pid_, SIGTERM);
    int status = 0;
    waitpid(pid_, &status, 0);
    exit_code_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    return exit_code_;
  }

  int grpc_port() const { return grpc_port_; }
  int http_port() const { return http_port_; }
  std::shared_ptr<grpc::Channel> Channel() const {
    return grpc::CreateChannel("127.0.0.1:" + std::to_string(grpc_port_),
                               grpc::InsecureChannelCredentials());
  }

 private:
  pid_t pid_ = -1;
  FILE* stdout_ = nullptr;
  int grpc_port_ = 0;
  int http_port_ = 0;
  int exit_code_ = -1;
};

grpc::ByteBuffer Bytes(const std::string& s) {
  grpc::Slice slice(s);
  return grpc::ByteBuffer(&slice, 1);
}

std::string String(const grpc::ByteBuffer& b) {
  grpc::Slice slice;
  EXPECT_TRUE(b.TrySingleSlice(&slice).ok() || b.DumpToSingleSlice(&slice).ok());
  return std::string(reinterpret_cast<const char*>(slice.begin()), slice.size());
}

class ServeProcessTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("serve_process_test_" + std::to_string(getpid()));
    fs::remove_all(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  fs::path dir_;
};

TEST_F(ServeProcessTest, HealthReflectionProbesAnswerAndCleanExit) {
  ServeProcess knowd(dir_);
  ASSERT_GT(knowd.grpc_port(), 0) << "no listening line";
  ASSERT_GT(knowd.http_port(), 0);

  httplib::Client http("127.0.0.1", knowd.http_port());
  auto ready = http.Get("/readyz");
  ASSERT_TRUE(ready);
  EXPECT_EQ(ready->status, 200);
  EXPECT_EQ(http.Get("/healthz")->status, 200);

  {
    std::shared_ptr<grpc::Channel> channel = knowd.Channel();
    grpc::GenericStub stub(channel);
    grpc::CompletionQueue cq;
    void* tag = nullptr;
    bool ok = false;
    // grpc.health.v1.Health/Check for the server ("", an empty HealthCheckRequest) and for the
    // service by name (field 1): status SERVING (field 1 = 1).
    const std::string name = "knowd.v1.KnowledgeService";
    for (const std::string& request :
         {std::string(), "\x0a" + std::string(1, static_cast<char>(name.size())) + name}) {
      grpc::ClientContext context;
      auto call =
          stub.PrepareUnaryCall(&context, "/grpc.health.v1.Health/Check", Bytes(request), &cq);
      call->StartCall();
      grpc::ByteBuffer response;
      grpc::Status status;
      call->Finish(&response, &status, reinterpret_cast<void*>(1));
      ASSERT_TRUE(cq.Next(&tag, &ok));
      ASSERT_TRUE(status.ok()) << status.error_message();
      EXPECT_EQ(String(response), std::string("\x08\x01", 2));
    }
    {
      // Server reflection: list_services (field 7) names the KnowledgeService.
      grpc::ClientContext context;
      auto call = stub.PrepareCall(
          &context, "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", &cq);
      call->StartCall(reinterpret_cast<void*>(1));
      ASSERT_TRUE(cq.Next(&tag, &ok) && ok);
      call->Write(Bytes(std::string("\x3a\x00", 2)), reinterpret_cast<void*>(2));
      ASSERT_TRUE(cq.Next(&tag, &ok) && ok);
      grpc::ByteBuffer response;
      call->Read(&response, reinterpret_cast<void*>(3));
      ASSERT_TRUE(cq.Next(&tag, &ok) && ok);
      EXPECT_NE(String(response).find("knowd.v1.KnowledgeService"), std::string::npos);
      context.TryCancel();
      grpc::Status status;
      call->Finish(&status, reinterpret_cast<void*>(4));
      ASSERT_TRUE(cq.Next(&tag, &ok));
    }

    // A streamed closed-book answer: text chunks, then the final message whose answer is them.
    auto service = v1::KnowledgeService::NewStub(channel);
    grpc::ClientContext context;
    v1::AskRequest ask;
    ask.set_question("Where does Etheth Rulhal live?");
    ask.set_mode(v1::ASK_MODE_CLOSED_BOOK);
    auto reader = service->Ask(&context, ask);
    v1::AskChunk chunk;
    std::string streamed;
    v1::AskFinal final;
    while (reader->Read(&chunk)) {
      streamed += chunk.text();
      if (chunk.has_final()) final = chunk.final();
    }
    ASSERT_TRUE(reader->Finish().ok());
    EXPECT_EQ(final.mode(), v1::ASK_MODE_CLOSED_BOOK);
    EXPECT_FALSE(final.answer().empty());
    EXPECT_EQ(streamed, final.answer());
    cq.Shutdown();
    while (cq.Next(&tag, &ok)) {
    }
  }

  auto metrics = http.Get("/metrics");
  ASSERT_TRUE(metrics);
  EXPECT_NE(metrics->body.find("knowd_rpc_total{method=\"Ask\",code=\"OK\"} 1"), std::string::npos);

  EXPECT_EQ(knowd.Stop(), 0);
  // Close() saved the index with the bank's sequence number.
  EXPECT_TRUE(fs::exists(dir_ / "index" / "MANIFEST"));
}

}  // namespace
}  // namespace knowd
