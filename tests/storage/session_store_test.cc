// Sessions in the memory bank: a record per (namespace, id) in the "sessions" column family,
// written atomically over the revision it was read at, gone for every call once expired, swept on
// open, and kept across a reopen.
#include <gtest/gtest.h>

#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "storage/memory_bank.h"
#include "tests/storage/bank_test_util.h"
#include "tests/storage/fault_fs.h"

namespace knowd::storage {
namespace {

using testing::TempDir;
using testing::TestOptions;

Session MakeSession(std::string ns, std::string id, int floats, float value, absl::Time now,
                    int64_t ttl = 0) {
  Session s;
  s.name_space = std::move(ns);
  s.id = std::move(id);
  s.label = "demo";
  s.mapper_sha256 = "abc123";
  s.state.assign(floats, value);
  s.chunks = 1;
  s.tokens = 17;
  s.created = now;
  s.updated = now;
  s.ttl_seconds = ttl;
  return s;
}

TEST(SessionStoreTest, PutGetListDelete) {
  TempDir dir;
  auto bank = MemoryBank::Open(TestOptions(dir.path()));
  ASSERT_TRUE(bank.ok()) << bank.status();
  const absl::Time now = absl::FromUnixSeconds(1'700'000'000);
  Session a = MakeSession("ns", "a", 96, 0.5f, now);
  ASSERT_TRUE((*bank)->PutSession(&a, now).ok());
  EXPECT_EQ(a.revision, 1u);
  EXPECT_EQ(a.state_bytes, 96 * 4);
  Session b = MakeSession("ns", "b", 96, 1.5f, now);
  ASSERT_TRUE((*bank)->PutSession(&b, now).ok());
  Session other = MakeSession("ns2", "a", 96, 2.5f, now);
  ASSERT_TRUE((*bank)->PutSession(&other, now).ok());

  auto got = (*bank)->GetSession("ns", "a", now);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->state, a.state);
  EXPECT_EQ(got->label, "demo");
  EXPECT_EQ(got->mapper_sha256, "abc123");
  EXPECT_EQ(got->tokens, 17);
  EXPECT_EQ(got->created, now);
  EXPECT_EQ(got->revision, 1u);

  auto list = (*bank)->ListSessions("ns", now);
  ASSERT_TRUE(list.ok()) << list.status();
  ASSERT_EQ(list->size(), 2u);
  EXPECT_EQ((*list)[0].id, "a");
  EXPECT_EQ((*list)[1].id, "b");
  EXPECT_TRUE((*list)[0].state.empty());
  EXPECT_EQ((*list)[0].state_bytes, 96 * 4);

  auto totals = (*bank)->CountSessions(now);
  ASSERT_TRUE(totals.ok());
  EXPECT_EQ(totals->sessions, 3);
  EXPECT_EQ(totals->state_bytes, 3 * 96 * 4);
  ASSERT_EQ(totals->namespaces.size(), 2u);  // per namespace, by name
  EXPECT_EQ(totals->namespaces.at("ns").sessions, 2);
  EXPECT_EQ(totals->namespaces.at("ns").state_bytes, 2 * 96 * 4);
  EXPECT_EQ(totals->namespaces.at("ns2").sessions, 1);
  EXPECT_EQ(totals->namespaces.at("ns2").state_bytes, 96 * 4);

  ASSERT_TRUE((*bank)->DeleteSession("ns", "a", now).ok());
  EXPECT_TRUE(absl::IsNotFound((*bank)->GetSession("ns", "a", now).status()));
  EXPECT_TRUE(absl::IsNotFound((*bank)->DeleteSession("ns", "a", now)));
  EXPECT_TRUE((*bank)->GetSession("ns2", "a", now).ok());  // another namespace's is untouched
}

TEST(SessionStoreTest, WritesOnlyOverTheRevisionRead) {
  TempDir dir;
  auto bank = MemoryBank::Open(TestOptions(dir.path()));
  ASSERT_TRUE(bank.ok()) << bank.status();
  const absl::Time now = absl::FromUnixSeconds(1'700'000'000);
  Session s = MakeSession("ns", "s", 8, 1.0f, now);
  ASSERT_TRUE((*bank)->PutSession(&s, now).ok());
  Session again = MakeSession("ns", "s", 8, 2.0f, now);
  EXPECT_TRUE(absl::IsAlreadyExists((*bank)->PutSession(&again, now)));

  auto first = (*bank)->GetSession("ns", "s", now);
  auto second = (*bank)->GetSession("ns", "s", now);
  ASSERT_TRUE(first.ok() && second.ok());
  first->state.assign(8, 3.0f);
  ASSERT_TRUE((*bank)->PutSession(&*first, now).ok());
  EXPECT_EQ(first->revision, 2u);
  second->state.assign(8, 4.0f);
  EXPECT_TRUE(absl::IsAborted((*bank)->PutSession(&*second, now)));  // lost the race
  EXPECT_EQ((*bank)->GetSession("ns", "s", now)->state, std::vector<float>(8, 3.0f));

  // A refused write (non-finite state) leaves the stored one.
  auto third = (*bank)->GetSession("ns", "s", now);
  third->state[0] = std::nanf("");
  EXPECT_TRUE(absl::IsInvalidArgument((*bank)->PutSession(&*third, now)));
  EXPECT_EQ((*bank)->GetSession("ns", "s", now)->state, std::vector<float>(8, 3.0f));
}

TEST(SessionStoreTest, ExpiredIsGoneAndSweptAndLiveOnesSurviveReopen) {
  TempDir dir;
  const absl::Time now = absl::Now();
  {
    auto bank = MemoryBank::Open(TestOptions(dir.path()));
    ASSERT_TRUE(bank.ok()) << bank.status();
    Session brief = MakeSession("ns", "brief", 8, 1.0f, now, /*ttl=*/1);
    Session lasting = MakeSession("ns", "lasting", 8, 2.0f, now, /*ttl=*/3600);
    Session forever = MakeSession("ns", "forever", 8, 3.0f, now, /*ttl=*/0);
    ASSERT_TRUE((*bank)->PutSession(&brief, now).ok());
    ASSERT_TRUE((*bank)->PutSession(&lasting, now).ok());
    ASSERT_TRUE((*bank)->PutSession(&forever, now).ok());
    EXPECT_TRUE((*bank)->GetSession("ns", "brief", now).ok());
    const absl::Time later = now + absl::Seconds(2);
    EXPECT_TRUE(absl::IsNotFound((*bank)->GetSession("ns", "brief", later).status()));
    EXPECT_TRUE(absl::IsNotFound((*bank)->DeleteSession("ns", "brief", later)));
    auto list = (*bank)->ListSessions("ns", later);
    ASSERT_TRUE(list.ok());
    EXPECT_EQ(list->size(), 2u);
    // An expired id may be created again.
    Session reborn = MakeSession("ns", "brief", 8, 4.0f, later, 1);
    EXPECT_TRUE((*bank)->PutSession(&reborn, later).ok());
    EXPECT_EQ((*bank)->GetSession("ns", "brief", later)->state, std::vector<float>(8, 4.0f));
    auto swept = (*bank)->SweepSessions(later + absl::Seconds(2));
    ASSERT_TRUE(swept.ok());
    EXPECT_EQ(*swept, 1);
  }
  auto reopened = MemoryBank::Open(TestOptions(dir.path()));
  ASSERT_TRUE(reopened.ok()) << reopened.status();
  auto lasting = (*reopened)->GetSession("ns", "lasting", absl::Now());
  ASSERT_TRUE(lasting.ok()) << lasting.status();
  EXPECT_EQ(lasting->state, std::vector<float>(8, 2.0f));
  EXPECT_TRUE((*reopened)->GetSession("ns", "forever", absl::Now()).ok());
  EXPECT_TRUE(absl::IsNotFound((*reopened)->GetSession("ns", "brief", absl::Now()).status()));
}

// A full disk: an append's write fails with RESOURCE_EXHAUSTED and the stored state is the one
// before it; once space returns the same write succeeds, and it is there after a reopen.
TEST(SessionStoreTest, AWriteOnAFullDiskLeavesThePreviousState) {
  TempDir dir;
  auto disk = std::make_shared<testing::FaultFileSystem>();
  BankOptions options = TestOptions(dir.Sub("bank"));
  options.env = testing::FaultFileSystem::EnvFor(disk);
  const absl::Time now = absl::Now();
  {
    auto bank = MemoryBank::Open(options);
    ASSERT_TRUE(bank.ok()) << bank.status();
    Session s = MakeSession("ns", "s", 4096, 1.0f, now);
    ASSERT_TRUE((*bank)->PutSession(&s, now).ok());

    disk->SetBudget(1000);  // less than one state
    auto read = (*bank)->GetSession("ns", "s", now);
    ASSERT_TRUE(read.ok());
    read->state.assign(4096, 2.0f);
    read->chunks = 2;
    absl::Status full = (*bank)->PutSession(&*read, now);
    EXPECT_EQ(full.code(), absl::StatusCode::kResourceExhausted) << full;
    auto kept = (*bank)->GetSession("ns", "s", now);
    ASSERT_TRUE(kept.ok()) << kept.status();
    EXPECT_EQ(kept->state, std::vector<float>(4096, 1.0f));
    EXPECT_EQ(kept->chunks, 1);

    disk->SetBudget(testing::FaultFileSystem::kUnlimited);
    absl::Status resumed = absl::UnknownError("not tried");
    for (int attempt = 0; attempt < 300 && !resumed.ok(); ++attempt) {
      resumed = (*bank)->PutSession(&*read, now);
      if (!resumed.ok()) std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    ASSERT_TRUE(resumed.ok()) << resumed;
  }
  options.env = nullptr;
  auto reopened = MemoryBank::Open(options);
  ASSERT_TRUE(reopened.ok()) << reopened.status();
  auto got = (*reopened)->GetSession("ns", "s", now);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->state, std::vector<float>(4096, 2.0f));
  EXPECT_EQ(got->chunks, 2);
}

TEST(SessionStoreTest, RefusesBadKeys) {
  TempDir dir;
  auto bank = MemoryBank::Open(TestOptions(dir.path()));
  ASSERT_TRUE(bank.ok()) << bank.status();
  const absl::Time now = absl::Now();
  Session no_id = MakeSession("ns", "", 8, 1.0f, now);
  EXPECT_TRUE(absl::IsInvalidArgument((*bank)->PutSession(&no_id, now)));
  Session long_id = MakeSession("ns", std::string(257, 'x'), 8, 1.0f, now);
  EXPECT_TRUE(absl::IsInvalidArgument((*bank)->PutSession(&long_id, now)));
  Session empty = MakeSession("ns", "e", 0, 1.0f, now);
  EXPECT_TRUE(absl::IsInvalidArgument((*bank)->PutSession(&empty, now)));
  EXPECT_TRUE(absl::IsInvalidArgument((*bank)->GetSession("", "x", now).status()));
}

}  // namespace
}  // namespace knowd::storage
