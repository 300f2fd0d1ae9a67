#include "daemon/request_checks.h"

#include <cmath>
#include <limits>
#include <string>

#include "gtest/gtest.h"

namespace knowd {
namespace {

const absl::Time kNow = absl::FromUnixSeconds(1'800'000'000);

v1::IngestRequest Document(const std::string& id = "doc", const std::string& text = "Some text.") {
  v1::IngestRequest r;
  r.set_id(id);
  r.set_text(text);
  return r;
}

absl::Status Ingest(const v1::IngestRequest& request, ServiceLimits limits = {}) {
  std::string name_space;
  return CheckIngestRequest(request, limits, kNow, &name_space);
}

TEST(CheckIngestRequest, ResolvesTheNamespace) {
  std::string name_space;
  ASSERT_TRUE(CheckIngestRequest(Document(), {}, kNow, &name_space).ok());
  EXPECT_EQ(name_space, "default");
}

// Metadata is bounded like text: a few keys and bytes per document, never megabytes copied into
// every passage of every response.
TEST(CheckIngestRequest, MetadataIsBoundedInKeysAndBytes) {
  ServiceLimits limits;
  limits.max_metadata_bytes = 100;
  limits.max_metadata_entries = 3;
  v1::IngestRequest r = Document();
  (*r.mutable_metadata())["source"] = std::string(94, 'x');  // 6 + 94 = 100 bytes
  EXPECT_TRUE(Ingest(r, limits).ok());
  (*r.mutable_metadata())["source"] = std::string(95, 'x');
  EXPECT_EQ(Ingest(r, limits).message(),
            "metadata has 101 bytes of keys and values; the limit is 100");
  r.mutable_metadata()->clear();
  for (const std::string key : {"a", "b", "c", "d"}) r.mutable_metadata()->insert({key, "v"});
  EXPECT_EQ(Ingest(r, limits).message(), "metadata has 4 keys; the limit is 3");
  // The defaults: 64 KiB, 256 keys; 6 MB is refused.
  r.mutable_metadata()->clear();
  (*r.mutable_metadata())["blob"] = std::string(6 << 20, 'x');
  EXPECT_EQ(Ingest(r).code(), absl::StatusCode::kInvalidArgument);
}

TEST(CheckIngestRequest, MetadataKeysAndValuesMustBeUtf8) {
  v1::IngestRequest r = Document();
  (*r.mutable_metadata())["source"] = std::string("caf\xC3\x28", 5);
  EXPECT_EQ(Ingest(r).message(), "metadata value of \"source\" is not valid UTF-8");
  r.mutable_metadata()->clear();
  (*r.mutable_metadata())[std::string("k\xFF", 2)] = "v";
  EXPECT_EQ(Ingest(r).message(), "metadata key is not valid UTF-8 (byte 1)");
  r.mutable_metadata()->clear();
  (*r.mutable_metadata())[""] = "v";
  EXPECT_EQ(Ingest(r).code(), absl::StatusCode::kInvalidArgument);
  r.mutable_metadata()->clear();
  (*r.mutable_metadata())["a\nb"] = "v";
  EXPECT_EQ(Ingest(r).code(), absl::StatusCode::kInvalidArgument);
}

// A far-future valid_from would win every later "newer fact".
TEST(CheckIngestRequest, ValidFromMayNotLieFarInTheFuture) {
  ServiceLimits limits;
  limits.max_future_seconds = 3600;
  v1::IngestRequest r = Document();
  r.set_valid_from_unix(absl::ToUnixSeconds(kNow) + 3600);
  EXPECT_TRUE(Ingest(r, limits).ok());
  r.set_valid_from_unix(absl::ToUnixSeconds(kNow) + 3601);
  EXPECT_EQ(Ingest(r, limits).code(), absl::StatusCode::kInvalidArgument);
  r.set_valid_from_unix(std::numeric_limits<int64_t>::max());
  const absl::Status s = Ingest(r, limits);
  EXPECT_NE(s.message().find("lies more than 3600 s past the daemon's clock"), std::string::npos)
      << s;
  r.set_valid_from_unix(-1);
  EXPECT_EQ(Ingest(r).message(), "valid_from_unix must not be negative");
}

TEST(CheckIngestRequest, BlankTextIsRefused) {
  EXPECT_EQ(Ingest(Document("doc", "  \n\t ")).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Ingest(Document("doc", std::string(5, '\0'))).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(CheckAskRequest, TemperatureMustBeAFiniteNumberInRange) {
  std::string name_space;
  v1::AskRequest r;
  r.set_question("Where does Ardo Velin live?");
  for (float t : {0.0f, 0.7f, kMaxTemperature}) {
    r.set_temperature(t);
    EXPECT_TRUE(CheckAskRequest(r, {}, &name_space).ok()) << t;
  }
  for (float t :
       {std::numeric_limits<float>::infinity(), std::nanf(""), -0.1f, kMaxTemperature * 2}) {
    r.set_temperature(t);
    EXPECT_EQ(CheckAskRequest(r, {}, &name_space).message(),
              "temperature must be a number in [0, 100]")
        << t;
  }
  r.set_temperature(0);
  r.set_top_p(std::nanf(""));
  EXPECT_EQ(CheckAskRequest(r, {}, &name_space).code(), absl::StatusCode::kInvalidArgument);
}

TEST(CheckAskRequest, BoundsAndEnums) {
  std::string name_space;
  v1::AskRequest r;
  r.set_question("Where?");
  r.set_top_k(kMaxTopK + 1);
  EXPECT_EQ(CheckAskRequest(r, {}, &name_space).code(), absl::StatusCode::kInvalidArgument);
  r.set_top_k(0);
  r.set_mode(static_cast<v1::AskMode>(42));
  EXPECT_EQ(CheckAskRequest(r, {}, &name_space).message(), "unknown mode 42");
  r.set_mode(v1::ASK_MODE_MAC);
  r.set_question(" ");
  EXPECT_EQ(CheckAskRequest(r, {}, &name_space).code(), absl::StatusCode::kInvalidArgument);
}

TEST(CheckOtherRequests, NamespacesIdsAndQueries) {
  std::string name_space;
  v1::ForgetRequest forget;
  EXPECT_EQ(CheckForgetRequest(forget, &name_space).message(), "ids is empty");
  forget.add_ids("ok");
  forget.add_ids(std::string("\xFF", 1));
  EXPECT_EQ(CheckForgetRequest(forget, &name_space).code(), absl::StatusCode::kInvalidArgument);
  v1::StatsRequest stats;
  ASSERT_TRUE(CheckStatsRequest(stats, &name_space).ok());
  EXPECT_EQ(name_space, "");
  stats.set_namespace_("team-a");
  ASSERT_TRUE(CheckStatsRequest(stats, &name_space).ok());
  EXPECT_EQ(name_space, "team-a");
  v1::SearchRequest search;
  search.set_query("\t");
  EXPECT_EQ(CheckSearchRequest(search, {}, &name_space).code(), absl::StatusCode::kInvalidArgument);
  v1::GetRequest get;
  get.set_id("x");
  get.set_namespace_("a\x01");
  EXPECT_EQ(CheckGetRequest(get, &name_space).code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace knowd
