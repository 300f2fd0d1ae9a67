// The parts of the tokenizers that tokenizer.cc, tokenizer_spm*.cc and tokenizer_bpe.cc share, and
// that tests reach into. Private to model/ (and its tests): callers use model/tokenizer.h.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "model/tokenizer.h"

namespace knowd {

class GgufFile;

namespace tokenizer_internal {

// The bytes of a regular file. NOT_FOUND when it does not exist; INVALID_ARGUMENT for a
// directory; the errno's code for other failures. Messages start with `path`.
absl::StatusOr<std::string> ReadWholeFile(const std::string& path);

// Piece types, numbered as in sentencepiece_model.proto (ModelProto.SentencePiece.Type); GGUF's
// tokenizer.ggml.token_type uses the same numbers.
enum class PieceType : int32_t {
  kNormal = 1,
  kUnknown = 2,
  kControl = 3,
  kUserDefined = 4,
  kUnused = 5,
  kByte = 6,
};

// The fields of a SentencePiece ModelProto that encoding and decoding depend on. Defaults are the
// proto's defaults, so a parsed model that omits a field behaves as libsentencepiece would.
struct SentencePieceModel {
  struct Piece {
    std::string text;
    float score = 0.0f;
    PieceType type = PieceType::kNormal;
  };
  std::vector<Piece> pieces;

  // TrainerSpec.
  int32_t model_type = 1;  // 1 unigram, 2 BPE, 3 word, 4 char.
  bool byte_fallback = false;
  bool treat_whitespace_as_suffix = false;
  int32_t unk_id = 0;
  int32_t bos_id = 1;
  int32_t eos_id = 2;
  int32_t pad_id = -1;
  std::string unk_piece = "<unk>";
  std::string bos_piece = "<s>";
  std::string eos_piece = "</s>";
  std::string pad_piece = "<pad>";
  std::string unk_surface = " \xE2\x81\x87 ";  // " ⁇ ", what an unknown piece decodes to.

  // NormalizerSpec.
  std::string normalizer_name;
  std::string precompiled_charsmap;
  bool add_dummy_prefix = true;
  bool remove_extra_whitespaces = true;
  bool escape_whitespaces = true;
  // Whether denormalizer_spec carries rules of its own (refused: no known Llama model has any).
  bool has_denormalizer_rules = false;
};

inline constexpr int32_t kModelTypeUnigram = 1;
inline constexpr int32_t kModelTypeBpe = 2;

// Parses a serialized ModelProto (the bytes of a tokenizer.model). `label` names the source in
// errors. Only the wire format is checked here; MakeSentencePieceTokenizer checks the content.
absl::StatusOr<SentencePieceModel> ParseSentencePieceModel(std::string_view bytes,
                                                           const std::string& label);

// The ModelProto wire bytes of `model`: what libsentencepiece's LoadFromSerializedProto accepts
// and what a tokenizer.model file holds.
std::string SerializeSentencePieceModel(const SentencePieceModel& model);

// The SentencePiece model that a GGUF file with tokenizer.ggml.model == "llama" describes: BPE,
// byte fallback when all 256 <0xXX> pieces are present, identity normalisation, dummy prefix
// unless tokenizer.ggml.add_space_prefix is false, ids from the tokenizer.ggml.*_token_id keys.
absl::StatusOr<SentencePieceModel> SentencePieceModelFromGguf(const GgufFile& gguf);

// A tokenizer that encodes and decodes exactly as libsentencepiece does with `model`. Refuses
// (INVALID_ARGUMENT, naming `label`) models it cannot reproduce: non-BPE model types, non-identity
// normalisation rules, whitespace-as-suffix.
absl::StatusOr<std::unique_ptr<Tokenizer>> MakeSentencePieceTokenizer(SentencePieceModel model,
                                                                      const std::string& label);

// A byte-level BPE vocabulary (GPT-2 family), from GGUF or tokenizer.json.
struct ByteLevelBpeVocab {
  enum class Kind : uint8_t {
    kNormal,   // Text in the byte-to-unicode alphabet; produced by BPE.
    kAdded,    // Matched whole in the input before BPE; decodes to its literal text.
    kSpecial,  // Matched whole like kAdded; decodes to nothing (BOS, EOS, <|endoftext|>).
    kUnused,   // A hole in the id space; never produced, decodes to nothing.
  };
  std::vector<std::string> tokens;  // Indexed by id.
  std::vector<Kind> kinds;          // Same length as tokens.
  // Merge rules, best first, each as its two parts.
  std::vector<std::pair<std::string, std::string>> merges;
  // Pre-tokenizer pattern (PCRE2 syntax); each match is encoded on its own.
  std::string pattern;
  // Use a whole pre-token that is itself in the vocabulary without merging (Llama 3).
  bool ignore_merges = false;
  // Prepend a space to text that does not start with one (HF ByteLevel add_prefix_space).
  bool add_prefix_space = false;
  int32_t bos_id = -1;
  int32_t eos_id = -1;
  int32_t unk_id = -1;
};

// The GPT-2 pre-tokenizer: contractions, letter runs, number runs, other-symbol runs, and
// whitespace, each optionally led by one space.
inline constexpr std::string_view kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

// Refuses (INVALID_ARGUMENT, naming `label`) an empty vocabulary or a pattern PCRE2 cannot
// compile; merges whose parts or result are not in the vocabulary are ignored.
absl::StatusOr<std::unique_ptr<Tokenizer>> MakeByteLevelBpeTokenizer(ByteLevelBpeVocab vocab,
                                                                     const std::string& label);

// tokenizer.ggml.model == "gpt2".
absl::StatusOr<std::unique_ptr<Tokenizer>> LoadGgufByteLevelBpe(const GgufFile& gguf);

}  // namespace tokenizer_internal
}  // namespace knowd
