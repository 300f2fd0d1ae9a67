// GGUF v3 writer (spec: ggml docs/gguf.md); the reader is format_gguf.cc. The header (metadata
// and tensor infos) is built in memory, validated as a whole, and only then is anything written,
// so a refused call leaves no file behind.
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <set>
#include <string_view>
#include <type_traits>
#include <vector>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "model/tensor_file.h"
#include "model/tensor_file_internal.h"

namespace knowd {
namespace {

static_assert(std::endian::native == std::endian::little,
              "GGUF fields are written from memory; a big-endian host needs byte swapping");

using enum internal::GgufType;

// ggml's GGML_MAX_NAME is 64 including the terminator; llama.cpp refuses longer tensor names.
constexpr size_t kMaxTensorNameBytes = 63;

// Little-endian GGUF fields appended to a byte string.
class Encoder {
 public:
  template <typename T>
  void Put(T v) {
    static_assert(std::is_arithmetic_v<T>);
    char raw[sizeof(T)];
    std::memcpy(raw, &v, sizeof(T));
    bytes_.append(raw, sizeof(T));
  }
  // A gguf_string: uint64 length, then the bytes (no terminator).
  void PutString(std::string_view s) {
    Put<uint64_t>(s.size());
    bytes_.append(s);
  }
  std::string& bytes() { return bytes_; }

 private:
  std::string bytes_;
};

// True when converting to float and back gives `d` again (NaN counts: it stays a NaN).
bool HoldsAsFloat(double d) {
  if (std::isnan(d) || std::isinf(d)) return true;
  // Converting a finite double beyond float's range is undefined behaviour; refuse it first.
  if (std::fabs(d) > std::numeric_limits<float>::max()) return false;
  return static_cast<double>(static_cast<float>(d)) == d;
}

bool HoldsAsInt32(int64_t v) {
  return v >= std::numeric_limits<int32_t>::min() && v <= std::numeric_limits<int32_t>::max();
}

// Appends the type tag and value of one metadata entry, in the narrowest exact GGUF type (see
// WriteGguf in tensor_file.h for the table).
void EncodeValue(const GgufValue& value, Encoder* out) {
  if (const auto* u = std::get_if<uint64_t>(&value)) {
    if (*u <= std::numeric_limits<uint32_t>::max()) {
      out->Put<uint32_t>(kUint32);
      out->Put(static_cast<uint32_t>(*u));
    } else {
      out->Put<uint32_t>(kUint64);
      out->Put(*u);
    }
  } else if (const auto* i = std::get_if<int64_t>(&value)) {
    if (HoldsAsInt32(*i)) {
      out->Put<uint32_t>(kInt32);
      out->Put(static_cast<int32_t>(*i));
    } else {
      out->Put<uint32_t>(kInt64);
      out->Put(*i);
    }
  } else if (const auto* d = std::get_if<double>(&value)) {
    if (HoldsAsFloat(*d)) {
      out->Put<uint32_t>(kFloat32);
      out->Put(static_cast<float>(*d));
    } else {
      out->Put<uint32_t>(kFloat64);
      out->Put(*d);
    }
  } else if (const auto* b = std::get_if<bool>(&value)) {
    out->Put<uint32_t>(kBool);
    out->Put<uint8_t>(*b ? 1 : 0);
  } else if (const auto* s = std::get_if<std::string>(&value)) {
    out->Put<uint32_t>(kString);
    out->PutString(*s);
  } else if (const auto* strings = std::get_if<std::vector<std::string>>(&value)) {
    out->Put<uint32_t>(kArray);
    out->Put<uint32_t>(kString);
    out->Put<uint64_t>(strings->size());
    for (const std::string& e : *strings) out->PutString(e);
  } else if (const auto* ints = std::get_if<std::vector<int64_t>>(&value)) {
    bool narrow = true;
    for (int64_t e : *ints) narrow = narrow && HoldsAsInt32(e);
    out->Put<uint32_t>(kArray);
    out->Put<uint32_t>(narrow ? kInt32 : kInt64);
    out->Put<uint64_t>(ints->size());
    for (int64_t e : *ints) {
      if (narrow) {
        out->Put(static_cast<int32_t>(e));
      } else {
        out->Put(e);
      }
    }
  } else {
    const auto& doubles = std::get<std::vector<double>>(value);
    bool narrow = true;
    for (double e : doubles) narrow = narrow && HoldsAsFloat(e);
    out->Put<uint32_t>(kArray);
    out->Put<uint32_t>(narrow ? kFloat32 : kFloat64);
    out->Put<uint64_t>(doubles.size());
    for (double e : doubles) {
      if (narrow) {
        out->Put(static_cast<float>(e));
      } else {
        out->Put(e);
      }
    }
  }
}

bool GgmlTypeOf(DType dtype, uint32_t* type) {
  switch (dtype) {
    case DType::kF32:
      *type = internal::kGgmlF32;
      return true;
    case DType::kF16:
      *type = internal::kGgmlF16;
      return true;
    case DType::kBF16:
      *type = internal::kGgmlBF16;
      return true;
    case DType::kQ8_0:
      *type = internal::kGgmlQ8_0;
      return true;
    case DType::kQ4_0:
      *type = internal::kGgmlQ4_0;
      return true;
    case DType::kQ4_K:
      *type = internal::kGgmlQ4_K;
      return true;
    case DType::kQ6_K:
      *type = internal::kGgmlQ6_K;
      return true;
    case DType::kI32:
      return false;
  }
  return false;
}

uint64_t AlignUp(uint64_t n, uint64_t alignment) {
  return (n + alignment - 1) / alignment * alignment;
}

}  // namespace

absl::Status WriteGguf(const std::string& path,
                       const std::map<std::string, GgufValue, std::less<>>& metadata,
                       std::span<const HostTensor> tensors, int alignment) {
  const std::string label = internal::FileLabel(path);
  auto error = [&label](absl::string_view what) {
    return absl::InvalidArgumentError(absl::StrCat(label, ": ", what));
  };
  // The reader's rule: a power of two keeps every element naturally aligned in the mapping.
  if (alignment < 8 || !std::has_single_bit(static_cast<unsigned>(alignment))) {
    return error(absl::StrCat("alignment ", alignment, " is not a power of two >= 8"));
  }
  const uint64_t align = static_cast<uint64_t>(alignment);
  bool write_alignment_key = align != internal::kGgufDefaultAlignment;
  if (auto it = metadata.find("general.alignment"); it != metadata.end()) {
    const auto* u = std::get_if<uint64_t>(&it->second);
    const auto* s = std::get_if<int64_t>(&it->second);
    if (!((u != nullptr && *u == align) || (s != nullptr && *s == alignment))) {
      return error(absl::StrCat("metadata general.alignment disagrees with the alignment ",
                                alignment, " the file is written with"));
    }
    write_alignment_key = false;  // the caller's entry says it
  }

  Encoder header;
  header.Put(internal::kGgufMagic);
  header.Put<uint32_t>(3);
  header.Put<uint64_t>(tensors.size());
  header.Put<uint64_t>(metadata.size() + (write_alignment_key ? 1 : 0));
  if (write_alignment_key) {
    header.PutString("general.alignment");
    EncodeValue(GgufValue(uint64_t{align}), &header);
  }
  for (const auto& [key, value] : metadata) {
    if (key.empty() || key.size() > internal::kGgufMaxKeyBytes) {
      return error(absl::StrCat("metadata key of ", key.size(), " bytes (must be 1..",
                                internal::kGgufMaxKeyBytes, ")"));
    }
    header.PutString(key);
    EncodeValue(value, &header);
  }

  std::set<std::string_view> names;
  uint64_t offset = 0;  // of the next tensor, from the start of the data section
  for (const HostTensor& t : tensors) {
    const std::string prefix = absl::StrCat("tensor ", t.name, ": ");
    if (t.name.empty() || t.name.size() > kMaxTensorNameBytes) {
      return error(absl::StrCat("tensor name \"", t.name, "\" has ", t.name.size(),
                                " bytes (must be 1..", kMaxTensorNameBytes, ")"));
    }
    if (!names.insert(t.name).second) return error(absl::StrCat("tensor ", t.name, " given twice"));
    uint32_t type = 0;
    if (!GgmlTypeOf(t.dtype, &type)) {
      return error(
          absl::StrCat(prefix, "dtype ", internal::ToAbsl(DTypeName(t.dtype)),
                       " cannot be written (supported: f32, f16, bf16, q8_0, q4_0, q4_K, q6_K)"));
    }
    if (t.shape.empty() || t.shape.size() > internal::kGgufMaxDims) {
      return error(absl::StrCat(prefix, t.shape.size(), " dimensions (must be 1..",
                                internal::kGgufMaxDims, ")"));
    }
    int64_t numel = 0;
    bool positive = true;
    for (int64_t d : t.shape) positive = positive && d > 0;
    if (!positive || !internal::CheckedNumel(t.shape, &numel) || numel > INT64_MAX / 8) {
      return error(absl::StrCat(prefix, "shape ", internal::ShapeString(t.shape),
                                " is not a valid tensor shape"));
    }
    if (const int64_t block = DTypeBlockSize(t.dtype); block > 1 && t.shape.back() % block != 0) {
      return error(absl::StrCat(prefix, std::string(DTypeName(t.dtype)), " rows of ",
                                t.shape.back(), " elements are not a multiple of its block of ",
                                block));
    }
    if (DTypeBytes(t.dtype, numel) != t.bytes) {
      return error(absl::StrCat(prefix, "shape ", internal::ShapeString(t.shape), " of ",
                                internal::ToAbsl(DTypeName(t.dtype)), " needs ",
                                DTypeBytes(t.dtype, numel), " bytes, given ", t.bytes));
    }
    if (t.data == nullptr) return error(absl::StrCat(prefix, "no data"));

    header.PutString(t.name);
    header.Put<uint32_t>(static_cast<uint32_t>(t.shape.size()));
    // GGUF's ne[] is innermost first: the reverse of HostTensor's outermost-first shape.
    for (auto d = t.shape.rbegin(); d != t.shape.rend(); ++d) header.Put<uint64_t>(*d);
    header.Put(type);
    header.Put(offset);
    offset = AlignUp(offset + static_cast<uint64_t>(t.bytes), align);
  }
  header.bytes().resize(AlignUp(header.bytes().size(), align), '\0');

  return internal::WriteFileAtomically(path, [&](int fd) -> absl::Status {
    const std::string& head = header.bytes();
    KNOWD_RETURN_IF_ERROR(internal::WriteAll(fd, head.data(), head.size(), label));
    // Every tensor, the last included, is padded to the alignment, as gguf-py writes it.
    const std::vector<char> zeros(align, '\0');
    for (const HostTensor& t : tensors) {
      const size_t bytes = static_cast<size_t>(t.bytes);
      KNOWD_RETURN_IF_ERROR(internal::WriteAll(fd, t.data, bytes, label));
      const size_t pad = AlignUp(bytes, align) - bytes;
      KNOWD_RETURN_IF_ERROR(internal::WriteAll(fd, zeros.data(), pad, label));
    }
    return absl::OkStatus();
  });
}

}  // namespace knowd
