#include "knowledge/document_rules.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"

namespace knowd {
namespace {

// Length of the UTF-8 sequence starting at text[i] if it is well-formed, else 0.
size_t Utf8SequenceLength(std::string_view text, size_t i) {
  const auto byte = [&](size_t j) { return static_cast<unsigned char>(text[j]); };
  const unsigned char c = byte(i);
  if (c < 0x80) return 1;
  size_t n = 0;
  uint32_t cp = 0;
  if (c >= 0xC2 && c <= 0xDF) {
    n = 2;
    cp = c & 0x1F;
  } else if (c >= 0xE0 && c <= 0xEF) {
    n = 3;
    cp = c & 0x0F;
  } else if (c >= 0xF0 && c <= 0xF4) {
    n = 4;
    cp = c & 0x07;
  } else {
    return 0;  // continuation byte, overlong lead (C0, C1) or beyond U+10FFFF (F5..FF)
  }
  if (i + n > text.size()) return 0;
  for (size_t j = 1; j < n; ++j) {
    if ((byte(i + j) & 0xC0) != 0x80) return 0;
    cp = (cp << 6) | (byte(i + j) & 0x3F);
  }
  if ((n == 3 && cp < 0x800) || (n == 4 && cp < 0x10000)) return 0;  // overlong
  if (cp >= 0xD800 && cp <= 0xDFFF) return 0;                        // surrogate
  if (cp > 0x10FFFF) return 0;
  return n;
}

// Decodes the (valid) sequence at text[i].
uint32_t CodePointAt(std::string_view text, size_t i, size_t n) {
  const unsigned char c = static_cast<unsigned char>(text[i]);
  if (n == 1) return c;
  uint32_t cp = c & (n == 2 ? 0x1F : n == 3 ? 0x0F : 0x07);
  for (size_t j = 1; j < n; ++j) cp = (cp << 6) | (static_cast<unsigned char>(text[i + j]) & 0x3F);
  return cp;
}

absl::Status CheckName(absl::string_view what, std::string_view name, size_t max_bytes) {
  if (name.empty() || name.size() > max_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " must be 1-", max_bytes, " bytes, not ", name.size()));
  }
  for (size_t i = 0; i < name.size();) {
    const size_t n = Utf8SequenceLength(name, i);
    if (n == 0) {
      return absl::InvalidArgumentError(absl::StrCat(what, " is not valid UTF-8 (byte ", i, ")"));
    }
    const uint32_t cp = CodePointAt(name, i, n);
    if (cp < 0x20 || (cp >= 0x7F && cp <= 0x9F)) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, " contains a control character (byte ", i, ")"));
    }
    i += n;
  }
  return absl::OkStatus();
}

// Whitespace (Unicode White_Space, plus the zero-width space and BOM) and control characters.
bool IsBlankCodePoint(uint32_t cp) {
  if (cp <= 0x20 || (cp >= 0x7F && cp <= 0xA0)) return true;  // C0, space, DEL, C1, NBSP
  switch (cp) {
    case 0x1680:
    case 0x2028:
    case 0x2029:
    case 0x202F:
    case 0x205F:
    case 0x3000:
    case 0xFEFF:
      return true;
    default:
      return cp >= 0x2000 && cp <= 0x200B;
  }
}

bool IsSpace(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f'; }

struct Unit {
  size_t begin = 0;
  size_t end = 0;
  int tokens = 0;
  bool ends_sentence = false;  // ends with . ! ? or a line break: a good place to cut
};

// Cuts [begin, end) between UTF-8 characters into pieces of at most max_tokens tokens.
void CutLongWord(std::string_view text, size_t begin, size_t end, int max_tokens,
                 const TokenCounter& count, std::vector<Unit>* out) {
  size_t chars_per_piece = std::max(1, max_tokens / 2);
  while (true) {
    std::vector<Unit> pieces;
    bool fits = true;
    size_t i = begin;
    while (i < end) {
      size_t j = i;
      for (size_t c = 0; c < chars_per_piece && j < end; ++c) {
        j += std::max<size_t>(1, Utf8SequenceLength(text, j));
      }
      const int tokens = count(text.substr(i, j - i));
      if (tokens > max_tokens && chars_per_piece > 1) fits = false;
      pieces.push_back({i, j, tokens, false});
      i = j;
    }
    if (fits) {
      out->insert(out->end(), pieces.begin(), pieces.end());
      return;
    }
    chars_per_piece /= 2;
  }
}

}  // namespace

bool IsValidUtf8(std::string_view text) {
  for (size_t i = 0; i < text.size();) {
    const size_t n = Utf8SequenceLength(text, i);
    if (n == 0) return false;
    i += n;
  }
  return true;
}

absl::Status CheckText(std::string_view what_view, std::string_view text, int64_t max_bytes) {
  const absl::string_view what(what_view.data(), what_view.size());
  if (text.empty()) return absl::InvalidArgumentError(absl::StrCat(what, " is empty"));
  if (static_cast<int64_t>(text.size()) > max_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " has ", text.size(), " bytes; the limit is ", max_bytes));
  }
  if (!IsValidUtf8(text)) {
    return absl::InvalidArgumentError(absl::StrCat(what, " is not valid UTF-8"));
  }
  for (size_t i = 0; i < text.size();) {
    const size_t n = Utf8SequenceLength(text, i);
    if (!IsBlankCodePoint(CodePointAt(text, i, n))) return absl::OkStatus();
    i += n;
  }
  return absl::InvalidArgumentError(
      absl::StrCat(what, " has no visible character (only whitespace or control characters)"));
}

std::string EscapeInvalidUtf8(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size();) {
    const size_t n = Utf8SequenceLength(text, i);
    if (n == 0) {
      absl::StrAppend(&out, "\\x", absl::Hex(static_cast<unsigned char>(text[i]), absl::kZeroPad2));
      ++i;
    } else {
      out.append(text.substr(i, n));
      i += n;
    }
  }
  return out;
}

absl::Status CheckMetadataKey(std::string_view key) { return CheckName("metadata key", key, 256); }

absl::Status CheckDocumentId(std::string_view id) { return CheckName("document id", id, 256); }

absl::Status ResolveNamespace(std::string_view requested, std::string* name_space) {
  if (requested.empty()) requested = "default";
  KNOWD_RETURN_IF_ERROR(CheckName("namespace", requested, 255));
  *name_space = std::string(requested);
  return absl::OkStatus();
}

std::vector<PassageSpan> SplitPassages(std::string_view text, int max_tokens, int overlap_tokens,
                                       const TokenCounter& count_tokens) {
  max_tokens = std::max(1, max_tokens);
  // Units: a word with the whitespace after it (leading whitespace joins the first word).
  std::vector<Unit> units;
  size_t i = 0;
  while (i < text.size()) {
    const size_t begin = i;
    while (i < text.size() && IsSpace(text[i]) && begin == 0) ++i;
    while (i < text.size() && !IsSpace(text[i])) ++i;
    const size_t word_end = i;
    while (i < text.size() && IsSpace(text[i])) ++i;
    const std::string_view unit = text.substr(begin, i - begin);
    const int tokens = count_tokens(unit);
    if (tokens > max_tokens) {
      CutLongWord(text, begin, i, max_tokens, count_tokens, &units);
      continue;
    }
    const char last = word_end > begin ? text[word_end - 1] : ' ';
    const bool line_break = unit.find('\n') != std::string_view::npos;
    units.push_back({begin, i, tokens, last == '.' || last == '!' || last == '?' || line_break});
  }

  std::vector<PassageSpan> out;
  size_t first = 0;  // first unit of the passage being built
  size_t prev_first = 0;
  while (first < units.size()) {
    size_t last = first;  // one past the passage's last unit
    int tokens = 0;
    while (last < units.size() && tokens + units[last].tokens <= max_tokens) {
      tokens += units[last++].tokens;
    }
    last = std::max(last, first + 1);
    if (last < units.size()) {
      // Prefer cutting after a sentence in the passage's last third.
      int running = tokens;
      for (size_t u = last; u > first + 1; --u) {
        running -= units[u - 1].tokens;
        if (units[u - 1].ends_sentence) {
          last = u;
          break;
        }
        if (running < (2 * tokens) / 3) break;
      }
    }
    PassageSpan span;
    span.begin = units[first].begin;
    span.end = units[last - 1].end;
    span.context_begin = span.begin;
    if (!out.empty() && overlap_tokens > 0) {
      int context = 0;
      size_t u = first;
      while (u > prev_first && context + units[u - 1].tokens <= overlap_tokens) {
        context += units[--u].tokens;
      }
      span.context_begin = units[u].begin;
    }
    out.push_back(span);
    prev_first = first;
    first = last;
  }
  return out;
}

}  // namespace knowd
