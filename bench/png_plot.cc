#include "bench/png_plot.h"

#include <zlib.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "absl/strings/str_cat.h"

namespace knowd::bench {
namespace {

// 5x7 glyphs, one byte per row (top first), bit 4 = leftmost column.
struct Glyph {
  char c;
  uint8_t rows[7];
};
constexpr Glyph kFont[] = {
    {' ', {0, 0, 0, 0, 0, 0, 0}},
    {'0', {0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E}},
    {'1', {0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E}},
    {'2', {0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F}},
    {'3', {0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E}},
    {'4', {0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02}},
    {'5', {0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E}},
    {'6', {0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E}},
    {'7', {0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08}},
    {'8', {0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E}},
    {'9', {0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C}},
    {'A', {0x0E, 0x11, 0x11, 0x11, 0x1F, 0x11, 0x11}},
    {'B', {0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E}},
    {'C', {0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E}},
    {'D', {0x1C, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1C}},
    {'E', {0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F}},
    {'F', {0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10}},
    {'G', {0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F}},
    {'H', {0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11}},
    {'I', {0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E}},
    {'J', {0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C}},
    {'K', {0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11}},
    {'L', {0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F}},
    {'M', {0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11}},
    {'N', {0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11}},
    {'O', {0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E}},
    {'P', {0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10}},
    {'Q', {0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D}},
    {'R', {0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11}},
    {'S', {0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E}},
    {'T', {0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04}},
    {'U', {0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E}},
    {'V', {0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04}},
    {'W', {0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A}},
    {'X', {0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11}},
    {'Y', {0x11, 0x11, 0x11, 0x0A, 0x04, 0x04, 0x04}},
    {'Z', {0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F}},
    {'.', {0, 0, 0, 0, 0, 0x0C, 0x0C}},
    {',', {0, 0, 0, 0, 0x0C, 0x04, 0x08}},
    {'-', {0, 0, 0, 0x1F, 0, 0, 0}},
    {'+', {0, 0x04, 0x04, 0x1F, 0x04, 0x04, 0}},
    {'/', {0, 0x01, 0x02, 0x04, 0x08, 0x10, 0}},
    {':', {0, 0x0C, 0x0C, 0, 0x0C, 0x0C, 0}},
    {'=', {0, 0, 0x1F, 0, 0x1F, 0, 0}},
    {'(', {0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02}},
    {')', {0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08}},
    {'%', {0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03}},
    {'@', {0x0E, 0x11, 0x01, 0x0D, 0x15, 0x15, 0x0E}},
    {'_', {0, 0, 0, 0, 0, 0, 0x1F}},
    {'?', {0x0E, 0x11, 0x01, 0x02, 0x04, 0, 0x04}},
};

const Glyph& GlyphOf(char c) {
  if (c >= 'a' && c <= 'z') c = static_cast<char>(c - 'a' + 'A');
  for (const Glyph& g : kFont) {
    if (g.c == c) return g;
  }
  return kFont[sizeof(kFont) / sizeof(kFont[0]) - 1];  // '?'
}

void AppendBigEndian(std::string* out, uint32_t v) {
  for (int shift = 24; shift >= 0; shift -= 8)
    out->push_back(static_cast<char>((v >> shift) & 0xFF));
}

// One PNG chunk: length, type, data, CRC-32 of type + data.
void AppendChunk(std::string* out, const char type[4], std::string_view data) {
  AppendBigEndian(out, static_cast<uint32_t>(data.size()));
  const size_t type_at = out->size();
  out->append(type, 4);
  out->append(data);
  const uLong crc = crc32(0L, reinterpret_cast<const Bytef*>(out->data() + type_at),
                          static_cast<uInt>(4 + data.size()));
  AppendBigEndian(out, static_cast<uint32_t>(crc));
}

// A tick step of 1, 2 or 5 times a power of ten giving about `target` intervals over `span`.
double NiceStep(double span, int target) {
  const double raw = span / std::max(1, target);
  const double power = std::pow(10.0, std::floor(std::log10(raw)));
  for (double m : {1.0, 2.0, 5.0, 10.0}) {
    if (m * power >= raw) return m * power;
  }
  return 10.0 * power;
}

std::string TickLabel(double v, double step) {
  char buf[32];
  if (step >= 1.0) {
    std::snprintf(buf, sizeof(buf), "%.0f", v);
  } else {
    const int digits = std::clamp(static_cast<int>(std::ceil(-std::log10(step) - 1e-9)), 1, 6);
    std::snprintf(buf, sizeof(buf), "%.*f", digits, v);
  }
  return buf;
}

}  // namespace

Canvas::Canvas(int width, int height, Rgb background)
    : width_(std::max(0, width)), height_(std::max(0, height)) {
  pixels_.resize(static_cast<size_t>(width_) * height_ * 3);
  for (size_t i = 0; i < pixels_.size(); i += 3) {
    pixels_[i] = background[0];
    pixels_[i + 1] = background[1];
    pixels_[i + 2] = background[2];
  }
}

Rgb Canvas::At(int x, int y) const {
  if (x < 0 || y < 0 || x >= width_ || y >= height_) return {0, 0, 0};
  const size_t i = (static_cast<size_t>(y) * width_ + x) * 3;
  return {pixels_[i], pixels_[i + 1], pixels_[i + 2]};
}

void Canvas::Set(int x, int y, Rgb color) {
  if (x < 0 || y < 0 || x >= width_ || y >= height_) return;
  const size_t i = (static_cast<size_t>(y) * width_ + x) * 3;
  pixels_[i] = color[0];
  pixels_[i + 1] = color[1];
  pixels_[i + 2] = color[2];
}

void Canvas::FillRect(int x0, int y0, int x1, int y1, Rgb color) {
  if (x0 > x1) std::swap(x0, x1);
  if (y0 > y1) std::swap(y0, y1);
  for (int y = std::max(0, y0); y <= std::min(height_ - 1, y1); ++y) {
    for (int x = std::max(0, x0); x <= std::min(width_ - 1, x1); ++x) Set(x, y, color);
  }
}

void Canvas::Line(int x0, int y0, int x1, int y1, Rgb color, int thickness) {
  const int lo = -(thickness - 1) / 2;
  const int hi = thickness / 2;
  const int dx = std::abs(x1 - x0), sx = x0 < x1 ? 1 : -1;
  const int dy = -std::abs(y1 - y0), sy = y0 < y1 ? 1 : -1;
  int err = dx + dy;
  while (true) {
    FillRect(x0 + lo, y0 + lo, x0 + hi, y0 + hi, color);
    if (x0 == x1 && y0 == y1) break;
    const int e2 = 2 * err;
    if (e2 >= dy) {
      err += dy;
      x0 += sx;
    }
    if (e2 <= dx) {
      err += dx;
      y0 += sy;
    }
  }
}

void Canvas::Text(int x, int y, std::string_view text, Rgb color, int scale) {
  for (char c : text) {
    const Glyph& g = GlyphOf(c);
    for (int row = 0; row < 7; ++row) {
      for (int col = 0; col < 5; ++col) {
        if (g.rows[row] & (0x10 >> col)) {
          FillRect(x + col * scale, y + row * scale, x + (col + 1) * scale - 1,
                   y + (row + 1) * scale - 1, color);
        }
      }
    }
    x += 6 * scale;
  }
}

absl::StatusOr<std::string> EncodePng(int width, int height, std::span<const uint8_t> rgb) {
  if (width <= 0 || height <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("PNG size must be positive, got ", width, "x", height));
  }
  const size_t row_bytes = static_cast<size_t>(width) * 3;
  if (rgb.size() != row_bytes * height) {
    return absl::InvalidArgumentError(absl::StrCat("PNG of ", width, "x", height, " needs ",
                                                   row_bytes * height, " RGB bytes, got ",
                                                   rgb.size()));
  }
  // Filter type 0 (none) on every row: the plots are mostly flat colour, which deflate handles
  // well without predictors.
  std::string raw;
  raw.reserve((row_bytes + 1) * height);
  for (int y = 0; y < height; ++y) {
    raw.push_back('\0');
    raw.append(reinterpret_cast<const char*>(rgb.data()) + y * row_bytes, row_bytes);
  }
  uLongf packed_size = compressBound(static_cast<uLong>(raw.size()));
  std::string packed(packed_size, '\0');
  const int rc = compress2(reinterpret_cast<Bytef*>(packed.data()), &packed_size,
                           reinterpret_cast<const Bytef*>(raw.data()),
                           static_cast<uLong>(raw.size()), Z_BEST_COMPRESSION);
  if (rc != Z_OK) return absl::InternalError(absl::StrCat("zlib compress2 failed: ", rc));
  packed.resize(packed_size);

  std::string png("\x89PNG\r\n\x1a\n", 8);
  std::string ihdr;
  AppendBigEndian(&ihdr, static_cast<uint32_t>(width));
  AppendBigEndian(&ihdr, static_cast<uint32_t>(height));
  ihdr.push_back(8);  // bit depth
  ihdr.push_back(2);  // colour type: RGB
  ihdr.push_back(0);  // compression: deflate
  ihdr.push_back(0);  // filter method 0
  ihdr.push_back(0);  // no interlace
  AppendChunk(&png, "IHDR", ihdr);
  AppendChunk(&png, "IDAT", packed);
  AppendChunk(&png, "IEND", "");
  return png;
}

absl::StatusOr<std::string> RenderLinePlot(const LinePlot& plot,
                                           std::span<const PlotSeries> series) {
  constexpr int kLeft = 64, kTop = 36, kBottom = 52;
  int legend_width = 0;
  for (const PlotSeries& s : series) {
    if (s.x.size() != s.y.size()) {
      return absl::InvalidArgumentError(absl::StrCat("series \"", s.label, "\" has ", s.x.size(),
                                                     " x values and ", s.y.size(), " y values"));
    }
    legend_width = std::max(legend_width, Canvas::TextWidth(s.label) + 40);
  }
  const int right = legend_width + 16;
  const int x0 = kLeft, x1 = plot.width - right, y0 = plot.height - kBottom, y1 = kTop;
  if (x1 - x0 < 40 || y0 - y1 < 40 || !(plot.y_max > plot.y_min)) {
    return absl::InvalidArgumentError(
        absl::StrCat("plot of ", plot.width, "x", plot.height, " is too small to draw"));
  }
  const Rgb kWhite{255, 255, 255}, kBlack{0, 0, 0}, kGrid{225, 225, 225};
  Canvas canvas(plot.width, plot.height, kWhite);

  double x_max = 0.0;
  for (const PlotSeries& s : series) {
    for (double v : s.x) x_max = std::max(x_max, v);
  }
  if (x_max <= 0.0) x_max = 1.0;
  auto px = [&](double v) {
    return x0 + static_cast<int>(std::lround((x1 - x0) * std::clamp(v / x_max, 0.0, 1.0)));
  };
  auto py = [&](double v) {
    const double t = std::clamp((v - plot.y_min) / (plot.y_max - plot.y_min), 0.0, 1.0);
    return y0 - static_cast<int>(std::lround((y0 - y1) * t));
  };

  // Grid and ticks.
  const double y_step = NiceStep(plot.y_max - plot.y_min, 5);
  for (double v = std::ceil(plot.y_min / y_step) * y_step; v <= plot.y_max + 1e-9; v += y_step) {
    const int y = py(v);
    canvas.Line(x0, y, x1, y, kGrid);
    canvas.Line(x0 - 4, y, x0, y, kBlack);
    const std::string label = TickLabel(v, y_step);
    canvas.Text(x0 - 8 - Canvas::TextWidth(label), y - 3, label, kBlack);
  }
  const double x_step = NiceStep(x_max, 6);
  for (double v = 0.0; v <= x_max + 1e-9; v += x_step) {
    const int x = px(v);
    canvas.Line(x, y0, x, y1, kGrid);
    canvas.Line(x, y0, x, y0 + 4, kBlack);
    const std::string label = TickLabel(v, x_step);
    canvas.Text(x - Canvas::TextWidth(label) / 2, y0 + 8, label, kBlack);
  }
  canvas.Line(x0, y0, x1, y0, kBlack);
  canvas.Line(x0, y0, x0, y1, kBlack);

  canvas.Text((plot.width - Canvas::TextWidth(plot.title, 2)) / 2, 8, plot.title, kBlack, 2);
  canvas.Text((x0 + x1 - Canvas::TextWidth(plot.x_label)) / 2, y0 + 26, plot.x_label, kBlack);
  canvas.Text(8, y1 - 14, plot.y_label, kBlack);

  for (size_t i = 0; i < series.size(); ++i) {
    const PlotSeries& s = series[i];
    for (size_t j = 0; j + 1 < s.x.size(); ++j) {
      canvas.Line(px(s.x[j]), py(s.y[j]), px(s.x[j + 1]), py(s.y[j + 1]), s.color, 2);
    }
    for (size_t j = 0; j < s.x.size(); ++j) {
      canvas.FillRect(px(s.x[j]) - 3, py(s.y[j]) - 3, px(s.x[j]) + 3, py(s.y[j]) + 3, s.color);
    }
    const int ly = y1 + 4 + static_cast<int>(i) * 16;
    canvas.FillRect(x1 + 16, ly, x1 + 36, ly + 6, s.color);
    canvas.Text(x1 + 42, ly, s.label, kBlack);
  }
  return EncodePng(canvas.width(), canvas.height(), canvas.pixels());
}

}  // namespace knowd::bench
