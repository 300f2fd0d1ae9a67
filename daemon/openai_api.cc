#include "daemon/openai_api.h"

#include <atomic>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <random>
#include <string_view>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "daemon/http_server.h"
#include "httplib.h"
#include "nlohmann/json.hpp"

namespace knowd {
namespace {

using json = nlohmann::json;

constexpr const char* kJson = "application/json";

struct ModeName {
  const char* name;
  v1::AskMode mode;
  bool needs_adapter;
};
constexpr ModeName kModes[] = {
    {"closed-book", v1::ASK_MODE_CLOSED_BOOK, false},
    {"rag", v1::ASK_MODE_RAG, false},
    {"mac", v1::ASK_MODE_MAC, true},
    {"mac+rag", v1::ASK_MODE_MAC_RAG, true},
};

const char* ModeText(v1::AskMode mode) {
  for (const ModeName& m : kModes) {
    if (m.mode == mode) return m.name;
  }
  return "default";
}

// Text that may hold invalid UTF-8 (it should not) is written with U+FFFD, never refused.
std::string Dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

// A request field of the wrong type or value: INVALID_ARGUMENT naming it.
struct FieldError {
  absl::Status status;
  std::string param;
};

// One request, parsed: the AskRequest and what the response needs.
struct Parsed {
  v1::AskRequest ask;
  std::string model;
  bool stream = false;
  bool include_usage = false;
};

std::optional<FieldError> Invalid(const std::string& param, std::string_view message) {
  return FieldError{absl::InvalidArgumentError(absl::StrCat(param, ": ", std::string(message))),
                    param};
}

// Reads an optional integer field (null or absent: untouched) within [lo, hi].
std::optional<FieldError> ReadInt(const json& body, const char* key, const std::string& param,
                                  int64_t lo, int64_t hi, int64_t* out, bool* present = nullptr) {
  auto it = body.find(key);
  if (it == body.end() || it->is_null()) return std::nullopt;
  if (!it->is_number_integer()) return Invalid(param, "must be an integer");
  const int64_t v =
      it->is_number_unsigned() && it->get<uint64_t>() > INT64_MAX ? INT64_MAX : it->get<int64_t>();
  if (v < lo || v > hi) return Invalid(param, absl::StrCat("must be ", lo, "..", hi));
  *out = v;
  if (present != nullptr) *present = true;
  return std::nullopt;
}

std::optional<FieldError> ReadNumber(const json& body, const char* key, double* out) {
  auto it = body.find(key);
  if (it == body.end() || it->is_null()) return std::nullopt;
  if (!it->is_number()) return Invalid(key, "must be a number");
  *out = it->get<double>();
  return std::nullopt;
}

std::optional<FieldError> ReadString(const json& body, const char* key, const std::string& param,
                                     std::string* out) {
  auto it = body.find(key);
  if (it == body.end() || it->is_null()) return std::nullopt;
  if (!it->is_string()) return Invalid(param, "must be a string");
  *out = it->get<std::string>();
  return std::nullopt;
}

// A chat message's content: a string, or an array of parts whose "text" parts are joined.
std::optional<FieldError> ContentText(const json& content, const std::string& param,
                                      std::string* out) {
  if (content.is_string()) {
    *out = content.get<std::string>();
    return std::nullopt;
  }
  if (!content.is_array()) return Invalid(param, "must be a string or an array of parts");
  out->clear();
  for (const json& part : content) {
    if (!part.is_object() || part.value("type", "") != "text" || !part.contains("text") ||
        !part["text"].is_string()) {
      return Invalid(param, "only text parts ({\"type\": \"text\", \"text\": ...}) are read");
    }
    if (!out->empty()) out->push_back('\n');
    *out += part["text"].get<std::string>();
  }
  return std::nullopt;
}

// The question: the last user message (chat) or the prompt (completions).
std::optional<FieldError> ReadQuestion(const json& body, bool chat, std::string* question) {
  if (chat) {
    auto it = body.find("messages");
    if (it == body.end() || !it->is_array() || it->empty()) {
      return Invalid("messages", "must be a non-empty array of messages");
    }
    for (size_t i = it->size(); i-- > 0;) {
      const json& m = (*it)[i];
      if (!m.is_object()) return Invalid(absl::StrCat("messages[", i, "]"), "must be an object");
      if (m.value("role", "") != "user") continue;
      if (!m.contains("content")) {
        return Invalid(absl::StrCat("messages[", i, "].content"), "is missing");
      }
      return ContentText(m["content"], absl::StrCat("messages[", i, "].content"), question);
    }
    return Invalid("messages", "holds no message with role \"user\" (the question)");
  }
  auto it = body.find("prompt");
  if (it == body.end()) return Invalid("prompt", "is missing");
  if (it->is_array() && it->size() == 1 && (*it)[0].is_string()) {
    *question = (*it)[0].get<std::string>();
    return std::nullopt;
  }
  if (!it->is_string()) return Invalid("prompt", "must be a string (or an array of one string)");
  *question = it->get<std::string>();
  return std::nullopt;
}

std::string NewId(const char* prefix) {
  thread_local std::mt19937_64 rng(std::random_device{}());
  return absl::StrFormat("%s-%016x%08x", prefix, rng(), static_cast<uint32_t>(rng()));
}

json Citations(const v1::AskFinal& final) {
  json out = json::array();
  for (const v1::Passage& p : final.cited()) {
    json c = {{"document_id", p.document_id()},
              {"index", p.index()},
              {"score", p.score()},
              {"text", p.text()}};
    if (!p.metadata().empty()) {
      json metadata = json::object();
      for (const auto& [k, v] : p.metadata()) metadata[k] = v;
      c["metadata"] = std::move(metadata);
    }
    out.push_back(std::move(c));
  }
  return out;
}

// knowd's extras, which OpenAI clients ignore. session_id only when the answer used one.
json Extras(const v1::AskFinal& final, const std::string& name_space) {
  json extras = {{"mode", ModeText(final.mode())},
                 {"namespace", name_space},
                 {"citations", Citations(final)},
                 {"relevance", final.relevance()},
                 {"nothing_in_memory", final.nothing_in_memory()},
                 {"stop_reason", final.stop_reason()},
                 {"metadata_trimmed", final.metadata_trimmed()}};
  if (!final.session_id().empty()) extras["session_id"] = final.session_id();
  return extras;
}

const char* FinishReason(const v1::AskFinal& final) {
  return final.stop_reason() == "max_tokens" ? "length" : "stop";
}

json Usage(const v1::AskFinal& final) {
  const int prompt = final.timings().prompt_tokens();
  const int completion = final.timings().generated_tokens();
  return {{"prompt_tokens", prompt},
          {"completion_tokens", completion},
          {"total_tokens", prompt + completion}};
}

void SetError(httplib::Response& res, const absl::Status& status, const std::string& param = "",
              const std::string& code = "") {
  res.status = OpenAiApi::HttpStatus(status.code());
  res.set_content(OpenAiApi::ErrorJson(status, param, code), kJson);
}

std::optional<std::string_view> AuthorizationOf(const httplib::Request& req) {
  if (!req.has_header("Authorization")) return std::nullopt;
  // The value lives in req.headers, which outlives every use.
  auto it = req.headers.find("Authorization");
  return std::string_view(it->second);
}

}  // namespace

std::string ServedModelName(const std::string& model_path) {
  std::filesystem::path p(model_path);
  if (!p.has_filename()) p = p.parent_path();
  std::string name = p.filename().string();
  if (absl::EndsWithIgnoreCase(name, ".gguf")) name = p.stem().string();
  return name.empty() ? "knowd" : name;
}

OpenAiApi::OpenAiApi(KnowledgeServiceImpl* service, OpenAiOptions options)
    : service_(service), options_(std::move(options)) {}

int OpenAiApi::HttpStatus(absl::StatusCode code) { return HttpStatusOf(code); }

std::string OpenAiApi::ErrorJson(const absl::Status& status, const std::string& param,
                                 const std::string& code) {
  const char* type = "server_error";
  switch (HttpStatus(status.code())) {
    case 400:
    case 404:
    case 409:
    case 413:
      type = "invalid_request_error";
      break;
    case 401:
      type = "authentication_error";
      break;
    case 403:
      type = "permission_error";
      break;
    case 429:
      type = "rate_limit_error";
      break;
    default:
      break;
  }
  std::string error_code = code;
  if (error_code.empty()) {
    error_code = status.code() == absl::StatusCode::kUnauthenticated
                     ? "invalid_api_key"
                     : absl::AsciiStrToLower(absl::StatusCodeToString(status.code()));
  }
  json error = {{"message", std::string(status.message())},
                {"type", type},
                {"param", param.empty() ? json(nullptr) : json(param)},
                {"code", error_code}};
  return Dump(json{{"error", std::move(error)}});
}

absl::StatusOr<v1::AskMode> OpenAiApi::ModeOfModel(const std::string& model) const {
  if (model == options_.model_name) return v1::ASK_MODE_UNSPECIFIED;
  if (absl::StartsWith(model, options_.model_name + ":")) {
    const std::string_view mode = std::string_view(model).substr(options_.model_name.size() + 1);
    for (const ModeName& m : kModes) {
      if (mode == m.name && (!m.needs_adapter || options_.has_adapter)) return m.mode;
    }
  }
  return absl::NotFoundError(absl::StrCat("The model \"", model,
                                          "\" does not exist; GET /v1/models lists the models "
                                          "this daemon serves"));
}

void OpenAiApi::Register(httplib::Server& server) const {
  server.Get("/v1/models", [this](const httplib::Request& req, httplib::Response& res) {
    // Any valid token may list the models; the namespaces it may ask in are checked per question.
    json data = json::array();
    const int64_t created = absl::ToUnixSeconds(absl::Now());
    auto add = [&](const std::string& id) {
      data.push_back(
          {{"id", id}, {"object", "model"}, {"created", created}, {"owned_by", "knowd"}});
    };
    add(options_.model_name);
    for (const ModeName& m : kModes) {
      if (!m.needs_adapter || options_.has_adapter) add(options_.model_name + ":" + m.name);
    }
    if (absl::Status s = service_->CheckToken(AuthorizationOf(req)); !s.ok()) {
      SetError(res, s);
      return;
    }
    res.set_content(Dump(json{{"object", "list"}, {"data", std::move(data)}}), kJson);
  });

  auto complete = [this](bool chat) {
    return [this, chat](const httplib::Request& req, httplib::Response& res) {
      json body = json::parse(req.body, nullptr, /*allow_exceptions=*/false);
      if (body.is_discarded() || !body.is_object()) {
        SetError(res, absl::InvalidArgumentError(
                          "The request body is not a JSON object (or not valid JSON)"));
        return;
      }
      Parsed parsed;
      std::optional<FieldError> error;
      auto model = body.find("model");
      if (model == body.end() || !model->is_string() || model->get<std::string>().empty()) {
        error = Invalid("model", "must name a model (GET /v1/models lists them)");
      }
      std::string question;
      if (!error) error = ReadQuestion(body, chat, &question);
      if (!error) {
        if (auto it = body.find("stream"); it != body.end() && !it->is_null()) {
          if (!it->is_boolean()) {
            error = Invalid("stream", "must be a boolean");
          } else {
            parsed.stream = it->get<bool>();
          }
        }
      }
      if (!error) {
        if (auto it = body.find("stream_options"); it != body.end() && it->is_object()) {
          parsed.include_usage = it->value("include_usage", false) == true;
        }
      }
      int64_t max_tokens = 0;
      if (!error) error = ReadInt(body, "max_tokens", "max_tokens", 0, INT32_MAX, &max_tokens);
      if (!error && chat) {
        error = ReadInt(body, "max_completion_tokens", "max_completion_tokens", 0, INT32_MAX,
                        &max_tokens);
      }
      double temperature = 0;
      double top_p = 0;
      int64_t seed = 0;
      int64_t n = 1;
      if (!error) error = ReadNumber(body, "temperature", &temperature);
      if (!error) error = ReadNumber(body, "top_p", &top_p);
      if (!error) error = ReadInt(body, "seed", "seed", INT64_MIN, INT64_MAX, &seed);
      if (!error) error = ReadInt(body, "n", "n", 1, 1, &n);
      // The knowd object.
      std::string name_space;
      std::string mode_name;
      std::string retrieval;
      std::string session_id;
      int64_t top_k = 0;
      int64_t rag_passages = 0;
      if (!error) {
        if (auto it = body.find("knowd"); it != body.end() && !it->is_null()) {
          if (!it->is_object()) {
            error = Invalid("knowd", "must be an object");
          } else {
            const json& k = *it;
            error = ReadString(k, "namespace", "knowd.namespace", &name_space);
            if (!error) error = ReadString(k, "mode", "knowd.mode", &mode_name);
            if (!error) error = ReadString(k, "retrieval", "knowd.retrieval", &retrieval);
            if (!error) error = ReadString(k, "session_id", "knowd.session_id", &session_id);
            if (!error) error = ReadInt(k, "top_k", "knowd.top_k", 0, INT32_MAX, &top_k);
            if (!error) {
              error = ReadInt(k, "rag_passages", "knowd.rag_passages", 0, INT32_MAX, &rag_passages);
            }
          }
        }
      }
      if (error) {
        SetError(res, error->status, error->param);
        return;
      }
      parsed.model = model->get<std::string>();
      absl::StatusOr<v1::AskMode> mode = ModeOfModel(parsed.model);
      if (!mode.ok()) {
        SetError(res, mode.status(), "model", "model_not_found");
        return;
      }
      if (!mode_name.empty()) {
        const ModeName* found = nullptr;
        for (const ModeName& m : kModes) {
          if (mode_name == m.name) found = &m;
        }
        if (found == nullptr) {
          SetError(res,
                   absl::InvalidArgumentError(absl::StrCat(
                       "knowd.mode: \"", mode_name, "\" is not closed-book, rag, mac or mac+rag")),
                   "knowd.mode");
          return;
        }
        if (*mode != v1::ASK_MODE_UNSPECIFIED && *mode != found->mode) {
          SetError(
              res,
              absl::InvalidArgumentError(absl::StrCat(
                  "knowd.mode \"", mode_name, "\" contradicts the model \"", parsed.model, "\"")),
              "knowd.mode");
          return;
        }
        *mode = found->mode;
      }
      v1::Retrieval retrieval_value = v1::RETRIEVAL_UNSPECIFIED;
      if (retrieval == "lexical") {
        retrieval_value = v1::RETRIEVAL_LEXICAL;
      } else if (retrieval == "dense") {
        retrieval_value = v1::RETRIEVAL_DENSE;
      } else if (retrieval == "hybrid") {
        retrieval_value = v1::RETRIEVAL_HYBRID;
      } else if (!retrieval.empty()) {
        SetError(res,
                 absl::InvalidArgumentError("knowd.retrieval must be lexical, dense or hybrid"),
                 "knowd.retrieval");
        return;
      }
      v1::AskRequest& ask = parsed.ask;
      ask.set_namespace_(name_space);
      ask.set_question(question);
      ask.set_mode(*mode);
      ask.set_retrieval(retrieval_value);
      ask.set_top_k(static_cast<int32_t>(top_k));
      ask.set_rag_passages(static_cast<int32_t>(rag_passages));
      ask.set_max_tokens(static_cast<int32_t>(max_tokens));
      ask.set_temperature(static_cast<float>(temperature));
      ask.set_top_p(static_cast<float>(top_p));
      ask.set_seed(static_cast<uint64_t>(seed));
      ask.set_stream(parsed.stream);
      ask.set_session_id(session_id);

      absl::StatusOr<std::unique_ptr<KnowledgeServiceImpl::AskCall>> started = service_->StartAsk(
          chat ? "ChatCompletions" : "Completions",
          absl::StrCat("http:", req.remote_addr, ":", req.remote_port), AuthorizationOf(req), ask);
      if (!started.ok()) {
        SetError(res, started.status());
        return;
      }
      std::shared_ptr<KnowledgeServiceImpl::AskCall> call = std::move(*started);
      const std::string id = NewId(chat ? "chatcmpl" : "cmpl");
      const int64_t created = absl::ToUnixSeconds(absl::Now());
      const std::string resolved_namespace = name_space.empty() ? "default" : name_space;

      if (!parsed.stream) {
        std::optional<v1::AskFinal> final;
        absl::Status s = call->Stream([] { return false; },
                                      [&](v1::AskChunk&& chunk) {
                                        if (chunk.has_final()) {
                                          final = std::move(*chunk.mutable_final());
                                        }
                                        return true;
                                      });
        if (!s.ok()) {
          SetError(res, s);
          return;
        }
        json choice = {
            {"index", 0}, {"logprobs", nullptr}, {"finish_reason", FinishReason(*final)}};
        if (chat) {
          choice["message"] = {{"role", "assistant"}, {"content", final->answer()}};
        } else {
          choice["text"] = final->answer();
        }
        json out = {{"id", id},
                    {"object", chat ? "chat.completion" : "text_completion"},
                    {"created", created},
                    {"model", parsed.model},
                    {"choices", json::array({std::move(choice)})},
                    {"usage", Usage(*final)},
                    {"knowd", Extras(*final, resolved_namespace)}};
        res.set_content(Dump(out), kJson);
        return;
      }

      // Server-sent events: the answer's pieces as they are generated.
      res.set_header("Cache-Control", "no-cache");
      const std::string model_name = parsed.model;
      const bool include_usage = parsed.include_usage;
      res.set_chunked_content_provider("text/event-stream", [call, chat, id, created, model_name,
                                                             include_usage, resolved_namespace](
                                                                size_t, httplib::DataSink& sink) {
        auto chunk_json = [&](json choice) {
          return json{{"id", id},
                      {"object", chat ? "chat.completion.chunk" : "text_completion"},
                      {"created", created},
                      {"model", model_name},
                      {"choices", json::array({std::move(choice)})}};
        };
        auto send = [&](const json& event) {
          const std::string line = absl::StrCat("data: ", Dump(event), "\n\n");
          return sink.write(line.data(), line.size());
        };
        bool ok = true;
        if (chat) {
          ok = send(chunk_json({{"index", 0},
                                {"delta", {{"role", "assistant"}, {"content", ""}}},
                                {"logprobs", nullptr},
                                {"finish_reason", nullptr}}));
        }
        std::optional<v1::AskFinal> final;
        absl::Status s = ok ? call->Stream([&] { return !sink.is_writable(); },
                                           [&](v1::AskChunk&& chunk) {
                                             if (chunk.has_final()) {
                                               final = std::move(*chunk.mutable_final());
                                               return true;
                                             }
                                             json choice = {{"index", 0},
                                                            {"logprobs", nullptr},
                                                            {"finish_reason", nullptr}};
                                             if (chat) {
                                               choice["delta"] = {{"content", chunk.text()}};
                                             } else {
                                               choice["text"] = chunk.text();
                                             }
                                             return send(chunk_json(std::move(choice)));
                                           })
                            : absl::CancelledError("the client went away");
        if (!s.ok()) {
          // The status line is sent: the error is an event, as OpenAI's streams carry them.
          if (!absl::IsCancelled(s)) {
            const std::string line = absl::StrCat("data: ", ErrorJson(s), "\n\n");
            sink.write(line.data(), line.size());
          }
          sink.done();
          return true;
        }
        json last = {{"index", 0}, {"logprobs", nullptr}, {"finish_reason", FinishReason(*final)}};
        if (chat) {
          last["delta"] = json::object();
        } else {
          last["text"] = "";
        }
        json event = chunk_json(std::move(last));
        event["knowd"] = Extras(*final, resolved_namespace);
        ok = send(event);
        if (ok && include_usage) {
          json usage = chunk_json(json());
          usage["choices"] = json::array();
          usage["usage"] = Usage(*final);
          ok = send(usage);
        }
        if (ok) {
          static constexpr std::string_view kDone = "data: [DONE]\n\n";
          sink.write(kDone.data(), kDone.size());
        }
        sink.done();
        return true;
      });
    };
  };
  server.Post("/v1/chat/completions", complete(true));
  server.Post("/v1/completions", complete(false));
}

std::string OpenAiApi::RefusalJson(const httplib::Request& req, int http_status) {
  if (http_status == 413) {
    return ErrorJson(
        absl::InvalidArgumentError("The request body is larger than the daemon accepts "
                                   "(--max-message-bytes)"),
        "", "request_too_large");
  }
  return ErrorJson(absl::NotFoundError(absl::StrCat("No endpoint ", req.method, " ", req.path)), "",
                   "unknown_url");
}

}  // namespace knowd
