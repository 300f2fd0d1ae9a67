#include "train/pretrain.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "knowledge/prompt.h"
#include "nlohmann/json.hpp"
#include "train/export.h"

namespace knowd::train {
namespace {

using Clock = std::chrono::steady_clock;

std::string Normalize(std::string_view s) {
  std::string out =
      absl::AsciiStrToLower(absl::StripAsciiWhitespace(absl::string_view(s.data(), s.size())));
  while (!out.empty() && (out.back() == '.' || out.back() == ' ')) out.pop_back();
  return out;
}

int32_t NewlineId(const Tokenizer& tokenizer) {
  const std::vector<int32_t> ids = tokenizer.Encode("\n", false);
  return ids.empty() ? -1 : ids.back();
}

std::string CheckpointPath(const std::string& work_dir) { return work_dir + "/checkpoint.pt"; }
std::string StatePath(const std::string& work_dir) { return work_dir + "/checkpoint.json"; }

}  // namespace

ReadingCorpus::ReadingCorpus(SplitData data, std::shared_ptr<const Tokenizer> tokenizer)
    : data_(std::move(data)), tokenizer_(std::move(tokenizer)) {
  questions_of_.resize(data_.passages.size());
  for (size_t i = 0; i < data_.passages.size(); ++i) {
    passage_index_[data_.passages[i].id] = static_cast<int>(i);
  }
  std::map<std::string, std::set<std::string>> distinct;
  for (size_t q = 0; q < data_.questions.size(); ++q) {
    auto it = passage_index_.find(data_.questions[q].passage_id);
    if (it != passage_index_.end()) questions_of_[it->second].push_back(static_cast<int>(q));
    distinct[data_.questions[q].relation].insert(data_.questions[q].answer);
  }
  for (const auto& [relation, answers] : distinct) {
    for (const std::string& a : answers) {
      std::vector<std::string> words = absl::StrSplit(a, ' ');
      values_[relation][words.size()].push_back(std::move(words));
    }
  }
}

namespace {

// Replaces every whole-word occurrence of `from` in `text` by `to`.
std::string ReplaceWords(std::string text, const std::string& from, const std::string& to) {
  auto word_char = [&](size_t i) {
    return absl::ascii_isalnum(static_cast<unsigned char>(text[i]));
  };
  for (size_t at = text.find(from); at != std::string::npos;) {
    const size_t end = at + from.size();
    if ((at == 0 || !word_char(at - 1)) && (end == text.size() || !word_char(end))) {
      text.replace(at, from.size(), to);
      at = text.find(from, at + to.size());
    } else {
      at = text.find(from, at + 1);
    }
  }
  return text;
}

}  // namespace

ReadingCorpus::Example ReadingCorpus::Build(
    const std::string& context, const std::vector<std::pair<std::string, std::string>>& qa,
    float answer_weight) const {
  // SentencePiece never merges across a space, so the tokens of a prefix that ends before
  // " <answer>" are a prefix of the whole sequence's tokens: encoding the prefixes locates the
  // answers exactly.
  std::string text = context;
  std::vector<std::pair<size_t, size_t>> spans;  // answer token spans [begin, end)
  for (const auto& [question, answer] : qa) {
    text = knowledge::QaPrompt(text, question);
    const size_t begin = tokenizer_->Encode(text, true).size();
    text += " " + answer;
    const size_t end = tokenizer_->Encode(text, true).size();
    spans.emplace_back(begin, end);
  }
  Example ex;
  ex.tokens = tokenizer_->Encode(text, true);
  if (tokenizer_->eos_id() >= 0) ex.tokens.push_back(tokenizer_->eos_id());
  ex.weights.assign(ex.tokens.size(), 1.0f);
  ex.weights[0] = 0.0f;
  for (const auto& [begin, end] : spans) {
    // The answer and the token after it ("\n" of the next question, or EOS): where to stop.
    for (size_t i = begin; i <= end && i < ex.tokens.size(); ++i) ex.weights[i] += answer_weight;
  }
  return ex;
}

TrainBatch ReadingCorpus::Batch(std::mt19937_64& rng, int rows, int max_len, float answer_weight,
                                double distractor_fraction, double counterfactual_fraction) const {
  std::vector<Example> examples;
  while (static_cast<int>(examples.size()) < rows) {
    const int pi = static_cast<int>(BoundedDraw(rng, data_.passages.size()));
    const Passage& p = data_.passages[pi];
    std::string context = p.text;
    // relation -> candidate (question, answer) pairs
    std::map<std::string, std::vector<std::pair<std::string, std::string>>> by_relation;
    if (p.is_update) {
      auto it = passage_index_.find(p.updates);
      if (it == passage_index_.end()) continue;
      context = data_.passages[it->second].text + "\n" + p.text;
      for (int q : questions_of_[it->second]) {
        const Question& question = data_.questions[q];
        by_relation[question.relation].emplace_back(question.question, question.final_answer);
      }
    }
    for (int q : questions_of_[pi]) by_relation[data_.questions[q].relation].clear();
    for (int q : questions_of_[pi]) {
      const Question& question = data_.questions[q];
      by_relation[question.relation].emplace_back(question.question, question.answer);
    }
    std::vector<const decltype(by_relation)::value_type*> relations;  // (relation, its pairs)
    for (const auto& entry : by_relation) {
      if (!entry.second.empty()) relations.push_back(&entry);
    }
    if (relations.empty()) continue;
    // Update examples ask about a changed fact first.
    for (size_t i = relations.size(); i > 1; --i) {
      std::swap(relations[i - 1], relations[BoundedDraw(rng, i)]);
    }
    const size_t n = std::min<size_t>(relations.size(), 1 + BoundedDraw(rng, 3));
    std::vector<std::pair<std::string, std::string>> qa;
    for (size_t i = 0; i < n; ++i) {
      const auto& pairs = relations[i]->second;
      qa.push_back(pairs[BoundedDraw(rng, pairs.size())]);
    }
    if (counterfactual_fraction > 0 && !p.is_update && UnitDraw(rng) < counterfactual_fraction) {
      for (size_t i = 0; i < qa.size(); ++i) {
        std::string& answer = qa[i].second;
        if (context.find(answer) == std::string::npos) continue;
        const std::vector<std::string> words = absl::StrSplit(answer, ' ');
        const auto& pool = values_.at(relations[i]->first).at(words.size());
        std::vector<std::string> replaced;
        for (size_t w = 0; w < words.size(); ++w) {
          replaced.push_back(pool[BoundedDraw(rng, pool.size())][w]);
        }
        const std::string value = absl::StrJoin(replaced, " ");
        if (value == answer || context.find(value) != std::string::npos) continue;
        context = ReplaceWords(context, answer, value);
        answer = value;
      }
    }
    Example ex;  // no tokens: not built yet
    if (distractor_fraction > 0 && UnitDraw(rng) < distractor_fraction) {
      // The passage (with its original, for an update) keeps its place in a random order.
      std::vector<std::string> blocks = {context};
      const int extra = 1 + static_cast<int>(BoundedDraw(rng, 2));
      for (int tries = 0; static_cast<int>(blocks.size()) <= extra && tries < 20; ++tries) {
        const Passage& other = data_.passages[BoundedDraw(rng, data_.passages.size())];
        if (other.subject == p.subject) continue;
        blocks.insert(blocks.begin() + BoundedDraw(rng, blocks.size() + 1), other.text);
      }
      Example mixed = Build(absl::StrJoin(blocks, "\n"), qa, answer_weight);
      if (static_cast<int>(mixed.tokens.size()) <= max_len) ex = std::move(mixed);
    }
    if (ex.tokens.empty()) ex = Build(context, qa, answer_weight);
    while (static_cast<int>(ex.tokens.size()) > max_len && qa.size() > 1) {
      qa.pop_back();
      ex = Build(context, qa, answer_weight);
    }
    if (static_cast<int>(ex.tokens.size()) > max_len) continue;
    examples.push_back(std::move(ex));
  }
  TrainBatch batch;
  batch.rows = rows;
  for (const Example& ex : examples) {
    batch.cols = std::max(batch.cols, static_cast<int>(ex.tokens.size()));
  }
  batch.tokens.assign(static_cast<size_t>(rows) * batch.cols, 0);
  batch.weights.assign(static_cast<size_t>(rows) * batch.cols, 0.0f);
  for (int r = 0; r < rows; ++r) {
    std::copy(examples[r].tokens.begin(), examples[r].tokens.end(),
              batch.tokens.begin() + static_cast<size_t>(r) * batch.cols);
    std::copy(examples[r].weights.begin(), examples[r].weights.end(),
              batch.weights.begin() + static_cast<size_t>(r) * batch.cols);
  }
  return batch;
}

bool AnswerMatches(std::string_view predicted, std::string_view gold) {
  return Normalize(predicted) == Normalize(gold);
}

absl::StatusOr<ReadingScore> ScoreReading(LanguageModel& model, const Tokenizer& tokenizer,
                                          const SplitData& data, int questions) {
  std::unordered_map<std::string, const Passage*> passages;
  for (const Passage& p : data.passages) passages[p.id] = &p;
  const std::vector<int32_t> stop = {tokenizer.eos_id(), NewlineId(tokenizer)};
  ReadingScore score;
  int oracle = 0, closed = 0;
  for (const Question& q : data.questions) {
    if (score.questions >= questions) break;
    auto it = passages.find(q.passage_id);
    if (it == passages.end()) continue;
    std::string context = it->second->text;
    if (it->second->is_update) {
      auto orig = passages.find(it->second->updates);
      if (orig != passages.end()) context = orig->second->text + "\n" + context;
    }
    for (int mode = 0; mode < 2; ++mode) {
      const std::string prompt = mode == 0 ? knowledge::QaPrompt(context, q.question)
                                           : knowledge::QuestionPrompt(q.question);
      const std::vector<int32_t> ids = tokenizer.Encode(prompt, true);
      absl::StatusOr<std::vector<int32_t>> out = model.Greedy(ids, 12, stop);
      if (!out.ok()) return out.status();
      if (AnswerMatches(tokenizer.Decode(*out), q.answer)) ++(mode == 0 ? oracle : closed);
    }
    ++score.questions;
  }
  if (score.questions > 0) {
    score.oracle_em = double(oracle) / score.questions;
    score.closed_book_em = double(closed) / score.questions;
  }
  return score;
}

double ScheduledLr(const PretrainOptions& o, int step) {
  if (step < o.warmup) return o.lr * (step + 1) / o.warmup;
  const double progress = std::min(1.0, double(step - o.warmup) / std::max(1, o.steps - o.warmup));
  const double cosine = 0.5 * (1.0 + std::cos(M_PI * progress));
  return o.lr * (o.min_lr_ratio + (1.0 - o.min_lr_ratio) * cosine);
}

absl::Status RunPretrain(const PretrainOptions& options) {
  SetTorchThreads(options.threads);
  absl::StatusOr<std::unique_ptr<Tokenizer>> tok =
      LoadSentencePieceTokenizer(options.tokenizer_path);
  if (!tok.ok()) return tok.status();
  std::shared_ptr<const Tokenizer> tokenizer = *std::move(tok);
  absl::StatusOr<SplitData> train = ReadSplit(options.data_dir, Split::kPretrain);
  if (!train.ok()) return train.status();
  ReadingCorpus corpus(*std::move(train), tokenizer);

  LlamaConfig config = options.config;
  config.vocab_size = tokenizer->vocab_size();
  config.bos_token_id = tokenizer->bos_id();
  config.eos_token_id = tokenizer->eos_id();
  absl::StatusOr<std::unique_ptr<LanguageModel>> created =
      LanguageModel::Create(config, options.seed, options.optimizer);
  if (!created.ok()) return created.status();
  LanguageModel& model = **created;

  std::error_code ec;
  std::filesystem::create_directories(options.work_dir, ec);
  if (ec) return absl::InternalError(absl::StrCat(options.work_dir, ": ", ec.message()));
  if (absl::Status st = WriteHfConfigJson(config, options.work_dir + "/config.json"); !st.ok()) {
    return st;
  }
  int start = 0;
  if (options.resume && std::filesystem::exists(StatePath(options.work_dir))) {
    std::ifstream in(StatePath(options.work_dir));
    nlohmann::json state = nlohmann::json::parse(in, nullptr, false);
    if (!state.is_object() || !state.contains("step")) {
      return absl::InvalidArgumentError(StatePath(options.work_dir) + ": unreadable");
    }
    if (absl::Status st = model.LoadCheckpoint(CheckpointPath(options.work_dir)); !st.ok()) {
      return st;
    }
    start = state["step"].get<int>();
    std::printf("resumed at step %d\n", start);
  }
  std::printf(
      "model: %lld parameters (hidden %d, layers %d, heads %d/%d, ffn %d, vocab %d); "
      "%d steps of %d sequences\n",
      static_cast<long long>(model.ParameterCount()), config.hidden_size, config.num_layers,
      config.num_heads, config.num_kv_heads, config.intermediate_size, config.vocab_size,
      options.steps, options.batch);
  std::fflush(stdout);

  auto save = [&](int step) -> absl::Status {
    if (absl::Status st = model.SaveCheckpoint(CheckpointPath(options.work_dir)); !st.ok()) {
      return st;
    }
    std::ofstream out(StatePath(options.work_dir) + ".tmp", std::ios::trunc);
    out << nlohmann::json{{"step", step}, {"steps", options.steps}}.dump() << "\n";
    out.close();
    std::filesystem::rename(StatePath(options.work_dir) + ".tmp", StatePath(options.work_dir), ec);
    return ec ? absl::InternalError(ec.message()) : absl::OkStatus();
  };

  const auto t0 = Clock::now();
  auto window_start = t0;
  double window_loss = 0;
  int64_t window_tokens = 0;
  int window_steps = 0;
  for (int step = start; step < options.steps; ++step) {
    // One generator per step: a resumed run draws exactly the batches of an uninterrupted one.
    std::mt19937_64 rng(options.seed * 0x2545F4914F6CDD1Dull + static_cast<uint64_t>(step));
    const TrainBatch batch =
        corpus.Batch(rng, options.batch, options.max_len, static_cast<float>(options.answer_weight),
                     options.distractor_fraction, options.counterfactual_fraction);
    const double lr = ScheduledLr(options, step);
    absl::StatusOr<double> loss = model.TrainStep(batch, lr);
    if (!loss.ok()) return loss.status();
    if (!std::isfinite(*loss)) {
      return absl::InternalError(absl::StrCat("loss is ", *loss, " at step ", step));
    }
    window_loss += *loss;
    window_tokens +=
        std::count_if(batch.weights.begin(), batch.weights.end(), [](float w) { return w > 0; });
    ++window_steps;
    const bool last = step + 1 == options.steps;
    if ((step + 1) % options.log_every == 0 || last) {
      const auto now = Clock::now();
      const double window_s = std::chrono::duration<double>(now - window_start).count();
      const double per_step = window_s / window_steps;
      const double eta_s = per_step * (options.steps - step - 1);
      std::printf("step %d/%d  loss %.4f  lr %.2e  %.0f tokens/s  %.2f s/step  ETA %dm%02ds\n",
                  step + 1, options.steps, window_loss / window_steps, lr,
                  window_tokens / std::max(window_s, 1e-9), per_step, static_cast<int>(eta_s) / 60,
                  static_cast<int>(eta_s) % 60);
      std::fflush(stdout);
      window_start = now;
      window_loss = 0;
      window_tokens = 0;
      window_steps = 0;
    }
    if ((step + 1) % options.checkpoint_every == 0 || last) {
      if (absl::Status st = save(step + 1); !st.ok()) return st;
    }
  }

  const std::string bundle =
      options.bundle_dir.empty() ? options.work_dir + "/bundle" : options.bundle_dir;
  ExportOptions export_options;
  export_options.tokenizer_model = options.tokenizer_path;
  if (absl::Status st = ExportBundle(model, bundle, export_options); !st.ok()) return st;
  std::printf("exported %s (f32)\n", bundle.c_str());

  if (options.eval_questions > 0) {
    absl::StatusOr<SplitData> valid = ReadSplit(options.data_dir, Split::kValid);
    if (!valid.ok()) return valid.status();
    absl::StatusOr<ReadingScore> score =
        ScoreReading(model, *tokenizer, *valid, options.eval_questions);
    if (!score.ok()) return score.status();
    std::printf("valid: %d questions  oracle EM %.3f  closed-book EM %.3f\n", score->questions,
                score->oracle_em, score->closed_book_em);
  }
  std::printf("done in %.1f s\n", std::chrono::duration<double>(Clock::now() - t0).count());
  return absl::OkStatus();
}

}  // namespace knowd::train
