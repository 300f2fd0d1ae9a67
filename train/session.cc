// Sessions (session.h): the mapper's libtorch networks, its training on in-context tasks, the
// accuracy of zero-shot, in-context and session answers, and the export.
//
// Accuracy here is teacher-forced greedy exact match: one pass over prompt + answer + "\n" says
// whether greedy decoding would produce exactly the answer's tokens and then stop, which is
// greedy EM up to the answer's tokenization (a greedy answer spelled in other tokens counts as a
// miss). `knowd eval --sessions` measures the served engine by decoding.
#include "train/session.h"

#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "model/session_mapper.h"
#include "model/tokenizer.h"
#include "nlohmann/json.hpp"
#include "train/lm.h"
#include "train/lm_torch.h"
#include "train/world.h"

namespace knowd::train {
namespace {

using internal::LowRankTorch;
using internal::TorchAccess;
using internal::TorchError;
using internal::TrunkStates;

constexpr const char* kProjectionNames[LowRankTorch::kProjections] = {"qkv", "o", "gate", "up",
                                                                      "down"};

// Input and output sizes of a projection (model/low_rank.h's table).
std::pair<int64_t, int64_t> ProjectionSizes(const LlamaConfig& c, int projection) {
  switch (projection) {
    case 0:
      return {c.hidden_size, c.q_dim() + 2 * c.kv_dim()};
    case 1:
      return {c.q_dim(), c.hidden_size};
    case 2:
    case 3:
      return {c.hidden_size, c.intermediate_size};
    default:
      return {c.intermediate_size, c.hidden_size};
  }
}

struct MapperShape {
  std::vector<std::pair<int, int>> sites;
  int64_t rank = 0, rank_out = 0, kv_heads = 0, head_dim = 0;
};

// One site's networks (session.h: queries, P, G and g, W2, W1).
struct SiteNetImpl : torch::nn::Module {
  SiteNetImpl(int64_t kv_dim, int64_t in, int64_t out, int64_t r, int64_t r2) {
    // Small queries: attention starts near the chunk's mean.
    query = register_parameter("query", torch::randn({r, kv_dim}) * 0.02);
    proj = register_parameter("proj", torch::randn({r2, kv_dim}) / std::sqrt(double(kv_dim)));
    gate_weight = register_parameter("gate_weight", torch::zeros({r2, r2}));
    // sigmoid(2) = 0.88: a chunk's summary fades slowly as later chunks arrive.
    gate_bias = register_parameter("gate_bias", torch::full({r2}, 2.0));
    w2 = register_parameter("w2", torch::randn({r, in}) / std::sqrt(double(in)));
    // Zero: the update starts as none, the LM as it was (LoRA's initialisation).
    w1 = register_parameter("w1", torch::zeros({out, r2}));
  }
  torch::Tensor query, proj, gate_weight, gate_bias, w2, w1;
};
TORCH_MODULE(SiteNet);

struct MapperNets : torch::nn::Module {
  MapperNets(const LlamaConfig& c, MapperShape shape) : shape(std::move(shape)) {
    for (size_t i = 0; i < this->shape.sites.size(); ++i) {
      const auto [in, out] = ProjectionSizes(c, this->shape.sites[i].second);
      sites.push_back(
          register_module(absl::StrCat("site", i),
                          SiteNet(c.kv_dim(), in, out, this->shape.rank, this->shape.rank_out)));
    }
  }

  // Chunk summaries of site i: keys/values [C, n, kv_heads, head_dim] of its layer, mask [C, n]
  // (true: a real row) -> S [C, r, r2].
  torch::Tensor Summaries(size_t i, const torch::Tensor& keys, const torch::Tensor& values,
                          const torch::Tensor& mask) {
    const SiteNet& s = sites[i];
    const auto q = s->query.view({shape.rank, shape.kv_heads, shape.head_dim});
    auto scores = torch::einsum("rhd,cnhd->chrn", {q, keys}) / std::sqrt(double(shape.head_dim));
    scores = scores.masked_fill(mask.logical_not().view({mask.size(0), 1, 1, mask.size(1)}),
                                -std::numeric_limits<float>::infinity());
    const auto a = torch::einsum("chrn,cnhd->crhd", {torch::softmax(scores, -1), values})
                       .reshape({keys.size(0), shape.rank, shape.kv_heads * shape.head_dim});
    return torch::matmul(a, s->proj.t());
  }

  // One fold step: h [.., r, r2], summary s of the same shape.
  torch::Tensor Fold(size_t i, const torch::Tensor& h, const torch::Tensor& summary) {
    const SiteNet& s = sites[i];
    const auto a = torch::sigmoid(torch::matmul(summary, s->gate_weight.t()) + s->gate_bias);
    return a * h + summary;
  }

  MapperShape shape;
  std::vector<SiteNet> sites;
};

// Token ids [rows][cols] (right-padded with 0) and the mask of real rows.
std::pair<torch::Tensor, torch::Tensor> Pad(const std::vector<std::vector<int32_t>>& rows) {
  size_t longest = 1;
  for (const auto& r : rows) longest = std::max(longest, r.size());
  auto tokens = torch::zeros({static_cast<int64_t>(rows.size()), static_cast<int64_t>(longest)},
                             torch::kInt64);
  auto mask = torch::zeros_like(tokens, torch::kBool);
  auto t = tokens.accessor<int64_t, 2>();
  auto m = mask.accessor<bool, 2>();
  for (size_t i = 0; i < rows.size(); ++i) {
    for (size_t j = 0; j < rows[i].size(); ++j) {
      t[i][j] = rows[i][j];
      m[i][j] = true;
    }
  }
  return {tokens, mask};
}

// One chunk's keys and values as the frozen LM computes them, per layer [n, kv_heads, head_dim].
struct ChunkKv {
  std::vector<torch::Tensor> keys, values;
};

// The chunks' keys and values (token ids, BOS first), in trunk passes of up to 8,192 tokens.
std::vector<ChunkKv> ChunkStates(LanguageModel& lm, const std::vector<std::vector<int32_t>>& chunks,
                                 torch::Dtype dtype = torch::kFloat32) {
  torch::NoGradGuard no_grad;  // the LM is frozen and the mapper reads its states as data
  std::vector<ChunkKv> out(chunks.size());
  for (size_t begin = 0; begin < chunks.size();) {
    size_t end = begin, longest = 0;
    while (end < chunks.size()) {
      const size_t next = std::max(longest, chunks[end].size());
      if (end > begin && (end - begin + 1) * next > 8192) break;
      longest = next;
      ++end;
    }
    const std::vector<std::vector<int32_t>> part(chunks.begin() + begin, chunks.begin() + end);
    auto [tokens, mask] = Pad(part);
    TrunkStates trunk;
    TorchAccess::Forward(lm, tokens, torch::Tensor(), torch::Tensor(), &trunk);
    for (size_t i = begin; i < end; ++i) {
      const int64_t n = static_cast<int64_t>(chunks[i].size());
      for (size_t l = 0; l < trunk.keys.size(); ++l) {
        out[i].keys.push_back(trunk.keys[l][i - begin].slice(0, 0, n).to(dtype).clone());
        out[i].values.push_back(trunk.values[l][i - begin].slice(0, 0, n).to(dtype).clone());
      }
    }
    begin = end;
  }
  return out;
}

// The states of the contexts (one list of chunks each; none: state 0), every site:
// per site [B, r, r2].
std::vector<torch::Tensor> States(MapperNets& nets,
                                  const std::vector<std::vector<const ChunkKv*>>& contexts) {
  const int64_t b = static_cast<int64_t>(contexts.size());
  std::vector<torch::Tensor> h(nets.shape.sites.size());
  for (auto& t : h) t = torch::zeros({b, nets.shape.rank, nets.shape.rank_out});
  std::vector<const ChunkKv*> chunks;
  std::vector<int64_t> owner, index;
  int64_t most = 0, longest = 0;
  for (int64_t i = 0; i < b; ++i) {
    for (size_t c = 0; c < contexts[i].size(); ++c) {
      chunks.push_back(contexts[i][c]);
      owner.push_back(i);
      index.push_back(static_cast<int64_t>(c));
      longest = std::max(longest, contexts[i][c]->keys[0].size(0));
    }
    most = std::max<int64_t>(most, static_cast<int64_t>(contexts[i].size()));
  }
  if (chunks.empty()) return h;
  const int64_t n_chunks = static_cast<int64_t>(chunks.size());
  auto mask = torch::zeros({n_chunks, longest}, torch::kBool);
  for (int64_t i = 0; i < n_chunks; ++i)
    mask[i].slice(0, 0, chunks[i]->keys[0].size(0)).fill_(true);
  // Summaries laid out [B, most, r, r2] with a validity mask, then folded chunk by chunk.
  const auto owners = torch::tensor(owner, torch::kInt64);
  const auto slots = owners * most + torch::tensor(index, torch::kInt64);
  auto valid = torch::zeros({b * most}, torch::kBool);
  valid.index_fill_(0, slots, true);
  valid = valid.view({b, most});
  std::map<int, std::pair<torch::Tensor, torch::Tensor>> padded;  // per layer: keys, values
  for (size_t s = 0; s < nets.shape.sites.size(); ++s) {
    const int layer = nets.shape.sites[s].first;
    auto it = padded.find(layer);
    if (it == padded.end()) {
      const auto& first = chunks[0]->keys[layer];
      auto k = torch::zeros({n_chunks, longest, first.size(1), first.size(2)});
      auto v = torch::zeros_like(k);
      for (int64_t i = 0; i < n_chunks; ++i) {
        const int64_t n = chunks[i]->keys[layer].size(0);
        k[i].slice(0, 0, n).copy_(chunks[i]->keys[layer]);
        v[i].slice(0, 0, n).copy_(chunks[i]->values[layer]);
      }
      it = padded.emplace(layer, std::make_pair(k, v)).first;
    }
    const auto summaries = nets.Summaries(s, it->second.first, it->second.second, mask);
    auto laid = torch::zeros({b * most, nets.shape.rank, nets.shape.rank_out});
    laid =
        laid.index_copy(0, slots, summaries).view({b, most, nets.shape.rank, nets.shape.rank_out});
    for (int64_t c = 0; c < most; ++c) {
      const auto next = nets.Fold(s, h[s], laid.select(1, c));
      h[s] = torch::where(valid.select(1, c).view({b, 1, 1}), next, h[s]);
    }
  }
  return h;
}

LowRankTorch UpdateOf(const MapperNets& nets, int layers, const std::vector<torch::Tensor>& h) {
  LowRankTorch u;
  u.sites.resize(static_cast<size_t>(layers) * LowRankTorch::kProjections);
  for (size_t s = 0; s < nets.shape.sites.size(); ++s) {
    const auto [layer, projection] = nets.shape.sites[s];
    auto& site = u.sites[static_cast<size_t>(layer) * LowRankTorch::kProjections + projection];
    site.w2 = nets.sites[s]->w2;
    site.w1 = nets.sites[s]->w1;
    site.h = h[s];
  }
  return u;
}

// One query's row: "<BOS>Q: <input>\nA: <output>" + "\n" (or EOS), with the answer's span.
struct QueryRow {
  std::vector<int32_t> tokens;
  size_t answer_begin = 0;  // first answer token (the prompt ends just before it)
};

QueryRow BuildQuery(const Tokenizer& tok, const std::string& context, const IclExample& q,
                    int32_t newline) {
  QueryRow row;
  const std::string prompt = context + IclPrompt(q.input);
  row.answer_begin = tok.Encode(prompt, true).size();
  row.tokens = tok.Encode(prompt + " " + q.output, true);
  row.tokens.push_back(newline);
  return row;
}

// Per row: whether greedy decoding yields exactly the answer then a stop (teacher-forced EM),
// and the weighted answer loss. logits [B, T, V] of tokens[:, :-1]... computed here.
struct Scored {
  torch::Tensor loss;           // mean answer cross-entropy (differentiable)
  std::vector<bool> hits;       // per row
  torch::Tensor answer_logits;  // [answer tokens total, V] (for distillation)
};

Scored Score(LanguageModel& lm, const std::vector<QueryRow>& rows, const LowRankTorch* update,
             const std::vector<int32_t>& stops) {
  std::vector<std::vector<int32_t>> seqs;
  for (const QueryRow& r : rows) seqs.push_back(r.tokens);
  auto [tokens, mask] = Pad(seqs);
  const auto logits =
      TorchAccess::Forward(lm, tokens, torch::Tensor(), torch::Tensor(), nullptr, update);
  Scored out;
  std::vector<int64_t> flat_rows, flat_pos, targets;
  for (size_t i = 0; i < rows.size(); ++i) {
    for (size_t p = rows[i].answer_begin; p < rows[i].tokens.size(); ++p) {
      flat_rows.push_back(static_cast<int64_t>(i));
      flat_pos.push_back(static_cast<int64_t>(p) - 1);
      targets.push_back(rows[i].tokens[p]);
    }
  }
  const auto picked = logits.index({torch::tensor(flat_rows), torch::tensor(flat_pos)});
  const auto target = torch::tensor(targets, torch::kInt64);
  out.loss = torch::nn::functional::cross_entropy(picked, target);
  out.answer_logits = picked;
  const auto argmax = picked.argmax(-1).contiguous();
  const int64_t* am = argmax.data_ptr<int64_t>();
  size_t k = 0;
  for (size_t i = 0; i < rows.size(); ++i) {
    bool hit = true;
    for (size_t p = rows[i].answer_begin; p < rows[i].tokens.size(); ++p, ++k) {
      const bool last = p + 1 == rows[i].tokens.size();
      if (last) {
        hit = hit &&
              std::find(stops.begin(), stops.end(), static_cast<int32_t>(am[k])) != stops.end();
      } else {
        hit = hit && am[k] == rows[i].tokens[p];
      }
    }
    out.hits.push_back(hit);
  }
  return out;
}

struct Corpus {
  std::vector<IclTask> train, heldout;
};

double Mean(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x;
  return v.empty() ? 0 : s / v.size();
}

class Trainer {
 public:
  Trainer(const SessionTrainOptions& o, LanguageModel& lm, const Tokenizer& tok, Corpus corpus,
          MapperShape shape)
      : o_(o),
        lm_(lm),
        tok_(tok),
        corpus_(std::move(corpus)),
        nets_(lm.config(), std::move(shape)),
        optimizer_(nets_.parameters(), torch::optim::AdamWOptions(o.lr).weight_decay(0.0)) {
    newline_ = tok_.Encode("\n", false).back();
    stops_ = {newline_};
    if (tok_.eos_id() >= 0) stops_.push_back(tok_.eos_id());
  }

  MapperNets& nets() { return nets_; }
  torch::optim::AdamW& optimizer() { return optimizer_; }

  std::vector<std::vector<int32_t>> ChunkTokens(const IclTask& task, int demos) const {
    // The engine's rule, so a chunk over max_chunk_tokens is split where the daemon and the
    // evaluation would split it.
    return SessionChunksOfMessages(tok_, IclContextChunks(task, demos, o_.demos_per_chunk),
                                   o_.max_chunk_tokens);
  }

  // The in-context prompt's context for `demos` demonstrations (IclTaskPrompt without the query).
  static std::string InContext(const IclTask& task, int demos) {
    std::string s;
    for (const std::string& c : IclContextChunks(task, demos, 1 << 30)) s += c;
    return s;
  }

  // The training tasks' chunks, computed once: each task's context passages (always in its
  // context) and its demonstrations in chunks of demos_per_chunk, up to what a training context
  // and its queries can use. f16 keeps the cache small.
  void PrepareCache() {
    const int chunk = std::max(1, o_.demos_per_chunk);
    const int demos = (o_.max_train_demos + o_.queries_per_task + chunk - 1) / chunk * chunk * 2;
    const auto start = std::chrono::steady_clock::now();
    for (size_t t = 0; t < corpus_.train.size(); ++t) {
      const IclTask& task = corpus_.train[t];
      TaskCache cache;
      IclTask passages = task;
      passages.demonstrations.clear();
      const std::vector<std::vector<int32_t>> fixed = ChunkTokens(passages, 0);
      IclTask shown = task;
      shown.context.clear();
      shown.demonstrations.resize(std::min<size_t>(task.demonstrations.size(), demos));
      std::vector<std::vector<int32_t>> all = fixed;
      const std::vector<std::vector<int32_t>> demo_chunks =
          ChunkTokens(shown, static_cast<int>(shown.demonstrations.size()));
      all.insert(all.end(), demo_chunks.begin(), demo_chunks.end());
      std::vector<ChunkKv> kv = ChunkStates(lm_, all, torch::kHalf);
      cache.fixed.assign(kv.begin(), kv.begin() + fixed.size());
      cache.chunks.assign(kv.begin() + fixed.size(), kv.end());
      // Only whole chunks: a partial last one is dropped.
      if (shown.demonstrations.size() % chunk != 0 && !cache.chunks.empty())
        cache.chunks.pop_back();
      cache_.push_back(std::move(cache));
      const double s =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      std::fprintf(stderr, "\rcontext states: %zu/%zu tasks, %.0f s", t + 1, corpus_.train.size(),
                   s);
    }
    std::fprintf(stderr, "\n");
  }

  // One optimizer step over tasks_per_step training tasks: for each, a context of k whole chunks
  // (k log-uniform in 1 .. max_train_demos / demos_per_chunk) at a random place among its
  // demonstrations, and the queries_per_task demonstrations after it as questions.
  absl::StatusOr<std::pair<double, double>> Step(double lr, std::mt19937_64& rng) {
    for (auto& group : optimizer_.param_groups()) {
      static_cast<torch::optim::AdamWOptions&>(group.options()).lr(lr);
    }
    const int chunk = std::max(1, o_.demos_per_chunk);
    std::vector<std::vector<const ChunkKv*>> contexts;
    std::vector<QueryRow> rows, teacher_rows;
    std::vector<int64_t> owner;
    std::vector<size_t> distilled;  // rows with a teacher row, in order
    const double log_max = std::log(std::max(1.0, double(o_.max_train_demos) / chunk));
    for (int t = 0; t < o_.tasks_per_step; ++t) {
      const size_t which = std::uniform_int_distribution<size_t>(0, cache_.size() - 1)(rng);
      const IclTask& task = corpus_.train[which];
      const TaskCache& cache = cache_[which];
      const int available = static_cast<int>(cache.chunks.size());
      const int spare = (o_.queries_per_task + chunk - 1) / chunk;  // chunks the queries take
      if (available <= spare) continue;
      int k =
          static_cast<int>(std::exp(std::uniform_real_distribution<double>(0, log_max)(rng)) + 0.5);
      k = std::clamp(k, 1, available - spare);
      const int first = std::uniform_int_distribution<int>(0, available - spare - k)(rng);
      std::vector<const ChunkKv*> context;
      for (const ChunkKv& f : cache.fixed) context.push_back(&f);
      for (int c = first; c < first + k; ++c) context.push_back(&cache.chunks[c]);
      contexts.push_back(std::move(context));
      const int demos_begin = first * chunk;
      const int queries_begin = (first + k) * chunk;
      IclTask window = task;
      window.demonstrations.assign(task.demonstrations.begin() + demos_begin,
                                   task.demonstrations.begin() + queries_begin);
      const std::string in_context = InContext(window, k * chunk);
      for (int q = queries_begin; q < queries_begin + o_.queries_per_task; ++q) {
        rows.push_back(BuildQuery(tok_, "", task.demonstrations[q], newline_));
        owner.push_back(static_cast<int64_t>(contexts.size()) - 1);
        if (o_.distill > 0) {
          QueryRow teacher = BuildQuery(tok_, in_context, task.demonstrations[q], newline_);
          if (static_cast<int>(teacher.tokens.size()) <= o_.teacher_tokens &&
              teacher.tokens.size() - teacher.answer_begin ==
                  rows.back().tokens.size() - rows.back().answer_begin) {
            distilled.push_back(rows.size() - 1);
            teacher_rows.push_back(std::move(teacher));
          }
        }
      }
    }
    if (rows.empty())
      return absl::InvalidArgumentError("no training task has enough demonstrations");
    std::vector<torch::Tensor> h = States(nets_, contexts);
    const auto index = torch::tensor(owner, torch::kInt64);
    for (auto& t : h) t = t.index_select(0, index);
    const LowRankTorch update = UpdateOf(nets_, lm_.config().num_layers, h);
    Scored student = Score(lm_, rows, &update, stops_);
    torch::Tensor loss = student.loss;
    if (!teacher_rows.empty()) {
      torch::Tensor teacher_logits;
      {
        torch::NoGradGuard no_grad;
        teacher_logits = Score(lm_, teacher_rows, nullptr, stops_).answer_logits;
      }
      // The student's answer positions of the distilled rows, in the teacher's order.
      std::vector<int64_t> picks;
      int64_t k = 0;
      size_t d = 0;
      for (size_t i = 0; i < rows.size(); ++i) {
        const int64_t n = static_cast<int64_t>(rows[i].tokens.size() - rows[i].answer_begin);
        if (d < distilled.size() && distilled[d] == i) {
          for (int64_t j = 0; j < n; ++j) picks.push_back(k + j);
          ++d;
        }
        k += n;
      }
      const auto s = student.answer_logits.index_select(0, torch::tensor(picks, torch::kInt64));
      const auto kl = torch::nn::functional::kl_div(
          torch::log_softmax(s, -1), torch::log_softmax(teacher_logits, -1),
          torch::nn::functional::KLDivFuncOptions().reduction(torch::kBatchMean).log_target(true));
      loss = loss + o_.distill * kl;
    }
    optimizer_.zero_grad();
    loss.backward();
    torch::nn::utils::clip_grad_norm_(nets_.parameters(), 1.0);
    optimizer_.step();
    double hits = 0;
    for (bool b : student.hits) hits += b;
    return std::make_pair(loss.item<double>(), hits / std::max<size_t>(1, student.hits.size()));
  }

  // Accuracy of one task's first eval_queries queries after `demos` demonstrations: in context
  // (nullopt where the prompt does not fit the LM's positions) and as a session.
  // in_context_demos: the demonstrations the in-context prompts held, `demos` or as many as fit
  // the LM's positions for every query.
  struct TaskFigures {
    double in_context = 0;
    int in_context_demos = 0;
    double session = 0;
  };
  TaskFigures Evaluate(const IclTask& task, int demos, bool with_session) {
    torch::NoGradGuard no_grad;
    TaskFigures f;
    const size_t n = std::min<size_t>(task.queries.size(), o_.eval_queries);
    auto rate = [](const std::vector<bool>& hits) {
      double s = 0;
      for (bool b : hits) s += b;
      return s / std::max<size_t>(1, hits.size());
    };
    std::vector<QueryRow> icl, plain;
    for (size_t q = 0; q < n; ++q) plain.push_back(BuildQuery(tok_, "", task.queries[q], newline_));
    // The most demonstrations (<= demos) whose prompts all fit: the lengths grow with k, so a
    // binary search.
    auto rows_for = [&](int k, std::vector<QueryRow>* rows) {
      const std::string in_context = InContext(task, k);
      rows->clear();
      for (size_t q = 0; q < n; ++q) {
        rows->push_back(BuildQuery(tok_, in_context, task.queries[q], newline_));
        if (static_cast<int>(rows->back().tokens.size()) > lm_.config().max_position_embeddings) {
          return false;
        }
      }
      return true;
    };
    int lo = 0, hi = std::min<int>(demos, task.demonstrations.size());
    while (lo < hi) {
      const int mid = (lo + hi + 1) / 2;
      if (rows_for(mid, &icl)) {
        lo = mid;
      } else {
        hi = mid - 1;
      }
    }
    f.in_context_demos = lo;
    auto cached = icl_cache_.find({task.id, lo});
    if (cached == icl_cache_.end()) {
      rows_for(lo, &icl);
      // Long prompts one at a time: a batch of 1,000-token rows is slow and no faster.
      std::vector<bool> hits;
      for (const QueryRow& r : icl) hits.push_back(Score(lm_, {r}, nullptr, stops_).hits[0]);
      cached = icl_cache_.emplace(std::make_pair(task.id, lo), rate(hits)).first;
    }
    f.in_context = cached->second;
    if (with_session) {
      const std::vector<ChunkKv> kv = ChunkStates(lm_, ChunkTokens(task, demos));
      std::vector<const ChunkKv*> context;
      for (const ChunkKv& c : kv) context.push_back(&c);
      std::vector<torch::Tensor> h = States(nets_, {context});
      for (auto& t : h) t = t.expand({static_cast<int64_t>(n), -1, -1});
      const LowRankTorch update = UpdateOf(nets_, lm_.config().num_layers, h);
      f.session = rate(Score(lm_, plain, &update, stops_).hits);
    }
    return f;
  }

  // Mean accuracy per demonstration count over a task set; JSON rows.
  nlohmann::json EvaluateSet(const std::vector<IclTask>& all, const std::string& name,
                             bool with_session) {
    // At most eval_tasks tasks, evenly spaced (the files list them family by family).
    std::vector<IclTask> tasks;
    const size_t n = std::min<size_t>(all.size(), std::max(1, o_.eval_tasks));
    for (size_t i = 0; i < n; ++i) tasks.push_back(all[i * all.size() / n]);
    nlohmann::json rows = nlohmann::json::array();
    for (int demos : o_.eval_demos) {
      std::vector<double> icl, icl_demos, session;
      for (const IclTask& task : tasks) {
        const TaskFigures f = Evaluate(task, demos, with_session);
        icl.push_back(f.in_context);
        icl_demos.push_back(f.in_context_demos);
        session.push_back(f.session);
      }
      nlohmann::json row = {{"set", name},
                            {"tasks", tasks.size()},
                            {"demonstrations", demos},
                            {"in_context", Mean(icl)},
                            {"in_context_demonstrations", Mean(icl_demos)}};
      if (with_session) row["session"] = Mean(session);
      std::fprintf(stderr, "  %-8s %5d demos: in-context %.3f (%.0f demos fit)  session %s\n",
                   name.c_str(), demos, Mean(icl), Mean(icl_demos),
                   with_session ? absl::StrFormat("%.3f", Mean(session)).c_str() : "-");
      rows.push_back(row);
    }
    return rows;
  }

  const Corpus& corpus() const { return corpus_; }

 private:
  const SessionTrainOptions& o_;
  LanguageModel& lm_;
  const Tokenizer& tok_;
  Corpus corpus_;
  struct TaskCache {
    std::vector<ChunkKv> fixed;   // the context passages
    std::vector<ChunkKv> chunks;  // demonstrations [c * demos_per_chunk, (c + 1) * ...)
  };
  MapperNets nets_;
  torch::optim::AdamW optimizer_;
  std::vector<TaskCache> cache_;
  std::map<std::pair<std::string, int>, double> icl_cache_;  // (task, k) -> in-context accuracy
  int32_t newline_ = 0;
  std::vector<int32_t> stops_;
};

absl::Status Export(MapperNets& nets, const SessionTrainOptions& o, const std::string& dir,
                    const nlohmann::json& figures) {
  nlohmann::json list = nlohmann::json::array();
  absl::StatusOr<std::string> sha =
      internal::ExportParametersF16(nets, dir + "/session_mapper.safetensors", {}, &list);
  if (!sha.ok()) return sha.status();
  nlohmann::json sites = nlohmann::json::array();
  for (const auto& [layer, projection] : nets.shape.sites) {
    sites.push_back({{"layer", layer}, {"projection", kProjectionNames[projection]}});
  }
  nlohmann::json j = {
      {"format", "knowd-session-mapper"},
      {"version", 1},
      {"sites", sites},
      {"rank", nets.shape.rank},
      {"rank_out", nets.shape.rank_out},
      {"demos_per_chunk", o.demos_per_chunk},
      {"max_chunk_tokens", o.max_chunk_tokens},
      {"chunk_input", "<BOS><chunk text>, positions 0.., every row attended (BOS included)"},
      {"question_input", "<BOS>Q: <question>\\nA:"},
      {"sha256", *sha},
      {"training", figures},
      {"tensors", list},
  };
  std::ofstream out(dir + "/session_mapper.json");
  out << j.dump(2) << "\n";
  if (!out) return absl::InternalError(absl::StrCat(dir, "/session_mapper.json: cannot write"));
  return absl::OkStatus();
}

absl::StatusOr<MapperShape> ShapeFor(const LlamaConfig& c, const std::string& sites, int rank,
                                     int rank_out) {
  MapperShape shape;
  absl::StatusOr<std::vector<std::pair<int, int>>> parsed = ParseSessionSites(sites, c.num_layers);
  if (!parsed.ok()) return parsed.status();
  if (rank < 1 || rank > 256 || rank_out < 1 || rank_out > 256) {
    return absl::InvalidArgumentError("--session-rank and --session-rank-out must be in 1..256");
  }
  shape.sites = *std::move(parsed);
  shape.rank = rank;
  shape.rank_out = rank_out;
  shape.kv_heads = c.num_kv_heads;
  shape.head_dim = c.head_dim;
  return shape;
}

}  // namespace

absl::StatusOr<std::vector<std::pair<int, int>>> ParseSessionSites(const std::string& text,
                                                                   int layers) {
  std::vector<std::pair<int, int>> out;
  for (absl::string_view entry : absl::StrSplit(text, ',', absl::SkipWhitespace())) {
    entry = absl::StripAsciiWhitespace(entry);
    std::vector<int> which;
    absl::string_view name = entry;
    if (const size_t dot = entry.find('.'); dot != absl::string_view::npos) {
      int layer = -1;
      if (!absl::SimpleAtoi(entry.substr(0, dot), &layer) || layer < 0 || layer >= layers) {
        return absl::InvalidArgumentError(
            absl::StrCat("--session-sites: \"", entry, "\" names no layer of 0..", layers - 1));
      }
      which.push_back(layer);
      name = entry.substr(dot + 1);
    } else {
      for (int l = 0; l < layers; ++l) which.push_back(l);
    }
    int projection = -1;
    for (int p = 0; p < LowRankTorch::kProjections; ++p) {
      if (name == kProjectionNames[p]) projection = p;
    }
    if (projection < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("--session-sites: \"", entry,
                       "\": the projection must be one of qkv, o, gate, up, down"));
    }
    for (int l : which) out.emplace_back(l, projection);
  }
  if (out.empty()) return absl::InvalidArgumentError("--session-sites names no site");
  std::sort(out.begin(), out.end());
  if (std::adjacent_find(out.begin(), out.end()) != out.end()) {
    return absl::InvalidArgumentError("--session-sites names a site twice");
  }
  return out;
}

absl::Status TrainSession(const SessionTrainOptions& o) {
  torch::manual_seed(o.seed);
  torch::set_num_threads(std::max(1, o.threads));
  absl::StatusOr<std::unique_ptr<LanguageModel>> lm = LanguageModel::LoadBundle(o.bundle_dir);
  if (!lm.ok()) return lm.status();
  TorchAccess::Freeze(**lm);
  absl::StatusOr<std::unique_ptr<Tokenizer>> tok =
      LoadSentencePieceTokenizer(o.bundle_dir + "/tokenizer.model");
  if (!tok.ok()) return tok.status();
  Corpus corpus;
  absl::StatusOr<std::vector<IclTask>> train = ReadIclTasks(o.data_dir, false);
  if (!train.ok()) return train.status();
  absl::StatusOr<std::vector<IclTask>> heldout = ReadIclTasks(o.data_dir, true);
  if (!heldout.ok()) return heldout.status();
  corpus.train = *std::move(train);
  corpus.heldout = *std::move(heldout);
  if (corpus.train.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(o.data_dir, " has no in-context training tasks"));
  }
  absl::StatusOr<MapperShape> shape = ShapeFor((*lm)->config(), o.sites, o.rank, o.rank_out);
  if (!shape.ok()) return shape.status();
  std::fprintf(stderr, "session: %zu training tasks, %zu held out; %zu sites, rank %ld x %ld\n",
               corpus.train.size(), corpus.heldout.size(), shape->sites.size(),
               static_cast<long>(shape->rank), static_cast<long>(shape->rank_out));
  try {
    Trainer trainer(o, **lm, **tok, std::move(corpus), *std::move(shape));
    nlohmann::json figures;
    if (o.measure_only) {
      std::fprintf(stderr, "teacher-forced greedy EM, %d queries per task:\n", o.eval_queries);
      figures["train"] = trainer.EvaluateSet(trainer.corpus().train, "train", false);
      figures["heldout"] = trainer.EvaluateSet(trainer.corpus().heldout, "heldout", false);
      std::printf("%s\n", figures.dump(2).c_str());
      return absl::OkStatus();
    }
    std::filesystem::create_directories(o.work_dir);
    const std::string checkpoint = o.work_dir + "/session.pt";
    int first = 1;
    if (o.resume && std::filesystem::exists(checkpoint)) {
      if (absl::Status s =
              internal::LoadTorchCheckpoint(trainer.nets(), trainer.optimizer(), checkpoint);
          !s.ok()) {
        return s;
      }
      std::ifstream step_file(checkpoint + ".step");
      step_file >> first;
      ++first;
      std::fprintf(stderr, "resuming after step %d\n", first - 1);
    }
    if (first <= o.steps) trainer.PrepareCache();
    std::mt19937_64 rng(o.seed + static_cast<uint64_t>(first) * 0x9E3779B97F4A7C15ull);
    const auto start = std::chrono::steady_clock::now();
    double loss_sum = 0, acc_sum = 0;
    int logged = 0;
    for (int step = first; step <= o.steps; ++step) {
      const double progress = static_cast<double>(step) / o.steps;
      const double lr = step <= o.warmup
                            ? o.lr * step / o.warmup
                            : o.lr * (0.1 + 0.9 * 0.5 * (1 + std::cos(M_PI * progress)));
      absl::StatusOr<std::pair<double, double>> r = trainer.Step(lr, rng);
      if (!r.ok()) return r.status();
      loss_sum += r->first;
      acc_sum += r->second;
      ++logged;
      if (step % o.log_every == 0 || step == o.steps) {
        const double s =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        std::fprintf(stderr, "step %d/%d loss %.4f train EM %.3f lr %.2e %.2f s/step\n", step,
                     o.steps, loss_sum / logged, acc_sum / logged, lr, s / (step - first + 1));
        loss_sum = acc_sum = 0;
        logged = 0;
      }
      if (step % o.checkpoint_every == 0 || step == o.steps) {
        if (absl::Status s =
                internal::SaveTorchCheckpoint(trainer.nets(), trainer.optimizer(), checkpoint);
            !s.ok()) {
          return s;
        }
        std::ofstream(checkpoint + ".step") << step << "\n";
      }
      if (o.eval_every > 0 && step % o.eval_every == 0 && step != o.steps) {
        std::fprintf(stderr, "step %d, held out:\n", step);
        trainer.EvaluateSet(trainer.corpus().heldout, "heldout", true);
      }
    }
    std::fprintf(stderr, "teacher-forced greedy EM, %d queries per task:\n", o.eval_queries);
    figures["train"] = trainer.EvaluateSet(trainer.corpus().train, "train", true);
    figures["heldout"] = trainer.EvaluateSet(trainer.corpus().heldout, "heldout", true);
    figures["steps"] = o.steps;
    figures["tasks_per_step"] = o.tasks_per_step;
    figures["queries_per_task"] = o.queries_per_task;
    figures["max_train_demos"] = o.max_train_demos;
    figures["lr"] = o.lr;
    figures["distill"] = o.distill;
    figures["seed"] = o.seed;
    if (!o.export_mapper) return absl::OkStatus();
    return Export(trainer.nets(), o, o.bundle_dir + "/adapter", figures);
  } catch (const std::exception& e) {
    return TorchError("training the session mapper", e);
  }
}

absl::StatusOr<TorchSessionReference> TorchSession(const std::string& bundle_dir,
                                                   const std::vector<std::vector<int32_t>>& chunks,
                                                   const std::vector<int32_t>& question) {
  const std::string dir = bundle_dir + "/adapter";
  std::ifstream in(dir + "/session_mapper.json");
  if (!in) return absl::NotFoundError(absl::StrCat(dir, "/session_mapper.json: cannot open"));
  const nlohmann::json j = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.contains("sites")) {
    return absl::InvalidArgumentError(absl::StrCat(dir, "/session_mapper.json: malformed"));
  }
  absl::StatusOr<std::unique_ptr<LanguageModel>> lm = LanguageModel::LoadBundle(bundle_dir);
  if (!lm.ok()) return lm.status();
  TorchAccess::Freeze(**lm);
  std::vector<std::string> names;
  for (const auto& s : j["sites"]) {
    names.push_back(absl::StrCat(s.value("layer", -1), ".", s.value("projection", "")));
  }
  absl::StatusOr<MapperShape> shape = ShapeFor((*lm)->config(), absl::StrJoin(names, ","),
                                               j.value("rank", 0), j.value("rank_out", 0));
  if (!shape.ok()) return shape.status();
  try {
    // ParseSessionSites sorts the sites: the order Export wrote them in.
    MapperNets nets((*lm)->config(), *shape);
    if (absl::Status s = internal::LoadParameters(nets, dir + "/session_mapper.safetensors");
        !s.ok()) {
      return s;
    }
    torch::NoGradGuard no_grad;
    TorchSessionReference out;
    std::vector<torch::Tensor> h(nets.shape.sites.size());
    for (auto& t : h) t = torch::zeros({1, nets.shape.rank, nets.shape.rank_out});
    const std::vector<ChunkKv> kv = ChunkStates(**lm, chunks);
    std::vector<const ChunkKv*> context;
    for (const ChunkKv& chunk : kv) {
      context.push_back(&chunk);  // the state after each chunk: the chunks so far, folded
      h = States(nets, {context});
      std::vector<float> state;
      for (const torch::Tensor& site : h) {
        const torch::Tensor c = site.contiguous();
        state.insert(state.end(), c.data_ptr<float>(), c.data_ptr<float>() + c.numel());
      }
      out.states.push_back(std::move(state));
    }
    const LowRankTorch update = UpdateOf(nets, (*lm)->config().num_layers, h);
    auto [tokens, mask] = Pad({question});
    const torch::Tensor logits =
        TorchAccess::Forward(**lm, tokens, torch::Tensor(), torch::Tensor(), nullptr, &update)
            .contiguous();
    out.logits.assign(logits.data_ptr<float>(), logits.data_ptr<float>() + logits.numel());
    return out;
  } catch (const std::exception& e) {
    return TorchError("the reference session", e);
  }
}

}  // namespace knowd::train
