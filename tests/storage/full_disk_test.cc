// A full disk: the bank's writes go through a FaultFileSystem (fault_fs.h) whose writes fail
// with NoSpace (ENOSPC) once a byte budget is spent, after writing what still fitted, as
// write(2) does on a full disk. A Put that hits it fails with RESOURCE_EXHAUSTED naming the data
// directory; nothing acknowledged is lost; the bank stays readable; once space returns, writes
// succeed again without reopening the bank. An index save that hits it (Close) fails cleanly and
// the next open rebuilds the index from the database.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "storage/memory_bank.h"
#include "tests/storage/bank_test_util.h"
#include "tests/storage/fault_fs.h"

namespace knowd::storage {
namespace {

using ::knowd::storage::testing::FaultFileSystem;
using ::knowd::storage::testing::MakeDoc;
using ::knowd::storage::testing::TempDir;
using ::knowd::storage::testing::TestOptions;
using ::testing::HasSubstr;

std::vector<Document> One(Document doc) {
  std::vector<Document> batch;
  batch.push_back(std::move(doc));
  return batch;
}

using Expected = std::map<std::string, int>;  // id -> version of every document that must exist

void ExpectBankHolds(MemoryBank& bank, const Expected& expected,
                     const std::vector<std::string>& absent) {
  for (const auto& [id, version] : expected) {
    auto doc = bank.Get("disk", id, /*with_latents=*/true);
    ASSERT_TRUE(doc.ok()) << id << ": " << doc.status();
    const Document want = MakeDoc("disk", id, version);
    EXPECT_EQ(doc->text, want.text);
    ASSERT_EQ(doc->passages.size(), want.passages.size());
    for (size_t p = 0; p < want.passages.size(); ++p) {
      EXPECT_EQ(doc->passages[p].text, want.passages[p].text);
      EXPECT_EQ(doc->passages[p].key, want.passages[p].key);
      ASSERT_EQ(doc->passages[p].latents.size(), want.passages[p].latents.size());
      for (size_t i = 0; i < want.passages[p].latents.size(); ++i) {
        EXPECT_NEAR(doc->passages[p].latents[i], want.passages[p].latents[i], 2e-3f);
      }
    }
    // The dense index serves it: its own key finds it first.
    auto hits = bank.Search(SearchRequest{"disk", want.passages[0].key, 1});
    ASSERT_TRUE(hits.ok()) << hits.status();
    ASSERT_EQ(hits->size(), 1u);
    EXPECT_EQ((*hits)[0].doc_id, id);
  }
  for (const std::string& id : absent) {
    EXPECT_EQ(bank.Get("disk", id).status().code(), absl::StatusCode::kNotFound) << id;
  }
  auto stats = bank.Stats();
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ(stats->documents, expected.size());
  EXPECT_TRUE(bank.VerifyIndexes().ok()) << bank.VerifyIndexes();
}

TEST(FullDiskTest, WritesFailCleanlyNothingIsLostAndWritesResumeWhenSpaceReturns) {
  TempDir dir;
  auto disk = std::make_shared<FaultFileSystem>();
  BankOptions options = TestOptions(dir.Sub("bank"));
  options.env = FaultFileSystem::EnvFor(disk);
  auto opened = MemoryBank::Open(options);
  ASSERT_TRUE(opened.ok()) << opened.status();
  MemoryBank& bank = **opened;

  Expected expected;
  std::vector<std::string> absent;
  for (int i = 0; i < 20; ++i) {
    const std::string id = absl::StrCat("doc-", i);
    ASSERT_TRUE(bank.Put(One(MakeDoc("disk", id))).ok());
    expected[id] = 0;
  }
  const std::vector<std::string> forget = {"doc-3", "doc-7"};
  ASSERT_EQ(*bank.Delete("disk", forget), 2);
  for (const std::string& id : forget) {
    expected.erase(id);
    absent.push_back(id);
  }

  // The disk fills up: a few more Puts fit, then one is cut off mid-record.
  disk->SetBudget(4000);
  absl::Status full;
  int fitted = 0;
  for (int i = 0; i < 100 && full.ok(); ++i) {
    const std::string id = absl::StrCat("late-", i);
    auto acks = bank.Put(One(MakeDoc("disk", id)));
    if (acks.ok()) {
      expected[id] = 0;
      ++fitted;
    } else {
      full = acks.status();
      absent.push_back(id);
    }
  }
  ASSERT_FALSE(full.ok()) << "the disk never filled up";
  EXPECT_GT(fitted, 0);
  EXPECT_GT(disk->failed_writes(), 0);
  EXPECT_EQ(full.code(), absl::StatusCode::kResourceExhausted) << full;
  EXPECT_THAT(full.message(), HasSubstr(options.data_dir));
  EXPECT_THAT(full.message(), HasSubstr("is full"));

  // While the disk is full: writes keep failing the same way (an upsert of an acknowledged
  // document and a Delete change nothing), reads serve everything acknowledged.
  auto upsert = bank.Put(One(MakeDoc("disk", "doc-0", 1)));
  EXPECT_EQ(upsert.status().code(), absl::StatusCode::kResourceExhausted) << upsert.status();
  auto removed = bank.Delete("disk", std::vector<std::string>{"doc-1"});
  EXPECT_EQ(removed.status().code(), absl::StatusCode::kResourceExhausted) << removed.status();
  ExpectBankHolds(bank, expected, absent);

  // Space returns: the same bank writes again, no reopen. RocksDB may still be inside its own
  // recovery attempt (it retries every few seconds); until then a Put fails as before.
  disk->SetBudget(FaultFileSystem::kUnlimited);
  absl::Status resumed = absl::UnknownError("not tried");
  int refused_after_space_returned = 0;
  for (int attempt = 0; attempt < 300 && !resumed.ok(); ++attempt) {
    resumed = bank.Put(One(MakeDoc("disk", "after-0"))).status();
    if (!resumed.ok()) {
      EXPECT_EQ(resumed.code(), absl::StatusCode::kResourceExhausted) << resumed;
      ++refused_after_space_returned;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
  }
  ASSERT_TRUE(resumed.ok()) << resumed;
  std::printf(
      "full disk: %d Puts fitted, the first refusal: %s; %d Puts refused after space "
      "returned\n",
      fitted, std::string(full.message()).c_str(), refused_after_space_returned);
  expected["after-0"] = 0;
  ASSERT_TRUE(bank.Put(One(MakeDoc("disk", "doc-0", 1))).ok());
  expected["doc-0"] = 1;
  ASSERT_EQ(*bank.Delete("disk", std::vector<std::string>{"doc-1"}), 1);
  expected.erase("doc-1");
  absent.push_back("doc-1");
  ExpectBankHolds(bank, expected, absent);

  // The disk fills up again just as Close() saves the index: the save fails, and says so.
  ASSERT_TRUE(bank.Put(One(MakeDoc("disk", "after-1"))).ok());
  expected["after-1"] = 0;
  disk->SetBudget(100);
  absl::Status closed = bank.Close();
  EXPECT_EQ(closed.code(), absl::StatusCode::kResourceExhausted) << closed;
  opened->reset();

  // Reopened on a working disk: every acknowledged write is there, nothing else, and the index
  // (its save failed) is rebuilt from the database.
  options.env = nullptr;
  {
    auto reopened = MemoryBank::Open(options);
    ASSERT_TRUE(reopened.ok()) << reopened.status();
    EXPECT_FALSE((*reopened)->Stats()->indexes_loaded_from_disk);
    ExpectBankHolds(**reopened, expected, absent);
    ASSERT_TRUE((*reopened)->Close().ok());
  }
  auto again = MemoryBank::Open(options);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_TRUE((*again)->Stats()->indexes_loaded_from_disk)
      << (*again)->Stats()->index_rebuild_reason;
  ExpectBankHolds(**again, expected, absent);
}

// A disk that is full before the bank opens: Open fails with RESOURCE_EXHAUSTED, and once space
// returns the bank opens with everything in it.
TEST(FullDiskTest, OpenOnAFullDiskFailsCleanly) {
  TempDir dir;
  BankOptions options = TestOptions(dir.Sub("bank"));
  Expected expected;
  {
    auto bank = MemoryBank::Open(options);
    ASSERT_TRUE(bank.ok()) << bank.status();
    for (int i = 0; i < 5; ++i) {
      const std::string id = absl::StrCat("doc-", i);
      ASSERT_TRUE((*bank)->Put(One(MakeDoc("disk", id))).ok());
      expected[id] = 0;
    }
  }
  // Every open writes (a new RocksDB MANIFEST and WAL), so a full disk stops it.
  auto disk = std::make_shared<FaultFileSystem>();
  disk->SetBudget(0);
  BankOptions full = options;
  full.env = FaultFileSystem::EnvFor(disk);
  auto refused = MemoryBank::Open(full);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted) << refused.status();
  EXPECT_THAT(refused.status().message(), HasSubstr(options.data_dir));

  disk->SetBudget(FaultFileSystem::kUnlimited);
  auto bank = MemoryBank::Open(full);
  ASSERT_TRUE(bank.ok()) << bank.status();
  ExpectBankHolds(**bank, expected, {});
}

}  // namespace
}  // namespace knowd::storage
