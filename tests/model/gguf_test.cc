// GgufFile: the shipped stories260K model read with real values, every metadata type and tensor
// type on hand-made files, and corrupt or truncated files refused with the reason.
#include <algorithm>
#include <cstdint>
#include <limits>
#include <random>
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
using ::knowd::testing::Store;
using ::knowd::testing::StoriesGguf;
using ::knowd::testing::WriteBytes;
using ::testing::HasSubstr;

constexpr uint32_t kGgmlF32 = 0, kGgmlF16 = 1, kGgmlQ4_1 = 3, kGgmlQ8_0 = 8, kGgmlBf16 = 30;
// Where stories260K.gguf's tensor data begins (tensor infos end at 14152, aligned up to 32).
constexpr size_t kStoriesDataStart = 14176;

struct TensorSpec {
  std::string name;
  std::vector<uint64_t> ne;  // innermost first, as GGUF stores it
  uint32_t type = kGgmlF32;
  uint64_t offset = 0;
};

struct GgufSpec {
  uint32_t version = 3;
  Bytes kv;
  uint64_t n_kv = 0;
  std::vector<TensorSpec> tensors;
  std::string data;
  size_t alignment = 32;
};

std::string MakeGguf(const GgufSpec& spec) {
  Bytes b;
  b.Raw("GGUF").U32(spec.version).U64(spec.tensors.size()).U64(spec.n_kv).Raw(spec.kv.str());
  for (const TensorSpec& t : spec.tensors) {
    b.Str(t.name).U32(static_cast<uint32_t>(t.ne.size()));
    for (uint64_t d : t.ne) b.U64(d);
    b.U32(t.type).U64(t.offset);
  }
  b.PadTo(spec.alignment).Raw(spec.data);
  return b.str();
}

std::string Pattern(size_t n) {
  std::string s(n, '\0');
  for (size_t i = 0; i < n; ++i) s[i] = static_cast<char>((i * 37 + 11) % 251);
  return s;
}

// Writes `bytes` to a scratch file and opens it.
absl::StatusOr<std::unique_ptr<GgufFile>> OpenBytes(const ScratchDir& dir, std::string_view bytes,
                                                    std::string_view name = "test.gguf") {
  const std::string path = dir.File(name);
  WriteBytes(path, bytes);
  return GgufFile::Open(path);
}

// Offset of a tensor info (its name's length prefix) in a GGUF file's bytes.
size_t TensorInfoOffset(const std::string& bytes, std::string_view name) {
  const std::string needle = Bytes().Str(name).str();
  const size_t pos = bytes.find(needle);
  EXPECT_NE(pos, std::string::npos) << name;
  return pos;
}

// Offset of a tensor's type field (its data offset field follows 4 bytes later).
size_t TensorTypeOffset(const std::string& bytes, std::string_view name) {
  const size_t info = TensorInfoOffset(bytes, name);
  const uint32_t n_dims = Load<uint32_t>(bytes, info + 8 + name.size());
  return info + 8 + name.size() + 4 + 8 * n_dims;
}

TEST(GgufFileTest, ReadsStoriesMetadata) {
  absl::StatusOr<std::unique_ptr<GgufFile>> file = GgufFile::Open(StoriesGguf());
  ASSERT_TRUE(file.ok()) << file.status();
  const GgufFile& f = **file;
  EXPECT_EQ(f.metadata().size(), 19u);
  EXPECT_EQ(*f.GetString("general.architecture"), "llama");
  EXPECT_EQ(*f.GetString("tokenizer.ggml.model"), "llama");
  EXPECT_EQ(*f.GetInt("llama.embedding_length"), 64);
  EXPECT_EQ(*f.GetInt("llama.block_count"), 5);
  EXPECT_EQ(*f.GetInt("llama.feed_forward_length"), 172);
  EXPECT_EQ(*f.GetInt("llama.attention.head_count"), 8);
  EXPECT_EQ(*f.GetInt("llama.attention.head_count_kv"), 4);
  EXPECT_EQ(*f.GetInt("llama.context_length"), 2048);
  EXPECT_EQ(*f.GetInt("tokenizer.ggml.bos_token_id"), 1);
  EXPECT_EQ(*f.GetInt("tokenizer.ggml.padding_token_id"), 4294967295);
  EXPECT_FLOAT_EQ(static_cast<float>(*f.GetFloat("llama.attention.layer_norm_rms_epsilon")), 1e-5f);

  const auto* tokens = std::get_if<std::vector<std::string>>(f.GetValue("tokenizer.ggml.tokens"));
  ASSERT_NE(tokens, nullptr);
  ASSERT_EQ(tokens->size(), 512u);
  EXPECT_EQ((*tokens)[0], "<unk>");
  EXPECT_EQ((*tokens)[1], "<s>");
  EXPECT_EQ((*tokens)[2], "</s>");
  EXPECT_EQ((*tokens)[3], "<0x00>");
  const auto* scores = std::get_if<std::vector<double>>(f.GetValue("tokenizer.ggml.scores"));
  ASSERT_NE(scores, nullptr);
  EXPECT_EQ(scores->size(), 512u);
  const auto* types = std::get_if<std::vector<int64_t>>(f.GetValue("tokenizer.ggml.token_type"));
  ASSERT_NE(types, nullptr);
  ASSERT_EQ(types->size(), 512u);
  EXPECT_EQ((*types)[0], 2);  // unknown
  EXPECT_EQ((*types)[1], 3);  // control
  EXPECT_EQ((*types)[3], 6);  // byte

  EXPECT_EQ(f.GetString("no.such.key").status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(f.GetString("no.such.key").status().message()), HasSubstr("no.such.key"));
  EXPECT_EQ(f.GetInt("general.architecture").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(f.GetBool("llama.block_count").status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(GgufFileTest, ReadsStoriesTensors) {
  absl::StatusOr<std::unique_ptr<GgufFile>> file = GgufFile::Open(StoriesGguf());
  ASSERT_TRUE(file.ok()) << file.status();
  const GgufFile& f = **file;
  ASSERT_EQ(f.tensors().size(), 48u);
  EXPECT_EQ(f.tensors().front().name, "token_embd.weight");
  EXPECT_EQ(f.tensors().back().name, "blk.4.ffn_norm.weight");

  const HostTensor* embd = f.Find("token_embd.weight");
  ASSERT_NE(embd, nullptr);
  EXPECT_EQ(embd->dtype, DType::kF32);
  EXPECT_EQ(embd->shape, (std::vector<int64_t>{512, 64}));
  EXPECT_EQ(embd->numel(), 512 * 64);
  EXPECT_EQ(embd->bytes, 512 * 64 * 4);

  // Shapes are outermost first: GGUF's ne (64, 32) is a [32, 64] Linear weight.
  const HostTensor* wk = f.Find("blk.0.attn_k.weight");
  ASSERT_NE(wk, nullptr);
  EXPECT_EQ(wk->shape, (std::vector<int64_t>{32, 64}));
  EXPECT_EQ(f.Find("blk.4.ffn_up.weight")->shape, (std::vector<int64_t>{172, 64}));
  EXPECT_EQ(f.Find("output_norm.weight")->shape, (std::vector<int64_t>{64}));

  // Data is where the file says: the first tensor at the data start, every tensor 32-aligned.
  const std::string bytes = ReadBytes(StoriesGguf());
  EXPECT_EQ(std::memcmp(embd->data, bytes.data() + kStoriesDataStart, embd->bytes), 0);
  const HostTensor* norm = f.Find("blk.4.ffn_norm.weight");
  EXPECT_EQ(std::memcmp(norm->data, bytes.data() + kStoriesDataStart + 1170944, 256), 0);
  for (const HostTensor& t : f.tensors()) {
    EXPECT_EQ(reinterpret_cast<uintptr_t>(t.data) % 32, 0u) << t.name;
  }
}

TEST(GgufFileTest, RequireChecksNameAndShape) {
  absl::StatusOr<std::unique_ptr<GgufFile>> file = GgufFile::Open(StoriesGguf());
  ASSERT_TRUE(file.ok()) << file.status();
  const std::vector<int64_t> shape = {512, 64};
  absl::StatusOr<const HostTensor*> t = (*file)->Require("token_embd.weight", shape);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ((*t)->name, "token_embd.weight");
  EXPECT_TRUE((*file)->Require("token_embd.weight").ok());

  absl::StatusOr<const HostTensor*> missing = (*file)->Require("blk.9.attn_q.weight");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(missing.status().message()), HasSubstr("stories260K.gguf"));
  EXPECT_THAT(std::string(missing.status().message()), HasSubstr("blk.9.attn_q.weight"));

  const std::vector<int64_t> wrong = {64, 512};
  absl::StatusOr<const HostTensor*> mismatch = (*file)->Require("token_embd.weight", wrong);
  EXPECT_EQ(mismatch.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(mismatch.status().message()), HasSubstr("[512, 64], expected [64, 512]"));
}

TEST(GgufFileTest, MissingFileIsNotFound) {
  absl::StatusOr<std::unique_ptr<GgufFile>> file = GgufFile::Open("/nonexistent/model.gguf");
  EXPECT_EQ(file.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(file.status().message()), HasSubstr("model.gguf"));
}

TEST(GgufFileTest, ReadsEveryMetadataTypeInVersion2) {
  GgufSpec spec;
  spec.version = 2;
  spec.kv.Str("t.u8").U32(0).U8(200);
  spec.kv.Str("t.i8").U32(1).Put<int8_t>(-5);
  spec.kv.Str("t.u16").U32(2).Put<uint16_t>(60000);
  spec.kv.Str("t.i16").U32(3).Put<int16_t>(-30000);
  spec.kv.Str("t.u32").U32(4).U32(4000000000u);
  spec.kv.Str("t.i32").U32(5).Put<int32_t>(-2000000000);
  spec.kv.Str("t.f32").U32(6).Put<float>(0.5f);
  spec.kv.Str("t.bool").U32(7).U8(1);
  spec.kv.Str("t.str").U32(8).Str("h\xc3\xa9llo");
  spec.kv.Str("t.u64").U32(10).U64(std::numeric_limits<uint64_t>::max());
  spec.kv.Str("t.i64").U32(11).Put<int64_t>(std::numeric_limits<int64_t>::min());
  spec.kv.Str("t.f64").U32(12).Put<double>(1e-300);
  spec.kv.Str("t.arr_str").U32(9).U32(8).U64(3).Str("a").Str("").Str("ccc");
  spec.kv.Str("t.arr_i16").U32(9).U32(3).U64(2).Put<int16_t>(-1).Put<int16_t>(7);
  spec.kv.Str("t.arr_u64").U32(9).U32(10).U64(1).U64(123456789012345);
  spec.kv.Str("t.arr_f32").U32(9).U32(6).U64(2).Put<float>(1.5f).Put<float>(-2.0f);
  spec.kv.Str("t.arr_f64").U32(9).U32(12).U64(1).Put<double>(0.25);
  spec.kv.Str("t.arr_bool").U32(9).U32(7).U64(2).U8(0).U8(1);
  spec.kv.Str("t.arr_empty").U32(9).U32(4).U64(0);
  spec.n_kv = 19;
  ScratchDir dir;
  absl::StatusOr<std::unique_ptr<GgufFile>> file = OpenBytes(dir, MakeGguf(spec));
  ASSERT_TRUE(file.ok()) << file.status();
  const GgufFile& f = **file;
  EXPECT_EQ(f.metadata().size(), 19u);
  EXPECT_TRUE(f.tensors().empty());

  EXPECT_EQ(std::get<uint64_t>(*f.GetValue("t.u8")), 200u);
  EXPECT_EQ(*f.GetInt("t.u8"), 200);
  EXPECT_EQ(*f.GetInt("t.i8"), -5);
  EXPECT_EQ(*f.GetInt("t.u16"), 60000);
  EXPECT_EQ(*f.GetInt("t.i16"), -30000);
  EXPECT_EQ(*f.GetInt("t.u32"), 4000000000);
  EXPECT_EQ(*f.GetInt("t.i32"), -2000000000);
  EXPECT_EQ(*f.GetFloat("t.f32"), 0.5);
  EXPECT_EQ(*f.GetBool("t.bool"), true);
  EXPECT_EQ(*f.GetString("t.str"), "h\xc3\xa9llo");
  EXPECT_EQ(std::get<uint64_t>(*f.GetValue("t.u64")), std::numeric_limits<uint64_t>::max());
  EXPECT_EQ(f.GetInt("t.u64").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(*f.GetInt("t.i64"), std::numeric_limits<int64_t>::min());
  EXPECT_EQ(*f.GetFloat("t.f64"), 1e-300);
  EXPECT_EQ(*f.GetFloat("t.u16"), 60000.0);
  EXPECT_EQ(std::get<std::vector<std::string>>(*f.GetValue("t.arr_str")),
            (std::vector<std::string>{"a", "", "ccc"}));
  EXPECT_EQ(std::get<std::vector<int64_t>>(*f.GetValue("t.arr_i16")),
            (std::vector<int64_t>{-1, 7}));
  EXPECT_EQ(std::get<std::vector<int64_t>>(*f.GetValue("t.arr_u64")),
            (std::vector<int64_t>{123456789012345}));
  EXPECT_EQ(std::get<std::vector<double>>(*f.GetValue("t.arr_f32")),
            (std::vector<double>{1.5, -2.0}));
  EXPECT_EQ(std::get<std::vector<double>>(*f.GetValue("t.arr_f64")), (std::vector<double>{0.25}));
  EXPECT_EQ(std::get<std::vector<int64_t>>(*f.GetValue("t.arr_bool")),
            (std::vector<int64_t>{0, 1}));
  EXPECT_TRUE(std::get<std::vector<int64_t>>(*f.GetValue("t.arr_empty")).empty());
  EXPECT_EQ(f.GetValue("t.missing"), nullptr);
}

TEST(GgufFileTest, ReadsF16Bf16Q8AndF32Tensors) {
  GgufSpec spec;
  spec.tensors = {{"a.f16", {3, 2}, kGgmlF16, 0},
                  {"b.bf16", {5}, kGgmlBf16, 32},
                  {"c.q8", {64, 2}, kGgmlQ8_0, 64},
                  {"d.f32", {4, 1, 1, 2}, kGgmlF32, 224}};
  spec.data = Pattern(224 + 32);
  ScratchDir dir;
  absl::StatusOr<std::unique_ptr<GgufFile>> file = OpenBytes(dir, MakeGguf(spec));
  ASSERT_TRUE(file.ok()) << file.status();
  const std::vector<HostTensor>& t = (*file)->tensors();
  ASSERT_EQ(t.size(), 4u);
  EXPECT_EQ(t[0].dtype, DType::kF16);
  EXPECT_EQ(t[0].shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(t[0].bytes, 12);
  EXPECT_EQ(t[1].dtype, DType::kBF16);
  EXPECT_EQ(t[1].shape, (std::vector<int64_t>{5}));
  EXPECT_EQ(t[1].bytes, 10);
  EXPECT_EQ(t[2].dtype, DType::kQ8_0);
  EXPECT_EQ(t[2].shape, (std::vector<int64_t>{2, 64}));
  EXPECT_EQ(t[2].bytes, 4 * 34);
  EXPECT_EQ(t[3].dtype, DType::kF32);
  EXPECT_EQ(t[3].shape, (std::vector<int64_t>{2, 1, 1, 4}));
  EXPECT_EQ(t[3].numel(), 8);
  const uint64_t offsets[] = {0, 32, 64, 224};
  for (size_t i = 0; i < t.size(); ++i) {
    EXPECT_EQ(std::memcmp(t[i].data, spec.data.data() + offsets[i], t[i].bytes), 0) << t[i].name;
  }
}

TEST(GgufFileTest, HonorsCustomAlignment) {
  GgufSpec spec;
  spec.kv.Str("general.alignment").U32(4).U32(64);
  spec.n_kv = 1;
  spec.alignment = 64;
  spec.tensors = {{"a", {8}, kGgmlF32, 0}, {"b", {8}, kGgmlF32, 64}};
  spec.data = Pattern(96);
  ScratchDir dir;
  absl::StatusOr<std::unique_ptr<GgufFile>> file = OpenBytes(dir, MakeGguf(spec));
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ(std::memcmp((*file)->tensors()[1].data, spec.data.data() + 64, 32), 0);
  EXPECT_EQ(reinterpret_cast<uintptr_t>((*file)->tensors()[1].data) % 64, 0u);

  spec.tensors[1].offset = 32;  // aligned to the default 32, not to this file's 64
  file = OpenBytes(dir, MakeGguf(spec));
  EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(file.status().message()),
              HasSubstr("tensor b: data offset 32 is not a multiple"));

  GgufSpec odd;
  odd.kv.Str("general.alignment").U32(4).U32(24);
  odd.n_kv = 1;
  file = OpenBytes(dir, MakeGguf(odd));
  EXPECT_THAT(std::string(file.status().message()), HasSubstr("general.alignment 24"));
}

// Expects Open to refuse `bytes` with INVALID_ARGUMENT and a message naming the file and
// containing `reason`.
void ExpectRefused(const ScratchDir& dir, std::string_view bytes, std::string_view reason) {
  absl::StatusOr<std::unique_ptr<GgufFile>> file = OpenBytes(dir, bytes, "bad.gguf");
  ASSERT_FALSE(file.ok()) << "expected refusal: " << reason;
  EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument) << file.status();
  EXPECT_THAT(std::string(file.status().message()), HasSubstr("bad.gguf: "));
  EXPECT_THAT(std::string(file.status().message()), HasSubstr(reason));
}

TEST(GgufFileTest, RefusesTruncatedFiles) {
  const std::string bytes = ReadBytes(StoriesGguf());
  ASSERT_EQ(bytes.size(), 1185376u);
  std::vector<size_t> cuts;
  for (size_t i = 0; i < 50; ++i) cuts.push_back(bytes.size() * i / 50);
  for (size_t i = 1; i <= 40; ++i) cuts.push_back(i);  // inside and just past the fixed header
  for (size_t i = kStoriesDataStart - 40; i <= kStoriesDataStart + 4; ++i) cuts.push_back(i);
  cuts.push_back(bytes.size() - 1);
  ScratchDir dir;
  for (size_t cut : cuts) {
    SCOPED_TRACE(::testing::Message() << "cut at " << cut);
    absl::StatusOr<std::unique_ptr<GgufFile>> file =
        OpenBytes(dir, std::string_view(bytes).substr(0, cut), "cut.gguf");
    ASSERT_FALSE(file.ok());
    EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument) << file.status();
    const std::string message(file.status().message());
    EXPECT_THAT(message, HasSubstr("cut.gguf: "));
    EXPECT_TRUE(message.find("truncated") != std::string::npos ||
                message.find("past end of file") != std::string::npos)
        << message;
  }
}

TEST(GgufFileTest, RefusesWrongMagic) {
  std::string bytes = ReadBytes(StoriesGguf());
  bytes[0] = 'X';
  ScratchDir dir;
  ExpectRefused(dir, bytes, "not a GGUF file");
}

TEST(GgufFileTest, RefusesUnsupportedVersions) {
  std::string bytes = ReadBytes(StoriesGguf());
  ScratchDir dir;
  Store<uint32_t>(&bytes, 4, 4);
  ExpectRefused(dir, bytes, "unsupported GGUF version 4");
  Store<uint32_t>(&bytes, 4, 1);
  ExpectRefused(dir, bytes, "version 1 is not supported");
  Store<uint32_t>(&bytes, 4, 0x03000000);
  ExpectRefused(dir, bytes, "big-endian");
}

TEST(GgufFileTest, RefusesCountsBeyondTheFile) {
  const std::string good = ReadBytes(StoriesGguf());
  ScratchDir dir;
  std::string bytes = good;
  Store<uint64_t>(&bytes, 8, 1'000'000'000'000);
  ExpectRefused(dir, bytes, "tensor count 1000000000000 cannot fit");
  bytes = good;
  Store<uint64_t>(&bytes, 8, std::numeric_limits<uint64_t>::max());
  ExpectRefused(dir, bytes, "tensor count");
  bytes = good;
  Store<uint64_t>(&bytes, 16, std::numeric_limits<uint64_t>::max() / 2);
  ExpectRefused(dir, bytes, "metadata count");
  bytes = good;
  // Tensor count small enough for the file size but more than the infos after the metadata.
  const uint64_t fits_file_only = (good.size() - 24) / 25;
  Store<uint64_t>(&bytes, 8, fits_file_only);
  ExpectRefused(dir, bytes, absl::StrCat("tensor count ", fits_file_only, " cannot fit in the "));
  bytes = good;
  // The first key's string length (tokenizer.ggml.tokens) and the tokens array's length.
  Store<uint64_t>(&bytes, 24, 1ull << 60);
  ExpectRefused(dir, bytes, "truncated");
  bytes = good;
  Store<uint64_t>(&bytes, 24 + 8 + 21 + 4 + 4, 1ull << 40);
  ExpectRefused(dir, bytes, "array of 1099511627776 elements cannot fit");
}

TEST(GgufFileTest, RefusesUnsupportedTensorType) {
  std::string bytes = ReadBytes(StoriesGguf());
  Store<uint32_t>(&bytes, TensorTypeOffset(bytes, "blk.0.attn_q.weight"), 3);
  ScratchDir dir;
  ExpectRefused(dir, bytes, "tensor blk.0.attn_q.weight: type 3 (q4_1) is not supported");
  Store<uint32_t>(&bytes, TensorTypeOffset(bytes, "blk.0.attn_q.weight"), 12345);
  ExpectRefused(dir, bytes, "tensor blk.0.attn_q.weight: type 12345 (unknown)");
}

TEST(GgufFileTest, RefusesDataOffsetsOutOfRange) {
  const std::string good = ReadBytes(StoriesGguf());
  const size_t offset_field = TensorTypeOffset(good, "blk.4.ffn_norm.weight") + 4;
  ASSERT_EQ(Load<uint64_t>(good, offset_field), 1170944u);
  ScratchDir dir;
  std::string bytes = good;
  Store<uint64_t>(&bytes, offset_field, 1ull << 40);
  ExpectRefused(dir, bytes, "tensor blk.4.ffn_norm.weight: data offset 1099511627776");
  // In the file but running past its end: 256 bytes at the last 32.
  Store<uint64_t>(&bytes, offset_field, good.size() - kStoriesDataStart - 32);
  ExpectRefused(dir, bytes,
                "tensor blk.4.ffn_norm.weight: data [1185344, 1185600) extends past end of file "
                "(1185376 bytes)");
  Store<uint64_t>(&bytes, offset_field, 1170944 + 1);
  ExpectRefused(dir, bytes, "not a multiple of the 32-byte alignment");
  // Onto another tensor's data.
  Store<uint64_t>(&bytes, offset_field, 131072 + 128);
  ExpectRefused(dir, bytes, "overlaps tensor");
}

TEST(GgufFileTest, RefusesBadTensorInfos) {
  ScratchDir dir;
  GgufSpec spec;
  spec.data = Pattern(4096);
  auto refused = [&](std::vector<TensorSpec> tensors, std::string_view reason) {
    SCOPED_TRACE(reason);
    spec.tensors = std::move(tensors);
    ExpectRefused(dir, MakeGguf(spec), reason);
  };
  refused({{"w", {48, 2}, kGgmlQ8_0, 0}},
          "tensor w: q8_0 rows of 48 elements are not a multiple of its block of 32");
  refused({{"w", {1, 1, 1, 1, 1}, kGgmlF32, 0}}, "tensor w: 5 dimensions (at most 4)");
  refused({{"w", {4, 0}, kGgmlF32, 0}}, "tensor w: dimension 1 is 0");
  refused({{"w", {1ull << 63}, kGgmlF32, 0}}, "tensor w: dimension 0 is 9223372036854775808");
  refused({{"w", {1ull << 32, 1ull << 32, 1ull << 32}, kGgmlF32, 0}}, "tensor w: element count");
  refused({{"w", {1ull << 20, 1ull << 20}, kGgmlF32, 0}}, "extends past end of file");
  refused({{"w", {1ull << 31, 1ull << 31}, kGgmlF32, 0}}, "more than any file can hold");
  refused({{"w", {4}, kGgmlF32, 0}, {"w", {4}, kGgmlF32, 32}}, "tensor w appears twice");
  refused({{"", {4}, kGgmlF32, 0}}, "tensor 0 has an empty name");
  refused({{"a", {16}, kGgmlF32, 0}, {"b", {16}, kGgmlF32, 32}},
          "tensor b: data [");  // b's range starts inside a's
  refused({{"a", {16}, kGgmlF32, 0}, {"b", {16}, kGgmlF32, 32}}, "overlaps tensor a");
  spec.tensors = {{"a", {16}, kGgmlF32, 0}, {"b", {16}, kGgmlF32, 64}};
  EXPECT_TRUE(OpenBytes(dir, MakeGguf(spec)).ok());
}

TEST(GgufFileTest, RefusesBadMetadata) {
  ScratchDir dir;
  auto refused = [&](Bytes kv, uint64_t n_kv, std::string_view reason) {
    SCOPED_TRACE(reason);
    GgufSpec spec;
    spec.kv = std::move(kv);
    spec.n_kv = n_kv;
    ExpectRefused(dir, MakeGguf(spec), reason);
  };
  refused(Bytes().Str("k").U32(4).U32(1).Str("k").U32(4).U32(2), 2, "metadata key k appears twice");
  refused(Bytes().Str("k").U32(13).U32(0), 1, "metadata key k has unknown value type 13");
  refused(Bytes().Str("k").U32(9).U32(9).U64(1).U32(4).U64(0), 1, "nested arrays");
  refused(Bytes().Str("k").U32(9).U32(99).U64(1).U32(0), 1, "array of unknown type 99");
  refused(Bytes().Str("k").U32(7).U8(2), 1, "bool value 2 is not 0/1");
  refused(Bytes().Str("").U32(4).U32(2), 1, "metadata entry 0 has a key of 0 bytes");
  refused(Bytes().Str("k").U32(8).U64(1000).Raw("abc"), 1, "truncated");
  refused(Bytes().Str("general.alignment").U32(8).Str("32"), 1,
          "general.alignment is not a positive integer");
  refused(Bytes().Str("general.alignment").U32(4).U32(0), 1, "general.alignment 0");
  refused(Bytes().Str("k").U32(9).U32(10).U64(1).U64(1ull << 63), 1, "does not fit in int64");
}

// Random byte flips in the header must give either a valid file or an error, never a crash or a
// tensor pointing outside the file. Run under -fsanitize=address to check reads too.
TEST(GgufFileTest, SurvivesRandomHeaderCorruption) {
  const std::string good = ReadBytes(StoriesGguf());
  const size_t infos_begin = TensorInfoOffset(good, "token_embd.weight");
  std::mt19937 rng(20240517);
  ScratchDir dir;
  int opened = 0, refused = 0;
  for (int iteration = 0; iteration < 200; ++iteration) {
    std::string bytes = good;
    // Alternate between anywhere in the header and the denser tensor-info region.
    const size_t begin = iteration % 2 == 0 ? 0 : infos_begin;
    std::uniform_int_distribution<size_t> position(begin, kStoriesDataStart - 1);
    std::uniform_int_distribution<int> flips(1, 8), value(0, 255);
    for (int n = flips(rng); n > 0; --n) bytes[position(rng)] = static_cast<char>(value(rng));
    absl::StatusOr<std::unique_ptr<GgufFile>> file = OpenBytes(dir, bytes, "fuzz.gguf");
    if (!file.ok()) {
      ++refused;
      EXPECT_THAT(std::string(file.status().message()), HasSubstr("fuzz.gguf: ")) << file.status();
      continue;
    }
    ++opened;
    for (const HostTensor& t : (*file)->tensors()) {
      ASSERT_GE(t.bytes, 0);
      ASSERT_EQ(t.bytes, DTypeBytes(t.dtype, t.numel()));
      // Touch every byte so a bad range would fault (or trip ASan) here.
      const auto* p = static_cast<const unsigned char*>(t.data);
      unsigned sum = 0;
      for (int64_t i = 0; i < t.bytes; ++i) sum += p[i];
      volatile unsigned sink = sum;
      (void)sink;
    }
  }
  EXPECT_EQ(opened + refused, 200);
  EXPECT_GT(refused, 0);
}

}  // namespace
}  // namespace knowd
