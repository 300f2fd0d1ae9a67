// What a document may hold (text, ids, namespaces) and how it is cut into passages.
// Pure functions: no model, no bank; safe from any thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"

namespace knowd {

// True when `text` is well-formed UTF-8: no overlong forms, no surrogates (U+D800..U+DFFF), no
// code point above U+10FFFF, no truncated sequence.
bool IsValidUtf8(std::string_view text);

// INVALID_ARGUMENT (naming `what`, e.g. "text") unless `text` is valid UTF-8, at most max_bytes
// long, and has at least one character that is neither whitespace nor a control character (an
// empty, blank or NUL-only text says nothing).
absl::Status CheckText(std::string_view what, std::string_view text, int64_t max_bytes);

// `text` with every byte of an invalid UTF-8 sequence written as \xHH (valid text is returned
// as is): a client's bad bytes can be named back to it in a protobuf string.
std::string EscapeInvalidUtf8(std::string_view text);

// A metadata key: 1-256 bytes of valid UTF-8 without control characters.
absl::Status CheckMetadataKey(std::string_view key);

// A document id: 1-256 bytes of valid UTF-8 without control characters (C0, DEL, C1).
absl::Status CheckDocumentId(std::string_view id);

// The namespace a request names ("" is "default"); INVALID_ARGUMENT unless 1-255 bytes of valid
// UTF-8 without control characters.
absl::Status ResolveNamespace(std::string_view requested, std::string* name_space);

// One passage of a document, as byte offsets into its text. The passage's own text is
// [begin, end); the passages' own texts joined make up the document. The encoder reads
// [context_begin, end): the passage plus some overlap from the one before it.
struct PassageSpan {
  size_t context_begin = 0;
  size_t begin = 0;
  size_t end = 0;
};

// Counts the tokens of a piece of text (the model's tokenizer, without BOS).
using TokenCounter = std::function<int(std::string_view)>;

// Cuts `text` into passages of at most max_tokens tokens (as counted piece by piece, so a
// tokenizer that merges across word boundaries may differ by a token or two), breaking after
// whitespace and preferring the end of a sentence or line in the passage's last third. A word
// longer than max_tokens is cut between UTF-8 characters. Each passage after the first gets
// about overlap_tokens tokens of the previous passage as encoder context. `text` must be valid
// UTF-8; an empty text gives no passages.
std::vector<PassageSpan> SplitPassages(std::string_view text, int max_tokens, int overlap_tokens,
                                       const TokenCounter& count_tokens);

}  // namespace knowd
