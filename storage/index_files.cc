// The on-disk vector index files: DIR/index/vec-<seqno>-<n>.faiss and DIR/index/MANIFEST (JSON).
//
// Commit protocol: index files are written under fresh names, fsynced, then MANIFEST is
// replaced by rename (the commit point), then files the new MANIFEST does not name are removed.
// A crash at any step leaves either the old or the new MANIFEST, each naming intact files, or
// files whose CRC no longer matches; Open() rebuilds in the latter case.
#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <unistd.h>
#include <zlib.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "rocksdb/file_system.h"
#include "storage/bank_impl.h"

namespace knowd::storage {
namespace {

namespace fs = std::filesystem;

constexpr int kManifestVersion = 1;
constexpr char kManifestName[] = "MANIFEST";

uint32_t Crc32(std::string_view bytes) {
  return static_cast<uint32_t>(
      crc32_z(0L, reinterpret_cast<const Bytef*>(bytes.data()), bytes.size()));
}

absl::Status ErrnoError(std::string_view what, const std::string& path) {
  return absl::InternalError(absl::StrCat(AbslView(what), " ", path, ": ", std::strerror(errno)));
}

// Writes `bytes` to `path` through `fs` and fsyncs it. Does not fsync the directory. A full
// disk gives RESOURCE_EXHAUSTED.
absl::Status WriteFileSynced(rocksdb::FileSystem& fs, const std::string& path,
                             std::string_view bytes) {
  const rocksdb::IOOptions io;
  std::unique_ptr<rocksdb::FSWritableFile> file;
  rocksdb::IOStatus s = fs.NewWritableFile(path, rocksdb::FileOptions(), &file, nullptr);
  if (s.ok()) s = file->Append(rocksdb::Slice(bytes.data(), bytes.size()), io, nullptr);
  if (s.ok()) s = file->Fsync(io, nullptr);
  if (file != nullptr) {
    rocksdb::IOStatus closed = file->Close(io, nullptr);
    if (s.ok()) s = closed;
  }
  if (s.ok()) return absl::OkStatus();
  const std::string msg = absl::StrCat("cannot write ", path, ": ", s.ToString());
  if (s.IsNoSpace()) {
    return absl::ResourceExhaustedError(absl::StrCat(
        msg,
        " (the disk is full; the index files saved before are left as they were and the "
        "next open rebuilds the index from the database if they are stale)"));
  }
  return absl::InternalError(msg);
}

absl::Status SyncDirectory(const std::string& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return ErrnoError("cannot open directory", dir);
  int rc = ::fsync(fd);
  ::close(fd);
  if (rc != 0) return ErrnoError("cannot fsync directory", dir);
  return absl::OkStatus();
}

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, " is missing"));
  std::ostringstream buffer;
  buffer << in.rdbuf();
  if (in.bad()) return absl::DataLossError(absl::StrCat("cannot read ", path));
  return std::move(buffer).str();
}

}  // namespace

absl::Status BankImpl::SaveIndexFiles(const std::string& dir, uint64_t seqno) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create ", dir, ": ", ec.message()));

  nlohmann::json manifest;
  manifest["version"] = kManifestVersion;
  manifest["seqno"] = seqno;
  manifest["factory"] = options_.index_factory;
  manifest["search_params"] = options_.index_search_params;
  manifest["train_min"] = options_.index_train_min;
  manifest["key_dim"] = options_.key_dim;
  manifest["metric"] = static_cast<int>(options_.metric);
  manifest["namespaces"] = nlohmann::json::array();
  std::set<std::string> keep = {kManifestName};
  int n = 0;
  for (const auto& [name, ns] : namespaces_) {
    auto bytes = ns.vectors->Serialize();
    if (!bytes.ok()) return bytes.status();
    const std::string file = absl::StrCat("vec-", seqno, "-", n++, ".faiss");
    KNOWD_RETURN_IF_ERROR(
        WriteFileSynced(IndexFileSystem(), (fs::path(dir) / file).string(), *bytes));
    keep.insert(file);
    // Names are arbitrary bytes; JSON wants UTF-8, so store them hex-encoded.
    manifest["namespaces"].push_back({{"name_hex", absl::BytesToHexString(name)},
                                      {"file", file},
                                      {"bytes", bytes->size()},
                                      {"crc32", Crc32(*bytes)},
                                      {"vectors", ns.vectors->size()}});
  }
  const std::string tmp = (fs::path(dir) / "MANIFEST.tmp").string();
  KNOWD_RETURN_IF_ERROR(WriteFileSynced(IndexFileSystem(), tmp, manifest.dump(2)));
  fs::rename(tmp, fs::path(dir) / kManifestName, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot commit index manifest: ", ec.message()));
  KNOWD_RETURN_IF_ERROR(SyncDirectory(dir));
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    if (!keep.count(entry.path().filename().string())) fs::remove(entry.path(), ec);
  }
  return absl::OkStatus();
}

absl::Status BankImpl::LoadIndexFiles(const std::string& dir, uint64_t seqno,
                                      NamespaceMap* namespaces) {
  auto text = ReadFile((fs::path(dir) / kManifestName).string());
  if (!text.ok()) return absl::NotFoundError("no index manifest");
  nlohmann::json manifest;
  try {
    manifest = nlohmann::json::parse(*text);
    if (manifest.at("version").get<int>() != kManifestVersion) {
      return absl::DataLossError("index manifest has an unknown version");
    }
    const auto saved_seqno = manifest.at("seqno").get<uint64_t>();
    if (saved_seqno != seqno) {
      return absl::FailedPreconditionError(absl::StrCat("index files reflect sequence number ",
                                                        saved_seqno, ", the database is at ", seqno,
                                                        " (unclean shutdown or stale files)"));
    }
    // Search parameters (efSearch, nprobe) are not part of what was built: Deserialize applies
    // the current ones, so changing them costs no rebuild.
    if (manifest.at("factory").get<std::string>() != options_.index_factory ||
        manifest.at("train_min").get<int64_t>() != options_.index_train_min ||
        manifest.at("key_dim").get<int>() != options_.key_dim ||
        manifest.at("metric").get<int>() != static_cast<int>(options_.metric)) {
      return absl::FailedPreconditionError("index configuration changed");
    }
    std::set<std::string> seen;
    for (const auto& entry : manifest.at("namespaces")) {
      std::string name = absl::HexStringToBytes(entry.at("name_hex").get<std::string>());
      auto ns = namespaces->find(name);
      if (ns == namespaces->end()) {
        return absl::DataLossError("index manifest names a namespace the database lacks");
      }
      seen.insert(name);
      const std::string path = (fs::path(dir) / entry.at("file").get<std::string>()).string();
      auto bytes = ReadFile(path);
      if (!bytes.ok()) return bytes.status();
      if (bytes->size() != entry.at("bytes").get<size_t>() ||
          Crc32(*bytes) != entry.at("crc32").get<uint32_t>()) {
        return absl::DataLossError(absl::StrCat(path, " is corrupt (size or CRC mismatch)"));
      }
      KNOWD_ASSIGN_OR_RETURN(auto index, VectorIndex::Deserialize(VectorConfig(), *bytes));
      if (static_cast<uint64_t>((index)->size()) != ns->second.counts.passages) {
        return absl::DataLossError(absl::StrCat(path, " holds ", (index)->size(),
                                                " vectors, the database ",
                                                ns->second.counts.passages));
      }
      ns->second.vectors = std::move(index);
    }
    if (seen.size() != namespaces->size()) {
      return absl::DataLossError("index manifest lacks some namespaces of the database");
    }
  } catch (const nlohmann::json::exception& e) {
    return absl::DataLossError(absl::StrCat("index manifest is unreadable: ", e.what()));
  }
  return absl::OkStatus();
}

}  // namespace knowd::storage
