// Sessions: the "sessions" column family, one record per (namespace, id). Writes hold write_mu_
// and commit one synced WriteBatch each, so a record is replaced whole or not at all; reads hold
// index_mu_ shared (for closed_) and see the latest committed record.
#include <spdlog/spdlog.h>

#include <cmath>
#include <cstring>
#include <memory>
#include <mutex>
#include <shared_mutex>

#include "absl/strings/str_cat.h"
#include "storage/bank_impl.h"

namespace knowd::storage {
namespace {

constexpr size_t kMaxSessionIdBytes = 256;
constexpr size_t kMaxSessionLabelBytes = 256;

absl::Status ValidateSessionKey(std::string_view ns, std::string_view id) {
  KNOWD_RETURN_IF_ERROR(ValidateNamespace(ns));
  if (id.empty() || id.size() > kMaxSessionIdBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("session id must be 1..", kMaxSessionIdBytes, " bytes"));
  }
  return absl::OkStatus();
}

bool Expired(const SessionRecord& r, absl::Time now) {
  return r.ttl_seconds > 0 && FromMicros(r.updated_us) + absl::Seconds(r.ttl_seconds) <= now;
}

Session ToSession(std::string_view ns, std::string_view id, SessionRecord&& r, bool with_state) {
  Session s;
  s.name_space = std::string(ns);
  s.id = std::string(id);
  s.label = std::move(r.label);
  s.mapper_sha256 = std::move(r.mapper_sha256);
  s.state_bytes = static_cast<int64_t>(r.state.size());
  if (with_state) {
    s.state.resize(r.state.size() / sizeof(float));
    std::memcpy(s.state.data(), r.state.data(), s.state.size() * sizeof(float));
  }
  s.chunks = r.chunks;
  s.tokens = r.tokens;
  s.created = FromMicros(r.created_us);
  s.updated = FromMicros(r.updated_us);
  s.ttl_seconds = r.ttl_seconds;
  s.revision = r.revision;
  return s;
}

absl::Status NotFound(std::string_view ns, std::string_view id) {
  return absl::NotFoundError(absl::StrCat("no session '", AbslView(id), "' in namespace '",
                                          AbslView(ns), "' (unknown, deleted or expired)"));
}

}  // namespace

absl::Status BankImpl::PutSession(Session* session, absl::Time now) {
  KNOWD_RETURN_IF_ERROR(ValidateSessionKey(session->name_space, session->id));
  if (session->label.size() > kMaxSessionLabelBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("session label must be at most ", kMaxSessionLabelBytes, " bytes"));
  }
  if (session->state.empty()) return absl::InvalidArgumentError("session state is empty");
  for (float v : session->state) {
    if (!std::isfinite(v)) return absl::InvalidArgumentError("session state is not finite");
  }
  if (session->ttl_seconds < 0) return absl::InvalidArgumentError("session ttl is negative");
  const std::string key = SessionKey(session->name_space, session->id);
  std::lock_guard write(write_mu_);
  KNOWD_RETURN_IF_ERROR(CheckOpenLocked());
  uint64_t stored_revision = 0;
  std::string value;
  rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), cf_sessions_, key, &value);
  if (s.ok()) {
    KNOWD_ASSIGN_OR_RETURN(SessionRecord stored, DecodeSession(value));
    if (!Expired(stored, now)) stored_revision = stored.revision;
  } else if (!s.IsNotFound()) {
    return FromRocks(s, "reading a session");
  }
  if (stored_revision != session->revision) {
    if (session->revision == 0) {
      return absl::AlreadyExistsError(
          absl::StrCat("session '", AbslView(session->id), "' already exists"));
    }
    return absl::AbortedError(absl::StrCat("session '", AbslView(session->id),
                                           "' was changed or removed by another call; retry"));
  }
  SessionRecord r;
  r.label = session->label;
  r.mapper_sha256 = session->mapper_sha256;
  r.state.assign(reinterpret_cast<const char*>(session->state.data()),
                 session->state.size() * sizeof(float));
  r.chunks = session->chunks;
  r.tokens = session->tokens;
  r.created_us = ToMicros(session->created);
  r.updated_us = ToMicros(session->updated);
  r.ttl_seconds = session->ttl_seconds;
  r.revision = stored_revision + 1;
  rocksdb::WriteBatch wb;
  wb.Put(cf_sessions_, key, EncodeSession(r));
  KNOWD_RETURN_IF_ERROR(CommitBatch(&wb, "storing a session"));
  session->revision = r.revision;
  session->state_bytes = static_cast<int64_t>(r.state.size());
  return absl::OkStatus();
}

absl::StatusOr<Session> BankImpl::GetSession(std::string_view name_space, std::string_view id,
                                             absl::Time now) {
  KNOWD_RETURN_IF_ERROR(ValidateSessionKey(name_space, id));
  std::shared_lock lock(index_mu_);
  KNOWD_RETURN_IF_ERROR(CheckOpenLocked());
  std::string value;
  rocksdb::Status s =
      db_->Get(rocksdb::ReadOptions(), cf_sessions_, SessionKey(name_space, id), &value);
  if (s.IsNotFound()) return NotFound(name_space, id);
  KNOWD_RETURN_IF_ERROR(FromRocks(s, "reading a session"));
  KNOWD_ASSIGN_OR_RETURN(SessionRecord r, DecodeSession(value));
  if (Expired(r, now)) return NotFound(name_space, id);
  if (r.state.size() % sizeof(float) != 0) return absl::DataLossError("corrupt session state");
  return ToSession(name_space, id, std::move(r), /*with_state=*/true);
}

absl::Status BankImpl::DeleteSession(std::string_view name_space, std::string_view id,
                                     absl::Time now) {
  KNOWD_RETURN_IF_ERROR(ValidateSessionKey(name_space, id));
  const std::string key = SessionKey(name_space, id);
  std::lock_guard write(write_mu_);
  KNOWD_RETURN_IF_ERROR(CheckOpenLocked());
  std::string value;
  rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), cf_sessions_, key, &value);
  if (s.IsNotFound()) return NotFound(name_space, id);
  KNOWD_RETURN_IF_ERROR(FromRocks(s, "reading a session"));
  bool expired = false;
  if (absl::StatusOr<SessionRecord> r = DecodeSession(value); r.ok()) expired = Expired(*r, now);
  rocksdb::WriteBatch wb;
  wb.Delete(cf_sessions_, key);
  KNOWD_RETURN_IF_ERROR(CommitBatch(&wb, "deleting a session"));
  return expired ? NotFound(name_space, id) : absl::OkStatus();
}

absl::StatusOr<std::vector<Session>> BankImpl::ListSessions(std::string_view name_space,
                                                            absl::Time now) {
  KNOWD_RETURN_IF_ERROR(ValidateNamespace(name_space));
  std::shared_lock lock(index_mu_);
  KNOWD_RETURN_IF_ERROR(CheckOpenLocked());
  const std::string prefix = SessionKeyPrefix(name_space);
  std::vector<Session> out;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions(), cf_sessions_));
  for (it->Seek(prefix); it->Valid() && it->key().starts_with(prefix); it->Next()) {
    KNOWD_ASSIGN_OR_RETURN(SessionRecord r, DecodeSession(it->value().ToStringView()));
    if (Expired(r, now)) continue;
    std::string_view id = it->key().ToStringView().substr(prefix.size());
    out.push_back(ToSession(name_space, id, std::move(r), /*with_state=*/false));
  }
  KNOWD_RETURN_IF_ERROR(FromRocks(it->status(), "listing sessions"));
  return out;
}

absl::StatusOr<int> BankImpl::SweepSessions(absl::Time now) {
  std::lock_guard write(write_mu_);
  KNOWD_RETURN_IF_ERROR(CheckOpenLocked());
  rocksdb::WriteBatch wb;
  int removed = 0;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions(), cf_sessions_));
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    absl::StatusOr<SessionRecord> r = DecodeSession(it->value().ToStringView());
    if (!r.ok()) {
      spdlog::warn("memory bank {}: {}; leaving it", options_.data_dir, r.status().ToString());
      continue;
    }
    if (!Expired(*r, now)) continue;
    wb.Delete(cf_sessions_, it->key());
    ++removed;
  }
  KNOWD_RETURN_IF_ERROR(FromRocks(it->status(), "sweeping sessions"));
  if (removed > 0) KNOWD_RETURN_IF_ERROR(CommitBatch(&wb, "removing expired sessions"));
  return removed;
}

absl::StatusOr<MemoryBank::SessionTotals> BankImpl::CountSessions(absl::Time now) {
  std::shared_lock lock(index_mu_);
  KNOWD_RETURN_IF_ERROR(CheckOpenLocked());
  SessionTotals totals;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions(), cf_sessions_));
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    absl::StatusOr<SessionRecord> r = DecodeSession(it->value().ToStringView());
    if (!r.ok() || Expired(*r, now)) continue;
    const int64_t bytes = static_cast<int64_t>(r->state.size());
    ++totals.sessions;
    totals.state_bytes += bytes;
    SessionCount& ns =
        totals.namespaces[std::string(SessionKeyNamespace(it->key().ToStringView()))];
    ++ns.sessions;
    ns.state_bytes += bytes;
  }
  KNOWD_RETURN_IF_ERROR(FromRocks(it->status(), "counting sessions"));
  return totals;
}

}  // namespace knowd::storage
