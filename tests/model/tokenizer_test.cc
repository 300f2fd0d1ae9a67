// Tokenizers against reference ids: llama.cpp's test vectors for a Llama SentencePiece vocabulary
// and for GPT-2 (ids produced by Hugging Face tokenizers), libsentencepiece's ids for stories260K,
// agreement between every way of loading the same vocabulary, exact round trips, thread safety,
// and errors as Status values.
#include "model/tokenizer.h"

#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <variant>
#include <vector>

#include "absl/status/status.h"
#include "gtest/gtest.h"
#include "model/tensor_file.h"
#include "nlohmann/json.hpp"
#include "tests/model/tokenizer_test_util.h"

namespace knowd {
namespace {

using tokenizer_testing::Ids;
using tokenizer_testing::Quoted;
using tokenizer_testing::ReadVocabCases;
using tokenizer_testing::ScratchDir;

std::unique_ptr<Tokenizer> LoadGguf(const std::string& path) {
  absl::StatusOr<std::unique_ptr<GgufFile>> gguf = GgufFile::Open(path);
  EXPECT_TRUE(gguf.ok()) << gguf.status();
  if (!gguf.ok()) return nullptr;
  absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer = LoadGgufTokenizer(**gguf);
  EXPECT_TRUE(tokenizer.ok()) << tokenizer.status();
  return tokenizer.ok() ? *std::move(tokenizer) : nullptr;
}

// Every case of `vocab_path`'s vectors: exact ids, and Decode giving the input back.
void ExpectVocabCases(const Tokenizer& tokenizer, const std::string& vocab_path,
                      size_t expected_cases) {
  const std::vector<tokenizer_testing::VocabCase> cases = ReadVocabCases(vocab_path);
  ASSERT_EQ(cases.size(), expected_cases) << vocab_path;
  int failures = 0;
  for (size_t i = 0; i < cases.size(); ++i) {
    const std::vector<int32_t> ids = tokenizer.Encode(cases[i].input, /*add_bos=*/false);
    if (ids != cases[i].ids) {
      ++failures;
      ADD_FAILURE() << "case " << i << " input " << Quoted(cases[i].input) << "\n  expected "
                    << Ids(cases[i].ids) << "\n  got      " << Ids(ids);
    }
    EXPECT_EQ(tokenizer.Decode(ids), cases[i].input) << "case " << i << " round trip";
  }
  std::printf("%s: %zu cases, %d failing\n", vocab_path.c_str(), cases.size(), failures);
}

TEST(LlamaCppVectors, LlamaSentencePieceGgufGivesEveryExpectedId) {
  std::unique_ptr<Tokenizer> tokenizer = LoadGguf(tokenizer_testing::SpmVocabGguf());
  ASSERT_NE(tokenizer, nullptr);
  EXPECT_EQ(tokenizer->vocab_size(), 32000);
  EXPECT_EQ(tokenizer->bos_id(), 1);
  EXPECT_EQ(tokenizer->eos_id(), 2);
  ExpectVocabCases(*tokenizer, tokenizer_testing::SpmVocabGguf(), 46);
}

TEST(LlamaCppVectors, Gpt2GgufGivesEveryExpectedId) {
  std::unique_ptr<Tokenizer> tokenizer = LoadGguf(tokenizer_testing::Gpt2VocabGguf());
  ASSERT_NE(tokenizer, nullptr);
  EXPECT_EQ(tokenizer->vocab_size(), 50257);
  EXPECT_EQ(tokenizer->bos_id(), 50256);
  EXPECT_EQ(tokenizer->eos_id(), 50256);
  ExpectVocabCases(*tokenizer, tokenizer_testing::Gpt2VocabGguf(), 46);
}

const std::vector<std::string>& StoriesSentences() {
  static const auto* const sentences = new std::vector<std::string>{
      "Once upon a time, there was a little girl named Lily.",
      "She loved to play outside in the sunshine with her big red ball!",
      "\"Can I have one?\" asked Tom. Mom said, \"Yes, but only 1 or 2.\"",
      " Leading space, two  spaces, a tab\tand a new\nline",
      "Zoë ate crème brûlée — 北京 is far away 🙂",
      "",
  };
  return *sentences;
}

TEST(Stories260K, TokenizerModelGivesLibsentencepieceIds) {
  absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer =
      LoadSentencePieceTokenizer(tokenizer_testing::StoriesTokenizerModel());
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  EXPECT_EQ((*tokenizer)->vocab_size(), 512);
  EXPECT_EQ((*tokenizer)->bos_id(), 1);
  EXPECT_EQ((*tokenizer)->eos_id(), 2);
  // Ids from libsentencepiece 0.1.97 (spm_encode --output_format=id) for this model.
  const std::vector<int32_t> expected = {403, 407, 261, 378, 432, 383, 286, 261,
                                         376, 298, 315, 421, 395, 317, 426};
  EXPECT_EQ((*tokenizer)->Encode(StoriesSentences()[0], /*add_bos=*/false), expected);
  std::vector<int32_t> with_bos = {1};
  with_bos.insert(with_bos.end(), expected.begin(), expected.end());
  EXPECT_EQ((*tokenizer)->Encode(StoriesSentences()[0], /*add_bos=*/true), with_bos);
  EXPECT_EQ((*tokenizer)->Decode(with_bos), StoriesSentences()[0]);
}

TEST(Stories260K, GgufVocabularyMatchesTokenizerModel) {
  absl::StatusOr<std::unique_ptr<Tokenizer>> from_model =
      LoadSentencePieceTokenizer(tokenizer_testing::StoriesTokenizerModel());
  ASSERT_TRUE(from_model.ok()) << from_model.status();
  std::unique_ptr<Tokenizer> from_gguf = LoadGguf(tokenizer_testing::StoriesGguf());
  ASSERT_NE(from_gguf, nullptr);
  EXPECT_EQ(from_gguf->vocab_size(), 512);
  EXPECT_EQ(from_gguf->bos_id(), 1);
  EXPECT_EQ(from_gguf->eos_id(), 2);
  for (const std::string& text : StoriesSentences()) {
    const std::vector<int32_t> ids = (*from_model)->Encode(text, /*add_bos=*/true);
    EXPECT_EQ(from_gguf->Encode(text, /*add_bos=*/true), ids) << Quoted(text);
    EXPECT_EQ(from_gguf->Decode(ids), text);
    EXPECT_EQ((*from_model)->Decode(ids), text);
  }
}

TEST(RoundTrip, DecodeOfEncodeGivesTheTextBack) {
  absl::StatusOr<std::unique_ptr<Tokenizer>> stories =
      LoadSentencePieceTokenizer(tokenizer_testing::StoriesTokenizerModel());
  ASSERT_TRUE(stories.ok()) << stories.status();
  std::unique_ptr<Tokenizer> llama = LoadGguf(tokenizer_testing::SpmVocabGguf());
  std::unique_ptr<Tokenizer> gpt2 = LoadGguf(tokenizer_testing::Gpt2VocabGguf());
  ASSERT_NE(llama, nullptr);
  ASSERT_NE(gpt2, nullptr);
  const std::vector<std::string> texts = {
      "plain ASCII text, with punctuation; and numbers 12345.",
      "  leading and trailing spaces  ",
      "tabs\tand\nnewlines\r\n\n",
      "Ünïcödé: naïve café, Ελληνικά, русский, 日本語, 한국어, עברית, العربية",
      "emoji 🦙🚀😶‍🌫️✅ and a ZWJ sequence",
  };
  for (const Tokenizer* tokenizer : {stories->get(), llama.get(), gpt2.get()}) {
    for (const std::string& text : texts) {
      const std::vector<int32_t> ids = tokenizer->Encode(text, /*add_bos=*/true);
      EXPECT_EQ(tokenizer->Decode(ids), text) << Ids(ids);
    }
  }
  // SentencePiece writes spaces as U+2581, so that character in the input comes back as a space
  // (libsentencepiece does the same); byte-level BPE keeps it.
  const std::string lower_block = "a \xE2\x96\x81 b";
  EXPECT_EQ(llama->Decode(llama->Encode(lower_block, false)), "a   b");
  EXPECT_EQ(gpt2->Decode(gpt2->Encode(lower_block, false)), lower_block);
  // Byte-level BPE carries any bytes, including malformed UTF-8.
  std::mt19937 rng(7);
  for (int i = 0; i < 500; ++i) {
    const std::string text = tokenizer_testing::RandomText(rng, /*malformed=*/true);
    EXPECT_EQ(gpt2->Decode(gpt2->Encode(text, false)), text) << Quoted(text);
  }
}

TEST(Gpt2, SpecialTokensAreMatchedWholeAndDecodeToNothing) {
  std::unique_ptr<Tokenizer> gpt2 = LoadGguf(tokenizer_testing::Gpt2VocabGguf());
  ASSERT_NE(gpt2, nullptr);
  const std::vector<int32_t> hello = gpt2->Encode("Hello", false);
  const std::vector<int32_t> world = gpt2->Encode(" world", false);
  std::vector<int32_t> expected = hello;
  expected.push_back(50256);
  expected.insert(expected.end(), world.begin(), world.end());
  EXPECT_EQ(gpt2->Encode("Hello<|endoftext|> world", false), expected);
  EXPECT_EQ(gpt2->Decode(expected), "Hello world");
  // A partial special token is ordinary text.
  EXPECT_EQ(gpt2->Decode(gpt2->Encode("<|endoftext|", false)), "<|endoftext|");
}

TEST(Gpt2, VeryLongRunsEncodeAndRoundTrip) {
  std::unique_ptr<Tokenizer> gpt2 = LoadGguf(tokenizer_testing::Gpt2VocabGguf());
  ASSERT_NE(gpt2, nullptr);
  for (const std::string& text : {std::string(200000, ' ') + "x", std::string(200000, 'a'),
                                  std::string(50000, '7'), std::string(100000, '\n') + " y"}) {
    const std::vector<int32_t> ids = gpt2->Encode(text, false);
    EXPECT_FALSE(ids.empty());
    EXPECT_EQ(gpt2->Decode(ids), text);
  }
}

// Writes the GGUF GPT-2 vocabulary as a Hugging Face tokenizer.json (as transformers would save
// GPT-2's): vocab, merges, <|endoftext|> as a special added token, ByteLevel pre-tokenizer.
void WriteGpt2TokenizerJson(const GgufFile& gguf, const std::string& path) {
  const auto& tokens = std::get<std::vector<std::string>>(*gguf.GetValue("tokenizer.ggml.tokens"));
  const auto& types = std::get<std::vector<int64_t>>(*gguf.GetValue("tokenizer.ggml.token_type"));
  const auto& merges = std::get<std::vector<std::string>>(*gguf.GetValue("tokenizer.ggml.merges"));
  nlohmann::json vocab = nlohmann::json::object();
  nlohmann::json added = nlohmann::json::array();
  for (size_t id = 0; id < tokens.size(); ++id) {
    vocab[tokens[id]] = id;
    if (types[id] == 3) {
      added.push_back({{"id", id},
                       {"content", tokens[id]},
                       {"single_word", false},
                       {"lstrip", false},
                       {"rstrip", false},
                       {"normalized", true},
                       {"special", true}});
    }
  }
  const nlohmann::json byte_level = {{"type", "ByteLevel"},
                                     {"add_prefix_space", false},
                                     {"trim_offsets", true},
                                     {"use_regex", true}};
  const nlohmann::json root = {
      {"version", "1.0"},
      {"truncation", nullptr},
      {"padding", nullptr},
      {"added_tokens", added},
      {"normalizer", nullptr},
      {"pre_tokenizer", byte_level},
      {"post_processor", byte_level},
      {"decoder", byte_level},
      {"model",
       {{"type", "BPE"},
        {"dropout", nullptr},
        {"unk_token", nullptr},
        {"continuing_subword_prefix", ""},
        {"end_of_word_suffix", ""},
        {"fuse_unk", false},
        {"vocab", vocab},
        {"merges", merges}}},
  };
  tokenizer_testing::WriteBytes(path, root.dump());
}

TEST(HfTokenizerJson, Gpt2JsonMatchesGgufVocabulary) {
  absl::StatusOr<std::unique_ptr<GgufFile>> gguf =
      GgufFile::Open(tokenizer_testing::Gpt2VocabGguf());
  ASSERT_TRUE(gguf.ok()) << gguf.status();
  std::unique_ptr<Tokenizer> from_gguf = LoadGguf(tokenizer_testing::Gpt2VocabGguf());
  ASSERT_NE(from_gguf, nullptr);
  ScratchDir dir;
  const std::string json_path = dir.File("tokenizer.json");
  WriteGpt2TokenizerJson(**gguf, json_path);

  absl::StatusOr<std::unique_ptr<Tokenizer>> from_json = LoadHfTokenizerJson(json_path);
  ASSERT_TRUE(from_json.ok()) << from_json.status();
  EXPECT_EQ((*from_json)->vocab_size(), from_gguf->vocab_size());
  EXPECT_EQ((*from_json)->bos_id(), from_gguf->bos_id());
  EXPECT_EQ((*from_json)->eos_id(), from_gguf->eos_id());
  ExpectVocabCases(**from_json, tokenizer_testing::Gpt2VocabGguf(), 46);
  std::mt19937 rng(11);
  for (int i = 0; i < 300; ++i) {
    const std::string text = tokenizer_testing::RandomText(rng, /*malformed=*/false);
    EXPECT_EQ((*from_json)->Encode(text, true), from_gguf->Encode(text, true)) << Quoted(text);
  }

  // Picked by LoadTokenizer both as the file and as a directory holding only tokenizer.json.
  for (const std::string& path : {json_path, dir.path()}) {
    absl::StatusOr<std::unique_ptr<Tokenizer>> loaded = LoadTokenizer(path);
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    EXPECT_EQ((*loaded)->Encode("Hello, y'all!", false), from_gguf->Encode("Hello, y'all!", false));
  }
}

TEST(LoadTokenizer, PicksTheLoaderByContent) {
  const std::string text = "Once upon a time, there was a little girl named Lily.";
  absl::StatusOr<std::unique_ptr<Tokenizer>> reference =
      LoadSentencePieceTokenizer(tokenizer_testing::StoriesTokenizerModel());
  ASSERT_TRUE(reference.ok()) << reference.status();
  const std::vector<int32_t> expected = (*reference)->Encode(text, true);
  for (const std::string& path :
       {tokenizer_testing::StoriesGguf(), tokenizer_testing::StoriesHfDir(),
        tokenizer_testing::StoriesTokenizerModel()}) {
    absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer = LoadTokenizer(path);
    ASSERT_TRUE(tokenizer.ok()) << path << ": " << tokenizer.status();
    EXPECT_EQ((*tokenizer)->Encode(text, true), expected) << path;
  }
  absl::StatusOr<std::unique_ptr<Tokenizer>> gpt2 =
      LoadTokenizer(tokenizer_testing::Gpt2VocabGguf());
  ASSERT_TRUE(gpt2.ok()) << gpt2.status();
  EXPECT_EQ((*gpt2)->vocab_size(), 50257);
}

TEST(Threads, ConcurrentEncodeGivesTheSameIds) {
  std::unique_ptr<Tokenizer> gpt2 = LoadGguf(tokenizer_testing::Gpt2VocabGguf());
  std::unique_ptr<Tokenizer> llama = LoadGguf(tokenizer_testing::SpmVocabGguf());
  ASSERT_NE(gpt2, nullptr);
  ASSERT_NE(llama, nullptr);
  std::mt19937 rng(3);
  std::vector<std::string> texts;
  for (int i = 0; i < 200; ++i) texts.push_back(tokenizer_testing::RandomText(rng, true));
  for (const Tokenizer* tokenizer : {gpt2.get(), llama.get()}) {
    std::vector<std::vector<int32_t>> expected;
    for (const std::string& text : texts) expected.push_back(tokenizer->Encode(text, true));
    std::vector<int> mismatches(4, 0);
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t) {
      threads.emplace_back([&, t] {
        for (int round = 0; round < 5; ++round) {
          for (size_t i = 0; i < texts.size(); ++i) {
            if (tokenizer->Encode(texts[i], true) != expected[i]) ++mismatches[t];
          }
        }
      });
    }
    for (std::thread& thread : threads) thread.join();
    for (int m : mismatches) EXPECT_EQ(m, 0);
  }
}

TEST(Errors, MissingFilesAreNotFound) {
  const std::string missing = tokenizer_testing::SourcePath("tests/data/no-such-tokenizer");
  EXPECT_EQ(LoadSentencePieceTokenizer(missing + ".model").status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(LoadHfTokenizerJson(missing + ".json").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(LoadTokenizer(missing).status().code(), absl::StatusCode::kNotFound);
  ScratchDir empty_dir;
  EXPECT_EQ(LoadTokenizer(empty_dir.path()).status().code(), absl::StatusCode::kNotFound);
}

TEST(Errors, GarbageIsRefusedWithAStatus) {
  ScratchDir dir;
  const std::string model =
      tokenizer_testing::ReadBytes(tokenizer_testing::StoriesTokenizerModel());
  ASSERT_FALSE(model.empty());
  std::mt19937 rng(5);
  std::vector<std::string> garbage = {
      "",
      "hello, I am not a tokenizer",
      std::string(1000, '\xFF'),
      model.substr(0, model.size() / 2),  // Truncated inside a piece.
      "{\"model\": {\"type\": \"Unigram\", \"vocab\": [[\"a\", 0.0]]}}",
      "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []}}",  // No ByteLevel.
      "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": \"x\"}, \"merges\": []}}",
      "{\"model\": 17}",
      "{ not json",
  };
  for (int i = 0; i < 20; ++i) {
    std::string flipped = model;
    for (int j = 0; j < 8; ++j) flipped[rng() % flipped.size()] = static_cast<char>(rng());
    garbage.push_back(flipped);
  }
  for (size_t i = 0; i < garbage.size(); ++i) {
    const std::string path = dir.File("garbage" + std::to_string(i));
    tokenizer_testing::WriteBytes(path, garbage[i]);
    // A flipped byte may leave a valid model (a changed score or letter): it must simply load.
    const bool may_load = i >= 9;
    for (auto load : {&LoadSentencePieceTokenizer, &LoadHfTokenizerJson, &LoadTokenizer}) {
      absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer = load(path);
      if (tokenizer.ok()) {
        EXPECT_TRUE(may_load) << "garbage " << i << " loaded";
        (*tokenizer)->Encode("still works?", true);
      } else {
        EXPECT_FALSE(tokenizer.status().message().empty());
      }
    }
  }
}

// A GGUF v3 file with no tensors and the given metadata: strings and lists of strings.
using GgufMetadata =
    std::vector<std::pair<std::string, std::variant<std::string, std::vector<std::string>>>>;
std::string MinimalGguf(const GgufMetadata& metadata) {
  std::string bytes = "GGUF";
  const auto put = [&](uint64_t value, int width) {
    for (int i = 0; i < width; ++i) bytes.push_back(static_cast<char>(value >> (8 * i)));
  };
  const auto put_string = [&](const std::string& s) {
    put(s.size(), 8);
    bytes += s;
  };
  constexpr uint32_t kString = 8, kArray = 9;
  put(3, 4);                // version
  put(0, 8);                // tensor count
  put(metadata.size(), 8);  // metadata count
  for (const auto& [key, value] : metadata) {
    put_string(key);
    if (const auto* text = std::get_if<std::string>(&value)) {
      put(kString, 4);
      put_string(*text);
    } else {
      const auto& list = std::get<std::vector<std::string>>(value);
      put(kArray, 4);
      put(kString, 4);
      put(list.size(), 8);
      for (const std::string& item : list) put_string(item);
    }
  }
  return bytes;
}

TEST(Errors, GgufWithoutTokenizerIsRefused) {
  ScratchDir dir;
  const std::string bare = dir.File("bare.gguf");
  tokenizer_testing::WriteBytes(bare, MinimalGguf({{"general.architecture", "llama"}}));
  absl::StatusOr<std::unique_ptr<GgufFile>> gguf = GgufFile::Open(bare);
  ASSERT_TRUE(gguf.ok()) << gguf.status();
  absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer = LoadGgufTokenizer(**gguf);
  EXPECT_EQ(tokenizer.status().code(), absl::StatusCode::kNotFound) << tokenizer.status();
  EXPECT_EQ(LoadTokenizer(bare).status().code(), absl::StatusCode::kNotFound);

  for (const std::string model : {"llama", "gpt2", "bert"}) {
    const std::string path = dir.File(model + ".gguf");
    tokenizer_testing::WriteBytes(path, MinimalGguf({{"tokenizer.ggml.model", model}}));
    absl::StatusOr<std::unique_ptr<Tokenizer>> t = LoadTokenizer(path);
    EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument) << model << t.status();
  }
}

// A byte-level vocabulary of GPT-2's 256 byte characters plus "12", "34" and "abc", with merges
// "3 4" then "1 2", so that how "1234" and "abc" come out shows how the pre-tokenizer split them
// and whether whole-word lookup (ignore_merges) is on.
std::unique_ptr<Tokenizer> TinyBpeWithPre(const ScratchDir& dir, const std::string& pre) {
  std::vector<std::string> tokens;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
    // Only printable ASCII is used below; the other bytes just need distinct tokens.
    tokens.push_back(printable && b < 0x80 ? std::string(1, static_cast<char>(b))
                                           : "<byte " + std::to_string(b) + ">");
  }
  tokens.insert(tokens.end(), {"12", "34", "abc"});
  const std::string path = dir.File(pre + ".gguf");
  tokenizer_testing::WriteBytes(
      path, MinimalGguf({{"tokenizer.ggml.model", "gpt2"},
                         {"tokenizer.ggml.pre", pre},
                         {"tokenizer.ggml.tokens", tokens},
                         {"tokenizer.ggml.merges", std::vector<std::string>{"3 4", "1 2"}}}));
  absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer = LoadTokenizer(path);
  EXPECT_TRUE(tokenizer.ok()) << pre << ": " << tokenizer.status();
  return tokenizer.ok() ? *std::move(tokenizer) : nullptr;
}

TEST(Gpt2, GgufPreTokenizerChoosesTheSplit) {
  ScratchDir dir;
  const int32_t k12 = 256, k34 = 257, kAbc = 258;
  const int32_t k1 = '1', k2 = '2', k3 = '3', k4 = '4', kA = 'a', kB = 'b', kC = 'c';
  // GPT-2: one number run, merged by rank ("3 4" first).
  std::unique_ptr<Tokenizer> gpt2 = TinyBpeWithPre(dir, "gpt-2");
  ASSERT_NE(gpt2, nullptr);
  EXPECT_EQ(gpt2->Encode("1234", false), (std::vector<int32_t>{k12, k34}));
  EXPECT_EQ(gpt2->Encode("abc", false), (std::vector<int32_t>{kA, kB, kC}));
  // Llama 3: digits in groups of three ("123" "4"), whole words taken from the vocabulary.
  std::unique_ptr<Tokenizer> llama3 = TinyBpeWithPre(dir, "llama-bpe");
  ASSERT_NE(llama3, nullptr);
  EXPECT_EQ(llama3->Encode("1234", false), (std::vector<int32_t>{k12, k3, k4}));
  EXPECT_EQ(llama3->Encode("abc", false), (std::vector<int32_t>{kAbc}));
  // Qwen2: one digit at a time.
  std::unique_ptr<Tokenizer> qwen2 = TinyBpeWithPre(dir, "qwen2");
  ASSERT_NE(qwen2, nullptr);
  EXPECT_EQ(qwen2->Encode("1234", false), (std::vector<int32_t>{k1, k2, k3, k4}));

  const std::string unknown = dir.File("unknown.gguf");
  tokenizer_testing::WriteBytes(
      unknown, MinimalGguf({{"tokenizer.ggml.model", "gpt2"},
                            {"tokenizer.ggml.pre", "some-future-model"},
                            {"tokenizer.ggml.tokens", std::vector<std::string>{"a"}},
                            {"tokenizer.ggml.merges", std::vector<std::string>{}}}));
  EXPECT_EQ(LoadTokenizer(unknown).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(HfTokenizerJson, SplitRegexPreTokenizerAndTokenizerConfig) {
  absl::StatusOr<std::unique_ptr<GgufFile>> gguf =
      GgufFile::Open(tokenizer_testing::Gpt2VocabGguf());
  ASSERT_TRUE(gguf.ok()) << gguf.status();
  ScratchDir dir;
  const std::string json_path = dir.File("tokenizer.json");
  WriteGpt2TokenizerJson(**gguf, json_path);
  // The Llama 3 layout: the regex in a Split step, ByteLevel only mapping bytes. With GPT-2's
  // regex it must tokenize exactly as the plain ByteLevel pre-tokenizer does.
  nlohmann::json root = nlohmann::json::parse(tokenizer_testing::ReadBytes(json_path));
  root["pre_tokenizer"] = {
      {"type", "Sequence"},
      {"pretokenizers",
       {{{"type", "Split"},
         {"pattern",
          {{"Regex",
            R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)"}}},
         {"behavior", "Isolated"},
         {"invert", false}},
        {{"type", "ByteLevel"},
         {"add_prefix_space", false},
         {"trim_offsets", true},
         {"use_regex", false}}}}};
  tokenizer_testing::WriteBytes(json_path, root.dump());
  tokenizer_testing::WriteBytes(dir.File("tokenizer_config.json"),
                                R"({"bos_token": {"content": "!"}, "eos_token": "\""})");
  absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer = LoadHfTokenizerJson(json_path);
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  EXPECT_EQ((*tokenizer)->bos_id(), 0);  // "!" is token 0 of GPT-2, '"' token 1.
  EXPECT_EQ((*tokenizer)->eos_id(), 1);
  ExpectVocabCases(**tokenizer, tokenizer_testing::Gpt2VocabGguf(), 46);
}

TEST(Errors, DecodeIgnoresIdsOutsideTheVocabulary) {
  std::unique_ptr<Tokenizer> llama = LoadGguf(tokenizer_testing::SpmVocabGguf());
  std::unique_ptr<Tokenizer> gpt2 = LoadGguf(tokenizer_testing::Gpt2VocabGguf());
  ASSERT_NE(llama, nullptr);
  ASSERT_NE(gpt2, nullptr);
  for (const Tokenizer* tokenizer : {llama.get(), gpt2.get()}) {
    std::vector<int32_t> ids = tokenizer->Encode("Hello world", false);
    std::vector<int32_t> noisy = {-5, tokenizer->vocab_size()};
    noisy.insert(noisy.end(), ids.begin(), ids.end());
    noisy.push_back(INT32_MAX);
    EXPECT_EQ(tokenizer->Decode(noisy), "Hello world");
  }
}

}  // namespace
}  // namespace knowd
