// What `knowctl ingest` reads from files and directories (client/document_source.h).
#include "client/document_source.h"

#include <stdlib.h>

#include <filesystem>
#include <fstream>

#include "gtest/gtest.h"

namespace knowd::client {
namespace {

namespace fs = std::filesystem;

class DocumentSourceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = (fs::temp_directory_path() / "knowd-docsrc-XXXXXX").string();
    ASSERT_NE(mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
  }
  void TearDown() override { fs::remove_all(dir_); }
  void Write(const std::string& name, const std::string& text) {
    fs::create_directories((dir_ / name).parent_path());
    std::ofstream(dir_ / name, std::ios::binary) << text;
  }
  // All documents of `path` as (id, text), or the first error's message.
  std::vector<std::pair<std::string, std::string>> ReadAll(const std::string& path,
                                                           std::string* error = nullptr) {
    std::vector<std::pair<std::string, std::string>> out;
    auto source = DocumentSource::Open(path);
    if (!source.ok()) {
      if (error) *error = std::string(source.status().message());
      return out;
    }
    v1::IngestRequest request;
    while (true) {
      request.Clear();
      absl::StatusOr<bool> more = (*source)->Next(&request);
      if (!more.ok()) {
        if (error) *error = std::string(more.status().message());
        break;
      }
      if (!*more) break;
      out.emplace_back(request.id(), request.text());
    }
    return out;
  }
  fs::path dir_;
};

TEST_F(DocumentSourceTest, ADirectoryYieldsTextMarkdownAndJsonLinesInSortedOrder) {
  Write("b.txt", "bee");
  Write("sub/a.md", "# ay");
  Write("skip.csv", "x,y");
  Write("c.jsonl",
        "{\"id\":\"c1\",\"text\":\"see\",\"metadata\":{\"k\":\"v\",\"n\":3}}\n\n"
        "{\"id\":\"c2\",\"text\":\"sea\"}\n");
  auto source = DocumentSource::Open(dir_.string());
  ASSERT_TRUE(source.ok()) << source.status();
  EXPECT_EQ((*source)->total(), 4);
  v1::IngestRequest first;
  ASSERT_TRUE(*(*source)->Next(&first));
  EXPECT_EQ(first.id(), "b.txt");
  v1::IngestRequest second;
  ASSERT_TRUE(*(*source)->Next(&second));
  EXPECT_EQ(second.id(), "c1");
  EXPECT_EQ(second.metadata().at("k"), "v");
  EXPECT_EQ(second.metadata().at("n"), "3");
  EXPECT_EQ(ReadAll(dir_.string()),
            (std::vector<std::pair<std::string, std::string>>{
                {"b.txt", "bee"}, {"c1", "see"}, {"c2", "sea"}, {"sub/a.md", "# ay"}}));
}

TEST_F(DocumentSourceTest, ASingleFileIsNamedByItsFileName) {
  Write("notes/today.md", "text");
  EXPECT_EQ(ReadAll((dir_ / "notes/today.md").string()),
            (std::vector<std::pair<std::string, std::string>>{{"today.md", "text"}}));
}

TEST_F(DocumentSourceTest, BadLinesAndPathsAreNamed) {
  Write("bad.jsonl", "{\"id\":\"ok\",\"text\":\"fine\"}\n{\"id\":\"no-text\"}\n");
  std::string error;
  EXPECT_EQ(ReadAll((dir_ / "bad.jsonl").string(), &error).size(), 1u);
  EXPECT_EQ(error, (dir_ / "bad.jsonl").string() + ":2: missing string \"text\"");
  ReadAll((dir_ / "missing.txt").string(), &error);
  EXPECT_EQ(error, (dir_ / "missing.txt").string() + ": no such file");
  Write("only.csv", "x");
  ReadAll((dir_ / "only.csv").string(), &error);
  EXPECT_EQ(error, (dir_ / "only.csv").string() + ": not a .txt, .md or .jsonl file");
  fs::create_directories(dir_ / "empty");
  ReadAll((dir_ / "empty").string(), &error);
  EXPECT_EQ(error, (dir_ / "empty").string() + ": no .txt, .md or .jsonl files in the directory");
}

}  // namespace
}  // namespace knowd::client
