// Retrieval keys (retrieval_keys.h): the frozen LM's states, the two pooling heads, their
// contrastive training with hard negatives, recall on valid and test, and the export.
#include "train/retrieval_keys.h"

#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <numeric>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "kernels/math.h"
#include "knowledge/prompt.h"
#include "model/adapter.h"
#include "model/tokenizer.h"
#include "nlohmann/json.hpp"
#include "train/adapter_networks.h"
#include "train/lm.h"
#include "train/lm_torch.h"
#include "train/world.h"

namespace knowd::train {
namespace {

using adapter_internal::Linear;
using adapter_internal::RmsNormalize;
using internal::TorchAccess;
using internal::TorchError;
using internal::TrunkStates;

// One pooling head (see retrieval_keys.h).
struct KeyHeadImpl : torch::nn::Module {
  KeyHeadImpl(int64_t dim, int64_t heads, int64_t key_dim) {
    // Zero queries: every head starts as the mean of the tokens.
    query = register_parameter("query", torch::zeros({heads, dim}));
    proj = register_module("proj", Linear(heads * dim, key_dim, /*bias=*/false));
  }
  // x [B, T, D] (normalized states), mask [B, T] (true: a token to pool) -> keys [B, key_dim].
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& mask) {
    auto scores = torch::einsum("btd,hd->bht", {x, query});
    scores = scores.masked_fill(mask.logical_not().unsqueeze(1), -1e9);
    const auto weights = torch::softmax(scores, -1);
    const auto pooled = torch::einsum("bht,btd->bhd", {weights, x}).flatten(1);
    return torch::nn::functional::normalize(proj(pooled),
                                            torch::nn::functional::NormalizeFuncOptions().dim(-1));
  }
  torch::Tensor query;
  torch::nn::Linear proj{nullptr};
};
TORCH_MODULE(KeyHead);

struct KeyNets : torch::nn::Module {
  KeyNets(int64_t dim, int64_t heads, int64_t key_dim) {
    passage = register_module("passage", KeyHead(dim, heads, key_dim));
    question = register_module("question", KeyHead(dim, heads, key_dim));
    log_scale = register_parameter("log_scale", torch::full({1}, std::log(20.0)));
  }
  KeyHead passage{nullptr}, question{nullptr};
  torch::Tensor log_scale;
};

// The per-token states the heads read: the chosen layers' block outputs, each RMS-normalized,
// concatenated; BOS dropped. One f16 tensor [tokens - 1, D] per sequence.
absl::StatusOr<std::vector<torch::Tensor>> States(LanguageModel& lm,
                                                  const std::vector<std::vector<int32_t>>& seqs,
                                                  const std::vector<int>& layers,
                                                  const std::string& what,
                                                  torch::Dtype dtype = torch::kHalf) {
  std::vector<size_t> order(seqs.size());
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(),
            [&](size_t a, size_t b) { return seqs[a].size() < seqs[b].size(); });
  std::vector<torch::Tensor> out(seqs.size());
  const auto start = std::chrono::steady_clock::now();
  size_t done = 0;
  try {
    torch::NoGradGuard no_grad;
    for (size_t begin = 0; begin < order.size();) {
      size_t end = begin;
      size_t longest = 0;
      while (end < order.size() && end - begin < 128) {
        longest = std::max(longest, seqs[order[end]].size());
        if ((end - begin + 1) * longest > 16384 && end > begin) break;
        ++end;
      }
      auto tokens = torch::zeros({static_cast<int64_t>(end - begin), static_cast<int64_t>(longest)},
                                 torch::kInt64);
      auto acc = tokens.accessor<int64_t, 2>();
      for (size_t i = begin; i < end; ++i) {
        const auto& s = seqs[order[i]];
        for (size_t j = 0; j < s.size(); ++j) acc[i - begin][j] = s[j];
      }
      TrunkStates states;
      TorchAccess::Forward(lm, tokens, torch::Tensor(), torch::Tensor(), &states);
      std::vector<torch::Tensor> parts;
      for (int l : layers) parts.push_back(RmsNormalize(states.hidden[l]));
      const torch::Tensor x = torch::cat(parts, -1);
      for (size_t i = begin; i < end; ++i) {
        const int64_t n = static_cast<int64_t>(seqs[order[i]].size());
        out[order[i]] = x[i - begin].slice(0, 1, n).to(dtype).clone();
      }
      done += end - begin;
      begin = end;
      const double s =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      if (end == order.size() || done % 2048 < 128) {
        std::fprintf(stderr, "\r%s: %zu/%zu sequences, %.0f s", what.c_str(), done, order.size(),
                     s);
      }
    }
    std::fprintf(stderr, "\n");
  } catch (const std::exception& e) {
    return TorchError("computing the LM's states", e);
  }
  return out;
}

// Pads the states of `items` into [B, T, D] f32 and the mask [B, T].
std::pair<torch::Tensor, torch::Tensor> Batch(const std::vector<torch::Tensor>& states,
                                              const std::vector<int>& items) {
  int64_t longest = 1;
  for (int i : items) longest = std::max(longest, states[i].size(0));
  const int64_t dim = states[items[0]].size(1);
  auto x = torch::zeros({static_cast<int64_t>(items.size()), longest, dim});  // f32
  auto mask = torch::zeros({static_cast<int64_t>(items.size()), longest}, torch::kBool);
  for (size_t b = 0; b < items.size(); ++b) {
    const int64_t n = states[items[b]].size(0);
    if (n == 0) continue;
    x[b].slice(0, 0, n).copy_(states[items[b]]);
    mask[b].slice(0, 0, n).fill_(true);
  }
  return {x, mask};
}

torch::Tensor Keys(KeyHead& head, const std::vector<torch::Tensor>& states, int batch = 256) {
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> keys;
  for (size_t begin = 0; begin < states.size(); begin += batch) {
    std::vector<int> items;
    for (size_t i = begin; i < std::min(states.size(), begin + batch); ++i) {
      items.push_back(static_cast<int>(i));
    }
    auto [x, mask] = Batch(states, items);
    keys.push_back(head->forward(x, mask));
  }
  return torch::cat(keys, 0);
}

struct Corpus {
  std::vector<Passage> passages;
  std::vector<torch::Tensor> passage_states;
  std::vector<Question> questions;
  std::vector<int> gold;  // questions[i]'s passage, an index into passages
  std::vector<torch::Tensor> question_states;
  std::vector<std::vector<int>> questions_of;  // per passage
};

absl::StatusOr<Corpus> LoadSplit(LanguageModel& lm, const Tokenizer& tok, const std::string& dir,
                                 Split which, const RetrievalKeyOptions& o, int max_passages,
                                 int questions_per_passage, std::mt19937_64& rng) {
  absl::StatusOr<SplitData> data = ReadSplit(dir, which);
  if (!data.ok()) return data.status();
  Corpus s;
  std::map<std::string, int> index;
  for (Passage& p : data->passages) {
    if (max_passages > 0 && static_cast<int>(s.passages.size()) >= max_passages) break;
    index[p.id] = static_cast<int>(s.passages.size());
    s.passages.push_back(std::move(p));
  }
  s.questions_of.resize(s.passages.size());
  std::vector<Question> questions = std::move(data->questions);
  if (questions_per_passage > 0) std::shuffle(questions.begin(), questions.end(), rng);
  for (Question& q : questions) {
    auto it = index.find(q.passage_id);
    if (it == index.end()) continue;
    if (questions_per_passage > 0 &&
        static_cast<int>(s.questions_of[it->second].size()) >= questions_per_passage) {
      continue;
    }
    s.questions_of[it->second].push_back(static_cast<int>(s.questions.size()));
    s.gold.push_back(it->second);
    s.questions.push_back(std::move(q));
  }
  std::vector<std::vector<int32_t>> passage_tokens;
  for (const Passage& p : s.passages) {
    std::vector<int32_t> ids = tok.Encode(p.text, true);
    if (static_cast<int>(ids.size()) > o.max_passage_tokens) ids.resize(o.max_passage_tokens);
    passage_tokens.push_back(std::move(ids));
  }
  std::vector<std::vector<int32_t>> question_tokens;
  for (const Question& q : s.questions) {
    question_tokens.push_back(tok.Encode(knowledge::QuestionPrompt(q.question), true));
  }
  const std::string name(SplitName(which));
  auto ps = States(lm, passage_tokens, o.layers, name + " passages");
  if (!ps.ok()) return ps.status();
  auto qs = States(lm, question_tokens, o.layers, name + " questions");
  if (!qs.ok()) return qs.status();
  s.passage_states = *std::move(ps);
  s.question_states = *std::move(qs);
  return s;
}

struct Recall {
  double at1 = 0, at5 = 0;
};

Recall Measure(KeyNets& nets, const Corpus& s) {
  const torch::Tensor p = Keys(nets.passage, s.passage_states);
  const torch::Tensor q = Keys(nets.question, s.question_states);
  const torch::Tensor sims = torch::matmul(q, p.t());
  const auto top = std::get<1>(sims.topk(std::min<int64_t>(5, p.size(0)), 1));
  auto acc = top.accessor<int64_t, 2>();
  Recall r;
  for (size_t i = 0; i < s.questions.size(); ++i) {
    for (int64_t k = 0; k < top.size(1); ++k) {
      if (acc[i][k] == s.gold[i]) {
        if (k == 0) r.at1 += 1;
        r.at5 += 1;
        break;
      }
    }
  }
  r.at1 /= std::max<size_t>(1, s.questions.size());
  r.at5 /= std::max<size_t>(1, s.questions.size());
  return r;
}

// The training passages' relatives: hard negatives for a batch.
struct Relatives {
  std::map<std::string, std::vector<int>> by_subject, by_first, by_last, by_relation;
  explicit Relatives(const Corpus& s) {
    for (size_t i = 0; i < s.passages.size(); ++i) {
      const Passage& p = s.passages[i];
      const int id = static_cast<int>(i);
      by_subject[p.subject].push_back(id);
      std::vector<std::string> parts = absl::StrSplit(p.subject, ' ');
      if (!parts.empty()) by_first[parts.front()].push_back(id);
      if (parts.size() > 1) by_last[parts.back()].push_back(id);
      for (const Fact& f : p.facts) by_relation[f.relation].push_back(id);
    }
  }
};

int Draw(std::mt19937_64& rng, size_t n) {
  return static_cast<int>(std::uniform_int_distribution<size_t>(0, n - 1)(rng));
}

// Passages of a step: anchors, each followed by up to four relatives (same person, first name,
// last name, a passage stating the relation its question asks); one question per passage.
void DrawBatch(const Corpus& s, const Relatives& r, int size, std::mt19937_64& rng,
               std::vector<int>* passages, std::vector<int>* questions) {
  passages->clear();
  questions->clear();
  std::set<int> taken;
  auto add = [&](int p) {
    if (static_cast<int>(passages->size()) >= size || s.questions_of[p].empty()) return false;
    if (!taken.insert(p).second) return false;
    passages->push_back(p);
    const auto& qs = s.questions_of[p];
    questions->push_back(qs[Draw(rng, qs.size())]);
    return true;
  };
  auto relative = [&](const std::map<std::string, std::vector<int>>& m, const std::string& key) {
    auto it = m.find(key);
    if (it == m.end() || it->second.size() < 2) return;
    for (int tries = 0; tries < 3; ++tries) {
      if (add(it->second[Draw(rng, it->second.size())])) return;
    }
  };
  while (static_cast<int>(passages->size()) < size) {
    const int a = Draw(rng, s.passages.size());
    if (!add(a)) continue;
    const Passage& p = s.passages[a];
    std::vector<std::string> parts = absl::StrSplit(p.subject, ' ');
    relative(r.by_subject, p.subject);
    if (!parts.empty()) relative(r.by_first, parts.front());
    if (parts.size() > 1) relative(r.by_last, parts.back());
    relative(r.by_relation, s.questions[questions->back()].relation);
  }
}

absl::Status Export(KeyNets& nets, const RetrievalKeyOptions& o, const std::string& dir,
                    int64_t dim, const nlohmann::json& figures) {
  nlohmann::json list = nlohmann::json::array();
  // log_scale is a training temperature, not served.
  absl::StatusOr<std::string> sha = internal::ExportParametersF16(
      nets, dir + "/retrieval_keys.safetensors", {"log_scale"}, &list);
  if (!sha.ok()) return sha.status();
  nlohmann::json j = {
      {"format", "knowd-retrieval-keys"},
      {"version", 1},
      {"layers", o.layers},
      {"heads", o.heads},
      {"key_dim", o.key_dim},
      {"state_dim", dim},
      {"norm_eps", 1e-6},
      {"passage_input", "<BOS><passage>; BOS is not pooled"},
      {"question_input", "<BOS>Q: <question>\\nA:; BOS is not pooled"},
      {"states", "block outputs of `layers`, each RMS-normalized (no weight), concatenated"},
      {"sha256", *sha},
      {"training", figures},
      {"tensors", list},
  };
  std::ofstream out(dir + "/retrieval_keys.json");
  out << j.dump(2) << "\n";
  if (!out) return absl::InternalError(absl::StrCat(dir, "/retrieval_keys.json: cannot write"));
  return absl::OkStatus();
}

}  // namespace

absl::Status TrainRetrievalKeys(const RetrievalKeyOptions& o) {
  torch::manual_seed(o.seed);
  torch::set_num_threads(std::max(1, o.threads));
  absl::StatusOr<std::unique_ptr<LanguageModel>> lm = LanguageModel::LoadBundle(o.bundle_dir);
  if (!lm.ok()) return lm.status();
  TorchAccess::Freeze(**lm);
  for (int l : o.layers) {
    if (l < 0 || l >= (*lm)->config().num_layers) {
      return absl::InvalidArgumentError(absl::StrCat("--key-layers: layer ", l, " is not in 0..",
                                                     (*lm)->config().num_layers - 1));
    }
  }
  absl::StatusOr<std::unique_ptr<Tokenizer>> tok =
      LoadSentencePieceTokenizer(o.bundle_dir + "/tokenizer.model");
  if (!tok.ok()) return tok.status();
  std::mt19937_64 rng(o.seed);
  auto train = LoadSplit(**lm, **tok, o.data_dir, Split::kAdapter, o, o.max_train_passages,
                         o.questions_per_passage, rng);
  if (!train.ok()) return train.status();
  auto valid = LoadSplit(**lm, **tok, o.data_dir, Split::kValid, o, 0, 0, rng);
  if (!valid.ok()) return valid.status();
  auto test = LoadSplit(**lm, **tok, o.data_dir, Split::kTest, o, 0, 0, rng);
  if (!test.ok()) return test.status();
  const int64_t dim = train->passage_states[0].size(1);
  std::fprintf(stderr, "train: %zu passages, %zu questions; state width %ld\n",
               train->passages.size(), train->questions.size(), static_cast<long>(dim));

  KeyNets nets(dim, o.heads, o.key_dim);
  torch::optim::AdamW optimizer(nets.parameters(),
                                torch::optim::AdamWOptions(o.lr).weight_decay(0.01));
  const Relatives relatives(*train);
  std::vector<int> passages, questions;
  const auto start = std::chrono::steady_clock::now();
  double best_valid = -1;
  nlohmann::json figures;
  std::vector<std::pair<std::string, torch::Tensor>> best;
  try {
    for (int step = 1; step <= o.steps; ++step) {
      const double progress = static_cast<double>(step) / o.steps;
      const double lr = step <= o.warmup
                            ? o.lr * step / o.warmup
                            : o.lr * (0.1 + 0.9 * 0.5 * (1 + std::cos(M_PI * progress)));
      for (auto& group : optimizer.param_groups()) {
        static_cast<torch::optim::AdamWOptions&>(group.options()).lr(lr);
      }
      DrawBatch(*train, relatives, o.batch, rng, &passages, &questions);
      auto [px, pm] = Batch(train->passage_states, passages);
      auto [qx, qm] = Batch(train->question_states, questions);
      const torch::Tensor p = nets.passage->forward(px, pm);
      const torch::Tensor q = nets.question->forward(qx, qm);
      const torch::Tensor logits = torch::matmul(q, p.t()) * nets.log_scale.exp();
      const torch::Tensor target = torch::arange(logits.size(0), torch::kInt64);
      const torch::Tensor loss = 0.5 * (torch::nn::functional::cross_entropy(logits, target) +
                                        torch::nn::functional::cross_entropy(logits.t(), target));
      optimizer.zero_grad();
      loss.backward();
      optimizer.step();
      if (step % o.log_every == 0 || step == 1) {
        const double acc = logits.argmax(1).eq(target).to(torch::kFloat32).mean().item<double>();
        const double s =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        std::fprintf(
            stderr, "step %d/%d loss %.4f in-batch acc %.3f scale %.1f lr %.2e %.2f s/step\n", step,
            o.steps, loss.item<double>(), acc, nets.log_scale.exp().item<double>(), lr, s / step);
      }
      if (step % o.eval_every == 0 || step == o.steps) {
        const Recall v = Measure(nets, *valid);
        const Recall t = Measure(nets, *test);
        std::fprintf(stderr, "step %d: valid recall@1 %.3f @5 %.3f; test recall@1 %.3f @5 %.3f\n",
                     step, v.at1, v.at5, t.at1, t.at5);
        if (v.at1 > best_valid) {
          best_valid = v.at1;
          figures = {{"step", step},
                     {"valid_recall_at_1", v.at1},
                     {"valid_recall_at_5", v.at5},
                     {"test_recall_at_1", t.at1},
                     {"test_recall_at_5", t.at5}};
          best.clear();
          for (const auto& named : nets.named_parameters()) {
            best.emplace_back(named.key(), named.value().detach().clone());
          }
        }
      }
    }
    // The best step on valid is the one exported.
    torch::NoGradGuard no_grad;
    auto params = nets.named_parameters();
    for (const auto& [name, value] : best) params[name].copy_(value);
  } catch (const std::exception& e) {
    return TorchError("training the retrieval keys", e);
  }
  figures["train_passages"] = train->passages.size();
  figures["train_questions"] = train->questions.size();
  figures["steps"] = o.steps;
  figures["batch"] = o.batch;
  figures["lr"] = o.lr;
  figures["seed"] = o.seed;
  std::fprintf(stderr, "exported step %d: %s\n", figures.value("step", 0), figures.dump().c_str());
  if (!o.export_heads) return absl::OkStatus();
  return Export(nets, o, o.bundle_dir + "/adapter", dim, figures);
}

absl::StatusOr<std::vector<std::vector<float>>> TorchRetrievalKeys(
    const std::string& bundle_dir, const std::vector<std::vector<int32_t>>& sequences,
    bool question) {
  const std::string dir = bundle_dir + "/adapter";
  std::ifstream in(dir + "/retrieval_keys.json");
  if (!in) return absl::NotFoundError(absl::StrCat(dir, "/retrieval_keys.json: cannot open"));
  const nlohmann::json j = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.contains("layers")) {
    return absl::InvalidArgumentError(absl::StrCat(dir, "/retrieval_keys.json: malformed"));
  }
  const std::vector<int> layers = j["layers"].get<std::vector<int>>();
  absl::StatusOr<std::unique_ptr<LanguageModel>> lm = LanguageModel::LoadBundle(bundle_dir);
  if (!lm.ok()) return lm.status();
  TorchAccess::Freeze(**lm);
  try {
    KeyNets nets(j.value("state_dim", 0), j.value("heads", 0), j.value("key_dim", 0));
    if (absl::Status s = internal::LoadParameters(nets, dir + "/retrieval_keys.safetensors");
        !s.ok()) {
      return s;
    }
    torch::NoGradGuard no_grad;
    absl::StatusOr<std::vector<torch::Tensor>> states =
        States(**lm, sequences, layers, "reference", torch::kFloat32);
    if (!states.ok()) return states.status();
    const torch::Tensor keys = Keys(question ? nets.question : nets.passage, *states).contiguous();
    std::vector<std::vector<float>> out;
    for (int64_t i = 0; i < keys.size(0); ++i) {
      const float* row = keys[i].data_ptr<float>();
      out.emplace_back(row, row + keys.size(1));
    }
    return out;
  } catch (const std::exception& e) {
    return TorchError("the reference retrieval keys", e);
  }
}

}  // namespace knowd::train
