// Choosing a tokenizer: by GGUF metadata (tokenizer.ggml.model) or by what a path holds. The
// tokenizers themselves live in tokenizer_spm.cc (SentencePiece) and tokenizer_bpe.cc (byte-level
// BPE).
#include "model/tokenizer.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "model/tensor_file.h"
#include "model/tokenizer_internal.h"

namespace knowd {
namespace tokenizer_internal {

absl::StatusOr<std::string> ReadWholeFile(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return absl::ErrnoToStatus(errno, absl::StrCat(path, ": cannot open"));
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    return absl::ErrnoToStatus(err, absl::StrCat(path, ": cannot stat"));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return absl::InvalidArgumentError(
        absl::StrCat(path, S_ISDIR(st.st_mode) ? ": is a directory" : ": is not a regular file"));
  }
  std::string bytes(static_cast<size_t>(st.st_size), '\0');
  size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = ::read(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const int err = n < 0 ? errno : EIO;
      ::close(fd);
      return absl::ErrnoToStatus(err, absl::StrCat(path, ": read failed"));
    }
    done += static_cast<size_t>(n);
  }
  ::close(fd);
  return bytes;
}

}  // namespace tokenizer_internal

absl::StatusOr<std::unique_ptr<Tokenizer>> LoadGgufTokenizer(const GgufFile& gguf) {
  const GgufValue* model = gguf.GetValue("tokenizer.ggml.model");
  if (model == nullptr) {
    return absl::NotFoundError(
        absl::StrCat(gguf.path(), ": no tokenizer in this GGUF file (no tokenizer.ggml.model)"));
  }
  const std::string* name = std::get_if<std::string>(model);
  if (name == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(gguf.path(), ": tokenizer.ggml.model is not a string"));
  }
  if (*name == "llama") {
    KNOWD_ASSIGN_OR_RETURN(tokenizer_internal::SentencePieceModel spm,
                           tokenizer_internal::SentencePieceModelFromGguf(gguf));
    return tokenizer_internal::MakeSentencePieceTokenizer(std::move(spm), gguf.path());
  }
  if (*name == "gpt2") return tokenizer_internal::LoadGgufByteLevelBpe(gguf);
  return absl::InvalidArgumentError(
      absl::StrCat(gguf.path(), ": tokenizer.ggml.model '", *name,
                   "' is not supported (knowd reads 'llama' SentencePiece and 'gpt2' BPE)"));
}

absl::StatusOr<std::unique_ptr<Tokenizer>> LoadTokenizer(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) {
    return absl::ErrnoToStatus(errno, absl::StrCat(path, ": no tokenizer here"));
  }
  if (S_ISDIR(st.st_mode)) {
    // A model bundle: the SentencePiece model is what the Llama family ships as its tokenizer;
    // tokenizer.json is the fallback for byte-level BPE models.
    for (const char* name : {"tokenizer.model", "tokenizer.json"}) {
      const std::string candidate = absl::StrCat(path, "/", name);
      if (::stat(candidate.c_str(), &st) == 0) return LoadTokenizer(candidate);
    }
    return absl::NotFoundError(
        absl::StrCat(path, ": directory holds neither tokenizer.model nor tokenizer.json"));
  }
  // Decide by content, not by name: a file's first bytes cannot be misnamed. Only the head is
  // read here, since a GGUF file may hold gigabytes of weights.
  char head_bytes[4096];
  size_t head_size = 0;
  if (FILE* f = std::fopen(path.c_str(), "rb")) {
    head_size = std::fread(head_bytes, 1, sizeof(head_bytes), f);
    std::fclose(f);
  } else {
    return absl::ErrnoToStatus(errno, absl::StrCat(path, ": cannot open"));
  }
  const std::string_view head(head_bytes, head_size);
  if (head.starts_with("GGUF")) {
    KNOWD_ASSIGN_OR_RETURN(std::unique_ptr<GgufFile> gguf, GgufFile::Open(path));
    return LoadGgufTokenizer(*gguf);
  }
  const size_t first = head.find_first_not_of(" \t\r\n");
  if (first != std::string_view::npos && head[first] == '{') return LoadHfTokenizerJson(path);
  KNOWD_ASSIGN_OR_RETURN(std::string bytes, tokenizer_internal::ReadWholeFile(path));
  absl::StatusOr<tokenizer_internal::SentencePieceModel> model =
      tokenizer_internal::ParseSentencePieceModel(bytes, path);
  if (!model.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(
        path, ": not a tokenizer (neither GGUF, tokenizer.json nor a SentencePiece model)"));
  }
  return tokenizer_internal::MakeSentencePieceTokenizer(*std::move(model), path);
}

}  // namespace knowd
