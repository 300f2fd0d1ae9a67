// The bounded queue in front of each scheduler (ingest batching, ask batching). Producers are
// gRPC handler threads; they are never blocked: a full queue refuses the item with
// RESOURCE_EXHAUSTED so the client backs off, and a closed one (shutdown) with UNAVAILABLE.
//
// Thread-safety: every method may be called from any thread.
#pragma once

#include <algorithm>
#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace knowd {

template <typename T>
class BoundedQueue {
 public:
  // `name` appears in error messages ("the ask queue is full (256 waiting)").
  BoundedQueue(std::string name, size_t capacity) : name_(std::move(name)), capacity_(capacity) {}

  // Appends `item`, or refuses it: RESOURCE_EXHAUSTED when capacity() items wait, UNAVAILABLE
  // after Close(). A refused item is left in place (not moved from).
  absl::Status TryPush(T& item) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (closed_) return absl::UnavailableError("the daemon is shutting down");
      if (items_.size() >= capacity_) {
        return absl::ResourceExhaustedError(absl::StrCat(
            "the ", name_, " queue is full (", items_.size(), " waiting); retry with backoff"));
      }
      items_.push_back({std::move(item), absl::Now()});
    }
    cv_.notify_all();
    return absl::OkStatus();
  }

  // Waits until an item is there (or the queue is closed and empty: returns false), then for up
  // to `max_wait` after the first item's arrival while fewer than `max_items` wait, and moves up
  // to `max_items` items into `out` (cleared first), oldest first.
  bool PopBatch(size_t max_items, absl::Duration max_wait, std::vector<T>* out) {
    out->clear();
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return closed_ || !items_.empty(); });
    if (items_.empty()) return false;
    const absl::Time until = items_.front().arrived + max_wait;
    while (!closed_ && items_.size() < max_items) {
      const absl::Duration left = until - absl::Now();
      if (left <= absl::ZeroDuration()) break;
      cv_.wait_for(lock, absl::ToChronoNanoseconds(left));
    }
    const size_t n = std::min(max_items, items_.size());
    for (size_t i = 0; i < n; ++i) {
      out->push_back(std::move(items_.front().item));
      items_.pop_front();
    }
    return true;
  }

  // Moves up to `max_items` waiting items into `out` without blocking; returns how many.
  size_t TryPop(size_t max_items, std::vector<T>* out) {
    std::lock_guard<std::mutex> lock(mu_);
    size_t n = 0;
    while (n < max_items && !items_.empty()) {
      out->push_back(std::move(items_.front().item));
      items_.pop_front();
      ++n;
    }
    return n;
  }

  // Refuses further pushes; PopBatch still returns what waits, then false.
  void Close() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      closed_ = true;
    }
    cv_.notify_all();
  }

  size_t size() const {
    std::lock_guard<std::mutex> lock(mu_);
    return items_.size();
  }
  size_t capacity() const { return capacity_; }

 private:
  struct Entry {
    T item;
    absl::Time arrived;
  };
  const std::string name_;
  const size_t capacity_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Entry> items_;
  bool closed_ = false;
};

// Writes in flight per client: Forget calls and ingested documents that are queued or being
// processed, counted under the client's key (its token, else its connection). The queues behind
// are shared by every client in arrival order, so without this one client's flood would fill
// them and every other client's writes would wait behind all of it. A client at its cap has its
// next Forget refused (RESOURCE_EXHAUSTED) and its Ingest streams stop reading until one of its
// writes completes: it waits on itself, while other clients' writes keep their places.
//
// It also paces each client's Forget calls to a rate (a token bucket holding a second's worth):
// a call past it waits its turn, holding no permit, instead of being answered at once. A refusal
// costs the daemon as much gRPC work as an answer, so only a wait slows a client that re-sends
// at once; the rest of the cores stay with the other clients' questions.
//
// Thread-safety: every method may be called from any thread.
class ClientWriteLimiter {
 public:
  // `cap` <= 0: no limit; `forgets_per_second` <= 0: no pacing.
  explicit ClientWriteLimiter(int cap, double forgets_per_second = 0)
      : cap_(cap), forgets_per_second_(forgets_per_second) {}

  // Reserves the turn of one of `client`'s Forget calls at `now`: how long the call must wait
  // for it (zero within the rate). CancelForget gives back a turn the call will not use.
  absl::Duration ReserveForget(const std::string& client, absl::Time now) {
    if (forgets_per_second_ <= 0) return absl::ZeroDuration();
    std::lock_guard<std::mutex> lock(mu_);
    if (buckets_.size() > kMaxBuckets) DropFullBucketsLocked(now);
    auto [it, fresh] = buckets_.try_emplace(client, Bucket{forgets_per_second_, now});
    Bucket& bucket = it->second;
    if (!fresh) {
      bucket.tokens = std::min(
          forgets_per_second_,
          bucket.tokens + absl::ToDoubleSeconds(now - bucket.refilled) * forgets_per_second_);
      bucket.refilled = now;
    }
    bucket.tokens -= 1;
    return bucket.tokens >= 0 ? absl::ZeroDuration()
                              : absl::Seconds(-bucket.tokens / forgets_per_second_);
  }
  void CancelForget(const std::string& client) {
    std::lock_guard<std::mutex> lock(mu_);
    if (auto it = buckets_.find(client); it != buckets_.end()) it->second.tokens += 1;
  }
  double forgets_per_second() const { return forgets_per_second_; }

  // Takes one write permit of `client`; RESOURCE_EXHAUSTED when it has `cap` writes in flight.
  absl::Status TryAcquire(const std::string& client) {
    std::lock_guard<std::mutex> lock(mu_);
    int& n = in_flight_[client];
    if (cap_ > 0 && n >= cap_) {
      return absl::ResourceExhaustedError(
          absl::StrCat("this client has ", n,
                       " writes in flight, the most one client may have "
                       "(client-writes-in-flight)"));
    }
    ++n;
    return absl::OkStatus();
  }

  // Takes one write permit of `client`, waiting while it has `cap` writes in flight; false (and
  // nothing taken) once `stop()` returns true, which is polled every `poll`.
  bool Acquire(const std::string& client, const std::function<bool()>& stop,
               absl::Duration poll = absl::Milliseconds(50)) {
    std::unique_lock<std::mutex> lock(mu_);
    while (cap_ > 0 && in_flight_[client] >= cap_) {
      if (stop()) return false;
      cv_.wait_for(lock, absl::ToChronoNanoseconds(poll));
    }
    ++in_flight_[client];
    return true;
  }

  // Gives back a permit taken by TryAcquire or Acquire.
  void Release(const std::string& client) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = in_flight_.find(client);
      if (it == in_flight_.end()) return;
      if (--it->second <= 0) in_flight_.erase(it);
    }
    cv_.notify_all();
  }

  int in_flight(const std::string& client) const {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = in_flight_.find(client);
    return it == in_flight_.end() ? 0 : it->second;
  }
  int cap() const { return cap_; }

 private:
  struct Bucket {
    double tokens;  // negative: turns reserved ahead
    absl::Time refilled;
  };
  // Buckets kept before the full ones (clients idle for a second) are dropped.
  static constexpr size_t kMaxBuckets = 4096;

  void DropFullBucketsLocked(absl::Time now) {
    for (auto it = buckets_.begin(); it != buckets_.end();) {
      const double tokens = it->second.tokens +
                            absl::ToDoubleSeconds(now - it->second.refilled) * forgets_per_second_;
      it = tokens >= forgets_per_second_ ? buckets_.erase(it) : std::next(it);
    }
  }

  const int cap_;
  const double forgets_per_second_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::map<std::string, int> in_flight_;  // clients with writes in flight only
  std::map<std::string, Bucket> buckets_;
};

// One write permit of a ClientWriteLimiter, given back when destroyed: a job holds it from its
// admission until its outcome is delivered.
class WritePermit {
 public:
  WritePermit(ClientWriteLimiter* limiter, std::string client)
      : limiter_(limiter), client_(std::move(client)) {}
  ~WritePermit() { limiter_->Release(client_); }
  WritePermit(const WritePermit&) = delete;
  WritePermit& operator=(const WritePermit&) = delete;

 private:
  ClientWriteLimiter* const limiter_;
  const std::string client_;
};

}  // namespace knowd
