#include "bench/eval_sessions.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "bench/eval.h"
#include "bench/eval_internal.h"
#include "bench/png_plot.h"
#include "cli/progress.h"
#include "kernels/backend.h"
#include "kernels/peak.h"
#include "knowledge/prompt.h"
#include "model/low_rank.h"
#include "model/session_mapper.h"
#include "model/tokenizer.h"
#include "model/transformer.h"
#include "nlohmann/json.hpp"
#include "train/world.h"

namespace knowd::bench {
namespace {

using internal::Fixed;
using internal::Json;
using train::IclTask;

struct Engine {
  std::unique_ptr<Backend> backend;
  std::unique_ptr<Transformer> model;
  std::unique_ptr<SessionMapper> mapper;
  std::unique_ptr<Tokenizer> tokenizer;
};

// Greedy answers of `prompts` (BOS first), all under `update` (or none), 16 sequences a pass.
absl::StatusOr<std::vector<std::string>> Answer(Engine& e,
                                                const std::vector<std::vector<int32_t>>& prompts,
                                                const LowRankState* update, int max_tokens) {
  std::vector<AnswerRequest> requests(prompts.size());
  for (size_t i = 0; i < prompts.size(); ++i) {
    requests[i].prompt = prompts[i];
    requests[i].update = update;
  }
  return GreedyAnswers(*e.model, *e.tokenizer, requests, /*batch=*/16, max_tokens);
}

// The in-context prompt's context: the task's passages and first k demonstrations.
std::string InContext(const IclTask& task, int k) {
  std::string s;
  for (const std::string& c : train::IclContextChunks(task, k, 1 << 30)) s += c;
  return s;
}

struct Figures {
  double zero_shot = 0, in_context = 0, session = 0;
  int in_context_demos = 0;
  int64_t in_context_tokens = 0;  // the longest in-context prompt's tokens
};

class SessionEval {
 public:
  SessionEval(const SessionEvalOptions& o, Engine& e) : o_(o), e_(e) {}

  std::vector<std::vector<int32_t>> Prompts(const IclTask& task, const std::string& context,
                                            size_t queries) const {
    std::vector<std::vector<int32_t>> out;
    for (size_t q = 0; q < queries; ++q) {
      out.push_back(e_.tokenizer->Encode(context + train::IclPrompt(task.queries[q].input), true));
    }
    return out;
  }

  double Score(const IclTask& task, const std::vector<std::string>& answers) const {
    double hits = 0;
    for (size_t q = 0; q < answers.size(); ++q)
      hits += ExactMatch(answers[q], task.queries[q].output);
    return answers.empty() ? 0 : hits / answers.size();
  }

  // The largest k <= n whose prompts all fit the LM's positions with the answer.
  int FittingDemos(const IclTask& task, int n, size_t queries) const {
    const int limit = e_.model->config().max_position_embeddings - o_.max_answer_tokens;
    auto fits = [&](int k) {
      for (const auto& p : Prompts(task, InContext(task, k), queries)) {
        if (static_cast<int>(p.size()) > limit) return false;
      }
      return true;
    };
    // The prompts grow with k: a binary search for the largest that fits.
    int lo = 0, hi = std::min<int>(n, static_cast<int>(task.demonstrations.size()));
    while (lo < hi) {
      const int mid = (lo + hi + 1) / 2;
      if (fits(mid)) {
        lo = mid;
      } else {
        hi = mid - 1;
      }
    }
    return lo;
  }

  absl::StatusOr<std::vector<float>> SessionState(const IclTask& task, int n) const {
    std::vector<float> state(e_.mapper->state_floats(), 0.0f);
    const std::vector<std::vector<int32_t>> chunks = SessionChunksOfMessages(
        *e_.tokenizer, train::IclContextChunks(task, n, e_.mapper->spec().demos_per_chunk),
        e_.mapper->spec().max_chunk_tokens);
    if (absl::Status s = e_.mapper->Absorb(chunks, &state); !s.ok()) return s;
    return state;
  }

  // Figures of one task at every n.
  absl::StatusOr<std::vector<Figures>> Task(const IclTask& task) {
    const size_t queries = std::min<size_t>(task.queries.size(), o_.queries);
    std::vector<Figures> out(o_.demonstrations.size());
    auto zero = Answer(e_, Prompts(task, "", queries), nullptr, o_.max_answer_tokens);
    if (!zero.ok()) return zero.status();
    const double zero_shot = Score(task, *zero);
    std::map<int, std::pair<double, int64_t>> in_context;  // k -> accuracy, longest prompt
    for (size_t i = 0; i < o_.demonstrations.size(); ++i) {
      const int n = o_.demonstrations[i];
      Figures& f = out[i];
      f.zero_shot = zero_shot;
      f.in_context_demos = FittingDemos(task, n, queries);
      auto it = in_context.find(f.in_context_demos);
      if (it == in_context.end()) {
        const auto prompts = Prompts(task, InContext(task, f.in_context_demos), queries);
        auto answers = Answer(e_, prompts, nullptr, o_.max_answer_tokens);
        if (!answers.ok()) return answers.status();
        int64_t longest = 0;
        for (const auto& p : prompts) longest = std::max<int64_t>(longest, p.size());
        it = in_context.emplace(f.in_context_demos, std::make_pair(Score(task, *answers), longest))
                 .first;
      }
      f.in_context = it->second.first;
      f.in_context_tokens = it->second.second;
      if (n == 0 && task.context.empty()) {
        f.session = zero_shot;  // nothing to absorb: the state is zero, the LM unchanged
        continue;
      }
      absl::StatusOr<std::vector<float>> state = SessionState(task, n);
      if (!state.ok()) return state.status();
      auto served = LowRankState::Create(&e_.mapper->factors(), *state);
      if (!served.ok()) return served.status();
      auto answers = Answer(e_, Prompts(task, "", queries), served->get(), o_.max_answer_tokens);
      if (!answers.ok()) return answers.status();
      f.session = Score(task, *answers);
    }
    return out;
  }

 private:
  const SessionEvalOptions& o_;
  Engine& e_;
};

// One way of answering the latency task's questions: an engine, its prompts, its update.
struct LatencyVariant {
  Engine* engine = nullptr;
  const std::vector<std::vector<int32_t>>* prompts = nullptr;
  const LowRankState* update = nullptr;
};

// Milliseconds of one question: prefill and 4 greedy decode steps at batch 1.
absl::StatusOr<double> QuestionMillis(const LatencyVariant& v, size_t q) {
  Engine& e = *v.engine;
  const std::vector<int32_t>& prompt = (*v.prompts)[q];
  const int vocab = e.model->config().vocab_size;
  absl::StatusOr<std::unique_ptr<KvCache>> cache =
      e.model->NewCache(static_cast<int>(prompt.size()) + 4, /*allow_longer=*/true);
  if (!cache.ok()) return cache.status();
  std::vector<float> logits;
  const auto start = std::chrono::steady_clock::now();
  SequenceStep step{cache->get(), prompt, false};
  step.update = v.update;
  if (absl::Status s = e.model->Forward({&step, 1}, &logits); !s.ok()) return s;
  for (int t = 0; t < 4; ++t) {
    const int32_t id = static_cast<int32_t>(
        std::max_element(logits.begin(), logits.begin() + vocab) - logits.begin());
    SequenceStep next{cache->get(), {&id, 1}, false};
    next.update = v.update;
    if (absl::Status s = e.model->Forward({&next, 1}, &logits); !s.ok()) return s;
  }
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
      .count();
}

constexpr int kLatencyRounds = 7;

// Each variant's median over the questions of its best of kLatencyRounds. The variants take
// turns question by question and round by round, so a slower spell of the machine falls on all
// of them alike and their ratios hold.
absl::StatusOr<std::vector<double>> InterleavedMillis(const std::vector<LatencyVariant>& variants,
                                                      size_t questions) {
  std::vector<std::vector<double>> best(variants.size(), std::vector<double>(questions, 1e30));
  for (size_t q = 0; q < questions; ++q) {
    for (int round = 0; round < kLatencyRounds; ++round) {
      for (size_t v = 0; v < variants.size(); ++v) {
        absl::StatusOr<double> ms = QuestionMillis(variants[v], q);
        if (!ms.ok()) return ms.status();
        best[v][q] = std::min(best[v][q], *ms);
      }
    }
  }
  std::vector<double> out;
  for (std::vector<double>& b : best) {
    std::sort(b.begin(), b.end());
    out.push_back(b.empty() ? 0 : b[b.size() / 2]);
  }
  return out;
}

}  // namespace

absl::Status RunSessionEval(const SessionEvalOptions& o) {
  Engine e;
  e.backend = MakeCpuBackend(o.threads);
  absl::StatusOr<std::unique_ptr<Transformer>> model =
      Transformer::Load(o.bundle_dir, e.backend.get());
  if (!model.ok()) return model.status();
  e.model = *std::move(model);
  absl::StatusOr<std::unique_ptr<SessionMapper>> mapper =
      SessionMapper::Load(o.bundle_dir + "/adapter", e.model.get());
  if (!mapper.ok()) {
    if (absl::IsNotFound(mapper.status())) {
      return absl::FailedPreconditionError(
          absl::StrCat(o.bundle_dir,
                       " has no session mapper (adapter/session_mapper.json); train one with "
                       "knowd-train session"));
    }
    return mapper.status();
  }
  e.mapper = *std::move(mapper);
  absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer =
      LoadTokenizer(o.bundle_dir + "/tokenizer.model");
  if (!tokenizer.ok()) return tokenizer.status();
  e.tokenizer = *std::move(tokenizer);
  if (o.demonstrations.empty()) return absl::InvalidArgumentError("no demonstration counts");

  Json report;
  report["bundle"] = o.bundle_dir;
  report["data"] = o.data_dir;
  report["mapper_sha256"] = e.mapper->spec().sha256;
  report["scoring"] =
      "SQuAD exact match of the greedy answer (up to \"\\n\" or EOS), mean over tasks of each "
      "task's accuracy on its first queries";
  SessionEval eval(o, e);
  std::string md = "## Sessions against in-context reading\n\n";
  absl::StrAppend(&md, "Bundle `", o.bundle_dir, "`, mapper ",
                  e.mapper->spec().sha256.substr(0, 12), "; ", o.queries,
                  " queries per task; accuracy is exact match.\n\n",
                  "| set | demos | zero-shot | in-context (demos that fit) | session | session / "
                  "in-context | session bytes | in-context KV bytes |\n",
                  "|---|---|---|---|---|---|---|---|\n");
  Json rows = Json::array();
  const LlamaConfig& c = e.model->config();
  const int64_t kv_bytes_per_token = int64_t{c.num_layers} * c.kv_dim() * 2 * sizeof(float);
  const int64_t session_bytes = e.mapper->state_floats() * static_cast<int64_t>(sizeof(float));
  std::map<std::string, std::vector<Figures>> means;
  for (bool heldout : {false, true}) {
    const std::string set = heldout ? "heldout" : "train";
    absl::StatusOr<std::vector<IclTask>> tasks = train::ReadIclTasks(o.data_dir, heldout);
    if (!tasks.ok()) return tasks.status();
    if (o.tasks > 0 && static_cast<int>(tasks->size()) > o.tasks) tasks->resize(o.tasks);
    if (tasks->empty())
      return absl::InvalidArgumentError(absl::StrCat(o.data_dir, ": no ", set, " tasks"));
    std::vector<Figures> sum(o.demonstrations.size());
    cli::ProgressBar bar(absl::StrCat("sessions (", set, ")"), "tasks",
                         o.progress && isatty(STDERR_FILENO));
    for (size_t t = 0; t < tasks->size(); ++t) {
      absl::StatusOr<std::vector<Figures>> f = eval.Task((*tasks)[t]);
      if (!f.ok()) return f.status();
      for (size_t i = 0; i < sum.size(); ++i) {
        sum[i].zero_shot += (*f)[i].zero_shot;
        sum[i].in_context += (*f)[i].in_context;
        sum[i].session += (*f)[i].session;
        sum[i].in_context_demos += (*f)[i].in_context_demos;
        sum[i].in_context_tokens = std::max(sum[i].in_context_tokens, (*f)[i].in_context_tokens);
      }
      if (o.progress) bar.Update(t + 1, tasks->size());
    }
    bar.Finish();
    const double n = static_cast<double>(tasks->size());
    for (size_t i = 0; i < sum.size(); ++i) {
      Figures& f = sum[i];
      f.zero_shot /= n;
      f.in_context /= n;
      f.session /= n;
      const double demos_fit = f.in_context_demos / n;
      const double ratio = f.in_context > 0 ? f.session / f.in_context : 0;
      rows.push_back({{"set", set},
                      {"tasks", tasks->size()},
                      {"demonstrations", o.demonstrations[i]},
                      {"zero_shot", f.zero_shot},
                      {"in_context", f.in_context},
                      {"in_context_demonstrations", demos_fit},
                      {"session", f.session},
                      {"session_over_in_context", ratio},
                      {"session_bytes", session_bytes},
                      {"in_context_kv_bytes", f.in_context_tokens * kv_bytes_per_token}});
      absl::StrAppend(&md, "| ", set, " | ", o.demonstrations[i], " | ", Fixed(f.zero_shot), " | ",
                      Fixed(f.in_context), " (", Fixed(demos_fit, 1), ") | ", Fixed(f.session),
                      " | ", f.in_context > 0 ? Fixed(ratio, 2) : "-", " | ", session_bytes, " | ",
                      f.in_context_tokens * kv_bytes_per_token, " |\n");
    }
    means[set] = sum;
  }
  report["rows"] = rows;

  // Latency: the first held-out task's queries, one at a time.
  absl::StatusOr<std::vector<IclTask>> heldout = train::ReadIclTasks(o.data_dir, true);
  if (!heldout.ok()) return heldout.status();
  const IclTask& task = heldout->front();
  const size_t queries = std::min<size_t>(task.queries.size(), o.queries);
  const int largest = *std::max_element(o.demonstrations.begin(), o.demonstrations.end());
  const int fit = eval.FittingDemos(task, largest, queries);
  const auto start = std::chrono::steady_clock::now();
  absl::StatusOr<std::vector<float>> state = eval.SessionState(task, largest);
  if (!state.ok()) return state.status();
  const double absorb_ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  auto served = LowRankState::Create(&e.mapper->factors(), *state);
  if (!served.ok()) return served.status();
  const auto plain = eval.Prompts(task, "", queries);
  // The single-session deployment: the same state merged into a copy of the weights
  // (Transformer::MergeLowRank), questions then run with no update at all.
  Engine merged;
  merged.backend = MakeCpuBackend(o.threads);
  absl::StatusOr<std::unique_ptr<Transformer>> merged_model =
      Transformer::Load(o.bundle_dir, merged.backend.get());
  if (!merged_model.ok()) return merged_model.status();
  merged.model = *std::move(merged_model);
  absl::StatusOr<std::unique_ptr<SessionMapper>> merged_mapper =
      SessionMapper::Load(o.bundle_dir + "/adapter", merged.model.get());
  if (!merged_mapper.ok()) return merged_mapper.status();
  auto merged_state = LowRankState::Create(&(*merged_mapper)->factors(), *state);
  if (!merged_state.ok()) return merged_state.status();
  if (absl::Status s = merged.model->MergeLowRank(**merged_state); !s.ok()) return s;
  const auto in_context = eval.Prompts(task, InContext(task, fit), queries);
  absl::StatusOr<std::vector<double>> ms = InterleavedMillis({{&e, &plain, nullptr},
                                                              {&e, &plain, served->get()},
                                                              {&merged, &plain, nullptr},
                                                              {&e, &in_context, nullptr}},
                                                             queries);
  if (!ms.ok()) return ms.status();
  const double zero_ms = (*ms)[0], session_ms = (*ms)[1], merged_ms = (*ms)[2], icl_ms = (*ms)[3];
  const int threads = o.threads > 0 ? o.threads : static_cast<int>(sysconf(_SC_NPROCESSORS_ONLN));
  const double gflops = MeasureSgemmPeakGflops(threads);
  const double bandwidth = MeasureMemoryBandwidthGBs(threads);
  report["latency"] = {
      {"task", task.id},
      {"questions", queries},
      {"measure", absl::StrCat("prefill + 4 decoded tokens, batch 1, median over the questions "
                               "of the best of ",
                               kLatencyRounds, " rounds, the ways taking turns")},
      {"zero_shot_ms", zero_ms},
      {"session_ms", session_ms},
      {"session_demonstrations", largest},
      {"session_over_zero_shot", session_ms / zero_ms},
      {"merged_ms", merged_ms},
      {"merged_over_zero_shot", merged_ms / zero_ms},
      {"in_context_ms", icl_ms},
      {"in_context_demonstrations", fit},
      {"absorb_ms", absorb_ms}};
  report["machine"] = {{"backend", e.backend->name()},
                       {"threads", threads},
                       {"sgemm_peak_gflops", gflops},
                       {"memory_bandwidth_gbs", bandwidth}};
  absl::StrAppend(
      &md, "\nQuestion latency (", task.id, ", prefill + 4 tokens, batch 1, median): zero-shot ",
      Fixed(zero_ms, 2), " ms; with ", largest, " demonstrations absorbed ", Fixed(session_ms, 2),
      " ms (", Fixed(session_ms / zero_ms, 2), "x) as a factored update, ", Fixed(merged_ms, 2),
      " ms (", Fixed(merged_ms / zero_ms, 2),
      "x) merged into a copy of the weights; in context with ", fit, " demonstrations ",
      Fixed(icl_ms, 2), " ms. Absorbing the ", largest, " demonstrations took ",
      Fixed(absorb_ms, 0), " ms. Session state: ", session_bytes,
      " bytes at every number of demonstrations.\n\nMachine: ", e.backend->name(), ", sgemm peak ",
      Fixed(gflops, 1), " GFLOP/s, memory bandwidth ", Fixed(bandwidth, 1), " GB/s (this run).\n");
  std::fputs(md.c_str(), stdout);
  if (o.report_path.empty()) return absl::OkStatus();

  std::vector<PlotSeries> series;
  const Rgb colors[4] = {{31, 119, 180}, {214, 39, 40}, {44, 160, 44}, {255, 127, 14}};
  int color = 0;
  for (const char* set : {"train", "heldout"}) {
    for (const char* what : {"in-context", "session"}) {
      PlotSeries s;
      s.label = absl::StrCat(set, " ", what);
      s.color = colors[color++];
      for (size_t i = 0; i < o.demonstrations.size(); ++i) {
        s.x.push_back(std::log2(1.0 + o.demonstrations[i]));
        const Figures& f = means[set][i];
        s.y.push_back(std::string(what) == "session" ? f.session : f.in_context);
      }
      series.push_back(std::move(s));
    }
  }
  LinePlot plot;
  plot.title = "Accuracy vs demonstrations";
  plot.x_label = "log2(1 + demonstrations)";
  plot.y_label = "exact match";
  absl::StatusOr<std::string> png = RenderLinePlot(plot, series);
  if (!png.ok()) return png.status();
  return internal::WriteReportFiles(o.report_path, report, md, *png);
}

}  // namespace knowd::bench
