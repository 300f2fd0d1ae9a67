// GGUF v2/v3 reader (spec: ggml docs/gguf.md). The file is mapped read-only and parsed with a
// bounds-checked cursor; every count is checked against the bytes left before anything is
// allocated, so a corrupt header costs an error message, never a giant allocation or a read past
// the mapping.
#include <algorithm>
#include <bit>
#include <cstring>
#include <numeric>
#include <set>
#include <string_view>
#include <utility>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "model/tensor_file.h"
#include "model/tensor_file_internal.h"

namespace knowd {
namespace {

static_assert(std::endian::native == std::endian::little,
              "GGUF fields are read in place; a big-endian host needs byte swapping");

using internal::kGgufMagic;
constexpr uint64_t kDefaultAlignment = internal::kGgufDefaultAlignment;
constexpr uint32_t kMaxDims = internal::kGgufMaxDims;
constexpr uint64_t kMaxKeyBytes = internal::kGgufMaxKeyBytes;

// Smallest encodings, used to bound counts by the bytes left: a kv is key length (8) + one key
// byte + value type (4) + one value byte; a tensor info is name length (8) + one name byte +
// n_dims (4) + type (4) + offset (8).
constexpr uint64_t kMinKvBytes = 8 + 1 + 4 + 1;
constexpr uint64_t kMinTensorInfoBytes = 8 + 1 + 4 + 4 + 8;

using enum internal::GgufType;

// Bytes of a scalar GGUF value; 0 for string, array and unknown types.
uint64_t ScalarBytes(uint32_t type) {
  switch (type) {
    case kUint8:
    case kInt8:
    case kBool:
      return 1;
    case kUint16:
    case kInt16:
      return 2;
    case kUint32:
    case kInt32:
    case kFloat32:
      return 4;
    case kUint64:
    case kInt64:
    case kFloat64:
      return 8;
    default:
      return 0;
  }
}

// ggml's tensor type numbers; names only make refusals readable.
const char* GgmlTypeName(uint32_t type) {
  static constexpr const char* kNames[] = {
      "f32",     "f16",    "q4_0",    "q4_1",  "",       "",      "q5_0",  "q5_1",
      "q8_0",    "q8_1",   "q2_k",    "q3_k",  "q4_k",   "q5_k",  "q6_k",  "q8_k",
      "iq2_xxs", "iq2_xs", "iq3_xxs", "iq1_s", "iq4_nl", "iq3_s", "iq2_s", "iq4_xs",
      "i8",      "i16",    "i32",     "i64",   "f64",    "iq1_m", "bf16",  "",
      "",        "",       "tq1_0",   "tq2_0", "",       "",      "",      "mxfp4"};
  if (type >= std::size(kNames) || kNames[type][0] == '\0') return "unknown";
  return kNames[type];
}

bool DTypeFromGgml(uint32_t type, DType* dtype) {
  switch (type) {
    case internal::kGgmlF32:
      *dtype = DType::kF32;
      return true;
    case internal::kGgmlF16:
      *dtype = DType::kF16;
      return true;
    case internal::kGgmlQ8_0:
      *dtype = DType::kQ8_0;
      return true;
    case internal::kGgmlBF16:
      *dtype = DType::kBF16;
      return true;
    case internal::kGgmlQ4_0:
      *dtype = DType::kQ4_0;
      return true;
    case internal::kGgmlQ4_K:
      *dtype = DType::kQ4_K;
      return true;
    case internal::kGgmlQ6_K:
      *dtype = DType::kQ6_K;
      return true;
    default:
      return false;
  }
}

// Little-endian reads over [data, data + size). A failed read leaves the position unchanged.
class Cursor {
 public:
  Cursor(const uint8_t* data, uint64_t size) : data_(data), size_(size) {}

  uint64_t pos() const { return pos_; }
  uint64_t remaining() const { return size_ - pos_; }

  template <typename T>
  bool Read(T* out) {
    if (remaining() < sizeof(T)) return false;
    std::memcpy(out, data_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return true;
  }

  // A gguf_string: uint64 length, then that many bytes (no terminator).
  bool ReadString(std::string* out, uint64_t* length) {
    uint64_t start = pos_;
    if (!Read(length)) return false;
    if (*length > remaining()) {
      pos_ = start;
      return false;
    }
    out->assign(reinterpret_cast<const char*>(data_ + pos_), *length);
    pos_ += *length;
    return true;
  }

 private:
  const uint8_t* data_;
  uint64_t size_;
  uint64_t pos_ = 0;
};

// Parses the header of a mapped GGUF file. Errors name the file (`label_`) and what was wrong.
class GgufParser {
 public:
  GgufParser(std::string label, const uint8_t* data, uint64_t size)
      : label_(std::move(label)), data_(data), size_(size), cursor_(data, size) {}

  absl::Status Parse(std::map<std::string, GgufValue, std::less<>>* metadata,
                     std::vector<HostTensor>* tensors);

 private:
  struct TensorInfo {
    std::string name;
    std::vector<int64_t> ne;  // innermost first, as stored
    uint32_t type = 0;
    uint64_t offset = 0;
  };

  absl::Status Error(absl::string_view what) const {
    return absl::InvalidArgumentError(absl::StrCat(label_, ": ", what));
  }
  absl::Status Truncated(absl::string_view what) const {
    return Error(absl::StrCat("file ends at byte ", cursor_.pos(), " of ", size_, " while reading ",
                              what, " (truncated or corrupt)"));
  }

  absl::Status ReadHeader(uint64_t* tensor_count, uint64_t* kv_count);
  absl::Status ReadKv(uint64_t index, std::map<std::string, GgufValue, std::less<>>* metadata);
  absl::StatusOr<GgufValue> ReadValue(const std::string& key, uint32_t type);
  absl::StatusOr<GgufValue> ReadArray(const std::string& key);
  absl::Status ReadTensorInfo(uint64_t index, TensorInfo* info);
  absl::StatusOr<uint64_t> Alignment(
      const std::map<std::string, GgufValue, std::less<>>& metadata) const;
  absl::Status PlaceTensors(std::vector<TensorInfo> infos, uint64_t alignment,
                            std::vector<HostTensor>* tensors) const;

  std::string label_;
  const uint8_t* data_;
  uint64_t size_;
  Cursor cursor_;
};

absl::Status GgufParser::ReadHeader(uint64_t* tensor_count, uint64_t* kv_count) {
  uint32_t magic = 0;
  if (!cursor_.Read(&magic)) return Truncated("the magic number");
  if (magic != kGgufMagic) {
    return Error(absl::StrCat("not a GGUF file (magic 0x", absl::Hex(magic, absl::kZeroPad8),
                              ", expected 0x", absl::Hex(kGgufMagic, absl::kZeroPad8),
                              " \"GGUF\")"));
  }
  uint32_t version = 0;
  if (!cursor_.Read(&version)) return Truncated("the version");
  if (version != 2 && version != 3) {
    if (__builtin_bswap32(version) == 2 || __builtin_bswap32(version) == 3) {
      return Error("big-endian GGUF files are not supported");
    }
    if (version == 1) return Error("GGUF version 1 is not supported (convert it to v3)");
    return Error(absl::StrCat("unsupported GGUF version ", version, " (supported: 2, 3)"));
  }
  if (!cursor_.Read(tensor_count)) return Truncated("the tensor count");
  if (!cursor_.Read(kv_count)) return Truncated("the metadata count");
  // Both lists follow the header; neither can hold more entries than the file has room for.
  if (*kv_count > cursor_.remaining() / kMinKvBytes) {
    return Error(absl::StrCat("metadata count ", *kv_count, " cannot fit in the file (", size_,
                              " bytes; truncated or corrupt)"));
  }
  if (*tensor_count > cursor_.remaining() / kMinTensorInfoBytes) {
    return Error(absl::StrCat("tensor count ", *tensor_count, " cannot fit in the file (", size_,
                              " bytes; truncated or corrupt)"));
  }
  return absl::OkStatus();
}

absl::Status GgufParser::ReadKv(uint64_t index,
                                std::map<std::string, GgufValue, std::less<>>* metadata) {
  std::string key;
  uint64_t key_length = 0;
  if (!cursor_.ReadString(&key, &key_length)) {
    return Truncated(absl::StrCat("the key of metadata entry ", index));
  }
  if (key.empty() || key_length > kMaxKeyBytes) {
    return Error(absl::StrCat("metadata entry ", index, " has a key of ", key_length,
                              " bytes (must be 1..", kMaxKeyBytes, ")"));
  }
  uint32_t type = 0;
  if (!cursor_.Read(&type)) return Truncated(absl::StrCat("the type of metadata key ", key));
  KNOWD_ASSIGN_OR_RETURN(GgufValue value, ReadValue(key, type));
  if (!metadata->emplace(key, std::move(value)).second) {
    return Error(absl::StrCat("metadata key ", key, " appears twice"));
  }
  return absl::OkStatus();
}

absl::StatusOr<GgufValue> GgufParser::ReadValue(const std::string& key, uint32_t type) {
  // Built only on failure: arrays call this once per element.
  auto truncated = [&] { return Truncated(absl::StrCat("the value of metadata key ", key)); };
  switch (type) {
    case kUint8: {
      uint8_t v;
      if (!cursor_.Read(&v)) return truncated();
      return GgufValue(uint64_t{v});
    }
    case kUint16: {
      uint16_t v;
      if (!cursor_.Read(&v)) return truncated();
      return GgufValue(uint64_t{v});
    }
    case kUint32: {
      uint32_t v;
      if (!cursor_.Read(&v)) return truncated();
      return GgufValue(uint64_t{v});
    }
    case kUint64: {
      uint64_t v;
      if (!cursor_.Read(&v)) return truncated();
      return GgufValue(v);
    }
    case kInt8: {
      int8_t v;
      if (!cursor_.Read(&v)) return truncated();
      return GgufValue(int64_t{v});
    }
    case kInt16: {
      int16_t v;
      if (!cursor_.Read(&v)) return truncated();
      return GgufValue(int64_t{v});
    }
    case kInt32: {
      int32_t v;
      if (!cursor_.Read(&v)) return truncated();
      return GgufValue(int64_t{v});
    }
    case kInt64: {
      int64_t v;
      if (!cursor_.Read(&v)) return truncated();
      return GgufValue(v);
    }
    case kFloat32: {
      float v;
      if (!cursor_.Read(&v)) return truncated();
      return GgufValue(double{v});
    }
    case kFloat64: {
      double v;
      if (!cursor_.Read(&v)) return truncated();
      return GgufValue(v);
    }
    case kBool: {
      uint8_t v;
      if (!cursor_.Read(&v)) return truncated();
      if (v > 1)
        return Error(absl::StrCat("metadata key ", key, ": bool value ", int{v}, " is not 0/1"));
      return GgufValue(v == 1);
    }
    case kString: {
      std::string s;
      uint64_t length = 0;
      if (!cursor_.ReadString(&s, &length)) return truncated();
      return GgufValue(std::move(s));
    }
    case kArray:
      return ReadArray(key);
    default:
      return Error(absl::StrCat("metadata key ", key, " has unknown value type ", type));
  }
}

absl::StatusOr<GgufValue> GgufParser::ReadArray(const std::string& key) {
  uint32_t type = 0;
  uint64_t count = 0;
  if (!cursor_.Read(&type)) return Truncated(absl::StrCat("the element type of array ", key));
  if (!cursor_.Read(&count)) return Truncated(absl::StrCat("the length of array ", key));
  if (type == kArray)
    return Error(absl::StrCat("metadata key ", key, ": nested arrays are not supported"));
  const uint64_t element_bytes = type == kString ? 8 : ScalarBytes(type);
  if (element_bytes == 0) {
    return Error(absl::StrCat("metadata key ", key, " is an array of unknown type ", type));
  }
  // Bound the count by the bytes left before reserving anything.
  if (count > cursor_.remaining() / element_bytes) {
    return Error(absl::StrCat("metadata key ", key, ": array of ", count,
                              " elements cannot fit in the ", cursor_.remaining(),
                              " bytes left in the file (truncated or corrupt)"));
  }
  const std::string what = absl::StrCat("an element of array ", key);
  if (type == kString) {
    std::vector<std::string> values;
    values.reserve(count);
    for (uint64_t i = 0; i < count; ++i) {
      std::string s;
      uint64_t length = 0;
      if (!cursor_.ReadString(&s, &length)) return Truncated(what);
      values.push_back(std::move(s));
    }
    return GgufValue(std::move(values));
  }
  if (type == kFloat32 || type == kFloat64) {
    std::vector<double> values;
    values.reserve(count);
    for (uint64_t i = 0; i < count; ++i) {
      KNOWD_ASSIGN_OR_RETURN(GgufValue v, ReadValue(key, type));
      values.push_back(std::get<double>(v));
    }
    return GgufValue(std::move(values));
  }
  // Integers and bools all become int64; only a uint64 above INT64_MAX does not fit.
  std::vector<int64_t> values;
  values.reserve(count);
  for (uint64_t i = 0; i < count; ++i) {
    KNOWD_ASSIGN_OR_RETURN(GgufValue v, ReadValue(key, type));
    if (const auto* u = std::get_if<uint64_t>(&v)) {
      if (*u > static_cast<uint64_t>(INT64_MAX)) {
        return Error(absl::StrCat("metadata key ", key, ": array element ", i, " (", *u,
                                  ") does not fit in int64"));
      }
      values.push_back(static_cast<int64_t>(*u));
    } else if (const auto* s = std::get_if<int64_t>(&v)) {
      values.push_back(*s);
    } else {
      values.push_back(std::get<bool>(v) ? 1 : 0);
    }
  }
  return GgufValue(std::move(values));
}

absl::Status GgufParser::ReadTensorInfo(uint64_t index, TensorInfo* info) {
  uint64_t name_length = 0;
  if (!cursor_.ReadString(&info->name, &name_length)) {
    return Truncated(absl::StrCat("the name of tensor ", index));
  }
  if (info->name.empty()) return Error(absl::StrCat("tensor ", index, " has an empty name"));
  const std::string prefix = absl::StrCat("tensor ", info->name, ": ");
  uint32_t n_dims = 0;
  if (!cursor_.Read(&n_dims)) return Truncated(absl::StrCat("the rank of tensor ", info->name));
  if (n_dims > kMaxDims) {
    return Error(absl::StrCat(prefix, n_dims, " dimensions (at most ", kMaxDims, ")"));
  }
  for (uint32_t i = 0; i < n_dims; ++i) {
    uint64_t dim = 0;
    if (!cursor_.Read(&dim)) return Truncated(absl::StrCat("the shape of tensor ", info->name));
    if (dim == 0 || dim > static_cast<uint64_t>(INT64_MAX)) {
      return Error(absl::StrCat(prefix, "dimension ", i, " is ", dim,
                                " (must be positive and fit in int64)"));
    }
    info->ne.push_back(static_cast<int64_t>(dim));
  }
  if (!cursor_.Read(&info->type)) return Truncated(absl::StrCat("the type of tensor ", info->name));
  if (!cursor_.Read(&info->offset)) {
    return Truncated(absl::StrCat("the data offset of tensor ", info->name));
  }
  return absl::OkStatus();
}

absl::StatusOr<uint64_t> GgufParser::Alignment(
    const std::map<std::string, GgufValue, std::less<>>& metadata) const {
  auto it = metadata.find("general.alignment");
  if (it == metadata.end()) return kDefaultAlignment;
  uint64_t alignment = 0;
  if (const auto* u = std::get_if<uint64_t>(&it->second)) {
    alignment = *u;
  } else if (const auto* s = std::get_if<int64_t>(&it->second); s != nullptr && *s > 0) {
    alignment = static_cast<uint64_t>(*s);
  } else {
    return Error("general.alignment is not a positive integer");
  }
  // The spec asks for a multiple of 8; a power of two keeps the round-up arithmetic exact and
  // every element naturally aligned in the mapping.
  if (alignment < 8 || !std::has_single_bit(alignment)) {
    return Error(absl::StrCat("general.alignment ", alignment, " is not a power of two >= 8"));
  }
  return alignment;
}

absl::Status GgufParser::PlaceTensors(std::vector<TensorInfo> infos, uint64_t alignment,
                                      std::vector<HostTensor>* tensors) const {
  // Data starts at the first aligned offset after the tensor infos. A file holding only
  // metadata may end before that point.
  const uint64_t data_start = (cursor_.pos() + alignment - 1) / alignment * alignment;
  const uint64_t data_size = data_start <= size_ ? size_ - data_start : 0;

  struct Range {
    uint64_t begin, end;
    size_t index;
  };
  std::vector<Range> ranges;
  ranges.reserve(infos.size());
  std::set<std::string_view> names;
  tensors->reserve(infos.size());
  for (size_t i = 0; i < infos.size(); ++i) {
    const TensorInfo& info = infos[i];
    const std::string prefix = absl::StrCat("tensor ", info.name, ": ");
    if (!names.insert(info.name).second) {
      return Error(absl::StrCat("tensor ", info.name, " appears twice"));
    }
    DType dtype;
    if (!DTypeFromGgml(info.type, &dtype)) {
      return Error(
          absl::StrCat(prefix, "type ", info.type, " (", GgmlTypeName(info.type),
                       ") is not supported (supported: f32, f16, bf16, q8_0, q4_0, q4_K, q6_K)"));
    }
    int64_t numel = 0;
    if (!internal::CheckedNumel(info.ne, &numel)) {
      return Error(absl::StrCat(prefix, "element count of shape ", internal::ShapeString(info.ne),
                                " overflows"));
    }
    // Supported types take at most 4 bytes per element, so below this bound the byte count and
    // the end of the range cannot overflow; the range check below then says what is wrong.
    if (numel > INT64_MAX / 8) {
      return Error(absl::StrCat(prefix, numel, " elements are more than any file can hold"));
    }
    if (const int64_t block = DTypeBlockSize(dtype);
        block > 1 && (info.ne.empty() || info.ne[0] % block != 0)) {
      return Error(absl::StrCat(prefix, std::string(DTypeName(dtype)), " rows of ",
                                info.ne.empty() ? 1 : info.ne[0],
                                " elements are not a multiple of its block of ", block));
    }
    const uint64_t bytes = static_cast<uint64_t>(DTypeBytes(dtype, numel));
    if (info.offset % alignment != 0) {
      return Error(absl::StrCat(prefix, "data offset ", info.offset, " is not a multiple of the ",
                                alignment, "-byte alignment"));
    }
    if (info.offset > data_size) {
      return Error(absl::StrCat(prefix, "data offset ", info.offset, " (from byte ", data_start,
                                ") is past the end of file (", size_, " bytes)"));
    }
    const uint64_t begin = data_start + info.offset;  // each < 2^63: no overflow
    const uint64_t end = begin + bytes;               // bytes < 2^62: no overflow
    if (bytes > data_size - info.offset) {
      return Error(absl::StrCat(prefix, "data [", begin, ", ", end, ") extends past end of file (",
                                size_, " bytes)"));
    }
    ranges.push_back({begin, end, i});

    HostTensor t;
    t.name = info.name;
    t.dtype = dtype;
    t.shape.assign(info.ne.rbegin(), info.ne.rend());
    t.data = data_ + begin;
    t.bytes = static_cast<int64_t>(bytes);
    tensors->push_back(std::move(t));
  }

  std::sort(ranges.begin(), ranges.end(),
            [](const Range& a, const Range& b) { return a.begin < b.begin; });
  for (size_t i = 1; i < ranges.size(); ++i) {
    const Range& prev = ranges[i - 1];
    const Range& cur = ranges[i];
    if (cur.begin < prev.end) {
      return Error(absl::StrCat("tensor ", infos[cur.index].name, ": data [", cur.begin, ", ",
                                cur.end, ") overlaps tensor ", infos[prev.index].name, " [",
                                prev.begin, ", ", prev.end, ")"));
    }
  }
  return absl::OkStatus();
}

absl::Status GgufParser::Parse(std::map<std::string, GgufValue, std::less<>>* metadata,
                               std::vector<HostTensor>* tensors) {
  uint64_t tensor_count = 0, kv_count = 0;
  KNOWD_RETURN_IF_ERROR(ReadHeader(&tensor_count, &kv_count));
  for (uint64_t i = 0; i < kv_count; ++i) {
    KNOWD_RETURN_IF_ERROR(ReadKv(i, metadata));
  }
  // Re-check now that the metadata has been consumed: the tensor infos must fit in what is left.
  if (tensor_count > cursor_.remaining() / kMinTensorInfoBytes) {
    return Error(absl::StrCat("tensor count ", tensor_count, " cannot fit in the ",
                              cursor_.remaining(),
                              " bytes after the metadata (truncated or corrupt)"));
  }
  std::vector<TensorInfo> infos(tensor_count);
  for (uint64_t i = 0; i < tensor_count; ++i) {
    KNOWD_RETURN_IF_ERROR(ReadTensorInfo(i, &infos[i]));
  }
  KNOWD_ASSIGN_OR_RETURN(uint64_t alignment, Alignment(*metadata));
  return PlaceTensors(std::move(infos), alignment, tensors);
}

}  // namespace

absl::StatusOr<std::unique_ptr<GgufFile>> GgufFile::Open(const std::string& path) {
  KNOWD_ASSIGN_OR_RETURN(internal::MappedFile mapped, internal::MappedFile::Open(path));
  std::unique_ptr<GgufFile> file(new GgufFile());
  file->path_ = path;
  GgufParser parser(internal::FileLabel(path), mapped.data(), mapped.size());
  KNOWD_RETURN_IF_ERROR(parser.Parse(&file->metadata_, &file->tensors_));
  std::tie(file->map_, file->map_size_) = mapped.Release();
  return file;
}

GgufFile::~GgufFile() { internal::Unmap(map_, map_size_); }

const GgufValue* GgufFile::GetValue(std::string_view key) const {
  auto it = metadata_.find(key);
  return it == metadata_.end() ? nullptr : &it->second;
}

absl::StatusOr<std::string> GgufFile::GetString(std::string_view key) const {
  const GgufValue* v = GetValue(key);
  if (v == nullptr) {
    return absl::NotFoundError(
        absl::StrCat(internal::FileLabel(path_), ": no metadata key ", internal::ToAbsl(key)));
  }
  if (const auto* s = std::get_if<std::string>(v)) return *s;
  return absl::InvalidArgumentError(absl::StrCat(internal::FileLabel(path_), ": metadata key ",
                                                 internal::ToAbsl(key), " is not a string"));
}

absl::StatusOr<int64_t> GgufFile::GetInt(std::string_view key) const {
  const GgufValue* v = GetValue(key);
  if (v == nullptr) {
    return absl::NotFoundError(
        absl::StrCat(internal::FileLabel(path_), ": no metadata key ", internal::ToAbsl(key)));
  }
  if (const auto* s = std::get_if<int64_t>(v)) return *s;
  if (const auto* u = std::get_if<uint64_t>(v)) {
    if (*u <= static_cast<uint64_t>(INT64_MAX)) return static_cast<int64_t>(*u);
    return absl::InvalidArgumentError(absl::StrCat(internal::FileLabel(path_), ": metadata key ",
                                                   internal::ToAbsl(key), " (", *u,
                                                   ") does not fit in int64"));
  }
  return absl::InvalidArgumentError(absl::StrCat(internal::FileLabel(path_), ": metadata key ",
                                                 internal::ToAbsl(key), " is not an integer"));
}

absl::StatusOr<double> GgufFile::GetFloat(std::string_view key) const {
  const GgufValue* v = GetValue(key);
  if (v == nullptr) {
    return absl::NotFoundError(
        absl::StrCat(internal::FileLabel(path_), ": no metadata key ", internal::ToAbsl(key)));
  }
  // Converters sometimes store a float-valued hyperparameter (rope_theta) as an integer.
  if (const auto* d = std::get_if<double>(v)) return *d;
  if (const auto* s = std::get_if<int64_t>(v)) return static_cast<double>(*s);
  if (const auto* u = std::get_if<uint64_t>(v)) return static_cast<double>(*u);
  return absl::InvalidArgumentError(absl::StrCat(internal::FileLabel(path_), ": metadata key ",
                                                 internal::ToAbsl(key), " is not a number"));
}

absl::StatusOr<bool> GgufFile::GetBool(std::string_view key) const {
  const GgufValue* v = GetValue(key);
  if (v == nullptr) {
    return absl::NotFoundError(
        absl::StrCat(internal::FileLabel(path_), ": no metadata key ", internal::ToAbsl(key)));
  }
  if (const auto* b = std::get_if<bool>(v)) return *b;
  return absl::InvalidArgumentError(absl::StrCat(internal::FileLabel(path_), ": metadata key ",
                                                 internal::ToAbsl(key), " is not a bool"));
}

}  // namespace knowd
