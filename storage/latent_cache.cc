#include "storage/latent_cache.h"

namespace knowd::storage {

LatentCache::Value LatentCache::Lookup(uint64_t pid, std::string_view ns) {
  std::lock_guard lock(mu_);
  auto it = map_.find(pid);
  if (it == map_.end() || it->second->ns != ns) {
    ++misses_;
    return nullptr;
  }
  lru_.splice(lru_.begin(), lru_, it->second);
  ++hits_;
  return it->second->value;
}

void LatentCache::Insert(uint64_t pid, std::string ns, Value value) {
  const size_t bytes = value->size() * sizeof(float) + ns.size() + sizeof(Entry);
  if (bytes > capacity_bytes_) return;
  std::lock_guard lock(mu_);
  if (auto it = map_.find(pid); it != map_.end()) {
    bytes_ -= it->second->bytes;
    lru_.erase(it->second);
    map_.erase(it);
  }
  lru_.push_front(Entry{pid, std::move(ns), std::move(value), bytes});
  map_[pid] = lru_.begin();
  bytes_ += bytes;
  EvictLocked();
}

void LatentCache::Erase(std::span<const uint64_t> pids) {
  std::lock_guard lock(mu_);
  for (uint64_t pid : pids) {
    auto it = map_.find(pid);
    if (it == map_.end()) continue;
    bytes_ -= it->second->bytes;
    lru_.erase(it->second);
    map_.erase(it);
  }
}

void LatentCache::Clear() {
  std::lock_guard lock(mu_);
  lru_.clear();
  map_.clear();
  bytes_ = 0;
}

uint64_t LatentCache::hits() const {
  std::lock_guard lock(mu_);
  return hits_;
}

uint64_t LatentCache::misses() const {
  std::lock_guard lock(mu_);
  return misses_;
}

void LatentCache::EvictLocked() {
  while (bytes_ > capacity_bytes_ && !lru_.empty()) {
    bytes_ -= lru_.back().bytes;
    map_.erase(lru_.back().pid);
    lru_.pop_back();
  }
}

}  // namespace knowd::storage
