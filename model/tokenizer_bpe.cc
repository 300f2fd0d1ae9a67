// Byte-level BPE (GPT-2 and its descendants), as Hugging Face tokenizers runs it: added tokens are
// cut out of the text first; the rest is split by the pre-tokenizer pattern (PCRE2, UTF + UCP);
// each piece's bytes are mapped to GPT-2's printable byte alphabet and merged by rank, lowest
// first. Decoding maps the alphabet back to bytes, so Decode(Encode(x)) == x for any bytes x.
// The vocabulary comes from GGUF (tokenizer.ggml.model "gpt2") or a tokenizer.json.
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <algorithm>
#include <array>
#include <exception>
#include <memory>
#include <queue>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "model/tensor_file.h"
#include "model/tokenizer.h"
#include "model/tokenizer_internal.h"
#include "nlohmann/json.hpp"

namespace knowd {
namespace tokenizer_internal {
namespace {

using Kind = ByteLevelBpeVocab::Kind;

// Llama 3's and Qwen2's pre-tokenizers: case-insensitive contractions, letters led by one
// non-letter, digits in groups of up to three (Llama 3) or one by one (Qwen2), symbol runs with
// their trailing newlines, newline runs, then whitespace as GPT-2.
constexpr std::string_view kLlama3Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3})"
    R"(| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr std::string_view kQwen2Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N})"
    R"(| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

void AppendUtf8(uint32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    // The byte alphabet stays below U+0800; added tokens are copied, never re-encoded.
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

// GPT-2's bytes_to_unicode(): printable Latin-1 bytes stand for themselves, the other 68 bytes
// take U+0100.. in byte order, so every byte is a visible character and BPE never sees spaces or
// control characters.
struct ByteAlphabet {
  std::array<std::string, 256> byte_to_text;
  std::array<int16_t, 0x144> codepoint_to_byte;  // -1 where no byte maps.

  ByteAlphabet() {
    codepoint_to_byte.fill(-1);
    uint32_t next = 0x100;
    for (uint32_t b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
      const uint32_t cp = printable ? b : next++;
      AppendUtf8(cp, &byte_to_text[b]);
      codepoint_to_byte[cp] = static_cast<int16_t>(b);
    }
  }
};

const ByteAlphabet& Alphabet() {
  static const ByteAlphabet* const alphabet = new ByteAlphabet();
  return *alphabet;
}

struct CodeDeleter {
  void operator()(pcre2_code* code) const { pcre2_code_free(code); }
};
struct MatchDataDeleter {
  void operator()(pcre2_match_data* data) const { pcre2_match_data_free(data); }
};

class ByteLevelBpeTokenizer final : public Tokenizer {
 public:
  static absl::StatusOr<std::unique_ptr<Tokenizer>> Create(ByteLevelBpeVocab vocab,
                                                           const std::string& label);

  std::vector<int32_t> Encode(std::string_view text, bool add_bos) const override;
  std::string Decode(std::span<const int32_t> ids) const override;
  int32_t vocab_size() const override { return static_cast<int32_t>(vocab_.tokens.size()); }
  int32_t bos_id() const override { return vocab_.bos_id; }
  int32_t eos_id() const override { return vocab_.eos_id; }

 private:
  struct MergeResult {
    int32_t rank;
    int32_t id;
  };

  explicit ByteLevelBpeTokenizer(ByteLevelBpeVocab vocab) : vocab_(std::move(vocab)) {}

  static uint64_t PairKey(int32_t left, int32_t right) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) |
           static_cast<uint32_t>(right);
  }
  // Length of the longest added token that `s` starts with, and its id; {0, -1} when none.
  std::pair<size_t, int32_t> MatchAdded(std::string_view s) const;
  // Splits `text` (free of added tokens) with the pre-tokenizer and appends each piece's ids.
  void EncodeSegment(std::string_view text, pcre2_match_data* match,
                     std::vector<int32_t>* ids) const;
  void EncodePiece(std::string_view piece, std::vector<int32_t>* ids) const;

  ByteLevelBpeVocab vocab_;
  absl::flat_hash_map<std::string, int32_t> token_ids_;  // Text in the byte alphabet -> id.
  absl::flat_hash_map<uint64_t, MergeResult> merges_;    // PairKey(left, right) -> result.
  std::array<int32_t, 256> byte_ids_;                    // Token of each single byte; -1 if none.
  // Added and special tokens grouped by first byte, longest first.
  std::array<std::vector<int32_t>, 256> added_by_first_byte_;
  std::unique_ptr<pcre2_code, CodeDeleter> pattern_;
};

absl::StatusOr<std::unique_ptr<Tokenizer>> ByteLevelBpeTokenizer::Create(ByteLevelBpeVocab vocab,
                                                                         const std::string& label) {
  const auto refuse = [&](absl::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat(label, ": ", why));
  };
  if (vocab.tokens.empty()) return refuse("the vocabulary is empty");
  if (vocab.kinds.size() != vocab.tokens.size()) return refuse("token kinds do not match tokens");
  if (vocab.tokens.size() > static_cast<size_t>(INT32_MAX)) return refuse("too many tokens");
  const int32_t n = static_cast<int32_t>(vocab.tokens.size());
  for (int32_t* id : {&vocab.bos_id, &vocab.eos_id, &vocab.unk_id}) {
    if (*id < 0 || *id >= n) *id = -1;
  }

  std::unique_ptr<ByteLevelBpeTokenizer> t(new ByteLevelBpeTokenizer(std::move(vocab)));
  const ByteLevelBpeVocab& v = t->vocab_;
  int error_code = 0;
  PCRE2_SIZE error_offset = 0;
  // MATCH_INVALID_UTF: text need not be valid UTF-8; malformed bytes match nothing and are
  // encoded as pieces of their own.
  t->pattern_.reset(pcre2_compile(reinterpret_cast<PCRE2_SPTR>(v.pattern.data()), v.pattern.size(),
                                  PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &error_code,
                                  &error_offset, nullptr));
  if (t->pattern_ == nullptr) {
    PCRE2_UCHAR message[256];
    pcre2_get_error_message(error_code, message, sizeof(message));
    return refuse(absl::StrCat("pre-tokenizer pattern does not compile at offset ", error_offset,
                               ": ", reinterpret_cast<const char*>(message)));
  }
  // JIT is an optimisation only: where it is unavailable pcre2_match interprets.
  pcre2_jit_compile(t->pattern_.get(), PCRE2_JIT_COMPLETE);

  // Ordinary tokens first, so that BPE symbols and merge results resolve to them when an added
  // token has the same text; among equals the lowest id wins.
  for (int32_t id = 0; id < n; ++id) {
    if (v.kinds[id] == Kind::kNormal && !v.tokens[id].empty()) {
      t->token_ids_.emplace(v.tokens[id], id);
    }
  }
  for (int32_t id = 0; id < n; ++id) {
    if ((v.kinds[id] == Kind::kAdded || v.kinds[id] == Kind::kSpecial) && !v.tokens[id].empty()) {
      t->token_ids_.emplace(v.tokens[id], id);
      t->added_by_first_byte_[static_cast<uint8_t>(v.tokens[id][0])].push_back(id);
    }
  }
  for (auto& group : t->added_by_first_byte_) {
    std::stable_sort(group.begin(), group.end(),
                     [&](int32_t a, int32_t b) { return v.tokens[a].size() > v.tokens[b].size(); });
  }
  for (int b = 0; b < 256; ++b) {
    auto it = t->token_ids_.find(Alphabet().byte_to_text[b]);
    t->byte_ids_[b] = it == t->token_ids_.end() ? -1 : it->second;
  }
  std::string joined;
  for (size_t rank = 0; rank < v.merges.size() && rank < static_cast<size_t>(INT32_MAX); ++rank) {
    const auto& [left, right] = v.merges[rank];
    auto l = t->token_ids_.find(left);
    auto r = t->token_ids_.find(right);
    joined = left;
    joined += right;
    auto m = t->token_ids_.find(joined);
    // A merge outside the vocabulary can never apply; Hugging Face refuses such files, llama.cpp
    // skips the rule, and skipping is what keeps the rest usable.
    if (l == t->token_ids_.end() || r == t->token_ids_.end() || m == t->token_ids_.end()) continue;
    t->merges_.emplace(PairKey(l->second, r->second),
                       MergeResult{static_cast<int32_t>(rank), m->second});
  }
  t->vocab_.merges.clear();  // Only the id table is needed from here on.
  t->vocab_.merges.shrink_to_fit();
  return std::unique_ptr<Tokenizer>(std::move(t));
}

std::pair<size_t, int32_t> ByteLevelBpeTokenizer::MatchAdded(std::string_view s) const {
  for (int32_t id : added_by_first_byte_[static_cast<uint8_t>(s[0])]) {
    if (s.starts_with(vocab_.tokens[id])) return {vocab_.tokens[id].size(), id};
  }
  return {0, -1};
}

std::vector<int32_t> ByteLevelBpeTokenizer::Encode(std::string_view text, bool add_bos) const {
  std::vector<int32_t> ids;
  if (add_bos && vocab_.bos_id >= 0) ids.push_back(vocab_.bos_id);
  std::string prefixed;
  if (vocab_.add_prefix_space && !text.empty() && text[0] != ' ') {
    prefixed.reserve(text.size() + 1);
    prefixed.push_back(' ');
    prefixed.append(text);
    text = prefixed;
  }
  // Per call, so that concurrent Encode calls share only the immutable compiled pattern.
  std::unique_ptr<pcre2_match_data, MatchDataDeleter> match(
      pcre2_match_data_create_from_pattern(pattern_.get(), nullptr));
  if (match == nullptr) return ids;  // Out of memory.
  // Added tokens, leftmost-longest, are cut out before pre-tokenization.
  size_t segment_start = 0;
  for (size_t pos = 0; pos < text.size();) {
    auto [length, id] = MatchAdded(text.substr(pos));
    if (length == 0) {
      ++pos;
      continue;
    }
    EncodeSegment(text.substr(segment_start, pos - segment_start), match.get(), &ids);
    ids.push_back(id);
    pos += length;
    segment_start = pos;
  }
  EncodeSegment(text.substr(segment_start), match.get(), &ids);
  return ids;
}

void ByteLevelBpeTokenizer::EncodeSegment(std::string_view text, pcre2_match_data* match,
                                          std::vector<int32_t>* ids) const {
  const auto subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  size_t pos = 0;
  while (pos < text.size()) {
    int rc = pcre2_match(pattern_.get(), subject, text.size(), pos, 0, match, nullptr);
    if (rc == PCRE2_ERROR_JIT_STACKLIMIT) {
      // The JIT's fixed stack ran out on an extreme input; the interpreter uses the heap.
      rc = pcre2_match(pattern_.get(), subject, text.size(), pos, PCRE2_NO_JIT, match, nullptr);
    }
    if (rc < 0) {
      // No match (or a match limit hit): the rest is one piece, so no byte is lost.
      EncodePiece(text.substr(pos), ids);
      return;
    }
    const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(match);
    size_t start = ovector[0];
    size_t end = ovector[1];
    if (start > pos) EncodePiece(text.substr(pos, start - pos), ids);  // Malformed UTF-8.
    if (end == start) {
      // An empty match (possible with a tokenizer.json pattern): take one byte so we advance.
      end = start + 1;
    }
    EncodePiece(text.substr(start, end - start), ids);
    pos = end;
  }
}

void ByteLevelBpeTokenizer::EncodePiece(std::string_view piece, std::vector<int32_t>* ids) const {
  if (piece.empty()) return;
  if (vocab_.ignore_merges) {
    std::string mapped;
    for (char c : piece) mapped += Alphabet().byte_to_text[static_cast<uint8_t>(c)];
    if (auto it = token_ids_.find(mapped); it != token_ids_.end()) {
      ids->push_back(it->second);
      return;
    }
  }
  // One symbol per byte in a linked list; a heap of candidate merges ordered by (rank, position).
  // A queued merge is stale when its left symbol is gone or the pair there no longer merges into
  // the same token -- the test Hugging Face's Word::merge_all makes, kept identical so that ids
  // agree even where different pairs merge into the same token.
  // sym[i] for a symbol absorbed by its left neighbour (-1 is a byte missing from the vocab).
  constexpr int32_t kMerged = -2;
  const int n = static_cast<int>(piece.size());
  std::vector<int32_t> sym(n);
  std::vector<int> prev(n), next(n);
  for (int i = 0; i < n; ++i) {
    sym[i] = byte_ids_[static_cast<uint8_t>(piece[i])];
    prev[i] = i - 1;
    next[i] = i + 1 < n ? i + 1 : -1;
  }
  struct Candidate {
    int32_t rank;
    int pos;
    int32_t id;
    bool operator>(const Candidate& o) const {
      return rank != o.rank ? rank > o.rank : pos > o.pos;
    }
  };
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<>> queue;
  const auto lookup = [&](int left) -> const MergeResult* {
    if (left < 0 || next[left] < 0 || sym[left] < 0 || sym[next[left]] < 0) return nullptr;
    auto it = merges_.find(PairKey(sym[left], sym[next[left]]));
    return it == merges_.end() ? nullptr : &it->second;
  };
  const auto consider = [&](int left) {
    if (const MergeResult* m = lookup(left)) queue.push(Candidate{m->rank, left, m->id});
  };
  for (int i = 0; i + 1 < n; ++i) consider(i);
  while (!queue.empty()) {
    const Candidate top = queue.top();
    queue.pop();
    if (sym[top.pos] == kMerged) continue;
    const MergeResult* m = lookup(top.pos);
    if (m == nullptr || m->id != top.id) continue;
    const int right = next[top.pos];
    sym[top.pos] = top.id;
    sym[right] = kMerged;
    next[top.pos] = next[right];
    if (next[right] >= 0) prev[next[right]] = top.pos;
    consider(prev[top.pos]);
    consider(top.pos);
  }
  for (int i = 0; i >= 0; i = next[i]) {
    if (sym[i] >= 0) {
      ids->push_back(sym[i]);
    } else if (vocab_.unk_id >= 0) {
      ids->push_back(vocab_.unk_id);  // A byte the vocabulary lacks.
    }
  }
}

std::string ByteLevelBpeTokenizer::Decode(std::span<const int32_t> ids) const {
  std::string text;
  for (int32_t id : ids) {
    if (id < 0 || id >= vocab_size()) continue;  // Not a token of this vocabulary: no text.
    const std::string& token = vocab_.tokens[id];
    switch (vocab_.kinds[id]) {
      case Kind::kSpecial:
      case Kind::kUnused:
        break;
      case Kind::kAdded:
        text += token;
        break;
      case Kind::kNormal:
        // Each character of the byte alphabet is one byte; anything else is copied as is.
        for (size_t i = 0; i < token.size();) {
          const uint8_t lead = static_cast<uint8_t>(token[i]);
          uint32_t cp = lead;
          size_t len = 1;
          if ((lead & 0xE0) == 0xC0 && i + 1 < token.size()) {
            cp = ((lead & 0x1F) << 6) | (static_cast<uint8_t>(token[i + 1]) & 0x3F);
            len = 2;
          }
          const auto& table = Alphabet().codepoint_to_byte;
          if (cp < table.size() && table[cp] >= 0 && (len == 2 || cp < 0x80)) {
            text.push_back(static_cast<char>(table[cp]));
          } else {
            text.append(token, i, len);
          }
          i += len;
        }
        break;
    }
  }
  return text;
}

// The pattern and merge behaviour for a GGUF tokenizer.ggml.pre value.
absl::Status PreTokenizerFromGguf(const GgufFile& gguf, ByteLevelBpeVocab* vocab) {
  std::string pre = gguf.GetString("tokenizer.ggml.pre").value_or("default");
  if (pre == "default" || pre == "gpt-2" || pre == "gpt2") {
    vocab->pattern = kGpt2Pattern;
  } else if (pre == "llama-bpe" || pre == "llama3") {
    vocab->pattern = kLlama3Pattern;
    vocab->ignore_merges = true;
  } else if (pre == "qwen2") {
    vocab->pattern = kQwen2Pattern;
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat(gguf.path(), ": tokenizer.ggml.pre '", pre,
                     "' is not supported (knowd knows gpt-2, llama-bpe and qwen2)"));
  }
  return absl::OkStatus();
}

int32_t OptionalTokenId(const GgufFile& gguf, std::string_view key) {
  absl::StatusOr<int64_t> v = gguf.GetInt(key);
  return v.ok() && *v >= 0 && *v <= INT32_MAX ? static_cast<int32_t>(*v) : -1;
}

// --- tokenizer.json ------------------------------------------------------------------------

using nlohmann::json;

const json* Member(const json& object, std::string_view key) {
  if (!object.is_object()) return nullptr;
  auto it = object.find(key);
  return it == object.end() || it->is_null() ? nullptr : &*it;
}

std::string StringMember(const json& object, std::string_view key) {
  const json* v = Member(object, key);
  return v != nullptr && v->is_string() ? v->get<std::string>() : std::string();
}

bool BoolMember(const json& object, std::string_view key, bool fallback) {
  const json* v = Member(object, key);
  return v != nullptr && v->is_boolean() ? v->get<bool>() : fallback;
}

// Reads pre_tokenizer: ByteLevel (GPT-2's pattern when use_regex), or a Sequence of one Split
// regex (Isolated) and a ByteLevel without its own regex (Llama 3, Qwen2). Anything else would
// split text differently from the model's training, so it is refused.
absl::Status PreTokenizerFromJson(const json& root, const std::string& path,
                                  ByteLevelBpeVocab* vocab) {
  const json* pre = Member(root, "pre_tokenizer");
  const auto refuse = [&](absl::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", why));
  };
  if (pre == nullptr) return refuse("no pre_tokenizer: not a byte-level BPE tokenizer");
  std::vector<const json*> steps;
  if (StringMember(*pre, "type") == "Sequence") {
    const json* list = Member(*pre, "pretokenizers");
    if (list == nullptr || !list->is_array()) return refuse("pre_tokenizer Sequence has no list");
    for (const json& step : *list) steps.push_back(&step);
  } else {
    steps.push_back(pre);
  }
  bool byte_level = false;
  std::string split_pattern;
  for (const json* step : steps) {
    const std::string type = StringMember(*step, "type");
    if (type == "ByteLevel") {
      if (byte_level) return refuse("pre_tokenizer has two ByteLevel steps");
      byte_level = true;
      vocab->add_prefix_space = BoolMember(*step, "add_prefix_space", false);
      if (BoolMember(*step, "use_regex", true)) {
        if (!split_pattern.empty()) return refuse("pre_tokenizer splits twice (Split + ByteLevel)");
        split_pattern = kGpt2Pattern;
      }
    } else if (type == "Split") {
      const json* pattern = Member(*step, "pattern");
      const std::string regex = pattern != nullptr ? StringMember(*pattern, "Regex") : "";
      if (regex.empty()) return refuse("pre_tokenizer Split without a Regex pattern");
      if (StringMember(*step, "behavior") != "Isolated" || BoolMember(*step, "invert", false)) {
        return refuse("pre_tokenizer Split is supported with behavior Isolated only");
      }
      if (!split_pattern.empty()) return refuse("pre_tokenizer splits twice");
      split_pattern = regex;
    } else {
      return refuse(absl::StrCat("pre_tokenizer step '", type, "' is not supported"));
    }
  }
  if (!byte_level) return refuse("pre_tokenizer has no ByteLevel step: not a byte-level BPE");
  // Without any split the whole text is one piece.
  vocab->pattern = split_pattern.empty() ? std::string(R"((?s).+)") : split_pattern;
  return absl::OkStatus();
}

// The id of a token named in tokenizer_config.json ("<s>" or {"content": "<s>"}); -1 if none.
int32_t ConfigTokenId(const json& config, std::string_view key,
                      const std::vector<std::string>& tokens) {
  const json* v = Member(config, key);
  if (v == nullptr) return -1;
  const std::string name = v->is_string() ? v->get<std::string>() : StringMember(*v, "content");
  if (name.empty()) return -1;
  auto it = std::find(tokens.begin(), tokens.end(), name);
  return it == tokens.end() ? -1 : static_cast<int32_t>(it - tokens.begin());
}

absl::StatusOr<ByteLevelBpeVocab> VocabFromJson(const json& root, const std::string& path) {
  const auto refuse = [&](absl::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", why));
  };
  if (!root.is_object()) return refuse("not a tokenizer.json (not a JSON object)");
  const json* model = Member(root, "model");
  if (model == nullptr || !model->is_object()) return refuse("not a tokenizer.json (no model)");
  const std::string type = StringMember(*model, "type");
  if (!type.empty() && type != "BPE") {
    return refuse(absl::StrCat("model type '", type, "' is not supported (knowd reads BPE)"));
  }
  if (BoolMember(*model, "byte_fallback", false) ||
      !StringMember(*model, "continuing_subword_prefix").empty() ||
      !StringMember(*model, "end_of_word_suffix").empty()) {
    return refuse(
        "a SentencePiece-style BPE (byte_fallback / subword affixes): use its "
        "tokenizer.model instead");
  }
  if (const json* normalizer = Member(root, "normalizer")) {
    return refuse(
        absl::StrCat("normalizer '", StringMember(*normalizer, "type"), "' is not supported"));
  }
  const json* vocab_json = Member(*model, "vocab");
  const json* merges_json = Member(*model, "merges");
  if (vocab_json == nullptr || !vocab_json->is_object() || vocab_json->empty()) {
    return refuse("model.vocab is missing or empty");
  }
  if (merges_json == nullptr || !merges_json->is_array()) return refuse("model.merges is missing");

  ByteLevelBpeVocab vocab;
  KNOWD_RETURN_IF_ERROR(PreTokenizerFromJson(root, path, &vocab));
  vocab.ignore_merges = BoolMember(*model, "ignore_merges", false);

  // Ids may leave holes and added tokens may sit beyond the model's vocabulary.
  constexpr int64_t kMaxVocab = 1 << 24;
  const auto place = [&](int64_t id, const std::string& text, Kind kind) -> absl::Status {
    if (id < 0 || id >= kMaxVocab) return refuse(absl::StrCat("token id ", id, " out of range"));
    if (id >= static_cast<int64_t>(vocab.tokens.size())) {
      vocab.tokens.resize(id + 1);
      vocab.kinds.resize(id + 1, Kind::kUnused);
    }
    vocab.tokens[id] = text;
    vocab.kinds[id] = kind;
    return absl::OkStatus();
  };
  for (auto it = vocab_json->begin(); it != vocab_json->end(); ++it) {
    if (!it.value().is_number_integer()) return refuse(absl::StrCat("vocab '", it.key(), "'"));
    KNOWD_RETURN_IF_ERROR(place(it.value().get<int64_t>(), it.key(), Kind::kNormal));
  }
  absl::flat_hash_map<std::string, int32_t> special_ids;
  if (const json* added = Member(root, "added_tokens"); added != nullptr && added->is_array()) {
    for (const json& token : *added) {
      const json* id = Member(token, "id");
      const std::string content = StringMember(token, "content");
      if (id == nullptr || !id->is_number_integer() || content.empty()) {
        return refuse("added_tokens entry without id or content");
      }
      const bool special = BoolMember(token, "special", false);
      const int64_t value = id->get<int64_t>();
      KNOWD_RETURN_IF_ERROR(place(value, content, special ? Kind::kSpecial : Kind::kAdded));
      if (special) special_ids.emplace(content, static_cast<int32_t>(value));
    }
  }
  for (const json& merge : *merges_json) {
    // Older files write "left right"; newer ones ["left", "right"].
    if (merge.is_string()) {
      const std::string line = merge.get<std::string>();
      const size_t space = line.find(' ', 1);
      if (space == std::string::npos) return refuse(absl::StrCat("merge '", line, "'"));
      vocab.merges.emplace_back(line.substr(0, space), line.substr(space + 1));
    } else if (merge.is_array() && merge.size() == 2 && merge[0].is_string() &&
               merge[1].is_string()) {
      vocab.merges.emplace_back(merge[0].get<std::string>(), merge[1].get<std::string>());
    } else {
      return refuse("model.merges holds an entry that is neither \"a b\" nor [a, b]");
    }
  }
  const std::string unk = StringMember(*model, "unk_token");
  for (size_t id = 0; id < vocab.tokens.size() && !unk.empty(); ++id) {
    if (vocab.tokens[id] == unk) vocab.unk_id = static_cast<int32_t>(id);
  }

  // BOS/EOS are not part of tokenizer.json proper: tokenizer_config.json beside it names them;
  // without it, well-known special tokens stand in.
  const size_t slash = path.rfind('/');
  const std::string config_path =
      (slash == std::string::npos ? std::string() : path.substr(0, slash + 1)) +
      "tokenizer_config.json";
  if (absl::StatusOr<std::string> bytes = ReadWholeFile(config_path); bytes.ok()) {
    const json config = json::parse(*bytes, nullptr, /*allow_exceptions=*/false);
    vocab.bos_id = ConfigTokenId(config, "bos_token", vocab.tokens);
    vocab.eos_id = ConfigTokenId(config, "eos_token", vocab.tokens);
  }
  const auto first_present = [&](std::initializer_list<std::string_view> names) {
    for (std::string_view name : names) {
      if (auto it = special_ids.find(std::string(name)); it != special_ids.end()) return it->second;
    }
    return -1;
  };
  if (vocab.bos_id < 0) vocab.bos_id = first_present({"<|begin_of_text|>", "<s>", "<|endoftext|>"});
  if (vocab.eos_id < 0) vocab.eos_id = first_present({"<|end_of_text|>", "</s>", "<|endoftext|>"});
  return vocab;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Tokenizer>> MakeByteLevelBpeTokenizer(ByteLevelBpeVocab vocab,
                                                                     const std::string& label) {
  return ByteLevelBpeTokenizer::Create(std::move(vocab), label);
}

absl::StatusOr<std::unique_ptr<Tokenizer>> LoadGgufByteLevelBpe(const GgufFile& gguf) {
  const std::string& path = gguf.path();
  const GgufValue* tokens_value = gguf.GetValue("tokenizer.ggml.tokens");
  const GgufValue* merges_value = gguf.GetValue("tokenizer.ggml.merges");
  const auto* tokens =
      tokens_value != nullptr ? std::get_if<std::vector<std::string>>(tokens_value) : nullptr;
  const auto* merges =
      merges_value != nullptr ? std::get_if<std::vector<std::string>>(merges_value) : nullptr;
  if (tokens == nullptr || tokens->empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": tokenizer.ggml.tokens is missing or not a list of strings"));
  }
  if (merges == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": tokenizer.ggml.merges is missing or not a list of strings"));
  }
  const std::vector<int64_t>* types = nullptr;
  if (const GgufValue* v = gguf.GetValue("tokenizer.ggml.token_type")) {
    types = std::get_if<std::vector<int64_t>>(v);
    if (types == nullptr || types->size() != tokens->size()) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": tokenizer.ggml.token_type must be ", tokens->size(), " integers"));
    }
  }

  ByteLevelBpeVocab vocab;
  KNOWD_RETURN_IF_ERROR(PreTokenizerFromGguf(gguf, &vocab));
  vocab.tokens = *tokens;
  vocab.kinds.resize(tokens->size(), Kind::kNormal);
  for (size_t i = 0; types != nullptr && i < types->size(); ++i) {
    switch (static_cast<PieceType>((*types)[i])) {
      case PieceType::kUnknown:
      case PieceType::kControl:
        vocab.kinds[i] = Kind::kSpecial;
        break;
      case PieceType::kUserDefined:
        vocab.kinds[i] = Kind::kAdded;
        break;
      case PieceType::kUnused:
        vocab.kinds[i] = Kind::kUnused;
        break;
      default:
        break;
    }
  }
  vocab.merges.reserve(merges->size());
  for (const std::string& line : *merges) {
    const size_t space = line.find(' ', 1);
    if (space == std::string::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": tokenizer.ggml.merges entry '", line, "' is not 'left right'"));
    }
    vocab.merges.emplace_back(line.substr(0, space), line.substr(space + 1));
  }
  vocab.bos_id = OptionalTokenId(gguf, "tokenizer.ggml.bos_token_id");
  vocab.eos_id = OptionalTokenId(gguf, "tokenizer.ggml.eos_token_id");
  vocab.unk_id = OptionalTokenId(gguf, "tokenizer.ggml.unknown_token_id");
  return MakeByteLevelBpeTokenizer(std::move(vocab), path);
}

}  // namespace tokenizer_internal

absl::StatusOr<std::unique_ptr<Tokenizer>> LoadHfTokenizerJson(const std::string& path) {
  KNOWD_ASSIGN_OR_RETURN(std::string bytes, tokenizer_internal::ReadWholeFile(path));
  const nlohmann::json root = nlohmann::json::parse(bytes, nullptr, /*allow_exceptions=*/false);
  if (root.is_discarded()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a tokenizer.json (not JSON)"));
  }
  absl::StatusOr<tokenizer_internal::ByteLevelBpeVocab> vocab;
  try {
    // Every access is type-checked first; the catch keeps a missed case a Status, not a crash.
    vocab = tokenizer_internal::VocabFromJson(root, path);
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": malformed tokenizer.json: ", e.what()));
  }
  if (!vocab.ok()) return vocab.status();
  return tokenizer_internal::MakeByteLevelBpeTokenizer(*std::move(vocab), path);
}

}  // namespace knowd
