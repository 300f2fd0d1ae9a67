// LRU cache of decoded latents, bounded in bytes (private to storage/). Thread-safe.
// Passage ids are never reused, so an entry can only go stale by deletion; the bank erases
// deleted ids under its index lock, which also orders the erase after any concurrent insert.
#pragma once

#include <cstdint>
#include <list>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace knowd::storage {

class LatentCache {
 public:
  using Value = std::shared_ptr<const std::vector<float>>;

  explicit LatentCache(size_t capacity_bytes) : capacity_bytes_(capacity_bytes) {}

  // Returns the cached latents of `pid` if it belongs to `ns`, else nullptr.
  Value Lookup(uint64_t pid, std::string_view ns);
  void Insert(uint64_t pid, std::string ns, Value value);
  void Erase(std::span<const uint64_t> pids);
  void Clear();

  uint64_t hits() const;
  uint64_t misses() const;

 private:
  struct Entry {
    uint64_t pid;
    std::string ns;
    Value value;
    size_t bytes;
  };
  void EvictLocked();

  const size_t capacity_bytes_;
  mutable std::mutex mu_;
  std::list<Entry> lru_;  // front = most recently used
  std::unordered_map<uint64_t, std::list<Entry>::iterator> map_;
  size_t bytes_ = 0;
  uint64_t hits_ = 0;
  uint64_t misses_ = 0;
};

}  // namespace knowd::storage
