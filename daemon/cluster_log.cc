#include "daemon/cluster_log.h"

#include <nats/nats.h>
#include <zlib.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/status_macros.h"
#include "spdlog/spdlog.h"

namespace knowd {
namespace {

constexpr char kOpHeader[] = "Knowd-Op";
constexpr char kOpIngest[] = "ingest";
constexpr char kOpForget[] = "forget";
// Bank markers: how far this bank has applied the log, and which shard of which stream it holds.
constexpr char kAppliedMarker[] = "cluster/applied";
constexpr char kShardMarker[] = "cluster/shard";
constexpr int kFetchBatch = 64;
constexpr int64_t kFetchWaitMs = 1000;

absl::Status NatsError(natsStatus s, jsErrCode code, std::string_view what) {
  std::string detail = natsStatus_GetText(s);
  if (code != 0) absl::StrAppend(&detail, " (JetStream error ", static_cast<int>(code), ")");
  const char* last = nats_GetLastError(nullptr);
  if (last != nullptr && *last != '\0') absl::StrAppend(&detail, ": ", last);
  return absl::UnavailableError(
      absl::StrCat(absl::string_view(what.data(), what.size()), ": ", detail));
}

// JetStream names: no whitespace, '.', '*', '>' or path separators.
bool ValidName(std::string_view name) {
  if (name.empty() || name.size() > 64) return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '_';
  });
}

}  // namespace

absl::Status CheckClusterOptions(const ClusterOptions& options) {
  if (!options.enabled()) return absl::OkStatus();
  if (options.shards < 1 || options.shard < 0 || options.shard >= options.shards) {
    return absl::InvalidArgumentError(absl::StrCat("--shard must be in [0, --shards), not ",
                                                   options.shard, " of ", options.shards));
  }
  if (!ValidName(options.replica)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--replica must name this replica (1-64 of A-Z a-z 0-9 - _, the same across restarts; "
        "a StatefulSet's pod name), not \"",
        options.replica, "\""));
  }
  if (!ValidName(options.stream)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--cluster-stream must be 1-64 of A-Z a-z 0-9 - _, not \"", options.stream, "\""));
  }
  if (options.stream_replicas < 1 || options.stream_replicas > 5) {
    return absl::InvalidArgumentError(
        absl::StrCat("--cluster-stream-replicas must be 1 to 5 (JetStream's limit), not ",
                     options.stream_replicas));
  }
  return absl::OkStatus();
}

int ShardOf(std::string_view name_space, int shards) {
  if (shards <= 1) return 0;
  const uLong crc = crc32(crc32(0L, Z_NULL, 0), reinterpret_cast<const Bytef*>(name_space.data()),
                          static_cast<uInt>(name_space.size()));
  return static_cast<int>(crc % static_cast<uLong>(shards));
}

struct ClusterLog::Nats {
  natsOptions* opts = nullptr;
  natsConnection* nc = nullptr;
  jsCtx* js = nullptr;
  natsSubscription* sub = nullptr;
  ~Nats() {
    if (sub != nullptr) natsSubscription_Destroy(sub);
    if (js != nullptr) jsCtx_Destroy(js);
    if (nc != nullptr) {
      natsConnection_Close(nc);
      natsConnection_Destroy(nc);
    }
    if (opts != nullptr) natsOptions_Destroy(opts);
  }
};

ClusterLog::ClusterLog(const ClusterOptions& options, storage::MemoryBank* bank)
    : options_(options),
      bank_(bank),
      subject_(absl::StrCat(options.stream, ".shard.", options.shard)),
      nats_(std::make_unique<Nats>()) {}

ClusterLog::~ClusterLog() { Stop(); }

absl::StatusOr<std::unique_ptr<ClusterLog>> ClusterLog::Open(const ClusterOptions& options,
                                                             storage::MemoryBank* bank) {
  KNOWD_RETURN_IF_ERROR(CheckClusterOptions(options));
  if (!options.enabled()) return absl::InvalidArgumentError("no NATS servers given");
  std::unique_ptr<ClusterLog> log(new ClusterLog(options, bank));
  Nats& n = *log->nats_;

  // The bank belongs to one shard of one stream for its whole life.
  const std::string identity =
      absl::StrCat(options.stream, "/", options.shard, "/", options.shards);
  KNOWD_ASSIGN_OR_RETURN(std::optional<std::string> held, bank->GetMarker(kShardMarker));
  if (held.has_value() && *held != identity) {
    return absl::FailedPreconditionError(
        absl::StrCat("this memory bank holds stream/shard/shards ", *held,
                     ", and this replica is configured "
                     "for ",
                     identity,
                     ": give each shard its own data directory (adding a shard re-hashes "
                     "namespaces: docs/operations.md, \"Capacity and scale-out\")"));
  }
  if (!held.has_value()) {
    KNOWD_RETURN_IF_ERROR(bank->SetMarker(kShardMarker, identity));
  }
  KNOWD_ASSIGN_OR_RETURN(std::optional<std::string> applied, bank->GetMarker(kAppliedMarker));
  uint64_t from = 0;
  if (applied.has_value() && !absl::SimpleAtoi(*applied, &from)) {
    return absl::DataLossError(absl::StrCat("the bank's log marker is not a number: ", *applied));
  }
  log->applied_ = from;

  std::vector<const char*> servers;
  for (const std::string& s : options.servers) servers.push_back(s.c_str());
  natsStatus s = natsOptions_Create(&n.opts);
  if (s == NATS_OK) {
    s = natsOptions_SetServers(n.opts, servers.data(), static_cast<int>(servers.size()));
  }
  if (s == NATS_OK) s = natsOptions_SetMaxReconnect(n.opts, -1);  // forever
  if (s == NATS_OK) s = natsOptions_SetReconnectWait(n.opts, 250);
  if (s == NATS_OK) s = natsOptions_SetTimeout(n.opts, 2000);
  if (s == NATS_OK) s = natsOptions_SetName(n.opts, options.replica.c_str());
  if (s != NATS_OK) return NatsError(s, jsErrCode(0), "NATS options");
  s = natsConnection_Connect(&n.nc, n.opts);
  if (s != NATS_OK) {
    return NatsError(
        s, jsErrCode(0),
        absl::StrCat("cannot reach the NATS servers ", absl::StrJoin(options.servers, ",")));
  }
  jsOptions jo;
  jsOptions_Init(&jo);
  jo.Wait = 5000;
  s = natsConnection_JetStream(&n.js, n.nc, &jo);
  if (s != NATS_OK) return NatsError(s, jsErrCode(0), "JetStream");

  // The stream: created by the first replica that finds none. Right after the NATS servers
  // start, JetStream may not have a leader yet; wait for one a while.
  const std::string subjects = absl::StrCat(options.stream, ".shard.*");
  const char* subject_list[] = {subjects.c_str()};
  const absl::Time give_up = absl::Now() + absl::Seconds(60);
  while (true) {
    jsStreamInfo* si = nullptr;
    jsErrCode err = jsErrCode(0);
    s = js_GetStreamInfo(&si, n.js, options.stream.c_str(), nullptr, &err);
    if (s == NATS_OK) {
      const int64_t copies = si->Config->Replicas;
      jsStreamInfo_Destroy(si);
      if (copies != options.stream_replicas) {
        spdlog::warn("cluster: stream {} keeps {} copies, not --cluster-stream-replicas {}",
                     options.stream, copies, options.stream_replicas);
      }
      break;
    }
    if (s == NATS_NOT_FOUND || err == JSStreamNotFoundErr) {
      jsStreamConfig cfg;
      jsStreamConfig_Init(&cfg);
      cfg.Name = options.stream.c_str();
      cfg.Subjects = subject_list;
      cfg.SubjectsLen = 1;
      cfg.Storage = js_FileStorage;
      cfg.Replicas = options.stream_replicas;
      err = jsErrCode(0);
      s = js_AddStream(&si, n.js, &cfg, nullptr, &err);
      if (si != nullptr) jsStreamInfo_Destroy(si);
      if (s == NATS_OK || err == JSStreamNameExistErr) {
        spdlog::info("cluster: created stream {} ({} copies, subjects {})", options.stream,
                     options.stream_replicas, subjects);
        break;
      }
    }
    if (absl::Now() > give_up) {
      return NatsError(s, err,
                       absl::StrCat("cannot find or create the JetStream stream ", options.stream));
    }
    absl::SleepFor(absl::Milliseconds(500));
  }
  return log;
}

absl::StatusOr<uint64_t> ClusterLog::PublishBytes(const char* op, const std::string& payload,
                                                  absl::Time deadline) {
  natsMsg* msg = nullptr;
  natsStatus s = natsMsg_Create(&msg, subject_.c_str(), nullptr, payload.data(),
                                static_cast<int>(payload.size()));
  if (s == NATS_OK) s = natsMsgHeader_Set(msg, kOpHeader, op);
  if (s != NATS_OK) {
    if (msg != nullptr) natsMsg_Destroy(msg);
    return NatsError(s, jsErrCode(0), "building a log entry");
  }
  jsPubOptions po;
  jsPubOptions_Init(&po);
  const int64_t left_ms = absl::ToInt64Milliseconds(deadline - absl::Now());
  po.MaxWait = std::clamp<int64_t>(left_ms, 1, 30000);
  jsPubAck* ack = nullptr;
  jsErrCode err = jsErrCode(0);
  s = js_PublishMsg(&ack, nats_->js, msg, &po, &err);
  natsMsg_Destroy(msg);
  if (s != NATS_OK) {
    return NatsError(s, err,
                     "the cluster log did not store the write on a quorum (not acknowledged: "
                     "send it again)");
  }
  const uint64_t sequence = ack->Sequence;
  jsPubAck_Destroy(ack);
  return sequence;
}

absl::StatusOr<uint64_t> ClusterLog::Publish(const v1::IngestRequest& request,
                                             absl::Time deadline) {
  return PublishBytes(kOpIngest, request.SerializeAsString(), deadline);
}

absl::StatusOr<uint64_t> ClusterLog::Publish(const v1::ForgetRequest& request,
                                             absl::Time deadline) {
  return PublishBytes(kOpForget, request.SerializeAsString(), deadline);
}

absl::Status ClusterLog::Subscribe() {
  Nats& n = *nats_;
  if (n.sub != nullptr) {
    natsSubscription_Destroy(n.sub);
    n.sub = nullptr;
  }
  // The durable consumer starts again from the bank's own position at every (re)subscription:
  // entries it delivered to an earlier run and never saw acknowledged would otherwise come back
  // only after their ack wait, behind later ones, and a bank that is behind the consumer (a new,
  // empty volume; a restored snapshot) would miss entries.
  const uint64_t applied = applied_.load();
  jsErrCode err = jsErrCode(0);
  natsStatus s =
      js_DeleteConsumer(n.js, options_.stream.c_str(), options_.replica.c_str(), nullptr, &err);
  if (s != NATS_OK && s != NATS_NOT_FOUND && err != JSConsumerNotFoundErr) {
    return NatsError(s, err, "replacing the durable consumer");
  }
  jsSubOptions so;
  jsSubOptions_Init(&so);
  so.Config.Durable = options_.replica.c_str();
  so.Config.FilterSubject = subject_.c_str();
  so.Config.AckPolicy = js_AckExplicit;
  so.Config.AckWait = int64_t{60} * 1000 * 1000 * 1000;  // ns
  so.Config.MaxAckPending = 4 * kFetchBatch;
  if (applied > 0) {
    so.Config.DeliverPolicy = js_DeliverByStartSequence;
    so.Config.OptStartSeq = applied + 1;
  } else {
    so.Config.DeliverPolicy = js_DeliverAll;
  }
  err = jsErrCode(0);
  s = js_PullSubscribe(&n.sub, n.js, subject_.c_str(), options_.replica.c_str(), nullptr, &so,
                       &err);
  if (s != NATS_OK) return NatsError(s, err, absl::StrCat("consuming ", subject_));
  return absl::OkStatus();
}

absl::Status ClusterLog::Start(Applier apply) {
  // The consumer may not be creatable while the NATS cluster elects leaders: retry a while.
  const absl::Time give_up = absl::Now() + absl::Seconds(60);
  absl::Status s;
  while (!(s = Subscribe()).ok()) {
    if (absl::Now() > give_up) return s;
    spdlog::warn("cluster: {}; retrying", std::string(s.message()));
    absl::SleepFor(absl::Milliseconds(500));
  }
  spdlog::info("{}", Describe());
  thread_ = std::thread([this, apply = std::move(apply)] { Loop(apply); });
  return absl::OkStatus();
}

void ClusterLog::Stop() {
  stop_ = true;
  if (thread_.joinable()) thread_.join();
  applied_cv_.notify_all();
}

void ClusterLog::SetApplied(uint64_t sequence) {
  {
    std::lock_guard<std::mutex> lock(applied_mu_);
    applied_ = sequence;
  }
  applied_cv_.notify_all();
}

void ClusterLog::Loop(Applier apply) {
  absl::Time last_warning = absl::InfinitePast();
  auto warn = [&](const absl::Status& s) {
    if (absl::Now() - last_warning > absl::Seconds(10)) {
      spdlog::warn("cluster: {}", std::string(s.message()));
      last_warning = absl::Now();
    }
  };
  int fetch_errors = 0;
  while (!stop_.load()) {
    natsMsgList list{};
    jsErrCode err = jsErrCode(0);
    natsStatus s = natsSubscription_Fetch(&list, nats_->sub, kFetchBatch, kFetchWaitMs, &err);
    if (s == NATS_TIMEOUT) {
      caught_up_ = true;  // nothing pending for this shard
      continue;
    }
    if (s != NATS_OK) {
      warn(NatsError(s, err, absl::StrCat("fetching ", subject_)));
      absl::SleepFor(absl::Milliseconds(250));
      // A consumer that keeps failing (lost with a server's store, say) is made again.
      if (++fetch_errors % 20 == 0) {
        if (absl::Status r = Subscribe(); !r.ok()) warn(r);
      }
      continue;
    }
    fetch_errors = 0;
    std::vector<LogRecord> records;
    uint64_t last = applied_.load();
    uint64_t pending = 1;
    for (int i = 0; i < list.Count; ++i) {
      natsMsg* msg = list.Msgs[i];
      jsMsgMetaData* meta = nullptr;
      if (natsMsg_GetMetaData(&meta, msg) != NATS_OK) continue;
      const uint64_t sequence = meta->Sequence.Stream;
      pending = meta->NumPending;
      jsMsgMetaData_Destroy(meta);
      if (sequence <= last) continue;  // applied before a restart, or redelivered
      last = sequence;
      const char* op = nullptr;
      natsMsgHeader_Get(msg, kOpHeader, &op);
      LogRecord record;
      record.sequence = sequence;
      bool parsed = false;
      if (op != nullptr && std::strcmp(op, kOpIngest) == 0) {
        v1::IngestRequest r;
        parsed = r.ParseFromArray(natsMsg_GetData(msg), natsMsg_GetDataLength(msg));
        record.request = std::move(r);
      } else if (op != nullptr && std::strcmp(op, kOpForget) == 0) {
        v1::ForgetRequest r;
        parsed = r.ParseFromArray(natsMsg_GetData(msg), natsMsg_GetDataLength(msg));
        record.request = std::move(r);
      }
      if (!parsed) {
        spdlog::error("cluster: log entry {} of {} is not a knowd write (op {}); skipped", sequence,
                      subject_, op != nullptr ? op : "none");
        continue;
      }
      records.push_back(std::move(record));
    }
    absl::Status applied = records.empty() ? absl::OkStatus() : apply(records);
    if (applied.ok() && last > applied_.load()) {
      applied = bank_->SetMarker(kAppliedMarker, absl::StrCat(last));
    }
    if (applied.ok()) {
      for (int i = 0; i < list.Count; ++i) natsMsg_Ack(list.Msgs[i], nullptr);
    }
    natsMsgList_Destroy(&list);
    if (!applied.ok()) {
      // Nothing of the batch counts as applied: consume again from the bank's position, in
      // order (each entry is idempotent, so the part that was applied may be applied again).
      warn(applied);
      absl::SleepFor(absl::Milliseconds(250));
      for (absl::Status r = Subscribe(); !r.ok() && !stop_.load(); r = Subscribe()) {
        warn(r);
        absl::SleepFor(absl::Milliseconds(500));
      }
      continue;
    }
    if (last > applied_.load()) SetApplied(last);
    if (pending == 0) caught_up_ = true;
  }
}

absl::Status ClusterLog::WaitApplied(uint64_t sequence, absl::Time deadline,
                                     const std::function<bool()>& cancelled) {
  std::unique_lock<std::mutex> lock(applied_mu_);
  while (applied_.load() < sequence) {
    if (cancelled && cancelled()) return absl::CancelledError("the call was cancelled");
    if (absl::Now() >= deadline) {
      return absl::DeadlineExceededError(
          absl::StrCat("this replica has applied the cluster log up to ", applied_.load(),
                       ", not yet ", sequence, ": retry, or ask another replica of the shard"));
    }
    const absl::Time wake = std::min(deadline, absl::Now() + absl::Milliseconds(100));
    applied_cv_.wait_for(lock, absl::ToChronoNanoseconds(wake - absl::Now()));
  }
  return absl::OkStatus();
}

std::string ClusterLog::Describe() const {
  return absl::StrCat("cluster: replica ", options_.replica, " of shard ", options_.shard, "/",
                      options_.shards, ", log ", subject_, " in stream ", options_.stream, " (",
                      options_.stream_replicas, " copies) on ",
                      absl::StrJoin(options_.servers, ","), ", applied up to ", applied_.load());
}

}  // namespace knowd
