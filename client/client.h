// knowd's C++ client: one connection to a daemon's KnowledgeService (proto/knowd/v1/knowd.proto).
//
// Every call returns an absl::Status whose code is the gRPC code the daemon answered with (the two
// enumerations share their values) and whose message is the daemon's, so a caller can tell a
// full queue (RESOURCE_EXHAUSTED, retry later) from bad input (INVALID_ARGUMENT) or a daemon that
// cannot be reached (UNAVAILABLE).
//
// A Client is safe for concurrent use from many threads without external synchronization; calls
// share its channel. Callbacks run on the calling thread, except Ingest's document producer.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "knowd/v1/knowd.grpc.pb.h"

namespace knowd::client {

namespace v1 = ::knowd::v1;

struct ClientOptions {
  // "host:port" of the daemon's gRPC listener.
  std::string target = "127.0.0.1:7070";
  // Sent as "authorization: Bearer <token>" on every call when not empty.
  std::string token;
  // Filled into every request whose namespace is empty ("" lets the daemon use "default").
  std::string name_space;
  // TLS: on when `tls` is set or any PEM below is given. An empty root CA uses the system roots;
  // the client certificate and key (both or neither) authenticate this client to the daemon.
  bool tls = false;
  std::string tls_root_ca_pem;
  std::string tls_client_cert_pem;
  std::string tls_client_key_pem;
  // The name the server's certificate must carry, when it differs from the target's host (e.g.
  // "localhost" while connecting to 127.0.0.1).
  std::string tls_server_name;
  // Deadline of each call; zero or infinite means none.
  absl::Duration deadline = absl::InfiniteDuration();
};

// Produces the documents of an Ingest stream one at a time: fills `request` and returns true, or
// returns false at the end of the stream. An error stops the stream and is returned by Ingest.
using DocumentProducer = std::function<absl::StatusOr<bool>(v1::IngestRequest* request)>;

class Client {
 public:
  // Creates the channel; no connection is made until the first call (a daemon that is down shows
  // as UNAVAILABLE then). Fails only on unusable options (e.g. a client cert without its key).
  static absl::StatusOr<std::unique_ptr<Client>> Connect(const ClientOptions& options);

  // Streams documents to the daemon and calls `on_ack` for each ack, in document order, as it
  // arrives. `next` runs on a helper thread (so documents keep flowing while acks are handled);
  // Ingest returns only after that thread has finished. A document rejected by the daemon is
  // reported in its ack (error_code), not as an error: the returned status is the stream's (an auth
  // failure, an unreachable daemon, the producer's error).
  absl::Status Ingest(const DocumentProducer& next,
                      const std::function<void(const v1::IngestAck&)>& on_ack);

  // Asks a question; `on_text` (may be empty) receives the answer's text as it is generated. The
  // final message (whole answer, cited passages, timings) is returned.
  absl::StatusOr<v1::AskFinal> Ask(v1::AskRequest request,
                                   const std::function<void(std::string_view)>& on_text = {});

  absl::StatusOr<v1::SearchResponse> Search(v1::SearchRequest request);
  // NOT_FOUND when the id is not stored in the namespace.
  absl::StatusOr<v1::Document> Get(v1::GetRequest request);
  absl::StatusOr<v1::ForgetResponse> Forget(v1::ForgetRequest request);
  absl::StatusOr<v1::StatsResponse> Stats(v1::StatsRequest request = {});

  // Sessions: a context absorbed chunk by chunk into a constant-size state (knowd.proto,
  // CreateSession). `chunks` go as one stream, in order; the first carries the namespace (the
  // client's when empty), ttl and label (CreateSession) or the session id (AppendSession).
  absl::StatusOr<v1::Session> CreateSession(std::vector<v1::SessionChunk> chunks);
  absl::StatusOr<v1::Session> AppendSession(std::vector<v1::SessionChunk> chunks);
  absl::Status DeleteSession(v1::DeleteSessionRequest request);
  absl::StatusOr<v1::ListSessionsResponse> ListSessions(v1::ListSessionsRequest request = {});

  const ClientOptions& options() const { return options_; }

 private:
  Client(ClientOptions options, std::unique_ptr<v1::KnowledgeService::Stub> stub);
  // A context carrying the token and the deadline.
  // A call's context: its token, deadline and the namespace header a cluster routes by
  // ("" = the client's namespace).
  std::unique_ptr<grpc::ClientContext> NewContext(std::string_view name_space) const;
  template <typename Request>
  void FillNamespace(Request* request) const;
  absl::StatusOr<v1::Session> WriteSession(bool append, std::vector<v1::SessionChunk> chunks);

  ClientOptions options_;
  std::unique_ptr<v1::KnowledgeService::Stub> stub_;
};

// The absl::Status of a gRPC status: same code, same message.
absl::Status FromGrpcStatus(const grpc::Status& status);

// Short names of the ask modes as the command line spells them ("closed-book", "mac", "rag",
// "mac+rag"); "" for UNSPECIFIED.
std::string AskModeName(v1::AskMode mode);
absl::StatusOr<v1::AskMode> ParseAskMode(std::string_view name);
// "dense", "lexical", "hybrid" (and "" for UNSPECIFIED: the daemon's default).
absl::StatusOr<v1::Retrieval> ParseRetrieval(std::string_view name);

}  // namespace knowd::client
