// SentencePiece's ModelProto (sentencepiece_model.proto) read and written in the protobuf wire
// format directly. knowd does not link libprotobuf here on purpose: Debian's libsentencepiece
// exports its own bundled protobuf runtime, and a process that loads both crashes, so keeping this
// library free of libprotobuf lets tests compare it with libsentencepiece in one process. Only the
// fields SentencePieceModel holds are read; every other field is skipped by its wire type.
#include <cstring>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "model/tokenizer_internal.h"

namespace knowd::tokenizer_internal {
namespace {

enum WireType : uint32_t { kVarint = 0, kFixed64 = 1, kLengthDelimited = 2, kFixed32 = 5 };

// Field numbers from sentencepiece_model.proto.
namespace field {
constexpr uint32_t kModelPieces = 1, kModelTrainerSpec = 2, kModelNormalizerSpec = 3,
                   kModelDenormalizerSpec = 5;
constexpr uint32_t kPiecePiece = 1, kPieceScore = 2, kPieceType = 3;
constexpr uint32_t kTrainerModelType = 3, kTrainerVocabSize = 4,
                   kTrainerTreatWhitespaceAsSuffix = 24, kTrainerByteFallback = 35,
                   kTrainerUnkId = 40, kTrainerBosId = 41, kTrainerEosId = 42, kTrainerPadId = 43,
                   kTrainerUnkSurface = 44, kTrainerUnkPiece = 45, kTrainerBosPiece = 46,
                   kTrainerEosPiece = 47, kTrainerPadPiece = 48;
constexpr uint32_t kNormalizerName = 1, kNormalizerPrecompiledCharsmap = 2,
                   kNormalizerAddDummyPrefix = 3, kNormalizerRemoveExtraWhitespaces = 4,
                   kNormalizerEscapeWhitespaces = 5;
}  // namespace field

// A bounds-checked reader over one message's bytes.
class WireReader {
 public:
  explicit WireReader(std::string_view bytes) : rest_(bytes) {}

  bool done() const { return rest_.empty(); }

  bool ReadVarint(uint64_t* value) {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (rest_.empty()) return false;
      const uint8_t b = static_cast<uint8_t>(rest_.front());
      rest_.remove_prefix(1);
      v |= static_cast<uint64_t>(b & 0x7F) << shift;
      if ((b & 0x80) == 0) {
        *value = v;
        return true;
      }
    }
    return false;  // More than 10 bytes: not a varint.
  }

  bool ReadTag(uint32_t* field_number, uint32_t* wire_type) {
    uint64_t tag;
    if (!ReadVarint(&tag) || (tag >> 3) == 0 || (tag >> 3) > 0x1FFFFFFF) return false;
    *field_number = static_cast<uint32_t>(tag >> 3);
    *wire_type = static_cast<uint32_t>(tag & 7);
    return true;
  }

  bool ReadBytes(std::string_view* bytes) {
    uint64_t n;
    if (!ReadVarint(&n) || n > rest_.size()) return false;
    *bytes = rest_.substr(0, n);
    rest_.remove_prefix(n);
    return true;
  }

  bool ReadFixed32(uint32_t* value) {
    if (rest_.size() < 4) return false;
    std::memcpy(value, rest_.data(), 4);  // Little-endian on the wire and on every host we build.
    rest_.remove_prefix(4);
    return true;
  }

  bool Skip(uint32_t wire_type) {
    uint64_t v;
    std::string_view b;
    switch (wire_type) {
      case kVarint:
        return ReadVarint(&v);
      case kFixed64:
        if (rest_.size() < 8) return false;
        rest_.remove_prefix(8);
        return true;
      case kLengthDelimited:
        return ReadBytes(&b);
      case kFixed32:
        if (rest_.size() < 4) return false;
        rest_.remove_prefix(4);
        return true;
      default:
        return false;  // Groups (3, 4) are not used by this schema; 6 and 7 do not exist.
    }
  }

 private:
  std::string_view rest_;
};

// Reads the fields of one message, calling `on_field(number, wire_type, reader)` for each. The
// callback must consume the value (read it, or Skip it) and return false when the value is
// malformed or has a wire type the schema does not give that field.
template <typename OnField>
bool ReadMessage(std::string_view bytes, OnField on_field) {
  WireReader reader(bytes);
  while (!reader.done()) {
    uint32_t number, wire_type;
    if (!reader.ReadTag(&number, &wire_type)) return false;
    if (!on_field(number, wire_type, reader)) return false;
  }
  return true;
}

// Typed field readers: each checks the wire type the schema gives the field.
bool ReadInt32(uint32_t wire_type, WireReader& r, int32_t* out) {
  uint64_t v;
  if (wire_type != kVarint || !r.ReadVarint(&v)) return false;
  *out = static_cast<int32_t>(static_cast<uint32_t>(v));  // int32 negatives are sign-extended.
  return true;
}

bool ReadBool(uint32_t wire_type, WireReader& r, bool* out) {
  uint64_t v;
  if (wire_type != kVarint || !r.ReadVarint(&v)) return false;
  *out = v != 0;
  return true;
}

bool ReadString(uint32_t wire_type, WireReader& r, std::string* out) {
  std::string_view b;
  if (wire_type != kLengthDelimited || !r.ReadBytes(&b)) return false;
  out->assign(b);
  return true;
}

bool ParsePiece(std::string_view bytes, SentencePieceModel::Piece* piece) {
  return ReadMessage(bytes, [&](uint32_t number, uint32_t wire_type, WireReader& r) {
    switch (number) {
      case field::kPiecePiece:
        return ReadString(wire_type, r, &piece->text);
      case field::kPieceScore: {
        uint32_t bits;
        if (wire_type != kFixed32 || !r.ReadFixed32(&bits)) return false;
        std::memcpy(&piece->score, &bits, 4);
        return true;
      }
      case field::kPieceType: {
        int32_t type;
        if (!ReadInt32(wire_type, r, &type)) return false;
        piece->type = static_cast<PieceType>(type);  // Range-checked by the tokenizer.
        return true;
      }
      default:
        return r.Skip(wire_type);
    }
  });
}

bool ParseTrainerSpec(std::string_view bytes, SentencePieceModel* m) {
  return ReadMessage(bytes, [&](uint32_t number, uint32_t wire_type, WireReader& r) {
    switch (number) {
      case field::kTrainerModelType:
        return ReadInt32(wire_type, r, &m->model_type);
      case field::kTrainerTreatWhitespaceAsSuffix:
        return ReadBool(wire_type, r, &m->treat_whitespace_as_suffix);
      case field::kTrainerByteFallback:
        return ReadBool(wire_type, r, &m->byte_fallback);
      case field::kTrainerUnkId:
        return ReadInt32(wire_type, r, &m->unk_id);
      case field::kTrainerBosId:
        return ReadInt32(wire_type, r, &m->bos_id);
      case field::kTrainerEosId:
        return ReadInt32(wire_type, r, &m->eos_id);
      case field::kTrainerPadId:
        return ReadInt32(wire_type, r, &m->pad_id);
      case field::kTrainerUnkSurface:
        return ReadString(wire_type, r, &m->unk_surface);
      case field::kTrainerUnkPiece:
        return ReadString(wire_type, r, &m->unk_piece);
      case field::kTrainerBosPiece:
        return ReadString(wire_type, r, &m->bos_piece);
      case field::kTrainerEosPiece:
        return ReadString(wire_type, r, &m->eos_piece);
      case field::kTrainerPadPiece:
        return ReadString(wire_type, r, &m->pad_piece);
      default:
        return r.Skip(wire_type);
    }
  });
}

bool ParseNormalizerSpec(std::string_view bytes, SentencePieceModel* m) {
  return ReadMessage(bytes, [&](uint32_t number, uint32_t wire_type, WireReader& r) {
    switch (number) {
      case field::kNormalizerName:
        return ReadString(wire_type, r, &m->normalizer_name);
      case field::kNormalizerPrecompiledCharsmap:
        return ReadString(wire_type, r, &m->precompiled_charsmap);
      case field::kNormalizerAddDummyPrefix:
        return ReadBool(wire_type, r, &m->add_dummy_prefix);
      case field::kNormalizerRemoveExtraWhitespaces:
        return ReadBool(wire_type, r, &m->remove_extra_whitespaces);
      case field::kNormalizerEscapeWhitespaces:
        return ReadBool(wire_type, r, &m->escape_whitespaces);
      default:
        return r.Skip(wire_type);
    }
  });
}

// Writers. Every field is written, even when it equals the proto's default, so that what a
// reader sees never depends on which defaults it assumes.
void PutVarint(uint64_t v, std::string* out) {
  while (v >= 0x80) {
    out->push_back(static_cast<char>((v & 0x7F) | 0x80));
    v >>= 7;
  }
  out->push_back(static_cast<char>(v));
}

void PutTag(uint32_t number, WireType wire_type, std::string* out) {
  PutVarint((static_cast<uint64_t>(number) << 3) | wire_type, out);
}

void PutInt32(uint32_t number, int32_t v, std::string* out) {
  PutTag(number, kVarint, out);
  // Protobuf encodes a negative int32 as its 64-bit two's complement.
  PutVarint(static_cast<uint64_t>(static_cast<int64_t>(v)), out);
}

void PutBool(uint32_t number, bool v, std::string* out) {
  PutTag(number, kVarint, out);
  out->push_back(v ? 1 : 0);
}

void PutBytes(uint32_t number, std::string_view v, std::string* out) {
  PutTag(number, kLengthDelimited, out);
  PutVarint(v.size(), out);
  out->append(v);
}

void PutFloat(uint32_t number, float v, std::string* out) {
  PutTag(number, kFixed32, out);
  char bytes[4];
  std::memcpy(bytes, &v, 4);
  out->append(bytes, 4);
}

}  // namespace

absl::StatusOr<SentencePieceModel> ParseSentencePieceModel(std::string_view bytes,
                                                           const std::string& label) {
  SentencePieceModel model;
  bool piece_ok = true;
  const bool ok = ReadMessage(bytes, [&](uint32_t number, uint32_t wire_type, WireReader& r) {
    std::string_view sub;
    switch (number) {
      case field::kModelPieces:
        if (wire_type != kLengthDelimited || !r.ReadBytes(&sub)) return false;
        model.pieces.emplace_back();
        piece_ok = ParsePiece(sub, &model.pieces.back());
        return piece_ok;
      case field::kModelTrainerSpec:
        if (wire_type != kLengthDelimited || !r.ReadBytes(&sub)) return false;
        return ParseTrainerSpec(sub, &model);
      case field::kModelNormalizerSpec:
        if (wire_type != kLengthDelimited || !r.ReadBytes(&sub)) return false;
        return ParseNormalizerSpec(sub, &model);
      case field::kModelDenormalizerSpec: {
        if (wire_type != kLengthDelimited || !r.ReadBytes(&sub)) return false;
        SentencePieceModel denormalizer;
        if (!ParseNormalizerSpec(sub, &denormalizer)) return false;
        model.has_denormalizer_rules = !denormalizer.precompiled_charsmap.empty();
        return true;
      }
      default:
        return r.Skip(wire_type);
    }
  });
  if (!ok) {
    return absl::InvalidArgumentError(
        absl::StrCat(label, ": not a SentencePiece model (malformed protobuf",
                     piece_ok ? "" : absl::StrCat(" in piece ", model.pieces.size() - 1), ")"));
  }
  if (model.pieces.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(label, ": not a SentencePiece model (no pieces)"));
  }
  return model;
}

std::string SerializeSentencePieceModel(const SentencePieceModel& model) {
  std::string out;
  std::string sub;
  for (const SentencePieceModel::Piece& p : model.pieces) {
    sub.clear();
    PutBytes(field::kPiecePiece, p.text, &sub);
    PutFloat(field::kPieceScore, p.score, &sub);
    PutInt32(field::kPieceType, static_cast<int32_t>(p.type), &sub);
    PutBytes(field::kModelPieces, sub, &out);
  }

  sub.clear();
  PutInt32(field::kTrainerModelType, model.model_type, &sub);
  PutInt32(field::kTrainerVocabSize, static_cast<int32_t>(model.pieces.size()), &sub);
  PutBool(field::kTrainerTreatWhitespaceAsSuffix, model.treat_whitespace_as_suffix, &sub);
  PutBool(field::kTrainerByteFallback, model.byte_fallback, &sub);
  PutInt32(field::kTrainerUnkId, model.unk_id, &sub);
  PutInt32(field::kTrainerBosId, model.bos_id, &sub);
  PutInt32(field::kTrainerEosId, model.eos_id, &sub);
  PutInt32(field::kTrainerPadId, model.pad_id, &sub);
  PutBytes(field::kTrainerUnkSurface, model.unk_surface, &sub);
  PutBytes(field::kTrainerUnkPiece, model.unk_piece, &sub);
  PutBytes(field::kTrainerBosPiece, model.bos_piece, &sub);
  PutBytes(field::kTrainerEosPiece, model.eos_piece, &sub);
  PutBytes(field::kTrainerPadPiece, model.pad_piece, &sub);
  PutBytes(field::kModelTrainerSpec, sub, &out);

  sub.clear();
  PutBytes(field::kNormalizerName, model.normalizer_name, &sub);
  if (!model.precompiled_charsmap.empty()) {
    PutBytes(field::kNormalizerPrecompiledCharsmap, model.precompiled_charsmap, &sub);
  }
  PutBool(field::kNormalizerAddDummyPrefix, model.add_dummy_prefix, &sub);
  PutBool(field::kNormalizerRemoveExtraWhitespaces, model.remove_extra_whitespaces, &sub);
  PutBool(field::kNormalizerEscapeWhitespaces, model.escape_whitespaces, &sub);
  PutBytes(field::kModelNormalizerSpec, sub, &out);
  return out;
}

}  // namespace knowd::tokenizer_internal
