// Crash safety: a child process (crash_child) writes to a bank and records each acknowledged
// operation; the parent kill -9s it, reopens the bank and checks that every acknowledged write
// is there with the right content, that an operation in flight at the kill was applied entirely
// or not at all, that the FAISS and Xapian indexes hold exactly the passage ids RocksDB holds,
// and that searches return what an exact search over the expected documents returns.
//
// Rounds cycle through four child workloads (see crash_child.cc): mixed writes killed at random
// moments, and three that aim the kill at one phase: Puts (ingest), Deletes (forget) and Close()
// (the FAISS index save and RocksDB flush). An aimed kill waits for the child to announce the
// k-th operation of its phase (the child writes through a slow disk then, to widen each phase),
// then lets it run a random moment more; where it actually landed is read back from the ack
// file afterwards and counted per phase.
//
// KNOWD_CRASH_ROUNDS sets the number of rounds (default 24; the `fault` ctest runs 100).
// KNOWD_CRASH_TEST_VERBOSE prints one line per round.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
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
using ::knowd::storage::testing::PassageText;
using ::knowd::storage::testing::SyntheticKey;
using ::knowd::storage::testing::TempDir;
using ::knowd::storage::testing::TestOptions;

constexpr int kDefaultRounds = 24;
constexpr uint64_t kSeed = 20240611;

struct DocState {
  int version = 0;
  int passages = 0;
};
using Expected = std::map<std::string, DocState>;  // documents that must exist

// The phases a kill can land in; kNone is between operations (or in Open()).
enum Phase { kNone = 0, kPut = 1, kDelete = 2, kSave = 3 };
constexpr std::array<const char*, 4> kPhaseNames = {"between operations", "put", "delete", "save"};
// The child's workload per round: round % 4.
constexpr std::array<const char*, 4> kModes = {"mixed", "put", "delete", "save"};
constexpr std::array<char, 4> kPhaseLetter = {0, 'P', 'D', 'S'};

struct Op {
  Phase phase = kNone;
  std::vector<std::pair<std::string, DocState>> docs;  // for deletes, DocState is unused
};

Op ParseOp(std::istringstream& in) {
  Op op;
  std::string kind, token;
  in >> kind;
  op.phase = kind == "P" ? kPut : kind == "D" ? kDelete : kind == "S" ? kSave : kNone;
  while (in >> token) {
    if (op.phase != kPut) {
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
    if (op.phase == kPut) {
      (*expected)[id] = state;
    } else if (op.phase == kDelete) {
      expected->erase(id);
    }
  }
}

// Reads the ack log; returns the operation in flight at the kill, if any. Adds the documents of
// acknowledged Deletes to `deleted`.
std::optional<Op> ReplayAcks(const std::string& path, Expected* expected,
                             std::vector<std::string>* deleted) {
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
      if (op.phase == kDelete) {
        for (const auto& [id, state] : op.docs) deleted->push_back(id);
      }
      pending.reset();
    }
  }
  return pending;
}

// Follows the child's ack file as it grows and counts the intents ("I <letter>") per phase.
class AckWatcher {
 public:
  explicit AckWatcher(const std::string& path) : path_(path) {}
  ~AckWatcher() {
    if (fd_ >= 0) ::close(fd_);
  }

  // Reads what the child appended since the last call.
  void Poll() {
    if (fd_ < 0) fd_ = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd_ < 0) return;  // not created yet
    char buf[4096];
    for (ssize_t n; (n = ::read(fd_, buf, sizeof(buf))) > 0;) partial_.append(buf, n);
    for (size_t end; (end = partial_.find('\n')) != std::string::npos;) {
      ++lines_;
      if (end >= 3 && partial_[0] == 'I') {
        for (int phase = kPut; phase <= kSave; ++phase) {
          if (partial_[2] == kPhaseLetter[phase]) ++intents_[phase];
        }
      }
      partial_.erase(0, end + 1);
    }
  }
  int lines() const { return lines_; }
  int intents(Phase phase) const { return intents_[phase]; }

 private:
  const std::string path_;
  int fd_ = -1;
  std::string partial_;
  int lines_ = 0;
  std::array<int, 4> intents_ = {};
};

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
  if (doc->text != want.text || doc->metadata != want.metadata ||
      doc->passages.size() != want.passages.size()) {
    return ::testing::AssertionFailure() << id << " has the wrong version or passage count";
  }
  for (size_t p = 0; p < want.passages.size(); ++p) {
    if (doc->passages[p].text != want.passages[p].text ||
        doc->passages[p].key != want.passages[p].key) {
      return ::testing::AssertionFailure() << id << " passage " << p << " differs";
    }
    // fp16 storage: within |x| 2^-11 of the original, |x| <= 2 here.
    for (size_t i = 0; i < want.passages[p].latents.size(); ++i) {
      if (std::fabs(doc->passages[p].latents[i] - want.passages[p].latents[i]) > 2e-3f) {
        return ::testing::AssertionFailure() << id << " passage " << p << " latents differ";
      }
    }
  }
  return ::testing::AssertionSuccess();
}

// What an exact search over the expected documents returns: (doc id, passage index, score).
struct RefHit {
  std::string doc_id;
  int passage = 0;
  float score = 0;
};

std::vector<RefHit> ExactSearch(const Expected& expected, const std::vector<float>& query, int k) {
  std::vector<RefHit> all;
  for (const auto& [id, state] : expected) {
    const Document doc = MakeDoc("crash", id, state.version, state.passages);
    for (size_t p = 0; p < doc.passages.size(); ++p) {
      float score = 0;
      for (size_t i = 0; i < query.size(); ++i) score += query[i] * doc.passages[p].key[i];
      all.push_back({id, static_cast<int>(p), score});
    }
  }
  std::sort(all.begin(), all.end(),
            [](const RefHit& a, const RefHit& b) { return a.score > b.score; });
  all.resize(std::min<size_t>(all.size(), k));
  return all;
}

// The bank's dense top-k for `query` equals the exact search's: same scores (to float rounding)
// and the same passages wherever the score is not within rounding of a neighbour's.
::testing::AssertionResult SearchMatchesExact(MemoryBank& bank, const Expected& expected,
                                              const std::vector<float>& query) {
  constexpr int kK = 8;
  constexpr float kTol = 1e-5f;
  auto hits = bank.Search(SearchRequest{"crash", query, kK});
  if (!hits.ok()) return ::testing::AssertionFailure() << "search: " << hits.status();
  const std::vector<RefHit> want = ExactSearch(expected, query, kK);
  if (hits->size() != want.size()) {
    return ::testing::AssertionFailure()
           << "search returned " << hits->size() << " hits, exact search " << want.size();
  }
  for (size_t i = 0; i < want.size(); ++i) {
    const SearchHit& hit = (*hits)[i];
    if (std::fabs(hit.score - want[i].score) > kTol) {
      return ::testing::AssertionFailure()
             << "hit " << i << " scores " << hit.score << ", exact search " << want[i].score;
    }
    const bool tie = (i > 0 && want[i - 1].score - want[i].score <= 2 * kTol) ||
                     (i + 1 < want.size() && want[i].score - want[i + 1].score <= 2 * kTol);
    if (!tie && (hit.doc_id != want[i].doc_id || hit.passage_index != want[i].passage)) {
      return ::testing::AssertionFailure()
             << "hit " << i << " is " << hit.doc_id << " passage " << hit.passage_index
             << ", exact search " << want[i].doc_id << " passage " << want[i].passage;
    }
  }
  return ::testing::AssertionSuccess();
}

int Rounds() {
  const char* env = std::getenv("KNOWD_CRASH_ROUNDS");
  if (env == nullptr || *env == '\0') return kDefaultRounds;
  const int rounds = std::atoi(env);
  return rounds > 0 ? rounds : kDefaultRounds;
}

TEST(CrashTest, EveryAcknowledgedWriteSurvivesKillNine) {
  const int rounds = Rounds();
  const bool verbose = std::getenv("KNOWD_CRASH_TEST_VERBOSE") != nullptr;
  TempDir dir;
  const std::string data_dir = dir.Sub("bank");
  std::mt19937_64 rng(kSeed);
  Expected expected;
  std::vector<std::string> ever_deleted;
  int rounds_loaded = 0, docs_checked = 0, searches_checked = 0;
  std::array<int, 4> landed = {};   // kills per phase they landed in
  std::array<int, 4> applied = {};  // of those in flight, how many the bank had applied

  for (int round = 0; round < rounds; ++round) {
    const int mode = round % 4;
    const std::string acks = dir.Sub(absl::StrCat("acks-", round));
    const std::string round_arg = std::to_string(round), seed_arg = std::to_string(kSeed);
    pid_t child = fork();
    ASSERT_GE(child, 0);
    if (child == 0) {
      execl(KNOWD_STORAGE_CRASH_CHILD, KNOWD_STORAGE_CRASH_CHILD, data_dir.c_str(), acks.c_str(),
            round_arg.c_str(), seed_arg.c_str(), kModes[mode], static_cast<char*>(nullptr));
      _exit(127);
    }
    AckWatcher watcher(acks);
    int status = 0;
    bool reaped = false;  // the child ended by itself (an error: it writes until killed)
    const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    auto wait_for = [&](auto done) {
      while (std::chrono::steady_clock::now() < give_up) {
        if (waitpid(child, &status, WNOHANG) == child) {
          reaped = true;
          return;
        }
        watcher.Poll();
        if (done()) return;
        std::this_thread::sleep_for(std::chrono::microseconds(100));
      }
    };
    if (mode != 0) {
      // Aimed: the k-th intent of this round's phase, then a random moment into it. On the
      // child's slow disk a Put or Delete (one WAL append and sync) takes over 1.3 ms, a
      // Close() (index files, manifest, SST flush, each appended and synced) over 10 ms.
      const Phase phase = static_cast<Phase>(mode);
      const int k = 1 + static_cast<int>(rng() % 4);
      wait_for([&] { return watcher.intents(phase) >= k; });
      const int max_delay_us = phase == kSave ? 15000 : 2000;
      std::this_thread::sleep_for(std::chrono::microseconds(rng() % max_delay_us));
    } else if ((round / 4) % 2 == 0) {
      // From process start: early kills land in Open() (index load or rebuild), later ones
      // among writes and the periodic close/reopen.
      std::this_thread::sleep_for(std::chrono::milliseconds(100 + rng() % 600));
    } else {
      // From the child's first write, however long Open() took on a loaded machine.
      wait_for([&] { return watcher.lines() > 0; });
      std::this_thread::sleep_for(std::chrono::milliseconds(rng() % 200));
    }
    if (!reaped && waitpid(child, &status, WNOHANG) == 0) {
      kill(child, SIGKILL);
      ASSERT_EQ(waitpid(child, &status, 0), child);
    }
    watcher.Poll();
    ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL)
        << "round " << round << ": the child ended by itself (exit " << WEXITSTATUS(status)
        << "), see its stderr above";

    std::optional<Op> pending = ReplayAcks(acks, &expected, &ever_deleted);
    const Phase phase = pending.has_value() ? pending->phase : kNone;
    ++landed[phase];
    auto opened = MemoryBank::Open(TestOptions(data_dir));
    ASSERT_TRUE(opened.ok()) << "round " << round << ": " << opened.status();
    MemoryBank& bank = **opened;
    auto open_stats = bank.Stats();
    ASSERT_TRUE(open_stats.ok());
    rounds_loaded += open_stats->indexes_loaded_from_disk ? 1 : 0;

    if (pending.has_value() && !pending->docs.empty()) {
      // The batch in flight is all-or-nothing: decide from its first document, check the rest.
      Expected after = expected;
      Apply(*pending, &after);
      const std::string& probe = pending->docs[0].first;
      auto state_in = [](const Expected& e, const std::string& id) -> std::optional<DocState> {
        auto it = e.find(id);
        return it == e.end() ? std::nullopt : std::optional<DocState>(it->second);
      };
      // Versions are unique per operation, so "before" and "after" are distinguishable.
      const bool was_applied = Holds(bank, probe, state_in(after, probe));
      ASSERT_TRUE(was_applied || Holds(bank, probe, state_in(expected, probe)))
          << "round " << round << ": " << probe << " is in neither the old nor the new state";
      if (was_applied) {
        ++applied[phase];
        for (const auto& [id, state] : pending->docs) {
          ASSERT_TRUE(Holds(bank, id, state_in(after, id))) << "round " << round << ": partial";
        }
        expected = std::move(after);
        if (phase == kDelete) {
          for (const auto& [id, state] : pending->docs) ever_deleted.push_back(id);
        }
      } else {
        for (const auto& [id, state] : pending->docs) {
          ASSERT_TRUE(Holds(bank, id, state_in(expected, id)))
              << "round " << round << ": partial batch";
        }
      }
    }
    for (const auto& [id, state] : expected) {
      ASSERT_TRUE(Holds(bank, id, state)) << "round " << round;
      ++docs_checked;
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

    // Searches answer as an exact search over the expected documents would, whether the index
    // was loaded from the saved files or rebuilt from RocksDB: two random queries and one
    // document's own key; a hybrid search finds that passage by its text.
    std::vector<std::vector<float>> queries = {SyntheticKey(rng()), SyntheticKey(rng())};
    if (!expected.empty()) {
      const auto& [id, state] = *std::next(expected.begin(), rng() % expected.size());
      const Document doc = MakeDoc("crash", id, state.version, state.passages);
      queries.push_back(doc.passages[0].key);
      SearchRequest hybrid{"crash", doc.passages[0].key, 10};
      hybrid.hybrid = true;
      hybrid.query_text = PassageText(id, state.version, 0);
      auto hits = bank.Search(hybrid);
      ASSERT_TRUE(hits.ok()) << hits.status();
      ASSERT_FALSE(hits->empty());
      EXPECT_EQ((*hits)[0].doc_id, id) << "round " << round;
      EXPECT_TRUE((*hits)[0].lexical_score.has_value()) << "round " << round;
    }
    for (const auto& query : queries) {
      ASSERT_TRUE(SearchMatchesExact(bank, expected, query))
          << "round " << round << " (indexes "
          << (open_stats->indexes_loaded_from_disk ? "loaded" : "rebuilt") << ")";
      ++searches_checked;
    }
    if (verbose) {
      std::printf("round %d (%s): %d ack lines, kill landed %s, indexes %s%s, %zu documents\n",
                  round, kModes[mode], watcher.lines(), kPhaseNames[phase],
                  open_stats->indexes_loaded_from_disk ? "loaded" : "rebuilt: ",
                  open_stats->index_rebuild_reason.c_str(), expected.size());
    }
    ASSERT_TRUE(bank.Close().ok());
  }
  std::printf(
      "crash test: %d rounds, kills landed: %d in a put (%d applied), %d in a delete (%d "
      "applied), %d in an index save, %d between operations; %d opens loaded saved indexes; "
      "%d document checks, %d searches compared, %zu documents at the end\n",
      rounds, landed[kPut], applied[kPut], landed[kDelete], applied[kDelete], landed[kSave],
      landed[kNone], rounds_loaded, docs_checked, searches_checked, expected.size());
  // The kill times must actually have exercised every phase.
  if (rounds >= 12) {
    EXPECT_GT(expected.size(), 30u);
    EXPECT_GT(landed[kPut], 0);
    EXPECT_GT(landed[kDelete], 0);
    EXPECT_GT(landed[kSave], 0);
  }
}

}  // namespace
}  // namespace knowd::storage
