#include "knowledge/prompt.h"

#include "absl/strings/str_cat.h"

namespace knowd::knowledge {

std::string QaPrompt(std::string_view context, std::string_view question) {
  if (context.empty()) return QuestionPrompt(question);
  return absl::StrCat(std::string(context), "\nQ: ", std::string(question), "\nA:");
}

std::string QuestionPrompt(std::string_view question) {
  return absl::StrCat("Q: ", std::string(question), "\nA:");
}

std::string JoinPassages(std::span<const std::string_view> passages) {
  std::string out;
  for (std::string_view p : passages) {
    if (!out.empty()) out += '\n';
    out.append(p);
  }
  return out;
}

}  // namespace knowd::knowledge
