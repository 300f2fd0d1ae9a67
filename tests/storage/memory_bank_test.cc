// MemoryBank basics: put/get/search, upsert, forget, namespace isolation, bad input, hybrid.
#include "storage/memory_bank.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <thread>

#include "absl/strings/str_cat.h"
#include "tests/storage/bank_test_util.h"

namespace knowd::storage {
namespace {

using ::knowd::storage::testing::MakeDoc;
using ::knowd::storage::testing::TempDir;
using ::knowd::storage::testing::TestOptions;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

std::unique_ptr<MemoryBank> OpenOrDie(const BankOptions& options) {
  auto bank = MemoryBank::Open(options);
  EXPECT_TRUE(bank.ok()) << bank.status();
  return bank.ok() ? std::move(*bank) : nullptr;
}

std::vector<std::string> DocIds(const std::vector<SearchHit>& hits) {
  std::vector<std::string> ids;
  for (const SearchHit& h : hits) ids.push_back(h.doc_id);
  return ids;
}

SearchRequest QueryFor(const Document& doc, int passage, int k) {
  SearchRequest r;
  r.name_space = doc.name_space;
  r.key = doc.passages[passage].key;
  r.k = k;
  return r;
}

TEST(MemoryBankTest, PutThenGetReturnsTheDocument) {
  TempDir dir;
  auto bank = OpenOrDie(TestOptions(dir.path()));
  Document doc = MakeDoc("ns", "doc-1", 0, 3);
  doc.valid_from = absl::FromUnixSeconds(1700000000);
  const absl::Time before = absl::Now();
  auto acks = bank->Put({&doc, 1});
  ASSERT_TRUE(acks.ok()) << acks.status();
  ASSERT_EQ(acks->size(), 1u);
  EXPECT_FALSE((*acks)[0].replaced);
  EXPECT_EQ((*acks)[0].passage_ids.size(), 3u);

  auto got = bank->Get("ns", "doc-1", /*with_latents=*/true);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->text, doc.text);
  EXPECT_EQ(got->metadata, doc.metadata);
  EXPECT_EQ(got->valid_from, doc.valid_from);
  EXPECT_GE(got->ingest_time, before - absl::Milliseconds(1));
  ASSERT_EQ(got->passages.size(), 3u);
  for (int p = 0; p < 3; ++p) {
    EXPECT_EQ(got->passages[p].id, (*acks)[0].passage_ids[p]);
    EXPECT_EQ(got->passages[p].text, doc.passages[p].text);
    EXPECT_EQ(got->passages[p].key, doc.passages[p].key);  // keys are stored exactly (f32)
    ASSERT_EQ(got->passages[p].latents.size(), doc.passages[p].latents.size());
  }
}

// Markers (a replica's position in the cluster log) survive a reopen and are kept apart from
// documents, counts and namespaces.
TEST(MemoryBankTest, MarkersSurviveReopenAndStayOutOfTheDocuments) {
  TempDir dir;
  {
    auto bank = OpenOrDie(TestOptions(dir.path()));
    auto unset = bank->GetMarker("log/applied");
    ASSERT_TRUE(unset.ok()) << unset.status();
    EXPECT_FALSE(unset->has_value());
    Document doc = MakeDoc("ns", "doc-1", 0, 2);
    ASSERT_TRUE(bank->Put({&doc, 1}).ok());
    ASSERT_TRUE(bank->SetMarker("log/applied", "41").ok());
    ASSERT_TRUE(bank->SetMarker("log/applied", "42").ok());
    EXPECT_EQ(bank->SetMarker("", "x").code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(bank->SetMarker(std::string(129, 'm'), "x").code(),
              absl::StatusCode::kInvalidArgument);
    ASSERT_TRUE(bank->Close().ok());
    EXPECT_EQ(bank->SetMarker("log/applied", "43").code(), absl::StatusCode::kFailedPrecondition);
  }
  auto bank = OpenOrDie(TestOptions(dir.path()));
  auto marker = bank->GetMarker("log/applied");
  ASSERT_TRUE(marker.ok()) << marker.status();
  ASSERT_TRUE(marker->has_value());
  EXPECT_EQ(**marker, "42");
  auto stats = bank->Stats();
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_EQ(stats->documents, 1u);
  EXPECT_EQ(stats->namespaces.size(), 1u);
}

TEST(MemoryBankTest, SearchFindsTheNearestPassageFirst) {
  TempDir dir;
  auto bank = OpenOrDie(TestOptions(dir.path()));
  std::vector<Document> docs;
  for (int i = 0; i < 50; ++i) docs.push_back(MakeDoc("ns", absl::StrCat("doc-", i)));
  ASSERT_TRUE(bank->Put(docs).ok());
  for (int i : {0, 17, 49}) {
    SearchRequest req = QueryFor(docs[i], 1, 5);
    req.with_text = true;
    auto hits = bank->Search(req);
    ASSERT_TRUE(hits.ok()) << hits.status();
    ASSERT_EQ(hits->size(), 5u);
    EXPECT_EQ((*hits)[0].doc_id, docs[i].id);
    EXPECT_EQ((*hits)[0].passage_index, 1);
    EXPECT_EQ((*hits)[0].text, docs[i].passages[1].text);
    EXPECT_NEAR((*hits)[0].score, 1.0f, 1e-5);  // unit keys, inner product
    for (size_t h = 1; h < hits->size(); ++h) EXPECT_LE((*hits)[h].score, (*hits)[h - 1].score);
  }
}

TEST(MemoryBankTest, UpsertReplacesAllPassagesAtomically) {
  TempDir dir;
  auto bank = OpenOrDie(TestOptions(dir.path()));
  Document v0 = MakeDoc("ns", "doc", 0, 3);
  auto first = bank->Put({&v0, 1});
  ASSERT_TRUE(first.ok());
  Document v1 = MakeDoc("ns", "doc", 1, 2);
  auto second = bank->Put({&v1, 1});
  ASSERT_TRUE(second.ok());
  EXPECT_TRUE((*second)[0].replaced);

  auto got = bank->Get("ns", "doc");
  ASSERT_TRUE(got.ok());
  ASSERT_EQ(got->passages.size(), 2u);
  EXPECT_EQ(got->passages[0].text, v1.passages[0].text);
  // The old passages are gone from every index and from GetLatents.
  auto hits = bank->Search(QueryFor(v0, 2, 10));
  ASSERT_TRUE(hits.ok());
  for (const SearchHit& h : *hits) {
    EXPECT_THAT((*second)[0].passage_ids, ::testing::Contains(h.passage_id));
  }
  auto old_latents = bank->GetLatents("ns", (*first)[0].passage_ids);
  EXPECT_EQ(old_latents.status().code(), absl::StatusCode::kNotFound);
  auto stats = bank->Stats();
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ(stats->documents, 1u);
  EXPECT_EQ(stats->passages, 2u);
  EXPECT_TRUE(bank->VerifyIndexes().ok()) << bank->VerifyIndexes();
}

TEST(MemoryBankTest, ForgetRemovesTextLatentsKeysAndIndexEntries) {
  TempDir dir;
  BankOptions options = TestOptions(dir.path());
  auto bank = OpenOrDie(options);
  Document keep = MakeDoc("ns", "keep");
  Document gone = MakeDoc("ns", "gone");
  gone.passages[0].text = "zebra unicorn rainbow";
  std::vector<Document> batch = {keep, gone};
  auto acks = bank->Put(batch);
  ASSERT_TRUE(acks.ok());
  const std::vector<PassageId> gone_ids = (*acks)[1].passage_ids;
  ASSERT_TRUE(bank->GetLatents("ns", gone_ids).ok());  // now cached

  std::vector<std::string> ids = {"gone", "never-existed"};
  auto removed = bank->Delete("ns", ids, /*purge=*/true);
  ASSERT_TRUE(removed.ok()) << removed.status();
  EXPECT_EQ(*removed, 1);

  EXPECT_EQ(bank->Get("ns", "gone").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(bank->GetLatents("ns", gone_ids).status().code(), absl::StatusCode::kNotFound);
  auto dense = bank->Search(QueryFor(gone, 0, 10));
  ASSERT_TRUE(dense.ok());
  EXPECT_THAT(DocIds(*dense), ElementsAre("keep", "keep"));
  SearchRequest hybrid = QueryFor(gone, 0, 10);
  hybrid.hybrid = true;
  hybrid.query_text = "zebra unicorn";
  auto fused = bank->Search(hybrid);
  ASSERT_TRUE(fused.ok()) << fused.status();
  for (const SearchHit& h : *fused) EXPECT_EQ(h.doc_id, "keep");
  auto page = bank->Scan("ns", "", 10);
  ASSERT_TRUE(page.ok());
  ASSERT_EQ(page->documents.size(), 1u);
  EXPECT_EQ(page->documents[0].id, "keep");
  EXPECT_TRUE(bank->VerifyIndexes().ok()) << bank->VerifyIndexes();

  // Purged: no file under the data directory still holds the forgotten text.
  ASSERT_TRUE(bank->Close().ok());
  for (const auto& entry : std::filesystem::recursive_directory_iterator(dir.path())) {
    if (!entry.is_regular_file()) continue;
    std::ifstream in(entry.path(), std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    EXPECT_EQ(bytes.find("zebra unicorn rainbow"), std::string::npos) << entry.path();
  }
  // ...and after reopening it stays forgotten.
  bank = OpenOrDie(options);
  EXPECT_EQ(bank->Get("ns", "gone").status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(bank->Get("ns", "keep").ok());
}

// Thousands of adds and removals leave the namespace's lexical index holding exactly the live
// passages, in this namespace only.
TEST(MemoryBankTest, ChurnLeavesTheLexicalIndexWithTheLivePassagesOnly) {
  TempDir dir;
  auto bank = OpenOrDie(TestOptions(dir.path()));
  Document other = MakeDoc("other", "elsewhere");
  other.passages[0].text = "zebra unicorn rainbow";
  ASSERT_TRUE(bank->Put({&other, 1}).ok());
  Document keep = MakeDoc("ns", "keep");
  keep.passages[0].text = "giraffe lantern harbour";
  ASSERT_TRUE(bank->Put({&keep, 1}).ok());
  const std::vector<std::string> churn_id = {"churn"};
  for (int i = 0; i < 4200; ++i) {  // 4,200 removals against 1 live passage
    Document churn = MakeDoc("ns", "churn", i);
    churn.passages[0].text = absl::StrCat("zebra ", i);
    ASSERT_TRUE(bank->Put({&churn, 1}).ok());
    ASSERT_TRUE(bank->Delete("ns", churn_id).ok());
  }
  EXPECT_TRUE(bank->VerifyIndexes().ok()) << bank->VerifyIndexes();
  SearchRequest hybrid = QueryFor(keep, 0, 10);
  hybrid.hybrid = true;
  hybrid.query_text = "giraffe zebra";
  auto fused = bank->Search(hybrid);
  ASSERT_TRUE(fused.ok()) << fused.status();
  ASSERT_FALSE(fused->empty());
  for (const SearchHit& h : *fused) EXPECT_EQ(h.doc_id, "keep");
}

TEST(MemoryBankTest, NamespacesAreIsolated) {
  TempDir dir;
  auto bank = OpenOrDie(TestOptions(dir.path()));
  Document a = MakeDoc("alpha", "same-id", 0);
  Document b = MakeDoc("beta", "same-id", 1);
  Document c = MakeDoc("beta", "other", 2);
  std::vector<Document> batch = {a, b, c};
  auto acks = bank->Put(batch);
  ASSERT_TRUE(acks.ok());

  // Searching alpha with beta's exact key never returns beta's passages.
  auto hits = bank->Search(QueryFor(b, 0, 100));
  ASSERT_TRUE(hits.ok());
  EXPECT_EQ(hits->size(), 4u);  // beta holds 2 docs × 2 passages
  SearchRequest cross = QueryFor(b, 0, 100);
  cross.name_space = "alpha";
  hits = bank->Search(cross);
  ASSERT_TRUE(hits.ok());
  ASSERT_EQ(hits->size(), 2u);
  for (const SearchHit& h : *hits) {
    EXPECT_THAT((*acks)[0].passage_ids, ::testing::Contains(h.passage_id));
  }
  EXPECT_EQ(bank->Get("alpha", "same-id")->passages[0].text, a.passages[0].text);
  EXPECT_EQ(bank->Get("beta", "same-id")->passages[0].text, b.passages[0].text);
  EXPECT_EQ(bank->GetLatents("alpha", (*acks)[1].passage_ids).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(bank->Get("alpha", "other").status().code(), absl::StatusCode::kNotFound);
  cross.name_space = "gamma";
  EXPECT_TRUE(bank->Search(cross)->empty());

  std::vector<std::string> forget = {"same-id"};
  ASSERT_EQ(*bank->Delete("alpha", forget), 1);
  EXPECT_TRUE(bank->Get("beta", "same-id").ok());
  auto stats = bank->Stats();
  ASSERT_TRUE(stats.ok());
  ASSERT_EQ(stats->namespaces.size(), 1u);
  EXPECT_EQ(stats->namespaces[0].name_space, "beta");
  EXPECT_EQ(stats->namespaces[0].documents, 2u);
}

TEST(MemoryBankTest, BadInputIsRefusedAndWritesNothing) {
  TempDir dir;
  auto bank = OpenOrDie(TestOptions(dir.path()));
  auto refused = [&](Document bad, std::string_view why) {
    std::vector<Document> batch = {MakeDoc("ns", "good"), std::move(bad)};
    auto acks = bank->Put(batch);
    EXPECT_EQ(acks.status().code(), absl::StatusCode::kInvalidArgument) << why;
    EXPECT_EQ(bank->Get("ns", "good").status().code(), absl::StatusCode::kNotFound) << why;
  };
  Document d = MakeDoc("ns", "");
  refused(d, "empty id");
  d = MakeDoc("", "x");
  refused(d, "empty namespace");
  d = MakeDoc(std::string("a\0b", 3), "x");
  refused(d, "NUL in namespace");
  d = MakeDoc("ns", "x");
  d.passages.clear();
  refused(d, "no passages");
  d = MakeDoc("ns", "x");
  d.passages[1].key.pop_back();
  refused(d, "short key");
  d = MakeDoc("ns", "x");
  d.passages[0].latents.push_back(0.0f);
  refused(d, "wrong latent size");
  d = MakeDoc("ns", "x");
  d.passages[0].key[3] = std::nanf("");
  refused(d, "NaN key");
  d = MakeDoc("ns", "x");
  d.passages[0].latents[5] = INFINITY;
  refused(d, "infinite latent");
  d = MakeDoc("ns", "x");
  d.passages[0].latents[5] = 1e6f;
  refused(d, "fp16 overflow");
  refused(MakeDoc("ns", "good"), "duplicate in batch");

  SearchRequest req;
  req.name_space = "ns";
  req.key.assign(testing::kKeyDim + 1, 0.0f);
  EXPECT_EQ(bank->Search(req).status().code(), absl::StatusCode::kInvalidArgument);
  req.key.assign(testing::kKeyDim, 0.0f);
  req.k = 0;
  EXPECT_EQ(bank->Search(req).status().code(), absl::StatusCode::kInvalidArgument);
  req.k = 5;
  req.hybrid = true;  // without query text
  EXPECT_EQ(bank->Search(req).status().code(), absl::StatusCode::kInvalidArgument);
  auto stats = bank->Stats();
  EXPECT_EQ(stats->documents, 0u);
}

TEST(MemoryBankTest, LatentsRoundTripWithinTheStatedError) {
  for (LatentFormat format : {LatentFormat::kFp16, LatentFormat::kInt8}) {
    TempDir dir;
    BankOptions options = TestOptions(dir.path());
    options.latent_format = format;
    auto bank = OpenOrDie(options);
    Document doc = MakeDoc("ns", "doc", 0, 4);
    doc.passages[3].latents.assign(doc.passages[3].latents.size(), 0.0f);  // all-zero rows
    doc.passages[2].latents[0] = 1e-6f;                                    // fp16 subnormal
    auto acks = bank->Put({&doc, 1});
    ASSERT_TRUE(acks.ok());
    auto latents = bank->GetLatents("ns", (*acks)[0].passage_ids);
    ASSERT_TRUE(latents.ok()) << latents.status();
    for (size_t p = 0; p < doc.passages.size(); ++p) {
      const std::vector<float>& in = doc.passages[p].latents;
      const std::vector<float>& out = *(*latents)[p];
      ASSERT_EQ(out.size(), in.size());
      for (int r = 0; r < testing::kRows; ++r) {
        float row_max = 0;
        for (int c = 0; c < testing::kCols; ++c) {
          row_max = std::max(row_max, std::fabs(in[r * testing::kCols + c]));
        }
        for (int c = 0; c < testing::kCols; ++c) {
          const float x = in[r * testing::kCols + c];
          const float bound = format == LatentFormat::kFp16 ? std::fabs(x) * 0x1p-11f + 0x1p-25f
                                                            : row_max / 254.0f * (1 + 1e-6f);
          EXPECT_LE(std::fabs(out[r * testing::kCols + c] - x), bound)
              << "format " << static_cast<int>(format) << " passage " << p << " r" << r << "c" << c;
        }
      }
    }
    // A second read comes from the cache and is the same buffer.
    auto again = bank->GetLatents("ns", (*acks)[0].passage_ids);
    ASSERT_TRUE(again.ok());
    EXPECT_EQ((*again)[0].get(), (*latents)[0].get());
    EXPECT_GE(bank->Stats()->latent_cache_hits, 4u);
  }
}

// 20 one-passage documents in "ns": doc-7 about the aurora, doc-12 about penguins.
std::vector<Document> AuroraDocs() {
  std::vector<Document> docs;
  for (int i = 0; i < 20; ++i) docs.push_back(MakeDoc("ns", absl::StrCat("doc-", i), 0, 1));
  docs[7].passages[0].text = "The aurora borealis glows over Tromsø in winter";
  docs[12].passages[0].text = "Penguins live in Antarctica";
  return docs;
}

TEST(MemoryBankTest, HybridSearchFusesLexicalAndDenseRankings) {
  TempDir dir;
  auto bank = OpenOrDie(TestOptions(dir.path()));
  const std::vector<Document> docs = AuroraDocs();
  ASSERT_TRUE(bank->Put(docs).ok());

  // Dense query points at doc-12; the words point at doc-7. Both must surface, fused.
  SearchRequest req = QueryFor(docs[12], 0, 3);
  req.hybrid = true;
  req.query_text = "aurora borealis";
  auto hits = bank->Search(req);
  ASSERT_TRUE(hits.ok()) << hits.status();
  ASSERT_GE(hits->size(), 2u);
  std::vector<std::string> top2 = {(*hits)[0].doc_id, (*hits)[1].doc_id};
  EXPECT_THAT(top2, ::testing::UnorderedElementsAre("doc-7", "doc-12"));
  for (const SearchHit& h : *hits) {
    if (h.doc_id == "doc-7") {
      EXPECT_TRUE(h.lexical_score.has_value());
    }
    if (h.doc_id == "doc-12") {
      EXPECT_TRUE(h.dense_score.has_value());
    }
  }
  // RRF with rrf_k = 60: each ranking adds 1/(60 + rank); doc-7 is first in the lexical one.
  for (const SearchHit& h : *hits) {
    EXPECT_GT(h.score, 0.0f);
    EXPECT_LE(h.score, 2.0f / 61.0f + 1e-7f);
    if (h.doc_id == "doc-7") {
      EXPECT_GE(h.score, 1.0f / 61.0f - 1e-7f);
    }
  }
}

// Weighted fusion: each ranking adds its weight / (rrf_k + rank). A lexical weight of 0 keeps
// the dense order; a large one puts the lexical best first; a dense weight of 0 is BM25 alone;
// weights that make no ranking are refused.
TEST(MemoryBankTest, HybridFusionWeighsEachRanking) {
  TempDir dir;
  auto bank = OpenOrDie(TestOptions(dir.path()));
  const std::vector<Document> docs = AuroraDocs();
  ASSERT_TRUE(bank->Put(docs).ok());
  SearchRequest dense = QueryFor(docs[12], 0, 5);
  auto dense_hits = bank->Search(dense);
  ASSERT_TRUE(dense_hits.ok()) << dense_hits.status();
  ASSERT_EQ((*dense_hits)[0].doc_id, "doc-12");

  SearchRequest req = dense;
  req.hybrid = true;
  req.query_text = "aurora borealis";
  req.rrf_k = 10;
  req.lexical_weight = 0;
  auto kept = bank->Search(req);
  ASSERT_TRUE(kept.ok()) << kept.status();
  ASSERT_EQ(kept->size(), dense_hits->size());
  for (size_t i = 0; i < kept->size(); ++i) {
    EXPECT_EQ((*kept)[i].doc_id, (*dense_hits)[i].doc_id) << i;
    EXPECT_FLOAT_EQ((*kept)[i].score, 1.0f / static_cast<float>(10 + i + 1)) << i;
  }
  req.lexical_weight = 4;
  auto lexical_first = bank->Search(req);
  ASSERT_TRUE(lexical_first.ok()) << lexical_first.status();
  EXPECT_EQ((*lexical_first)[0].doc_id, "doc-7");
  // doc-7 is the only lexical hit: 4 / (10 + 1), plus 1 / (10 + its dense rank) if it has one.
  EXPECT_GE((*lexical_first)[0].score, 4.0f / 11.0f - 1e-6f);
  EXPECT_LE((*lexical_first)[0].score, 4.0f / 11.0f + 1.0f / 11.0f + 1e-6f);
  // A dense weight of 0 is BM25 alone: the lexical candidates only, none from a dense search.
  req.dense_weight = 0;
  req.lexical_weight = 1;
  auto bm25 = bank->Search(req);
  ASSERT_TRUE(bm25.ok()) << bm25.status();
  ASSERT_EQ(bm25->size(), 1u);
  EXPECT_EQ((*bm25)[0].doc_id, "doc-7");
  EXPECT_FALSE((*bm25)[0].dense_score.has_value());
  EXPECT_FLOAT_EQ((*bm25)[0].score, 1.0f / 11.0f);

  for (auto [d, l] : {std::pair{0.0f, 0.0f}, std::pair{-1.0f, 1.0f},
                      std::pair{1.0f, std::numeric_limits<float>::infinity()}}) {
    req.dense_weight = d;
    req.lexical_weight = l;
    auto refused = bank->Search(req);
    EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument) << d << " " << l;
  }
}

// BM25 without length normalisation: a passage holding a query term once weighs the same however
// long it is (a length read per candidate is what a BM25 search at 1M passages spent most of its
// time on). A query of function words only is searched as it is.
TEST(MemoryBankTest, LexicalWeightDoesNotDependOnPassageLength) {
  TempDir dir;
  auto bank = OpenOrDie(TestOptions(dir.path()));
  std::vector<Document> docs = AuroraDocs();
  docs[3].passages[0].text = "Orla plays the harp";
  docs[4].passages[0].text =
      "Orla plays the harp in the evenings, after long days at the quarry by the river, where "
      "she has cut slate for twenty years with her brothers and their children";
  ASSERT_TRUE(bank->Put(docs).ok());
  SearchRequest req = QueryFor(docs[3], 0, 5);
  req.hybrid = true;
  req.dense_weight = 0;
  req.query_text = "harp";
  auto hits = bank->Search(req);
  ASSERT_TRUE(hits.ok()) << hits.status();
  ASSERT_EQ(hits->size(), 2u);
  ASSERT_TRUE((*hits)[0].lexical_score.has_value() && (*hits)[1].lexical_score.has_value());
  EXPECT_GT(*(*hits)[0].lexical_score, 0.0f);
  EXPECT_FLOAT_EQ(*(*hits)[0].lexical_score, *(*hits)[1].lexical_score);

  req.query_text = "Where is the";
  auto stop_only = bank->Search(req);
  ASSERT_TRUE(stop_only.ok()) << stop_only.status();
  std::vector<std::string> found;
  for (const SearchHit& h : *stop_only) found.push_back(h.doc_id);
  EXPECT_THAT(found, ::testing::Contains("doc-3"));
}

// Search's LexicalTerms: the query's terms as the lexical index parsed them, how many passages
// hold each, the terms the best BM25 candidate holds, and each lexical hit's matched terms.
// (knowledge/subject.h turns them into a question's subject and coverage: tests/knowledge.)
TEST(MemoryBankTest, LexicalTermsSayWhatTheQueryAndEachHitMatch) {
  TempDir dir;
  auto bank = OpenOrDie(TestOptions(dir.path()));
  const std::vector<Document> docs = testing::NamesFixture();
  ASSERT_TRUE(bank->Put(docs).ok());

  SearchRequest req = QueryFor(docs[0], 0, 10);
  req.hybrid = true;
  // The possessive matches the name's other mentions ("Keslemul's" is searched as "Keslemul").
  req.query_text = "What city is Velka Keslemul's home?";
  req.with_text = true;
  LexicalTerms terms;
  auto hits = bank->Search(req, &terms);
  ASSERT_TRUE(hits.ok()) << hits.status();
  EXPECT_EQ(terms.passages, 23u);
  std::map<std::string, QueryTerm> query;
  for (const QueryTerm& t : terms.query) query[t.term] = t;
  // The names are exact (a capitalised word is left unstemmed); "home" is stemmed.
  const std::vector<std::string> velka = QueryTermsOfWord("velka");
  const std::vector<std::string> keslemul = QueryTermsOfWord("keslemul");
  const std::vector<std::string> home = QueryTermsOfWord("home");
  ASSERT_TRUE(query.contains(velka[0]));
  ASSERT_TRUE(query.contains(keslemul[0]));
  ASSERT_TRUE(query.contains(home[1]));
  EXPECT_TRUE(query[velka[0]].exact);
  EXPECT_FALSE(query[home[1]].exact);
  EXPECT_EQ(query[velka[0]].passages, 2u);
  EXPECT_EQ(query[keslemul[0]].passages, 2u);
  EXPECT_EQ(query[home[1]].passages, 12u);
  std::vector<std::string> best;
  for (const QueryTerm& t : terms.best_match) best.push_back(t.term);
  EXPECT_THAT(best, ::testing::UnorderedElementsAre(velka[0], keslemul[0], home[1]));
  // Function words are not searched for: "what" and "is" are in no term list.
  for (const char* word : {"what", "is"}) {
    for (const std::string& term : QueryTermsOfWord(word)) {
      EXPECT_FALSE(query.contains(term)) << term;
    }
  }
  for (const SearchHit& h : *hits) {
    EXPECT_TRUE(std::is_sorted(h.matched_terms.begin(), h.matched_terms.end())) << h.doc_id;
    if (h.doc_id == "velka-update") {
      EXPECT_THAT(h.matched_terms, ::testing::UnorderedElementsAre(velka[0], keslemul[0]));
    }
  }
  // A hit the dense ranking alone found carries its matched terms too: one candidate from each
  // ranking, the dense one velka-update (its own key), the lexical one velka.
  SearchRequest narrow = QueryFor(docs[21], 0, 2);
  narrow.hybrid = true;
  narrow.candidates = 1;
  narrow.query_text = req.query_text;
  auto two = bank->Search(narrow, &terms);
  ASSERT_TRUE(two.ok()) << two.status();
  ASSERT_EQ(two->size(), 2u);
  for (const SearchHit& h : *two) {
    if (h.doc_id != "velka-update") continue;
    EXPECT_FALSE(h.lexical_score.has_value());
    EXPECT_THAT(h.matched_terms, ::testing::UnorderedElementsAre(velka[0], keslemul[0]));
  }
  EXPECT_EQ((*two)[0].doc_id == "velka-update" ? (*two)[1].doc_id : (*two)[0].doc_id, "velka");
  // Without LexicalTerms, no matched terms.
  auto plain = bank->Search(req);
  ASSERT_TRUE(plain.ok()) << plain.status();
  for (const SearchHit& h : *plain) EXPECT_TRUE(h.matched_terms.empty()) << h.doc_id;

  // A possessive alone finds the name's plain mentions, and the name's possessive in a passage
  // ("Velka's") is found by the plain name.
  for (const char* query_text : {"Keslemul's", "Keslemul\u2019s", "Velka"}) {
    req.query_text = query_text;
    auto found = bank->Search(req);
    ASSERT_TRUE(found.ok()) << found.status();
    std::vector<std::string> matched;
    for (const SearchHit& h : *found) {
      if (h.lexical_score.has_value()) matched.push_back(h.doc_id);
    }
    EXPECT_THAT(matched, ::testing::UnorderedElementsAre("velka", "velka-update")) << query_text;
  }
}

TEST(MemoryBankTest, ScanPagesThroughDocumentsInIdOrder) {
  TempDir dir;
  auto bank = OpenOrDie(TestOptions(dir.path()));
  std::vector<Document> docs;
  for (int i = 0; i < 7; ++i) docs.push_back(MakeDoc("ns", absl::StrCat("d", i), 0, 1));
  docs.push_back(MakeDoc("other", "x", 0, 1));
  ASSERT_TRUE(bank->Put(docs).ok());
  std::vector<std::string> seen;
  std::string cursor;
  do {
    auto page = bank->Scan("ns", cursor, 3);
    ASSERT_TRUE(page.ok());
    for (const auto& d : page->documents) seen.push_back(d.id);
    cursor = page->next_start_after;
  } while (!cursor.empty());
  EXPECT_THAT(seen, ElementsAre("d0", "d1", "d2", "d3", "d4", "d5", "d6"));
}

TEST(MemoryBankTest, OtherIndexFactoriesServeTheSameAnswers) {
  for (const char* factory : {"HNSW16", "IVF4,Flat"}) {
    TempDir dir;
    BankOptions options = TestOptions(dir.path());
    options.index_factory = factory;
    options.index_train_min = 40;  // IVF serves from Flat below this, then trains
    options.index_search_params = std::string(factory).starts_with("IVF") ? "nprobe=4" : "";
    auto bank = OpenOrDie(options);
    std::vector<Document> docs;
    for (int i = 0; i < 30; ++i) docs.push_back(MakeDoc("ns", absl::StrCat("doc-", i)));
    ASSERT_TRUE(bank->Put(docs).ok());  // 60 passages: crosses train_min in one batch
    EXPECT_THAT(bank->Stats()->namespaces[0].index_description, HasSubstr(factory));
    std::vector<std::string> forget = {"doc-3", "doc-4"};
    ASSERT_EQ(*bank->Delete("ns", forget), 2);
    Document replaced = MakeDoc("ns", "doc-5", 9);
    ASSERT_TRUE(bank->Put({&replaced, 1}).ok());
    EXPECT_TRUE(bank->VerifyIndexes().ok()) << factory << ": " << bank->VerifyIndexes();
    for (int i : {0, 10, 29}) {
      auto hits = bank->Search(QueryFor(docs[i], 0, 3));
      ASSERT_TRUE(hits.ok());
      ASSERT_FALSE(hits->empty());
      EXPECT_EQ((*hits)[0].doc_id, docs[i].id) << factory;
    }
    auto hits = bank->Search(QueryFor(docs[3], 0, 60));
    ASSERT_TRUE(hits.ok());
    for (const SearchHit& h : *hits) EXPECT_NE(h.doc_id, "doc-3") << factory;
    // Saved and loaded (with tombstones for HNSW) gives the same ids.
    ASSERT_TRUE(bank->Close().ok());
    bank = OpenOrDie(options);
    EXPECT_TRUE(bank->Stats()->indexes_loaded_from_disk) << bank->Stats()->index_rebuild_reason;
    EXPECT_TRUE(bank->VerifyIndexes().ok()) << factory << ": " << bank->VerifyIndexes();
  }
}

TEST(MemoryBankTest, IndexFactoryProblemsAreHandled) {
  TempDir dir;
  BankOptions options = TestOptions(dir.path());
  options.index_factory = "NoSuchIndex";
  auto refused = MemoryBank::Open(options);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(refused.status().message(), HasSubstr("NoSuchIndex"));
  options.index_factory = "Flat";
  options.index_search_params = "nprobe=4";  // meaningless for Flat
  EXPECT_EQ(MemoryBank::Open(options).status().code(), absl::StatusCode::kInvalidArgument);

  // 64 IVF lists cannot be trained on 20 vectors: the namespace keeps serving exactly.
  options.index_factory = "IVF64,Flat";
  options.index_search_params = "";
  options.index_train_min = 10;
  auto bank = OpenOrDie(options);
  std::vector<Document> docs;
  for (int i = 0; i < 10; ++i) docs.push_back(MakeDoc("ns", absl::StrCat("doc-", i)));
  ASSERT_TRUE(bank->Put(docs).ok());
  EXPECT_TRUE(bank->VerifyIndexes().ok()) << bank->VerifyIndexes();
  auto hits = bank->Search(QueryFor(docs[4], 1, 1));
  ASSERT_TRUE(hits.ok());
  EXPECT_EQ((*hits)[0].doc_id, "doc-4");
}

TEST(MemoryBankTest, ConcurrentReadersAndOneWriter) {
  TempDir dir;
  auto bank = OpenOrDie(TestOptions(dir.path()));
  std::vector<Document> seed;
  for (int i = 0; i < 20; ++i) seed.push_back(MakeDoc("ns", absl::StrCat("seed-", i)));
  ASSERT_TRUE(bank->Put(seed).ok());
  std::atomic<bool> stop = false;
  std::atomic<int> errors = 0;
  std::vector<std::thread> readers;
  for (int t = 0; t < 3; ++t) {
    readers.emplace_back([&, t] {
      while (!stop) {
        auto hits = bank->Search(QueryFor(seed[t], 0, 5));
        if (!hits.ok() || hits->empty() || (*hits)[0].doc_id != seed[t].id) ++errors;
        std::vector<PassageId> ids;
        for (const SearchHit& h : *hits) ids.push_back(h.passage_id);
        auto latents = bank->GetLatents("ns", ids);
        // A hit may be forgotten between Search and GetLatents; nothing else may fail.
        if (!latents.ok() && latents.status().code() != absl::StatusCode::kNotFound) ++errors;
      }
    });
  }
  for (int i = 0; i < 40; ++i) {
    Document d = MakeDoc("ns", absl::StrCat("churn-", i % 5), i);
    ASSERT_TRUE(bank->Put({&d, 1}).ok());
    if (i % 7 == 0) {
      std::vector<std::string> ids = {absl::StrCat("churn-", i % 5)};
      ASSERT_TRUE(bank->Delete("ns", ids).ok());
    }
  }
  stop = true;
  for (auto& t : readers) t.join();
  EXPECT_EQ(errors, 0);
  EXPECT_TRUE(bank->VerifyIndexes().ok()) << bank->VerifyIndexes();
}

}  // namespace
}  // namespace knowd::storage
