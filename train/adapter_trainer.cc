// The adapter's trainer (train/adapter.h): the data rows and batching of a step, the training
// step, scoring, checkpoints and `knowd-train adapter`. The networks are in adapter_networks.h.
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <optional>
#include <random>

#include "absl/strings/str_cat.h"
#include "kernels/math.h"
#include "knowledge/prompt.h"
#include "nlohmann/json.hpp"
#include "train/adapter.h"
#include "train/adapter_networks.h"
#include "train/lm_torch.h"
#include "train/pretrain.h"

namespace knowd::train {
namespace {

using adapter_internal::Pad;
using internal::TorchAccess;
using internal::TorchError;
using Clock = std::chrono::steady_clock;

int32_t NewlineId(const Tokenizer& tokenizer) {
  const std::vector<int32_t> ids = tokenizer.Encode("\n", false);
  return ids.empty() ? -1 : ids.back();
}

// The prompt format (knowledge/prompt.h). The question encoder reads QuestionPrompt with BOS;
// after the prefix (whose row 0 stands for BOS) it follows without.
using knowledge::JoinPassages;
using knowledge::QaPrompt;
using knowledge::QuestionPrompt;

// One question of a step: the student's tokens (prompt + answer + EOS after the prefix), the
// teacher's (passage + the same), and where the answer starts in the student's tokens.
struct QuestionRow {
  std::vector<int32_t> student;  // no BOS: the prefix's sink row stands for it
  std::vector<int32_t> teacher;
  std::vector<int32_t> encoder;  // "<BOS>Q: <question>\nA:" for the question encoder
  size_t answer_begin = 0;
  int gold = 0;           // passage slot in the step
  bool has_text = false;  // the student reads a passage's text after the prefix
};

// `text`: the context the student reads after the prefix (empty: the question prompt alone).
QuestionRow BuildRow(const Tokenizer& tok, const std::string& passage, const Question& q, int gold,
                     std::string_view text = {}) {
  QuestionRow row;
  row.encoder = tok.Encode(QuestionPrompt(q.question), true);
  const std::string prompt = text.empty() ? QuestionPrompt(q.question) : QaPrompt(text, q.question);
  row.answer_begin = tok.Encode(prompt, false).size();
  row.student = tok.Encode(prompt + " " + q.answer, false);
  row.teacher = tok.Encode(QaPrompt(passage, q.question) + " " + q.answer, true);
  if (tok.eos_id() >= 0) {
    row.student.push_back(tok.eos_id());
    row.teacher.push_back(tok.eos_id());
  }
  row.gold = gold;
  row.has_text = !text.empty();
  return row;
}

std::vector<int32_t> PassageTokens(const Tokenizer& tok, const std::string& text, int max_tokens) {
  std::vector<int32_t> ids = tok.Encode(text, true);
  if (static_cast<int>(ids.size()) > max_tokens) ids.resize(max_tokens);
  return ids;
}

}  // namespace

// ---- corpus ------------------------------------------------------------------------------------

AdapterCorpus::AdapterCorpus(SplitData data, std::shared_ptr<const Tokenizer> tokenizer)
    : data_(std::move(data)), tokenizer_(std::move(tokenizer)) {
  std::unordered_map<std::string, int> index;
  for (size_t i = 0; i < data_.passages.size(); ++i) index[data_.passages[i].id] = int(i);
  questions_of_.resize(data_.passages.size());
  passage_of_.assign(data_.questions.size(), -1);
  for (size_t q = 0; q < data_.questions.size(); ++q) {
    auto it = index.find(data_.questions[q].passage_id);
    if (it == index.end()) continue;
    passage_of_[q] = it->second;
    questions_of_[it->second].push_back(static_cast<int>(q));
  }
  for (size_t p = 0; p < data_.passages.size(); ++p) {
    if (!questions_of_[p].empty()) answerable_.push_back(static_cast<int>(p));
    passages_of_subject_[data_.passages[p].subject].push_back(static_cast<int>(p));
  }
  for (auto& [subject, ps] : passages_of_subject_) {
    std::stable_sort(ps.begin(), ps.end(), [&](int a, int b) {
      return data_.passages[a].stream_position < data_.passages[b].stream_position;
    });
  }
}

std::vector<int> AdapterCorpus::history_of(int p) const {
  const Passage& passage = data_.passages[p];
  std::vector<int> out;
  for (int other : passages_of_subject_.at(passage.subject)) {
    if (data_.passages[other].stream_position <= passage.stream_position) out.push_back(other);
  }
  return out;
}

// ---- training step and scoring ------------------------------------------------------------------

absl::StatusOr<AdapterLosses> Adapter::Impl::Step(const AdapterCorpus& corpus,
                                                  const AdapterTrainOptions& o, int step,
                                                  int candidates, bool train, double lr) {
  const Tokenizer& tok = corpus.tokenizer();
  const SplitData& data = corpus.data();
  if (corpus.answerable().size() < 2) {
    return absl::InvalidArgumentError("adapter training needs >= 2 passages with questions");
  }
  const int batch = std::min<int>(o.batch, static_cast<int>(corpus.answerable().size()));
  candidates = std::clamp(candidates, 1, std::min(batch, config.max_candidates));
  std::mt19937_64 rng(o.seed * 0x9E3779B97F4A7C15ull + static_cast<uint64_t>(step));

  // Distinct passages (by subject: two passages about one person would be ambiguous negatives).
  std::vector<int> chosen;
  std::vector<std::string> subjects;
  for (int tries = 0; static_cast<int>(chosen.size()) < batch && tries < batch * 20; ++tries) {
    const int p = corpus.answerable()[BoundedDraw(rng, corpus.answerable().size())];
    const std::string& subject = data.passages[p].subject;
    if (std::find(subjects.begin(), subjects.end(), subject) != subjects.end()) continue;
    chosen.push_back(p);
    subjects.push_back(subject);
  }
  if (chosen.size() < 2) return absl::InternalError("could not draw distinct passages");
  const int b = static_cast<int>(chosen.size());
  candidates = std::min(candidates, b);
  std::vector<std::vector<int32_t>> passages;
  std::vector<QuestionRow> rows;
  // The text draws have their own stream: the step's passages and questions do not depend on them.
  std::mt19937_64 text_rng(o.seed * 0xD1B54A32D192ED03ull + static_cast<uint64_t>(step));
  for (int i = 0; i < b; ++i) {
    const Passage& p = data.passages[chosen[i]];
    passages.push_back(PassageTokens(tok, p.text, o.max_passage_tokens));
    std::vector<int> qs = corpus.questions_of(chosen[i]);
    for (size_t j = qs.size(); j > 1; --j) std::swap(qs[j - 1], qs[BoundedDraw(rng, j)]);
    for (int j = 0; j < std::min<int>(o.questions_per_passage, qs.size()); ++j) {
      std::string text;
      if (o.text_fraction > 0 && UnitDraw(text_rng) < o.text_fraction) {
        int shown = i;
        if (UnitDraw(text_rng) < o.text_distractor_fraction) {
          shown = (i + 1 + static_cast<int>(BoundedDraw(text_rng, b - 1))) % b;
        }
        if (o.text_subject_history) {
          std::vector<std::string_view> texts;
          for (int h : corpus.history_of(chosen[shown])) texts.push_back(data.passages[h].text);
          text = JoinPassages(texts);
        } else {
          text = data.passages[chosen[shown]].text;
        }
      }
      rows.push_back(BuildRow(tok, p.text, data.questions[qs[j]], i, text));
    }
  }
  const int nq = static_cast<int>(rows.size());
  // Rows with text after the prefix are several times longer: they go last and run as their own
  // group, so the short rows are not padded to their length.
  std::stable_partition(rows.begin(), rows.end(), [](const QuestionRow& r) { return !r.has_text; });
  std::vector<std::pair<int, int>> groups;
  for (int lo = 0, hi = 0; lo < nq; lo = hi) {
    while (hi < nq && rows[hi].has_text == rows[lo].has_text) ++hi;
    groups.emplace_back(lo, hi);
  }

  if (o.rag_head_only && !config.rag_head) {
    return absl::InvalidArgumentError("training the mac+rag head alone needs an adapter with one");
  }
  try {
    if (train) {
      net->train();
      // With rag_head_only everything but the mac+rag head is frozen: no gradient, so AdamW
      // leaves it (and its decay) alone.
      for (auto& p : net->named_parameters()) {
        const bool learns = !o.rag_head_only || p.key().starts_with("rag_");
        p.value().set_requires_grad(learns);
        if (!learns) p.value().mutable_grad() = torch::Tensor();
      }
    } else {
      net->eval();
    }
    std::optional<torch::NoGradGuard> no_grad;
    if (!train) no_grad.emplace();

    // Teacher: the frozen LM reading the passage in context.
    std::vector<std::vector<int32_t>> teacher_rows, student_rows, prompts;
    for (const QuestionRow& r : rows) {
      teacher_rows.push_back(r.teacher);
      student_rows.push_back(r.student);
      prompts.push_back(r.encoder);
    }
    torch::Tensor teacher_logits;
    {
      torch::NoGradGuard teacher_no_grad;
      teacher_logits = TorchAccess::Forward(*base, Pad(teacher_rows, lm.eos_token_id, false).first,
                                            {}, {}, nullptr);
    }

    auto [z, passage_keys] = EncodePassages(passages);   // [b, T, d], [b, key]
    auto [q, question_keys] = EncodeQuestions(prompts);  // [nq, T, d], [nq, key]
    auto scores = net->Scale() * torch::matmul(question_keys, passage_keys.t());  // [nq, b]
    std::vector<int64_t> gold(nq);
    for (int i = 0; i < nq; ++i) gold[i] = rows[i].gold;
    auto gold_t = torch::tensor(gold);
    auto contrastive = torch::nn::functional::cross_entropy(scores, gold_t);
    const double retrieval_acc =
        scores.detach().argmax(-1).eq(gold_t).to(torch::kFloat64).mean().item<double>();

    // Candidates: the gold passage and the hardest in-batch negatives, in shuffled order.
    auto sd = scores.detach();
    std::vector<int64_t> cand(static_cast<size_t>(nq) * candidates);
    std::vector<float> keep_grad(cand.size(), 1.0f);
    for (int i = 0; i < nq; ++i) {
      std::vector<int> order(b);
      std::iota(order.begin(), order.end(), 0);
      auto row = sd[i].contiguous();
      const float* r = row.data_ptr<float>();
      std::stable_sort(order.begin(), order.end(), [&](int x, int y) { return r[x] > r[y]; });
      std::vector<int64_t> mine = {gold[i]};
      for (int p : order) {
        if (static_cast<int>(mine.size()) >= candidates) break;
        if (p != gold[i]) mine.push_back(p);
      }
      for (size_t j = mine.size(); j > 1; --j) std::swap(mine[j - 1], mine[BoundedDraw(rng, j)]);
      for (int j = 0; j < candidates; ++j) {
        cand[i * candidates + j] = mine[j];
        if (train && mine[j] != gold[i] && UnitDraw(rng) < o.backprop_dropout) {
          keep_grad[i * candidates + j] = 0.0f;
        }
      }
    }
    auto cand_t = torch::tensor(cand).view({nq, candidates});
    auto keep = torch::tensor(keep_grad).view({nq, candidates, 1, 1});
    auto flat = cand_t.flatten();
    auto zc = z.index_select(0, flat).view({nq, candidates, z.size(1), z.size(2)});
    auto zc_detached = z.detach().index_select(0, flat).view_as(zc);
    zc = keep * zc + (1 - keep) * zc_detached;  // backprop dropout
    auto sc = scores.gather(1, cand_t);

    auto sink = [&](const torch::Tensor& x, int64_t n) {
      return x.unsqueeze(0).unsqueeze(2).expand(
          {n, lm.num_layers, 1, lm.num_kv_heads, lm.head_dim});
    };
    // Per group: the answer tokens' log-probabilities (answer NLL), the shared question/answer
    // tokens' (distillation), and the closed-book reference (the sink row as the only prefix).
    std::vector<int64_t> ans_row, ans_tpos, ans_target, kd_row, kd_tpos;
    std::vector<torch::Tensor> picked_parts, student_kd_parts, book_parts;
    for (const auto& [lo, hi] : groups) {
      const std::vector<std::vector<int32_t>> part(student_rows.begin() + lo,
                                                   student_rows.begin() + hi);
      auto tokens = Pad(part, lm.eos_token_id, false).first;
      auto [pk, pv] = net->Modulate(q.slice(0, lo, hi), zc.slice(0, lo, hi), sc.slice(0, lo, hi),
                                    rows[lo].has_text);
      auto logits = TorchAccess::Forward(*base, tokens, pk, pv, nullptr);  // [hi - lo, S, V]
      auto log_probs = torch::log_softmax(logits, -1);
      std::vector<int64_t> a_row, a_pos, k_row, k_pos;
      for (int i = lo; i < hi; ++i) {
        const QuestionRow& r = rows[i];
        // The student's position j sits at j + shift in the teacher's sequence.
        const int64_t shift = static_cast<int64_t>(r.teacher.size()) - r.student.size();
        for (size_t j = r.answer_begin; j < r.student.size(); ++j) {
          ans_row.push_back(i);
          ans_tpos.push_back(static_cast<int64_t>(j) - 1 + shift);
          a_row.push_back(i - lo);
          a_pos.push_back(static_cast<int64_t>(j) - 1);
          ans_target.push_back(r.student[j]);
        }
        // The question and answer tokens both sequences share (a common suffix: the first word
        // "Q:" may be tokenized differently after a passage).
        size_t common = 0;
        while (common + 1 < r.student.size() && common + 1 < r.teacher.size() &&
               r.student[r.student.size() - 1 - common] ==
                   r.teacher[r.teacher.size() - 1 - common]) {
          ++common;
        }
        for (size_t j = r.student.size() - common; j < r.student.size(); ++j) {
          kd_row.push_back(i);
          k_row.push_back(i - lo);
          k_pos.push_back(static_cast<int64_t>(j) - 1);
          kd_tpos.push_back(static_cast<int64_t>(j) - 1 + shift);
        }
      }
      picked_parts.push_back(log_probs.index({torch::tensor(a_row), torch::tensor(a_pos)}));
      student_kd_parts.push_back(log_probs.index({torch::tensor(k_row), torch::tensor(k_pos)}));
      torch::NoGradGuard reference_no_grad;
      auto book = torch::log_softmax(
          TorchAccess::Forward(*base, tokens, sink(net->expander->sink_keys, hi - lo),
                               sink(net->expander->sink_values, hi - lo), nullptr),
          -1);
      book_parts.push_back(book.index({torch::tensor(a_row), torch::tensor(a_pos)}));
    }
    auto target = torch::tensor(ans_target).unsqueeze(1);
    auto answer_nll = -torch::cat(picked_parts).gather(1, target).mean();
    auto student_kd = torch::cat(student_kd_parts);
    auto teacher_kd = torch::log_softmax(
        teacher_logits.index({torch::tensor(kd_row), torch::tensor(kd_tpos)}), -1);
    auto distill = (teacher_kd.exp() * (teacher_kd - student_kd)).sum(-1).mean();
    auto total = answer_nll + o.distill_weight * distill + o.contrastive_weight * contrastive;

    torch::Tensor context_nll, closed_book_nll;
    {
      torch::NoGradGuard reference_no_grad;
      auto t = torch::log_softmax(
          teacher_logits.index({torch::tensor(ans_row), torch::tensor(ans_tpos)}), -1);
      context_nll = -t.gather(1, target).mean();
      closed_book_nll = -torch::cat(book_parts).gather(1, target).mean();
    }

    AdapterLosses out;
    out.total = total.item<double>();
    out.answer_nll = answer_nll.item<double>();
    out.distill = distill.item<double>();
    out.contrastive = contrastive.item<double>();
    out.retrieval_acc = retrieval_acc;
    out.context_nll = context_nll.item<double>();
    out.closed_book_nll = closed_book_nll.item<double>();
    if (train) {
      if (weight_decay != o.weight_decay) {
        // A different decay than the current optimizer's: rebuild it (only before any step).
        MakeOptimizer(o.weight_decay);
      }
      for (auto& group : optimizer->param_groups()) {
        static_cast<torch::optim::AdamWOptions&>(group.options()).lr(lr);
      }
      optimizer->zero_grad();
      total.backward();
      if (o.grad_clip > 0) torch::nn::utils::clip_grad_norm_(net->parameters(), o.grad_clip);
      optimizer->step();
    }
    return out;
  } catch (const std::exception& e) {
    return TorchError("adapter step", e);
  }
}

absl::StatusOr<AdapterLosses> Adapter::TrainStep(const AdapterCorpus& corpus,
                                                 const AdapterTrainOptions& options, int step,
                                                 double lr, int candidates) {
  return impl_->Step(corpus, options, step, candidates, true, lr);
}

absl::StatusOr<AdapterLosses> Adapter::Loss(const AdapterCorpus& corpus,
                                            const AdapterTrainOptions& options, int step,
                                            int candidates) {
  return impl_->Step(corpus, options, step, candidates, false, 0);
}

absl::StatusOr<AdapterScore> Adapter::Score(const AdapterCorpus& corpus, int questions, int top_k,
                                            uint64_t seed, int max_passage_tokens) {
  const Tokenizer& tok = corpus.tokenizer();
  const SplitData& data = corpus.data();
  AdapterScore score;
  score.top_k = top_k = std::clamp(top_k, 1, impl_->config.max_candidates);
  if (data.passages.empty()) return score;
  try {
    torch::NoGradGuard no_grad;
    impl_->net->eval();
    // Every passage of the split, encoded once (the bank).
    std::vector<torch::Tensor> zs, ks;
    for (size_t i = 0; i < data.passages.size(); i += 16) {
      std::vector<std::vector<int32_t>> chunk;
      for (size_t j = i; j < std::min(data.passages.size(), i + 16); ++j) {
        chunk.push_back(PassageTokens(tok, data.passages[j].text, max_passage_tokens));
      }
      auto [z, k] = impl_->EncodePassages(chunk);
      zs.push_back(z);
      ks.push_back(k);
    }
    auto bank_z = torch::cat(zs, 0), bank_k = torch::cat(ks, 0);
    const int64_t n = bank_z.size(0);
    const std::vector<int32_t> stop = {tok.eos_id(), NewlineId(tok)};
    std::mt19937_64 rng(seed);
    int gold_hits = 0, distractor_hits = 0, retrieved_hits = 0, r1 = 0, rk = 0;
    auto answer = [&](const torch::Tensor& q, const torch::Tensor& qkey,
                      const std::vector<int64_t>& cands, const std::vector<int32_t>& prompt) {
      auto idx = torch::tensor(cands);
      auto z = bank_z.index_select(0, idx).unsqueeze(0);
      auto s = impl_->net->Scale() * torch::matmul(qkey, bank_k.index_select(0, idx).t());
      auto a = impl_->net->aggregator->forward(q, z, s);
      auto [pk, pv] = impl_->net->expander->forward(a);
      return tok.Decode(impl_->Greedy(pk, pv, prompt, stop));
    };
    for (size_t qi = 0; qi < data.questions.size() && score.questions < questions; ++qi) {
      const int gold = corpus.passage_of(static_cast<int>(qi));
      if (gold < 0) continue;
      const Question& question = data.questions[qi];
      const std::vector<int32_t> prompt = tok.Encode(QuestionPrompt(question.question), false);
      auto [q, qkey] =
          impl_->EncodeQuestions({tok.Encode(QuestionPrompt(question.question), true)});
      const std::string gold_answer = answer(q, qkey, {gold}, prompt);
      if (AnswerMatches(gold_answer, question.answer)) ++gold_hits;
      std::vector<int64_t> cands = {gold};
      for (int tries = 0;
           static_cast<int>(cands.size()) < std::min<int64_t>(top_k, n) && tries < 100 * top_k;
           ++tries) {
        const auto p = static_cast<int64_t>(BoundedDraw(rng, n));
        if (std::find(cands.begin(), cands.end(), p) != cands.end() ||
            data.passages[p].subject == data.passages[gold].subject) {
          continue;
        }
        cands.push_back(p);
      }
      for (size_t j = cands.size(); j > 1; --j) std::swap(cands[j - 1], cands[BoundedDraw(rng, j)]);
      if (AnswerMatches(answer(q, qkey, cands, prompt), question.answer)) ++distractor_hits;
      auto sims = torch::matmul(qkey, bank_k.t())[0];
      auto top = std::get<1>(sims.topk(std::min<int64_t>(top_k, n)));
      std::vector<int64_t> retrieved(top.data_ptr<int64_t>(),
                                     top.data_ptr<int64_t>() + top.numel());
      if (retrieved[0] == gold) ++r1;
      if (std::find(retrieved.begin(), retrieved.end(), gold) != retrieved.end()) ++rk;
      const std::string retrieved_answer = answer(q, qkey, retrieved, prompt);
      if (AnswerMatches(retrieved_answer, question.answer)) ++retrieved_hits;
      if (score.examples.size() < 8) {
        score.examples.push_back(absl::StrCat(question.question, " => ", gold_answer, " | ",
                                              retrieved_answer, " (", question.answer, ")"));
      }
      ++score.questions;
    }
    if (score.questions > 0) {
      const double nq = score.questions;
      score.gold_em = gold_hits / nq;
      score.distractor_em = distractor_hits / nq;
      score.retrieved_em = retrieved_hits / nq;
      score.recall_at_1 = r1 / nq;
      score.recall_at_k = rk / nq;
    }
    return score;
  } catch (const std::exception& e) {
    return TorchError("adapter score", e);
  }
}

absl::Status Adapter::SaveCheckpoint(const std::string& path) const {
  return internal::SaveTorchCheckpoint(*impl_->net, *impl_->optimizer, path);
}

absl::Status Adapter::LoadCheckpoint(const std::string& path) {
  return internal::LoadTorchCheckpoint(*impl_->net, *impl_->optimizer, path);
}

// ---- training ----------------------------------------------------------------------------------

int CurriculumCandidates(const AdapterRunOptions& o, int step) {
  const double f = o.gold_only_fraction;
  const double progress = double(step) / std::max(1, o.steps);
  if (o.top_k <= 1 || progress < f) return 1;
  if (f <= 0 || progress >= 2 * f) return o.top_k;
  return std::clamp(2 + static_cast<int>((o.top_k - 2) * (progress - f) / f), 2, o.top_k);
}

absl::Status RunAdapterTraining(const AdapterRunOptions& options) {
  SetTorchThreads(options.threads);
  const auto t0 = Clock::now();
  absl::StatusOr<std::unique_ptr<Tokenizer>> tok =
      LoadSentencePieceTokenizer(options.bundle_dir + "/tokenizer.model");
  if (!tok.ok()) return tok.status();
  std::shared_ptr<const Tokenizer> tokenizer = *std::move(tok);
  absl::StatusOr<std::unique_ptr<LanguageModel>> base =
      LanguageModel::LoadBundle(options.bundle_dir);
  if (!base.ok()) return base.status();
  absl::StatusOr<std::string> fingerprint = Sha256OfFile(options.bundle_dir + "/model.safetensors");
  if (!fingerprint.ok()) return fingerprint.status();
  absl::StatusOr<SplitData> train_split = ReadSplit(options.data_dir, Split::kAdapter);
  if (!train_split.ok()) return train_split.status();
  AdapterCorpus corpus(*std::move(train_split), tokenizer);

  absl::StatusOr<std::unique_ptr<Adapter>> created =
      Adapter::Create(base->get(), options.config, options.train.seed);
  if (!created.ok()) return created.status();
  Adapter& adapter = **created;
  const LlamaConfig& lm = (*base)->config();

  // How the stored latent compares with the passage's KV cache (the storage target is <= 1/50).
  std::vector<int> lengths;
  for (const Passage& p : corpus.data().passages) {
    lengths.push_back(static_cast<int>(tokenizer->Encode(p.text, true).size()));
  }
  std::sort(lengths.begin(), lengths.end());
  const int median = lengths.empty() ? 0 : lengths[lengths.size() / 2];
  const int shortest = lengths.empty() ? 0 : lengths.front();
  const double mean_len =
      lengths.empty() ? 0 : std::accumulate(lengths.begin(), lengths.end(), 0.0) / lengths.size();
  // Aggregate over the split: all passages' KV bytes over all their latents' bytes.
  const double aggregate = mean_len * PassageKvBytes(lm, 1) / LatentBytes(options.config);
  std::printf(
      "base: %lld parameters; adapter: %lld parameters (%.1f%%), T %d, d %d\n"
      "storage: latent %lld B vs passage KV %lld B at the median %d tokens (1/%.0f), "
      "1/%.0f at the shortest (%d), 1/%.1f over the split (mean %.1f tokens)\n",
      static_cast<long long>((*base)->ParameterCount()),
      static_cast<long long>(adapter.ParameterCount()),
      100.0 * adapter.ParameterCount() / (*base)->ParameterCount(), options.config.slots,
      options.config.latent_dim, static_cast<long long>(LatentBytes(options.config)),
      static_cast<long long>(PassageKvBytes(lm, median)), median,
      double(PassageKvBytes(lm, median)) / LatentBytes(options.config),
      double(PassageKvBytes(lm, shortest)) / LatentBytes(options.config), shortest, aggregate,
      mean_len);

  std::error_code ec;
  std::filesystem::create_directories(options.work_dir, ec);
  if (ec) return absl::InternalError(absl::StrCat(options.work_dir, ": ", ec.message()));
  const std::string checkpoint = options.work_dir + "/adapter-checkpoint.pt";
  const std::string state_path = options.work_dir + "/adapter-checkpoint.json";
  int start = 0;
  if (options.resume && std::filesystem::exists(state_path)) {
    std::ifstream in(state_path);
    nlohmann::json state = nlohmann::json::parse(in, nullptr, false);
    if (!state.is_object() || !state.contains("step")) {
      return absl::InvalidArgumentError(state_path + ": unreadable");
    }
    if (absl::Status st = adapter.LoadCheckpoint(checkpoint); !st.ok()) return st;
    start = state["step"].get<int>();
    std::printf("resumed at step %d\n", start);
  } else if (!options.init_from.empty()) {
    if (absl::Status st =
            adapter.LoadExport(options.init_from, {.seed_rag_head = true, .grow = true});
        !st.ok()) {
      return st;
    }
    std::printf("init: the weights of %s%s\n", options.init_from.c_str(),
                options.config.rag_head ? " (a missing mac+rag head starts as the mac head)" : "");
  } else {
    std::vector<std::vector<int32_t>> sample;
    std::mt19937_64 rng(options.train.seed + 7);
    for (int i = 0; i < 64 && !corpus.answerable().empty(); ++i) {
      const int p = corpus.answerable()[BoundedDraw(rng, corpus.answerable().size())];
      sample.push_back(PassageTokens(*tokenizer, corpus.data().passages[p].text,
                                     options.train.max_passage_tokens));
    }
    absl::StatusOr<double> kept = adapter.InitializeFromPassages(sample);
    if (!kept.ok()) return kept.status();
    std::printf("init: the latent keeps %.1f%% of the pooled KV slots' variance\n", 100 * *kept);
  }
  std::fflush(stdout);

  auto lr_at = [&](int step) {
    if (step < options.warmup) return options.lr * (step + 1) / options.warmup;
    const double progress =
        std::min(1.0, double(step - options.warmup) / std::max(1, options.steps - options.warmup));
    return options.lr * (options.min_lr_ratio +
                         (1.0 - options.min_lr_ratio) * 0.5 * (1.0 + std::cos(M_PI * progress)));
  };
  auto save = [&](int step) -> absl::Status {
    if (absl::Status st = adapter.SaveCheckpoint(checkpoint); !st.ok()) return st;
    std::ofstream out(state_path + ".tmp", std::ios::trunc);
    out << nlohmann::json{{"step", step}, {"steps", options.steps}}.dump() << "\n";
    out.close();
    std::filesystem::rename(state_path + ".tmp", state_path, ec);
    return ec ? absl::InternalError(ec.message()) : absl::OkStatus();
  };

  AdapterLosses window;
  int window_steps = 0;
  auto window_start = Clock::now();
  const int end =
      options.stop_after > 0 ? std::min(options.stop_after, options.steps) : options.steps;
  for (int step = start; step < end; ++step) {
    const int k = CurriculumCandidates(options, step);
    const double lr = lr_at(step);
    absl::StatusOr<AdapterLosses> l = adapter.TrainStep(corpus, options.train, step, lr, k);
    if (!l.ok()) return l.status();
    if (!std::isfinite(l->total)) {
      return absl::InternalError(absl::StrCat("adapter loss is ", l->total, " at step ", step));
    }
    window.total += l->total;
    window.answer_nll += l->answer_nll;
    window.distill += l->distill;
    window.contrastive += l->contrastive;
    window.retrieval_acc += l->retrieval_acc;
    window.context_nll += l->context_nll;
    window.closed_book_nll += l->closed_book_nll;
    ++window_steps;
    const bool last = step + 1 == end;
    if ((step + 1) % options.log_every == 0 || last) {
      const auto now = Clock::now();
      const double per_step =
          std::chrono::duration<double>(now - window_start).count() / window_steps;
      const double eta = per_step * (options.steps - step - 1);
      const double n = window_steps;
      std::printf(
          "step %d/%d  k %d  loss %.4f  nll %.4f (in context %.3f, closed-book %.3f)  kd %.4f  "
          "nce %.4f  acc %.2f  lr %.2e  %.2f s/step  ETA %dm%02ds\n",
          step + 1, options.steps, k, window.total / n, window.answer_nll / n,
          window.context_nll / n, window.closed_book_nll / n, window.distill / n,
          window.contrastive / n, window.retrieval_acc / n, lr, per_step,
          static_cast<int>(eta) / 60, static_cast<int>(eta) % 60);
      std::fflush(stdout);
      window = AdapterLosses();
      window_steps = 0;
      window_start = now;
    }
    if ((step + 1) % options.checkpoint_every == 0 || last) {
      if (absl::Status st = save(step + 1); !st.ok()) return st;
    }
  }

  if (end < options.steps) {
    std::printf("stopped after step %d of %d; continue with --resume\n", end, options.steps);
    return absl::OkStatus();
  }
  const std::string out_dir = options.bundle_dir + "/adapter";
  nlohmann::json training = {{"steps", options.steps},
                             {"batch", options.train.batch},
                             {"questions_per_passage", options.train.questions_per_passage},
                             {"top_k", options.top_k},
                             {"text_fraction", options.train.text_fraction},
                             {"text_distractor_fraction", options.train.text_distractor_fraction},
                             {"text_subject_history", options.train.text_subject_history},
                             {"rag_head_only", options.train.rag_head_only},
                             {"lr", options.lr},
                             {"seed", options.train.seed}};
  if (!options.init_from.empty()) {
    // The run this one started from, as its export recorded it.
    std::ifstream in(options.init_from + "/adapter.json");
    const nlohmann::json init = nlohmann::json::parse(in, nullptr, false);
    training["init_from"] =
        init.is_object() && init.contains("training") ? init["training"] : nlohmann::json(nullptr);
  }
  if (absl::Status st =
          adapter.Export(out_dir, options.export_dtype, *fingerprint, training.dump());
      !st.ok()) {
    return st;
  }
  std::printf("exported %s (base sha256 %s)\n", out_dir.c_str(), fingerprint->c_str());

  if (options.eval_questions > 0) {
    absl::StatusOr<SplitData> valid = ReadSplit(options.data_dir, Split::kValid);
    if (!valid.ok()) return valid.status();
    absl::StatusOr<ReadingScore> oracle =
        ScoreReading(**base, *tokenizer, *valid, options.eval_questions);
    if (!oracle.ok()) return oracle.status();
    AdapterCorpus valid_corpus(*std::move(valid), tokenizer);
    absl::StatusOr<AdapterScore> s = adapter.Score(
        valid_corpus, options.eval_questions, options.top_k, 99, options.train.max_passage_tokens);
    if (!s.ok()) return s.status();
    std::printf(
        "valid: %d questions  oracle EM %.3f  closed-book EM %.3f  mac EM: gold only %.3f, "
        "gold + %d distractors %.3f, retrieved top-%d %.3f  recall@1 %.3f  recall@%d %.3f\n",
        s->questions, oracle->oracle_em, oracle->closed_book_em, s->gold_em, s->top_k - 1,
        s->distractor_em, s->top_k, s->retrieved_em, s->recall_at_1, s->top_k, s->recall_at_k);
    for (const std::string& e : s->examples) std::printf("  %s\n", e.c_str());
  }
  std::printf("done in %.1f s\n", std::chrono::duration<double>(Clock::now() - t0).count());
  return absl::OkStatus();
}

}  // namespace knowd::train
