// The daemon's plain-HTTP side (cpp-httplib): /metrics (Prometheus text), /healthz (the process
// is alive) and /readyz (the model and bank are loaded and the daemon is not draining), and under
// /v1/ the OpenAI-compatible API (daemon/openai_api.h) and the REST/JSON knowledge API
// (daemon/rest_api.h) when they are given; with the REST API, the web console (daemon/console/)
// at / and /console/.
#pragma once

#include <atomic>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "daemon/metrics.h"
#include "daemon/openai_api.h"
#include "daemon/rest_api.h"

namespace httplib {
class Server;
}

namespace knowd {

class HttpServer {
 public:
  // `metrics` and `ready` must outlive the server. `threads` connections are served at once (one
  // thread each, held while the connection is open); a connection that has not sent its whole
  // request within `read_timeout`, or stays idle between requests for a second, is closed. Idle
  // connections therefore hold a thread briefly, and the pool's spare threads keep /healthz and
  // /readyz answering while clients hold connections open.
  HttpServer(const Metrics* metrics, const std::atomic<bool>* ready, int threads = 128,
             absl::Duration read_timeout = absl::Seconds(2));
  ~HttpServer();  // Stop()s

  // Serves `api` (which must outlive the server) under /v1/, with request bodies of at most
  // `max_body_bytes` (larger: 413). Call before Start().
  void ServeOpenAi(const OpenAiApi* api, int64_t max_body_bytes);
  // Serves `api` (which must outlive the server) under /v1/namespaces/ and /v1/stats, with the
  // same body limit, and the web console that calls it at / and /console/. Call before Start().
  void ServeRest(const RestApi* api, int64_t max_body_bytes);

  // Binds HOST:PORT (port 0 picks a free one) and serves on a thread of its own. Returns the
  // bound port. UNAVAILABLE when the address cannot be bound.
  absl::StatusOr<int> Start(const std::string& address);
  void Stop();

 private:
  const Metrics* metrics_;
  const std::atomic<bool>* ready_;
  const int threads_;
  const absl::Duration read_timeout_;
  const OpenAiApi* openai_ = nullptr;
  const RestApi* rest_ = nullptr;
  int64_t max_body_bytes_ = 0;
  std::unique_ptr<httplib::Server> server_;
  std::thread thread_;
};

// The HTTP status of a gRPC code, one mapping for every API on the HTTP port: 400 invalid
// argument, failed precondition or out of range; 401 unauthenticated; 403 permission denied; 404
// not found; 409 already exists or aborted; 429 resource exhausted; 499 cancelled; 501
// unimplemented; 503 unavailable; 504 deadline exceeded; 500 otherwise.
int HttpStatusOf(absl::StatusCode code);

// Splits "HOST:PORT" ("[::1]:7070" for IPv6) into its parts. INVALID_ARGUMENT otherwise.
absl::Status SplitHostPort(const std::string& address, std::string* host, int* port);

}  // namespace knowd
