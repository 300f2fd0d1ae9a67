// The latent quantizers against the error bounds memory_bank.h states, including edge values.
#include "storage/latent_codec.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>

namespace knowd::storage {
namespace {

TEST(LatentCodecTest, HalfConversionIsExactWhereHalfIsExact) {
  for (float x : {0.0f, -0.0f, 1.0f, -2.5f, 65504.0f, -65504.0f, 0x1p-14f, 0x1p-24f, 1000.5f}) {
    EXPECT_EQ(HalfToFloat(FloatToHalf(x)), x) << x;
  }
  EXPECT_EQ(FloatToHalf(1.0f), 0x3c00);
  EXPECT_EQ(FloatToHalf(-2.0f), 0xc000);
  EXPECT_EQ(FloatToHalf(65520.0f), 0x7c00);  // rounds to infinity
  // Round to nearest even: 1 + 2^-11 is halfway between 1 and 1 + 2^-10.
  EXPECT_EQ(FloatToHalf(1.0f + 0x1p-11f), 0x3c00);
  EXPECT_EQ(FloatToHalf(1.0f + 3 * 0x1p-11f), 0x3c02);
}

TEST(LatentCodecTest, RoundTripsStayWithinTheStatedBounds) {
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  const int rows = 16, cols = 64;
  std::vector<float> x(rows * cols);
  for (float& v : x) v = normal(rng) * std::exp2(static_cast<float>(rng() % 20) - 10.0f);
  for (LatentFormat format : {LatentFormat::kFp16, LatentFormat::kInt8}) {
    ASSERT_TRUE(CheckLatentsEncodable(x, format).ok());
    const std::string bytes = EncodeLatents(x, rows, cols, format);
    EXPECT_EQ(bytes.size(),
              9u + (format == LatentFormat::kFp16 ? 2u * rows * cols : rows * cols + 4u * rows));
    auto y = DecodeLatents(bytes, rows, cols);
    ASSERT_TRUE(y.ok()) << y.status();
    double max_rel = 0;
    for (int r = 0; r < rows; ++r) {
      float row_max = 0;
      for (int c = 0; c < cols; ++c) row_max = std::max(row_max, std::fabs(x[r * cols + c]));
      for (int c = 0; c < cols; ++c) {
        const float a = x[r * cols + c], b = (*y)[r * cols + c];
        const float bound = format == LatentFormat::kFp16 ? std::fabs(a) * 0x1p-11f + 0x1p-25f
                                                          : row_max / 254.0f * (1 + 1e-6f);
        ASSERT_LE(std::fabs(a - b), bound) << static_cast<int>(format) << " r" << r << " c" << c;
        max_rel = std::max(max_rel, static_cast<double>(std::fabs(a - b) / row_max));
      }
    }
    std::printf("format %d: max error / row max = %.2e\n", static_cast<int>(format), max_rel);
  }
}

TEST(LatentCodecTest, MalformedRecordsAreDataLoss) {
  std::vector<float> x(8, 1.0f);
  std::string bytes = EncodeLatents(x, 2, 4, LatentFormat::kInt8);
  EXPECT_EQ(DecodeLatents(bytes, 4, 2).status().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(DecodeLatents(bytes.substr(0, bytes.size() - 1), 2, 4).status().code(),
            absl::StatusCode::kDataLoss);
  bytes[0] = 9;
  EXPECT_EQ(DecodeLatents(bytes, 2, 4).status().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(CheckLatentsEncodable(std::vector<float>{70000.0f}, LatentFormat::kFp16).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(CheckLatentsEncodable(std::vector<float>{70000.0f}, LatentFormat::kInt8).ok());
}

}  // namespace
}  // namespace knowd::storage
