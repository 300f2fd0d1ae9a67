// The question-answering prompt: the one format knowd-tiny was trained on (knowd-train writes its
// training data with these functions) and the one the daemon and the evaluation ask with.
//
//   QaPrompt(context, question)  "<context>\nQ: <question>\nA:"
//   QaPrompt("", question)       "Q: <question>\nA:"   (= QuestionPrompt(question))
//
// <context> is one or more passage texts joined by "\n" (JoinPassages), oldest first. The model
// continues with " <answer>" then "\n" or EOS. The adapter's question encoder reads
// QuestionPrompt(question) with BOS; after a MAC prefix the reader reads the prompt without BOS
// (the prefix's row 0 stands for it).
#pragma once

#include <span>
#include <string>
#include <string_view>

namespace knowd::knowledge {

std::string QaPrompt(std::string_view context, std::string_view question);

// The prompt without context: what the question encoder reads and what mac mode answers after.
std::string QuestionPrompt(std::string_view question);

// The passages joined by "\n" (the <context> above).
std::string JoinPassages(std::span<const std::string_view> passages);

}  // namespace knowd::knowledge
