// SafetensorsFile and WriteSafetensors: the shipped stories260K-hf checkpoint against the GGUF of
// the same weights, write/read round trips (single file and sharded), and corrupt files refused
// with the reason.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/tensor_file.h"
#include "tests/model/formats_test_util.h"

namespace knowd {
namespace {

using ::knowd::testing::Bytes;
using ::knowd::testing::Load;
using ::knowd::testing::ReadBytes;
using ::knowd::testing::ScratchDir;
using ::knowd::testing::StoriesGguf;
using ::knowd::testing::StoriesHfDir;
using ::knowd::testing::StoriesSafetensors;
using ::knowd::testing::WriteBytes;
using ::testing::HasSubstr;

// A safetensors file from a raw JSON header (padded with spaces to 8 bytes unless `pad` is
// false) and a data section.
std::string MakeSafetensors(std::string header, std::string_view data, bool pad = true) {
  if (pad) header.append((8 - header.size() % 8) % 8, ' ');
  return Bytes().U64(header.size()).Raw(header).Raw(data).str();
}

std::string Pattern(size_t n) {
  std::string s(n, '\0');
  for (size_t i = 0; i < n; ++i) s[i] = static_cast<char>((i * 53 + 7) % 253);
  return s;
}

// Owns the bytes behind a HostTensor built for writing. view() points into `bytes` afresh each
// time, because moving the struct may move a short string's inline buffer.
struct OwnedTensor {
  std::string bytes;
  HostTensor tensor;  // data is unset; use view()

  HostTensor view() const {
    HostTensor t = tensor;
    t.data = bytes.data();
    return t;
  }
};

OwnedTensor MakeTensor(std::string name, DType dtype, std::vector<int64_t> shape,
                       int64_t element_bytes, size_t seed) {
  OwnedTensor t;
  int64_t numel = 1;
  for (int64_t d : shape) numel *= d;
  t.bytes = Pattern(static_cast<size_t>(numel * element_bytes) + seed).substr(seed);
  t.tensor.name = std::move(name);
  t.tensor.dtype = dtype;
  t.tensor.shape = std::move(shape);
  t.tensor.bytes = numel * element_bytes;
  return t;
}

std::vector<HostTensor> Views(const std::vector<OwnedTensor>& owned) {
  std::vector<HostTensor> views;
  for (const OwnedTensor& t : owned) views.push_back(t.view());
  return views;
}

void ExpectSameTensor(const HostTensor& expected, const HostTensor& actual) {
  SCOPED_TRACE(expected.name);
  EXPECT_EQ(actual.name, expected.name);
  EXPECT_EQ(actual.dtype, expected.dtype);
  EXPECT_EQ(actual.shape, expected.shape);
  ASSERT_EQ(actual.bytes, expected.bytes);
  if (expected.bytes > 0) {
    EXPECT_EQ(std::memcmp(actual.data, expected.data, expected.bytes), 0);
  }
}

void ExpectRefused(const ScratchDir& dir, std::string_view bytes, std::string_view reason) {
  const std::string path = dir.File("bad.safetensors");
  WriteBytes(path, bytes);
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file = SafetensorsFile::Open(path);
  ASSERT_FALSE(file.ok()) << "expected refusal: " << reason;
  EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument) << file.status();
  EXPECT_THAT(std::string(file.status().message()), HasSubstr("bad.safetensors: "));
  EXPECT_THAT(std::string(file.status().message()), HasSubstr(reason));
}

TEST(SafetensorsFileTest, ReadsStoriesCheckpoint) {
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file =
      SafetensorsFile::Open(StoriesSafetensors());
  ASSERT_TRUE(file.ok()) << file.status();
  const SafetensorsFile& f = **file;
  EXPECT_EQ(f.tensors().size(), 48u);
  EXPECT_TRUE(f.metadata().empty());
  EXPECT_EQ(f.tensors().front().name, "model.embed_tokens.weight");  // first in the file
  const HostTensor* embed = f.Find("model.embed_tokens.weight");
  ASSERT_NE(embed, nullptr);
  EXPECT_EQ(embed->dtype, DType::kF32);
  EXPECT_EQ(embed->shape, (std::vector<int64_t>{512, 64}));
  EXPECT_EQ(embed->bytes, 512 * 64 * 4);
  EXPECT_EQ(f.Find("model.layers.4.mlp.up_proj.weight")->shape, (std::vector<int64_t>{172, 64}));
  EXPECT_EQ(f.Find("model.layers.0.self_attn.k_proj.weight")->shape,
            (std::vector<int64_t>{32, 64}));
  for (const HostTensor& t : f.tensors()) {
    EXPECT_EQ(reinterpret_cast<uintptr_t>(t.data) % 4, 0u) << t.name;
  }

  // The directory form finds model.safetensors.
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> from_dir = SafetensorsFile::Open(StoriesHfDir());
  ASSERT_TRUE(from_dir.ok()) << from_dir.status();
  ASSERT_EQ((*from_dir)->tensors().size(), 48u);
  ExpectSameTensor(*embed, *(*from_dir)->Find("model.embed_tokens.weight"));
}

TEST(SafetensorsFileTest, MatchesGgufWeights) {
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> hf = SafetensorsFile::Open(StoriesSafetensors());
  absl::StatusOr<std::unique_ptr<GgufFile>> gguf = GgufFile::Open(StoriesGguf());
  ASSERT_TRUE(hf.ok()) << hf.status();
  ASSERT_TRUE(gguf.ok()) << gguf.status();

  const HostTensor* a = (*gguf)->Find("token_embd.weight");
  const HostTensor* b = (*hf)->Find("model.embed_tokens.weight");
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  ASSERT_EQ(a->shape, b->shape);
  const auto* x = static_cast<const float*>(a->data);
  const auto* y = static_cast<const float*>(b->data);
  int mismatches = 0;
  double sum_abs = 0;
  for (int64_t i = 0; i < a->numel(); ++i) {
    if (x[i] != y[i]) ++mismatches;
    sum_abs += std::fabs(x[i]);
  }
  EXPECT_EQ(mismatches, 0);
  EXPECT_GT(sum_abs, 1.0);  // real weights, not zeros

  // Tensors the HF layout does not permute are byte-identical too.
  const std::pair<const char*, const char*> same[] = {
      {"output.weight", "lm_head.weight"},
      {"output_norm.weight", "model.norm.weight"},
      {"blk.3.attn_v.weight", "model.layers.3.self_attn.v_proj.weight"},
      {"blk.2.ffn_down.weight", "model.layers.2.mlp.down_proj.weight"},
  };
  for (const auto& [gguf_name, hf_name] : same) {
    SCOPED_TRACE(hf_name);
    const HostTensor* g = (*gguf)->Find(gguf_name);
    const HostTensor* h = (*hf)->Find(hf_name);
    ASSERT_NE(g, nullptr);
    ASSERT_NE(h, nullptr);
    EXPECT_EQ(g->shape, h->shape);
    ASSERT_EQ(g->bytes, h->bytes);
    EXPECT_EQ(std::memcmp(g->data, h->data, g->bytes), 0);
  }
}

TEST(SafetensorsFileTest, RoundTripsEveryWritableDtype) {
  std::vector<OwnedTensor> owned;
  owned.push_back(MakeTensor("half.odd", DType::kF16, {3}, 2, 1));  // 6 bytes: tests ordering
  owned.push_back(MakeTensor("layer.weight", DType::kF32, {2, 3}, 4, 2));
  owned.push_back(MakeTensor("brain", DType::kBF16, {1, 5}, 2, 3));
  owned.push_back(MakeTensor("ids", DType::kI32, {4}, 4, 4));
  owned.push_back(MakeTensor("scalar", DType::kF32, {}, 4, 5));
  owned.push_back(MakeTensor("empty", DType::kF32, {0, 3}, 4, 6));
  const std::map<std::string, std::string> metadata = {{"format", "pt"},
                                                       {"note", "r\xc3\xa9sum\xc3\xa9"}};
  ScratchDir dir;
  const std::string path = dir.File("round.safetensors");
  ASSERT_TRUE(WriteSafetensors(path, Views(owned), metadata).ok());

  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->metadata(), metadata);
  ASSERT_EQ((*file)->tensors().size(), owned.size());
  for (const OwnedTensor& t : owned) {
    const HostTensor* read = (*file)->Find(t.tensor.name);
    ASSERT_NE(read, nullptr) << t.tensor.name;
    ExpectSameTensor(t.view(), *read);
    if (read->bytes > 0) {
      EXPECT_EQ(reinterpret_cast<uintptr_t>(read->data) %
                    (read->dtype == DType::kF32 || read->dtype == DType::kI32 ? 4 : 2),
                0u)
          << read->name;
    }
  }
  EXPECT_EQ((*file)->Find("scalar")->numel(), 1);
  EXPECT_EQ((*file)->Find("empty")->numel(), 0);

  // Header padded to 8 bytes per the spec; the file is exactly header + data.
  const std::string bytes = ReadBytes(path);
  const uint64_t header_bytes = Load<uint64_t>(bytes, 0);
  EXPECT_EQ(header_bytes % 8, 0u);
  EXPECT_EQ(bytes.size(), 8 + header_bytes + 6 + 24 + 10 + 16 + 4);
  EXPECT_THAT(bytes.substr(8, header_bytes), HasSubstr("\"__metadata__\""));

  // Nothing but the file is left in the directory (the temp file was renamed).
  int entries = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir.path())) {
    ++entries;
    EXPECT_EQ(entry.path().filename(), "round.safetensors");
  }
  EXPECT_EQ(entries, 1);
}

TEST(SafetensorsFileTest, OverwritesAtomically) {
  ScratchDir dir;
  const std::string path = dir.File("w.safetensors");
  std::vector<OwnedTensor> first;
  first.push_back(MakeTensor("a", DType::kF32, {8}, 4, 0));
  ASSERT_TRUE(WriteSafetensors(path, Views(first)).ok());
  // Keep the first version mapped while it is replaced: the old mapping stays valid.
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> old_file = SafetensorsFile::Open(path);
  ASSERT_TRUE(old_file.ok()) << old_file.status();

  std::vector<OwnedTensor> second;
  second.push_back(MakeTensor("b", DType::kI32, {2, 2}, 4, 9));
  ASSERT_TRUE(WriteSafetensors(path, Views(second)).ok());
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> new_file = SafetensorsFile::Open(path);
  ASSERT_TRUE(new_file.ok()) << new_file.status();
  ASSERT_EQ((*new_file)->tensors().size(), 1u);
  ExpectSameTensor(second[0].view(), (*new_file)->tensors()[0]);
  ExpectSameTensor(first[0].view(), (*old_file)->tensors()[0]);
  EXPECT_TRUE((*new_file)->metadata().empty());
}

TEST(SafetensorsFileTest, WriteRefusesBadTensors) {
  ScratchDir dir;
  const std::string path = dir.File("x.safetensors");
  std::vector<OwnedTensor> owned;
  owned.push_back(MakeTensor("q", DType::kQ8_0, {32}, 1, 0));
  owned[0].tensor.bytes = 34;
  absl::Status s = WriteSafetensors(path, Views(owned));
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("tensor q"));

  owned.clear();
  owned.push_back(MakeTensor("w", DType::kF32, {4}, 4, 0));
  owned[0].tensor.bytes = 12;
  EXPECT_THAT(std::string(WriteSafetensors(path, Views(owned)).message()),
              HasSubstr("tensor w: shape [4] does not match its 12 bytes"));

  owned.clear();
  owned.push_back(MakeTensor("w", DType::kF32, {4}, 4, 0));
  owned.push_back(MakeTensor("w", DType::kF32, {4}, 4, 0));
  EXPECT_THAT(std::string(WriteSafetensors(path, Views(owned)).message()),
              HasSubstr("tensor w given twice"));

  owned.clear();
  owned.push_back(MakeTensor("__metadata__", DType::kF32, {4}, 4, 0));
  EXPECT_EQ(WriteSafetensors(path, Views(owned)).code(), absl::StatusCode::kInvalidArgument);

  owned.clear();
  owned.push_back(MakeTensor("w", DType::kF32, {4}, 4, 0));
  EXPECT_EQ(WriteSafetensors(dir.File("no/such/dir/x.safetensors"), Views(owned)).code(),
            absl::StatusCode::kNotFound);
  EXPECT_FALSE(std::filesystem::exists(path));  // nothing was written by the refusals
}

// Writes shards and an index into `dir`.
void WriteShardedCheckpoint(const ScratchDir& dir, const std::vector<OwnedTensor>& shard1,
                            const std::vector<OwnedTensor>& shard2, const std::string& index) {
  ASSERT_TRUE(WriteSafetensors(dir.File("model-00001-of-00002.safetensors"), Views(shard1),
                               {{"format", "pt"}})
                  .ok());
  ASSERT_TRUE(WriteSafetensors(dir.File("model-00002-of-00002.safetensors"), Views(shard2)).ok());
  WriteBytes(dir.File("model.safetensors.index.json"), index);
}

std::vector<OwnedTensor> Shard1() {
  std::vector<OwnedTensor> s;
  s.push_back(MakeTensor("model.embed_tokens.weight", DType::kF32, {16, 4}, 4, 1));
  s.push_back(MakeTensor("model.layers.0.self_attn.q_proj.weight", DType::kBF16, {4, 4}, 2, 2));
  return s;
}

std::vector<OwnedTensor> Shard2() {
  std::vector<OwnedTensor> s;
  s.push_back(MakeTensor("lm_head.weight", DType::kF16, {16, 4}, 2, 3));
  return s;
}

constexpr char kIndex[] = R"({
  "metadata": {"total_size": 448},
  "weight_map": {
    "lm_head.weight": "model-00002-of-00002.safetensors",
    "model.embed_tokens.weight": "model-00001-of-00002.safetensors",
    "model.layers.0.self_attn.q_proj.weight": "model-00001-of-00002.safetensors"
  }
})";

TEST(SafetensorsFileTest, ReadsShardedDirectory) {
  ScratchDir dir;
  const std::vector<OwnedTensor> shard1 = Shard1(), shard2 = Shard2();
  WriteShardedCheckpoint(dir, shard1, shard2, kIndex);
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file = SafetensorsFile::Open(dir.path());
  ASSERT_TRUE(file.ok()) << file.status();
  ASSERT_EQ((*file)->tensors().size(), 3u);
  for (const auto* shard : {&shard1, &shard2}) {
    for (const OwnedTensor& t : *shard) {
      const HostTensor* read = (*file)->Find(t.tensor.name);
      ASSERT_NE(read, nullptr) << t.tensor.name;
      ExpectSameTensor(t.view(), *read);
    }
  }
  EXPECT_EQ((*file)->metadata(), (std::map<std::string, std::string>{{"format", "pt"}}));
  EXPECT_EQ((*file)->path(), dir.path());
  const std::vector<int64_t> shape = {16, 4};
  EXPECT_TRUE((*file)->Require("lm_head.weight", shape).ok());
}

TEST(SafetensorsFileTest, RefusesBrokenShardedDirectories) {
  {
    ScratchDir dir;
    WriteShardedCheckpoint(dir, Shard1(), Shard2(), kIndex);
    std::filesystem::remove(dir.File("model-00002-of-00002.safetensors"));
    absl::StatusOr<std::unique_ptr<SafetensorsFile>> file = SafetensorsFile::Open(dir.path());
    EXPECT_EQ(file.status().code(), absl::StatusCode::kNotFound);
    EXPECT_THAT(std::string(file.status().message()),
                HasSubstr("model-00002-of-00002.safetensors"));
  }
  {
    ScratchDir dir;
    std::string index = kIndex;
    index.replace(index.find("\"lm_head.weight\""), 16, "\"lm_head.bias\"");
    WriteShardedCheckpoint(dir, Shard1(), Shard2(), index);
    absl::StatusOr<std::unique_ptr<SafetensorsFile>> file = SafetensorsFile::Open(dir.path());
    EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(file.status().message()),
                HasSubstr("puts tensor lm_head.bias in model-00002-of-00002.safetensors, but that "
                          "shard has no such tensor"));
  }
  {
    ScratchDir dir;
    std::vector<OwnedTensor> shard2 = Shard2();
    shard2.push_back(MakeTensor("model.embed_tokens.weight", DType::kF32, {16, 4}, 4, 7));
    WriteShardedCheckpoint(dir, Shard1(), shard2, kIndex);
    absl::StatusOr<std::unique_ptr<SafetensorsFile>> file = SafetensorsFile::Open(dir.path());
    EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(file.status().message()),
                HasSubstr("tensor model.embed_tokens.weight appears in both "
                          "model-00001-of-00002.safetensors and model-00002-of-00002.safetensors"));
  }
  {
    ScratchDir dir;
    std::string index = kIndex;
    index.replace(index.find("\"model-00002-of-00002.safetensors\""), 34,
                  "\"../evil.safetensors\"");
    WriteShardedCheckpoint(dir, Shard1(), Shard2(), index);
    absl::StatusOr<std::unique_ptr<SafetensorsFile>> file = SafetensorsFile::Open(dir.path());
    EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(file.status().message()),
                HasSubstr("not a file name in the index's directory"));
  }
  {
    ScratchDir dir;
    WriteShardedCheckpoint(dir, Shard1(), Shard2(), "{\"weight_map\": [}");
    absl::StatusOr<std::unique_ptr<SafetensorsFile>> file = SafetensorsFile::Open(dir.path());
    EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(file.status().message()),
                HasSubstr("model.safetensors.index.json: index is not valid JSON"));
  }
  {
    ScratchDir dir;
    absl::StatusOr<std::unique_ptr<SafetensorsFile>> file = SafetensorsFile::Open(dir.path());
    EXPECT_EQ(file.status().code(), absl::StatusCode::kNotFound);
    EXPECT_THAT(std::string(file.status().message()),
                HasSubstr("has neither model.safetensors nor"));
  }
}

TEST(SafetensorsFileTest, RefusesCorruptFiles) {
  ScratchDir dir;
  const std::string data = Pattern(64);
  const std::string good_header = R"({"a":{"dtype":"F32","shape":[2,4],"data_offsets":[0,32]},)"
                                  R"("b":{"dtype":"I32","shape":[8],"data_offsets":[32,64]}})";
  const std::string good = MakeSafetensors(good_header, data);
  WriteBytes(dir.File("good.safetensors"), good);
  ASSERT_TRUE(SafetensorsFile::Open(dir.File("good.safetensors")).ok());

  ExpectRefused(dir, "abc", "fewer than the 8-byte header length");
  std::string bytes = good;
  testing::Store<uint64_t>(&bytes, 0, good.size());
  ExpectRefused(dir, bytes, absl::StrCat("header length ", good.size(), " exceeds the file"));
  ExpectRefused(dir, good.substr(0, good.size() - 70), "exceeds the file");
  ExpectRefused(dir, good.substr(0, good.size() - 1),
                "tensor b: data_offsets [32, 64) extend past the data section (63 bytes)");
  ExpectRefused(dir, good + "x", "the data section has 65 bytes but the tensors cover 64");
  ExpectRefused(dir, MakeSafetensors(R"({"a":{"dtype":"F32",)", data), "header is not valid JSON");
  ExpectRefused(dir, MakeSafetensors("[1, 2]", data), "header is not a JSON object");
  ExpectRefused(
      dir, MakeSafetensors(R"({"a":{"dtype":"F32","shape":[3,4],"data_offsets":[0,64]}})", data),
      "tensor a: shape [3, 4] of F32 needs 48 bytes but data_offsets [0, 64) hold 64");
  ExpectRefused(dir,
                MakeSafetensors(R"({"a":{"dtype":"F64","shape":[8],"data_offsets":[0,64]}})", data),
                "tensor a: dtype F64 is not supported");
  ExpectRefused(dir,
                MakeSafetensors(R"({"a":{"dtype":"F32","shape":[8],"data_offsets":[0,32]},)"
                                R"("b":{"dtype":"F32","shape":[12],"data_offsets":[16,64]}})",
                                data),
                "tensor b: data_offsets [16, 64) overlap tensor a");
  ExpectRefused(dir,
                MakeSafetensors(R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},)"
                                R"("b":{"dtype":"F32","shape":[8],"data_offsets":[32,64]}})",
                                data),
                "leave a hole [16, 32)");
  ExpectRefused(dir,
                MakeSafetensors(R"({"a":{"dtype":"F32","shape":[16],"data_offsets":[0,64]},)"
                                R"("b":{"dtype":"F32","shape":[2],"data_offsets":[64,72]}})",
                                data),
                "tensor b: data_offsets [64, 72) extend past the data section (64 bytes)");
  ExpectRefused(dir,
                MakeSafetensors(R"({"a":{"dtype":"F32","shape":[0],"data_offsets":[64,0]}})", data),
                "are reversed");
  ExpectRefused(
      dir, MakeSafetensors(R"({"a":{"dtype":"F32","shape":[-16],"data_offsets":[0,64]}})", data),
      "tensor a: shape entry 0 is not a non-negative integer");
  ExpectRefused(dir,
                MakeSafetensors(R"({"a":{"dtype":"F32","shape":[4294967296,4294967296],)"
                                R"("data_offsets":[0,64]}})",
                                data),
                "has more elements than the data section");
  ExpectRefused(dir, MakeSafetensors(R"({"a":{"dtype":"F32","shape":[16]}})", data),
                "\"data_offsets\" is not [begin, end]");
  ExpectRefused(dir,
                MakeSafetensors(R"({"a":{"dtype":"F32","shape":[16],"data_offsets":[0,64]},)"
                                R"("a":{"dtype":"F32","shape":[16],"data_offsets":[0,64]}})",
                                data),
                "header has two entries named a");
  ExpectRefused(dir,
                MakeSafetensors(R"({"__metadata__":{"n":1},)"
                                R"("a":{"dtype":"F32","shape":[16],"data_offsets":[0,64]}})",
                                data),
                "__metadata__ value for n is not a string");
  // 8 + 62 bytes of header put the data at a file offset that is not a multiple of 4.
  ExpectRefused(
      dir,
      MakeSafetensors(R"({"a":{"dtype":"F32","shape":[16],"data_offsets":[0,64]}}      )", data,
                      /*pad=*/false),
      "is not aligned to its 4-byte elements");
}

}  // namespace
}  // namespace knowd
