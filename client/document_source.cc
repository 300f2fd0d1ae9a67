#include "client/document_source.h"

#include <algorithm>
#include <iostream>
#include <iterator>
#include <sstream>
#include <system_error>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace knowd::client {
namespace {

namespace fs = std::filesystem;

bool IsDocumentFile(const fs::path& path) {
  const std::string ext = path.extension().string();
  return ext == ".txt" || ext == ".md" || ext == ".jsonl";
}

bool IsJsonLines(const fs::path& path) { return path.extension() == ".jsonl"; }

bool IsBlank(const std::string& line) {
  return std::all_of(line.begin(), line.end(), [](unsigned char c) { return std::isspace(c); });
}

// Lines of a .jsonl file that hold a document.
int64_t CountJsonLines(const fs::path& path) {
  std::ifstream in(path);
  int64_t count = 0;
  for (std::string line; std::getline(in, line);) count += IsBlank(line) ? 0 : 1;
  return count;
}

}  // namespace

absl::StatusOr<std::unique_ptr<DocumentSource>> DocumentSource::Open(const std::string& path) {
  std::unique_ptr<DocumentSource> source(new DocumentSource());
  if (path == "-") {
    source->stdin_ = true;
    return source;
  }
  std::error_code error;
  const fs::file_status status = fs::status(path, error);
  if (error || !fs::exists(status))
    return absl::NotFoundError(absl::StrCat(path, ": no such file"));
  if (fs::is_directory(status)) {
    source->root_ = path;
    for (fs::recursive_directory_iterator it(path, error), end; !error && it != end;
         it.increment(error)) {
      if (it->is_regular_file() && IsDocumentFile(it->path())) source->files_.push_back(it->path());
    }
    if (error) return absl::UnavailableError(absl::StrCat(path, ": ", error.message()));
    std::sort(source->files_.begin(), source->files_.end());
    if (source->files_.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": no .txt, .md or .jsonl files in the directory"));
    }
  } else {
    if (!IsDocumentFile(path)) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": not a .txt, .md or .jsonl file"));
    }
    source->root_ = fs::path(path).parent_path();
    source->files_.push_back(path);
  }
  int64_t total = 0;
  for (const fs::path& file : source->files_) total += IsJsonLines(file) ? CountJsonLines(file) : 1;
  source->total_ = total;
  return source;
}

absl::StatusOr<bool> DocumentSource::OpenNextFile() {
  file_.reset();
  lines_ = nullptr;
  if (next_file_ >= files_.size()) return false;
  const fs::path& file = files_[next_file_++];
  file_ = std::make_unique<std::ifstream>(file, std::ios::binary);
  if (!*file_) return absl::UnavailableError(absl::StrCat(file.string(), ": cannot open"));
  lines_name_ = file.string();
  line_number_ = 0;
  return true;
}

absl::StatusOr<bool> DocumentSource::NextJsonLine(knowd::v1::IngestRequest* request) {
  std::string line;
  while (std::getline(*lines_, line)) {
    ++line_number_;
    if (IsBlank(line)) continue;
    const std::string where = absl::StrCat(lines_name_, ":", line_number_, ": ");
    const nlohmann::json doc = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (doc.is_discarded() || !doc.is_object()) {
      return absl::InvalidArgumentError(absl::StrCat(where, "not a JSON object"));
    }
    if (!doc.contains("id") || !doc["id"].is_string()) {
      return absl::InvalidArgumentError(absl::StrCat(where, "missing string \"id\""));
    }
    if (!doc.contains("text") || !doc["text"].is_string()) {
      return absl::InvalidArgumentError(absl::StrCat(where, "missing string \"text\""));
    }
    request->set_id(doc["id"].get<std::string>());
    request->set_text(doc["text"].get<std::string>());
    if (doc.contains("metadata")) {
      if (!doc["metadata"].is_object()) {
        return absl::InvalidArgumentError(absl::StrCat(where, "\"metadata\" is not an object"));
      }
      auto& metadata = *request->mutable_metadata();
      for (const auto& [key, value] : doc["metadata"].items()) {
        metadata[key] = value.is_string() ? value.get<std::string>() : value.dump();
      }
    }
    return true;
  }
  return false;
}

absl::StatusOr<bool> DocumentSource::Next(knowd::v1::IngestRequest* request) {
  if (stdin_) {
    if (stdin_done_) return false;
    if (lines_ == nullptr) {
      std::cin >> std::ws;
      if (std::cin.peek() == '{') {
        lines_ = &std::cin;
        lines_name_ = "stdin";
      } else {
        stdin_done_ = true;
        std::string text((std::istreambuf_iterator<char>(std::cin)),
                         std::istreambuf_iterator<char>());
        if (text.empty()) return false;
        request->set_id("stdin");
        request->set_text(std::move(text));
        return true;
      }
    }
    absl::StatusOr<bool> more = NextJsonLine(request);
    if (more.ok() && !*more) stdin_done_ = true;
    return more;
  }
  while (true) {
    if (lines_ != nullptr) {
      absl::StatusOr<bool> more = NextJsonLine(request);
      if (!more.ok() || *more) return more;
    }
    absl::StatusOr<bool> opened = OpenNextFile();
    if (!opened.ok() || !*opened) return opened;
    const fs::path& file = files_[next_file_ - 1];
    if (IsJsonLines(file)) {
      lines_ = file_.get();
      continue;
    }
    std::ostringstream text;
    text << file_->rdbuf();
    request->set_id(fs::relative(file, root_.empty() ? fs::path(".") : root_).generic_string());
    request->set_text(std::move(text).str());
    file_.reset();
    return true;
  }
}

}  // namespace knowd::client
