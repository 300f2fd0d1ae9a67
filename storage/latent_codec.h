// Quantization of latent matrices for the "latents" column family (private to storage/).
//
// Encoded layout: u8 format (LatentFormat), u32 rows, u32 cols, then
//   kFp16: rows*cols IEEE halves;
//   kInt8: per row, one f32 scale followed by cols int8 values (x ≈ scale * q).
// Error bounds are stated on LatentFormat in memory_bank.h.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "storage/memory_bank.h"

namespace knowd::storage {

// INVALID_ARGUMENT for non-finite values or, for kFp16, |x| > 65504.
absl::Status CheckLatentsEncodable(std::span<const float> values, LatentFormat format);

// `values` has rows*cols elements and passed CheckLatentsEncodable.
std::string EncodeLatents(std::span<const float> values, int rows, int cols, LatentFormat format);

// DATA_LOSS when the bytes are malformed or the shape is not rows×cols.
absl::StatusOr<std::vector<float>> DecodeLatents(std::string_view bytes, int rows, int cols);

uint16_t FloatToHalf(float f);  // round to nearest even; finite |f| <= 65504 expected
float HalfToFloat(uint16_t h);

}  // namespace knowd::storage
