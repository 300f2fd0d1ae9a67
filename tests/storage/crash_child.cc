// Crash-test child: writes to a memory bank forever and records every acknowledged operation,
// until the parent (crash_test.cc) kill -9s it.
//
// usage: crash_child DATA_DIR ACK_FILE ROUND SEED
//
// ACK_FILE gets one line per event, each written with write(2) and fdatasync'ed:
//   I <op>   before an operation is submitted (its intent)
//   A <op>   after the bank acknowledged it
// where <op> is "P id:version:passages ..." (one Put batch) or "D id ..." (one Delete).
// Documents are deterministic functions of (id, version), see bank_test_util.h.
#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "storage/memory_bank.h"
#include "tests/storage/bank_test_util.h"

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

}  // namespace

int main(int argc, char** argv) {
  if (argc != 5) {
    std::fprintf(stderr, "usage: %s DATA_DIR ACK_FILE ROUND SEED\n", argv[0]);
    return 1;
  }
  const std::string data_dir = argv[1];
  const int round = std::atoi(argv[3]);
  std::mt19937_64 rng(std::strtoull(argv[4], nullptr, 10) * 1000 + round);
  ack_fd = ::open(argv[2], O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (ack_fd < 0) {
    std::perror("crash_child: open ack file");
    return 3;
  }
  const knowd::storage::BankOptions options = knowd::storage::testing::TestOptions(data_dir);
  auto opened = MemoryBank::Open(options);
  if (!opened.ok()) Die("open", opened.status());
  std::unique_ptr<MemoryBank> bank = std::move(*opened);

  std::vector<std::string> mine;  // documents this round created and has not deleted
  for (int op = 0;; ++op) {
    // Now and then close cleanly and reopen, so kills also land in index saving and loading.
    if (op % 20 == 19) {
      if (absl::Status s = bank->Close(); !s.ok()) Die("close", s);
      bank.reset();
      auto reopened = MemoryBank::Open(options);
      if (!reopened.ok()) Die("reopen", reopened.status());
      bank = std::move(*reopened);
    }
    const int dice = static_cast<int>(rng() % 100);
    if (dice < 15 && !mine.empty()) {
      const size_t victim = rng() % mine.size();
      std::vector<std::string> ids = {mine[victim]};
      const std::string line = absl::StrCat("D ", ids[0]);
      Record('I', line);
      auto removed = bank->Delete("crash", ids);
      if (!removed.ok()) Die("delete", removed.status());
      Record('A', line);
      mine.erase(mine.begin() + static_cast<std::ptrdiff_t>(victim));
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
  }
}
