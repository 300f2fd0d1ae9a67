// A rocksdb::FileSystem for fault injection, passed to the bank through BankOptions::env (the
// database and the index files are both written through it):
//   - a full disk: SetBudget(n) lets n more bytes be written (by every file together); then each
//     write stores what still fits and fails with NoSpace, as write(2) does with ENOSPC;
//   - a slow disk: SetDelays(append, sync) sleeps before every append and after every sync, so
//     a kill -9 aimed at an operation has a wide window (crash_child.cc).
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "rocksdb/env.h"
#include "rocksdb/file_system.h"

namespace knowd::storage::testing {

class FaultFileSystem : public rocksdb::FileSystemWrapper {
 public:
  static constexpr int64_t kUnlimited = -1;

  explicit FaultFileSystem(
      const std::shared_ptr<rocksdb::FileSystem>& base = rocksdb::FileSystem::Default())
      : rocksdb::FileSystemWrapper(base) {}
  const char* Name() const override { return "FaultFileSystem"; }

  // An Env for BankOptions::env that writes through `fs`.
  static std::shared_ptr<rocksdb::Env> EnvFor(const std::shared_ptr<FaultFileSystem>& fs) {
    return rocksdb::NewCompositeEnv(fs);
  }

  void SetBudget(int64_t bytes) {
    std::lock_guard lock(mu_);
    budget_ = bytes;
  }
  void SetDelays(std::chrono::microseconds append, std::chrono::microseconds sync) {
    append_delay_ = append;
    sync_delay_ = sync;
  }
  // Writes refused (or cut short) for want of space so far.
  int64_t failed_writes() const { return failed_writes_; }

  rocksdb::IOStatus NewWritableFile(const std::string& name, const rocksdb::FileOptions& options,
                                    std::unique_ptr<rocksdb::FSWritableFile>* result,
                                    rocksdb::IODebugContext* dbg) override {
    return Wrap(target()->NewWritableFile(name, options, result, dbg), result);
  }
  rocksdb::IOStatus ReopenWritableFile(const std::string& name, const rocksdb::FileOptions& options,
                                       std::unique_ptr<rocksdb::FSWritableFile>* result,
                                       rocksdb::IODebugContext* dbg) override {
    return Wrap(target()->ReopenWritableFile(name, options, result, dbg), result);
  }
  rocksdb::IOStatus ReuseWritableFile(const std::string& name, const std::string& old_name,
                                      const rocksdb::FileOptions& options,
                                      std::unique_ptr<rocksdb::FSWritableFile>* result,
                                      rocksdb::IODebugContext* dbg) override {
    return Wrap(target()->ReuseWritableFile(name, old_name, options, result, dbg), result);
  }

 private:
  class File : public rocksdb::FSWritableFileOwnerWrapper {
   public:
    File(std::unique_ptr<rocksdb::FSWritableFile>&& file, FaultFileSystem* fs)
        : rocksdb::FSWritableFileOwnerWrapper(std::move(file)), fs_(fs) {}

    rocksdb::IOStatus Append(const rocksdb::Slice& data, const rocksdb::IOOptions& options,
                             rocksdb::IODebugContext* dbg) override {
      return fs_->Write(
          data, [&](const rocksdb::Slice& part) { return target()->Append(part, options, dbg); });
    }
    rocksdb::IOStatus Append(const rocksdb::Slice& data, const rocksdb::IOOptions& options,
                             const rocksdb::DataVerificationInfo& /*info*/,
                             rocksdb::IODebugContext* dbg) override {
      return Append(data, options, dbg);
    }
    rocksdb::IOStatus PositionedAppend(const rocksdb::Slice& data, uint64_t offset,
                                       const rocksdb::IOOptions& options,
                                       rocksdb::IODebugContext* dbg) override {
      return fs_->Write(data, [&](const rocksdb::Slice& part) {
        return target()->PositionedAppend(part, offset, options, dbg);
      });
    }
    rocksdb::IOStatus PositionedAppend(const rocksdb::Slice& data, uint64_t offset,
                                       const rocksdb::IOOptions& options,
                                       const rocksdb::DataVerificationInfo& /*info*/,
                                       rocksdb::IODebugContext* dbg) override {
      return PositionedAppend(data, offset, options, dbg);
    }
    rocksdb::IOStatus Sync(const rocksdb::IOOptions& options,
                           rocksdb::IODebugContext* dbg) override {
      return fs_->AfterSync(target()->Sync(options, dbg));
    }
    rocksdb::IOStatus Fsync(const rocksdb::IOOptions& options,
                            rocksdb::IODebugContext* dbg) override {
      return fs_->AfterSync(target()->Fsync(options, dbg));
    }

   private:
    FaultFileSystem* fs_;
  };

  rocksdb::IOStatus Wrap(rocksdb::IOStatus s, std::unique_ptr<rocksdb::FSWritableFile>* result) {
    if (s.ok()) *result = std::make_unique<File>(std::move(*result), this);
    return s;
  }

  // Writes what the budget allows of `data` through `write`.
  template <typename WriteFn>
  rocksdb::IOStatus Write(const rocksdb::Slice& data, WriteFn write) {
    if (append_delay_.load().count() > 0) std::this_thread::sleep_for(append_delay_.load());
    size_t allowed = data.size();
    {
      std::lock_guard lock(mu_);
      if (budget_ != kUnlimited) {
        allowed = std::min<size_t>(data.size(), static_cast<size_t>(budget_));
        budget_ -= static_cast<int64_t>(allowed);
      }
    }
    if (allowed > 0) {
      rocksdb::IOStatus s = write(rocksdb::Slice(data.data(), allowed));
      if (!s.ok()) return s;
    }
    if (allowed < data.size()) {
      ++failed_writes_;
      return rocksdb::IOStatus::NoSpace("No space left on device");
    }
    return rocksdb::IOStatus::OK();
  }

  rocksdb::IOStatus AfterSync(rocksdb::IOStatus s) {
    if (sync_delay_.load().count() > 0) std::this_thread::sleep_for(sync_delay_.load());
    return s;
  }

  std::mutex mu_;
  int64_t budget_ = kUnlimited;  // guarded by mu_
  std::atomic<int64_t> failed_writes_ = 0;
  std::atomic<std::chrono::microseconds> append_delay_{std::chrono::microseconds(0)};
  std::atomic<std::chrono::microseconds> sync_delay_{std::chrono::microseconds(0)};
};

}  // namespace knowd::storage::testing
