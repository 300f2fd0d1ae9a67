#include "storage/records.h"

#include <algorithm>
#include <bit>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace knowd::storage {
namespace {

static_assert(std::endian::native == std::endian::little,
              "records are stored little-endian; a big-endian port needs byte swaps here");

constexpr uint8_t kRecordVersion = 1;

void PutFixed32(std::string* out, uint32_t v) { out->append(reinterpret_cast<char*>(&v), 4); }
void PutFixed64(std::string* out, uint64_t v) { out->append(reinterpret_cast<char*>(&v), 8); }
void PutBytes(std::string* out, std::string_view s) {
  PutFixed32(out, static_cast<uint32_t>(s.size()));
  out->append(s);
}

void PutBigEndian64(std::string* out, uint64_t v) {
  for (int shift = 56; shift >= 0; shift -= 8) out->push_back(static_cast<char>(v >> shift));
}

uint64_t ReadBigEndian64(std::string_view s) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v = (v << 8) | static_cast<uint8_t>(s[i]);
  return v;
}

// Sequential reader; any out-of-bounds read latches `ok = false`.
class Reader {
 public:
  explicit Reader(std::string_view s) : s_(s) {}

  uint8_t U8() { return Take(1) ? static_cast<uint8_t>(s_[pos_ - 1]) : 0; }
  uint32_t U32() {
    uint32_t v = 0;
    if (Take(4)) std::memcpy(&v, s_.data() + pos_ - 4, 4);
    return v;
  }
  uint64_t U64() {
    uint64_t v = 0;
    if (Take(8)) std::memcpy(&v, s_.data() + pos_ - 8, 8);
    return v;
  }
  std::string Bytes() {
    uint32_t n = U32();
    if (!Take(n)) return {};
    return std::string(s_.substr(pos_ - n, n));
  }
  // A field added at the end of a record after records without it were written: 0 when absent.
  void Trailing(uint32_t& v) { v = ok_ && pos_ == s_.size() ? 0 : U32(); }
  void Trailing(std::string& v) { v = ok_ && pos_ == s_.size() ? std::string() : Bytes(); }

  // True when every read was in bounds and the input is fully consumed.
  bool Done() const { return ok_ && pos_ == s_.size(); }

  // Field decoders, the mirror of Writer's.
  void operator()(uint8_t& v) { v = U8(); }
  void operator()(uint32_t& v) { v = U32(); }
  void operator()(uint64_t& v) { v = U64(); }
  void operator()(int64_t& v) { v = static_cast<int64_t>(U64()); }
  void operator()(std::string& v) { v = Bytes(); }
  void operator()(std::optional<int64_t>& v) {
    const uint8_t has = U8();
    const int64_t t = static_cast<int64_t>(U64());
    v = has ? std::optional<int64_t>(t) : std::nullopt;
  }
  void operator()(std::vector<uint64_t>& v) {
    const uint32_t n = U32();
    // Bound the reservation by what the bytes can hold, so a corrupt count cannot allocate wildly.
    v.reserve(std::min<size_t>(n, (s_.size() - std::min(pos_, s_.size())) / 8));
    for (uint32_t i = 0; i < n && ok_; ++i) v.push_back(U64());
  }

 private:
  bool Take(size_t n) {
    if (!ok_ || s_.size() - pos_ < n) {
      ok_ = false;
      return false;
    }
    pos_ += n;
    return true;
  }
  std::string_view s_;
  size_t pos_ = 0;
  bool ok_ = true;
};

absl::Status Corrupt(std::string_view what) {
  return absl::DataLossError(
      absl::StrCat("corrupt ", AbslView(what), " record in the memory bank"));
}

// Field encoders: fixed-width little-endian integers, length-prefixed bytes, an optional time as
// a presence byte and 8 bytes, a vector of ids as a count and the ids.
class Writer {
 public:
  void operator()(uint8_t v) { s_.push_back(static_cast<char>(v)); }
  void Trailing(uint32_t v) { (*this)(v); }
  void Trailing(const std::string& v) { (*this)(v); }
  void operator()(uint32_t v) { PutFixed32(&s_, v); }
  void operator()(uint64_t v) { PutFixed64(&s_, v); }
  void operator()(int64_t v) { PutFixed64(&s_, static_cast<uint64_t>(v)); }
  void operator()(std::string_view v) { PutBytes(&s_, v); }
  void operator()(const std::string& v) { PutBytes(&s_, v); }
  void operator()(const std::optional<int64_t>& v) {
    (*this)(static_cast<uint8_t>(v.has_value() ? 1 : 0));
    (*this)(v.value_or(0));
  }
  void operator()(const std::vector<uint64_t>& v) {
    (*this)(static_cast<uint32_t>(v.size()));
    for (uint64_t x : v) (*this)(x);
  }
  std::string bytes() && { return std::move(s_); }

 private:
  std::string s_;
};

}  // namespace

std::string DocKeyPrefix(std::string_view ns) {
  std::string k = "d";
  k.append(ns);
  k.push_back('\0');
  return k;
}

std::string DocKey(std::string_view ns, std::string_view doc_id) {
  std::string k = DocKeyPrefix(ns);
  k.append(doc_id);
  return k;
}

std::string PassageKey(uint64_t pid) {
  std::string k = "p";
  PutBigEndian64(&k, pid);
  return k;
}

std::string LatentKey(uint64_t pid) {
  std::string k;
  PutBigEndian64(&k, pid);
  return k;
}

std::string KeyPrefix(std::string_view ns) {
  std::string k(ns);
  k.push_back('\0');
  return k;
}

std::string KeyKey(std::string_view ns, uint64_t pid) {
  std::string k = KeyPrefix(ns);
  PutBigEndian64(&k, pid);
  return k;
}

std::string NamespaceMetaKey(std::string_view ns) {
  return absl::StrCat(kMetaNamespacePrefix, AbslView(ns));
}

std::optional<uint64_t> PidFromPassageKey(std::string_view key) {
  if (key.size() != 9 || key[0] != 'p') return std::nullopt;
  return ReadBigEndian64(key.substr(1));
}

std::optional<uint64_t> PidFromKeySuffix(std::string_view key) {
  if (key.size() < 9) return std::nullopt;
  return ReadBigEndian64(key.substr(key.size() - 8));
}

std::string EncodeU64(uint64_t v) {
  std::string s;
  PutFixed64(&s, v);
  return s;
}

absl::StatusOr<uint64_t> DecodeU64(std::string_view bytes) {
  Reader r(bytes);
  uint64_t v = r.U64();
  if (!r.Done()) return Corrupt("counter");
  return v;
}

namespace {

// Each record lists its fields once, in stored order; the same list drives encoding (Writer) and
// decoding (Reader). Versioned records start with kRecordVersion.
template <typename IO, typename Doc>
void DocFields(IO& io, Doc& d) {
  io(d.ingest_us);
  io(d.valid_from_us);
  io(d.metadata);
  io(d.text);
  io(d.passage_ids);
}

template <typename IO, typename Passage>
void PassageFields(IO& io, Passage& p) {
  io(p.ns);
  io(p.doc_id);
  io(p.index);
  io(p.ingest_us);
  io(p.valid_from_us);
  io(p.text);
  io.Trailing(p.context_bytes);
}

template <typename IO, typename Layout>
void LayoutFields(IO& io, Layout& l) {
  io(l.key_dim);
  io(l.latent_rows);
  io(l.latent_cols);
  io(l.metric);
}

template <typename IO, typename Fingerprint>
void FingerprintFields(IO& io, Fingerprint& f) {
  io(f.adapter_hash);
  io(f.base_model_hash);
  io.Trailing(f.key_hash);
}

template <typename IO, typename Counts>
void CountsFields(IO& io, Counts& c) {
  io(c.documents);
  io(c.passages);
}

template <typename IO, typename Session>
void SessionFields(IO& io, Session& s) {
  io(s.label);
  io(s.mapper_sha256);
  io(s.state);
  io(s.chunks);
  io(s.tokens);
  io(s.created_us);
  io(s.updated_us);
  io(s.ttl_seconds);
  io(s.revision);
}

template <typename Record, typename Fields>
std::string Encode(const Record& record, Fields fields, bool versioned = true) {
  Writer w;
  if (versioned) w(kRecordVersion);
  fields(w, record);
  return std::move(w).bytes();
}

template <typename Record, typename Fields>
absl::StatusOr<Record> Decode(std::string_view bytes, Fields fields, std::string_view what,
                              bool versioned = true) {
  Reader r(bytes);
  Record record;
  if (versioned && r.U8() != kRecordVersion) return Corrupt(what);
  fields(r, record);
  if (!r.Done()) return Corrupt(what);
  return record;
}

}  // namespace

std::string EncodeDoc(const DocRecord& d) { return Encode(d, DocFields<Writer, const DocRecord>); }
absl::StatusOr<DocRecord> DecodeDoc(std::string_view bytes) {
  return Decode<DocRecord>(bytes, DocFields<Reader, DocRecord>, "document");
}

std::string EncodePassage(const PassageRecord& p) {
  return Encode(p, PassageFields<Writer, const PassageRecord>);
}
absl::StatusOr<PassageRecord> DecodePassage(std::string_view bytes) {
  return Decode<PassageRecord>(bytes, PassageFields<Reader, PassageRecord>, "passage");
}

std::string EncodeLayout(const LayoutRecord& l) {
  return Encode(l, LayoutFields<Writer, const LayoutRecord>);
}
absl::StatusOr<LayoutRecord> DecodeLayout(std::string_view bytes) {
  return Decode<LayoutRecord>(bytes, LayoutFields<Reader, LayoutRecord>, "layout");
}

std::string EncodeFingerprint(const FingerprintRecord& f) {
  return Encode(f, FingerprintFields<Writer, const FingerprintRecord>);
}
absl::StatusOr<FingerprintRecord> DecodeFingerprint(std::string_view bytes) {
  return Decode<FingerprintRecord>(bytes, FingerprintFields<Reader, FingerprintRecord>,
                                   "fingerprint");
}

// Namespace counters are rewritten on every write and carry no version byte.
std::string EncodeCounts(const NamespaceCounts& c) {
  return Encode(c, CountsFields<Writer, const NamespaceCounts>, /*versioned=*/false);
}
absl::StatusOr<NamespaceCounts> DecodeCounts(std::string_view bytes) {
  return Decode<NamespaceCounts>(bytes, CountsFields<Reader, NamespaceCounts>, "namespace counts",
                                 /*versioned=*/false);
}

std::string SessionKeyPrefix(std::string_view ns) {
  std::string k(ns);
  k.push_back('\0');
  return k;
}

std::string SessionKey(std::string_view ns, std::string_view id) {
  std::string k = SessionKeyPrefix(ns);
  k.append(id);
  return k;
}

std::string_view SessionKeyNamespace(std::string_view key) { return key.substr(0, key.find('\0')); }

std::string EncodeSession(const SessionRecord& r) {
  return Encode(r, SessionFields<Writer, const SessionRecord>);
}
absl::StatusOr<SessionRecord> DecodeSession(std::string_view bytes) {
  return Decode<SessionRecord>(bytes, SessionFields<Reader, SessionRecord>, "session");
}

std::string EncodeKeyVector(const float* key, int dim) {
  return std::string(reinterpret_cast<const char*>(key), sizeof(float) * dim);
}

absl::Status DecodeKeyVector(std::string_view bytes, int dim, float* out) {
  if (bytes.size() != sizeof(float) * dim) return Corrupt("key");
  std::memcpy(out, bytes.data(), bytes.size());
  return absl::OkStatus();
}

}  // namespace knowd::storage
