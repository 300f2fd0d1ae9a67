// Helpers for the tokenizer tests: shipped vocabulary paths, llama.cpp's tokenizer test vectors,
// and readable dumps of ids and text.
#pragma once

#include <stdlib.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "gtest/gtest.h"
#include "tests/model/formats_test_util.h"

namespace knowd::tokenizer_testing {

// Shipped model paths, file bytes and scratch directories are shared with the format tests.
using knowd::testing::ReadBytes;
using knowd::testing::ScratchDir;
using knowd::testing::StoriesGguf;
using knowd::testing::StoriesHfDir;
using knowd::testing::WriteBytes;

inline std::string SourcePath(std::string_view relative) {
  return std::string(KNOWD_SOURCE_DIR) + "/" + std::string(relative);
}
inline std::string SpmVocabGguf() {
  return SourcePath("tests/data/tokenizers/ggml-vocab-llama-spm.gguf");
}
inline std::string Gpt2VocabGguf() {
  return SourcePath("tests/data/tokenizers/ggml-vocab-gpt-2.gguf");
}
inline std::string StoriesTokenizerModel() { return StoriesHfDir() + "/tokenizer.model"; }

struct VocabCase {
  std::string input;
  std::vector<int32_t> ids;
};

// llama.cpp's test-tokenizer-0 vectors: `<vocab>.inp` holds each input followed by
// "\n__ggml_vocab_test__\n" (so an input may itself be empty or consist of newlines);
// `<vocab>.out` holds one line of space-separated ids (no BOS) per input. Returns an empty list,
// with a test failure, when the two files disagree on the number of cases.
inline std::vector<VocabCase> ReadVocabCases(const std::string& vocab_path) {
  const std::string inp = ReadBytes(vocab_path + ".inp");
  const std::string out = ReadBytes(vocab_path + ".out");
  constexpr std::string_view kSeparator = "\n__ggml_vocab_test__\n";
  std::vector<std::string> inputs;
  size_t start = 0;
  for (size_t hit = inp.find(kSeparator); hit != std::string::npos;
       hit = inp.find(kSeparator, start)) {
    inputs.push_back(inp.substr(start, hit - start));
    start = hit + kSeparator.size();
  }
  EXPECT_EQ(start, inp.size()) << "text after the last separator in " << vocab_path << ".inp";

  std::vector<std::vector<int32_t>> expected;
  std::istringstream lines(out);
  for (std::string line; std::getline(lines, line);) {
    std::istringstream fields(line);
    std::vector<int32_t> ids;
    for (int32_t id; fields >> id;) ids.push_back(id);
    expected.push_back(std::move(ids));
  }
  if (inputs.size() != expected.size()) {
    ADD_FAILURE() << vocab_path << ": " << inputs.size() << " inputs but " << expected.size()
                  << " id lines";
    return {};
  }
  std::vector<VocabCase> cases;
  for (size_t i = 0; i < inputs.size(); ++i) cases.push_back({inputs[i], expected[i]});
  return cases;
}

// (StrCat rather than operator+: GCC 12 warns falsely on "literal" + std::string.)
inline std::string Ids(const std::vector<int32_t>& ids) {
  return absl::StrCat("[", absl::StrJoin(ids, " "), "]");
}

inline std::string Quoted(std::string_view text) {
  return absl::StrCat("\"", absl::CHexEscape(absl::string_view(text.data(), text.size())), "\"");
}

// Random text that stresses tokenizers: runs of spaces, tabs and newlines, ASCII words and
// digits, punctuation and apostrophes, Latin-1, Cyrillic, CJK, combining marks, emoji, the
// SentencePiece space symbol itself, and (when `malformed`) bytes that are not UTF-8.
inline std::string RandomText(std::mt19937& rng, bool malformed) {
  // clang-format off
  static const std::vector<std::string> kAtoms = {
      " ",      "  ",     "\t",        "\n",      "\n\n",        "\r\n",     "a",
      "e",      "the",    "Hello",     "world",   "Lily",        "once",     "ing",
      "0",      "42",     "1314151",   ".",       ",",           "!",        "?",
      "'s",     "'ll",    "'",         "\"",      "(",           ")",        "-",
      "--",     "...",    "é",         "ü",       "ß",           "Ž",        "привет",
      "на",     "我",     "想在",      "工作",    "\xCC\x81",    "🙂",       "🦙",
      "😶‍🌫️", "✅",      "\xE2\x96\x81", "<s>",  "</s>",        "<unk>",    "\xC2\xA0",
      "\xE3\x80\x80", "~", "ｱ",        "ក",       "\xF0\x9F\x98\x81"};
  static const std::vector<std::string> kMalformed = {"\xFF", "\xC3", "\x80", "\xE2\x96",
                                                      "\xF0\x9F\x98", "\xED\xA0\x80", "\xC0\xAF"};
  // clang-format on
  std::uniform_int_distribution<int> length(0, 24);
  std::uniform_int_distribution<size_t> pick(0, kAtoms.size() - 1);
  std::uniform_int_distribution<size_t> pick_bad(0, kMalformed.size() - 1);
  std::uniform_int_distribution<int> percent(0, 99);
  std::string text;
  for (int n = length(rng), i = 0; i < n; ++i) {
    text += malformed && percent(rng) < 8 ? kMalformed[pick_bad(rng)] : kAtoms[pick(rng)];
  }
  return text;
}

}  // namespace knowd::tokenizer_testing
