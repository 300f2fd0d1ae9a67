#include "tests/daemon/daemon_process.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cctype>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "client/client.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/impl/client_unary_call.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace knowd::testing {
namespace {

using Clock = std::chrono::steady_clock;

// Exit status of a waitpid status word: the code, or -1 for a signal.
int ExitCode(int status) { return WIFEXITED(status) ? WEXITSTATUS(status) : -1; }

// Waits for `pid` up to `timeout`; the exit code, or nullopt while it still runs.
std::optional<int> WaitFor(pid_t pid, absl::Duration timeout) {
  const auto end = Clock::now() + absl::ToChronoMilliseconds(timeout);
  while (true) {
    int status = 0;
    const pid_t done = waitpid(pid, &status, WNOHANG);
    if (done == pid) return ExitCode(status);
    if (done < 0) return -1;
    if (Clock::now() >= end) return std::nullopt;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

// A daemon built with sanitizers (KNOWD_SANITIZE, docs/testing.md) writes each report to its
// stderr, our log. Its exit code tells only when the test stops it with Terminate, so the log is
// read whenever the daemon is gone and the running test fails on a report.
void ExpectNoSanitizerReport(const std::string& log) {
  for (const char* name :
       {"AddressSanitizer", "LeakSanitizer", "UndefinedBehaviorSanitizer", "ThreadSanitizer"}) {
    if (absl::StrContains(log, absl::StrCat("SUMMARY: ", name))) {
      ADD_FAILURE() << "knowd serve reported a " << name << " error:\n" << log;
      return;
    }
  }
}

}  // namespace

bool HasAdapter() {
  const char* adapter = std::getenv("KNOWD_TEST_ADAPTER");
  return (adapter != nullptr && *adapter != '\0') ||
         std::filesystem::exists(kTinyModel + "/adapter/adapter.json");
}

absl::StatusOr<std::unique_ptr<DaemonProcess>> DaemonProcess::Start(
    const std::string& data_dir, const std::vector<std::string>& extra_args) {
  std::vector<std::string> args = {kKnowdBinary,    "serve",       "--listen", "127.0.0.1:0",
                                   "--http-listen", "127.0.0.1:0", "--model",  kTinyModel,
                                   "--data-dir",    data_dir};
  if (const char* adapter = std::getenv("KNOWD_TEST_ADAPTER"); adapter != nullptr && *adapter) {
    args.insert(args.end(), {"--adapter", adapter});
  }
  args.insert(args.end(), extra_args.begin(), extra_args.end());
  std::unique_ptr<DaemonProcess> daemon(new DaemonProcess());
  daemon->log_path_ = data_dir + ".log";
  int out[2];
  if (pipe(out) != 0) return absl::InternalError("pipe failed");
  const pid_t pid = fork();
  if (pid < 0) return absl::InternalError("fork failed");
  if (pid == 0) {
    dup2(out[1], STDOUT_FILENO);
    const int log = open(daemon->log_path_.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (log >= 0) dup2(log, STDERR_FILENO);
    close(out[0]);
    close(out[1]);
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    execv(argv[0], argv.data());
    _exit(127);
  }
  close(out[1]);
  daemon->pid_ = pid;
  daemon->stdout_fd_ = out[0];

  // "knowd: listening on 127.0.0.1:PORT (grpc), 127.0.0.1:PORT2 (http)"
  const std::regex listening(R"(listening on (\S+) \(grpc\), (\S+) \(http\))");
  const auto end = Clock::now() + std::chrono::seconds(120);
  std::string seen;
  while (Clock::now() < end) {
    pollfd fd{daemon->stdout_fd_, POLLIN, 0};
    if (poll(&fd, 1, 200) <= 0) continue;
    char buf[4096];
    const ssize_t n = read(daemon->stdout_fd_, buf, sizeof(buf));
    if (n <= 0) break;  // the daemon exited
    seen.append(buf, n);
    std::smatch m;
    if (std::regex_search(seen, m, listening)) {
      daemon->grpc_target_ = m[1];
      daemon->http_target_ = m[2];
      daemon->drain_ = std::thread(&DaemonProcess::DrainStdout, daemon.get());
      return daemon;
    }
  }
  return absl::UnavailableError(absl::StrCat("knowd serve did not report its ports; stdout: ", seen,
                                             "\nstderr: ", daemon->log(),
                                             "\nargs: ", absl::StrJoin(args, " ")));
}

void DaemonProcess::DrainStdout() {
  char buf[4096];
  while (read(stdout_fd_, buf, sizeof(buf)) > 0) {
  }
}

DaemonProcess::~DaemonProcess() {
  if (pid_ > 0) {
    kill(pid_, SIGKILL);
    WaitFor(pid_, absl::Seconds(30));
    ExpectNoSanitizerReport(log());
  }
  if (drain_.joinable()) drain_.join();
  if (stdout_fd_ >= 0) close(stdout_fd_);
}

int DaemonProcess::Terminate(absl::Duration timeout) {
  if (pid_ <= 0) return -1;
  kill(pid_, SIGTERM);
  std::optional<int> code = WaitFor(pid_, timeout);
  if (!code) {
    kill(pid_, SIGKILL);
    WaitFor(pid_, absl::Seconds(30));
    code = -1;
  }
  pid_ = -1;
  ExpectNoSanitizerReport(log());
  return *code;
}

std::string DaemonProcess::log() const {
  std::ifstream in(log_path_);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

TempDir::TempDir() {
  const char* base = std::getenv("TEST_TMPDIR");
  std::string pattern = absl::StrCat(base != nullptr ? base : "/tmp", "/knowd-e2e-XXXXXX");
  if (mkdtemp(pattern.data()) != nullptr) path_ = pattern;
}

TempDir::~TempDir() {
  if (path_.empty()) return;
  std::error_code ignored;
  std::filesystem::remove_all(path_, ignored);
  std::filesystem::remove(path_ + ".log", ignored);
}

client::ClientOptions Options(const DaemonProcess& daemon, const std::string& token) {
  client::ClientOptions options;
  options.target = daemon.grpc_target();
  options.token = token;
  options.deadline = absl::Seconds(120);
  return options;
}

absl::Status WaitUntilServing(const client::ClientOptions& options, absl::Duration timeout) {
  absl::StatusOr<std::unique_ptr<client::Client>> c = client::Client::Connect(options);
  if (!c.ok()) return c.status();
  const auto end = Clock::now() + absl::ToChronoMilliseconds(timeout);
  absl::Status last;
  while (Clock::now() < end) {
    last = (*c)->Stats().status();
    if (last.code() != absl::StatusCode::kUnavailable) return absl::OkStatus();
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return last;
}

std::unique_ptr<v1::KnowledgeService::Stub> OwnConnectionStub(const DaemonProcess& daemon,
                                                              const std::string& name) {
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  args.SetString("knowd.test.client", name);
  return v1::KnowledgeService::NewStub(
      grpc::CreateCustomChannel(daemon.grpc_target(), grpc::InsecureChannelCredentials(), args));
}

std::unique_ptr<DaemonProcess> StartServingOrFail(const std::string& data_dir,
                                                  const std::vector<std::string>& extra_args) {
  absl::StatusOr<std::unique_ptr<DaemonProcess>> daemon =
      DaemonProcess::Start(data_dir, extra_args);
  if (!daemon.ok()) {
    ADD_FAILURE() << daemon.status();
    return nullptr;
  }
  if (absl::Status s = WaitUntilServing(Options(**daemon)); !s.ok()) {
    ADD_FAILURE() << s << "\n" << (*daemon)->log();
  }
  return std::move(*daemon);
}

std::string ShellQuote(const std::string& text) {
  std::string quoted = "'";
  for (char c : text) quoted += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return quoted + "'";
}

std::string ReadFileOrDie(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    std::fprintf(stderr, "cannot read %s\n", path.c_str());
    std::abort();
  }
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

std::vector<WorldPassage> LoadWorldPassages() {
  std::vector<WorldPassage> passages;
  std::istringstream lines(ReadFileOrDie(kWorldDir + "/passages.jsonl"));
  for (std::string line; std::getline(lines, line);) {
    const nlohmann::json j = nlohmann::json::parse(line);
    passages.push_back({j["id"], j["text"]});
  }
  return passages;
}

std::vector<WorldQuestion> LoadWorldQuestions() {
  std::vector<WorldQuestion> questions;
  std::istringstream lines(ReadFileOrDie(kWorldDir + "/questions.jsonl"));
  for (std::string line; std::getline(lines, line);) {
    const nlohmann::json j = nlohmann::json::parse(line);
    questions.push_back({j["id"], j["passage_id"], j["question"], j["answer"], j["oracle_correct"],
                         j.value("mac_correct", false), j.value("mac_rag_correct", false)});
  }
  return questions;
}

std::string NormalizeAnswer(const std::string& text) {
  std::string kept;
  for (unsigned char c : text) {
    if (!std::ispunct(c)) kept += static_cast<char>(std::tolower(c));
  }
  std::istringstream words(kept);
  std::vector<std::string> out;
  for (std::string w; words >> w;) {
    if (w != "a" && w != "an" && w != "the") out.push_back(w);
  }
  return absl::StrJoin(out, " ");
}

absl::Status WriteTestCertificates(const std::string& dir) {
  const std::string d = dir + "/";
  const std::string quiet = " >/dev/null 2>&1";
  const std::vector<std::string> steps = {
      "openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=knowd-test-ca -keyout " + d +
          "ca.key -out " + d + "ca.pem",
      "printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\\n' > " + d + "san.ext",
      "openssl req -newkey rsa:2048 -nodes -subj /CN=localhost -keyout " + d + "server.key -out " +
          d + "server.csr",
      "openssl x509 -req -in " + d + "server.csr -CA " + d + "ca.pem -CAkey " + d +
          "ca.key -CAcreateserial -days 2 -extfile " + d + "san.ext -out " + d + "server.pem",
      "openssl req -newkey rsa:2048 -nodes -subj /CN=knowd-test-client -keyout " + d +
          "client.key -out " + d + "client.csr",
      "openssl x509 -req -in " + d + "client.csr -CA " + d + "ca.pem -CAkey " + d +
          "ca.key -CAcreateserial -days 2 -out " + d + "client.pem",
  };
  for (const std::string& step : steps) {
    if (std::system((step + quiet).c_str()) != 0) {
      return absl::InternalError(absl::StrCat("failed: ", step));
    }
  }
  return absl::OkStatus();
}

namespace {

// A length-delimited protobuf field (wire type 2); lengths below 128 only.
std::string LengthDelimited(int field, const std::string& value) {
  return std::string(1, static_cast<char>(field << 3 | 2)) +
         std::string(1, static_cast<char>(value.size())) + value;
}

grpc::ByteBuffer ToByteBuffer(const std::string& bytes) {
  grpc::Slice slice(bytes);
  return grpc::ByteBuffer(&slice, 1);
}

}  // namespace

absl::Status RawIngest(const std::string& target,
                       const std::vector<std::pair<std::string, std::string>>& docs,
                       std::vector<knowd::v1::IngestAck>* acks) {
  auto channel = grpc::CreateChannel(target, grpc::InsecureChannelCredentials());
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
  const grpc::internal::RpcMethod method("/knowd.v1.KnowledgeService/Ingest",
                                         grpc::internal::RpcMethod::BIDI_STREAMING);
  std::unique_ptr<grpc::ClientReaderWriter<grpc::ByteBuffer, grpc::ByteBuffer>> stream(
      grpc::internal::ClientReaderWriterFactory<grpc::ByteBuffer, grpc::ByteBuffer>::Create(
          channel.get(), method, &context));
  for (const auto& [id, text] : docs) {
    if (!stream->Write(ToByteBuffer(LengthDelimited(2, id) + LengthDelimited(3, text)))) break;
  }
  stream->WritesDone();
  grpc::ByteBuffer reply;
  while (stream->Read(&reply)) {
    std::vector<grpc::Slice> slices;
    std::string bytes;
    if (reply.Dump(&slices).ok()) {
      for (const grpc::Slice& slice : slices) {
        bytes.append(reinterpret_cast<const char*>(slice.begin()), slice.size());
      }
    }
    knowd::v1::IngestAck ack;
    ack.ParseFromString(bytes);
    acks->push_back(ack);
  }
  return client::FromGrpcStatus(stream->Finish());
}

absl::Status RawSearch(const std::string& target, const std::string& query) {
  auto channel = grpc::CreateChannel(target, grpc::InsecureChannelCredentials());
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
  const grpc::internal::RpcMethod method("/knowd.v1.KnowledgeService/Search",
                                         grpc::internal::RpcMethod::NORMAL_RPC);
  grpc::ByteBuffer response;
  return client::FromGrpcStatus(
      grpc::internal::BlockingUnaryCall<grpc::ByteBuffer, grpc::ByteBuffer>(
          channel.get(), method, &context, ToByteBuffer(LengthDelimited(2, query)), &response));
}

HttpResponse HttpGet(const std::string& target, const std::string& path) {
  HttpResponse response;
  const size_t colon = target.rfind(':');
  if (colon == std::string::npos) return response;
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<uint16_t>(std::stoi(target.substr(colon + 1))));
  if (inet_pton(AF_INET, target.substr(0, colon).c_str(), &address.sin_addr) != 1) return response;
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return response;
  timeval timeout{30, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  std::string raw;
  if (connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0) {
    const std::string request = "GET " + path + " HTTP/1.0\r\nHost: " + target + "\r\n\r\n";
    if (send(fd, request.data(), request.size(), 0) == static_cast<ssize_t>(request.size())) {
      char buf[4096];
      for (ssize_t n; (n = recv(fd, buf, sizeof(buf), 0)) > 0;) raw.append(buf, n);
    }
  }
  close(fd);
  // "HTTP/1.1 200 OK\r\n...\r\n\r\nbody"
  const size_t space = raw.find(' ');
  const size_t body = raw.find("\r\n\r\n");
  if (space == std::string::npos || body == std::string::npos) return response;
  response.status = std::atoi(raw.c_str() + space + 1);
  response.body = raw.substr(body + 4);
  return response;
}

}  // namespace knowd::testing
