// What happens across opens: saved vs rebuilt indexes, corrupt index files, recorded layout and
// fingerprint, snapshots, and the resumable re-encode driver.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

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

}  // namespace
}  // namespace knowd::storage
