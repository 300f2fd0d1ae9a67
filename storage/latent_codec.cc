#include "storage/latent_codec.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace knowd::storage {
namespace {

constexpr size_t kHeaderBytes = 1 + 4 + 4;
constexpr float kHalfMax = 65504.0f;

void AppendU32(std::string* out, uint32_t v) { out->append(reinterpret_cast<char*>(&v), 4); }

}  // namespace

// Round-to-nearest-even conversion without relying on F16C, so the stored bytes are the same
// on every host (after F. Giesen's float_to_half_fast3_rtne).
uint16_t FloatToHalf(float f) {
  constexpr uint32_t kF32Infinity = 255u << 23;
  constexpr uint32_t kF16Overflow = (127u + 16u) << 23;  // 2^16: rounds to infinity
  constexpr uint32_t kDenormMagic = ((127u - 15u) + (23u - 10u) + 1u) << 23;
  uint32_t x = std::bit_cast<uint32_t>(f);
  const uint32_t sign = x & 0x80000000u;
  x ^= sign;
  uint16_t out;
  if (x >= kF16Overflow) {
    out = x > kF32Infinity ? 0x7e00 : 0x7c00;
  } else if (x < (113u << 23)) {
    // Below the smallest normal half: let the FPU round the mantissa by adding a magic number.
    float sum = std::bit_cast<float>(x) + std::bit_cast<float>(kDenormMagic);
    out = static_cast<uint16_t>(std::bit_cast<uint32_t>(sum) - kDenormMagic);
  } else {
    const uint32_t mantissa_odd = (x >> 13) & 1u;
    x += ((15u - 127u) << 23) + 0xfffu;
    x += mantissa_odd;
    out = static_cast<uint16_t>(x >> 13);
  }
  return static_cast<uint16_t>(out | (sign >> 16));
}

float HalfToFloat(uint16_t h) {
  constexpr uint32_t kShiftedExp = 0x7c00u << 13;
  uint32_t out = (h & 0x7fffu) << 13;
  const uint32_t exp = kShiftedExp & out;
  out += (127u - 15u) << 23;
  if (exp == kShiftedExp) {
    out += (128u - 16u) << 23;  // infinity or NaN
  } else if (exp == 0) {
    out += 1u << 23;  // zero or subnormal: renormalize
    out = std::bit_cast<uint32_t>(std::bit_cast<float>(out) - std::bit_cast<float>(113u << 23));
  }
  out |= static_cast<uint32_t>(h & 0x8000u) << 16;
  return std::bit_cast<float>(out);
}

absl::Status CheckLatentsEncodable(std::span<const float> values, LatentFormat format) {
  for (size_t i = 0; i < values.size(); ++i) {
    if (!std::isfinite(values[i])) {
      return absl::InvalidArgumentError(absl::StrCat("latent element ", i, " is not finite"));
    }
    if (format == LatentFormat::kFp16 && std::fabs(values[i]) > kHalfMax) {
      return absl::InvalidArgumentError(
          absl::StrCat("latent element ", i, " = ", values[i],
                       " exceeds the fp16 range (|x| <= 65504); use int8 latents or rescale"));
    }
  }
  return absl::OkStatus();
}

int64_t ModulationBytes(int key_dim, int latent_rows, int latent_cols, LatentFormat format) {
  const int64_t cells = int64_t{latent_rows} * latent_cols;
  const int64_t latents =
      format == LatentFormat::kInt8 ? cells + int64_t{latent_rows} * 4 : cells * 2;
  return latents + int64_t{key_dim} * 4;
}

std::string EncodeLatents(std::span<const float> values, int rows, int cols, LatentFormat format) {
  std::string out;
  const size_t n = static_cast<size_t>(rows) * cols;
  out.reserve(kHeaderBytes + (format == LatentFormat::kFp16 ? 2 * n : n + 4 * rows));
  out.push_back(static_cast<char>(format));
  AppendU32(&out, static_cast<uint32_t>(rows));
  AppendU32(&out, static_cast<uint32_t>(cols));
  if (format == LatentFormat::kFp16) {
    const size_t start = out.size();
    out.resize(start + 2 * n);
    char* dst = out.data() + start;
    for (size_t i = 0; i < n; ++i) {
      uint16_t h = FloatToHalf(values[i]);
      std::memcpy(dst + 2 * i, &h, 2);
    }
    return out;
  }
  for (int r = 0; r < rows; ++r) {
    const float* row = values.data() + static_cast<size_t>(r) * cols;
    float max_abs = 0.0f;
    for (int c = 0; c < cols; ++c) max_abs = std::max(max_abs, std::fabs(row[c]));
    const float scale = max_abs / 127.0f;
    const float inv = scale > 0.0f ? 1.0f / scale : 0.0f;
    out.append(reinterpret_cast<const char*>(&scale), 4);
    for (int c = 0; c < cols; ++c) {
      const float q = std::clamp(std::nearbyint(row[c] * inv), -127.0f, 127.0f);
      out.push_back(static_cast<char>(static_cast<int8_t>(q)));
    }
  }
  return out;
}

absl::StatusOr<std::vector<float>> DecodeLatents(std::string_view bytes, int rows, int cols) {
  if (bytes.size() < kHeaderBytes) return absl::DataLossError("latent record is truncated");
  const auto format = static_cast<LatentFormat>(bytes[0]);
  uint32_t stored_rows, stored_cols;
  std::memcpy(&stored_rows, bytes.data() + 1, 4);
  std::memcpy(&stored_cols, bytes.data() + 5, 4);
  if (stored_rows != static_cast<uint32_t>(rows) || stored_cols != static_cast<uint32_t>(cols)) {
    return absl::DataLossError(absl::StrCat("latent record is ", stored_rows, "x", stored_cols,
                                            ", the bank's shape is ", rows, "x", cols));
  }
  const size_t n = static_cast<size_t>(rows) * cols;
  const char* src = bytes.data() + kHeaderBytes;
  const size_t payload = bytes.size() - kHeaderBytes;
  std::vector<float> out(n);
  if (format == LatentFormat::kFp16) {
    if (payload != 2 * n) return absl::DataLossError("fp16 latent record has the wrong size");
    for (size_t i = 0; i < n; ++i) {
      uint16_t h;
      std::memcpy(&h, src + 2 * i, 2);
      out[i] = HalfToFloat(h);
    }
    return out;
  }
  if (format == LatentFormat::kInt8) {
    if (payload != n + 4 * static_cast<size_t>(rows)) {
      return absl::DataLossError("int8 latent record has the wrong size");
    }
    for (int r = 0; r < rows; ++r) {
      float scale;
      std::memcpy(&scale, src, 4);
      src += 4;
      float* row = out.data() + static_cast<size_t>(r) * cols;
      for (int c = 0; c < cols; ++c) row[c] = scale * static_cast<int8_t>(src[c]);
      src += cols;
    }
    return out;
  }
  return absl::DataLossError(absl::StrCat("latent record has unknown format ", int{bytes[0]}));
}

}  // namespace knowd::storage
