// `knowd reencode`, run as a user would: a bank whose passages one adapter encoded is re-encoded
// by another (random-weight adapters over the shipped stories260K model). Afterwards the bank
// opens with the new adapter's fingerprint only and holds what the new adapter computes for each
// stored text; an interrupted re-encode resumes where it stopped.
#include <cmath>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "model/adapter.h"
#include "model/tokenizer.h"
#include "model/transformer.h"
#include "storage/memory_bank.h"
#include "tests/model/random_adapter.h"
#include "tests/process_util.h"
#include "tests/storage/bank_test_util.h"

namespace knowd {
namespace {

const std::string kKnowd = std::string(KNOWD_BINARY_DIR) + "/daemon/knowd";
const std::string kModel = std::string(KNOWD_SOURCE_DIR) + "/models/stories260K-hf";
constexpr int kDocuments = 100;  // 150 passages: 3 batches of 64 for the command

using testing::CommandResult;

// stdout and stderr together.
CommandResult RunKnowd(const std::string& args) {
  return testing::RunCommand(kKnowd + " " + args, true);
}

class ReencodeCliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    bundle_ = dir_.Sub("bundle");
    std::filesystem::create_directories(bundle_);
    for (const char* f : {"config.json", "model.safetensors", "tokenizer.model"}) {
      std::filesystem::create_symlink(kModel + "/" + f, bundle_ + "/" + f);
    }
    auto model = Transformer::Load(kModel, backend_.get());
    ASSERT_TRUE(model.ok()) << model.status();
    model_ = *std::move(model);
    auto tokenizer = LoadTokenizer(kModel);
    ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
    tokenizer_ = *std::move(tokenizer);
    const AdapterSpec spec = testing::SmallAdapterSpec();
    ASSERT_TRUE(testing::WriteRandomAdapter(dir_.Sub("old"), model_->config(), spec, 1).ok());
    ASSERT_TRUE(testing::WriteRandomAdapter(bundle_ + "/adapter", model_->config(), spec, 2).ok());
    old_ = Load(dir_.Sub("old"));
    new_ = Load(bundle_ + "/adapter");

    // The bank as the old adapter left it: two namespaces, one or two passages per document.
    auto bank = storage::MemoryBank::Open(Options(*old_));
    ASSERT_TRUE(bank.ok()) << bank.status();
    std::vector<storage::Document> docs;
    for (int i = 0; i < kDocuments; ++i) {
      storage::Document doc;
      doc.name_space = i % 3 == 0 ? "beta" : "alpha";
      doc.id = absl::StrCat("doc-", i);
      for (int p = 0; p < 1 + i % 2; ++p) {
        storage::Passage passage;
        passage.text = absl::StrCat("Passage ", p, " of note ", i, ": the ", i * 7 % 13,
                                    " little birds sang in tree number ", i, ".");
        const storage::EncodedPassage code = Encode(*old_, passage.text);
        passage.latents = code.latents;
        passage.key = code.key;
        doc.passages.push_back(std::move(passage));
      }
      docs.push_back(std::move(doc));
    }
    ASSERT_TRUE((*bank)->Put(docs).ok());
    ASSERT_TRUE((*bank)->Close().ok());
  }

  std::unique_ptr<Adapter> Load(const std::string& dir) {
    auto adapter = Adapter::Load(dir, model_.get());
    EXPECT_TRUE(adapter.ok()) << adapter.status();
    return adapter.ok() ? *std::move(adapter) : nullptr;
  }
  storage::BankOptions Options(const Adapter& adapter) const {
    storage::BankOptions o;
    o.data_dir = dir_.Sub("bank");
    o.key_dim = adapter.spec().key_dim;
    o.latent_rows = adapter.spec().slots;
    o.latent_cols = adapter.spec().latent_dim;
    o.fingerprint = {adapter.spec().encoder_sha256, adapter.spec().base_sha256,
                     adapter.spec().retrieval_keys_sha256};
    return o;
  }
  storage::EncodedPassage Encode(Adapter& adapter, const std::string& text) {
    std::vector<PassageCode> codes;
    const std::vector<std::vector<int32_t>> ids = {tokenizer_->Encode(text, true)};
    EXPECT_TRUE(adapter.EncodePassages(ids, &codes).ok());
    return {codes.at(0).latents, codes.at(0).key};
  }
  std::string Command() const {
    return absl::StrCat("reencode --data-dir ", dir_.Sub("bank"), " --bundle ", bundle_,
                        " --threads 1 --latent-format fp16");
  }

  // Every stored passage holds the new adapter's code of its text (latents at f16 precision).
  void ExpectBankHoldsTheNewCodes() {
    auto bank = storage::MemoryBank::Open(Options(*new_));
    ASSERT_TRUE(bank.ok()) << bank.status();
    // The re-encode saved both indexes at its last write: this open loads them.
    auto stats = (*bank)->Stats();
    ASSERT_TRUE(stats.ok()) << stats.status();
    EXPECT_TRUE(stats->indexes_loaded_from_disk);
    EXPECT_TRUE(stats->lexical_loaded_from_disk) << stats->lexical_rebuild_reason;
    int passages = 0;
    double old_distance = 0;
    for (int i = 0; i < kDocuments; ++i) {
      auto doc = (*bank)->Get(i % 3 == 0 ? "beta" : "alpha", absl::StrCat("doc-", i), true);
      ASSERT_TRUE(doc.ok()) << doc.status();
      for (const storage::Passage& p : doc->passages) {
        const storage::EncodedPassage want = Encode(*new_, p.text);
        // Batches of other sizes round the matrix products differently: 1e-5, not bit equality.
        ASSERT_EQ(p.key.size(), want.key.size());
        for (size_t j = 0; j < want.key.size(); ++j) {
          ASSERT_NEAR(p.key[j], want.key[j], 1e-5) << p.text;
        }
        ASSERT_EQ(p.latents.size(), want.latents.size());
        for (size_t j = 0; j < want.latents.size(); ++j) {
          ASSERT_NEAR(p.latents[j], want.latents[j], std::fabs(want.latents[j]) / 2048 + 1e-5)
              << p.text;
        }
        const storage::EncodedPassage before = Encode(*old_, p.text);
        for (size_t j = 0; j < p.key.size(); ++j)
          old_distance += std::fabs(p.key[j] - before.key[j]);
        ++passages;
      }
    }
    EXPECT_EQ(passages, 150);
    EXPECT_GT(old_distance, 1.0);  // the old codes are gone
    // The vector index was rebuilt from the new keys: a passage's own key finds it first.
    const storage::EncodedPassage probe = Encode(*new_,
                                                 "Passage 0 of note 4: the 2 little "
                                                 "birds sang in tree number 4.");
    storage::SearchRequest search;
    search.name_space = "alpha";
    search.key = probe.key;
    search.k = 1;
    auto hits = (*bank)->Search(search);
    ASSERT_TRUE(hits.ok()) << hits.status();
    ASSERT_EQ(hits->size(), 1u);
    EXPECT_EQ((*hits)[0].doc_id, "doc-4");
    ASSERT_TRUE((*bank)->Close().ok());
  }

  storage::testing::TempDir dir_;
  std::string bundle_;
  std::unique_ptr<Backend> backend_ = MakeCpuBackend(1);
  std::unique_ptr<Transformer> model_;
  std::unique_ptr<Tokenizer> tokenizer_;
  std::unique_ptr<Adapter> old_, new_;
};

TEST_F(ReencodeCliTest, MovesTheBankToTheNewAdapter) {
  const CommandResult r = RunKnowd(Command());
  ASSERT_EQ(r.exit_code, 0) << r.out;
  EXPECT_NE(r.out.find("re-encoding [##############################] 150/150 passages  100%"),
            std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("re-encoded the latents and keys of 150 passages"), std::string::npos)
      << r.out;
  EXPECT_EQ(r.out.find("resuming"), std::string::npos) << r.out;

  // The old adapter can no longer open the bank; the new one can, and finds its own codes.
  EXPECT_EQ(storage::MemoryBank::Open(Options(*old_)).status().code(),
            absl::StatusCode::kFailedPrecondition);
  ExpectBankHoldsTheNewCodes();

  const CommandResult again = RunKnowd(Command());
  EXPECT_EQ(again.exit_code, 0) << again.out;
  EXPECT_NE(again.out.find("nothing to do"), std::string::npos) << again.out;
}

// New retrieval heads beside the same adapter: the bank refuses to open until its keys are
// re-encoded, `--keys-only` rewrites them in one pass and leaves every latent byte for byte, and
// `--keys-only` is refused where the latents would change too.
TEST_F(ReencodeCliTest, KeysOnlyRewritesTheKeysAndNotTheLatents) {
  // --keys-only cannot move a bank the old adapter encoded: its latents would stay stale.
  const CommandResult refused = RunKnowd(Command() + " --keys-only");
  EXPECT_EQ(refused.exit_code, 1) << refused.out;
  EXPECT_NE(refused.out.find("run without --keys-only"), std::string::npos) << refused.out;
  ASSERT_EQ(RunKnowd(Command()).exit_code, 0);

  // The latents as the new adapter (without heads) stored them.
  std::vector<std::vector<float>> latents_before;
  {
    auto bank = storage::MemoryBank::Open(Options(*new_));
    ASSERT_TRUE(bank.ok()) << bank.status();
    for (int i = 0; i < kDocuments; ++i) {
      auto doc = (*bank)->Get(i % 3 == 0 ? "beta" : "alpha", absl::StrCat("doc-", i), true);
      ASSERT_TRUE(doc.ok()) << doc.status();
      for (const storage::Passage& p : doc->passages) latents_before.push_back(p.latents);
    }
    ASSERT_TRUE((*bank)->Close().ok());
  }
  ASSERT_TRUE(testing::WriteRandomRetrievalKeys(bundle_ + "/adapter", model_->config(),
                                                new_->spec().key_dim, 3)
                  .ok());
  std::unique_ptr<Adapter> heads = Load(bundle_ + "/adapter");
  ASSERT_NE(heads, nullptr);
  ASSERT_TRUE(heads->has_retrieval_keys());
  const absl::Status stale = storage::MemoryBank::Open(Options(*heads)).status();
  EXPECT_EQ(stale.code(), absl::StatusCode::kFailedPrecondition) << stale;
  EXPECT_NE(stale.message().find("knowd reencode --keys-only"), std::string::npos) << stale;

  const CommandResult r = RunKnowd(Command() + " --keys-only");
  ASSERT_EQ(r.exit_code, 0) << r.out;
  EXPECT_NE(r.out.find("re-encoded the keys of 150 passages"), std::string::npos) << r.out;
  auto bank = storage::MemoryBank::Open(Options(*heads));
  ASSERT_TRUE(bank.ok()) << bank.status();
  size_t at = 0;
  for (int i = 0; i < kDocuments; ++i) {
    auto doc = (*bank)->Get(i % 3 == 0 ? "beta" : "alpha", absl::StrCat("doc-", i), true);
    ASSERT_TRUE(doc.ok()) << doc.status();
    for (const storage::Passage& p : doc->passages) {
      EXPECT_EQ(p.latents, latents_before.at(at++)) << p.text;
      const storage::EncodedPassage want = Encode(*heads, p.text);
      ASSERT_EQ(p.key.size(), want.key.size());
      for (size_t j = 0; j < want.key.size(); ++j) ASSERT_NEAR(p.key[j], want.key[j], 1e-5);
    }
  }
  EXPECT_EQ(at, 150u);
  ASSERT_TRUE((*bank)->Close().ok());
}

TEST_F(ReencodeCliTest, ResumesAnInterruptedReencode) {
  {
    // A re-encode towards the new adapter that dies after its first batch of 64.
    storage::BankOptions o = Options(*new_);
    o.open_for_reencode = true;
    auto bank = storage::MemoryBank::Open(o);
    ASSERT_TRUE(bank.ok()) << bank.status();
    int batches = 0;
    storage::PassageEncoder failing = [&](std::span<const std::string_view> texts,
                                          std::vector<storage::EncodedPassage>* out) {
      if (++batches > 1) return absl::UnavailableError("interrupted");
      out->clear();
      for (std::string_view t : texts) out->push_back(Encode(*new_, std::string(t)));
      return absl::OkStatus();
    };
    EXPECT_EQ((*bank)->Reencode(failing, nullptr, 64).code(), absl::StatusCode::kUnavailable);
    ASSERT_TRUE((*bank)->Close().ok());
  }
  // Until it completes, neither adapter may serve the bank.
  EXPECT_EQ(storage::MemoryBank::Open(Options(*new_)).status().code(),
            absl::StatusCode::kFailedPrecondition);

  const CommandResult r = RunKnowd(Command());
  ASSERT_EQ(r.exit_code, 0) << r.out;
  EXPECT_NE(r.out.find("resuming: 64 of 150 passages were re-encoded before"), std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("re-encoded the latents and keys of 86 passages"), std::string::npos)
      << r.out;
  ExpectBankHoldsTheNewCodes();
}

TEST_F(ReencodeCliTest, RefusesWhatItCannotDo) {
  CommandResult r = RunKnowd("reencode --bundle " + bundle_);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.out.find("knowd reencode: --data-dir"), std::string::npos) << r.out;
  r = RunKnowd(absl::StrCat("reencode --data_dir ", dir_.Sub("no-bank"), " --bundle ", bundle_));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.out.find("knowd reencode: "), std::string::npos) << r.out;
  r = RunKnowd(absl::StrCat("reencode --data-dir ", dir_.Sub("bank"), " --bundle ", kModel));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.out.find("adapter.json"), std::string::npos) << r.out;
}

}  // namespace
}  // namespace knowd
