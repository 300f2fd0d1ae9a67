// The client library (client/client.h) against an in-process KnowledgeService that records what
// it receives: metadata, namespaces, stream order and status codes.
#include "client/client.h"

#include <map>
#include <mutex>

#include "client/document_source.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"

namespace knowd::client {
namespace {

// Stores documents in memory; answers every question with the words "about <question>" in two
// chunks. Tokens: none configured, except that "bad" is refused.
class FakeService final : public v1::KnowledgeService::Service {
 public:
  grpc::Status Ingest(grpc::ServerContext* context,
                      grpc::ServerReaderWriter<v1::IngestAck, v1::IngestRequest>* stream) override {
    if (grpc::Status s = Check(context); !s.ok()) return s;
    v1::IngestRequest request;
    while (stream->Read(&request)) {
      v1::IngestAck ack;
      ack.set_id(request.id());
      if (request.text().empty()) {
        ack.set_error_code(grpc::StatusCode::INVALID_ARGUMENT);
        ack.set_error_message("text is empty");
      } else {
        std::lock_guard<std::mutex> lock(mu_);
        ack.set_replaced(docs_.count(request.id()) > 0);
        docs_[request.id()] = request;
        ack.set_passages(1);
      }
      stream->Write(ack);
    }
    return grpc::Status::OK;
  }

  grpc::Status Ask(grpc::ServerContext* context, const v1::AskRequest* request,
                   grpc::ServerWriter<v1::AskChunk>* writer) override {
    if (grpc::Status s = Check(context); !s.ok()) return s;
    if (request->question().empty()) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "question is empty");
    }
    v1::AskChunk chunk;
    chunk.set_text("about ");
    writer->Write(chunk);
    chunk.set_text(request->question());
    writer->Write(chunk);
    chunk.Clear();
    chunk.mutable_final()->set_answer("about " + request->question());
    chunk.mutable_final()->set_mode(request->mode());
    chunk.mutable_final()->add_cited()->set_document_id(request->namespace_());
    writer->Write(chunk);
    return grpc::Status::OK;
  }

  grpc::Status Get(grpc::ServerContext* context, const v1::GetRequest* request,
                   v1::Document* response) override {
    if (grpc::Status s = Check(context); !s.ok()) return s;
    std::lock_guard<std::mutex> lock(mu_);
    auto it = docs_.find(request->id());
    if (it == docs_.end()) return grpc::Status(grpc::StatusCode::NOT_FOUND, "no " + request->id());
    response->set_id(request->id());
    response->set_namespace_(it->second.namespace_());
    response->add_passages()->set_text(it->second.text());
    *response->mutable_metadata() = it->second.metadata();
    return grpc::Status::OK;
  }

  grpc::Status Stats(grpc::ServerContext* context, const v1::StatsRequest*,
                     v1::StatsResponse* response) override {
    if (grpc::Status s = Check(context); !s.ok()) return s;
    std::lock_guard<std::mutex> lock(mu_);
    response->set_documents(static_cast<int64_t>(docs_.size()));
    return grpc::Status::OK;
  }

  std::string last_authorization() {
    std::lock_guard<std::mutex> lock(mu_);
    return last_authorization_;
  }

 private:
  grpc::Status Check(grpc::ServerContext* context) {
    auto it = context->client_metadata().find("authorization");
    std::lock_guard<std::mutex> lock(mu_);
    last_authorization_ = it == context->client_metadata().end()
                              ? ""
                              : std::string(it->second.data(), it->second.size());
    if (last_authorization_ == "Bearer bad") {
      return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "unknown token");
    }
    return grpc::Status::OK;
  }

  std::mutex mu_;
  std::map<std::string, v1::IngestRequest> docs_;
  std::string last_authorization_;
};

class ClientTest : public ::testing::Test {
 protected:
  void SetUp() override {
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port_);
    builder.RegisterService(&service_);
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    ASSERT_GT(port_, 0);
  }
  void TearDown() override { server_->Shutdown(); }

  std::unique_ptr<Client> Connect(const std::string& token = "", const std::string& ns = "") {
    ClientOptions options;
    options.target = "127.0.0.1:" + std::to_string(port_);
    options.token = token;
    options.name_space = ns;
    options.deadline = absl::Seconds(30);
    absl::StatusOr<std::unique_ptr<Client>> c = Client::Connect(options);
    EXPECT_TRUE(c.ok()) << c.status();
    return std::move(*c);
  }

  FakeService service_;
  int port_ = 0;
  std::unique_ptr<grpc::Server> server_;
};

TEST_F(ClientTest, IngestStreamsEveryDocumentAndReportsAcksInOrder) {
  auto c = Connect("", "team");
  std::vector<std::pair<std::string, std::string>> docs = {
      {"a", "one"}, {"b", ""}, {"c", "three"}, {"a", "one again"}};
  size_t next = 0;
  std::vector<v1::IngestAck> acks;
  absl::Status status = c->Ingest(
      [&](v1::IngestRequest* r) -> absl::StatusOr<bool> {
        if (next == docs.size()) return false;
        r->set_id(docs[next].first);
        r->set_text(docs[next].second);
        ++next;
        return true;
      },
      [&](const v1::IngestAck& ack) { acks.push_back(ack); });
  ASSERT_TRUE(status.ok()) << status;
  ASSERT_EQ(acks.size(), 4u);
  EXPECT_EQ(acks[0].id(), "a");
  EXPECT_EQ(acks[1].error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(acks[2].passages(), 1);
  EXPECT_TRUE(acks[3].replaced());
  v1::GetRequest get;
  get.set_id("a");
  absl::StatusOr<v1::Document> doc = c->Get(get);
  ASSERT_TRUE(doc.ok()) << doc.status();
  EXPECT_EQ(doc->namespace_(), "team");  // the client's default namespace was filled in
  EXPECT_EQ(doc->passages(0).text(), "one again");
}

TEST_F(ClientTest, AProducerErrorStopsTheStreamAndIsReturned) {
  auto c = Connect();
  int calls = 0;
  absl::Status status = c->Ingest(
      [&](v1::IngestRequest* r) -> absl::StatusOr<bool> {
        if (++calls == 2) return absl::InvalidArgumentError("docs.jsonl:2: not a JSON object");
        r->set_id("x");
        r->set_text("text");
        return true;
      },
      nullptr);
  EXPECT_EQ(status, absl::InvalidArgumentError("docs.jsonl:2: not a JSON object"));
}

TEST_F(ClientTest, InvalidUtf8IsRefusedBeforeItIsSent) {
  auto c = Connect();
  int calls = 0;
  std::vector<std::string> acked;
  absl::Status status = c->Ingest(
      [&](v1::IngestRequest* r) -> absl::StatusOr<bool> {
        r->set_id(++calls == 1 ? "fine" : "latin1.txt");
        r->set_text(calls == 1 ? "caf\xC3\xA9" : "caf\xE9");
        return calls <= 2;
      },
      [&](const v1::IngestAck& ack) { acked.push_back(ack.id()); });
  EXPECT_EQ(status, absl::InvalidArgumentError("document latin1.txt: its text is not valid UTF-8"));
  EXPECT_EQ(acked, std::vector<std::string>{"fine"});
  v1::AskRequest ask;
  ask.set_question("\xFF?");
  EXPECT_EQ(c->Ask(ask).status(), absl::InvalidArgumentError("the question is not valid UTF-8"));
  v1::SearchRequest search;
  search.set_query("\xFF");
  EXPECT_EQ(c->Search(search).status(), absl::InvalidArgumentError("the query is not valid UTF-8"));
}

TEST_F(ClientTest, AskStreamsTextThenReturnsTheFinalMessage) {
  auto c = Connect("s3cret");
  v1::AskRequest request;
  request.set_question("Q?");
  request.set_mode(v1::ASK_MODE_RAG);
  request.set_namespace_("mine");
  std::vector<std::string> chunks;
  absl::StatusOr<v1::AskFinal> answer =
      c->Ask(request, [&](std::string_view text) { chunks.emplace_back(text); });
  ASSERT_TRUE(answer.ok()) << answer.status();
  EXPECT_EQ(chunks, (std::vector<std::string>{"about ", "Q?"}));
  EXPECT_EQ(answer->answer(), "about Q?");
  EXPECT_EQ(answer->mode(), v1::ASK_MODE_RAG);
  EXPECT_EQ(answer->cited(0).document_id(), "mine");  // an explicit namespace is kept
  EXPECT_EQ(service_.last_authorization(), "Bearer s3cret");
}

TEST_F(ClientTest, ErrorsCarryTheGrpcCodeAndMessage) {
  auto c = Connect();
  v1::GetRequest get;
  get.set_id("missing");
  EXPECT_EQ(c->Get(get).status(), absl::NotFoundError("no missing"));
  EXPECT_EQ(c->Ask(v1::AskRequest()).status(), absl::InvalidArgumentError("question is empty"));
  EXPECT_EQ(service_.last_authorization(), "");
  // Methods the service does not implement.
  EXPECT_EQ(c->Search(v1::SearchRequest()).status().code(), absl::StatusCode::kUnimplemented);
  auto bad = Connect("bad");
  EXPECT_EQ(bad->Stats().status(), absl::UnauthenticatedError("unknown token"));
}

TEST_F(ClientTest, AnUnreachableDaemonIsUnavailable) {
  ClientOptions options;
  options.target = "127.0.0.1:1";
  absl::StatusOr<std::unique_ptr<Client>> c = Client::Connect(options);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ((*c)->Stats().status().code(), absl::StatusCode::kUnavailable);
}

TEST(ClientOptionsTest, ACertificateNeedsItsKey) {
  ClientOptions options;
  options.tls_client_cert_pem = "-----BEGIN CERTIFICATE-----";
  EXPECT_EQ(Client::Connect(options).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(AskModeTest, NamesRoundTrip) {
  for (v1::AskMode mode :
       {v1::ASK_MODE_CLOSED_BOOK, v1::ASK_MODE_MAC, v1::ASK_MODE_RAG, v1::ASK_MODE_MAC_RAG}) {
    absl::StatusOr<v1::AskMode> parsed = ParseAskMode(AskModeName(mode));
    ASSERT_TRUE(parsed.ok());
    EXPECT_EQ(*parsed, mode);
  }
  EXPECT_EQ(ParseAskMode("mac-rag").status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace knowd::client
