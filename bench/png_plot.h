// Small raster plots written as PNG files, for reports (knowd eval draws EM against the number of
// stored passages). Self-contained: an RGB canvas with lines, rectangles and a built-in 5x7 bitmap
// font, and a PNG encoder on zlib. Not a general plotting library: one kind of plot (lines with
// point markers over a linear x axis and a fixed y range), deterministic to the byte.
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace knowd::bench {

using Rgb = std::array<uint8_t, 3>;

// A width × height RGB image, row-major, 3 bytes per pixel. Drawing outside the image is clipped.
class Canvas {
 public:
  Canvas(int width, int height, Rgb background);

  int width() const { return width_; }
  int height() const { return height_; }
  const std::vector<uint8_t>& pixels() const { return pixels_; }
  Rgb At(int x, int y) const;

  void Set(int x, int y, Rgb color);
  void FillRect(int x0, int y0, int x1, int y1, Rgb color);  // inclusive corners
  // A straight line `thickness` pixels wide (Bresenham, thickened by a square pen).
  void Line(int x0, int y0, int x1, int y1, Rgb color, int thickness = 1);
  // Text in the built-in 5x7 font, each glyph cell 6×8 pixels times `scale`, top-left at (x, y).
  // Lower-case letters draw as capitals; characters without a glyph draw as '?'.
  void Text(int x, int y, std::string_view text, Rgb color, int scale = 1);
  static int TextWidth(std::string_view text, int scale = 1) {
    return static_cast<int>(text.size()) * 6 * scale;
  }

 private:
  int width_;
  int height_;
  std::vector<uint8_t> pixels_;
};

// Encodes 8-bit RGB pixels (width × height × 3 bytes, row-major) as a PNG file: IHDR (colour type
// 2, no interlace), one IDAT (zlib, filter type 0 on every row), IEND. INVALID_ARGUMENT when the
// sizes disagree or are not positive; INTERNAL if zlib fails.
absl::StatusOr<std::string> EncodePng(int width, int height, std::span<const uint8_t> rgb);

struct PlotSeries {
  std::string label;
  Rgb color{0, 0, 0};
  std::vector<double> x;  // same length as y; points are joined in the given order
  std::vector<double> y;
};

struct LinePlot {
  int width = 720;
  int height = 420;
  std::string title;
  std::string x_label;
  std::string y_label;
  double y_min = 0.0;  // y axis range; values outside are clamped to the frame
  double y_max = 1.0;
};

// Draws the series (axes with labelled ticks, lines, point markers, a legend on the right) and
// returns the PNG bytes. The x axis runs from 0 to the largest x of any series, ticks at round
// numbers. INVALID_ARGUMENT for a series whose x and y lengths differ, or a plot too small to draw.
absl::StatusOr<std::string> RenderLinePlot(const LinePlot& plot,
                                           std::span<const PlotSeries> series);

}  // namespace knowd::bench
