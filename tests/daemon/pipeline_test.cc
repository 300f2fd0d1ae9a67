// The knowledge pipeline is one path (knowledge/): what `knowd eval` measures is what the daemon
// serves, and `knowd reencode` rebuilds what ingest stored.
//
// EvalPreparesWhatTheDaemonPrepares: a world split streamed into the real daemon (one document
// per call, in stream order) and into `knowd eval`'s own bank; for 50 questions and every mode
// the daemon serves, the daemon's prompt ids, prefix digest, citations and relevance (AskRequest
// explain) equal, byte for byte, what the eval prepared for the same question.
//
// ReencodeGivesEachPassageWhatIngestStored: a document the daemon cut into 3 passages (each
// after the first encoded with the tail of the one before) is re-encoded by `knowd reencode`;
// every passage gets back the latents and key ingest stored.
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "bench/eval.h"
#include "gtest/gtest.h"
#include "knowledge/bundle.h"
#include "knowledge/passages.h"
#include "storage/memory_bank.h"
#include "tests/daemon/daemon_process.h"
#include "train/world.h"

namespace knowd {
namespace {

using testing::DaemonProcess;
using testing::TempDir;

struct Prepared {
  std::string question;
  std::string mode;
  knowledge::AskParams params;
  knowledge::PreparedAsk ask;
};

v1::AskMode DaemonMode(const std::string& eval_mode) {
  if (eval_mode == "closed-book") return v1::ASK_MODE_CLOSED_BOOK;
  if (eval_mode == "rag-subject") return v1::ASK_MODE_RAG;
  if (eval_mode == "mac") return v1::ASK_MODE_MAC;
  if (eval_mode == "mac+rag") return v1::ASK_MODE_MAC_RAG;
  return v1::ASK_MODE_UNSPECIFIED;  // rag-top1, rag-top3: baselines the daemon does not serve
}

TEST(KnowledgePipeline, EvalPreparesWhatTheDaemonPrepares) {
  if (!testing::HasAdapter()) GTEST_SKIP() << "the bundle has no adapter: no mac modes";
  TempDir dir;
  const std::string data = dir.path() + "/world";
  std::filesystem::create_directories(data);
  train::WorldOptions world;
  world.people[static_cast<int>(train::Split::kTest)] = 20;
  const train::SplitData split = train::GenerateSplit(world, train::Split::kTest);
  {
    std::ofstream passages(data + "/test.passages.jsonl");
    for (const train::Passage& p : split.passages) passages << train::PassageToJson(p);
    std::ofstream questions(data + "/test.questions.jsonl");
    for (const train::Question& q : split.questions) questions << train::QuestionToJson(q);
  }
  ASSERT_GE(split.questions.size(), 50u);

  // The eval, every passage stored alone (as the daemon encodes one document per call).
  std::vector<Prepared> prepared;
  bench::EvalOptions o;
  o.bundle_dir = testing::kTinyModel;
  o.data_dir = data;
  o.limit = 50;
  o.threads = 1;
  o.retention_passages = static_cast<int>(split.passages.size());
  o.bank_sizes = {};
  o.print_table = false;
  o.on_prepared = [&](const std::string& question, const std::string& mode,
                      const knowledge::AskParams& params, const knowledge::PreparedAsk& ask) {
    prepared.push_back({question, mode, params, ask});
  };
  ASSERT_TRUE(bench::RunEval(o).ok());

  // The daemon, fed the same stream.
  auto daemon = DaemonProcess::Start(dir.path() + "/data", {"--threads", "1"});
  ASSERT_TRUE(daemon.ok()) << daemon.status();
  auto client = client::Client::Connect(testing::Options(**daemon));
  ASSERT_TRUE(client.ok()) << client.status();
  for (const train::Passage& p : split.passages) {
    bool sent = false;
    absl::Status acked = absl::UnknownError("no ack");
    absl::Status s = (*client)->Ingest(
        [&](v1::IngestRequest* r) -> absl::StatusOr<bool> {
          if (sent) return false;
          sent = true;
          r->set_namespace_("eval");
          r->set_id(p.id);
          r->set_text(p.text);
          return true;
        },
        [&](const v1::IngestAck& ack) {
          acked =
              ack.error_code() == 0 ? absl::OkStatus() : absl::InternalError(ack.error_message());
        });
    ASSERT_TRUE(s.ok()) << s;
    ASSERT_TRUE(acked.ok()) << acked;
  }
  absl::StatusOr<knowledge::Calibration> calibration =
      knowledge::ReadCalibration(testing::kTinyModel);
  ASSERT_TRUE(calibration.ok()) << calibration.status();

  std::map<std::string, int> compared;
  std::set<std::string> questions;
  for (const Prepared& p : prepared) {
    const v1::AskMode mode = DaemonMode(p.mode);
    if (mode == v1::ASK_MODE_UNSPECIFIED) continue;
    v1::AskRequest request;
    request.set_namespace_("eval");
    request.set_question(p.question);
    request.set_mode(mode);
    request.set_top_k(p.params.top_k);
    request.set_rag_passages(p.params.rag_passages);
    request.set_max_tokens(p.params.max_tokens);
    request.set_stream(false);
    request.set_explain(true);
    absl::StatusOr<v1::AskFinal> final = (*client)->Ask(request, nullptr);
    ASSERT_TRUE(final.ok()) << final.status() << " " << p.mode << ": " << p.question;
    const std::string what = absl::StrCat(p.mode, ": ", p.question);
    // Both took the bundle's retrieval for the mode (knowledge.json, retrieval.modes).
    if (p.params.mode != knowledge::AskMode::kClosedBook) {
      EXPECT_EQ(p.params.retrieval, calibration->retrieval.For(p.params.mode)) << what;
    }
    EXPECT_EQ(final->relevance(), static_cast<float>(p.ask.relevance)) << what;
    if (final->nothing_in_memory()) {
      // The daemon abstains below the bundle's threshold; the eval prepared with none.
      EXPECT_LT(p.ask.relevance, calibration->abstain_below) << what;
      continue;
    }
    EXPECT_EQ(std::vector<int32_t>(final->explain().prompt_ids().begin(),
                                   final->explain().prompt_ids().end()),
              p.ask.prompt)
        << what;
    EXPECT_EQ(final->explain().prefix_rows(), p.ask.prefix.rows) << what;
    if (p.ask.prefix.rows > 0) {
      EXPECT_EQ(final->explain().prefix_sha256(), knowledge::PrefixDigest(p.ask.prefix)) << what;
    }
    std::vector<std::string> daemon_cited, eval_cited;
    for (const v1::Passage& c : final->cited()) daemon_cited.push_back(c.document_id());
    for (const storage::SearchHit& h : p.ask.cited) eval_cited.push_back(h.doc_id);
    EXPECT_EQ(daemon_cited, eval_cited) << what;
    ++compared[p.mode];
    questions.insert(p.question);
  }
  for (const char* mode : {"closed-book", "rag-subject", "mac", "mac+rag"}) {
    EXPECT_GE(compared[mode], 40) << mode;  // 50 questions, less any the daemon abstained on
  }
  EXPECT_GE(questions.size(), 40u);
  EXPECT_EQ((*daemon)->Terminate(), 0) << (*daemon)->log();
}

TEST(KnowledgePipeline, ReencodeGivesEachPassageWhatIngestStored) {
  if (!testing::HasAdapter()) GTEST_SKIP() << "the bundle has no adapter to encode with";
  TempDir dir;
  const std::string bank_dir = dir.path() + "/data";
  const std::string text =
      "Ulla Marsk grew up in the harbour town of Vellin, where her father mended nets. "
      "She left at sixteen to study glass making in Orrey and opened her own workshop there. "
      "Her blue bowls are sold in three countries, and in 1998 she married Teo Brand, a potter.";
  {
    auto daemon =
        DaemonProcess::Start(bank_dir, {"--max-passage-tokens", "40", "--passage-overlap-tokens",
                                        "8", "--latent-format", "fp16", "--threads", "1"});
    ASSERT_TRUE(daemon.ok()) << daemon.status();
    auto client = client::Client::Connect(testing::Options(**daemon));
    ASSERT_TRUE(client.ok()) << client.status();
    bool sent = false;
    absl::Status s = (*client)->Ingest(
        [&](v1::IngestRequest* r) -> absl::StatusOr<bool> {
          if (sent) return false;
          sent = true;
          r->set_id("ulla");
          r->set_text(text);
          return true;
        },
        [](const v1::IngestAck& ack) { EXPECT_EQ(ack.error_code(), 0) << ack.error_message(); });
    ASSERT_TRUE(s.ok()) << s;
    ASSERT_EQ((*daemon)->Terminate(), 0) << (*daemon)->log();
  }

  knowledge::BundleOptions bundle_options;
  bundle_options.model = testing::kTinyModel;
  bundle_options.threads = 1;
  absl::StatusOr<knowledge::Bundle> bundle = knowledge::LoadBundle(bundle_options);
  ASSERT_TRUE(bundle.ok()) << bundle.status();
  storage::BankOptions options;
  options.data_dir = bank_dir;
  options.create_if_missing = false;
  options.key_dim = bundle->modulator->key_dim();
  options.latent_rows = bundle->modulator->latent_rows();
  options.latent_cols = bundle->modulator->latent_cols();
  options.latent_format = storage::LatentFormat::kFp16;
  options.fingerprint = bundle->fingerprint();
  auto read = [&]() -> storage::Document {
    auto bank = storage::MemoryBank::Open(options);
    EXPECT_TRUE(bank.ok()) << bank.status();
    if (!bank.ok()) return {};
    auto doc = (*bank)->Get("default", "ulla", true);
    EXPECT_TRUE(doc.ok()) << doc.status();
    EXPECT_TRUE((*bank)->Close().ok());
    return doc.ok() ? *doc : storage::Document{};
  };
  const storage::Document ingested = read();
  std::string cut;
  for (const storage::Passage& p : ingested.passages) absl::StrAppend(&cut, "[", p.text, "] ");
  ASSERT_EQ(ingested.passages.size(), 3u) << "the document should be cut into 3 passages: " << cut;
  EXPECT_EQ(ingested.passages[0].context_bytes, 0u);
  EXPECT_GT(ingested.passages[1].context_bytes, 0u);
  EXPECT_GT(ingested.passages[2].context_bytes, 0u);

  // Hand the bank to another encoder (zeros), so `knowd reencode` has everything to redo.
  {
    storage::BankOptions other = options;
    other.fingerprint = {"another-adapter", "another-base"};
    other.open_for_reencode = true;
    auto bank = storage::MemoryBank::Open(other);
    ASSERT_TRUE(bank.ok()) << bank.status();
    storage::PassageEncoder zeros = [&](std::span<const std::string_view> inputs,
                                        std::vector<storage::EncodedPassage>* out) {
      out->assign(inputs.size(), {std::vector<float>(options.latent_rows * options.latent_cols),
                                  std::vector<float>(options.key_dim, 0.0f)});
      for (auto& e : *out) e.key[0] = 1.0f;
      return absl::OkStatus();
    };
    ASSERT_TRUE((*bank)->Reencode(zeros, nullptr, 64).ok());
    ASSERT_TRUE((*bank)->Close().ok());
  }
  const testing::CommandResult reencode = testing::RunCommand(
      absl::StrCat(testing::kKnowdBinary, " reencode --data-dir ", bank_dir, " --bundle ",
                   testing::kTinyModel, " --latent-format fp16 --threads 1"),
      true);
  ASSERT_EQ(reencode.exit_code, 0) << reencode.out;
  const storage::Document reencoded = read();
  ASSERT_EQ(reencoded.passages.size(), 3u);

  // What the passages' own text alone encodes to (what reencode gave them before it read the
  // overlap): far from what ingest stored, for every passage with context.
  std::vector<std::string_view> alone;
  for (const storage::Passage& p : ingested.passages) alone.push_back(p.text);
  std::vector<storage::EncodedPassage> without_context;
  ASSERT_TRUE(knowledge::EncodePassageTexts(*bundle->modulator, *bundle->tokenizer, alone,
                                            bundle->model->config().max_position_embeddings,
                                            &without_context)
                  .ok());
  for (size_t i = 0; i < 3; ++i) {
    const storage::Passage& want = ingested.passages[i];
    const storage::Passage& got = reencoded.passages[i];
    ASSERT_EQ(got.latents.size(), want.latents.size());
    double reencode_gap = 0, context_gap = 0;
    for (size_t j = 0; j < want.latents.size(); ++j) {
      reencode_gap = std::max(reencode_gap, double{std::abs(got.latents[j] - want.latents[j])});
      context_gap =
          std::max(context_gap, double{std::abs(without_context[i].latents[j] - want.latents[j])});
    }
    // Equal up to f16 storage and batch rounding.
    EXPECT_LT(reencode_gap, 2e-3) << "passage " << i;
    if (i > 0) {
      EXPECT_GT(context_gap, 0.05) << "passage " << i << " has no context to lose";
    }
    for (size_t j = 0; j < want.key.size(); ++j) {
      EXPECT_NEAR(got.key[j], want.key[j], 1e-4) << "passage " << i;
    }
  }
}

}  // namespace
}  // namespace knowd
