// JsonToMessage and MessageToJson (daemon/rest_api.h): the REST API's spelling of the proto
// messages — JSON names or proto names, `bytes` as plain text, integers as numbers or decimal
// strings, enums by any of their names — and the INVALID_ARGUMENT that names a bad field.
#include <string>

#include "daemon/rest_api.h"
#include "gtest/gtest.h"
#include "knowd/v1/knowd.pb.h"

namespace knowd {
namespace {

namespace v1 = ::knowd::v1;

TEST(RestJson, ReadsJsonAndProtoNamesWithPlainText) {
  v1::IngestRequest r;
  ASSERT_TRUE(JsonToMessage(R"({"id": "doc-1", "text": "Zoë lives in Kraków — 東京",
                               "metadata": {"source": "notes"}, "valid_from_unix": "1700000000"})",
                            &r)
                  .ok());
  EXPECT_EQ(r.id(), "doc-1");
  EXPECT_EQ(r.text(), "Zoë lives in Kraków — 東京");  // bytes field: the UTF-8 itself, not base64
  EXPECT_EQ(r.metadata().at("source"), "notes");
  EXPECT_EQ(r.valid_from_unix(), 1700000000);

  v1::SearchRequest s;
  ASSERT_TRUE(JsonToMessage(R"({"query": "q", "topK": 3, "namespace": null})", &s).ok());
  EXPECT_EQ(s.top_k(), 3);
  EXPECT_EQ(s.namespace_(), "");
}

TEST(RestJson, EnumsByAnyOfTheirNames) {
  const std::pair<const char*, v1::AskMode> cases[] = {
      {R"("ASK_MODE_MAC_RAG")", v1::ASK_MODE_MAC_RAG},
      {R"("mac+rag")", v1::ASK_MODE_MAC_RAG},
      {R"("mac_rag")", v1::ASK_MODE_MAC_RAG},
      {R"("closed-book")", v1::ASK_MODE_CLOSED_BOOK},
      {R"("RAG")", v1::ASK_MODE_RAG},
      {"2", v1::ASK_MODE_MAC},
  };
  for (const auto& [text, mode] : cases) {
    v1::AskRequest r;
    ASSERT_TRUE(JsonToMessage(std::string(R"({"question": "q", "mode": )") + text + "}", &r).ok())
        << text;
    EXPECT_EQ(r.mode(), mode) << text;
  }
  v1::AskRequest r;
  const absl::Status bad = JsonToMessage(R"({"mode": "psychic"})", &r);
  EXPECT_EQ(bad.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(bad.message(),
            "mode: must be one of unspecified, closed_book, mac, rag, mac_rag (or AskMode's full "
            "value names or numbers)");
}

TEST(RestJson, NamesTheBadField) {
  struct Case {
    const char* json;
    const char* message;
  };
  const Case cases[] = {
      {R"({"query": 5})", "query: must be a string"},
      {R"({"topK": "three"})", "topK: must be an integer"},
      {R"({"topK": 1.5})", "topK: must be an integer"},
      {R"({"topK": 3000000000})", "topK: must be -2147483648..2147483647"},
      {R"({"topK": -3000000000})", "topK: must be -2147483648..2147483647"},
      {R"({"retrieval": true})",
       "retrieval: must be one of unspecified, dense, lexical, hybrid (or Retrieval's full value "
       "names or numbers)"},
      {R"({"colour": "red"})",
       "unknown field \"colour\" (SearchRequest has namespace, query, topK, retrieval, "
       "minLogSequence)"},
      {R"(["query"])", "the body must be a JSON object"},
      {R"({"query": "q")", "the body is not valid JSON (text must be UTF-8, in a JSON string)"},
      {"{\"query\": \"\xff\"}",
       "the body is not valid JSON (text must be UTF-8, in a JSON string)"},
  };
  for (const Case& c : cases) {
    v1::SearchRequest r;
    const absl::Status s = JsonToMessage(c.json, &r);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << c.json;
    EXPECT_EQ(s.message(), c.message) << c.json;
  }
  v1::IngestRequest r;
  EXPECT_EQ(JsonToMessage(R"({"metadata": {"k": 5}})", &r).message(),
            "metadata.k: must be a string");
  v1::ForgetRequest f;
  EXPECT_EQ(JsonToMessage(R"({"ids": ["a", 2]})", &f).message(), "ids[1]: must be a string");
  EXPECT_EQ(JsonToMessage(R"({"ids": "a"})", &f).message(), "ids: must be an array");
}

TEST(RestJson, WritesEveryFieldByJsonNameInProtoOrder) {
  v1::SearchResponse r;
  v1::Passage* p = r.add_passages();
  p->set_document_id("doc-1");
  p->set_index(2);
  p->set_text("Kraków");
  p->set_score(0.85f);
  (*p->mutable_metadata())["k"] = "v";
  p->set_ingest_time_unix(int64_t{1} << 40);
  r.set_took_ms(1.5);
  EXPECT_EQ(MessageToJson(r),
            R"({"passages":[{"documentId":"doc-1","index":2,"text":"Kraków","score":0.85,)"
            R"("metadata":{"k":"v"},"ingestTimeUnix":1099511627776,"validFromUnix":0}],)"
            R"("tookMs":1.5,"metadataTrimmed":false})");

  v1::AskChunk chunk;
  chunk.set_text("Eth");  // `final` unset: left out
  EXPECT_EQ(MessageToJson(chunk), R"({"text":"Eth"})");
  chunk.mutable_final()->set_mode(v1::ASK_MODE_MAC_RAG);
  EXPECT_NE(MessageToJson(chunk).find(R"("mode":"ASK_MODE_MAC_RAG")"), std::string::npos);
}

TEST(RestJson, RoundTrips) {
  v1::AskRequest in;
  in.set_namespace_("team-a");
  in.set_question("Who?");
  in.set_mode(v1::ASK_MODE_RAG);
  in.set_retrieval(v1::RETRIEVAL_HYBRID);
  in.set_top_k(3);
  in.set_temperature(0.7f);
  in.set_seed(UINT64_MAX);
  in.set_stream(false);
  in.set_explain(true);
  v1::AskRequest out;
  ASSERT_TRUE(JsonToMessage(MessageToJson(in), &out).ok()) << MessageToJson(in);
  EXPECT_EQ(out.SerializeAsString(), in.SerializeAsString()) << MessageToJson(in);
  EXPECT_NE(MessageToJson(in).find(R"("seed":18446744073709551615)"), std::string::npos);
  // An unset proto3 `optional` is left out rather than written as its default.
  in.clear_stream();
  EXPECT_EQ(MessageToJson(in).find("stream"), std::string::npos);
}

}  // namespace
}  // namespace knowd
