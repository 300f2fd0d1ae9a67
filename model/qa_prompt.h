// The question-answering prompt format knowd-tiny was trained on, shared by the daemon and the
// evaluation (train/world.h states the same format for training data):
//   <context>\nQ: <question>\nA:
// where <context> is one or more passage texts joined by "\n", oldest first; without context the
// prompt is "Q: <question>\nA:". The model continues with " <answer>" then "\n" or EOS.
#pragma once

#include <span>
#include <string>
#include <string_view>

namespace knowd {

std::string QaPrompt(std::string_view context, std::string_view question);

// The passages joined by "\n" (the <context> above).
std::string JoinPassages(std::span<const std::string_view> passages);

}  // namespace knowd
