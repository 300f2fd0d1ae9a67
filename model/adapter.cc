// The MAC adapter networks on the engine's kernels: the port of train/adapter.cc (Readout,
// LayerMix, CrossBlock, QuestionEncoder, Aggregator, Expander). Matrices run on the backend; the
// key heads (a mean, a norm and a key_dim x d product per passage or question) and the
// aggregator's candidate weighting (a softmax over at most max_candidates scores) run on the host,
// where their inputs and outputs live anyway.
#include "model/adapter.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "model/adapter_internal.h"

namespace knowd {
namespace {

// Tokens per trunk pass of EncodePassages: large batches for the matrix products, bounded so
// that the per-layer hidden states of a pass stay within kHiddenBudgetBytes (a pass always takes
// at least one passage).
constexpr int64_t kEncodeTokenBudget = 8192;
constexpr int64_t kHiddenBudgetBytes = int64_t{256} << 20;

// The scratch buffers of Impl::scratch (Impl::Scratch's `buffer`).
enum Buffer : int {
  kHidden = 0,     // [layers][tokens][hidden_size]: the trunk's per-layer outputs
  kNormed,         // [tokens][hidden_size]
  kMemory,         // [tokens][d]: the layer mix, what the blocks attend to
  kMemoryNorm,     // [tokens][d]
  kMemoryKv,       // [tokens][2d]
  kX,              // [rows][d]: the slots being refined (Z, Q or A)
  kH,              // [rows][d]
  kCondition,      // [rows][d]: the question's Q in the aggregator
  kConditionNorm,  // [rows][d]
  kQuery,          // [rows][d]
  kAttention,      // [rows][d]
  kMlp,            // [rows][mlp_ratio * d]
  kPooled,         // [rows][kv_width]: pooled passage KV, or the expander's output
  kPositions,      // [rows] int32
  kNumBuffers
};

// normalize(W rmsnorm(mean of the rows)): the key heads of the readout and the question encoder.
std::vector<float> KeyHead(std::span<const float> weight, std::span<const float> rows, int slots,
                           int d, int key_dim) {
  std::vector<float> mean(d, 0.0f);
  for (int t = 0; t < slots; ++t) {
    for (int c = 0; c < d; ++c) mean[c] += rows[int64_t{t} * d + c];
  }
  float squares = 0.0f;
  for (float& v : mean) {
    v /= static_cast<float>(slots);
    squares += v * v;
  }
  const float norm = 1.0f / std::sqrt(squares / static_cast<float>(d) + kAdapterNormEps);
  for (float& v : mean) v *= norm;
  std::vector<float> key(key_dim, 0.0f);
  double length = 0.0;
  for (int k = 0; k < key_dim; ++k) {
    const float* w = weight.data() + int64_t{k} * d;
    float dot = 0.0f;
    for (int c = 0; c < d; ++c) dot += w[c] * mean[c];
    key[k] = dot;
    length += double{dot} * dot;
  }
  // torch.nn.functional.normalize: x / max(|x|, 1e-12).
  const float inv = static_cast<float>(1.0 / std::max(std::sqrt(length), 1e-12));
  for (float& v : key) v *= inv;
  return key;
}

absl::Status OutOfMemory(const Backend& b, absl::string_view what) {
  return absl::ResourceExhaustedError(
      absl::StrCat("adapter: out of ", b.name(), " memory for ", what));
}

}  // namespace

float* Adapter::Impl::Scratch(int buffer, int64_t floats) {
  if (scratch.size() < kNumBuffers) scratch.resize(kNumBuffers, {nullptr, 0});
  auto& [ptr, size] = scratch[buffer];
  if (size < floats) {
    backend->Synchronize();
    backend->Free(ptr);
    size = std::max(floats, size * 2);
    ptr = static_cast<float*>(backend->Alloc(size * sizeof(float)));
    if (ptr == nullptr) size = 0;
  }
  return ptr;
}

absl::StatusOr<float*> Adapter::Impl::Trunk(std::span<const std::span<const int32_t>> sequences,
                                            std::vector<std::unique_ptr<KvCache>>* caches) {
  int64_t tokens = 0;
  std::vector<SequenceStep> steps;
  for (std::span<const int32_t> s : sequences) {
    KNOWD_ASSIGN_OR_RETURN(std::unique_ptr<KvCache> cache,
                           base->NewCache(static_cast<int>(s.size())));
    caches->push_back(std::move(cache));
    steps.push_back({caches->back().get(), s, false});
    tokens += static_cast<int64_t>(s.size());
  }
  float* hidden = Scratch(kHidden, int64_t{lm.num_layers} * tokens * lm.hidden_size);
  if (hidden == nullptr) return OutOfMemory(*backend, "the trunk's hidden states");
  const TrunkCapture capture{hidden};
  KNOWD_RETURN_IF_ERROR(base->Forward(steps, nullptr, &capture));
  return hidden;
}

std::vector<float> Adapter::Impl::RetrievalStates(const float* hidden, int64_t tokens) const {
  if (retrieval == nullptr) return {};
  const int64_t layer = tokens * lm.hidden_size;
  std::vector<float> states(retrieval->layers().size() * layer);
  for (size_t l = 0; l < retrieval->layers().size(); ++l) {
    backend->Download(states.data() + l * layer, hidden + retrieval->layers()[l] * layer,
                      layer * sizeof(float));
  }
  return states;
}

absl::StatusOr<float*> Adapter::Impl::Mix(const AdapterEncoder& encoder, const float* hidden,
                                          int tokens) {
  const int h = lm.hidden_size, d = spec.latent_dim;
  float* normed = Scratch(kNormed, int64_t{tokens} * h);
  float* memory = Scratch(kMemory, int64_t{tokens} * d);
  if (normed == nullptr || memory == nullptr) return OutOfMemory(*backend, "the layer mix");
  for (int l = 0; l < lm.num_layers; ++l) {
    backend->RmsNorm(hidden + int64_t{l} * tokens * h, ones, normed, tokens, h, kAdapterNormEps);
    backend->MatMul(normed, h, encoder.mix[l], memory, d, tokens, d, h, l > 0);
  }
  return memory;
}

// CrossBlock: x += o(attention(q(norm_x(x) [+ norm_condition(condition)]),
// k/v(norm_memory(memory)))), then x += down(gelu(up(norm_mlp(x)))). Each segment's slots attend
// to its own memory rows only.
absl::Status Adapter::Impl::Blocks(std::span<const AdapterBlock> blocks, float* x, int x_rows,
                                   const float* memory, int memory_rows,
                                   std::span<const AdapterSegment> segments,
                                   const float* condition) {
  const int d = spec.latent_dim, heads = spec.heads, head_dim = d / heads;
  const int mlp = spec.mlp_ratio * d;
  float* h = Scratch(kH, int64_t{x_rows} * d);
  float* cond = condition != nullptr ? Scratch(kConditionNorm, int64_t{x_rows} * d) : nullptr;
  float* q = Scratch(kQuery, int64_t{x_rows} * d);
  float* attention = Scratch(kAttention, int64_t{x_rows} * d);
  float* up = Scratch(kMlp, int64_t{x_rows} * mlp);
  float* m = Scratch(kMemoryNorm, int64_t{memory_rows} * d);
  float* kv = Scratch(kMemoryKv, int64_t{memory_rows} * 2 * d);
  if (h == nullptr || (condition != nullptr && cond == nullptr) || q == nullptr ||
      attention == nullptr || up == nullptr || m == nullptr || kv == nullptr) {
    return OutOfMemory(*backend, "an adapter block");
  }
  Backend& b = *backend;
  for (const AdapterBlock& w : blocks) {
    b.RmsNorm(x, w.norm_x, h, x_rows, d, kAdapterNormEps);
    if (condition != nullptr) {
      b.RmsNorm(condition, w.norm_condition, cond, x_rows, d, kAdapterNormEps);
      b.Add(h, cond, h, int64_t{x_rows} * d);
    }
    b.RmsNorm(memory, w.norm_memory, m, memory_rows, d, kAdapterNormEps);
    b.MatMul(h, d, w.q, q, d, x_rows, d, d, false);
    b.MatMul(m, d, w.kv, kv, 2 * d, memory_rows, 2 * d, d, false);
    for (const AdapterSegment& s : segments) {
      AttentionArgs args;
      args.q = q + int64_t{s.x_begin} * d;
      args.k = kv + int64_t{s.memory_begin} * 2 * d;
      args.v = args.k + d;
      args.out = attention + int64_t{s.x_begin} * d;
      args.n_queries = s.x_rows;
      args.n_keys = s.memory_rows;
      args.n_heads = heads;
      args.n_kv_heads = heads;
      args.head_dim = head_dim;
      args.q_stride = d;
      args.kv_stride = 2 * d;
      args.out_stride = d;
      args.scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
      b.Attention(args);
    }
    b.MatMul(attention, d, w.o, x, d, x_rows, d, d, true);
    b.RmsNorm(x, w.norm_mlp, h, x_rows, d, kAdapterNormEps);
    b.MatMul(h, d, w.up, up, mlp, x_rows, mlp, d, false);
    b.Gelu(up, up, int64_t{x_rows} * mlp);
    b.MatMul(up, mlp, w.down, x, d, x_rows, d, mlp, true);
  }
  return absl::OkStatus();
}

absl::StatusOr<float*> Adapter::Impl::Readout(std::span<const std::span<const int32_t>> passages,
                                              const std::vector<std::unique_ptr<KvCache>>& caches,
                                              const float* hidden, int tokens) {
  const int t = spec.slots, d = spec.latent_dim, kv_dim = lm.kv_dim();
  const int n = static_cast<int>(passages.size());
  const int rows = n * t;
  const int64_t width = kv_width();
  float* pooled = Scratch(kPooled, rows * width);
  auto* positions = reinterpret_cast<int32_t*>(Scratch(kPositions, rows));
  float* z = Scratch(kX, int64_t{rows} * d);
  if (pooled == nullptr || positions == nullptr || z == nullptr) {
    return OutOfMemory(*backend, "the readout");
  }
  Backend& b = *backend;
  // Per layer and kv head, the slots' learned queries attend over the passage's keys (BOS, a sink
  // rather than content, excluded) and pool its keys and values.
  for (int p = 0; p < n; ++p) {
    const KvCache& cache = *caches[p];
    for (int l = 0; l < lm.num_layers; ++l) {
      float* out = pooled + int64_t{p} * t * width + int64_t{l} * 2 * kv_dim;
      AttentionArgs args;
      args.q = pool_queries + int64_t{l} * t * kv_dim;
      args.k = cache.layer_keys(l) + kv_dim;
      args.n_queries = t;
      args.n_keys = static_cast<int>(passages[p].size()) - 1;
      args.n_heads = lm.num_kv_heads;
      args.n_kv_heads = lm.num_kv_heads;
      args.head_dim = lm.head_dim;
      args.q_stride = kv_dim;
      args.kv_stride = kv_dim;
      args.out_stride = width;
      args.scale = 1.0f / std::sqrt(static_cast<float>(lm.head_dim));
      args.v = args.k;  // the pooled keys...
      args.out = out;
      b.Attention(args);
      args.v = cache.layer_values(l) + kv_dim;  // ...and the pooled values
      args.out = out + kv_dim;
      b.Attention(args);
    }
  }
  // A pooled key of a passage of n tokens (BOS included) is rotated by RoPE(slots - n): a key
  // the passage produced at position j then sits where the question after the prefix would see
  // it had the passage been in context.
  std::vector<int32_t> host_positions(rows);
  for (int p = 0; p < n; ++p) {
    std::fill_n(host_positions.begin() + int64_t{p} * t, t,
                t - static_cast<int32_t>(passages[p].size()));
  }
  b.Upload(positions, host_positions.data(), host_positions.size() * sizeof(int32_t));
  for (int l = 0; l < lm.num_layers; ++l) {
    b.Rope(pooled + int64_t{l} * 2 * kv_dim, positions, rows, lm.num_kv_heads, lm.head_dim, width,
           lm.rope_theta, lm.rope_style);
  }
  b.MatMul(pooled, width, compress, z, d, rows, d, static_cast<int>(width), false);
  b.AddBias(z, d, compress_bias, rows, d);

  KNOWD_ASSIGN_OR_RETURN(float* memory, Mix(readout, hidden, tokens));
  std::vector<AdapterSegment> segments;
  int start = 0;
  for (int p = 0; p < n; ++p) {
    const int length = static_cast<int>(passages[p].size());
    segments.push_back({p * t, t, start + 1, length - 1});  // BOS is not attended
    start += length;
  }
  KNOWD_RETURN_IF_ERROR(Blocks(readout.blocks, z, rows, memory, tokens, segments, nullptr));
  return z;
}

absl::Status Adapter::Impl::Finish() {
  backend->Synchronize();
  return backend->status();
}

namespace {

// A sequence the trunk may encode: BOS first, at least one token after it, within the context.
absl::Status CheckSequence(const LlamaConfig& lm, std::span<const int32_t> tokens,
                           absl::string_view what) {
  if (tokens.size() < 2 || static_cast<int>(tokens.size()) > lm.max_position_embeddings) {
    return absl::InvalidArgumentError(absl::StrCat(what, " has ", tokens.size(),
                                                   " tokens; the adapter takes 2 to ",
                                                   lm.max_position_embeddings, " (BOS included)"));
  }
  if (tokens[0] != lm.bos_token_id) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " does not start with BOS (id ", lm.bos_token_id, ")"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status Adapter::EncodePassages(std::span<const std::vector<int32_t>> passages,
                                     std::vector<PassageCode>* out) {
  out->clear();
  for (size_t i = 0; i < passages.size(); ++i) {
    KNOWD_RETURN_IF_ERROR(CheckSequence(impl_->lm, passages[i], absl::StrCat("passage ", i)));
  }
  const int t = impl_->spec.slots, d = impl_->spec.latent_dim;
  const int64_t budget = std::clamp<int64_t>(
      kHiddenBudgetBytes / (int64_t{sizeof(float)} * impl_->lm.num_layers * impl_->lm.hidden_size),
      1, kEncodeTokenBudget);
  std::vector<float> z;
  size_t begin = 0;
  while (begin < passages.size()) {
    size_t end = begin;
    int64_t tokens = 0;
    while (end < passages.size() &&
           (end == begin || tokens + static_cast<int64_t>(passages[end].size()) <= budget)) {
      tokens += static_cast<int64_t>(passages[end].size());
      ++end;
    }
    std::vector<std::span<const int32_t>> chunk(passages.begin() + begin, passages.begin() + end);
    std::vector<std::unique_ptr<KvCache>> caches;
    KNOWD_ASSIGN_OR_RETURN(float* hidden, impl_->Trunk(chunk, &caches));
    absl::StatusOr<float*> latents =
        impl_->Readout(chunk, caches, hidden, static_cast<int>(tokens));
    if (!latents.ok()) return latents.status();
    z.resize(chunk.size() * t * d);
    impl_->backend->Download(z.data(), *latents, z.size() * sizeof(float));
    const std::vector<float> states = impl_->RetrievalStates(hidden, tokens);
    KNOWD_RETURN_IF_ERROR(impl_->Finish());
    int64_t row = 0;
    for (size_t p = 0; p < chunk.size(); ++p) {
      PassageCode code;
      code.latents.assign(z.begin() + p * t * d, z.begin() + (p + 1) * t * d);
      const int n = static_cast<int>(chunk[p].size());
      code.key = impl_->retrieval != nullptr ? impl_->retrieval->Key(RetrievalKeys::Side::kPassage,
                                                                     states.data(), tokens, row, n)
                                             : KeyOfLatent(code.latents);
      row += n;
      out->push_back(std::move(code));
    }
    begin = end;
  }
  return absl::OkStatus();
}

absl::StatusOr<QuestionCode> Adapter::EncodeQuestion(std::span<const int32_t> prompt) {
  KNOWD_RETURN_IF_ERROR(CheckSequence(impl_->lm, prompt, "the question prompt"));
  const AdapterSpec& spec = impl_->spec;
  const int t = spec.slots, d = spec.latent_dim, n = static_cast<int>(prompt.size());
  std::vector<std::unique_ptr<KvCache>> caches;
  const std::span<const int32_t> sequences[] = {prompt};
  KNOWD_ASSIGN_OR_RETURN(float* hidden, impl_->Trunk(sequences, &caches));
  absl::StatusOr<float*> memory = impl_->Mix(impl_->question, hidden, n);
  if (!memory.ok()) return memory.status();
  float* x = impl_->Scratch(kX, int64_t{t} * d);
  if (x == nullptr) return absl::ResourceExhaustedError("adapter: out of memory for the question");
  impl_->backend->Copy(x, impl_->question_queries, sizeof(float) * t * d);
  const AdapterSegment segment{0, t, 1, n - 1};  // BOS is not attended
  KNOWD_RETURN_IF_ERROR(
      impl_->Blocks(impl_->question.blocks, x, t, *memory, n, {&segment, 1}, nullptr));
  QuestionCode code;
  code.queries.resize(int64_t{t} * d);
  impl_->backend->Download(code.queries.data(), x, code.queries.size() * sizeof(float));
  const std::vector<float> states = impl_->RetrievalStates(hidden, n);
  KNOWD_RETURN_IF_ERROR(impl_->Finish());
  code.key = KeyHead(impl_->question.key, code.queries, t, d, spec.key_dim);
  code.retrieval_key =
      impl_->retrieval != nullptr
          ? impl_->retrieval->Key(RetrievalKeys::Side::kQuestion, states.data(), n, 0, n)
          : code.key;
  return code;
}

bool Adapter::has_retrieval_keys() const { return impl_->retrieval != nullptr; }

std::vector<float> Adapter::KeyOfLatent(std::span<const float> latents) const {
  const AdapterSpec& spec = impl_->spec;
  return KeyHead(impl_->readout.key, latents, spec.slots, spec.latent_dim, spec.key_dim);
}

absl::Status Adapter::SetRagPrefixKeyScale(float scale) {
  if (!impl_->spec.rag_head) {
    return absl::FailedPreconditionError("the adapter has no mac+rag head to scale");
  }
  if (!IsValidRagPrefixKeyScale(scale)) {
    return absl::InvalidArgumentError(
        absl::StrCat("rag prefix key scale ", scale, " is outside (0, 4]"));
  }
  impl_->spec.rag_prefix_key_scale = scale;
  return absl::OkStatus();
}

absl::StatusOr<PrefixKv> Adapter::Modulate(const QuestionCode& question,
                                           std::span<const std::span<const float>> latents,
                                           bool with_text) {
  const AdapterSpec& spec = impl_->spec;
  const AdapterHead& head = with_text && spec.rag_head ? impl_->rag : impl_->mac;
  const LlamaConfig& lm = impl_->lm;
  const int t = spec.slots, d = spec.latent_dim, k = static_cast<int>(latents.size());
  const int64_t entry = int64_t{t} * d;
  if (k < 1 || k > spec.max_candidates) {
    return absl::InvalidArgumentError(
        absl::StrCat("modulate: ", k, " candidates; the adapter takes 1 to ", spec.max_candidates));
  }
  if (static_cast<int64_t>(question.queries.size()) != entry ||
      static_cast<int>(question.key.size()) != spec.key_dim) {
    return absl::InvalidArgumentError(
        absl::StrCat("modulate: the question code has ", question.queries.size(), " queries and ",
                     question.key.size(), " key values, expected ", entry, " and ", spec.key_dim));
  }
  for (int j = 0; j < k; ++j) {
    if (static_cast<int64_t>(latents[j].size()) != entry) {
      return absl::InvalidArgumentError(absl::StrCat("modulate: candidate ", j, " has ",
                                                     latents[j].size(), " latent values, expected ",
                                                     entry, " (", t, " x ", d, ")"));
    }
  }

  // Scores s_j = scale · q·k_j, weights softmax(s), and A0 = sum_j w_j Z_j; each candidate's
  // slots carry the embedding of its rank by score and its weight (train/adapter.cc:
  // AggregatorImpl::forward).
  std::vector<float> scores(k), weights(k);
  for (int j = 0; j < k; ++j) {
    const std::vector<float> key = KeyOfLatent(latents[j]);
    float dot = 0.0f;
    for (int c = 0; c < spec.key_dim; ++c) dot += question.key[c] * key[c];
    scores[j] = impl_->scale * dot;
  }
  const float max = *std::max_element(scores.begin(), scores.end());
  float sum = 0.0f;
  for (int j = 0; j < k; ++j) sum += weights[j] = std::exp(scores[j] - max);
  for (float& w : weights) w /= sum;
  std::vector<int> order(k);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int x, int y) { return scores[x] > scores[y]; });
  std::vector<int> rank(k);
  for (int r = 0; r < k; ++r) rank[order[r]] = r;
  std::vector<float> x(entry, 0.0f), memory(k * entry);
  for (int j = 0; j < k; ++j) {
    const float* z = latents[j].data();
    const float* rank_row = head.rank.data() + int64_t{rank[j]} * d;
    for (int64_t i = 0; i < entry; ++i) x[i] += weights[j] * z[i];
    for (int s = 0; s < t; ++s) {
      for (int c = 0; c < d; ++c) {
        memory[j * entry + int64_t{s} * d + c] =
            z[int64_t{s} * d + c] + (rank_row[c] + weights[j] * head.score[c]);
      }
    }
  }

  Backend& b = *impl_->backend;
  float* x_dev = impl_->Scratch(kX, entry);
  float* memory_dev = impl_->Scratch(kMemory, k * entry);
  float* condition = impl_->Scratch(kCondition, entry);
  // The expander makes R = rows_per_slot prefix rows of each of the T aggregated rows.
  const int r_per_slot = spec.rows_per_slot, rows_out = t * r_per_slot;
  const int64_t width = impl_->kv_width();
  float* expanded = impl_->Scratch(kPooled, rows_out * width);
  if (x_dev == nullptr || memory_dev == nullptr || condition == nullptr || expanded == nullptr) {
    return absl::ResourceExhaustedError("adapter: out of memory for the aggregator");
  }
  b.Upload(x_dev, x.data(), x.size() * sizeof(float));
  b.Upload(memory_dev, memory.data(), memory.size() * sizeof(float));
  b.Upload(condition, question.queries.data(), question.queries.size() * sizeof(float));
  // Block() normalises the condition into its own scratch, so the uploaded Q stays intact.
  const AdapterSegment segment{0, t, 0, k * t};
  absl::Status s =
      impl_->Blocks(head.aggregator, x_dev, t, memory_dev, k * t, {&segment, 1}, condition);
  if (!s.ok()) return s;

  // Expander: A -> [slots][R][layers][keys, values][kv_dim], then the sink row in front. With
  // R > 1 the keys come out rotated on by the rows added before the question (AdapterSpec): the
  // rotation is folded into the expander's key rows and the sink at load.
  const int64_t expand_width = width * r_per_slot;
  b.MatMul(x_dev, d, head.expand, expanded, expand_width, t, static_cast<int>(expand_width), d,
           false);
  b.AddBias(expanded, expand_width, head.expand_bias, t, static_cast<int>(expand_width));
  std::vector<float> y(rows_out * width);
  b.Download(y.data(), expanded, y.size() * sizeof(float));
  KNOWD_RETURN_IF_ERROR(impl_->Finish());
  const int kv_dim = lm.kv_dim(), rows = spec.prefix_rows();
  const float key_scale = &head == &impl_->rag ? spec.rag_prefix_key_scale : 1.0f;
  PrefixKv prefix;
  prefix.rows = rows;
  prefix.keys.resize(int64_t{lm.num_layers} * rows * kv_dim);
  prefix.values.resize(prefix.keys.size());
  for (int l = 0; l < lm.num_layers; ++l) {
    float* keys = prefix.keys.data() + int64_t{l} * rows * kv_dim;
    float* values = prefix.values.data() + int64_t{l} * rows * kv_dim;
    std::copy_n(head.sink_keys.begin() + int64_t{l} * kv_dim, kv_dim, keys);
    std::copy_n(head.sink_values.begin() + int64_t{l} * kv_dim, kv_dim, values);
    for (int r = 0; r < rows_out; ++r) {
      const float* row = y.data() + r * width + int64_t{l} * 2 * kv_dim;
      std::transform(row, row + kv_dim, keys + int64_t{r + 1} * kv_dim,
                     [key_scale](float k) { return k * key_scale; });
      std::copy_n(row + kv_dim, kv_dim, values + int64_t{r + 1} * kv_dim);
    }
  }
  return prefix;
}

}  // namespace knowd
