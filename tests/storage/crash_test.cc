// Crash safety: a child process (crash_child) writes to a bank and records each acknowledged
// operation; the parent kill -9s it at random moments (fixed seed), reopens the bank and checks
// that every acknowledged write is there with the right content, that an operation in flight
// at the kill was applied entirely or not at all, and that the FAISS and Xapian indexes hold
// exactly the passage ids RocksDB holds.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <sstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "storage/memory_bank.h"
#include "tests/storage/bank_test_util.h"

#ifndef KNOWD_STORAGE_CRASH_CHILD
#error "KNOWD_STORAGE_CRASH_CHILD must name the crash_child executable"
#endif

namespace knowd::storage {
namespace {

using ::knowd::storage::testing::MakeDoc;
using ::knowd::storage::testing::TempDir;
using ::knowd::storage::testing::TestOptions;

constexpr int kRounds = 24;
constexpr uint64_t kSeed = 20240611;

struct DocState {
  int version = 0;
  int passages = 0;
};
using Expected = std::map<std::string, DocState>;  // documents that must exist

struct Op {
  bool put = false;
  std::vector<std::pair<std::string, DocState>> docs;  // for deletes, DocState is unused
};

Op ParseOp(std::istringstream& in) {
  Op op;
  std::string kind, token;
  in >> kind;
  op.put = kind == "P";
  while (in >> token) {
    if (!op.put) {
      op.docs.push_back({token, {}});
      continue;
    }
    const size_t a = token.find(':'), b = token.rfind(':');
    op.docs.push_back(
        {token.substr(0, a),
         {std::stoi(token.substr(a + 1, b - a - 1)), std::stoi(token.substr(b + 1))}});
  }
  return op;
}

void Apply(const Op& op, Expected* expected) {
  for (const auto& [id, state] : op.docs) {
    if (op.put) {
      (*expected)[id] = state;
    } else {
      expected->erase(id);
    }
  }
}

// Reads the ack log; returns the operation in flight at the kill, if any.
std::optional<Op> ReplayAcks(const std::string& path, Expected* expected) {
  std::ifstream in(path);
  std::string line;
  std::optional<Op> pending;
  while (std::getline(in, line)) {
    if (line.size() < 2) continue;  // a torn last line cannot happen with write(2), but be lenient
    std::istringstream fields(line.substr(2));
    Op op = ParseOp(fields);
    if (line[0] == 'I') {
      pending = std::move(op);
    } else {
      Apply(op, expected);
      pending.reset();
    }
  }
  return pending;
}

// True when the bank holds exactly `state` for `id` (or nothing, when state is nullopt).
::testing::AssertionResult Holds(MemoryBank& bank, const std::string& id,
                                 const std::optional<DocState>& state) {
  auto doc = bank.Get("crash", id, /*with_latents=*/true);
  if (!state.has_value()) {
    if (doc.status().code() == absl::StatusCode::kNotFound) return ::testing::AssertionSuccess();
    return ::testing::AssertionFailure() << id << " should be absent: " << doc.status();
  }
  if (!doc.ok()) return ::testing::AssertionFailure() << id << ": " << doc.status();
  const Document want = MakeDoc("crash", id, state->version, state->passages);
  if (doc->text != want.text || doc->passages.size() != want.passages.size()) {
    return ::testing::AssertionFailure() << id << " has the wrong version or passage count";
  }
  for (size_t p = 0; p < want.passages.size(); ++p) {
    if (doc->passages[p].text != want.passages[p].text ||
        doc->passages[p].key != want.passages[p].key) {
      return ::testing::AssertionFailure() << id << " passage " << p << " differs";
    }
    for (size_t i = 0; i < want.passages[p].latents.size(); ++i) {
      if (std::fabs(doc->passages[p].latents[i] - want.passages[p].latents[i]) > 2e-3f) {
        return ::testing::AssertionFailure() << id << " passage " << p << " latents differ";
      }
    }
  }
  return ::testing::AssertionSuccess();
}

TEST(CrashTest, EveryAcknowledgedWriteSurvivesKillNine) {
  TempDir dir;
  const std::string data_dir = dir.Sub("bank");
  std::mt19937_64 rng(kSeed);
  Expected expected;
  std::vector<std::string> ever_deleted;
  int rounds_with_pending = 0, rounds_loaded = 0;

  for (int round = 0; round < kRounds; ++round) {
    const std::string acks = dir.Sub(absl::StrCat("acks-", round));
    const std::string round_arg = std::to_string(round), seed_arg = std::to_string(kSeed);
    pid_t child = fork();
    ASSERT_GE(child, 0);
    if (child == 0) {
      execl(KNOWD_STORAGE_CRASH_CHILD, KNOWD_STORAGE_CRASH_CHILD, data_dir.c_str(), acks.c_str(),
            round_arg.c_str(), seed_arg.c_str(), static_cast<char*>(nullptr));
      _exit(127);
    }
    if (round % 2 == 0) {
      // From process start: early kills land in Open() (index load or rebuild), later ones
      // among writes and the periodic close/reopen.
      std::this_thread::sleep_for(std::chrono::milliseconds(100 + rng() % 600));
    } else {
      // From the child's first write, however long Open() took on a loaded machine: these kills
      // land among writes (most of a writer's time is in a synced Put), so some catch a batch in
      // flight.
      const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(30);
      for (std::error_code ec; std::chrono::steady_clock::now() < give_up;) {
        const std::uintmax_t size = std::filesystem::file_size(acks, ec);
        if (!ec && size > 0) break;  // (a missing file is an error, not size 0)
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(rng() % 200));
    }
    int status = 0;
    if (waitpid(child, &status, WNOHANG) == 0) {
      kill(child, SIGKILL);
      ASSERT_EQ(waitpid(child, &status, 0), child);
    }
    ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL)
        << "round " << round << ": the child ended by itself (exit " << WEXITSTATUS(status)
        << "), see its stderr above";

    std::optional<Op> pending = ReplayAcks(acks, &expected);
    auto opened = MemoryBank::Open(TestOptions(data_dir));
    ASSERT_TRUE(opened.ok()) << "round " << round << ": " << opened.status();
    MemoryBank& bank = **opened;
    rounds_loaded += bank.Stats()->indexes_loaded_from_disk ? 1 : 0;
    if (std::getenv("KNOWD_CRASH_TEST_VERBOSE")) {
      std::ifstream in(acks);
      int lines = 0;
      for (std::string line; std::getline(in, line);) ++lines;
      std::printf("round %d: %d ack lines, loaded %d (%s)\n", round, lines,
                  bank.Stats()->indexes_loaded_from_disk,
                  bank.Stats()->index_rebuild_reason.c_str());
    }

    if (pending.has_value()) {
      // The batch in flight is all-or-nothing: decide from its first document, check the rest.
      ++rounds_with_pending;
      Expected after = expected;
      Apply(*pending, &after);
      const std::string& probe = pending->docs[0].first;
      auto old_state = [&](const std::string& id) -> std::optional<DocState> {
        auto it = expected.find(id);
        return it == expected.end() ? std::nullopt : std::optional<DocState>(it->second);
      };
      auto new_state = [&](const std::string& id) -> std::optional<DocState> {
        auto it = after.find(id);
        return it == after.end() ? std::nullopt : std::optional<DocState>(it->second);
      };
      // Versions are unique per operation, so "before" and "after" are distinguishable.
      const bool applied = Holds(bank, probe, new_state(probe));
      ASSERT_TRUE(applied || Holds(bank, probe, old_state(probe)))
          << "round " << round << ": " << probe << " is in neither the old nor the new state";
      if (applied) {
        expected = after;
        if (!pending->put) ever_deleted.push_back(probe);
      } else {
        for (const auto& [id, state] : pending->docs) {
          ASSERT_TRUE(Holds(bank, id, old_state(id))) << "round " << round << ": partial batch";
        }
      }
    }
    for (const auto& [id, state] : expected) {
      ASSERT_TRUE(Holds(bank, id, state)) << "round " << round;
    }
    for (const std::string& id : ever_deleted) {
      if (!expected.count(id)) {
        ASSERT_TRUE(Holds(bank, id, std::nullopt)) << "round " << round;
      }
    }
    auto stats = bank.Stats();
    ASSERT_TRUE(stats.ok());
    EXPECT_EQ(stats->documents, expected.size()) << "round " << round;
    ASSERT_TRUE(bank.VerifyIndexes().ok()) << "round " << round << ": " << bank.VerifyIndexes();
    if (!expected.empty()) {
      const auto& [id, state] = *std::next(expected.begin(), rng() % expected.size());
      const Document doc = MakeDoc("crash", id, state.version, state.passages);
      SearchRequest req{"crash", doc.passages[0].key, 1};
      auto hits = bank.Search(req);
      ASSERT_TRUE(hits.ok());
      ASSERT_EQ(hits->size(), 1u);
      EXPECT_EQ((*hits)[0].doc_id, id) << "round " << round;
    }
    ASSERT_TRUE(bank.Close().ok());
    // Track deletes acknowledged this round so later rounds check they stay deleted.
    std::ifstream in(acks);
    for (std::string line; std::getline(in, line);) {
      if (line.rfind("A D ", 0) == 0) ever_deleted.push_back(line.substr(4));
    }
  }
  // The random kill times must actually have exercised the interesting cases.
  EXPECT_GT(expected.size(), 50u);
  EXPECT_GT(rounds_with_pending, 0);
  std::printf(
      "crash test: %d rounds, %zu documents, %d kills with a write in flight, %d opens "
      "loaded saved indexes\n",
      kRounds, expected.size(), rounds_with_pending, rounds_loaded);
}

}  // namespace
}  // namespace knowd::storage
