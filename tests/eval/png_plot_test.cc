// The PNG writer and the line plot: the bytes must be a valid PNG that decompresses to the
// declared image.
#include "bench/png_plot.h"

#include <zlib.h>

#include <cstdint>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace knowd::bench {
namespace {

uint32_t BigEndian(const std::string& s, size_t at) {
  return (uint32_t{static_cast<uint8_t>(s[at])} << 24) |
         (uint32_t{static_cast<uint8_t>(s[at + 1])} << 16) |
         (uint32_t{static_cast<uint8_t>(s[at + 2])} << 8) |
         uint32_t{static_cast<uint8_t>(s[at + 3])};
}

struct Chunk {
  std::string type;
  std::string data;
  bool crc_ok = false;
};

std::vector<Chunk> Chunks(const std::string& png) {
  std::vector<Chunk> out;
  size_t at = 8;
  while (at + 12 <= png.size()) {
    const uint32_t length = BigEndian(png, at);
    if (at + 12 + length > png.size()) break;
    Chunk c;
    c.type = png.substr(at + 4, 4);
    c.data = png.substr(at + 8, length);
    const uLong crc = crc32(0L, reinterpret_cast<const Bytef*>(png.data() + at + 4), length + 4);
    c.crc_ok = crc == BigEndian(png, at + 8 + length);
    out.push_back(c);
    at += 12 + length;
  }
  return out;
}

std::string Inflate(const std::string& packed, size_t expected) {
  std::string raw(expected + 16, '\0');
  uLongf size = raw.size();
  if (uncompress(reinterpret_cast<Bytef*>(raw.data()), &size,
                 reinterpret_cast<const Bytef*>(packed.data()), packed.size()) != Z_OK) {
    return "";
  }
  raw.resize(size);
  return raw;
}

TEST(EncodePng, WritesSignatureHeaderAndPixels) {
  const std::vector<uint8_t> rgb = {255, 0, 0, 0, 255, 0, 0, 0, 255,  // row 0
                                    1,   2, 3, 4, 5,   6, 7, 8, 9};   // row 1
  absl::StatusOr<std::string> png = EncodePng(3, 2, rgb);
  ASSERT_TRUE(png.ok()) << png.status();
  ASSERT_GT(png->size(), 8u);
  EXPECT_EQ(png->substr(0, 8), std::string("\x89PNG\r\n\x1a\n", 8));
  const std::vector<Chunk> chunks = Chunks(*png);
  ASSERT_EQ(chunks.size(), 3u);
  EXPECT_EQ(chunks[0].type, "IHDR");
  ASSERT_EQ(chunks[0].data.size(), 13u);
  EXPECT_EQ(BigEndian(chunks[0].data, 0), 3u);
  EXPECT_EQ(BigEndian(chunks[0].data, 4), 2u);
  EXPECT_EQ(chunks[0].data[8], 8);  // bit depth
  EXPECT_EQ(chunks[0].data[9], 2);  // RGB
  EXPECT_EQ(chunks[1].type, "IDAT");
  EXPECT_EQ(chunks[2].type, "IEND");
  EXPECT_TRUE(chunks[2].data.empty());
  for (const Chunk& c : chunks) EXPECT_TRUE(c.crc_ok) << c.type;

  const std::string raw = Inflate(chunks[1].data, 2 * (1 + 9));
  ASSERT_EQ(raw.size(), 2u * (1 + 9));
  EXPECT_EQ(raw[0], 0);  // filter type of row 0
  EXPECT_EQ(raw[10], 0);
  EXPECT_EQ(std::string(raw.data() + 1, 9), std::string(rgb.begin(), rgb.begin() + 9));
  EXPECT_EQ(std::string(raw.data() + 11, 9), std::string(rgb.begin() + 9, rgb.end()));
}

TEST(EncodePng, RefusesMismatchedSizes) {
  const std::vector<uint8_t> rgb(10, 0);
  EXPECT_EQ(EncodePng(2, 2, rgb).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(EncodePng(0, 2, {}).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(Canvas, DrawsLinesAndTextInsideAndClipsOutside) {
  Canvas canvas(20, 10, {255, 255, 255});
  canvas.Line(-5, 2, 30, 2, {10, 20, 30});
  EXPECT_EQ(canvas.At(0, 2), (Rgb{10, 20, 30}));
  EXPECT_EQ(canvas.At(19, 2), (Rgb{10, 20, 30}));
  EXPECT_EQ(canvas.At(0, 3), (Rgb{255, 255, 255}));
  canvas.Text(0, 3, "1", {0, 0, 0});
  // '1' has its stem in column 2 of every glyph row from the second on.
  EXPECT_EQ(canvas.At(2, 3 + 3), (Rgb{0, 0, 0}));
  EXPECT_EQ(canvas.At(0, 3 + 3), (Rgb{255, 255, 255}));
}

TEST(RenderLinePlot, ProducesAnImageOfTheRequestedSizeWithTheSeriesColours) {
  PlotSeries s;
  s.label = "rag-top1";
  s.color = {214, 39, 40};
  s.x = {100, 250, 500, 1132};
  s.y = {0.9, 0.85, 0.8, 0.78};
  LinePlot plot;
  plot.width = 400;
  plot.height = 300;
  plot.title = "EM vs stored passages";
  absl::StatusOr<std::string> png = RenderLinePlot(plot, {&s, 1});
  ASSERT_TRUE(png.ok()) << png.status();
  const std::vector<Chunk> chunks = Chunks(*png);
  ASSERT_EQ(chunks.size(), 3u);
  EXPECT_EQ(BigEndian(chunks[0].data, 0), 400u);
  EXPECT_EQ(BigEndian(chunks[0].data, 4), 300u);
  const std::string raw = Inflate(chunks[1].data, 300 * (1 + 400 * 3));
  ASSERT_EQ(raw.size(), 300u * (1 + 400 * 3));
  int coloured = 0;
  for (size_t row = 0; row < 300; ++row) {
    for (size_t x = 0; x < 400; ++x) {
      const size_t i = row * (1 + 400 * 3) + 1 + x * 3;
      coloured += static_cast<uint8_t>(raw[i]) == 214 && static_cast<uint8_t>(raw[i + 1]) == 39 &&
                  static_cast<uint8_t>(raw[i + 2]) == 40;
    }
  }
  EXPECT_GT(coloured, 100);  // the line, four markers and the legend swatch
}

TEST(RenderLinePlot, RefusesSeriesOfUnequalLengths) {
  PlotSeries s;
  s.x = {1, 2};
  s.y = {0.5};
  EXPECT_EQ(RenderLinePlot(LinePlot{}, {&s, 1}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace knowd::bench
