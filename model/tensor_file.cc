// TensorFile's format-independent parts and the mapping helpers both loaders share.
#include "model/tensor_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "model/tensor_file_internal.h"

namespace knowd {

int64_t HostTensor::numel() const {
  // Shapes were validated (non-negative, no overflow) when the file was opened.
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

const HostTensor* TensorFile::Find(std::string_view name) const {
  // Linear: models have at most a few thousand tensors and lookups happen once, at load.
  for (const HostTensor& t : tensors()) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

absl::StatusOr<const HostTensor*> TensorFile::Require(std::string_view name,
                                                      std::span<const int64_t> shape) const {
  const HostTensor* t = Find(name);
  if (t == nullptr) {
    return absl::NotFoundError(
        absl::StrCat(internal::FileLabel(path()), ": no tensor named ", internal::ToAbsl(name)));
  }
  if (!shape.empty() && !std::equal(shape.begin(), shape.end(), t->shape.begin(), t->shape.end())) {
    return absl::InvalidArgumentError(absl::StrCat(
        internal::FileLabel(path()), ": tensor ", internal::ToAbsl(name), " has shape ",
        internal::ShapeString(t->shape), ", expected ", internal::ShapeString(shape)));
  }
  return t;
}

namespace internal {

absl::StatusOr<MappedFile> MappedFile::Open(const std::string& path) {
  const std::string label = FileLabel(path);
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return absl::ErrnoToStatus(errno, absl::StrCat(label, ": cannot open ", path));
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    int err = errno;
    ::close(fd);
    return absl::ErrnoToStatus(err, absl::StrCat(label, ": cannot stat ", path));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return absl::InvalidArgumentError(absl::StrCat(label, ": ", path, " is not a regular file"));
  }
  MappedFile file;
  if (st.st_size > 0) {
    void* addr = ::mmap(nullptr, static_cast<size_t>(st.st_size), PROT_READ, MAP_PRIVATE, fd, 0);
    if (addr == MAP_FAILED) {
      int err = errno;
      ::close(fd);
      return absl::ErrnoToStatus(err, absl::StrCat(label, ": cannot map ", path));
    }
    file.addr_ = addr;
    file.size_ = static_cast<size_t>(st.st_size);
  }
  // The mapping keeps the file alive; the descriptor is no longer needed.
  ::close(fd);
  return file;
}

MappedFile::MappedFile(MappedFile&& other) noexcept
    : addr_(std::exchange(other.addr_, nullptr)), size_(std::exchange(other.size_, 0)) {}

MappedFile& MappedFile::operator=(MappedFile&& other) noexcept {
  if (this != &other) {
    Unmap(addr_, size_);
    addr_ = std::exchange(other.addr_, nullptr);
    size_ = std::exchange(other.size_, 0);
  }
  return *this;
}

MappedFile::~MappedFile() { Unmap(addr_, size_); }

std::pair<void*, size_t> MappedFile::Release() {
  return {std::exchange(addr_, nullptr), std::exchange(size_, 0)};
}

void Unmap(void* addr, size_t size) {
  if (addr != nullptr) ::munmap(addr, size);
}

std::string FileLabel(std::string_view path) {
  while (path.size() > 1 && path.back() == '/') path.remove_suffix(1);
  size_t slash = path.rfind('/');
  if (slash == std::string_view::npos || path.size() == 1) return std::string(path);
  return std::string(path.substr(slash + 1));
}

bool CheckedNumel(std::span<const int64_t> dims, int64_t* numel) {
  int64_t n = 1;
  for (int64_t d : dims) {
    if (d < 0 || __builtin_mul_overflow(n, d, &n)) return false;
  }
  *numel = n;
  return true;
}

std::string ShapeString(std::span<const int64_t> shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

absl::Status WriteAll(int fd, const void* data, size_t n, absl::string_view label) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    ssize_t written = ::write(fd, p, n);
    if (written < 0) {
      if (errno == EINTR) continue;
      return absl::ErrnoToStatus(errno, absl::StrCat(label, ": write failed"));
    }
    p += written;
    n -= static_cast<size_t>(written);
  }
  return absl::OkStatus();
}

absl::Status WriteFileAtomically(const std::string& path,
                                 const std::function<absl::Status(int fd)>& write) {
  const std::string label = FileLabel(path);
  std::string temp = path + ".tmp-XXXXXX";
  int fd = ::mkstemp(temp.data());
  if (fd < 0) return absl::ErrnoToStatus(errno, absl::StrCat(label, ": cannot create ", temp));
  // mkstemp creates 0600; model files are meant to be shared like any other output.
  absl::Status status;
  if (::fchmod(fd, 0644) != 0) {
    status = absl::ErrnoToStatus(errno, absl::StrCat(label, ": fchmod failed"));
  }
  if (status.ok()) status = write(fd);
  if (status.ok() && ::fsync(fd) != 0) {
    status = absl::ErrnoToStatus(errno, absl::StrCat(label, ": fsync failed"));
  }
  if (::close(fd) != 0 && status.ok()) {
    status = absl::ErrnoToStatus(errno, absl::StrCat(label, ": close failed"));
  }
  if (status.ok() && ::rename(temp.c_str(), path.c_str()) != 0) {
    status =
        absl::ErrnoToStatus(errno, absl::StrCat(label, ": cannot rename ", temp, " to ", path));
  }
  if (!status.ok()) {
    ::unlink(temp.c_str());
    return status;
  }
  // The rename is durable only once the directory entry is.
  const size_t slash = path.rfind('/');
  const std::string dir = slash == std::string::npos ? "."
                          : slash == 0               ? "/"
                                                     : path.substr(0, slash);
  int dir_fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir_fd < 0) return absl::ErrnoToStatus(errno, absl::StrCat(label, ": cannot open ", dir));
  if (::fsync(dir_fd) != 0) {
    int err = errno;
    ::close(dir_fd);
    return absl::ErrnoToStatus(err, absl::StrCat(label, ": fsync of ", dir, " failed"));
  }
  ::close(dir_fd);
  return absl::OkStatus();
}

}  // namespace internal
}  // namespace knowd
