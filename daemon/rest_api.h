// The REST/JSON knowledge API on the daemon's HTTP port, beside the OpenAI-compatible one:
//   POST   /v1/namespaces/{ns}/documents        ingest one document (JSON) or many
//                                              (Content-Type: application/x-ndjson, one result
//                                              line per document)
//   GET    /v1/namespaces/{ns}/documents/{id}   a stored document (Get)
//   DELETE /v1/namespaces/{ns}/documents/{id}   forget it (Forget; 404 when it is not stored)
//   POST   /v1/namespaces/{ns}/forget           forget several: {"ids": [...]}
//   POST   /v1/namespaces/{ns}/search           retrieval only (Search)
//   POST   /v1/namespaces/{ns}/ask              a question (Ask): one JSON answer, or with
//                                              "stream": true one NDJSON line per chunk
//   GET    /v1/stats, /v1/namespaces/{ns}/stats the bank's counts (Stats)
//   POST   /v1/namespaces/{ns}/sessions     a session from one chunk (JSON) or many (NDJSON)
//                                              (CreateSession)
//   POST   /v1/namespaces/{ns}/sessions/{id}/append   more chunks (AppendSession)
//   GET    /v1/namespaces/{ns}/sessions     the namespace's sessions (ListSessions)
//   DELETE /v1/namespaces/{ns}/sessions/{id}   remove one (DeleteSession)
// Every call is the gRPC call itself, made over the daemon's in-process channel to its own
// KnowledgeService: the same bearer tokens (the Authorization header is passed on as the call's
// metadata), request checks, roles, queues, drain and durability (an ingest result line is the
// document's IngestAck: its passages are in the synced write-ahead log). Bodies are the proto
// messages in JSON with the proto's JSON field names (lowerCamelCase; snake_case is accepted too),
// text as plain UTF-8 strings (never base64, although the proto's text fields are `bytes`),
// integers as JSON numbers and enums by name. Errors are {"error": {"code": <HTTP status>,
// "message": ..., "status": "<gRPC code name>"}} with the HTTP status of the gRPC code
// (HttpStatusOf, shared with the OpenAI-compatible API). docs/http-api.md is the reference.
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "google/protobuf/message.h"
#include "grpcpp/channel.h"
#include "knowd/v1/knowd.grpc.pb.h"

namespace httplib {
class Server;
}

namespace knowd {

class RestApi {
 public:
  // `channel` reaches the daemon's own KnowledgeService (grpc::Server::InProcessChannel); it must
  // stay usable while the routes are served.
  explicit RestApi(std::shared_ptr<grpc::Channel> channel);

  // Adds the routes above.
  void Register(httplib::Server& server) const;

  // Whether `path` is one of this API's (its errors then take this API's shape).
  static bool Serves(std::string_view path);

  // {"error": {"code", "message", "status"}}; `http_status` 0 is the code's (HttpStatusOf).
  static std::string ErrorJson(const absl::Status& status, int http_status = 0);

 private:
  std::unique_ptr<v1::KnowledgeService::Stub> stub_;
};

// A proto message from a JSON object in the REST API's spelling: fields by JSON name or proto
// name, `bytes` fields as UTF-8 strings, 64-bit integers as numbers (or decimal strings), enums by
// name (the full one, "RETRIEVAL_LEXICAL", or without the enum's prefix in any case, "lexical";
// ASK_MODE_MAC_RAG also as "mac+rag", closed-book with a dash) or number, null as absent.
// INVALID_ARGUMENT naming the field ("topK: must be an integer") otherwise, unknown fields
// included.
absl::Status JsonToMessage(std::string_view json, google::protobuf::Message* message);
// The message as JSON in the same spelling: every field by its JSON name, defaults included
// (message fields and proto3 `optional` ones only when set), enums by full name.
std::string MessageToJson(const google::protobuf::Message& message);

}  // namespace knowd
