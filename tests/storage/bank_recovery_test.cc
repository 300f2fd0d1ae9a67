// What happens across opens: saved vs rebuilt indexes (vector and lexical), corrupt index files,
// recorded layout and fingerprint, snapshots, and the resumable re-encode driver.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "storage/memory_bank.h"
#include "tests/storage/bank_test_util.h"

namespace knowd::storage {
namespace {

namespace fs = std::filesystem;
using ::knowd::storage::testing::MakeDoc;
using ::knowd::storage::testing::TempDir;
using ::knowd::storage::testing::TestOptions;
using ::testing::HasSubstr;

std::vector<Document> SomeDocs(const std::string& ns, int n, int version = 0) {
  std::vector<Document> docs;
  for (int i = 0; i < n; ++i) docs.push_back(MakeDoc(ns, absl::StrCat("doc-", i), version));
  return docs;
}

// Searches with each document's first key and expects it first.
void ExpectSearchable(MemoryBank& bank, const std::vector<Document>& docs) {
  for (const Document& doc : docs) {
    SearchRequest req{doc.name_space, doc.passages[0].key, 1};
    auto hits = bank.Search(req);
    ASSERT_TRUE(hits.ok()) << hits.status();
    ASSERT_EQ(hits->size(), 1u);
    EXPECT_EQ((*hits)[0].doc_id, doc.id);
  }
}

std::vector<fs::path> IndexFiles(const std::string& data_dir) {
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(fs::path(data_dir) / "index")) {
    if (e.path().extension() == ".faiss") files.push_back(e.path());
  }
  return files;
}

TEST(BankRecoveryTest, CleanCloseLoadsIndexesAndACrashImageRebuildsThem) {
  TempDir dir;
  BankOptions options = TestOptions(dir.Sub("bank"));
  std::vector<Document> docs = SomeDocs("a", 10);
  std::vector<Document> more = SomeDocs("b", 5);
  {
    auto bank = MemoryBank::Open(options);
    ASSERT_TRUE(bank.ok());
    ASSERT_TRUE((*bank)->Put(docs).ok());
    ASSERT_TRUE((*bank)->Close().ok());
  }
  {
    auto bank = MemoryBank::Open(options);
    ASSERT_TRUE(bank.ok());
    EXPECT_TRUE((*bank)->Stats()->indexes_loaded_from_disk)
        << (*bank)->Stats()->index_rebuild_reason;
    ExpectSearchable(**bank, docs);
    ASSERT_TRUE((*bank)->Put(more).ok());
    // Copying the directory of an open bank after an acknowledged write is what a crash leaves:
    // synced WAL, index files from the previous clean close.
    fs::copy(options.data_dir, dir.Sub("crashed"), fs::copy_options::recursive);
  }
  BankOptions crashed = TestOptions(dir.Sub("crashed"));
  auto bank = MemoryBank::Open(crashed);
  ASSERT_TRUE(bank.ok()) << bank.status();
  auto stats = (*bank)->Stats();
  EXPECT_FALSE(stats->indexes_loaded_from_disk);
  EXPECT_THAT(stats->index_rebuild_reason, HasSubstr("sequence number"));
  EXPECT_EQ(stats->documents, 15u);
  ExpectSearchable(**bank, docs);
  ExpectSearchable(**bank, more);
  EXPECT_TRUE((*bank)->VerifyIndexes().ok());
}

// A write-ahead log cut short loses the acknowledged writes in its tail; recovery must say so
// instead of opening quietly with fewer documents.
TEST(BankRecoveryTest, ATruncatedWriteAheadLogIsReported) {
  TempDir dir;
  BankOptions options = TestOptions(dir.Sub("bank"));
  {
    auto bank = MemoryBank::Open(options);
    ASSERT_TRUE(bank.ok());
    for (const Document& doc : SomeDocs("a", 40)) ASSERT_TRUE((*bank)->Put({&doc, 1}).ok());
    // What a crash leaves: the synced WAL of 40 acknowledged Puts.
    fs::copy(options.data_dir, dir.Sub("crashed"), fs::copy_options::recursive);
    fs::copy(options.data_dir, dir.Sub("intact"), fs::copy_options::recursive);
  }
  std::vector<fs::path> wals;
  for (const auto& entry : fs::directory_iterator(dir.Sub("crashed") + "/db")) {
    if (entry.path().extension() == ".log" && entry.file_size() > 0) wals.push_back(entry.path());
  }
  ASSERT_EQ(wals.size(), 1u);
  const uintmax_t size = fs::file_size(wals[0]);
  fs::resize_file(wals[0], size - size / 4);  // the last quarter of the acknowledged writes

  {
    auto intact = MemoryBank::Open(TestOptions(dir.Sub("intact")));
    ASSERT_TRUE(intact.ok()) << intact.status();
    EXPECT_EQ((*intact)->Stats()->recovery_warning, "");
    EXPECT_EQ((*intact)->Stats()->documents, 40u);
  }
  auto bank = MemoryBank::Open(TestOptions(dir.Sub("crashed")));
  ASSERT_TRUE(bank.ok()) << bank.status();
  auto stats = (*bank)->Stats();
  EXPECT_LT(stats->documents, 40u);
  EXPECT_GT(stats->documents, 20u);
  EXPECT_THAT(stats->recovery_warning, HasSubstr("the write-ahead log is damaged"));
  EXPECT_THAT(stats->recovery_warning, HasSubstr(wals[0].filename().string()));
  EXPECT_THAT(stats->recovery_warning, HasSubstr("are lost"));
  EXPECT_TRUE((*bank)->VerifyIndexes().ok());
}

TEST(BankRecoveryTest, CorruptOrMissingIndexFilesAreRebuilt) {
  TempDir dir;
  BankOptions options = TestOptions(dir.path());
  std::vector<Document> docs = SomeDocs("ns", 20);
  {
    auto bank = MemoryBank::Open(options);
    ASSERT_TRUE((*bank)->Put(docs).ok());
  }  // the destructor closes cleanly
  auto reopen_expecting_rebuild = [&](std::string_view reason) {
    auto bank = MemoryBank::Open(options);
    ASSERT_TRUE(bank.ok()) << bank.status();
    auto stats = (*bank)->Stats();
    EXPECT_FALSE(stats->indexes_loaded_from_disk);
    EXPECT_THAT(stats->index_rebuild_reason, HasSubstr(reason));
    ExpectSearchable(**bank, docs);
    EXPECT_TRUE((*bank)->VerifyIndexes().ok());
  };
  // Flip one byte in the middle of the FAISS file.
  std::vector<fs::path> files = IndexFiles(options.data_dir);
  ASSERT_EQ(files.size(), 1u);
  {
    std::fstream f(files[0], std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(fs::file_size(files[0]) / 2));
    f.put('\x5a');
  }
  reopen_expecting_rebuild("corrupt");
  // Truncate it.
  files = IndexFiles(options.data_dir);
  fs::resize_file(files[0], fs::file_size(files[0]) / 3);
  reopen_expecting_rebuild("corrupt");
  // Garbage manifest.
  std::ofstream(fs::path(options.data_dir) / "index" / "MANIFEST") << "{not json";
  reopen_expecting_rebuild("unreadable");
  // No index directory at all.
  fs::remove_all(fs::path(options.data_dir) / "index");
  reopen_expecting_rebuild("no index manifest");
  // A changed factory string is a reason too.
  options.index_factory = "HNSW8";
  reopen_expecting_rebuild("configuration changed");
}

TEST(BankRecoveryTest, ChangedSearchParametersLoadTheSavedIndex) {
  TempDir dir;
  BankOptions options = TestOptions(dir.path());
  options.index_factory = "HNSW8";
  options.index_search_params = "efSearch=32";
  std::vector<Document> docs = SomeDocs("ns", 20);
  {
    auto bank = MemoryBank::Open(options);
    ASSERT_TRUE(bank.ok()) << bank.status();
    ASSERT_TRUE((*bank)->Put(docs).ok());
  }
  // efSearch is a search-time setting: the saved HNSW graph serves with the new value.
  options.index_search_params = "efSearch=8";
  {
    auto bank = MemoryBank::Open(options);
    ASSERT_TRUE(bank.ok()) << bank.status();
    auto stats = (*bank)->Stats();
    EXPECT_TRUE(stats->indexes_loaded_from_disk) << stats->index_rebuild_reason;
    ExpectSearchable(**bank, docs);
    EXPECT_TRUE((*bank)->VerifyIndexes().ok());
  }
  // A setting the index does not have is refused at open, naming it.
  options.index_search_params = "nprobe=4";
  auto refused = MemoryBank::Open(options);
  ASSERT_FALSE(refused.ok());
  EXPECT_THAT(refused.status().message(), HasSubstr("nprobe"));
}

TEST(BankRecoveryTest, LayoutAndFingerprintMismatchesAreRefused) {
  TempDir dir;
  BankOptions options = TestOptions(dir.path());
  options.fingerprint = {"adapter-aaa", "base-111"};
  ASSERT_TRUE(MemoryBank::Open(options).ok());

  BankOptions other_dim = options;
  other_dim.key_dim = 32;
  auto refused = MemoryBank::Open(other_dim);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(refused.status().message(), HasSubstr("key_dim 16"));

  BankOptions other_adapter = options;
  other_adapter.fingerprint = {"adapter-bbb", "base-111"};
  refused = MemoryBank::Open(other_adapter);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(refused.status().message(), HasSubstr("adapter 'adapter-aaa'"));
  EXPECT_THAT(refused.status().message(), HasSubstr("adapter 'adapter-bbb'"));
  EXPECT_THAT(refused.status().message(), HasSubstr("knowd reencode --data-dir"));

  BankOptions tool = options;
  tool.fingerprint = {};  // a tool that does not encode may open any bank
  auto bank = MemoryBank::Open(tool);
  ASSERT_TRUE(bank.ok());
  EXPECT_EQ((*bank)->Stats()->fingerprint, options.fingerprint);
  // Only one process (or bank object) may hold the directory.
  auto second = MemoryBank::Open(tool);
  EXPECT_EQ(second.status().code(), absl::StatusCode::kUnavailable) << second.status();
  bank->reset();

  BankOptions missing = TestOptions(dir.Sub("nowhere"));
  missing.create_if_missing = false;
  EXPECT_EQ(MemoryBank::Open(missing).status().code(), absl::StatusCode::kNotFound);
}

TEST(BankRecoveryTest, SnapshotRestoresTheStateAtSnapshotTime) {
  TempDir dir;
  BankOptions options = TestOptions(dir.Sub("bank"));
  std::vector<Document> docs = SomeDocs("ns", 12);
  auto bank = MemoryBank::Open(options);
  ASSERT_TRUE(bank.ok());
  ASSERT_TRUE((*bank)->Put(docs).ok());
  ASSERT_TRUE((*bank)->Snapshot(dir.Sub("snap")).ok());
  EXPECT_EQ((*bank)->Snapshot(dir.Sub("snap")).code(), absl::StatusCode::kAlreadyExists);
  // Changes after the snapshot must not appear in the restored bank.
  std::vector<std::string> forget = {"doc-0", "doc-1"};
  ASSERT_EQ(*(*bank)->Delete("ns", forget), 2);
  Document late = MakeDoc("ns", "late");
  ASSERT_TRUE((*bank)->Put({&late, 1}).ok());

  ASSERT_TRUE(MemoryBank::RestoreSnapshot(dir.Sub("snap"), dir.Sub("restored")).ok());
  EXPECT_EQ(MemoryBank::RestoreSnapshot(dir.Sub("snap"), dir.Sub("restored")).code(),
            absl::StatusCode::kAlreadyExists);
  auto restored = MemoryBank::Open(TestOptions(dir.Sub("restored")));
  ASSERT_TRUE(restored.ok()) << restored.status();
  auto stats = (*restored)->Stats();
  EXPECT_TRUE(stats->indexes_loaded_from_disk) << stats->index_rebuild_reason;
  EXPECT_EQ(stats->documents, 12u);
  EXPECT_TRUE((*restored)->Get("ns", "doc-0").ok());
  EXPECT_EQ((*restored)->Get("ns", "late").status().code(), absl::StatusCode::kNotFound);
  ExpectSearchable(**restored, docs);
  EXPECT_TRUE((*restored)->VerifyIndexes().ok());
  // The live bank is unaffected by the restore.
  EXPECT_EQ((*bank)->Get("ns", "doc-0").status().code(), absl::StatusCode::kNotFound);
}

// A synthetic "new adapter": keys and latents derived from the passage text.
PassageEncoder TextEncoder(int* calls, int* passages, int fail_after_calls) {
  return [=](std::span<const std::string_view> texts, std::vector<EncodedPassage>* out) {
    if (fail_after_calls >= 0 && *calls >= fail_after_calls) {
      return absl::UnavailableError("encoder interrupted");
    }
    ++*calls;
    *passages += static_cast<int>(texts.size());
    for (std::string_view text : texts) {
      const uint64_t seed = std::hash<std::string_view>()(text);
      out->push_back({testing::SyntheticLatents(seed), testing::SyntheticKey(seed)});
    }
    return absl::OkStatus();
  };
}

TEST(BankRecoveryTest, ReencodeIsResumableAndSwitchesTheFingerprint) {
  TempDir dir;
  BankOptions old_adapter = TestOptions(dir.path());
  old_adapter.fingerprint = {"old", "base"};
  std::vector<Document> docs = SomeDocs("ns", 20);  // 40 passages
  {
    auto bank = MemoryBank::Open(old_adapter);
    ASSERT_TRUE((*bank)->Put(docs).ok());
  }
  BankOptions new_adapter = old_adapter;
  new_adapter.fingerprint = {"new", "base"};
  new_adapter.open_for_reencode = true;
  int calls = 0, encoded = 0;
  {
    auto bank = MemoryBank::Open(new_adapter);
    ASSERT_TRUE(bank.ok()) << bank.status();
    EXPECT_TRUE((*bank)->Stats()->needs_reencode);
    Document d = MakeDoc("ns", "new");
    EXPECT_EQ((*bank)->Put({&d, 1}).status().code(), absl::StatusCode::kFailedPrecondition);
    SearchRequest req{"ns", docs[0].passages[0].key, 1};
    EXPECT_EQ((*bank)->Search(req).status().code(), absl::StatusCode::kFailedPrecondition);
    // Interrupted after 2 batches of 8.
    absl::Status s = (*bank)->Reencode(TextEncoder(&calls, &encoded, 2), nullptr, 8);
    EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable);
    EXPECT_EQ(encoded, 16);
  }
  // Interrupted: even the target adapter may not use it without finishing the re-encode.
  BankOptions plain = new_adapter;
  plain.open_for_reencode = false;
  auto refused = MemoryBank::Open(plain);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(refused.status().message(), HasSubstr("interrupted re-encode"));
  {
    auto bank = MemoryBank::Open(new_adapter);
    ASSERT_TRUE(bank.ok());
    std::vector<std::pair<uint64_t, uint64_t>> progress;
    absl::Status s = (*bank)->Reencode(
        TextEncoder(&calls, &encoded, -1),
        [&](uint64_t done, uint64_t total) {
          progress.push_back({done, total});
        },
        8);
    ASSERT_TRUE(s.ok()) << s;
    EXPECT_EQ(encoded, 40);  // the resumed run encoded only the remaining 24 passages
    ASSERT_FALSE(progress.empty());
    EXPECT_EQ(progress.back(), std::make_pair(uint64_t{40}, uint64_t{40}));
    EXPECT_FALSE((*bank)->Stats()->needs_reencode);
    EXPECT_TRUE((*bank)->VerifyIndexes().ok());
  }
  auto bank = MemoryBank::Open(plain);
  ASSERT_TRUE(bank.ok()) << bank.status();
  EXPECT_EQ((*bank)->Stats()->fingerprint, plain.fingerprint);
  // Every passage now carries the new encoding of its own text.
  for (const Document& doc : docs) {
    auto got = (*bank)->Get("ns", doc.id, /*with_latents=*/true);
    ASSERT_TRUE(got.ok());
    for (const Passage& p : got->passages) {
      const uint64_t seed = std::hash<std::string_view>()(p.text);
      EXPECT_EQ(p.key, testing::SyntheticKey(seed));
      EXPECT_NEAR(p.latents[3], testing::SyntheticLatents(seed)[3], 2e-3);
    }
    const uint64_t seed = std::hash<std::string_view>()(doc.passages[1].text);
    SearchRequest req{"ns", testing::SyntheticKey(seed), 1};
    auto hits = (*bank)->Search(req);
    ASSERT_TRUE(hits.ok());
    EXPECT_EQ((*hits)[0].doc_id, doc.id);
    EXPECT_EQ((*hits)[0].passage_index, 1);
  }
}

// ---- The lexical index (one Xapian database per namespace under DIR/lexical) -------------------

// A namespace name of 150 bytes, some of them not UTF-8 and one a path separator: its directory
// is cut into two components.
const std::string& LongNamespace() {
  static const std::string name = [] {
    std::string n = "long/\xff\x01";
    while (n.size() < 150) n += 'x';
    return n;
  }();
  return name;
}

// NamesFixture() in "ns" and, in LongNamespace(), five documents about the aurora.
std::vector<Document> LexicalDocs() {
  std::vector<Document> docs = testing::NamesFixture();
  for (int i = 0; i < 5; ++i) {
    docs.push_back(MakeDoc(LongNamespace(), absl::StrCat("sky-", i), 0, 1));
    docs.back().passages[0].text = absl::StrCat("The aurora was seen over Town", i, " tonight");
  }
  docs.back().passages[0].text = "Penguins live in Antarctica";
  return docs;
}

std::string Float(float v) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.9g", v);
  return buf;
}

// Everything hybrid searches with LexicalTerms answer for `queries` in `ns` (dense key: `key`),
// written out: hits with scores, BM25 weights and matched terms, and the query's terms.
std::string LexicalAnswers(MemoryBank& bank, const std::string& ns, const std::vector<float>& key,
                           const std::vector<std::string>& queries) {
  std::string out;
  for (const std::string& q : queries) {
    SearchRequest req{ns, key, 10};
    req.hybrid = true;
    req.query_text = q;
    LexicalTerms terms;
    auto hits = bank.Search(req, &terms);
    if (!hits.ok()) return hits.status().ToString();
    absl::StrAppend(&out, q, ": ", terms.passages, " passages; terms");
    for (const QueryTerm& t : terms.query) {
      absl::StrAppend(&out, " ", t.term, t.exact ? "!" : "", "/", t.passages);
    }
    absl::StrAppend(&out, "; best");
    for (const QueryTerm& t : terms.best_match) absl::StrAppend(&out, " ", t.term);
    for (const SearchHit& h : *hits) {
      absl::StrAppend(&out, "\n  ", h.doc_id, "#", h.passage_index, " ", Float(h.score), " bm25 ",
                      h.lexical_score.has_value() ? Float(*h.lexical_score) : "-", " [");
      for (const std::string& t : h.matched_terms) absl::StrAppend(&out, " ", t);
      absl::StrAppend(&out, " ]");
    }
    absl::StrAppend(&out, "\n");
  }
  return out;
}

const std::vector<std::string> kNamesQueries = {"What city is Velka Keslemul's home?", "Celxi",
                                                "who lives in Pemoos", "Town3"};
const std::vector<std::string> kSkyQueries = {"aurora", "penguins in Antarctica", "Town2"};

// Both namespaces' answers, as LexicalAnswers() writes them.
std::string AllAnswers(MemoryBank& bank, const std::vector<Document>& docs) {
  return LexicalAnswers(bank, "ns", docs[0].passages[0].key, kNamesQueries) +
         LexicalAnswers(bank, LongNamespace(), docs.back().passages[0].key, kSkyQueries);
}

// The BM25 weight the search for `query` in "ns" gives `doc_id` (-1: not a lexical hit).
float Bm25Of(MemoryBank& bank, const std::vector<Document>& docs, const std::string& query,
             const std::string& doc_id) {
  SearchRequest req{"ns", docs[0].passages[0].key, 30};
  req.hybrid = true;
  req.query_text = query;
  auto hits = bank.Search(req);
  EXPECT_TRUE(hits.ok()) << hits.status();
  if (!hits.ok()) return -1;
  for (const SearchHit& h : *hits) {
    if (h.doc_id == doc_id && h.lexical_score.has_value()) return *h.lexical_score;
  }
  return -1;
}

TEST(BankRecoveryTest, CleanCloseLoadsTheLexicalIndexWithTheSameAnswers) {
  TempDir dir;
  BankOptions options = TestOptions(dir.Sub("bank"));
  const std::vector<Document> docs = LexicalDocs();
  std::string before;
  float velka_weight = 0;
  {
    auto bank = MemoryBank::Open(options);
    ASSERT_TRUE(bank.ok()) << bank.status();
    ASSERT_TRUE((*bank)->Put(docs).ok());
    before = AllAnswers(**bank, docs);
    velka_weight = Bm25Of(**bank, docs, "Velka Keslemul", "velka");
    ASSERT_TRUE((*bank)->Close().ok());
  }
  EXPECT_GT(velka_weight, 0.0f);
  // One directory per namespace, named by the name's hex; the long name's in two components.
  const fs::path lexical = fs::path(options.data_dir) / "lexical";
  EXPECT_TRUE(fs::exists(lexical / "6e73" / "iamglass"));
  const std::string hex = absl::BytesToHexString(LongNamespace());
  ASSERT_EQ(hex.size(), 300u);
  EXPECT_TRUE(fs::exists(lexical / (hex.substr(0, 200) + "+") / hex.substr(200) / "iamglass"));

  auto bank = MemoryBank::Open(options);
  ASSERT_TRUE(bank.ok()) << bank.status();
  auto stats = (*bank)->Stats();
  EXPECT_TRUE(stats->lexical_loaded_from_disk) << stats->lexical_rebuild_reason;
  EXPECT_EQ(stats->lexical_rebuild_reason, "");
  EXPECT_TRUE(stats->indexes_loaded_from_disk) << stats->index_rebuild_reason;
  EXPECT_EQ(AllAnswers(**bank, docs), before);
  EXPECT_EQ(Bm25Of(**bank, docs, "Velka Keslemul", "velka"), velka_weight);
  // Real answers, not two empty ones: the fixture's counts.
  SearchRequest req{"ns", docs[0].passages[0].key, 10};
  req.hybrid = true;
  req.query_text = kNamesQueries[0];
  LexicalTerms terms;
  auto hits = (*bank)->Search(req, &terms);
  ASSERT_TRUE(hits.ok()) << hits.status();
  EXPECT_EQ(terms.passages, 23u);
  std::map<std::string, uint64_t> passages;
  for (const QueryTerm& t : terms.query) passages[t.term] = t.passages;
  EXPECT_EQ(passages[QueryTermsOfWord("velka")[0]], 2u);
  EXPECT_EQ(passages[QueryTermsOfWord("home")[1]], 12u);
  EXPECT_THAT(before, HasSubstr("aurora: 5 passages; terms Zaurora/4"));
  EXPECT_TRUE((*bank)->VerifyIndexes().ok()) << (*bank)->VerifyIndexes();

  // The loaded index takes writes, and the next clean close saves them.
  Document moved = MakeDoc("ns", "moved", 0, 1);
  moved.passages[0].text = "Stoul Sasen has moved to Pemoos.";
  ASSERT_TRUE((*bank)->Put({&moved, 1}).ok());
  EXPECT_GT(Bm25Of(**bank, docs, "Sasen Pemoos", "moved"), 0.0f);
  const std::string after_put = AllAnswers(**bank, docs);
  ASSERT_TRUE((*bank)->Close().ok());
  auto again = MemoryBank::Open(options);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_TRUE((*again)->Stats()->lexical_loaded_from_disk)
      << (*again)->Stats()->lexical_rebuild_reason;
  EXPECT_EQ(AllAnswers(**again, docs), after_put);
  EXPECT_GT(Bm25Of(**again, docs, "Sasen Pemoos", "moved"), 0.0f);
  EXPECT_TRUE((*again)->VerifyIndexes().ok()) << (*again)->VerifyIndexes();
}

// A bank that did not close (its directory copied while open, as a crash leaves it) rebuilds
// the lexical index from RocksDB and answers as the bank did.
TEST(BankRecoveryTest, ALexicalIndexNotClosedCleanlyIsRebuiltWithTheSameAnswers) {
  TempDir dir;
  BankOptions options = TestOptions(dir.Sub("bank"));
  std::vector<Document> docs = LexicalDocs();
  const std::vector<Document> later(docs.begin() + 20, docs.end());
  docs.erase(docs.begin() + 20, docs.end());
  {
    auto bank = MemoryBank::Open(options);
    ASSERT_TRUE(bank.ok()) << bank.status();
    ASSERT_TRUE((*bank)->Put(docs).ok());
  }  // closed cleanly
  docs.insert(docs.end(), later.begin(), later.end());
  std::string crashed_answers;
  {
    auto bank = MemoryBank::Open(options);
    ASSERT_TRUE(bank.ok()) << bank.status();
    EXPECT_TRUE((*bank)->Stats()->lexical_loaded_from_disk);
    ASSERT_TRUE((*bank)->Put(later).ok());
    crashed_answers = AllAnswers(**bank, docs);
    fs::copy(options.data_dir, dir.Sub("crashed"), fs::copy_options::recursive);
  }
  auto bank = MemoryBank::Open(TestOptions(dir.Sub("crashed")));
  ASSERT_TRUE(bank.ok()) << bank.status();
  auto stats = (*bank)->Stats();
  EXPECT_FALSE(stats->lexical_loaded_from_disk);
  // The first namespace in name order: new since the last close, so never committed with one.
  EXPECT_THAT(stats->lexical_rebuild_reason, HasSubstr("namespace 'long/\\xff\\x01xxx"));
  EXPECT_THAT(stats->lexical_rebuild_reason, HasSubstr("records no sequence number"));
  EXPECT_EQ(AllAnswers(**bank, docs), crashed_answers);
  EXPECT_THAT(crashed_answers, HasSubstr("Celxi: 23 passages; terms celxi!/3"));
  EXPECT_TRUE((*bank)->VerifyIndexes().ok()) << (*bank)->VerifyIndexes();
  ASSERT_TRUE((*bank)->Close().ok());
  // Rebuilt, then closed cleanly: loaded next time.
  auto again = MemoryBank::Open(TestOptions(dir.Sub("crashed")));
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_TRUE((*again)->Stats()->lexical_loaded_from_disk)
      << (*again)->Stats()->lexical_rebuild_reason;
  EXPECT_EQ(AllAnswers(**again, docs), crashed_answers);
}

// Xapian commits on its own after so many changes (XAPIAN_FLUSH_THRESHOLD, 10,000 by default);
// such a commit records no sequence number, so a crash after it still rebuilds.
TEST(BankRecoveryTest, XapiansOwnCommitsRecordNoSequenceNumber) {
  TempDir dir;
  BankOptions options = TestOptions(dir.Sub("bank"));
  const std::vector<Document> docs = testing::NamesFixture();  // "ns" only
  {
    auto bank = MemoryBank::Open(options);
    ASSERT_TRUE(bank.ok()) << bank.status();
    ASSERT_TRUE((*bank)->Put(docs).ok());
  }
  ::setenv("XAPIAN_FLUSH_THRESHOLD", "2", 1);
  std::string answers;
  {
    auto bank = MemoryBank::Open(options);
    ::unsetenv("XAPIAN_FLUSH_THRESHOLD");
    ASSERT_TRUE(bank.ok()) << bank.status();
    EXPECT_TRUE((*bank)->Stats()->lexical_loaded_from_disk);
    const std::vector<std::string> gone = {"velka"};
    ASSERT_EQ(*(*bank)->Delete("ns", gone), 1);
    for (int i = 0; i < 4; ++i) {
      Document d = MakeDoc("ns", absl::StrCat("extra-", i), 0, 1);
      d.passages[0].text = absl::StrCat("Velka visited Town", i);
      ASSERT_TRUE((*bank)->Put({&d, 1}).ok());
    }
    answers = LexicalAnswers(**bank, "ns", docs[0].passages[0].key, kNamesQueries);
    fs::copy(options.data_dir, dir.Sub("crashed"), fs::copy_options::recursive);
  }
  auto bank = MemoryBank::Open(TestOptions(dir.Sub("crashed")));
  ASSERT_TRUE(bank.ok()) << bank.status();
  EXPECT_FALSE((*bank)->Stats()->lexical_loaded_from_disk);
  EXPECT_THAT((*bank)->Stats()->lexical_rebuild_reason, HasSubstr("records no sequence number"));
  EXPECT_EQ(LexicalAnswers(**bank, "ns", docs[0].passages[0].key, kNamesQueries), answers);
  EXPECT_THAT(answers, HasSubstr("velka!/5"));  // velka-update and the four extras
  EXPECT_TRUE((*bank)->VerifyIndexes().ok()) << (*bank)->VerifyIndexes();
}

// A missing or damaged saved database is rebuilt; directories of namespaces the bank does not
// hold are removed at open.
TEST(BankRecoveryTest, AMissingLexicalDatabaseIsRebuiltAndStrayOnesRemoved) {
  TempDir dir;
  BankOptions options = TestOptions(dir.Sub("bank"));
  const std::vector<Document> docs = LexicalDocs();
  std::string before;
  {
    auto bank = MemoryBank::Open(options);
    ASSERT_TRUE(bank.ok()) << bank.status();
    ASSERT_TRUE((*bank)->Put(docs).ok());
    before = AllAnswers(**bank, docs);
  }
  const fs::path lexical = fs::path(options.data_dir) / "lexical";
  fs::remove(lexical / "6e73" / "iamglass");
  fs::create_directories(lexical / "7a7a");  // "zz", which the bank does not hold
  fs::create_directories(lexical / "6e73.new");
  {
    auto bank = MemoryBank::Open(options);
    ASSERT_TRUE(bank.ok()) << bank.status();
    auto stats = (*bank)->Stats();
    EXPECT_FALSE(stats->lexical_loaded_from_disk);
    EXPECT_EQ(stats->lexical_rebuild_reason, "namespace 'ns': no saved lexical index");
    EXPECT_TRUE(stats->indexes_loaded_from_disk);  // the vector files are fine
    EXPECT_EQ(AllAnswers(**bank, docs), before);
    EXPECT_FALSE(fs::exists(lexical / "7a7a"));
    EXPECT_FALSE(fs::exists(lexical / "6e73.new"));
    EXPECT_TRUE(fs::exists(lexical / "6e73" / "iamglass"));
  }
  // Off, the bank neither reads nor writes the lexical directory (here: a new bank makes none).
  BankOptions off = TestOptions(dir.Sub("off"));
  off.lexical_index = false;
  {
    auto bank = MemoryBank::Open(off);
    ASSERT_TRUE(bank.ok()) << bank.status();
    ASSERT_TRUE((*bank)->Put(docs).ok());
    EXPECT_FALSE((*bank)->Stats()->lexical_loaded_from_disk);
    EXPECT_EQ((*bank)->Stats()->lexical_rebuild_reason, "");
  }
  EXPECT_FALSE(fs::exists(fs::path(off.data_dir) / "lexical"));
  off.lexical_index = true;  // turned on later: built from the passages
  auto bank = MemoryBank::Open(off);
  ASSERT_TRUE(bank.ok()) << bank.status();
  EXPECT_FALSE((*bank)->Stats()->lexical_loaded_from_disk);
  EXPECT_EQ(AllAnswers(**bank, docs), before);
}

// Forgetting reaches the saved lexical index: after a reopen the forgotten passage matches
// nothing, with or without purge, and a namespace left empty loses its directory.
TEST(BankRecoveryTest, ForgottenPassagesStayOutOfTheLexicalIndexAfterAReopen) {
  TempDir dir;
  BankOptions options = TestOptions(dir.Sub("bank"));
  const std::vector<Document> docs = LexicalDocs();
  const fs::path lexical = fs::path(options.data_dir) / "lexical";
  const std::string long_hex = absl::BytesToHexString(LongNamespace());
  const fs::path long_dir = lexical / (long_hex.substr(0, 200) + "+") / long_hex.substr(200);
  // How many files of the lexical index hold `bytes`.
  auto files_holding = [&](const std::string& bytes) {
    int n = 0;
    for (const auto& entry : fs::recursive_directory_iterator(lexical)) {
      if (!entry.is_regular_file()) continue;
      std::ifstream in(entry.path(), std::ios::binary);
      std::string all((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
      n += all.find(bytes) != std::string::npos ? 1 : 0;
    }
    return n;
  };
  {
    auto bank = MemoryBank::Open(options);
    ASSERT_TRUE(bank.ok()) << bank.status();
    ASSERT_TRUE((*bank)->Put(docs).ok());
  }
  ASSERT_GT(files_holding("sasen"), 0);  // stoul's surname, committed at close
  {
    auto bank = MemoryBank::Open(options);
    ASSERT_TRUE(bank.ok()) << bank.status();
    EXPECT_GT(Bm25Of(**bank, docs, "Pemoos", "velka-update"), 0.0f);
    EXPECT_GT(Bm25Of(**bank, docs, "Sasen", "stoul"), 0.0f);
    const std::vector<std::string> update = {"velka-update"};
    ASSERT_EQ(*(*bank)->Delete("ns", update), 1);
    const std::vector<std::string> stoul = {"stoul"};
    ASSERT_EQ(*(*bank)->Delete("ns", stoul, /*purge=*/true), 1);
    EXPECT_EQ(Bm25Of(**bank, docs, "Pemoos", "velka-update"), -1.0f);
    EXPECT_EQ(Bm25Of(**bank, docs, "Sasen", "stoul"), -1.0f);
    EXPECT_TRUE((*bank)->VerifyIndexes().ok()) << (*bank)->VerifyIndexes();
    std::vector<std::string> sky;
    for (int i = 0; i < 5; ++i) sky.push_back(absl::StrCat("sky-", i));
    ASSERT_TRUE(fs::exists(long_dir));
    ASSERT_EQ(*(*bank)->Delete(LongNamespace(), sky), 5);
    EXPECT_FALSE(fs::exists(long_dir));
  }
  // Purged: no file of the lexical index holds the passage's rare term any more.
  EXPECT_EQ(files_holding("sasen"), 0);
  auto bank = MemoryBank::Open(options);
  ASSERT_TRUE(bank.ok()) << bank.status();
  EXPECT_TRUE((*bank)->Stats()->lexical_loaded_from_disk)
      << (*bank)->Stats()->lexical_rebuild_reason;
  EXPECT_EQ(Bm25Of(**bank, docs, "Pemoos", "velka-update"), -1.0f);
  EXPECT_EQ(Bm25Of(**bank, docs, "Sasen", "stoul"), -1.0f);
  EXPECT_GT(Bm25Of(**bank, docs, "Velka Celxi", "velka"), 0.0f);
  SearchRequest req{"ns", docs[0].passages[0].key, 10};
  req.hybrid = true;
  req.query_text = "Pemoos";
  LexicalTerms terms;
  ASSERT_TRUE((*bank)->Search(req, &terms).ok());
  EXPECT_EQ(terms.passages, 21u);
  ASSERT_EQ(terms.query.size(), 1u);
  EXPECT_EQ(terms.query[0].passages, 0u);
  EXPECT_FALSE(fs::exists(long_dir));
  EXPECT_TRUE((*bank)->VerifyIndexes().ok()) << (*bank)->VerifyIndexes();
}

// A snapshot carries no lexical index: the restored bank builds it and answers the same.
TEST(BankRecoveryTest, ARestoredSnapshotRebuildsTheLexicalIndexWithTheSameAnswers) {
  TempDir dir;
  BankOptions options = TestOptions(dir.Sub("bank"));
  const std::vector<Document> docs = LexicalDocs();
  std::string at_snapshot;
  {
    auto bank = MemoryBank::Open(options);
    ASSERT_TRUE(bank.ok()) << bank.status();
    ASSERT_TRUE((*bank)->Put(docs).ok());
    at_snapshot = AllAnswers(**bank, docs);
    ASSERT_TRUE((*bank)->Snapshot(dir.Sub("snap")).ok());
    const std::vector<std::string> gone = {"velka"};
    ASSERT_EQ(*(*bank)->Delete("ns", gone), 1);  // after the snapshot: not in it
  }
  EXPECT_FALSE(fs::exists(dir.Sub("snap") + "/lexical"));
  ASSERT_TRUE(MemoryBank::RestoreSnapshot(dir.Sub("snap"), dir.Sub("restored")).ok());
  auto bank = MemoryBank::Open(TestOptions(dir.Sub("restored")));
  ASSERT_TRUE(bank.ok()) << bank.status();
  EXPECT_FALSE((*bank)->Stats()->lexical_loaded_from_disk);
  EXPECT_THAT((*bank)->Stats()->lexical_rebuild_reason, HasSubstr("no saved lexical index"));
  EXPECT_EQ(AllAnswers(**bank, docs), at_snapshot);
  EXPECT_GT(Bm25Of(**bank, docs, "Velka Keslemul", "velka"), 0.0f);
  EXPECT_TRUE((*bank)->VerifyIndexes().ok()) << (*bank)->VerifyIndexes();
}

}  // namespace
}  // namespace knowd::storage
