// Safetensors reader and writer (spec: huggingface/safetensors README). A file is an 8-byte
// little-endian header length, a JSON header {name: {dtype, shape, data_offsets}, __metadata__},
// then the data section. Like the reference implementation, the reader insists that the tensors
// tile the data section exactly (no holes, no overlaps, nothing left over), so every byte of the
// file is accounted for before any tensor is handed out.
#include <sys/stat.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <numeric>
#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "model/tensor_file.h"
#include "model/tensor_file_internal.h"
#include "nlohmann/json.hpp"

namespace knowd {
namespace {

static_assert(std::endian::native == std::endian::little,
              "the header length is read in place; a big-endian host needs byte swapping");

using Json = nlohmann::json;

// The reference implementation refuses headers above 100 MB; so do we, before parsing.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;
constexpr char kMetadataKey[] = "__metadata__";
constexpr char kSingleFile[] = "model.safetensors";
constexpr char kIndexFile[] = "model.safetensors.index.json";

struct DTypeEntry {
  const char* name;
  DType dtype;
  int64_t element_bytes;
};
constexpr DTypeEntry kDTypes[] = {
    {"F32", DType::kF32, 4},
    {"F16", DType::kF16, 2},
    {"BF16", DType::kBF16, 2},
    {"I32", DType::kI32, 4},
};

const DTypeEntry* FindDType(std::string_view name) {
  for (const DTypeEntry& e : kDTypes) {
    if (e.name == name) return &e;
  }
  return nullptr;
}

const DTypeEntry* FindDType(DType dtype) {
  for (const DTypeEntry& e : kDTypes) {
    if (e.dtype == dtype) return &e;
  }
  return nullptr;
}

// One opened .safetensors file; `tensors` point into `map` and are in data-offset order.
struct Shard {
  internal::MappedFile map;
  std::map<std::string, std::string> metadata;
  std::vector<HostTensor> tensors;
};

// Parses `bytes` as JSON; the parser's own message (line, column, reason) goes into the error.
// Two top-level entries with one name would silently collapse into one, so they are refused.
absl::StatusOr<Json> ParseJson(absl::string_view label, absl::string_view what,
                               std::string_view bytes) {
  std::set<std::string> keys;
  std::string duplicate;
  Json::parser_callback_t on_event = [&](int depth, Json::parse_event_t event, Json& parsed) {
    if (event == Json::parse_event_t::key && depth == 1 && parsed.is_string() &&
        !keys.insert(parsed.get<std::string>()).second && duplicate.empty()) {
      duplicate = parsed.get<std::string>();
    }
    return true;
  };
  Json j;
  try {
    j = Json::parse(bytes.begin(), bytes.end(), on_event);
  } catch (const Json::exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat(label, ": ", what, " is not valid JSON: ", e.what()));
  }
  if (!duplicate.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(label, ": ", what, " has two entries named ", duplicate));
  }
  return j;
}

bool IsUnsigned(const Json& j) { return j.is_number_unsigned(); }

class ShardParser {
 public:
  explicit ShardParser(std::string label) : label_(std::move(label)) {}

  absl::Status Parse(const internal::MappedFile& map, Shard* shard);

 private:
  absl::Status Error(absl::string_view what) const {
    return absl::InvalidArgumentError(absl::StrCat(label_, ": ", what));
  }
  absl::Status ParseMetadata(const Json& j, std::map<std::string, std::string>* metadata) const;
  absl::Status ParseTensor(const std::string& name, const Json& j, const uint8_t* data,
                           uint64_t data_offset, uint64_t data_size, HostTensor* t) const;

  std::string label_;
};

absl::Status ShardParser::ParseMetadata(const Json& j,
                                        std::map<std::string, std::string>* metadata) const {
  if (!j.is_object()) return Error("__metadata__ is not an object");
  for (const auto& [key, value] : j.items()) {
    if (!value.is_string()) {
      return Error(absl::StrCat("__metadata__ value for ", key, " is not a string"));
    }
    (*metadata)[key] = value.get<std::string>();
  }
  return absl::OkStatus();
}

absl::Status ShardParser::ParseTensor(const std::string& name, const Json& j, const uint8_t* data,
                                      uint64_t data_offset, uint64_t data_size,
                                      HostTensor* t) const {
  const std::string prefix = absl::StrCat("tensor ", name, ": ");
  if (!j.is_object()) return Error(absl::StrCat(prefix, "entry is not an object"));
  auto dtype_it = j.find("dtype");
  auto shape_it = j.find("shape");
  auto offsets_it = j.find("data_offsets");
  if (dtype_it == j.end() || !dtype_it->is_string()) {
    return Error(absl::StrCat(prefix, "missing or non-string \"dtype\""));
  }
  const std::string dtype_name = dtype_it->get<std::string>();
  const DTypeEntry* dtype = FindDType(dtype_name);
  if (dtype == nullptr) {
    return Error(absl::StrCat(prefix, "dtype ", dtype_name,
                              " is not supported (supported: F32, F16, BF16, I32)"));
  }
  if (shape_it == j.end() || !shape_it->is_array()) {
    return Error(absl::StrCat(prefix, "missing or non-array \"shape\""));
  }
  std::vector<int64_t> shape;
  for (const Json& d : *shape_it) {
    // Not dumped into the message: a hostile entry may be nested deeply enough to exhaust the
    // stack of the recursive dump().
    if (!IsUnsigned(d) || d.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX)) {
      return Error(
          absl::StrCat(prefix, "shape entry ", shape.size(), " is not a non-negative integer"));
    }
    shape.push_back(d.get<int64_t>());
  }
  if (offsets_it == j.end() || !offsets_it->is_array() || offsets_it->size() != 2 ||
      !IsUnsigned((*offsets_it)[0]) || !IsUnsigned((*offsets_it)[1])) {
    return Error(absl::StrCat(prefix, "\"data_offsets\" is not [begin, end]"));
  }
  const uint64_t begin = (*offsets_it)[0].get<uint64_t>();
  const uint64_t end = (*offsets_it)[1].get<uint64_t>();
  if (begin > end) {
    return Error(absl::StrCat(prefix, "data_offsets [", begin, ", ", end, ") are reversed"));
  }
  if (end > data_size) {
    return Error(absl::StrCat(prefix, "data_offsets [", begin, ", ", end,
                              ") extend past the data section (", data_size, " bytes)"));
  }
  int64_t numel = 0;
  if (!internal::CheckedNumel(shape, &numel) || static_cast<uint64_t>(numel) > data_size) {
    return Error(absl::StrCat(prefix, "shape ", internal::ShapeString(shape),
                              " has more elements than the data section (", data_size,
                              " bytes) can hold"));
  }
  const uint64_t bytes = static_cast<uint64_t>(DTypeBytes(dtype->dtype, numel));
  if (bytes != end - begin) {
    return Error(absl::StrCat(prefix, "shape ", internal::ShapeString(shape), " of ", dtype_name,
                              " needs ", bytes, " bytes but data_offsets [", begin, ", ", end,
                              ") hold ", end - begin));
  }
  // Kernels read elements in place, so each must sit at a multiple of its size in the file
  // (the mapping itself is page-aligned). Current writers pad the header to guarantee it.
  if (bytes > 0 && (data_offset + begin) % static_cast<uint64_t>(dtype->element_bytes) != 0) {
    return Error(absl::StrCat(prefix, "data at file offset ", data_offset + begin,
                              " is not aligned to its ", dtype->element_bytes,
                              "-byte elements (re-save the file with a current writer)"));
  }
  t->name = name;
  t->dtype = dtype->dtype;
  t->shape = std::move(shape);
  t->data = data + data_offset + begin;
  t->bytes = static_cast<int64_t>(bytes);
  return absl::OkStatus();
}

absl::Status ShardParser::Parse(const internal::MappedFile& map, Shard* shard) {
  const uint64_t size = map.size();
  if (size < 8) {
    return Error(absl::StrCat("file has ", size, " bytes, fewer than the 8-byte header length"));
  }
  uint64_t header_bytes = 0;
  std::memcpy(&header_bytes, map.data(), 8);
  if (header_bytes > size - 8) {
    return Error(absl::StrCat("header length ", header_bytes, " exceeds the file (", size,
                              " bytes); truncated or not a safetensors file"));
  }
  if (header_bytes > kMaxHeaderBytes) {
    return Error(absl::StrCat("header length ", header_bytes, " exceeds the ", kMaxHeaderBytes,
                              "-byte limit"));
  }
  absl::StatusOr<Json> header =
      ParseJson(label_, "header",
                std::string_view(reinterpret_cast<const char*>(map.data()) + 8, header_bytes));
  if (!header.ok()) return header.status();
  if (!header->is_object()) return Error("header is not a JSON object");

  const uint64_t data_offset = 8 + header_bytes;
  const uint64_t data_size = size - data_offset;
  for (const auto& [name, value] : header->items()) {
    if (name == kMetadataKey) {
      KNOWD_RETURN_IF_ERROR(ParseMetadata(value, &shard->metadata));
      continue;
    }
    if (name.empty()) return Error("a tensor has an empty name");
    HostTensor t;
    KNOWD_RETURN_IF_ERROR(ParseTensor(name, value, map.data(), data_offset, data_size, &t));
    shard->tensors.push_back(std::move(t));
  }

  // The tensors must tile [0, data_size) exactly, in offset order.
  const uint8_t* data = map.data() + data_offset;
  auto begin_of = [data](const HostTensor& t) {
    return static_cast<uint64_t>(static_cast<const uint8_t*>(t.data) - data);
  };
  std::stable_sort(shard->tensors.begin(), shard->tensors.end(),
                   [&](const HostTensor& a, const HostTensor& b) {
                     return std::pair(begin_of(a), a.bytes) < std::pair(begin_of(b), b.bytes);
                   });
  uint64_t covered = 0;
  const HostTensor* previous = nullptr;
  for (const HostTensor& t : shard->tensors) {
    const uint64_t begin = begin_of(t);
    const uint64_t end = begin + static_cast<uint64_t>(t.bytes);
    if (begin < covered) {
      return Error(absl::StrCat("tensor ", t.name, ": data_offsets [", begin, ", ", end,
                                ") overlap tensor ", previous->name, " (which ends at ", covered,
                                ")"));
    }
    if (begin > covered) {
      return Error(absl::StrCat("tensor ", t.name, ": data_offsets [", begin, ", ", end,
                                ") leave a hole [", covered, ", ", begin, ") in the data section"));
    }
    covered = end;
    previous = &t;
  }
  if (covered != data_size) {
    return Error(
        absl::StrCat("the data section has ", data_size, " bytes but the tensors cover ", covered));
  }
  return absl::OkStatus();
}

absl::StatusOr<Shard> OpenShard(const std::string& path) {
  Shard shard;
  absl::StatusOr<internal::MappedFile> map = internal::MappedFile::Open(path);
  if (!map.ok()) return map.status();
  shard.map = *std::move(map);
  ShardParser parser(internal::FileLabel(path));
  KNOWD_RETURN_IF_ERROR(parser.Parse(shard.map, &shard));
  return shard;
}

// Reads the index's weight_map (tensor name -> shard file name) and checks the shard names stay
// inside the directory.
absl::StatusOr<std::map<std::string, std::string>> ReadWeightMap(const std::string& index_path) {
  const std::string label = internal::FileLabel(index_path);
  absl::StatusOr<internal::MappedFile> map = internal::MappedFile::Open(index_path);
  if (!map.ok()) return map.status();
  absl::StatusOr<Json> index = ParseJson(
      label, "index", std::string_view(reinterpret_cast<const char*>(map->data()), map->size()));
  if (!index.ok()) return index.status();
  auto error = [&label](absl::string_view what) {
    return absl::InvalidArgumentError(absl::StrCat(label, ": ", what));
  };
  if (!index->is_object()) return error("not a JSON object");
  auto weight_map = index->find("weight_map");
  if (weight_map == index->end() || !weight_map->is_object()) {
    return error("missing or non-object \"weight_map\"");
  }
  std::map<std::string, std::string> result;
  for (const auto& [tensor, shard] : weight_map->items()) {
    if (!shard.is_string())
      return error(absl::StrCat("weight_map entry ", tensor, " is not a string"));
    std::string file = shard.get<std::string>();
    if (file.empty() || file == "." || file == ".." || file.find('/') != std::string::npos) {
      return error(absl::StrCat("weight_map entry ", tensor, " names shard \"", file,
                                "\", which is not a file name in the index's directory"));
    }
    result.emplace(tensor, std::move(file));
  }
  return result;
}

bool PathExists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

absl::Status WriteFileContents(int fd, const std::string& label, const std::string& header,
                               std::span<const HostTensor> tensors,
                               const std::vector<size_t>& order) {
  const uint64_t header_bytes = header.size();
  KNOWD_RETURN_IF_ERROR(internal::WriteAll(fd, &header_bytes, 8, label));
  KNOWD_RETURN_IF_ERROR(internal::WriteAll(fd, header.data(), header.size(), label));
  for (size_t i : order) {
    const HostTensor& t = tensors[i];
    KNOWD_RETURN_IF_ERROR(internal::WriteAll(fd, t.data, static_cast<size_t>(t.bytes), label));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  const std::string label = internal::FileLabel(path);
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) {
    return absl::ErrnoToStatus(errno, absl::StrCat(label, ": cannot open ", path));
  }
  std::unique_ptr<SafetensorsFile> file(new SafetensorsFile());
  file->path_ = path;

  std::vector<Shard> shards;
  if (!S_ISDIR(st.st_mode)) {
    KNOWD_ASSIGN_OR_RETURN(Shard shard, OpenShard(path));
    shards.push_back(std::move(shard));
  } else {
    const std::string dir = path.ends_with('/') ? path : path + "/";
    const std::string index_path = absl::StrCat(dir, kIndexFile);
    if (PathExists(index_path)) {
      absl::StatusOr<std::map<std::string, std::string>> weight_map = ReadWeightMap(index_path);
      if (!weight_map.ok()) return weight_map.status();
      // Shards open in name order (model-00001-of-N, ...), each once.
      std::set<std::string> shard_names;
      for (const auto& [tensor, shard] : *weight_map) shard_names.insert(shard);
      std::map<std::string, std::string, std::less<>> owner;  // tensor -> shard holding it
      for (const std::string& shard_name : shard_names) {
        absl::StatusOr<Shard> shard = OpenShard(dir + shard_name);
        if (!shard.ok()) {
          return absl::Status(shard.status().code(),
                              absl::StrCat(kIndexFile, ": shard ", shard_name,
                                           " listed in weight_map: ", shard.status().message()));
        }
        for (const HostTensor& t : shard->tensors) {
          auto [it, inserted] = owner.emplace(t.name, shard_name);
          if (!inserted) {
            return absl::InvalidArgumentError(absl::StrCat(
                label, ": tensor ", t.name, " appears in both ", it->second, " and ", shard_name));
          }
        }
        shards.push_back(*std::move(shard));
      }
      for (const auto& [tensor, shard_name] : *weight_map) {
        auto it = owner.find(tensor);
        if (it == owner.end() || it->second != shard_name) {
          return absl::InvalidArgumentError(
              absl::StrCat(kIndexFile, ": weight_map puts tensor ", tensor, " in ", shard_name,
                           ", but that shard has no such tensor",
                           it == owner.end() ? "" : absl::StrCat(" (it is in ", it->second, ")")));
        }
      }
    } else if (const std::string single = absl::StrCat(dir, kSingleFile); PathExists(single)) {
      KNOWD_ASSIGN_OR_RETURN(Shard shard, OpenShard(single));
      shards.push_back(std::move(shard));
    } else {
      return absl::NotFoundError(absl::StrCat(label, ": directory ", path, " has neither ",
                                              kSingleFile, " nor ", kIndexFile));
    }
  }

  if (!shards.empty()) file->metadata_ = shards.front().metadata;
  for (Shard& shard : shards) {
    for (HostTensor& t : shard.tensors) file->tensors_.push_back(std::move(t));
    file->maps_.push_back(shard.map.Release());
  }
  return file;
}

SafetensorsFile::~SafetensorsFile() {
  for (auto [addr, size] : maps_) internal::Unmap(addr, size);
}

absl::Status WriteSafetensors(const std::string& path, std::span<const HostTensor> tensors,
                              const std::map<std::string, std::string>& metadata) {
  const std::string label = internal::FileLabel(path);
  auto error = [&label](absl::string_view what) {
    return absl::InvalidArgumentError(absl::StrCat(label, ": ", what));
  };
  std::set<std::string_view> names;
  for (const HostTensor& t : tensors) {
    if (t.name.empty() || t.name == kMetadataKey) {
      return error(absl::StrCat("invalid tensor name \"", t.name, "\""));
    }
    if (!names.insert(t.name).second) return error(absl::StrCat("tensor ", t.name, " given twice"));
    const DTypeEntry* dtype = FindDType(t.dtype);
    if (dtype == nullptr) {
      return error(absl::StrCat("tensor ", t.name, ": dtype ", internal::ToAbsl(DTypeName(t.dtype)),
                                " cannot be written (supported: f32, f16, bf16, i32)"));
    }
    int64_t numel = 0;
    if (!internal::CheckedNumel(t.shape, &numel) || numel > INT64_MAX / dtype->element_bytes ||
        numel * dtype->element_bytes != t.bytes) {
      return error(absl::StrCat("tensor ", t.name, ": shape ", internal::ShapeString(t.shape),
                                " does not match its ", t.bytes, " bytes"));
    }
    if (t.bytes > 0 && t.data == nullptr) {
      return error(absl::StrCat("tensor ", t.name, " has no data"));
    }
  }

  // Wider elements first, as the reference writer does: with the header padded to 8 bytes this
  // keeps every tensor aligned to its element size while leaving no holes between tensors.
  std::vector<size_t> order(tensors.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return FindDType(tensors[a].dtype)->element_bytes > FindDType(tensors[b].dtype)->element_bytes;
  });

  std::string header;
  try {
    Json j = Json::object();
    if (!metadata.empty()) j[std::string(kMetadataKey)] = metadata;
    uint64_t offset = 0;
    for (size_t i : order) {
      const HostTensor& t = tensors[i];
      const uint64_t end = offset + static_cast<uint64_t>(t.bytes);
      j[t.name] = {{"dtype", std::string(FindDType(t.dtype)->name)},
                   {"shape", t.shape},
                   {"data_offsets", Json::array({offset, end})}};
      offset = end;
    }
    header = j.dump();
  } catch (const Json::exception& e) {
    // dump() throws on strings that are not UTF-8.
    return error(absl::StrCat("cannot encode the header: ", e.what()));
  }
  header.append((8 - header.size() % 8) % 8, ' ');

  return internal::WriteFileAtomically(
      path, [&](int fd) { return WriteFileContents(fd, label, header, tensors, order); });
}

}  // namespace knowd
