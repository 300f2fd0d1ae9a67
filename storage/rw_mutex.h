// A reader-writer lock for the bank's in-memory indexes. Writers are preferred, so a steady
// stream of searches cannot hold an index update back. It is a plain pthread rwlock, which
// ThreadSanitizer understands (Debian's prebuilt Abseil is not instrumented, so TSan cannot see
// what an absl::Mutex orders). Meets the SharedMutex requirements: lock it with
// std::unique_lock (writers) and std::shared_lock (readers). Not recursive: a thread that holds
// it must not take it again.
#pragma once

#include <pthread.h>

namespace knowd::storage {

class RwMutex {
 public:
  RwMutex() {
    pthread_rwlockattr_t attr;
    pthread_rwlockattr_init(&attr);
    pthread_rwlockattr_setkind_np(&attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    pthread_rwlock_init(&lock_, &attr);
    pthread_rwlockattr_destroy(&attr);
  }
  ~RwMutex() { pthread_rwlock_destroy(&lock_); }
  RwMutex(const RwMutex&) = delete;
  RwMutex& operator=(const RwMutex&) = delete;

  void lock() { pthread_rwlock_wrlock(&lock_); }
  bool try_lock() { return pthread_rwlock_trywrlock(&lock_) == 0; }
  void unlock() { pthread_rwlock_unlock(&lock_); }
  void lock_shared() { pthread_rwlock_rdlock(&lock_); }
  bool try_lock_shared() { return pthread_rwlock_tryrdlock(&lock_) == 0; }
  void unlock_shared() { pthread_rwlock_unlock(&lock_); }

 private:
  pthread_rwlock_t lock_;
};

}  // namespace knowd::storage
