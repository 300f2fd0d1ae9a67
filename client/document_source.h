// Where `knowctl ingest` reads its documents: a file, a directory tree or stdin.
//
//   .txt / .md   one document each; its id is the path relative to the directory given (or the
//                file's name when a single file is given)
//   .jsonl       one document per line: {"id": "...", "text": "...", "metadata": {"k": "v"}}
//   - (stdin)    JSON lines when its first non-blank byte is '{', else one document with id "stdin"
//
// Documents are read lazily, one at a time, so a stream of any length is sent without holding it
// in memory. Not thread-safe.
#pragma once

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <istream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "knowd/v1/knowd.pb.h"

namespace knowd::client {

class DocumentSource {
 public:
  // `path` is a file, a directory (walked recursively, in sorted order, skipping files with
  // other extensions) or "-" for stdin. Fails when the path does not exist or holds no document.
  static absl::StatusOr<std::unique_ptr<DocumentSource>> Open(const std::string& path);

  // Fills `request` (id, text, metadata) with the next document and returns true, or returns
  // false at the end. Errors name the file and line ("docs.jsonl:7: missing \"text\"").
  absl::StatusOr<bool> Next(knowd::v1::IngestRequest* request);

  // Documents in the source when known beforehand (files and directories), else nullopt.
  std::optional<int64_t> total() const { return total_; }

 private:
  DocumentSource() = default;
  // Opens the next file of `files_`; false when none is left.
  absl::StatusOr<bool> OpenNextFile();
  absl::StatusOr<bool> NextJsonLine(knowd::v1::IngestRequest* request);

  std::filesystem::path root_;  // ids are relative to it
  std::vector<std::filesystem::path> files_;
  size_t next_file_ = 0;
  // The .jsonl file being read (or stdin), its name for messages and its line number.
  std::unique_ptr<std::ifstream> file_;
  std::istream* lines_ = nullptr;
  std::string lines_name_;
  int64_t line_number_ = 0;
  bool stdin_ = false;
  bool stdin_done_ = false;
  std::optional<int64_t> total_;
};

}  // namespace knowd::client
