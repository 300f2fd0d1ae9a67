// The only translation unit that includes libsentencepiece's headers (no Abseil here).
#include "train/tokenizer_train.h"

#include <sentencepiece_trainer.h>

#include <cstdio>
#include <fstream>
#include <unordered_map>

namespace knowd::train {
namespace {

class VectorIterator : public sentencepiece::SentenceIterator {
 public:
  explicit VectorIterator(const std::vector<std::string>& v) : v_(v) {}
  bool done() const override { return i_ >= v_.size(); }
  void Next() override { ++i_; }
  const std::string& value() const override { return v_[i_]; }
  sentencepiece::util::Status status() const override { return {}; }

 private:
  const std::vector<std::string>& v_;
  size_t i_ = 0;
};

}  // namespace

std::string TrainSentencePiece(const std::vector<std::string>& sentences,
                               const std::string& model_path,
                               const TokenizerTrainOptions& options) {
  const std::unordered_map<std::string, std::string> args = {
      {"model_type", "bpe"},
      {"vocab_size", std::to_string(options.vocab_size)},
      {"normalization_rule_name", "identity"},
      {"byte_fallback", "true"},
      {"character_coverage", "1.0"},
      {"num_threads", std::to_string(options.threads)},
      {"max_sentence_length", "16384"},
      {"minloglevel", "1"},
      {"unk_id", "0"},
      {"bos_id", "1"},
      {"eos_id", "2"},
      {"pad_id", "-1"},
  };
  VectorIterator it(sentences);
  std::string proto;
  const auto status = sentencepiece::SentencePieceTrainer::Train(args, &it, &proto);
  if (!status.ok()) return "SentencePiece training failed: " + status.ToString();
  const std::string tmp = model_path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out.write(proto.data(), static_cast<std::streamsize>(proto.size()));
    if (!out.good()) return tmp + ": write failed";
  }
  if (std::rename(tmp.c_str(), model_path.c_str()) != 0) return model_path + ": rename failed";
  return "";
}

}  // namespace knowd::train
