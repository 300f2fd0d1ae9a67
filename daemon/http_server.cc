#include "daemon/http_server.h"

#include <sys/socket.h>

#include <algorithm>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "daemon/console/console.h"
#include "httplib.h"

namespace knowd {

int HttpStatusOf(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kOk:
      return 200;
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kFailedPrecondition:
    case absl::StatusCode::kOutOfRange:
      return 400;
    case absl::StatusCode::kUnauthenticated:
      return 401;
    case absl::StatusCode::kPermissionDenied:
      return 403;
    case absl::StatusCode::kNotFound:
      return 404;
    case absl::StatusCode::kAlreadyExists:
    case absl::StatusCode::kAborted:
      return 409;
    case absl::StatusCode::kResourceExhausted:
      return 429;
    case absl::StatusCode::kCancelled:
      return 499;
    case absl::StatusCode::kUnimplemented:
      return 501;
    case absl::StatusCode::kUnavailable:
      return 503;
    case absl::StatusCode::kDeadlineExceeded:
      return 504;
    default:
      return 500;
  }
}

absl::Status SplitHostPort(const std::string& address, std::string* host, int* port) {
  const size_t colon = address.rfind(':');
  if (colon == std::string::npos || colon == 0 ||
      !absl::SimpleAtoi(address.substr(colon + 1), port) || *port < 0 || *port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("\"", address, "\" is not HOST:PORT (e.g. 127.0.0.1:7071)"));
  }
  *host = address.substr(0, colon);
  if (host->size() >= 2 && host->front() == '[' && host->back() == ']') {
    *host = host->substr(1, host->size() - 2);
  }
  return absl::OkStatus();
}

HttpServer::HttpServer(const Metrics* metrics, const std::atomic<bool>* ready, int threads,
                       absl::Duration read_timeout)
    : metrics_(metrics),
      ready_(ready),
      threads_(std::max(1, threads)),
      read_timeout_(read_timeout),
      server_(std::make_unique<httplib::Server>()) {}

HttpServer::~HttpServer() { Stop(); }

void HttpServer::ServeOpenAi(const OpenAiApi* api, int64_t max_body_bytes) {
  openai_ = api;
  max_body_bytes_ = max_body_bytes;
}

void HttpServer::ServeRest(const RestApi* api, int64_t max_body_bytes) {
  rest_ = api;
  max_body_bytes_ = max_body_bytes;
}

absl::StatusOr<int> HttpServer::Start(const std::string& address) {
  std::string host;
  int port = 0;
  KNOWD_RETURN_IF_ERROR(SplitHostPort(address, &host, &port));
  // Stop() waits for open keep-alive connections to idle out (a scraper holds one): keep it short.
  server_->set_keep_alive_timeout(1);
  const int64_t read_us = absl::ToInt64Microseconds(read_timeout_);
  server_->set_read_timeout(read_us / 1000000, read_us % 1000000);
  server_->set_write_timeout(read_us / 1000000, read_us % 1000000);
  const int threads = threads_;
  server_->new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  server_->Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
    res.set_content(metrics_->Render(), "text/plain; version=0.0.4; charset=utf-8");
  });
  server_->Get("/healthz", [](const httplib::Request&, httplib::Response& res) {
    res.set_content("ok\n", "text/plain");
  });
  server_->Get("/readyz", [this](const httplib::Request&, httplib::Response& res) {
    if (ready_->load()) {
      res.set_content("ready\n", "text/plain");
    } else {
      res.status = 503;
      res.set_content("not ready\n", "text/plain");
    }
  });
  if (openai_ != nullptr || rest_ != nullptr) {
    server_->set_payload_max_length(static_cast<size_t>(std::max<int64_t>(1, max_body_bytes_)));
  }
  if (openai_ != nullptr) openai_->Register(*server_);
  if (rest_ != nullptr) {
    rest_->Register(*server_);
    // The web console (daemon/console/), which calls the REST API: / and /console are its page.
    const auto serve_console = [](const std::string& name, httplib::Response& res) {
      const ConsoleFile* file = FindConsoleFile(name);
      if (file == nullptr) {
        res.status = 404;
        res.set_content("not found\n", "text/plain");
        return;
      }
      res.set_header("Cache-Control", "no-cache");
      res.set_header("X-Content-Type-Options", "nosniff");
      res.set_header("Content-Security-Policy",
                     "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'");
      res.set_content(file->body.data(), file->body.size(), std::string(file->content_type));
    };
    for (const char* page : {"/", "/console", "/console/"}) {
      server_->Get(page, [serve_console](const httplib::Request&, httplib::Response& res) {
        serve_console("index.html", res);
      });
    }
    server_->Get(R"(/console/([A-Za-z0-9_.-]+))",
                 [serve_console](const httplib::Request& req, httplib::Response& res) {
                   serve_console(req.matches[1], res);
                 });
  }
  // httplib's own refusals under /v1/ (a body over the payload limit, an unknown path) in the
  // error shape of the API the path belongs to.
  server_->set_error_handler(httplib::Server::HandlerWithResponse(
      [this](const httplib::Request& req, httplib::Response& res) {
        if (!res.body.empty() || !absl::StartsWith(req.path, "/v1/") ||
            (res.status != 413 && res.status != 404)) {
          return httplib::Server::HandlerResponse::Unhandled;
        }
        if (rest_ != nullptr && RestApi::Serves(req.path)) {
          const absl::Status refusal =
              res.status == 413
                  ? absl::ResourceExhaustedError(
                        "the request body is larger than the daemon accepts (--max-message-bytes): "
                        "send the documents in several requests")
                  : absl::NotFoundError(absl::StrCat("no endpoint ", req.method, " ", req.path,
                                                     " (docs/http-api.md lists them)"));
          res.set_content(RestApi::ErrorJson(refusal, res.status), "application/json");
        } else if (openai_ != nullptr) {
          res.set_content(OpenAiApi::RefusalJson(req, res.status), "application/json");
        } else {
          return httplib::Server::HandlerResponse::Unhandled;
        }
        return httplib::Server::HandlerResponse::Handled;
      }));
  // cpp-httplib's defaults would let a second daemon share the port (SO_REUSEPORT) and queue only
  // 5 unaccepted connections: a burst of clients beyond that has its handshakes dropped and
  // retried seconds later, long enough for the read timeout to close them. The socket is
  // SO_REUSEADDR only, and after the bind it listens with the system's largest backlog.
  int listener = -1;
  server_->set_socket_options([&listener](int sock) {
    const int yes = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
    listener = sock;
  });
  const int bound =
      port == 0 ? server_->bind_to_any_port(host) : (server_->bind_to_port(host, port) ? port : -1);
  if (bound < 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot listen on ", address, " (http): is another process using the port?"));
  }
  if (listener < 0 || ::listen(listener, SOMAXCONN) != 0) {
    return absl::InternalError(absl::StrCat("cannot widen the listen queue of ", address));
  }
  thread_ = std::thread([this] { server_->listen_after_bind(); });
  return bound;
}

void HttpServer::Stop() {
  if (thread_.joinable()) {
    server_->stop();
    thread_.join();
  }
}

}  // namespace knowd
