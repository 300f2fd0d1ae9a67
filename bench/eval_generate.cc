// Batched greedy answering for knowd eval (bench/eval.h): every prepared prompt through the frozen
// LM, a batch of sequences per forward pass.
#include <algorithm>
#include <functional>
#include <memory>
#include <numeric>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "bench/eval.h"

namespace knowd::bench {

absl::StatusOr<std::vector<std::string>> GreedyAnswers(
    Transformer& model, const Tokenizer& tokenizer, std::span<const AnswerRequest> requests,
    int batch, int max_tokens, const std::function<void(size_t done, size_t total)>& progress) {
  const int capacity = model.config().max_position_embeddings;
  const int vocab = model.config().vocab_size;
  const int32_t eos = tokenizer.eos_id() >= 0 ? tokenizer.eos_id() : model.config().eos_token_id;
  batch = std::max(1, batch);
  std::vector<std::string> answers(requests.size());
  for (size_t i = 0; i < requests.size(); ++i) {
    const AnswerRequest& r = requests[i];
    const int prefix = r.prefix ? r.prefix->rows : 0;
    if (r.prompt.empty() || prefix + static_cast<int>(r.prompt.size()) > capacity) {
      return absl::InvalidArgumentError(
          absl::StrCat("request ", i, ": a prompt of ", r.prompt.size(), " tokens after ", prefix,
                       " prefix rows does not fit the model's ", capacity, " positions"));
    }
  }
  // Longest prompts first: a batch then holds prompts of similar length.
  std::vector<size_t> order(requests.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return requests[a].prompt.size() > requests[b].prompt.size();
  });
  std::vector<std::unique_ptr<KvCache>> caches;
  for (int i = 0; i < std::min<int>(batch, requests.size()); ++i) {
    absl::StatusOr<std::unique_ptr<KvCache>> cache = model.NewCache(capacity);
    if (!cache.ok()) return cache.status();
    caches.push_back(*std::move(cache));
  }

  struct Live {
    size_t request;
    KvCache* cache;
    std::vector<int32_t> out;
    std::string text;
    int32_t next = 0;
    bool done = false;
  };
  std::vector<float> logits;
  std::vector<SequenceStep> steps;
  for (size_t start = 0; start < order.size(); start += batch) {
    const size_t end = std::min(order.size(), start + batch);
    std::vector<Live> live;
    live.reserve(end - start);
    steps.clear();
    for (size_t i = start; i < end; ++i) {
      const AnswerRequest& r = requests[order[i]];
      KvCache* cache = caches[i - start].get();
      cache->Clear();
      if (r.prefix) {
        if (absl::Status s = cache->SetPrefix(r.prefix->keys, r.prefix->values, r.prefix->rows);
            !s.ok()) {
          return s;
        }
      }
      live.push_back({order[i], cache, {}, {}});
      steps.push_back({cache, r.prompt, false, r.update});
    }
    while (!steps.empty()) {
      if (absl::Status s = model.Forward(steps, &logits); !s.ok()) return s;
      size_t row = 0;
      for (Live& l : live) {
        if (l.done) continue;
        const float* z = logits.data() + row++ * static_cast<size_t>(vocab);
        l.next = static_cast<int32_t>(std::max_element(z, z + vocab) - z);
      }
      steps.clear();
      for (Live& l : live) {
        if (l.done) continue;
        if (l.next == eos) {
          l.done = true;
          continue;
        }
        l.out.push_back(l.next);
        l.text = tokenizer.Decode(l.out);
        const size_t newline = l.text.find('\n');
        if (newline != std::string::npos) {
          l.text.resize(newline);
          l.done = true;
        } else if (static_cast<int>(l.out.size()) >= max_tokens ||
                   l.cache->size() >= l.cache->capacity()) {
          l.done = true;
        } else {
          steps.push_back(
              {l.cache, std::span<const int32_t>(&l.next, 1), false, requests[l.request].update});
        }
      }
    }
    for (Live& l : live) answers[l.request] = std::move(l.text);
    if (progress) progress(end, order.size());
  }
  return answers;
}

}  // namespace knowd::bench
