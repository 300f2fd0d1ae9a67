// Crash-test child: writes to a memory bank forever and records every acknowledged operation,
// until the parent (crash_test.cc) kill -9s it.
//
// usage: crash_child DATA_DIR ACK_FILE ROUND SEED [MODE]
//
// MODE picks the workload, so that the parent can aim its kills at one phase:
//   mixed   (default) Puts, upserts and Deletes, with a clean close and reopen every 20 ops
//   put     Puts and upserts only (ingest)
//   delete  mostly Deletes of documents already in the bank, found by Scan (forget)
//   save    a few Puts, then Close() (which saves the FAISS index files) and reopen, repeatedly
// The aimed modes (all but mixed) write through a slow disk (fault_fs.h: 300 us before every
// append, 1 ms after every sync), which widens each phase's window without changing what a
// kill -9 leaves: the page cache survives a killed process.
//
// ACK_FILE gets one line per event, each written with write(2) and fdatasync'ed:
//   I <op>   before an operation is submitted (its intent)
//   A <op>   after the bank acknowledged it
// where <op> is "P id:version:passages ..." (one Put batch), "D id ..." (one Delete) or "S" (one
// Close(): index save and flush). Documents are deterministic functions of (id, version), see
// bank_test_util.h.
#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "absl/strings/str_cat.h"
#include "storage/memory_bank.h"
#include "tests/storage/bank_test_util.h"
#include "tests/storage/fault_fs.h"

namespace {

using knowd::storage::Document;
using knowd::storage::MemoryBank;

int ack_fd = -1;

// `kind` is 'I' or 'A'.
void Record(char kind, const std::string& op) {
  const std::string data = absl::StrCat(std::string(1, kind), " ", op, "\n");
  if (::write(ack_fd, data.data(), data.size()) != static_cast<ssize_t>(data.size()) ||
      ::fdatasync(ack_fd) != 0) {
    std::perror("crash_child: ack file");
    std::exit(3);
  }
}

[[noreturn]] void Die(const std::string& what, const absl::Status& status) {
  std::fprintf(stderr, "crash_child: %s: %s\n", what.c_str(), status.ToString().c_str());
  std::exit(2);
}

// Every document id of the crash namespace (documents of earlier rounds that a delete round
// may forget).
std::vector<std::string> ExistingIds(MemoryBank& bank) {
  std::vector<std::string> ids;
  std::string after;
  while (true) {
    auto page = bank.Scan("crash", after, 1000);
    if (!page.ok()) Die("scan", page.status());
    for (const auto& doc : page->documents) ids.push_back(doc.id);
    if (page->next_start_after.empty()) return ids;
    after = page->next_start_after;
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 5 && argc != 6) {
    std::fprintf(stderr, "usage: %s DATA_DIR ACK_FILE ROUND SEED [mixed|put|delete|save]\n",
                 argv[0]);
    return 1;
  }
  const std::string data_dir = argv[1];
  const int round = std::atoi(argv[3]);
  const std::string_view mode = argc == 6 ? argv[5] : "mixed";
  if (mode != "mixed" && mode != "put" && mode != "delete" && mode != "save") {
    std::fprintf(stderr, "crash_child: unknown mode '%s'\n", argv[5]);
    return 1;
  }
  std::mt19937_64 rng(std::strtoull(argv[4], nullptr, 10) * 1000 + round);
  ack_fd = ::open(argv[2], O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (ack_fd < 0) {
    std::perror("crash_child: open ack file");
    return 3;
  }
  knowd::storage::BankOptions options = knowd::storage::testing::TestOptions(data_dir);
  if (mode != "mixed") {
    auto slow = std::make_shared<knowd::storage::testing::FaultFileSystem>();
    slow->SetDelays(std::chrono::microseconds(300), std::chrono::microseconds(1000));
    options.env = knowd::storage::testing::FaultFileSystem::EnvFor(slow);
  }
  auto opened = MemoryBank::Open(options);
  if (!opened.ok()) Die("open", opened.status());
  std::unique_ptr<MemoryBank> bank = std::move(*opened);

  std::vector<std::string> mine;  // documents this round created and has not deleted
  // Documents a delete round may forget: its own and, in delete mode, every earlier one.
  std::vector<std::string> deletable;
  if (mode == "delete") deletable = ExistingIds(*bank);
  int puts_since_save = 0;
  for (int op = 0;; ++op) {
    // Close cleanly and reopen: now and then in mixed mode (so kills also land in index saving
    // and loading), after every one to three Puts in save mode.
    const bool save = mode == "save" ? puts_since_save >= 1 + static_cast<int>(rng() % 3)
                                     : mode == "mixed" && op % 20 == 19;
    if (save) {
      Record('I', "S");
      if (absl::Status s = bank->Close(); !s.ok()) Die("close", s);
      Record('A', "S");
      bank.reset();
      auto reopened = MemoryBank::Open(options);
      if (!reopened.ok()) Die("reopen", reopened.status());
      bank = std::move(*reopened);
      puts_since_save = 0;
    }
    const int dice = static_cast<int>(rng() % 100);
    const bool forget = mode == "delete" ? dice < 60 && !(mine.empty() && deletable.empty())
                                         : mode == "mixed" && dice < 15 && !mine.empty();
    if (forget) {
      // Forget one or two documents, each either this round's own or an earlier round's.
      std::vector<std::string> ids;
      const int count = mode == "delete" ? 1 + static_cast<int>(rng() % 2) : 1;
      for (int i = 0; i < count; ++i) {
        std::vector<std::string>& from =
            deletable.empty() || (!mine.empty() && rng() % 2 == 0) ? mine : deletable;
        if (from.empty()) break;
        const size_t victim = rng() % from.size();
        ids.push_back(from[victim]);
        from.erase(from.begin() + static_cast<std::ptrdiff_t>(victim));
      }
      std::string line = "D";
      for (const std::string& id : ids) absl::StrAppend(&line, " ", id);
      Record('I', line);
      auto removed = bank->Delete("crash", ids);
      if (!removed.ok()) Die("delete", removed.status());
      Record('A', line);
      continue;
    }
    std::vector<Document> batch;
    std::string line = "P";
    const int docs = 1 + static_cast<int>(rng() % 3);
    for (int d = 0; d < docs; ++d) {
      std::string id;
      int version = 0;
      if (dice < 40 && !mine.empty() && d == 0) {  // upsert one of ours with a new version
        id = mine[rng() % mine.size()];
        version = op + 1;
      } else {
        id = absl::StrCat("r", round, "-", op, "-", d);
        mine.push_back(id);
      }
      const int passages = 1 + static_cast<int>(rng() % 3);
      batch.push_back(knowd::storage::testing::MakeDoc("crash", id, version, passages));
      absl::StrAppend(&line, " ", id, ":", version, ":", passages);
    }
    Record('I', line);
    auto acks = bank->Put(batch);
    if (!acks.ok()) Die("put", acks.status());
    Record('A', line);
    ++puts_since_save;
  }
}
