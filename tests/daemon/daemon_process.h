// The real `knowd serve` binary as a child process, for end-to-end tests: started on free loopback
// ports (127.0.0.1:0), its ports read from the line it prints once listening, stopped with
// SIGTERM. Also: temporary directories, self-signed certificates, the world test fixture.
#pragma once

#include <sys/types.h>

#include <cstdlib>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "client/client.h"
#include "tests/process_util.h"

namespace knowd::testing {

// $KNOWD_TEST_KNOWD_BINARY runs the tests against another build of knowd (an older one, to
// show that a regression test fails without its fix).
const std::string kKnowdBinary = std::getenv("KNOWD_TEST_KNOWD_BINARY") != nullptr
                                     ? std::getenv("KNOWD_TEST_KNOWD_BINARY")
                                     : std::string(KNOWD_BINARY_DIR) + "/daemon/knowd";
const std::string kKnowctlBinary = std::string(KNOWD_BINARY_DIR) + "/client/knowctl";
const std::string kTinyModel = std::string(KNOWD_SOURCE_DIR) + "/models/knowd-tiny";
const std::string kWorldDir = std::string(KNOWD_SOURCE_DIR) + "/tests/data/world";

// Whether the daemon will serve with an adapter: models/knowd-tiny/adapter exists, or
// $KNOWD_TEST_ADAPTER names one (passed as --adapter, to try an adapter before it ships).
bool HasAdapter();

class DaemonProcess {
 public:
  // Runs `knowd serve --listen 127.0.0.1:0 --http-listen 127.0.0.1:0 --model <knowd-tiny>
  // --data-dir <data_dir> [--adapter $KNOWD_TEST_ADAPTER] <extra_args...>` and waits (bounded)
  // until it says where it listens.
  // Its stderr goes to <data_dir>.log (shown by log()).
  static absl::StatusOr<std::unique_ptr<DaemonProcess>> Start(
      const std::string& data_dir, const std::vector<std::string>& extra_args = {});
  // Kills the daemon (SIGKILL) if it still runs.
  ~DaemonProcess();

  // "127.0.0.1:PORT" of the gRPC and HTTP listeners.
  const std::string& grpc_target() const { return grpc_target_; }
  const std::string& http_target() const { return http_target_; }
  pid_t pid() const { return pid_; }

  // Sends SIGTERM and waits up to `timeout` for the exit; returns its exit code, or -1 when it
  // did not exit in time (then it is killed) or died of a signal.
  int Terminate(absl::Duration timeout = absl::Seconds(60));
  // The daemon's stderr so far.
  std::string log() const;

 private:
  DaemonProcess() = default;
  void DrainStdout();

  pid_t pid_ = -1;
  int stdout_fd_ = -1;
  std::string log_path_;
  std::string grpc_target_;
  std::string http_target_;
  std::thread drain_;
};

// A fresh directory under $TEST_TMPDIR or /tmp, removed with its contents on destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// Client options for a daemon, with an optional token.
client::ClientOptions Options(const DaemonProcess& daemon, const std::string& token = "");

// Calls Stats until it succeeds (or answers anything but UNAVAILABLE), at most `timeout`.
absl::Status WaitUntilServing(const client::ClientOptions& options,
                              absl::Duration timeout = absl::Seconds(60));

// Starts `knowd serve` on `data_dir` and waits until it serves; a test failure (and null when it
// did not start) otherwise, with the daemon's log.
std::unique_ptr<DaemonProcess> StartServingOrFail(const std::string& data_dir,
                                                  const std::vector<std::string>& extra_args = {});

// A stub on a connection of its own: gRPC would otherwise share one connection between channels
// to the same address, and the daemon would see one client. `name` tells the channels apart.
std::unique_ptr<knowd::v1::KnowledgeService::Stub> OwnConnectionStub(const DaemonProcess& daemon,
                                                                     const std::string& name);

// `text` as one single-quoted shell word.
std::string ShellQuote(const std::string& text);

// The world test fixture (tests/data/world): passages by id and questions.
struct WorldPassage {
  std::string id;
  std::string text;
};
struct WorldQuestion {
  std::string id;
  std::string passage_id;
  std::string question;
  std::string answer;
  bool oracle_correct = false;
  bool mac_correct = false;      // the shipped adapter answered it exactly (mac, all 40 ingested)
  bool mac_rag_correct = false;  // likewise in mode mac+rag
};
std::vector<WorldPassage> LoadWorldPassages();
std::vector<WorldQuestion> LoadWorldQuestions();

// The SQuAD normalisation of an answer: lower case, no punctuation or articles, single spaces.
std::string NormalizeAnswer(const std::string& text);

// Writes a self-signed CA and, signed by it, a server certificate for 127.0.0.1/localhost and a
// client certificate (openssl CLI): ca.pem, server.pem, server.key, client.pem, client.key.
absl::Status WriteTestCertificates(const std::string& dir);

std::string ReadFileOrDie(const std::string& path);

// Calls on the wire, bypassing the client library and protobuf's own checks (the C++ runtime
// refuses to send invalid UTF-8 in a string field, other clients may not): each request is
// IngestRequest{id, text} encoded by hand. Returns the call's status and the acks.
absl::Status RawIngest(const std::string& target,
                       const std::vector<std::pair<std::string, std::string>>& docs,
                       std::vector<knowd::v1::IngestAck>* acks);
// Search with SearchRequest{query} encoded by hand.
absl::Status RawSearch(const std::string& target, const std::string& query);

// GET http://<target><path> over a plain socket (HTTP/1.0); the status code and the body, or
// status 0 when the connection failed.
struct HttpResponse {
  int status = 0;
  std::string body;
};
HttpResponse HttpGet(const std::string& target, const std::string& path);

}  // namespace knowd::testing
