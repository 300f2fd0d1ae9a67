// The OpenAI-compatible HTTP API on the daemon's HTTP port, so OpenAI clients (the `openai`
// packages, LangChain's ChatOpenAI, curl) can ask knowd:
//   POST /v1/chat/completions  the last user message is the question
//   POST /v1/completions       the prompt is the question
//   GET  /v1/models            one model per served mode
// Both POSTs answer as one JSON object, or with "stream": true as server-sent events (one
// `data: {chunk}` line per piece of the answer, then `data: [DONE]`). Every question goes through
// KnowledgeServiceImpl::StartAsk: the same token auth, request checks, namespace resolution and
// ask scheduler as gRPC's Ask. Model names are "<name>" (the daemon's default mode) and
// "<name>:<mode>" with mode closed-book, rag, mac, mac+rag (mac modes only with an adapter);
// <name> is the model bundle's directory name (knowd-tiny). An optional "knowd" object in the
// request gives the namespace, mode, top_k, rag_passages, retrieval and session_id; the
// response's "knowd" object carries the mode, citations, relevance, the "nothing in memory"
// outcome and the session the answer was generated under. Errors are
// OpenAI's {"error": {"message", "type", "param", "code"}} with the HTTP status of the gRPC code
// (docs/operations.md, "OpenAI-compatible API").
#pragma once

#include <string>

#include "absl/status/status.h"
#include "daemon/server_service.h"

namespace httplib {
class Server;
struct Request;
}  // namespace httplib

namespace knowd {

struct OpenAiOptions {
  std::string model_name;    // "knowd-tiny"
  bool has_adapter = false;  // mac modes are served (and mac is the default mode)
};

class OpenAiApi {
 public:
  // `service` must outlive the API and the server it is registered on.
  OpenAiApi(KnowledgeServiceImpl* service, OpenAiOptions options);

  // Adds the routes.
  void Register(httplib::Server& server) const;

  // The HTTP status of a gRPC code (HttpStatusOf), and the error JSON OpenAI clients parse.
  static int HttpStatus(absl::StatusCode code);
  // The body of a request httplib refused before any route saw it: 413 (over the payload limit)
  // or 404 (an unknown path).
  static std::string RefusalJson(const httplib::Request& req, int http_status);
  static std::string ErrorJson(const absl::Status& status, const std::string& param = "",
                               const std::string& code = "");

  // The model a request names, "<name>" or "<name>:<mode>", as its AskMode (UNSPECIFIED for the
  // bare name: the daemon's default). NOT_FOUND for any other name.
  absl::StatusOr<v1::AskMode> ModeOfModel(const std::string& model) const;

 private:
  KnowledgeServiceImpl* const service_;
  const OpenAiOptions options_;
};

// "knowd-tiny" for models/knowd-tiny, models/knowd-tiny/ or models/knowd-tiny.gguf.
std::string ServedModelName(const std::string& model_path);

}  // namespace knowd
