// SQuAD scoring for knowd eval (bench/eval.h): the official normalisation, exact match, token F1.
#include <cctype>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "bench/eval.h"

namespace knowd::bench {
namespace {

bool IsPunctuation(unsigned char c) { return c < 0x80 && std::ispunct(c); }
bool IsWordByte(unsigned char c) { return c >= 0x80 || std::isalnum(c) || c == '_'; }
bool IsSpace(unsigned char c) { return c < 0x80 && std::isspace(c); }

std::vector<std::string> SplitWhitespace(std::string_view s) {
  std::vector<std::string> out;
  size_t i = 0;
  while (i < s.size()) {
    while (i < s.size() && IsSpace(s[i])) ++i;
    size_t j = i;
    while (j < s.size() && !IsSpace(s[j])) ++j;
    if (j > i) out.emplace_back(s.substr(i, j - i));
    i = j;
  }
  return out;
}

}  // namespace

std::string NormalizeAnswer(std::string_view text) {
  std::string s;
  s.reserve(text.size());
  for (char ch : text) {
    const unsigned char c = static_cast<unsigned char>(ch);
    if (IsPunctuation(c)) continue;
    s.push_back(c < 0x80 ? static_cast<char>(std::tolower(c)) : ch);
  }
  // \b(a|an|the)\b -> " ": a whole run of word characters equal to an article.
  std::string no_articles;
  no_articles.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    if (!IsWordByte(s[i])) {
      no_articles.push_back(s[i++]);
      continue;
    }
    size_t j = i;
    while (j < s.size() && IsWordByte(s[j])) ++j;
    const std::string_view word(s.data() + i, j - i);
    if (word == "a" || word == "an" || word == "the") {
      no_articles.push_back(' ');
    } else {
      no_articles.append(word);
    }
    i = j;
  }
  std::string out;
  for (const std::string& token : SplitWhitespace(no_articles)) {
    absl::StrAppend(&out, out.empty() ? "" : " ", token);
  }
  return out;
}

bool ExactMatch(std::string_view prediction, std::string_view gold) {
  return NormalizeAnswer(prediction) == NormalizeAnswer(gold);
}

double TokenF1(std::string_view prediction, std::string_view gold) {
  const std::vector<std::string> p = SplitWhitespace(NormalizeAnswer(prediction));
  const std::vector<std::string> g = SplitWhitespace(NormalizeAnswer(gold));
  if (p.empty() || g.empty()) return p == g ? 1.0 : 0.0;
  std::unordered_map<std::string, int> gold_counts;
  for (const std::string& t : g) ++gold_counts[t];
  int same = 0;
  for (const std::string& t : p) {
    auto it = gold_counts.find(t);
    if (it != gold_counts.end() && it->second > 0) {
      --it->second;
      ++same;
    }
  }
  if (same == 0) return 0.0;
  const double precision = static_cast<double>(same) / p.size();
  const double recall = static_cast<double>(same) / g.size();
  return 2.0 * precision * recall / (precision + recall);
}

void AnswerScore::Add(std::string_view prediction, std::string_view gold) {
  ++count_;
  exact_ += ExactMatch(prediction, gold) ? 1.0 : 0.0;
  f1_ += TokenF1(prediction, gold);
}

}  // namespace knowd::bench
