// QuantizeRow against kernels/math.h's dequantizers (the ground truth for the block layouts): each
// element's error within a bound derived from its format, requantization, and ConvertModel's
// quantized outputs (the type of every tensor, including q4_K_M's mixture and the fallbacks).
#include "model/quantize.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <set>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/math.h"
#include "model/convert.h"
#include "model/tensor_file.h"
#include "tests/model/formats_test_util.h"

namespace knowd {
namespace {

using ::knowd::testing::ScratchDir;
using ::knowd::testing::StoriesGguf;
using ::testing::HasSubstr;

constexpr DType kQuantTypes[] = {DType::kQ8_0, DType::kQ4_0, DType::kQ4_K, DType::kQ6_K};
constexpr int64_t kRow = 4 * kQKBlockSize;  // whole blocks of every type
// f16 rounds to nearest with 11 significant bits: a normal value moves by at most 2^-11 of itself
// when stored; rounding up to the next f16 (the k-quant scales) by at most 2^-10.
constexpr float kF16Half = 1.0f / 2048.0f, kF16Up = 1.0f / 1024.0f;

std::vector<uint8_t> Quantize(const std::vector<float>& x, DType dtype) {
  std::vector<uint8_t> out(DTypeBytes(dtype, static_cast<int64_t>(x.size())), 0xAA);
  QuantizeRow(x, dtype, out.data());
  return out;
}

std::vector<float> Dequantize(const std::vector<uint8_t>& bytes, DType dtype, int64_t n) {
  const int64_t block = DTypeBlockSize(dtype), block_bytes = DTypeBytes(dtype, block);
  std::vector<float> out(n);
  for (int64_t b = 0; b < n / block; ++b) {
    DequantBlock(bytes.data() + b * block_bytes, dtype, out.data() + b * block);
  }
  return out;
}

float MaxAbs(const float* x, int64_t n) {
  float m = 0.0f;
  for (int64_t i = 0; i < n; ++i) m = std::max(m, std::fabs(x[i]));
  return m;
}

// The largest error the format allows element i of `x` (whole blocks of `dtype`), from the block
// and sub-block it lies in. Each bound adds 1e-5 of the block's largest magnitude for f32
// rounding in the arithmetic.
float ErrorBound(const std::vector<float>& x, DType dtype, int64_t i) {
  const int64_t block = DTypeBlockSize(dtype);
  const float* v = x.data() + i / block * block;
  const int j = static_cast<int>(i % block);
  const float amax = MaxAbs(v, block);
  const float eps = 1e-5f * amax;
  switch (dtype) {
    case DType::kQ8_0: {
      // q = round(x / d) with d = amax / 127 is within d/2 of x / d; decoding with the stored f16
      // d moves each of the <= 127 steps by at most 2^-11·d.
      const float d = amax / 127.0f;
      return d * (0.5f + 127.0f * kF16Half) + eps;
    }
    case DType::kQ4_0: {
      // d = max / -8 maps the block onto t = x / d in [-8, 8]; codes floor(t + 8.5) - 8 are
      // within 1/2 of t, except that t in (7.5, 8] (values near -max) clamps to 7, within 1.
      // The stored f16 d adds at most 8 steps of 2^-11·|d|.
      float signed_max = 0.0f;
      for (int64_t k = 0; k < block; ++k) {
        if (std::fabs(v[k]) > std::fabs(signed_max)) signed_max = v[k];
      }
      const float d = signed_max / -8.0f;
      const float t = d != 0.0f ? v[j] / d : 0.0f;
      return std::fabs(d) * ((t > 7.5f ? 1.0f : 0.5f) + 8.0f * kF16Half) + eps;
    }
    case DType::kQ4_K: {
      // Sub-block s (32 values) has the grid -dmin·m_s + d·sc_s·q, q = 0..15, covering
      // [min(0, min x_s), max x_s]: each value is within half a step d·sc_s of a grid point.
      // The offset dmin·m_s is rounded up onto the 6-bit grid of dmin (< one dmin more than
      // needed), so the step must reach r_s + dmin in 15 steps (r_s = max x_s - min(0, min x_s));
      // sc_s is rounded up too (< one d more). With dmin = max_s(-min(0, min x_s)) / 63 and
      // d = max_s((r_s + dmin) / 15) / 63, each rounded up to f16:
      //   |err| <= ((r_s + dmin) / 15 + d) / 2.
      float r = 0.0f, r_max = 0.0f, offset_max = 0.0f;
      for (int s = 0; s < 8; ++s) {
        float lo = 0.0f, hi = -INFINITY;
        for (int l = 0; l < 32; ++l) {
          lo = std::min(lo, v[32 * s + l]);
          hi = std::max(hi, v[32 * s + l]);
        }
        if (s == j / 32) r = hi - lo;
        r_max = std::max(r_max, hi - lo);
        offset_max = std::max(offset_max, -lo);
      }
      const float dmin = offset_max / 63.0f * (1.0f + kF16Up);
      const float d = (r_max + dmin) / 15.0f / 63.0f * (1.0f + kF16Up);
      return ((r + dmin) / 15.0f + d) / 2.0f + eps;
    }
    case DType::kQ6_K: {
      // Sub-block s (16 values) has the grid d·sc_s·(q - 32), q = 0..63, with a step of at least
      // max|x_s| / 31.5 so every value rounds into -32..31: within half a step. sc_s is rounded
      // up onto d's grid (< one d more), d = max_s(max|x_s| / 31.5) / 127 rounded up to f16:
      //   |err| <= (max|x_s| / 31.5 + d) / 2.
      const float a = MaxAbs(v + j / 16 * 16, 16);
      const float d = amax / 31.5f / 127.0f * (1.0f + kF16Up);
      return (a / 31.5f + d) / 2.0f + eps;
    }
    default:
      return 0.0f;
  }
}

struct NamedRow {
  std::string name;
  std::vector<float> x;
};

std::vector<float> Gaussian(uint32_t seed, float sigma) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, sigma);
  std::vector<float> x(kRow);
  for (float& v : x) v = normal(rng);
  return x;
}

std::vector<NamedRow> TestRows() {
  std::vector<NamedRow> rows;
  for (uint32_t seed = 1; seed <= 4; ++seed) {
    rows.push_back({absl::StrCat("gaussian", seed), Gaussian(seed, 0.02f * seed)});
  }
  rows.push_back({"zeros", std::vector<float>(kRow, 0.0f)});
  std::vector<float> outlier = Gaussian(7, 0.05f);
  outlier[300] = 1000.0f;  // one sub-block of q4_K / q6_K, one block of q8_0 / q4_0
  rows.push_back({"outlier", outlier});
  std::vector<float> negative_outlier = Gaussian(8, 0.05f);
  negative_outlier[17] = -2000.0f;
  rows.push_back({"negative_outlier", negative_outlier});
  rows.push_back({"constant", std::vector<float>(kRow, 0.75f)});
  rows.push_back({"negative_constant", std::vector<float>(kRow, -3.25f)});
  std::vector<float> negative = Gaussian(9, 1.0f);
  for (float& v : negative) v = -std::fabs(v) - 0.1f;
  rows.push_back({"negative_only", negative});
  std::vector<float> positive = Gaussian(10, 1.0f);
  for (float& v : positive) v = std::fabs(v) + 0.5f;
  rows.push_back({"positive_only", positive});
  // Sub-blocks of very different magnitudes exercise the small 6-bit and int8 scales.
  std::vector<float> mixed = Gaussian(11, 1.0f);
  for (int64_t i = 0; i < kRow; ++i)
    mixed[i] *= std::pow(10.0f, static_cast<float>(i / 16 % 4) - 2);
  rows.push_back({"mixed_scales", mixed});
  return rows;
}

float MaxError(const std::vector<float>& a, const std::vector<float>& b) {
  float m = 0.0f;
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, std::fabs(a[i] - b[i]));
  return m;
}

TEST(QuantizeRowTest, EveryElementIsWithinItsFormatsBound) {
  for (DType dtype : kQuantTypes) {
    float worst_ratio = 0.0f;
    for (const NamedRow& row : TestRows()) {
      const std::vector<float> y = Dequantize(Quantize(row.x, dtype), dtype, kRow);
      for (int64_t i = 0; i < kRow; ++i) {
        const float bound = ErrorBound(row.x, dtype, i);
        const float err = std::fabs(y[i] - row.x[i]);
        ASSERT_LE(err, bound) << DTypeName(dtype) << " " << row.name << " element " << i << ": "
                              << row.x[i] << " decoded as " << y[i];
        if (bound > 0.0f) worst_ratio = std::max(worst_ratio, err / bound);
      }
    }
    // The bounds are tight: some element comes close to its bound (a loose bound would hide
    // a quantizer that uses a coarser grid than it needs).
    EXPECT_GT(worst_ratio, 0.8f) << DTypeName(dtype);
    std::printf("%s: largest error / bound %.3f\n", std::string(DTypeName(dtype)).c_str(),
                worst_ratio);
  }
}

TEST(QuantizeRowTest, ExactRowsDecodeExactly) {
  for (DType dtype : kQuantTypes) {
    const std::vector<float> zeros(kRow, 0.0f);
    EXPECT_EQ(Dequantize(Quantize(zeros, dtype), dtype, kRow), zeros) << DTypeName(dtype);
  }
  // Values on the q8_0 / q4_0 grids with a power-of-two scale (exact in f16) come back exactly.
  std::vector<float> grid(kRow);
  for (int64_t i = 0; i < kRow; ++i) grid[i] = 0.25f * static_cast<float>(i % 15 - 7);
  for (int64_t b = 0; b < kRow / 32; ++b) grid[32 * b + 5] = -2.0f;  // max -2: d = 0.25 (q4_0)
  EXPECT_EQ(Dequantize(Quantize(grid, DType::kQ4_0), DType::kQ4_0, kRow), grid);
  for (int64_t b = 0; b < kRow / 32; ++b) grid[32 * b + 5] = 31.75f;  // d = 0.25 (q8_0)
  EXPECT_EQ(Dequantize(Quantize(grid, DType::kQ8_0), DType::kQ8_0, kRow), grid);
}

TEST(QuantizeRowTest, RoundingIsNotWorseThanTheStepSizesAllow) {
  // Root mean square errors over Gaussian rows of sigma 1. Rounding error spread evenly over a
  // step s has RMS s / sqrt(12); the steps are max|x| / 127 (q8_0) and max|x| / 8 (q4_0) over 32
  // values (expected max|x| 2.33 sigma), range / 15 over 32 values (q4_K: about 4.1 sigma) and
  // max|x| / 31.5 over 16 values (q6_K: 2.07 sigma). The limits allow 15% over these for the
  // clamped code of q4_0 and the rounded-up scales of the k-quants.
  const double k = 1.15 / std::sqrt(12.0);
  const std::map<DType, double> limit = {{DType::kQ8_0, k * 2.33 / 127},
                                         {DType::kQ4_0, k * 2.33 / 8},
                                         {DType::kQ4_K, k * 4.1 / 15},
                                         {DType::kQ6_K, k * 2.07 / 31.5}};
  for (DType dtype : kQuantTypes) {
    double sum = 0.0;
    int64_t n = 0;
    for (uint32_t seed = 20; seed < 28; ++seed) {
      const std::vector<float> x = Gaussian(seed, 1.0f);
      const std::vector<float> y = Dequantize(Quantize(x, dtype), dtype, kRow);
      for (int64_t i = 0; i < kRow; ++i, ++n) sum += (y[i] - x[i]) * (y[i] - x[i]);
    }
    const double rms = std::sqrt(sum / static_cast<double>(n));
    EXPECT_LT(rms, limit.at(dtype)) << DTypeName(dtype);
    std::printf("%s: RMS error %.4f sigma\n", std::string(DTypeName(dtype)).c_str(), rms);
  }
}

TEST(QuantizeRowTest, RequantizingIsStable) {
  for (const NamedRow& row : TestRows()) {
    for (DType dtype : {DType::kQ8_0, DType::kQ4_0}) {
      // The decoded block's largest value is max|q|·d with the stored d, which gives back d and
      // then the same codes.
      const std::vector<uint8_t> first = Quantize(row.x, dtype);
      const std::vector<uint8_t> second = Quantize(Dequantize(first, dtype, kRow), dtype);
      EXPECT_EQ(first, second) << DTypeName(dtype) << " " << row.name;
    }
    for (DType dtype : {DType::kQ4_K, DType::kQ6_K}) {
      // The grids are refitted to the decoded values, so the bytes may differ, but the decoded
      // values already lie on a grid no coarser than the one refitted to them. Up to the 1e-5 of
      // max|x| that the bounds above allow for rounding: a constant row is carried by the f16
      // offset alone, and its refit can land a hair either side of the first error.
      const std::vector<float> y = Dequantize(Quantize(row.x, dtype), dtype, kRow);
      const std::vector<float> z = Dequantize(Quantize(y, dtype), dtype, kRow);
      const float slack = 1e-5f * MaxAbs(row.x.data(), kRow);
      EXPECT_LE(MaxError(z, y), MaxError(y, row.x) + slack) << DTypeName(dtype) << " " << row.name;
    }
  }
}

TEST(QuantizeRowTest, OtherTypesWriteNothing) {
  const std::vector<float> x = Gaussian(3, 1.0f);
  std::vector<uint8_t> out(16, 0x5A);
  QuantizeRow(std::span<const float>(x.data(), 32), DType::kF16, out.data());
  EXPECT_EQ(out, std::vector<uint8_t>(16, 0x5A));
}

// ---- ConvertModel ------------------------------------------------------------------------

TEST(WeightPlanTest, ParsesLlamaCppNames) {
  for (DType dtype : {DType::kF32, DType::kF16, DType::kBF16, DType::kQ8_0, DType::kQ4_0,
                      DType::kQ4_K, DType::kQ6_K}) {
    std::optional<WeightPlan> plan = ParseWeightPlan(DTypeName(dtype));
    ASSERT_TRUE(plan.has_value()) << DTypeName(dtype);
    EXPECT_EQ(plan->dtype, dtype);
    EXPECT_EQ(plan->mix, WeightPlan::Mix::kUniform);
  }
  std::optional<WeightPlan> mix = ParseWeightPlan("q4_K_M");
  ASSERT_TRUE(mix.has_value());
  EXPECT_EQ(mix->mix, WeightPlan::Mix::kQ4_K_M);
  EXPECT_EQ(mix->dtype, DType::kQ4_K);
  EXPECT_FALSE(ParseWeightPlan("q4_k").has_value());
  EXPECT_FALSE(ParseWeightPlan("i32").has_value());
  EXPECT_FALSE(ParseWeightPlan("q5_K").has_value());
}

// The bytes QuantizeRow makes of `t` (read as f32) in `dtype`.
std::vector<uint8_t> Requantized(const HostTensor& t, DType dtype) {
  std::vector<float> x(t.numel());
  for (int64_t i = 0; i < t.numel(); ++i) x[i] = LoadAsF32(t.data, t.dtype, i);
  return Quantize(x, dtype);
}

std::vector<uint8_t> TensorBytes(const HostTensor& t) {
  const auto* p = static_cast<const uint8_t*>(t.data);
  return std::vector<uint8_t>(p, p + t.bytes);
}

TEST(ConvertModelQuantizedTest, StoriesTakesTheFallbackTypes) {
  // stories260K's rows have 64 values (ffn_down: 172): q4_0 fits the 64s; q4_K and q6_K do not
  // (256-blocks) and fall back to q8_0; 172 is not a multiple of 32 and falls back to f16.
  struct Case {
    WeightPlan plan;
    DType rows64;
    int64_t file_type;
  };
  const Case cases[] = {{WeightPlan::Uniform(DType::kQ4_0), DType::kQ4_0, 2},
                        {WeightPlan::Uniform(DType::kQ4_K), DType::kQ8_0, 14},
                        {WeightPlan::Uniform(DType::kQ6_K), DType::kQ8_0, 18},
                        {WeightPlan::Q4_K_M(), DType::kQ8_0, 15}};
  absl::StatusOr<std::unique_ptr<GgufFile>> source = GgufFile::Open(StoriesGguf());
  ASSERT_TRUE(source.ok()) << source.status();
  ScratchDir dir;
  for (const Case& c : cases) {
    const std::string path = dir.File(absl::StrCat("m", c.file_type, ".gguf"));
    absl::Status s = ConvertModel(StoriesGguf(), path, c.plan);
    ASSERT_TRUE(s.ok()) << s;
    absl::StatusOr<std::unique_ptr<GgufFile>> out = GgufFile::Open(path);
    ASSERT_TRUE(out.ok()) << out.status();
    EXPECT_EQ((*out)->GetInt("general.file_type").value_or(-1), c.file_type);
    EXPECT_EQ((*out)->GetInt("general.quantization_version").value_or(-1), 2);
    ASSERT_EQ((*out)->tensors().size(), (*source)->tensors().size());
    int matrices = 0;
    for (const HostTensor& t : (*out)->tensors()) {
      if (t.shape.size() == 1) {
        EXPECT_EQ(t.dtype, DType::kF32) << t.name;
        continue;
      }
      ++matrices;
      ASSERT_TRUE(t.shape[1] == 64 || t.shape[1] == 172) << t.name;
      EXPECT_EQ(t.dtype, t.shape[1] == 64 ? c.rows64 : DType::kF16) << t.name;
      if (DTypeIsQuantized(t.dtype)) {
        // The bytes are QuantizeRow's of the source values.
        EXPECT_EQ(TensorBytes(t), Requantized(*(*source)->Find(t.name), t.dtype)) << t.name;
      }
    }
    EXPECT_GT(matrices, 0);
  }
}

// A random "llama" GGUF of 8 layers whose matrices all have rows of 256 (f32); without
// output.weight when `tied`.
void WriteRandomModel(const std::string& path, bool tied) {
  constexpr int64_t kDim = 256, kVocab = 32;
  std::map<std::string, GgufValue, std::less<>> metadata = {
      {"general.architecture", std::string("llama")},
      {"llama.embedding_length", uint64_t{kDim}},
      {"llama.block_count", uint64_t{8}},
      {"llama.attention.head_count", uint64_t{4}},
      {"llama.feed_forward_length", uint64_t{kDim}},
      {"llama.context_length", uint64_t{64}},
      {"llama.vocab_size", uint64_t{kVocab}}};
  std::vector<std::pair<std::string, std::vector<int64_t>>> shapes = {
      {"token_embd.weight", {kVocab, kDim}}, {"output_norm.weight", {kDim}}};
  if (!tied) shapes.push_back({"output.weight", {kVocab, kDim}});
  for (int i = 0; i < 8; ++i) {
    for (const char* m :
         {"attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"}) {
      shapes.push_back({absl::StrCat("blk.", i, ".", m, ".weight"), {kDim, kDim}});
    }
    shapes.push_back({absl::StrCat("blk.", i, ".attn_norm.weight"), {kDim}});
    shapes.push_back({absl::StrCat("blk.", i, ".ffn_norm.weight"), {kDim}});
  }
  std::mt19937 rng(42);
  std::normal_distribution<float> normal(0.0f, 0.05f);
  std::vector<std::vector<float>> data;
  std::vector<HostTensor> tensors;
  for (const auto& [name, shape] : shapes) {
    std::vector<float>& v = data.emplace_back(shape.size() == 2 ? shape[0] * shape[1] : shape[0]);
    for (float& f : v) f = normal(rng);
  }
  for (size_t i = 0; i < shapes.size(); ++i) {
    HostTensor& t = tensors.emplace_back();
    t.name = shapes[i].first;
    t.dtype = DType::kF32;
    t.shape = shapes[i].second;
    t.data = data[i].data();
    t.bytes = static_cast<int64_t>(data[i].size() * sizeof(float));
  }
  absl::Status s = WriteGguf(path, metadata, tensors);
  ASSERT_TRUE(s.ok()) << s;
}

TEST(ConvertModelQuantizedTest, Q4_K_MFollowsLlamaCppsTypePlan) {
  ScratchDir dir;
  for (bool tied : {false, true}) {
    const std::string in = dir.File(tied ? "tied.gguf" : "in.gguf");
    const std::string out = dir.File(tied ? "tied_q4_K_M.gguf" : "q4_K_M.gguf");
    WriteRandomModel(in, tied);
    absl::Status s = ConvertModel(in, out, WeightPlan::Q4_K_M());
    ASSERT_TRUE(s.ok()) << s;
    absl::StatusOr<std::unique_ptr<GgufFile>> source = GgufFile::Open(in);
    absl::StatusOr<std::unique_ptr<GgufFile>> q = GgufFile::Open(out);
    ASSERT_TRUE(source.ok() && q.ok());
    EXPECT_EQ((*q)->GetInt("general.file_type").value_or(-1), 15);  // LLAMA_FTYPE_MOSTLY_Q4_K_M
    EXPECT_EQ((*q)->GetInt("general.quantization_version").value_or(-1), 2);

    // use_more_bits(i, 8): i < 1, i >= 7, or (i - 1) % 3 == 2.
    const std::set<int> more_bits = {0, 3, 6, 7};
    std::map<DType, int> counts;
    for (const HostTensor& t : (*q)->tensors()) {
      DType want = DType::kQ4_K;
      if (t.shape.size() == 1) {
        want = DType::kF32;
      } else if (t.name == "output.weight" || (tied && t.name == "token_embd.weight")) {
        want = DType::kQ6_K;
      } else if (t.name.ends_with(".attn_v.weight") || t.name.ends_with(".ffn_down.weight")) {
        const int layer = t.name[4] - '0';
        if (more_bits.contains(layer)) want = DType::kQ6_K;
      }
      EXPECT_EQ(t.dtype, want) << t.name;
      ++counts[t.dtype];
      if (DTypeIsQuantized(t.dtype)) {
        EXPECT_EQ(TensorBytes(t), Requantized(*(*source)->Find(t.name), t.dtype)) << t.name;
      }
    }
    // 8 attn_v + 8 ffn_down, 4 of each with more bits, and the output (or tied embedding).
    EXPECT_EQ(counts[DType::kQ6_K], 9) << (tied ? "tied" : "untied");
    EXPECT_EQ(counts[DType::kQ4_K], tied ? 48 : 49);  // the other 56 + 2 (or 1) matrices
  }
}

TEST(ConvertModelQuantizedTest, UniformK_QuantsOnRowsOf256) {
  ScratchDir dir;
  const std::string in = dir.File("in.gguf");
  WriteRandomModel(in, /*tied=*/false);
  for (DType dtype : {DType::kQ4_K, DType::kQ6_K, DType::kQ4_0}) {
    const std::string out = dir.File(std::string(DTypeName(dtype)) + ".gguf");
    ASSERT_TRUE(ConvertModel(in, out, dtype).ok());
    absl::StatusOr<std::unique_ptr<GgufFile>> q = GgufFile::Open(out);
    ASSERT_TRUE(q.ok());
    for (const HostTensor& t : (*q)->tensors()) {
      EXPECT_EQ(t.dtype, t.shape.size() == 2 ? dtype : DType::kF32) << t.name;
    }
  }
}

TEST(ConvertModelQuantizedTest, SafetensorsRefusesQuantizedTypes) {
  ScratchDir dir;
  for (const char* name : {"q4_0", "q4_K", "q6_K", "q4_K_M"}) {
    absl::Status s = ConvertModel(StoriesGguf(), dir.File(name), *ParseWeightPlan(name));
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << name;
    EXPECT_THAT(std::string(s.message()), HasSubstr(absl::StrCat("safetensors has no ", name)));
    EXPECT_FALSE(std::filesystem::exists(dir.File(name) + "/model.safetensors")) << name;
  }
  // A mixture is q4_K-based; any other base type is refused.
  absl::Status s = ConvertModel(StoriesGguf(), dir.File("x.gguf"),
                                WeightPlan{DType::kQ8_0, WeightPlan::Mix::kQ4_K_M});
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(std::filesystem::exists(dir.File("x.gguf")));
}

}  // namespace
}  // namespace knowd
