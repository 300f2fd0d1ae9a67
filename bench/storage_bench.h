// `knowd bench storage`: the memory bank at several sizes — put throughput (synced batches),
// top-k latency, clean open time and recovery time after an unclean shutdown, disk bytes and
// resident memory per passage (passages per GB of each) — next to the machine's memory
// bandwidth measured in the same run, so the flat search's scan rate reads as a fraction of
// what the hardware allows. Synthetic entries (one passage per document, random
// unit keys, random latents), since storage does not need the model.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "storage/memory_bank.h"

namespace knowd {

struct StorageBenchOptions {
  std::vector<int64_t> entries = {10000, 100000, 1000000};  // bank sizes, one bank each
  int key_dim = 64;
  int latent_rows = 8;
  int latent_cols = 64;
  storage::LatentFormat latent_format = storage::LatentFormat::kFp16;
  std::string index_factory = "Flat";
  std::string index_search_params;  // e.g. "efSearch=64"
  bool lexical_index = false;       // the BM25 index (on disk); on, it adds to recovery time
  int batch_docs = 500;             // documents per Put (one synced WriteBatch)
  int k = 10;
  int queries = 500;   // per size; fewer when a flat scan would take too long
  int threads = 0;     // for the bandwidth measurement; 0: one per core
  std::string dir;     // scratch directory; empty: a temporary one, removed after
  std::string output;  // also write the results as JSON here (empty: no file)
};

absl::Status RunStorageBench(const StorageBenchOptions& options);

}  // namespace knowd
