#include "client/client.h"

#include <chrono>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "google/protobuf/stubs/common.h"
#include "grpcpp/grpcpp.h"

namespace knowd::client {

absl::Status FromGrpcStatus(const grpc::Status& status) {
  // absl::StatusCode and grpc::StatusCode share their values (both follow google.rpc.Code).
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()), status.error_message());
}

namespace {

// The protobuf runtime refuses to send a string field that is not UTF-8 and breaks the call with
// a vague error; checking first names the field instead.
absl::Status CheckUtf8(std::string_view what, const std::string& text) {
  if (google::protobuf::internal::IsStructurallyValidUTF8(text.data(),
                                                          static_cast<int>(text.size()))) {
    return absl::OkStatus();
  }
  return absl::InvalidArgumentError(absl::StrCat(std::string(what), " is not valid UTF-8"));
}

}  // namespace

std::string AskModeName(v1::AskMode mode) {
  switch (mode) {
    case v1::ASK_MODE_CLOSED_BOOK:
      return "closed-book";
    case v1::ASK_MODE_MAC:
      return "mac";
    case v1::ASK_MODE_RAG:
      return "rag";
    case v1::ASK_MODE_MAC_RAG:
      return "mac+rag";
    default:
      return "";
  }
}

absl::StatusOr<v1::AskMode> ParseAskMode(std::string_view name) {
  for (v1::AskMode mode :
       {v1::ASK_MODE_CLOSED_BOOK, v1::ASK_MODE_MAC, v1::ASK_MODE_RAG, v1::ASK_MODE_MAC_RAG}) {
    if (name == AskModeName(mode)) return mode;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown mode \"", std::string(name), "\" (closed-book, mac, rag or mac+rag)"));
}

absl::StatusOr<v1::Retrieval> ParseRetrieval(std::string_view name) {
  if (name.empty()) return v1::RETRIEVAL_UNSPECIFIED;
  if (name == "dense") return v1::RETRIEVAL_DENSE;
  if (name == "lexical") return v1::RETRIEVAL_LEXICAL;
  if (name == "hybrid") return v1::RETRIEVAL_HYBRID;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown retrieval \"", std::string(name), "\" (dense, lexical or hybrid)"));
}

absl::StatusOr<std::unique_ptr<Client>> Client::Connect(const ClientOptions& options) {
  if (options.target.empty()) return absl::InvalidArgumentError("no server address given");
  if (options.tls_client_cert_pem.empty() != options.tls_client_key_pem.empty()) {
    return absl::InvalidArgumentError(
        "a TLS client certificate needs its key, and the key its "
        "certificate");
  }
  const bool tls =
      options.tls || !options.tls_root_ca_pem.empty() || !options.tls_client_cert_pem.empty();
  std::shared_ptr<grpc::ChannelCredentials> credentials;
  if (tls) {
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = options.tls_root_ca_pem;
    ssl.pem_cert_chain = options.tls_client_cert_pem;
    ssl.pem_private_key = options.tls_client_key_pem;
    credentials = grpc::SslCredentials(ssl);
  } else {
    credentials = grpc::InsecureChannelCredentials();
  }
  grpc::ChannelArguments args;
  // Documents may be large; the daemon enforces its own limit with a clear error.
  args.SetMaxSendMessageSize(-1);
  args.SetMaxReceiveMessageSize(-1);
  if (tls && !options.tls_server_name.empty()) {
    args.SetSslTargetNameOverride(options.tls_server_name);
  }
  auto channel = grpc::CreateCustomChannel(options.target, credentials, args);
  return std::unique_ptr<Client>(new Client(options, v1::KnowledgeService::NewStub(channel)));
}

Client::Client(ClientOptions options, std::unique_ptr<v1::KnowledgeService::Stub> stub)
    : options_(std::move(options)), stub_(std::move(stub)) {}

std::unique_ptr<grpc::ClientContext> Client::NewContext(std::string_view name_space) const {
  auto context = std::make_unique<grpc::ClientContext>();
  if (!options_.token.empty()) {
    context->AddMetadata("authorization", absl::StrCat("Bearer ", options_.token));
  }
  // The namespace for a cluster's router (proto/knowd/v1/knowd.proto, "Cluster routing").
  if (name_space.empty()) name_space = options_.name_space;
  context->AddMetadata("x-knowd-namespace",
                       name_space.empty() ? std::string("default") : std::string(name_space));
  if (options_.deadline > absl::ZeroDuration() && options_.deadline != absl::InfiniteDuration()) {
    context->set_deadline(std::chrono::system_clock::now() +
                          absl::ToChronoMilliseconds(options_.deadline));
  }
  return context;
}

template <typename Request>
void Client::FillNamespace(Request* request) const {
  if (request->namespace_().empty()) request->set_namespace_(options_.name_space);
}

absl::Status Client::Ingest(const DocumentProducer& next,
                            const std::function<void(const v1::IngestAck&)>& on_ack) {
  auto context = NewContext(options_.name_space);
  auto stream = stub_->Ingest(context.get());
  absl::Status producer_status;
  std::thread writer([&] {
    v1::IngestRequest request;
    while (true) {
      request.Clear();
      absl::StatusOr<bool> more = next(&request);
      if (!more.ok()) {
        producer_status = more.status();
        break;
      }
      if (!*more) break;
      absl::Status utf8 =
          CheckUtf8(absl::StrCat("document ", request.id(), ": its text"), request.text());
      if (utf8.ok()) utf8 = CheckUtf8("a document id", request.id());
      if (!utf8.ok()) {
        producer_status = utf8;
        break;
      }
      FillNamespace(&request);
      // False when the stream is broken; Finish below says why.
      if (!stream->Write(request)) return;
    }
    // Also after a producer error: the documents already sent are still stored and acked.
    stream->WritesDone();
  });
  v1::IngestAck ack;
  while (stream->Read(&ack)) {
    if (on_ack) on_ack(ack);
  }
  writer.join();
  const grpc::Status status = stream->Finish();
  if (!producer_status.ok()) return producer_status;
  return FromGrpcStatus(status);
}

absl::StatusOr<v1::AskFinal> Client::Ask(v1::AskRequest request,
                                         const std::function<void(std::string_view)>& on_text) {
  if (absl::Status s = CheckUtf8("the question", request.question()); !s.ok()) return s;
  FillNamespace(&request);
  auto context = NewContext(request.namespace_());
  auto reader = stub_->Ask(context.get(), request);
  v1::AskChunk chunk;
  v1::AskFinal final_message;
  bool have_final = false;
  while (reader->Read(&chunk)) {
    if (on_text && !chunk.text().empty()) on_text(chunk.text());
    if (chunk.has_final()) {
      final_message = std::move(*chunk.mutable_final());
      have_final = true;
    }
  }
  const grpc::Status status = reader->Finish();
  if (!status.ok()) return FromGrpcStatus(status);
  if (!have_final)
    return absl::InternalError("the daemon ended the answer without a final message");
  return final_message;
}

absl::StatusOr<v1::SearchResponse> Client::Search(v1::SearchRequest request) {
  if (absl::Status s = CheckUtf8("the query", request.query()); !s.ok()) return s;
  FillNamespace(&request);
  auto context = NewContext(request.namespace_());
  v1::SearchResponse response;
  const grpc::Status status = stub_->Search(context.get(), request, &response);
  if (!status.ok()) return FromGrpcStatus(status);
  return response;
}

absl::StatusOr<v1::Document> Client::Get(v1::GetRequest request) {
  FillNamespace(&request);
  auto context = NewContext(request.namespace_());
  v1::Document response;
  const grpc::Status status = stub_->Get(context.get(), request, &response);
  if (!status.ok()) return FromGrpcStatus(status);
  return response;
}

absl::StatusOr<v1::ForgetResponse> Client::Forget(v1::ForgetRequest request) {
  FillNamespace(&request);
  auto context = NewContext(request.namespace_());
  v1::ForgetResponse response;
  const grpc::Status status = stub_->Forget(context.get(), request, &response);
  if (!status.ok()) return FromGrpcStatus(status);
  return response;
}

absl::StatusOr<v1::StatsResponse> Client::Stats(v1::StatsRequest request) {
  FillNamespace(&request);
  auto context = NewContext(request.namespace_());
  v1::StatsResponse response;
  const grpc::Status status = stub_->Stats(context.get(), request, &response);
  if (!status.ok()) return FromGrpcStatus(status);
  return response;
}

absl::StatusOr<v1::Session> Client::CreateSession(std::vector<v1::SessionChunk> chunks) {
  return WriteSession(false, std::move(chunks));
}

absl::StatusOr<v1::Session> Client::AppendSession(std::vector<v1::SessionChunk> chunks) {
  return WriteSession(true, std::move(chunks));
}

absl::StatusOr<v1::Session> Client::WriteSession(bool append,
                                                 std::vector<v1::SessionChunk> chunks) {
  if (chunks.empty()) return absl::InvalidArgumentError("a session needs at least one chunk");
  for (size_t i = 0; i < chunks.size(); ++i) {
    if (absl::Status s = CheckUtf8(absl::StrCat("chunk ", i, ": its text"), chunks[i].text());
        !s.ok()) {
      return s;
    }
  }
  FillNamespace(&chunks.front());
  auto context = NewContext(chunks.front().namespace_());
  v1::Session session;
  std::unique_ptr<grpc::ClientWriter<v1::SessionChunk>> writer =
      append ? stub_->AppendSession(context.get(), &session)
             : stub_->CreateSession(context.get(), &session);
  for (const v1::SessionChunk& chunk : chunks) {
    if (!writer->Write(chunk)) break;  // Finish says why
  }
  writer->WritesDone();
  const grpc::Status status = writer->Finish();
  if (!status.ok()) return FromGrpcStatus(status);
  return session;
}

absl::Status Client::DeleteSession(v1::DeleteSessionRequest request) {
  FillNamespace(&request);
  auto context = NewContext(request.namespace_());
  v1::DeleteSessionResponse response;
  return FromGrpcStatus(stub_->DeleteSession(context.get(), request, &response));
}

absl::StatusOr<v1::ListSessionsResponse> Client::ListSessions(v1::ListSessionsRequest request) {
  FillNamespace(&request);
  auto context = NewContext(request.namespace_());
  v1::ListSessionsResponse response;
  const grpc::Status status = stub_->ListSessions(context.get(), request, &response);
  if (!status.ok()) return FromGrpcStatus(status);
  return response;
}

}  // namespace knowd::client
