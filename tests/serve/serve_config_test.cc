#include "daemon/serve_config.h"

#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace knowd {
namespace {

// A fake environment.
struct Env {
  std::map<std::string, std::string> vars;
  EnvLookup lookup() const {
    return [this](const char* name) -> const char* {
      auto it = vars.find(name);
      return it == vars.end() ? nullptr : it->second.c_str();
    };
  }
};

std::string WriteConfig(const std::string& json) {
  const std::string path = (std::filesystem::temp_directory_path() /
                            ("serve_config_test_" + std::to_string(getpid()) + ".json"))
                               .string();
  std::ofstream(path) << json;
  return path;
}

TEST(ServeConfig, DefaultsServeTheShippedBundleOnLoopback) {
  Env env;
  absl::StatusOr<ServeConfig> c = LoadServeConfig({}, env.lookup());
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->listen, "127.0.0.1:7070");
  EXPECT_EQ(c->http_listen, "127.0.0.1:7071");
  EXPECT_EQ(c->data_dir, "./knowd-data");
  EXPECT_EQ(c->model, "");
  EXPECT_EQ(c->tokens_file, "");
}

TEST(ServeConfig, FlagBeatsEnvironmentBeatsFileBeatsDefault) {
  const std::string file = WriteConfig(
      R"({"listen": "127.0.0.1:1111", "data-dir": "/file", "ask_max_batch": 3,
          "drain-timeout": 7.5, "http-listen": "127.0.0.1:2222"})");
  Env env;
  env.vars["KNOWD_LISTEN"] = "127.0.0.1:3333";
  env.vars["KNOWD_DATA_DIR"] = "/env";
  const std::vector<std::string> args = {"--config", file, "--listen=127.0.0.1:4444"};
  absl::StatusOr<ServeConfig> c = LoadServeConfig(args, env.lookup());
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->listen, "127.0.0.1:4444");                          // flag over env and file
  EXPECT_EQ(c->data_dir, "/env");                                  // env over file
  EXPECT_EQ(c->ask_max_batch, 3);                                  // file over default
  EXPECT_EQ(c->drain_timeout, 7.5);                                // file, a fraction
  EXPECT_EQ(c->http_listen, "127.0.0.1:2222");                     // file
  EXPECT_EQ(c->ingest_max_batch, ServeConfig().ingest_max_batch);  // default
  EXPECT_EQ(c->config, file);
  std::filesystem::remove(file);
}

TEST(ServeConfig, ConfigFileFromEnvironment) {
  const std::string file = WriteConfig(R"({"max-document-bytes": 2048})");
  Env env;
  env.vars["KNOWD_CONFIG"] = file;
  absl::StatusOr<ServeConfig> c = LoadServeConfig({}, env.lookup());
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->max_document_bytes, 2048);
  std::filesystem::remove(file);
}

TEST(ServeConfig, FlagSpellings) {
  Env env;
  const std::vector<std::string> args = {"--ingest_max_batch", "5", "--drain-timeout=2s",
                                         "--tokens-file", "/t.json"};
  absl::StatusOr<ServeConfig> c = LoadServeConfig(args, env.lookup());
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->ingest_max_batch, 5);
  EXPECT_EQ(c->drain_timeout, 2.0);
  EXPECT_EQ(c->tokens_file, "/t.json");
  const std::vector<std::string> search = {"--index-search-params", "efSearch=32"};
  c = LoadServeConfig(search, env.lookup());
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->index_search_params, "efSearch=32");
}

TEST(ServeConfig, DefaultRetrievalIsTheBundlesAndParsed) {
  Env env;
  absl::StatusOr<ServeConfig> c = LoadServeConfig({}, env.lookup());
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->default_retrieval, "bundle");
  EXPECT_EQ(c->index_factory, "auto");
  EXPECT_EQ(c->index_search_params, "");
  env.vars["KNOWD_DEFAULT_RETRIEVAL"] = "hybrid";
  c = LoadServeConfig({}, env.lookup());
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(ParseRetrieval(c->default_retrieval), v1::RETRIEVAL_HYBRID);
  EXPECT_EQ(ParseRetrieval("dense"), v1::RETRIEVAL_DENSE);
  EXPECT_EQ(ParseRetrieval("Dense"), std::nullopt);
}

TEST(ServeConfig, BadInputNamesTheSetting) {
  Env env;
  auto error = [&](std::vector<std::string> args) {
    absl::StatusOr<ServeConfig> c = LoadServeConfig(args, env.lookup());
    EXPECT_FALSE(c.ok());
    return std::string(c.status().message());
  };
  EXPECT_EQ(error({"--no-such-flag", "1"}), "unknown flag --no-such-flag");
  EXPECT_NE(error({"--ask-max-batch", "many"}).find("ask-max-batch"), std::string::npos);
  EXPECT_NE(error({"--ask-max-batch", "0"}).find("below the minimum"), std::string::npos);
  EXPECT_NE(error({"--listen"}).find("needs a value"), std::string::npos);
  EXPECT_NE(error({"positional"}).find("unexpected argument"), std::string::npos);
  EXPECT_NE(error({"--tls-cert", "c.pem"}).find("go together"), std::string::npos);
  EXPECT_NE(error({"--latent-format", "fp8"}).find("fp16 or int8"), std::string::npos);
  EXPECT_NE(error({"--default-retrieval", "fuzzy"}).find("lexical, dense, hybrid or bundle"),
            std::string::npos);

  env.vars["KNOWD_THREADS"] = "two";
  absl::StatusOr<ServeConfig> c = LoadServeConfig({}, env.lookup());
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("KNOWD_THREADS"), absl::string_view::npos);
}

TEST(ServeConfig, BadConfigFile) {
  Env env;
  const std::string file = WriteConfig(R"({"listen": "x:1", "colour": "blue"})");
  absl::StatusOr<ServeConfig> c =
      LoadServeConfig(std::vector<std::string>{"--config", file}, env.lookup());
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("\"colour\" is not a setting"), absl::string_view::npos);
  std::ofstream(file) << "[1, 2]";
  c = LoadServeConfig(std::vector<std::string>{"--config", file}, env.lookup());
  EXPECT_FALSE(c.ok());
  std::filesystem::remove(file);
  c = LoadServeConfig(std::vector<std::string>{"--config", file}, env.lookup());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kNotFound);
}

TEST(ServeConfig, FindsTheShippedBundleBesideTheExecutable) {
  // <tmp>/models/knowd-tiny, and executables in <tmp>/bin and <tmp>/build/daemon.
  const std::filesystem::path root =
      std::filesystem::temp_directory_path() / ("serve_config_bundle_" + std::to_string(getpid()));
  std::filesystem::create_directories(root / "models" / "knowd-tiny");
  std::filesystem::create_directories(root / "bin");
  std::filesystem::create_directories(root / "build" / "daemon");
  std::ofstream(root / "models" / "knowd-tiny" / "config.json") << "{}";
  const std::string expected = (root / "models" / "knowd-tiny").string();
  // The working directory is looked at first: use one without a bundle.
  const std::filesystem::path cwd = std::filesystem::current_path();
  std::filesystem::current_path(root / "bin");
  absl::StatusOr<std::string> found = FindDefaultModel((root / "bin").string());
  ASSERT_TRUE(found.ok()) << found.status();
  EXPECT_EQ(*found, expected);
  found = FindDefaultModel((root / "build" / "daemon").string());
  ASSERT_TRUE(found.ok()) << found.status();
  EXPECT_EQ(*found, expected);
  std::filesystem::remove_all(root / "models");
  EXPECT_EQ(FindDefaultModel((root / "bin").string()).status().code(), absl::StatusCode::kNotFound);
  std::filesystem::current_path(cwd);
  std::filesystem::remove_all(root);
}

}  // namespace
}  // namespace knowd
