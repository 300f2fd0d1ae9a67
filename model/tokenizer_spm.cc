// SentencePiece BPE tokenization, reproducing libsentencepiece 0.1.97 (normalizer.cc, bpe_model.cc,
// sentencepiece_processor.cc) id for id and byte for byte. knowd does not call libsentencepiece
// itself: Debian's build exports a bundled protobuf runtime that crashes any process which also
// loads libprotobuf (gRPC, libtorch), so the daemon cannot link it. tests/model compares this code
// with libsentencepiece on the llama.cpp vectors and on random text.
//
// Supported: BPE models with identity normalisation (Llama 1/2, Mistral, TinyLlama, llama2.c),
// user-defined pieces, unused pieces, byte fallback, dummy prefix, extra-whitespace removal.
// Refused with a message: unigram/word/char models, precompiled normalisation rules (nmt_nfkc),
// whitespace-as-suffix.
#include <algorithm>
#include <array>
#include <queue>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "base/status_macros.h"
#include "model/tensor_file.h"
#include "model/tokenizer.h"
#include "model/tokenizer_internal.h"

namespace knowd {
namespace tokenizer_internal {
namespace {

constexpr std::string_view kSpaceSymbol = "\xE2\x96\x81";      // U+2581, SentencePiece's space.
constexpr std::string_view kReplacementChar = "\xEF\xBF\xBD";  // U+FFFD.

// Length of the UTF-8 character that starts with `lead`, judged by the lead byte only (1 for a
// stray continuation byte), as sentencepiece's OneCharLen.
size_t OneCharLen(char lead) {
  return "\1\1\1\1\1\1\1\1\1\1\1\1\2\2\3\4"[static_cast<uint8_t>(lead) >> 4];
}

bool IsTrailByte(char c) { return (static_cast<uint8_t>(c) & 0xC0) == 0x80; }

// Length of the well-formed UTF-8 character at the start of `s` (no overlongs, no surrogates,
// nothing above U+10FFFF), or 0 when it is malformed. `s` is not empty.
size_t ValidCharLen(std::string_view s) {
  const auto b = [&](size_t i) { return static_cast<uint8_t>(s[i]); };
  const uint8_t lead = b(0);
  if (lead < 0x80) return 1;
  uint32_t cp;
  size_t len;
  if ((lead & 0xE0) == 0xC0) {
    len = 2, cp = lead & 0x1F;
  } else if ((lead & 0xF0) == 0xE0) {
    len = 3, cp = lead & 0x0F;
  } else if ((lead & 0xF8) == 0xF0) {
    len = 4, cp = lead & 0x07;
  } else {
    return 0;
  }
  if (s.size() < len) return 0;
  for (size_t i = 1; i < len; ++i) {
    if (!IsTrailByte(s[i])) return 0;
    cp = (cp << 6) | (b(i) & 0x3F);
  }
  static constexpr uint32_t kMinForLength[] = {0, 0, 0x80, 0x800, 0x10000};
  if (cp < kMinForLength[len] || (cp >= 0xD800 && cp < 0xE000) || cp > 0x10FFFF) return 0;
  return len;
}

// "<0x41>" -> 0x41; -1 for anything else.
int PieceToByte(std::string_view piece) {
  if (piece.size() != 6 || piece.substr(0, 3) != "<0x" || piece[5] != '>') return -1;
  int value = 0;
  for (char c : piece.substr(3, 2)) {
    value <<= 4;
    if (c >= '0' && c <= '9') {
      value |= c - '0';
    } else if (c >= 'A' && c <= 'F') {
      value |= c - 'A' + 10;
    } else {
      return -1;  // sentencepiece writes upper-case hex only.
    }
  }
  return value;
}

class SentencePieceTokenizer final : public Tokenizer {
 public:
  static absl::StatusOr<std::unique_ptr<Tokenizer>> Create(SentencePieceModel model,
                                                           const std::string& label);

  std::vector<int32_t> Encode(std::string_view text, bool add_bos) const override;
  std::string Decode(std::span<const int32_t> ids) const override;
  int32_t vocab_size() const override { return static_cast<int32_t>(model_.pieces.size()); }
  int32_t bos_id() const override { return bos_id_; }
  int32_t eos_id() const override { return eos_id_; }

 private:
  explicit SentencePieceTokenizer(SentencePieceModel model) : model_(std::move(model)) {}

  PieceType type(int32_t id) const { return model_.pieces[id].type; }
  // Id of `piece` the way ModelInterface::PieceToId finds it: control, unknown and byte pieces
  // first, then the others, else the unknown id.
  int32_t PieceToId(std::string_view piece) const;
  // Length of the longest user-defined piece that `s` starts with; 0 when none does.
  size_t MatchUserDefined(std::string_view s) const;
  // NormalizerSpec with an identity rule set: escapes spaces, adds the dummy prefix, optionally
  // drops extra whitespace, and replaces each malformed UTF-8 byte with U+FFFD.
  std::string Normalize(std::string_view text) const;
  void AppendDecodedBytes(std::string_view bytes, std::string* text) const;

  SentencePieceModel model_;
  // Keys view model_.pieces, which never changes after construction.
  absl::flat_hash_map<std::string_view, int32_t> normal_pieces_;    // normal, user-defined, unused
  absl::flat_hash_map<std::string_view, int32_t> reserved_pieces_;  // control, unknown, byte
  std::array<int32_t, 256> byte_piece_ids_;
  std::vector<int16_t> piece_bytes_;  // The byte a byte piece stands for; -1 for other pieces.
  // User-defined pieces grouped by first byte, longest first.
  std::array<std::vector<std::string_view>, 256> user_defined_;
  bool has_user_defined_ = false;
  int32_t unk_id_ = -1;
  int32_t bos_id_ = -1;
  int32_t eos_id_ = -1;
};

absl::StatusOr<std::unique_ptr<Tokenizer>> SentencePieceTokenizer::Create(
    SentencePieceModel model, const std::string& label) {
  const auto refuse = [&](absl::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat(label, ": ", why));
  };
  if (model.model_type != kModelTypeBpe) {
    return refuse(absl::StrCat("SentencePiece model type ", model.model_type,
                               (model.model_type == kModelTypeUnigram ? " (unigram)" : ""),
                               " is not supported; knowd reads BPE models (the Llama family)"));
  }
  if (!model.precompiled_charsmap.empty()) {
    return refuse(absl::StrCat("normalization rule '", model.normalizer_name,
                               "' is not supported; knowd reads identity normalization only"));
  }
  if (model.has_denormalizer_rules) return refuse("denormalization rules are not supported");
  if (model.treat_whitespace_as_suffix) {
    return refuse("treat_whitespace_as_suffix models are not supported");
  }
  if (model.pieces.size() > static_cast<size_t>(INT32_MAX)) return refuse("too many pieces");

  std::unique_ptr<SentencePieceTokenizer> t(new SentencePieceTokenizer(std::move(model)));
  const SentencePieceModel& m = t->model_;
  t->byte_piece_ids_.fill(-1);
  t->piece_bytes_.assign(m.pieces.size(), -1);
  // The checks of ModelInterface::InitializePieces, so that whatever libsentencepiece refuses is
  // refused here too.
  for (int32_t id = 0; id < static_cast<int32_t>(m.pieces.size()); ++id) {
    const SentencePieceModel::Piece& p = m.pieces[id];
    if (p.text.empty()) return refuse(absl::StrCat("piece ", id, " is empty"));
    const int32_t type = static_cast<int32_t>(p.type);
    if (type < 1 || type > 6) return refuse(absl::StrCat("piece ", id, " has type ", type));
    const bool normal = p.type == PieceType::kNormal || p.type == PieceType::kUserDefined ||
                        p.type == PieceType::kUnused;
    if (!(normal ? t->normal_pieces_ : t->reserved_pieces_).emplace(p.text, id).second) {
      return refuse(absl::StrCat("piece '", p.text, "' (id ", id, ") is defined twice"));
    }
    if (p.type == PieceType::kUserDefined) {
      t->user_defined_[static_cast<uint8_t>(p.text[0])].push_back(p.text);
      t->has_user_defined_ = true;
    }
    if (p.type == PieceType::kUnknown) {
      if (t->unk_id_ >= 0) return refuse("more than one unknown piece");
      t->unk_id_ = id;
    }
    if (p.type == PieceType::kByte) {
      if (!m.byte_fallback) {
        return refuse(absl::StrCat("byte piece ", p.text, " but byte_fallback is off"));
      }
      const int byte = PieceToByte(p.text);
      if (byte < 0) return refuse(absl::StrCat("byte piece '", p.text, "' is not <0xXX>"));
      t->byte_piece_ids_[byte] = id;
      t->piece_bytes_[id] = static_cast<int16_t>(byte);
    }
  }
  if (t->unk_id_ < 0) return refuse("no unknown piece (type UNKNOWN)");
  if (m.byte_fallback) {
    for (int b = 0; b < 256; ++b) {
      if (t->byte_piece_ids_[b] < 0) {
        return refuse(absl::StrFormat("byte_fallback is on but piece <0x%02X> is missing", b));
      }
    }
  }
  for (auto& group : t->user_defined_) {
    std::sort(group.begin(), group.end(),
              [](std::string_view a, std::string_view b) { return a.size() > b.size(); });
  }
  // SentencePieceProcessor::bos_id(): the id of bos_piece, if that is a control piece.
  const auto control_id = [&](std::string_view piece) {
    auto it = t->reserved_pieces_.find(piece);
    return it != t->reserved_pieces_.end() && m.pieces[it->second].type == PieceType::kControl
               ? it->second
               : -1;
  };
  t->bos_id_ = control_id(m.bos_piece);
  t->eos_id_ = control_id(m.eos_piece);
  return std::unique_ptr<Tokenizer>(std::move(t));
}

int32_t SentencePieceTokenizer::PieceToId(std::string_view piece) const {
  if (auto it = reserved_pieces_.find(piece); it != reserved_pieces_.end()) return it->second;
  if (auto it = normal_pieces_.find(piece); it != normal_pieces_.end()) return it->second;
  return unk_id_;
}

size_t SentencePieceTokenizer::MatchUserDefined(std::string_view s) const {
  for (std::string_view piece : user_defined_[static_cast<uint8_t>(s[0])]) {
    if (s.starts_with(piece)) return piece.size();
  }
  return 0;
}

std::string SentencePieceTokenizer::Normalize(std::string_view text) const {
  std::string out;
  if (text.empty()) return out;
  // One normalisation step: a user-defined piece verbatim, else one character (U+FFFD for a
  // malformed byte). Returns the output text and the input bytes consumed.
  const auto next = [&](std::string_view rest) -> std::pair<std::string_view, size_t> {
    if (has_user_defined_) {
      if (size_t n = MatchUserDefined(rest); n > 0) return {rest.substr(0, n), n};
    }
    const size_t n = ValidCharLen(rest);
    if (n == 0) return {kReplacementChar, 1};
    return {rest.substr(0, n), n};
  };
  const bool remove_extra = model_.remove_extra_whitespaces;
  if (remove_extra) {
    while (!text.empty()) {
      auto [piece, consumed] = next(text);
      if (piece != " ") break;
      text.remove_prefix(consumed);
    }
    if (text.empty()) return out;
  }
  out.reserve(text.size() * 3);
  const auto add_space = [&] {
    out.append(model_.escape_whitespaces ? kSpaceSymbol : std::string_view(" "));
  };
  if (model_.add_dummy_prefix) add_space();
  bool is_prev_space = remove_extra;
  while (!text.empty()) {
    auto [piece, consumed] = next(text);
    while (is_prev_space && piece.starts_with(' ')) piece.remove_prefix(1);
    if (!piece.empty()) {
      for (char c : piece) {
        if (c == ' ') {
          add_space();
        } else {
          out.push_back(c);
        }
      }
      is_prev_space = piece.ends_with(' ');
    }
    text.remove_prefix(consumed);
    if (!remove_extra) is_prev_space = false;
  }
  if (remove_extra) {
    const std::string_view space = model_.escape_whitespaces ? kSpaceSymbol : " ";
    size_t end = out.size();
    while (std::string_view(out.data(), end).ends_with(space)) end -= space.size();
    out.resize(end);
  }
  return out;
}

std::vector<int32_t> SentencePieceTokenizer::Encode(std::string_view text, bool add_bos) const {
  std::vector<int32_t> ids;
  if (add_bos && bos_id_ >= 0) ids.push_back(bos_id_);
  const std::string normalized = Normalize(text);
  if (normalized.empty()) return ids;
  const std::string_view norm = normalized;

  // bpe::Model::SampleEncode without dropout: start from characters (user-defined pieces whole
  // and frozen), then repeatedly merge the adjacent pair whose merged piece scores highest,
  // leftmost first on ties.
  struct Symbol {
    int prev;
    int next;
    bool freeze;
    size_t begin;  // Offset in `norm`; symbols tile it in order, so a merge stays contiguous.
    size_t size;   // 0 once merged into its left neighbour.
  };
  struct Pair {
    float score;
    int left;
    int right;
    size_t size;
  };
  const auto lower_priority = [](const Pair& a, const Pair& b) {
    return a.score < b.score || (a.score == b.score && a.left > b.left);
  };
  std::priority_queue<Pair, std::vector<Pair>, decltype(lower_priority)> agenda(lower_priority);
  std::vector<Symbol> symbols;
  symbols.reserve(norm.size());
  // Merged unused pieces and the two pieces they were made of: unused pieces are never output,
  // so they are split back.
  absl::flat_hash_map<std::string_view, std::pair<std::string_view, std::string_view>> rev_merge;

  const auto piece_of = [&](const Symbol& s) { return norm.substr(s.begin, s.size); };
  const auto maybe_add_pair = [&](int left, int right) {
    if (left < 0 || right < 0 || symbols[left].freeze || symbols[right].freeze) return;
    const size_t size = symbols[left].size + symbols[right].size;
    const std::string_view piece = norm.substr(symbols[left].begin, size);
    auto it = normal_pieces_.find(piece);
    if (it == normal_pieces_.end()) return;
    agenda.push(Pair{model_.pieces[it->second].score, left, right, size});
    if (type(it->second) == PieceType::kUnused) {
      rev_merge[piece] = {piece_of(symbols[left]), piece_of(symbols[right])};
    }
  };

  for (size_t pos = 0; pos < norm.size();) {
    const std::string_view rest = norm.substr(pos);
    size_t len = has_user_defined_ ? MatchUserDefined(rest) : 0;
    const bool freeze = len > 0;
    if (!freeze) len = std::min(rest.size(), OneCharLen(rest[0]));
    const int index = static_cast<int>(symbols.size());
    symbols.push_back(
        Symbol{index - 1, pos + len < norm.size() ? index + 1 : -1, freeze, pos, len});
    pos += len;
  }
  for (int i = 1; i < static_cast<int>(symbols.size()); ++i) maybe_add_pair(i - 1, i);

  while (!agenda.empty()) {
    const Pair top = agenda.top();
    agenda.pop();
    Symbol& left = symbols[top.left];
    Symbol& right = symbols[top.right];
    // Stale: one side was merged away or grew since this pair was queued.
    if (left.size == 0 || right.size == 0 || left.size + right.size != top.size) continue;
    left.size += right.size;
    left.next = right.next;
    if (right.next >= 0) symbols[right.next].prev = top.left;
    right.size = 0;
    maybe_add_pair(left.prev, top.left);
    maybe_add_pair(top.left, left.next);
  }

  // SentencePieceProcessor::PopulateSentencePieceText: unknown pieces become their UTF-8 bytes
  // under byte fallback; otherwise a run of unknown pieces becomes one unknown id.
  bool prev_unknown = false;
  const auto emit = [&](std::string_view piece) {
    const int32_t id = PieceToId(piece);
    const bool unknown = id == unk_id_;
    if (unknown && model_.byte_fallback) {
      for (char c : piece) ids.push_back(byte_piece_ids_[static_cast<uint8_t>(c)]);
    } else if (!(unknown && prev_unknown)) {
      ids.push_back(id);
    }
    prev_unknown = unknown;
  };
  // Recursion depth is bounded by the length of an unused piece's merge history.
  const auto resegment = [&](std::string_view piece, auto& self) -> void {
    auto normal = normal_pieces_.find(piece);
    if (normal != normal_pieces_.end() && type(normal->second) == PieceType::kUnused &&
        !reserved_pieces_.contains(piece)) {
      if (auto it = rev_merge.find(piece); it != rev_merge.end()) {
        self(it->second.first, self);
        self(it->second.second, self);
        return;
      }
    }
    emit(piece);
  };
  for (int i = 0; i >= 0; i = symbols[i].next) resegment(piece_of(symbols[i]), resegment);
  return ids;
}

void SentencePieceTokenizer::AppendDecodedBytes(std::string_view bytes, std::string* text) const {
  // Each well-formed character is copied; each byte that starts none becomes U+FFFD.
  while (!bytes.empty()) {
    const size_t n = ValidCharLen(bytes);
    if (n == 0) {
      text->append(kReplacementChar);
      bytes.remove_prefix(1);
    } else {
      text->append(bytes.substr(0, n));
      bytes.remove_prefix(n);
    }
  }
}

std::string SentencePieceTokenizer::Decode(std::span<const int32_t> ids) const {
  // SentencePieceProcessor::Decode: byte pieces are gathered and decoded as UTF-8; control pieces
  // vanish; the unknown piece shows as unk_surface; the dummy-prefix space of the first
  // visible piece is dropped.
  std::string text;
  std::string bytes;
  bool is_bos_ws = true;
  bool bos_ws_seen = false;
  for (int32_t id : ids) {
    if (id < 0 || id >= vocab_size()) continue;  // Not a token of this vocabulary: no text.
    if (piece_bytes_[id] >= 0) {
      bytes.push_back(static_cast<char>(piece_bytes_[id]));
      continue;
    }
    AppendDecodedBytes(bytes, &text);
    bytes.clear();
    if (bos_ws_seen || !text.empty()) is_bos_ws = false;
    bos_ws_seen = false;
    const PieceType t = type(id);
    if (t == PieceType::kControl) continue;
    if (t == PieceType::kUnknown) {
      text.append(model_.unk_surface);
      continue;
    }
    std::string_view piece = model_.pieces[id].text;
    if (is_bos_ws && (model_.add_dummy_prefix || model_.remove_extra_whitespaces)) {
      bos_ws_seen = piece.starts_with(kSpaceSymbol);
      if (bos_ws_seen) piece.remove_prefix(kSpaceSymbol.size());
      // Removing extra whitespace drops every leading space, not just the first.
      if (model_.remove_extra_whitespaces) bos_ws_seen = false;
    }
    for (size_t pos = 0; pos < piece.size();) {
      if (piece.substr(pos).starts_with(kSpaceSymbol)) {
        text.push_back(' ');
        pos += kSpaceSymbol.size();
      } else {
        text.push_back(piece[pos++]);
      }
    }
  }
  AppendDecodedBytes(bytes, &text);
  return text;
}

// A GGUF id key: -1 when absent, or outside [0, n) (converters write 0xFFFFFFFF for "none").
int32_t OptionalTokenId(const GgufFile& gguf, std::string_view key, size_t n) {
  absl::StatusOr<int64_t> v = gguf.GetInt(key);
  if (!v.ok() || *v < 0 || *v >= static_cast<int64_t>(n)) return -1;
  return static_cast<int32_t>(*v);
}

}  // namespace

absl::StatusOr<SentencePieceModel> SentencePieceModelFromGguf(const GgufFile& gguf) {
  const std::string& label = gguf.path();
  const GgufValue* tokens_value = gguf.GetValue("tokenizer.ggml.tokens");
  const auto* tokens =
      tokens_value != nullptr ? std::get_if<std::vector<std::string>>(tokens_value) : nullptr;
  if (tokens == nullptr || tokens->empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(label, ": tokenizer.ggml.tokens is missing or not a list of strings"));
  }
  const size_t n = tokens->size();
  const std::vector<double>* scores = nullptr;
  if (const GgufValue* v = gguf.GetValue("tokenizer.ggml.scores")) {
    scores = std::get_if<std::vector<double>>(v);
    if (scores == nullptr || scores->size() != n) {
      return absl::InvalidArgumentError(
          absl::StrCat(label, ": tokenizer.ggml.scores must be ", n, " numbers, one per token"));
    }
  }
  const std::vector<int64_t>* types = nullptr;
  if (const GgufValue* v = gguf.GetValue("tokenizer.ggml.token_type")) {
    types = std::get_if<std::vector<int64_t>>(v);
    if (types == nullptr || types->size() != n) {
      return absl::InvalidArgumentError(absl::StrCat(label, ": tokenizer.ggml.token_type must be ",
                                                     n, " integers, one per token"));
    }
  }

  SentencePieceModel model;
  model.model_type = kModelTypeBpe;
  model.normalizer_name = "identity";
  model.add_dummy_prefix = gguf.GetBool("tokenizer.ggml.add_space_prefix").value_or(true);
  model.remove_extra_whitespaces =
      gguf.GetBool("tokenizer.ggml.remove_extra_whitespaces").value_or(false);
  model.pieces.resize(n);
  int byte_pieces = 0;
  for (size_t i = 0; i < n; ++i) {
    SentencePieceModel::Piece& p = model.pieces[i];
    p.text = (*tokens)[i];
    p.score = scores != nullptr ? static_cast<float>((*scores)[i]) : 0.0f;
    if (types != nullptr) {
      const int64_t t = (*types)[i];
      if (t < 1 || t > 6) {
        return absl::InvalidArgumentError(
            absl::StrCat(label, ": token ", i, " has tokenizer.ggml.token_type ", t));
      }
      p.type = static_cast<PieceType>(t);
    } else if (PieceToByte(p.text) >= 0) {
      p.type = PieceType::kByte;  // Old files without token types: infer byte pieces by name.
    }
    if (p.type == PieceType::kByte) ++byte_pieces;
  }
  if (byte_pieces != 0 && byte_pieces != 256) {
    return absl::InvalidArgumentError(absl::StrCat(
        label, ": ", byte_pieces, " byte tokens (<0xXX>); byte fallback needs all 256"));
  }
  model.byte_fallback = byte_pieces == 256;

  int32_t unk = OptionalTokenId(gguf, "tokenizer.ggml.unknown_token_id", n);
  if (unk < 0) {
    for (size_t i = 0; i < n && unk < 0; ++i) {
      if (model.pieces[i].type == PieceType::kUnknown) unk = static_cast<int32_t>(i);
    }
  }
  if (unk < 0) {
    return absl::InvalidArgumentError(absl::StrCat(label, ": the vocabulary has no unknown token"));
  }
  // Exactly one unknown piece, as SentencePiece requires; any other is kept out of encoding and
  // decoding by making it a control piece.
  for (SentencePieceModel::Piece& p : model.pieces) {
    if (p.type == PieceType::kUnknown) p.type = PieceType::kControl;
  }
  model.pieces[unk].type = PieceType::kUnknown;
  model.unk_id = unk;
  model.unk_piece = model.pieces[unk].text;

  // SentencePiece finds BOS/EOS by piece text and requires them to be control pieces.
  const auto set_control = [&](std::string_view key, int32_t* id, std::string* piece) {
    const int32_t v = OptionalTokenId(gguf, key, n);
    if (v < 0 || v == unk) {
      if (gguf.GetValue(key) != nullptr) {
        *id = -1;  // Explicitly "none" (or nonsense): no such token.
        piece->clear();
      }
      return;  // Absent: SentencePiece's defaults (<s>, </s>) apply, as in llama.cpp.
    }
    *id = v;
    *piece = model.pieces[v].text;
    model.pieces[v].type = PieceType::kControl;
  };
  set_control("tokenizer.ggml.bos_token_id", &model.bos_id, &model.bos_piece);
  set_control("tokenizer.ggml.eos_token_id", &model.eos_id, &model.eos_piece);
  model.pad_id = OptionalTokenId(gguf, "tokenizer.ggml.padding_token_id", n);
  if (model.pad_id >= 0) model.pad_piece = model.pieces[model.pad_id].text;
  return model;
}

absl::StatusOr<std::unique_ptr<Tokenizer>> MakeSentencePieceTokenizer(SentencePieceModel model,
                                                                      const std::string& label) {
  return SentencePieceTokenizer::Create(std::move(model), label);
}

}  // namespace tokenizer_internal

absl::StatusOr<std::unique_ptr<Tokenizer>> LoadSentencePieceTokenizer(const std::string& path) {
  KNOWD_ASSIGN_OR_RETURN(std::string bytes, tokenizer_internal::ReadWholeFile(path));
  KNOWD_ASSIGN_OR_RETURN(tokenizer_internal::SentencePieceModel model,
                         tokenizer_internal::ParseSentencePieceModel(bytes, path));
  return tokenizer_internal::MakeSentencePieceTokenizer(std::move(model), path);
}

}  // namespace knowd
