// Scale-out on NATS JetStream (docs/operations.md, "Capacity and scale-out"). Namespaces are
// hashed to shards; each shard is served by replicas with banks of their own. Writes (Ingest,
// Forget) are not applied by the replica that receives them: it publishes them to the shard's
// subject of a JetStream stream replicated over the NATS servers, and acknowledges once
// JetStream has stored the entry on a quorum. Every replica of the shard consumes the subject
// through a durable consumer of its own and applies the entries in log order to its bank, which
// records how far it has applied (a bank marker), so a restarted replica resumes exactly there
// and a replica with a new, empty volume replays the shard from the start of the log.
//
// The entries are the API's own requests: an IngestRequest or ForgetRequest, serialized, with
// the header "Knowd-Op" naming which. Applying either is idempotent (an ingest replaces the id,
// a forget of an absent id does nothing), so an entry applied twice, after a crash between the
// apply and the marker, leaves the bank as once.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <variant>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "knowd/v1/knowd.pb.h"
#include "storage/memory_bank.h"

namespace knowd {

struct ClusterOptions {
  std::vector<std::string> servers;  // NATS URLs; empty = a single daemon, no log
  int shards = 1;
  int shard = 0;
  std::string replica;  // this replica's durable consumer: unique, the same across restarts
  std::string stream = "knowd";
  int stream_replicas = 3;  // JetStream copies of the log (at most the NATS servers)
  bool enabled() const { return !servers.empty(); }
};

// INVALID_ARGUMENT when the options cannot work (shard out of range, a replica name JetStream
// refuses); OK for the single-daemon options.
absl::Status CheckClusterOptions(const ClusterOptions& options);

// The shard that owns a namespace: CRC-32 (IEEE, as zlib and HAProxy's crc32 converter compute
// it) of its name, modulo `shards`. deploy/cluster's HAProxy routes with the same rule.
int ShardOf(std::string_view name_space, int shards);

// The header that carries the namespace to the router (gRPC metadata, HTTP header).
inline constexpr char kNamespaceHeader[] = "x-knowd-namespace";

// One entry of the log, as a replica applies it.
struct LogRecord {
  uint64_t sequence = 0;  // the stream's sequence: increasing, never reused
  std::variant<v1::IngestRequest, v1::ForgetRequest> request;
};

class ClusterLog {
 public:
  // Applies records in order; an error stops the consumer from acknowledging them, and they
  // are retried.
  using Applier = std::function<absl::Status(std::span<const LogRecord> records)>;

  // Connects to the NATS servers (retrying in the background while they are down), creates the
  // stream when it does not exist, and checks that `bank` belongs to this shard (its marker, set
  // on first use). The bank must outlive the log.
  static absl::StatusOr<std::unique_ptr<ClusterLog>> Open(const ClusterOptions& options,
                                                          storage::MemoryBank* bank);
  ~ClusterLog();  // Stop()s

  // Publishes one write to its shard's subject; returns its sequence once JetStream has stored
  // it on a quorum. UNAVAILABLE when that did not happen by `deadline` (the write may still be
  // stored: send it again, an ingest is idempotent).
  absl::StatusOr<uint64_t> Publish(const v1::IngestRequest& request, absl::Time deadline);
  absl::StatusOr<uint64_t> Publish(const v1::ForgetRequest& request, absl::Time deadline);

  // Starts consuming this shard's subject from the bank's marker on; `apply` runs on the
  // consumer's thread.
  absl::Status Start(Applier apply);
  void Stop();

  // The last sequence applied to the bank.
  uint64_t applied() const { return applied_.load(); }
  // True once the consumer has found nothing left to apply (since Start).
  bool caught_up() const { return caught_up_.load(); }
  // Waits until applied() >= sequence. DEADLINE_EXCEEDED at `deadline`, CANCELLED when
  // `cancelled` says so (polled).
  absl::Status WaitApplied(uint64_t sequence, absl::Time deadline,
                           const std::function<bool()>& cancelled);

  const ClusterOptions& options() const { return options_; }
  std::string Describe() const;

 private:
  struct Nats;
  ClusterLog(const ClusterOptions& options, storage::MemoryBank* bank);
  absl::StatusOr<uint64_t> PublishBytes(const char* op, const std::string& payload,
                                        absl::Time deadline);
  absl::Status Subscribe();
  void Loop(Applier apply);
  void SetApplied(uint64_t sequence);

  const ClusterOptions options_;
  storage::MemoryBank* const bank_;
  const std::string subject_;
  std::unique_ptr<Nats> nats_;
  std::atomic<uint64_t> applied_{0};
  std::atomic<bool> caught_up_{false};
  std::atomic<bool> stop_{false};
  std::mutex applied_mu_;
  std::condition_variable applied_cv_;
  std::thread thread_;
};

}  // namespace knowd
