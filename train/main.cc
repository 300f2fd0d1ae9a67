// knowd-train: the synthetic knowledge stream, tokenizer training, base-LM pretraining, export
// and adapter meta-training (see train/README.md). Flags may be spelled with dashes or underscores.
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <set>
#include <string>
#include <type_traits>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "cli/flag_names.h"
#include "model/adapter.h"
#include "model/config.h"
#include "train/adapter.h"
#include "train/export.h"
#include "train/lm.h"
#include "train/pretrain.h"
#include "train/retrieval_keys.h"
#include "train/session.h"
#include "train/world.h"

ABSL_FLAG(std::string, out, "", "data: output directory; tokenizer: output tokenizer.model");
ABSL_FLAG(std::string, data, "", "directory written by `knowd-train data`");
ABSL_FLAG(std::string, tokenizer, "", "tokenizer.model written by `knowd-train tokenizer`");
ABSL_FLAG(std::string, work_dir, "", "pretrain/export: checkpoints and the model config");
ABSL_FLAG(std::string, bundle, "", "pretrain/export: bundle directory (default <work_dir>/bundle)");
ABSL_FLAG(uint64_t, seed, 20240601, "seed of the world (data) or of the model and batches");
ABSL_FLAG(int, pretrain_people, 8000, "data: people of the pretraining split");
ABSL_FLAG(int, adapter_people, 4000, "data: people of the adapter-training split");
ABSL_FLAG(int, valid_people, 300, "data: people of the validation split");
ABSL_FLAG(int, test_people, 1000, "data: people of the test stream");
ABSL_FLAG(double, update_fraction, 0.15, "data: fraction of people with an update passage");
ABSL_FLAG(int, icl_train_tasks, 6, "data: in-context tasks per training family");
ABSL_FLAG(int, icl_heldout_tasks, 4, "data: in-context tasks per held-out family");
ABSL_FLAG(int, icl_demonstrations, 1024, "data: demonstrations per in-context task");
ABSL_FLAG(int, icl_queries, 16, "data: queries per in-context task");
ABSL_FLAG(int, icl_context_passages, 3, "data: passages in a passage-QA task's context");
ABSL_FLAG(int, vocab_size, 1024, "tokenizer: SentencePiece vocabulary size");
// One thread by default: on a busy 2-core machine libgomp spin-waits and 2 threads ran 5x slower
// (6.0 vs 1.2 s/step); try 2 on an idle machine.
ABSL_FLAG(int, threads, 1, "CPU threads (libtorch intra-op; the tokenizer trainer)");
ABSL_FLAG(int, hidden_size, 192, "pretrain: model width");
ABSL_FLAG(int, layers, 4, "pretrain: decoder layers");
ABSL_FLAG(int, heads, 6, "pretrain: attention heads");
ABSL_FLAG(int, kv_heads, 2, "pretrain: key/value heads (grouped-query attention)");
ABSL_FLAG(int, intermediate_size, 512, "pretrain: SwiGLU width");
ABSL_FLAG(bool, tie_embeddings, true, "pretrain: share the input embedding and the output");
ABSL_FLAG(int, steps, -1, "optimizer steps (default: pretrain 3000, adapter 2000)");
ABSL_FLAG(int, batch, -1, "sequences (pretrain, default 32) or passages (adapter, 8) per step");
ABSL_FLAG(int, max_len, 320, "pretrain: longest sequence, in tokens");
ABSL_FLAG(int, warmup, -1, "linear warmup steps (default: pretrain 100, adapter 50)");
ABSL_FLAG(double, lr, -1,
          "peak learning rate, cosine decay to 0.1x (default: pretrain 2e-3, adapter 1e-3)");
ABSL_FLAG(double, weight_decay, 0.1, "pretrain: AdamW weight decay");
ABSL_FLAG(double, answer_weight, 2.0, "pretrain: extra loss weight of answer tokens");
ABSL_FLAG(double, context_distractors, 0.0,
          "pretrain: fraction of examples whose context adds 1-2 other people's passages");
ABSL_FLAG(double, counterfactuals, 0.0,
          "pretrain: fraction of reading sequences whose asked facts are replaced by made-up "
          "values of the same kind (passage and answer alike), so answers must be read");
ABSL_FLAG(int, log_every, 10, "pretrain: steps between progress lines");
ABSL_FLAG(int, checkpoint_every, 200, "pretrain: steps between checkpoints");
ABSL_FLAG(bool, resume, false, "pretrain: continue from <work_dir>/checkpoint.pt");
ABSL_FLAG(int, eval_questions, -1,
          "valid questions scored at the end, 0: none (default: pretrain 200, adapter 100)");
ABSL_FLAG(std::string, dtype, "",
          "export: f32 (default), f16 or bf16; adapter: f16 (default) or f32");
// Adapter meta-training. --steps, --batch, --lr, --warmup, --log_every, --checkpoint_every,
// --eval_questions, --seed, --threads and --resume apply too.
// Retrieval keys (`knowd-train keys`). --steps, --batch, --lr, --warmup, --log_every, --seed,
// --threads, --data, --bundle and --work_dir apply too.
ABSL_FLAG(std::string, key_layers, "1,3",
          "keys: block outputs the heads read (0-based, comma-separated)");
ABSL_FLAG(int, key_heads, 4, "keys: pooling queries per head");
ABSL_FLAG(int, retrieval_key_dim, 64, "keys: width of the retrieval keys");
ABSL_FLAG(int, max_train_passages, 0,
          "keys: training passages at most (0: the whole adapter split)");
ABSL_FLAG(int, eval_every, 500, "keys: steps between recall measurements on valid and test");
ABSL_FLAG(bool, no_export, false, "keys, session: measure only; write nothing to the bundle");
// The session mapper (`knowd-train session`). --steps, --lr, --warmup, --log_every,
// --checkpoint_every, --eval_every, --resume, --seed, --threads, --data, --bundle and --work_dir
// apply too.
ABSL_FLAG(std::string, session_sites, "o,down",
          "session: projections the update targets: <projection> (every layer) or "
          "<layer>.<projection>, projection one of qkv, o, gate, up, down");
ABSL_FLAG(int, session_rank, 16, "session: r, the state's rows (W2 is [r, in])");
ABSL_FLAG(int, session_rank_out, 16, "session: r2, the state's columns (W1 is [out, r2])");
ABSL_FLAG(int, demos_per_chunk, 8, "session: demonstrations per context chunk");
ABSL_FLAG(int, max_train_demos, 256,
          "session: most demonstrations in a training context (drawn log-uniformly from 1)");
ABSL_FLAG(int, tasks_per_step, 4, "session: in-context tasks per step");
ABSL_FLAG(double, distill, 0.0,
          "session: weight of the KL term towards the LM reading the demonstrations in context");
ABSL_FLAG(int, eval_queries, 8, "session: queries per task in the accuracy figures");
ABSL_FLAG(int, eval_tasks, 48, "session: tasks per set in the accuracy figures, evenly spaced");
ABSL_FLAG(bool, measure_icl, false,
          "session: only measure the base LM's zero-shot and in-context accuracy");
ABSL_FLAG(int, top_k, 4, "adapter: passages the aggregator reads per question (after curriculum)");
ABSL_FLAG(int, slots, 8,
          "adapter: latent tokens per passage (prefix rows per layer: 1 + slots x rows_per_slot)");
ABSL_FLAG(int, latent_dim, 80, "adapter: values per latent token");
ABSL_FLAG(int, rows_per_slot, 1,
          "adapter: prefix rows per latent token per layer (the bank's size is unchanged)");
ABSL_FLAG(int, readout_blocks, 2, "adapter: cross-attention blocks of the readout (amortizer)");
ABSL_FLAG(int, question_blocks, 2, "adapter: cross-attention blocks of the question encoder");
ABSL_FLAG(int, aggregator_blocks, 2, "adapter: cross-attention blocks of each aggregator");
ABSL_FLAG(int, mlp_ratio, 2, "adapter: MLP width of the blocks, a multiple of latent_dim");
ABSL_FLAG(int, questions_per_passage, 2, "adapter: questions per passage in a step");
ABSL_FLAG(double, distill_weight, 1.0, "adapter: weight of the context-distillation KL");
ABSL_FLAG(double, contrastive_weight, 0.2, "adapter: weight of the InfoNCE key loss");
ABSL_FLAG(double, backprop_dropout, 0.5, "adapter: P(a distractor's latents carry no gradient)");
ABSL_FLAG(double, text_fraction, 0.0,
          "adapter: fraction of questions read with a passage's text after the prefix (mac+rag)");
ABSL_FLAG(double, text_distractor_fraction, 0.25,
          "adapter: of those, the fraction whose text is another passage (answer from the prefix)");
ABSL_FLAG(bool, text_subject_history, false,
          "adapter: the text shows the passage after its subject's earlier passages, oldest first "
          "(as the daemon's rag prompt with --subject-passages)");
ABSL_FLAG(double, gold_only_fraction, 0.3, "adapter: curriculum, gold passage alone this long");
ABSL_FLAG(bool, rag_head, false,
          "adapter: add the mac+rag head (its own aggregator and expander for prompts with text)");
ABSL_FLAG(double, rag_prefix_key_scale, 1.0,
          "adapter: exported mac+rag prefix key scale (served; a temperature chosen on valid EM)");
ABSL_FLAG(bool, rag_head_only, false,
          "adapter: train the mac+rag head alone (everything else keeps its weights); with "
          "--rag_head and --init_from");
ABSL_FLAG(std::string, init_from, "",
          "adapter: start from this adapter/ export (a missing mac+rag head copies the mac head; "
          "more blocks or a wider MLP than it has start as the identity, more rows_per_slot near "
          "zero)");
ABSL_FLAG(int, stop_after, 0,
          "adapter: stop after this step with a checkpoint (no export); --resume continues");

namespace knowd::train {
namespace {

// Flags shared by pretrain and adapter default to -1 / "": each command fills in its own default.
template <typename T>
T FlagOr(const absl::Flag<T>& flag, T command_default) {
  const T value = absl::GetFlag(flag);
  if constexpr (std::is_same_v<T, std::string>) {
    return value.empty() ? command_default : value;
  } else {
    return value < 0 ? command_default : value;
  }
}

int Fail(const char* command, const absl::Status& status) {
  std::fprintf(stderr, "knowd-train %s: %s\n", command, std::string(status.message()).c_str());
  return 1;
}

// absl flags use underscores; accept dashes too, as every knowd command line does
// (cli/flag_names.h).
std::vector<char*> NormalizeFlagNames(int argc, char** argv, std::vector<std::string>* storage) {
  storage->assign(argv, argv + argc);
  for (int i = 1; i < argc; ++i) {
    std::string& arg = (*storage)[i];
    if (arg == "--") break;
    if (arg.size() > 2 && arg.rfind("--", 0) == 0) {
      const size_t end = std::min(arg.find('='), arg.size());
      arg = "--" + cli::CanonicalFlagName(std::string_view(arg).substr(2, end - 2), '_') +
            arg.substr(end);
    }
  }
  std::vector<char*> out;
  for (std::string& s : *storage) out.push_back(s.data());
  return out;
}

int RunData() {
  const std::string out = absl::GetFlag(FLAGS_out);
  if (out.empty()) return Fail("data", absl::InvalidArgumentError("--out is required"));
  WorldOptions options;
  options.seed = absl::GetFlag(FLAGS_seed);
  options.people[0] = absl::GetFlag(FLAGS_pretrain_people);
  options.people[1] = absl::GetFlag(FLAGS_adapter_people);
  options.people[2] = absl::GetFlag(FLAGS_valid_people);
  options.people[3] = absl::GetFlag(FLAGS_test_people);
  options.update_fraction = absl::GetFlag(FLAGS_update_fraction);
  options.icl_train_tasks_per_family = absl::GetFlag(FLAGS_icl_train_tasks);
  options.icl_heldout_tasks_per_family = absl::GetFlag(FLAGS_icl_heldout_tasks);
  options.icl_demonstrations = absl::GetFlag(FLAGS_icl_demonstrations);
  options.icl_queries = absl::GetFlag(FLAGS_icl_queries);
  options.icl_context_passages = absl::GetFlag(FLAGS_icl_context_passages);
  for (int n : options.people) {
    if (n < 1) return Fail("data", absl::InvalidArgumentError("every split needs >= 1 person"));
  }
  if (options.icl_train_tasks_per_family < 0 || options.icl_heldout_tasks_per_family < 0 ||
      options.icl_demonstrations < 1 || options.icl_queries < 1 ||
      options.icl_context_passages < 1) {
    return Fail("data", absl::InvalidArgumentError(
                            "--icl_train_tasks and --icl_heldout_tasks must be >= 0; "
                            "--icl_demonstrations, --icl_queries and --icl_context_passages >= 1"));
  }
  if (absl::Status st = WriteWorld(options, out); !st.ok()) return Fail("data", st);
  for (int s = 0; s < kNumSplits; ++s) {
    absl::StatusOr<SplitData> d = ReadSplit(out, static_cast<Split>(s));
    if (!d.ok()) return Fail("data", d.status());
    std::printf("%-8s %6zu passages  %7zu questions\n", std::string(SplitName(d->split)).c_str(),
                d->passages.size(), d->questions.size());
  }
  for (const bool heldout : {false, true}) {
    absl::StatusOr<std::vector<IclTask>> tasks = ReadIclTasks(out, heldout);
    if (!tasks.ok()) return Fail("data", tasks.status());
    size_t demonstrations = 0, queries = 0;
    std::set<std::string> families;
    for (const IclTask& t : *tasks) {
      demonstrations += t.demonstrations.size();
      queries += t.queries.size();
      families.insert(t.family);
    }
    std::printf("%-11s %4zu tasks, %2zu families  %7zu demonstrations  %5zu queries\n",
                heldout ? "icl.heldout" : "icl.train", tasks->size(), families.size(),
                demonstrations, queries);
  }
  return 0;
}

// libsentencepiece cannot share a process with libtorch's libprotobuf: the sibling executable
// knowd-train-spm trains the tokenizer.
int RunTokenizer(const char* argv0) {
  std::error_code ec;
  std::filesystem::path self = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (ec) self = argv0;
  const std::string helper = (self.parent_path() / "knowd-train-spm").string();
  std::vector<std::string> args = {helper, "--data=" + absl::GetFlag(FLAGS_data),
                                   "--out=" + absl::GetFlag(FLAGS_out),
                                   absl::StrCat("--vocab_size=", absl::GetFlag(FLAGS_vocab_size)),
                                   absl::StrCat("--threads=", absl::GetFlag(FLAGS_threads))};
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  execv(helper.c_str(), argv.data());
  return Fail("tokenizer", absl::NotFoundError(absl::StrCat(helper, ": cannot run")));
}

int RunPretrainCommand() {
  PretrainOptions o;
  o.data_dir = absl::GetFlag(FLAGS_data);
  o.tokenizer_path = absl::GetFlag(FLAGS_tokenizer);
  o.work_dir = absl::GetFlag(FLAGS_work_dir);
  o.bundle_dir = absl::GetFlag(FLAGS_bundle);
  if (o.data_dir.empty() || o.tokenizer_path.empty() || o.work_dir.empty()) {
    return Fail("pretrain",
                absl::InvalidArgumentError("--data, --tokenizer and --work_dir are required"));
  }
  LlamaConfig& c = o.config;
  c.hidden_size = absl::GetFlag(FLAGS_hidden_size);
  c.num_layers = absl::GetFlag(FLAGS_layers);
  c.num_heads = absl::GetFlag(FLAGS_heads);
  c.num_kv_heads = absl::GetFlag(FLAGS_kv_heads);
  c.head_dim = c.num_heads > 0 ? c.hidden_size / c.num_heads : 0;
  c.intermediate_size = absl::GetFlag(FLAGS_intermediate_size);
  c.tie_word_embeddings = absl::GetFlag(FLAGS_tie_embeddings);
  c.max_position_embeddings = 1024;
  c.rms_norm_eps = 1e-5f;
  c.rope_theta = 10000.0f;
  o.steps = FlagOr(FLAGS_steps, 3000);
  o.batch = FlagOr(FLAGS_batch, 32);
  o.max_len = absl::GetFlag(FLAGS_max_len);
  o.warmup = FlagOr(FLAGS_warmup, 100);
  o.lr = FlagOr(FLAGS_lr, 2e-3);
  o.optimizer.weight_decay = absl::GetFlag(FLAGS_weight_decay);
  o.answer_weight = absl::GetFlag(FLAGS_answer_weight);
  o.distractor_fraction = absl::GetFlag(FLAGS_context_distractors);
  o.counterfactual_fraction = absl::GetFlag(FLAGS_counterfactuals);
  o.seed = absl::GetFlag(FLAGS_seed);
  o.threads = absl::GetFlag(FLAGS_threads);
  o.log_every = std::max(1, absl::GetFlag(FLAGS_log_every));
  o.checkpoint_every = std::max(1, absl::GetFlag(FLAGS_checkpoint_every));
  o.resume = absl::GetFlag(FLAGS_resume);
  o.eval_questions = FlagOr(FLAGS_eval_questions, 200);
  if (o.steps < 1 || o.batch < 1 || o.max_len < 8) {
    return Fail("pretrain", absl::InvalidArgumentError("--steps, --batch, --max_len too small"));
  }
  if (absl::Status st = RunPretrain(o); !st.ok()) return Fail("pretrain", st);
  return 0;
}

int RunExport() {
  const std::string work_dir = absl::GetFlag(FLAGS_work_dir);
  if (work_dir.empty()) return Fail("export", absl::InvalidArgumentError("--work_dir is required"));
  const std::string bundle =
      absl::GetFlag(FLAGS_bundle).empty() ? work_dir + "/bundle" : absl::GetFlag(FLAGS_bundle);
  ExportOptions options;
  const std::string dtype = FlagOr(FLAGS_dtype, std::string("f32"));
  if (dtype == "f32") {
    options.dtype = DType::kF32;
  } else if (dtype == "f16") {
    options.dtype = DType::kF16;
  } else if (dtype == "bf16") {
    options.dtype = DType::kBF16;
  } else {
    return Fail("export", absl::InvalidArgumentError("--dtype must be f32, f16 or bf16"));
  }
  options.tokenizer_model = absl::GetFlag(FLAGS_tokenizer);
  absl::StatusOr<LlamaConfig> config = LlamaConfigFromHfJson(work_dir + "/config.json");
  if (!config.ok()) return Fail("export", config.status());
  SetTorchThreads(absl::GetFlag(FLAGS_threads));
  absl::StatusOr<std::unique_ptr<LanguageModel>> model =
      LanguageModel::Create(*config, 0, OptimizerOptions());
  if (!model.ok()) return Fail("export", model.status());
  if (absl::Status st = (*model)->LoadCheckpoint(work_dir + "/checkpoint.pt"); !st.ok()) {
    return Fail("export", st);
  }
  if (absl::Status st = ExportBundle(**model, bundle, options); !st.ok()) {
    return Fail("export", st);
  }
  std::printf("exported %s (%s)\n", bundle.c_str(), dtype.c_str());
  return 0;
}

int RunAdapterCommand() {
  AdapterRunOptions o;
  o.data_dir = absl::GetFlag(FLAGS_data);
  o.bundle_dir = absl::GetFlag(FLAGS_bundle);
  o.work_dir = absl::GetFlag(FLAGS_work_dir);
  if (o.data_dir.empty() || o.bundle_dir.empty() || o.work_dir.empty()) {
    return Fail("adapter",
                absl::InvalidArgumentError("--data, --bundle and --work_dir are required"));
  }
  o.config.slots = absl::GetFlag(FLAGS_slots);
  o.config.latent_dim = absl::GetFlag(FLAGS_latent_dim);
  o.config.rows_per_slot = absl::GetFlag(FLAGS_rows_per_slot);
  o.config.readout_blocks = absl::GetFlag(FLAGS_readout_blocks);
  o.config.question_blocks = absl::GetFlag(FLAGS_question_blocks);
  o.config.aggregator_blocks = absl::GetFlag(FLAGS_aggregator_blocks);
  o.config.mlp_ratio = absl::GetFlag(FLAGS_mlp_ratio);
  o.config.rag_head = absl::GetFlag(FLAGS_rag_head);
  o.config.rag_prefix_key_scale = absl::GetFlag(FLAGS_rag_prefix_key_scale);
  if (!IsValidRagPrefixKeyScale(o.config.rag_prefix_key_scale)) {
    return Fail("adapter", absl::InvalidArgumentError("--rag_prefix_key_scale must be in (0, 4]"));
  }
  o.train.rag_head_only = absl::GetFlag(FLAGS_rag_head_only);
  o.init_from = absl::GetFlag(FLAGS_init_from);
  if (o.train.rag_head_only && (!o.config.rag_head || o.init_from.empty())) {
    return Fail("adapter", absl::InvalidArgumentError(
                               "--rag_head_only trains the mac+rag head of a trained adapter: "
                               "give --rag_head and --init_from <bundle>/adapter"));
  }
  o.train.batch = FlagOr(FLAGS_batch, 8);
  o.train.questions_per_passage = absl::GetFlag(FLAGS_questions_per_passage);
  o.train.distill_weight = absl::GetFlag(FLAGS_distill_weight);
  o.train.contrastive_weight = absl::GetFlag(FLAGS_contrastive_weight);
  o.train.backprop_dropout = absl::GetFlag(FLAGS_backprop_dropout);
  o.train.text_fraction = absl::GetFlag(FLAGS_text_fraction);
  o.train.text_distractor_fraction = absl::GetFlag(FLAGS_text_distractor_fraction);
  o.train.text_subject_history = absl::GetFlag(FLAGS_text_subject_history);
  o.train.seed = absl::GetFlag(FLAGS_seed);
  o.steps = FlagOr(FLAGS_steps, 2000);
  o.warmup = FlagOr(FLAGS_warmup, 50);
  o.lr = FlagOr(FLAGS_lr, 1e-3);
  o.top_k = absl::GetFlag(FLAGS_top_k);
  o.gold_only_fraction = absl::GetFlag(FLAGS_gold_only_fraction);
  o.threads = absl::GetFlag(FLAGS_threads);
  o.log_every = std::max(1, absl::GetFlag(FLAGS_log_every));
  o.checkpoint_every = std::max(1, absl::GetFlag(FLAGS_checkpoint_every));
  o.resume = absl::GetFlag(FLAGS_resume);
  o.stop_after = absl::GetFlag(FLAGS_stop_after);
  o.eval_questions = FlagOr(FLAGS_eval_questions, 100);
  const std::string dtype = FlagOr(FLAGS_dtype, std::string("f16"));
  if (dtype == "f16") {
    o.export_dtype = DType::kF16;
  } else if (dtype == "f32") {
    o.export_dtype = DType::kF32;
  } else {
    return Fail("adapter", absl::InvalidArgumentError("--dtype must be f16 or f32"));
  }
  if (o.steps < 1 || o.train.batch < 2 || o.top_k < 1 || o.top_k > o.train.batch) {
    return Fail("adapter", absl::InvalidArgumentError(
                               "need --steps >= 1, --batch >= 2 and 1 <= --top_k <= --batch "
                               "(the other passages of a step are the distractors)"));
  }
  o.config.max_candidates = std::max(o.config.max_candidates, o.top_k);
  if (absl::Status st = RunAdapterTraining(o); !st.ok()) return Fail("adapter", st);
  return 0;
}

int RunKeysCommand() {
  RetrievalKeyOptions o;
  o.data_dir = absl::GetFlag(FLAGS_data);
  o.bundle_dir = absl::GetFlag(FLAGS_bundle);
  o.work_dir = absl::GetFlag(FLAGS_work_dir);
  if (o.data_dir.empty() || o.bundle_dir.empty()) {
    return Fail("keys", absl::InvalidArgumentError("need --data DIR and --bundle DIR"));
  }
  o.layers.clear();
  for (absl::string_view part : absl::StrSplit(absl::GetFlag(FLAGS_key_layers), ',')) {
    int layer = 0;
    if (!absl::SimpleAtoi(part, &layer)) {
      return Fail("keys", absl::InvalidArgumentError(absl::StrCat(
                              "--key_layers: '", part, "' is not a layer number (e.g. 1,3)")));
    }
    o.layers.push_back(layer);
  }
  o.heads = absl::GetFlag(FLAGS_key_heads);
  o.key_dim = absl::GetFlag(FLAGS_retrieval_key_dim);
  o.steps = FlagOr(FLAGS_steps, 2000);
  o.batch = FlagOr(FLAGS_batch, 256);
  o.lr = FlagOr(FLAGS_lr, 2e-3);
  o.warmup = FlagOr(FLAGS_warmup, 50);
  o.seed = absl::GetFlag(FLAGS_seed);
  o.threads = absl::GetFlag(FLAGS_threads);
  o.log_every = std::max(1, absl::GetFlag(FLAGS_log_every));
  o.eval_every = std::max(1, absl::GetFlag(FLAGS_eval_every));
  o.max_train_passages = absl::GetFlag(FLAGS_max_train_passages);
  o.export_heads = !absl::GetFlag(FLAGS_no_export);
  if (o.layers.empty() || o.heads < 1 || o.key_dim < 1 || o.steps < 1 || o.batch < 2) {
    return Fail("keys", absl::InvalidArgumentError(
                            "need --key_layers, --key_heads >= 1, --retrieval_key_dim >= 1, "
                            "--steps >= 1 and --batch >= 2"));
  }
  if (absl::Status st = TrainRetrievalKeys(o); !st.ok()) return Fail("keys", st);
  return 0;
}

int RunSessionCommand() {
  SessionTrainOptions o;
  o.data_dir = absl::GetFlag(FLAGS_data);
  o.bundle_dir = absl::GetFlag(FLAGS_bundle);
  o.work_dir = absl::GetFlag(FLAGS_work_dir);
  o.measure_only = absl::GetFlag(FLAGS_measure_icl);
  if (o.data_dir.empty() || o.bundle_dir.empty() || (o.work_dir.empty() && !o.measure_only)) {
    return Fail("session",
                absl::InvalidArgumentError("need --data DIR, --bundle DIR and --work_dir DIR"));
  }
  o.sites = absl::GetFlag(FLAGS_session_sites);
  o.rank = absl::GetFlag(FLAGS_session_rank);
  o.rank_out = absl::GetFlag(FLAGS_session_rank_out);
  o.demos_per_chunk = absl::GetFlag(FLAGS_demos_per_chunk);
  o.max_train_demos = absl::GetFlag(FLAGS_max_train_demos);
  o.tasks_per_step = absl::GetFlag(FLAGS_tasks_per_step);
  o.distill = absl::GetFlag(FLAGS_distill);
  o.eval_queries = absl::GetFlag(FLAGS_eval_queries);
  o.eval_tasks = absl::GetFlag(FLAGS_eval_tasks);
  o.steps = FlagOr(FLAGS_steps, 1500);
  o.lr = FlagOr(FLAGS_lr, 2e-3);
  o.warmup = FlagOr(FLAGS_warmup, 50);
  o.seed = absl::GetFlag(FLAGS_seed);
  o.threads = absl::GetFlag(FLAGS_threads);
  o.log_every = std::max(1, absl::GetFlag(FLAGS_log_every));
  o.checkpoint_every = std::max(1, absl::GetFlag(FLAGS_checkpoint_every));
  o.eval_every = std::max(0, absl::GetFlag(FLAGS_eval_every));
  o.resume = absl::GetFlag(FLAGS_resume);
  o.export_mapper = !absl::GetFlag(FLAGS_no_export);
  if (o.demos_per_chunk < 1 || o.max_train_demos < 1 || o.tasks_per_step < 1 ||
      o.eval_queries < 1 || o.eval_tasks < 1 || o.steps < 1 || o.distill < 0) {
    return Fail("session", absl::InvalidArgumentError(
                               "need --demos_per_chunk, --max_train_demos, --tasks_per_step, "
                               "--eval_queries, --eval_tasks and --steps >= 1 and --distill >= 0"));
  }
  if (absl::Status st = TrainSession(o); !st.ok()) return Fail("session", st);
  return 0;
}

}  // namespace
}  // namespace knowd::train

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "knowd-train data|tokenizer|pretrain|export|adapter|keys|session [flags]\n"
      "  data       --out DIR                         the world and in-context tasks (JSONL)\n"
      "  tokenizer  --data DIR --out tokenizer.model  SentencePiece BPE\n"
      "  pretrain   --data DIR --tokenizer FILE --work_dir DIR [--bundle DIR]\n"
      "  export     --work_dir DIR [--bundle DIR] [--dtype f16] [--tokenizer FILE]\n"
      "  adapter    --data DIR --bundle DIR --work_dir DIR [--steps N] [--top_k K] [--resume]\n"
      "  keys       --data DIR --bundle DIR [--steps N] [--key_layers 1,3]  retrieval keys\n"
      "  session    --data DIR --bundle DIR --work_dir DIR [--steps N] [--measure_icl]  the\n"
      "             session mapper: in-context tasks absorbed into a low-rank update");
  std::vector<std::string> storage;
  std::vector<char*> normalized = knowd::train::NormalizeFlagNames(argc, argv, &storage);
  std::vector<char*> args = absl::ParseCommandLine(argc, normalized.data());
  if (args.size() != 2) {
    std::fprintf(stderr, "%s\n", absl::ProgramUsageMessage().data());
    return 2;
  }
  const std::string command = args[1];
  if (command == "data") return knowd::train::RunData();
  if (command == "tokenizer") return knowd::train::RunTokenizer(argv[0]);
  if (command == "pretrain") return knowd::train::RunPretrainCommand();
  if (command == "export") return knowd::train::RunExport();
  if (command == "adapter") return knowd::train::RunAdapterCommand();
  if (command == "keys") return knowd::train::RunKeysCommand();
  if (command == "session") return knowd::train::RunSessionCommand();
  std::fprintf(stderr, "knowd-train: unknown command '%s'\n%s\n", command.c_str(),
               absl::ProgramUsageMessage().data());
  return 2;
}
