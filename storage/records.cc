#include "storage/records.h"

#include <algorithm>
#include <bit>
#include <cstring>

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
  // True when every read was in bounds and the input is fully consumed.
  bool Done() const { return ok_ && pos_ == s_.size(); }

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

void PutOptionalTime(std::string* out, const std::optional<int64_t>& t) {
  out->push_back(t.has_value() ? 1 : 0);
  PutFixed64(out, static_cast<uint64_t>(t.value_or(0)));
}

std::optional<int64_t> ReadOptionalTime(Reader& r) {
  uint8_t has = r.U8();
  int64_t v = static_cast<int64_t>(r.U64());
  return has ? std::optional<int64_t>(v) : std::nullopt;
}

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

std::string EncodeDoc(const DocRecord& d) {
  std::string s(1, static_cast<char>(kRecordVersion));
  PutFixed64(&s, static_cast<uint64_t>(d.ingest_us));
  PutOptionalTime(&s, d.valid_from_us);
  PutBytes(&s, d.metadata);
  PutBytes(&s, d.text);
  PutFixed32(&s, static_cast<uint32_t>(d.passage_ids.size()));
  for (uint64_t pid : d.passage_ids) PutFixed64(&s, pid);
  return s;
}

absl::StatusOr<DocRecord> DecodeDoc(std::string_view bytes) {
  Reader r(bytes);
  DocRecord d;
  if (r.U8() != kRecordVersion) return Corrupt("document");
  d.ingest_us = static_cast<int64_t>(r.U64());
  d.valid_from_us = ReadOptionalTime(r);
  d.metadata = r.Bytes();
  d.text = r.Bytes();
  uint32_t n = r.U32();
  // Bound the reservation by what the bytes can hold, so a corrupt count cannot allocate wildly.
  d.passage_ids.reserve(std::min<size_t>(n, bytes.size() / 8));
  for (uint32_t i = 0; i < n; ++i) d.passage_ids.push_back(r.U64());
  if (!r.Done()) return Corrupt("document");
  return d;
}

std::string EncodePassage(const PassageRecord& p) {
  std::string s(1, static_cast<char>(kRecordVersion));
  PutBytes(&s, p.ns);
  PutBytes(&s, p.doc_id);
  PutFixed32(&s, p.index);
  PutFixed64(&s, static_cast<uint64_t>(p.ingest_us));
  PutOptionalTime(&s, p.valid_from_us);
  PutBytes(&s, p.text);
  return s;
}

absl::StatusOr<PassageRecord> DecodePassage(std::string_view bytes) {
  Reader r(bytes);
  PassageRecord p;
  if (r.U8() != kRecordVersion) return Corrupt("passage");
  p.ns = r.Bytes();
  p.doc_id = r.Bytes();
  p.index = r.U32();
  p.ingest_us = static_cast<int64_t>(r.U64());
  p.valid_from_us = ReadOptionalTime(r);
  p.text = r.Bytes();
  if (!r.Done()) return Corrupt("passage");
  return p;
}

std::string EncodeLayout(const LayoutRecord& l) {
  std::string s(1, static_cast<char>(kRecordVersion));
  PutFixed32(&s, l.key_dim);
  PutFixed32(&s, l.latent_rows);
  PutFixed32(&s, l.latent_cols);
  s.push_back(static_cast<char>(l.metric));
  return s;
}

absl::StatusOr<LayoutRecord> DecodeLayout(std::string_view bytes) {
  Reader r(bytes);
  LayoutRecord l;
  if (r.U8() != kRecordVersion) return Corrupt("layout");
  l.key_dim = r.U32();
  l.latent_rows = r.U32();
  l.latent_cols = r.U32();
  l.metric = r.U8();
  if (!r.Done()) return Corrupt("layout");
  return l;
}

std::string EncodeFingerprint(const FingerprintRecord& f) {
  std::string s(1, static_cast<char>(kRecordVersion));
  PutBytes(&s, f.adapter_hash);
  PutBytes(&s, f.base_model_hash);
  return s;
}

absl::StatusOr<FingerprintRecord> DecodeFingerprint(std::string_view bytes) {
  Reader r(bytes);
  FingerprintRecord f;
  if (r.U8() != kRecordVersion) return Corrupt("fingerprint");
  f.adapter_hash = r.Bytes();
  f.base_model_hash = r.Bytes();
  if (!r.Done()) return Corrupt("fingerprint");
  return f;
}

std::string EncodeCounts(const NamespaceCounts& c) {
  std::string s;
  PutFixed64(&s, c.documents);
  PutFixed64(&s, c.passages);
  return s;
}

absl::StatusOr<NamespaceCounts> DecodeCounts(std::string_view bytes) {
  Reader r(bytes);
  NamespaceCounts c;
  c.documents = r.U64();
  c.passages = r.U64();
  if (!r.Done()) return Corrupt("namespace counts");
  return c;
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
