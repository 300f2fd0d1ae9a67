// WriteGguf (round trips, the GGUF types it picks, refusals) and ConvertModel: stories260K in
// every weight type and both formats, run on the CPU backend against the f32 model it came from.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "kernels/math.h"
#include "model/convert.h"
#include "model/generate.h"
#include "model/tensor_file.h"
#include "model/tokenizer.h"
#include "model/transformer.h"
#include "tests/model/formats_test_util.h"

namespace knowd {
namespace {

using ::knowd::testing::Bytes;
using ::knowd::testing::Load;
using ::knowd::testing::ReadBytes;
using ::knowd::testing::ScratchDir;
using ::knowd::testing::StoriesGguf;
using ::knowd::testing::StoriesHfDir;
using ::testing::HasSubstr;

using Metadata = std::map<std::string, GgufValue, std::less<>>;

// GGUF value type tags (ggml docs/gguf.md).
constexpr uint32_t kUint32 = 4, kInt32 = 5, kFloat32 = 6, kBool = 7, kString = 8, kArray = 9,
                   kUint64 = 10, kInt64 = 11, kFloat64 = 12;

HostTensor View(std::string name, DType dtype, std::vector<int64_t> shape,
                const std::vector<uint8_t>& bytes) {
  HostTensor t;
  t.name = std::move(name);
  t.dtype = dtype;
  t.shape = std::move(shape);
  t.data = bytes.data();
  t.bytes = static_cast<int64_t>(bytes.size());
  return t;
}

std::vector<uint8_t> PatternBytes(size_t n) {
  std::vector<uint8_t> b(n);
  for (size_t i = 0; i < n; ++i) b[i] = static_cast<uint8_t>((i * 37 + 11) % 251);
  return b;
}

// The GGUF type tag written for metadata `key` (and, for arrays, the element type).
void ValueTypeOf(const std::string& file_bytes, std::string_view key, uint32_t* type,
                 uint32_t* element_type) {
  const std::string needle = Bytes().Str(key).str();
  const size_t pos = file_bytes.find(needle);
  ASSERT_NE(pos, std::string::npos) << key;
  *type = Load<uint32_t>(file_bytes, pos + needle.size());
  *element_type = *type == kArray ? Load<uint32_t>(file_bytes, pos + needle.size() + 4) : 0;
}

void ExpectSameTensors(const TensorFile& a, const TensorFile& b) {
  ASSERT_EQ(a.tensors().size(), b.tensors().size());
  for (size_t i = 0; i < a.tensors().size(); ++i) {
    const HostTensor& x = a.tensors()[i];
    const HostTensor& y = b.tensors()[i];
    EXPECT_EQ(x.name, y.name);
    EXPECT_EQ(x.dtype, y.dtype) << x.name;
    EXPECT_EQ(x.shape, y.shape) << x.name;
    ASSERT_EQ(x.bytes, y.bytes) << x.name;
    EXPECT_EQ(std::memcmp(x.data, y.data, x.bytes), 0) << x.name;
  }
}

// ---- WriteGguf -----------------------------------------------------------------------------

TEST(GgufWriterTest, RoundTripsEveryValueTypeAndTensorType) {
  ScratchDir dir;
  Metadata metadata = {
      {"general.architecture", std::string("llama")},
      {"u.small", uint64_t{7}},
      {"u.max32", uint64_t{std::numeric_limits<uint32_t>::max()}},
      {"u.big", uint64_t{1} << 40},
      {"i.negative", int64_t{-5}},
      {"i.min32", int64_t{std::numeric_limits<int32_t>::min()}},
      {"i.big", int64_t{-(int64_t{1} << 40)}},
      {"f.exact", 0.25},
      {"f.eps", double{1e-5f}},
      {"f.inf", std::numeric_limits<double>::infinity()},
      {"f.double", 0.1},
      {"f.huge", 1e300},
      {"b.true", true},
      {"b.false", false},
      {"s.empty", std::string()},
      {"s.bytes", std::string("a\0b\xff", 4)},
      {"a.strings", std::vector<std::string>{"<unk>", "", "\xe2\x96\x81the"}},
      {"a.empty_strings", std::vector<std::string>{}},
      {"a.ints", std::vector<int64_t>{0, -1, std::numeric_limits<int32_t>::max()}},
      {"a.wide_ints", std::vector<int64_t>{1, int64_t{1} << 33}},
      {"a.floats", std::vector<double>{-1000.0, 0.5, double{-3.25f}}},
      {"a.doubles", std::vector<double>{0.5, 0.1}},
  };
  const std::vector<uint8_t> f32 = PatternBytes(3 * 4 * 4);
  const std::vector<uint8_t> f16 = PatternBytes(5 * 2);
  const std::vector<uint8_t> bf16 = PatternBytes(2 * 1 * 3 * 2 * 2);
  const std::vector<uint8_t> q8 = PatternBytes(2 * kQ8_0BlockBytes * 2);
  const std::vector<HostTensor> tensors = {
      View("matrix", DType::kF32, {3, 4}, f32),
      View("vector", DType::kF16, {5}, f16),
      View("rank4", DType::kBF16, {2, 1, 3, 2}, bf16),
      View("quantized", DType::kQ8_0, {2, 64}, q8),
  };

  for (int alignment : {32, 64, 8}) {
    SCOPED_TRACE(alignment);
    const std::string path = dir.File(absl::StrCat("all_", alignment, ".gguf"));
    ASSERT_TRUE(WriteGguf(path, metadata, tensors, alignment).ok());
    absl::StatusOr<std::unique_ptr<GgufFile>> file = GgufFile::Open(path);
    ASSERT_TRUE(file.ok()) << file.status();

    Metadata expected = metadata;
    if (alignment != 32) expected["general.alignment"] = uint64_t(alignment);
    EXPECT_EQ((*file)->metadata(), expected);
    ASSERT_EQ((*file)->tensors().size(), tensors.size());
    const std::string bytes = ReadBytes(path);
    for (size_t i = 0; i < tensors.size(); ++i) {
      const HostTensor& t = (*file)->tensors()[i];
      EXPECT_EQ(t.name, tensors[i].name);
      EXPECT_EQ(t.dtype, tensors[i].dtype);
      EXPECT_EQ(t.shape, tensors[i].shape);
      ASSERT_EQ(t.bytes, tensors[i].bytes);
      EXPECT_EQ(std::memcmp(t.data, tensors[i].data, t.bytes), 0) << t.name;
      // The mapping starts on a page boundary, so this is the offset in the file.
      EXPECT_EQ(reinterpret_cast<uintptr_t>(t.data) % alignment, 0u) << t.name;
    }
    // The whole file is padded to the alignment, as gguf-py writes it.
    EXPECT_EQ(bytes.size() % alignment, 0u);
  }

  // The narrowest exact types, which are the ones llama.cpp insists on for its keys.
  const std::string bytes = ReadBytes(dir.File("all_32.gguf"));
  const std::pair<std::string_view, std::pair<uint32_t, uint32_t>> expected_types[] = {
      {"u.small", {kUint32, 0}},
      {"u.max32", {kUint32, 0}},
      {"u.big", {kUint64, 0}},
      {"i.negative", {kInt32, 0}},
      {"i.min32", {kInt32, 0}},
      {"i.big", {kInt64, 0}},
      {"f.exact", {kFloat32, 0}},
      {"f.eps", {kFloat32, 0}},
      {"f.inf", {kFloat32, 0}},
      {"f.double", {kFloat64, 0}},
      {"f.huge", {kFloat64, 0}},
      {"b.true", {kBool, 0}},
      {"s.bytes", {kString, 0}},
      {"a.strings", {kArray, kString}},
      {"a.ints", {kArray, kInt32}},
      {"a.wide_ints", {kArray, kInt64}},
      {"a.floats", {kArray, kFloat32}},
      {"a.doubles", {kArray, kFloat64}},
      {"a.empty_strings", {kArray, kString}},
  };
  for (const auto& [key, types] : expected_types) {
    uint32_t type = 0, element = 0;
    ValueTypeOf(bytes, key, &type, &element);
    EXPECT_EQ(type, types.first) << key;
    EXPECT_EQ(element, types.second) << key;
  }
  EXPECT_EQ(bytes.find(Bytes().Str("general.alignment").str()), std::string::npos)
      << "the default alignment needs no key";
}

TEST(GgufWriterTest, RewritingStoriesReadsBackIdentically) {
  ScratchDir dir;
  absl::StatusOr<std::unique_ptr<GgufFile>> original = GgufFile::Open(StoriesGguf());
  ASSERT_TRUE(original.ok()) << original.status();
  const std::string path = dir.File("stories.gguf");
  ASSERT_TRUE(WriteGguf(path, (*original)->metadata(), (*original)->tensors()).ok());
  absl::StatusOr<std::unique_ptr<GgufFile>> copy = GgufFile::Open(path);
  ASSERT_TRUE(copy.ok()) << copy.status();
  EXPECT_EQ((*copy)->metadata(), (*original)->metadata());
  ExpectSameTensors(**copy, **original);
  // Same header content in a possibly different key order: the sizes agree to the byte.
  EXPECT_EQ(ReadBytes(path).size(), ReadBytes(StoriesGguf()).size());

  // And a second generation is byte-identical to the first (the writer is deterministic).
  const std::string again = dir.File("again.gguf");
  ASSERT_TRUE(WriteGguf(again, (*copy)->metadata(), (*copy)->tensors()).ok());
  EXPECT_EQ(ReadBytes(again), ReadBytes(path));
}

TEST(GgufWriterTest, RefusesBadInputAndLeavesNoFile) {
  ScratchDir dir;
  const std::string path = dir.File("bad.gguf");
  const std::vector<uint8_t> data = PatternBytes(64 * 4);
  struct Case {
    std::string what;
    Metadata metadata;
    std::vector<HostTensor> tensors;
    int alignment;
    std::string message;
  };
  const HostTensor good = View("good", DType::kF32, {64}, data);
  std::vector<Case> cases = {
      {"i32", {}, {View("ids", DType::kI32, {64}, data)}, 32, "cannot be written"},
      {"duplicate", {}, {good, good}, 32, "given twice"},
      {"long name", {}, {View(std::string(64, 'x'), DType::kF32, {64}, data)}, 32, "64 bytes"},
      {"empty name", {}, {View("", DType::kF32, {64}, data)}, 32, "0 bytes"},
      {"byte count", {}, {View("short", DType::kF32, {63}, data)}, 32, "needs 252 bytes"},
      {"rank 0", {}, {View("scalar", DType::kF32, {}, data)}, 32, "0 dimensions"},
      {"rank 5", {}, {View("r5", DType::kF32, {1, 1, 1, 1, 64}, data)}, 32, "5 dimensions"},
      {"zero dim", {}, {View("z", DType::kF32, {0, 64}, data)}, 32, "not a valid tensor shape"},
      {"q8_0 row",
       {},
       {View("q", DType::kQ8_0, {2, 16}, data)},
       32,
       "not a multiple of its block of 32"},
      {"alignment", {}, {good}, 12, "not a power of two"},
      {"alignment key", {{"general.alignment", uint64_t{64}}}, {good}, 32, "disagrees"},
      {"empty key", {{"", true}}, {good}, 32, "metadata key of 0 bytes"},
  };
  for (const Case& c : cases) {
    absl::Status s = WriteGguf(path, c.metadata, c.tensors, c.alignment);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << c.what << ": " << s;
    EXPECT_THAT(std::string(s.message()), HasSubstr(c.message)) << c.what;
    EXPECT_FALSE(std::filesystem::exists(path)) << c.what;
  }
  EXPECT_TRUE(std::filesystem::is_empty(dir.path())) << "no temp files left behind";
}

// ---- ConvertModel --------------------------------------------------------------------------

TEST(ConvertModelTest, F32ConversionReproducesTheShippedOtherFormatExactly) {
  ScratchDir dir;
  // The shipped HF directory is the shipped GGUF's weights in Hugging Face layout (PROVENANCE.md),
  // so converting either one into the other's format must give back the other's bytes: names,
  // shapes and the Q/K row permutation all have to be right.
  ASSERT_TRUE(ConvertModel(StoriesGguf(), dir.File("hf"), DType::kF32).ok());
  ASSERT_TRUE(ConvertModel(StoriesHfDir(), dir.File("from_hf.gguf"), DType::kF32).ok());

  absl::StatusOr<std::unique_ptr<SafetensorsFile>> shipped_hf =
      SafetensorsFile::Open(StoriesHfDir());
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> made_hf = SafetensorsFile::Open(dir.File("hf"));
  ASSERT_TRUE(shipped_hf.ok() && made_hf.ok());
  ASSERT_EQ((*made_hf)->tensors().size(), (*shipped_hf)->tensors().size());
  for (const HostTensor& t : (*shipped_hf)->tensors()) {
    const HostTensor* m = (*made_hf)->Find(t.name);
    ASSERT_NE(m, nullptr) << t.name;
    EXPECT_EQ(m->dtype, DType::kF32);
    EXPECT_EQ(m->shape, t.shape) << t.name;
    ASSERT_EQ(m->bytes, t.bytes) << t.name;
    EXPECT_EQ(std::memcmp(m->data, t.data, t.bytes), 0) << t.name;
  }

  absl::StatusOr<std::unique_ptr<GgufFile>> shipped = GgufFile::Open(StoriesGguf());
  absl::StatusOr<std::unique_ptr<GgufFile>> made = GgufFile::Open(dir.File("from_hf.gguf"));
  ASSERT_TRUE(shipped.ok() && made.ok());
  ASSERT_EQ((*made)->tensors().size(), (*shipped)->tensors().size());
  for (const HostTensor& t : (*shipped)->tensors()) {
    const HostTensor* m = (*made)->Find(t.name);
    ASSERT_NE(m, nullptr) << t.name;
    EXPECT_EQ(m->shape, t.shape) << t.name;
    ASSERT_EQ(m->bytes, t.bytes) << t.name;
    EXPECT_EQ(std::memcmp(m->data, t.data, t.bytes), 0) << t.name;
  }
  // The hyperparameters llama.cpp reads, with the types it requires.
  const std::string bytes = ReadBytes(dir.File("from_hf.gguf"));
  for (std::string_view key :
       {"llama.block_count", "llama.context_length", "llama.embedding_length",
        "llama.feed_forward_length", "llama.attention.head_count", "llama.attention.head_count_kv",
        "llama.rope.dimension_count", "general.file_type"}) {
    uint32_t type = 0, element = 0;
    ValueTypeOf(bytes, key, &type, &element);
    EXPECT_EQ(type, kUint32) << key;
  }
  for (std::string_view key : {"llama.attention.layer_norm_rms_epsilon", "llama.rope.freq_base"}) {
    uint32_t type = 0, element = 0;
    ValueTypeOf(bytes, key, &type, &element);
    EXPECT_EQ(type, kFloat32) << key;
  }
}

TEST(ConvertModelTest, Q8_0BlocksFollowGgmlRounding) {
  ScratchDir dir;
  const std::string path = dir.File("q8.gguf");
  ASSERT_TRUE(ConvertModel(StoriesGguf(), path, DType::kQ8_0).ok());
  absl::StatusOr<std::unique_ptr<GgufFile>> q = GgufFile::Open(path);
  absl::StatusOr<std::unique_ptr<GgufFile>> f = GgufFile::Open(StoriesGguf());
  ASSERT_TRUE(q.ok() && f.ok());
  EXPECT_EQ((*q)->GetInt("general.file_type").value_or(-1), 7);  // LLAMA_FTYPE_MOSTLY_Q8_0

  for (const HostTensor& t : (*q)->tensors()) {
    if (t.shape.size() == 1) {
      EXPECT_EQ(t.dtype, DType::kF32) << t.name << ": norms stay f32";
    } else if (t.shape.back() % kQ8_0BlockSize != 0) {
      EXPECT_EQ(t.dtype, DType::kF16) << t.name << ": rows of " << t.shape.back();
    } else {
      EXPECT_EQ(t.dtype, DType::kQ8_0) << t.name;
    }
  }
  // stories260K's ffn_down rows have 172 elements: the f16 fallback is exercised.
  EXPECT_EQ((*q)->Find("blk.0.ffn_down.weight")->dtype, DType::kF16);

  const HostTensor* qt = (*q)->Find("blk.2.attn_q.weight");
  const HostTensor* ft = (*f)->Find("blk.2.attn_q.weight");
  ASSERT_TRUE(qt != nullptr && ft != nullptr);
  const auto* x = static_cast<const float*>(ft->data);
  const auto* blocks = static_cast<const uint8_t*>(qt->data);
  for (int64_t b = 0; b < ft->numel() / kQ8_0BlockSize; ++b) {
    const float* v = x + b * kQ8_0BlockSize;
    const uint8_t* block = blocks + b * kQ8_0BlockBytes;
    float amax = 0;
    for (int j = 0; j < kQ8_0BlockSize; ++j) amax = std::max(amax, std::fabs(v[j]));
    const float d = amax / 127.0f;
    ASSERT_EQ(block[0] | (block[1] << 8), F32ToF16(d)) << "block " << b;
    int max_code = 0;
    for (int j = 0; j < kQ8_0BlockSize; ++j) {
      const int code = static_cast<int8_t>(block[2 + j]);
      ASSERT_EQ(code, static_cast<int>(std::round(v[j] / d))) << "block " << b << " value " << j;
      max_code = std::max(max_code, std::abs(code));
    }
    EXPECT_EQ(max_code, 127) << "the largest value of a block maps to +-127";
  }
}

// A model on the CPU backend (which must outlive it).
struct LoadedModel {
  std::unique_ptr<Backend> backend;
  std::unique_ptr<Transformer> model;
};

LoadedModel LoadOnCpu(const std::string& path) {
  LoadedModel m;
  m.backend = MakeCpuBackend();
  absl::StatusOr<std::unique_ptr<Transformer>> model = Transformer::Load(path, m.backend.get());
  EXPECT_TRUE(model.ok()) << path << ": " << model.status();
  if (model.ok()) m.model = *std::move(model);
  return m;
}

// Logits for every position of `tokens` run as one sequence, [tokens.size(), vocab].
std::vector<float> AllLogits(Transformer& model, const std::vector<int32_t>& tokens) {
  absl::StatusOr<std::unique_ptr<KvCache>> cache = model.NewCache(64);
  EXPECT_TRUE(cache.ok());
  std::vector<float> logits;
  const SequenceStep step{cache->get(), tokens, /*all_logits=*/true};
  EXPECT_TRUE(model.Forward({&step, 1}, &logits).ok());
  return logits;
}

std::vector<int32_t> GreedyFromBos(Transformer& model, int n) {
  absl::StatusOr<std::unique_ptr<KvCache>> cache = model.NewCache(n + 1);
  EXPECT_TRUE(cache.ok());
  GenerateOptions options;
  options.max_tokens = n;
  options.stop_at_eos = false;
  const int32_t bos = model.config().bos_token_id;
  absl::StatusOr<std::vector<int32_t>> ids = Generate(model, **cache, {&bos, 1}, options);
  EXPECT_TRUE(ids.ok());
  return ids.value_or(std::vector<int32_t>{});
}

constexpr int kGreedyTokens = 40;

// The fixed 32-token input: BOS and the start of a story, as the model's own tokenizer splits it.
std::vector<int32_t> FixedInput() {
  absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer = LoadTokenizer(StoriesGguf());
  EXPECT_TRUE(tokenizer.ok());
  std::vector<int32_t> ids =
      (*tokenizer)
          ->Encode(
              "Once upon a time, there was a little girl named Lily. She loved to play outside in "
              "the "
              "park with her dog, Max. One day, they found a big red ball under a tree.",
              /*add_bos=*/true);
  EXPECT_GE(ids.size(), 32u);
  ids.resize(32);
  return ids;
}

struct ConversionCase {
  std::string name;
  bool from_gguf;
  bool to_gguf;
  DType dtype;
  // Largest allowed |logit - f32 logit| over the 32 x 512 logits, and the fewest leading greedy
  // tokens (of 40) that must equal the f32 model's; see kCases for the measurements.
  float logit_tolerance;
  int min_greedy_matches;
};

void PrintTo(const ConversionCase& c, std::ostream* os) { *os << c.name; }

class ConvertedModelTest : public ::testing::TestWithParam<ConversionCase> {};

TEST_P(ConvertedModelTest, MatchesTheF32Model) {
  const ConversionCase& c = GetParam();
  ScratchDir dir;
  const std::string source = c.from_gguf ? StoriesGguf() : StoriesHfDir();
  const std::string out = dir.File(c.to_gguf ? "model.gguf" : "model");
  ASSERT_TRUE(ConvertModel(source, out, c.dtype).ok());

  LoadedModel reference = LoadOnCpu(source);
  LoadedModel converted = LoadOnCpu(out);
  ASSERT_TRUE(reference.model != nullptr && converted.model != nullptr);

  const std::vector<int32_t> input = FixedInput();
  const std::vector<float> want = AllLogits(*reference.model, input);
  const std::vector<float> got = AllLogits(*converted.model, input);
  ASSERT_EQ(got.size(), want.size());
  ASSERT_EQ(want.size(), input.size() * 512);
  float max_diff = 0, max_abs = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    max_diff = std::max(max_diff, std::fabs(got[i] - want[i]));
    max_abs = std::max(max_abs, std::fabs(want[i]));
  }

  const std::vector<int32_t> want_ids = GreedyFromBos(*reference.model, kGreedyTokens);
  const std::vector<int32_t> got_ids = GreedyFromBos(*converted.model, kGreedyTokens);
  ASSERT_EQ(want_ids.size(), static_cast<size_t>(kGreedyTokens));
  ASSERT_EQ(got_ids.size(), want_ids.size());
  // Matching prefix: once one token differs the two continuations see different contexts.
  int matches = 0;
  while (matches < kGreedyTokens && got_ids[matches] == want_ids[matches]) ++matches;
  // The f32 model's margin on its own greedy path: logits predicting each greedy token.
  std::vector<int32_t> path = {reference.model->config().bos_token_id};
  path.insert(path.end(), want_ids.begin(), want_ids.end() - 1);
  const std::vector<float> path_logits = AllLogits(*reference.model, path);
  float min_gap = std::numeric_limits<float>::infinity();
  for (size_t p = 0; p < path.size(); ++p) {
    std::vector<float> row(path_logits.begin() + p * 512, path_logits.begin() + (p + 1) * 512);
    std::partial_sort(row.begin(), row.begin() + 2, row.end(), std::greater<float>());
    min_gap = std::min(min_gap, row[0] - row[1]);
  }

  RecordProperty("max_logit_diff", absl::StrCat(max_diff));
  RecordProperty("greedy_prefix_matches", matches);
  std::printf(
      "[ measured ] %s: max |logit diff| %.6g (largest |logit| %.3g), greedy %d/%d, "
      "min_gap %.4g\n",
      c.name.c_str(), max_diff, max_abs, matches, kGreedyTokens, min_gap);
  EXPECT_LE(max_diff, c.logit_tolerance);
  EXPECT_GE(matches, c.min_greedy_matches);
}

// Tolerances, from measurements on this model (logits up to ~22 in magnitude; max |diff| over
// the 32 x 512 logits, identical for all four format pairs to 4 digits):
//   f16   0.0113   bound 0.025: 2x headroom for BLAS / thread-count reordering elsewhere.
//   bf16  0.0884   bound 0.2:   bf16 keeps 3 fewer mantissa bits, so 8x the f16 error is expected
//                               (measured 7.8x); 2x headroom again.
//   q8_0  0.267    bound 0.5:   errors of up to max|block| / 254 per element, large relative to
//                               a block's small values; 2x headroom.
// Greedy decoding from BOS matched the f32 model for all 40 tokens in every case. A token flips
// only if two logits' errors together exceed the f32 model's top-1 / top-2 gap, whose smallest
// value on the greedy path is 0.133 (printed as min_gap). f16 errors (2 x 0.011 = 0.023) cannot
// do that, so f16 must match exactly; bf16 (0.18) and q8_0 (0.53) could, so they need only agree
// on the first half.
constexpr float kF16Tolerance = 0.025f;
constexpr float kBf16Tolerance = 0.2f;
constexpr float kQ8_0Tolerance = 0.5f;
constexpr int kLooseGreedyMatches = kGreedyTokens / 2;

const ConversionCase kCases[] = {
    {"gguf_to_gguf_f16", true, true, DType::kF16, kF16Tolerance, kGreedyTokens},
    {"gguf_to_gguf_bf16", true, true, DType::kBF16, kBf16Tolerance, kLooseGreedyMatches},
    {"gguf_to_gguf_q8_0", true, true, DType::kQ8_0, kQ8_0Tolerance, kLooseGreedyMatches},
    {"gguf_to_hf_f16", true, false, DType::kF16, kF16Tolerance, kGreedyTokens},
    {"gguf_to_hf_bf16", true, false, DType::kBF16, kBf16Tolerance, kLooseGreedyMatches},
    {"hf_to_gguf_f16", false, true, DType::kF16, kF16Tolerance, kGreedyTokens},
    {"hf_to_gguf_bf16", false, true, DType::kBF16, kBf16Tolerance, kLooseGreedyMatches},
    {"hf_to_gguf_q8_0", false, true, DType::kQ8_0, kQ8_0Tolerance, kLooseGreedyMatches},
    {"hf_to_hf_f16", false, false, DType::kF16, kF16Tolerance, kGreedyTokens},
    {"hf_to_hf_bf16", false, false, DType::kBF16, kBf16Tolerance, kLooseGreedyMatches},
};

INSTANTIATE_TEST_SUITE_P(Stories260K, ConvertedModelTest, ::testing::ValuesIn(kCases),
                         [](const ::testing::TestParamInfo<ConversionCase>& info) {
                           return info.param.name;
                         });

TEST(ConvertModelTest, TokenizerFollowsTheModel) {
  ScratchDir dir;
  ASSERT_TRUE(ConvertModel(StoriesGguf(), dir.File("gguf.gguf"), DType::kF16).ok());
  ASSERT_TRUE(ConvertModel(StoriesHfDir(), dir.File("hf.gguf"), DType::kQ8_0).ok());
  ASSERT_TRUE(ConvertModel(StoriesGguf(), dir.File("hf_from_gguf"), DType::kBF16).ok());
  ASSERT_TRUE(ConvertModel(StoriesHfDir(), dir.File("hf_from_hf"), DType::kF16).ok());

  // GGUF -> GGUF keeps every metadata key but the file type.
  absl::StatusOr<std::unique_ptr<GgufFile>> original = GgufFile::Open(StoriesGguf());
  absl::StatusOr<std::unique_ptr<GgufFile>> converted = GgufFile::Open(dir.File("gguf.gguf"));
  ASSERT_TRUE(original.ok() && converted.ok());
  Metadata expected = (*original)->metadata();
  expected["general.file_type"] = uint64_t{1};
  EXPECT_EQ((*converted)->metadata(), expected);

  const std::pair<std::string, std::string> pairs[] = {
      {StoriesGguf(), dir.File("gguf.gguf")},
      {StoriesHfDir(), dir.File("hf.gguf")},
      {StoriesGguf(), dir.File("hf_from_gguf")},
      {StoriesHfDir(), dir.File("hf_from_hf")},
  };
  const std::string texts[] = {
      "Once upon a time, there was a little girl named Lily.",
      "Hello world",
      "  two  spaces, tabs\tand\nnewlines ",
      "Unicode: \xc3\xbc\xc3\xb1\xc3\xaf \xe2\x98\x83 and 12345",
      "",
  };
  for (const auto& [from, to] : pairs) {
    absl::StatusOr<std::unique_ptr<Tokenizer>> want = LoadTokenizer(from);
    absl::StatusOr<std::unique_ptr<Tokenizer>> got = LoadTokenizer(to);
    ASSERT_TRUE(want.ok()) << want.status();
    ASSERT_TRUE(got.ok()) << to << ": " << got.status();
    EXPECT_EQ((*got)->vocab_size(), (*want)->vocab_size());
    EXPECT_EQ((*got)->bos_id(), (*want)->bos_id());
    EXPECT_EQ((*got)->eos_id(), (*want)->eos_id());
    for (const std::string& text : texts) {
      const std::vector<int32_t> ids = (*want)->Encode(text, true);
      EXPECT_EQ((*got)->Encode(text, true), ids) << to << ": \"" << text << "\"";
      EXPECT_EQ((*got)->Decode(ids), (*want)->Decode(ids)) << to;
    }
  }
}

TEST(ConvertModelTest, WithoutATokenizerTheGgufSaysNoVocab) {
  ScratchDir dir;
  const std::string hf = dir.File("hf");
  std::filesystem::create_directories(hf);
  std::filesystem::copy_file(StoriesHfDir() + "/config.json", hf + "/config.json");
  std::filesystem::copy_file(StoriesHfDir() + "/model.safetensors", hf + "/model.safetensors");
  ASSERT_TRUE(ConvertModel(hf, dir.File("m.gguf"), DType::kF32).ok());
  absl::StatusOr<std::unique_ptr<GgufFile>> g = GgufFile::Open(dir.File("m.gguf"));
  ASSERT_TRUE(g.ok());
  // llama.cpp's convention for a model without a vocabulary: it then sizes one from vocab_size.
  EXPECT_EQ((*g)->GetString("tokenizer.ggml.model").value_or(""), "no_vocab");
  EXPECT_EQ((*g)->GetInt("llama.vocab_size").value_or(0), 512);
  EXPECT_FALSE(LoadTokenizer(dir.File("m.gguf")).ok());
  LoadedModel m = LoadOnCpu(dir.File("m.gguf"));
  ASSERT_NE(m.model, nullptr);
  EXPECT_EQ(m.model->config().vocab_size, 512);
}

TEST(ConvertModelTest, RefusesWhatTheTargetCannotHold) {
  ScratchDir dir;
  absl::Status s = ConvertModel(StoriesGguf(), dir.File("hf"), DType::kQ8_0);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("no q8_0"));
  s = ConvertModel(StoriesGguf(), dir.File("x.gguf"), DType::kI32);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  s = ConvertModel(dir.File("missing.gguf"), dir.File("y.gguf"), DType::kF16);
  EXPECT_FALSE(s.ok());
  EXPECT_FALSE(std::filesystem::exists(dir.File("y.gguf")));
}

}  // namespace
}  // namespace knowd
