// knowd-train-spm: the tokenizer step of knowd-train, in its own process (libsentencepiece's
// bundled protobuf runtime cannot share one with libtorch). `knowd-train tokenizer` runs it.
#include <cstdio>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "train/tokenizer_train.h"
#include "train/world.h"

ABSL_FLAG(std::string, data, "", "directory written by `knowd-train data`");
ABSL_FLAG(std::string, out, "", "the tokenizer.model to write");
ABSL_FLAG(int, vocab_size, 1024, "vocabulary size");
ABSL_FLAG(int, threads, 2, "trainer threads");

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  const std::string data = absl::GetFlag(FLAGS_data), out = absl::GetFlag(FLAGS_out);
  if (data.empty() || out.empty()) {
    std::fprintf(stderr, "knowd-train tokenizer: --data and --out are required\n");
    return 2;
  }
  // The pretraining split in the prompt format's pieces: passages, "Q: ..." and "A: ..." lines.
  absl::StatusOr<knowd::train::SplitData> split =
      knowd::train::ReadSplit(data, knowd::train::Split::kPretrain);
  if (!split.ok()) {
    std::fprintf(stderr, "knowd-train tokenizer: %s\n",
                 std::string(split.status().message()).c_str());
    return 1;
  }
  std::vector<std::string> sentences;
  for (const auto& p : split->passages) sentences.push_back(p.text);
  for (const auto& q : split->questions) {
    sentences.push_back("Q: " + q.question);
    sentences.push_back("A: " + q.answer);
  }
  knowd::train::TokenizerTrainOptions options;
  options.vocab_size = absl::GetFlag(FLAGS_vocab_size);
  options.threads = absl::GetFlag(FLAGS_threads);
  const std::string error = knowd::train::TrainSentencePiece(sentences, out, options);
  if (!error.empty()) {
    std::fprintf(stderr, "knowd-train tokenizer: %s\n", error.c_str());
    return 1;
  }
  std::printf("wrote %s (vocabulary %d, %zu training lines)\n", out.c_str(), options.vocab_size,
              sentences.size());
  return 0;
}
