#include "daemon/rest_api.h"

#include <charconv>
#include <cstdint>
#include <limits>
#include <optional>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "base/status_macros.h"
#include "daemon/http_server.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/reflection.h"
#include "grpcpp/grpcpp.h"
#include "httplib.h"
#include "nlohmann/json.hpp"

namespace knowd {
namespace {

using google::protobuf::Descriptor;
using google::protobuf::EnumDescriptor;
using google::protobuf::EnumValueDescriptor;
using google::protobuf::FieldDescriptor;
using google::protobuf::Message;
using google::protobuf::Reflection;
using json = nlohmann::json;
// Responses keep the proto's field order.
using ojson = nlohmann::ordered_json;

constexpr const char* kJson = "application/json";
constexpr const char* kNdjson = "application/x-ndjson";

// Text that may hold invalid UTF-8 (stored text should not) is written with U+FFFD, never refused.
std::string Dump(const ojson& j) { return j.dump(-1, ' ', false, ojson::error_handler_t::replace); }

absl::Status FieldError(const std::string& field, std::string_view message) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", std::string(message)));
}

// ---- JSON -> message ----------------------------------------------------------------------

// An integer field's value: a JSON integer, or a decimal string as proto3's JSON mapping writes
// 64-bit integers.
absl::Status ReadInteger(const json& v, const std::string& field, int64_t lo, uint64_t hi,
                         int64_t* signed_out, uint64_t* unsigned_out) {
  bool negative = false;
  uint64_t magnitude = 0;
  if (v.is_number_unsigned()) {
    magnitude = v.get<uint64_t>();
  } else if (v.is_number_integer()) {
    const int64_t s = v.get<int64_t>();
    negative = s < 0;
    magnitude = negative ? static_cast<uint64_t>(-(s + 1)) + 1 : static_cast<uint64_t>(s);
  } else if (v.is_string()) {
    std::string_view text = v.get_ref<const std::string&>();
    negative = !text.empty() && text.front() == '-';
    if (negative) text.remove_prefix(1);
    const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), magnitude);
    if (text.empty() || ec != std::errc() || end != text.data() + text.size()) {
      return FieldError(field, "must be an integer");
    }
  } else {
    return FieldError(field, "must be an integer");
  }
  const uint64_t lo_magnitude = lo < 0 ? static_cast<uint64_t>(-(lo + 1)) + 1 : 0;
  if ((negative && magnitude > lo_magnitude) || (!negative && magnitude > hi) ||
      (!negative && lo > 0 && magnitude < static_cast<uint64_t>(lo))) {
    return FieldError(field, absl::StrCat("must be ", lo, "..", hi));
  }
  if (signed_out != nullptr) {
    *signed_out =
        negative ? -static_cast<int64_t>(magnitude - 1) - 1 : static_cast<int64_t>(magnitude);
  }
  if (unsigned_out != nullptr) *unsigned_out = magnitude;
  return absl::OkStatus();
}

// The prefix every value of the enum shares ("ASK_MODE_"), up to its last underscore.
std::string EnumPrefix(const EnumDescriptor* e) {
  std::string prefix = e->value(0)->name();
  for (int i = 1; i < e->value_count(); ++i) {
    const std::string& name = e->value(i)->name();
    size_t n = 0;
    while (n < prefix.size() && n < name.size() && prefix[n] == name[n]) ++n;
    prefix.resize(n);
  }
  const size_t underscore = prefix.rfind('_');
  return underscore == std::string::npos ? "" : prefix.substr(0, underscore + 1);
}

absl::Status ReadEnum(const json& v, const EnumDescriptor* e, const std::string& field, int* out) {
  const EnumValueDescriptor* found = nullptr;
  if (v.is_number_integer()) {
    found = e->FindValueByNumber(v.get<int>());
  } else if (v.is_string()) {
    std::string name = absl::AsciiStrToUpper(v.get<std::string>());
    for (char& c : name) {
      if (c == '-' || c == '+') c = '_';
    }
    found = e->FindValueByName(name);
    if (found == nullptr) found = e->FindValueByName(EnumPrefix(e) + name);
  }
  if (found == nullptr) {
    std::string names;
    const std::string prefix = EnumPrefix(e);
    for (int i = 0; i < e->value_count(); ++i) {
      std::string name = absl::AsciiStrToLower(e->value(i)->name().substr(prefix.size()));
      absl::StrAppend(&names, i == 0 ? "" : ", ", name);
    }
    return FieldError(field, absl::StrCat("must be one of ", names, " (or ", e->name(),
                                          "'s full value names or numbers)"));
  }
  *out = found->number();
  return absl::OkStatus();
}

absl::Status ReadObject(const json& object, Message* message, const std::string& path);

// One value of `f` (an element when repeated) into `message`.
absl::Status ReadValue(const json& v, Message* message, const FieldDescriptor* f,
                       const std::string& field) {
  const Reflection* r = message->GetReflection();
  const bool repeated = f->is_repeated();
  int64_t s = 0;
  uint64_t u = 0;
  switch (f->cpp_type()) {
    case FieldDescriptor::CPPTYPE_INT32:
      KNOWD_RETURN_IF_ERROR(ReadInteger(v, field, std::numeric_limits<int32_t>::min(),
                                        std::numeric_limits<int32_t>::max(), &s, nullptr));
      repeated ? r->AddInt32(message, f, static_cast<int32_t>(s))
               : r->SetInt32(message, f, static_cast<int32_t>(s));
      break;
    case FieldDescriptor::CPPTYPE_INT64:
      KNOWD_RETURN_IF_ERROR(ReadInteger(v, field, std::numeric_limits<int64_t>::min(),
                                        std::numeric_limits<int64_t>::max(), &s, nullptr));
      repeated ? r->AddInt64(message, f, s) : r->SetInt64(message, f, s);
      break;
    case FieldDescriptor::CPPTYPE_UINT32:
      if (absl::Status st =
              ReadInteger(v, field, 0, std::numeric_limits<uint32_t>::max(), nullptr, &u);
          !st.ok())
        return st;
      repeated ? r->AddUInt32(message, f, static_cast<uint32_t>(u))
               : r->SetUInt32(message, f, static_cast<uint32_t>(u));
      break;
    case FieldDescriptor::CPPTYPE_UINT64:
      if (absl::Status st =
              ReadInteger(v, field, 0, std::numeric_limits<uint64_t>::max(), nullptr, &u);
          !st.ok())
        return st;
      repeated ? r->AddUInt64(message, f, u) : r->SetUInt64(message, f, u);
      break;
    case FieldDescriptor::CPPTYPE_DOUBLE:
    case FieldDescriptor::CPPTYPE_FLOAT: {
      if (!v.is_number()) return FieldError(field, "must be a number");
      const double d = v.get<double>();
      if (f->cpp_type() == FieldDescriptor::CPPTYPE_DOUBLE) {
        repeated ? r->AddDouble(message, f, d) : r->SetDouble(message, f, d);
      } else {
        repeated ? r->AddFloat(message, f, static_cast<float>(d))
                 : r->SetFloat(message, f, static_cast<float>(d));
      }
      break;
    }
    case FieldDescriptor::CPPTYPE_BOOL:
      if (!v.is_boolean()) return FieldError(field, "must be true or false");
      repeated ? r->AddBool(message, f, v.get<bool>()) : r->SetBool(message, f, v.get<bool>());
      break;
    case FieldDescriptor::CPPTYPE_STRING:
      // `bytes` fields too: plain text, never base64.
      if (!v.is_string()) return FieldError(field, "must be a string");
      repeated ? r->AddString(message, f, v.get<std::string>())
               : r->SetString(message, f, v.get<std::string>());
      break;
    case FieldDescriptor::CPPTYPE_ENUM: {
      int number = 0;
      KNOWD_RETURN_IF_ERROR(ReadEnum(v, f->enum_type(), field, &number));
      repeated ? r->AddEnumValue(message, f, number) : r->SetEnumValue(message, f, number);
      break;
    }
    case FieldDescriptor::CPPTYPE_MESSAGE:
      return ReadObject(v, repeated ? r->AddMessage(message, f) : r->MutableMessage(message, f),
                        field);
  }
  return absl::OkStatus();
}

absl::Status ReadObject(const json& object, Message* message, const std::string& path) {
  if (!object.is_object()) {
    return path.empty() ? absl::InvalidArgumentError("the body must be a JSON object")
                        : FieldError(path, "must be an object");
  }
  const Descriptor* d = message->GetDescriptor();
  for (const auto& [key, value] : object.items()) {
    const FieldDescriptor* f = nullptr;
    for (int i = 0; i < d->field_count() && f == nullptr; ++i) {
      if (d->field(i)->json_name() == key || d->field(i)->name() == key) f = d->field(i);
    }
    const std::string field = path.empty() ? key : absl::StrCat(path, ".", key);
    if (f == nullptr) {
      std::string names;
      for (int i = 0; i < d->field_count(); ++i) {
        absl::StrAppend(&names, i == 0 ? "" : ", ", d->field(i)->json_name());
      }
      return absl::InvalidArgumentError(
          absl::StrCat("unknown field \"", field, "\" (", d->name(), " has ", names, ")"));
    }
    if (value.is_null()) continue;
    if (f->is_map()) {
      if (!value.is_object()) return FieldError(field, "must be an object");
      const Reflection* r = message->GetReflection();
      for (const auto& [k, v] : value.items()) {
        Message* entry = r->AddMessage(message, f);
        entry->GetReflection()->SetString(entry, entry->GetDescriptor()->map_key(), k);
        KNOWD_RETURN_IF_ERROR(
            ReadValue(v, entry, entry->GetDescriptor()->map_value(), absl::StrCat(field, ".", k)));
      }
    } else if (f->is_repeated()) {
      if (!value.is_array()) return FieldError(field, "must be an array");
      for (size_t i = 0; i < value.size(); ++i) {
        KNOWD_RETURN_IF_ERROR(ReadValue(value[i], message, f, absl::StrCat(field, "[", i, "]")));
      }
    } else if (absl::Status s = ReadValue(value, message, f, field); !s.ok()) {
      return s;
    }
  }
  return absl::OkStatus();
}

// ---- message -> JSON ----------------------------------------------------------------------

// A float as the shortest decimal that reads back as the same float (0.85, not
// 0.8500000238418579).
ojson FloatJson(float f) {
  char buffer[32];
  const auto [end, ec] = std::to_chars(buffer, buffer + sizeof(buffer), f);
  if (ec != std::errc()) return static_cast<double>(f);
  return ojson::parse(std::string_view(buffer, end - buffer), nullptr, false);
}

ojson WriteObject(const Message& message);

ojson WriteValue(const Message& message, const FieldDescriptor* f, int index) {
  const Reflection* r = message.GetReflection();
  const bool repeated = index >= 0;
  switch (f->cpp_type()) {
    case FieldDescriptor::CPPTYPE_INT32:
      return repeated ? r->GetRepeatedInt32(message, f, index) : r->GetInt32(message, f);
    case FieldDescriptor::CPPTYPE_INT64:
      return repeated ? r->GetRepeatedInt64(message, f, index) : r->GetInt64(message, f);
    case FieldDescriptor::CPPTYPE_UINT32:
      return repeated ? r->GetRepeatedUInt32(message, f, index) : r->GetUInt32(message, f);
    case FieldDescriptor::CPPTYPE_UINT64:
      return repeated ? r->GetRepeatedUInt64(message, f, index) : r->GetUInt64(message, f);
    case FieldDescriptor::CPPTYPE_DOUBLE:
      return repeated ? r->GetRepeatedDouble(message, f, index) : r->GetDouble(message, f);
    case FieldDescriptor::CPPTYPE_FLOAT:
      return FloatJson(repeated ? r->GetRepeatedFloat(message, f, index) : r->GetFloat(message, f));
    case FieldDescriptor::CPPTYPE_BOOL:
      return repeated ? r->GetRepeatedBool(message, f, index) : r->GetBool(message, f);
    case FieldDescriptor::CPPTYPE_STRING:
      return repeated ? r->GetRepeatedString(message, f, index) : r->GetString(message, f);
    case FieldDescriptor::CPPTYPE_ENUM: {
      const EnumValueDescriptor* e =
          repeated ? r->GetRepeatedEnum(message, f, index) : r->GetEnum(message, f);
      return e->name();
    }
    case FieldDescriptor::CPPTYPE_MESSAGE:
      return WriteObject(repeated ? r->GetRepeatedMessage(message, f, index)
                                  : r->GetMessage(message, f));
  }
  return nullptr;
}

ojson WriteObject(const Message& message) {
  ojson out = ojson::object();
  const Descriptor* d = message.GetDescriptor();
  const Reflection* r = message.GetReflection();
  for (int i = 0; i < d->field_count(); ++i) {
    const FieldDescriptor* f = d->field(i);
    if (f->is_map()) {
      ojson map = ojson::object();
      for (int j = 0; j < r->FieldSize(message, f); ++j) {
        const Message& entry = r->GetRepeatedMessage(message, f, j);
        const Reflection* er = entry.GetReflection();
        map[er->GetString(entry, entry.GetDescriptor()->map_key())] =
            WriteValue(entry, entry.GetDescriptor()->map_value(), -1);
      }
      out[f->json_name()] = std::move(map);
    } else if (f->is_repeated()) {
      ojson array = ojson::array();
      for (int j = 0; j < r->FieldSize(message, f); ++j) array.push_back(WriteValue(message, f, j));
      out[f->json_name()] = std::move(array);
    } else if (f->has_presence()) {
      // Message fields and proto3 `optional` ones: only when set (AskRequest.stream unset means
      // true, not the false its getter returns).
      if (r->HasField(message, f)) out[f->json_name()] = WriteValue(message, f, -1);
    } else {
      out[f->json_name()] = WriteValue(message, f, -1);
    }
  }
  return out;
}

// ---- calls --------------------------------------------------------------------------------

// {"code": <HTTP status>, "message", "status": "<gRPC code name>"}; `http_status` 0: the code's.
ojson ErrorObject(const absl::Status& status, int http_status) {
  const absl::StatusCode code =
      status.ok() ? absl::StatusCode::kUnknown : status.code();  // an error is never OK
  return ojson{{"code", http_status != 0 ? http_status : HttpStatusOf(code)},
               {"message", std::string(status.message())},
               {"status", absl::StatusCodeToString(code)}};
}

absl::Status FromGrpc(const grpc::Status& status) {
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()), status.error_message());
}

void SetError(httplib::Response& res, const absl::Status& status) {
  res.status = HttpStatusOf(status.code());
  res.set_content(RestApi::ErrorJson(status), kJson);
}

void SetMessage(httplib::Response& res, const Message& message) {
  res.set_content(MessageToJson(message), kJson);
}

// The call's metadata from the request: its Authorization header, passed on as gRPC's
// "authorization" (which only carries printable ASCII: anything else is refused here, as the
// token it cannot be).
absl::Status Authorize(const httplib::Request& req, grpc::ClientContext* context) {
  if (!req.has_header("Authorization")) return absl::OkStatus();
  const std::string& value = req.get_header_value("Authorization");
  for (char c : value) {
    if (c < 0x20 || c > 0x7e) {
      return absl::UnauthenticatedError(
          "the Authorization header holds characters other than printable ASCII: send "
          "\"Bearer <token>\"");
    }
  }
  context->AddMetadata("authorization", value);
  return absl::OkStatus();
}

// The namespace of the path, checked against one the body may also name.
absl::Status PathNamespace(const httplib::Request& req, const std::string& in_body,
                           std::string* name_space) {
  *name_space = req.matches[1].str();
  if (!in_body.empty() && in_body != *name_space) {
    return absl::InvalidArgumentError(absl::StrCat("namespace: the body names \"", in_body,
                                                   "\" but the path \"", *name_space, "\""));
  }
  return absl::OkStatus();
}

// A request body as `message` (an empty body is {}), its namespace the path's.
template <typename Request>
absl::Status ParseRequest(const httplib::Request& req, Request* request) {
  if (!req.body.empty()) {
    KNOWD_RETURN_IF_ERROR(JsonToMessage(req.body, request));
  }
  std::string name_space;
  KNOWD_RETURN_IF_ERROR(PathNamespace(req, request->namespace_(), &name_space));
  request->set_namespace_(name_space);
  return absl::OkStatus();
}

bool IsNdjson(const httplib::Request& req) {
  std::string type = absl::AsciiStrToLower(req.get_header_value("Content-Type"));
  type = std::string(absl::StripAsciiWhitespace(type.substr(0, type.find(';'))));
  return type == "application/x-ndjson" || type == "application/ndjson" ||
         type == "application/jsonl" || type == "application/x-jsonlines" ||
         type == "application/jsonlines";
}

// One document of an ingest request and what became of it.
struct IngestItem {
  int64_t line = 0;  // 1-based line of the body
  v1::IngestRequest request;
  absl::Status status;  // not OK: refused before it was sent (or never acknowledged)
  std::optional<v1::IngestAck> ack;
};

ojson ItemJson(const IngestItem& item, int64_t position, bool with_line) {
  ojson out = {{"id", item.ack ? item.ack->id() : item.request.id()}, {"position", position}};
  if (with_line) out["line"] = item.line;
  absl::Status status = item.status;
  if (status.ok() && item.ack && item.ack->error_code() != 0) {
    status = absl::Status(static_cast<absl::StatusCode>(item.ack->error_code()),
                          item.ack->error_message());
  }
  if (!status.ok()) {
    out["error"] = ErrorObject(status, 0);
  } else {
    out["passages"] = item.ack->passages();
    out["replaced"] = item.ack->replaced();
    // A cluster replica's acks carry the write's sequence in the cluster log.
    if (item.ack->log_sequence() != 0) out["logSequence"] = item.ack->log_sequence();
  }
  return out;
}

}  // namespace

absl::Status JsonToMessage(std::string_view text, Message* message) {
  json body = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (body.is_discarded()) {
    return absl::InvalidArgumentError(
        "the body is not valid JSON (text must be UTF-8, in a JSON string)");
  }
  return ReadObject(body, message, "");
}

std::string MessageToJson(const Message& message) { return Dump(WriteObject(message)); }

RestApi::RestApi(std::shared_ptr<grpc::Channel> channel)
    : stub_(v1::KnowledgeService::NewStub(std::move(channel))) {}

bool RestApi::Serves(std::string_view path) {
  return path.substr(0, 15) == "/v1/namespaces/" || path == "/v1/stats";
}

std::string RestApi::ErrorJson(const absl::Status& status, int http_status) {
  return Dump(ojson{{"error", ErrorObject(status, http_status)}});
}

void RestApi::Register(httplib::Server& server) const {
  v1::KnowledgeService::Stub* stub = stub_.get();
  const std::string ns = "/v1/namespaces/([^/]+)";

  // Ingest: one document (JSON) or many (NDJSON), through one Ingest stream.
  server.Post(ns + "/documents", [stub](const httplib::Request& req, httplib::Response& res) {
    const bool many = IsNdjson(req);
    std::vector<IngestItem> items;
    if (many) {
      int64_t line_number = 0;
      for (absl::string_view line : absl::StrSplit(req.body, '\n')) {
        ++line_number;
        if (absl::StripAsciiWhitespace(line).empty()) continue;
        IngestItem& item = items.emplace_back();
        item.line = line_number;
        const std::string_view text(line.data(), line.size());
        item.status = JsonToMessage(text, &item.request);
        if (!item.status.ok()) {
          // The result line names the refused document when its id can be read at all.
          item.request.Clear();
          const json parsed = json::parse(text, nullptr, /*allow_exceptions=*/false);
          if (parsed.is_object() && parsed.contains("id") && parsed["id"].is_string()) {
            item.request.set_id(parsed["id"].get<std::string>());
          }
        }
      }
      if (items.empty()) {
        SetError(res, absl::InvalidArgumentError(
                          "the body holds no document: one JSON object per line, e.g. "
                          "{\"id\": \"doc-1\", \"text\": \"...\"}"));
        return;
      }
    } else {
      IngestItem& item = items.emplace_back();
      item.line = 1;
      item.status = JsonToMessage(req.body, &item.request);
      if (!item.status.ok()) {
        if (absl::StrContains(item.status.message(), "not valid JSON") &&
            req.body.find('\n') != std::string::npos) {
          item.status = absl::InvalidArgumentError(absl::StrCat(
              item.status.message(),
              "; several documents go one per line with Content-Type: application/x-ndjson"));
        }
        SetError(res, item.status);
        return;
      }
    }
    for (IngestItem& item : items) {
      std::string name_space;
      if (item.status.ok()) {
        item.status = PathNamespace(req, item.request.namespace_(), &name_space);
      }
      if (item.status.ok()) item.request.set_namespace_(name_space);
    }

    grpc::ClientContext context;
    if (absl::Status s = Authorize(req, &context); !s.ok()) {
      SetError(res, s);
      return;
    }
    std::unique_ptr<grpc::ClientReaderWriter<v1::IngestRequest, v1::IngestAck>> stream =
        stub->Ingest(&context);
    // Acks are read while documents are written: the daemon acknowledges as it stores, and
    // holds only a bounded number of documents per stream.
    std::vector<size_t> sent;  // stream position -> item
    std::vector<v1::IngestAck> acks;
    std::thread reader([&] {
      v1::IngestAck ack;
      while (stream->Read(&ack)) acks.push_back(ack);
    });
    for (size_t i = 0; i < items.size(); ++i) {
      if (!items[i].status.ok()) continue;
      if (!stream->Write(items[i].request)) break;
      sent.push_back(i);
    }
    stream->WritesDone();
    reader.join();
    const absl::Status finished = FromGrpc(stream->Finish());
    for (const v1::IngestAck& ack : acks) {
      if (ack.position() >= 0 && static_cast<size_t>(ack.position()) < sent.size()) {
        items[sent[ack.position()]].ack = ack;
      }
    }
    if (acks.empty() && !finished.ok()) {
      // Refused as a whole (no or an unknown token, the daemon draining): nothing was stored.
      SetError(res, finished);
      return;
    }
    for (size_t i = 0; i < items.size(); ++i) {
      if (items[i].status.ok() && !items[i].ack) {
        items[i].status =
            !finished.ok() ? finished : absl::UnavailableError("not acknowledged: send it again");
      }
    }
    if (!many) {
      const ojson out = ItemJson(items[0], 0, false);
      if (out.contains("error")) {
        res.status = out["error"]["code"].get<int>();
        res.set_content(Dump(ojson{{"error", out["error"]}}), kJson);
      } else {
        res.set_content(Dump(out), kJson);
      }
      return;
    }
    std::string body;
    for (size_t i = 0; i < items.size(); ++i) {
      absl::StrAppend(&body, Dump(ItemJson(items[i], static_cast<int64_t>(i), true)), "\n");
    }
    res.set_content(body, kNdjson);
  });

  server.Get(ns + "/documents/(.+)", [stub](const httplib::Request& req, httplib::Response& res) {
    v1::GetRequest request;
    request.set_namespace_(req.matches[1].str());
    request.set_id(req.matches[2].str());
    grpc::ClientContext context;
    v1::Document document;
    absl::Status s = Authorize(req, &context);
    if (s.ok()) s = FromGrpc(stub->Get(&context, request, &document));
    s.ok() ? SetMessage(res, document) : SetError(res, s);
  });

  // Forget one document: 404 when it is not stored (gRPC's Forget reports that, not an error).
  server.Delete(
      ns + "/documents/(.+)", [stub](const httplib::Request& req, httplib::Response& res) {
        v1::ForgetRequest request;
        request.set_namespace_(req.matches[1].str());
        request.add_ids(req.matches[2].str());
        grpc::ClientContext context;
        v1::ForgetResponse response;
        absl::Status s = Authorize(req, &context);
        if (s.ok()) s = FromGrpc(stub->Forget(&context, request, &response));
        if (s.ok() && response.forgotten_size() == 0) {
          s = absl::NotFoundError(absl::StrCat("no document \"", req.matches[2].str(),
                                               "\" in namespace \"", req.matches[1].str(), "\""));
        }
        s.ok() ? SetMessage(res, response) : SetError(res, s);
      });

  server.Post(ns + "/forget", [stub](const httplib::Request& req, httplib::Response& res) {
    v1::ForgetRequest request;
    grpc::ClientContext context;
    v1::ForgetResponse response;
    absl::Status s = ParseRequest(req, &request);
    if (s.ok()) s = Authorize(req, &context);
    if (s.ok()) s = FromGrpc(stub->Forget(&context, request, &response));
    s.ok() ? SetMessage(res, response) : SetError(res, s);
  });

  server.Post(ns + "/search", [stub](const httplib::Request& req, httplib::Response& res) {
    v1::SearchRequest request;
    grpc::ClientContext context;
    v1::SearchResponse response;
    absl::Status s = ParseRequest(req, &request);
    if (s.ok()) s = Authorize(req, &context);
    if (s.ok()) s = FromGrpc(stub->Search(&context, request, &response));
    s.ok() ? SetMessage(res, response) : SetError(res, s);
  });

  auto stats = [stub](const httplib::Request& req, httplib::Response& res) {
    v1::StatsRequest request;
    request.set_namespace_(req.matches.size() > 1 ? req.matches[1].str()
                                                  : req.get_param_value("namespace"));
    grpc::ClientContext context;
    v1::StatsResponse response;
    absl::Status s = Authorize(req, &context);
    if (s.ok()) s = FromGrpc(stub->Stats(&context, request, &response));
    s.ok() ? SetMessage(res, response) : SetError(res, s);
  };
  server.Get("/v1/stats", stats);
  server.Get(ns + "/stats", stats);

  // Sessions: create from one chunk (JSON: {"text", "ttlSeconds", "label"}) or many (NDJSON, one
  // SessionChunk per line, absorbed in order), through one CreateSession (AppendSession) stream.
  auto session_stream = [stub](const httplib::Request& req, httplib::Response& res, bool append) {
    std::vector<v1::SessionChunk> chunks;
    absl::Status s;
    if (IsNdjson(req)) {
      int64_t line_number = 0;
      for (absl::string_view line : absl::StrSplit(req.body, '\n')) {
        ++line_number;
        if (absl::StripAsciiWhitespace(line).empty()) continue;
        s = JsonToMessage(std::string_view(line.data(), line.size()), &chunks.emplace_back());
        if (!s.ok()) {
          s = absl::InvalidArgumentError(absl::StrCat("line ", line_number, ": ", s.message()));
          break;
        }
      }
      if (s.ok() && chunks.empty()) {
        s = absl::InvalidArgumentError(
            "the body holds no chunk: one JSON object per line, e.g. {\"text\": \"...\"}");
      }
    } else {
      s = JsonToMessage(req.body.empty() ? std::string_view("{}") : req.body,
                        &chunks.emplace_back());
    }
    std::string name_space;
    for (size_t i = 0; s.ok() && i < chunks.size(); ++i) {
      s = PathNamespace(req, chunks[i].namespace_(), &name_space);
    }
    if (s.ok()) {
      chunks.front().set_namespace_(name_space);
      if (append) chunks.front().set_session_id(req.matches[2].str());
    }
    grpc::ClientContext context;
    if (s.ok()) s = Authorize(req, &context);
    if (!s.ok()) {
      SetError(res, s);
      return;
    }
    v1::Session session;
    std::unique_ptr<grpc::ClientWriter<v1::SessionChunk>> writer =
        append ? stub->AppendSession(&context, &session) : stub->CreateSession(&context, &session);
    for (const v1::SessionChunk& chunk : chunks) {
      if (!writer->Write(chunk)) break;
    }
    writer->WritesDone();
    s = FromGrpc(writer->Finish());
    s.ok() ? SetMessage(res, session) : SetError(res, s);
  };
  server.Post(ns + "/sessions",
              [session_stream](const httplib::Request& req, httplib::Response& res) {
                session_stream(req, res, false);
              });
  server.Post(ns + "/sessions/([^/]+)/append",
              [session_stream](const httplib::Request& req, httplib::Response& res) {
                session_stream(req, res, true);
              });
  server.Get(ns + "/sessions", [stub](const httplib::Request& req, httplib::Response& res) {
    v1::ListSessionsRequest request;
    request.set_namespace_(req.matches[1].str());
    grpc::ClientContext context;
    v1::ListSessionsResponse response;
    absl::Status s = Authorize(req, &context);
    if (s.ok()) s = FromGrpc(stub->ListSessions(&context, request, &response));
    s.ok() ? SetMessage(res, response) : SetError(res, s);
  });
  server.Delete(ns + "/sessions/([^/]+)",
                [stub](const httplib::Request& req, httplib::Response& res) {
                  v1::DeleteSessionRequest request;
                  request.set_namespace_(req.matches[1].str());
                  request.set_session_id(req.matches[2].str());
                  grpc::ClientContext context;
                  v1::DeleteSessionResponse response;
                  absl::Status s = Authorize(req, &context);
                  if (s.ok()) s = FromGrpc(stub->DeleteSession(&context, request, &response));
                  s.ok() ? SetMessage(res, response) : SetError(res, s);
                });

  // Ask: the final answer as one object, or with "stream": true the AskChunks as NDJSON lines
  // while they are generated. An error before the first chunk is the response's status; one
  // after it is a last {"error": ...} line.
  server.Post(ns + "/ask", [stub](const httplib::Request& req, httplib::Response& res) {
    v1::AskRequest request;
    absl::Status s = ParseRequest(req, &request);
    // REST answers in one piece unless asked to stream (gRPC's default is to stream).
    const bool stream = request.has_stream() && request.stream();
    request.set_stream(stream);
    struct Call {
      grpc::ClientContext context;
      std::unique_ptr<grpc::ClientReader<v1::AskChunk>> reader;
    };
    auto call = std::make_shared<Call>();
    if (s.ok()) s = Authorize(req, &call->context);
    if (!s.ok()) {
      SetError(res, s);
      return;
    }
    call->reader = stub->Ask(&call->context, request);
    v1::AskChunk first;
    if (!call->reader->Read(&first)) {
      SetError(res, FromGrpc(call->reader->Finish()));
      return;
    }
    if (!stream) {
      v1::AskChunk chunk = std::move(first);
      while (!chunk.has_final() && call->reader->Read(&chunk)) {
      }
      v1::AskChunk rest;
      while (call->reader->Read(&rest)) {
      }
      s = FromGrpc(call->reader->Finish());
      if (s.ok() && !chunk.has_final())
        s = absl::InternalError("the answer ended without its final message");
      s.ok() ? SetMessage(res, chunk.final()) : SetError(res, s);
      return;
    }
    res.set_header("Cache-Control", "no-cache");
    res.set_chunked_content_provider(
        kNdjson, [call, first = std::move(first)](size_t, httplib::DataSink& sink) mutable {
          v1::AskChunk chunk = std::move(first);
          bool ok = true;
          do {
            const std::string line = absl::StrCat(MessageToJson(chunk), "\n");
            if (!sink.write(line.data(), line.size())) {
              ok = false;
              call->context.TryCancel();
              break;
            }
          } while (call->reader->Read(&chunk));
          if (!ok) {
            while (call->reader->Read(&chunk)) {
            }
          }
          const absl::Status s = FromGrpc(call->reader->Finish());
          if (ok && !s.ok()) {
            const std::string line = absl::StrCat(RestApi::ErrorJson(s), "\n");
            sink.write(line.data(), line.size());
          }
          sink.done();
          return true;
        });
  });
}

}  // namespace knowd
