// RocksDB key layout and record encodings of the memory bank (private to storage/).
//
// Column family "passages":
//   'd' ns '\0' doc_id  -> DocRecord       (ns never contains NUL, so prefixes are unambiguous)
//   'p' be64(pid)       -> PassageRecord   (big-endian: iteration order is id order)
// Column family "latents":  be64(pid)          -> encoded latent matrix (latent_codec.h)
// Column family "keys":     ns '\0' be64(pid)  -> key_dim f32, little-endian
// Column family "meta":     see the kMeta* names below.
// Column family "sessions": ns '\0' session_id -> SessionRecord
//
// Records start with a version byte; integers are little-endian fixed width; strings and lists
// are u32-length-prefixed. Decoders reject truncated or trailing bytes.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace knowd::storage {

inline constexpr char kCfPassages[] = "passages";
inline constexpr char kCfLatents[] = "latents";
inline constexpr char kCfKeys[] = "keys";
inline constexpr char kCfMeta[] = "meta";
inline constexpr char kCfSessions[] = "sessions";

// Meta keys.
inline constexpr char kMetaLayout[] = "layout";                   // LayoutRecord
inline constexpr char kMetaNextPassageId[] = "next_pid";          // u64
inline constexpr char kMetaFingerprint[] = "fingerprint";         // FingerprintRecord
inline constexpr char kMetaReencodeTarget[] = "reencode/target";  // FingerprintRecord
inline constexpr char kMetaReencodeCursor[] = "reencode/cursor";  // u64 last done pid, u64 done
inline constexpr char kMetaNamespacePrefix[] = "ns/";             // "ns/" ns -> NamespaceCounts
inline constexpr char kMetaMarkerPrefix[] = "marker/";  // "marker/" name -> the owner's bytes

std::string DocKey(std::string_view ns, std::string_view doc_id);
std::string DocKeyPrefix(std::string_view ns);  // 'd' ns '\0'
std::string PassageKey(uint64_t pid);           // 'p' be64
std::string LatentKey(uint64_t pid);            // be64
std::string KeyKey(std::string_view ns, uint64_t pid);
std::string KeyPrefix(std::string_view ns);  // ns '\0'
std::string NamespaceMetaKey(std::string_view ns);

// Inverse of PassageKey / the pid suffix of KeyKey. Nullopt when malformed.
std::optional<uint64_t> PidFromPassageKey(std::string_view key);
std::optional<uint64_t> PidFromKeySuffix(std::string_view key);

std::string EncodeU64(uint64_t v);
absl::StatusOr<uint64_t> DecodeU64(std::string_view bytes);

struct DocRecord {
  int64_t ingest_us = 0;
  std::optional<int64_t> valid_from_us;
  std::string metadata;
  std::string text;
  std::vector<uint64_t> passage_ids;
};
std::string EncodeDoc(const DocRecord& r);
absl::StatusOr<DocRecord> DecodeDoc(std::string_view bytes);

struct PassageRecord {
  std::string ns;
  std::string doc_id;
  uint32_t index = 0;  // position in the document
  int64_t ingest_us = 0;
  std::optional<int64_t> valid_from_us;
  std::string text;
  // Bytes of the document before `text` that its encoder input began with (the overlap from the
  // passage before). A trailing field: records written before it have none and read as 0.
  uint32_t context_bytes = 0;
};
std::string EncodePassage(const PassageRecord& r);
absl::StatusOr<PassageRecord> DecodePassage(std::string_view bytes);

struct LayoutRecord {
  uint32_t key_dim = 0;
  uint32_t latent_rows = 0;
  uint32_t latent_cols = 0;
  uint8_t metric = 0;
};
std::string EncodeLayout(const LayoutRecord& r);
absl::StatusOr<LayoutRecord> DecodeLayout(std::string_view bytes);

struct FingerprintRecord {
  std::string adapter_hash;
  std::string base_model_hash;
  std::string key_hash;  // trailing: empty in records written before it existed
};
std::string EncodeFingerprint(const FingerprintRecord& r);
absl::StatusOr<FingerprintRecord> DecodeFingerprint(std::string_view bytes);

struct NamespaceCounts {
  uint64_t documents = 0;
  uint64_t passages = 0;
};
std::string EncodeCounts(const NamespaceCounts& c);
absl::StatusOr<NamespaceCounts> DecodeCounts(std::string_view bytes);

// Key of a session in "sessions" (ns never contains NUL) and the prefix of a namespace's.
std::string SessionKey(std::string_view ns, std::string_view id);
std::string SessionKeyPrefix(std::string_view ns);
// The namespace a SessionKey names (the key up to its NUL).
std::string_view SessionKeyNamespace(std::string_view key);

struct SessionRecord {
  std::string label;
  std::string mapper_sha256;
  std::string state;  // raw f32, little-endian
  int64_t chunks = 0;
  int64_t tokens = 0;
  int64_t created_us = 0;
  int64_t updated_us = 0;
  int64_t ttl_seconds = 0;  // 0: forever
  uint64_t revision = 0;
};
std::string EncodeSession(const SessionRecord& r);
absl::StatusOr<SessionRecord> DecodeSession(std::string_view bytes);

// Keys are stored as raw f32 (little-endian hosts only; checked at compile time).
std::string EncodeKeyVector(const float* key, int dim);
absl::Status DecodeKeyVector(std::string_view bytes, int dim, float* out);

// Debian's Abseil has its own string_view type; StrCat and Status messages need this bridge.
inline absl::string_view AbslView(std::string_view s) { return {s.data(), s.size()}; }

inline int64_t ToMicros(absl::Time t) { return absl::ToUnixMicros(t); }
inline absl::Time FromMicros(int64_t us) { return absl::FromUnixMicros(us); }

}  // namespace knowd::storage
